//! The scale benchmark (`cln-replica bench --scale-mib N`, scripts/scale-bench)
//! at a small N, so that it stays working: a database built without the
//! plugin, the first snapshot on the hook, shipping to a file:// destination,
//! a compaction under hooks (and the same trace portion on a twin without
//! one), and restore (the newest, and the first generation's whole history),
//! verify and a remote restore, each measured. The bench itself fails when a
//! restored database or the mirror differs from the node's, or the twin did
//! not end where the compacting arm did. The 1 GiB figures are in the README.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_cln-replica");

#[test]
fn the_scale_benchmark_runs_end_to_end_and_reports_every_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let (journal_dir, node_dir) = (tmp.path().join("device"), tmp.path().join("main"));
    std::fs::create_dir_all(&journal_dir).unwrap();
    std::fs::create_dir_all(&node_dir).unwrap();
    let o = Command::new(EXE)
        .args(["bench", "--scale-mib", "12", "--hooks", "60", "--json", "--dir"])
        .arg(&journal_dir)
        .arg("--node-dir")
        .arg(&node_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(r["database_bytes"].as_u64().unwrap() >= 12 << 20, "{r}");
    for run in ["restore", "history", "verify", "verify_one", "remote_restore", "compact"] {
        assert!(r[run]["peak_rss_kib"].as_u64().unwrap() > 0, "{run}: {r}");
    }
    // The first generation's whole history is replayed: at least the hooks
    // timed before the compaction (the bench checks the exact count).
    assert!(r["history"]["changes_replayed"].as_u64().unwrap() >= 60, "{r}");
    assert!(r["plugin_peak_rss_kib"].as_u64().unwrap() >= r["plugin_rss_after_snapshot_kib"].as_u64().unwrap());
    // The same portion of the trace is timed during the compaction and, on
    // the twin (the bench fails unless it ends at the same data_version),
    // without one.
    assert!(r["hooks_during"].as_u64().unwrap() > 0, "{r}");
    for portion in ["before_compaction", "without_compaction", "during_compaction"] {
        assert!(r[portion]["p99_us"].as_u64().unwrap() > 0, "{portion}: {r}");
    }
    assert!(r["twin_first_hook_seconds"].as_f64().unwrap() > 0.0, "{r}");
    // Nothing is left behind in either directory.
    for d in [&journal_dir, &node_dir] {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{} not cleaned up", d.display());
    }
}
