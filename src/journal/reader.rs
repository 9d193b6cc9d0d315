//! Reading the journal: generations, segments and records, with the torn
//! tail told apart from corruption.
//!
//! The writer appends one record at a time and flushes it before answering
//! lightningd, so only the last record can be incomplete after a power cut. A
//! block that is not a valid record therefore ends the journal (a torn,
//! never-acknowledged tail) *only if no valid record follows it*; a valid
//! record after an invalid block means acknowledged data was damaged, and the
//! reader refuses to go on rather than silently drop it.

use super::format::{
    self, FormatError, RecordHeader, RecordKind, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::layout;
use crate::state::CallKind;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

/// Where a record sits in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLoc {
    pub generation: u64,
    pub segment: u32,
    pub offset: u64,
}

impl fmt::Display for RecordLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}, segment {}, byte offset {}", self.generation, self.segment, self.offset)
    }
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: invalid segment header: {error}", path.display())]
    SegmentHeader { path: PathBuf, error: FormatError },
    #[error("{}: {detail}", path.display())]
    Layout { path: PathBuf, detail: String },
    #[error("corrupt journal at {loc}: {detail}")]
    Corrupt { loc: RecordLoc, detail: String },
    /// A record the data_version discipline says cannot follow the records
    /// before it (inside one generation, every record continues its tip).
    #[error("corrupt journal at {loc}: {discontinuity}")]
    Discontinuous { loc: RecordLoc, discontinuity: crate::state::Discontinuity },
    /// A seal record that does not repeat the tip its records lead to.
    #[error("corrupt journal at {loc}: seal record disagrees with the records before it (it says {sealed:?}, they lead to {records:?})")]
    SealMismatch { loc: RecordLoc, sealed: crate::state::Tip, records: crate::state::Tip },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// Opens a segment: a regular file no larger than a segment may be (a FIFO
/// or a device there is refused at once instead of blocking a reader).
fn open_segment(path: &Path) -> Result<File, JournalError> {
    crate::files::open_regular(path, Some(format::SEGMENT_BYTES_MAX)).map(|(f, _)| f).map_err(io_err(path))
}

/// One segment file of a generation.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub index: u32,
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub file_bytes: u64,
}

/// A complete generation: its snapshot and its segments, headers checked.
#[derive(Debug, Clone)]
pub struct Generation {
    pub number: u64,
    pub dir: PathBuf,
    /// Segment 1's header: the generation's identity and base.
    pub header: SegmentHeader,
    pub segments: Vec<SegmentInfo>,
}

impl Generation {
    /// Opens generation `number` and checks that its segments are numbered
    /// 1..=n without holes and agree about the generation they belong to.
    pub fn open(journal: &Path, number: u64) -> Result<Generation, JournalError> {
        let dir = layout::generation_dir(journal, number);
        let indices = layout::list_segments(&dir)?;
        let mut segments: Vec<SegmentInfo> = Vec::with_capacity(indices.len());
        for (i, &index) in indices.iter().enumerate() {
            let path = layout::segment_path(&dir, index);
            if index as usize != i + 1 {
                return Err(JournalError::Layout {
                    path,
                    detail: format!("segment {} is missing (segments must be numbered from 1 without holes)", i + 1),
                });
            }
            let file = open_segment(&path)?;
            let file_bytes = file.metadata().map_err(io_err(&path))?.len();
            let mut b = [0u8; SEGMENT_HEADER_BYTES];
            file.read_exact_at(&mut b, 0).map_err(io_err(&path))?;
            let header =
                SegmentHeader::decode(&b).map_err(|error| JournalError::SegmentHeader { path: path.clone(), error })?;
            let mismatch = |what: &str| JournalError::Layout {
                path: path.clone(),
                detail: format!("segment header disagrees with its place in the journal: {what}"),
            };
            if header.generation != number || header.segment != index {
                return Err(mismatch(&format!("it says generation {} segment {}", header.generation, header.segment)));
            }
            if header.segment_bytes != file_bytes {
                return Err(mismatch(&format!("{} bytes long, header says {}", file_bytes, header.segment_bytes)));
            }
            if let Some(first) = segments.first() {
                let h = &first.header;
                if (h.block_bytes, h.base_kind, h.base_version, h.snapshot_bytes, h.snapshot_crc32c, h.filter)
                    != (
                        header.block_bytes,
                        header.base_kind,
                        header.base_version,
                        header.snapshot_bytes,
                        header.snapshot_crc32c,
                        header.filter,
                    )
                {
                    return Err(mismatch("its base differs from segment 1's"));
                }
            }
            segments.push(SegmentInfo { index, path, header, file_bytes });
        }
        let Some(first) = segments.first() else {
            return Err(JournalError::Layout { path: dir, detail: "generation has no segment".into() });
        };
        Ok(Generation { number, header: first.header.clone(), dir, segments })
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join(layout::SNAPSHOT_FILE)
    }

