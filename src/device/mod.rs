//! The backup device: every write, flush, rename and directory sync that makes
//! the backup durable goes through the [`Device`] trait.
//!
//! The real implementation ([`RealDevice`]) uses O_DIRECT and fdatasync. Tests
//! put a fault-injecting implementation ([`fault::FaultDevice`]) underneath the same journal code, so
//! that a power cut can be modelled after any write or flush. Reads that only
//! inspect the backup (restore, verify, status) use plain `std::fs`: they see
//! whatever the device holds, which is what a crash test wants them to see.
//!
//! Not for: SQLite's own I/O. A snapshot is written by SQLite's backup API to a
//! temporary file; the device then flushes and renames it ([`Device::sync_file`]).

mod aligned;
#[cfg(feature = "lab")]
pub mod fault;
mod real;

pub use aligned::AlignedBuf;
pub use real::{dio_alignment, RealDevice, SyncMode, SYNC_MODE_ENV};

use std::io;
use std::path::Path;

/// One open file on the backup device.
pub trait DeviceFile: Send {
    /// Writes all of `buf` at `offset`. With O_DIRECT, `buf`'s address, its
    /// length and `offset` must be aligned to the device's block size.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Makes every write so far durable (fdatasync). A failure means the data
    /// may be lost even if a retry succeeds: callers treat it as a failed write.
    fn sync_data(&mut self) -> io::Result<()>;
    fn size(&mut self) -> io::Result<u64>;
}

/// The operations the backup needs from the filesystem on the backup device.
pub trait Device: Send + Sync {
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>>;
    /// Opens an existing file for reading and writing.
    fn open_rw(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>>;
    /// fsyncs a file written by someone else (SQLite's backup API).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Free bytes on the filesystem holding `path`.
    fn free_bytes(&self, path: &Path) -> io::Result<u64>;
    /// The file offset alignment O_DIRECT needs for the file at `path`, if
    /// the kernel says.
    fn dio_alignment(&self, path: &Path) -> Option<u32>;
}

/// Whether an I/O error is the device refusing O_DIRECT (EINVAL at open or at
/// the first aligned write), as tmpfs did before Linux 6.6.
pub fn is_direct_io_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL)
}
