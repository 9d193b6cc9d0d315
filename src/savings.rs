//! Issue 9's measurement: what `filter = "caches"` and `compression =
//! "zstd"` save, and what they cost the hook, on whole traces.
//!
//! For each trace and each of the four combinations filter {none, caches} x
//! compression {off, zstd}: a fresh journal and a fresh simulated node (real
//! SQLite applying every statement, so snapshots are real) drive the real
//! plugin binary over the plugin protocol with the trace, call by call, as
//! lightningd would (the schema calls before `init`). The four replay in
//! turns of 100 calls, with a round of floor writes after each turn, so a
//! loaded or drifting device weighs on every column alike. Then:
//!
//! - journal bytes: the records' on-device bytes (block-rounded, as the
//!   journal's inventory counts them) after the schema calls, per change;
//! - snapshot bytes: the snapshot of the generation `cln-replica compact`
//!   makes at the end (what a new generation would hold), and that file
//!   zstd-compressed at the level remote shipping uses;
//! - hook latency beside the floor: raw O_DIRECT writes of the sizes the
//!   unfiltered, uncompressed journal writes (every k-th call, up to
//!   `floor_samples`), each followed by fdatasync, into preallocated space
//!   in the same directory; one floor per trace, shared by its four rows.
//!
//! The simulated node's database lives in `nodes_dir`, off the measured
//! device, as lightningd's does on the appliance.
//!
//! Used by `cln-replica bench --trace` and its test; the printing lives in
//! `src/cli/bench.rs`.

use crate::config::Config;
use crate::device::{AlignedBuf, RealDevice};
use crate::filter::Filter;
use crate::journal::{layout, Compression};
use crate::sim::trace::{self, TraceCall};
use crate::sim::{mainnet, HookOutcome, SimNode};
use anyhow::{bail, Context, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The four combinations, baseline first.
pub const COMBINATIONS: [(Filter, Compression); 4] = [
    (Filter::None, Compression::Off),
    (Filter::None, Compression::Zstd),
    (Filter::Caches, Compression::Off),
    (Filter::Caches, Compression::Zstd),
];

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Off => "off",
        Compression::Zstd => "zstd",
    }
}

/// The zstd level remote shipping uses for snapshots (src/remote/objects.rs).
const SHIP_ZSTD_LEVEL: i32 = 3;

/// The statement lightningd writes for every HTLC it adds to a channel
/// (`wallet_htlc_save_in`/`_out`): a payment sent or received is one, a
/// forward two.
const HTLC_INSERT: &str = "INSERT INTO channel_htlcs";

pub struct Trace {
    pub name: String,
    pub calls: Vec<TraceCall>,
    /// Blocks of a generated mainnet-shaped trace (0 for a recorded one).
    pub blocks: u64,
    /// Whether its payments were generated (then its bytes per HTLC are not
    /// a recorded figure).
    pub generated: bool,
}

/// `mainnet[:...]` (see [`mainnet::parse_spec`]) or the path of a recorded
/// trace (`.jsonl`, or `.jsonl.zst`).
pub fn load_trace(spec: &str) -> Result<Trace> {
    if let Some(p) = mainnet::parse_spec(spec) {
        let p = p?;
        return Ok(Trace {
            name: format!("mainnet:{}:{}:{}", p.blocks, p.p2wsh_outputs_per_block, p.payments_per_day),
            calls: mainnet::generate(&p),
            blocks: p.blocks,
            generated: true,
        });
    }
    let path = Path::new(spec);
    let calls = trace::load(path)?;
    trace::check(&calls).with_context(|| format!("{spec} is not a trace lightningd could have sent"))?;
    let name = path.file_name().map_or(spec.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(Trace { name, calls, blocks: 0, generated: false })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub trace: String,
    pub filter: &'static str,
    pub compression: &'static str,
    /// Hook calls after the schema calls.
    pub changes: u64,
    /// HTLCs added in those calls ([`HTLC_INSERT`]).
    pub htlcs: u64,
    pub blocks: u64,
    /// Generated rather than recorded.
    pub generated: bool,
    /// On-device bytes of the records after the schema calls.
    pub journal_bytes: u64,
    pub journal_bytes_per_change: f64,
    /// The snapshot of a new generation made at the end, and zstd-compressed.
    pub snapshot_bytes: u64,
    pub snapshot_zstd_bytes: u64,
    pub hook_us_p50: u64,
    pub hook_us_p99: u64,
    pub floor_us_p50: u64,
    pub floor_us_p99: u64,
    pub seconds: f64,
}

pub struct Options {
    /// Where the journals and the floor file go (the device measured).
    pub dir: PathBuf,
    /// Where the simulated nodes' databases go: lightningd's own disk, not
    /// the backup device, as on the appliance (SQLite's commits on the
    /// journal's device would be measured as the journal's).
    pub nodes_dir: PathBuf,
    /// The cln-replica binary to run as the plugin.
    pub exe: PathBuf,
    /// O_DIRECT writes of the floor before each combination.
    pub floor_samples: usize,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// One O_DIRECT write of `sizes[i]` bytes plus fdatasync per sample, into a
/// zero-filled, flushed file from `offset` on: the I/O the journal must do
/// for those records.
pub fn floor_round(path: &Path, offset: u64, sizes: &[usize], out: &mut Vec<u64>) -> Result<()> {
    floor_round_in(path, offset, sizes, crate::device::SyncMode::Fdatasync, out)
}

/// [`floor_round`], with the durability of `mode`: `Dsync` opens the file
/// O_DIRECT|O_DSYNC and times the `pwrite` alone (one system call).
pub fn floor_round_in(
    path: &Path,
    mut offset: u64,
    sizes: &[usize],
    mode: crate::device::SyncMode,
    out: &mut Vec<u64>,
) -> Result<()> {
    let dsync = mode == crate::device::SyncMode::Dsync;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if dsync { libc::O_DIRECT | libc::O_DSYNC } else { libc::O_DIRECT })
        .open(path)
        .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))?;
    let mut buf = AlignedBuf::with_capacity(sizes.iter().copied().max().unwrap_or(4096));
    for &size in sizes {
        buf.reset_zeroed(size);
        buf[..8].copy_from_slice(b"cln-rplc");
        let t = Instant::now();
        f.write_all_at(&buf, offset).with_context(|| format!("O_DIRECT write to {}", path.display()))?;
        if !dsync {
            f.sync_data().with_context(|| format!("fdatasync of {}", path.display()))?;
        }
        out.push(t.elapsed().as_micros() as u64);
        offset += size as u64;
    }
    Ok(())
}

