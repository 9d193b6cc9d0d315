//! `cln-replica demo`: the whole story on a simulated node, in a temporary
//! directory: lightningd's first start (the real recorded schema, before
//! `init`), a CLN-shaped workload through the real plugin protocol, a crash
//! between hook and commit, a plugin restart, a clean stop; then restore,
//! compare with the node's database table by table, and verify.

use crate::config::Config;
use crate::sim::workload::Workload;
use crate::sim::{HookOutcome, SimNode};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Simulate a node, back it up through the real plugin protocol, restore and compare
#[derive(clap::Args)]
pub struct Args {
    /// Number of workload changes
    #[arg(long, default_value_t = 5000)]
    changes: u64,
    /// Workload seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Work here instead of a temporary directory (kept afterwards)
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Run the story against real lightningd nodes instead: PATH is the
    /// directory with a Core Lightning build and the fake regtest chain
    /// (`../shared/cln`: see its README). Needs python3 with pyln-client and
    /// this source tree's tests/realnode (the real-node suite, at a small scale).
    #[arg(long, value_name = "PATH")]
    lightningd: Option<PathBuf>,
}

/// The real-node suite, in the source tree this binary was built from.
const REAL_NODE_SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/realnode/suite.py");

fn run_real(cln: &Path, workdir: Option<&Path>) -> Result<ExitCode> {
    let suite = Path::new(REAL_NODE_SUITE);
    if !suite.exists() {
        bail!(
            "demo --lightningd runs the real-node suite of cln-replica's source tree, and {} is not there: run it \
             from a checkout (cargo run --release -- demo --lightningd PATH)",
            suite.display()
        );
    }
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(suite).arg("--plugin").arg(&exe).arg("--shared-cln").arg(cln).args(["--scale", "0.2"]);
    if let Some(w) = workdir {
        cmd.arg("--keep").arg("--workdir").arg(w);
    }
    println!("cln-replica demo against real lightningd nodes ({})", cln.display());
    let status = cmd.status().context("cannot run python3 (install it, and `pip install pyln-client`)")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn expect_continue(outcome: HookOutcome, what: &str, node: &SimNode) -> Result<()> {
    match outcome {
        HookOutcome::Continue => Ok(()),
        other => bail!("{what}: the plugin answered {other:?}; its log:\n{}", node.logs().join("\n")),
    }
}

/// Writes a config for `journal`, falling back to buffered I/O (and saying
/// so) where the filesystem refuses O_DIRECT.
pub fn write_config(node_dir: &Path, journal: &Path) -> Result<Config> {
    let mut cfg = Config::new(journal.to_path_buf());
    let probe = node_dir.join(".odirect-probe");
    let refused = crate::device::Device::create(&crate::device::RealDevice, &probe, true)
        .map(drop)
        .err()
        .is_some_and(|e| crate::device::is_direct_io_refusal(&e));
    let _ = std::fs::remove_file(&probe);
    if refused {
        println!("  note: {} refuses O_DIRECT; this demo uses direct_io = false", node_dir.display());
        cfg.direct_io = false;
    }
    std::fs::write(node_dir.join(crate::config::CONFIG_FILE), cfg.to_toml()?)?;
    Ok(cfg)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(cln) = &a.lightningd {
        return run_real(cln, a.workdir.as_deref());
    }
    let tmp;
    let work = match &a.workdir {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("cannot create {}", w.display()))?;
            // The plugin runs in the node's directory: relative paths would
            // resolve against it.
            std::fs::canonicalize(w).with_context(|| format!("cannot resolve {}", w.display()))?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let node_dir = work.join("node").join("regtest");
    let journal = work.join("backup").join("journal");
    std::fs::create_dir_all(&node_dir)?;
    std::fs::create_dir_all(journal.parent().expect("parent"))?;
    println!("cln-replica demo in {}", work.display());
    write_config(&node_dir, &journal)?;

    let started = Instant::now();
    let mut node = SimNode::open(&node_dir)?;
    node.start_plugin(&exe, &[])?;
    let schema = Workload::schema();
    for c in &schema {
        expect_continue(node.apply(c)?, "schema", &node)?;
    }
    node.init_plugin()?;
    println!("  lightningd's first start: {} schema calls answered before init (CLN v26.06, recorded)", schema.len());

    let mut w = Workload::new(a.seed);
    let crash_at = a.changes / 2;
    let restart_at = a.changes * 3 / 4;
    for i in 0..a.changes {
        if i == crash_at {
            // lightningd dies after the hook, before COMMIT, then restarts:
            // the plugin sees the same data_version again.
            let crashed = w.next_change();
            let crate::sim::Change::Txn(stmts) = &crashed else { continue };
            let (outcome, _) = node.crash_after_hook(stmts)?;
            expect_continue(outcome, "change before the crash", &node)?;
            w.undo();
            node.start_plugin(&exe, &[])?;
            node.init_plugin()?;
        }
        if i == restart_at {
            node.shutdown_plugin()?;
            node.start_plugin(&exe, &[])?;
            node.init_plugin()?;
        }
        let change = w.next_change();
        expect_continue(node.apply(&change)?, "workload change", &node)?;
    }
    let (status, stop_time) = node.shutdown_plugin()?;
    if !status.success() {
        bail!("the plugin exited with {status} on shutdown; its log:\n{}", node.logs().join("\n"));
    }
    let run_secs = started.elapsed().as_secs_f64();
    let mut lat = node.hook_latencies_us.clone();
    lat.sort_unstable();
    println!(
        "  workload: {} changes (seed {}), one crash between hook and commit, one plugin restart, in {run_secs:.1} s",
        a.changes, a.seed
    );
    println!(
        "  hooks: {} answered, round trip p50 {} us, p99 {} us, max {} us; clean stop in {} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        stop_time.as_millis()
    );
    let inv = crate::inventory::inventory(&journal)?;
    let records: u64 = inv.generations.iter().map(|g| g.records).sum();
    let record_bytes: u64 = inv.generations.iter().map(|g| g.record_bytes).sum();
    println!(
        "  journal: {} generation(s), {records} records, {} written ({} on disk)",
        inv.generations.len(),
        super::bytes(record_bytes),
        super::bytes(inv.generations.iter().map(|g| g.disk_bytes).sum())
    );

    let restored = work.join("restored.sqlite3");
    let _ = std::fs::remove_file(&restored);
    let opts = crate::restore::RestoreOptions {
        from: journal.clone(),
        to: restored.clone(),
        at: None,
        before_unix_ms: None,
        allow_older: false,
        force: false,
    };
    let report = crate::restore::restore(&opts, |_| {})?;
    let live = work.join("node.sqlite3");
    let _ = std::fs::remove_file(&live);
    node.copy_database(&live)?;
    let diffs = crate::dbcompare::compare_files(&live, &restored)?;
    println!(
        "  restore: data_version {} ({} changes onto the snapshot) in {:.2} s",
        report.data_version, report.records_applied, report.seconds
    );
    if !diffs.is_empty() {
        println!("  restore DIFFERS from the node's database:");
        for d in diffs.iter().take(20) {
            println!("    {d}");
        }
        return Ok(ExitCode::from(1));
    }
    println!(
        "  restored database equals the node's (data_version {}), table by table, row by row",
        node.data_version()
    );
    let v = crate::verify::verify(&journal, true)?;
    if !v.ok() {
        for p in &v.problems {
            println!("  verify PROBLEM: {}", p.detail);
        }
        return Ok(ExitCode::from(1));
    }
    println!("  verify: every checksum and version continuous; replay passes the integrity check");
    Ok(ExitCode::SUCCESS)
}
