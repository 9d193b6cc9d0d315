//! The journal: generations of (snapshot, records) on the backup device.
//!
//! - [`format`]: the bytes of segment headers and records (docs/FORMAT.md);
//! - [`layout`]: the directory and file names;
//! - [`writer`]: appending, durably, from the hook; [`segment`] (segment
//!   files), `preparer` (the next segment, made in the background),
//!   `recovery` (the lock, and where the journal ends at open),
//!   [`retention`] (removing old generations), [`error`];
//! - [`reader`]: scanning, with torn tails told apart from damage;
//! - [`committed`]: the one path through a generation's records that
//!   restore, verify, compaction and the mirror share.
//!
//! What the records *mean* (which ones lightningd committed) is decided by
//! [`crate::state`], shared by the writer and every reader.

pub mod committed;
pub mod error;
pub mod format;
pub mod identity;
pub mod layout;
mod preparer;
pub mod reader;
mod recovery;
pub mod retention;
pub mod segment;
pub mod writer;

pub use committed::{Bound, Change, Committed, Cursor, Resolved};
pub use error::{DeviceFault, Poison, WriteError};
pub use reader::{Generation, JournalError, Record, RecordLoc};
pub use writer::{Journal, SnapshotMade};

use crate::filter::Filter;
use crate::state::Tip;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::{Condvar, Mutex};

/// How the journal writes.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// O_DIRECT writes (the default). Without it, writes go through the page
    /// cache and fdatasync alone makes them durable.
    pub direct_io: bool,
    /// Records start on multiples of this; the device's O_DIRECT alignment is
    /// used if larger. 4096 by default: flash pages are 4 KiB or more, and a
    /// record never shares a page with an acknowledged one, so a torn page
    /// program can only damage the record being written.
    pub block_bytes: u32,
    /// Size of each preallocated segment file.
    pub segment_bytes: u64,
    /// What new generations leave out (a generation keeps the filter it
    /// started with: see docs/CACHES.md).
    pub filter: Filter,
    /// Whether records may be stored compressed (decided per record; the
    /// journal reads both kinds whatever this says).
    pub compression: Compression,
    /// A change larger than this is stored as chunk records of about this
    /// size (docs/FORMAT.md, `FLAG_MORE`).
    pub chunk_bytes: u32,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            direct_io: true,
            block_bytes: 4096,
            segment_bytes: 16 << 20,
            filter: Filter::None,
            compression: Compression::default(),
            chunk_bytes: format::CHANGE_CHUNK_BYTES_DEFAULT,
        }
    }
}

/// `compression` in cln-replica.toml: how new records are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Every record is stored as is.
    Off,
    /// The default: a change of more than one block is stored zstd-compressed
    /// when that makes it take fewer blocks on the device (docs/FORMAT.md).
    /// One-block changes, most of a node's, are never compressed, so they
    /// cost nothing; the measurements are in docs/COMPRESSION.md.
    #[default]
    Zstd,
}

impl JournalOptions {
    pub fn validate(&self) -> Result<()> {
        if !self.block_bytes.is_power_of_two() || !(512..=1 << 20).contains(&self.block_bytes) {
            bail!("block_bytes must be a power of two between 512 and 1048576, not {}", self.block_bytes);
        }
        if !(4096..=format::RECORD_PAYLOAD_BYTES_MAX).contains(&self.chunk_bytes) {
            bail!(
                "change_chunk_bytes must be between 4096 and {}, not {}",
                format::RECORD_PAYLOAD_BYTES_MAX,
                self.chunk_bytes
            );
        }
        if self.segment_bytes < 64 << 10 || self.segment_bytes > 1 << 32 {
            bail!("segment_bytes must be between 65536 and 4294967296, not {}", self.segment_bytes);
        }
        Ok(())
    }
}

/// What the journal has made durable so far: published by the writer after
/// every record, read by the status reporter and by followers (mirror,
/// remote destinations) that tail the journal off the hook's path.
#[derive(Debug, Default)]
pub struct Progress {
    state: Mutex<ProgressState>,
    changed: Condvar,
}

#[derive(Debug, Clone, Copy)]
pub struct ProgressState {
    pub generation: u64,
    /// Sequence number of the last durable record of `generation`.
    pub seq: u64,
    pub tip: Tip,
    /// Bytes of the current generation's segments in use.
    pub journal_bytes: u64,
    pub last_write_unix_ms: u64,
    pub sealed: bool,
    /// The journal refused further writes after an I/O failure.
    pub failed: bool,
    /// Incremented on every change, so waiters can tell that something moved.
    pub counter: u64,
}

impl Default for ProgressState {
    fn default() -> Self {
        ProgressState {
            generation: 0,
            seq: 0,
            tip: Tip::Empty,
            journal_bytes: 0,
            last_write_unix_ms: 0,
            sealed: false,
            failed: false,
            counter: 0,
        }
    }
}

impl Progress {
    pub fn publish(&self, f: impl FnOnce(&mut ProgressState)) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        s.counter += 1;
        self.changed.notify_all();
    }

    pub fn get(&self) -> ProgressState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the state's counter passes `seen`, or `timeout` elapses.
    pub fn wait_past(&self, seen: u64, timeout: std::time::Duration) -> ProgressState {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, _) =
            self.changed.wait_timeout_while(s, timeout, |s| s.counter <= seen).unwrap_or_else(|e| e.into_inner());
        *s
    }
}

#[cfg(test)]
mod tests;
