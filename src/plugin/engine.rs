//! The `db_write` handler: the one function that decides what a hook call
//! does (append, supersede, abort, new generation, halt), with the leaves
//! (classification, the state machine, the journal, the snapshot) kept pure or
//! self-contained.
//!
//! Hot path of a normal call: parse, classify, decide, one write, one flush,
//! answer. Nothing else runs there: status publishing happens in another
//! thread from [`crate::journal::Progress`].

use super::protocol::{DbWrite, Output};
use crate::compact::{self, CompactionStatus, Compactor};
use crate::config::{self, Config, DeviceLostPolicy};
use crate::device::Device;
use crate::journal::Journal;
use crate::remote::{RemoteOptions, Replicator};
use crate::snapshot;
use crate::state::{self, CallKind, Decision, NewGenerationReason};
use crate::status::{LatencyRing, PluginState, StatusBoard};
use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The answer to one `db_write`.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Continue,
    /// Anything but `continue` makes lightningd stop without committing. The
    /// reason ends up in lightningd's log (it prints our whole answer).
    Refuse(String),
}

impl Answer {
    pub fn to_json(&self) -> String {
        match self {
            Answer::Continue => r#"{"result":"continue"}"#.to_string(),
            Answer::Refuse(why) => {
                format!(
                    r#"{{"result":"abort","error":{}}}"#,
                    serde_json::to_string(&format!("cln-replica: {why}")).expect("json")
                )
            }
        }
    }
}

