//! Compaction: a new generation rolled up from the current one, and retention.
//!
//! The new generation's snapshot is the current generation's snapshot with the
//! generation's records replayed onto it ([`crate::replay`], exactly as restore
//! replays), never a copy of lightningd's live file: the history stays one
//! history, and compaction needs nothing from lightningd.
//!
//! The steps, each with a crash point ([`crate::crashpoint`]):
//!
//! 1. [`Builder::start`]: `gen-N.compact.tmp/` is created on the journal's
//!    device, the old snapshot copied into it (checksum checked), and the new
//!    segment 1 created full-size and zero-filled (`compact-snapshot-copied`);
//! 2. [`Builder::catch_up`], repeatedly: the old generation's records are read
//!    up to a durable sequence number and the committed ones applied;
//! 3. [`Builder::finalize`]: the snapshot is flushed, its size and checksum go
//!    into segment 1's header, flushed (`compact-prepared`). The snapshot is at
//!    the *confirmed* version V: a pending transaction (acknowledged, not yet
//!    known committed) is not in it;
//! 4. [`crate::journal::Journal::adopt_generation`] (under the journal's lock,
//!    in the plugin at the start of a hook): the records after V — the pending
//!    one and whatever arrived since step 3 — are copied verbatim into segment
//!    1 and flushed (`compact-records-carried`), then the directory is renamed
//!    to `gen-N` and the journal directory flushed (`compact-renamed`);
//! 5. retention removes the generations beyond `keep_generations`, each
//!    renamed to `gen-M.retired.tmp` before it is deleted (`retention-renamed`).
//!
//! Before step 4's rename nothing visible changed; after it, the new
//! generation holds every acknowledged record. Leftover `.tmp` directories are
//! ignored by readers and removed by the writer's next open.
//!
//! In the plugin, steps 1-3 run in a background thread ([`Compactor`]) that
//! follows the journal through [`Progress`] and hands over only when it is
//! within a few records of the tip; the hook thread then only copies those few
//! records (one write and flush each) and renames a directory. The snapshot's
//! checksum, its flush and the segment's zero-fill all happen off the hook.

use crate::clock::now_unix_ms;
use crate::config::Config;
use crate::crashpoint::crash_point;
use crate::device::Device;
use crate::files::file_crc32c;
use crate::journal::format::{BaseKind, RecordKind, SegmentHeader};
use crate::journal::reader::{self, Generation, Record, RecordLoc};
use crate::journal::writer::PreparedGeneration;
use crate::journal::{layout, Bound, Cursor, Journal, JournalOptions, Progress, Resolved};
use crate::journal::{retention, segment, WriteError};
use crate::replay;
use anyhow::{bail, Context, Result};
use rusqlite::Connection;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The background builder hands over once it is this close to the tip...
const CLOSE_ENOUGH_RECORDS: u64 = 4;
/// ...and the hand-over is used only if, once the snapshot is final, no more
/// than this many records came in meanwhile (otherwise it catches up again).
const HANDOFF_MAX_RECORDS: u64 = 32;

/// Builds the snapshot of the next generation from the current one.
pub struct Builder {
    journal: PathBuf,
    device: Arc<dyn Device>,
    direct: bool,
    old: u64,
    number: u64,
    dir: PathBuf,
    conn: Connection,
    /// Where the catch-up stands in the old generation.
    cursor: Cursor,
    block_bytes: u32,
    segment_bytes: u64,
    filter: crate::filter::Filter,
    /// Records applied to the snapshot so far.
    pub applied: u64,
    /// Called after each record read (offline: the progress bar).
    pub on_record: Option<Box<dyn FnMut(u64, RecordLoc) + Send>>,
}

/// What the hook thread needs to switch to a compacted generation.
#[derive(Debug)]
pub struct Handoff {
    pub old_generation: u64,
    pub prepared: PreparedGeneration,
    /// The old generation's records from here on are carried, not applied.
    pub next: RecordLoc,
    pub next_seq: u64,
    /// The pending transaction at `next`'s left (carried first).
    pub pending: Option<Record>,
}

