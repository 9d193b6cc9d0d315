//! The measurements behind per-record compression (docs/COMPRESSION.md):
//!
//! 1. zstd level 1 against level 3 on the records the writer would compress
//!    (those of more than one block): time per record and bytes;
//! 2. `Journal::append` latency per record size, compression off and on,
//!    interleaved, on the device holding DIR (O_DIRECT + fdatasync);
//! 3. whether a dictionary trained on CLN's statements pays off: trained on
//!    one half of the records, measured on the other half.
//!
//! On the fixture trace (a real CLN v26.06 first start) and on the simulated
//! workload (src/sim/workload.rs). Run with:
//!
//! ```text
//! cargo run --profile ci --features zstd-dictionary --example compression -- [DIR]
//! ```
//!
//! (`zstd-dictionary` only turns on zstd's dictionary builder, which the
//! project itself does not use.)

use cln_replica::device::{AlignedBuf, RealDevice};
use cln_replica::journal::format::{self, BaseKind, RecordHeader, RecordKind, RECORD_HEADER_BYTES};
use cln_replica::journal::{Compression, Journal, JournalOptions, SnapshotMade};
use cln_replica::sim::workload::Workload;
use cln_replica::sim::{trace, Change};
use cln_replica::state::{CallKind, INCREMENT_PREFIX};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const BLOCK: u32 = 4096;

/// The version-1 change payload of these statements, as the writer encodes it.
fn payload(statements: &[String]) -> Vec<u8> {
    let h = RecordHeader {
        kind: RecordKind::Change,
        flags: format::FLAG_TXN,
        data_version: 1,
        payload_bytes: format::payload_bytes(statements) as u32,
        seq: 1,
        generation: 1,
        time_unix_ms: 0,
    };
    let mut buf = AlignedBuf::with_capacity(0);
    format::encode_record(&mut buf, BLOCK, &h, statements);
    buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_bytes as usize].to_vec()
}

fn disk(payload_bytes: usize) -> usize {
    format::record_disk_bytes(payload_bytes, BLOCK)
}

/// Every hook call of the fixture trace, statements as lightningd sent them.
fn trace_calls() -> Vec<Vec<String>> {
    trace::first_start().into_iter().map(|c| c.writes).collect()
}

/// The schema, then `n` changes of the simulated workload, as hook calls.
fn workload_calls(n: usize) -> Vec<Vec<String>> {
    let mut w = Workload::new(7);
    let mut changes = Workload::schema();
    changes.extend((0..n).map(|_| w.next_change()));
    changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| match c {
            Change::Txn(mut s) => {
                s.push(format!("{INCREMENT_PREFIX}{i}"));
                s
            }
            Change::InPlace(s) => vec![s],
        })
        .collect()
}

/// On-device bytes of a record as the writer stores it with this compressor:
/// compressed iff more than one block and fewer blocks compressed.
fn stored_bytes(plain: &[u8], z: &mut zstd::bulk::Compressor<'_>) -> (usize, usize) {
    let raw = z.compress(plain).expect("compress").len();
    let plain_disk = disk(plain.len());
    let on_device = if plain_disk > BLOCK as usize { plain_disk.min(disk(raw)) } else { plain_disk };
    (on_device, raw)
}

fn compressor(level: i32, dict: Option<&[u8]>) -> zstd::bulk::Compressor<'static> {
    let mut z = match dict {
        Some(d) => zstd::bulk::Compressor::with_dictionary(level, d).expect("dictionary"),
        None => zstd::bulk::Compressor::new(level).expect("compressor"),
    };
    z.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true)).expect("parameter");
    z
}

fn sizes(name: &str, payloads: &[Vec<u8>]) {
    let blocks: Vec<usize> = payloads.iter().map(|p| disk(p.len()) / BLOCK as usize).collect();
    let count = |f: &dyn Fn(usize) -> bool| blocks.iter().filter(|&&b| f(b)).count();
    println!(
        "{name}: {} records, {} bytes of payload, {} bytes on the device; by blocks: 1: {}, 2: {}, 3-8: {}, >8: {}",
        payloads.len(),
        payloads.iter().map(Vec::len).sum::<usize>(),
        blocks.iter().sum::<usize>() * BLOCK as usize,
        count(&|b| b == 1),
        count(&|b| b == 2),
        count(&|b| (3..=8).contains(&b)),
        count(&|b| b > 8),
    );
}