pub struct Engine {
    cwd: PathBuf,
    out: Arc<Output>,
    device: Arc<dyn Device>,
    config: Option<Config>,
    journal: Option<Journal>,
    /// The remote destinations, when configured (off the hook's path except
    /// for the synchronous tier).
    remote: Option<Replicator>,
    /// Set once the plugin must refuse every further hook: a setup error, a
    /// halt, a failed write. lightningd stops at the first refusal; if it
    /// somehow calls again, the answer is the same.
    failure: Option<String>,
    /// Set when the backup device failed under `on_device_lost = "degrade"`:
    /// every later hook is answered `continue` without a backup.
    degraded: Option<String>,
    pub latencies: LatencyRing,
    pub status: Arc<StatusBoard>,
    /// Background compaction (steps 1-3 of [`crate::compact`]); the hook
    /// thread adopts its result at the start of a hook.
    compactor: Option<Compactor>,
    pub compaction: Arc<Mutex<CompactionStatus>>,
    /// The mirror's follower thread, if `mirror` is configured.
    mirror: Option<crate::mirror::Mirror>,
    /// The last retention thread: at most one runs; a clean stop waits for
    /// it, so nothing is still removing generations once the plugin is gone.
    retention: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    pub fn new(cwd: PathBuf, out: Arc<Output>, device: Arc<dyn Device>) -> Engine {
        Engine {
            cwd,
            out,
            device,
            config: None,
            journal: None,
            remote: None,
            failure: None,
            degraded: None,
            latencies: LatencyRing::default(),
            status: Arc::new(StatusBoard::default()),
            compactor: None,
            compaction: Arc::new(Mutex::new(CompactionStatus { state: "idle".into(), ..Default::default() })),
            mirror: None,
            retention: None,
        }
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Loads the configuration and opens the journal, once. Runs at the first
    /// hook or at `init`, whichever comes first.
    pub fn ensure_ready(&mut self) -> Result<(), String> {
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        if self.journal.is_some() {
            return Ok(());
        }
        match self.open() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(format!("{e:#}"))),
        }
    }

    fn open(&mut self) -> Result<()> {
        let path = config::locate(&self.cwd);
        if !path.exists() {
            anyhow::bail!(
                "no configuration at {}: create it with the line `journal = \"/mnt/lnbackup/cln-replica\"` naming a \
                 directory on the backup device (or run `cln-replica init`); lightningd stops until the backup is \
                 configured",
                path.display()
            );
        }
        let config = Config::load(&path, &self.cwd)?;
        self.config = Some(config.clone());
        let journal = Journal::open(&config.journal, self.device.clone(), config.journal_options())
            .with_context(|| format!("cannot open the journal {}", config.journal.display()))
            .map_err(DeviceLost)?;
        if same_filesystem(&config.journal, &config.database) {
            self.out.log(
                "warn",
                &format!(
                    "the journal {} is on the same filesystem as {}: a failure of that device loses both",
                    config.journal.display(),
                    config.database.display()
                ),
            );
        }
        self.status.attach(journal.progress(), config.journal.clone());
        self.out.log(
            "info",
            &format!(
                "journal {} opened at {}",
                config.journal.display(),
                describe_tip(journal.tip(), journal.generation())
            ),
        );
        self.compactor = Some(Compactor::new(
            config.journal.clone(),
            self.device.clone(),
            config.journal_options(),
            journal.progress(),
        ));
        if let Some(path) = &config.mirror {
            let m = crate::mirror::Mirror::spawn(config.journal.clone(), path.clone(), journal.progress())
                .context("cannot start the mirror's thread")?;
            self.mirror = Some(m);
        }
        if !config.destinations.is_empty() {
            let key = Replicator::load_key(
                config.key_file.as_deref(),
                config.hsm_secret.as_deref(),
                config.hsm_passphrase_file.as_deref(),
            )?;
            let out = self.out.clone();
            let remote = Replicator::start(
                remote_options(&config),
                key,
                config.journal.clone(),
                journal.id(),
                journal.progress(),
                Arc::new(move |level: &str, msg: &str| out.log(level, &format!("cln-replica: {msg}"))),
            )?;
            self.status.attach_remote(remote.status_source());
            self.remote = Some(remote);
        }
        self.config = Some(config);
        self.journal = Some(journal);
        Ok(())
    }

    /// Whether `err` is the backup device failing (rather than bad input or
    /// a state that went backwards) and the operator chose to go on without it.
    fn degrade_on(&self, err: &anyhow::Error) -> bool {
        let policy = self.config.as_ref().map_or(DeviceLostPolicy::Halt, |c| c.on_device_lost);
        let device_failed =
            err.downcast_ref::<DeviceLost>().is_some() || self.journal.as_ref().is_some_and(|j| j.poisoned().is_some());
        policy == DeviceLostPolicy::Degrade && device_failed
    }

    /// Goes on without a backup (`on_device_lost = "degrade"`), loudly.
    fn degrade(&mut self, err: anyhow::Error) {
        let why = format!("{err:#}");
        self.out.log(
            "error",
            &format!(
                "cln-replica: the backup device failed ({why}); on_device_lost = \"degrade\": lightningd goes on \
                 WITHOUT A BACKUP. Fix the device and restart lightningd: the backup resumes with a new snapshot"
            ),
        );
        self.status.set_degraded(why.clone());
        self.degraded = Some(why);
    }

    pub fn mirror_status(&self) -> Option<crate::mirror::MirrorStatus> {
        self.mirror.as_ref().map(|m| m.status())
    }

    /// Starts a background compaction (the `replica-compact` method, or a
    /// threshold). Errors say why not.
    pub fn request_compaction(&mut self) -> Result<u64, String> {
        self.ensure_ready()?;
        let generation = self.journal.as_ref().map_or(0, |j| j.generation());
        if generation == 0 {
            return Err("the journal holds no generation yet: nothing to compact".into());
        }
        let compactor = self.compactor.as_ref().expect("opened with the journal");
        compactor.request(&self.compaction)?;
        self.out.log("info", &format!("compaction of generation {generation} started in the background"));
        Ok(generation)
    }

    /// Switches to a compacted generation if the compactor has one ready:
    /// copies the few records written since it was finalized, renames it into
    /// place (steps 4-5 of [`crate::compact`]). Only an I/O failure of the
    /// journal is an error; anything else drops the compacted generation.
    fn adopt_compacted(&mut self) -> Result<()> {
        let Some(h) = self.compactor.as_ref().and_then(|c| c.take_ready()) else { return Ok(()) };
        let started = std::time::Instant::now();
        let journal = self.journal.as_mut().expect("journal opened");
        let dir = journal.dir().to_path_buf();
        let outcome = if journal.generation() != h.old_generation {
            Err(anyhow::anyhow!("generation {} is no longer the current one", h.old_generation))
        } else {
            compact::carried_records(&dir, &h, Some(journal.last_seq()))
                .and_then(|carried| journal.adopt_generation(&h.prepared, &carried).map(|g| (g, carried.len())))
        };
        let mut st = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
        st.state = "idle".into();
        match outcome {
            Ok((g, carried)) => {
                st.compactions += 1;
                st.last_switch_us = Some(started.elapsed().as_micros() as u64);
                let msg = format!(
                    "generation {g} compacted from generation {} at data_version {} ({} carried record(s))",
                    h.old_generation, h.prepared.header.base_version, carried
                );
                st.last_result = Some(msg.clone());
                drop(st);
                self.out.log("info", &msg);
                self.retire_in_background();
                Ok(())
            }
            Err(e) => {
                compact::discard(self.device.as_ref(), &h.prepared);
                st.last_result = Some(format!("not adopted: {e:#}"));
                st.last_failed_unix_ms = Some(crate::journal::writer::now_unix_ms());
                drop(st);
                if journal.poisoned().is_some() {
                    return Err(e);
                }
                self.out.log("warn", &format!("compacted generation dropped: {e:#}"));
                Ok(())
            }
        }
    }

    /// Retention, after a new generation became durable: off the hook's path.
    fn retire_in_background(&mut self) {
        let Some(config) = self.config.as_ref() else { return };
        if self.retention.as_ref().is_some_and(|h| !h.is_finished()) {
            // Still removing older ones: the next new generation retires these.
            return;
        }
        let (device, dir, keep, out) =
            (self.device.clone(), config.journal.clone(), config.keep_generations as usize, self.out.clone());
        let generation = self.journal.as_ref().map_or(0, |j| j.generation());
        let mirror_moved = self.mirror.as_ref().map(|m| m.watcher());
        let spawned = std::thread::Builder::new().name("retention".into()).spawn(move || {
            // The mirror finishes the generation it is on before moving to
            // the new one: keep it until then (bounded).
            if let Some(moved) = mirror_moved {
                if !moved(generation, std::time::Duration::from_secs(60)) {
                    out.log("warn", "retention: the mirror has not moved to the new generation; removing anyway");
                }
            }
            match crate::journal::writer::retire_generations(device.as_ref(), &dir, keep) {
                Ok(removed) if !removed.is_empty() => {
                    out.log("info", &format!("retention: removed generation(s) {removed:?} (keeping {keep})"))
                }
                Ok(_) => {}
                Err(e) => out.log("warn", &format!("retention failed: {e:#}")),
            }
        });
        match spawned {
            Ok(h) => self.retention = Some(h),
            Err(e) => self.out.log("warn", &format!("cannot start retention: {e}")),
        }
    }

    /// Size and age thresholds: checked after each append (two loads).
    fn maybe_compact(&mut self) {
        let (Some(config), Some(journal), Some(compactor)) = (&self.config, &self.journal, &self.compactor) else {
            return;
        };
        let p = journal.progress().get();
        let by_size = config.compact_journal_bytes > 0 && p.journal_bytes >= config.compact_journal_bytes;
        let now = crate::journal::writer::now_unix_ms();
        let by_age = config.compact_after_secs > 0
            && p.seq > 0
            && now.saturating_sub(journal.generation_created_unix_ms()) >= config.compact_after_secs * 1000;
        if !(by_size || by_age) || compactor.busy() {
            return;
        }
        // After a failure, wait a minute before trying again on our own.
        let failed = self.compaction.lock().unwrap_or_else(|e| e.into_inner()).last_failed_unix_ms;
        if failed.is_some_and(|t| now.saturating_sub(t) < 60_000) {
            return;
        }
        if let Err(e) = self.request_compaction() {
            self.out.log("warn", &format!("cannot start a compaction: {e}"));
        }
    }

    /// Records a failure that refuses every later hook, and says so.
    fn fail(&mut self, why: String) -> String {
        self.out.log("error", &format!("cln-replica: {why}"));
        self.status.set_state(PluginState::Halted, Some(why.clone()));
        self.failure = Some(why.clone());
        why
    }

    /// Handles one `db_write` call given its raw parameters.
    pub fn db_write(&mut self, params: Option<&serde_json::value::RawValue>) -> Answer {
        let call: DbWrite = match params.map(|p| serde_json::from_str(p.get())) {
            Some(Ok(c)) => c,
            Some(Err(e)) => return Answer::Refuse(self.fail(format!("invalid db_write parameters: {e}"))),
            None => return Answer::Refuse(self.fail("db_write without parameters".into())),
        };
        if self.degraded.is_some() {
            return Answer::Continue;
        }
        if self.journal.is_none() && self.failure.is_none() {
            if let Err(e) = self.open() {
                if self.degrade_on(&e) {
                    self.degrade(e);
                    return Answer::Continue;
                }
                return Answer::Refuse(self.fail(format!("{e:#}")));
            }
        }
        if let Err(why) = self.ensure_ready() {
            return Answer::Refuse(why);
        }
        match self.store(&call) {
            Ok(()) => Answer::Continue,
            Err(e) if self.degrade_on(&e) => {
                self.degrade(e);
                Answer::Continue
            }
            Err(e) => Answer::Refuse(self.fail(format!("{e:#}"))),
        }
    }

    /// Makes the call durable according to the data_version discipline.
    fn store(&mut self, call: &DbWrite) -> Result<()> {
        let n = call.data_version;
        let kind = state::classify(n, &call.writes).map_err(anyhow::Error::msg)?;
        self.adopt_compacted()?;
        let journal = self.journal.as_mut().expect("journal opened by ensure_ready");
        let filter = self.config.as_ref().expect("config loaded").filter;
        let mut new_generation = false;
        let decision = match state::decide(journal.tip(), n, kind) {
            // lightningd's committed database is at n - 1: a snapshot there
            // starts a generation with the configured filter.
            Decision::Append if kind == CallKind::Txn && journal.filter() != filter => Decision::NewGeneration {
                reason: NewGenerationReason::FilterChanged { from: journal.filter(), to: filter },
                snapshot_version: n.wrapping_sub(1),
            },
            d => d,
        };
        match decision {
            Decision::Append => {}
            Decision::Supersede => self.out.log(
                "info",
                &format!(
                    "data_version {n} sent again: the previous change was never committed; the new one supersedes it"
                ),
            ),
            Decision::Abort => self.out.log(
                "info",
                &format!(
                    "data_version {} was never committed (lightningd is back at {n}); it is cancelled",
                    n.wrapping_add(1)
                ),
            ),
            Decision::Halt(backwards) => anyhow::bail!("{backwards}"),
            Decision::NewGeneration { reason, snapshot_version } => {
                let db = self.config.as_ref().expect("config loaded").database.clone();
                match reason {
                    NewGenerationReason::EmptyJournal => self.out.log(
                        "info",
                        &format!("journal is empty: taking the first snapshot of {} at data_version {snapshot_version}", db.display()),
                    ),
                    NewGenerationReason::Gap { after, missed } => self.out.log(
                        "warn",
                        &format!(
                            "gap: lightningd committed {missed} change(s) after data_version {after} without this plugin; \
                             taking a new snapshot at data_version {snapshot_version}"
                        ),
                    ),
                    NewGenerationReason::FilterChanged { from, to } => self.out.log(
                        "info",
                        &format!(
                            "filter changed from \"{}\" to \"{}\": generation {} keeps its filter; taking a new \
                             snapshot at data_version {snapshot_version}",
                            from.name(),
                            to.name(),
                            journal.generation()
                        ),
                    ),
                }
                let g = journal
                    .start_generation(&mut |dest: &Path| snapshot::copy_live(&db, dest, snapshot_version, filter))?;
                self.out.log("info", &format!("generation {g} started at data_version {snapshot_version}"));
                new_generation = true;
            }
        }
        let appended = journal.append(n, kind, &call.writes)?;
        if let Some(remote) = &self.remote {
            remote.after_append(appended.generation, appended.seq, &call.writes)?;
        }
        if new_generation {
            // The mirror rebuilds from the new snapshot: no backpressure now.
            self.retire_in_background();
            return Ok(());
        }
        self.maybe_compact();
        if let (Some(m), Some(c)) = (&self.mirror, &self.config) {
            // Backpressure, only past the bound: normally the mirror is a
            // record or two behind and this is one uncontended lock.
            if !m.wait_within(n, c.mirror_max_lag, std::time::Duration::from_secs(10)) {
                self.out.log("warn", &format!("the mirror lags more than {} data_versions", c.mirror_max_lag));
            }
        }
        Ok(())
    }

    /// Seals the journal: called on a clean stop, once the hooks are over.
    pub fn seal(&mut self) {
        // A compaction finished but not yet adopted is adopted now; one still
        // running is abandoned (its directory is removed at the next start).
        if self.journal.as_ref().is_some_and(|j| j.poisoned().is_none()) {
            if let Err(e) = self.adopt_compacted() {
                self.out.log("error", &format!("cannot switch to the compacted generation: {e:#}"));
            }
        }
        if let Some(c) = &self.compactor {
            c.stop();
        }
        if let Some(j) = self.journal.as_mut() {
            if j.poisoned().is_none() {
                if let Err(e) = j.seal() {
                    self.out.log("error", &format!("cannot seal the journal: {e:#}"));
                    return;
                }
            }
        }
        if let Some(m) = self.mirror.take() {
            let generation = self.journal.as_ref().map_or(0, |j| j.generation());
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
        self.status.set_state(PluginState::Stopped, None);
    }
}

