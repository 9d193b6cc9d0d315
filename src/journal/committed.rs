//! The one path through a generation's records: scan (checksums, sequence
//! numbers, torn tail vs damage), bound by a durable sequence number, check
//! seals, and resolve with [`crate::state::Resolver`] which records lightningd
//! committed. Restore, verify's trial replay, compaction's catch-up and the
//! mirror all read a generation this way, so they cannot disagree about what
//! it holds.
//!
//! A [`Cursor`] is where a reader stands: the next record, and the
//! resolver's state (the pending transaction, held back until a later record
//! confirms or cancels it). Followers keep theirs between calls and read on
//! as the writer appends.

use super::format::{RecordHeader, RecordKind};
use super::reader::{Generation, JournalError, Record, RecordLoc, RecordScanner};
use crate::state::{CallKind, Resolution, Resolver, Tip};
use std::collections::VecDeque;

/// One `db_write` call as the journal holds it: one record, or the chunk
/// records of a large change (all but the last flagged `FLAG_MORE`), which
/// count only as a whole.
#[derive(Debug, Clone)]
pub struct Change {
    records: Vec<Record>,
}

impl Change {
    fn single(record: Record) -> Change {
        Change { records: vec![record] }
    }

    /// The first record: its data_version, kind and location are the change's.
    pub fn first(&self) -> &Record {
        &self.records[0]
    }

    pub fn data_version(&self) -> u32 {
        self.first().header.data_version
    }

    /// When the change was written (its last chunk's time).
    pub fn time_unix_ms(&self) -> u64 {
        self.records.last().expect("a change has a record").header.time_unix_ms
    }

    pub fn loc(&self) -> RecordLoc {
        self.first().loc
    }

    pub fn call_kind(&self) -> CallKind {
        self.first().call_kind()
    }

    /// Its records, in order (payloads possibly let go: see [`Record::loaded`]).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Bytes the change occupies on the device.
    pub fn disk_bytes(&self, block_bytes: u32) -> u64 {
        self.records.iter().map(|r| r.header.disk_bytes(block_bytes)).sum()
    }

    /// Calls `f` with each record's statements in order, one record loaded
    /// at a time.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&Record, &[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
        for r in &self.records {
            let r = r.loaded()?;
            let statements = r.statements()?;
            f(&r, &statements)?;
        }
        Ok(())
    }
}

/// What a reader learns about a change, in journal order.
#[derive(Debug)]
pub enum Resolved {
    /// lightningd committed it (a transaction) or ran it (in place): apply it.
    Applied { kind: CallKind, change: Change },
    /// A transaction lightningd never committed (superseded or aborted).
    Cancelled(Change),
}

/// A reader holds at most this many payload bytes of one chunked change; the
/// rest of its chunks are read again when they are applied.
const CHANGE_HELD_BYTES_MAX: u64 = 16 << 20;

/// How far a read may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Up to and including this record: the writer's last durable one.
    Durable { seq: u64 },
    /// To the end of the generation, its torn tail told apart from damage
    /// (nobody is writing, or the generation is finished).
    End,
}

impl Bound {
    fn seq_max(self) -> Option<u64> {
        match self {
            Bound::Durable { seq } => Some(seq),
            Bound::End => None,
        }
    }
}

/// Where a reader stands in one generation.
#[derive(Debug)]
pub struct Cursor {
    generation: u64,
    next: RecordLoc,
    next_seq: u64,
    resolver: Resolver<Change>,
    /// The chunks read so far of a change whose last chunk is not read yet.
    partial: Option<Change>,
    last: Option<RecordHeader>,
    records_read: u64,
    changes_read: u64,
}

