//! The `db_write` handler: the one function that decides what a hook call
//! does (append, supersede, abort, new generation, halt), with the leaves
//! (classification, the state machine, the journal, the snapshot) kept pure or
//! self-contained.
//!
//! Hot path of a normal call: parse, classify, decide, one write, one flush,
//! answer. Nothing else runs there: status publishing happens in another
//! thread from [`crate::journal::Progress`].

use super::protocol::{DbWrite, Output};
use crate::config::{self, Config};
use crate::device::Device;
use crate::journal::Journal;
use crate::remote::shipper::{RemoteOptions, Replicator};
use crate::snapshot;
use crate::state::{self, Decision, NewGenerationReason};
use crate::status::{LatencyRing, PluginState, StatusBoard};
use anyhow::{Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    pub latencies: LatencyRing,
    pub status: Arc<StatusBoard>,
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
            latencies: LatencyRing::default(),
            status: Arc::new(StatusBoard::default()),
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
        let journal = Journal::open(&config.journal, self.device.clone(), config.journal_options())
            .with_context(|| format!("cannot open the journal {}", config.journal.display()))?;
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
        if !config.destinations.is_empty() {
            let key = Replicator::load_key(config.key_file.as_deref(), config.hsm_secret.as_deref())?;
            let out = self.out.clone();
            let remote = Replicator::start(
                remote_options(&config),
                key,
                config.journal.clone(),
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
        if let Err(why) = self.ensure_ready() {
            return Answer::Refuse(why);
        }
        match self.store(&call) {
            Ok(()) => Answer::Continue,
            Err(e) => Answer::Refuse(self.fail(format!("{e:#}"))),
        }
    }

    /// Makes the call durable according to the data_version discipline.
    fn store(&mut self, call: &DbWrite) -> Result<()> {
        let n = call.data_version;
        let kind = state::classify(n, &call.writes).map_err(anyhow::Error::msg)?;
        let journal = self.journal.as_mut().expect("journal opened by ensure_ready");
        match state::decide(journal.tip(), n, kind) {
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
                }
                let g =
                    journal.start_generation(&mut |dest: &Path| snapshot::copy_live(&db, dest, snapshot_version))?;
                self.out.log("info", &format!("generation {g} started at data_version {snapshot_version}"));
            }
        }
        let appended = journal.append(n, kind, &call.writes)?;
        if let Some(remote) = &self.remote {
            remote.after_append(appended.generation, appended.seq, &call.writes).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// Seals the journal: called on a clean stop, once the hooks are over.
    pub fn seal(&mut self) {
        if let Some(j) = self.journal.as_mut() {
            if j.poisoned().is_none() {
                if let Err(e) = j.seal() {
                    self.out.log("error", &format!("cannot seal the journal: {e:#}"));
                    return;
                }
            }
        }
        if let Some(r) = &self.remote {
            r.drain_and_stop();
        }
        self.status.set_state(PluginState::Stopped, None);
    }
}

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
