//! A lightningd simulator and CLN-shaped workloads, in the library so that
//! both the tests and `cln-replica demo` use them.
//!
//! - [`mainnet`]: block processing shaped like a mainnet node's;
//! - [`node`]: the simulated lightningd (real SQLite, the real plugin binary);
//! - [`workload`]: changes shaped like CLN's own, on CLN's real schema;
//! - [`trace`]: traces recorded from a real lightningd.

pub mod mainnet;
pub mod node;
pub mod trace;
pub mod workload;

pub use node::{Change, HookOutcome, SimNode};

/// How lightningd ends a transaction whose hook answered `continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEnd {
    /// It commits.
    Commit,
    /// It dies between the hook's `continue` and COMMIT: the transaction is
    /// rolled back, and the plugin sees its stdin close.
    CrashBeforeCommit,
}
