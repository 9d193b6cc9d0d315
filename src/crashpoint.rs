//! Named points where a test can kill the process (or hold it, below): with
//! `CLN_REPLICA_CRASH_AT=<name>` in its environment, the process aborts
//! (as abruptly as SIGKILL: no destructor, no flush) when it reaches that
//! point. Used by the crash tests of compaction and retention, through the
//! real binary built with the `lab` feature (the default; the binary an
//! operator installs has none). Reading the variable costs one lookup per call, off the hook's
//! normal path (only compaction and retention steps call it).

pub const CRASH_ENV: &str = "CLN_REPLICA_CRASH_AT";

/// The steps of compaction and retention, in the order they run.
pub const COMPACTION_STEPS: &[&str] =
    &["compact-snapshot-copied", "compact-prepared", "compact-records-carried", "compact-renamed", "retention-renamed"];

/// Aborts the process if `CLN_REPLICA_CRASH_AT` names `step` (in a build
/// with the `lab` feature; a no-op otherwise).
#[cfg(feature = "lab")]
pub fn crash_point(step: &str) {
    debug_assert!(COMPACTION_STEPS.contains(&step), "unknown crash point {step}");
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == step) {
        eprintln!("cln-replica: {CRASH_ENV}={step}: aborting here");
        std::process::abort();
    }
}

#[cfg(not(feature = "lab"))]
#[inline(always)]
pub fn crash_point(step: &str) {
    debug_assert!(COMPACTION_STEPS.contains(&step), "unknown crash point {step}");
}

/// With `CLN_REPLICA_HOLD_AT=<step>` and `CLN_REPLICA_HOLD_DIR=<dir>`: holds
/// the thread at a step, so that a test can act while it is there. The n-th
/// time the step is reached (from 1) the process creates `<dir>/held-<n>`
/// and waits until the test creates `<dir>/release-<n>`, for at most
/// [`HOLD_MAX`] (then it goes on, and the test's own bounds fail it).
pub const HOLD_ENV: &str = "CLN_REPLICA_HOLD_AT";
pub const HOLD_DIR_ENV: &str = "CLN_REPLICA_HOLD_DIR";
#[cfg(feature = "lab")]
const HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(120);
#[cfg(feature = "lab")]
const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// See [`HOLD_ENV`] (in a build with the `lab` feature; a no-op otherwise).
#[cfg(feature = "lab")]
pub fn hold_point(step: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HELD: AtomicU64 = AtomicU64::new(0);
    debug_assert!(COMPACTION_STEPS.contains(&step), "unknown hold point {step}");
    if std::env::var_os(HOLD_ENV).is_none_or(|v| v != step) {
        return;
    }
    let Some(dir) = std::env::var_os(HOLD_DIR_ENV).map(std::path::PathBuf::from) else { return };
    let n = HELD.fetch_add(1, Ordering::Relaxed) + 1;
    if std::fs::write(dir.join(format!("held-{n}")), b"").is_err() {
        return;
    }
    let started = std::time::Instant::now();
    while !dir.join(format!("release-{n}")).exists() && started.elapsed() < HOLD_MAX {
        std::thread::sleep(HOLD_POLL);
    }
}

#[cfg(not(feature = "lab"))]
#[inline(always)]
pub fn hold_point(step: &str) {
    debug_assert!(COMPACTION_STEPS.contains(&step), "unknown hold point {step}");
}
