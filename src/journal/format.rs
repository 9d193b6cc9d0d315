//! The journal's on-disk format, byte by byte (docs/FORMAT.md is the prose
//! version of this file). Pure encoding and decoding: no I/O here.
//!
//! A segment file is a header block followed by records. Every record starts
//! on a block boundary and is padded with zeros to the next one, so writing a
//! record never touches a block that holds an acknowledged record. The unused
//! rest of a segment is zeros (segments are zero-filled when created), which is
//! how a reader finds the end: a block that does not start with a valid record
//! header.

use crate::device::AlignedBuf;
use crate::filter::Filter;
use thiserror::Error;

/// Version of the format described here; stored in every segment header.
pub const FORMAT_VERSION: u32 = 1;
/// The format version of a filtered generation's segments: version 1 plus the
/// `filter` field. A reader that predates filtering refuses such a segment
/// instead of restoring a filtered backup without saying so.
pub const FORMAT_VERSION_FILTERED: u32 = 2;

/// First bytes of a segment file. 0xFF can never occur in UTF-8 text, so no
/// SQL statement inside a payload can look like a header.
pub const SEGMENT_MAGIC: [u8; 8] = [0xFF, b'C', b'L', b'N', b'R', b'S', b'E', b'G'];
pub const SEGMENT_HEADER_BYTES: usize = 128;

pub const RECORD_MAGIC: [u8; 4] = [0xFF, b'C', b'R', b'1'];
pub const RECORD_HEADER_BYTES: usize = 48;

/// Largest segment a reader accepts: the largest `segment_bytes` setting
/// (4 GiB), or one record larger than it, plus the header block. A header
/// claiming more is refused (a 64 GiB sparse file is not scanned block by block).
pub const SEGMENT_BYTES_MAX: u64 = (1 << 32) + RECORD_PAYLOAD_BYTES_MAX as u64 + (2 << 20);

/// Largest payload a record may carry. A `db_write` call larger than this is
/// refused (lightningd stops) rather than split: a change is stored whole or
/// not at all.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 128 << 20;

/// Record flag: the writes end with lightningd's own
/// `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' ...`, so the
/// record is a transaction that takes the database from data_version N-1 to N.
/// Without it the record is a PRAGMA-only call replayed in place, outside any
/// transaction, at the current data_version N.
pub const FLAG_TXN: u8 = 0b0000_0001;
/// Record flag: the stored payload is one zstd frame, declaring its content
/// size, of the change payload ([`decompress_payload`]). Set only on change
/// records, and only when it makes the record take fewer blocks. An addition
/// to version 1: a reader that predates it refuses the record
/// ([`FormatError::UnknownFlags`]) rather than misreading it.
pub const FLAG_ZSTD: u8 = 0b0000_0010;
/// Record flag: the change continues in the next record. A `db_write` call
/// larger than a chunk ([`CHANGE_CHUNK_BYTES_DEFAULT`]) is stored as chunk
/// records of whole statements, consecutive, with the same data_version
/// and FLAG_TXN: every one but the last carries FLAG_MORE. They count only
/// as a whole: lightningd hears `continue` after the last one is flushed,
/// so a change whose last chunk is missing was never acknowledged. An
/// addition to version 1, refused by older readers as an unknown flag.
pub const FLAG_MORE: u8 = 0b0000_0100;
/// Mask of every flag this version understands.
pub const FLAGS_KNOWN: u8 = FLAG_TXN | FLAG_ZSTD | FLAG_MORE;

/// A change's statements are cut into chunks of about this many payload
/// bytes (a statement is never cut: one larger than a chunk is a chunk of
/// its own, up to [`RECORD_PAYLOAD_BYTES_MAX`]). Small enough that a reader
/// holds little of a change of any size at a time.
pub const CHANGE_CHUNK_BYTES_DEFAULT: u32 = 8 << 20;
/// The first four bytes of a zstd frame (RFC 8878), little-endian.
const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One `db_write` call: its data_version and statements.
    Change = 1,
    /// Written on a clean shutdown after the last change; carries the tip's
    /// data_version and FLAG_TXN as the last change had it, and no payload.
    /// Appending resumes after it at the next start.
    Seal = 2,
}