/// A zero-filled, flushed file of `bytes`: the floor writes into allocated
/// blocks, as the journal does into its preallocated segments.
pub fn preallocate_floor_file(path: &Path, bytes: usize) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < bytes {
        f.write_all_at(&zeros, written as u64)?;
        written += zeros.len();
    }
    f.sync_all()?;
    Ok(())
}

/// syncfs(2) of the filesystem holding `dir`.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: a valid open file descriptor for the call's duration.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("syncfs of {}", dir.display()));
    }
    Ok(())
}

/// The on-device bytes of every record in the journal, in order.
fn record_sizes(journal: &Path) -> Result<Vec<u64>> {
    let mut sizes = vec![];
    for g in crate::journal::reader::generations(journal)? {
        let block = g.block_bytes();
        for r in g.records() {
            sizes.push(r?.header.disk_bytes(block));
        }
    }
    Ok(sizes)
}

/// Hook calls each combination replays before the next one takes its turn:
/// small enough that a drift in the device (another process's writeback, the
/// filesystem's journal commits) reaches all four alike.
const ROUND_CALLS: usize = 100;

/// One combination's node, plugin and journal while the trace is replayed.
struct Lane {
    filter: Filter,
    compression: Compression,
    cfg: Config,
    node: SimNode,
    node_dir: PathBuf,
    work: PathBuf,
    schema_bytes: u64,
}

fn replay(name: &str, node: &mut SimNode, c: &TraceCall) -> Result<()> {
    match node.replay_call(c)? {
        HookOutcome::Continue => Ok(()),
        other => bail!(
            "{name}: the plugin answered {other:?} at data_version {}; its log:\n{}",
            c.data_version,
            node.logs().join("\n")
        ),
    }
}

