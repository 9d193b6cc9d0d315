//! `filter = "caches"` through the real binary: the journal and the snapshots
//! leave `utxoset` out and keep everything else, a restore equals the node's
//! database with `utxoset` empty and says how to rescan, a change of the
//! filter starts a new generation, compaction keeps a generation's filter,
//! and `status` says a backup is filtered.

mod common;

use cln_replica::filter::Filter;
use cln_replica::journal::reader;
use cln_replica::sim::workload::Workload;
use cln_replica::sim::SimNode;
use common::*;
use rusqlite::Connection;
use std::path::Path;
use std::process::Command;

fn changes(node: &mut SimNode, w: &mut Workload, n: usize) {
    for _ in 0..n {
        expect_continue(node.apply(&w.next_change()).unwrap(), node);
    }
}

/// A node with its plugin, through lightningd's schema creation.
fn with_schema(s: &Setup) -> SimNode {
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    node
}

fn set_filter(s: &Setup, filter: &str) {
    let cfg = s.node_dir.join("cln-replica.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let kept: String = text.lines().filter(|l| !l.starts_with("filter")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&cfg, format!("{kept}filter = \"{filter}\"\n")).unwrap();
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The node's database with the tables `filter` leaves out emptied: what a
/// restore of a filtered backup must equal.
fn node_without_caches(s: &Setup, node: &SimNode, name: &str) -> std::path::PathBuf {
    let copy = s.path(name);
    let _ = std::fs::remove_file(&copy);
    node.copy_database(&copy).unwrap();
    Connection::open(&copy).unwrap().execute_batch("DELETE FROM utxoset;").unwrap();
    copy
}

fn assert_same(a: &Path, b: &Path) {
    let diffs = cln_replica::dbcompare::compare_files(a, b).unwrap();
    assert!(diffs.is_empty(), "databases differ:\n{}", diffs.join("\n"));
}

