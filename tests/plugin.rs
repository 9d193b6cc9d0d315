//! The real binary, spoken to over the plugin protocol the way lightningd
//! does (via the simulator), through a node's life: first start, hooks before
//! `init`, crashes, restarts, gaps, a database put back from an old copy.

mod common;

use cln_replica::sim::trace;
use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, HookOutcome};
use cln_replica::state::INCREMENT_PREFIX;
use common::*;
use std::path::Path;

#[test]
fn recorded_first_start_restores_whole_and_at_every_chosen_version() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    let calls = trace::first_start();
    let mut copies = vec![];
    for (i, call) in calls.iter().enumerate() {
        expect_continue(node.replay_call(call).unwrap(), &node);
        if i == trace::FIRST_START_SCHEMA_CALLS - 1 {
            // Hooks came first; lightningd sends init once it has started.
            node.init_plugin().unwrap();
        }
        if [0usize, 1, 3, 4, 50, 777].contains(&i) {
            let copy = s.path(&format!("at-{}.sqlite3", node.data_version()));
            node.copy_database(&copy).unwrap();
            copies.push((node.data_version(), copy));
        }
    }
    s.assert_restores_to(&node);
    for (v, copy) in copies {
        let restored = s.restore(Some(v)).unwrap();
        let diffs = cln_replica::dbcompare::compare_files(&copy, &restored).unwrap();
        assert!(diffs.is_empty(), "restore --at {v} differs:\n{}", diffs.join("\n"));
    }
    // The PRAGMA-only calls repeated versions 1 and 2: not rewinds. A restore
    // at 1 holds the whole initial schema (compared above), at 3 the migrated one.
    let tables = |v| {
        let conn = rusqlite::Connection::open(s.restore(Some(v)).unwrap()).unwrap();
        conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    assert_eq!((tables(1), tables(3)), (26, 38), "CLN v26.06's tables at data_version 1 and 3");
}

#[test]
fn the_workload_with_crashes_restarts_and_resends() {
    let s = Setup::new("segment_bytes = 262144\n");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(7);
    for i in 0..1500 {
        match i {
            // lightningd dies after the hook, before COMMIT, and comes back:
            // the same data_version arrives again with a different change.
            300 | 301 => {
                let Change::Txn(stmts) = w.next_change() else { continue };
                let (outcome, status) = node.crash_after_hook(&stmts).unwrap();
                w.undo();
                expect_continue(outcome, &node);
                assert!(status.unwrap().success(), "the plugin exits cleanly when lightningd goes away");
                node.start_plugin(Path::new(EXE), &[]).unwrap();
            }
            // A clean stop and start.
            700 => {
                let (status, _) = node.shutdown_plugin().unwrap();
                assert!(status.success());
                node.start_plugin(Path::new(EXE), &[]).unwrap();
                node.init_plugin().unwrap();
            }
            900 => {
                for c in w.migration() {
                    expect_continue(node.apply(&c).unwrap(), &node);
                }
            }
            1000 => expect_continue(node.apply(&w.big_change(3 << 20)).unwrap(), &node),
            _ => {}
        }
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    assert!(logs_contain(&node, "sent again"), "the resend was seen as a rewind");
    s.assert_restores_to(&node);
}

#[test]
fn a_restart_of_lightningd_that_migrates_cancels_the_uncommitted_change() {
    // lightningd acknowledged data_version N, died before COMMIT, and came
    // back with an upgrade whose first call is a PRAGMA at N - 1.
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(1);
    for _ in 0..20 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    let Change::Txn(stmts) = w.next_change() else { panic!() };
    node.crash_after_hook(&stmts).unwrap();
    w.undo();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    for c in [Change::InPlace("PRAGMA foreign_keys = OFF;".into()), Change::InPlace("PRAGMA foreign_keys = ON;".into())]
    {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    for _ in 0..5 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    assert!(logs_contain(&node, "never committed"), "{:?}", node.logs());
    s.assert_restores_to(&node);
}

#[test]
fn a_gap_heals_with_a_new_snapshot_and_says_how_many_were_missed() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(3);
    for _ in 0..30 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    // The operator runs lightningd once without the plugin.
    for _ in 0..17 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    for _ in 0..10 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    assert!(logs_contain(&node, "gap: lightningd committed 17 change(s)"), "{:?}", node.logs());
    s.assert_restores_to(&node);
    let inv = cln_replica::inventory::inventory(&s.journal).unwrap();
    assert_eq!(inv.generations.len(), 2);
    // Versions inside the gap are not restorable, and restore says why.
    let gap_version = inv.generations[0].last_version + 5;
    let err = s.restore(Some(gap_version)).unwrap_err().to_string();
    assert!(err.contains("not in the journal") && err.contains("without the plugin"), "{err}");
}

#[test]
fn an_older_database_put_back_halts_naming_both_versions() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(4);
    for _ in 0..10 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    let old = s.path("old.sqlite3");
    node.copy_database(&old).unwrap();
    let old_version = node.data_version();
    for _ in 0..10 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    let newest = node.data_version();
    node.shutdown_plugin().unwrap();
    let newest_copy = s.path("newest.sqlite3");
    node.copy_database(&newest_copy).unwrap();
    node.replace_database(&old).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    let why = refusal(node.apply(&w.next_change()).unwrap());
    w.undo();
    assert!(
        why.contains(&format!("at data_version {old_version}"))
            && why.contains(&format!("holds data_version {newest}")),
        "{why}"
    );
    assert_eq!(node.data_version(), old_version, "nothing was committed");
    // The backup still gives the newest state.
    let restored = s.restore(None).unwrap();
    assert!(cln_replica::dbcompare::compare_files(&newest_copy, &restored).unwrap().is_empty());
    // And it stays halted for any later call.
    let why2 = refusal(node.apply(&w.next_change()).unwrap());
    assert!(why2.contains("went backwards"), "{why2}");
}

