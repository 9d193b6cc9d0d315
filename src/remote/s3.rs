//! `s3://bucket/prefix`: any S3-compatible store, through OpenDAL's s3
//! service. A PUT (or a multipart upload, for objects over 8 MiB) is atomic
//! (a reader sees the whole object or none) and acknowledged once the service
//! has stored it. S3 cannot refuse to overwrite: a retried upload replaces an
//! object with the same plaintext under the same name.
//!
//! Settings, each from the `[[destination]]` table, the URL's `?key=value`,
//! or the environment: `endpoint` (`AWS_ENDPOINT_URL`), `region`
//! (`AWS_REGION`, default `us-east-1`), `access_key_id` and
//! `secret_access_key` (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, or
//! OpenDAL's usual credential chain).

use super::opendal_common::Blocking;
use super::settings::DestinationConfig;
use super::store::{ObjectReader, ParsedUrl, Store, StoreResult};
use anyhow::{bail, Result};
use std::io::Read;

pub struct S3Store {
    io: Blocking,
    describe: String,
}

impl S3Store {
    pub fn new(url: &ParsedUrl, cfg: &DestinationConfig) -> Result<S3Store> {
        if url.authority.is_empty() {
            bail!("an S3 destination needs a bucket: s3://bucket/prefix");
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let root = if url.path.is_empty() { "/".to_string() } else { format!("{}/", url.path) };
        let mut b = opendal::services::S3::default().bucket(&url.authority).root(&root);
        if let Some(e) = cfg.option("endpoint").or_else(|| env("AWS_ENDPOINT_URL")) {
            b = b.endpoint(&e);
        }
        let region = cfg.option("region").or_else(|| env("AWS_REGION")).unwrap_or_else(|| "us-east-1".into());
        b = b.region(&region);
        if let Some(k) = cfg.option("access_key_id") {
            b = b.access_key_id(&k);
        }
        if let Some(s) = cfg.option("secret_access_key") {
            b = b.secret_access_key(&s);
        }
        let op = opendal::Operator::new(b).map_err(|e| anyhow::anyhow!("invalid S3 destination: {e}"))?;
        Ok(S3Store { io: Blocking::new(op)?, describe: format!("s3://{}{}", url.authority, url.path) })
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn put(&self, name: &str, data: &mut dyn Read) -> StoreResult<()> {
        self.io.put(name, data)
    }
    fn replace(&self, name: &str, data: &[u8]) -> StoreResult<()> {
        // A PUT replaces the object atomically.
        self.io.put(name, &mut &data[..])
    }
    fn get(&self, name: &str) -> StoreResult<Option<ObjectReader<'_>>> {
        self.io.get(name)
    }
    fn list(&self, dir: &str) -> StoreResult<Vec<String>> {
        self.io.list(dir)
    }
    fn delete(&self, name: &str) -> StoreResult<()> {
        if name.ends_with('/') {
            return Ok(()); // S3 has no directories
        }
        self.io.delete(name)
    }
}