/// 1. Level 1 against 3 on the multi-block records.
fn levels(name: &str, payloads: &[Vec<u8>]) {
    let big: Vec<&Vec<u8>> = payloads.iter().filter(|p| disk(p.len()) > BLOCK as usize).collect();
    if big.is_empty() {
        println!("{name}: no multi-block record");
        return;
    }
    let plain_disk: usize = big.iter().map(|p| disk(p.len())).sum();
    for level in [1, 3] {
        let mut z = compressor(level, None);
        let mut out = vec![0u8; zstd::zstd_safe::compress_bound(big.iter().map(|p| p.len()).max().unwrap_or(0))];
        let rounds = 20;
        let t = Instant::now();
        for _ in 0..rounds {
            for p in &big {
                std::hint::black_box(z.compress_to_buffer(&p[..], &mut out[..]).expect("compress"));
            }
        }
        let us_per_record = t.elapsed().as_secs_f64() * 1e6 / (rounds * big.len()) as f64;
        let (mut on_device, mut raw) = (0, 0);
        for p in &big {
            let (d, r) = stored_bytes(p, &mut z);
            on_device += d;
            raw += r;
        }
        println!(
            "{name}: level {level}: {} multi-block records ({} bytes of payload, {plain_disk} on the device plain): \
             {us_per_record:.1} us per record, {raw} bytes compressed, {on_device} bytes on the device ({:.1}% of plain)",
            big.len(),
            big.iter().map(|p| p.len()).sum::<usize>(),
            100.0 * on_device as f64 / plain_disk as f64
        );
    }
}

/// 3. A dictionary trained on `train`, measured on `test`.
fn dictionary(name: &str, split: &str, train: &[&Vec<u8>], test: &[&Vec<u8>]) {
    let plain_disk: usize = test.iter().map(|p| disk(p.len())).sum();
    let mut z = compressor(1, None);
    let (mut base_disk, mut base_raw) = (0, 0);
    for p in test {
        let (d, r) = stored_bytes(p, &mut z);
        base_disk += d;
        base_raw += r;
    }
    println!(
        "{name} ({split}): {} test records, {plain_disk} bytes on the device plain; without a dictionary: \
         {base_disk} on the device, {base_raw} compressed",
        test.len()
    );
    // Shipped pieces are batches of records compressed as one zstd frame.
    let batch = |records: &[&Vec<u8>], z: &mut zstd::bulk::Compressor<'_>, n: usize| -> usize {
        records
            .chunks(n)
            .map(|c| {
                z.compress(&c.iter().flat_map(|r| r.iter().copied()).collect::<Vec<u8>>()).expect("compress").len()
            })
            .sum()
    };
    let (piece16, piece256) = (batch(test, &mut z, 16), batch(test, &mut z, 256));
    for dict_bytes in [16 << 10, 64 << 10] {
        let t = Instant::now();
        let dict = match zstd::dict::from_samples(train, dict_bytes) {
            Ok(d) => d,
            Err(e) => {
                println!("  dictionary of {dict_bytes} bytes: training failed: {e}");
                continue;
            }
        };
        let trained_ms = t.elapsed().as_millis();
        let mut zd = compressor(1, Some(&dict));
        let (mut disk_d, mut raw_d) = (0, 0);
        for p in test {
            let (d, r) = stored_bytes(p, &mut zd);
            disk_d += d;
            raw_d += r;
        }
        let (piece16_d, piece256_d) = (batch(test, &mut zd, 16), batch(test, &mut zd, 256));
        let pct = |with: usize, without: usize| 100.0 * (with as f64 - without as f64) / without as f64;
        println!(
            "  dictionary of {} bytes (trained in {trained_ms} ms on {} records): {disk_d} on the device \
             ({:+.1}% against no dictionary), {raw_d} compressed ({:+.1}%); shipped in pieces of 16 records \
             {piece16_d} against {piece16} ({:+.1}%), of 256 records {piece256_d} against {piece256} ({:+.1}%)",
            dict.len(),
            train.len(),
            pct(disk_d, base_disk),
            pct(raw_d, base_raw),
            pct(piece16_d, piece16),
            pct(piece256_d, piece256),
        );
    }
}

fn halves(name: &str, payloads: &[Vec<u8>]) {
    let n = payloads.len() / 2;
    let first: Vec<&Vec<u8>> = payloads[..n].iter().collect();
    let second: Vec<&Vec<u8>> = payloads[n..].iter().collect();
    dictionary(name, "trained on the first half, measured on the second", &first, &second);
    let even: Vec<&Vec<u8>> = payloads.iter().step_by(2).collect();
    let odd: Vec<&Vec<u8>> = payloads.iter().skip(1).step_by(2).collect();
    dictionary(name, "trained on even records, measured on odd", &even, &odd);
}