/// What a generation's snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum BaseKind {
    /// A copy of lightningd's committed database at `base_version`.
    Snapshot = 1,
    /// No database yet (a brand-new node): the snapshot file is empty and the
    /// first record creates the schema. `base_version` is 0.
    Empty = 2,
    /// Built by compaction from the previous generation's snapshot plus its
    /// records (never from lightningd's live file): the same history, rolled
    /// up at `base_version`. The generation continues the previous one.
    Compacted = 3,
}

impl std::fmt::Display for BaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl BaseKind {
    pub fn name(self) -> &'static str {
        match self {
            BaseKind::Snapshot => "snapshot",
            BaseKind::Empty => "empty",
            BaseKind::Compacted => "compacted",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("bad magic")]
    BadMagic,
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported format version {0} (this cln-replica reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("invalid field: {0}")]
    Field(&'static str),
    #[error("record flags {0:#04x} include flags this version does not know: written by a newer cln-replica?")]
    UnknownFlags(u8),
    #[error("payload is malformed: {0}")]
    Payload(&'static str),
}

/// Block 0 of every segment file. Every segment repeats the generation's
/// identity, so a segment is self-describing and one moved into the wrong
/// generation is detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub block_bytes: u32,
    pub generation: u64,
    /// 1-based index of this segment within its generation.
    pub segment: u32,
    pub base_kind: BaseKind,
    /// The data_version of the generation's snapshot.
    pub base_version: u32,
    pub snapshot_bytes: u64,
    pub snapshot_crc32c: u32,
    pub created_unix_ms: u64,
    /// Size of the segment file, header block included.
    pub segment_bytes: u64,
    /// What the generation leaves out (its snapshot and its records alike).
    pub filter: Filter,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl SegmentHeader {
    //  0  magic            [u8; 8]
    //  8  format version   u32
    // 12  block_bytes      u32
    // 16  generation       u64
    // 24  segment          u32
    // 28  base_kind        u32
    // 32  base_version     u32
    // 36  snapshot_crc32c  u32
    // 40  snapshot_bytes   u64
    // 48  created_unix_ms  u64
    // 56  segment_bytes    u64
    // 64  filter           u32 (format version 2; zero in version 1)
    // 68  reserved, zero   [u8; 56]
    // 124 crc32c of bytes 0..124
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        let version = if self.filter == Filter::None { FORMAT_VERSION } else { FORMAT_VERSION_FILTERED };
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..28].copy_from_slice(&self.segment.to_le_bytes());
        b[28..32].copy_from_slice(&(self.base_kind as u32).to_le_bytes());
        b[32..36].copy_from_slice(&self.base_version.to_le_bytes());
        b[36..40].copy_from_slice(&self.snapshot_crc32c.to_le_bytes());
        b[40..48].copy_from_slice(&self.snapshot_bytes.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        b[56..64].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[64..68].copy_from_slice(&self.filter.code().to_le_bytes());
        let crc = crc32c::crc32c(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        if b.len() < SEGMENT_HEADER_BYTES || b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored = le_u32(b, 124);
        let computed = crc32c::crc32c(&b[..124]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_FILTERED {
            return Err(FormatError::Version(version));
        }
        let filter = match Filter::from_code(le_u32(b, 64)) {
            Some(f) if (f == Filter::None) == (version == FORMAT_VERSION) => f,
            _ => return Err(FormatError::Field("filter")),
        };
        let block_bytes = le_u32(b, 12);
        if !block_bytes.is_power_of_two() || !(512..=1 << 20).contains(&block_bytes) {
            return Err(FormatError::Field("block_bytes"));
        }
        let base_kind = match le_u32(b, 28) {
            1 => BaseKind::Snapshot,
            2 => BaseKind::Empty,
            3 => BaseKind::Compacted,
            _ => return Err(FormatError::Field("base_kind")),
        };
        let h = SegmentHeader {
            block_bytes,
            generation: le_u64(b, 16),
            segment: le_u32(b, 24),
            base_kind,
            base_version: le_u32(b, 32),
            snapshot_crc32c: le_u32(b, 36),
            snapshot_bytes: le_u64(b, 40),
            created_unix_ms: le_u64(b, 48),
            segment_bytes: le_u64(b, 56),
            filter,
        };
        if h.segment == 0 || h.generation == 0 {
            return Err(FormatError::Field("generation/segment"));
        }
        if h.segment_bytes < 2 * block_bytes as u64
            || !h.segment_bytes.is_multiple_of(block_bytes as u64)
            || h.segment_bytes > SEGMENT_BYTES_MAX
        {
            return Err(FormatError::Field("segment_bytes"));
        }
        Ok(h)
    }
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u8,
    pub data_version: u32,
    pub payload_bytes: u32,
    /// 1-based position of the record in its generation, continuous across
    /// segments: a reader detects a missing or repeated record by it.
    pub seq: u64,
    pub generation: u64,
    /// Wall-clock time the record was written, for `restore --before`.
    pub time_unix_ms: u64,
}

impl RecordHeader {
    //  0  magic           [u8; 4]
    //  4  kind            u8
    //  5  flags           u8
    //  6  reserved, zero  u16
    //  8  data_version    u32
    // 12  payload_bytes   u32
    // 16  seq             u64
    // 24  generation      u64
    // 32  time_unix_ms    u64
    // 40  crc32c          u32   over bytes 0..40, then the payload
    // 44  reserved, zero  u32
    // 48  payload
    fn encode_into(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[6..8].fill(0);
        b[8..12].copy_from_slice(&self.data_version.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.time_unix_ms.to_le_bytes());
        b[44..48].fill(0);
    }

    /// Decodes a header without checking the checksum (that needs the
    /// payload: see [`check_record`]). `None` if the block does not start with
    /// a record at all (zeros: the end of the written part of a segment).
    pub fn decode(b: &[u8]) -> Result<RecordHeader, FormatError> {
        if b.len() < RECORD_HEADER_BYTES || b[0..4] != RECORD_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let kind = match b[4] {
            1 => RecordKind::Change,
            2 => RecordKind::Seal,
            _ => return Err(FormatError::Field("kind")),
        };
        let flags = b[5];
        let payload_bytes = le_u32(b, 12);
        if payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
            return Err(FormatError::Field("payload_bytes"));
        }
        Ok(RecordHeader {
            kind,
            flags,
            data_version: le_u32(b, 8),
            payload_bytes,
            seq: le_u64(b, 16),
            generation: le_u64(b, 24),
            time_unix_ms: le_u64(b, 32),
        })
    }

    pub fn is_txn(&self) -> bool {
        self.flags & FLAG_TXN != 0
    }

    /// The change continues in the next record ([`FLAG_MORE`]).
    pub fn continues(&self) -> bool {
        self.flags & FLAG_MORE != 0
    }

    /// The stored payload is zstd-compressed ([`FLAG_ZSTD`]).
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// Bytes the record occupies on disk: header and payload rounded up to
    /// whole blocks.
    pub fn disk_bytes(&self, block_bytes: u32) -> u64 {
        record_disk_bytes(self.payload_bytes as usize, block_bytes) as u64
    }
}

pub fn record_disk_bytes(payload_bytes: usize, block_bytes: u32) -> usize {
    (RECORD_HEADER_BYTES + payload_bytes).next_multiple_of(block_bytes as usize)
}

/// Checks a record read from disk: `bytes` starts at the record header and
/// holds at least header and payload. Returns the header when the checksum
/// matches and the record is one this version understands.
pub fn check_record(bytes: &[u8]) -> Result<RecordHeader, FormatError> {
    let h = RecordHeader::decode(bytes)?;
    let end = RECORD_HEADER_BYTES + h.payload_bytes as usize;
    if bytes.len() < end {
        return Err(FormatError::Field("payload beyond the end of the segment"));
    }
    let stored = le_u32(bytes, 40);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..40]), &bytes[RECORD_HEADER_BYTES..end]);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    if h.flags & !FLAGS_KNOWN != 0 {
        return Err(FormatError::UnknownFlags(h.flags));
    }
    if bytes[6..8] != [0, 0] || bytes[44..48] != [0; 4] {
        return Err(FormatError::Field("reserved bytes are not zero"));
    }
    if h.kind == RecordKind::Seal && h.payload_bytes != 0 {
        return Err(FormatError::Field("seal record with a payload"));
    }
    if h.kind == RecordKind::Seal && (h.is_compressed() || h.continues()) {
        return Err(FormatError::Field("seal record flagged as compressed or continued"));
    }
    Ok(h)
}

