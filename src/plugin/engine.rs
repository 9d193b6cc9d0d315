//! The `db_write` handler: the one function that decides what a hook call
//! does (append, supersede, abort, new generation, halt), with the leaves
//! (classification, the state machine, the journal, the snapshot) kept pure or
//! self-contained, and the background subsystems behind
//! [`super::background`].
//!
//! Hot path of a normal call: parse, classify, decide, one write, one flush,
//! answer. Nothing else runs there: status publishing happens in another
//! thread from [`crate::journal::Progress`].

use super::background::Background;
use super::protocol::{DbWrite, Output};
use crate::compact::{CompactionStatus, RequestError};
use crate::config::{self, Config, DeviceLostPolicy};
use crate::device::Device;
use crate::journal::{Journal, WriteError};
use crate::snapshot;
use crate::state::{self, CallKind, ClassifyError, Decision, NewGenerationReason};
use crate::status::{PluginState, StatusBoard};
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

/// Why the plugin refuses a hook (and every later one: lightningd stops at
/// the first refusal).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No configuration, or an invalid one.
    #[error("{0}")]
    Setup(String),
    /// The journal cannot be opened or written: the backup device is
    /// missing, full, read-only or failed. Under `on_device_lost = "degrade"`
    /// lightningd goes on without a backup instead.
    #[error("{0}")]
    Device(String),
    /// lightningd's database went backwards relative to the journal.
    #[error("{0}")]
    Backwards(state::Backwards),
    /// The call itself: malformed parameters, statements that disagree with
    /// its data_version.
    #[error("{0}")]
    BadCall(String),
    /// No quorum of destinations acknowledged a synchronous change.
    #[error("{0}")]
    Remote(String),
    /// Anything else that stops this change (a snapshot that cannot be made,
    /// a change too large for a record).
    #[error("{0}")]
    Failed(String),
}

impl From<ClassifyError> for Refusal {
    fn from(e: ClassifyError) -> Refusal {
        Refusal::BadCall(e.to_string())
    }
}

impl From<WriteError> for Refusal {
    fn from(e: WriteError) -> Refusal {
        match e {
            WriteError::TooLarge { .. } | WriteError::Snapshot(_) | WriteError::Refused(_) => {
                Refusal::Failed(e.to_string())
            }
            e => Refusal::Device(e.to_string()),
        }
    }
}