fn percentile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// 2. Append latency, off and on, per size class, interleaved record by record.
fn latency(dir: &std::path::Path, direct_io: bool, classes: &[(&str, Vec<Vec<String>>)]) -> anyhow::Result<()> {
    let open = |sub: &str, compression| -> anyhow::Result<Journal> {
        // Every record fits in segment 1: no segment switch while measuring.
        let opts = JournalOptions { compression, direct_io, segment_bytes: 64 << 20, ..JournalOptions::default() };
        let mut j = Journal::open(&dir.join(sub), Arc::new(RealDevice), opts)?;
        j.start_generation(&mut |p: &std::path::Path| {
            std::fs::File::create(p)?;
            Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
        })?;
        Ok(j)
    };
    let mut off = open("off", Compression::Off)?;
    let mut on = open("zstd", Compression::Zstd)?;
    // Let the background preparers finish zero-filling segment 2 first: its
    // writes would otherwise slow the first flushes measured.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let mut version = 0u32;
    for (class, calls) in classes {
        let (mut t_off, mut t_on, mut d_off, mut d_on) = (vec![], vec![], 0, 0);
        let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len().max(1) as u64;
        for writes in calls {
            version += 1;
            let t = Instant::now();
            d_off += off.append(version, CallKind::Txn, writes)?.disk_bytes;
            t_off.push(t.elapsed().as_micros() as u64);
            let t = Instant::now();
            d_on += on.append(version, CallKind::Txn, writes)?.disk_bytes;
            t_on.push(t.elapsed().as_micros() as u64);
        }
        println!(
            "append {class} ({} records): off mean {} us p50 {} us p99 {} us, {} blocks; \
             zstd mean {} us p50 {} us p99 {} us, {} blocks",
            calls.len(),
            mean(&t_off),
            percentile(&mut t_off, 0.5),
            percentile(&mut t_off, 0.99),
            d_off / BLOCK as u64,
            mean(&t_on),
            percentile(&mut t_on, 0.5),
            percentile(&mut t_on, 0.99),
            d_on / BLOCK as u64,
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let work = tempfile::Builder::new().prefix("cln-replica-compression").tempdir_in(&dir)?;
    let trace = trace_calls();
    let workload = workload_calls(3000);
    let trace_payloads: Vec<Vec<u8>> = trace.iter().map(|c| payload(c)).collect();
    let workload_payloads: Vec<Vec<u8>> = workload.iter().map(|c| payload(c)).collect();

    println!("== records");
    sizes("trace", &trace_payloads);
    sizes("workload", &workload_payloads);
    println!("== 1. level 1 against 3 (multi-block records, {BLOCK}-byte blocks)");
    levels("trace", &trace_payloads);
    levels("workload", &workload_payloads);

    println!("== 2. append latency on {} (O_DIRECT, fdatasync)", work.path().display());
    let by_blocks = |lo: usize, hi: usize| -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = trace
            .iter()
            .filter(|c| (lo..=hi).contains(&(disk(format::payload_bytes(c)) / BLOCK as usize)))
            .cloned()
            .collect();
        v.truncate(300);
        v
    };
    let mut w = Workload::new(9);
    let mut big = |bytes: usize, n: usize| -> Vec<Vec<String>> {
        (0..n)
            .map(|_| match w.big_change(bytes) {
                Change::Txn(s) => s,
                Change::InPlace(s) => vec![s],
            })
            .collect()
    };
    let classes = [
        ("trace, 1 block", by_blocks(1, 1)),
        ("trace, 2 blocks", by_blocks(2, 2)),
        ("trace, 3+ blocks", by_blocks(3, usize::MAX)),
        ("big_change 64 KiB", big(64 << 10, 100)),
        ("big_change 512 KiB", big(512 << 10, 30)),
    ];
    latency(work.path(), true, &classes)?;
    // The CPU cost alone: buffered writes to tmpfs, where fdatasync is free.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        let work = tempfile::Builder::new().prefix("cln-replica-compression").tempdir_in(shm)?;
        println!("== 2b. append latency on {} (tmpfs, buffered: CPU only)", work.path().display());
        latency(work.path(), false, &classes)?;
    }

    println!("== 3. dictionary (level 1)");
    halves("trace", &trace_payloads);
    halves("workload", &workload_payloads);
    // The larger real trace (a whole three-node workload, 6401 calls).
    let realnode = trace::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cln-v26.06-realnode.jsonl.zst"
    )))?;
    let realnode_payloads: Vec<Vec<u8>> = realnode.iter().map(|c| payload(&c.writes)).collect();
    sizes("real node", &realnode_payloads);
    levels("real node", &realnode_payloads);
    halves("real node", &realnode_payloads);
    Ok(())
}
