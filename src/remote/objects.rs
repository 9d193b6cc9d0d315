//! Object names and the plaintext inside each object (docs/REMOTE.md):
//!
//! ```text
//! <prefix>/tip                                                   where the destination stands (replaced)
//! <prefix>/gen-0000000007/base                                   the generation's snapshot
//! <prefix>/gen-0000000007/rec-00000000000000000001-00000000000000000042
//!                                                                records 1..=42 of generation 7
//! ```
//!
//! Names sort in order and say what they hold, so a restore can list them,
//! order them and tell a missing one; the name is part of the AEAD's
//! associated data ([`super::crypto`]), so an object moved to another name
//! fails to decrypt. Plaintexts repeat what the name says (pair check after
//! decryption). Bases stream (a snapshot of any size passes through in
//! bounded memory); a records piece and the tip are small.

use super::crypto::{self, Context, Key, OpenError, OpenReader};
use crate::journal::format::{self, RecordHeader, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::journal::identity::JournalId;
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::{Read, Write};

const BASE_MAGIC: &[u8; 8] = b"CLNRBAS1";
const REC_MAGIC: &[u8; 8] = b"CLNRREC1";
const TIP_MAGIC: &[u8; 8] = b"CLNRTIP1";
/// zstd level: fast enough for the synchronous tier (small batches), and SQL
/// text and SQLite pages compress several-fold.
const ZSTD_LEVEL: i32 = 3;
pub const TIP_NAME: &str = "tip";
const TIP_PLAIN_BYTES: usize = 8 + 16 + 8 * 3 + 4 * 2 + 8 * 3;
const BASE_PREFIX_BYTES: usize = 8 + SEGMENT_HEADER_BYTES;

/// A records object holds at most this many bytes of records (before
/// compression), so a catch-up after an outage goes out in bounded pieces.
pub const PIECE_BYTES_MAX: usize = 8 << 20;

/// The most a records object decompresses to: a piece stops growing once it
/// reaches [`PIECE_BYTES_MAX`], so it holds at most that plus one largest record.
const RECORDS_PLAIN_MAX: u64 = (PIECE_BYTES_MAX + RECORD_HEADER_BYTES) as u64 + format::RECORD_PAYLOAD_BYTES_MAX as u64;

/// The most zstd makes of `n` bytes (ZSTD_COMPRESSBOUND, with room for
/// the frame and block headers of a stream).
fn zstd_bound(n: u64) -> u64 {
    n + n / 256 + (64 << 10)
}

/// The most a records object can be, sealed: what a reader reads at most.
pub fn records_sealed_max() -> u64 {
    crypto::sealed_bytes(32 + zstd_bound(RECORDS_PLAIN_MAX))
}

/// The most a base object of a snapshot of `snapshot_bytes` can be, sealed.
pub fn base_sealed_max(snapshot_bytes: u64) -> u64 {
    crypto::sealed_bytes(BASE_PREFIX_BYTES as u64 + zstd_bound(snapshot_bytes))
}

/// Before the base's header is authenticated, a reader reads one chunk.
pub fn base_header_sealed_max() -> u64 {
    crypto::sealed_bytes(crypto::CHUNK_BYTES as u64 + 1)
}

pub fn tip_sealed_max() -> u64 {
    crypto::sealed_bytes(TIP_PLAIN_BYTES as u64)
}

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

/// The context every object of a generation carries.
pub fn context(journal: JournalId, header: &SegmentHeader) -> Context {
    Context { journal, generation: header.generation, base: Context::base_hash(header) }
}

/// The base object's plaintext, as a stream: magic, segment 1's header (the
/// generation's identity, base version and the snapshot's checksum), then the
/// snapshot, zstd-compressed as it is read.
pub fn base_reader<R: Read + 'static>(header: &SegmentHeader, snapshot: R) -> Result<impl Read> {
    let mut prefix = Vec::with_capacity(BASE_PREFIX_BYTES);
    prefix.extend_from_slice(BASE_MAGIC);
    prefix.extend_from_slice(&SegmentHeader { segment: 1, ..header.clone() }.encode());
    let z = zstd::stream::read::Encoder::new(snapshot, ZSTD_LEVEL).context("cannot start compressing the snapshot")?;
    Ok(std::io::Cursor::new(prefix).chain(z))
}