/// Every record of generation `g`, checked against the filter its header names.
fn statements_of(journal: &Path, g: u64) -> (Filter, Vec<String>) {
    let gen = reader::Generation::open(journal, g).unwrap();
    let mut out = vec![];
    for r in gen.records() {
        let r = r.unwrap();
        out.extend(r.statements().unwrap().into_iter().map(String::from));
    }
    (gen.header.filter, out)
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(EXE).args(args).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn a_filtered_journal_leaves_out_utxoset_and_restores_everything_else() {
    let s = Setup::new("filter = \"caches\"\n");
    let mut node = with_schema(&s);
    let mut w = Workload::new(90);
    changes(&mut node, &mut w, 600);
    node.shutdown_plugin().unwrap();
    let live = s.path("live.sqlite3");
    node.copy_database(&live).unwrap();
    let rows = count(&live, "SELECT COUNT(*) FROM utxoset");
    assert!(rows > 20, "the workload wrote utxoset ({rows} rows)");

    let (filter, stmts) = statements_of(&s.journal, 1);
    assert_eq!(filter, Filter::Caches);
    assert!(stmts.iter().any(|t| t.starts_with("INSERT INTO blocks")), "blocks are kept");
    assert!(stmts.iter().any(|t| t.starts_with("DELETE FROM blocks")), "reorgs are kept");
    let leaked: Vec<_> =
        stmts.iter().filter(|t| t.contains("INSERT INTO utxoset") || t.contains("UPDATE utxoset")).collect();
    assert!(leaked.is_empty(), "utxoset statements in a filtered journal: {leaked:?}");

    // The restore equals the node with utxoset empty, and names the rescan.
    let to = s.path("restored.sqlite3");
    let (ok, out) = run(&["restore", "--from", s.journal.to_str().unwrap(), "--to", to.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_same(&node_without_caches(&s, &node, "expected.sqlite3"), &to);
    let first_block = count(&live, "SELECT MIN(height) FROM blocks");
    assert!(out.contains(&format!("--rescan=-{}", first_block - 1)), "{out}");
    assert!(out.contains("filtered"), "{out}");
    let (ok, json) =
        run(&["restore", "--from", s.journal.to_str().unwrap(), "--to", to.to_str().unwrap(), "--force", "--json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["filter"], "caches");
    assert_eq!(v["rescan_from_height"], first_block - 1);

    let (ok, out) = run(&["status", "--from", s.journal.to_str().unwrap()]);
    assert!(ok && out.contains("filtered (filter = \"caches\")"), "{out}");
    let (ok, out) = run(&["verify", "--from", s.journal.to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[test]
fn changing_the_filter_starts_a_generation_and_each_keeps_its_own() {
    let s = Setup::new("");
    let mut node = with_schema(&s);
    let mut w = Workload::new(91);
    changes(&mut node, &mut w, 299);
    // Only generation 1 covers this version (generation 2 starts one later),
    // and it holds utxoset.
    let v0 = node.data_version();
    let full_at_v0 = s.path("full-v0.sqlite3");
    node.copy_database(&full_at_v0).unwrap();
    assert!(count(&full_at_v0, "SELECT COUNT(*) FROM utxoset") > 0);
    changes(&mut node, &mut w, 1);
    let v1 = node.data_version();
    let full_at_v1 = s.path("full-v1.sqlite3");
    node.copy_database(&full_at_v1).unwrap();
    node.shutdown_plugin().unwrap();

    // On: the next transaction starts generation 2 from a snapshot whose
    // utxoset is empty.
    set_filter(&s, "caches");
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 200);
    assert!(logs_contain(&node, "filter changed from \"none\" to \"caches\""), "{}", node.logs().join("\n"));
    node.shutdown_plugin().unwrap();
    let gens = reader::generations(&s.journal).unwrap();
    assert_eq!(
        gens.iter().map(|g| (g.number, g.header.filter)).collect::<Vec<_>>(),
        [(1, Filter::None), (2, Filter::Caches)]
    );
    assert_eq!(gens[1].header.base_version, v1);
    assert_eq!(count(&gens[1].snapshot_path(), "SELECT COUNT(*) FROM utxoset"), 0);
    assert_same(&node_without_caches(&s, &node, "expected-2.sqlite3"), &s.restore(None).unwrap());
    // The unfiltered generation still restores whole, also at v1 where the
    // filtered one begins (both reach it: the whole database is preferred).
    assert_same(&full_at_v0, &s.restore(Some(v0)).unwrap());
    assert_same(&full_at_v1, &s.restore(Some(v1)).unwrap());
    // One past it only the filtered generation reaches.
    let after = s.restore(Some(v1 + 1)).unwrap();
    assert_eq!(count(&after, "SELECT COUNT(*) FROM utxoset"), 0);

    // Off again: generation 3's snapshot has the utxoset the node has now
    // (rows the filtered generation never stored included).
    set_filter(&s, "none");
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 100);
    node.shutdown_plugin().unwrap();
    let gens = reader::generations(&s.journal).unwrap();
    assert_eq!(gens.last().map(|g| (g.number, g.header.filter)), Some((3, Filter::None)));
    s.assert_restores_to(&node);
}

#[test]
fn a_filtered_snapshot_is_emptied_and_vacuumed_and_compaction_keeps_the_filter() {
    // A node that ran unfiltered, then `init --filter caches` while stopped.
    let s = Setup::new("");
    let mut node = with_schema(&s);
    let mut w = Workload::new(92);
    for _ in 0..400 {
        let mut c = w.next_change();
        // Grow utxoset as mainnet blocks do, so the snapshot's saving shows.
        if let cln_replica::sim::Change::Txn(stmts) = &mut c {
            if stmts.iter().any(|t| t.starts_with("INSERT INTO blocks")) {
                let last = stmts.pop().unwrap();
                let height = node.data_version() as u64 + 1_000_000;
                for i in 0..20 {
                    stmts.push(format!(
                        "INSERT INTO utxoset (txid, outnum, blockheight, spendheight, txindex, scriptpubkey, \
                         satoshis) VALUES (X'{:064x}', {i}, (SELECT MAX(height) FROM blocks), NULL, 1, X'0020{:064x}', 1000)",
                        height, height
                    ));
                }
                stmts.push(last);
            }
        }
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    let (ok, out) = run(&[
        "init",
        "--lightning-dir",
        s.node_dir.to_str().unwrap(),
        "--journal",
        s.journal.to_str().unwrap(),
        "--force",
        "--filter",
        "caches",
    ]);
    assert!(ok, "{out}");
    let gens = reader::generations(&s.journal).unwrap();
    let g2 = gens.last().unwrap();
    assert_eq!(g2.header.filter, Filter::Caches);
    assert_eq!(count(&g2.snapshot_path(), "SELECT COUNT(*) FROM utxoset"), 0);
    let live = s.path("live.sqlite3");
    node.copy_database(&live).unwrap();
    let live_bytes = std::fs::metadata(&live).unwrap().len();
    assert!(
        g2.header.snapshot_bytes < live_bytes,
        "the filtered snapshot ({} bytes) is smaller than the database ({live_bytes} bytes): VACUUM gave pages back",
        g2.header.snapshot_bytes
    );

    // init rewrote cln-replica.toml with the filter: the plugin keeps it.
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    changes(&mut node, &mut w, 100);
    node.shutdown_plugin().unwrap();
    assert!(!logs_contain(&node, "filter changed"), "{}", node.logs().join("\n"));
    let (ok, out) = run(&["compact", "--from", s.journal.to_str().unwrap()]);
    assert!(ok, "{out}");
    let gens = reader::generations(&s.journal).unwrap();
    let newest = gens.last().unwrap();
    assert_eq!(newest.header.base_kind, cln_replica::journal::format::BaseKind::Compacted);
    assert_eq!(newest.header.filter, Filter::Caches, "a compacted generation keeps its filter");
    assert_eq!(count(&newest.snapshot_path(), "SELECT COUNT(*) FROM utxoset"), 0);
    assert_same(&node_without_caches(&s, &node, "expected.sqlite3"), &s.restore(None).unwrap());
}

#[test]
fn verify_names_a_cache_statement_in_a_filtered_generation() {
    // An unfiltered journal whose segment headers are then rewritten to say
    // "caches": what a bug in the filter (or tampering) would leave.
    let s = Setup::new("");
    let mut node = with_schema(&s);
    changes(&mut node, &mut Workload::new(93), 200);
    node.shutdown_plugin().unwrap();
    let g = reader::Generation::open(&s.journal, 1).unwrap();
    for seg in &g.segments {
        let mut bytes = std::fs::read(&seg.path).unwrap();
        let h = cln_replica::journal::format::SegmentHeader { filter: Filter::Caches, ..seg.header.clone() };
        bytes[..cln_replica::journal::format::SEGMENT_HEADER_BYTES].copy_from_slice(&h.encode());
        std::fs::write(&seg.path, bytes).unwrap();
    }
    let report = cln_replica::verify::verify(&s.journal, false).unwrap();
    let found: Vec<_> = report.problems.iter().filter(|p| p.detail.contains("its filter leaves out")).collect();
    assert!(!found.is_empty(), "{:?}", report.problems);
    assert!(found[0].detail.contains("utxoset") && found[0].location.is_some(), "{:?}", found[0]);
}
