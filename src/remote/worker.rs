//! One destination's background worker: follows the journal and ships it.
//!
//! The queue is the local journal itself: the worker keeps a position
//! (generation, last shipped record), found at start-up from the
//! destination's authenticated tip ([`super::position`]), and ships
//! everything after it. Nothing is lost while a destination is down for
//! hours: the records stay in the journal, and the worker catches up when it
//! returns, at `upload_bytes_per_s_max`.
//!
//! Order of work: a generation's base (streamed from the snapshot) first,
//! then its records in pieces of at most [`objects::PIECE_BYTES_MAX`]; a
//! generation is left for the next only once the writer has moved on and
//! every record of it has been shipped. After each shipment the tip is
//! replaced (unless a synchronous change waits: its object goes first).
//!
//! What counts as acknowledged ([`Reach::at_least`]): a compacted
//! generation's base is older than the end of the generation it continues, so
//! the acknowledgement (status, tip, synchronous tier) stays in the older
//! generation until the newer one's carried records bring it level; only then
//! are older generations deleted remotely, keeping `remote_retain_generations`.

use super::board::{Acked, Reach, Shared};
use super::crypto::{Context, Key, SealReader};
use super::objects::{self, Tip};
use super::position::{self, Start};
use super::store::{Store, StoreError};
use super::tail::Tail;
use super::Logger;
use crate::clock::now_unix_ms;
use crate::journal::format::SegmentHeader;
use crate::journal::identity::JournalId;
use crate::journal::layout;
use crate::journal::reader::Generation;
use anyhow::{anyhow, bail, Context as _, Result};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retry delays after a failure grow to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// An idle worker looks at the journal at least this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Where a worker is.
struct Pos {
    generation: u64,
    header: SegmentHeader,
    ctx: Context,
    base_shipped: bool,
    /// Last record shipped of `generation`.
    seq: u64,
    tail: Option<Tail>,
}

/// An object that was sent and not acknowledged: sent again with the same
/// name and plaintext, so a retry never produces a second, overlapping name.
enum Pending {
    Base,
    /// Records `first..=last`; `complete`: the last of them that ends a
    /// change (seq, data_version, time). A piece may end inside a chunked
    /// change: it counts only up to the last change it completes.
    Records {
        name: String,
        plain: Vec<u8>,
        first: u64,
        last: u64,
        complete: Option<(u64, u32, u64)>,
    },
}

pub(super) struct Worker {
    pub index: usize,
    pub store: Box<dyn Store>,
    pub key: Key,
    pub shared: Arc<Shared>,
    pub journal: PathBuf,
    pub journal_id: JournalId,
    pub log: Logger,
    pub batch: Duration,
    pub rate_bytes_per_s: u64,
    pub retain: u64,
    pos: Option<Pos>,
    pending: Option<(Pending, u32)>,
    tip_counter: u64,
}

enum Step {
    Shipped { bytes: u64 },
    Idle,
}

/// Checks the snapshot's size and checksum as it streams: at its end, a
/// mismatch is an error instead of the end, so the sealed object is never
/// finished and the destination never holds a damaged base.
struct Checked<R> {
    inner: R,
    crc: u32,
    bytes: u64,
    want: (u64, u32),
    generation: u64,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && (self.bytes, self.crc) != self.want {
            return Err(std::io::Error::other(format!(
                "the local snapshot of generation {} is damaged: not shipping it",
                self.generation
            )));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        store: Box<dyn Store>,
        key: Key,
        shared: Arc<Shared>,
        journal: PathBuf,
        journal_id: JournalId,
        log: Logger,
        batch: Duration,
        rate_bytes_per_s: u64,
        retain: u64,
    ) -> Worker {
        Worker {
            index,
            store,
            key,
            shared,
            journal,
            journal_id,
            log,
            batch,
            rate_bytes_per_s,
            retain,
            pos: None,
            pending: None,
            tip_counter: 0,
        }
    }

    fn name(&self) -> String {
        self.shared.lock().dests[self.index].status.name.clone()
    }