/// Size of the payload that [`encode_record`] writes for these statements.
pub fn payload_bytes<S: AsRef<str>>(statements: &[S]) -> usize {
    4 + statements.iter().map(|s| 4 + s.as_ref().len()).sum::<usize>()
}

/// Encodes a record into `buf` (resized and zero-padded to whole blocks) and
/// returns the number of bytes to write. The payload of a change is the
/// statement count (u32) followed by each statement as length (u32) and UTF-8.
pub fn encode_record<S: AsRef<str>>(
    buf: &mut AlignedBuf,
    block_bytes: u32,
    header: &RecordHeader,
    statements: &[S],
) -> usize {
    let payload_len = if header.kind == RecordKind::Seal { 0 } else { payload_bytes(statements) };
    assert_eq!(payload_len, header.payload_bytes as usize, "payload_bytes must match the statements");
    let total = record_disk_bytes(payload_len, block_bytes);
    buf.reset_zeroed(total);
    header.encode_into(&mut buf[..RECORD_HEADER_BYTES]);
    if header.kind == RecordKind::Change {
        let mut at = RECORD_HEADER_BYTES;
        buf[at..at + 4].copy_from_slice(&(statements.len() as u32).to_le_bytes());
        at += 4;
        for s in statements {
            let s = s.as_ref().as_bytes();
            buf[at..at + 4].copy_from_slice(&(s.len() as u32).to_le_bytes());
            at += 4;
            buf[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        debug_assert_eq!(at, RECORD_HEADER_BYTES + payload_len);
    }
    let crc =
        crc32c::crc32c_append(crc32c::crc32c(&buf[..40]), &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len]);
    buf[40..44].copy_from_slice(&crc.to_le_bytes());
    total
}

/// Encodes a record whose stored payload is given as is (compressed or not,
/// as `header.flags` say): how the writer stores a compressed change, and how
/// compaction copies a record byte for byte. Returns the bytes to write.
pub fn encode_record_stored(buf: &mut AlignedBuf, block_bytes: u32, header: &RecordHeader, stored: &[u8]) -> usize {
    assert_eq!(stored.len(), header.payload_bytes as usize, "payload_bytes must match the stored payload");
    assert!(header.kind == RecordKind::Change || stored.is_empty(), "a seal has no payload");
    let total = record_disk_bytes(stored.len(), block_bytes);
    buf.reset_zeroed(total);
    header.encode_into(&mut buf[..RECORD_HEADER_BYTES]);
    buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + stored.len()].copy_from_slice(stored);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[..40]), stored);
    buf[40..44].copy_from_slice(&crc.to_le_bytes());
    total
}

