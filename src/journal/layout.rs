//! Names and listing of the journal directory:
//!
//! ```text
//! <journal>/
//!   LOCK                          flock'd by the one plugin writing here
//!   gen-0000000001/               one generation: a snapshot and the changes after it
//!     snapshot.sqlite3            the database at the generation's base data_version
//!     segment-00000001            records, preallocated and zero-filled
//!     segment-00000002
//!   gen-0000000002/ ...           a newer generation (after a gap, or compaction)
//!   gen-0000000003.tmp/           being created; ignored by readers, removed by the writer
//! ```

use super::reader::JournalError;
use std::fs;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "LOCK";
pub const SNAPSHOT_FILE: &str = "snapshot.sqlite3";
const GEN_PREFIX: &str = "gen-";
const SEGMENT_PREFIX: &str = "segment-";
pub const TMP_SUFFIX: &str = ".tmp";

pub fn generation_dir(journal: &Path, generation: u64) -> PathBuf {
    journal.join(format!("{GEN_PREFIX}{generation:010}"))
}

pub fn generation_tmp_dir(journal: &Path, generation: u64) -> PathBuf {
    journal.join(format!("{GEN_PREFIX}{generation:010}{TMP_SUFFIX}"))
}

/// Where compaction builds the next generation before it is adopted.
pub fn generation_compact_dir(journal: &Path, generation: u64) -> PathBuf {
    journal.join(format!("{GEN_PREFIX}{generation:010}.compact{TMP_SUFFIX}"))
}

/// A generation being removed by retention: renamed first, so that no reader
/// ever sees a half-removed generation.
pub fn generation_retired_dir(journal: &Path, generation: u64) -> PathBuf {
    journal.join(format!("{GEN_PREFIX}{generation:010}.retired{TMP_SUFFIX}"))
}

pub fn segment_path(gen_dir: &Path, segment: u32) -> PathBuf {
    gen_dir.join(format!("{SEGMENT_PREFIX}{segment:08}"))
}

pub fn segment_tmp_path(gen_dir: &Path, segment: u32) -> PathBuf {
    gen_dir.join(format!("{SEGMENT_PREFIX}{segment:08}{TMP_SUFFIX}"))
}

fn listing(dir: &Path) -> impl Fn(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: dir.to_path_buf(), source }
}

fn parse_number<T: std::str::FromStr>(name: &str, prefix: &str) -> Option<T> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The complete generations in a journal directory, oldest first.
pub fn list_generations(journal: &Path) -> Result<Vec<u64>, JournalError> {
    let mut out = vec![];
    for entry in fs::read_dir(journal).map_err(listing(journal))? {
        let entry = entry.map_err(listing(journal))?;
        if let Some(g) = entry.file_name().to_str().and_then(|n| parse_number::<u64>(n, GEN_PREFIX)) {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The segments of a generation, in order.
pub fn list_segments(gen_dir: &Path) -> Result<Vec<u32>, JournalError> {
    let mut out = vec![];
    for entry in fs::read_dir(gen_dir).map_err(listing(gen_dir))? {
        let entry = entry.map_err(listing(gen_dir))?;
        if let Some(s) = entry.file_name().to_str().and_then(|n| parse_number::<u32>(n, SEGMENT_PREFIX)) {
            out.push(s);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Leftovers of an interrupted creation (`*.tmp`), directly under `dir`.
pub fn list_tmp(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut out = vec![];
    for entry in fs::read_dir(dir).map_err(listing(dir))? {
        let entry = entry.map_err(listing(dir))?;
        if entry.file_name().to_str().is_some_and(|n| n.ends_with(TMP_SUFFIX)) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let j = Path::new("/j");
        assert_eq!(generation_dir(j, 12), Path::new("/j/gen-0000000012"));
        assert_eq!(parse_number::<u64>("gen-0000000012", GEN_PREFIX), Some(12));
        assert_eq!(parse_number::<u64>("gen-0000000012.tmp", GEN_PREFIX), None);
        assert_eq!(parse_number::<u64>("gen-", GEN_PREFIX), None);
        assert_eq!(parse_number::<u32>("segment-00000003", SEGMENT_PREFIX), Some(3));
    }
}