    pub fn block_bytes(&self) -> u32 {
        self.header.block_bytes
    }

    /// Scans all records from the first segment.
    pub fn records(&self) -> RecordScanner<'_> {
        RecordScanner::new(self, 0, Some(1))
    }

    /// Scans from `next` (a record boundary, e.g. a [`TailEnd::next`] or the
    /// end of a record already read), expecting sequence number `next_seq`
    /// there: a follower resuming where it stopped. `next.segment` must be
    /// one of this generation's segments.
    pub fn records_after(&self, next: RecordLoc, next_seq: u64) -> Result<RecordScanner<'_>, JournalError> {
        let Some(i) = self.segments.iter().position(|s| s.index == next.segment) else {
            return Err(JournalError::Layout {
                path: self.dir.clone(),
                detail: format!("segment {} does not exist (yet)", next.segment),
            });
        };
        let mut scanner = RecordScanner::new(self, i, Some(next_seq));
        scanner.offset = next.offset;
        scanner.next = next;
        Ok(scanner)
    }

    /// Scans from the last segment whose first record is intact, trusting its
    /// sequence number: what the writer needs to find the tip without reading
    /// the whole generation.
    pub fn records_from_last_segment(&self) -> Result<RecordScanner<'_>, JournalError> {
        for (i, seg) in self.segments.iter().enumerate().rev() {
            let file = open_segment(&seg.path)?;
            if let Some(h) =
                read_valid_record(&file, &seg.path, seg.header.block_bytes as u64, seg.file_bytes, &mut vec![])?
            {
                if h.generation == self.number {
                    return Ok(RecordScanner::new(self, i, Some(h.seq)));
                }
            }
        }
        Ok(RecordScanner::new(self, 0, Some(1)))
    }
}