/// The change payload inside a [`FLAG_ZSTD`] record's stored payload. Runs
/// after the CRC matched, so a failure here is a bug in a writer or a forged
/// record, never a torn write; it is an error, never a panic, and never an
/// allocation larger than a record may hold: the frame must declare its
/// content size, at most [`RECORD_PAYLOAD_BYTES_MAX`], and decompress to
/// exactly that (a small frame cannot claim gigabytes).
pub fn decompress_payload(stored: &[u8]) -> Result<Vec<u8>, FormatError> {
    if stored.get(..4) != Some(&ZSTD_FRAME_MAGIC[..]) {
        return Err(FormatError::Payload("compressed payload is not a zstd frame"));
    }
    // Exactly one frame: zstd would otherwise decode concatenated frames too.
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        Ok(_) => return Err(FormatError::Payload("bytes after the zstd frame")),
        Err(_) => return Err(FormatError::Payload("malformed zstd frame")),
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(FormatError::Payload("zstd frame does not declare its content size")),
        Err(_) => return Err(FormatError::Payload("malformed zstd frame header")),
    };
    if declared > RECORD_PAYLOAD_BYTES_MAX as u64 {
        return Err(FormatError::Payload("zstd frame declares more than a record may hold"));
    }
    let out = zstd::bulk::decompress(stored, declared as usize)
        .map_err(|_| FormatError::Payload("zstd frame does not decompress"))?;
    if out.len() as u64 != declared {
        return Err(FormatError::Payload("zstd frame decompresses to another size than it declares"));
    }
    Ok(out)
}

