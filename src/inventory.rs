//! What a journal holds, for `cln-replica status`: its generations, the
//! data_versions and times each can restore, and their sizes.

use crate::journal::format::RecordKind;
use crate::journal::reader::Generation;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub generation: u64,
    /// "snapshot", "empty" (a node created with the plugin in place) or
    /// "compacted" (rolled up from the previous generation).
    pub base: crate::journal::format::BaseKind,
    pub base_version: u32,
    /// What the generation leaves out: "none" or "caches" (docs/CACHES.md).
    pub filter: crate::filter::Filter,
    pub created_unix_ms: u64,
    pub snapshot_bytes: u64,
    pub segments: usize,
    /// Bytes on disk: snapshot plus preallocated segments.
    pub disk_bytes: u64,
    /// Bytes of records written.
    pub record_bytes: u64,
    pub records: u64,
    pub first_version: u32,
    pub last_version: u32,
    pub last_write_unix_ms: u64,
    /// The last record is a seal: the plugin stopped cleanly after it.
    pub sealed: bool,
    /// Reading stopped early: the problem (run `verify` for details).
    pub error: Option<String>,
}

/// Data_versions between two generations that no generation can restore:
/// lightningd committed them while the plugin was not running.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    /// The generation before the gap, and the one after it.
    pub after_generation: u64,
    pub before_generation: u64,
    pub first_version: u32,
    pub last_version: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub journal: PathBuf,
    pub generations: Vec<GenerationSummary>,
    /// Versions missing between consecutive generations, oldest first.
    pub gaps: Vec<Gap>,
}

/// The gaps between consecutive generations. A generation whose base is at
/// most one past its predecessor's last version leaves none (a compacted
/// generation starts at or just below it).
pub fn gaps(generations: &[GenerationSummary]) -> Vec<Gap> {
    generations
        .windows(2)
        .filter(|w| w[1].base_version > w[0].last_version.wrapping_add(1) && w[1].base_version > w[0].last_version)
        .map(|w| Gap {
            after_generation: w[0].generation,
            before_generation: w[1].generation,
            first_version: w[0].last_version + 1,
            last_version: w[1].base_version - 1,
        })
        .collect()
}

pub fn summarize_generation(g: &Generation) -> GenerationSummary {
    let block = g.block_bytes();
    let mut s = GenerationSummary {
        generation: g.number,
        base: g.header.base_kind,
        base_version: g.header.base_version,
        filter: g.header.filter,
        created_unix_ms: g.header.created_unix_ms,
        snapshot_bytes: g.header.snapshot_bytes,
        segments: g.segments.len(),
        disk_bytes: g.header.snapshot_bytes + g.segments.iter().map(|s| s.file_bytes).sum::<u64>(),
        record_bytes: 0,
        records: 0,
        first_version: g.header.base_version,
        last_version: g.header.base_version,
        last_write_unix_ms: g.header.created_unix_ms,
        sealed: false,
        error: None,
    };
    for rec in g.records() {
        match rec {
            Ok(r) => {
                s.records += 1;
                s.record_bytes += r.header.disk_bytes(block);
                s.last_version = r.header.data_version;
                s.last_write_unix_ms = r.header.time_unix_ms;
                s.sealed = r.header.kind == RecordKind::Seal;
            }
            Err(e) => {
                s.error = Some(e.to_string());
                break;
            }
        }
    }
    s
}

pub fn inventory(journal: &Path) -> Result<Inventory> {
    let mut generations = vec![];
    for g in crate::journal::reader::generations_each(journal)? {
        let g = g.map_err(|(n, e)| anyhow::Error::new(e).context(format!("generation {n}")))?;
        let summary = summarize_generation(&g);
        if summary.error.is_some() && crate::journal::reader::retired_since(&g) {
            continue;
        }
        generations.push(summary);
    }
    let gaps = gaps(&generations);
    Ok(Inventory { journal: journal.to_path_buf(), generations, gaps })
}