/// Reads the record at `offset` if it is complete and its checksum matches.
/// `Ok(None)` for anything else (zeros, garbage, a torn record).
fn read_valid_record(
    file: &File,
    path: &Path,
    offset: u64,
    file_bytes: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<RecordHeader>, JournalError> {
    if offset + RECORD_HEADER_BYTES as u64 > file_bytes {
        return Ok(None);
    }
    let mut hb = [0u8; RECORD_HEADER_BYTES];
    file.read_exact_at(&mut hb, offset).map_err(io_err(path))?;
    let Ok(h) = RecordHeader::decode(&hb) else { return Ok(None) };
    let len = RECORD_HEADER_BYTES + h.payload_bytes as usize;
    if offset + len as u64 > file_bytes {
        return Ok(None);
    }
    buf.resize(len, 0);
    file.read_exact_at(buf, offset).map_err(io_err(path))?;
    Ok(format::check_record(buf).ok())
}

/// One record read back from the journal, checksum verified.
#[derive(Debug, Clone)]
pub struct Record {
    pub header: RecordHeader,
    pub loc: RecordLoc,
    /// The payload as stored: zstd-compressed when the header says so (see
    /// [`Record::change_payload`] for the change payload itself).
    pub payload: Vec<u8>,
    /// The decompressed change payload of a compressed record, made on first
    /// use: scanning (finding the tip, following the writer) never needs it.
    plain: OnceLock<Vec<u8>>,
    /// Set when the payload was let go to bound memory ([`Record::unload`]):
    /// the segment it is read back from.
    source: Option<PathBuf>,
}

impl Record {
    /// Where the record after this one starts.
    pub fn end(&self, block_bytes: u32) -> RecordLoc {
        RecordLoc { offset: self.loc.offset + self.header.disk_bytes(block_bytes), ..self.loc }
    }

    pub fn new(header: RecordHeader, loc: RecordLoc, payload: Vec<u8>) -> Record {
        Record { header, loc, payload, plain: OnceLock::new(), source: None }
    }

    /// Lets go of the payload, keeping where it is: a reader holding a large
    /// chunked change holds its records' places, not their bytes.
    pub fn unload(&mut self, segment: PathBuf) {
        self.payload = Vec::new();
        self.plain = OnceLock::new();
        self.source = Some(segment);
    }

    /// This record with its payload: itself, or read back from its segment
    /// (checksum verified, and its header must be the one read before).
    pub fn loaded(&self) -> Result<std::borrow::Cow<'_, Record>, JournalError> {
        let Some(path) = &self.source else { return Ok(std::borrow::Cow::Borrowed(self)) };
        let f = open_segment(path)?;
        let mut buf = vec![0u8; RECORD_HEADER_BYTES + self.header.payload_bytes as usize];
        f.read_exact_at(&mut buf, self.loc.offset).map_err(io_err(path))?;
        match format::check_record(&buf) {
            Ok(h) if h == self.header => {}
            _ => {
                return Err(JournalError::Corrupt {
                    loc: self.loc,
                    detail: "the record changed on the device since it was read".into(),
                })
            }
        }
        let payload = buf.split_off(RECORD_HEADER_BYTES);
        Ok(std::borrow::Cow::Owned(Record::new(self.header, self.loc, payload)))
    }

    fn corrupt(&self, e: FormatError) -> JournalError {
        let how = if self.header.is_compressed() { "compressed record" } else { "record" };
        JournalError::Corrupt {
            loc: self.loc,
            detail: format!("{how} for data_version {}: {e}", self.header.data_version),
        }
    }

    /// The change payload (statement count and statements), decompressed if
    /// the record is stored compressed. A compressed record that does not
    /// decompress is damage at the record's location, like a bad statement.
    pub fn change_payload(&self) -> Result<&[u8], JournalError> {
        if !self.header.is_compressed() {
            return Ok(&self.payload);
        }
        if let Some(p) = self.plain.get() {
            return Ok(p);
        }
        let plain = format::decompress_payload(&self.payload).map_err(|e| self.corrupt(e))?;
        Ok(self.plain.get_or_init(|| plain))
    }

    /// The statements of a change (none for a seal).
    pub fn statements(&self) -> Result<Vec<&str>, JournalError> {
        if self.header.kind == RecordKind::Seal {
            return Ok(vec![]);
        }
        format::decode_statements(self.change_payload()?).map_err(|e| self.corrupt(e))
    }

    pub fn call_kind(&self) -> CallKind {
        if self.header.is_txn() {
            CallKind::Txn
        } else {
            CallKind::InPlace
        }
    }
}

/// How the scanned part of the journal ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEnd {
    /// Where the next record goes: right after the last valid record.
    pub next: RecordLoc,
    pub next_seq: u64,
    /// The last valid record's header, if any record was read.
    pub last: Option<RecordHeader>,
    /// A torn, never-acknowledged record was found (and is ignored) here.
    pub torn: Option<RecordLoc>,
}

/// Iterates over the records of a generation, in order.
pub struct RecordScanner<'g> {
    generation: &'g Generation,
    seg: usize,
    file: Option<File>,
    offset: u64,
    expected_seq: Option<u64>,
    end: Option<TailEnd>,
    last: Option<RecordHeader>,
    next: RecordLoc,
    failed: bool,
    /// Read no record past this sequence number: a follower never looks past
    /// the writer's last durable record (what lies beyond may be zeros, a torn
    /// write, or a record being written).
    seq_max: Option<u64>,
}

