//! `cln-replica bench --scale-mib N`: the plugin and every command at a
//! mainnet node's size, in one run.
//!
//! An N MiB CLN-shaped database (the recorded schema, the ordinary workload,
//! and incompressible 32 KiB blobs in `datastore`) is built WITHOUT the
//! plugin, as on a node that ran before it was installed. Then the plugin
//! starts on it with everything on (journal in `--dir`, the mirror, a
//! `file://` destination, encryption), and the run measures:
//! - the first hook, which takes the generation's snapshot while lightningd
//!   waits (the stall an operator sees when installing the plugin);
//! - the time until the destination holds the newest version (the base and
//!   the records after it, shipped in the background);
//! - hook p50/p99 during a compaction of the whole database, and without
//!   one on the same portion of the trace: the database is copied before the
//!   plugin first starts, and a twin arm (a fresh journal, mirror and
//!   destination) starts on the copy after the compacting arm is done and
//!   replays the same changes with no compaction;
//! - `restore` from the journal, `verify` (of two generations, and of one
//!   after the offline `compact`), and `restore --from` the
//!   destination: wall time and peak RSS of each;
//! - the plugin's peak RSS over the whole run.
//!
//! The database, mirror and destination live in a temporary directory under
//! `--node-dir` (default: the system's temporary directory); only the journal
//! is on `--dir`, the backup device. scripts/scale-bench runs this on a
//! loop-mounted ext4, also throttled to a USB stick's speed.

use super::{apply_ok, figures, grow_database, hooks_around_compaction, timed_hooks, Figures, HOOKS_PER_LOOK};
use crate::sim::workload::Workload;
use crate::sim::SimNode;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long the destination may take to catch up before the run gives up.
const SHIP_WAIT_MAX: Duration = Duration::from_secs(3600);
/// How often the run asks the plugin whether the destination caught up.
const SHIP_POLL: Duration = Duration::from_millis(200);

pub struct Options<'a> {
    pub dir: &'a Path,
    pub node_dir: Option<&'a Path>,
    pub mib: u64,
    pub hooks: usize,
    pub exe: PathBuf,
    pub json: bool,
}

/// A command's wall time and peak resident set (sampled every [`RSS_POLL`]),
/// and for a restore the changes it replayed.
#[derive(Debug, serde::Serialize)]
struct Run {
    seconds: f64,
    peak_rss_kib: u64,
    changes_replayed: Option<u64>,
}

impl Run {
    /// A `restore --json`: its report's `records_applied`.
    fn restore(exe: &Path, args: &[&std::ffi::OsStr]) -> Result<Run> {
        let (mut run, out) = measured(exe, &[args, &["--json".as_ref()]].concat())?;
        let report: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("restore --json printed {out:?}"))?;
        run.changes_replayed = Some(report["records_applied"].as_u64().context("no records_applied")?);
        Ok(run)
    }
}

/// How often a measured command's peak resident set is sampled.
const RSS_POLL: Duration = Duration::from_millis(20);

