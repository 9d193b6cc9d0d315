//! Object names and the plaintext inside each object (docs/REMOTE.md):
//!
//! ```text
//! <prefix>/gen-0000000007/base                                   the generation's snapshot
//! <prefix>/gen-0000000007/rec-00000000000000000001-00000000000000000042
//!                                                                records 1..=42 of generation 7
//! ```
//!
//! Names sort in order and say what they hold, so a restore can list them,
//! order them and tell a missing one; the name is the AEAD's associated data
//! ([`super::crypto`]), so an object moved to another name fails to decrypt.
//! Plaintexts repeat what the name says (pair check after decryption).

use crate::journal::format::{self, RecordHeader, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use anyhow::{bail, Context, Result};

const BASE_MAGIC: &[u8; 8] = b"CLNRBAS1";
const REC_MAGIC: &[u8; 8] = b"CLNRREC1";
/// zstd level: fast enough for the synchronous tier (small batches), and SQL
/// text and SQLite pages compress several-fold.
const ZSTD_LEVEL: i32 = 3;

pub fn generation_dir(generation: u64) -> String {
    format!("gen-{generation:010}/")
}

pub fn base_name(generation: u64) -> String {
    format!("gen-{generation:010}/base")
}

pub fn records_name(generation: u64, first: u64, last: u64) -> String {
    format!("gen-{generation:010}/rec-{first:020}-{last:020}")
}

/// `gen-0000000007/` → 7.
pub fn parse_generation_dir(entry: &str) -> Option<u64> {
    let d = entry.strip_suffix('/')?.strip_prefix("gen-")?;
    (d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().ok())?
}

/// What an entry of a generation directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Base,
    Records {
        first: u64,
        last: u64,
    },
    /// Something cln-replica did not write (reported, never trusted).
    Unknown(String),
}

pub fn parse_entry(entry: &str) -> Entry {
    if entry == "base" {
        return Entry::Base;
    }
    let parsed = entry.strip_prefix("rec-").and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let ok = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        (ok(a) && ok(b)).then_some(())?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    match parsed {
        Some((first, last)) if first >= 1 && first <= last => Entry::Records { first, last },
        _ => Entry::Unknown(entry.to_string()),
    }
}

/// The base object's plaintext: magic, segment 1's header (the generation's
/// identity, base version and the snapshot's checksum), the zstd snapshot.
pub fn encode_base(header: &SegmentHeader, snapshot: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(8 + SEGMENT_HEADER_BYTES + snapshot.len() / 3);
    out.extend_from_slice(BASE_MAGIC);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&zstd::bulk::compress(snapshot, ZSTD_LEVEL).context("cannot compress the snapshot")?);
    Ok(out)
}

/// Only the header of a base object's plaintext.
pub fn base_header(generation: u64, plain: &[u8]) -> Result<SegmentHeader> {
    if plain.len() < 8 + SEGMENT_HEADER_BYTES || &plain[..8] != BASE_MAGIC {
        bail!("not a base object");
    }
    let header = SegmentHeader::decode(&plain[8..8 + SEGMENT_HEADER_BYTES])
        .map_err(|e| anyhow::anyhow!("invalid generation header: {e}"))?;
    if header.generation != generation {
        bail!("holds generation {}, not generation {generation}", header.generation);
    }
    Ok(header)
}

pub fn decode_base(generation: u64, plain: &[u8]) -> Result<(SegmentHeader, Vec<u8>)> {
    if plain.len() < 8 + SEGMENT_HEADER_BYTES || &plain[..8] != BASE_MAGIC {
        bail!("not a base object");
    }
    let header = SegmentHeader::decode(&plain[8..8 + SEGMENT_HEADER_BYTES])
        .map_err(|e| anyhow::anyhow!("invalid generation header: {e}"))?;
    if header.generation != generation || header.segment != 1 {
        bail!("holds generation {} segment {}, not generation {generation}", header.generation, header.segment);
    }
    let snapshot = decompress(&plain[8 + SEGMENT_HEADER_BYTES..], header.snapshot_bytes, Some(header.snapshot_bytes))?;
    let crc = crc32c::crc32c(&snapshot);
    if (snapshot.len() as u64, crc) != (header.snapshot_bytes, header.snapshot_crc32c) {
        bail!("snapshot does not match its header's size and checksum");
    }
    Ok((header, snapshot))
}

