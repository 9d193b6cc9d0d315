//! The remote tier's shared state: what each destination has acknowledged,
//! what the synchronous tier waits for, and the status the plugin publishes
//! (`replica-status`, the status file). Workers write it, the hook's
//! synchronous wait and the status publisher read it; one mutex, one condvar.

use crate::clock::now_unix_ms;
use crate::journal::Progress;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The synchronous tier's mode, as the status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SyncMode {
    #[default]
    None,
    ChannelState,
    All,
}

impl From<super::RemoteSync> for SyncMode {
    fn from(s: super::RemoteSync) -> SyncMode {
        match s {
            super::RemoteSync::None => SyncMode::None,
            super::RemoteSync::ChannelState => SyncMode::ChannelState,
            super::RemoteSync::All => SyncMode::All,
        }
    }
}

/// A point of the journal's history that a destination can restore.
///
/// Within one generation, records are in history order (`seq`). Across
/// generations the data_version decides: a compacted generation's base is
/// older than the end of the generation it was compacted from, and only its
/// carried records bring it level. So "B is at least A" is: same generation
/// and `seq` at least A's; or a later generation whose data_version is at
/// least A's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reach {
    pub generation: u64,
    pub seq: u64,
    pub data_version: u32,
}

impl Reach {
    pub fn at_least(&self, other: &Reach) -> bool {
        if self.generation == other.generation {
            self.seq >= other.seq
        } else {
            self.generation > other.generation && self.data_version >= other.data_version
        }
    }
}

/// One destination's state, as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DestinationStatus {
    pub name: String,
    /// The destination's position is known (its tip was read).
    pub connected: bool,
    pub acked_generation: u64,
    /// Last record of `acked_generation` the destination holds in full, with
    /// every record before it and its base (0: the base only).
    pub acked_seq: u64,
    /// The data_version of that record (or of the base).
    pub acked_data_version: Option<u32>,
    /// When that record was written to the local journal.
    pub acked_time_unix_ms: u64,
    /// Records in the local journal not yet at the destination (of the
    /// current generation, plus any of an older one when known).
    pub queue_records: u64,
    /// How far behind, in journal time: the newest record's time minus the
    /// newest acknowledged record's time; 0 when caught up.
    pub lag_ms: u64,
    /// How long the oldest record the destination lacks has been waiting
    /// (now minus its time); 0 when caught up.
    #[serde(default)]
    pub behind_ms: u64,
    /// Behind by more than `remote_lag_ms`, or its last attempt failed.
    #[serde(default)]
    pub lagging: bool,
    pub objects_shipped: u64,
    pub bytes_shipped: u64,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
    pub last_error_unix_ms: u64,
    /// The destination's tip counter (grows with every tip written).
    #[serde(default)]
    pub tip_counter: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RemoteStatus {
    pub sync: SyncMode,
    /// The synchronous tier timed out and fell back to background shipping.
    pub degraded: bool,
    pub degraded_reason: Option<String>,
    /// Any destination lagging (see [`DestinationStatus::lagging`]).
    #[serde(default)]
    pub lagging: bool,
    pub destinations: Vec<DestinationStatus>,
}

/// A destination's acknowledged position, with what its tip needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Acked {
    pub reach: Reach,
    /// The first record of the object holding `reach.seq` (0 for the base).
    pub object_first: u64,
    pub base: [u8; 32],
    pub base_version: u32,
    pub time_unix_ms: u64,
}

/// One destination's entry on the board.
#[derive(Debug, Default)]
pub(super) struct Dest {
    pub status: DestinationStatus,
    /// What the destination holds in full, as far as this process knows
    /// (its tip at start, then every acknowledgement): what its tip says.
    pub acked: Option<Acked>,
    /// The tip at the destination is older than `acked`.
    pub tip_pending: bool,
    /// What this process wrote, or read back and authenticated, there: the
    /// only thing the synchronous tier counts.
    pub written: Option<(u64, u64)>,
    /// Time of the oldest local record the destination lacks, when known.
    pub oldest_missing_unix_ms: Option<u64>,
}

pub(super) struct Board {
    pub stop: bool,
    /// The newest (generation, seq) a synchronous change waits for.
    pub want: (u64, u64),
    pub dests: Vec<Dest>,
    pub degraded: Option<String>,
}

pub(super) struct Shared {
    board: Mutex<Board>,
    pub cv: Condvar,
    pub progress: Arc<Progress>,
    pub sync: SyncMode,
    pub lag_ms_max: u64,
}

impl Shared {
    pub fn new(names: Vec<String>, progress: Arc<Progress>, sync: SyncMode, lag_ms_max: u64) -> Shared {
        let dests = names
            .into_iter()
            .map(|name| Dest { status: DestinationStatus { name, ..Default::default() }, ..Default::default() })
            .collect();
        Shared {
            board: Mutex::new(Board { stop: false, want: (0, 0), dests, degraded: None }),
            cv: Condvar::new(),
            progress,
            sync,
            lag_ms_max,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> RemoteStatus {
        let p = self.progress.get();
        let now = now_unix_ms();
        let b = self.lock();
        let mut out = vec![];
        for d in &b.dests {
            let mut s = d.status.clone();
            let behind = (s.acked_generation, s.acked_seq) < (p.generation, p.seq);
            s.queue_records = match (behind, s.acked_generation == p.generation) {
                (false, _) => 0,
                (true, true) => p.seq - s.acked_seq,
                (true, false) => p.seq,
            };
            s.lag_ms = if behind { p.last_write_unix_ms.saturating_sub(s.acked_time_unix_ms) } else { 0 };
            // Until the worker has looked at the oldest missing record, the
            // newest one bounds how long it has waited from below.
            let oldest = d.oldest_missing_unix_ms.unwrap_or(p.last_write_unix_ms);
            s.behind_ms = if behind { now.saturating_sub(oldest) } else { 0 };
            s.lagging = s.last_error.is_some() || s.behind_ms > self.lag_ms_max;
            out.push(s);
        }
        RemoteStatus {
            sync: self.sync,
            degraded: b.degraded.is_some(),
            degraded_reason: b.degraded.clone(),
            lagging: out.iter().any(|d| d.lagging),
            destinations: out,
        }
    }
}

/// Reads the remote tier's status from another thread.
#[derive(Clone)]
pub struct StatusSource {
    pub(super) shared: Arc<Shared>,
}

impl StatusSource {
    pub fn status(&self) -> RemoteStatus {
        self.shared.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_mode_serialises_as_before() {
        // The status file's schema: the same strings as `format!("{:?}")` gave.
        for (m, s) in
            [(SyncMode::None, "\"None\""), (SyncMode::ChannelState, "\"ChannelState\""), (SyncMode::All, "\"All\"")]
        {
            assert_eq!(serde_json::to_string(&m).unwrap(), s);
        }
    }

    #[test]
    fn a_compacted_base_is_not_past_the_generation_it_continues() {
        let old_end = Reach { generation: 4, seq: 12, data_version: 20 };
        let compacted_base = Reach { generation: 5, seq: 0, data_version: 19 };
        let carried = Reach { generation: 5, seq: 1, data_version: 20 };
        assert!(!compacted_base.at_least(&old_end));
        assert!(carried.at_least(&old_end));
        assert!(!old_end.at_least(&carried) || old_end == carried);
        assert!(Reach { generation: 4, seq: 13, data_version: 19 }.at_least(&old_end), "seq decides within");
    }
}
