//! Reading a generation's records behind the writer, for the workers: a thin
//! wrapper over the journal's own [`RecordScanner`]
//! ([`Generation::records_after`]), which checks every record's checksum and
//! sequence number, so a record damaged on the local device is never shipped
//! as if it were sound.
//!
//! The writer publishes the sequence number of its last durable record
//! ([`crate::journal::Progress`]); the tail reads up to it and never asks the
//! scanner for more: a block past the last durable record may be zeros, a
//! torn write, or a record being written.

use crate::device::AlignedBuf;
use crate::journal::format::{self, RecordHeader, RECORD_HEADER_BYTES};
use crate::journal::reader::{Generation, RecordLoc};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub struct Tail {
    journal: PathBuf,
    gen: Generation,
    /// Where record `next_seq` starts.
    next: RecordLoc,
    next_seq: u64,
}

impl Tail {
    /// Positions after record `after_seq` of `generation` (0: at the start).
    pub fn open(journal: &Path, generation: u64, after_seq: u64) -> Result<Tail> {
        let gen = Generation::open(journal, generation)
            .with_context(|| format!("cannot open generation {generation} of {}", journal.display()))?;
        let block = gen.block_bytes() as u64;
        let next = RecordLoc { generation, segment: 1, offset: block };
        let mut t = Tail { journal: journal.to_path_buf(), gen, next, next_seq: 1 };
        if after_seq > 0 {
            let skipped = t.read(after_seq, usize::MAX, &mut |_, _| {})?;
            if skipped < after_seq {
                bail!("generation {generation} holds fewer than {after_seq} records");
            }
        }
        Ok(t)
    }

    pub fn generation(&self) -> &Generation {
        &self.gen
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reads records up to sequence number `upto` (durable), until `bytes_max`
    /// bytes were passed on; `each` gets every record's header and its bytes
    /// (header and payload, as in the journal). Returns how many were read.
    pub fn read(&mut self, upto: u64, bytes_max: usize, each: &mut dyn FnMut(&RecordHeader, &[u8])) -> Result<u64> {
        let mut n = 0;
        let mut bytes = 0usize;
        for reopened in [false, true] {
            if reopened {
                // The writer may have started segments since the generation was opened.
                self.gen = Generation::open(&self.journal, self.gen.number)
                    .with_context(|| format!("cannot reopen generation {}", self.gen.number))?;
            }
            let block = self.gen.block_bytes();
            let mut scanner = self.gen.records_after(self.next, self.next_seq)?;
            let mut buf = AlignedBuf::with_capacity(64 << 10);
            while self.next_seq <= upto && bytes < bytes_max {
                let Some(r) = scanner.next() else { break };
                let r = r.map_err(|e| anyhow::anyhow!("the local journal is damaged: {e}"))?;
                // The record's bytes as the journal holds them (the scanner
                // checked them; encoding them again gives the same bytes).
                format::encode_record_stored(&mut buf, block, &r.header, &r.payload);
                let len = RECORD_HEADER_BYTES + r.payload.len();
                debug_assert_eq!(format::check_record(&buf[..len]).ok(), Some(r.header), "pair check");
                each(&r.header, &buf[..len]);
                bytes += len;
                self.next = r.end(block);
                self.next_seq = r.header.seq + 1;
                n += 1;
            }
            if self.next_seq > upto || bytes >= bytes_max {
                break;
            }
        }
        Ok(n)
    }

    /// The time of the next record, if it is durable (`upto`) and readable.
    pub fn peek_time(&mut self, upto: u64) -> Option<u64> {
        if self.next_seq > upto {
            return None;
        }
        let mut scanner = self.gen.records_after(self.next, self.next_seq).ok()?;
        match scanner.next() {
            Some(Ok(r)) => Some(r.header.time_unix_ms),
            _ => None,
        }
    }
}
