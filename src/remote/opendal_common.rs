//! What the OpenDAL-backed destinations share: an [`opendal::Operator`] driven
//! from blocking code by a private single-threaded tokio runtime, with a
//! deadline on every call.

use anyhow::{anyhow, Context, Result};
use std::future::Future;
use std::time::Duration;

/// Every remote call ends within this, successfully or not.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Blocking {
    pub op: opendal::Operator,
    rt: tokio::runtime::Runtime,
}

impl Blocking {
    pub fn new(op: opendal::Operator) -> Result<Blocking> {
        // The process-wide HTTP transport (reqwest + rustls); idempotent.
        opendal::install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the I/O runtime for a remote destination")?;
        Ok(Blocking { op, rt })
    }

    fn run<T>(&self, what: &str, f: impl Future<Output = opendal::Result<T>>) -> Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .map_err(|_| anyhow!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("{what}: {e}"))
    }

    pub fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.run(&format!("writing {name}"), self.op.write(name, data.to_vec())).map(|_| ())
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run(&format!("renaming {from}"), self.op.rename(from, to))
    }

    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.read(name)).await }) {
            Err(_) => Err(anyhow!("reading {name}: no answer within {} s", CALL_TIMEOUT.as_secs())),
            Ok(Ok(buf)) => Ok(Some(buf.to_vec())),
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(anyhow!("reading {name}: {e}")),
        }
    }

    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = if dir.is_empty() { "/" } else { dir };
        let entries = match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.list(path)).await }) {
            Err(_) => return Err(anyhow!("listing {path}: no answer within {} s", CALL_TIMEOUT.as_secs())),
            Ok(Ok(e)) => e,
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => return Ok(vec![]),
            Ok(Err(e)) => return Err(anyhow!("listing {path}: {e}")),
        };
        let mut out: Vec<String> = entries
            .iter()
            .map(|e| e.name().to_string())
            .filter(|n| !n.is_empty() && n != "/" && !n.starts_with('.') && n != dir)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.delete(name)).await }) {
            Err(_) => Err(anyhow!("deleting {name}: no answer within {} s", CALL_TIMEOUT.as_secs())),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Ok(Err(e)) => Err(anyhow!("deleting {name}: {e}")),
        }
    }
}
