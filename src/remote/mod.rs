//! Replication to remote destinations: encrypted, authenticated copies of the
//! journal off the box (docs/REMOTE.md).
//!
//! - [`store`]: the one small trait every destination implements, and the
//!   URL parsing that picks one; a destination type is one file:
//!   [`file`] (always built), `s3` (feature `remote`, through Apache
//!   OpenDAL), `sftp` (feature `remote-sftp`, over the system's `ssh`);
//! - [`objects`]: object names and the plaintext inside them (bases stream);
//! - [`crypto`]: chunked XChaCha20-Poly1305, bound to the object's name,
//!   journal, generation and base; [`hsm`]: the key from lightningd's hsm_secret;
//! - [`tail`]: reading the local journal behind the writer;
//! - [`replicator`]: the remote tier of a running plugin, with one
//!   [`worker`] per destination, the [`position`] it resumes from, the
//!   synchronous tier ([`sync`]) and the status [`board`];
//! - [`fetch`]: surveying a destination and bringing it back into a local
//!   journal for `restore --from URL`, `verify --from URL`, `status --from URL`.
//!
//! Not here: anything on the hook's path except [`Replicator::after_append`],
//! which returns at once unless the synchronous tier covers the change.

pub mod board;
pub mod crypto;
pub mod fetch;
pub mod file;
pub mod hsm;
pub mod objects;
#[cfg(feature = "remote")]
mod opendal_common;
pub mod position;
pub mod replicator;
#[cfg(feature = "remote")]
pub mod s3;
pub mod settings;
#[cfg(feature = "remote-sftp")]
pub mod sftp;
#[cfg(feature = "remote-sftp")]
mod sftp_dirsync;
pub mod store;
pub mod sync;
pub mod tail;
mod worker;

pub use board::{DestinationStatus, RemoteStatus, StatusSource};
pub use replicator::{Logger, RemoteOptions, Replicator};
pub use settings::{DestinationConfig, OnTimeout, RemoteSync};
pub use store::{open_store, Store, StoreError};
