//! Retention, restore across generations, compaction (offline and by the
//! plugin), and a crash at every step of compaction: through the real binary,
//! on a journal written by the real plugin.

mod common;

use cln_replica::crashpoint::{COMPACTION_STEPS, CRASH_ENV, HOLD_DIR_ENV, HOLD_ENV};
use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, HookOutcome, SimNode};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(EXE);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn changes(node: &mut SimNode, w: &mut Workload, n: usize) {
    for _ in 0..n {
        expect_continue(node.apply(&w.next_change()).unwrap(), node);
    }
}

fn schema(node: &mut SimNode) {
    for c in Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), node);
    }
}

fn restore_with(s: &Setup, at: Option<u32>, before_unix_ms: Option<u64>, name: &str) -> anyhow::Result<PathBuf> {
    let to = s.path(name);
    let _ = std::fs::remove_file(&to);
    let opts = cln_replica::restore::RestoreOptions {
        from: s.journal.clone(),
        to: to.clone(),
        at,
        before_unix_ms,
        force: false,
        allow_older: false,
    };
    cln_replica::restore::restore(&opts, |_| {})?;
    Ok(to)
}

fn assert_same(a: &Path, b: &Path, what: &str) {
    let diffs = cln_replica::dbcompare::compare_files(a, b).unwrap();
    assert!(diffs.is_empty(), "{what} differs:\n{}", diffs.join("\n"));
}

fn compact_cli(s: &Setup, env: &[(&str, &str)]) -> Output {
    run(&["compact", "--lightning-dir", s.node_dir.to_str().unwrap()], env)
}

fn now_ms() -> u64 {
    cln_replica::clock::now_unix_ms()
}

fn generations(s: &Setup) -> Vec<(u64, String, u32)> {
    cln_replica::inventory::inventory(&s.journal)
        .unwrap()
        .generations
        .iter()
        .map(|g| (g.generation, g.base.to_string(), g.base_version))
        .collect()
}

#[test]
fn restore_at_a_version_and_before_a_time_reaches_back_across_generations() {
    let s = Setup::new("keep_generations = 3\nsegment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let mut w = Workload::new(31);
    // (data_version, time just after it, copy of the node's database)
    let mut points: Vec<(u32, u64, PathBuf)> = vec![];
    let mark = |node: &SimNode, points: &mut Vec<(u32, u64, PathBuf)>| {
        let copy = s.path(&format!("at-{}.sqlite3", node.data_version()));
        node.copy_database(&copy).unwrap();
        std::thread::sleep(Duration::from_millis(15));
        points.push((node.data_version(), now_ms(), copy));
        std::thread::sleep(Duration::from_millis(15));
    };
    changes(&mut node, &mut w, 40);
    mark(&node, &mut points);
    changes(&mut node, &mut w, 20);
    // Generation 2: a gap (lightningd ran without the plugin).
    node.shutdown_plugin().unwrap();
    changes(&mut node, &mut w, 5);
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 30);
    mark(&node, &mut points);
    changes(&mut node, &mut w, 10);
    // Generation 3: compaction with the plugin stopped.
    node.shutdown_plugin().unwrap();
    let o = compact_cli(&s, &[]);
    assert!(o.status.success(), "{}", text(&o));
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 30);
    mark(&node, &mut points);
    changes(&mut node, &mut w, 10);
    let gens = generations(&s);
    assert_eq!(gens.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(), ["empty", "snapshot", "compacted"], "{gens:?}");
    s.assert_restores_to(&node);
    for (v, t, copy) in &points {
        assert_same(copy, &restore_with(&s, Some(*v), None, "r-at.sqlite3").unwrap(), &format!("restore --at {v}"));
        let r = restore_with(&s, None, Some(*t), "r-before.sqlite3").unwrap();
        assert_same(copy, &r, &format!("restore --before (the time after data_version {v})"));
    }
    // The versions lightningd committed without the plugin are not restorable.
    let inv = cln_replica::inventory::inventory(&s.journal).unwrap();
    assert_eq!(inv.gaps.len(), 1, "{:?}", inv.gaps);
    let gap = &inv.gaps[0];
    assert_eq!((gap.after_generation, gap.before_generation), (1, 2));
    let err = restore_with(&s, Some(gap.first_version), None, "r-gap.sqlite3").unwrap_err().to_string();
    assert!(err.contains("not in the journal"), "{err}");

    // Retention: one more generation; the oldest goes, and with it its versions.
    node.shutdown_plugin().unwrap();
    let o = compact_cli(&s, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("removed generation(s) [1]"), "{}", text(&o));
    let gens = generations(&s);
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), [2, 3, 4]);
    let (v0, t0, _) = &points[0];
    let err = restore_with(&s, Some(*v0), None, "r-old.sqlite3").unwrap_err().to_string();
    assert!(err.contains("older than the oldest generation"), "{err}");
    let err = restore_with(&s, None, Some(*t0), "r-old.sqlite3").unwrap_err().to_string();
    assert!(err.contains("before the oldest generation"), "{err}");
    for (v, t, copy) in &points[1..] {
        assert_same(copy, &restore_with(&s, Some(*v), None, "r-at.sqlite3").unwrap(), &format!("restore --at {v}"));
        assert_same(copy, &restore_with(&s, None, Some(*t), "r-b.sqlite3").unwrap(), "restore --before");
    }
    s.assert_restores_to(&node);
}

