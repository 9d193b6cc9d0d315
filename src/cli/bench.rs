//! `cln-replica bench`: the hook's round trip through the real plugin
//! protocol with a durable journal, beside the floor: a raw O_DIRECT write of
//! the same number of blocks into preallocated space plus fdatasync, in the
//! same directory, measured in the same run (interleaved rounds, so drift in
//! the device affects both alike).
//!
//! The hook is driven like lightningd drives it (a child process, stdin and
//! stdout, string ids), with the statements of real recorded changes; the
//! simulated node does not run SQL here, so only the plugin is measured.
//!
//! `--compaction-mib`: the hook's latency during a background compaction.
//! `--scale-mib`: everything at a mainnet node's size (scale.rs).
//! `--trace`: the comparison of filter x compression on whole traces
//! (journal and snapshot bytes, hook latency; src/savings.rs, docs/SAVINGS.md).

mod scale;

use crate::device::SyncMode;
use crate::savings::{self, floor_round, floor_round_in};
use crate::sim::{trace, HookOutcome, SimNode};
use crate::state::INCREMENT_PREFIX;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Measure the hook round trip against the raw O_DIRECT write + fdatasync floor
#[derive(clap::Args)]
pub struct Args {
    /// Directory on the device to measure (the journal's device); a temporary
    /// directory under it is used and removed
    #[arg(long)]
    dir: PathBuf,
    /// Hooks to measure (and as many floor writes of the same sizes)
    #[arg(long, default_value_t = 2000)]
    hooks: usize,
    /// Instead: hook latency during a background compaction of a database of
    /// at least this many MiB (built through the plugin first, so the journal
    /// holds it all as records), against the latency without one
    #[arg(long, value_name = "MIB")]
    compaction_mib: Option<u64>,
    /// Instead: the plugin and the commands at a mainnet node's size: a
    /// database of at least this many MiB built without the plugin, then the
    /// first snapshot's stall, shipping, hooks without and during a
    /// compaction, restore, verify and a remote restore, each with its peak
    /// RSS (only the journal is in --dir; the rest under --node-dir)
    #[arg(long, value_name = "MIB")]
    scale_mib: Option<u64>,
    /// With --scale-mib: where the node's database, the mirror and the
    /// destination go (default: the system's temporary directory)
    #[arg(long, value_name = "DIR", requires = "scale_mib")]
    node_dir: Option<PathBuf>,
    /// Instead: replay this trace once per combination of filter {none,
    /// caches} x compression {off, zstd} and compare journal bytes, snapshot
    /// bytes and hook latency. A recorded trace (.jsonl or .jsonl.zst, e.g.
    /// tests/fixtures/cln-v26.06-realnode.jsonl.zst) or `mainnet[:BLOCKS[:P2WSH_PER_BLOCK[:PAYMENTS_PER_DAY]]]`,
    /// the generated mainnet-shaped block processing (default 144 blocks,
    /// 150 P2WSH outputs per block, no payments). Repeatable
    #[arg(long, value_name = "TRACE")]
    trace: Vec<String>,
    /// The day-equivalent model's payments (HTLCs: a forward is two) per day,
    /// at the recorded trace's journal bytes per HTLC
    #[arg(long, default_value_t = 100)]
    payments_per_day: u64,
    /// Raw O_DIRECT writes + fdatasync of the unfiltered, uncompressed records'
    /// sizes, interleaved with the replays (at most this many per trace)
    #[arg(long, default_value_t = 500)]
    floor_samples: usize,
    /// The plugin binary to measure (default: this one); e.g. a build
    /// without the `lab` feature, as operators install it
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// With the plain hook benchmark: also ship to a `file://` destination in
    /// a temporary directory under this one (`remote_sync = "none"`: the
    /// hook does not wait for it), to compare the hook's path with and
    /// without destinations
    #[arg(long)]
    with_destination: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// The O_DSYNC floor is a comparison, not the baseline: at most this many
/// writes per round (5 rounds), so that long runs (scripts/budgets drives
/// 100,000 hooks) do not double their floor time.
const FLOOR_DSYNC_SAMPLES_PER_ROUND: usize = 400;

#[derive(Debug, serde::Serialize)]
pub struct Figures {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn figures(mut v: Vec<u64>) -> Figures {
    v.sort_unstable();
    Figures {
        p50_us: super::demo::percentile(&v, 0.5),
        p99_us: super::demo::percentile(&v, 0.99),
        max_us: v.last().copied().unwrap_or(0),
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(mib) = a.compaction_mib {
        return run_compaction(&a, mib);
    }
    if let Some(mib) = a.scale_mib {
        let exe = match &a.plugin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        return scale::run(scale::Options {
            dir: &a.dir,
            node_dir: a.node_dir.as_deref(),
            mib,
            hooks: a.hooks,
            exe,
            json: a.json,
        });
    }
    if !a.trace.is_empty() {
        return run_traces(&a);
    }
    let work =
        tempfile::Builder::new().prefix("cln-replica-bench").tempdir_in(&a.dir).context("cannot work in --dir")?;
    let node_dir = work.path().join("node");
    let journal = work.path().join("journal");
    std::fs::create_dir_all(&node_dir)?;
    let cfg = super::demo::write_config(&node_dir, &journal)?;
    if a.with_destination {
        let key = work.path().join("replica.key");
        crate::remote::crypto::Key::generate()?.write_new_file(&key)?;
        let mut text = crate::config::Config { key_file: Some(key), ..cfg }.to_toml()?;
        text.push_str(&format!("[[destination]]\nurl = \"file://{}\"\n", work.path().join("destination").display()));
        std::fs::write(node_dir.join(crate::config::CONFIG_FILE), text)?;
    }

    // Real changes (after the schema), renumbered as a continuous sequence.
    let calls = trace::first_start();
    let bodies: Vec<Vec<String>> = calls[trace::FIRST_START_SCHEMA_CALLS..]
        .iter()
        .filter(|c| c.writes.last().is_some_and(|w| w.starts_with(INCREMENT_PREFIX)))
        .map(|c| c.writes[..c.writes.len() - 1].to_vec())
        .collect();
    let mean_bytes = bodies.iter().map(|b| b.iter().map(String::len).sum::<usize>()).sum::<usize>() / bodies.len();
    // The bytes each record occupies on disk (statements plus the increment).
    let disk_bytes: Vec<usize> = bodies
        .iter()
        .map(|b| {
            let payload = crate::journal::format::payload_bytes(b) + 4 + INCREMENT_PREFIX.len() + 10;
            crate::journal::format::record_disk_bytes(payload, 4096)
        })
        .collect();
    let round_hooks = a.hooks.div_ceil(5);

    let floor_file = work.path().join("floor");
    {
        let f = std::fs::File::create(&floor_file)?;
        f.set_len(0)?;
        let zeros = vec![0u8; 1 << 20];
        let per_round = round_hooks * disk_bytes.iter().copied().max().unwrap_or(4096);
        let mut written = 0;
        while written < per_round {
            f.write_all_at(&zeros, written as u64)?;
            written += zeros.len();
        }
        f.sync_all()?;
    }

    let exe = match &a.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let mut node = SimNode::open(&node_dir)?;
    node.start_plugin(&exe, &[])?;
    node.init_plugin()?;
    let mut floor = vec![];
    let mut floor_dsync = vec![];
    let mut version = 0u32;
    let rounds = 5;
    for round in 0..rounds {
        let n = (a.hooks / rounds + usize::from(round < a.hooks % rounds)).min(round_hooks);
        let sizes: Vec<usize> = (0..n).map(|i| disk_bytes[(version as usize + i) % bodies.len()]).collect();
        floor_round(&floor_file, 0, &sizes, &mut floor)?;
        let dsync_n = sizes.len().min(FLOOR_DSYNC_SAMPLES_PER_ROUND);
        floor_round_in(&floor_file, 0, &sizes[..dsync_n], SyncMode::Dsync, &mut floor_dsync)?;
        for i in 0..n {
            let mut writes = bodies[(version as usize + i) % bodies.len()].clone();
            writes.push(format!("{INCREMENT_PREFIX}{version}"));
            match node.hook(version + 1, &writes)? {
                HookOutcome::Continue => version += 1,
                other => bail!("the plugin answered {other:?}: {}", node.logs().join("\n")),
            }
        }
    }
    let internal = node.request("replica-status", serde_json::json!({}))?.unwrap_or_default();
    let internal_p50 = internal["result"]["hook_latency_us_p50"].as_u64().unwrap_or(0);
    node.shutdown_plugin()?;
    // The first hook took the initial snapshot: not a steady-state figure.
    let hook = figures(node.hook_latencies_us[1..].to_vec());
    let floor = figures(floor);
    let floor_dsync = figures(floor_dsync);
    let ratio = hook.p50_us as f64 / floor.p50_us.max(1) as f64;
    // The plugin is a child of this process: it runs in the mode this one would.
    let plugin_sync = match SyncMode::current() {
        SyncMode::Fdatasync => "pwrite + fdatasync",
        SyncMode::Dsync => "O_DIRECT|O_DSYNC pwrite",
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({"dir": a.dir, "hooks": a.hooks, "change_bytes_mean": mean_bytes, "hook": hook, "floor": floor,
                "floor_dsync": floor_dsync, "plugin_sync": plugin_sync, "with_destination": a.with_destination, "p50_ratio": ratio, "plugin_internal_p50_us": internal_p50})
        );
    } else {
        let shipping = if a.with_destination { ", shipping to a file:// destination" } else { "" };
        println!(
            "cln-replica bench: {} hooks in {} (real changes, mean {mean_bytes} bytes{shipping})",
            a.hooks,
            a.dir.display()
        );
        println!(
            "  floor (O_DIRECT 4 KiB write + fdatasync, preallocated): p50 {:>6} us  p99 {:>6} us  max {:>7} us",
            floor.p50_us, floor.p99_us, floor.max_us
        );
        println!(
            "  floor, O_DIRECT|O_DSYNC (the pwrite alone, same sizes): p50 {:>6} us  p99 {:>6} us  max {:>7} us",
            floor_dsync.p50_us, floor_dsync.p99_us, floor_dsync.max_us
        );
        println!("  the plugin makes each record durable with: {plugin_sync} ({})", crate::device::SYNC_MODE_ENV);
        println!(
            "  hook round trip (plugin protocol, durable journal):     p50 {:>6} us  p99 {:>6} us  max {:>7} us",
            hook.p50_us, hook.p99_us, hook.max_us
        );
        println!("  hook p50 / floor p50 = {ratio:.2} (inside the plugin, from message read to answer written: p50 {internal_p50} us)");
    }
    Ok(ExitCode::SUCCESS)
}

fn apply_ok(node: &mut SimNode, change: &crate::sim::Change) -> Result<()> {
    match node.apply(change)? {
        HookOutcome::Continue => Ok(()),
        other => bail!("the plugin answered {other:?}: {}", node.logs().join("\n")),
    }
}

/// Grows the node's database to at least `mib` MiB with 32 KiB blobs of
/// random bytes in `datastore` (incompressible), then 200 ordinary changes;
/// returns its size.
fn grow_database(node: &mut SimNode, w: &mut crate::sim::workload::Workload, mib: u64) -> Result<u64> {
    // Blobs are hex in SQL: a change of CHANGE_BYTES adds about half as much.
    const CHANGE_BYTES: usize = 4 << 20;
    let db_path = crate::sim::node::database_path(&node.dir);
    while std::fs::metadata(&db_path)?.len() < mib << 20 {
        let c = w.big_change(CHANGE_BYTES);
        apply_ok(node, &c)?;
    }
    for _ in 0..200 {
        let c = w.next_change();
        apply_ok(node, &c)?;
    }
    Ok(std::fs::metadata(&db_path)?.len())
}

/// The latencies of `n` hooks of the ordinary workload.
fn timed_hooks(node: &mut SimNode, w: &mut crate::sim::workload::Workload, n: usize) -> Result<Vec<u64>> {
    let from = node.hook_latencies_us.len();
    for _ in 0..n {
        let c = w.next_change();
        apply_ok(node, &c)?;
    }
    Ok(node.hook_latencies_us[from..].to_vec())
}

/// Hook latencies without and during one compaction.
struct CompactionRun {
    /// The hooks just before `replica-compact`.
    before: Vec<u64>,
    /// Every hook from `replica-compact` up to and including the one that
    /// switched generations.
    during: Vec<u64>,
    /// The compaction's phase (`replica-status` → `compaction.progress.phase`)
    /// at the look before each run of hooks, and the hooks in `during` it
    /// covers, in order.
    phases: Vec<(String, std::ops::Range<usize>)>,
    seconds: f64,
    /// The switch's own time inside the hook that made it.
    switch_us: u64,
}

/// Hooks timed between two looks at `replica-status` while a compaction runs.
const HOOKS_PER_LOOK: usize = 20;

/// Times `hooks` hooks, then starts `replica-compact` and times hooks
/// ([`HOOKS_PER_LOOK`] at a time between looks at its progress) until the
/// compaction has switched.
fn hooks_around_compaction(
    node: &mut SimNode,
    w: &mut crate::sim::workload::Workload,
    hooks: usize,
) -> Result<CompactionRun> {
    /// A compaction that takes longer than this is reported as a failure.
    const COMPACTION_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
    let before = timed_hooks(node, w, hooks)?;
    let started = Instant::now();
    let answer = node.request("replica-compact", serde_json::json!({}))?.unwrap_or_default();
    if answer["result"]["started"] != true {
        bail!("replica-compact: {answer}");
    }
    let mut during = vec![];
    let mut phases: Vec<(String, std::ops::Range<usize>)> = vec![];
    let mut phase = serde_json::to_value(crate::compact::CompactionPhase::default())?
        .as_str()
        .context("a compaction phase is a string")?
        .to_string();
    let switch_us = loop {
        let from = during.len();
        during.extend(timed_hooks(node, w, HOOKS_PER_LOOK)?);
        match phases.last_mut() {
            Some((p, range)) if *p == phase => range.end = during.len(),
            _ => phases.push((phase.clone(), from..during.len())),
        }
        let st = node.request("replica-status", serde_json::json!({}))?.unwrap_or_default();
        let c = &st["result"]["compaction"];
        if c["compactions"].as_u64().unwrap_or(0) >= 1 {
            break c["last_switch_us"].as_u64().unwrap_or(0);
        }
        if let Some(p) = c["progress"]["phase"].as_str() {
            phase = p.to_string();
        }
        if started.elapsed() > COMPACTION_WAIT_MAX {
            bail!("the compaction did not finish within {COMPACTION_WAIT_MAX:?}");
        }
    };
    Ok(CompactionRun { before, during, phases, seconds: started.elapsed().as_secs_f64(), switch_us })
}

/// `bench --compaction-mib N`: a database of about N MiB is built through the
/// plugin (so the journal's current generation holds it all as records); then
/// hooks of the ordinary workload are timed, first with no compaction, then
/// while `replica-compact` rebuilds the N MiB snapshot in the background, up
/// to and including the hook that switches generations.
fn run_compaction(a: &Args, mib: u64) -> Result<ExitCode> {
    use crate::sim::workload::Workload;
    let work =
        tempfile::Builder::new().prefix("cln-replica-bench").tempdir_in(&a.dir).context("cannot work in --dir")?;
    let node_dir = work.path().join("node");
    let journal = work.path().join("journal");
    std::fs::create_dir_all(&node_dir)?;
    let mut cfg = super::demo::write_config(&node_dir, &journal)?;
    cfg.compact_journal_bytes = 0;
    cfg.keep_generations = 1;
    std::fs::write(node_dir.join(crate::config::CONFIG_FILE), cfg.to_toml()?)?;
    let exe = match &a.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let mut node = SimNode::open(&node_dir)?;
    node.start_plugin(&exe, &[])?;
    for c in Workload::schema() {
        apply_ok(&mut node, &c)?;
    }
    node.init_plugin()?;
    let mut w = Workload::new(1);
    let built = Instant::now();
    let db_bytes = grow_database(&mut node, &mut w, mib)?;
    let build_s = built.elapsed().as_secs_f64();

    let CompactionRun { before: baseline, during, seconds: compaction_s, switch_us, .. } =
        hooks_around_compaction(&mut node, &mut w, a.hooks)?;
    let after = timed_hooks(&mut node, &mut w, a.hooks.min(500))?;
    node.shutdown_plugin()?;
    let (baseline, during_f, after) = (figures(baseline), figures(during.clone()), figures(after));
    let ratio = during_f.p99_us as f64 / baseline.p99_us.max(1) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"dir": a.dir, "database_bytes": db_bytes, "build_seconds": build_s,
                "compaction_seconds": compaction_s, "hooks_during": during.len(), "switch_us": switch_us,
                "without_compaction": baseline, "during_compaction": during_f, "after_compaction": after,
                "p99_ratio": ratio})
        );
    } else {
        println!(
            "cln-replica bench --compaction-mib {mib}: database {} (built in {build_s:.1} s) in {}",
            super::bytes(db_bytes),
            a.dir.display()
        );
        println!(
            "  hooks without compaction ({:>5}):  p50 {:>6} us  p99 {:>6} us  max {:>7} us",
            a.hooks, baseline.p50_us, baseline.p99_us, baseline.max_us
        );
        println!(
            "  hooks during compaction  ({:>5}):  p50 {:>6} us  p99 {:>6} us  max {:>7} us  ({compaction_s:.1} s, switch included)",
            during.len(),
            during_f.p50_us,
            during_f.p99_us,
            during_f.max_us
        );
        println!(
            "  hooks after compaction:           p50 {:>6} us  p99 {:>6} us  max {:>7} us",
            after.p50_us, after.p99_us, after.max_us
        );
        println!("  the switch to the new generation took {switch_us} us inside the hook that made it");
        println!("  p99 during / p99 without = {ratio:.2}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --trace ...`: the side-by-side comparison of filter x compression (src/savings.rs).
fn run_traces(a: &Args) -> Result<ExitCode> {
    let work =
        tempfile::Builder::new().prefix("cln-replica-bench").tempdir_in(&a.dir).context("cannot work in --dir")?;
    // The plugin runs in the node's directory: the journal path must not be relative.
    let dir = std::fs::canonicalize(work.path())?;
    let nodes = tempfile::Builder::new()
        .prefix("cln-replica-bench-nodes")
        .tempdir()
        .context("cannot create a temporary directory for the nodes' databases")?;
    let o = savings::Options {
        dir,
        nodes_dir: nodes.path().to_path_buf(),
        exe: std::env::current_exe()?,
        floor_samples: a.floor_samples,
    };
    let mut rows = vec![];
    for spec in &a.trace {
        let t = savings::load_trace(spec)?;
        if !a.json {
            eprintln!("bench: {} ({} calls), 4 combinations ...", t.name, t.calls.len());
        }
        rows.extend(savings::run_trace(&o, &t)?);
    }
    let day = savings::day_model(&rows, a.payments_per_day);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"dir": a.dir, "rows": rows, "day_model": day,
                "floor": "O_DIRECT writes of the unfiltered, uncompressed records' sizes + fdatasync, preallocated, same directory, interleaved with the replays"})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("cln-replica bench in {}: journal and snapshot bytes, hook latency", a.dir.display());
    println!(
        "{:<34} {:<6} {:<4} {:>6} {:>10} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "trace",
        "filter",
        "zstd",
        "calls",
        "journal",
        "B/change",
        "snapshot",
        "snap.zst",
        "hook p50",
        "hook p99",
        "floor50",
        "floor99"
    );
    for r in &rows {
        println!(
            "{:<34} {:<6} {:<4} {:>6} {:>10} {:>8.0} {:>10} {:>10} {:>6}us {:>6}us {:>6}us {:>6}us",
            r.trace,
            r.filter,
            r.compression,
            r.changes,
            super::bytes(r.journal_bytes),
            r.journal_bytes_per_change,
            super::bytes(r.snapshot_bytes),
            super::bytes(r.snapshot_zstd_bytes),
            r.hook_us_p50,
            r.hook_us_p99,
            r.floor_us_p50,
            r.floor_us_p99
        );
    }
    println!(
        "day-equivalent: {} blocks/day x journal bytes per block of the mainnet-shaped trace + {} payments (HTLCs)/day x \
         journal bytes per HTLC of the recorded trace (all its bytes over its HTLCs)",
        crate::sim::mainnet::BLOCKS_PER_DAY,
        a.payments_per_day
    );
    if day.iter().any(|d| d.bytes_per_block.is_none()) {
        println!("  (no mainnet-shaped trace given: its blocks count as 0 bytes)");
    }
    if day.iter().any(|d| d.bytes_per_htlc.is_none()) {
        println!("  (no recorded trace with HTLCs given: its payments count as 0 bytes)");
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |b| format!("{b:.0}"));
    for d in &day {
        println!(
            "  filter {:<6} compression {:<4}: {:>8} B/block {:>7} B/HTLC  => {:>10}/day",
            d.filter,
            d.compression,
            show(d.bytes_per_block),
            show(d.bytes_per_htlc),
            super::bytes(d.bytes_per_day as u64)
        );
    }
    Ok(ExitCode::SUCCESS)
}