/// The most a records object decompresses to: a piece stops growing once it
/// reaches [`PIECE_BYTES_MAX`](super::shipper::PIECE_BYTES_MAX), so it holds
/// at most that plus one largest record.
const RECORDS_PLAIN_MAX: u64 =
    (super::shipper::PIECE_BYTES_MAX + RECORD_HEADER_BYTES) as u64 + format::RECORD_PAYLOAD_BYTES_MAX as u64;

/// Decompresses at most `limit` bytes: an object is authenticated before
/// this, but a bound keeps a restore's memory bounded whatever it holds.
/// `expected`: what it should decompress to, if known (the allocation).
fn decompress(data: &[u8], limit: u64, expected: Option<u64>) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(expected.unwrap_or(0).min(limit) as usize);
    zstd::stream::read::Decoder::new(data)
        .and_then(|d| d.take(limit + 1).read_to_end(&mut out))
        .context("cannot decompress")?;
    if out.len() as u64 > limit {
        bail!("decompresses to more than the {limit} bytes it may hold");
    }
    Ok(out)
}

/// A records object's plaintext: magic, generation, first and last sequence
/// numbers, then the zstd of the records as the journal stores them (header
/// and payload, without the block padding).
pub fn encode_records(generation: u64, first: u64, last: u64, records: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(32 + records.len() / 2);
    out.extend_from_slice(REC_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&zstd::bulk::compress(records, ZSTD_LEVEL).context("cannot compress records")?);
    Ok(out)
}

/// One record out of a records object, checksum verified.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub header: RecordHeader,
    /// Header and payload, as in the journal.
    pub bytes: Vec<u8>,
}

/// Decodes a records object and checks that it holds exactly the records
/// `first..=last` of `generation`, each intact.
pub fn decode_records(generation: u64, first: u64, last: u64, plain: &[u8]) -> Result<Vec<RawRecord>> {
    if plain.len() < 32 || &plain[..8] != REC_MAGIC {
        bail!("not a records object");
    }
    let le = |at: usize| u64::from_le_bytes(plain[at..at + 8].try_into().expect("8 bytes"));
    if (le(8), le(16), le(24)) != (generation, first, last) {
        bail!(
            "holds generation {} records {}..={}, its name says {generation} {first}..={last}",
            le(8),
            le(16),
            le(24)
        );
    }
    let body = decompress(&plain[32..], RECORDS_PLAIN_MAX, None)?;
    let mut out = vec![];
    let mut at = 0;
    let mut expected = first;
    while at < body.len() {
        let h = format::check_record(&body[at..]).map_err(|e| anyhow::anyhow!("record {expected}: {e}"))?;
        if h.generation != generation || h.seq != expected {
            bail!("record {expected} is generation {} record {}", h.generation, h.seq);
        }
        let len = RECORD_HEADER_BYTES + h.payload_bytes as usize;
        out.push(RawRecord { header: h, bytes: body[at..at + len].to_vec() });
        at += len;
        expected += 1;
    }
    if expected != last + 1 {
        bail!("holds records {first}..={}, its name says {first}..={last}", expected - 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_is_bounded() {
        let plain = vec![7u8; 5000];
        let z = zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap();
        assert_eq!(decompress(&z, 5000, Some(5000)).unwrap(), plain);
        let e = decompress(&z, 4999, None).unwrap_err().to_string();
        assert!(e.contains("more than the 4999 bytes"), "{e}");
        assert!(decompress(b"not zstd", 100, None).is_err());
    }

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_generation_dir(&generation_dir(7)), Some(7));
        assert_eq!(parse_generation_dir("gen-7/"), None);
        let n = records_name(7, 1, 42);
        assert_eq!(parse_entry(n.split('/').nth(1).unwrap()), Entry::Records { first: 1, last: 42 });
        assert!(records_name(7, 9, 9) < records_name(7, 10, 12), "names sort by sequence");
        assert_eq!(parse_entry("base"), Entry::Base);
        assert!(matches!(parse_entry("rec-1-2"), Entry::Unknown(_)));
        assert!(matches!(parse_entry(&format!("rec-{:020}-{:020}", 5, 4)), Entry::Unknown(_)));
    }
}
