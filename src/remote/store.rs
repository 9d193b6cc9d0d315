//! The destination trait and the URL that selects an implementation.

use super::settings::DestinationConfig;
use anyhow::{bail, Result};
use std::io::Read;

/// Every call to a remote destination ends within this, successfully or not
/// (a destination that stops answering shows as failing after it). The hook
/// never waits for a call: only the workers make them.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a store operation failed, where callers branch on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// [`Store::put`] found the name taken: objects are never overwritten.
    #[error("{name} already exists at the destination (objects are never overwritten)")]
    Exists { name: String },
    /// Anything else: an operating error, retried by the shipper.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// A readable object.
pub type ObjectReader<'a> = Box<dyn Read + Send + 'a>;

/// One destination: a flat namespace of `/`-separated names. Every call
/// blocks and ends (implementations over async libraries carry their own
/// runtime and a deadline on each call). Data streams through in both
/// directions: nothing here holds a whole object in memory.
///
/// `tests/remote_store.rs` is the conformance suite every implementation
/// passes (file://, s3s-fs, sshd).
pub trait Store: Send + Sync {
    /// The destination as shown in logs and status: never a secret.
    fn describe(&self) -> String;
    /// Stores a new object from `data`. Returns once the destination holds it
    /// durably (as durably as that kind of destination can say: see
    /// docs/REMOTE.md). A reader never sees a partial object under `name`.
    /// A name that exists is [`StoreError::Exists`] where the destination can
    /// tell (file, SFTP); S3 replaces it.
    fn put(&self, name: &str, data: &mut dyn Read) -> StoreResult<()>;
    /// Stores `data` under `name`, atomically replacing what is there (the tip).
    fn replace(&self, name: &str, data: &[u8]) -> StoreResult<()>;
    /// The object as a stream, or `None` if it does not exist.
    fn get(&self, name: &str) -> StoreResult<Option<ObjectReader<'_>>>;
    /// The entries directly under `dir` ("" for the top, else ending in `/`):
    /// object names relative to `dir`, and sub-directories ending in `/`.
    fn list(&self, dir: &str) -> StoreResult<Vec<String>>;
    /// Deletes an object (or an empty directory, named with a trailing `/`);
    /// deleting a missing one is not an error.
    fn delete(&self, name: &str) -> StoreResult<()>;
}

/// Reads a whole small object, at most `limit` bytes (more is an error).
pub fn get_bounded(store: &dyn Store, name: &str, limit: u64) -> StoreResult<Option<Vec<u8>>> {
    let Some(r) = store.get(name)? else { return Ok(None) };
    let mut out = Vec::new();
    r.take(limit + 1).read_to_end(&mut out).map_err(|e| anyhow::anyhow!("reading {name}: {e}"))?;
    if out.len() as u64 > limit {
        return Err(anyhow::anyhow!("{name} is larger than the {limit} bytes such an object can be").into());
    }
    Ok(Some(out))
}

/// A destination URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub scheme: String,
    /// `user@host:port` for sftp, the bucket for s3, empty for file.
    pub authority: String,
    /// The path (file, sftp) or key prefix (s3), without a trailing `/`.
    pub path: String,
    /// `?k=v&k2=v2` options.
    pub query: Vec<(String, String)>,
}

pub fn parse_url(url: &str) -> Result<ParsedUrl> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{url:?} is not a destination URL: use s3://bucket/prefix, sftp://user@host:port/path or file:///path");
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    Ok(ParsedUrl {
        scheme: scheme.to_ascii_lowercase(),
        authority: authority.to_string(),
        path: path.trim_end_matches('/').to_string(),
        query,
    })
}

/// Whether `s` names a remote destination rather than a local directory.
pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// Opens the destination a configuration names.
pub fn open_store(cfg: &DestinationConfig) -> Result<Box<dyn Store>> {
    let url = parse_url(&cfg.url)?;
    match url.scheme.as_str() {
        "file" => {
            if !url.authority.is_empty() && url.authority != "localhost" {
                bail!("file URLs name a local path: file:///path (three slashes), not {}", cfg.url);
            }
            Ok(Box::new(super::file::FileStore::new(url.path.into())?))
        }
        #[cfg(feature = "remote")]
        "s3" => Ok(Box::new(super::s3::S3Store::new(&url, cfg)?)),
        #[cfg(not(feature = "remote"))]
        "s3" => bail!("this cln-replica was built without S3 support: rebuild with `--features remote`"),
        #[cfg(feature = "remote-sftp")]
        "sftp" => Ok(Box::new(super::sftp::SftpStore::new(&url, cfg)?)),
        #[cfg(not(feature = "remote-sftp"))]
        "sftp" => bail!("this cln-replica was built without SFTP support: rebuild with `--features remote-sftp`"),
        other => bail!("unsupported destination scheme {other:?} in {}: use s3://, sftp:// or file://", cfg.url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = parse_url("s3://bucket/some/prefix/?endpoint=http://127.0.0.1:9000&region=x").unwrap();
        assert_eq!((u.scheme.as_str(), u.authority.as_str(), u.path.as_str()), ("s3", "bucket", "/some/prefix"));
        assert_eq!(u.query[0], ("endpoint".into(), "http://127.0.0.1:9000".into()));
        let u = parse_url("file:///mnt/nas/replica").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("", "/mnt/nas/replica"));
        let u = parse_url("sftp://bob@host:2222/backups").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("bob@host:2222", "/backups"));
        assert!(parse_url("/just/a/path").is_err());
        assert!(open_store(&DestinationConfig::new("ftp://x/y")).is_err());
    }
}
