//! Property-based fuzzing, bounded so that it runs in CI (`PROPTEST_CASES`
//! raises the case counts for a longer run):
//!
//! - the journal reader: damaged journals and arbitrary bytes never make it
//!   panic, and every record it yields passes its checksum;
//! - the plugin's message reader and engine: arbitrary input never makes them
//!   panic, and every `continue` answers a `db_write` whose change is in the
//!   journal as a power cut right after the last answer would leave it;
//! - the configuration parser: arbitrary text never makes it panic, and what
//!   it accepts is valid and round-trips.

use cln_replica::config::Config;
use cln_replica::device::fault::{Cut, FaultDevice};
use cln_replica::device::RealDevice;
use cln_replica::journal::format::{self, BaseKind, RECORD_HEADER_BYTES};
use cln_replica::journal::reader;
use cln_replica::journal::{layout, Compression, Journal, JournalOptions, SnapshotMade};
use cln_replica::plugin::engine::Engine;
use cln_replica::plugin::protocol::{Frame, FrameReader, Output};
use cln_replica::state::{CallKind, INCREMENT_PREFIX};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cln-replica-fuzz")
        .tempdir_in("/dev/shm")
        .unwrap_or_else(|_| tempfile::tempdir().unwrap())
}

fn stmt(i: u32, pad: usize) -> Vec<String> {
    vec![format!("INSERT INTO t VALUES ({i}, '{}');", "é".repeat(pad)), format!("{INCREMENT_PREFIX}{}", i - 1)]
}

/// A journal of `records` changes in 64 KiB segments of 512-byte blocks;
/// with compression, most of them are stored compressed (they span blocks
/// and compress well).
fn write_journal(dir: &Path, records: u32, compression: Compression) {
    let opts = JournalOptions {
        direct_io: false,
        block_bytes: 512,
        segment_bytes: 64 << 10,
        compression,
        ..Default::default()
    };
    let mut j = Journal::open(dir, Arc::new(RealDevice), opts).unwrap();
    j.start_generation(&mut |p: &Path| {
        std::fs::File::create(p)?;
        Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
    })
    .unwrap();
    for i in 1..=records {
        j.append(i, CallKind::Txn, &stmt(i, (i as usize * 131) % 900)).unwrap();
    }
}

/// Scans every generation; each record yielded must be intact on disk.
fn scan_and_check(dir: &Path) {
    let Ok(gens) = reader::generations(dir) else { return };
    for g in &gens {
        for rec in g.records() {
            let Ok(rec) = rec else { break };
            let seg = &g.segments[rec.loc.segment as usize - 1];
            let f = std::fs::File::open(&seg.path).unwrap();
            let mut b = vec![0u8; RECORD_HEADER_BYTES + rec.payload.len()];
            f.read_exact_at(&mut b, rec.loc.offset).unwrap();
            let h = format::check_record(&b).expect("a yielded record passes its checksum");
            assert_eq!(h, rec.header);
            assert_eq!(&b[RECORD_HEADER_BYTES..], &rec.payload[..]);
            let _ = rec.statements();
        }
    }
    // The writer's own scan (resume) must not panic either.
    let _ = Journal::open(
        dir,
        Arc::new(RealDevice),
        JournalOptions { direct_io: false, block_bytes: 512, segment_bytes: 64 << 10, ..Default::default() },
    );
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: u64, bit: u8 },
    Block { at: u64, fill: Vec<u8> },
    Truncate { to: u64 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0..70_000u64, 0..8u8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        (0..70_000u64, proptest::collection::vec(any::<u8>(), 1..1500))
            .prop_map(|(at, fill)| Damage::Block { at, fill }),
        (0..70_000u64).prop_map(|to| Damage::Truncate { to }),
    ]
}

