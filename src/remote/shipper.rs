//! Shipping the journal to the destinations: one background worker per
//! destination, and the synchronous tier's wait.
//!
//! The queue is the local journal itself: each worker keeps a position
//! (generation, last shipped record), found at start-up from the
//! destination's own listing, and ships everything after it. Nothing is lost
//! while a destination is down for hours: the records stay in the journal, and
//! the worker catches up when it returns, at `upload_bytes_per_s_max`.
//!
//! Order of work for a worker: a generation's base (snapshot) first, then its
//! records in pieces of at most [`PIECE_BYTES_MAX`]; a generation is left for
//! the next only once the writer has moved on and every record of it has
//! been shipped. Old generations are deleted remotely only after a newer
//! generation's base is acknowledged, keeping `remote_retain_generations`.
//!
//! The hook's only contact with this module is [`Replicator::after_append`],
//! which returns at once unless the change belongs to the synchronous tier.

use super::crypto::{self, Key};
use super::objects;
use super::settings::{needs_sync, DestinationConfig, OnTimeout, RemoteSync};
use super::store::Store;
use super::tail::Tail;
use crate::clock::now_unix_ms;
use crate::journal::{layout, Progress};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// A records object holds at most this many bytes of records (before
/// compression), so a catch-up after an outage goes out in bounded pieces.
pub const PIECE_BYTES_MAX: usize = 8 << 20;
/// Retry delays after a failure grow to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the plugin's log lines go: (level, message).
pub type Logger = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Settings of the remote tier, from the configuration.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub destinations: Vec<DestinationConfig>,
    pub sync: RemoteSync,
    pub quorum: usize,
    pub sync_timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Upper bound on how long a change waits in the background queue while
    /// the destination is up (the worker batches for a quarter of it).
    pub lag: Duration,
    pub drain: Duration,
    pub retain_generations: u64,
}

/// One destination's state, as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DestinationStatus {
    pub name: String,
    /// The destination's position is known (its listing was read).
    pub connected: bool,
    pub acked_generation: u64,
    /// Last record of `acked_generation` the destination holds (0: the base only).
    pub acked_seq: u64,
    /// The data_version of that record (or of the base).
    pub acked_data_version: Option<u32>,
    pub acked_time_unix_ms: u64,
    /// Records in the local journal not yet at the destination (of the
    /// current generation, plus any of an older one when known).
    pub queue_records: u64,
    /// How far behind, in journal time: the newest record's time minus the
    /// newest shipped record's time; 0 when caught up.
    pub lag_ms: u64,
    pub objects_shipped: u64,
    pub bytes_shipped: u64,
    pub last_error: Option<String>,
    pub last_error_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RemoteStatus {
    pub sync: String,
    /// The synchronous tier timed out and fell back to background shipping.
    pub degraded: bool,
    pub degraded_reason: Option<String>,
    pub destinations: Vec<DestinationStatus>,
}

struct Board {
    stop: bool,
    /// The newest (generation, seq) a synchronous change waits for.
    want: (u64, u64),
    dests: Vec<DestinationStatus>,
    /// Journal time of each destination's last acknowledged record.
    degraded: Option<String>,
}

struct Shared {
    board: Mutex<Board>,
    cv: Condvar,
    progress: Arc<Progress>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The remote tier of a running plugin.
pub struct Replicator {
    shared: Arc<Shared>,
    opts: RemoteOptions,
    log: Logger,
}

impl Replicator {
    /// Opens every destination (no network yet) and starts the workers.
    pub fn start(
        opts: RemoteOptions,
        key: Key,
        journal: PathBuf,
        progress: Arc<Progress>,
        log: Logger,
    ) -> Result<Replicator> {
        let mut stores = vec![];
        for d in &opts.destinations {
            stores.push(super::open_store(d).with_context(|| format!("destination {}", d.display_name()))?);
        }
        if opts.sync != RemoteSync::None && (opts.quorum == 0 || opts.quorum > stores.len()) {
            bail!("remote_quorum is {} but {} destination(s) are configured", opts.quorum, stores.len());
        }
        let shared = Arc::new(Shared {
            board: Mutex::new(Board {
                stop: false,
                want: (0, 0),
                dests: opts
                    .destinations
                    .iter()
                    .map(|d| DestinationStatus { name: d.display_name(), ..Default::default() })
                    .collect(),
                degraded: None,
            }),
            cv: Condvar::new(),
            progress,
        });
        for (i, (store, d)) in stores.into_iter().zip(&opts.destinations).enumerate() {
            let w = Worker {
                index: i,
                store,
                key: key.clone(),
                shared: shared.clone(),
                journal: journal.clone(),
                log: log.clone(),
                batch: opts.lag / 4,
                rate_bytes_per_s: d.upload_bytes_per_s_max.max(1),
                retain: opts.retain_generations.max(1),
                pos: None,
                pending: None,
            };
            thread::Builder::new()
                .name(format!("remote-{i}"))
                .spawn(move || w.run())
                .context("cannot start a destination worker")?;
        }
        log(
            "info",
            &format!("replicating to {} destination(s), synchronous tier: {:?}", opts.destinations.len(), opts.sync),
        );
        Ok(Replicator { shared, opts, log })
    }

