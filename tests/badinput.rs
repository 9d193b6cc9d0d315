//! Bad input end to end, through the real binary: huge and tiny changes,
//! bytes that are not UTF-8, JSON nested too deep, data_versions that wrap,
//! skip, repeat and go backwards. Each gets a clear refusal (lightningd stops
//! before committing) or correct handling, and the backup never loses an
//! acknowledged change.

mod common;

use cln_replica::sim::workload::Workload;
use cln_replica::sim::{HookOutcome, SimNode};
use cln_replica::state::INCREMENT_PREFIX;
use common::*;
use serde_json::json;
use std::path::Path;

/// A node with CLN's schema and a few changes, all acknowledged.
fn node_with_schema(s: &Setup) -> SimNode {
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let t = "CREATE TABLE bad_input (k INTEGER PRIMARY KEY, v BLOB)".to_string();
    expect_continue(node.commit(&[t]).unwrap(), &node);
    node
}

fn incr(old: u32) -> String {
    format!("{INCREMENT_PREFIX}{old}")
}

#[test]
fn ten_megabytes_of_writes_are_stored_whole() {
    let s = Setup::new("segment_bytes = 1048576\n");
    let mut node = node_with_schema(&s);
    let statements: Vec<String> =
        (0..1000).map(|i| format!("INSERT INTO bad_input VALUES ({i}, x'{}')", "5a".repeat(5000))).collect();
    expect_continue(node.commit(&statements).unwrap(), &node);
    expect_continue(node.commit(&["DELETE FROM bad_input WHERE k < 500".into()]).unwrap(), &node);
    s.assert_restores_to(&node);
}

#[test]
fn a_million_tiny_statements_are_stored_and_replayed() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let mut statements: Vec<String> = (0..1_000_000).map(|_| "SELECT 1;".to_string()).collect();
    statements.push("INSERT INTO bad_input VALUES (1, x'01')".into());
    expect_continue(node.commit(&statements).unwrap(), &node);
    s.assert_restores_to(&node);
}

#[test]
fn bytes_that_are_not_utf8_stop_the_plugin_without_continue() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let v = node.data_version() + 1;
    let mut msg = format!(r#"{{"jsonrpc":"2.0","id":"cln:db_write#900","method":"db_write","params":{{"data_version":{v},"writes":["INSERT INTO bad_input VALUES (2, '"#).into_bytes();
    msg.extend_from_slice(b"\xff\xfe\x80");
    msg.extend_from_slice(format!(r#"')", "{}"]}}}}"#, incr(v - 1)).as_bytes());
    node.send_raw(&msg).unwrap();
    assert_eq!(node.await_answer("cln:db_write#900").unwrap(), None, "no answer: the plugin stops");
    let status = node.close_plugin().unwrap().unwrap();
    assert_eq!(status.code(), Some(1), "a clean exit, not a crash: {status:?}");
    assert!(logs_contain(&node, "unreadable message"), "{:?}", node.logs());
    s.assert_restores_to(&node);
}

#[test]
fn a_lone_surrogate_escape_is_refused() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let v = node.data_version() + 1;
    let msg = format!(
        r#"{{"jsonrpc":"2.0","id":"cln:db_write#901","method":"db_write","params":{{"data_version":{v},"writes":["INSERT INTO bad_input VALUES (3, '\ud800')", "{}"]}}}}"#,
        incr(v - 1)
    );
    node.send_raw(msg.as_bytes()).unwrap();
    match node.await_answer("cln:db_write#901").unwrap() {
        None => {}
        Some(a) => assert_eq!(a["result"]["result"], json!("abort"), "{a}"),
    }
    s.assert_restores_to(&node);
}

#[test]
fn deeply_nested_json_is_refused_not_a_stack_overflow() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let depth = 200_000;
    let nested = "[".repeat(depth) + &"]".repeat(depth);
    let msg = format!(
        r#"{{"jsonrpc":"2.0","id":"cln:db_write#902","method":"db_write","params":{{"data_version":1,"writes":{nested}}}}}"#
    );
    node.send_raw(msg.as_bytes()).unwrap();
    match node.await_answer("cln:db_write#902").unwrap() {
        None => {
            let status = node.close_plugin().unwrap().unwrap();
            assert_eq!(status.code(), Some(1), "a clean exit, not a crash: {status:?}");
        }
        Some(a) => assert_eq!(a["result"]["result"], json!("abort"), "{a}"),
    }
    s.assert_restores_to(&node);
}

