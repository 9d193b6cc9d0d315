//! Appending to the journal: the one synchronous durability point.
//!
//! The hot path ([`Journal::append`]) encodes one record into a reused aligned
//! buffer, writes it with one O_DIRECT `pwrite` into space that was zero-filled
//! and flushed in advance, and makes it durable with one `fdatasync`. Writing
//! into preallocated space matters: on ext4 an appending write makes every
//! fdatasync commit a metadata journal transaction (measured 3-4x slower on a
//! loop device). Segments are therefore created ahead of need by a background
//! thread ([`Preparer`]), off the hook's path.
//!
//! Invariants (asserted where they are established):
//! - a record is written at a block boundary into blocks no acknowledged
//!   record occupies, and is never written again;
//! - a failed write or flush poisons the journal: nothing is appended after it
//!   by this process (after a failed fsync the kernel may have dropped the
//!   data, so a later success proves nothing);
//! - a generation becomes visible (its directory renamed from `.tmp`) only
//!   once its snapshot and first segment are durable.

use super::format::{
    self, BaseKind, RecordHeader, RecordKind, SegmentHeader, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
};
use super::layout;
use super::reader::Generation;
use super::{Compression, JournalOptions, Progress};
use crate::device::{self, AlignedBuf, Device, DeviceFile};
use crate::filter::Filter;
use crate::state::{tip_after, CallKind, Tip};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Zero-fill chunk when creating a segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// zstd level for records compressed on the hook's path. Level 1: against
/// level 3 on the fixture trace's 702 multi-block records (docs/COMPRESSION.md)
/// it took 29-45 us per record instead of 41-83, and stored 0.9% more bytes
/// on the device (3.1% on the simulated workload): whole blocks absorb the
/// few bytes level 3 saves, and the time is spent before lightningd commits.
pub const RECORD_ZSTD_LEVEL: i32 = 1;

/// The compressor of the hook's path and its output buffer, both reused from
/// one append to the next (no allocation per record once they have grown).
struct RecordCompressor {
    cctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl RecordCompressor {
    fn new() -> Result<RecordCompressor> {
        use zstd::zstd_safe::CParameter;
        let mut cctx = zstd::bulk::Compressor::new(RECORD_ZSTD_LEVEL).context("cannot create a zstd compressor")?;
        // The reader bounds decompression by the declared size; the record's
        // CRC already covers the frame, so zstd's own checksum would add nothing.
        cctx.set_parameter(CParameter::ContentSizeFlag(true)).context("zstd: content size")?;
        cctx.set_parameter(CParameter::ChecksumFlag(false)).context("zstd: checksum")?;
        Ok(RecordCompressor { cctx, out: Vec::new() })
    }
}

/// What a record to write holds.
enum Body<'a, S> {
    /// The statements of a change (or none, for a seal): encoded here, and
    /// compressed if the journal's options allow and it saves blocks.
    Statements(&'a [S]),
    /// A stored payload as a reader found it, written as is (compaction's
    /// carried records keep their bytes, flags included).
    Stored(&'a [u8]),
}

/// The segment being appended to.
struct Active {
    generation: u64,
    dir: PathBuf,
    /// Segment 1's header: every later segment repeats its base fields.
    base: SegmentHeader,
    segment: u32,
    segment_bytes: u64,
    file: Box<dyn DeviceFile>,
    offset: u64,
    next_seq: u64,
}

/// What the snapshot writer reports for a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMade {
    pub base_kind: BaseKind,
    pub base_version: u32,
}

/// What an append stored.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub generation: u64,
    pub seq: u64,
    pub disk_bytes: u64,
}

/// The journal, open for appending by this process alone.
pub struct Journal {
    dir: PathBuf,
    device: Arc<dyn Device>,
    opts: JournalOptions,
    /// flock on `<journal>/LOCK`, held for the life of the writer.
    _lock: File,
    active: Option<Active>,
    last_generation: u64,
    tip: Tip,
    buf: AlignedBuf,
    /// `Some` when `opts.compression` is zstd.
    compressor: Option<RecordCompressor>,
    poisoned: Option<String>,
    preparer: Preparer,
    progress: Arc<Progress>,
    /// The last record written is a seal: sealing again adds nothing.
    sealed: bool,
    /// End of the last durable record: (generation, segment, byte offset).
    /// Every write starts at or after it: acknowledged bytes are never rewritten.
    durable_end: (u64, u32, u64),
    /// The journal's random identity (`identity.rs`).
    id: super::identity::JournalId,
}

fn lock_journal(dir: &Path) -> Result<File> {
    let path = dir.join(layout::LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the journal lock {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!(
                "another process is writing to the journal {} (it holds {}): only one node may use a journal",
                dir.display(),
                path.display()
            );
        }
        return Err(err).with_context(|| format!("cannot lock {}", path.display()));
    }
    Ok(file)
}

fn direct_io_context(err: io::Error, path: &Path, direct: bool) -> anyhow::Error {
    if direct && device::is_direct_io_refusal(&err) {
        anyhow!(
            "the filesystem holding {} refuses O_DIRECT ({err}); cln-replica needs it to know that a change \
             reached the device. Put the journal on a real block device, or set `direct_io = false` in \
             cln-replica.toml to accept buffered writes with fdatasync",
            path.display()
        )
    } else {
        anyhow::Error::new(err).context(format!("cannot write {}", path.display()))
    }
}