fn io_refusal(e: std::io::Error) -> anyhow::Error {
    match OpenError::from_io(&e) {
        Some(o) => anyhow!("{o}"),
        None => anyhow!("{e}"),
    }
}

/// Reads a base object's header from its opened stream (the first chunk,
/// authenticated), checks it against the name and the context, and raises the
/// reader's bound to what a base of that snapshot size can be.
pub fn read_base_header<R: Read>(generation: u64, ctx: &Context, r: &mut OpenReader<R>) -> Result<SegmentHeader> {
    let mut prefix = [0u8; BASE_PREFIX_BYTES];
    r.read_exact(&mut prefix).map_err(io_refusal)?;
    if &prefix[..8] != BASE_MAGIC {
        bail!("not a base object");
    }
    let header = SegmentHeader::decode(&prefix[8..]).map_err(|e| anyhow!("invalid generation header: {e}"))?;
    if header.generation != generation || header.segment != 1 || ctx.generation != generation {
        bail!("holds generation {} segment {}, not generation {generation}", header.generation, header.segment);
    }
    if Context::base_hash(&header) != ctx.base {
        bail!("its header does not match the base it claims to be");
    }
    r.set_limit(base_sealed_max(header.snapshot_bytes));
    Ok(header)
}

/// Decompresses the rest of a base into `out` (at most the header's snapshot
/// size), checks its size and checksum, and the object's last chunk.
pub fn copy_base_snapshot<R: Read>(header: &SegmentHeader, r: OpenReader<R>, out: &mut dyn Write) -> Result<()> {
    let mut dec = zstd::stream::read::Decoder::new(r).context("cannot decompress")?;
    let mut crc = 0u32;
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let got = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_refusal(e)),
        };
        n += got as u64;
        if n > header.snapshot_bytes {
            bail!("decompresses to more than the {} bytes its header declares", header.snapshot_bytes);
        }
        crc = crc32c::crc32c_append(crc, &buf[..got]);
        out.write_all(&buf[..got]).context("cannot write the snapshot")?;
    }
    if (n, crc) != (header.snapshot_bytes, header.snapshot_crc32c) {
        bail!("snapshot does not match its header's size and checksum");
    }
    // Whatever follows the zstd frame must be nothing, and the final chunk
    // authentic: reading to the end proves both.
    let mut rest = dec.finish();
    let trailing = std::io::copy(&mut rest, &mut std::io::sink()).map_err(io_refusal)?;
    if trailing != 0 {
        bail!("{trailing} bytes follow the snapshot");
    }
    Ok(())
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