impl<'g> RecordScanner<'g> {
    fn new(generation: &'g Generation, seg: usize, expected_seq: Option<u64>) -> Self {
        let block = generation.block_bytes() as u64;
        let s = &generation.segments[seg];
        RecordScanner {
            generation,
            seg,
            file: None,
            offset: block,
            expected_seq,
            end: None,
            last: None,
            next: RecordLoc { generation: generation.number, segment: s.index, offset: block },
            failed: false,
            seq_max: None,
        }
    }

    /// Stops after record `seq` (inclusive); `None` reads to the end.
    pub fn until_seq(mut self, seq: Option<u64>) -> Self {
        self.seq_max = seq;
        self
    }

    /// The sequence number of the next record this scanner would read.
    pub fn next_seq(&self) -> u64 {
        self.expected_seq.unwrap_or(1)
    }

    /// Where the next record starts.
    pub fn next_loc(&self) -> RecordLoc {
        self.next
    }

    /// How the journal ends; `None` until the iterator has returned `None`.
    pub fn tail(&self) -> Option<&TailEnd> {
        self.end.as_ref()
    }

    fn loc(&self) -> RecordLoc {
        RecordLoc {
            generation: self.generation.number,
            segment: self.generation.segments[self.seg].index,
            offset: self.offset,
        }
    }

    fn finish(&mut self, torn: Option<RecordLoc>) {
        self.end = Some(TailEnd { next: self.next, next_seq: self.expected_seq.unwrap_or(1), last: self.last, torn });
    }

    /// After an invalid block at `from`: is there any valid record of this
    /// generation further on (in this segment, and in later segments too when
    /// `later_segments`)? If so the invalid block is damage, not a torn tail.
    fn valid_record_after(&self, from: u64, later_segments: bool) -> Result<Option<RecordLoc>, JournalError> {
        let block = self.generation.block_bytes() as u64;
        let mut buf = vec![];
        let last_seg = if later_segments { self.generation.segments.len() } else { self.seg + 1 };
        for si in self.seg..last_seg {
            let s = &self.generation.segments[si];
            let file = open_segment(&s.path)?;
            let mut offset = if si == self.seg { from + block } else { block };
            while offset + RECORD_HEADER_BYTES as u64 <= s.file_bytes {
                if let Some(h) = read_valid_record(&file, &s.path, offset, s.file_bytes, &mut buf)? {
                    if h.generation == self.generation.number && self.expected_seq.is_none_or(|e| h.seq >= e) {
                        return Ok(Some(RecordLoc { generation: self.generation.number, segment: s.index, offset }));
                    }
                }
                offset += block;
            }
        }
        Ok(None)
    }

    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        let block = self.generation.block_bytes() as u64;
        loop {
            if self.end.is_some() {
                return Ok(None);
            }
            if self.seq_max.is_some_and(|m| self.next_seq() > m) {
                self.finish(None);
                return Ok(None);
            }
            let seg = &self.generation.segments[self.seg];
            if self.file.is_none() {
                self.file = Some(open_segment(&seg.path)?);
            }
            let file = self.file.as_ref().expect("opened above");
            let at_segment_end = self.offset + RECORD_HEADER_BYTES as u64 > seg.file_bytes;
            let mut hb = [0u8; RECORD_HEADER_BYTES];
            if !at_segment_end {
                file.read_exact_at(&mut hb, self.offset).map_err(io_err(&seg.path))?;
            }
            if at_segment_end || hb.iter().all(|&b| b == 0) {
                // The written part of this segment ends here. A valid record
                // later in the same segment would mean a lost block.
                if !at_segment_end {
                    if let Some(found) = self.valid_record_after(self.offset, false)? {
                        return Err(JournalError::Corrupt {
                            loc: self.loc(),
                            detail: format!(
                                "a zeroed block precedes a valid record at {found}: acknowledged data was lost"
                            ),
                        });
                    }
                }
                if self.seg + 1 < self.generation.segments.len() {
                    self.seg += 1;
                    self.file = None;
                    self.offset = block;
                    continue;
                }
                self.finish(None);
                return Ok(None);
            }
            let loc = self.loc();
            let mut payload_buf = vec![];
            let valid = read_valid_record(file, &seg.path, self.offset, seg.file_bytes, &mut payload_buf)?;
            let Some(h) = valid else {
                // Not zeros and not a valid record: a torn tail, or damage.
                if let Some(found) = self.valid_record_after(self.offset, true)? {
                    let why = match format::check_record(&payload_buf) {
                        Err(e) => e.to_string(),
                        Ok(_) => "unreadable record".into(),
                    };
                    return Err(JournalError::Corrupt {
                        loc,
                        detail: format!("invalid record ({why}) followed by a valid record at {found}: acknowledged data was damaged"),
                    });
                }
                self.finish(Some(loc));
                return Ok(None);
            };
            if h.generation != self.generation.number {
                return Err(JournalError::Corrupt {
                    loc,
                    detail: format!("record belongs to generation {}", h.generation),
                });
            }
            if let Some(expected) = self.expected_seq {
                if h.seq != expected {
                    return Err(JournalError::Corrupt {
                        loc,
                        detail: format!(
                            "record has sequence number {}, expected {expected}: a record is missing or repeated",
                            h.seq
                        ),
                    });
                }
            }
            let disk = h.disk_bytes(self.generation.block_bytes());
            let payload = payload_buf.split_off(RECORD_HEADER_BYTES);
            self.offset += disk;
            self.expected_seq = Some(h.seq + 1);
            self.last = Some(h);
            self.next = RecordLoc { generation: loc.generation, segment: loc.segment, offset: self.offset };
            return Ok(Some(Record::new(h, loc, payload)));
        }
    }
}