pub struct Engine {
    cwd: PathBuf,
    out: Arc<Output>,
    device: Arc<dyn Device>,
    config: Option<Config>,
    journal: Option<Journal>,
    /// Compaction, retention, the mirror, the destinations: started with the journal.
    background: Option<Background>,
    /// Set once the plugin must refuse every further hook: a setup error, a
    /// halt, a failed write. lightningd stops at the first refusal; if it
    /// somehow calls again, the answer is the same.
    failure: Option<Refusal>,
    /// Set when the backup device failed under `on_device_lost = "degrade"`:
    /// every later hook is answered `continue` without a backup.
    degraded: Option<String>,
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
            background: None,
            failure: None,
            degraded: None,
            status: Arc::new(StatusBoard::default()),
        }
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    pub fn failure(&self) -> Option<&Refusal> {
        self.failure.as_ref()
    }

    /// Loads the configuration and opens the journal, once. Runs at the first
    /// hook or at `init`, whichever comes first.
    pub fn ensure_ready(&mut self) -> Result<(), Refusal> {
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        if self.journal.is_some() {
            return Ok(());
        }
        match self.open() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn open(&mut self) -> Result<(), Refusal> {
        let path = config::locate(&self.cwd);
        if !path.exists() {
            return Err(Refusal::Setup(format!(
                "no configuration at {}: create it with the line `journal = \"/mnt/lnbackup/cln-replica\"` naming a \
                 directory on the backup device (or run `cln-replica init`); lightningd stops until the backup is \
                 configured",
                path.display()
            )));
        }
        let config = Config::load(&path, &self.cwd).map_err(|e| Refusal::Setup(format!("{e:#}")))?;
        // Known before the journal opens: a failure to open it is subject
        // to `on_device_lost`.
        self.config = Some(config.clone());
        let journal = Journal::open(&config.journal, self.device.clone(), config.journal_options())
            .map_err(|e| Refusal::Device(format!("cannot open the journal {}: {e}", config.journal.display())))?;
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
        let background = Background::start(&config, &journal, self.device.clone(), self.out.clone(), &self.status)
            .map_err(|e| Refusal::Setup(format!("{e:#}")))?;
        self.background = Some(background);
        self.journal = Some(journal);
        Ok(())
    }

    /// Whether `refusal` is the backup device failing (rather than bad input
    /// or a state that went backwards) and the operator chose to go on
    /// without it.
    fn degrade_on(&self, refusal: &Refusal) -> bool {
        let policy = self.config.as_ref().map_or(DeviceLostPolicy::Halt, |c| c.on_device_lost);
        let device_failed =
            matches!(refusal, Refusal::Device(_)) || self.journal.as_ref().is_some_and(|j| j.poisoned().is_some());
        policy == DeviceLostPolicy::Degrade && device_failed
    }

    /// Goes on without a backup (`on_device_lost = "degrade"`), loudly.
    fn degrade(&mut self, refusal: Refusal) {
        let why = refusal.to_string();
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
        self.background.as_ref().and_then(|b| b.mirror_status())
    }

    pub fn compaction_status(&self) -> CompactionStatus {
        self.background.as_ref().map(|b| b.compaction_status()).unwrap_or_default()
    }

    /// Starts a background compaction (the `replica-compact` method).
    pub fn request_compaction(&mut self) -> Result<u64, RequestError> {
        self.ensure_ready().map_err(|r| RequestError::NotReady(r.to_string()))?;
        let generation = self.journal.as_ref().map_or(0, |j| j.generation());
        self.background.as_ref().expect("started with the journal").request_compaction(generation)?;
        Ok(generation)
    }

    /// Records a failure that refuses every later hook, and says so.
    fn fail(&mut self, refusal: Refusal) -> Refusal {
        let why = refusal.to_string();
        self.out.log("error", &format!("cln-replica: {why}"));
        self.status.set_state(PluginState::Halted, Some(why));
        self.failure = Some(refusal.clone());
        refusal
    }

    /// Handles one `db_write` call given its raw parameters.
    pub fn db_write(&mut self, params: Option<&serde_json::value::RawValue>) -> Answer {
        let call: DbWrite = match params.map(|p| serde_json::from_str(p.get())) {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Answer::Refuse(
                    self.fail(Refusal::BadCall(format!("invalid db_write parameters: {e}"))).to_string(),
                )
            }
            None => {
                return Answer::Refuse(self.fail(Refusal::BadCall("db_write without parameters".into())).to_string())
            }
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
                return Answer::Refuse(self.fail(e).to_string());
            }
        }
        if let Err(why) = self.ensure_ready() {
            return Answer::Refuse(why.to_string());
        }
        match self.store(&call) {
            Ok(()) => Answer::Continue,
            Err(e) if self.degrade_on(&e) => {
                self.degrade(e);
                Answer::Continue
            }
            Err(e) => Answer::Refuse(self.fail(e).to_string()),
        }
    }

    /// Makes the call durable according to the data_version discipline.
    fn store(&mut self, call: &DbWrite) -> Result<(), Refusal> {
        let n = call.data_version;
        let kind = state::classify(n, &call.writes)?;
        let journal = self.journal.as_mut().expect("journal opened by ensure_ready");
        let background = self.background.as_mut().expect("started with the journal");
        background.adopt_compacted(journal)?;
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
            Decision::Halt(backwards) => return Err(Refusal::Backwards(backwards)),
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
        background.after_append(&appended, &call.writes).map_err(|e| Refusal::Remote(e.to_string()))?;
        if new_generation {
            // The mirror rebuilds from the new snapshot: no backpressure now.
            background.after_new_generation(appended.generation);
        } else {
            background.after_change(journal, n);
        }
        Ok(())
    }

    /// Seals the journal: called on a clean stop, once the hooks are over.
    pub fn seal(&mut self) {
        let (Some(j), Some(b)) = (self.journal.as_mut(), self.background.as_mut()) else { return };
        b.before_seal(j);
        if j.poisoned().is_none() {
            if let Err(e) = j.seal() {
                self.out.log("error", &format!("cannot seal the journal: {e}"));
                return;
            }
        }
        b.after_seal(j.generation());
        self.status.set_state(PluginState::Stopped, None);
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
