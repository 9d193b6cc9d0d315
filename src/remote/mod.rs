//! Replication to remote destinations: encrypted, authenticated copies of the
//! journal off the box (docs/REMOTE.md).
//!
//! - [`store`]: the one small trait every destination implements, and the
//!   URL parsing that picks one; a destination type is one file:
//!   [`file`] (always built), `s3` (feature `remote`), `sftp` (feature
//!   `remote-sftp`), the last two through Apache OpenDAL;
//! - [`objects`]: object names and the plaintext inside them;
//! - [`crypto`]: XChaCha20-Poly1305 with the object name as associated data;
//! - [`tail`]: reading the local journal behind the writer;
//! - [`shipper`]: the background workers, the synchronous tier and its quorum;
//! - [`fetch`]: bringing a destination back into a local journal for
//!   `restore --from URL` and `verify --from URL`.
//!
//! Not here: anything on the hook's path except [`shipper::Replicator::wait_durable`],
//! which only runs for changes the synchronous tier covers.

pub mod crypto;
pub mod fetch;
pub mod file;
pub mod objects;
#[cfg(any(feature = "remote", feature = "remote-sftp"))]
mod opendal_common;
#[cfg(feature = "remote")]
pub mod s3;
pub mod settings;
#[cfg(feature = "remote-sftp")]
pub mod sftp;
pub mod shipper;
pub mod store;
pub mod tail;

pub use settings::{DestinationConfig, OnTimeout, RemoteSync};
pub use store::{open_store, Store};