/// Marks an error as the backup device being unusable (journal open failed).
#[derive(Debug)]
struct DeviceLost(anyhow::Error);

impl std::fmt::Display for DeviceLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for DeviceLost {}

/// The remote tier's settings from the configuration.
pub fn remote_options(c: &Config) -> RemoteOptions {
    RemoteOptions {
        destinations: c.destinations.clone(),
        sync: c.remote_sync,
        quorum: c.remote_quorum,
        sync_timeout: std::time::Duration::from_millis(c.remote_sync_timeout_ms),
        on_timeout: c.remote_sync_on_timeout,
        lag: std::time::Duration::from_millis(c.remote_lag_ms),
        drain: std::time::Duration::from_millis(c.remote_drain_ms),
        retain_generations: c.remote_retain_generations,
    }
}

fn describe_tip(tip: state::Tip, generation: u64) -> String {
    match tip {
        state::Tip::Empty => "no generation yet (the next hook takes a snapshot)".into(),
        state::Tip::At { version, pending_txn } => format!(
            "generation {generation}, data_version {version}{}",
            if pending_txn { " (last change not yet known committed)" } else { "" }
        ),
    }
}

/// Whether two paths live on the same filesystem (by their nearest existing
/// ancestors).
fn same_filesystem(a: &Path, b: &Path) -> bool {
    fn dev(p: &Path) -> Option<u64> {
        p.ancestors().find_map(|p| std::fs::metadata(p).ok()).map(|m| m.dev())
    }
    matches!((dev(a), dev(b)), (Some(x), Some(y)) if x == y)
}
