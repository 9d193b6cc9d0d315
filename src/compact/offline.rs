//! `cln-replica compact` with the plugin stopped.

use super::{carried_records, Builder};
use crate::config::Config;
use crate::device::Device;
use crate::journal::reader::{self, RecordLoc};
use crate::journal::{layout, retention, Journal, WriteError};
use anyhow::{bail, Result};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct CompactReport {
    pub old_generation: u64,
    pub generation: u64,
    pub base_version: u32,
    pub records_applied: u64,
    pub records_carried: usize,
    pub snapshot_bytes: u64,
    pub removed_generations: Vec<u64>,
    pub seconds: f64,
}

/// Progress of an offline compaction (for a progress bar).
pub type ProgressFn = Box<dyn FnMut(&crate::restore::ReplayProgress) + Send>;

/// `cln-replica compact` with the plugin stopped: takes the journal's lock,
/// compacts the newest generation, applies retention.
pub fn compact_offline(
    config: &Config,
    device: Arc<dyn Device>,
    progress: Option<ProgressFn>,
) -> Result<CompactReport> {
    let started = std::time::Instant::now();
    let mut journal = match Journal::open(&config.journal, device.clone(), config.journal_options()) {
        Ok(j) => j,
        Err(WriteError::Locked { lock, .. }) => bail!(
            "the plugin is running (it holds the journal's lock {}): ask it to compact with \
             `lightning-cli replica-compact` instead",
            lock.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let generations = reader::generations(&config.journal)?;
    let Some(old) = generations.last() else { bail!("the journal holds no generation: nothing to compact") };
    assert_eq!(old.number, journal.generation(), "the writer resumes the newest generation");
    let mut b = Builder::start(
        &config.journal,
        device.clone(),
        &config.journal_options(),
        old,
        journal.next_generation_number(),
        None,
        &mut |_| {},
    )?;
    if let Some(mut f) = progress {
        let (total_bytes, starts) = crate::restore::generation_extent(old);
        b.on_record = Some(Box::new(move |records, loc: RecordLoc| {
            let done_bytes = starts.get(loc.segment as usize - 1).copied().unwrap_or(0) + loc.offset;
            f(&crate::restore::ReplayProgress { records, done_bytes, total_bytes });
        }));
    }
    let result = (|| -> Result<CompactReport> {
        b.catch_up(None)?;
        let prepared = b.finalize()?;
        let applied = b.applied;
        let h = b.handoff(prepared);
        let carried = carried_records(&config.journal, &h, None)?;
        let was_sealed = journal.is_sealed();
        let generation = journal.adopt_generation(&h.prepared, &carried)?;
        if was_sealed {
            journal.seal()?;
        }
        let removed =
            retention::retire_generations(device.as_ref(), &config.journal, config.keep_generations as usize)?;
        Ok(CompactReport {
            old_generation: h.old_generation,
            generation,
            base_version: h.prepared.header.base_version,
            records_applied: applied,
            records_carried: carried.len(),
            snapshot_bytes: h.prepared.header.snapshot_bytes,
            removed_generations: removed,
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        let _ =
            device.remove_dir_all(&layout::generation_compact_dir(&config.journal, journal.next_generation_number()));
    }
    result
}
