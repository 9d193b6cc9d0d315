//! Shared setup for the integration tests: a simulated node whose plugin is
//! the real `cln-replica` binary, a journal directory, and checks.
#![allow(dead_code)]

use cln_replica::sim::{HookOutcome, SimNode};
use std::path::{Path, PathBuf};

pub const EXE: &str = env!("CARGO_BIN_EXE_cln-replica");

pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub node_dir: PathBuf,
    pub journal: PathBuf,
}

impl Setup {
    /// A node directory with `cln-replica.toml` naming a journal; `extra`
    /// is appended to the config.
    pub fn new(extra: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let node_dir = tmp.path().join("node").join("regtest");
        let journal = tmp.path().join("backup").join("journal");
        std::fs::create_dir_all(&node_dir).unwrap();
        std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
        std::fs::write(node_dir.join("cln-replica.toml"), format!("journal = {:?}\n{extra}", journal)).unwrap();
        Setup { tmp, node_dir, journal }
    }

    pub fn node(&self) -> SimNode {
        SimNode::open(&self.node_dir).unwrap()
    }

    /// A node with its plugin started (not yet initialised).
    pub fn node_with_plugin(&self) -> SimNode {
        let mut n = self.node();
        n.start_plugin(Path::new(EXE), &[]).unwrap();
        n
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Restores the journal (optionally at a version) to a fresh file.
    pub fn restore(&self, at: Option<u32>) -> anyhow::Result<PathBuf> {
        let to = self.path(&format!("restored-{}.sqlite3", at.map_or("latest".into(), |v| v.to_string())));
        let _ = std::fs::remove_file(&to);
        let opts = cln_replica::restore::RestoreOptions {
            from: self.journal.clone(),
            to: to.clone(),
            at,
            before_unix_ms: None,
            force: false,
            allow_older: false,
        };
        cln_replica::restore::restore(&opts, |_| {})?;
        Ok(to)
    }

    /// Asserts that the restored journal equals the node's committed database.
    pub fn assert_restores_to(&self, node: &SimNode) {
        let restored = self
            .restore(None)
            .unwrap_or_else(|e| panic!("restore failed: {e:#}\nplugin log:\n{}", node.logs().join("\n")));
        let live = self.path("live.sqlite3");
        let _ = std::fs::remove_file(&live);
        node.copy_database(&live).unwrap();
        let diffs = cln_replica::dbcompare::compare_files(&live, &restored).unwrap();
        assert!(diffs.is_empty(), "restore differs from the node's database:\n{}", diffs.join("\n"));
        let v = cln_replica::verify::verify(&self.journal, true).unwrap();
        assert!(v.ok(), "verify: {:?}", v.problems);
    }
}

pub fn expect_continue(outcome: HookOutcome, node: &SimNode) {
    assert_eq!(outcome, HookOutcome::Continue, "plugin log:\n{}", node.logs().join("\n"));
}

/// lightningd's first start: the recorded schema, each change acknowledged.
pub fn apply_schema(node: &mut SimNode) {
    for c in cln_replica::sim::workload::Workload::schema() {
        let outcome = node.apply(&c).unwrap();
        expect_continue(outcome, node);
    }
}

/// A journal of the schema plus `changes` changes of the workload `seed`,
/// written by the plugin, which is then stopped cleanly.
pub fn backed_up(seed: u64, changes: usize) -> (Setup, SimNode) {
    let s = Setup::new("");
    let mut node = s.node_with_plugin();
    apply_schema(&mut node);
    let mut w = cln_replica::sim::workload::Workload::new(seed);
    for _ in 0..changes {
        expect_continue(node.apply(&w.next_change()).unwrap(), &node);
    }
    node.shutdown_plugin().unwrap();
    (s, node)
}

/// A command's stdout and stderr, for messages and assertions.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn refusal(outcome: HookOutcome) -> String {
    match outcome {
        HookOutcome::Refused(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn logs_contain(node: &SimNode, needle: &str) -> bool {
    node.logs().iter().any(|l| l.contains(needle))
}
