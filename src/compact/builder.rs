//! Steps 1-3 of compaction: the next generation's snapshot built from the
//! current one's, and the records to carry into it at the switch.

use crate::clock::now_unix_ms;
use crate::crashpoint::crash_point;
use crate::device::Device;
use crate::files::file_crc32c;
use crate::journal::format::{BaseKind, RecordKind, SegmentHeader};
use crate::journal::reader::{Generation, Record, RecordLoc};
use crate::journal::writer::PreparedGeneration;
use crate::journal::{layout, segment, Bound, Change, Cursor, JournalOptions, Resolved};
use crate::pace::{Pace, Pacer};
use crate::replay::{self, ReplayDb};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The chunk of the compaction's writes beside a running journal (the
/// snapshot copy, segment 1's zeros), each flushed and rested after
/// ([`crate::pace`]): a hook's flush waits behind one chunk at most.
pub const PACED_CHUNK_BYTES: u64 = 128 << 10;

/// Builds the snapshot of the next generation from the current one.
pub struct Builder {
    journal: PathBuf,
    device: Arc<dyn Device>,
    direct: bool,
    pub(super) old: u64,
    number: u64,
    dir: PathBuf,
    conn: ReplayDb,
    /// Where the catch-up stands in the old generation.
    cursor: Cursor,
    block_bytes: u32,
    segment_bytes: u64,
    filter: crate::filter::Filter,
    /// Records applied to the snapshot so far.
    pub applied: u64,
    /// Called after each record read (offline: the progress bar).
    pub on_record: Option<Box<dyn FnMut(u64, RecordLoc) + Send>>,
    /// How the job writes beside a running journal; none offline.
    pace: Option<Pace>,
}

/// What the hook thread needs to switch to a compacted generation.
#[derive(Debug)]
pub struct Handoff {
    pub old_generation: u64,
    pub prepared: PreparedGeneration,
    /// The old generation's records from here on are carried, not applied.
    pub next: RecordLoc,
    pub next_seq: u64,
    /// The pending transaction at `next`'s left (carried first).
    pub pending: Option<Change>,
}