/// Replays `t` once per combination, the four interleaved in rounds of
/// [`ROUND_CALLS`] calls with a round of floor writes; one row each, in
/// [`COMBINATIONS`] order.
pub fn run_trace(o: &Options, t: &Trace) -> Result<Vec<Row>> {
    let started = Instant::now();
    let schema_calls = if t.calls.first().is_some_and(|c| c.data_version == 1) {
        trace::FIRST_START_SCHEMA_CALLS.min(t.calls.len())
    } else {
        0
    };
    let after_schema = &t.calls[schema_calls..];
    let htlcs =
        after_schema.iter().flat_map(|c| &c.writes).filter(|w| w.trim_start().starts_with(HTLC_INSERT)).count() as u64;
    // The floor writes what the unfiltered, uncompressed journal writes for
    // every `stride`-th call.
    let stride = after_schema.len().div_ceil(o.floor_samples.max(1)).max(1);
    let floor_size = |c: &TraceCall| {
        crate::journal::format::record_disk_bytes(crate::journal::format::payload_bytes(&c.writes), 4096)
    };
    let floor_file = o.dir.join("floor");
    preallocate_floor_file(&floor_file, after_schema.iter().step_by(stride).map(floor_size).sum())?;

    let mut lanes = vec![];
    for (i, (filter, compression)) in COMBINATIONS.into_iter().enumerate() {
        let work = o.dir.join(format!("combination-{i}"));
        let node_dir = o.nodes_dir.join(format!("combination-{i}"));
        for d in [&node_dir, &work] {
            // The plugin creates the journal directory only under an existing
            // parent (a missing parent is an unmounted device).
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let mut cfg = Config::new(work.join("journal"));
        cfg.filter = filter;
        cfg.compression = compression;
        // The whole trace in one generation: the bytes are the records'.
        cfg.compact_journal_bytes = 0;
        std::fs::write(node_dir.join(crate::config::CONFIG_FILE), cfg.to_toml()?)?;
        let mut node = SimNode::open(&node_dir)?;
        node.start_plugin(&o.exe, &[])?;
        for c in &t.calls[..schema_calls] {
            replay(&t.name, &mut node, c)?;
        }
        node.init_plugin()?;
        let schema_bytes = record_sizes(&cfg.journal)?.iter().sum();
        lanes.push(Lane { filter, compression, cfg, node, node_dir, work, schema_bytes });
    }

    sync_filesystem(&o.dir)?;
    let mut floor = vec![];
    let mut floor_offset = 0;
    for (round, calls) in after_schema.chunks(ROUND_CALLS).enumerate() {
        for lane in &mut lanes {
            for c in calls {
                replay(&t.name, &mut lane.node, c)?;
            }
        }
        let first = round * ROUND_CALLS;
        let sizes: Vec<usize> =
            (first..first + calls.len()).filter(|i| i % stride == 0).map(|i| floor_size(&after_schema[i])).collect();
        floor_round(&floor_file, floor_offset, &sizes, &mut floor)?;
        floor_offset += sizes.iter().sum::<usize>() as u64;
    }
    floor.sort_unstable();
    let _ = std::fs::remove_file(&floor_file);

    let mut rows = vec![];
    for mut lane in lanes {
        let (status, _) = lane.node.shutdown_plugin()?;
        if !status.success() {
            bail!("the plugin exited with {status}; its log:\n{}", lane.node.logs().join("\n"));
        }
        let journal = &lane.cfg.journal;
        let journal_bytes = record_sizes(journal)?.iter().sum::<u64>() - lane.schema_bytes;
        // The first hook took the initial snapshot: not a steady-state figure.
        let mut hooks = lane.node.hook_latencies_us.get(1..).unwrap_or_default().to_vec();
        hooks.sort_unstable();
        drop(lane.node);

        let report = crate::compact::compact_offline(&lane.cfg, Arc::new(RealDevice), None)
            .with_context(|| format!("compacting {}", journal.display()))?;
        let snapshot = layout::generation_dir(journal, report.generation).join(layout::SNAPSHOT_FILE);
        let bytes = std::fs::read(&snapshot).with_context(|| format!("cannot read {}", snapshot.display()))?;
        let zstd_bytes = zstd::bulk::compress(&bytes, SHIP_ZSTD_LEVEL).context("cannot compress the snapshot")?.len();
        let changes = after_schema.len() as u64;
        rows.push(Row {
            trace: t.name.clone(),
            filter: lane.filter.name(),
            compression: compression_name(lane.compression),
            changes,
            htlcs,
            blocks: t.blocks,
            generated: t.generated,
            journal_bytes,
            journal_bytes_per_change: journal_bytes as f64 / changes.max(1) as f64,
            snapshot_bytes: report.snapshot_bytes,
            snapshot_zstd_bytes: zstd_bytes as u64,
            hook_us_p50: percentile(&hooks, 0.5),
            hook_us_p99: percentile(&hooks, 0.99),
            floor_us_p50: percentile(&floor, 0.5),
            floor_us_p99: percentile(&floor, 0.99),
            seconds: started.elapsed().as_secs_f64(),
        });
        for d in [&lane.work, &lane.node_dir] {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    Ok(rows)
}

/// One day of a node, per combination: [`mainnet::BLOCKS_PER_DAY`] blocks at
/// the mainnet-shaped trace's bytes per block, plus `payments_per_day` HTLCs
/// at the recorded trace's bytes per HTLC (all of that trace's bytes, its
/// blocks, channel opens, restarts and close included, over its HTLCs: an
/// upper bound for a payment).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Day {
    pub filter: &'static str,
    pub compression: &'static str,
    pub bytes_per_block: Option<f64>,
    pub bytes_per_htlc: Option<f64>,
    pub blocks_per_day: u64,
    pub payments_per_day: u64,
    /// A part without its trace counts as 0.
    pub bytes_per_day: f64,
}

pub fn day_model(rows: &[Row], payments_per_day: u64) -> Vec<Day> {
    COMBINATIONS
        .iter()
        .map(|(f, c)| {
            let of = |r: &&Row| r.filter == f.name() && r.compression == compression_name(*c);
            let mut block = None;
            let mut htlc = None;
            for r in rows {
                if !of(&r) {
                    continue;
                }
                if r.blocks > 0 && block.is_none() {
                    block = Some(r.journal_bytes as f64 / r.blocks as f64);
                } else if !r.generated && r.htlcs > 0 && htlc.is_none() {
                    htlc = Some(r.journal_bytes as f64 / r.htlcs as f64);
                }
            }
            let bytes_per_day =
                block.unwrap_or(0.0) * mainnet::BLOCKS_PER_DAY as f64 + htlc.unwrap_or(0.0) * payments_per_day as f64;
            Day {
                filter: f.name(),
                compression: compression_name(*c),
                bytes_per_block: block,
                bytes_per_htlc: htlc,
                blocks_per_day: mainnet::BLOCKS_PER_DAY,
                payments_per_day,
                bytes_per_day,
            }
        })
        .collect()
}
