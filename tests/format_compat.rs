//! A newer reader reads every older journal (docs/FORMAT.md, "Versions"):
//! a journal written by an earlier release of cln-replica, kept in
//! tests/fixtures, is restored, verified and appended to by this one.
//!
//! The fixture holds every kind of thing that release wrote: the recorded
//! schema and a CLN-shaped workload, compressed records, a compacted
//! generation (base kind 3), a filtered one (header version 2) after a filter
//! switch, a seal, with the node's database and the earlier release's own
//! restore of it. `make_fixture` (ignored) makes it again with an older
//! binary: `CLN_REPLICA_OLD_BINARY=/path/to/old/cln-replica cargo test
//! --profile ci --test format_compat make_fixture -- --ignored`.

mod common;

use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, SimNode};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const FIXTURE: &str = "journal-0.1.0-51ea0c4.tar.zst";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(FIXTURE)
}

fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{cmd:?}: {text}");
    text
}

fn config(dir: &Path, journal: &Path, extra: &str) {
    std::fs::write(
        dir.join("cln-replica.toml"),
        format!("journal = {journal:?}\nsegment_bytes = 65536\nkeep_generations = 5\n{extra}"),
    )
    .unwrap();
}

#[test]
#[ignore = "makes the fixture with an older binary (CLN_REPLICA_OLD_BINARY)"]
fn make_fixture() {
    let old = PathBuf::from(std::env::var("CLN_REPLICA_OLD_BINARY").expect("CLN_REPLICA_OLD_BINARY"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fixture");
    let node_dir = root.join("node").join("regtest");
    let journal = root.join("journal");
    std::fs::create_dir_all(&node_dir).unwrap();
    config(&node_dir, &journal, "");
    let mut node = SimNode::open(&node_dir).unwrap();
    node.start_plugin(&old, &[]).unwrap();
    apply_schema(&mut node);
    node.init_plugin().unwrap();
    let mut w = Workload::new(77);
    for _ in 0..150 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    expect_continue(node.apply(&w.big_change(256 << 10)).unwrap(), &node);
    // A compaction, adopted at the next change.
    let r = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert!(r.get("error").is_none(), "{r}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = node.request("replica-status", serde_json::json!({})).unwrap().unwrap();
        if st["result"]["compaction"]["state"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "compaction: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..50 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    // A filter switch: a new, filtered generation.
    config(&node_dir, &journal, "filter = \"caches\"\n");
    node.start_plugin(&old, &[]).unwrap();
    node.init_plugin().unwrap();
    for _ in 0..80 {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    std::fs::remove_file(node_dir.join("cln-replica.toml")).unwrap();
    ok(Command::new(&old)
        .arg("restore")
        .arg("--from")
        .arg(&journal)
        .arg("--to")
        .arg(root.join("old-restored.sqlite3")));
    ok(Command::new("tar").arg("-C").arg(tmp.path()).args(["-I", "zstd -19", "-cf"]).arg(fixture()).arg("fixture"));
}

#[test]
fn a_journal_of_an_earlier_release_restores_verifies_and_continues() {
    let tmp = tempfile::tempdir().unwrap();
    ok(Command::new("tar").arg("-C").arg(tmp.path()).args(["-I", "zstd", "-xf"]).arg(fixture()));
    let root = tmp.path().join("fixture");
    let journal = root.join("journal");
    let node_dir = root.join("node").join("regtest");
    // What it holds: several generations, a compacted one and a filtered one.
    let gens = cln_replica::journal::reader::generations(&journal).unwrap();
    assert!(gens.iter().any(|g| g.header.base_kind == cln_replica::journal::format::BaseKind::Compacted));
    assert!(gens.iter().any(|g| g.header.filter != cln_replica::filter::Filter::None));
    assert!(gens.iter().flat_map(|g| g.records()).any(|r| r.unwrap().header.is_compressed()));
    // This release restores what that one restored, and verifies it.
    let text = ok(Command::new(EXE).arg("verify").arg("--from").arg(&journal));
    assert!(!text.contains("PROBLEM"), "{text}");
    let restored = root.join("restored.sqlite3");
    ok(Command::new(EXE).arg("restore").arg("--from").arg(&journal).arg("--to").arg(&restored));
    let old = root.join("old-restored.sqlite3");
    let diffs = cln_replica::dbcompare::compare_files(&old, &restored).unwrap();
    assert!(diffs.is_empty(), "{diffs:?}");
    // And the plugin continues the journal where that release left it.
    config(&node_dir, &journal, "filter = \"caches\"\n");
    let mut node = SimNode::open(&node_dir).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    for i in 0..5 {
        let key = format!("x'{}'", hex(&format!("format-compat/{i}")));
        let change =
            Change::Txn(vec![format!("INSERT INTO datastore (key, data, generation) VALUES ({key}, x'00', 0);")]);
        expect_continue(node.apply(&change).unwrap(), &node);
    }
    assert!(!logs_contain(&node, "gap:"), "it continues, without a new snapshot: {:?}", node.logs());
    node.shutdown_plugin().unwrap();
    let after = root.join("after.sqlite3");
    ok(Command::new(EXE).arg("restore").arg("--from").arg(&journal).arg("--to").arg(&after));
    let live = root.join("live.sqlite3");
    node.copy_database(&live).unwrap();
    let diffs = cln_replica::dbcompare::compare_files(&live, &after).unwrap();
    // A filtered generation leaves utxoset out: compare everything else.
    assert!(diffs.iter().filter(|d| !d.starts_with(' ')).all(|d| d.contains("table utxoset")), "{diffs:?}");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
