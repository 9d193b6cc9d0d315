//! Compaction: a new generation rolled up from the current one, and retention.
//!
//! The new generation's snapshot is the current generation's snapshot with the
//! generation's records replayed onto it ([`crate::replay`], exactly as restore
//! replays), never a copy of lightningd's live file: the history stays one
//! history, and compaction needs nothing from lightningd.
//!
//! The steps, each with a crash point ([`crate::crashpoint`]):
//!
//! 1. [`Builder::start`]: `gen-N.compact.tmp/` is created on the journal's
//!    device, the old snapshot copied into it (checksum checked), and the new
//!    segment 1 created full-size and zero-filled (`compact-snapshot-copied`);
//! 2. [`Builder::catch_up`], repeatedly: the old generation's records are read
//!    up to a durable sequence number and the committed ones applied;
//! 3. [`Builder::finalize`]: the snapshot is flushed, its size and checksum go
//!    into segment 1's header, flushed (`compact-prepared`). The snapshot is at
//!    the *confirmed* version V: a pending transaction (acknowledged, not yet
//!    known committed) is not in it;
//! 4. [`crate::journal::Journal::adopt_generation`] (under the journal's lock,
//!    in the plugin at the start of a hook): the records after V — the pending
//!    one and whatever arrived since step 3 — are copied verbatim into segment
//!    1 and flushed (`compact-records-carried`), then the directory is renamed
//!    to `gen-N` and the journal directory flushed (`compact-renamed`);
//! 5. retention removes the generations beyond `keep_generations`, each
//!    renamed to `gen-M.retired.tmp` before it is deleted (`retention-renamed`).
//!
//! Before step 4's rename nothing visible changed; after it, the new
//! generation holds every acknowledged record. Leftover `.tmp` directories are
//! ignored by readers and removed by the writer's next open.
//!
//! In the plugin, steps 1-3 run in a background thread ([`Compactor`]) that
//! follows the journal through [`Progress`] and hands over only when it is
//! within a few records of the tip; the hook thread then only copies those few
//! records (one write and flush each) and renames a directory. The snapshot's
//! checksum, its flush and the segment's zero-fill all happen off the hook.

//!
//! - [`builder`]: steps 1-3 and the records to carry;
//! - [`compactor`]: the plugin's background job and its status;
//! - [`offline`]: `cln-replica compact` with the plugin stopped.

pub mod builder;
pub mod compactor;
pub mod offline;

pub use builder::{carried_records, discard, Builder, Handoff};
pub use compactor::{CompactionPhase, CompactionProgress, CompactionState, CompactionStatus, Compactor, RequestError};
pub use offline::{compact_offline, CompactReport, ProgressFn};
