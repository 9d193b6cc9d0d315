//! What can go wrong when writing the journal, as the callers branch on it:
//! a lock held by another process, a device that refuses O_DIRECT, a failed
//! write or flush (which poisons the journal for the life of the process),
//! and the reader's damage reports.

use super::reader::JournalError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WriteError {
    /// Another process holds the journal's lock.
    #[error(
        "another process is writing to the journal {} (it holds {}): only one node may use a journal",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    /// The filesystem refused O_DIRECT (EINVAL), as tmpfs did before Linux 6.6.
    #[error(
        "the filesystem holding {} refuses O_DIRECT ({source}); cln-replica needs it to know that a change \
         reached the device. Put the journal on a real block device, or set `direct_io = false` in \
         cln-replica.toml to accept buffered writes with fdatasync",
        path.display()
    )]
    DirectIoRefused { path: PathBuf, source: io::Error },
    /// A write, flush or rename of the journal failed just now. The journal
    /// is poisoned: every later write is refused with [`WriteError::Poisoned`].
    #[error("{0}")]
    DeviceFailed(Poison),
    /// A write or flush failed earlier in this process.
    #[error("the journal stopped accepting writes after an earlier failure: {0}")]
    Poisoned(Poison),
    /// An I/O failure outside the append path (opening, listing, removing a
    /// leftover): nothing was acknowledged on its strength.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// What the reader found on the device.
    #[error(transparent)]
    Read(#[from] JournalError),
    /// The journal's identity file (`JOURNAL_ID`) is unreadable or malformed.
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    /// A change too large for one record.
    #[error("the change for data_version {data_version} is {bytes} bytes, more than a record may hold ({max} bytes)")]
    TooLarge { data_version: u32, bytes: usize, max: u32 },
    /// The snapshot of a new generation could not be made.
    #[error("{0:#}")]
    Snapshot(anyhow::Error),
    /// A request the journal cannot carry out as asked (a prepared
    /// generation that is not the next one, records that do not continue
    /// the tip); the journal is unchanged.
    #[error("{0}")]
    Refused(String),
}

impl WriteError {
    /// The poison, when the backup device failed (now or earlier).
    pub fn poison(&self) -> Option<&Poison> {
        match self {
            WriteError::DeviceFailed(p) | WriteError::Poisoned(p) => Some(p),
            _ => None,
        }
    }
}

/// `what` failed with `source` (for `map_err`).
pub(crate) fn io_at(what: impl Into<String>) -> impl FnOnce(io::Error) -> WriteError {
    let what = what.into();
    move |source| WriteError::Io { what, source }
}

/// What made the journal stop accepting writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub fault: DeviceFault,
    /// The OS error number, when the failure was one.
    pub errno: Option<i32>,
    /// The operation that failed and the OS's message.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFault {
    /// ENOSPC or EDQUOT.
    Full,
    /// EROFS: the kernel remounts a filesystem read-only after I/O errors.
    ReadOnly,
    /// Anything else: EIO, a vanished device.
    Failed,
}

impl Poison {
    pub fn new(detail: String, errno: Option<i32>) -> Poison {
        let fault = match errno {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DeviceFault::Full,
            Some(libc::EROFS) => DeviceFault::ReadOnly,
            _ => DeviceFault::Failed,
        };
        Poison { fault, errno, detail }
    }
}

impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.fault {
            DeviceFault::Full => {
                "the backup device is full; lightningd must stop before committing. Free space on it (or move \
                 the journal to a larger device), then start lightningd again"
            }
            DeviceFault::ReadOnly => {
                "the backup device became read-only (the kernel does that after I/O errors: check `dmesg`); \
                 lightningd must stop before committing"
            }
            DeviceFault::Failed => "the backup device failed; lightningd must stop before committing",
        };
        write!(f, "{what}: {}", self.detail)
    }
}
