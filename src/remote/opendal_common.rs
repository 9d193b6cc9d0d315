//! What the OpenDAL-backed destination (S3) needs: an [`opendal::Operator`]
//! driven from blocking code by a private single-threaded tokio runtime, with
//! a deadline on every call, and objects streamed in both directions.

use super::store::{ObjectReader, StoreResult, CALL_TIMEOUT};
use anyhow::{anyhow, Context, Result};
use std::future::{Future, IntoFuture};
use std::io::Read;
use std::sync::Arc;

/// Uploads go out in parts of this size (S3 multipart: at least 5 MiB), and
/// downloads are read in ranges of it: what a transfer holds in memory.
const PART_BYTES: usize = 8 << 20;

pub struct Blocking {
    pub op: opendal::Operator,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Blocking {
    pub fn new(op: opendal::Operator) -> Result<Blocking> {
        // The process-wide HTTP transport (reqwest + rustls); idempotent.
        opendal::install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the I/O runtime for a remote destination")?;
        Ok(Blocking { op, rt: Arc::new(rt) })
    }

    fn run<T>(&self, what: &str, f: impl Future<Output = opendal::Result<T>>) -> Result<T> {
        run(&self.rt, what, f)
    }

    /// Streams `data` to `name` in parts.
    pub fn put(&self, name: &str, data: &mut dyn Read) -> StoreResult<()> {
        let what = format!("writing {name}");
        let mut w = self.run(&what, self.op.writer_with(name).chunk(PART_BYTES).into_future())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = self.run(&what, w.abort());
                    return Err(anyhow!("{what}: {e}").into());
                }
            };
            if let Err(e) = self.run(&what, w.write(buf[..n].to_vec())) {
                let _ = self.run(&what, w.abort());
                return Err(e.into());
            }
        }
        self.run(&what, w.close())?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> StoreResult<Option<ObjectReader<'_>>> {
        let size = match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.stat(name)).await }) {
            Err(_) => return Err(anyhow!("reading {name}: no answer within {} s", CALL_TIMEOUT.as_secs()).into()),
            Ok(Ok(m)) => m.content_length(),
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Ok(Err(e)) => return Err(anyhow!("reading {name}: {e}").into()),
        };
        let reader = self.run(&format!("reading {name}"), self.op.reader(name))?;
        Ok(Some(Box::new(RangeReader {
            rt: self.rt.clone(),
            reader,
            name: name.to_string(),
            pos: 0,
            size,
            buf: vec![],
            at: 0,
        })))
    }

    pub fn list(&self, dir: &str) -> StoreResult<Vec<String>> {
        let path = if dir.is_empty() { "/" } else { dir };
        let entries = match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.list(path)).await }) {
            Err(_) => return Err(anyhow!("listing {path}: no answer within {} s", CALL_TIMEOUT.as_secs()).into()),
            Ok(Ok(e)) => e,
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => return Ok(vec![]),
            Ok(Err(e)) => return Err(anyhow!("listing {path}: {e}").into()),
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

    pub fn delete(&self, name: &str) -> StoreResult<()> {
        match self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.op.delete(name)).await }) {
            Err(_) => Err(anyhow!("deleting {name}: no answer within {} s", CALL_TIMEOUT.as_secs()).into()),
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::NotFound => Ok(()),
            Ok(Err(e)) => Err(anyhow!("deleting {name}: {e}").into()),
        }
    }
}

fn run<T>(rt: &tokio::runtime::Runtime, what: &str, f: impl Future<Output = opendal::Result<T>>) -> Result<T> {
    rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
        .map_err(|_| anyhow!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
        .map_err(|e| anyhow!("{what}: {e}"))
}

/// An object read in ranges of [`PART_BYTES`], one request each.
struct RangeReader {
    rt: Arc<tokio::runtime::Runtime>,
    reader: opendal::Reader,
    name: String,
    pos: u64,
    size: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Read for RangeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.size {
                return Ok(0);
            }
            let end = (self.pos + PART_BYTES as u64).min(self.size);
            let what = format!("reading {}", self.name);
            let b = run(&self.rt, &what, self.reader.read(self.pos..end)).map_err(std::io::Error::other)?;
            self.buf = b.to_vec();
            self.at = 0;
            if self.buf.is_empty() {
                return Err(std::io::Error::other(format!("{what}: the object ended early")));
            }
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
