//! `verify`: checks every generation of a journal without touching it.
//!
//! For each generation: segment headers, the snapshot's size and checksum,
//! every record's checksum and sequence number, the continuity of
//! data_versions (with the same [`crate::state`] rules the plugin wrote them
//! by), and seal records against the records before them. Then the newest
//! generation is replayed into a temporary database and checked. Every
//! problem names its generation, data_version and byte offset where known.

use crate::files::file_crc32c;
use crate::journal::reader::{Generation, JournalError, Record};
use crate::journal::{Bound, Change, Cursor, Resolved};
use crate::replay;
use crate::state::Tip;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub generation: Option<u64>,
    pub data_version: Option<u32>,
    pub location: Option<String>,
    pub detail: String,
}

impl Problem {
    /// Where it is: "generation G, data_version V, <location>", as known.
    pub fn place(&self) -> String {
        let mut at = vec![];
        if let Some(g) = self.generation {
            at.push(format!("generation {g}"));
        }
        if let Some(v) = self.data_version {
            at.push(format!("data_version {v}"));
        }
        if let Some(l) = &self.location {
            at.push(l.clone());
        }
        at.join(", ")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationCheck {
    pub generation: u64,
    pub base_version: u32,
    pub records: u64,
    /// The newest data_version stored (possibly unconfirmed).
    pub last_version: u32,
    /// When the newest record was written (the base's creation time when
    /// the generation holds none).
    pub last_time_unix_ms: u64,
    pub torn_tail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub generations: Vec<GenerationCheck>,
    pub problems: Vec<Problem>,
    /// data_version the replay of the newest generation reached.
    pub replayed_to: Option<u32>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(
    generation: Option<u64>,
    data_version: Option<u32>,
    location: Option<String>,
    detail: impl Into<String>,
) -> Problem {
    Problem { generation, data_version, location, detail: detail.into() }
}

fn check_generation(g: &Generation, problems: &mut Vec<Problem>) -> GenerationCheck {
    let mut check = GenerationCheck {
        generation: g.number,
        base_version: g.header.base_version,
        records: 0,
        last_version: g.header.base_version,
        last_time_unix_ms: g.header.created_unix_ms,
        torn_tail: None,
    };
    match file_crc32c(&g.snapshot_path()) {
        Ok((len, crc)) if (len, crc) == (g.header.snapshot_bytes, g.header.snapshot_crc32c) => {}
        Ok((len, crc)) => problems.push(problem(
            Some(g.number),
            Some(g.header.base_version),
            Some(g.snapshot_path().display().to_string()),
            format!(
                "snapshot is damaged: {len} bytes, checksum {crc:#010x}; the header records {} bytes, checksum {:#010x}",
                g.header.snapshot_bytes, g.header.snapshot_crc32c
            ),
        )),
        Err(e) => problems.push(problem(Some(g.number), None, None, format!("{e:#}"))),
    }
    let mut cursor = Cursor::start(g);
    let mut records = match cursor.read(g, Bound::End) {
        Ok(r) => r,
        Err(e) => {
            problems.push(problem(Some(g.number), None, None, e.to_string()));
            return check;
        }
    };
    for item in records.by_ref() {
        match item {
            Ok(Resolved::Applied { change, .. } | Resolved::Cancelled(change)) => check_change(g, &change, problems),
            Err(e) => problems.push(journal_problem(g, e)),
        }
    }
    let torn = records.torn_tail();
    drop(records);
    check.records = cursor.records_read();
    if let Some(h) = cursor.last() {
        check.last_version = h.data_version;
        check.last_time_unix_ms = h.time_unix_ms;
    }
    check.torn_tail = torn.map(|loc| loc.to_string());
    if let Some(pending) = cursor.finish() {
        check_change(g, &pending, problems);
    }
    check
}

/// Every record of a change reads back and decodes ([`check_statements`]).
fn check_change(g: &Generation, change: &Change, problems: &mut Vec<Problem>) {
    for r in change.records() {
        match r.loaded() {
            Ok(r) => check_statements(g, &r, problems),
            Err(e) => problems.push(journal_problem(g, e)),
        }
    }
}

/// A change's statements decode, and a filtered generation's records hold
/// nothing its filter leaves out.
fn check_statements(g: &Generation, rec: &Record, problems: &mut Vec<Problem>) {
    match rec.statements() {
        Err(e) => problems.push(at(g, rec, e.to_string())),
        Ok(stmts) => {
            if let Some(s) = stmts.iter().find(|s| !g.header.filter.keeps(s)) {
                problems.push(at(
                    g,
                    rec,
                    format!(
                        "generation filtered with \"{}\" holds a statement its filter leaves out: {}",
                        g.header.filter.name(),
                        s.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
    }
}

/// A problem the journal's reader found, at its location.
fn journal_problem(g: &Generation, e: JournalError) -> Problem {
    let (version, loc) = match &e {
        JournalError::Corrupt { loc, detail } => {
            return problem(Some(g.number), None, Some(loc.to_string()), detail.clone());
        }
        JournalError::Discontinuous { loc, discontinuity } => (Some(discontinuity.data_version), Some(*loc)),
        JournalError::SealMismatch { loc, sealed: Tip::At { version, .. }, .. } => (Some(*version), Some(*loc)),
        JournalError::SealMismatch { loc, .. } => (None, Some(*loc)),
        _ => (None, None),
    };
    problem(Some(g.number), version, loc.map(|l| l.to_string()), e.to_string())
}

fn at(g: &Generation, rec: &Record, detail: String) -> Problem {
    problem(Some(g.number), Some(rec.header.data_version), Some(rec.loc.to_string()), detail)
}

/// Verifies the journal at `from`. `Err` only for a journal that cannot be
/// read at all; everything else is a [`Problem`] in the report.
pub fn verify(from: &Path, replay_newest: bool) -> Result<VerifyReport> {
    verify_in(from, replay_newest, &std::env::temp_dir())
}

/// [`verify`], replaying the newest generation in a temporary directory
/// made inside `scratch` (the drill keeps all its files in one place).
pub fn verify_in(from: &Path, replay_newest: bool, scratch: &Path) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let listed = crate::journal::reader::generations_each(from)?;
    if listed.is_empty() {
        report.problems.push(problem(None, None, Some(from.display().to_string()), "the journal holds no generation"));
        return Ok(report);
    }
    let mut generations = vec![];
    for g in listed {
        match g {
            Ok(g) => generations.push(g),
            Err((n, e)) => report.problems.push(problem(Some(n), None, None, e.to_string())),
        }
    }
    let mut previous: Option<GenerationCheck> = None;
    let mut checks = vec![];
    generations.retain(|g| {
        let mut found = vec![];
        let check = check_generation(g, &mut found);
        if !found.is_empty() && crate::journal::reader::retired_since(g) {
            return false;
        }
        report.problems.append(&mut found);
        checks.push(check);
        true
    });
    for (g, check) in generations.iter().zip(checks) {
        if let Some(prev) = &previous {
            if g.header.base_kind == crate::journal::format::BaseKind::Compacted {
                // A compacted generation rolls up its predecessor: its base is
                // a version the predecessor went through, and the records it
                // carries continue from there.
                if check.base_version < prev.base_version || check.base_version > prev.last_version {
                    report.problems.push(problem(
                        Some(g.number),
                        Some(check.base_version),
                        None,
                        format!(
                            "generation {} is compacted at data_version {}, outside generation {}'s data_versions {}..={}",
                            g.number, check.base_version, prev.generation, prev.base_version, prev.last_version
                        ),
                    ));
                }
            } else if (check.base_version as i64) < prev.last_version as i64 - 1 {
                // A newer generation starts at or after what the previous one
                // confirmed; its base may be one below an unconfirmed last change.
                report.problems.push(problem(
                    Some(g.number),
                    Some(check.base_version),
                    None,
                    format!(
                        "generation {} starts at data_version {}, before generation {} ended ({}): the database went backwards",
                        g.number, check.base_version, prev.generation, prev.last_version
                    ),
                ));
            }
        }
        report.generations.push(check.clone());
        previous = Some(check);
    }
    if replay_newest && report.problems.is_empty() {
        if let Some(newest) = generations.last() {
            match replay_into_temp(newest, scratch) {
                Ok(v) => report.replayed_to = Some(v),
                Err(e) => {
                    report.problems.push(problem(Some(newest.number), None, None, format!("replay failed: {e:#}")))
                }
            }
        }
    }
    Ok(report)
}

fn replay_into_temp(g: &Generation, scratch: &Path) -> Result<u32> {
    let dir = tempfile::Builder::new().prefix(".cln-replica-verify-").tempdir_in(scratch)?;
    let path = dir.path().join("verify.sqlite3");
    replay::copy_snapshot(g, &path)?;
    let conn = replay::open_for_replay(&path)?;
    let outcome = replay::replay_generation(&conn, g, None, None, |_| {})?;
    replay::check_database(&conn, outcome.data_version, true)?;
    Ok(outcome.data_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AlignedBuf, RealDevice};
    use crate::journal::format::{self, BaseKind, RECORD_HEADER_BYTES};
    use crate::journal::{Compression, Journal, JournalOptions, SnapshotMade};
    use crate::state::{CallKind, INCREMENT_PREFIX};
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    fn change(v: u32, pad: usize) -> Vec<String> {
        let mut s = vec![];
        if v == 1 {
            s.push(
                "CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER); CREATE TABLE t (k INTEGER, v TEXT);".into(),
            );
            s.push("INSERT INTO vars VALUES ('data_version', NULL, 0);".into());
        }
        s.push(format!("INSERT INTO t VALUES ({v}, '{}');", "ab".repeat(pad)));
        s.push(format!("{INCREMENT_PREFIX}{}", v - 1));
        s
    }

    /// A compressed record whose checksum matches but whose payload does not
    /// decompress is damage at its location, like any other.
    #[test]
    fn a_compressed_record_that_does_not_decompress_is_damage_at_its_location() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions { compression: Compression::Zstd, ..Default::default() };
        let mut j = Journal::open(dir.path(), Arc::new(RealDevice), opts).unwrap();
        j.start_generation(&mut |p: &Path| {
            std::fs::File::create(p)?;
            Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
        })
        .unwrap();
        for v in 1..=3 {
            j.append(v, CallKind::Txn, &change(v, 10_000)).unwrap();
        }
        drop(j);
        let clean = verify(dir.path(), true).unwrap();
        assert!(clean.ok(), "{:?}", clean.problems);
        assert_eq!(clean.replayed_to, Some(3));

        let g = Generation::open(dir.path(), 1).unwrap();
        let recs: Vec<_> = g.records().map(Result::unwrap).collect();
        assert!(recs.iter().all(|r| r.header.is_compressed()), "the changes are stored compressed");
        // Record 2 rewritten with a valid CRC over a payload that is not zstd.
        let victim = &recs[1];
        let mut garbage = victim.payload.clone();
        garbage[..4].copy_from_slice(b"SQL!");
        let mut buf = AlignedBuf::with_capacity(0);
        let n = format::encode_record_stored(&mut buf, g.block_bytes(), &victim.header, &garbage);
        assert_eq!(n as u64, victim.header.disk_bytes(g.block_bytes()));
        let f = std::fs::OpenOptions::new().write(true).open(&g.segments[0].path).unwrap();
        f.write_all_at(&buf[..n], victim.loc.offset).unwrap();
        drop(f);
        assert!(format::check_record(&buf[..RECORD_HEADER_BYTES + garbage.len()]).is_ok());

        let report = verify(dir.path(), true).unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        let p = &report.problems[0];
        assert_eq!((p.generation, p.data_version), (Some(1), Some(2)));
        assert_eq!(p.location.as_deref(), Some(victim.loc.to_string().as_str()));
        assert!(p.detail.contains("compressed record") && p.detail.contains("not a zstd frame"), "{}", p.detail);
        assert_eq!(report.generations[0].records, 3, "the scan goes on past it");
    }
}