#[test]
fn status_lists_restorable_versions_times_and_gaps() {
    let s = Setup::new("keep_generations = 5\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let mut w = Workload::new(32);
    changes(&mut node, &mut w, 10);
    node.shutdown_plugin().unwrap();
    changes(&mut node, &mut w, 4);
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 10);
    node.shutdown_plugin().unwrap();
    let o = compact_cli(&s, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["status", "--from", s.journal.to_str().unwrap()], &[]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let inv = cln_replica::inventory::inventory(&s.journal).unwrap();
    let g = &inv.generations;
    let gap = format!("GAP: data_versions {}..={} are not restorable", g[0].last_version + 1, g[1].base_version - 1);
    assert!(t.contains(&gap), "{t}");
    assert!(t.contains("compacted from generation 2"), "{t}");
    assert!(t.contains(&format!("restorable: data_versions {}..={}", g[2].base_version, g[2].last_version)), "{t}");
    assert!(t.contains("restorable overall: data_versions 0..=") && t.contains("except 1 gap(s)"), "{t}");
    let o = run(&["status", "--from", s.journal.to_str().unwrap(), "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["journal"]["gaps"].as_array().unwrap().len(), 1);
}

#[test]
fn offline_compaction_is_refused_while_the_plugin_runs() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let o = compact_cli(&s, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("replica-compact"), "{}", text(&o));
}

/// Crash (abort) the offline compaction at each step: restore and verify
/// accept what is left, nothing acknowledged is lost, and the plugin goes on.
#[test]
fn a_crash_at_every_step_of_offline_compaction_loses_nothing() {
    for (i, step) in COMPACTION_STEPS.iter().enumerate() {
        let s = Setup::new("keep_generations = 1\nsegment_bytes = 262144\n");
        let mut node = s.node_with_plugin();
        schema(&mut node);
        let mut w = Workload::new(40 + i as u64);
        changes(&mut node, &mut w, 60);
        // The last change is acknowledged, and lightningd dies before COMMIT:
        // the journal's last record is pending and must be carried.
        let Change::Txn(stmts) = w.next_change() else { panic!() };
        node.crash_after_hook(&stmts).unwrap();
        w.undo();
        let o = compact_cli(&s, &[(CRASH_ENV, step)]);
        assert!(!o.status.success(), "{step}: the process should have aborted: {}", text(&o));
        assert!(text(&o).contains(step), "{step}: {}", text(&o));
        let v = cln_replica::verify::verify(&s.journal, true).unwrap();
        assert!(v.ok(), "{step}: verify: {:?}", v.problems);
        // The pending change is still restorable (one ahead of the node).
        let r = s.restore(None).unwrap();
        let conn = rusqlite::Connection::open(&r).unwrap();
        assert_eq!(
            cln_replica::snapshot::data_version(&conn).unwrap(),
            Some(node.data_version() + 1),
            "{step}: the acknowledged change survives"
        );
        // lightningd comes back and sends that version again: it supersedes.
        node.start_plugin(Path::new(EXE), &[]).unwrap();
        changes(&mut node, &mut w, 10);
        s.assert_restores_to(&node);
        node.shutdown_plugin().unwrap();
        let o = compact_cli(&s, &[]);
        assert!(o.status.success(), "{step}: compaction after the crash: {}", text(&o));
        s.assert_restores_to(&node);
        assert_eq!(generations(&s).len(), 1, "{step}: keep_generations = 1");
    }
}

/// Offline compaction carries the pending change into the new generation as
/// stored: a compressed record stays compressed, byte for byte.
#[test]
fn compaction_carries_a_compressed_record_as_stored() {
    let s = Setup::new("keep_generations = 2\ncompression = \"zstd\"\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let mut w = Workload::new(45);
    changes(&mut node, &mut w, 30);
    // The last change, large and acknowledged, is pending when the node dies.
    let Change::Txn(stmts) = w.big_change(60_000) else { panic!() };
    node.crash_after_hook(&stmts).unwrap();
    w.undo();
    let o = compact_cli(&s, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let gens = cln_replica::journal::reader::generations(&s.journal).unwrap();
    assert_eq!(gens.len(), 2);
    let last_change = |g: &cln_replica::journal::Generation| {
        g.records().map(Result::unwrap).filter(|r| cln_replica::journal::reader::is_change(&r.header)).last().unwrap()
    };
    let (old, new) = (last_change(&gens[0]), last_change(&gens[1]));
    assert!(old.header.is_compressed(), "the large change is stored compressed");
    assert_eq!((new.header.flags, new.header.data_version), (old.header.flags, old.header.data_version));
    assert_eq!(new.payload, old.payload, "carried byte for byte");
    let carried = new.statements().unwrap();
    assert!(carried.len() == stmts.len() + 1 && carried[..stmts.len()] == stmts, "the change, then the increment");
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 5);
    node.shutdown_plugin().unwrap();
    s.assert_restores_to(&node);
}

/// How long a test waits for background work (compaction, retention, the
/// mirror): generous, for an emulated armv7 on a loaded machine.
const BACKGROUND: Duration = Duration::from_secs(300);

/// Applies changes until the plugin dies (the background compaction reached
/// its crash point), or `BACKGROUND` elapses. Returns whether it died.
fn changes_until_gone(node: &mut SimNode, w: &mut Workload, _max: usize) -> bool {
    let deadline = std::time::Instant::now() + BACKGROUND;
    while std::time::Instant::now() < deadline {
        match node.apply(&w.next_change()).unwrap() {
            HookOutcome::Continue => {}
            HookOutcome::PluginGone => {
                w.undo();
                node.kill_plugin().unwrap();
                return true;
            }
            HookOutcome::Refused(why) => panic!("refused: {why}\n{}", node.logs().join("\n")),
        }
        // A node's pace (see above): the compactor must get the device.
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn compaction_state(node: &mut SimNode) -> serde_json::Value {
    node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"]["compaction"].clone()
}

/// Applies changes at a node's pace until `replica-status` counts `n`
/// compactions (the background one is adopted at a hook), or `BACKGROUND`
/// elapses. Returns whether it got there.
fn changes_until_compactions(node: &mut SimNode, w: &mut Workload, n: u64) -> bool {
    let deadline = std::time::Instant::now() + BACKGROUND;
    while compaction_state(node)["compactions"] != n {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        changes(node, w, 1);
        // A node's pace, not a flood: the compactor runs at idle I/O priority
        // and must get the device now and then (under emulation it starved).
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

#[test]
fn the_plugin_compacts_on_request_in_the_background_and_switches_at_a_hook() {
    let s = Setup::new("keep_generations = 1\nsegment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(50);
    changes(&mut node, &mut w, 200);
    let answer = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert_eq!(answer["result"]["started"], true, "{answer}");
    // It runs in the background and is adopted at a hook: changes keep coming.
    let switched = changes_until_compactions(&mut node, &mut w, 1);
    assert!(switched, "{:?}\n{}", compaction_state(&mut node), node.logs().join("\n"));
    changes(&mut node, &mut w, 20);
    s.assert_restores_to(&node);
    // Retention runs in the background after the switch.
    let deadline = std::time::Instant::now() + BACKGROUND;
    while generations(&s).len() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gens = generations(&s);
    assert_eq!((gens.len(), gens[0].1.as_str()), (1, "compacted"), "{gens:?}");
    node.shutdown_plugin().unwrap();
    s.assert_restores_to(&node);
}

/// `replica-status` shows how far a compaction is: the snapshot's bytes
/// copied, then the records applied, never going back; at `ready` the whole
/// snapshot is copied and every confirmed change applied (exactly the versions
/// between the two generations' bases); after the switch the progress is gone.
#[test]
fn the_compactions_progress_is_in_replica_status_until_it_is_adopted() {
    let s = Setup::new("keep_generations = 2\nsegment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(52);
    // The first generation's snapshot is lightningd's empty file: one
    // compaction first, so that the one watched copies a real snapshot.
    changes(&mut node, &mut w, 300);
    node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert!(changes_until_compactions(&mut node, &mut w, 1), "{}", compaction_state(&mut node));
    changes(&mut node, &mut w, 300);
    let answer = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert_eq!(answer["result"]["started"], true, "{answer}");
    // No hook comes, so a finished compaction stays `ready` (it is adopted at
    // the next hook) and its progress can be read.
    let phase_rank = |p: &serde_json::Value| {
        ["copying_snapshot", "applying_records", "ready"]
            .iter()
            .position(|x| p["phase"] == *x)
            .unwrap_or_else(|| panic!("unknown phase in {p}"))
    };
    let deadline = std::time::Instant::now() + BACKGROUND;
    let mut last: Option<serde_json::Value> = None;
    let ready = loop {
        let c = compaction_state(&mut node);
        let p = c["progress"].clone();
        assert!(p.is_object(), "a compaction runs, so its progress is shown: {c}");
        if let Some(l) = &last {
            assert!(phase_rank(&p) >= phase_rank(l), "the phase went back: {l} then {p}");
            for field in ["snapshot_copied_bytes", "records_applied"] {
                assert!(p[field].as_u64() >= l[field].as_u64(), "{field} went back: {l} then {p}");
            }
        }
        assert!(p["snapshot_copied_bytes"].as_u64() <= p["snapshot_bytes"].as_u64(), "{p}");
        if c["state"] == "ready" {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no compaction ready: {c}");
        last = Some(p);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(ready["phase"], "ready", "{ready}");
    assert!(ready["snapshot_bytes"].as_u64().unwrap() > 0, "{ready}");
    assert_eq!(ready["snapshot_copied_bytes"], ready["snapshot_bytes"], "{ready}");
    assert!(ready["records_behind"].as_u64().unwrap() <= 4, "{ready}");
    // The switch, at the next hook.
    changes(&mut node, &mut w, 1);
    let c = compaction_state(&mut node);
    assert_eq!((c["state"].as_str(), c["compactions"].as_u64()), (Some("idle"), Some(2)), "{c}");
    assert!(c["progress"].is_null(), "{c}");
    let gens = generations(&s);
    let [.., old, new] = gens.as_slice() else { panic!("{gens:?}") };
    assert_eq!(ready["records_applied"].as_u64().unwrap(), u64::from(new.2 - old.2), "{ready} {gens:?}");
    node.shutdown_plugin().unwrap();
    s.assert_restores_to(&node);
}

/// A node that writes faster than the compaction finalizes its snapshot
/// (held at `compact-prepared` while 100 changes arrive, each of two
/// finalizes: more than the 32 a first hand-over carries) still gets its
/// compaction: the second finalize carries more, where it used to catch up
/// and finalize again for as long as the node kept writing.
#[test]
fn a_compaction_outpaced_by_the_node_still_switches() {
    let s = Setup::new("keep_generations = 2\nsegment_bytes = 4194304\n");
    let hold = s.path("hold");
    std::fs::create_dir(&hold).unwrap();
    let mut node = s.node();
    let hold_dir = hold.to_str().unwrap();
    node.start_plugin(Path::new(EXE), &[(HOLD_ENV, "compact-prepared"), (HOLD_DIR_ENV, hold_dir)]).unwrap();
    schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(53);
    changes(&mut node, &mut w, 200);
    let answer = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert_eq!(answer["result"]["started"], true, "{answer}");
    let deadline = std::time::Instant::now() + BACKGROUND;
    let mut n = 1;
    loop {
        let c = compaction_state(&mut node);
        if c["state"] == "ready" {
            break;
        }
        assert!(c["state"] == "running", "{c}\n{}", node.logs().join("\n"));
        if hold.join(format!("held-{n}")).exists() {
            assert!(n <= 2, "a third finalize: the node's changes outpaced every hand-over\n{c}");
            changes(&mut node, &mut w, 100);
            std::fs::write(hold.join(format!("release-{n}")), b"").unwrap();
            n += 1;
        }
        assert!(std::time::Instant::now() < deadline, "no compaction ready: {c}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(n, 3, "the compaction was ready after {} finalize(s), not two", n - 1);
    changes(&mut node, &mut w, 1);
    let c = compaction_state(&mut node);
    assert_eq!(c["compactions"], 1, "{c}");
    let carried: u64 =
        c["last_result"].as_str().unwrap().split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(carried >= 100, "the switch carried the second finalize's changes: {c}");
    changes(&mut node, &mut w, 20);
    node.shutdown_plugin().unwrap();
    s.assert_restores_to(&node);
}

#[test]
fn the_size_threshold_triggers_compaction() {
    let s = Setup::new("keep_generations = 2\nsegment_bytes = 262144\ncompact_journal_bytes = 400000\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let mut w = Workload::new(51);
    changes(&mut node, &mut w, 400);
    // Past the threshold a compaction started in the background; changes
    // keep coming until a hook has adopted it.
    let deadline = std::time::Instant::now() + BACKGROUND;
    while compaction_state(&mut node)["compactions"] == 0 && std::time::Instant::now() < deadline {
        changes(&mut node, &mut w, 1);
    }
    node.shutdown_plugin().unwrap();
    let gens = generations(&s);
    assert!(gens.iter().any(|g| g.1 == "compacted"), "{gens:?}\n{}", node.logs().join("\n"));
    assert!(gens.len() <= 2, "{gens:?}");
    s.assert_restores_to(&node);
}

/// The plugin killed at each step of a compaction it runs (with a mirror
/// following): the next start finds a journal that restores to the node's
/// database, and the mirror catches up to equal it at the next clean stop.
#[test]
fn a_crash_at_every_step_of_the_plugins_compaction_loses_nothing() {
    for (i, step) in COMPACTION_STEPS.iter().enumerate() {
        let s = Setup::new("keep_generations = 1\nsegment_bytes = 262144\n");
        let mirror = s.path("mirror.sqlite3");
        let cfg = s.node_dir.join("cln-replica.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        std::fs::write(&cfg, format!("{text}mirror = {mirror:?}\n")).unwrap();
        let mut node = s.node();
        node.start_plugin(Path::new(EXE), &[(CRASH_ENV, step)]).unwrap();
        schema(&mut node);
        node.init_plugin().unwrap();
        let mut w = Workload::new(60 + i as u64);
        changes(&mut node, &mut w, 80);
        node.request("replica-compact", serde_json::json!({})).unwrap();
        let died = changes_until_gone(&mut node, &mut w, 600);
        assert!(died, "{step}: the plugin should have aborted\n{}", node.logs().join("\n"));
        // The change in flight when it died may be in the journal (then the
        // restore is one ahead of the node until lightningd sends it again).
        let v = cln_replica::verify::verify(&s.journal, true).unwrap();
        assert!(v.ok(), "{step}: verify: {:?}", v.problems);
        node.start_plugin(Path::new(EXE), &[]).unwrap();
        changes(&mut node, &mut w, 10);
        s.assert_restores_to(&node);
        node.shutdown_plugin().unwrap();
        let live = s.path("live-m.sqlite3");
        let _ = std::fs::remove_file(&live);
        node.copy_database(&live).unwrap();
        let diffs = cln_replica::dbcompare::compare_files(&live, &mirror).unwrap();
        assert!(diffs.is_empty(), "{step}: the mirror differs:\n{}", diffs.join("\n"));
    }
}

#[test]
fn the_age_threshold_triggers_compaction() {
    let s = Setup::new("keep_generations = 3\ncompact_after_secs = 1\ncompact_journal_bytes = 0\n");
    let mut node = s.node_with_plugin();
    schema(&mut node);
    let mut w = Workload::new(52);
    // The generation ages past compact_after_secs while changes come; then a
    // compaction runs in the background and a hook adopts it.
    let deadline = std::time::Instant::now() + BACKGROUND;
    while compaction_state(&mut node)["compactions"] == 0 && std::time::Instant::now() < deadline {
        changes(&mut node, &mut w, 1);
        std::thread::sleep(Duration::from_millis(5));
    }
    node.shutdown_plugin().unwrap();
    let gens = generations(&s);
    assert!(gens.iter().any(|g| g.1 == "compacted"), "{gens:?}\n{}", node.logs().join("\n"));
    s.assert_restores_to(&node);
}
