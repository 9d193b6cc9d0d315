//! The plugin's background compactor: steps 1-3 in a thread that follows
//! the writer, handing over to the hook thread when it is close to the tip.

use super::builder::PACED_CHUNK_BYTES;
use super::{Builder, Handoff};
use crate::clock::now_unix_ms;
use crate::crashpoint;
use crate::device::Device;
use crate::journal::reader::Generation;
use crate::journal::{layout, JournalOptions, Progress};
use crate::pace::Pace;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The background builder hands over once it is this close to the tip...
const CLOSE_ENOUGH_RECORDS: u64 = 4;
/// ...and the hand-over is used only if, once the snapshot is final, no more
/// than this many records came in meanwhile; otherwise it catches up and
/// finalizes again, accepting [`HANDOFF_GROWTH`] times as many each time. A
/// finalize reads the whole snapshot back for its checksum, which takes
/// minutes for a large one on a slow device whose page cache cannot hold it:
/// a node that writes faster than that still gets its compaction, at the cost
/// of one longer switch (the carried records are one write and one flush).
const HANDOFF_MAX_RECORDS: u64 = 32;
const HANDOFF_GROWTH: u64 = 4;
/// Finalizes before the job gives up and says why (32, 128, 512, 2048 records).
const HANDOFF_ATTEMPTS_MAX: u32 = 4;

/// The plugin's background compactor: one job at a time.
pub struct Compactor {
    shared: Arc<Shared>,
    journal: PathBuf,
    device: Arc<dyn Device>,
    opts: JournalOptions,
    progress: Arc<Progress>,
    /// How the job's writes share the device with the hooks' flushes.
    pace: Pace,
}

#[derive(Default)]
struct Shared {
    state: Mutex<JobState>,
    /// Fast check for the hook: a hand-over is waiting.
    ready: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
enum JobState {
    #[default]
    Idle,
    Running,
    Ready(Box<Handoff>),
}

/// Where the background compaction is (`replica-status`' `compaction.state`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CompactionState {
    #[default]
    Idle,
    Running,
    /// Finished, waiting for the next hook to switch to it.
    Ready,
}

/// What the running compaction is doing (`compaction.progress.phase`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CompactionPhase {
    /// Step 1: the old snapshot copied onto the journal's device, paced.
    #[default]
    CopyingSnapshot,
    /// Step 2: the old generation's records applied, following the writer.
    ApplyingRecords,
    /// Step 3 done: the snapshot is final, waiting for the switch.
    Ready,
}

/// How far the running compaction is (`replica-status` → `compaction.progress`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompactionProgress {
    pub phase: CompactionPhase,
    /// The old generation's snapshot, and how much of it is copied.
    pub snapshot_bytes: u64,
    pub snapshot_copied_bytes: u64,
    /// Committed changes applied onto the copy so far.
    pub records_applied: u64,
    /// Records the writer has made durable that the compaction has not read.
    pub records_behind: u64,
}

/// Why a compaction was not started.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("a compaction is already running")]
    Busy,
    #[error("the journal holds no generation yet: nothing to compact")]
    NoGeneration,
    #[error("cannot start the compactor thread: {0}")]
    Thread(std::io::Error),
    /// The plugin cannot compact at all: it refuses every hook.
    #[error("{0}")]
    NotReady(String),
}

/// What `replica-status` shows about compaction.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompactionStatus {
    pub state: CompactionState,
    pub started_unix_ms: Option<u64>,
    pub last_result: Option<String>,
    pub last_failed_unix_ms: Option<u64>,
    pub compactions: u64,
    /// How long the last switch took on the hook thread (step 4), in µs.
    pub last_switch_us: Option<u64>,
    /// While a compaction runs or waits for its switch.
    pub progress: Option<CompactionProgress>,
}

/// The compactor thread's window onto [`CompactionStatus`].
#[derive(Clone)]
struct Reporter(Arc<Mutex<CompactionStatus>>);

impl Reporter {
    fn update(&self, f: impl FnOnce(&mut CompactionProgress)) {
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(st.progress.get_or_insert_with(CompactionProgress::default));
    }
}

impl Compactor {
    /// `bytes_per_s_max`: the job's average write rate on the journal's device
    /// (`compact_bytes_per_s_max`; 0: only the half-time rest).
    pub fn new(
        journal: PathBuf,
        device: Arc<dyn Device>,
        opts: JournalOptions,
        progress: Arc<Progress>,
        bytes_per_s_max: u64,
    ) -> Compactor {
        let pace = Pace { chunk_bytes: PACED_CHUNK_BYTES, bytes_per_s_max };
        Compactor { shared: Arc::default(), journal, device, opts, progress, pace }
    }