/// Splits a change payload into its statements, borrowing from `payload`.
pub fn decode_statements(payload: &[u8]) -> Result<Vec<&str>, FormatError> {
    let take_u32 = |at: usize| -> Result<u32, FormatError> {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or(FormatError::Payload("truncated length"))
    };
    let count = take_u32(0)? as usize;
    // Every statement needs at least its 4-byte length: bounds the allocation.
    if count > payload.len() / 4 {
        return Err(FormatError::Payload("statement count exceeds payload"));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let len = take_u32(at)? as usize;
        at += 4;
        let bytes = payload.get(at..at + len).ok_or(FormatError::Payload("statement beyond payload"))?;
        out.push(std::str::from_utf8(bytes).map_err(|_| FormatError::Payload("statement is not UTF-8"))?);
        at += len;
    }
    if at != payload.len() {
        return Err(FormatError::Payload("trailing bytes after the last statement"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(payload_bytes: u32) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Change,
            flags: FLAG_TXN,
            data_version: 42,
            payload_bytes,
            seq: 7,
            generation: 3,
            time_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn record_round_trip_and_padding() {
        let stmts = ["INSERT INTO t VALUES (1, 'é');", "UPDATE vars SET intval = intval + 1"];
        let h = header(payload_bytes(&stmts) as u32);
        let mut buf = AlignedBuf::with_capacity(0);
        let n = encode_record(&mut buf, 512, &h, &stmts);
        assert_eq!(n % 512, 0);
        assert_eq!(n, buf.len());
        let got = check_record(&buf).unwrap();
        assert_eq!(got, h);
        let payload = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_bytes as usize];
        assert_eq!(decode_statements(payload).unwrap(), stmts);
        assert!(buf[RECORD_HEADER_BYTES + h.payload_bytes as usize..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let stmts = ["DELETE FROM invoices WHERE id = 5;"];
        let h = header(payload_bytes(&stmts) as u32);
        let mut buf = AlignedBuf::with_capacity(0);
        encode_record(&mut buf, 512, &h, &stmts);
        let end = RECORD_HEADER_BYTES + h.payload_bytes as usize;
        let clean: Vec<u8> = buf.to_vec();
        for bit in 0..end * 8 {
            let mut b = clean.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(check_record(&b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trip_and_corruption() {
        let h = SegmentHeader {
            block_bytes: 4096,
            generation: 9,
            segment: 2,
            base_kind: BaseKind::Snapshot,
            base_version: 1234,
            snapshot_bytes: 1 << 33,
            snapshot_crc32c: 0xdead_beef,
            created_unix_ms: 99,
            segment_bytes: 16 << 20,
            filter: Filter::None,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        assert_eq!(le_u32(&b, 8), FORMAT_VERSION);
        let filtered = SegmentHeader { filter: Filter::Caches, ..h.clone() };
        let fb = filtered.encode();
        assert_eq!(le_u32(&fb, 8), FORMAT_VERSION_FILTERED);
        assert_eq!(SegmentHeader::decode(&fb).unwrap(), filtered);
        // A version-1 header with a filter, or an unknown filter, is refused.
        let mut forged = b;
        forged[64] = 1;
        let crc = crc32c::crc32c(&forged[..124]);
        forged[124..128].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&forged), Err(FormatError::Field("filter")));
        let mut unknown = fb;
        unknown[64] = 9;
        let crc = crc32c::crc32c(&unknown[..124]);
        unknown[124..128].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&unknown), Err(FormatError::Field("filter")));
        let mut bad = b;
        bad[30] ^= 4;
        assert!(matches!(SegmentHeader::decode(&bad), Err(FormatError::Checksum { .. })));
        assert_eq!(SegmentHeader::decode(&[0u8; 128]), Err(FormatError::BadMagic));
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for p in [&[][..], &[1, 0, 0], &[1, 0, 0, 0], &[1, 0, 0, 0, 9, 0, 0, 0, b'x'], &[0xff, 0xff, 0xff, 0xff]] {
            assert!(decode_statements(p).is_err(), "{p:?}");
        }
        assert!(decode_statements(&[1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xfe]).is_err());
        assert!(decode_statements(&[0, 0, 0, 0, 1]).is_err());
        assert_eq!(decode_statements(&[0, 0, 0, 0]).unwrap(), Vec::<&str>::new());
    }

    /// A change record stored compressed, as the writer stores it.
    fn compressed(stmts: &[String], block: u32) -> (AlignedBuf, RecordHeader, Vec<u8>) {
        let mut plain_rec = AlignedBuf::with_capacity(0);
        let h = header(payload_bytes(stmts) as u32);
        encode_record(&mut plain_rec, block, &h, stmts);
        let plain = plain_rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_bytes as usize].to_vec();
        let z = zstd::bulk::compress(&plain, 1).unwrap();
        let hz = RecordHeader { flags: h.flags | FLAG_ZSTD, payload_bytes: z.len() as u32, ..h };
        let mut buf = AlignedBuf::with_capacity(0);
        encode_record_stored(&mut buf, block, &hz, &z);
        (buf, hz, plain)
    }

    fn sql(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("INSERT INTO channel_htlcs (id, channel_id, state) VALUES ({i}, 7, 'SENT_ADD_HTLC');"))
            .collect()
    }

    #[test]
    fn compressed_record_round_trip() {
        let stmts = sql(200);
        let (buf, hz, plain) = compressed(&stmts, 4096);
        assert!(buf.len() < record_disk_bytes(plain.len(), 4096), "fewer blocks compressed");
        let got = check_record(&buf).unwrap();
        assert_eq!(got, hz);
        assert!(got.is_compressed() && got.is_txn());
        let stored = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + hz.payload_bytes as usize];
        let back = decompress_payload(stored).unwrap();
        assert_eq!(back, plain);
        assert_eq!(decode_statements(&back).unwrap(), stmts);
    }

    #[test]
    fn every_single_bit_flip_of_a_compressed_record_is_detected() {
        let (buf, hz, _) = compressed(&sql(40), 512);
        let end = RECORD_HEADER_BYTES + hz.payload_bytes as usize;
        let clean: Vec<u8> = buf.to_vec();
        for bit in 0..end * 8 {
            let mut b = clean.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(check_record(&b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    /// A hand-made zstd frame: single segment, the given declared content
    /// size (8-byte field), one RLE block repeating `b'x'` `rle` times.
    fn frame(declared: Option<u64>, rle: u32) -> Vec<u8> {
        let mut f = ZSTD_FRAME_MAGIC.to_vec();
        match declared {
            Some(n) => {
                f.push(0b1110_0000); // FCS field 8 bytes, single segment
                f.extend_from_slice(&n.to_le_bytes());
            }
            None => f.extend_from_slice(&[0, 0]), // no FCS; window descriptor 1 KiB
        }
        let block = 1 | (1 << 1) | (rle << 3); // last block, RLE
        f.extend_from_slice(&block.to_le_bytes()[..3]);
        f.push(b'x');
        f
    }

    #[test]
    fn decompression_is_bounded_and_checked() {
        assert_eq!(decompress_payload(&frame(Some(5), 5)).unwrap(), b"xxxxx");
        assert_eq!(
            decompress_payload(&frame(Some(RECORD_PAYLOAD_BYTES_MAX as u64 + 1), 1)),
            Err(FormatError::Payload("zstd frame declares more than a record may hold"))
        );
        assert_eq!(
            decompress_payload(&frame(Some(1 << 40), 1)),
            Err(FormatError::Payload("zstd frame declares more than a record may hold"))
        );
        assert_eq!(
            decompress_payload(&frame(None, 5)),
            Err(FormatError::Payload("zstd frame does not declare its content size"))
        );
        // Declares 100, holds 5 (and the other way round).
        assert!(decompress_payload(&frame(Some(100), 5)).is_err());
        assert!(decompress_payload(&frame(Some(5), 100)).is_err());
        let mut two = frame(Some(5), 5);
        two.extend_from_slice(&frame(Some(5), 5));
        assert_eq!(decompress_payload(&two), Err(FormatError::Payload("bytes after the zstd frame")));
        let f = frame(Some(5), 5);
        for cut in 0..f.len() {
            assert!(decompress_payload(&f[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_valid_crc_over_a_payload_that_is_not_zstd_is_an_error() {
        let stmts = sql(3);
        let h = header(payload_bytes(&stmts) as u32);
        let mut plain = AlignedBuf::with_capacity(0);
        encode_record(&mut plain, 512, &h, &stmts);
        let payload = plain[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_bytes as usize].to_vec();
        let forged = RecordHeader { flags: h.flags | FLAG_ZSTD, ..h };
        let mut buf = AlignedBuf::with_capacity(0);
        encode_record_stored(&mut buf, 512, &forged, &payload);
        assert!(check_record(&buf).unwrap().is_compressed(), "the CRC matches: only decompression can tell");
        assert_eq!(decompress_payload(&payload), Err(FormatError::Payload("compressed payload is not a zstd frame")));
        let mut garbage = ZSTD_FRAME_MAGIC.to_vec();
        garbage.extend_from_slice(&[0xff; 64]);
        assert!(decompress_payload(&garbage).is_err());
        assert!(decompress_payload(&[]).is_err());
    }

    #[test]
    fn a_compressed_seal_and_unknown_flags_are_refused() {
        let seal = RecordHeader { kind: RecordKind::Seal, flags: FLAG_TXN | FLAG_ZSTD, ..header(0) };
        let mut buf = AlignedBuf::with_capacity(0);
        encode_record_stored(&mut buf, 512, &seal, &[]);
        assert_eq!(check_record(&buf), Err(FormatError::Field("seal record flagged as compressed or continued")));
        // What a reader from before FLAG_ZSTD said about it, and what this one
        // says about the next flag.
        let next = RecordHeader { flags: 0b1000, ..header(0) };
        let mut buf = AlignedBuf::with_capacity(0);
        encode_record_stored(&mut buf, 512, &next, &[]);
        let err = check_record(&buf).unwrap_err();
        assert_eq!(err, FormatError::UnknownFlags(0b1000));
        assert!(err.to_string().contains("newer cln-replica"), "{err}");
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert_eq!(check_record(&[0u8; 512]), Err(FormatError::BadMagic));
    }
}