impl Cursor {
    /// Before the first record of `g`, at its base.
    pub fn start(g: &Generation) -> Cursor {
        Cursor {
            generation: g.number,
            next: RecordLoc { generation: g.number, segment: 1, offset: g.block_bytes() as u64 },
            next_seq: 1,
            resolver: Resolver::new(g.header.base_version),
            partial: None,
            last: None,
            records_read: 0,
            changes_read: 0,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the records read so far lead to.
    pub fn tip(&self) -> Tip {
        self.resolver.tip()
    }

    /// The last transaction read, acknowledged to lightningd and not yet
    /// known committed.
    pub fn pending(&self) -> Option<&Change> {
        self.resolver.pending().map(|(_, c)| c)
    }

    /// The data_version every record resolved so far leads to (the tip, or
    /// the version before a pending transaction).
    pub fn confirmed_version(&self) -> u32 {
        self.resolver.confirmed_version().expect("a cursor starts at a base version")
    }

    /// Where the next record starts, and its sequence number.
    pub fn next(&self) -> (RecordLoc, u64) {
        (self.next, self.next_seq)
    }

    /// Sequence number of the last record read (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The header of the last record read, seals included.
    pub fn last(&self) -> Option<&RecordHeader> {
        self.last.as_ref()
    }

    /// Records read so far, seals and chunks included; and changes only.
    pub fn records_read(&self) -> u64 {
        self.records_read
    }

    pub fn changes_read(&self) -> u64 {
        self.changes_read
    }

    /// Reads on from where the cursor stands, within `bound`.
    pub fn read<'a>(&'a mut self, g: &'a Generation, bound: Bound) -> Result<Committed<'a>, JournalError> {
        assert_eq!(g.number, self.generation, "a cursor reads its own generation");
        let scanner = g.records_after(self.next, self.next_seq)?.until_seq(bound.seq_max());
        Ok(Committed {
            cursor: self,
            scanner,
            generation: g,
            queue: VecDeque::with_capacity(2),
            stop: None,
            stopped: false,
            failed: false,
        })
    }

    /// The pending transaction, which nothing after it confirms or cancels.
    /// A change whose last chunk was never written is no part of it: it was
    /// never acknowledged.
    pub fn finish(self) -> Option<Change> {
        self.resolver.finish().map(|(_, c)| c)
    }

    /// Where an incomplete chunked change starts, if the read ended inside one.
    pub fn incomplete_change(&self) -> Option<RecordLoc> {
        self.partial.as_ref().map(Change::loc)
    }
}

/// The `--at` / `--before` limit of a read ([`Committed::stop_after`]).
type StopAfter<'a> = Box<dyn Fn(&RecordHeader) -> bool + 'a>;

/// The records of one read, resolved, in journal order. Fused after an
/// error, except a seal that disagrees with its records
/// ([`JournalError::SealMismatch`]), which is reported and read past.
pub struct Committed<'a> {
    cursor: &'a mut Cursor,
    scanner: RecordScanner<'a>,
    generation: &'a Generation,
    /// At most two: a record releases the pending one before it and, if it
    /// is an in-place call, itself.
    queue: VecDeque<Resolved>,
    stop: Option<StopAfter<'a>>,
    stopped: bool,
    failed: bool,
}

impl<'a> Committed<'a> {
    /// Ends the read after the first record for which `past` is true (a
    /// `--at` or `--before` limit), once what it resolves is yielded: such a
    /// record still tells whether the pending transaction before it was
    /// committed.
    pub fn stop_after(mut self, past: impl Fn(&RecordHeader) -> bool + 'a) -> Self {
        self.stop = Some(Box::new(past));
        self
    }

    /// Whether the read ended at a `stop_after` record.
    pub fn stopped_early(&self) -> bool {
        self.stopped
    }

    /// A torn, never-acknowledged record found (and ignored) at the end; or
    /// the start of a chunked change whose last chunk is not there (a read
    /// to the end: nobody is writing it any more).
    pub fn torn_tail(&self) -> Option<RecordLoc> {
        self.scanner.tail().and_then(|t| t.torn).or(self.cursor.incomplete_change())
    }

    fn read_one(&mut self) -> Result<bool, JournalError> {
        let Some(rec) = self.scanner.next() else { return Ok(false) };
        let rec = rec?;
        let c = &mut *self.cursor;
        c.next = self.scanner.next_loc();
        c.next_seq = self.scanner.next_seq();
        c.last = Some(rec.header);
        c.records_read += 1;
        if self.stop.as_ref().is_some_and(|past| past(&rec.header)) {
            self.stopped = true;
        }
        if let Some(partial) = &c.partial {
            let first = &partial.first().header;
            if rec.header.kind != RecordKind::Change
                || rec.header.data_version != first.data_version
                || rec.header.is_txn() != first.is_txn()
            {
                return Err(JournalError::Corrupt {
                    loc: rec.loc,
                    detail: format!(
                        "the chunked change for data_version {} at {} has no last chunk, yet a record follows it",
                        first.data_version,
                        partial.loc()
                    ),
                });
            }
        }
        if rec.header.kind == RecordKind::Seal {
            // Pair check: the seal repeats the tip the records led to.
            let sealed = Tip::At { version: rec.header.data_version, pending_txn: rec.header.is_txn() };
            if sealed != c.resolver.tip() {
                return Err(JournalError::SealMismatch { loc: rec.loc, sealed, records: c.resolver.tip() });
            }
            return Ok(true);
        }
        let more = rec.header.continues();
        let mut change = match c.partial.take() {
            None => Change::single(rec),
            Some(mut partial) => {
                partial.records.push(rec);
                partial
            }
        };
        if more {
            hold_within_bound(&mut change, self.generation);
            c.partial = Some(change);
            return Ok(true);
        }
        c.changes_read += 1;
        let (loc, kind) = (change.loc(), change.call_kind());
        let queue = &mut self.queue;
        c.resolver
            .push(change.data_version(), kind, change, |res| {
                queue.push_back(match res {
                    Resolution::Committed { kind, item, .. } => Resolved::Applied { kind, change: item },
                    Resolution::Cancelled { item, .. } => Resolved::Cancelled(item),
                })
            })
            .map_err(|discontinuity| JournalError::Discontinuous { loc, discontinuity })?;
        Ok(true)
    }
}

impl Iterator for Committed<'_> {
    type Item = Result<Resolved, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(Ok(r));
            }
            if self.stopped || self.failed {
                return None;
            }
            match self.read_one() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e @ JournalError::SealMismatch { .. }) => return Some(Err(e)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Lets go of the payloads of a chunked change's records beyond
/// [`CHANGE_HELD_BYTES_MAX`] (they are read again when applied).
fn hold_within_bound(change: &mut Change, g: &Generation) {
    let mut held = 0u64;
    for r in &mut change.records {
        held += r.payload.len() as u64;
        if held > CHANGE_HELD_BYTES_MAX && !r.payload.is_empty() {
            let segment = g.segments[r.loc.segment as usize - 1].path.clone();
            r.unload(segment);
        }
    }
}
