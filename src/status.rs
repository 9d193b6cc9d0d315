//! The plugin's live status: what it has made durable, whether it is in sync
//! or halted and why, and how fast the hook answers.
//!
//! Other parts read it two ways: the `replica-status` RPC method, and a JSON
//! file (`status_file` in the config) that a background thread replaces
//! atomically on every change and at least once per [`HEARTBEAT`], so a reader
//! can tell a live plugin from a dead one by `updated_unix_ms`. Nothing here
//! runs on the hook's path except [`StatusBoard::record_hook`], one
//! uncontended lock and a store, and two atomic adds for the metrics'
//! histogram.

use crate::clock::now_unix_ms;
use crate::journal::Progress;
use crate::state::Tip;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A status file larger than this is not read (it is a few KiB).
pub const STATUS_FILE_BYTES_MAX: u64 = 1 << 20;

/// The status file is rewritten at least this often while the plugin lives.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and at most every this long, however fast changes come.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Started, journal not opened yet (no hook and no init so far).
    Starting,
    /// Every change lightningd committed is in the journal.
    InSync,
    /// The plugin refuses hooks: lightningd stops. `reason` says why.
    Halted,
    /// Clean stop: the journal is sealed.
    Stopped,
    /// `on_device_lost = "degrade"`: the backup device failed and lightningd
    /// goes on WITHOUT a backup. `degraded` says why.
    Degraded,
}

/// The status as published (the status file's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginStatus {
    pub state: PluginState,
    pub reason: Option<String>,
    pub pid: u32,
    #[serde(serialize_with = "crate::files::serialize_opt_path_lossy")]
    pub journal: Option<PathBuf>,
    pub generation: u64,
    /// The last data_version in the journal.
    pub data_version: Option<u32>,
    /// The last change may not have been committed by lightningd yet.
    pub pending: bool,
    pub journal_bytes: u64,
    pub last_write_unix_ms: u64,
    pub sealed: bool,
    pub hooks: u64,
    pub hook_latency_us_p50: Option<u64>,
    pub hook_latency_us_p99: Option<u64>,
    pub updated_unix_ms: u64,
    /// Why the plugin runs without its backup device (`on_device_lost =
    /// "degrade"`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Remote destinations, when configured (docs/REMOTE.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::remote::RemoteStatus>,
    /// Any remote destination behind by more than `remote_lag_ms`, or
    /// failing (the panel's "remote lagging"); absent without destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_lagging: Option<bool>,
    /// Free bytes on the journal's filesystem (statvfs); absent until the
    /// first sample (README, "Status fields").
    #[serde(default)]
    pub device_free_bytes: Option<u64>,
    #[serde(default)]
    pub device_size_bytes: Option<u64>,
    /// The journal directory's size, its current segments counted as far as filled.
    #[serde(default)]
    pub journal_disk_bytes: Option<u64>,
    /// Net growth of that size over the last day (after an hour of history).
    #[serde(default)]
    pub journal_growth_bytes_per_day: Option<f64>,
    /// Days until the device is full at that rate; absent while it does not grow.
    #[serde(default)]
    pub device_days_left: Option<f64>,
    /// Fewer than `warn_days_left` days or less than `warn_free_percent` left.
    #[serde(default)]
    pub device_nearly_full: bool,
    /// The last failure: the halt, the device lost, or a destination's error.
    #[serde(default)]
    pub last_error_unix_ms: Option<u64>,
    /// The last restore drill (`cln-replica drill`, docs/DRILL.md): whether
    /// it passed, and when it finished; absent when no drill result exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_finished_unix_ms: Option<u64>,
}

/// The last hook latencies, for percentiles. Bounded: 4096 samples.
pub struct LatencyRing {
    samples: Box<[u32; 4096]>,
    count: u64,
}

impl Default for LatencyRing {
    fn default() -> Self {
        LatencyRing { samples: Box::new([0; 4096]), count: 0 }
    }
}

impl LatencyRing {
    pub fn record(&mut self, us: u64) {
        let i = (self.count % 4096) as usize;
        self.samples[i] = us.min(u32::MAX as u64) as u32;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// (p50, p99) over the retained samples.
    pub fn percentiles(&self) -> Option<(u64, u64)> {
        let n = self.count.min(4096) as usize;
        if n == 0 {
            return None;
        }
        let mut v = self.samples[..n].to_vec();
        v.sort_unstable();
        let at = |q: f64| v[((n as f64 * q) as usize).min(n - 1)] as u64;
        Some((at(0.50), at(0.99)))
    }
}

#[derive(Default)]
struct Board {
    state: Option<PluginState>,
    reason: Option<String>,
    journal: Option<PathBuf>,
    progress: Option<Arc<Progress>>,
    latencies: LatencyRing,
    degraded: Option<String>,
    remote: Option<crate::remote::StatusSource>,
    device: Option<crate::health::device::DeviceHealth>,
    failed_unix_ms: Option<u64>,
    /// The last drill's (ok, finished_unix_ms), from its result file.
    drill: Option<(bool, u64)>,
    trace: HookTrace,
}

/// `CLN_REPLICA_HOOK_TRACE=PATH`: every hook's service time, for measuring
/// the plugin inside a real node (tests/realnode/bench.py). The hook only
/// pushes a sample into this buffer; the status publisher (and the plugin's
/// exit) append them to PATH as `unix_ms us` lines, off the hook's path.
pub const HOOK_TRACE_ENV: &str = "CLN_REPLICA_HOOK_TRACE";
/// Samples held between two flushes; beyond it they are counted as dropped
/// (a publisher that cannot keep up must not grow the plugin's memory).
const HOOK_TRACE_SAMPLES_MAX: usize = 1 << 16;

#[derive(Default)]
struct HookTrace {
    samples: Vec<(u64, u32)>,
    dropped: u64,
}

fn hook_trace_path() -> Option<&'static PathBuf> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| std::env::var_os(HOOK_TRACE_ENV).filter(|p| !p.is_empty()).map(PathBuf::from)).as_ref()
}

