//! The remote tier of a running plugin: starts one worker per destination
//! ([`super::worker`]), gives the hook its synchronous wait
//! ([`super::sync`]), drains on a clean stop, and publishes the status
//! ([`super::board`]).

use super::board::{Shared, StatusSource, SyncMode};
use super::crypto::Key;
use super::settings::{DestinationConfig, OnTimeout, RemoteSync};
use super::worker::Worker;
use crate::journal::identity::JournalId;
use crate::journal::Progress;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Where the plugin's log lines go: (level, message).
pub type Logger = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Settings of the remote tier, from the configuration.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub destinations: Vec<DestinationConfig>,
    pub sync: RemoteSync,
    pub quorum: usize,
    /// How long a synchronous change waits; never more than
    /// [`super::sync::HOOK_WAIT_MAX`].
    pub sync_timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Upper bound on how long a change waits in the background queue while
    /// the destination is up (the worker batches for a quarter of it); a
    /// destination further behind than this shows as lagging.
    pub lag: Duration,
    pub drain: Duration,
    pub retain_generations: u64,
}

pub struct Replicator {
    pub(super) shared: Arc<Shared>,
    pub(super) opts: RemoteOptions,
    pub(super) log: Logger,
}

impl Replicator {
    /// Opens every destination (no network yet) and starts the workers.
    pub fn start(
        opts: RemoteOptions,
        key: Key,
        journal: PathBuf,
        journal_id: JournalId,
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
        let names = opts.destinations.iter().map(|d| d.display_name()).collect();
        let shared = Arc::new(Shared::new(names, progress, SyncMode::from(opts.sync), opts.lag.as_millis() as u64));
        for (i, (store, d)) in stores.into_iter().zip(&opts.destinations).enumerate() {
            let w = Worker::new(
                i,
                store,
                key.clone(),
                shared.clone(),
                journal.clone(),
                journal_id,
                log.clone(),
                opts.lag / 4,
                d.upload_bytes_per_s_max.max(1),
                opts.retain_generations.max(1),
            );
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

    /// Waits, at most `self.opts.drain`, until every destination holds the
    /// whole journal and its tip says so; then stops the workers. For a clean
    /// shutdown.
    pub fn drain_and_stop(&self) {
        let p = self.shared.progress.get();
        let target = (p.generation, p.seq);
        let deadline = Instant::now() + self.opts.drain;
        let mut b = self.shared.lock();
        b.want = b.want.max(target);
        self.shared.cv.notify_all();
        let behind = |b: &super::board::Board| -> Vec<String> {
            b.dests
                .iter()
                .filter(|d| d.tip_pending || d.acked.is_none_or(|a| (a.reach.generation, a.reach.seq) < target))
                .map(|d| d.status.name.clone())
                .collect()
        };
        loop {
            let late = behind(&b);
            if late.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                (self.log)(
                    "warn",
                    &format!(
                        "shutdown: {} destination(s) not caught up after {} ms ({}); they catch up at the next start",
                        late.len(),
                        self.opts.drain.as_millis(),
                        late.join(", ")
                    ),
                );
                break;
            }
            b = self.shared.cv.wait_timeout(b, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        b.stop = true;
        self.shared.cv.notify_all();
    }

    pub fn status(&self) -> super::RemoteStatus {
        self.shared.status()
    }

    /// A handle for the status board that does not keep the replicator.
    pub fn status_source(&self) -> StatusSource {
        StatusSource { shared: self.shared.clone() }
    }

    /// The key the configuration names: a key file, or lightningd's
    /// hsm_secret (with the passphrase lightningd was given, if any).
    pub fn load_key(key_file: Option<&Path>, hsm_secret: Option<&Path>, passphrase_file: Option<&Path>) -> Result<Key> {
        let passphrase = passphrase_file.map(super::hsm::load_passphrase).transpose()?;
        match (key_file, hsm_secret) {
            (Some(_), _) if passphrase.is_some() => bail!("a passphrase goes with `hsm_secret`, not with `key_file`"),
            (Some(k), None) => Key::load_file(k),
            (None, Some(h)) => super::hsm::load_hsm_secret(h, passphrase.as_deref()),
            (Some(_), Some(_)) => bail!("set either `key_file` or `hsm_secret`, not both"),
            (None, None) => bail!(
                "destinations are configured but no key: set `key_file` (made by `cln-replica keygen --out FILE`) or \
                 `hsm_secret = \"hsm_secret\"`: nothing leaves the box unencrypted"
            ),
        }
    }
}
