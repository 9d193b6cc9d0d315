//! `file:///path`: a directory, typically a NAS mount. Built without any
//! extra dependency, and durable in the plain POSIX way: an object is written
//! to a temporary name, flushed, hard-linked to its name (which fails if the
//! name exists: never an overwrite), and the directory is flushed. The tip is
//! written the same way and renamed over the old one.
//!
//! Reads open without blocking and check that the name is a regular file: a
//! FIFO or a device planted under an object's name is refused at once.

use super::store::{ObjectReader, Store, StoreError, StoreResult};
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: PathBuf) -> Result<FileStore> {
        if root.as_os_str().is_empty() || !root.is_absolute() {
            bail!("a file destination needs an absolute path (file:///path), not {:?}", root);
        }
        Ok(FileStore { root })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.split('/').any(|c| c == ".." || c == ".") || name.starts_with('/') {
            bail!("invalid object name {name:?}");
        }
        Ok(self.root.join(name))
    }

    /// Writes `data` to a new temporary file beside `path`, flushed; returns it.
    fn write_temporary(&self, path: &Path, data: &mut dyn Read) -> Result<PathBuf> {
        let dir = path.parent().expect("object has a parent").to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            sync_dir(dir.parent().unwrap_or(&self.root))?;
        }
        let tmp = dir.join(format!(".{}.{}.partial", path.file_name().unwrap().to_string_lossy(), std::process::id()));
        let _ = fs::remove_file(&tmp);
        let result = (|| -> Result<()> {
            let mut f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            std::io::copy(data, &mut f).with_context(|| format!("cannot write {}", tmp.display()))?;
            f.flush()?;
            f.sync_all().with_context(|| format!("cannot flush {}", tmp.display()))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot flush the directory {}", dir.display()))
}

impl Store for FileStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn put(&self, name: &str, data: &mut dyn Read) -> StoreResult<()> {
        let path = self.path(name)?;
        let tmp = self.write_temporary(&path, data)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists { name: name.to_string() })
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot create {}", path.display())).into()),
        }
        Ok(sync_dir(path.parent().expect("object has a parent"))?)
    }

    fn replace(&self, name: &str, data: &[u8]) -> StoreResult<()> {
        let path = self.path(name)?;
        let tmp = self.write_temporary(&path, &mut &data[..])?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(anyhow!(e).context(format!("cannot replace {}", path.display())).into());
        }
        Ok(sync_dir(path.parent().expect("object has a parent"))?)
    }

    fn get(&self, name: &str) -> StoreResult<Option<ObjectReader<'_>>> {
        let path = self.path(name)?;
        let f = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow!(e).context(format!("cannot read {}", path.display())).into()),
        };
        let meta = f.metadata().with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            return Err(anyhow!("{} is not a regular file", path.display()).into());
        }
        Ok(Some(Box::new(std::io::BufReader::with_capacity(256 << 10, f))))
    }

    fn list(&self, dir: &str) -> StoreResult<Vec<String>> {
        let path = if dir.is_empty() { self.root.clone() } else { self.path(dir.trim_end_matches('/'))? };
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(anyhow!(e).context(format!("cannot list {}", path.display())).into()),
        };
        let mut out = vec![];
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", path.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type().context("cannot list")?.is_dir() {
                out.push(format!("{name}/"));
            } else {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> StoreResult<()> {
        let path = self.path(name.trim_end_matches('/'))?;
        if name.ends_with('/') {
            // Leftovers of interrupted uploads (hidden from listings).
            for e in fs::read_dir(&path).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.ends_with(".partial") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let r = if name.ends_with('/') { fs::remove_dir(&path) } else { fs::remove_file(&path) };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("cannot delete {}", path.display())).into()),
        }
    }
}