/// Creates segment `header.segment` in `gen_dir`: header block, zeros up to
/// `header.segment_bytes`, flushed, then renamed into place and the directory
/// flushed. Until the rename the segment does not exist for readers.
pub(crate) fn create_segment(device: &dyn Device, gen_dir: &Path, header: &SegmentHeader, direct: bool) -> Result<()> {
    let tmp = layout::segment_tmp_path(gen_dir, header.segment);
    let path = layout::segment_path(gen_dir, header.segment);
    let block = header.block_bytes as usize;
    assert!(header.segment_bytes.is_multiple_of(block as u64), "segment size is whole blocks");
    let mut f = device.create(&tmp, direct).map_err(|e| direct_io_context(e, &tmp, direct))?;
    let mut buf = AlignedBuf::with_capacity(ZERO_CHUNK_BYTES.max(block));
    buf.reset_zeroed(block);
    buf[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    f.write_all_at(&buf, 0).map_err(|e| direct_io_context(e, &tmp, direct))?;
    let mut offset = block as u64;
    while offset < header.segment_bytes {
        let n = (header.segment_bytes - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
        buf.reset_zeroed(n);
        f.write_all_at(&buf, offset).map_err(|e| direct_io_context(e, &tmp, direct))?;
        offset += n as u64;
    }
    f.sync_data().with_context(|| format!("cannot flush {}", tmp.display()))?;
    drop(f);
    device.rename(&tmp, &path).with_context(|| format!("cannot rename {}", tmp.display()))?;
    device.sync_dir(gen_dir).with_context(|| format!("cannot flush the directory {}", gen_dir.display()))?;
    Ok(())
}

impl Journal {
    /// Opens (creating if needed) the journal directory and finds its tip.
    pub fn open(dir: &Path, device: Arc<dyn Device>, opts: JournalOptions) -> Result<Journal> {
        opts.validate()?;
        if !dir.is_dir() {
            device.create_dir(dir).with_context(|| format!("cannot create the journal directory {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                device.sync_dir(parent).with_context(|| format!("cannot flush {}", parent.display()))?;
            }
        }
        let lock = lock_journal(dir)?;
        let id = super::identity::ensure(dir, device.as_ref(), !layout::list_generations(dir)?.is_empty())?;
        // Leftovers of a generation whose creation was interrupted: never
        // visible, never acknowledged.
        for tmp in layout::list_tmp(dir)? {
            device.remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        let generations = layout::list_generations(dir)?;
        let progress = Arc::new(Progress::default());
        let compressor = match opts.compression {
            Compression::Off => None,
            Compression::Zstd => Some(RecordCompressor::new()?),
        };
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            preparer: Preparer::spawn(device.clone(), opts.direct_io),
            device,
            opts,
            _lock: lock,
            active: None,
            last_generation: generations.last().copied().unwrap_or(0),
            tip: Tip::Empty,
            buf: AlignedBuf::with_capacity(64 << 10),
            compressor,
            poisoned: None,
            progress,
            sealed: false,
            durable_end: (0, 0, 0),
            id,
        };
        if let Some(&g) = generations.last() {
            journal.resume(g)?;
        }
        Ok(journal)
    }

    /// Continues the latest generation after its last valid record.
    fn resume(&mut self, number: u64) -> Result<()> {
        let gen_dir = layout::generation_dir(&self.dir, number);
        for tmp in layout::list_tmp(&gen_dir)? {
            self.device.remove_file(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        let generation = Generation::open(&self.dir, number)?;
        let mut scanner = generation.records_from_last_segment()?;
        for r in scanner.by_ref() {
            r?;
        }
        let tail = scanner.tail().expect("scanner finished").clone();
        if let Some(torn) = tail.torn {
            eprintln!("cln-replica: ignoring a torn, unacknowledged record at {torn}");
        }
        if let Some(last) = tail.last {
            // The last record may be one whose flush failed in an earlier
            // process since boot: the page cache then shows it, the media may
            // not. Appending after it would leave, after a power cut, a hole
            // followed by valid records (which the reader rightly calls
            // damage). A record not on the media was never acknowledged (its
            // flush failed): erase it and resume in its place.
            let seg = &generation.segments[tail.next.segment as usize - 1];
            let len = last.disk_bytes(generation.block_bytes());
            let at = tail.next.offset - len;
            if !self.record_on_media(&seg.path, at, len)? {
                eprintln!(
                    "cln-replica: the last record (data_version {}) at {} is not on the device (an earlier flush \
                     failed); it was never acknowledged and is discarded",
                    last.data_version,
                    RecordLocDisplay(number, seg.index, at)
                );
                let mut f = self
                    .device
                    .open_rw(&seg.path, self.opts.direct_io)
                    .map_err(|e| direct_io_context(e, &seg.path, self.opts.direct_io))?;
                let mut zeros = AlignedBuf::with_capacity(len as usize);
                zeros.reset_zeroed(len as usize);
                f.write_all_at(&zeros, at)
                    .and_then(|()| f.sync_data())
                    .with_context(|| format!("cannot erase the unflushed record in {}", seg.path.display()))?;
                drop(f);
                return self.resume(number);
            }
        }
        self.tip = match tail.last {
            Some(h) => tip_after(h.data_version, if h.is_txn() { CallKind::Txn } else { CallKind::InPlace }),
            None => Tip::At { version: generation.header.base_version, pending_txn: false },
        };
        self.sealed = tail.last.is_some_and(|h| h.kind == RecordKind::Seal);
        // Segments after the tail's hold no valid record (the scanner checked);
        // keep the next one as prepared space if it is clean, drop the rest.
        let mut prepared = None;
        for seg in generation.segments.iter().filter(|s| s.index > tail.next.segment) {
            let clean =
                seg.index == tail.next.segment + 1 && first_record_block_is_zero(&seg.path, seg.header.block_bytes)?;
            if clean {
                prepared = Some(seg.file_bytes);
            } else {
                self.device.remove_file(&seg.path).with_context(|| format!("cannot remove {}", seg.path.display()))?;
                self.device.sync_dir(&gen_dir)?;
            }
        }
        let seg = &generation.segments[tail.next.segment as usize - 1];
        let file = self
            .device
            .open_rw(&seg.path, self.opts.direct_io)
            .map_err(|e| direct_io_context(e, &seg.path, self.opts.direct_io))?;
        let journal_bytes: u64 =
            generation.segments.iter().take(tail.next.segment as usize - 1).map(|s| s.file_bytes).sum::<u64>()
                + tail.next.offset;
        self.durable_end = (number, tail.next.segment, tail.next.offset);
        self.active = Some(Active {
            generation: number,
            dir: gen_dir,
            base: generation.header.clone(),
            segment: seg.index,
            segment_bytes: seg.file_bytes,
            file,
            offset: tail.next.offset,
            next_seq: tail.next_seq,
        });
        self.progress.publish(|p| {
            p.generation = number;
            p.seq = tail.next_seq - 1;
            p.tip = self.tip;
            p.journal_bytes = journal_bytes;
            p.last_write_unix_ms = tail.last.map(|h| h.time_unix_ms).unwrap_or(generation.header.created_unix_ms);
            p.sealed = self.sealed;
        });
        match prepared {
            Some(bytes) => self.preparer.mark_ready(number, tail.next.segment + 1, bytes),
            None => self.request_next_segment(),
        }
        Ok(())
    }

    /// Whether the `len` bytes at `at` of a segment, as this process reads
    /// them, are what the device holds: flushed, then read back with O_DIRECT
    /// (which bypasses the page cache). `true` when O_DIRECT is refused (no
    /// way to tell; the journal then runs with `direct_io = false` anyway).
    fn record_on_media(&self, path: &Path, at: u64, len: u64) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let mut f = match self.device.open_rw(path, true) {
            Ok(f) => f,
            Err(e) if device::is_direct_io_refusal(&e) => return Ok(true),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        };
        f.sync_data().with_context(|| format!("cannot flush {}", path.display()))?;
        let mut direct = AlignedBuf::with_capacity(len as usize);
        direct.reset_zeroed(len as usize);
        let n = match f.read_at(&mut direct, at) {
            Ok(n) => n,
            Err(e) if device::is_direct_io_refusal(&e) => return Ok(true),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut cached = vec![0u8; len as usize];
        File::open(path)
            .and_then(|c| c.read_exact_at(&mut cached, at))
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(n == len as usize && direct[..] == cached[..])
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tip(&self) -> Tip {
        self.tip
    }

    pub fn generation(&self) -> u64 {
        self.active.as_ref().map(|a| a.generation).unwrap_or(0)
    }

    /// The journal's random identity, which binds its remote copies to it.
    pub fn id(&self) -> super::identity::JournalId {
        self.id
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_usable(&self) -> Result<()> {
        if let Some(why) = &self.poisoned {
            bail!("the journal stopped accepting writes after an earlier failure: {why}");
        }
        Ok(())
    }

    fn poison(&mut self, err: anyhow::Error) -> anyhow::Error {
        let errno = err.chain().find_map(|c| c.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error));
        let what = match errno {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                "the backup device is full; lightningd must stop before committing. Free space on it (or move \
                 the journal to a larger device), then start lightningd again"
            }
            Some(libc::EROFS) => {
                "the backup device became read-only (the kernel does that after I/O errors: check `dmesg`); \
                 lightningd must stop before committing"
            }
            _ => "the backup device failed; lightningd must stop before committing",
        };
        let err = err.context(what);
        self.poisoned = Some(format!("{err:#}"));
        self.progress.publish(|p| p.failed = true);
        err
    }

    /// Waits for the background creation of the next segment, if one is
    /// running: the I/O the journal does outside `append` and `seal`. For
    /// tests that count the device's operations.
    pub fn wait_background(&self) {
        self.preparer.wait_idle();
    }

    fn request_next_segment(&mut self) {
        let Some(a) = &self.active else { return };
        let header = SegmentHeader {
            segment: a.segment + 1,
            segment_bytes: self.opts.segment_bytes.next_multiple_of(a.base.block_bytes as u64),
            created_unix_ms: now_unix_ms(),
            ..a.base.clone()
        };
        self.preparer.request(a.generation, a.dir.clone(), header);
    }

    /// What the current generation leaves out (what the next one will, if
    /// there is none yet).
    pub fn filter(&self) -> Filter {
        self.active.as_ref().map_or(self.opts.filter, |a| a.base.filter)
    }

    /// Appends a change: the hook's hot path. Returns once the record is
    /// durable. The statements the generation's filter leaves out are not
    /// stored; with no filter nothing is copied.
    pub fn append<S: AsRef<str>>(&mut self, data_version: u32, kind: CallKind, statements: &[S]) -> Result<Appended> {
        let filter = self.filter();
        if filter == Filter::None {
            return self.append_kept(data_version, kind, statements);
        }
        let kept: Vec<&str> = statements.iter().map(AsRef::as_ref).filter(|s| filter.keeps(s)).collect();
        // The filter drops only statements on cache tables, never lightningd's
        // data_version increment that ends a transaction (a `vars` UPDATE):
        // without it the record could not be told from an in-place call.
        assert!(
            kind != CallKind::Txn || kept.last().copied() == statements.last().map(AsRef::as_ref),
            "the filter must keep a transaction's closing increment"
        );
        self.append_kept(data_version, kind, &kept)
    }

    fn append_kept<S: AsRef<str>>(&mut self, data_version: u32, kind: CallKind, statements: &[S]) -> Result<Appended> {
        let payload_bytes = format::payload_bytes(statements);
        if payload_bytes > RECORD_PAYLOAD_BYTES_MAX as usize {
            bail!(
                "the change for data_version {data_version} is {payload_bytes} bytes, more than a record may hold \
                 ({RECORD_PAYLOAD_BYTES_MAX} bytes)"
            );
        }
        let header = RecordHeader {
            kind: RecordKind::Change,
            flags: if kind == CallKind::Txn { format::FLAG_TXN } else { 0 },
            data_version,
            payload_bytes: payload_bytes as u32,
            seq: 0,
            generation: 0,
            time_unix_ms: now_unix_ms(),
        };
        let appended = self.write_record(header, Body::Statements(statements))?;
        self.tip = tip_after(data_version, kind);
        self.sealed = false;
        let tip = self.tip;
        self.progress.publish(|p| {
            p.tip = tip;
            p.seq = appended.seq;
            p.journal_bytes += appended.disk_bytes;
            p.last_write_unix_ms = header.time_unix_ms;
            p.sealed = false;
        });
        Ok(appended)
    }

    /// Marks a clean stop: a seal record carrying the tip. Idempotent.
    pub fn seal(&mut self) -> Result<()> {
        let Tip::At { version, pending_txn } = self.tip else { return Ok(()) };
        if self.sealed {
            return Ok(());
        }
        let header = RecordHeader {
            kind: RecordKind::Seal,
            flags: if pending_txn { format::FLAG_TXN } else { 0 },
            data_version: version,
            payload_bytes: 0,
            seq: 0,
            generation: 0,
            time_unix_ms: now_unix_ms(),
        };
        let appended = self.write_record::<&str>(header, Body::Statements(&[]))?;
        self.sealed = true;
        self.progress.publish(|p| {
            p.seq = appended.seq;
            p.journal_bytes += appended.disk_bytes;
            p.sealed = true;
        });
        Ok(())
    }

    fn write_record<S: AsRef<str>>(&mut self, header: RecordHeader, body: Body<'_, S>) -> Result<Appended> {
        self.write_record_then(header, body, true)
    }

    /// Encodes a change or seal into `self.buf`; returns the bytes to write and
    /// the header as stored. A change taking more than one block is compressed
    /// (when the options say so) and stored compressed iff that takes fewer
    /// blocks: a one-block record cannot shrink, and a record that would fill
    /// as many blocks either way is kept plain, cheaper to read.
    fn encode<S: AsRef<str>>(
        &mut self,
        mut header: RecordHeader,
        statements: &[S],
        block: u32,
    ) -> (usize, RecordHeader) {
        let len = format::encode_record(&mut self.buf, block, &header, statements);
        let Some(z) = self.compressor.as_mut() else { return (len, header) };
        if header.kind != RecordKind::Change || len <= block as usize {
            return (len, header);
        }
        let plain = &self.buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.payload_bytes as usize];
        // The largest stored payload that still saves a block: zstd stops with
        // an error as soon as its output would not fit (incompressible data
        // costs no more than that).
        let room = len - block as usize - RECORD_HEADER_BYTES;
        if z.out.len() < room {
            z.out.resize(room, 0);
        }
        let Ok(n) = z.cctx.compress_to_buffer(plain, &mut z.out[..room]) else { return (len, header) };
        // Pair check with the reader's bound (cheap: the frame header only;
        // the full round trip is tested).
        assert!(
            matches!(zstd::zstd_safe::get_frame_content_size(&z.out[..n]), Ok(Some(m)) if m == plain.len() as u64),
            "the frame declares the payload's size"
        );
        header.flags |= format::FLAG_ZSTD;
        header.payload_bytes = n as u32;
        let stored = format::encode_record_stored(&mut self.buf, block, &header, &z.out[..n]);
        assert!(stored < len, "a compressed record takes fewer blocks");
        (stored, header)
    }

    /// Writes a record; flushes it unless `flush` is false (the caller then
    /// flushes the segment before anything depends on the record).
    fn write_record_then<S: AsRef<str>>(
        &mut self,
        mut header: RecordHeader,
        body: Body<'_, S>,
        flush: bool,
    ) -> Result<Appended> {
        self.check_usable()?;
        let a = self.active.as_ref().ok_or_else(|| anyhow!("no generation to append to"))?;
        header.seq = a.next_seq;
        header.generation = a.generation;
        let block = a.base.block_bytes;
        let (len, header) = match body {
            Body::Statements(statements) => self.encode(header, statements, block),
            Body::Stored(stored) => (format::encode_record_stored(&mut self.buf, block, &header, stored), header),
        };
        let a = self.active.as_ref().expect("checked above");
        if a.offset + len as u64 > a.segment_bytes {
            if let Err(e) = self.switch_segment(len as u64) {
                return Err(self.poison(e));
            }
        }
        let a = self.active.as_mut().expect("active segment");
        // The record starts on a block boundary past every acknowledged one and
        // fits in the segment: it overwrites only zeros or an unacknowledged tail.
        assert!(a.offset.is_multiple_of(block as u64) && a.offset >= block as u64, "record offset is block aligned");
        assert!(a.offset + len as u64 <= a.segment_bytes, "record fits in its segment");
        assert!(len % block as usize == 0 && header.seq == a.next_seq, "whole blocks, next sequence number");
        let offset = a.offset;
        assert!(
            (a.generation, a.segment, offset) >= self.durable_end,
            "a write at generation {}, segment {}, offset {offset} would overwrite durable data ending at {:?}",
            a.generation,
            a.segment,
            self.durable_end
        );
        let write =
            a.file
                .write_all_at(&self.buf[..len], offset)
                .and_then(|()| if flush { a.file.sync_data() } else { Ok(()) });
        if let Err(e) = write {
            let seg = a.segment;
            let ctx = format!(
                "writing record {} (data_version {}) at generation {}, segment {seg}, byte offset {offset}",
                header.seq, header.data_version, header.generation
            );
            return Err(self.poison(anyhow::Error::new(e).context(ctx)));
        }
        a.offset += len as u64;
        a.next_seq += 1;
        self.durable_end = (a.generation, a.segment, a.offset);
        Ok(Appended { generation: a.generation, seq: header.seq, disk_bytes: len as u64 })
    }

    /// Moves to the next segment, which must hold at least `record_bytes`.
    fn switch_segment(&mut self, record_bytes: u64) -> Result<()> {
        let a = self.active.as_ref().expect("active segment");
        let block = a.base.block_bytes as u64;
        let next = a.segment + 1;
        let needed = block + record_bytes;
        let path = layout::segment_path(&a.dir, next);
        let ready = match self.preparer.take(a.generation, next) {
            Some(Ok(bytes)) if bytes >= needed => Some(bytes),
            Some(Ok(_)) => {
                // Prepared, but too small for this record: never written, replace it.
                self.device.remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                None
            }
            Some(Err(e)) => {
                eprintln!("cln-replica: preparing segment {next} in the background failed ({e}); retrying now");
                None
            }
            None => None,
        };
        let segment_bytes = match ready {
            Some(bytes) => bytes,
            None => {
                let bytes = needed.max(self.opts.segment_bytes).next_multiple_of(block);
                let header = SegmentHeader {
                    segment: next,
                    segment_bytes: bytes,
                    created_unix_ms: now_unix_ms(),
                    ..a.base.clone()
                };
                if path.exists() {
                    self.device.remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
                }
                create_segment(self.device.as_ref(), &a.dir, &header, self.opts.direct_io)
                    .with_context(|| format!("cannot create journal segment {} ({bytes} bytes)", path.display()))?;
                bytes
            }
        };
        let file = self
            .device
            .open_rw(&path, self.opts.direct_io)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let a = self.active.as_mut().expect("active segment");
        a.segment = next;
        a.segment_bytes = segment_bytes;
        a.file = file;
        a.offset = block;
        self.progress.publish(|p| p.journal_bytes += block);
        self.request_next_segment();
        Ok(())
    }

    /// Starts a new generation: `write_snapshot` writes the database at the
    /// new base to the path it is given; the journal makes it durable, records
    /// its size and checksum, and creates the first segment. Nothing is
    /// visible to readers until all of that is durable.
    pub fn start_generation(&mut self, write_snapshot: &mut dyn FnMut(&Path) -> Result<SnapshotMade>) -> Result<u64> {
        self.check_usable()?;
        let number = self.last_generation + 1;
        let tmp_dir = layout::generation_tmp_dir(&self.dir, number);
        let final_dir = layout::generation_dir(&self.dir, number);
        if tmp_dir.exists() {
            self.device.remove_dir_all(&tmp_dir).with_context(|| format!("cannot remove {}", tmp_dir.display()))?;
        }
        self.device.create_dir(&tmp_dir).with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        let snapshot_path = tmp_dir.join(layout::SNAPSHOT_FILE);
        let made = write_snapshot(&snapshot_path)?;
        let io_step = |r: Result<()>, this: &mut Journal| r.map_err(|e| this.poison(e));
        let r =
            self.device.sync_file(&snapshot_path).with_context(|| format!("cannot flush {}", snapshot_path.display()));
        io_step(r, self)?;
        let (snapshot_bytes, snapshot_crc32c) = file_crc32c(&snapshot_path)?;
        let probe = tmp_dir.join("probe.tmp");
        let dio = if self.opts.direct_io {
            drop(self.device.create(&probe, true).map_err(|e| direct_io_context(e, &probe, true))?);
            let dio = self.device.dio_alignment(&probe);
            self.device.remove_file(&probe).with_context(|| format!("cannot remove {}", probe.display()))?;
            dio
        } else {
            None
        };
        let block_bytes = self.opts.block_bytes.max(dio.unwrap_or(0));
        let header = SegmentHeader {
            block_bytes,
            generation: number,
            segment: 1,
            base_kind: made.base_kind,
            base_version: made.base_version,
            snapshot_bytes,
            snapshot_crc32c,
            created_unix_ms: now_unix_ms(),
            segment_bytes: self.opts.segment_bytes.next_multiple_of(block_bytes as u64),
            filter: self.opts.filter,
        };
        let r = create_segment(self.device.as_ref(), &tmp_dir, &header, self.opts.direct_io);
        io_step(r, self)?;
        let r = (|| -> Result<()> {
            self.device.sync_dir(&tmp_dir)?;
            self.device.rename(&tmp_dir, &final_dir)?;
            self.device.sync_dir(&self.dir)?;
            Ok(())
        })()
        .with_context(|| format!("cannot move generation {number} into place in {}", self.dir.display()));
        io_step(r, self)?;
        let path = layout::segment_path(&final_dir, 1);
        let file = self
            .device
            .open_rw(&path, self.opts.direct_io)
            .with_context(|| format!("cannot open {}", path.display()))?;
        self.active = Some(Active {
            generation: number,
            dir: final_dir,
            segment: 1,
            segment_bytes: header.segment_bytes,
            base: header.clone(),
            file,
            offset: block_bytes as u64,
            next_seq: 1,
        });
        self.last_generation = number;
        self.durable_end = (number, 1, block_bytes as u64);
        self.tip = Tip::At { version: made.base_version, pending_txn: false };
        self.sealed = false;
        let tip = self.tip;
        self.progress.publish(|p| {
            p.generation = number;
            p.seq = 0;
            p.tip = tip;
            p.journal_bytes = block_bytes as u64;
            p.last_write_unix_ms = header.created_unix_ms;
            p.sealed = false;
        });
        self.request_next_segment();
        Ok(number)
    }

    /// The number the next generation will have.
    pub fn next_generation_number(&self) -> u64 {
        self.last_generation + 1
    }

    /// When the current generation was created (0 if none).
    pub fn generation_created_unix_ms(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.base.created_unix_ms)
    }

    /// Sequence number of the last record of the current generation (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.next_seq - 1)
    }

    /// Whether the last record written is a seal.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Makes a generation built by compaction the current one: writes
    /// `carried` (the records of the current generation after the point the
    /// compacted snapshot reached: the pending, acknowledged-but-unconfirmed
    /// transaction and whatever came after it) into its segment 1 with their
    /// original times, flushes them, and only then renames it into place.
    /// Until that rename the current generation is untouched, and after it
    /// the new one holds every acknowledged record: a crash at any step loses
    /// nothing.
    ///
    /// Errors before any write leave the journal as it was (the caller drops
    /// the prepared generation); an I/O failure after that poisons it.
    pub fn adopt_generation(&mut self, prepared: &PreparedGeneration, carried: &[super::Record]) -> Result<u64> {
        self.check_usable()?;
        let h = &prepared.header;
        let number = self.last_generation + 1;
        if h.generation != number || h.segment != 1 || h.base_kind != BaseKind::Compacted {
            bail!("prepared generation {} is not the next one ({number})", h.generation);
        }
        // The carried records must continue the compacted base exactly as they
        // continued the current generation: same decisions, same tip.
        let mut tip = Tip::At { version: h.base_version, pending_txn: false };
        let mut bytes = h.block_bytes as u64;
        for r in carried {
            if r.header.kind != RecordKind::Change {
                bail!("only change records are carried into a new generation");
            }
            let kind = r.call_kind();
            match crate::state::decide(tip, r.header.data_version, kind) {
                crate::state::Decision::Append | crate::state::Decision::Supersede | crate::state::Decision::Abort => {}
                other => bail!("carried record {} cannot follow {tip:?}: {other:?}", r.header.data_version),
            }
            tip = tip_after(r.header.data_version, kind);
            bytes += r.header.disk_bytes(h.block_bytes);
        }
        if tip != self.tip {
            bail!("the compacted generation would end at {tip:?}, the journal is at {:?}", self.tip);
        }
        if bytes > h.segment_bytes {
            bail!(
                "the records to carry ({bytes} bytes) do not fit in the prepared segment ({} bytes)",
                h.segment_bytes
            );
        }
        let final_dir = layout::generation_dir(&self.dir, number);
        let seg_path = layout::segment_path(&prepared.dir, 1);
        let file = match self.device.open_rw(&seg_path, self.opts.direct_io) {
            Ok(f) => f,
            Err(e) => return Err(self.poison(direct_io_context(e, &seg_path, self.opts.direct_io))),
        };
        let previous = self.active.replace(Active {
            generation: number,
            dir: final_dir.clone(),
            base: h.clone(),
            segment: 1,
            segment_bytes: h.segment_bytes,
            file,
            offset: h.block_bytes as u64,
            next_seq: 1,
        });
        let mut written = h.block_bytes as u64;
        // One flush for all of them (they share segment 1: checked above).
        for (i, r) in carried.iter().enumerate() {
            // Copied as stored (compressed or not), but checked readable first:
            // a new generation must not carry damage forward.
            if let Err(e) = r.statements() {
                self.active = previous;
                return Err(anyhow::Error::new(e).context("a record to carry is unreadable"));
            }
            let header = RecordHeader { seq: 0, generation: 0, ..r.header };
            let appended = self.write_record_then::<&str>(header, Body::Stored(&r.payload), i + 1 == carried.len())?;
            written += appended.disk_bytes;
        }
        crate::crashpoint::crash_point("compact-records-carried");
        // The prepared directory's entries were flushed when it was finalized.
        let r = (|| -> Result<()> {
            self.device.rename(&prepared.dir, &final_dir)?;
            self.device.sync_dir(&self.dir)?;
            Ok(())
        })()
        .with_context(|| format!("cannot move generation {number} into place in {}", self.dir.display()));
        r.map_err(|e| self.poison(e))?;
        crate::crashpoint::crash_point("compact-renamed");
        // Invariant: the new generation ends where the old one did.
        assert_eq!(tip, self.tip, "a compacted generation continues the journal's tip");
        self.last_generation = number;
        self.sealed = false;
        let seq = carried.len() as u64;
        let last_write = carried.last().map_or(h.created_unix_ms, |r| r.header.time_unix_ms);
        self.progress.publish(|p| {
            p.generation = number;
            p.seq = seq;
            p.tip = tip;
            p.journal_bytes = written;
            p.last_write_unix_ms = last_write;
            p.sealed = false;
        });
        self.request_next_segment();
        Ok(number)
    }
}

/// A generation built off the hook's path (by compaction) in
/// `gen-N.compact.tmp/`: its snapshot flushed, its segment 1 full-size,
/// zero-filled, with its header written and flushed. Invisible to readers
/// until [`Journal::adopt_generation`] renames it into place.
#[derive(Debug, Clone)]
pub struct PreparedGeneration {
    pub dir: PathBuf,
    pub header: SegmentHeader,
}

/// Creates a segment file of `bytes` bytes, all zeros, flushed: space for a
/// generation built in the background. Its header is written later
/// ([`write_segment_header`]), once the snapshot it describes is final.
pub fn create_zeroed_segment(device: &dyn Device, path: &Path, bytes: u64, block: u32, direct: bool) -> Result<()> {
    assert!(bytes.is_multiple_of(block as u64), "segment size is whole blocks");
    let mut f = device.create(path, direct).map_err(|e| direct_io_context(e, path, direct))?;
    let mut buf = AlignedBuf::with_capacity(ZERO_CHUNK_BYTES.max(block as usize));
    let mut offset = 0;
    while offset < bytes {
        let n = (bytes - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
        buf.reset_zeroed(n);
        f.write_all_at(&buf, offset).map_err(|e| direct_io_context(e, path, direct))?;
        offset += n as u64;
    }
    f.sync_data().with_context(|| format!("cannot flush {}", path.display()))?;
    Ok(())
}

/// Writes (or rewrites) block 0 of a segment created by
/// [`create_zeroed_segment`], and flushes it.
pub fn write_segment_header(device: &dyn Device, path: &Path, header: &SegmentHeader, direct: bool) -> Result<()> {
    let mut f = device.open_rw(path, direct).map_err(|e| direct_io_context(e, path, direct))?;
    let mut buf = AlignedBuf::with_capacity(header.block_bytes as usize);
    buf.reset_zeroed(header.block_bytes as usize);
    buf[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
    f.write_all_at(&buf, 0).map_err(|e| direct_io_context(e, path, direct))?;
    f.sync_data().with_context(|| format!("cannot flush {}", path.display()))?;
    Ok(())
}

/// Retention: removes every generation but the newest `keep`. Each one is
/// first renamed to `gen-N.retired.tmp` (readers ignore it, the writer's next
/// open finishes removing it) and the rename flushed, so a crash never leaves
/// a half-removed generation under its real name. Returns the removed numbers.
pub fn retire_generations(device: &dyn Device, journal: &Path, keep: usize) -> Result<Vec<u64>> {
    assert!(keep >= 1, "retention never removes the newest generation");
    let numbers = layout::list_generations(journal)?;
    let old = &numbers[..numbers.len().saturating_sub(keep)];
    for &g in old {
        let dir = layout::generation_dir(journal, g);
        let retired = layout::generation_retired_dir(journal, g);
        device.rename(&dir, &retired).with_context(|| format!("cannot rename {}", dir.display()))?;
        device.sync_dir(journal).with_context(|| format!("cannot flush {}", journal.display()))?;
        crate::crashpoint::crash_point("retention-renamed");
        device.remove_dir_all(&retired).with_context(|| format!("cannot remove {}", retired.display()))?;
    }
    if !old.is_empty() {
        device.sync_dir(journal).with_context(|| format!("cannot flush {}", journal.display()))?;
    }
    Ok(old.to_vec())
}

impl Drop for Journal {
    /// Waits for the segment preparer before the lock (a field) is released:
    /// a journal reopened in the same process must not meet a segment still
    /// being created by the previous writer's thread.
    fn drop(&mut self) {
        self.preparer.shutdown();
    }
}

/// Formats a record location without building a [`super::RecordLoc`].
struct RecordLocDisplay(u64, u32, u64);
impl std::fmt::Display for RecordLocDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}, segment {}, byte offset {}", self.0, self.1, self.2)
    }
}

fn first_record_block_is_zero(path: &Path, block_bytes: u32) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut b = vec![0u8; format::RECORD_HEADER_BYTES];
    f.read_exact_at(&mut b, block_bytes as u64).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(b.iter().all(|&x| x == 0))
}

