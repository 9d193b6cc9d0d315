//! The synchronous tier: the hook's wait, after a change is durable in the
//! local journal, until a quorum of destinations holds it.
//!
//! What counts is only what a worker of this process wrote to a destination
//! (or read back from it and authenticated) and saw acknowledged: never a
//! listing, never the position read at start-up. The wait is bounded by
//! `remote_sync_timeout_ms`, itself at most [`HOOK_WAIT_MAX`].

use super::replicator::Replicator;
use super::settings::{needs_sync, OnTimeout};
use std::time::{Duration, Instant};

/// The longest any wait on the hook's path may take: lightningd gives up on
/// a plugin that does not answer in time. Every bound on the hook's path
/// (`remote_sync_timeout_ms` among them) stays below it.
pub const HOOK_WAIT_MAX: Duration = Duration::from_millis(crate::config::REMOTE_SYNC_TIMEOUT_MS_MAX);

/// Why the hook must be refused (`remote_sync_on_timeout = "halt"`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{why}; remote_sync_on_timeout = \"halt\": stopping lightningd")]
pub struct SyncRefusal {
    pub why: String,
}

impl Replicator {
    fn quorum_has(&self, b: &super::board::Board, at: (u64, u64)) -> bool {
        b.dests.iter().filter(|d| d.written.is_some_and(|w| w >= at)).count() >= self.opts.quorum
    }

    /// Called by the hook after record `seq` of `generation` is durable in the
    /// local journal. Returns at once unless the synchronous tier covers these
    /// statements; then waits for a quorum, and on timeout applies the policy.
    pub fn after_append<S: AsRef<str>>(&self, generation: u64, seq: u64, statements: &[S]) -> Result<(), SyncRefusal> {
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
        let deadline = Instant::now() + self.opts.sync_timeout.min(HOOK_WAIT_MAX);
        while !self.quorum_has(&b, target) {
            let now = Instant::now();
            if now >= deadline {
                let errors: Vec<String> = b
                    .dests
                    .iter()
                    .map(|d| {
                        format!("{}: {}", d.status.name, d.status.last_error.as_deref().unwrap_or("no answer yet"))
                    })
                    .collect();
                let why = format!(
                    "no quorum of {} destination(s) acknowledged generation {generation} record {seq} within {} ms ({})",
                    self.opts.quorum,
                    self.opts.sync_timeout.min(HOOK_WAIT_MAX).as_millis(),
                    errors.join("; ")
                );
                return match self.opts.on_timeout {
                    OnTimeout::Halt => Err(SyncRefusal { why }),
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
}