/// Runs `exe args` and samples its VmHWM (the kernel's high-water mark of
/// its resident set) until it exits, failing with its output if it fails;
/// returns what it printed. Not wait4's ru_maxrss: a child spawned with
/// vfork counts this process's own resident set too, until it execs.
fn measured(exe: &Path, args: &[&std::ffi::OsStr]) -> Result<(Run, String)> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("no stdout")?;
    let printed = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    // Its error output is small and read at the end; a chatty command
    // cannot fill the pipe before that (64 KiB) without failing anyway.
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            peak_rss_kib = peak_rss_kib.max(hwm);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(RSS_POLL);
    };
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).ok();
        }
        bail!("{} {:?} failed ({status}): {err}", exe.display(), args);
    }
    let out = printed.join().map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
    Ok((Run { seconds, peak_rss_kib, changes_replayed: None }, out))
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until every destination holds `version`; returns how long it took.
fn until_shipped(node: &mut SimNode, version: u32) -> Result<f64> {
    let started = Instant::now();
    loop {
        let st = node.request("replica-status", serde_json::json!({}))?.unwrap_or_default();
        let dests = st["result"]["remote"]["destinations"].as_array().cloned().unwrap_or_default();
        if !dests.is_empty() && dests.iter().all(|d| d["acked_data_version"].as_u64() == Some(u64::from(version))) {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > SHIP_WAIT_MAX {
            let logs = node.logs();
            let recent = &logs[logs.len().saturating_sub(20)..];
            bail!(
                "the destination did not reach data_version {version} within {SHIP_WAIT_MAX:?}: {st}\n{}",
                recent.join("\n")
            );
        }
        std::thread::sleep(SHIP_POLL);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where one arm's node and plugin keep their files. The journal is on the
/// backup device (`--dir`); the rest on `--node-dir`.
struct Arm {
    node_dir: PathBuf,
    journal: PathBuf,
    mirror: PathBuf,
    dest: PathBuf,
}

impl Arm {
    fn new(device: &Path, base: &Path, name: &str) -> Result<Arm> {
        let arm = Arm {
            node_dir: base.join(name),
            journal: device.join(format!("{name}-journal")),
            mirror: base.join(format!("{name}-mirror.sqlite3")),
            dest: base.join(format!("{name}-destination")),
        };
        std::fs::create_dir_all(&arm.node_dir)?;
        Ok(arm)
    }

    fn database(&self) -> PathBuf {
        crate::sim::node::database_path(&self.node_dir)
    }

    fn url(&self) -> String {
        format!("file://{}", self.dest.display())
    }

    /// Everything on: journal, mirror, an encrypted `file://` destination.
    fn configure(&self, key: &Path) -> Result<()> {
        let mut cfg = super::super::demo::write_config(&self.node_dir, &self.journal)?;
        cfg.compact_journal_bytes = 0;
        // The first generation stays after the compaction: a restore of its
        // whole history (its snapshot and every change in it) is timed too.
        cfg.keep_generations = 2;
        cfg.key_file = Some(key.to_path_buf());
        cfg.mirror = Some(self.mirror.clone());
        let mut text = cfg.to_toml()?;
        text.push_str(&format!("[[destination]]\nurl = \"{}\"\nupload_bytes_per_s_max = 1073741824\n", self.url()));
        std::fs::write(self.node_dir.join(crate::config::CONFIG_FILE), text)?;
        Ok(())
    }

    /// Starts the plugin on the node's database, built without it, and takes
    /// the first hook (which finds no journal and takes the snapshot before it
    /// answers); then waits until the destination holds it. Returns the node,
    /// the first hook's seconds and the seconds until shipped.
    fn start(&self, exe: &Path, w: &mut Workload) -> Result<(SimNode, f64, f64)> {
        let mut node = SimNode::open(&self.node_dir)?;
        node.start_plugin(exe, &[])?;
        node.init_plugin()?;
        let c = w.next_change();
        apply_ok(&mut node, &c)?;
        let first_hook_s = *node.hook_latencies_us.last().context("no hook was timed")? as f64 / 1e6;
        let version = node.data_version();
        let ship_s = until_shipped(&mut node, version)?;
        Ok((node, first_hook_s, ship_s))
    }

    fn remove(&self) -> Result<()> {
        for d in [&self.node_dir, &self.journal, &self.dest] {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
            }
        }
        if self.mirror.exists() {
            std::fs::remove_file(&self.mirror)?;
        }
        Ok(())
    }
}

pub fn run(o: Options) -> Result<ExitCode> {
    let journal_work =
        tempfile::Builder::new().prefix("cln-replica-scale").tempdir_in(o.dir).context("cannot work in --dir")?;
    let node_work = match o.node_dir {
        Some(d) => tempfile::Builder::new().prefix("cln-replica-scale-node").tempdir_in(d),
        None => tempfile::Builder::new().prefix("cln-replica-scale-node").tempdir(),
    }
    .context("cannot create the node's temporary directory")?;
    // The plugin runs in the node's directory: every path must be absolute.
    let device = std::fs::canonicalize(journal_work.path())?;
    let base = std::fs::canonicalize(node_work.path())?;
    // Two arms on identical databases, fed the same trace: `compacting`
    // compacts while its hooks are timed, `twin` times the same portion of
    // the trace without a compaction.
    let compacting = Arm::new(&device, &base, "node")?;
    let twin = Arm::new(&device, &base, "twin")?;
    let key = base.join("replica.key");
    crate::remote::crypto::Key::generate()?.write_new_file(&key)?;

    // The node ran before the plugin: its database is built unseen.
    let built = Instant::now();
    let mut node = SimNode::open(&compacting.node_dir)?;
    for c in Workload::schema() {
        apply_ok(&mut node, &c)?;
    }
    let mut w = Workload::new(1);
    let db_bytes = grow_database(&mut node, &mut w, o.mib)?;
    let build_s = built.elapsed().as_secs_f64();
    node.copy_database(&twin.database())?;
    drop(node);
    let mut twin_w = w.clone();
    compacting.configure(&key)?;

    let (mut node, first_hook_s, ship_s) = compacting.start(&o.exe, &mut w)?;
    let pid = node.plugin_pid().context("the plugin has no pid")?;
    let after_snapshot_kib = vm_hwm_kib(pid).unwrap_or(0);
    let c = hooks_around_compaction(&mut node, &mut w, o.hooks)?;
    let version = node.data_version();
    let ship_after_compaction_s = until_shipped(&mut node, version)?;
    let plugin_peak_kib = vm_hwm_kib(pid).unwrap_or(0);
    let (exit, _) = node.shutdown_plugin()?;
    if !exit.success() {
        bail!("the plugin exited {exit}: {}", node.logs().join("\n"));
    }
    drop(node);

    let journal = &compacting.journal;
    let restored = base.join("restored.sqlite3");
    let from_history = base.join("from-history.sqlite3");
    let from_remote = base.join("from-remote.sqlite3");
    let restore = Run::restore(
        &o.exe,
        &["restore".as_ref(), "--from".as_ref(), journal.as_os_str(), "--to".as_ref(), restored.as_os_str()],
    )?;
    // Just before the compacted generation's base: the first generation's
    // snapshot and every change it holds, replayed.
    let inventory = crate::inventory::inventory(journal)?;
    let [first, compacted] = inventory.generations.as_slice() else {
        bail!("the journal holds {} generations, not the first and the compacted one", inventory.generations.len())
    };
    let history_at = (compacted.base_version - 1).to_string();
    let history = Run::restore(
        &o.exe,
        &[
            "restore".as_ref(),
            "--from".as_ref(),
            journal.as_os_str(),
            "--at".as_ref(),
            history_at.as_ref(),
            "--to".as_ref(),
            from_history.as_os_str(),
        ],
    )?;
    if history.changes_replayed != Some(u64::from(compacted.base_version - 1 - first.base_version)) {
        bail!(
            "the restore at {history_at} replayed {:?} changes onto generation {}'s base at {}",
            history.changes_replayed,
            first.generation,
            first.base_version
        );
    }
    let (verify, _) = measured(&o.exe, &["verify".as_ref(), "--from".as_ref(), journal.as_os_str()])?;
    let url = compacting.url();
    let remote_restore = Run::restore(
        &o.exe,
        &[
            "restore".as_ref(),
            "--from".as_ref(),
            url.as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            "--to".as_ref(),
            from_remote.as_os_str(),
        ],
    )?;
    // With the plugin stopped: `cln-replica compact` (its copy unpaced).
    let (compact, _) = measured(
        &o.exe,
        &["compact".as_ref(), "--from".as_ref(), journal.as_os_str(), "--keep".as_ref(), "1".as_ref()],
    )?;
    // `verify` above checked both generations kept (keep_generations = 2,
    // the default); now the journal holds one.
    let (verify_one, _) = measured(&o.exe, &["verify".as_ref(), "--from".as_ref(), journal.as_os_str()])?;
    let db_path = compacting.database();
    let same = crate::dbcompare::compare_files(&db_path, &restored)?.is_empty()
        && crate::dbcompare::compare_files(&db_path, &from_remote)?.is_empty()
        && crate::dbcompare::compare_files(&db_path, &compacting.mirror)?.is_empty();
    if !same {
        bail!("a restored database or the mirror differs from the node's");
    }
    let final_version = crate::snapshot::data_version(&rusqlite::Connection::open(&db_path)?)?;
    for f in [&restored, &from_history, &from_remote] {
        std::fs::remove_file(f)?;
    }
    // The compacting arm's files go before the twin starts: the twin finds
    // the backup device as the compacting arm did.
    compacting.remove()?;

    let twin_w = &mut twin_w;
    twin.configure(&key)?;
    let (mut node, twin_first_hook_s, _) = twin.start(&o.exe, twin_w)?;
    let before_twin = timed_hooks(&mut node, twin_w, o.hooks)?;
    let without = twin_portion(&mut node, twin_w, c.during.len())?;
    let (exit, _) = node.shutdown_plugin()?;
    if !exit.success() {
        bail!("the twin's plugin exited {exit}: {}", node.logs().join("\n"));
    }
    if before_twin.len() != c.before.len() || Some(node.data_version()) != final_version {
        bail!(
            "the twin ended at data_version {}, not the compacting arm's {final_version:?}: not the same trace",
            node.data_version()
        );
    }
    drop(node);
    twin.remove()?;

    let hooks_during = c.during.len();
    let by_phase = c
        .phases
        .iter()
        .map(|(phase, r)| PhaseFigures {
            phase: phase.clone(),
            hooks: r.len(),
            during: figures(c.during[r.clone()].to_vec()),
            without: figures(without[r.clone()].to_vec()),
        })
        .collect();
    let (before, without, during) = (figures(c.before), figures(without), figures(c.during));
    let ratio = during.p99_us as f64 / without.p99_us.max(1) as f64;
    let report = Report {
        database_bytes: db_bytes,
        build_seconds: build_s,
        first_hook_seconds: first_hook_s,
        twin_first_hook_seconds: twin_first_hook_s,
        ship_seconds: ship_s,
        ship_after_compaction_seconds: ship_after_compaction_s,
        compaction_seconds: c.seconds,
        switch_us: c.switch_us,
        before_compaction: before,
        hooks_during,
        by_phase,
        without_compaction: without,
        during_compaction: during,
        p99_ratio: ratio,
        plugin_peak_rss_kib: plugin_peak_kib,
        plugin_rss_after_snapshot_kib: after_snapshot_kib,
        restore,
        history,
        verify,
        verify_one,
        remote_restore,
        compact,
    };
    if o.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print(o.mib, o.dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// The twin's `n` hooks of the trace portion the compacting arm timed during
/// its compaction, with a look at `replica-status` after every
/// [`HOOKS_PER_LOOK`] as the compacting arm had.
fn twin_portion(node: &mut SimNode, w: &mut Workload, n: usize) -> Result<Vec<u64>> {
    let mut timed = Vec::with_capacity(n);
    while timed.len() < n {
        timed.extend(timed_hooks(node, w, HOOKS_PER_LOOK.min(n - timed.len()))?);
        node.request("replica-status", serde_json::json!({}))?;
    }
    Ok(timed)
}

/// The hooks of one phase of the compaction, and the twin's same hooks.
#[derive(Debug, serde::Serialize)]
struct PhaseFigures {
    phase: String,
    hooks: usize,
    during: Figures,
    without: Figures,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    database_bytes: u64,
    build_seconds: f64,
    first_hook_seconds: f64,
    /// The twin arm's first hook: the same snapshot taken again.
    twin_first_hook_seconds: f64,
    ship_seconds: f64,
    ship_after_compaction_seconds: f64,
    compaction_seconds: f64,
    switch_us: u64,
    /// The compacting arm's hooks just before its compaction.
    before_compaction: Figures,
    /// Hooks from `replica-compact` up to and including the switch.
    hooks_during: usize,
    /// The twin's hooks of the same trace portion as `during_compaction`.
    without_compaction: Figures,
    /// The same, split by the compaction's phase.
    by_phase: Vec<PhaseFigures>,
    during_compaction: Figures,
    p99_ratio: f64,
    plugin_peak_rss_kib: u64,
    plugin_rss_after_snapshot_kib: u64,
    restore: Run,
    /// The first generation, restored at its last version: its snapshot and
    /// every change it holds.
    history: Run,
    /// `verify` of both generations kept.
    verify: Run,
    /// `verify` after the offline compact: one generation.
    verify_one: Run,
    remote_restore: Run,
    /// `cln-replica compact`, the plugin stopped.
    compact: Run,
}

impl Report {
    fn print(&self, scale_mib: u64, dir: &Path) {
        let r = self;
        println!(
            "cln-replica bench --scale-mib {}: database {} (built without the plugin in {:.1} s), journal in {}",
            scale_mib,
            super::super::bytes(r.database_bytes),
            r.build_seconds,
            dir.display()
        );
        println!(
            "  first hook (the snapshot, lightningd waiting): {:>8.2} s  (the twin's: {:.2} s)",
            r.first_hook_seconds, r.twin_first_hook_seconds
        );
        println!("  destination caught up after it:                {:>8.2} s", r.ship_seconds);
        println!(
            "  hooks before compaction:   p50 {:>6} us  p99 {:>6} us  max {:>8} us",
            r.before_compaction.p50_us, r.before_compaction.p99_us, r.before_compaction.max_us
        );
        println!("  the same portion as below, the twin without compaction ({} hooks):", r.hooks_during);
        println!(
            "  hooks without compaction:  p50 {:>6} us  p99 {:>6} us  max {:>8} us",
            r.without_compaction.p50_us, r.without_compaction.p99_us, r.without_compaction.max_us
        );
        println!(
            "  hooks during compaction:   p50 {:>6} us  p99 {:>6} us  max {:>8} us  ({:.1} s; switch {} us)",
            r.during_compaction.p50_us,
            r.during_compaction.p99_us,
            r.during_compaction.max_us,
            r.compaction_seconds,
            r.switch_us
        );
        println!("  p99 during / p99 without = {:.2}", r.p99_ratio);
        for p in &r.by_phase {
            println!(
                "    {:<17} {:>6} hooks: p99 {:>6} us during, {:>6} us without; max {:>8} us, {:>8} us",
                p.phase, p.hooks, p.during.p99_us, p.without.p99_us, p.during.max_us, p.without.max_us
            );
        }
        println!("  destination caught up after the compaction:   {:>8.2} s", r.ship_after_compaction_seconds);
        println!(
            "  plugin peak RSS: {:.1} MiB ({:.1} MiB after the snapshot)",
            mib(r.plugin_peak_rss_kib),
            mib(r.plugin_rss_after_snapshot_kib)
        );
        for (what, run) in [
            ("restore (journal)", &r.restore),
            ("restore --at (history)", &r.history),
            ("verify (2 generations)", &r.verify),
            ("verify (1 generation)", &r.verify_one),
            ("restore --from file://", &r.remote_restore),
            ("compact (offline)", &r.compact),
        ] {
            let rate = match run.changes_replayed {
                Some(n) => format!("  {n} changes, {:.0} changes/s", n as f64 / run.seconds),
                None => String::new(),
            };
            println!(
                "  {what:<24} {:>8.2} s  peak RSS {:>7.1} MiB  {:.0} MiB/s{rate}",
                run.seconds,
                mib(run.peak_rss_kib),
                r.database_bytes as f64 / (1 << 20) as f64 / run.seconds
            );
        }
        println!("  the restores and the mirror equal the node's database");
    }
}
