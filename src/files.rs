//! Ordinary files outside the journal's device path: databases that restore,
//! the mirror and `init` produce, and the small JSON files the plugin
//! publishes. The journal's own durable writes go through
//! [`crate::device::Device`] instead, so that the power-cut model sees them.
//!
//! [`Staged`] is the one way a file is put in place: written under a
//! temporary name in the destination's directory, flushed if asked, renamed
//! over the destination, and the directory flushed. A reader of the
//! destination sees the old file or the new one, never a part of either.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Whether an installed file must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// File and directory are flushed before and after the rename: a
    /// restored database, the mirror, its sidecar.
    Flushed,
    /// Atomic replacement only: a status file rewritten every second, whose
    /// loss at a power cut costs nothing (the next one replaces it).
    AtomicOnly,
}

/// A file being written beside its destination. Dropped without
/// [`Staged::install`], it removes the temporary file.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    installed: bool,
}

impl Staged {
    /// A temporary name in `dest`'s directory (so the final rename is atomic),
    /// unique to this process. Whatever stands under that name is removed.
    pub fn beside(dest: &Path) -> Staged {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let tmp = dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        remove_if_exists(&tmp);
        Staged { tmp, dest: dest.to_path_buf(), installed: false }
    }

    /// Where to write the new content.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the temporary file over the destination.
    pub fn install(mut self, durability: Durability) -> Result<()> {
        if durability == Durability::Flushed {
            File::open(&self.tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot flush {}", self.tmp.display()))?;
        }
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("cannot rename {} to {}", self.tmp.display(), self.dest.display()))?;
        self.installed = true;
        if durability == Durability::Flushed {
            sync_dir_of(&self.dest)?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.installed {
            remove_if_exists(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` through a [`Staged`] file.
pub fn replace_with_bytes(dest: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    let staged = Staged::beside(dest);
    std::fs::write(staged.path(), bytes).with_context(|| format!("cannot write {}", staged.path().display()))?;
    staged.install(durability)
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// fsyncs the directory holding `path`: its entries (a rename, a creation)
/// become durable.
pub fn sync_dir_of(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot flush the directory {}", dir.display()))
}

/// fsyncs a file and its directory.
pub fn sync_file_and_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("cannot flush {}", path.display()))?;
    sync_dir_of(path)
}

/// Removes a file if it exists.
pub fn remove_if_exists(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Opens `path` for reading only if it is what a reader expects: a regular
/// file (not a FIFO, whose open would block, nor a device) of at most
/// `max_bytes` when given. The open itself never blocks (O_NONBLOCK, which
/// is meaningless for a regular file once it is one). Returns the file and
/// its size.
pub fn open_regular(path: &Path, max_bytes: Option<u64>) -> std::io::Result<(File, u64)> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let m = f.metadata()?;
    let t = m.file_type();
    if !t.is_file() {
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else if t.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("{} is {what}, not a regular file", path.display())));
    }
    if let Some(max) = max_bytes.filter(|&max| m.len() > max) {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{} is {} bytes, more than the {max} it may hold", path.display(), m.len()),
        ));
    }
    Ok((f, m.len()))
}

/// Reads a whole small file that must be a regular file of at most `max_bytes`.
pub fn read_regular(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let (mut f, len) = open_regular(path, Some(max_bytes))?;
    let mut out = Vec::with_capacity(len as usize);
    (&mut f).take(max_bytes + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} grew past {max_bytes} bytes", path.display()),
        ));
    }
    Ok(out)
}

/// Serialises a path as text, replacing what is not UTF-8: reports and
/// statuses must never fail (or panic) on a path that is not valid UTF-8.
pub fn serialize_path_lossy<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// [`serialize_path_lossy`] for an optional path.
pub fn serialize_opt_path_lossy<S: serde::Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_some(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// [`serialize_path_lossy`] for a list of paths.
pub fn serialize_paths_lossy<S: serde::Serializer>(ps: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(ps.len()))?;
    for p in ps {
        seq.serialize_element(&p.to_string_lossy())?;
    }
    seq.end()
}

/// Size and CRC32C of a file, read in chunks.
pub fn file_crc32c(path: &Path) -> Result<(u64, u32)> {
    let (mut f, _) = open_regular(path, None).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_replaces_its_destination_or_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("db");
        std::fs::write(&dest, b"old").unwrap();
        let s = Staged::beside(&dest);
        std::fs::write(s.path(), b"new").unwrap();
        let tmp = s.path().to_path_buf();
        drop(s);
        assert!(!tmp.exists(), "an abandoned staged file is removed");
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        replace_with_bytes(&dest, b"new", Durability::Flushed).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