/// Size and CRC32C of a file, read in chunks.
pub fn file_crc32c(path: &Path) -> Result<(u64, u32)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
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

/// Background creation of the next segment, so that the hook never waits
/// for a zero-fill. One job at a time: the writer asks for segment k+1 when
/// it starts writing into segment k.
struct Preparer {
    /// `None` once the preparer is shutting down.
    jobs: Option<mpsc::SyncSender<(u64, PathBuf, SegmentHeader)>>,
    slot: Arc<(Mutex<Slot>, Condvar)>,
    worker: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Slot {
    Idle,
    Working { generation: u64, segment: u32 },
    Done { generation: u64, segment: u32, result: Result<u64, String> },
}

impl Preparer {
    fn spawn(device: Arc<dyn Device>, direct: bool) -> Preparer {
        // Capacity 1: the writer never has more than one segment ahead.
        let (tx, rx) = mpsc::sync_channel::<(u64, PathBuf, SegmentHeader)>(1);
        let slot = Arc::new((Mutex::new(Slot::Idle), Condvar::new()));
        let worker_slot = slot.clone();
        let worker = thread::Builder::new()
            .name("segment-preparer".into())
            .spawn(move || {
                for (generation, dir, header) in rx {
                    let result = create_segment(device.as_ref(), &dir, &header, direct)
                        .map(|()| header.segment_bytes)
                        .map_err(|e| format!("{e:#}"));
                    let (lock, cv) = &*worker_slot;
                    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                    *s = Slot::Done { generation, segment: header.segment, result };
                    cv.notify_all();
                }
            })
            .expect("spawn the segment preparer thread");
        Preparer { jobs: Some(tx), slot, worker: Some(worker) }
    }