impl Builder {
    /// Step 1: the working directory, the old snapshot, an empty segment 1.
    pub fn start(
        journal: &Path,
        device: Arc<dyn Device>,
        opts: &JournalOptions,
        old: &Generation,
        number: u64,
    ) -> Result<Builder> {
        let dir = layout::generation_compact_dir(journal, number);
        if dir.exists() {
            device.remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        device.create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let snap = dir.join(layout::SNAPSHOT_FILE);
        replay::copy_snapshot_paced(old, &snap, Some(8 << 20))?;
        crash_point("compact-snapshot-copied");
        let block_bytes = old.block_bytes();
        let segment_bytes = opts.segment_bytes.next_multiple_of(block_bytes as u64);
        segment::create_zeroed_segment(
            device.as_ref(),
            &layout::segment_path(&dir, 1),
            segment_bytes,
            block_bytes,
            opts.direct_io,
        )?;
        let conn = replay::open_for_replay(&snap)?;
        Ok(Builder {
            journal: journal.to_path_buf(),
            device,
            direct: opts.direct_io,
            old: old.number,
            number,
            dir,
            conn,
            cursor: Cursor::start(old),
            block_bytes,
            segment_bytes,
            filter: old.header.filter,
            applied: 0,
            on_record: None,
        })
    }

    /// Sequence number of the last record read.
    pub fn last_seq(&self) -> u64 {
        self.cursor.last_seq()
    }

    /// Change records read so far.
    pub fn changes(&self) -> u64 {
        self.cursor.changes_read()
    }

    /// Step 2: reads the old generation's records up to sequence number
    /// `limit` (durable records only: a writer may be appending after it), or
    /// to the end when `None` (nobody writes: a torn tail is told apart from
    /// damage as restore does), and applies the committed ones. Returns how
    /// many records were read.
    pub fn catch_up(&mut self, limit: Option<u64>) -> Result<u64> {
        if limit.is_some_and(|l| l <= self.cursor.last_seq()) {
            return Ok(0);
        }
        let g = Generation::open(&self.journal, self.old)?;
        let before = self.cursor.records_read();
        let bound = limit.map_or(Bound::End, |seq| Bound::Durable { seq });
        let mut records = self.cursor.read(&g, bound)?;
        for item in records.by_ref() {
            let Resolved::Applied { kind, record } = item? else { continue };
            replay::apply(&self.conn, &record, kind)?;
            self.applied += 1;
            if let Some(f) = self.on_record.as_mut() {
                f(record.header.seq, record.loc);
            }
        }
        drop(records);
        Ok(self.cursor.records_read() - before)
    }

    /// Step 3: the snapshot, final at the confirmed version, flushed, and
    /// described in segment 1's header. The builder can still catch up
    /// afterwards (and be finalized again).
    pub fn finalize(&mut self) -> Result<PreparedGeneration> {
        if self.cursor.changes_read() == 0 {
            bail!("nothing to compact: generation {} holds no change after its snapshot", self.old);
        }
        let version = self.cursor.confirmed_version();
        // Pair assertion: the database holds the version the records lead to.
        let got = crate::snapshot::data_version(&self.conn)?;
        if !(got == Some(version) || (got.is_none() && version == 0)) {
            bail!("the compacted snapshot is at data_version {got:?}, the records lead to {version}");
        }
        let snap = self.dir.join(layout::SNAPSHOT_FILE);
        let seg = layout::segment_path(&self.dir, 1);
        // A pending record larger than half the segment gets a larger segment.
        let pending_bytes = self.cursor.pending().map_or(0, |r| r.header.disk_bytes(self.block_bytes));
        if pending_bytes > self.segment_bytes / 2 {
            self.segment_bytes = (self.segment_bytes + pending_bytes + self.block_bytes as u64)
                .next_multiple_of(self.block_bytes as u64);
            segment::create_zeroed_segment(
                self.device.as_ref(),
                &seg,
                self.segment_bytes,
                self.block_bytes,
                self.direct,
            )?;
        }
        self.device.sync_file(&snap).with_context(|| format!("cannot flush {}", snap.display()))?;
        let (snapshot_bytes, snapshot_crc32c) = file_crc32c(&snap)?;
        let header = SegmentHeader {
            block_bytes: self.block_bytes,
            generation: self.number,
            segment: 1,
            base_kind: BaseKind::Compacted,
            base_version: version,
            snapshot_bytes,
            snapshot_crc32c,
            created_unix_ms: now_unix_ms(),
            segment_bytes: self.segment_bytes,
            // A roll-up of the old generation: the same records, so the same filter.
            filter: self.filter,
        };
        segment::write_segment_header(self.device.as_ref(), &seg, &header, self.direct)?;
        // The directory's entries now, off the hook: the switch only renames it.
        self.device.sync_dir(&self.dir).with_context(|| format!("cannot flush {}", self.dir.display()))?;
        crash_point("compact-prepared");
        Ok(PreparedGeneration { dir: self.dir.clone(), header })
    }

    /// The hand-over for a finalized builder.
    pub fn handoff(self, prepared: PreparedGeneration) -> Handoff {
        let (next, next_seq) = self.cursor.next();
        Handoff { old_generation: self.old, prepared, next, next_seq, pending: self.cursor.finish() }
    }
}

/// The records to carry into the new generation: the pending transaction and
/// every change record after the hand-over point, up to sequence number
/// `limit` (the writer's last, when it is running).
pub fn carried_records(journal: &Path, h: &Handoff, limit: Option<u64>) -> Result<Vec<Record>> {
    let mut out: Vec<Record> = h.pending.iter().cloned().collect();
    let g = Generation::open(journal, h.old_generation)?;
    let mut scanner = g.records_after(h.next, h.next_seq)?.until_seq(limit);
    for rec in scanner.by_ref() {
        let rec = rec?;
        if rec.header.kind == RecordKind::Change {
            out.push(rec);
        }
    }
    let next_seq = scanner.next_seq();
    if let Some(l) = limit {
        if next_seq <= l {
            bail!("generation {} ends at record {}, the writer is at {l}", h.old_generation, next_seq - 1);
        }
    }
    Ok(out)
}

/// Removes a prepared generation that will not be adopted.
pub fn discard(device: &dyn Device, prepared: &PreparedGeneration) {
    let _ = device.remove_dir_all(&prepared.dir);
}

#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    pub old_generation: u64,
    pub generation: u64,
    pub base_version: u32,
    pub records_applied: u64,
    pub records_carried: usize,
    pub snapshot_bytes: u64,
    pub removed_generations: Vec<u64>,
    pub seconds: f64,
}