/// Shared between the engine (which updates it) and the publisher thread.
#[derive(Default)]
pub struct StatusBoard {
    inner: Mutex<Board>,
    /// Outside the lock: the metrics' histogram of hook latencies.
    pub hook_histogram: crate::health::metrics::HookHistogram,
}

impl StatusBoard {
    pub fn attach(&self, progress: Arc<Progress>, journal: PathBuf) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.progress = Some(progress);
        b.journal = Some(journal);
        if b.state.is_none() {
            b.state = Some(PluginState::InSync);
        }
    }

    pub fn attach_remote(&self, remote: crate::remote::StatusSource) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remote = Some(remote);
    }

    pub fn set_state(&self, state: PluginState, reason: Option<String>) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A halt is final for this process.
        if b.state != Some(PluginState::Halted) {
            if state == PluginState::Halted {
                b.failed_unix_ms = Some(now_unix_ms());
            }
            b.state = Some(state);
            b.reason = reason;
        }
        if let Some(p) = &b.progress {
            p.publish(|_| {});
        }
    }

    /// The plugin goes on without its backup device (`on_device_lost = "degrade"`).
    pub fn set_degraded(&self, why: String) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.state = Some(PluginState::Degraded);
        b.degraded = Some(why);
        b.failed_unix_ms = Some(now_unix_ms());
        if let Some(p) = &b.progress {
            p.publish(|_| {});
        }
    }

    pub fn record_hook(&self, us: u64) {
        self.hook_histogram.record(us);
        self.record(us, hook_trace_path().is_some());
    }

    fn record(&self, us: u64, traced: bool) {
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        b.latencies.record(us);
        if traced {
            if b.trace.samples.len() < HOOK_TRACE_SAMPLES_MAX {
                b.trace.samples.push((now_unix_ms(), us.min(u32::MAX as u64) as u32));
            } else {
                b.trace.dropped += 1;
            }
        }
    }

    /// Appends the hook samples taken since the last call to the
    /// `CLN_REPLICA_HOOK_TRACE` file (nothing when it is not set).
    pub fn flush_hook_trace(&self) -> std::io::Result<()> {
        match hook_trace_path() {
            Some(path) => self.flush_trace_to(path),
            None => Ok(()),
        }
    }

    fn flush_trace_to(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let (samples, dropped) = {
            let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut b.trace.samples), std::mem::take(&mut b.trace.dropped))
        };
        if samples.is_empty() && dropped == 0 {
            return Ok(());
        }
        let mut text = String::with_capacity(samples.len() * 20);
        for (ms, us) in &samples {
            text.push_str(&format!("{ms} {us}\n"));
        }
        if dropped > 0 {
            text.push_str(&format!("# dropped {dropped}\n"));
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        f.write_all(text.as_bytes())
    }

    /// The last restore drill's outcome, as read from its result file.
    pub fn set_drill(&self, drill: Option<(bool, u64)>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).drill = drill;
    }

    /// The backup device's latest sample ([`crate::health::monitor`]).
    pub fn set_device(&self, device: crate::health::device::DeviceHealth) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).device = Some(device);
    }

    pub fn progress(&self) -> Option<Arc<Progress>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).progress.clone()
    }

    pub fn snapshot(&self) -> PluginStatus {
        let b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = b.progress.as_ref().map(|p| p.get()).unwrap_or_default();
        let (data_version, pending) = match p.tip {
            Tip::Empty => (None, false),
            Tip::At { version, pending_txn } => (Some(version), pending_txn),
        };
        let pct = b.latencies.percentiles();
        let remote = b.remote.as_ref().map(|r| r.status());
        let mut state = b.state.unwrap_or(PluginState::Starting);
        let mut reason = b.reason.clone();
        if p.failed && !matches!(state, PluginState::Halted | PluginState::Degraded) {
            state = PluginState::Halted;
            reason = Some("the backup device failed".into());
        }
        let dev = b.device;
        let remote_error = remote.as_ref().and_then(|r| r.destinations.iter().map(|d| d.last_error_unix_ms).max());
        let last_error_unix_ms = b.failed_unix_ms.max(remote_error.filter(|&t| t > 0));
        PluginStatus {
            state,
            reason,
            pid: std::process::id(),
            journal: b.journal.clone(),
            generation: p.generation,
            data_version,
            pending,
            journal_bytes: p.journal_bytes,
            last_write_unix_ms: p.last_write_unix_ms,
            sealed: p.sealed,
            hooks: b.latencies.count(),
            hook_latency_us_p50: pct.map(|p| p.0),
            hook_latency_us_p99: pct.map(|p| p.1),
            updated_unix_ms: now_unix_ms(),
            degraded: b.degraded.clone(),
            remote_lagging: remote.as_ref().map(|r| r.lagging),
            remote,
            device_free_bytes: dev.map(|d| d.free_bytes),
            device_size_bytes: dev.map(|d| d.size_bytes),
            journal_disk_bytes: dev.map(|d| d.journal_bytes),
            journal_growth_bytes_per_day: dev.and_then(|d| d.growth_bytes_per_day),
            device_days_left: dev.and_then(|d| d.days_left),
            device_nearly_full: dev.is_some_and(|d| d.nearly_full),
            last_error_unix_ms,
            drill_ok: b.drill.map(|d| d.0),
            drill_finished_unix_ms: b.drill.map(|d| d.1),
        }
    }
}

