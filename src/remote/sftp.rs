//! `sftp://user@host:port/path`: a directory on an SSH server, through
//! OpenDAL's sftp service (which drives the system's `ssh` client). Key-based
//! only: `ssh_key` (or `?key=`) names the private key; `known_hosts` is
//! `strict` (default), `add` or `accept`.
//!
//! SFTP has no atomic put: an object is written under a temporary name and
//! renamed, and SFTP's rename refuses to replace an existing name. The server
//! does not fsync on close: "acknowledged" means the server's OS holds the
//! data (docs/REMOTE.md).

use super::opendal_common::Blocking;
use super::settings::DestinationConfig;
use super::store::{ParsedUrl, Store};
use anyhow::{bail, Result};

pub struct SftpStore {
    io: Blocking,
    describe: String,
}

impl SftpStore {
    pub fn new(url: &ParsedUrl, cfg: &DestinationConfig) -> Result<SftpStore> {
        let Some((user, host)) = url.authority.split_once('@') else {
            bail!("an SFTP destination needs a user: sftp://user@host:port/path");
        };
        let user = user.split(':').next().unwrap_or(user);
        if url.path.is_empty() {
            bail!("an SFTP destination needs a directory: sftp://user@host:port/path");
        }
        let mut b = opendal::services::Sftp::default()
            .endpoint(&format!("ssh://{host}"))
            .user(user)
            .root(&format!("{}/", url.path))
            .known_hosts_strategy(&cfg.option("known_hosts").unwrap_or_else(|| "strict".into()));
        if let Some(k) = cfg.option("ssh_key").or_else(|| cfg.option("key")) {
            b = b.key(&k);
        }
        let op = opendal::Operator::new(b).map_err(|e| anyhow::anyhow!("invalid SFTP destination: {e}"))?;
        Ok(SftpStore { io: Blocking::new(op)?, describe: format!("sftp://{user}@{host}{}", url.path) })
    }
}

impl Store for SftpStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        let tmp = if dir.is_empty() {
            format!(".{file}.{}.partial", std::process::id())
        } else {
            format!("{dir}/.{file}.{}.partial", std::process::id())
        };
        let _ = self.io.delete(&tmp);
        self.io.put(&tmp, data)?;
        self.io.rename(&tmp, name)
    }
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.io.get(name)
    }
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.io.list(dir)
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.io.delete(name)
    }
}
