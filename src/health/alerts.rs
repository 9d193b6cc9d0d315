//! `on_alert = ["/path/to/command", "args"...]`: a command run when a
//! condition is raised or cleared (halted, degraded, remote-lagging,
//! device-nearly-full, drill-failed).
//!
//! [`Conditions`] turns successive statuses into transitions (pure). The
//! [`Runner`] thread runs the command for each, one at a time, from a
//! bounded queue: no shell, stdin/stdout/stderr to /dev/null, killed after
//! [`ALERT_COMMAND_TIMEOUT`]. The command gets the condition in its
//! environment (`CLN_REPLICA_ALERT`, `CLN_REPLICA_ALERT_STATE`,
//! `CLN_REPLICA_ALERT_DESCRIPTION`) and the same three as arguments after
//! the configured ones. The description is built here from fixed words and
//! numbers, never from an error message, so it cannot carry a secret or a
//! URL.

use crate::status::{PluginState, PluginStatus};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A command still running after this long is killed.
pub const ALERT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Transitions waiting for the command; past this many, new ones are dropped
/// (and logged): a flapping condition cannot pile up work.
pub const ALERT_QUEUE_MAX: usize = 16;
/// How often a running command is checked for its exit.
const ALERT_POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Halted,
    Degraded,
    RemoteLagging,
    DeviceNearlyFull,
    /// The last `cln-replica drill` failed (or its result is unreadable).
    DrillFailed,
}

impl Condition {
    pub const ALL: [Condition; 5] = [
        Condition::Halted,
        Condition::Degraded,
        Condition::RemoteLagging,
        Condition::DeviceNearlyFull,
        Condition::DrillFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Halted => "halted",
            Condition::Degraded => "degraded",
            Condition::RemoteLagging => "remote-lagging",
            Condition::DeviceNearlyFull => "device-nearly-full",
            Condition::DrillFailed => "drill-failed",
        }
    }

    fn holds(self, s: &PluginStatus) -> bool {
        match self {
            Condition::Halted => s.state == PluginState::Halted,
            Condition::Degraded => s.state == PluginState::Degraded,
            Condition::RemoteLagging => s.remote_lagging == Some(true),
            Condition::DeviceNearlyFull => s.device_nearly_full,
            Condition::DrillFailed => s.drill_ok == Some(false),
        }
    }

    /// What it means, in fixed words and numbers only.
    fn describe(self, s: &PluginStatus, raised: bool) -> String {
        match (self, raised) {
            (Condition::Halted, true) => {
                "cln-replica refuses database writes: lightningd stops until the cause is fixed".into()
            }
            (Condition::Halted, false) => "cln-replica no longer halted".into(),
            (Condition::Degraded, true) => "the backup device failed: lightningd runs WITHOUT A BACKUP".into(),
            (Condition::Degraded, false) => "cln-replica no longer runs without its backup device".into(),
            (Condition::RemoteLagging, true) => {
                let lag = s.remote.as_ref().and_then(|r| r.destinations.iter().map(|d| d.lag_ms).max()).unwrap_or(0);
                format!("a remote destination is behind or failing (largest lag {:.1} s)", lag as f64 / 1000.0)
            }
            (Condition::RemoteLagging, false) => "every remote destination caught up".into(),
            (Condition::DrillFailed, true) => {
                "the last restore drill failed: a copy does not restore (cln-replica drill says why)".into()
            }
            (Condition::DrillFailed, false) => "the last restore drill passed".into(),
            (Condition::DeviceNearlyFull, raised) => {
                let free = s.device_free_bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0);
                let days = s.device_days_left.map_or("unknown".into(), |d| format!("{d:.1}"));
                format!(
                    "backup device {}: {free:.1} MiB free, days left at the current rate: {days}",
                    if raised { "nearly full" } else { "has room again" }
                )
            }
        }
    }
}

/// One raised or cleared condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub condition: Condition,
    pub raised: bool,
    pub description: String,
}

impl Transition {
    pub fn state(&self) -> &'static str {
        if self.raised {
            "raised"
        } else {
            "cleared"
        }
    }
}

