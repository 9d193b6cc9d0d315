//! Proof of durability: a power cut at every I/O step of a workload.
//!
//! Each seed runs a workload once through the real plugin engine over a
//! recording [`FaultDevice`], with an in-process lightningd on a real SQLite
//! database ([`harness`]). The device's log is then replayed step by step:
//! after every step, and for each way the volatile state can survive a cut
//! ([`Cut`]: dropped, kept, the last write torn at a sector, a random subset),
//! the media is materialised, restored with `restore::restore`, and the result
//! compared with the states lightningd went through. The invariant
//! (docs/DURABILITY.md):
//!
//! > the restore equals a state the database was in at or after the last
//! > change acknowledged with `continue`: a committed state, or the one change
//! > lightningd had sent to the hook (acknowledged or not) and not committed.
//!
//! At a subset of crash points the node also reboots on that media: lightningd
//! restarts from its committed database, resends or moves on, the plugin
//! reopens the journal, and after more changes the restore must equal the
//! database exactly.
//!
//! `DURABILITY_SEEDS` (default 32) sets how many seeds run; each seed is its
//! own test so they run in parallel.

mod faults;
mod harness;

use cln_replica::device::fault::{Cut, Event, FaultDevice, Media};
use cln_replica::device::RealDevice;
use cln_replica::plugin::engine::Answer;
use cln_replica::restore::{self, RestoreOptions};
use cln_replica::sim::workload::Workload;
use harness::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const SEGMENT_BYTES: u64 = 64 << 10;

/// A scratch directory on tmpfs when there is one: the test makes thousands
/// of small files and flushes.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new().prefix("cln-replica-durability").tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

type Rng = cln_replica::rng::SplitMix64;

fn hex(rng: &mut Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes.div_ceil(8) {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(bytes * 2);
    s
}

fn is_fresh(seed: u64) -> bool {
    seed == 0
}

/// Even seeds store their large changes compressed, odd seeds plain (a
/// reboot picks by its own seed, so a rebooted journal may mix both kinds).
fn compression(seed: u64) -> &'static str {
    if seed.is_multiple_of(2) {
        "zstd"
    } else {
        "off"
    }
}

struct Run {
    _base: tempfile::TempDir,
    log: Vec<Event>,
    notes: Vec<Note>,
    /// Hash of the database before anything happened.
    initial_hash: u64,
}

fn expect_continue(ln: &Lightningd, a: Answer, what: &str) {
    assert_eq!(a, Answer::Continue, "{what}: refused: {:?}", ln.last_refusal);
}

