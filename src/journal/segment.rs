//! Segment files: the header block and the zero-fill, in one place for the
//! writer, its preparer, compaction and a journal fetched from a destination.
//!
//! A segment is created full-size and zero-filled before any record goes in:
//! writing into zeroed, allocated blocks makes each record's fdatasync a pure
//! data flush (on ext4 an appending write commits a metadata transaction per
//! flush, measured 3-4x slower on a loop device; `fallocate` is no better,
//! its unwritten extents are converted at the first write).

use super::error::{io_at, WriteError};
use super::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::layout;
use crate::device::{self, AlignedBuf, Device};
use crate::pace::Pacer;
use std::io;
use std::path::Path;

/// Zero-fill chunk when creating a segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Block 0 of a segment: the encoded header, zero-padded to `block_bytes`.
pub fn header_block(header: &SegmentHeader) -> AlignedBuf {
    let block = header.block_bytes as usize;
    let mut buf = AlignedBuf::with_capacity(block);
    buf.reset_zeroed(block);
    buf[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    buf
}

/// The error for a failed write to `path`: O_DIRECT refused, or I/O.
pub(crate) fn write_error(err: io::Error, path: &Path, direct: bool) -> WriteError {
    if direct && device::is_direct_io_refusal(&err) {
        WriteError::DirectIoRefused { path: path.to_path_buf(), source: err }
    } else {
        WriteError::Io { what: format!("cannot write {}", path.display()), source: err }
    }
}

/// Writes zeros over `[from, to)` of `f`, in chunks (the pacer's, each
/// flushed and rested after, when given).
fn zero_fill(
    f: &mut dyn device::DeviceFile,
    path: &Path,
    from: u64,
    to: u64,
    direct: bool,
    mut pacer: Option<&mut Pacer>,
) -> Result<(), WriteError> {
    let chunk = pacer.as_ref().map_or(ZERO_CHUNK_BYTES, |p| (p.chunk_bytes() as usize).clamp(4096, ZERO_CHUNK_BYTES));
    let mut buf = AlignedBuf::with_capacity(chunk);
    let mut offset = from;
    while offset < to {
        let started = std::time::Instant::now();
        let n = (to - offset).min(chunk as u64) as usize;
        buf.reset_zeroed(n);
        f.write_all_at(&buf, offset).map_err(|e| write_error(e, path, direct))?;
        offset += n as u64;
        if let Some(p) = pacer.as_deref_mut() {
            f.sync_data().map_err(io_at(format!("cannot flush {}", path.display())))?;
            p.rest_after(n as u64, started.elapsed());
        }
    }
    Ok(())
}

/// Creates segment `header.segment` in `gen_dir`: header block, zeros up to
/// `header.segment_bytes`, flushed, then renamed into place and the directory
/// flushed. Until the rename the segment does not exist for readers.
pub fn create_segment(
    device: &dyn Device,
    gen_dir: &Path,
    header: &SegmentHeader,
    direct: bool,
) -> Result<(), WriteError> {
    let tmp = layout::segment_tmp_path(gen_dir, header.segment);
    let path = layout::segment_path(gen_dir, header.segment);
    assert!(header.segment_bytes.is_multiple_of(header.block_bytes as u64), "segment size is whole blocks");
    let mut f = device.create(&tmp, direct).map_err(|e| write_error(e, &tmp, direct))?;
    let head = header_block(header);
    f.write_all_at(&head, 0).map_err(|e| write_error(e, &tmp, direct))?;
    zero_fill(f.as_mut(), &tmp, head.len() as u64, header.segment_bytes, direct, None)?;
    f.sync_data().map_err(io_at(format!("cannot flush {}", tmp.display())))?;
    drop(f);
    device.rename(&tmp, &path).map_err(io_at(format!("cannot rename {}", tmp.display())))?;
    device.sync_dir(gen_dir).map_err(io_at(format!("cannot flush the directory {}", gen_dir.display())))?;
    Ok(())
}

/// Creates a segment file of `bytes` bytes, all zeros, flushed (paced when a
/// pacer is given: compaction's segment 1 beside a running journal): space for a
/// generation built in the background. Its header is written later
/// ([`write_segment_header`]), once the snapshot it describes is final.
pub fn create_zeroed_segment(
    device: &dyn Device,
    path: &Path,
    bytes: u64,
    block: u32,
    direct: bool,
    pacer: Option<&mut Pacer>,
) -> Result<(), WriteError> {
    assert!(bytes.is_multiple_of(block as u64), "segment size is whole blocks");
    let mut f = device.create(path, direct).map_err(|e| write_error(e, path, direct))?;
    zero_fill(f.as_mut(), path, 0, bytes, direct, pacer)?;
    f.sync_data().map_err(io_at(format!("cannot flush {}", path.display())))?;
    Ok(())
}

/// Writes (or rewrites) block 0 of a segment created by
/// [`create_zeroed_segment`], and flushes it.
pub fn write_segment_header(
    device: &dyn Device,
    path: &Path,
    header: &SegmentHeader,
    direct: bool,
) -> Result<(), WriteError> {
    let mut f = device.open_rw(path, direct).map_err(|e| write_error(e, path, direct))?;
    f.write_all_at(&header_block(header), 0).map_err(|e| write_error(e, path, direct))?;
    f.sync_data().map_err(io_at(format!("cannot flush {}", path.display())))?;
    Ok(())
}
