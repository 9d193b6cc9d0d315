//! The plugin's background subsystems, supervised in one place: compaction
//! (a job that follows the journal and hands over at a hook), retention, the
//! mirror's follower and the remote destinations' workers. Nothing here runs
//! on the hook's path except what the hook asks for by name: adopting a
//! finished compaction, the synchronous remote tier's wait, and the mirror's
//! bounded backpressure.

use super::protocol::Output;
use crate::clock::now_unix_ms;
use crate::compact::{self, CompactionState, CompactionStatus, Compactor, RequestError};
use crate::config::Config;
use crate::device::Device;
use crate::journal::writer::Appended;
use crate::journal::{Journal, WriteError};
use crate::mirror::{Mirror, MirrorStatus};
use crate::remote::{RemoteOptions, Replicator};
use crate::status::StatusBoard;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// After a compaction failed, the thresholds start another one no sooner.
const COMPACTION_RETRY_MS: u64 = 60_000;
/// The hook waits at most this long for a mirror lagging past
/// `mirror_max_lag` (with the synchronous tier's wait, at most
/// [`crate::config::REMOTE_SYNC_TIMEOUT_MS_MAX`], under the 20 s a peer allows).
pub const MIRROR_BACKPRESSURE_MAX: Duration = Duration::from_secs(5);
/// Retention keeps the generation the mirror is on until it moved on, at most this long.
const RETENTION_MIRROR_WAIT_MAX: Duration = Duration::from_secs(60);

pub struct Background {
    out: Arc<Output>,
    device: Arc<dyn Device>,
    journal_dir: PathBuf,
    keep_generations: usize,
    compact_journal_bytes: u64,
    compact_after_secs: u64,
    mirror_max_lag: u32,
    compactor: Compactor,
    compaction: Arc<Mutex<CompactionStatus>>,
    mirror: Option<Mirror>,
    remote: Option<Replicator>,
    /// The last retention thread: at most one runs; a clean stop waits for
    /// it, so nothing is still removing generations once the plugin is gone.
    retention: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts the subsystems the configuration asks for, following `journal`.
    pub fn start(
        config: &Config,
        journal: &Journal,
        device: Arc<dyn Device>,
        out: Arc<Output>,
        status: &StatusBoard,
    ) -> Result<Background> {
        let compactor = Compactor::new(
            config.journal.clone(),
            device.clone(),
            config.journal_options(),
            journal.progress(),
            config.compact_bytes_per_s_max,
        );
        let mirror = match &config.mirror {
            Some(path) => Some(
                Mirror::spawn(config.journal.clone(), path.clone(), journal.progress())
                    .context("cannot start the mirror's thread")?,
            ),
            None => None,
        };
        let remote = if config.destinations.is_empty() {
            None
        } else {
            let key = Replicator::load_key(
                config.key_file.as_deref(),
                config.hsm_secret.as_deref(),
                config.hsm_passphrase_file.as_deref(),
            )?;
            let log = out.clone();
            let r = Replicator::start(
                remote_options(config),
                key,
                config.journal.clone(),
                journal.id(),
                journal.progress(),
                Arc::new(move |level: &str, msg: &str| log.log(level, &format!("cln-replica: {msg}"))),
            )?;
            status.attach_remote(r.status_source());
            Some(r)
        };
        Ok(Background {
            out,
            device,
            journal_dir: config.journal.clone(),
            keep_generations: config.keep_generations as usize,
            compact_journal_bytes: config.compact_journal_bytes,
            compact_after_secs: config.compact_after_secs,
            mirror_max_lag: config.mirror_max_lag,
            compactor,
            compaction: Arc::new(Mutex::new(CompactionStatus::default())),
            mirror,
            remote,
            retention: None,
        })
    }

