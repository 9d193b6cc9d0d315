//! The mirror, through the real binary: equal to the node after a clean stop,
//! consistent at a journal-covered version after SIGKILL at any moment and
//! while a second process reads it, following compaction, rebuilt after a gap
//! and after a change lightningd never committed, and `restore --from-mirror`.

mod common;

use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, SimNode};
use common::*;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn setup(extra: &str) -> (Setup, PathBuf) {
    let s = Setup::new(extra);
    let mirror = s.tmp.path().join("backup").join("lightningd.sqlite3");
    let cfg = s.node_dir.join("cln-replica.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}mirror = {mirror:?}\n")).unwrap();
    (s, mirror)
}

fn changes(node: &mut SimNode, w: &mut Workload, n: usize) {
    for _ in 0..n {
        expect_continue(node.apply(&w.next_change()).unwrap(), node);
    }
}

fn assert_mirror_equals_node(s: &Setup, node: &SimNode, mirror: &Path) {
    let live = s.path("live-for-mirror.sqlite3");
    let _ = std::fs::remove_file(&live);
    node.copy_database(&live).unwrap();
    let diffs = cln_replica::dbcompare::compare_files(&live, mirror).unwrap();
    assert!(diffs.is_empty(), "mirror differs from the node:\n{}\n{}", diffs.join("\n"), node.logs().join("\n"));
}

/// Opens the mirror as a second process would (read-only), checks it, and
/// compares it with `restore --at` its own version.
fn assert_mirror_consistent(s: &Setup, mirror: &Path) -> u32 {
    let conn = Connection::open_with_flags(mirror, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let Some(v) = cln_replica::snapshot::data_version(&conn).unwrap() else {
        // Still the empty base of a brand-new node's generation: version 0.
        return 0;
    };
    // A consistent copy of what this reader sees.
    let copy = s.path("mirror-copy.sqlite3");
    let _ = std::fs::remove_file(&copy);
    {
        let mut dst = Connection::open(&copy).unwrap();
        rusqlite::backup::Backup::new(&conn, &mut dst).unwrap().run_to_completion(1024, Duration::ZERO, None).unwrap();
    }
    let copy_v = cln_replica::snapshot::data_version(&Connection::open(&copy).unwrap()).unwrap().unwrap();
    let restored = s.restore(Some(copy_v)).unwrap();
    let diffs = cln_replica::dbcompare::compare_files(&copy, &restored).unwrap();
    assert!(diffs.is_empty(), "the mirror at {copy_v} differs from restore --at {copy_v}:\n{}", diffs.join("\n"));
    v
}

fn mirror_status(node: &mut SimNode) -> serde_json::Value {
    node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"]["mirror"].clone()
}

#[test]
fn the_mirror_equals_the_node_after_a_clean_stop_and_is_one_file() {
    let (s, mirror) = setup("segment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(70);
    changes(&mut node, &mut w, 200);
    for c in w.migration() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    changes(&mut node, &mut w, 100);
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
    let wal = mirror.with_file_name("lightningd.sqlite3-wal");
    assert!(!wal.exists(), "a clean stop leaves one self-contained file");
    let mode: String = Connection::open(&mirror).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete", "the rollback journal lightningd expects");
    // And it continues from there at the next start.
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 50);
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
    s.assert_restores_to(&node);
}

#[test]
fn sigkill_at_any_moment_leaves_the_mirror_consistent_at_a_covered_version() {
    let (s, mirror) = setup("segment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(71);
    for round in 0..8 {
        changes(&mut node, &mut w, 20 + round * 7);
        if mirror.exists() {
            // A second process reads it while the follower writes.
            assert_mirror_consistent(&s, &mirror);
        }
        changes(&mut node, &mut w, 5);
        node.kill_plugin().unwrap();
        let v = assert_mirror_consistent(&s, &mirror);
        assert!(v <= node.data_version(), "the mirror never runs ahead of a committed node here");
        // restore --from-mirror brings it to the newest version.
        let to = s.path("from-mirror.sqlite3");
        let out = std::process::Command::new(EXE)
            .args(["restore", "--force", "--from"])
            .arg(&s.journal)
            .arg("--from-mirror")
            .arg(&mirror)
            .arg("--to")
            .arg(&to)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let latest = s.restore(None).unwrap();
        let diffs = cln_replica::dbcompare::compare_files(&latest, &to).unwrap();
        assert!(diffs.is_empty(), "restore --from-mirror differs:\n{}", diffs.join("\n"));
        node.start_plugin(Path::new(EXE), &[]).unwrap();
    }
    changes(&mut node, &mut w, 10);
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
}

#[test]
fn the_mirror_follows_compaction_and_is_rebuilt_after_a_gap() {
    let (s, mirror) = setup("segment_bytes = 262144\nkeep_generations = 1\n");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(72);
    changes(&mut node, &mut w, 150);
    node.request("replica-compact", serde_json::json!({})).unwrap();
    // The compaction runs in the background and is adopted at a hook; the
    // mirror then follows. Changes keep coming until it has (bounded: an
    // emulated armv7 is many times slower than this machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while mirror_status(&mut node)["generation"] != 2 && std::time::Instant::now() < deadline {
        changes(&mut node, &mut w, 1);
        // A node's pace: the compactor runs at idle I/O priority.
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = mirror_status(&mut node);
    assert_eq!((st["generation"].as_u64(), st["rebuilds"].as_u64()), (Some(2), Some(0)), "{st}");
    changes(&mut node, &mut w, 20);
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
    // lightningd runs without the plugin: a gap, a new snapshot, a rebuild.
    changes(&mut node, &mut w, 7);
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    changes(&mut node, &mut w, 30);
    // The rebuild runs in the mirror's thread: poll its status (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut st = mirror_status(&mut node);
    while st["generation"] != 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        st = mirror_status(&mut node);
    }
    assert_eq!((st["generation"].as_u64(), st["rebuilds"].as_u64()), (Some(3), Some(1)), "{st}");
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
}

#[test]
fn a_mirror_holding_a_change_lightningd_never_committed_is_rebuilt() {
    let (s, mirror) = setup("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(73);
    changes(&mut node, &mut w, 40);
    // lightningd dies after the hook: the plugin sees EOF and brings the
    // mirror "fully up to date", pending change included (one ahead).
    let Change::Txn(stmts) = w.next_change() else { panic!() };
    node.crash_after_hook(&stmts).unwrap();
    w.undo();
    let conn = Connection::open(&mirror).unwrap();
    assert_eq!(cln_replica::snapshot::data_version(&conn).unwrap(), Some(node.data_version() + 1));
    drop(conn);
    // It comes back and sends that version again, with another change.
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 10);
    node.shutdown_plugin().unwrap();
    assert_mirror_equals_node(&s, &node, &mirror);
}