    pub fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut failing = false;
        let mut seen = 0;
        loop {
            if self.shared.lock().stop {
                return;
            }
            let started = Instant::now();
            match self.step() {
                Ok(Step::Shipped { bytes }) => {
                    if failing {
                        (self.log)("info", &format!("destination {} is reachable again", self.name()));
                        failing = false;
                    }
                    backoff = BACKOFF_MIN;
                    // Bounded rate for the background; a waiting synchronous
                    // change is never held back by it.
                    let budget = Duration::from_secs_f64(bytes as f64 / self.rate_bytes_per_s as f64);
                    self.pause(budget.saturating_sub(started.elapsed()), true);
                }
                Ok(Step::Idle) => {
                    seen = self.shared.progress.wait_past(seen, IDLE_POLL).counter;
                    self.note_oldest_missing();
                    // Gather a batch unless a synchronous change waits.
                    self.pause(self.batch, true);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let changed = {
                        let mut b = self.shared.lock();
                        let d = &mut b.dests[self.index].status;
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
            let sync_waiting = for_sync && b.dests[i].written.is_none_or(|w| b.want > w);
            let want_set = b.want > (0, 0);
            !(b.stop || (sync_waiting && want_set))
        });
    }

    fn sync_waiting(&self) -> bool {
        let b = self.shared.lock();
        b.want > (0, 0) && b.dests[self.index].written.is_none_or(|w| b.want > w)
    }

    fn step(&mut self) -> Result<Step> {
        let progress = self.shared.progress.get();
        if let Some(pos) = &self.pos {
            if pos.generation < progress.generation {
                let local = layout::list_generations(&self.journal)?;
                if !local.contains(&pos.generation) {
                    // Retention removed the generation before all of it was
                    // out. Nothing is lost: the next generation's base holds
                    // every change it had. Only the points in time between
                    // what was shipped and that base are not at the destination.
                    let next = local.into_iter().find(|&g| g > pos.generation).unwrap_or(progress.generation);
                    (self.log)(
                        "info",
                        &format!(
                            "destination {}: local generation {} was removed by retention before it was all \
                             shipped; going on with generation {next} from its base",
                            self.name(),
                            pos.generation
                        ),
                    );
                    self.pending = None;
                    self.pos = Some(self.open_pos(next, false, 0)?);
                    return Ok(Step::Shipped { bytes: 0 });
                }
            }
        }
        if let Some((p, attempts)) = self.pending.take() {
            return self.send(p, attempts);
        }
        if progress.generation == 0 {
            return Ok(Step::Idle);
        }
        if self.pos.is_none() {
            self.pos = Some(self.find_position(&progress)?);
        }
        if self.shared.lock().dests[self.index].tip_pending && !self.sync_waiting() {
            return self.write_tip();
        }
        let pos = self.pos.as_mut().expect("set above");
        if !pos.base_shipped {
            return self.send(Pending::Base, 0);
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
        let mut first_time = None;
        let mut last = None;
        let mut complete = None;
        tail.read(upto, objects::PIECE_BYTES_MAX, &mut |h, bytes| {
            first_time.get_or_insert(h.time_unix_ms);
            last = Some(*h);
            if !h.continues() {
                complete = Some((h.seq, h.data_version, h.time_unix_ms));
            }
            buf.extend_from_slice(bytes);
        })?;
        let first = pos.seq + 1;
        let Some(last) = last else {
            if finished {
                // Every record of the older generation is out: on to the next.
                let next = layout::list_generations(&self.journal)?
                    .into_iter()
                    .find(|&g| g > pos.generation)
                    .unwrap_or(progress.generation);
                self.pos = Some(self.open_pos(next, false, 0)?);
                return Ok(Step::Shipped { bytes: 0 });
            }
            bail!("record {first} of generation {} is durable but could not be read back", pos.generation);
        };
        {
            let mut b = self.shared.lock();
            let d = &mut b.dests[self.index];
            d.oldest_missing_unix_ms = d.oldest_missing_unix_ms.or(first_time);
        }
        let name = objects::records_name(pos.generation, first, last.seq);
        let plain = objects::encode_records(pos.generation, first, last.seq, &buf)?;
        let p = Pending::Records { name, plain, first, last: last.seq, complete };
        self.send(p, 0)
    }

    fn open_pos(&self, generation: u64, base_shipped: bool, seq: u64) -> Result<Pos> {
        let g = Generation::open(&self.journal, generation)
            .with_context(|| format!("cannot open local generation {generation}"))?;
        let ctx = objects::context(self.journal_id, &g.header);
        Ok(Pos { generation, header: g.header, ctx, base_shipped, seq, tail: None })
    }

    /// Puts an object. One that is already there (an upload of an earlier
    /// process that landed) is read back and must authenticate as this
    /// journal's object of that name: then it counts, and is never rewritten.
    fn put_or_verify(&self, name: &str, data: &mut dyn Read, first: u64, last: u64, ctx: &Context) -> Result<()> {
        match self.store.put(name, data) {
            Ok(()) => Ok(()),
            Err(StoreError::Exists { .. }) => {
                position::read_back(self.store.as_ref(), &self.key, name, ctx, first, last)
                    .with_context(|| format!("{name} is already at the destination and is not this journal's object"))
            }
            Err(StoreError::Other(e)) => Err(e),
        }
    }

    fn send(&mut self, p: Pending, attempts: u32) -> Result<Step> {
        let pos = self.pos.as_ref().expect("position known");
        let (ctx, header) = (pos.ctx, pos.header.clone());
        let result = match &p {
            Pending::Base => self.send_base(&header, &ctx),
            Pending::Records { name, plain, first, last, .. } => {
                let mut sealed = SealReader::new(&self.key, name, &ctx, &plain[..])?;
                let bytes = super::crypto::sealed_bytes(plain.len() as u64);
                self.put_or_verify(name, &mut sealed, *first, *last, &ctx).map(|()| bytes)
            }
        };
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                let what = match &p {
                    Pending::Base => objects::base_name(header.generation),
                    Pending::Records { name, .. } => name.clone(),
                };
                self.pending = Some((p, attempts + 1));
                return Err(e.context(format!("cannot upload {what}")));
            }
        };
        let pos = self.pos.as_mut().expect("position known");
        let base = ctx.base;
        let acked = match p {
            Pending::Base => {
                pos.base_shipped = true;
                pos.seq = 0;
                let reach = Reach { generation: header.generation, seq: 0, data_version: header.base_version };
                Acked {
                    reach,
                    object_first: 0,
                    base,
                    base_version: header.base_version,
                    time_unix_ms: header.created_unix_ms,
                }
            }
            Pending::Records { first, last, complete, .. } => {
                pos.seq = last;
                let Some((seq, data_version, time_unix_ms)) = complete else {
                    // Only chunks of a change not complete yet: shipped, not
                    // counted until the piece with its last chunk is.
                    let mut b = self.shared.lock();
                    let d = &mut b.dests[self.index];
                    d.status.objects_shipped += 1;
                    d.status.bytes_shipped += bytes;
                    return Ok(Step::Shipped { bytes });
                };
                let reach = Reach { generation: header.generation, seq, data_version };
                Acked { reach, object_first: first, base, base_version: header.base_version, time_unix_ms }
            }
        };
        self.acknowledge(acked, bytes);
        Ok(Step::Shipped { bytes })
    }