    /// Stops the worker once its current job is done. Until then it may be
    /// writing into the journal directory, so the journal's lock must be held.
    fn shutdown(&mut self) {
        drop(self.jobs.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    fn request(&self, generation: u64, dir: PathBuf, header: SegmentHeader) {
        let (lock, _) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, Slot::Working { .. }) {
            // A previous job is still running (a generation changed under it);
            // the switch will create the segment itself if needed.
            return;
        }
        *s = Slot::Working { generation, segment: header.segment };
        drop(s);
        let sent = self.jobs.as_ref().is_some_and(|j| j.try_send((generation, dir, header)).is_ok());
        if !sent {
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Idle;
            self.slot.1.notify_all();
        }
    }

    /// Waits until no job is running (its result, if any, stays for `take`).
    fn wait_idle(&self) {
        let (lock, cv) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*s, Slot::Working { .. }) {
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A segment prepared by an earlier process, found clean at open.
    fn mark_ready(&self, generation: u64, segment: u32, bytes: u64) {
        let (lock, _) = &*self.slot;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Done { generation, segment, result: Ok(bytes) };
    }

    /// The prepared segment's size, waiting if it is still being created.
    /// `None` if nothing was prepared for this segment.
    fn take(&self, generation: u64, segment: u32) -> Option<Result<u64, String>> {
        let (lock, cv) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*s {
                Slot::Working { generation: g, segment: k } if (*g, *k) == (generation, segment) => {
                    s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                Slot::Done { generation: g, segment: k, .. } if (*g, *k) == (generation, segment) => {
                    let Slot::Done { result, .. } = std::mem::replace(&mut *s, Slot::Idle) else { unreachable!() };
                    return Some(result);
                }
                _ => return None,
            }
        }
    }
}