/// Serialises the writers of the status file: the publisher thread and the
/// plugin's final write at exit share one temporary name, and the final
/// status must be the last one renamed into place (the panel's safe shutdown
/// waits for it).
static FILE_LOCK: Mutex<()> = Mutex::new(());

/// Replaces `path` with `status` atomically (written beside it, renamed).
pub fn write_status_file(path: &Path, status: &PluginStatus) -> anyhow::Result<()> {
    let _serialised = FILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    write_unlocked(path, status)
}

/// The publisher's write: none once `stop` is set, so that a snapshot it
/// took before the plugin's final status cannot replace that status.
fn publish(path: &Path, status: &PluginStatus, stop: &std::sync::atomic::AtomicBool) -> Option<anyhow::Result<()>> {
    let _serialised = FILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if stop.load(std::sync::atomic::Ordering::Acquire) {
        return None;
    }
    Some(write_unlocked(path, status))
}

fn write_unlocked(path: &Path, status: &PluginStatus) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(status)?;
    text.push('\n');
    crate::files::replace_with_bytes(path, text.as_bytes(), crate::files::Durability::AtomicOnly)
}

/// Keeps the status file current until `stop` returns true. Failures to write
/// it are reported once per kind and never affect the hook.
pub fn spawn_publisher(board: Arc<StatusBoard>, path: PathBuf, stop: Arc<std::sync::atomic::AtomicBool>) {
    thread::Builder::new()
        .name("status-publisher".into())
        .spawn(move || {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let mut seen = 0;
            let mut reported = false;
            let mut trace_reported = false;
            loop {
                let status = board.snapshot();
                match publish(&path, &status, &stop) {
                    // Stopped: the plugin writes the final status itself.
                    None => return,
                    Some(Err(e)) if !reported => {
                        eprintln!("cln-replica: cannot write the status file {}: {e:#}", path.display());
                        reported = true;
                    }
                    Some(_) => {}
                }
                if let Err(e) = board.flush_hook_trace() {
                    if !trace_reported {
                        eprintln!("cln-replica: cannot write the hook trace ({HOOK_TRACE_ENV}): {e}");
                        trace_reported = true;
                    }
                }
                thread::sleep(MIN_INTERVAL);
                seen = match board.progress() {
                    Some(p) => p.wait_past(seen, HEARTBEAT).counter,
                    None => {
                        thread::sleep(HEARTBEAT);
                        seen
                    }
                };
            }
        })
        .expect("spawn the status publisher");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn the_hook_trace_is_bounded_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let board = StatusBoard::default();
        for us in [5, 7, 9] {
            board.record(us, true);
        }
        board.flush_trace_to(&path).unwrap();
        board.flush_trace_to(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let us: Vec<&str> = text.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
        assert_eq!(us, ["5", "7", "9"], "each sample once: {text}");
        // Past the bound, samples are counted, not kept.
        for _ in 0..HOOK_TRACE_SAMPLES_MAX + 2 {
            board.record(1, true);
        }
        board.flush_trace_to(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3 + HOOK_TRACE_SAMPLES_MAX + 1);
        assert!(text.ends_with("# dropped 2\n"), "{}", &text[text.len() - 40..]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_publisher_never_writes_after_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let board = StatusBoard::default();
        let stop = AtomicBool::new(false);
        assert!(matches!(publish(&path, &board.snapshot(), &stop), Some(Ok(()))));
        // The plugin's exit: stop, then its final status.
        stop.store(true, std::sync::atomic::Ordering::Release);
        board.set_state(PluginState::Stopped, None);
        write_status_file(&path, &board.snapshot()).unwrap();
        // A snapshot the publisher took before the final status is not written.
        let stale = StatusBoard::default().snapshot();
        assert!(publish(&path, &stale, &stop).is_none());
        let on_disk: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(on_disk["state"], "stopped");
    }
}
