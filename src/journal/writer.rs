//! Appending to the journal: the one synchronous durability point.
//!
//! The hot path ([`Journal::append`]) encodes one record into a reused aligned
//! buffer, writes it with one O_DIRECT `pwrite` into space that was zero-filled
//! and flushed in advance, and makes it durable with one `fdatasync`. Writing
//! into preallocated space matters: on ext4 an appending write makes every
//! fdatasync commit a metadata journal transaction (measured 3-4x slower on a
//! loop device). Segments are therefore created ahead of need by a background
//! thread ([`super::preparer`]), off the hook's path. Opening, retention and the
//! segment files themselves have their own modules ([`super::recovery`],
//! [`super::retention`], [`super::segment`]).
//!
//! Invariants (asserted where they are established):
//! - a record is written at a block boundary into blocks no acknowledged
//!   record occupies, and is never written again;
//! - a failed write or flush poisons the journal: nothing is appended after it
//!   by this process (after a failed fsync the kernel may have dropped the
//!   data, so a later success proves nothing);
//! - a generation becomes visible (its directory renamed from `.tmp`) only
//!   once its snapshot and first segment are durable.

use super::error::{io_at, Poison, WriteError};
use super::format::{
    self, BaseKind, RecordHeader, RecordKind, SegmentHeader, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
};
use super::layout;
use super::preparer::Preparer;
use super::recovery;
use super::segment::{self, write_error};
use super::{Compression, JournalOptions, Progress};
use crate::clock::now_unix_ms;
use crate::device::{AlignedBuf, Device, DeviceFile};
use crate::filter::Filter;
use crate::state::{tip_after, CallKind, Resolver, Tip};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    fn new() -> Result<RecordCompressor, WriteError> {
        use zstd::zstd_safe::CParameter;
        let fail = |e: io::Error| WriteError::Io { what: "cannot set up the zstd compressor".into(), source: e };
        let mut cctx = zstd::bulk::Compressor::new(RECORD_ZSTD_LEVEL).map_err(fail)?;
        // The reader bounds decompression by the declared size; the record's
        // CRC already covers the frame, so zstd's own checksum would add nothing.
        cctx.set_parameter(CParameter::ContentSizeFlag(true)).map_err(fail)?;
        cctx.set_parameter(CParameter::ChecksumFlag(false)).map_err(fail)?;
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
    /// Records were written into `file` since its last flush.
    unflushed: bool,
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
    poisoned: Option<Poison>,
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

impl Journal {
    /// Opens (creating if needed) the journal directory and finds its tip.
    pub fn open(dir: &Path, device: Arc<dyn Device>, opts: JournalOptions) -> Result<Journal, WriteError> {
        opts.validate().map_err(|e| WriteError::Refused(format!("{e:#}")))?;
        if !dir.is_dir() {
            device.create_dir(dir).map_err(io_at(format!("cannot create the journal directory {}", dir.display())))?;
            if let Some(parent) = dir.parent() {
                device.sync_dir(parent).map_err(io_at(format!("cannot flush {}", parent.display())))?;
            }
        }
        let lock = recovery::lock_journal(dir)?;
        recovery::remove_leftovers(device.as_ref(), dir, true)?;
        let id = super::identity::ensure(dir, device.as_ref(), !layout::list_generations(dir)?.is_empty())?;
        let generations = layout::list_generations(dir)?;
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
            progress: Arc::new(Progress::default()),
            sealed: false,
            durable_end: (0, 0, 0),
            id,
        };
        if let Some(&g) = generations.last() {
            journal.resume(g)?;
        }
        Ok(journal)
    }

    /// Continues generation `number` after its last valid record.
    fn resume(&mut self, number: u64) -> Result<(), WriteError> {
        let r = recovery::resume(self.device.as_ref(), &self.dir, number, self.opts.direct_io)?;
        let seg = &r.generation.segments[r.next.segment as usize - 1];
        let file = self.open_segment(&seg.path)?;
        self.tip = r.tip;
        self.sealed = r.sealed;
        self.durable_end = (number, r.next.segment, r.next.offset);
        self.active = Some(Active {
            generation: number,
            dir: r.generation.dir.clone(),
            base: r.generation.header.clone(),
            segment: seg.index,
            segment_bytes: seg.file_bytes,
            file,
            offset: r.next.offset,
            next_seq: r.next_seq,
            unflushed: false,
        });
        self.progress.publish(|p| {
            p.generation = number;
            p.seq = r.next_seq - 1;
            p.tip = r.tip;
            p.journal_bytes = r.journal_bytes;
            p.last_write_unix_ms = r.last_write_unix_ms;
            p.sealed = r.sealed;
        });
        match r.prepared_next {
            Some(bytes) => self.preparer.mark_ready(number, r.next.segment + 1, bytes),
            None => self.request_next_segment(),
        }
        Ok(())
    }

    fn open_segment(&self, path: &Path) -> Result<Box<dyn DeviceFile>, WriteError> {
        let direct = self.opts.direct_io;
        self.device.open_rw(path, direct).map_err(|e| write_error(e, path, direct))
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

    /// Why the journal stopped accepting writes, if it did.
    pub fn poisoned(&self) -> Option<&Poison> {
        self.poisoned.as_ref()
    }

    fn check_usable(&self) -> Result<(), WriteError> {
        match &self.poisoned {
            Some(p) => Err(WriteError::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    /// A write, flush or rename failed: nothing more is written by this
    /// process (after a failed fsync Linux may have dropped the data; a
    /// later success would prove nothing).
    fn poison(&mut self, err: WriteError) -> WriteError {
        let errno = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
            .or(match &err {
                WriteError::Io { source, .. } | WriteError::DirectIoRefused { source, .. } => source.raw_os_error(),
                _ => None,
            });
        let p = Poison::new(err.to_string(), errno);
        self.poisoned = Some(p.clone());
        self.progress.publish(|s| s.failed = true);
        WriteError::DeviceFailed(p)
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
    pub fn append<S: AsRef<str>>(
        &mut self,
        data_version: u32,
        kind: CallKind,
        statements: &[S],
    ) -> Result<Appended, WriteError> {
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

    fn append_kept<S: AsRef<str>>(
        &mut self,
        data_version: u32,
        kind: CallKind,
        statements: &[S],
    ) -> Result<Appended, WriteError> {
        let chunks = chunks(statements, self.opts.chunk_bytes as usize);
        if let Some(big) = chunks.iter().find(|c| format::payload_bytes(c) > RECORD_PAYLOAD_BYTES_MAX as usize) {
            // One statement larger than a record may hold: it cannot be cut.
            let bytes = format::payload_bytes(big);
            return Err(WriteError::TooLarge { data_version, bytes, max: RECORD_PAYLOAD_BYTES_MAX });
        }
        let time_unix_ms = now_unix_ms();
        let mut appended = Appended { generation: 0, seq: 0, disk_bytes: 0 };
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(
                self.active.as_ref().is_none_or(|a| !a.unflushed),
                "a record on the hook's path is written only after every earlier one is flushed"
            );
            let last = i + 1 == chunks.len();
            let mut flags = if kind == CallKind::Txn { format::FLAG_TXN } else { 0 };
            if !last {
                flags |= format::FLAG_MORE;
            }
            let header = RecordHeader {
                kind: RecordKind::Change,
                flags,
                data_version,
                payload_bytes: format::payload_bytes(chunk) as u32,
                seq: 0,
                generation: 0,
                time_unix_ms,
            };
            // Each chunk is flushed before the next is written: a reader
            // takes a damaged record followed by a valid one for acknowledged
            // data that was lost, which is true only if every record is
            // durable before the next one is written (with one flush for all
            // chunks, a power cut can keep a later chunk and lose an earlier
            // one). The change is acknowledged at its last chunk, so an
            // incomplete one is an unacknowledged tail.
            let a = self.write_record_then(header, Body::Statements(chunk), true)?;
            appended = Appended { disk_bytes: appended.disk_bytes + a.disk_bytes, ..a };
        }
        self.tip = tip_after(data_version, kind);
        self.sealed = false;
        let tip = self.tip;
        self.progress.publish(|p| {
            p.tip = tip;
            p.seq = appended.seq;
            p.journal_bytes += appended.disk_bytes;
            p.last_write_unix_ms = time_unix_ms;
            p.sealed = false;
        });
        Ok(appended)
    }

    /// Marks a clean stop: a seal record carrying the tip. Idempotent.
    pub fn seal(&mut self) -> Result<(), WriteError> {
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

    fn write_record<S: AsRef<str>>(&mut self, header: RecordHeader, body: Body<'_, S>) -> Result<Appended, WriteError> {
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
    ) -> Result<Appended, WriteError> {
        self.check_usable()?;
        let a = self.active.as_ref().ok_or_else(|| WriteError::Refused("no generation to append to".into()))?;
        header.seq = a.next_seq;
        header.generation = a.generation;
        let block = a.base.block_bytes;
        let (len, header) = match body {
            Body::Statements(statements) => self.encode(header, statements, block),
            Body::Stored(stored) => (format::encode_record_stored(&mut self.buf, block, &header, stored), header),
        };
        let a = self.active.as_mut().expect("checked above");
        if a.offset + len as u64 > a.segment_bytes {
            // The records written to this segment unflushed (earlier chunks
            // of this change) are made durable before it is left.
            if a.unflushed {
                let r = a.file.sync_data().map_err(io_at(format!("flushing segment {} before the next", a.segment)));
                if let Err(e) = r {
                    return Err(self.poison(e));
                }
                a.unflushed = false;
            }
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
            let what = format!(
                "writing record {} (data_version {}) at generation {}, segment {seg}, byte offset {offset}",
                header.seq, header.data_version, header.generation
            );
            return Err(self.poison(WriteError::Io { what, source: e }));
        }
        a.offset += len as u64;
        a.next_seq += 1;
        a.unflushed = !flush;
        self.durable_end = (a.generation, a.segment, a.offset);
        Ok(Appended { generation: a.generation, seq: header.seq, disk_bytes: len as u64 })
    }

    /// Moves to the next segment, which must hold at least `record_bytes`.
    fn switch_segment(&mut self, record_bytes: u64) -> Result<(), WriteError> {
        let a = self.active.as_ref().expect("active segment");
        let block = a.base.block_bytes as u64;
        let next = a.segment + 1;
        let needed = block + record_bytes;
        let path = layout::segment_path(&a.dir, next);
        let ready = match self.preparer.take(a.generation, next) {
            Some(Ok(bytes)) if bytes >= needed => Some(bytes),
            Some(Ok(_)) => {
                // Prepared, but too small for this record: never written, replace it.
                self.device.remove_file(&path).map_err(io_at(format!("cannot remove {}", path.display())))?;
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
                    self.device.remove_file(&path).map_err(io_at(format!("cannot remove {}", path.display())))?;
                }
                segment::create_segment(self.device.as_ref(), &a.dir, &header, self.opts.direct_io)?;
                bytes
            }
        };
        let file = self.open_segment(&path)?;
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
    pub fn start_generation(
        &mut self,
        write_snapshot: &mut dyn FnMut(&Path) -> anyhow::Result<SnapshotMade>,
    ) -> Result<u64, WriteError> {
        self.check_usable()?;
        let number = self.last_generation + 1;
        let tmp_dir = layout::generation_tmp_dir(&self.dir, number);
        let final_dir = layout::generation_dir(&self.dir, number);
        if tmp_dir.exists() {
            self.device.remove_dir_all(&tmp_dir).map_err(io_at(format!("cannot remove {}", tmp_dir.display())))?;
        }
        self.device.create_dir(&tmp_dir).map_err(io_at(format!("cannot create {}", tmp_dir.display())))?;
        let snapshot_path = tmp_dir.join(layout::SNAPSHOT_FILE);
        let made = write_snapshot(&snapshot_path).map_err(WriteError::Snapshot)?;
        let r =
            self.device.sync_file(&snapshot_path).map_err(io_at(format!("cannot flush {}", snapshot_path.display())));
        r.map_err(|e| self.poison(e))?;
        let (snapshot_bytes, snapshot_crc32c) =
            crate::files::file_crc32c(&snapshot_path).map_err(WriteError::Snapshot)?;
        let probe = tmp_dir.join("probe.tmp");
        let dio = if self.opts.direct_io {
            drop(self.device.create(&probe, true).map_err(|e| write_error(e, &probe, true))?);
            let dio = self.device.dio_alignment(&probe);
            self.device.remove_file(&probe).map_err(io_at(format!("cannot remove {}", probe.display())))?;
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
        let r = segment::create_segment(self.device.as_ref(), &tmp_dir, &header, self.opts.direct_io);
        r.map_err(|e| self.poison(e))?;
        let r = self
            .device
            .sync_dir(&tmp_dir)
            .and_then(|()| self.device.rename(&tmp_dir, &final_dir))
            .and_then(|()| self.device.sync_dir(&self.dir))
            .map_err(io_at(format!("cannot move generation {number} into place in {}", self.dir.display())));
        r.map_err(|e| self.poison(e))?;
        let file = self.open_segment(&layout::segment_path(&final_dir, 1))?;
        self.active = Some(Active {
            generation: number,
            dir: final_dir,
            segment: 1,
            segment_bytes: header.segment_bytes,
            base: header.clone(),
            file,
            offset: block_bytes as u64,
            next_seq: 1,
            unflushed: false,
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
    pub fn adopt_generation(
        &mut self,
        prepared: &PreparedGeneration,
        carried: &[super::Record],
    ) -> Result<u64, WriteError> {
        self.check_usable()?;
        let h = &prepared.header;
        let number = self.last_generation + 1;
        let refuse = |why: String| Err(WriteError::Refused(why));
        if h.generation != number || h.segment != 1 || h.base_kind != BaseKind::Compacted {
            return refuse(format!("prepared generation {} is not the next one ({number})", h.generation));
        }
        // The carried records must continue the compacted base exactly as they
        // continued the current generation: same decisions, same tip.
        let mut resolver: Resolver<()> = Resolver::new(h.base_version);
        let mut bytes = h.block_bytes as u64;
        for r in carried {
            if r.header.kind != RecordKind::Change {
                return refuse("only change records are carried into a new generation".into());
            }
            // A chunked change counts once, at its last chunk.
            if !r.header.continues() {
                if let Err(d) = resolver.push(r.header.data_version, r.call_kind(), (), |_| {}) {
                    return refuse(format!("a carried record cannot continue the compacted base: {d}"));
                }
            }
            bytes += r.header.disk_bytes(h.block_bytes);
        }
        let tip = resolver.tip();
        if tip != self.tip {
            return refuse(format!("the compacted generation would end at {tip:?}, the journal is at {:?}", self.tip));
        }
        if bytes > h.segment_bytes {
            return refuse(format!(
                "the records to carry ({bytes} bytes) do not fit in the prepared segment ({} bytes)",
                h.segment_bytes
            ));
        }
        let final_dir = layout::generation_dir(&self.dir, number);
        let seg_path = layout::segment_path(&prepared.dir, 1);
        let file = match self.open_segment(&seg_path) {
            Ok(f) => f,
            Err(e) => return Err(self.poison(e)),
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
            unflushed: false,
        });
        let mut written = h.block_bytes as u64;
        // One flush for all of them (they share segment 1: checked above).
        for (i, r) in carried.iter().enumerate() {
            // Copied as stored (compressed or not), but checked readable first:
            // a new generation must not carry damage forward.
            if let Err(e) = r.statements() {
                self.active = previous;
                return refuse(format!("a record to carry is unreadable: {e}"));
            }
            let header = RecordHeader { seq: 0, generation: 0, ..r.header };
            let appended = self.write_record_then::<&str>(header, Body::Stored(&r.payload), i + 1 == carried.len())?;
            written += appended.disk_bytes;
        }
        crate::crashpoint::crash_point("compact-records-carried");
        // The prepared directory's entries were flushed when it was finalized.
        let r = self
            .device
            .rename(&prepared.dir, &final_dir)
            .and_then(|()| self.device.sync_dir(&self.dir))
            .map_err(io_at(format!("cannot move generation {number} into place in {}", self.dir.display())));
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

impl Drop for Journal {
    /// Waits for the segment preparer before the lock (a field) is released:
    /// a journal reopened in the same process must not meet a segment still
    /// being created by the previous writer's thread.
    fn drop(&mut self) {
        self.preparer.shutdown();
    }
}

/// Cuts a change's statements into chunks of about `chunk_bytes` payload
/// bytes each, whole statements only (a statement larger than that is a
/// chunk of its own). Most changes are one chunk: nothing is copied.
fn chunks<S: AsRef<str>>(statements: &[S], chunk_bytes: usize) -> Vec<&[S]> {
    if format::payload_bytes(statements) <= chunk_bytes {
        return vec![statements];
    }
    let mut out = vec![];
    let (mut start, mut bytes) = (0, 4);
    for (i, s) in statements.iter().enumerate() {
        let one = 4 + s.as_ref().len();
        if i > start && bytes + one > chunk_bytes {
            out.push(&statements[start..i]);
            (start, bytes) = (i, 4);
        }
        bytes += one;
    }
    out.push(&statements[start..]);
    out
}
