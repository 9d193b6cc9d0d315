//! Opening a journal for writing: its lock, the leftovers of interrupted
//! work, and where the newest generation ends.
//!
//! After a power cut only the last record can be incomplete (each one is
//! flushed before lightningd hears about it): the reader tells such a torn
//! tail from damage. One more case needs the device itself: a record whose
//! flush failed in an earlier process since boot is in the page cache but
//! perhaps not on the media. Appending after it would leave, after a power
//! cut, a hole followed by valid records (which the reader rightly calls
//! damage); it was never acknowledged, so it is erased and the journal
//! resumes in its place.

use super::error::{io_at, WriteError};
use super::format::{self, RecordHeader, RecordKind};
use super::layout;
use super::reader::{Generation, RecordLoc};
use super::segment::write_error;
use crate::device::{self, AlignedBuf, Device};
use crate::state::{tip_after, CallKind, Tip};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Takes `<journal>/LOCK` (flock, held for the life of the returned file).
pub(super) fn lock_journal(dir: &Path) -> Result<File, WriteError> {
    let path = dir.join(layout::LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(format!("cannot open the journal lock {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WriteError::Locked { dir: dir.to_path_buf(), lock: path });
        }
        return Err(WriteError::Io { what: format!("cannot lock {}", path.display()), source: err });
    }
    Ok(file)
}

/// Removes what interrupted work left under `dir` (`*.tmp`): never visible
/// to readers, never acknowledged.
pub(super) fn remove_leftovers(device: &dyn Device, dir: &Path, dirs: bool) -> Result<(), WriteError> {
    for tmp in layout::list_tmp(dir)? {
        let r = if dirs { device.remove_dir_all(&tmp) } else { device.remove_file(&tmp) };
        r.map_err(io_at(format!("cannot remove {}", tmp.display())))?;
    }
    Ok(())
}

/// Where the newest generation ends, and what is ready after it.
#[derive(Debug)]
pub(super) struct Resumed {
    pub generation: Generation,
    pub tip: Tip,
    pub sealed: bool,
    /// Where the next record goes, and its sequence number.
    pub next: RecordLoc,
    pub next_seq: u64,
    pub last_write_unix_ms: u64,
    /// Bytes of the generation's segments in use.
    pub journal_bytes: u64,
    /// The size of a clean, already created next segment, kept as prepared space.
    pub prepared_next: Option<u64>,
}

/// Finds the end of generation `number`, erasing an unflushed last record,
/// and removes segments after it that hold nothing usable.
pub(super) fn resume(device: &dyn Device, dir: &Path, number: u64, direct: bool) -> Result<Resumed, WriteError> {
    let gen_dir = layout::generation_dir(dir, number);
    remove_leftovers(device, &gen_dir, false)?;
    loop {
        let generation = Generation::open(dir, number)?;
        let mut scanner = generation.records_from_last_segment()?;
        for r in scanner.by_ref() {
            r?;
        }
        let tail = scanner.tail().expect("scanner finished").clone();
        if let Some(torn) = tail.torn {
            eprintln!("cln-replica: ignoring a torn, unacknowledged record at {torn}");
        }
        if tail.last.is_some_and(|h| h.continues()) {
            // A chunked change whose last chunk never came (the process
            // stopped between its writes): never acknowledged. Erased, so
            // that the journal never holds an incomplete change but at its
            // very end, and lightningd's resent change goes in its place.
            let start = incomplete_change_start(&generation)?;
            eprintln!(
                "cln-replica: the change at {start} has no last chunk; it was never acknowledged and is discarded"
            );
            erase_from(device, &generation, start, tail.next, direct)?;
            continue;
        }
        if let Some(last) = tail.last {
            let seg = &generation.segments[tail.next.segment as usize - 1];
            let len = last.disk_bytes(generation.block_bytes());
            let at = tail.next.offset - len;
            if !record_on_media(device, &seg.path, at, len)? {
                let loc = RecordLoc { generation: number, segment: seg.index, offset: at };
                eprintln!(
                    "cln-replica: the last record (data_version {}) at {loc} is not on the device (an earlier flush \
                     failed); it was never acknowledged and is discarded",
                    last.data_version
                );
                erase(device, &seg.path, at, len, direct)?;
                continue;
            }
        }
        return finish(device, generation, &tail.next, tail.next_seq, tail.last.as_ref());
    }
}

fn finish(
    device: &dyn Device,
    generation: Generation,
    next: &RecordLoc,
    next_seq: u64,
    last: Option<&RecordHeader>,
) -> Result<Resumed, WriteError> {
    let tip = match last {
        Some(h) => tip_after(h.data_version, if h.is_txn() { CallKind::Txn } else { CallKind::InPlace }),
        None => Tip::At { version: generation.header.base_version, pending_txn: false },
    };
    // Segments after the tail's hold no valid record (the scanner checked);
    // keep the next one as prepared space if it is clean, drop the rest.
    let mut prepared_next = None;
    for seg in generation.segments.iter().filter(|s| s.index > next.segment) {
        let clean = seg.index == next.segment + 1 && first_record_block_is_zero(&seg.path, seg.header.block_bytes)?;
        if clean {
            prepared_next = Some(seg.file_bytes);
        } else {
            device.remove_file(&seg.path).map_err(io_at(format!("cannot remove {}", seg.path.display())))?;
            device.sync_dir(&generation.dir).map_err(io_at(format!("cannot flush {}", generation.dir.display())))?;
        }
    }
    let journal_bytes =
        generation.segments.iter().take(next.segment as usize - 1).map(|s| s.file_bytes).sum::<u64>() + next.offset;
    Ok(Resumed {
        tip,
        sealed: last.is_some_and(|h| h.kind == RecordKind::Seal),
        next: *next,
        next_seq,
        last_write_unix_ms: last.map_or(generation.header.created_unix_ms, |h| h.time_unix_ms),
        journal_bytes,
        prepared_next,
        generation,
    })
}

/// Where the trailing incomplete chunked change of `g` starts.
fn incomplete_change_start(g: &Generation) -> Result<RecordLoc, WriteError> {
    let mut start = None;
    let mut more_before = false;
    for r in g.records() {
        let r = r?;
        if !more_before {
            start = Some(r.loc);
        }
        more_before = r.header.continues();
    }
    Ok(start.expect("the generation ends with a chunk"))
}

/// Zeros the records from `start` to `end` (record boundaries of `g`),
/// across segments, each segment flushed.
fn erase_from(
    device: &dyn Device,
    g: &Generation,
    start: RecordLoc,
    end: RecordLoc,
    direct: bool,
) -> Result<(), WriteError> {
    let block = g.block_bytes() as u64;
    for seg in g.segments.iter().filter(|s| s.index >= start.segment && s.index <= end.segment) {
        let from = if seg.index == start.segment { start.offset } else { block };
        let to = if seg.index == end.segment { end.offset } else { seg.file_bytes };
        let mut at = from;
        while at < to {
            let len = (to - at).min(1 << 20);
            erase(device, &seg.path, at, len, direct)?;
            at += len;
        }
    }
    Ok(())
}

/// Zeros `len` bytes at `at` of a segment, flushed.
fn erase(device: &dyn Device, path: &Path, at: u64, len: u64, direct: bool) -> Result<(), WriteError> {
    let mut f = device.open_rw(path, direct).map_err(|e| write_error(e, path, direct))?;
    let mut zeros = AlignedBuf::with_capacity(len as usize);
    zeros.reset_zeroed(len as usize);
    f.write_all_at(&zeros, at)
        .and_then(|()| f.sync_data())
        .map_err(io_at(format!("cannot erase the unflushed record in {}", path.display())))
}

/// Whether the `len` bytes at `at` of a segment, as this process reads
/// them, are what the device holds: flushed, then read back with O_DIRECT
/// (which bypasses the page cache). `true` when O_DIRECT is refused (no
/// way to tell; the journal then runs with `direct_io = false` anyway).
fn record_on_media(device: &dyn Device, path: &Path, at: u64, len: u64) -> Result<bool, WriteError> {
    let mut f = match device.open_rw(path, true) {
        Ok(f) => f,
        Err(e) if device::is_direct_io_refusal(&e) => return Ok(true),
        Err(e) => return Err(WriteError::Io { what: format!("cannot open {}", path.display()), source: e }),
    };
    f.sync_data().map_err(io_at(format!("cannot flush {}", path.display())))?;
    let mut direct = AlignedBuf::with_capacity(len as usize);
    direct.reset_zeroed(len as usize);
    let n = match f.read_at(&mut direct, at) {
        Ok(n) => n,
        Err(e) if device::is_direct_io_refusal(&e) => return Ok(true),
        Err(e) => return Err(WriteError::Io { what: format!("cannot read {}", path.display()), source: e }),
    };
    let mut cached = vec![0u8; len as usize];
    File::open(path)
        .and_then(|c| c.read_exact_at(&mut cached, at))
        .map_err(io_at(format!("cannot read {}", path.display())))?;
    Ok(n == len as usize && direct[..] == cached[..])
}

fn first_record_block_is_zero(path: &Path, block_bytes: u32) -> Result<bool, WriteError> {
    let (f, _) = crate::files::open_regular(path, Some(super::format::SEGMENT_BYTES_MAX))
        .map_err(io_at(format!("cannot open {}", path.display())))?;
    let mut b = vec![0u8; format::RECORD_HEADER_BYTES];
    f.read_exact_at(&mut b, block_bytes as u64).map_err(io_at(format!("cannot read {}", path.display())))?;
    Ok(b.iter().all(|&x| x == 0))
}