impl Builder {
    /// Step 1: the working directory, the old snapshot, an empty segment 1.
    /// `pace`: the job shares the device with a running journal (the plugin),
    /// so its writes go in small flushed chunks, rested within the pace.
    /// `on_copied` is told the snapshot bytes copied so far, after each chunk.
    pub fn start(
        journal: &Path,
        device: Arc<dyn Device>,
        opts: &JournalOptions,
        old: &Generation,
        number: u64,
        pace: Option<Pace>,
        on_copied: &mut dyn FnMut(u64),
    ) -> Result<Builder> {
        let mut pacer = pace.map(Pacer::new);
        let dir = layout::generation_compact_dir(journal, number);
        if dir.exists() {
            device.remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        device.create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join(layout::SNAPSHOT_FILE);
        replay::copy_snapshot_paced(old, &snap, pacer.as_mut(), on_copied)?;
        crash_point("compact-snapshot-copied");
        let block_bytes = old.block_bytes();
        let segment_bytes = opts.segment_bytes.next_multiple_of(block_bytes as u64);
        segment::create_zeroed_segment(
            device.as_ref(),
            &layout::segment_path(&dir, 1),
            segment_bytes,
            block_bytes,
            opts.direct_io,
            pacer.as_mut(),
        )?;
        let conn = replay::open_for_replay(&snap)?;
        Ok(Builder {
            journal: journal.to_path_buf(),
            device,
            direct: opts.direct_io,
            old: old.number,
            number,
            dir,
            conn,
            cursor: Cursor::start(old),
            block_bytes,
            segment_bytes,
            filter: old.header.filter,
            applied: 0,
            on_record: None,
            pace,
        })
    }

    /// Sequence number of the last record read.
    pub fn last_seq(&self) -> u64 {
        self.cursor.last_seq()
    }

    /// Change records read so far.
    pub fn changes(&self) -> u64 {
        self.cursor.changes_read()
    }

    /// Step 2: reads the old generation's records up to sequence number
    /// `limit` (durable records only: a writer may be appending after it), or
    /// to the end when `None` (nobody writes: a torn tail is told apart from
    /// damage as restore does), and applies the committed ones. Returns how
    /// many records were read.
    pub fn catch_up(&mut self, limit: Option<u64>) -> Result<u64> {
        if limit.is_some_and(|l| l <= self.cursor.last_seq()) {
            return Ok(0);
        }
        let g = Generation::open(&self.journal, self.old)?;
        let before = self.cursor.records_read();
        let bound = limit.map_or(Bound::End, |seq| Bound::Durable { seq });
        let mut records = self.cursor.read(&g, bound)?;
        for item in records.by_ref() {
            let Resolved::Applied { kind, change } = item? else { continue };
            replay::apply(&self.conn, &change, kind)?;
            self.applied += 1;
            if let Some(f) = self.on_record.as_mut() {
                f(change.first().header.seq, change.loc());
            }
        }
        drop(records);
        Ok(self.cursor.records_read() - before)
    }

    /// Step 3: the snapshot, final at the confirmed version, flushed, and
    /// described in segment 1's header. The builder can still catch up
    /// afterwards (and be finalized again).
    pub fn finalize(&mut self) -> Result<PreparedGeneration> {
        if self.cursor.changes_read() == 0 {
            bail!("nothing to compact: generation {} holds no change after its snapshot", self.old);
        }
        let version = self.cursor.confirmed_version();
        // Pair assertion: the database holds the version the records lead to.
        let got = crate::snapshot::data_version(&self.conn)?;
        if !(got == Some(version) || (got.is_none() && version == 0)) {
            bail!("the compacted snapshot is at data_version {got:?}, the records lead to {version}");
        }
        let snap = self.dir.join(layout::SNAPSHOT_FILE);
        let seg = layout::segment_path(&self.dir, 1);
        // A pending record larger than half the segment gets a larger segment.
        let pending_bytes = self.cursor.pending().map_or(0, |c| c.disk_bytes(self.block_bytes));
        if pending_bytes > self.segment_bytes / 2 {
            self.segment_bytes = (self.segment_bytes + pending_bytes + self.block_bytes as u64)
                .next_multiple_of(self.block_bytes as u64);
            segment::create_zeroed_segment(
                self.device.as_ref(),
                &seg,
                self.segment_bytes,
                self.block_bytes,
                self.direct,
                // A pacer of its own: the time since the copy is no credit.
                self.pace.map(Pacer::new).as_mut(),
            )?;
        }
        self.device.sync_file(&snap).with_context(|| format!("cannot flush {}", snap.display()))?;
        let (snapshot_bytes, snapshot_crc32c) = file_crc32c(&snap)?;
        let header = SegmentHeader {
            block_bytes: self.block_bytes,
            generation: self.number,
            segment: 1,
            base_kind: BaseKind::Compacted,
            base_version: version,
            snapshot_bytes,
            snapshot_crc32c,
            created_unix_ms: now_unix_ms(),
            segment_bytes: self.segment_bytes,
            // A roll-up of the old generation: the same records, so the same filter.
            filter: self.filter,
        };
        segment::write_segment_header(self.device.as_ref(), &seg, &header, self.direct)?;
        // The directory's entries now, off the hook: the switch only renames it.
        self.device.sync_dir(&self.dir).with_context(|| format!("cannot flush {}", self.dir.display()))?;
        crash_point("compact-prepared");
        Ok(PreparedGeneration { dir: self.dir.clone(), header })
    }

    /// The hand-over for a finalized builder.
    pub fn handoff(self, prepared: PreparedGeneration) -> Handoff {
        let (next, next_seq) = self.cursor.next();
        Handoff { old_generation: self.old, prepared, next, next_seq, pending: self.cursor.finish() }
    }
}

/// The records to carry into the new generation: the pending transaction and
/// every change record after the hand-over point, up to sequence number
/// `limit` (the writer's last, when it is running).
pub fn carried_records(journal: &Path, h: &Handoff, limit: Option<u64>) -> Result<Vec<Record>> {
    // The pending change's records, with their payloads (carried as stored).
    let mut out: Vec<Record> = vec![];
    for r in h.pending.iter().flat_map(|c| c.records()) {
        out.push(r.loaded()?.into_owned());
    }
    let g = Generation::open(journal, h.old_generation)?;
    let mut scanner = g.records_after(h.next, h.next_seq)?.until_seq(limit);
    for rec in scanner.by_ref() {
        let rec = rec?;
        if rec.header.kind == RecordKind::Change {
            out.push(rec);
        }
    }
    let next_seq = scanner.next_seq();
    if let Some(l) = limit {
        if next_seq <= l {
            bail!("generation {} ends at record {}, the writer is at {l}", h.old_generation, next_seq - 1);
        }
    }
    Ok(out)
}

/// Removes a prepared generation that will not be adopted.
pub fn discard(device: &dyn Device, prepared: &PreparedGeneration) {
    let _ = device.remove_dir_all(&prepared.dir);
}
