//! Rebuilding `lightningd.sqlite3` from the journal.
//!
//! The newest generation whose base is at or before the wanted version is
//! copied from its snapshot (checksum checked) to a temporary file next to
//! the destination, its records are replayed ([`crate::replay`]), the result
//! is checked (integrity, data_version), flushed, and only then renamed into
//! place: an interrupted restore never leaves a half-built database under
//! the destination's name.

use crate::files::Staged;
use crate::filter::Filter;
use crate::journal::format::RECORD_HEADER_BYTES;
use crate::journal::reader::{self, Generation};
use crate::replay;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub mod target;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub from: PathBuf,
    pub to: PathBuf,
    /// Stop at this data_version (inclusive); the newest if `None`.
    pub at: Option<u32>,
    /// Only changes written at or before this time (unix ms).
    pub before_unix_ms: Option<u64>,
    /// Replace an existing `to` (it is kept aside, never deleted).
    pub force: bool,
    /// Replace a file at a newer data_version (or one whose version cannot
    /// be told) with this older state.
    pub allow_older: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub to: PathBuf,
    pub generation: u64,
    pub base_version: u32,
    pub records_applied: u64,
    pub data_version: u32,
    /// When the restored state was written: its last change's time (the
    /// snapshot's when no change was replayed).
    pub time_unix_ms: u64,
    /// The last change was acknowledged to lightningd, and nothing later in
    /// the journal shows whether lightningd committed it (it crashed or
    /// stopped right after). The restored database includes it.
    pub last_change_unconfirmed: bool,
    pub torn_tail_ignored: bool,
    pub bytes: u64,
    pub seconds: f64,
    /// What the backup left out ("none" or "caches").
    pub filter: Filter,
    /// For a filtered backup: start lightningd once with `--rescan=-H`, H
    /// this height, so it rebuilds the tables left out (docs/CACHES.md).
    pub rescan_from_height: Option<u32>,
    /// What became of the file `to` named before.
    #[serde(flatten)]
    pub installed: target::Installed,
}

/// The height a node restored from a backup that left out `filter`'s tables
/// must rescan from: lightningd keeps the block it is given and processes
/// every block after it again, so one below the first block the node ever
/// processed rebuilds the caches of all of them. `None` when nothing was
/// left out or the node has no block yet.
pub fn rescan_from_height(conn: &rusqlite::Connection, filter: Filter) -> Result<Option<u32>> {
    if filter == Filter::None {
        return Ok(None);
    }
    if !crate::snapshot::has_table(conn, "blocks")? {
        return Ok(None);
    }
    let min: Option<u32> = conn.query_row("SELECT MIN(height) FROM blocks", [], |r| r.get(0))?;
    Ok(min.map(|h| h.saturating_sub(1)))
}

/// What an operator must do with a database restored from a filtered backup.
pub fn filtered_note(filter: Filter, rescan_from_height: Option<u32>) -> Option<String> {
    if filter == Filter::None {
        return None;
    }
    let tables = Filter::Caches.tables().join(", ");
    Some(match rescan_from_height {
        Some(h) => format!(
            "this backup is filtered (filter = \"{filter}\"): it left out {tables}, which lightningd rebuilds from \
             the chain. Start lightningd ONCE with --rescan=-{h} (it processes the blocks after {h} again; the \
             Bitcoin backend must still have them: a pruned bitcoind may not). Without it, the node rejects gossip \
             about channels funded in the blocks it knows. See docs/CACHES.md"
        ),
        None => format!(
            "this backup is filtered (filter = \"{filter}\"): it left out {tables}; the node has processed no block \
             yet, so there is nothing to rescan"
        ),
    })
}

/// Picks the generation to restore from: for `at`, the newest whose base is
/// at or before it; for `before_unix_ms`, the newest created at or before that
/// time (its records are then replayed up to the time). With neither, the
/// newest. At the base version of a filtered generation, an unfiltered one
/// before it that reaches that version is preferred. Older generations are
/// kept by retention (`keep_generations`), so both reach back across
/// generations.
pub fn pick_generation(
    generations: &[Generation],
    at: Option<u32>,
    before_unix_ms: Option<u64>,
) -> Result<&Generation> {
    let Some(newest) = generations.last() else {
        bail!("the journal holds no generation: nothing to restore (has the plugin run with this journal?)");
    };
    let fits = |g: &&Generation| {
        at.is_none_or(|v| g.header.base_version <= v) && before_unix_ms.is_none_or(|t| g.header.created_unix_ms <= t)
    };
    if at.is_none() && before_unix_ms.is_none() {
        return Ok(newest);
    }
    let picked = generations.iter().rev().find(fits);
    // At the exact base of a filtered generation (a filter switched on), the
    // generation before it usually reaches the same version with its caches
    // kept: that restore needs no rescan.
    if let (Some(v), Some(g)) = (at, picked) {
        let before = generations.iter().rev().find(|p| p.number < g.number);
        if let Some(p) = before.filter(|p| {
            g.header.base_version == v
                && g.header.filter != Filter::None
                && p.header.filter == Filter::None
                && before_unix_ms.is_none_or(|t| p.header.created_unix_ms <= t)
        }) {
            let s = crate::inventory::summarize_generation(p);
            if s.error.is_none() && s.first_version <= v && s.last_version >= v {
                return Ok(p);
            }
        }
    }
    picked.ok_or_else(|| {
        let oldest = &generations[0];
        match (at, before_unix_ms) {
            (Some(at), _) if oldest.header.base_version > at => anyhow::anyhow!(
                "data_version {at} is older than the oldest generation's snapshot (data_version {}): it is not \
                 restorable (raise keep_generations to keep more history)",
                oldest.header.base_version
            ),
            (_, Some(t)) => anyhow::anyhow!(
                "{} is before the oldest generation kept was created ({}, data_version {}): it is not restorable \
                 (raise keep_generations to keep more history)",
                crate::clock::format_unix_ms(t),
                crate::clock::format_unix_ms(oldest.header.created_unix_ms),
                oldest.header.base_version
            ),
            _ => anyhow::anyhow!("no generation covers the requested point"),
        }
    })
}