proptest! {
    #![proptest_config(cases(48))]

    /// Damage anywhere in a real journal: errors, never panics, never a
    /// record that fails its checksum.
    #[test]
    fn damaged_journals_never_panic_or_yield_bad_records(
        records in 1u32..60,
        damages in proptest::collection::vec((0usize..4, damage()), 1..6),
        zstd in any::<bool>(),
    ) {
        let dir = scratch();
        let j = dir.path().join("j");
        write_journal(&j, records, if zstd { Compression::Zstd } else { Compression::Off });
        let gen_dir = layout::generation_dir(&j, 1);
        let segments = layout::list_segments(&gen_dir).unwrap();
        for (which, d) in damages {
            let path = layout::segment_path(&gen_dir, segments[which % segments.len()]);
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let len = f.metadata().unwrap().len();
            match d {
                Damage::Flip { at, bit } if len > 0 => {
                    let at = at % len;
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, at).unwrap();
                    f.write_all_at(&[b[0] ^ (1 << bit)], at).unwrap();
                }
                Damage::Block { at, fill } if len > 0 => f.write_all_at(&fill, at % len).unwrap(),
                Damage::Truncate { to } => f.set_len(to % (len + 1)).unwrap(),
                _ => {}
            }
        }
        scan_and_check(&j);
    }

    /// A segment whose header is valid and whose body is arbitrary bytes.
    #[test]
    fn arbitrary_segment_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..20_000), records in 0u32..3) {
        let dir = scratch();
        let j = dir.path().join("j");
        write_journal(&j, records.max(1), Compression::Zstd);
        let path = layout::segment_path(&layout::generation_dir(&j, 1), 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&body, 512 * (records as u64 + 1)).unwrap();
        scan_and_check(&j);
    }

    /// The format's decoders on arbitrary bytes.
    #[test]
    fn format_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(h) = format::check_record(&bytes) {
            // Accepted: then its checksum really matches.
            let end = RECORD_HEADER_BYTES + h.payload_bytes as usize;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..40]), &bytes[RECORD_HEADER_BYTES..end]);
            prop_assert_eq!(crc, u32::from_le_bytes(bytes[40..44].try_into().unwrap()));
        }
        let _ = format::decode_statements(&bytes);
        let _ = format::SegmentHeader::decode(&bytes);
        let _ = format::decompress_payload(&bytes);
        // Past the magic check, into zstd's frame parser.
        let framed: Vec<u8> = [0x28, 0xB5, 0x2F, 0xFD].iter().chain(&bytes).copied().collect();
        if let Ok(p) = format::decompress_payload(&framed) {
            prop_assert!(p.len() <= format::RECORD_PAYLOAD_BYTES_MAX as usize);
        }
    }

    /// A real compressed payload, damaged behind a checksum that matches (a
    /// writer bug or a forged record): an error or the statements, never a
    /// panic, never more than a record may hold.
    #[test]
    fn damaged_compressed_payloads_never_panic(
        n in 1usize..40,
        damages in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let statements: Vec<String> = (0..n).map(|i| format!("INSERT INTO t VALUES ({i}, '{}');", "é".repeat(i * 7))).collect();
        let mut plain = (statements.len() as u32).to_le_bytes().to_vec();
        for s in &statements {
            plain.extend_from_slice(&(s.len() as u32).to_le_bytes());
            plain.extend_from_slice(s.as_bytes());
        }
        let mut z = zstd::bulk::compress(&plain, 1).unwrap();
        prop_assert_eq!(format::decompress_payload(&z).unwrap(), plain);
        for (at, x) in damages {
            let i = at % z.len();
            z[i] ^= x;
        }
        z.truncate(cut % (z.len() + 1));
        if let Ok(p) = format::decompress_payload(&z) {
            prop_assert!(p.len() <= format::RECORD_PAYLOAD_BYTES_MAX as usize);
            let _ = format::decode_statements(&p);
        }
    }

    /// The config parser on arbitrary text and on near-valid TOML.
    #[test]
    fn config_parser_never_panics(text in "\\PC{0,200}", key in "[a-z_]{1,20}", value in "\\PC{0,30}", n in any::<i64>()) {
        for t in [
            text.clone(),
            format!("journal = \"/j\"\n{key} = {value}\n"),
            format!("journal = \"/j\"\n{key} = {n}\n"),
            format!("journal = {value:?}\nsegment_bytes = {n}\nblock_bytes = {n}\n"),
        ] {
            if let Ok(c) = Config::parse(&t) {
                prop_assert!(c.validate().is_ok());
                prop_assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
            }
        }
    }

    /// The frame reader on arbitrary bytes: messages, EOF or an error.
    #[test]
    fn frame_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut r = FrameReader::new(&bytes[..], None);
        for _ in 0..10_000 {
            match r.next(None) {
                Ok(Frame::Message(m)) => {
                    let whole_object = m.first() == Some(&b'{') && m.last() == Some(&b'}');
                    prop_assert!(whole_object, "a message is one object");
                }
                Ok(Frame::Eof) | Err(_) => break,
                Ok(Frame::Timeout) => prop_assert!(false, "no timeout without one"),
            }
        }
    }
}

/// `continue` answers checked, over all cases (to see that the property bites).
static CONTINUES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Captures the plugin's stdout.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One message lightningd (or a broken lightningd) might send.
#[derive(Debug, Clone)]
enum Msg {
    /// The next transaction in sequence (or a repeat, or a skip).
    Txn {
        step: i8,
        statements: Vec<String>,
    },
    InPlace {
        back: bool,
    },
    RandomVersion {
        version: u32,
        statements: Vec<String>,
    },
    BadParams(String),
    Other(String),
    Garbage(Vec<u8>),
}

