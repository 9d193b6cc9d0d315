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

/// What a reader learns about a record, in journal order.
#[derive(Debug)]
pub enum Resolved {
    /// lightningd committed it (a transaction) or ran it (in place): apply it.
    Applied { kind: CallKind, record: Record },
    /// A transaction lightningd never committed (superseded or aborted).
    Cancelled(Record),
}

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
    resolver: Resolver<Record>,
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
    pub fn pending(&self) -> Option<&Record> {
        self.resolver.pending().map(|(_, r)| r)
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

    /// Records read so far, seals included; and change records only.
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
            queue: VecDeque::with_capacity(2),
            stop: None,
            stopped: false,
            failed: false,
        })
    }

    /// The pending transaction, which nothing after it confirms or cancels.
    pub fn finish(self) -> Option<Record> {
        self.resolver.finish().map(|(_, r)| r)
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

    /// A torn, never-acknowledged record found (and ignored) at the end.
    pub fn torn_tail(&self) -> Option<RecordLoc> {
        self.scanner.tail().and_then(|t| t.torn)
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
        if rec.header.kind == RecordKind::Seal {
            // Pair check: the seal repeats the tip the records led to.
            let sealed = Tip::At { version: rec.header.data_version, pending_txn: rec.header.is_txn() };
            if sealed != c.resolver.tip() {
                return Err(JournalError::SealMismatch { loc: rec.loc, sealed, records: c.resolver.tip() });
            }
            return Ok(true);
        }
        c.changes_read += 1;
        let (loc, kind) = (rec.loc, rec.call_kind());
        let queue = &mut self.queue;
        c.resolver
            .push(rec.header.data_version, kind, rec, |res| {
                queue.push_back(match res {
                    Resolution::Committed { kind, item, .. } => Resolved::Applied { kind, record: item },
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
