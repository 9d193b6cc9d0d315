//! The destination trait and the URL that selects an implementation.

use super::settings::DestinationConfig;
use anyhow::{bail, Result};

/// One destination: a flat namespace of immutable objects with `/`-separated
/// names. Every call blocks; implementations over async libraries carry their
/// own runtime. Errors are operating errors (retried by the shipper).
pub trait Store: Send + Sync {
    /// The destination as shown in logs and status: never a secret.
    fn describe(&self) -> String;
    /// Stores a new object. Returns once the destination holds it durably (as
    /// durably as that kind of destination can say: see docs/REMOTE.md). A
    /// reader never sees a partial object under `name`.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;
    /// The object, or `None` if it does not exist.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// The entries directly under `dir` ("" for the top, else ending in `/`):
    /// object names relative to `dir`, and sub-directories ending in `/`.
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    /// Deletes an object; deleting a missing one is not an error.
    fn delete(&self, name: &str) -> Result<()>;
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
