//! cln-replica: a Core Lightning `db_write` plugin that keeps a durable
//! journal of lightningd's database on a second device, and the tools that
//! restore and verify it. docs/ARCHITECTURE.md shows how the modules fit.
//!
//! - [`plugin`]: the plugin protocol and the hook handler (the hot path);
//! - [`state`]: the data_version discipline (what each hook call means);
//! - [`journal`]: the on-disk journal (format, writer, reader);
//! - [`device`]: the I/O trait everything durable goes through;
//! - [`snapshot`], [`replay`], [`restore`], [`verify`], [`inventory`]: the
//!   way in and the way back out; [`drill`], a restore from every destination, on a schedule;
//! - [`compact`], compaction (a new generation rolled up from the previous one)
//!   and retention; [`mirror`], a bootable second database fed from the journal;
//! - [`remote`]: encrypted replication to S3, SFTP and file destinations;
//! - [`sim`] (feature `lab`): a lightningd simulator and CLN-shaped workloads, for tests and `demo`;
//! - [`panel`] (feature `panel`): the appliance's status LEDs and safe-shutdown button;
//! - [`cli`]: the command line, one file per subcommand.

pub mod cli;
pub mod clock;
pub mod compact;
pub mod config;
pub mod crashpoint;
pub mod dbcompare;
pub mod device;
pub mod drill;
pub mod files;
pub mod filter;
pub mod health;
pub mod inventory;
pub mod journal;
pub mod mirror;
pub mod pace;
#[cfg(feature = "panel")]
pub mod panel;
pub mod plugin;
pub mod priority;
pub mod remote;
pub mod replay;
pub mod restore;
pub mod rng;
pub mod rpc;
#[cfg(feature = "lab")]
pub mod savings;
#[cfg(feature = "lab")]
pub mod sim;
pub mod snapshot;
pub mod sql;
pub mod state;
pub mod status;
pub mod verify;