/// Decompresses at most `limit` bytes: an object is authenticated before
/// this, but a bound keeps memory bounded whatever it holds.
fn decompress(data: &[u8], limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(data)
        .and_then(|d| d.take(limit + 1).read_to_end(&mut out))
        .context("cannot decompress")?;
    if out.len() as u64 > limit {
        bail!("decompresses to more than the {limit} bytes it may hold");
    }
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
    let body = decompress(&plain[32..], RECORDS_PLAIN_MAX)?;
    let mut out = vec![];
    let mut at = 0;
    let mut expected = first;
    while at < body.len() {
        let h = format::check_record(&body[at..]).map_err(|e| anyhow!("record {expected}: {e}"))?;
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

/// Where a destination stands: replaced after every shipment, so that a
/// restore can tell that the objects it found reach what the destination
/// acknowledged, and a worker resumes from an authenticated position rather
/// than from a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tip {
    #[serde(serialize_with = "ser_id")]
    pub journal: JournalId,
    pub generation: u64,
    /// The last record of `generation` the destination holds with every one
    /// before it (0: the base only).
    pub seq: u64,
    /// The first record of the object holding `seq` (0 when `seq` is 0).
    pub object_first: u64,
    /// The data_version of that record (or of the base).
    pub data_version: u32,
    /// The base data_version of `generation`.
    pub base_version: u32,
    /// When that record was written to the local journal.
    pub time_unix_ms: u64,
    /// When this tip was written.
    pub written_unix_ms: u64,
    /// Grows by one with every tip written to this destination.
    pub counter: u64,
}

fn ser_id<S: serde::Serializer>(id: &JournalId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

impl Tip {
    /// The object that holds record `seq` (the base when `seq` is 0).
    pub fn object_name(&self) -> String {
        if self.seq == 0 {
            base_name(self.generation)
        } else {
            records_name(self.generation, self.object_first, self.seq)
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(TIP_PLAIN_BYTES);
        b.extend_from_slice(TIP_MAGIC);
        b.extend_from_slice(&self.journal.0);
        for v in [self.generation, self.seq, self.object_first] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.data_version.to_le_bytes());
        b.extend_from_slice(&self.base_version.to_le_bytes());
        for v in [self.time_unix_ms, self.written_unix_ms, self.counter] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(b.len(), TIP_PLAIN_BYTES);
        b
    }

    fn decode(p: &[u8]) -> Result<Tip> {
        if p.len() != TIP_PLAIN_BYTES || &p[..8] != TIP_MAGIC {
            bail!("not a tip object");
        }
        let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().expect("4 bytes"));
        let t = Tip {
            journal: JournalId(p[8..24].try_into().expect("16 bytes")),
            generation: u64_at(24),
            seq: u64_at(32),
            object_first: u64_at(40),
            data_version: u32_at(48),
            base_version: u32_at(52),
            time_unix_ms: u64_at(56),
            written_unix_ms: u64_at(64),
            counter: u64_at(72),
        };
        if (t.seq == 0) != (t.object_first == 0) || t.object_first > t.seq || t.generation == 0 {
            bail!("the tip is inconsistent (generation {}, records {}..={})", t.generation, t.object_first, t.seq);
        }
        Ok(t)
    }

    /// The sealed tip; `base` is the hash of `generation`'s base header.
    pub fn seal(&self, key: &Key, base: [u8; 32]) -> Result<Vec<u8>> {
        let ctx = Context { journal: self.journal, generation: self.generation, base };
        crypto::seal(key, TIP_NAME, &ctx, &self.encode())
    }

    /// Opens a sealed tip; returns it with the base hash it was written for.
    pub fn open(key: &Key, sealed: &[u8]) -> Result<(Tip, [u8; 32])> {
        let (ctx, plain) = crypto::open(key, TIP_NAME, sealed, tip_sealed_max())
            .map_err(|e| anyhow!("object {TIP_NAME} refused: {e}"))?;
        let tip = Tip::decode(&plain).map_err(|e| anyhow!("object {TIP_NAME} refused: {e:#}"))?;
        if (ctx.journal, ctx.generation) != (tip.journal, tip.generation) {
            bail!("object {TIP_NAME} refused: its content disagrees with its authenticated context");
        }
        Ok((tip, ctx.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_is_bounded() {
        let plain = vec![7u8; 5000];
        let z = zstd::bulk::compress(&plain, ZSTD_LEVEL).unwrap();
        assert_eq!(decompress(&z, 5000).unwrap(), plain);
        let e = decompress(&z, 4999).unwrap_err().to_string();
        assert!(e.contains("more than the 4999 bytes"), "{e}");
        assert!(decompress(b"not zstd", 100).is_err());
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

    #[test]
    fn tips_round_trip_and_bind_their_context() {
        let key = Key::generate().unwrap();
        let t = Tip {
            journal: JournalId([1; 16]),
            generation: 3,
            seq: 9,
            object_first: 5,
            data_version: 77,
            base_version: 60,
            time_unix_ms: 1,
            written_unix_ms: 2,
            counter: 4,
        };
        let s = t.seal(&key, [5; 32]).unwrap();
        assert_eq!(Tip::open(&key, &s).unwrap(), (t, [5; 32]));
        assert_eq!(t.object_name(), records_name(3, 5, 9));
        let mut bad = s.clone();
        bad[40] ^= 1; // the journal id in the clear header
        assert!(Tip::open(&key, &bad).is_err());
    }
}