/// Runs one seed's workload over a recording fault device.
fn record_run(seed: u64, changes: usize) -> Run {
    let base = scratch();
    let root = base.path().join("dev");
    let node = base.path().join("node");
    let copies = base.path().join("copies");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&copies).unwrap();
    configure(&node, &root.join("journal"), SEGMENT_BYTES, compression(seed));
    let fault = FaultDevice::new(Arc::new(RealDevice), &root);
    fault.record();
    let mut ln = Lightningd::open(&node, Arc::new(fault.clone()), Some(fault.clone()));
    ln.copies = Some(copies);
    let initial_hash = ln.hash();
    let mut rng = cln_replica::rng::SplitMix64(seed);
    // Seed 0: a new node, whose whole schema is the journal's first record
    // (replaying it costs ~0.2 s per restore); the others: a node that ran
    // before the plugin, so the first hook takes a snapshot.
    let fresh = is_fresh(seed);
    if !fresh {
        for c in Workload::schema() {
            ln.apply(&c);
        }
    }
    ln.start_plugin();
    if fresh {
        for c in Workload::schema() {
            let a = ln.apply(&c);
            expect_continue(&ln, a, "schema");
        }
    }
    let a = ln.txn(&["CREATE TABLE durability_blobs (k INTEGER PRIMARY KEY, v BLOB NOT NULL)".into()], TxnEnd::Commit);
    expect_continue(&ln, a, "create table");
    let mut w = Workload::new(seed);
    let mut key = 0u64;
    let journal = root.join("journal");
    for _ in 0..changes {
        key += 1;
        match rng.below(100) {
            // A large change: a record of several blocks, now and then
            // larger than a whole segment.
            0..=5 => {
                let bytes = [3000, 20_000, 90_000][rng.below(3) as usize];
                let s = format!("INSERT INTO durability_blobs VALUES ({key}, x'{}')", hex(&mut rng, bytes));
                let a = ln.txn(&[s], TxnEnd::Commit);
                expect_continue(&ln, a, "large change");
                // Looked at now: a later gap or retention may remove the
                // generation that holds it.
                if compression(seed) == "zstd" {
                    let compressed = count_records(&journal, |h| h.is_compressed());
                    assert!(compressed > 0, "seed {seed}: a large change, not compressed");
                }
            }
            // lightningd dies between the hook and COMMIT, restarts, and
            // sends the same data_version with other content.
            6..=10 => {
                let a =
                    ln.txn(&[format!("INSERT INTO durability_blobs VALUES ({key}, x'01')")], TxnEnd::CrashBeforeCommit);
                expect_continue(&ln, a, "change before the crash");
                ln.start_plugin();
                let a = ln.txn(&[format!("INSERT INTO durability_blobs VALUES ({key}, x'0202')")], TxnEnd::Commit);
                expect_continue(&ln, a, "change resent after the crash");
            }
            // A clean restart of the node.
            11..=13 => {
                ln.stop_plugin();
                ln.start_plugin();
            }
            // lightningd runs without the plugin for a change: a gap, healed
            // by a new generation at the next hook.
            14..=15 => {
                ln.stop_plugin();
                ln.apply(&w.next_change());
                ln.start_plugin();
            }
            // A change of several statements, larger than a chunk: stored as
            // chunk records that count only together, now and then across a
            // segment switch.
            19..=24 => {
                let statements: Vec<String> = (0..2 + rng.below(5))
                    .map(|i| {
                        let bytes = [1500, 3000, 9000][rng.below(3) as usize];
                        format!(
                            "INSERT INTO durability_blobs VALUES ({}, x'{}')",
                            (1 << 20) + key * 16 + i,
                            hex(&mut rng, bytes)
                        )
                    })
                    .collect();
                let a = ln.txn(&statements, TxnEnd::Commit);
                expect_continue(&ln, a, "chunked change");
                let continued = count_records(&journal, |h| h.continues());
                assert!(continued > 0, "seed {seed}: a change larger than a chunk, not stored in chunks");
            }
            // A PRAGMA-only call at the current version.
            16..=18 => {
                let a = ln.in_place("PRAGMA foreign_keys = ON;");
                expect_continue(&ln, a, "in-place call");
            }
            _ => {
                let a = ln.apply(&w.next_change());
                expect_continue(&ln, a, "change");
            }
        }
    }
    ln.stop_plugin();
    // The run stored what its configuration asked for (compressed and
    // chunked records were checked as they were written).
    if compression(seed) == "off" {
        assert_eq!(count_records(&journal, |h| h.is_compressed()), 0, "seed {seed}: compression is off");
    }
    let notes = ln.notes.clone();
    drop(ln);
    Run { _base: base, log: fault.take_log(), notes, initial_hash }
}

/// How many records of the journal match `which`.
fn count_records(journal: &Path, which: fn(&cln_replica::journal::format::RecordHeader) -> bool) -> usize {
    let gens = cln_replica::journal::reader::generations(journal).unwrap();
    gens.iter().flat_map(|g| g.records().map(|r| which(&r.unwrap().header)).collect::<Vec<_>>()).filter(|&z| z).count()
}

/// What lightningd had seen when the power went: the states a restore may
/// legitimately equal.
#[derive(Clone)]
struct Tracker {
    /// Hashes of every state since (and including) the last acknowledged one.
    allowed: Vec<(u32, u64)>,
    acked_any: bool,
    /// The database file at the last commit (`None`: nothing committed yet).
    committed_db: Option<PathBuf>,
}

impl Tracker {
    fn apply(&mut self, note: &Note) {
        match note {
            Note::Sent { version, hash } => self.allowed.push((*version, *hash)),
            Note::Acked { version, hash } => {
                self.allowed = vec![(*version, *hash)];
                self.acked_any = true;
            }
            Note::Committed { version, hash, db } => {
                self.allowed.push((*version, *hash));
                self.committed_db = db.clone();
            }
            Note::RolledBack => {}
        }
    }
}

/// The outcome of restoring one crash image.
#[derive(Debug, Clone, PartialEq)]
enum Restored {
    Db(u64),
    Failed(String),
}

fn restore_image(img: &Path, scratch: &Path) -> Restored {
    let to = scratch.join("restored.sqlite3");
    let _ = std::fs::remove_file(&to);
    let opts = RestoreOptions {
        from: img.join("journal"),
        to: to.clone(),
        at: None,
        before_unix_ms: None,
        force: true,
        allow_older: false,
    };
    match restore::restore(&opts, |_| {}) {
        Ok(_) => Restored::Db(file_hash(&to).unwrap()),
        Err(e) => Restored::Failed(format!("{e:#}")),
    }
}