    fn quorum_has(&self, b: &Board, at: (u64, u64)) -> bool {
        b.dests.iter().filter(|d| (d.acked_generation, d.acked_seq) >= at).count() >= self.opts.quorum
    }

    /// Called by the hook after record `seq` of `generation` is durable in the
    /// local journal. Returns at once unless the synchronous tier covers these
    /// statements; then waits for a quorum, and on timeout applies the policy:
    /// `Err` means refuse the hook.
    pub fn after_append<S: AsRef<str>>(&self, generation: u64, seq: u64, statements: &[S]) -> Result<(), String> {
        if !needs_sync(self.opts.sync, statements) {
            return Ok(());
        }
        let target = (generation, seq);
        let mut b = self.shared.lock();
        if b.degraded.is_some() {
            // Back to synchronous once a quorum holds everything before this change.
            if self.quorum_has(&b, (generation, seq - 1)) {
                b.degraded = None;
                (self.log)("warn", "remote destinations caught up: the synchronous tier is active again");
            } else {
                return Ok(());
            }
        }
        if b.want < target {
            b.want = target;
        }
        self.shared.cv.notify_all();
        let deadline = Instant::now() + self.opts.sync_timeout;
        while !self.quorum_has(&b, target) {
            let now = Instant::now();
            if now >= deadline {
                let errors: Vec<String> = b
                    .dests
                    .iter()
                    .map(|d| format!("{}: {}", d.name, d.last_error.as_deref().unwrap_or("no answer yet")))
                    .collect();
                let why = format!(
                    "no quorum of {} destination(s) acknowledged generation {generation} record {seq} within {} ms ({})",
                    self.opts.quorum,
                    self.opts.sync_timeout.as_millis(),
                    errors.join("; ")
                );
                return match self.opts.on_timeout {
                    OnTimeout::Halt => Err(format!("{why}; remote_sync_on_timeout = \"halt\": stopping lightningd")),
                    OnTimeout::Degrade => {
                        (self.log)(
                            "error",
                            &format!(
                                "SYNCHRONOUS REPLICATION DEGRADED: {why}. Channel-state changes now leave the box in \
                                 the background only, until the destinations catch up"
                            ),
                        );
                        b.degraded = Some(why);
                        Ok(())
                    }
                };
            }
            b = self.shared.cv.wait_timeout(b, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(())
    }

    /// Waits, at most `self.opts.drain`, until every destination holds the
    /// whole journal; then stops the workers. For a clean shutdown.
    pub fn drain_and_stop(&self) {
        let p = self.shared.progress.get();
        let target = (p.generation, p.seq);
        let deadline = Instant::now() + self.opts.drain;
        let mut b = self.shared.lock();
        b.want = b.want.max(target);
        self.shared.cv.notify_all();
        while b.dests.iter().any(|d| (d.acked_generation, d.acked_seq) < target) {
            let now = Instant::now();
            if now >= deadline {
                let behind: Vec<&str> = b
                    .dests
                    .iter()
                    .filter(|d| (d.acked_generation, d.acked_seq) < target)
                    .map(|d| d.name.as_str())
                    .collect();
                (self.log)(
                    "warn",
                    &format!(
                        "shutdown: {} destination(s) not caught up after {} ms ({}); they catch up at the next start",
                        behind.len(),
                        self.opts.drain.as_millis(),
                        behind.join(", ")
                    ),
                );
                break;
            }
            b = self.shared.cv.wait_timeout(b, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        b.stop = true;
        self.shared.cv.notify_all();
    }

    pub fn status(&self) -> RemoteStatus {
        status_of(&self.shared, self.opts.sync)
    }

    /// A handle for the status board that does not keep the replicator.
    pub fn status_source(&self) -> StatusSource {
        StatusSource { shared: self.shared.clone(), sync: self.opts.sync }
    }
}

/// Reads the remote tier's status from another thread.
#[derive(Clone)]
pub struct StatusSource {
    shared: Arc<Shared>,
    sync: RemoteSync,
}

impl StatusSource {
    pub fn status(&self) -> RemoteStatus {
        status_of(&self.shared, self.sync)
    }
}

fn status_of(shared: &Shared, sync: RemoteSync) -> RemoteStatus {
    let p = shared.progress.get();
    let b = shared.lock();
    let mut dests = b.dests.clone();
    for d in &mut dests {
        let behind = (d.acked_generation, d.acked_seq) < (p.generation, p.seq);
        d.queue_records = match (behind, d.acked_generation == p.generation) {
            (false, _) => 0,
            (true, true) => p.seq - d.acked_seq,
            (true, false) => p.seq,
        };
        d.lag_ms = if behind { p.last_write_unix_ms.saturating_sub(d.acked_time_unix_ms) } else { 0 };
    }
    RemoteStatus {
        sync: format!("{sync:?}"),
        degraded: b.degraded.is_some(),
        degraded_reason: b.degraded.clone(),
        destinations: dests,
    }
}

/// Where a worker is.
struct Pos {
    generation: u64,
    base_shipped: bool,
    /// Last record shipped of `generation`.
    seq: u64,
    tail: Option<Tail>,
}

/// An object that was sent and not acknowledged: sent again, unchanged, so a
/// retry never produces a second, overlapping name.
struct Pending {
    name: String,
    sealed: Vec<u8>,
    ack: Ack,
    attempts: u32,
}

#[derive(Clone, Copy)]
struct Ack {
    generation: u64,
    seq: u64,
    data_version: u32,
    time_unix_ms: u64,
    next_generation: bool,
}

struct Worker {
    index: usize,
    store: Box<dyn Store>,
    key: Key,
    shared: Arc<Shared>,
    journal: PathBuf,
    log: Logger,
    batch: Duration,
    rate_bytes_per_s: u64,
    retain: u64,
    pos: Option<Pos>,
    pending: Option<Pending>,
}

enum Step {
    Shipped { bytes: usize },
    Idle,
}

impl Worker {
    fn name(&self) -> String {
        self.shared.lock().dests[self.index].name.clone()
    }

    fn stopping(&self) -> bool {
        self.shared.lock().stop
    }

    fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        let mut failing = false;
        let mut seen = 0;
        loop {
            if self.stopping() {
                return;
            }
            let started = Instant::now();
            match self.step() {
                Ok(Step::Shipped { bytes }) => {
                    if failing {
                        (self.log)("info", &format!("destination {} is reachable again", self.name()));
                        failing = false;
                    }
                    backoff = Duration::from_millis(250);
                    // Bounded rate for the background; a waiting synchronous
                    // change is never held back by it.
                    let budget = Duration::from_secs_f64(bytes as f64 / self.rate_bytes_per_s as f64);
                    self.pause(budget.saturating_sub(started.elapsed()), true);
                }
                Ok(Step::Idle) => {
                    seen = self.shared.progress.wait_past(seen, Duration::from_secs(1)).counter;
                    // Gather a batch unless a synchronous change waits.
                    self.pause(self.batch, true);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let changed = {
                        let mut b = self.shared.lock();
                        let d = &mut b.dests[self.index];
                        let changed = d.last_error.as_deref() != Some(msg.as_str());
                        d.last_error = Some(msg.clone());
                        d.last_error_unix_ms = now_unix_ms();
                        changed
                    };
                    if changed || !failing {
                        (self.log)("warn", &format!("destination {}: {msg}; retrying", self.name()));
                    }
                    failing = true;
                    self.pause(backoff, false);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Sleeps up to `d`; with `for_sync`, wakes early when a synchronous
    /// change waits for more than this destination holds. Always wakes on stop.
    fn pause(&self, d: Duration, for_sync: bool) {
        if d.is_zero() {
            return;
        }
        let b = self.shared.lock();
        let i = self.index;
        let _ = self.shared.cv.wait_timeout_while(b, d, |b| {
            let sync_waiting = for_sync && b.want > (b.dests[i].acked_generation, b.dests[i].acked_seq);
            !(b.stop || sync_waiting)
        });
    }

    fn acknowledge(&self, ack: Ack, bytes: usize) {
        let mut b = self.shared.lock();
        let d = &mut b.dests[self.index];
        debug_assert!((ack.generation, ack.seq) >= (d.acked_generation, d.acked_seq), "acks only move forward");
        d.acked_generation = ack.generation;
        d.acked_seq = ack.seq;
        d.acked_data_version = Some(ack.data_version);
        d.acked_time_unix_ms = ack.time_unix_ms;
        d.objects_shipped += 1;
        d.bytes_shipped += bytes as u64;
        d.last_error = None;
        self.shared.cv.notify_all();
    }

    fn step(&mut self) -> Result<Step> {
        if let Some(p) = self.pending.take() {
            return self.send(p);
        }
        let progress = self.shared.progress.get();
        if progress.generation == 0 {
            return Ok(Step::Idle);
        }
        if self.pos.is_none() {
            self.pos = Some(self.find_position(progress.generation)?);
        }
        let pos = self.pos.as_mut().expect("set above");
        if !pos.base_shipped {
            let pending = self.prepare_base()?;
            return self.send(pending);
        }
        let finished = pos.generation < progress.generation;
        let upto = if finished { u64::MAX } else { progress.seq };
        if pos.seq >= upto {
            return Ok(Step::Idle);
        }
        if pos.tail.is_none() {
            pos.tail = Some(Tail::open(&self.journal, pos.generation, pos.seq)?);
        }
        let tail = pos.tail.as_mut().expect("opened above");
        let mut buf = Vec::new();
        let (first, mut last) = (pos.seq + 1, None);
        while tail.next_seq() <= upto && buf.len() < PIECE_BYTES_MAX {
            match tail.next_record(&mut buf)? {
                Some(h) => last = Some(h),
                None => break,
            }
        }
        let Some(last) = last else {
            if finished {
                // Every record of the older generation is out: on to the next.
                let next = layout::list_generations(&self.journal)?
                    .into_iter()
                    .find(|&g| g > pos.generation)
                    .unwrap_or(progress.generation);
                *pos = Pos { generation: next, base_shipped: false, seq: 0, tail: None };
                return Ok(Step::Shipped { bytes: 0 });
            }
            bail!("record {} of generation {} is durable but could not be read back", first, pos.generation);
        };
        let name = objects::records_name(pos.generation, first, last.seq);
        let plain = objects::encode_records(pos.generation, first, last.seq, &buf)?;
        let sealed = crypto::seal(&self.key, &name, &plain)?;
        let ack = Ack {
            generation: pos.generation,
            seq: last.seq,
            data_version: last.data_version,
            time_unix_ms: last.time_unix_ms,
            next_generation: false,
        };
        self.send(Pending { name, sealed, ack, attempts: 0 })
    }

    fn prepare_base(&mut self) -> Result<Pending> {
        let pos = self.pos.as_ref().expect("position known");
        let g = crate::journal::reader::Generation::open(&self.journal, pos.generation)
            .with_context(|| format!("cannot open local generation {}", pos.generation))?;
        let snapshot =
            std::fs::read(g.snapshot_path()).with_context(|| format!("cannot read {}", g.snapshot_path().display()))?;
        if (snapshot.len() as u64, crc32c::crc32c(&snapshot)) != (g.header.snapshot_bytes, g.header.snapshot_crc32c) {
            bail!("the local snapshot of generation {} is damaged: not shipping it", g.number);
        }
        let name = objects::base_name(g.number);
        let plain = objects::encode_base(&g.header, &snapshot)?;
        let sealed = crypto::seal(&self.key, &name, &plain)?;
        let ack = Ack {
            generation: g.number,
            seq: 0,
            data_version: g.header.base_version,
            time_unix_ms: g.header.created_unix_ms,
            next_generation: true,
        };
        Ok(Pending { name, sealed, ack, attempts: 0 })
    }

    /// Puts an object; on a retry, first checks whether the earlier attempt
    /// landed (then it is acknowledged, never written twice).
    fn send(&mut self, mut p: Pending) -> Result<Step> {
        let bytes = p.sealed.len();
        let result = (|| -> Result<()> {
            if p.attempts > 0 {
                if let Some(existing) = self.store.get(&p.name)? {
                    if crypto::open(&self.key, &p.name, &existing).is_ok() {
                        return Ok(());
                    }
                    // Our own interrupted, partial write (SFTP has no atomic put).
                    self.store.delete(&p.name)?;
                }
            }
            self.store.put(&p.name, &p.sealed)
        })();
        if let Err(e) = result {
            p.attempts += 1;
            let name = p.name.clone();
            self.pending = Some(p);
            return Err(e.context(format!("cannot upload {name}")));
        }
        let pos = self.pos.as_mut().expect("position known");
        if p.ack.next_generation {
            pos.base_shipped = true;
            pos.seq = 0;
        } else {
            pos.seq = p.ack.seq;
        }
        self.acknowledge(p.ack, bytes);
        if p.ack.next_generation {
            if let Err(e) = self.retention(p.ack.generation) {
                (self.log)("warn", &format!("destination {}: cannot delete old generations: {e:#}", self.name()));
            }
        }
        Ok(Step::Shipped { bytes })
    }

    /// Where to resume: from the destination's listing.
    fn find_position(&self, current: u64) -> Result<Pos> {
        let remote: Vec<u64> = self.store.list("")?.iter().filter_map(|e| objects::parse_generation_dir(e)).collect();
        let local = layout::list_generations(&self.journal)?;
        self.shared.lock().dests[self.index].connected = true;
        let Some(&g) = remote.iter().rev().find(|g| **g <= current && local.contains(g)) else {
            return Ok(Pos { generation: current, base_shipped: false, seq: 0, tail: None });
        };
        let mut base = false;
        let mut ranges = vec![];
        for e in self.store.list(&objects::generation_dir(g))? {
            match objects::parse_entry(&e) {
                objects::Entry::Base => base = true,
                objects::Entry::Records { first, last } => ranges.push((first, last)),
                objects::Entry::Unknown(_) => {}
            }
        }
        ranges.sort_unstable();
        let mut seq = 0;
        for (first, last) in ranges {
            if first > seq + 1 {
                break;
            }
            seq = seq.max(last);
        }
        if base {
            // The same generation number from another journal (one moved
            // aside and started anew, or another node on the same prefix)
            // must never be continued: compare the bases' headers.
            let gen = crate::journal::reader::Generation::open(&self.journal, g)?;
            let name = objects::base_name(g);
            let sealed = self.store.get(&name)?.ok_or_else(|| anyhow::anyhow!("{name} vanished while listed"))?;
            let plain = crypto::open(&self.key, &name, &sealed).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            if objects::base_header(g, &plain)? != gen.header {
                bail!(
                    "the destination's generation {g} is not this journal's generation {g} (another node, or a \
                     journal that was started anew, uses the same location): give this node its own prefix"
                );
            }
            // The base's acknowledgement, then the records found.
            let mut b = self.shared.lock();
            let d = &mut b.dests[self.index];
            d.acked_generation = g;
            d.acked_seq = seq;
            d.acked_data_version = Some(gen.header.base_version);
            d.acked_time_unix_ms = gen.header.created_unix_ms;
            self.shared.cv.notify_all();
        }
        (self.log)(
            "info",
            &format!(
                "destination {}: holds generation {g} up to record {seq}{}",
                self.name(),
                if base { "" } else { " (no base yet)" }
            ),
        );
        Ok(Pos { generation: g, base_shipped: base, seq, tail: None })
    }

    /// Deletes generations older than the `retain` newest whose bases are out.
    fn retention(&self, newest: u64) -> Result<()> {
        let remote: Vec<u64> = self
            .store
            .list("")?
            .iter()
            .filter_map(|e| objects::parse_generation_dir(e))
            .filter(|&g| g < newest)
            .collect();
        let keep_older = (self.retain - 1) as usize;
        if remote.len() <= keep_older {
            return Ok(());
        }
        for &g in &remote[..remote.len() - keep_older] {
            let dir = objects::generation_dir(g);
            let mut entries = self.store.list(&dir)?;
            // Newest records first, the base last: a half-deleted generation
            // still reads as a shorter one.
            entries.sort();
            entries.reverse();
            entries.retain(|e| e != "base");
            entries.push("base".into());
            for e in entries {
                self.store.delete(&format!("{dir}{e}"))?;
            }
            self.store.delete(&dir)?;
            (self.log)("info", &format!("destination {}: deleted generation {g} (superseded)", self.name()));
        }
        Ok(())
    }
}

impl Replicator {
    /// The key the configuration names.
    pub fn load_key(key_file: Option<&std::path::Path>, hsm_secret: Option<&std::path::Path>) -> Result<Key> {
        match (key_file, hsm_secret) {
            (Some(k), None) => Key::load_file(k),
            (None, Some(h)) => Key::load_hsm_secret(h),
            (Some(_), Some(_)) => bail!("set either `key_file` or `hsm_secret`, not both"),
            (None, None) => bail!(
                "destinations are configured but no key: set `key_file` (made by `cln-replica keygen --out FILE`) or \
                 `hsm_secret = \"hsm_secret\"`: nothing leaves the box unencrypted"
            ),
        }
    }
}