/// How far a replay has got, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct ReplayProgress {
    pub records: u64,
    /// Bytes of the generation's records read so far, and in all.
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// Bytes of records in a generation's segments (the last segment up to its
/// first zero block, found by bisection: records are contiguous), and each
/// segment's starting position in that count.
pub fn generation_extent(g: &Generation) -> (u64, Vec<u64>) {
    use std::os::unix::fs::FileExt;
    let block = g.block_bytes() as u64;
    let mut starts = Vec::with_capacity(g.segments.len());
    let mut total = 0;
    for (i, s) in g.segments.iter().enumerate() {
        starts.push(total);
        if i + 1 < g.segments.len() {
            total += s.file_bytes;
            continue;
        }
        let zero_at = |b: u64| -> bool {
            let mut h = [0u8; RECORD_HEADER_BYTES];
            std::fs::File::open(&s.path)
                .and_then(|f| f.read_exact_at(&mut h, b * block))
                .map_or(true, |()| h == [0; RECORD_HEADER_BYTES])
        };
        let (mut lo, mut hi) = (1, s.file_bytes / block);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if zero_at(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        total += lo * block;
    }
    (total, starts)
}

/// Restores with `progress` called after each applied record.
pub fn restore(opts: &RestoreOptions, mut progress: impl FnMut(&ReplayProgress)) -> Result<RestoreReport> {
    let started = Instant::now();
    let existing = target::precheck(&opts.to, opts.force)?;
    let generations =
        reader::generations(&opts.from).with_context(|| format!("cannot read the journal {}", opts.from.display()))?;
    let generation = pick_generation(&generations, opts.at, opts.before_unix_ms)?;
    let staged = Staged::beside(&opts.to);
    let tmp = staged.path();
    let report = (|| -> Result<RestoreReport> {
        replay::copy_snapshot(generation, tmp)?;
        let conn = replay::open_for_replay(tmp)?;
        let (total_bytes, starts) = generation_extent(generation);
        let mut n = 0;
        let outcome = replay::replay_generation(&conn, generation, opts.at, opts.before_unix_ms, |r| {
            n += 1;
            let done_bytes = starts.get(r.loc.segment as usize - 1).copied().unwrap_or(0) + r.loc.offset;
            progress(&ReplayProgress { records: n, done_bytes, total_bytes });
        })?;
        if let Some(at) = opts.at {
            if outcome.data_version != at {
                bail!(
                    "data_version {at} is not in the journal: generation {} covers data_versions {} to {}{}",
                    generation.number,
                    generation.header.base_version,
                    outcome.data_version,
                    match generations.iter().find(|g| g.number > generation.number) {
                        Some(next) => format!(
                            ", the next generation starts at {} (lightningd ran without the plugin in between)",
                            next.header.base_version
                        ),
                        None => String::new(),
                    }
                );
            }
        }
        replay::check_database(&conn, outcome.data_version, true)?;
        let filter = generation.header.filter;
        let rescan = rescan_from_height(&conn, filter).context("cannot read the restored database's blocks")?;
        conn.close().context("cannot close the restored database")?;
        Ok(RestoreReport {
            to: opts.to.clone(),
            generation: generation.number,
            base_version: generation.header.base_version,
            records_applied: outcome.applied,
            data_version: outcome.data_version,
            time_unix_ms: if outcome.applied > 0 {
                outcome.last_time_unix_ms
            } else {
                generation.header.created_unix_ms
            },
            last_change_unconfirmed: outcome.last_unconfirmed && opts.at.is_none(),
            torn_tail_ignored: outcome.torn_tail.is_some(),
            bytes: std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
            filter,
            rescan_from_height: rescan,
            installed: target::Installed::default(),
        })
    })()?;
    target::check_not_older(&opts.to, &existing, report.data_version, opts.allow_older)?;
    let installed = target::put_in_place(staged, &existing)?;
    Ok(RestoreReport { installed, ..report })
}
