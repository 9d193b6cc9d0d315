//! The journal's identity: 16 random bytes, created durably in the journal
//! directory (`JOURNAL_ID`, 32 hex digits and a newline) at the first open and
//! read at every later one.
//!
//! What it is for: everything that leaves the box is bound to it (the
//! associated data of every remote object, docs/REMOTE.md), so that objects of
//! one journal can never be spliced into another's copy, even under the same
//! key. A journal directory started anew gets a new id; a copy of a journal
//! directory keeps its id (it is the same history).
//!
//! A journal written before ids existed (or one whose id file was lost)
//! gets a new id at its next open: its local records stay readable, and a
//! destination holding the old id's copies refuses to be continued under the
//! new one, loudly (docs/REMOTE.md). A malformed id file is an error.

use crate::device::Device;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const ID_FILE: &str = "JOURNAL_ID";
const ID_TMP_FILE: &str = "JOURNAL_ID.tmp";
pub const ID_BYTES: usize = 16;

/// A journal's random identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct JournalId(pub [u8; ID_BYTES]);

impl fmt::Display for JournalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JournalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JournalId({self})")
    }
}

impl JournalId {
    pub fn parse(text: &str) -> Option<JournalId> {
        let t = text.trim_end_matches('\n');
        if t.len() != 2 * ID_BYTES || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0u8; ID_BYTES];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(JournalId(id))
    }
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(
        "{} is missing, but the journal holds generations: the journal's identity is lost. Restore the file from a \
         copy of this journal directory (or move the directory aside and let the plugin start a new journal)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("{} is malformed (expected 32 hex digits): restore it from a copy of this journal directory", path.display())]
    Malformed { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_path_buf(), source }
}

/// Reads the id of the journal in `dir` (for readers: never creates one).
pub fn read(dir: &Path) -> Result<JournalId, IdentityError> {
    let path = dir.join(ID_FILE);
    let text = match read_small(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(IdentityError::Missing { path }),
        Err(e) => return Err(IdentityError::Io { path, source: e }),
    };
    JournalId::parse(&text).ok_or(IdentityError::Malformed { path })
}

/// A small regular file, opened without blocking (a FIFO planted under the
/// name must not hang the reader) and bounded.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut s = String::new();
    f.take(256).read_to_string(&mut s)?;
    Ok(s)
}

/// The id of the journal in `dir`, created (written, flushed, renamed into
/// place, directory flushed: through `device`, so the power-cut model covers
/// it) if the journal is new. `has_generations`: whether `dir` holds any.
pub fn ensure(dir: &Path, device: &dyn Device, has_generations: bool) -> Result<JournalId, IdentityError> {
    match read(dir) {
        Ok(id) => return Ok(id),
        Err(IdentityError::Missing { path }) => {
            if has_generations {
                eprintln!(
                    "cln-replica: {} is missing in a journal that holds generations (written before journal ids, \
                     or the file was lost): it gets a new id",
                    path.display()
                );
            }
        }
        Err(e) => return Err(e),
    }
    let mut id = [0u8; ID_BYTES];
    getrandom::fill(&mut id).map_err(|e| IdentityError::Io {
        path: dir.join(ID_FILE),
        source: std::io::Error::other(format!("no randomness from the OS: {e}")),
    })?;
    let id = JournalId(id);
    let tmp = dir.join(ID_TMP_FILE);
    let path = dir.join(ID_FILE);
    let _ = device.remove_file(&tmp);
    let mut f = device.create(&tmp, false).map_err(io(&tmp))?;
    f.write_all_at(format!("{id}\n").as_bytes(), 0).map_err(io(&tmp))?;
    f.sync_data().map_err(io(&tmp))?;
    drop(f);
    device.rename(&tmp, &path).map_err(io(&path))?;
    device.sync_dir(dir).map_err(io(dir))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::RealDevice;

    #[test]
    fn created_once_then_read_and_given_to_a_journal_from_before_ids() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &RealDevice, false).unwrap();
        assert_eq!(ensure(dir.path(), &RealDevice, true).unwrap(), a);
        assert_eq!(read(dir.path()).unwrap(), a);
        assert_ne!(a, JournalId::default());
        // A journal from before ids: readable, with a new id.
        std::fs::remove_file(dir.path().join(ID_FILE)).unwrap();
        let b = ensure(dir.path(), &RealDevice, true).unwrap();
        assert_ne!(a, b);
        std::fs::write(dir.path().join(ID_FILE), "xyz\n").unwrap();
        assert!(matches!(ensure(dir.path(), &RealDevice, true), Err(IdentityError::Malformed { .. })));
        assert!(matches!(ensure(dir.path(), &RealDevice, false), Err(IdentityError::Malformed { .. })));
        assert_eq!(JournalId::parse(&format!("{a}\n")), Some(a));
    }
}