    pub fn compaction_status(&self) -> CompactionStatus {
        self.compaction.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn mirror_status(&self) -> Option<MirrorStatus> {
        self.mirror.as_ref().map(|m| m.status())
    }

    /// Starts a background compaction of `generation`.
    pub fn request_compaction(&self, generation: u64) -> Result<(), RequestError> {
        if generation == 0 {
            return Err(RequestError::NoGeneration);
        }
        self.compactor.request(&self.compaction)?;
        self.out.log("info", &format!("compaction of generation {generation} started in the background"));
        Ok(())
    }

    /// Switches to a compacted generation if the compactor has one ready:
    /// copies the few records written since it was finalized, renames it into
    /// place (steps 4-5 of [`crate::compact`]). Only an I/O failure of the
    /// journal is an error; anything else drops the compacted generation.
    pub fn adopt_compacted(&mut self, journal: &mut Journal) -> Result<(), WriteError> {
        let Some(h) = self.compactor.take_ready() else { return Ok(()) };
        let started = Instant::now();
        let outcome = if journal.generation() != h.old_generation {
            Err(format!("generation {} is no longer the current one", h.old_generation))
        } else {
            match compact::carried_records(journal.dir(), &h, Some(journal.last_seq())) {
                Ok(carried) => match journal.adopt_generation(&h.prepared, &carried) {
                    Ok(g) => Ok((g, carried.len())),
                    Err(e) if e.poison().is_some() => {
                        compact::discard(self.device.as_ref(), &h.prepared);
                        self.note_compaction(Err(format!("not adopted: {e}")));
                        return Err(e);
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(format!("{e:#}")),
            }
        };
        match outcome {
            Ok((g, carried)) => {
                let msg = format!(
                    "generation {g} compacted from generation {} at data_version {} ({carried} carried record(s))",
                    h.old_generation, h.prepared.header.base_version
                );
                self.note_compaction(Ok((msg.clone(), started.elapsed())));
                self.out.log("info", &msg);
                self.retire(g);
            }
            Err(why) => {
                compact::discard(self.device.as_ref(), &h.prepared);
                self.out.log("warn", &format!("compacted generation dropped: {why}"));
                self.note_compaction(Err(format!("not adopted: {why}")));
            }
        }
        Ok(())
    }

    fn note_compaction(&self, outcome: Result<(String, Duration), String>) {
        let mut st = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        st.state = CompactionState::Idle;
        st.progress = None;
        match outcome {
            Ok((msg, switch)) => {
                st.compactions += 1;
                st.last_switch_us = Some(switch.as_micros() as u64);
                st.last_result = Some(msg);
            }
            Err(msg) => {
                st.last_result = Some(msg);
                st.last_failed_unix_ms = Some(now_unix_ms());
            }
        }
    }

    /// The synchronous remote tier, after record `seq` of `generation` is
    /// durable: `Err` refuses the hook.
    pub fn after_append<S: AsRef<str>>(
        &self,
        appended: &Appended,
        writes: &[S],
    ) -> Result<(), crate::remote::sync::SyncRefusal> {
        match &self.remote {
            Some(r) => r.after_append(appended.generation, appended.seq, writes),
            None => Ok(()),
        }
    }

    /// After a new generation became durable: retention, off the hook's path.
    pub fn after_new_generation(&mut self, generation: u64) {
        self.retire(generation);
    }

    /// After an ordinary change at data_version `n`: the compaction
    /// thresholds (two loads), and backpressure from a mirror that lags.
    pub fn after_change(&mut self, journal: &Journal, n: u32) {
        self.maybe_compact(journal);
        if let Some(m) = &self.mirror {
            // Only past the bound: normally the mirror is a record or two
            // behind and this is one uncontended lock.
            if !m.wait_within(n, self.mirror_max_lag, MIRROR_BACKPRESSURE_MAX) {
                self.out.log("warn", &format!("the mirror lags more than {} data_versions", self.mirror_max_lag));
            }
        }
    }

    fn maybe_compact(&mut self, journal: &Journal) {
        let p = journal.progress().get();
        let by_size = self.compact_journal_bytes > 0 && p.journal_bytes >= self.compact_journal_bytes;
        let now = now_unix_ms();
        let by_age = self.compact_after_secs > 0
            && p.seq > 0
            && now.saturating_sub(journal.generation_created_unix_ms()) >= self.compact_after_secs * 1000;
        if !(by_size || by_age) || self.compactor.busy() {
            return;
        }
        let failed = self.compaction_status().last_failed_unix_ms;
        if failed.is_some_and(|t| now.saturating_sub(t) < COMPACTION_RETRY_MS) {
            return;
        }
        if let Err(e) = self.request_compaction(journal.generation()) {
            self.out.log("warn", &format!("cannot start a compaction: {e}"));
        }
    }

    /// Retention in its own thread (at most one at a time), once
    /// `generation` is the newest and durable.
    fn retire(&mut self, generation: u64) {
        if self.retention.as_ref().is_some_and(|h| !h.is_finished()) {
            // Still removing older ones: the next new generation retires these.
            return;
        }
        let (device, dir, keep, out) =
            (self.device.clone(), self.journal_dir.clone(), self.keep_generations, self.out.clone());
        let mirror_moved = self.mirror.as_ref().map(|m| m.watcher());
        let spawned = std::thread::Builder::new().name("retention".into()).spawn(move || {
            // The mirror finishes the generation it is on before moving to
            // the new one: keep it until then (bounded).
            if let Some(moved) = mirror_moved {
                if !moved(generation, RETENTION_MIRROR_WAIT_MAX) {
                    out.log("warn", "retention: the mirror has not moved to the new generation; removing anyway");
                }
            }
            match crate::journal::retention::retire_generations(device.as_ref(), &dir, keep) {
                Ok(removed) if !removed.is_empty() => {
                    out.log("info", &format!("retention: removed generation(s) {removed:?} (keeping {keep})"))
                }
                Ok(_) => {}
                Err(e) => out.log("warn", &format!("retention failed: {e}")),
            }
        });
        match spawned {
            Ok(h) => self.retention = Some(h),
            Err(e) => self.out.log("warn", &format!("cannot start retention: {e}")),
        }
    }

    /// At a clean stop, before the seal: a compaction finished but not yet
    /// adopted is adopted now; one still running is abandoned (its directory
    /// is removed at the next start).
    pub fn before_seal(&mut self, journal: &mut Journal) {
        if journal.poisoned().is_none() {
            if let Err(e) = self.adopt_compacted(journal) {
                self.out.log("error", &format!("cannot switch to the compacted generation: {e}"));
            }
        }
        self.compactor.stop();
    }

    /// At a clean stop, after the seal: the mirror brought fully up to date,
    /// the destinations given their drain time, retention finished.
    pub fn after_seal(&mut self, generation: u64) {
        if let Some(m) = self.mirror.take() {
            match m.finish(generation) {
                Ok(v) => self.out.log("info", &format!("mirror up to date at data_version {v}")),
                Err(e) => self.out.log("error", &format!("cannot bring the mirror up to date: {e:#}")),
            }
        }
        if let Some(r) = &self.remote {
            r.drain_and_stop();
        }
        if let Some(h) = self.retention.take() {
            let _ = h.join();
        }
    }
}

/// The remote tier's settings from the configuration.
pub fn remote_options(c: &Config) -> RemoteOptions {
    RemoteOptions {
        destinations: c.destinations.clone(),
        sync: c.remote_sync,
        quorum: c.remote_quorum,
        sync_timeout: Duration::from_millis(c.remote_sync_timeout_ms),
        on_timeout: c.remote_sync_on_timeout,
        lag: Duration::from_millis(c.remote_lag_ms),
        drain: Duration::from_millis(c.remote_drain_ms),
        retain_generations: c.remote_retain_generations,
    }
}
