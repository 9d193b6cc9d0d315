//! Named points where a test can kill the process: with
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
