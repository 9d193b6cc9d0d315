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