fn msg() -> impl Strategy<Value = Msg> {
    let text = "\\PC{0,40}";
    prop_oneof![
        12 => (prop_oneof![8 => Just(1i8), 1 => Just(0), 1 => Just(-1), 1 => Just(2)], proptest::collection::vec(text, 0..4))
            .prop_map(|(step, statements)| Msg::Txn { step, statements }),
        1 => any::<bool>().prop_map(|back| Msg::InPlace { back }),
        1 => (any::<u32>(), proptest::collection::vec(text, 0..3)).prop_map(|(version, statements)| Msg::RandomVersion { version, statements }),
        1 => "\\PC{0,60}".prop_map(Msg::BadParams),
        1 => "[a-z_-]{0,12}".prop_map(Msg::Other),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(Msg::Garbage),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    /// Arbitrary conversations with the engine: every `continue` is for a
    /// change that the journal holds, byte for byte.
    #[test]
    fn the_engine_never_continues_without_storing(msgs in proptest::collection::vec(msg(), 1..25)) {
        let dir = scratch();
        std::fs::write(
            dir.path().join("cln-replica.toml"),
            format!("journal = {:?}\nsegment_bytes = 65536\ndirect_io = false\n", dir.path().join("dev/journal")),
        ).unwrap();
        let mut input = vec![];
        let mut requests: Vec<(String, Value)> = vec![];
        let mut version = 0u32;
        for (i, m) in msgs.iter().enumerate() {
            let id = format!("cln:db_write#{i}");
            let params = match m {
                Msg::Txn { step, statements } => {
                    let n = version.wrapping_add(*step as i32 as u32);
                    let mut w: Vec<String> = statements.clone();
                    w.push(format!("{INCREMENT_PREFIX}{}", n.wrapping_sub(1)));
                    version = n;
                    Some(json!({"data_version": n, "writes": w}))
                }
                Msg::InPlace { back } => {
                    let n = if *back { version.wrapping_sub(1) } else { version };
                    Some(json!({"data_version": n, "writes": ["PRAGMA foreign_keys = ON;"]}))
                }
                Msg::RandomVersion { version, statements } => Some(json!({"data_version": version, "writes": statements})),
                Msg::BadParams(p) => {
                    input.extend_from_slice(format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"db_write","params":{p:?}}}"#).as_bytes());
                    input.extend_from_slice(b"\n\n");
                    None
                }
                Msg::Other(method) => {
                    input.extend_from_slice(json!({"jsonrpc":"2.0","id":id,"method":method,"params":{}}).to_string().as_bytes());
                    input.extend_from_slice(b"\n\n");
                    None
                }
                Msg::Garbage(b) => {
                    input.extend_from_slice(b);
                    None
                }
            };
            if let Some(p) = params {
                let req = json!({"jsonrpc":"2.0","id":id,"method":"db_write","params":p});
                input.extend_from_slice(req.to_string().as_bytes());
                input.extend_from_slice(b"\n\n");
                requests.push((id, p));
            }
        }
        let captured = Captured::default();
        let out = Arc::new(Output::new(Box::new(captured.clone())));
        // Over a fault device: "stored" means on the media, as a power cut
        // right after the last answer would leave it.
        let root = dir.path().join("dev");
        std::fs::create_dir(&root).unwrap();
        let fault = FaultDevice::new(Arc::new(RealDevice), &root);
        let mut engine = Engine::new(dir.path().to_path_buf(), out.clone(), Arc::new(fault.clone()));
        let _code = cln_replica::plugin::serve(FrameReader::new(&input[..], None), &out, &mut engine);
        drop(engine);
        let output = captured.0.lock().unwrap().clone();
        let answers: Vec<Value> = serde_json::Deserializer::from_slice(&output).into_iter::<Value>().map(Result::unwrap).collect();
        // Every stored change, as (data_version, statements).
        let mut stored: Vec<(u32, Vec<String>)> = vec![];
        let img = dir.path().join("after-cut");
        std::fs::create_dir(&img).unwrap();
        fault.media().materialize(&img, Cut::DropUnflushed).unwrap();
        if let Ok(gens) = reader::generations(&img.join("journal")) {
            for g in &gens {
                for rec in g.records() {
                    let rec = rec.expect("the journal the engine wrote reads back");
                    let st = rec.statements().unwrap().iter().map(|s| s.to_string()).collect();
                    stored.push((rec.header.data_version, st));
                }
            }
        }
        let mut continues = 0;
        for a in &answers {
            if a["result"]["result"] != "continue" {
                continue;
            }
            continues += 1;
            let id = a["id"].as_str().unwrap();
            let (_, params) = requests.iter().find(|(i, _)| i == id).expect("continue answers a db_write we sent");
            let n = params["data_version"].as_u64().unwrap() as u32;
            let writes: Vec<String> = params["writes"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
            prop_assert!(stored.iter().any(|(v, s)| *v == n && *s == writes), "continue for data_version {n} without its record");
        }
        CONTINUES.fetch_add(continues, std::sync::atomic::Ordering::Relaxed);
        if std::env::var_os("FUZZ_VERBOSE").is_some() {
            eprintln!("{} messages, {continues} continue", msgs.len());
        }
    }
}