/// A cheap identity of a materialised image, to restore each distinct one once.
fn image_key(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = vec![];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            files.push(e.path());
        }
    }
    files.sort();
    for f in files {
        f.strip_prefix(dir).unwrap().hash(&mut h);
        if f.is_file() {
            std::fs::read(&f).unwrap().hash(&mut h);
        }
    }
    h.finish()
}

#[derive(Default, Debug)]
struct Stats {
    steps: u64,
    crash_points: u64,
    /// Crash instants checked (a crash point checked against every state of
    /// lightningd between two steps).
    instants: u64,
    distinct_images: u64,
    restored_before_any_ack: u64,
    reboots: u64,
    violations: Vec<String>,
}

fn cuts_for(media: &Media) -> Vec<Cut> {
    let mut cuts = vec![Cut::DropUnflushed];
    if media.has_volatile() {
        cuts.push(Cut::KeepAll);
        if let Some(n) = media.last_write_sectors() {
            let mut ks = vec![1, n / 2, n.saturating_sub(1)];
            ks.sort_unstable();
            ks.dedup();
            for k in ks.into_iter().filter(|&k| k >= 1 && k < n) {
                cuts.push(Cut::TornLast { sectors: k });
                cuts.push(Cut::TornLastTail { sectors: k });
            }
        }
        cuts.push(Cut::Random(1));
        cuts.push(Cut::Random(2));
    }
    cuts
}

fn check(stats: &mut Stats, tracker: &Tracker, outcome: &Restored, what: &str) {
    stats.instants += 1;
    let ok = match outcome {
        // Before any acknowledgement the list holds every state lightningd
        // went through, so an unexpected database is an error even then.
        Restored::Db(h) => tracker.allowed.iter().any(|(_, a)| a == h),
        Restored::Failed(_) => !tracker.acked_any,
    };
    if !ok && stats.violations.len() < 20 {
        stats
            .violations
            .push(format!("{what}: restore gave {outcome:?}, allowed (data_version, hash) {:?}", tracker.allowed));
    }
}

/// Reboots on the crash image: lightningd restarts on its committed
/// database, the plugin reopens the journal, more changes follow; the restore
/// must then equal the database exactly.
fn reboot(img: &Path, tracker: &Tracker, scratch: &Path, seed: u64) -> Result<(), String> {
    let node = scratch.join("reboot-node");
    let _ = std::fs::remove_dir_all(&node);
    configure(&node, &img.join("journal"), SEGMENT_BYTES, compression(seed));
    if let Some(db) = &tracker.committed_db {
        std::fs::copy(db, db_path(&node)).map_err(|e| e.to_string())?;
    }
    let mut ln = Lightningd::open(&node, Arc::new(RealDevice), None);
    ln.track = false;
    ln.start_plugin();
    if cln_replica::snapshot::data_version(&ln.conn).unwrap().is_none() {
        // Nothing committed before the cut: lightningd creates its schema again.
        for c in Workload::schema() {
            if ln.apply(&c) != Answer::Continue {
                return Err(format!("after reboot the hook refused the schema: {:?}", ln.last_refusal));
            }
        }
    }
    let mut rng = cln_replica::rng::SplitMix64(seed);
    let statements = [
        "CREATE TABLE IF NOT EXISTS durability_reboot (k INTEGER PRIMARY KEY, v TEXT NOT NULL)".to_string(),
        format!("INSERT INTO durability_reboot VALUES (1, '{}')", rng.next_u64()),
        format!("INSERT INTO durability_reboot VALUES (2, '{}')", rng.next_u64()),
    ];
    for s in statements {
        if ln.txn(std::slice::from_ref(&s), TxnEnd::Commit) != Answer::Continue {
            return Err(format!("after reboot the hook refused: {:?}", ln.last_refusal));
        }
    }
    ln.stop_plugin();
    let expected = ln.hash();
    drop(ln);
    match restore_image(img, scratch) {
        Restored::Db(h) if h == expected => Ok(()),
        other => Err(format!("after reboot and 3 more changes the restore gave {other:?}, not the database")),
    }
}