    /// Starts a job unless one is running.
    pub fn request(&self, status: &Arc<Mutex<CompactionStatus>>) -> Result<(), RequestError> {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*s, JobState::Idle) {
            return Err(RequestError::Busy);
        }
        let started_unix_ms = now_unix_ms();
        *s = JobState::Running;
        drop(s);
        {
            let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
            st.state = CompactionState::Running;
            st.started_unix_ms = Some(started_unix_ms);
            st.progress = Some(CompactionProgress::default());
        }
        let shared = self.shared.clone();
        let (journal, device, opts, progress, pace) =
            (self.journal.clone(), self.device.clone(), self.opts.clone(), self.progress.clone(), self.pace);
        let status = status.clone();
        std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                crate::priority::background_priority();
                let result =
                    job(&journal, device.clone(), &opts, pace, &progress, &shared.stop, Reporter(status.clone()));
                let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(h) => {
                        *s = JobState::Ready(Box::new(h));
                        st.state = CompactionState::Ready;
                        if let Some(p) = st.progress.as_mut() {
                            p.phase = CompactionPhase::Ready;
                        }
                        shared.ready.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        *s = JobState::Idle;
                        st.state = CompactionState::Idle;
                        st.progress = None;
                        st.last_result = Some(format!("failed: {e:#}"));
                        st.last_failed_unix_ms = Some(now_unix_ms());
                    }
                }
            })
            .map_err(RequestError::Thread)?;
        Ok(())
    }

    pub fn busy(&self) -> bool {
        !matches!(*self.shared.state.lock().unwrap_or_else(|e| e.into_inner()), JobState::Idle)
    }

    /// The hand-over, if one is waiting (one atomic load otherwise).
    pub fn take_ready(&self) -> Option<Handoff> {
        if !self.shared.ready.load(Ordering::Acquire) {
            return None;
        }
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.ready.store(false, Ordering::Release);
        match std::mem::take(&mut *s) {
            JobState::Ready(h) => Some(*h),
            other => {
                *s = other;
                None
            }
        }
    }

    /// Tells a running job to give up (at a clean stop).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Steps 1-3 in the background, following the writer.
fn job(
    journal: &Path,
    device: Arc<dyn Device>,
    opts: &JournalOptions,
    pace: Pace,
    progress: &Progress,
    stop: &AtomicBool,
    report: Reporter,
) -> Result<Handoff> {
    let p = progress.get();
    if p.generation == 0 {
        bail!("the journal holds no generation yet");
    }
    let old = Generation::open(journal, p.generation)?;
    let dir = layout::generation_compact_dir(journal, p.generation + 1);
    let snapshot_bytes = old.header.snapshot_bytes;
    report.update(|r| r.snapshot_bytes = snapshot_bytes);
    let mut on_copied = |copied| report.update(|r| r.snapshot_copied_bytes = copied);
    let b = Builder::start(journal, device.clone(), opts, &old, p.generation + 1, Some(pace), &mut on_copied).map(
        |mut b| {
            report.update(|r| r.phase = CompactionPhase::ApplyingRecords);
            let (report, mut applied) = (report.clone(), 0u64);
            b.on_record = Some(Box::new(move |_, _| {
                applied += 1;
                report.update(|r| r.records_applied = applied);
            }));
            b
        },
    );
    let result = follow(b, progress, stop, &report);
    if result.is_err() {
        let _ = device.remove_dir_all(&dir);
    }
    result
}

fn follow(b: Result<Builder>, progress: &Progress, stop: &AtomicBool, report: &Reporter) -> Result<Handoff> {
    let mut b = b?;
    let mut attempts = 0u32;
    loop {
        if stop.load(Ordering::Acquire) {
            bail!("the plugin is stopping");
        }
        let p = progress.get();
        if p.generation != b.old || p.failed {
            bail!("generation {} is no longer the journal's current one", b.old);
        }
        b.catch_up(Some(p.seq))?;
        let p = progress.get();
        report.update(|r| r.records_behind = p.seq.saturating_sub(b.last_seq()));
        if p.seq.saturating_sub(b.last_seq()) <= CLOSE_ENOUGH_RECORDS {
            let started = std::time::Instant::now();
            let prepared = b.finalize()?;
            crashpoint::hold_point("compact-prepared");
            let p = progress.get();
            let arrived = p.seq.saturating_sub(b.last_seq());
            let h = &prepared.header;
            // What surely fits in segment 1 beside the pending change.
            let room = h.segment_bytes / 2 / u64::from(h.block_bytes);
            let accepted = (HANDOFF_MAX_RECORDS * HANDOFF_GROWTH.pow(attempts)).min(room.max(HANDOFF_MAX_RECORDS));
            if p.generation == b.old && arrived <= accepted {
                return Ok(b.handoff(prepared));
            }
            attempts += 1;
            if attempts == HANDOFF_ATTEMPTS_MAX {
                bail!(
                    "the node wrote {arrived} records while the snapshot was finalized ({:.1} s), \
                     more than a switch carries ({accepted}), {attempts} times",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        if b.last_seq() >= progress.get().seq {
            progress.wait_past(progress.get().counter, Duration::from_millis(200));
        }
    }
}