    fn send_base(&self, header: &SegmentHeader, ctx: &Context) -> Result<u64> {
        let g = Generation::open(&self.journal, header.generation)
            .with_context(|| format!("cannot open local generation {}", header.generation))?;
        let path = g.snapshot_path();
        let file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let checked = Checked {
            inner: std::io::BufReader::with_capacity(1 << 20, file),
            crc: 0,
            bytes: 0,
            want: (g.header.snapshot_bytes, g.header.snapshot_crc32c),
            generation: g.number,
        };
        let name = objects::base_name(g.number);
        let mut sealed = SealReader::new(&self.key, &name, ctx, objects::base_reader(&g.header, checked)?)?;
        self.put_or_verify(&name, &mut sealed, 0, 0, ctx)?;
        Ok(g.header.snapshot_bytes)
    }

    /// Records what the destination now holds. It counts (status, tip,
    /// synchronous tier) only if it reaches at least what the destination
    /// held before: a compacted base and the first records carried into it
    /// are shipped but do not count until they are level.
    fn acknowledge(&mut self, acked: Acked, bytes: u64) {
        let progress = self.shared.progress.get();
        let moved_generation;
        {
            let mut b = self.shared.lock();
            let d = &mut b.dests[self.index];
            d.status.objects_shipped += 1;
            d.status.bytes_shipped += bytes;
            d.status.last_error = None;
            let counts = d.acked.is_none_or(|a| acked.reach.at_least(&a.reach));
            moved_generation = counts && d.acked.is_some_and(|a| a.reach.generation < acked.reach.generation);
            if counts {
                d.acked = Some(acked);
                d.tip_pending = true;
                d.written = Some((acked.reach.generation, acked.reach.seq));
                d.status.acked_generation = acked.reach.generation;
                d.status.acked_seq = acked.reach.seq;
                d.status.acked_data_version = Some(acked.reach.data_version);
                d.status.acked_time_unix_ms = acked.time_unix_ms;
            }
            let caught_up = (acked.reach.generation, acked.reach.seq) >= (progress.generation, progress.seq);
            d.oldest_missing_unix_ms = None;
            if caught_up {
                d.status.behind_ms = 0;
            }
            self.shared.cv.notify_all();
        }
        if !(acked.reach.generation, acked.reach.seq).ge(&(progress.generation, progress.seq)) {
            self.note_oldest_missing();
        }
        if moved_generation {
            if let Err(e) = self.retention(acked.reach.generation) {
                (self.log)("warn", &format!("destination {}: cannot delete old generations: {e:#}", self.name()));
            }
        }
    }

