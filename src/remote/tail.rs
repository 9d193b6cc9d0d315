//! Reading a generation's records behind the writer, for the shipper.
//!
//! The writer publishes the sequence number of its last durable record
//! ([`crate::journal::Progress`]); the tail reads up to it, one header and
//! payload read per record, and never looks further: a block past the last
//! durable record may be zeros, a torn write, or a record being written.
//! Records are checksum-verified here, before they are encrypted: a record
//! damaged on the local device is never shipped as if it were sound.

use crate::journal::format::{self, RecordHeader, RECORD_HEADER_BYTES};
use crate::journal::reader::Generation;
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct Tail {
    journal: PathBuf,
    gen: Generation,
    seg: usize,
    file: Option<File>,
    offset: u64,
    next_seq: u64,
}

impl Tail {
    /// Positions after record `after_seq` of `generation` (0: at the start).
    pub fn open(journal: &Path, generation: u64, after_seq: u64) -> Result<Tail> {
        let gen = Generation::open(journal, generation)
            .with_context(|| format!("cannot open generation {generation} of {}", journal.display()))?;
        let block = gen.block_bytes() as u64;
        let mut t = Tail { journal: journal.to_path_buf(), gen, seg: 0, file: None, offset: block, next_seq: 1 };
        while t.next_seq <= after_seq {
            if t.next_header_only()?.is_none() {
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

    fn file(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let p = &self.gen.segments[self.seg].path;
            self.file = Some(File::open(p).with_context(|| format!("cannot open {}", p.display()))?);
        }
        Ok(self.file.as_ref().expect("opened"))
    }

    /// The header of the valid record at the current position, if any.
    fn header_here(&mut self) -> Result<Option<RecordHeader>> {
        let seg_bytes = self.gen.segments[self.seg].file_bytes;
        if self.offset + RECORD_HEADER_BYTES as u64 > seg_bytes {
            return Ok(None);
        }
        let offset = self.offset;
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        self.file()?.read_exact_at(&mut hb, offset)?;
        let Ok(h) = RecordHeader::decode(&hb) else { return Ok(None) };
        if h.generation != self.gen.number || h.seq != self.next_seq {
            return Ok(None);
        }
        if offset + (RECORD_HEADER_BYTES + h.payload_bytes as usize) as u64 > seg_bytes {
            return Ok(None);
        }
        Ok(Some(h))
    }

    /// Moves to the next segment if the current one has no record at the
    /// position; false if there is no further record (for now).
    fn advance_segment(&mut self) -> Result<bool> {
        if self.seg + 1 >= self.gen.segments.len() {
            self.gen = Generation::open(&self.journal, self.gen.number)
                .with_context(|| format!("cannot reopen generation {}", self.gen.number))?;
        }
        if self.seg + 1 >= self.gen.segments.len() {
            return Ok(false);
        }
        let (seg, offset, file) = (self.seg, self.offset, self.file.take());
        self.seg += 1;
        self.offset = self.gen.block_bytes() as u64;
        if self.header_here()?.is_some() {
            return Ok(true);
        }
        (self.seg, self.offset, self.file) = (seg, offset, file);
        Ok(false)
    }

    fn next_header_only(&mut self) -> Result<Option<RecordHeader>> {
        let h = match self.header_here()? {
            Some(h) => h,
            None if self.advance_segment()? => self.header_here()?.expect("checked by advance_segment"),
            None => return Ok(None),
        };
        self.offset += h.disk_bytes(self.gen.block_bytes());
        self.next_seq += 1;
        Ok(Some(h))
    }

    /// Appends the next record (header and payload) to `out`, checksum
    /// verified; `None` when no further record is there yet.
    pub fn next_record(&mut self, out: &mut Vec<u8>) -> Result<Option<RecordHeader>> {
        let h = match self.header_here()? {
            Some(h) => h,
            None if self.advance_segment()? => self.header_here()?.expect("checked by advance_segment"),
            None => return Ok(None),
        };
        let len = RECORD_HEADER_BYTES + h.payload_bytes as usize;
        let start = out.len();
        out.resize(start + len, 0);
        let offset = self.offset;
        self.file()?.read_exact_at(&mut out[start..], offset)?;
        let checked = format::check_record(&out[start..]).map_err(|e| {
            anyhow!(
                "the local journal is damaged at generation {}, segment {}, byte offset {offset}: {e}",
                self.gen.number,
                self.gen.segments[self.seg].index
            )
        })?;
        assert_eq!(checked, h, "pair check: the header read twice agrees");
        self.offset += h.disk_bytes(self.gen.block_bytes());
        self.next_seq += 1;
        Ok(Some(h))
    }
}