#[test]
fn sigkill_mid_hook_then_restart_loses_nothing() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = Workload::new(5);
    for round in 0..15 {
        for _ in 0..5 {
            expect_continue(node.apply(&w.next_change()).unwrap(), &node);
        }
        // Send the hook and kill the plugin without waiting for the answer:
        // the record may or may not be on disk. lightningd never committed.
        let Change::Txn(mut stmts) = w.next_change() else { continue };
        stmts.push(format!("{INCREMENT_PREFIX}{}", node.data_version()));
        let msg = serde_json::json!({"jsonrpc":"2.0","id":format!("cln:db_write#k{round}"),"method":"db_write",
            "params":{"data_version": node.data_version() + 1, "writes": stmts}});
        node.send_raw(msg.to_string().as_bytes()).unwrap();
        node.kill_plugin().unwrap();
        w.undo();
        node.start_plugin(Path::new(EXE), &[]).unwrap();
    }
    for _ in 0..5 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    s.assert_restores_to(&node);
}

#[test]
fn a_brand_new_node_restores_with_its_whole_schema_from_an_empty_snapshot() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    assert!(!s.node_dir.join("lightningd.sqlite3").exists() || node.data_version() == 0);
    apply_schema(&mut node);
    let inv = cln_replica::inventory::inventory(&s.journal).unwrap();
    assert_eq!(inv.generations[0].base.name(), "empty");
    assert_eq!(inv.generations[0].base_version, 0);
    s.assert_restores_to(&node);
}

#[test]
fn hooks_answered_after_the_shutdown_notification_and_exit_when_quiet() {
    let s = Setup::new("shutdown_quiet_ms = 300\n");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    node.init_plugin().unwrap();
    node.send_raw(br#"{"jsonrpc":"2.0","method":"shutdown","params":{}}"#).unwrap();
    // Another plugin winding down makes lightningd write: still answered.
    let mut w = Workload::new(9);
    for _ in 0..3 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    let (status, _) = node.shutdown_plugin().unwrap();
    assert!(status.success());
    let inv = cln_replica::inventory::inventory(&s.journal).unwrap();
    assert!(inv.generations[0].sealed, "the journal is sealed on a clean stop");
    s.assert_restores_to(&node);
}

#[test]
fn statements_sqlite_rejects_are_named_at_restore() {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let v = node.data_version();
    // The plugin stores what lightningd sent; it cannot know SQL.
    let writes = vec!["THIS IS NOT SQL;".to_string(), format!("{INCREMENT_PREFIX}{v}")];
    expect_continue(node.hook(v + 1, &writes).unwrap(), &node);
    let err = format!("{:#}", s.restore(None).unwrap_err());
    assert!(err.contains(&format!("data_version {}", v + 1)) && err.contains("statement 1 of 2"), "{err}");
    assert!(err.contains("THIS IS NOT SQL"), "{err}");
}

#[test]
fn a_second_plugin_on_the_same_journal_is_refused() {
    let s = Setup::new("");
    let mut a = s.node_with_plugin();
    expect_continue(a.apply(&Workload::schema()[0]).unwrap(), &a);
    let other = Setup::new("");
    std::fs::write(other.node_dir.join("cln-replica.toml"), format!("journal = {:?}\n", s.journal)).unwrap();
    let mut b = other.node_with_plugin();
    let why = refusal(b.apply(&Workload::schema()[0]).unwrap());
    assert!(why.contains("another process is writing"), "{why}");
}

#[test]
fn a_node_initialised_while_stopped_continues_without_a_new_snapshot() {
    let s = Setup::new("");
    let mut node = s.node();
    for c in Workload::schema() {
        assert_eq!(node.apply(&c).unwrap(), HookOutcome::Continue);
    }
    drop(node);
    std::fs::remove_file(s.node_dir.join("cln-replica.toml")).unwrap();
    let out = std::process::Command::new(EXE)
        .args(["init", "--lightning-dir"])
        .arg(&s.node_dir)
        .arg("--journal")
        .arg(&s.journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut node = s.node_with_plugin();
    let mut w = Workload::new(11);
    for _ in 0..10 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    assert_eq!(cln_replica::inventory::inventory(&s.journal).unwrap().generations.len(), 1);
    s.assert_restores_to(&node);
}