impl Iterator for RecordScanner<'_> {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A listed generation, opened, or its number and why it does not open.
pub type Opened = Result<Generation, (u64, JournalError)>;

/// The complete generations of a journal, oldest first.
pub fn generations(journal: &Path) -> Result<Vec<Generation>, JournalError> {
    generations_each(journal)?.into_iter().map(|g| g.map_err(|(_, e)| e)).collect()
}

/// Every generation of a journal, oldest first, each opened on its own: a
/// caller that reports damage (verify, status) goes on past a generation that
/// does not open. The one listing of generations every reader uses.
pub fn generations_each(journal: &Path) -> Result<Vec<Opened>, JournalError> {
    let numbers = layout::list_generations(journal)?;
    Ok(open_listed(journal, &numbers))
}

/// Opens the generations `numbers` listed a moment ago.
fn open_listed(journal: &Path, numbers: &[u64]) -> Vec<Opened> {
    let mut out = Vec::with_capacity(numbers.len());
    for &g in numbers {
        match Generation::open(journal, g) {
            Ok(gen) => out.push(Ok(gen)),
            // Retired (renamed away) since it was listed, by a plugin running
            // on this journal: the same as listing a moment later.
            Err(_) if !layout::generation_dir(journal, g).exists() => {}
            Err(e) => out.push(Err((g, e))),
        }
    }
    out
}

/// Whether generation `number` has been retired (renamed away) since it was
/// opened: a reader that fails on it read a generation that retention
/// removed under it, not a damaged one.
pub fn retired_since(g: &Generation) -> bool {
    !g.dir.exists()
}

/// Whether a record of this kind is a change (as opposed to a seal marker).
pub fn is_change(h: &RecordHeader) -> bool {
    h.kind == RecordKind::Change
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generation retired between listing and opening is skipped as if the
    /// journal had been listed a moment later; one that is there but does
    /// not open is an error.
    #[test]
    fn a_generation_retired_after_listing_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(layout::generation_dir(dir.path(), 2)).unwrap();
        let listed = open_listed(dir.path(), &[1, 2]);
        assert_eq!(listed.len(), 1, "generation 1 is gone, generation 2 is listed");
        match &listed[0] {
            Err((2, JournalError::Layout { detail, .. })) => assert!(detail.contains("no segment"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
