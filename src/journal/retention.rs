//! Retention: removing generations older than the newest `keep`.
//!
//! Each one is first renamed to `gen-N.retired.tmp` (readers ignore it, the
//! writer's next open finishes removing it) and the rename flushed, so a crash
//! never leaves a half-removed generation under its real name. A generation
//! is retired only once a newer one is durable (the caller's duty: it runs
//! after a new generation's rename was flushed).

use super::error::{io_at, WriteError};
use super::layout;
use crate::device::Device;
use std::path::Path;

/// Removes every generation but the newest `keep`; returns the numbers removed.
pub fn retire_generations(device: &dyn Device, journal: &Path, keep: usize) -> Result<Vec<u64>, WriteError> {
    assert!(keep >= 1, "retention never removes the newest generation");
    let numbers = layout::list_generations(journal)?;
    let old = &numbers[..numbers.len().saturating_sub(keep)];
    let flush = || device.sync_dir(journal).map_err(io_at(format!("cannot flush {}", journal.display())));
    for &g in old {
        let dir = layout::generation_dir(journal, g);
        let retired = layout::generation_retired_dir(journal, g);
        device.rename(&dir, &retired).map_err(io_at(format!("cannot rename {}", dir.display())))?;
        flush()?;
        crate::crashpoint::crash_point("retention-renamed");
        device.remove_dir_all(&retired).map_err(io_at(format!("cannot remove {}", retired.display())))?;
    }
    if !old.is_empty() {
        flush()?;
    }
    Ok(old.to_vec())
}