fn crash_every_step(seed: u64, changes: usize) -> Stats {
    let started = Instant::now();
    let run = record_run(seed, changes);
    let recorded_s = started.elapsed().as_secs_f64();
    let mut restore_s = 0.0;
    let work = scratch();
    let mut stats = Stats::default();
    let mut media = Media::new();
    let mut tracker = Tracker { allowed: vec![(0, run.initial_hash)], acked_any: false, committed_db: None };
    let mut cache: HashMap<u64, Restored> = HashMap::new();
    // Outcomes of the current step's images, re-checked as lightningd's
    // notes between this step and the next arrive.
    let mut window: Vec<(String, Restored)> = vec![];
    let img = work.path().join("img");
    for (i, ev) in run.log.iter().enumerate() {
        if let Event::Mark(t) = ev {
            tracker.apply(&run.notes[*t as usize]);
            for (what, outcome) in &window {
                check(&mut stats, &tracker, outcome, what);
            }
            continue;
        }
        media.apply(ev);
        stats.steps += 1;
        window.clear();
        let cuts = cuts_for(&media);
        for (ci, cut) in cuts.iter().enumerate() {
            let _ = std::fs::remove_dir_all(&img);
            std::fs::create_dir_all(&img).unwrap();
            media.materialize(&img, *cut).unwrap();
            let key = image_key(&img);
            let outcome = match cache.get(&key) {
                Some(o) => o.clone(),
                None => {
                    stats.distinct_images += 1;
                    let t = Instant::now();
                    let o = restore_image(&img, work.path());
                    restore_s += t.elapsed().as_secs_f64();
                    cache.insert(key, o.clone());
                    o
                }
            };
            stats.crash_points += 1;
            if !tracker.acked_any {
                stats.restored_before_any_ack += 1;
            }
            let what = format!("seed {seed}, step {} (log entry {i}, {ev:?}), {cut:?}", stats.steps, ev = short(ev));
            check(&mut stats, &tracker, &outcome, &what);
            // Reboot at every third step (a different third for each seed;
            // every eighth for the slow new-node seed)
            // on the plainest cut and on the first torn one: a reboot costs
            // more than all the restores of its step.
            let every = if is_fresh(seed) { 8 } else { 3 };
            let sampled = (stats.steps + seed).is_multiple_of(every);
            let torn_reboot = matches!(cut, Cut::TornLast { .. }) && ci <= 2;
            if reboots_enabled() && sampled && (ci == 0 || torn_reboot) {
                stats.reboots += 1;
                if let Err(e) = reboot(&img, &tracker, work.path(), seed ^ i as u64) {
                    if stats.violations.len() < 20 {
                        stats.violations.push(format!("{what}: {e}"));
                    }
                }
            }
            window.push((what, outcome));
        }
    }
    eprintln!(
        "seed {seed}: {} steps, {} crash points ({} instants, {} distinct images, {} before any ack), {} reboots, \
         {} violations, {:.1} s (recording {recorded_s:.1} s, restores {restore_s:.1} s)",
        stats.steps,
        stats.crash_points,
        stats.instants,
        stats.distinct_images,
        stats.restored_before_any_ack,
        stats.reboots,
        stats.violations.len(),
        started.elapsed().as_secs_f64()
    );
    stats
}

fn short(ev: &Event) -> String {
    match ev {
        Event::Write { ino, offset, data } => format!("write ino {ino} @{offset} {} B", data.len()),
        Event::Adopt { path, data, .. } => format!("adopt {} {} B", path.display(), data.len()),
        other => format!("{other:?}"),
    }
}

fn reboots_enabled() -> bool {
    std::env::var("DURABILITY_REBOOTS").map_or(true, |v| v != "0")
}

fn seeds() -> u64 {
    std::env::var("DURABILITY_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(32)
}

fn run_seeds(group: u64, groups: u64) {
    let mut violations = vec![];
    let mut total = Stats::default();
    for seed in (0..seeds()).filter(|s| s % groups == group) {
        let s = crash_every_step(seed, 40);
        total.crash_points += s.crash_points;
        total.reboots += s.reboots;
        violations.extend(s.violations);
    }
    eprintln!("group {group}: {} crash points, {} reboots", total.crash_points, total.reboots);
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
}

#[test]
fn power_cut_at_every_step_group_0() {
    run_seeds(0, 4);
}

#[test]
fn power_cut_at_every_step_group_1() {
    run_seeds(1, 4);
}

#[test]
fn power_cut_at_every_step_group_2() {
    run_seeds(2, 4);
}

#[test]
fn power_cut_at_every_step_group_3() {
    run_seeds(3, 4);
}
