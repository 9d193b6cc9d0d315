//! `file:///path`: a directory, typically a NAS mount. Built without any
//! extra dependency, and durable in the plain POSIX way: an object is written
//! to a temporary name, flushed, hard-linked to its name (which fails if the
//! name exists: never an overwrite), and the directory is flushed.

use super::store::Store;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
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

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name)?;
        let dir = path.parent().expect("object has a parent").to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            sync_dir(dir.parent().unwrap_or(&self.root))?;
        }
        let tmp = dir.join(format!(".{}.{}.partial", path.file_name().unwrap().to_string_lossy(), std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot flush {}", tmp.display()))?;
        drop(f);
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        linked.with_context(|| format!("cannot create {} (objects are never overwritten)", path.display()))?;
        sync_dir(&dir)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = if dir.is_empty() { self.root.clone() } else { self.path(dir.trim_end_matches('/'))? };
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", path.display())),
        };
        let mut out = vec![];
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", path.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type()?.is_dir() {
                out.push(format!("{name}/"));
            } else {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name.trim_end_matches('/'))?;
        let r = if name.ends_with('/') { fs::remove_dir(&path) } else { fs::remove_file(&path) };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
        }
    }
}