/// Progress of an offline compaction (for a progress bar).
pub type ProgressFn = Box<dyn FnMut(&crate::restore::ReplayProgress) + Send>;

/// `cln-replica compact` with the plugin stopped: takes the journal's lock,
/// compacts the newest generation, applies retention.
pub fn compact_offline(
    config: &Config,
    device: Arc<dyn Device>,
    progress: Option<ProgressFn>,
) -> Result<CompactReport> {
    let started = std::time::Instant::now();
    let mut journal = match Journal::open(&config.journal, device.clone(), config.journal_options()) {
        Ok(j) => j,
        Err(WriteError::Locked { lock, .. }) => bail!(
            "the plugin is running (it holds the journal's lock {}): ask it to compact with \
             `lightning-cli replica-compact` instead",
            lock.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let generations = reader::generations(&config.journal)?;
    let Some(old) = generations.last() else { bail!("the journal holds no generation: nothing to compact") };
    assert_eq!(old.number, journal.generation(), "the writer resumes the newest generation");
    let mut b = Builder::start(
        &config.journal,
        device.clone(),
        &config.journal_options(),
        old,
        journal.next_generation_number(),
    )?;
    if let Some(mut f) = progress {
        let (total_bytes, starts) = crate::restore::generation_extent(old);
        b.on_record = Some(Box::new(move |records, loc: RecordLoc| {
            let done_bytes = starts.get(loc.segment as usize - 1).copied().unwrap_or(0) + loc.offset;
            f(&crate::restore::ReplayProgress { records, done_bytes, total_bytes });
        }));
    }
    let result = (|| -> Result<CompactReport> {
        b.catch_up(None)?;
        let prepared = b.finalize()?;
        let applied = b.applied;
        let h = b.handoff(prepared);
        let carried = carried_records(&config.journal, &h, None)?;
        let was_sealed = journal.is_sealed();
        let generation = journal.adopt_generation(&h.prepared, &carried)?;
        if was_sealed {
            journal.seal()?;
        }
        let removed =
            retention::retire_generations(device.as_ref(), &config.journal, config.keep_generations as usize)?;
        Ok(CompactReport {
            old_generation: h.old_generation,
            generation,
            base_version: h.prepared.header.base_version,
            records_applied: applied,
            records_carried: carried.len(),
            snapshot_bytes: h.prepared.header.snapshot_bytes,
            removed_generations: removed,
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        let _ =
            device.remove_dir_all(&layout::generation_compact_dir(&config.journal, journal.next_generation_number()));
    }
    result
}

/// The plugin's background compactor: one job at a time.
pub struct Compactor {
    shared: Arc<Shared>,
    journal: PathBuf,
    device: Arc<dyn Device>,
    opts: JournalOptions,
    progress: Arc<Progress>,
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

/// What `replica-status` shows about compaction.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompactionStatus {
    /// "idle", "running" or "ready" (waiting for the next hook to switch).
    pub state: String,
    pub started_unix_ms: Option<u64>,
    pub last_result: Option<String>,
    pub last_failed_unix_ms: Option<u64>,
    pub compactions: u64,
    /// How long the last switch took on the hook thread (step 4), in µs.
    pub last_switch_us: Option<u64>,
}

impl Compactor {
    pub fn new(journal: PathBuf, device: Arc<dyn Device>, opts: JournalOptions, progress: Arc<Progress>) -> Compactor {
        Compactor { shared: Arc::default(), journal, device, opts, progress }
    }

    /// Starts a job unless one is running.
    pub fn request(&self, status: &Arc<Mutex<CompactionStatus>>) -> Result<(), String> {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*s, JobState::Idle) {
            return Err("a compaction is already running".into());
        }
        let started_unix_ms = now_unix_ms();
        *s = JobState::Running;
        drop(s);
        {
            let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
            st.state = "running".into();
            st.started_unix_ms = Some(started_unix_ms);
        }
        let shared = self.shared.clone();
        let (journal, device, opts, progress) =
            (self.journal.clone(), self.device.clone(), self.opts.clone(), self.progress.clone());
        let status = status.clone();
        std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                background_priority();
                let result = job(&journal, device.clone(), &opts, &progress, &shared.stop);
                let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = status.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(h) => {
                        *s = JobState::Ready(Box::new(h));
                        st.state = "ready".into();
                        shared.ready.store(true, Ordering::Release);
                    }
                    Err(e) => {
                        *s = JobState::Idle;
                        st.state = "idle".into();
                        st.last_result = Some(format!("failed: {e:#}"));
                        st.last_failed_unix_ms = Some(now_unix_ms());
                    }
                }
            })
            .map_err(|e| format!("cannot start the compactor thread: {e}"))?;
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

/// Lowers the calling thread's CPU and I/O priority (nice 10, idle I/O class
/// where the I/O scheduler honours it): background work yields to the hook.
pub fn background_priority() {
    // SAFETY: plain syscalls on the calling thread's id; no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid as libc::c_long, IOPRIO_CLASS_IDLE << 13);
    }
}

/// Steps 1-3 in the background, following the writer.
fn job(
    journal: &Path,
    device: Arc<dyn Device>,
    opts: &JournalOptions,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<Handoff> {
    let p = progress.get();
    if p.generation == 0 {
        bail!("the journal holds no generation yet");
    }
    let old = Generation::open(journal, p.generation)?;
    let dir = layout::generation_compact_dir(journal, p.generation + 1);
    let result = follow(Builder::start(journal, device.clone(), opts, &old, p.generation + 1), progress, stop);
    if result.is_err() {
        let _ = device.remove_dir_all(&dir);
    }
    result
}

fn follow(b: Result<Builder>, progress: &Progress, stop: &AtomicBool) -> Result<Handoff> {
    let mut b = b?;
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
        if p.seq.saturating_sub(b.last_seq()) <= CLOSE_ENOUGH_RECORDS {
            let prepared = b.finalize()?;
            let p = progress.get();
            if p.generation == b.old && p.seq.saturating_sub(b.last_seq()) <= HANDOFF_MAX_RECORDS {
                return Ok(b.handoff(prepared));
            }
        }
        if b.last_seq() >= progress.get().seq {
            progress.wait_past(progress.get().counter, Duration::from_millis(200));
        }
    }
}