/// Which conditions hold, and what changed since the last status.
#[derive(Debug, Default)]
pub struct Conditions {
    raised: [bool; Condition::ALL.len()],
}

impl Conditions {
    pub fn observe(&mut self, s: &PluginStatus) -> Vec<Transition> {
        let mut out = Vec::new();
        for (i, c) in Condition::ALL.into_iter().enumerate() {
            let now = c.holds(s);
            if now != self.raised[i] {
                self.raised[i] = now;
                out.push(Transition { condition: c, raised: now, description: c.describe(s, now) });
            }
        }
        out
    }
}

/// The thread that runs the command, one transition at a time.
pub struct Runner {
    queue: Option<SyncSender<Transition>>,
    thread: Option<JoinHandle<()>>,
}

type Log = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl Runner {
    pub fn start(argv: Vec<String>, log: Log) -> std::io::Result<Runner> {
        let (tx, rx) = mpsc::sync_channel(ALERT_QUEUE_MAX);
        let thread = std::thread::Builder::new().name("alerts".into()).spawn(move || run_all(&argv, rx, &*log))?;
        Ok(Runner { queue: Some(tx), thread: Some(thread) })
    }

    /// Queues a transition; false if the queue is full (it is dropped).
    pub fn submit(&self, t: Transition) -> bool {
        match self.queue.as_ref().map(|q| q.try_send(t)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Lets the queued commands run, then ends the thread; gives up waiting
    /// after `bound` (the thread then ends on its own after the command it runs).
    pub fn finish(mut self, bound: Duration) {
        drop(self.queue.take());
        let Some(h) = self.thread.take() else { return };
        let deadline = Instant::now() + bound;
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(ALERT_POLL_INTERVAL);
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
}

fn run_all(argv: &[String], rx: Receiver<Transition>, log: &dyn Fn(&str, &str)) {
    for t in rx {
        let what = format!("on_alert for {} {}", t.condition.name(), t.state());
        match run_one(argv, &t) {
            Ok(status) if status.success() => log("debug", &format!("{what}: exited 0")),
            Ok(status) => log("warn", &format!("{what}: {status}")),
            Err(e) => log("warn", &format!("{what}: {e}")),
        }
    }
}

fn run_one(argv: &[String], t: &Transition) -> std::io::Result<std::process::ExitStatus> {
    let (program, args) = argv.split_first().ok_or_else(|| std::io::Error::other("on_alert is empty"))?;
    let mut child = Command::new(program)
        .args(args)
        .args([t.condition.name(), t.state(), &t.description])
        .env("CLN_REPLICA_ALERT", t.condition.name())
        .env("CLN_REPLICA_ALERT_STATE", t.state())
        .env("CLN_REPLICA_ALERT_DESCRIPTION", &t.description)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + ALERT_COMMAND_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!("killed after {} s", ALERT_COMMAND_TIMEOUT.as_secs())));
        }
        std::thread::sleep(ALERT_POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StatusBoard;

    #[test]
    fn transitions_once_each_way() {
        let board = StatusBoard::default();
        board.set_state(PluginState::InSync, None);
        let mut c = Conditions::default();
        let mut s = board.snapshot();
        assert!(c.observe(&s).is_empty());
        s.device_nearly_full = true;
        s.device_free_bytes = Some(3 << 20);
        let t = c.observe(&s);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].condition, t[0].raised), (Condition::DeviceNearlyFull, true));
        assert!(t[0].description.contains("3.0 MiB free"), "{}", t[0].description);
        assert!(c.observe(&s).is_empty(), "no repeat while it holds");
        s.device_nearly_full = false;
        s.state = PluginState::Halted;
        s.reason = Some("secret-bearing reason".into());
        let t = c.observe(&s);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| !t.description.contains("secret")));
        assert_eq!(
            t.iter().map(|t| (t.condition.name(), t.state())).collect::<Vec<_>>(),
            [("halted", "raised"), ("device-nearly-full", "cleared")]
        );
    }
}