/// A database at data_version `v`, made without the plugin.
fn node_at_version(s: &Setup, v: u32) -> SimNode {
    {
        let mut node = s.node();
        for c in Workload::schema() {
            node.apply(&c).unwrap();
        }
        node.connection().execute("UPDATE vars SET intval = ?1 WHERE name = 'data_version'", [v as i64]).unwrap();
    }
    let mut node = s.node();
    assert_eq!(node.data_version(), v);
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node
}

#[test]
fn data_versions_wrap_from_u32_max_to_zero() {
    let s = Setup::new("");
    let mut node = node_at_version(&s, u32::MAX - 2);
    expect_continue(node.commit(&["CREATE TABLE wrap (k INTEGER)".into()]).unwrap(), &node);
    for k in 0..2 {
        expect_continue(node.commit(&[format!("INSERT INTO wrap VALUES ({k})")]).unwrap(), &node);
    }
    assert_eq!(node.data_version(), 0, "wrapped past u32::MAX");
    // lightningd binds the u32 into a 64-bit column, where it does not wrap
    // (the column now holds 2^32), so the next increment would no longer
    // match: lightningd itself stops there ("Optimistic lock ... failed").
    // What matters here is the plugin's version arithmetic across the wrap.
    s.assert_restores_to(&node);
}

#[test]
fn skipped_repeated_and_backward_versions() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let p = node.data_version();
    // Repeat: lightningd died after the hook; it sends the version again with
    // other content, and the journal supersedes the first one.
    let (outcome, _) = node.crash_after_hook(&["INSERT INTO bad_input VALUES (10, x'01')".into()]).unwrap();
    expect_continue(outcome, &node);
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    expect_continue(node.commit(&["INSERT INTO bad_input VALUES (10, x'0202')".into()]).unwrap(), &node);
    assert_eq!(node.data_version(), p + 1);
    s.assert_restores_to(&node);
    // Going backwards (a stale database): refused, saying why.
    let why = refusal(node.hook(p - 1, &["INSERT INTO bad_input VALUES (11, 1)".into(), incr(p - 2)]).unwrap());
    assert!(why.contains("went backwards"), "{why}");
    s.assert_restores_to(&node);
}

#[test]
fn a_repeat_of_a_committed_version_is_refused() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    expect_continue(node.commit(&["INSERT INTO bad_input VALUES (20, 1)".into()]).unwrap(), &node);
    let v = node.data_version();
    expect_continue(node.in_place("PRAGMA foreign_keys = ON;").unwrap(), &node);
    // v is now known committed (an in-place call followed it): a second
    // transaction for v means the database went back.
    let why = refusal(node.hook(v, &["INSERT INTO bad_input VALUES (21, 1)".into(), incr(v - 1)]).unwrap());
    assert!(why.contains("went backwards"), "{why}");
    s.assert_restores_to(&node);
}

#[test]
fn a_skipped_version_that_the_database_does_not_match_is_refused() {
    let s = Setup::new("");
    let mut node = node_with_schema(&s);
    let p = node.data_version();
    // lightningd claims p + 5 while its database is at p: the snapshot the
    // gap needs would not match.
    let why = refusal(node.hook(p + 5, &["INSERT INTO bad_input VALUES (30, 1)".into(), incr(p + 4)]).unwrap());
    assert!(why.contains("data_version"), "{why}");
    s.assert_restores_to(&node);
    // An increment that contradicts the hook's version.
    let s2 = Setup::new("");
    let mut node2 = node_with_schema(&s2);
    let q = node2.data_version();
    let why = refusal(node2.hook(q + 1, &["INSERT INTO bad_input VALUES (31, 1)".into(), incr(q + 7)]).unwrap());
    assert!(why.contains("increments the data_version"), "{why}");
    s2.assert_restores_to(&node2);
    assert!(matches!(node2.hook(q + 1, &[incr(q)]).unwrap(), HookOutcome::Refused(_)), "refuses from then on");
}