    /// Notes the time of the oldest record this destination lacks, for the
    /// status (`behind_ms`, `lagging`).
    fn note_oldest_missing(&mut self) {
        let progress = self.shared.progress.get();
        let Some(pos) = self.pos.as_mut() else { return };
        let time = if !pos.base_shipped {
            Some(pos.header.created_unix_ms)
        } else if pos.generation == progress.generation {
            pos.tail.as_mut().and_then(|t| t.peek_time(progress.seq))
        } else {
            None
        };
        let mut b = self.shared.lock();
        let d = &mut b.dests[self.index];
        if d.oldest_missing_unix_ms.is_none() {
            d.oldest_missing_unix_ms = time;
        }
    }

    /// Replaces the destination's tip with what it now holds.
    fn write_tip(&mut self) -> Result<Step> {
        let acked = self.shared.lock().dests[self.index].acked.expect("a pending tip has an acknowledgement");
        let tip = Tip {
            journal: self.journal_id,
            generation: acked.reach.generation,
            seq: acked.reach.seq,
            object_first: acked.object_first,
            data_version: acked.reach.data_version,
            base_version: acked.base_version,
            time_unix_ms: acked.time_unix_ms,
            written_unix_ms: now_unix_ms(),
            counter: self.tip_counter + 1,
        };
        let sealed = tip.seal(&self.key, acked.base)?;
        self.store.replace(objects::TIP_NAME, &sealed).map_err(|e| anyhow!("cannot replace the tip: {e}"))?;
        self.tip_counter = tip.counter;
        let mut b = self.shared.lock();
        let d = &mut b.dests[self.index];
        d.status.tip_counter = tip.counter;
        // Unless something newer was acknowledged meanwhile (it was not: one thread).
        d.tip_pending = d.acked != Some(acked);
        self.shared.cv.notify_all();
        Ok(Step::Shipped { bytes: sealed.len() as u64 })
    }

    /// Where to resume: from the destination's authenticated tip.
    fn find_position(&mut self, progress: &crate::journal::ProgressState) -> Result<Pos> {
        let r = position::resume(self.store.as_ref(), &self.key, self.journal_id, &self.journal, progress)?;
        {
            let mut b = self.shared.lock();
            let d = &mut b.dests[self.index];
            d.status.connected = true;
            if let Some(t) = &r.tip {
                let base = match Generation::open(&self.journal, t.generation) {
                    Ok(g) => Context::base_hash(&g.header),
                    Err(_) => [0; 32],
                };
                d.acked = Some(Acked {
                    reach: Reach { generation: t.generation, seq: t.seq, data_version: t.data_version },
                    object_first: t.object_first,
                    base,
                    base_version: t.base_version,
                    time_unix_ms: t.time_unix_ms,
                });
                d.status.acked_generation = t.generation;
                d.status.acked_seq = t.seq;
                d.status.acked_data_version = Some(t.data_version);
                d.status.acked_time_unix_ms = t.time_unix_ms;
                d.status.tip_counter = t.counter;
                self.tip_counter = t.counter;
            }
            self.shared.cv.notify_all();
        }
        (self.log)("info", &format!("destination {}: {}", self.name(), r.note));
        match r.start {
            Start::Newest => self.open_pos(progress.generation, false, 0),
            Start::Generation(g) => self.open_pos(g, false, 0),
            Start::After { generation, seq } => self.open_pos(generation, true, seq),
        }
    }

    /// Deletes generations older than the `retain` newest, once the
    /// acknowledgement has moved into `newest` (it holds at least what they did).
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
