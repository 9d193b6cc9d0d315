//! Replaying a generation's records onto a copy of its snapshot, exactly as
//! lightningd ran them: `PRAGMA foreign_keys = ON`, one transaction per
//! transactional record, in-place (PRAGMA-only) records outside any
//! transaction. Used by restore, verify and the mirror.
//!
//! Which records to replay is decided on the journal's one path through a
//! generation ([`crate::journal::committed`]); this module only applies them
//! and says precisely where a replay failed.

use crate::journal::format::RecordHeader;
use crate::journal::reader::{Generation, Record, RecordLoc};
use crate::journal::{Bound, Cursor, Resolved};
use crate::state::CallKind;
use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a database for replay with lightningd's settings.
pub fn open_for_replay(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Foreign keys as lightningd runs them: `DELETE FROM blocks` must cascade.
    // The rollback journal stays in memory: a failed replay discards the file.
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
        .with_context(|| format!("cannot configure {}", path.display()))?;
    Ok(conn)
}

/// Applies one resolved record. A failing statement is named by its
/// data_version, its position in the record and the record's location.
pub fn apply(conn: &Connection, rec: &Record, kind: CallKind) -> Result<()> {
    let statements = rec.statements()?;
    let fail = |i: usize, e: rusqlite::Error| {
        let s = statements[i];
        let shown: String = s.chars().take(160).collect();
        anyhow!(
            "replaying data_version {} failed at statement {} of {} (record {} at {}): {e}\n  statement: {shown}{}",
            rec.header.data_version,
            i + 1,
            statements.len(),
            rec.header.seq,
            rec.loc,
            if shown.len() < s.len() { "..." } else { "" }
        )
    };
    match kind {
        CallKind::Txn => {
            conn.execute_batch("BEGIN").context("cannot begin a transaction")?;
            for (i, s) in statements.iter().enumerate() {
                if let Err(e) = conn.execute_batch(s) {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(fail(i, e));
                }
            }
            conn.execute_batch("COMMIT")
                .map_err(|e| anyhow!("commit of data_version {} failed: {e}", rec.header.data_version))?;
        }
        CallKind::InPlace => {
            for (i, s) in statements.iter().enumerate() {
                conn.execute_batch(s).map_err(|e| fail(i, e))?;
            }
        }
    }
    Ok(())
}

/// Copies a generation's snapshot to `dest` (mode 0600), checking its size
/// and checksum against the generation header on the way.
pub fn copy_snapshot(generation: &Generation, dest: &Path) -> Result<()> {
    copy_snapshot_paced(generation, dest, None)
}

/// [`copy_snapshot`], flushing every `flush_every` bytes when given: a
/// background copy then never queues hundreds of MB of writeback in front of
/// the journal's flushes on the same device.
pub fn copy_snapshot_paced(generation: &Generation, dest: &Path, flush_every: Option<u64>) -> Result<()> {
    let src_path = generation.snapshot_path();
    let mut src = File::open(&src_path).with_context(|| format!("cannot open the snapshot {}", src_path.display()))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = src.read(&mut buf).with_context(|| format!("cannot read {}", src_path.display()))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
        dst.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dest.display()))?;
        if flush_every.is_some_and(|every| len % every < n as u64) {
            dst.sync_data().with_context(|| format!("cannot flush {}", dest.display()))?;
        }
    }
    let h = &generation.header;
    if (len, crc) != (h.snapshot_bytes, h.snapshot_crc32c) {
        bail!(
            "the snapshot of generation {} ({}) is damaged: {len} bytes with checksum {crc:#010x}, \
             the generation header records {} bytes with checksum {:#010x}",
            generation.number,
            src_path.display(),
            h.snapshot_bytes,
            h.snapshot_crc32c
        );
    }
    Ok(())
}

/// Outcome of replaying a generation.
#[derive(Debug, Clone, Default)]
pub struct ReplayOutcome {
    /// Records applied (transactions and in-place records).
    pub applied: u64,
    /// The data_version the database reached.
    pub data_version: u32,
    /// The last applied transaction was acknowledged to lightningd but no later
    /// record confirms that lightningd committed it.
    pub last_unconfirmed: bool,
    /// Where a torn, unacknowledged record was ignored.
    pub torn_tail: Option<RecordLoc>,
    pub last_time_unix_ms: u64,
    /// The journal's records go beyond `until`.
    pub stopped_early: bool,
}

/// Replays `generation` onto `conn` (which holds its snapshot), up to and
/// including data_version `until` if given, and only records written at or
/// before `before_unix_ms` if given. `on_record` is called after each applied
/// record (progress reporting).
pub fn replay_generation(
    conn: &Connection,
    generation: &Generation,
    until: Option<u32>,
    before_unix_ms: Option<u64>,
    mut on_record: impl FnMut(&Record),
) -> Result<ReplayOutcome> {
    let mut out = ReplayOutcome {
        data_version: generation.header.base_version,
        last_time_unix_ms: generation.header.created_unix_ms,
        ..Default::default()
    };
    let within = |h: &RecordHeader| {
        until.is_none_or(|u| h.data_version <= u) && before_unix_ms.is_none_or(|t| h.time_unix_ms <= t)
    };
    let mut cursor = Cursor::start(generation);
    let mut records = cursor.read(generation, Bound::End)?.stop_after(|h| !within(h));
    for item in records.by_ref() {
        let Resolved::Applied { kind, record } = item? else { continue };
        if within(&record.header) {
            apply(conn, &record, kind)?;
            note(&mut out, &record);
            on_record(&record);
        }
    }
    out.stopped_early = records.stopped_early();
    out.torn_tail = records.torn_tail();
    drop(records);
    if out.stopped_early {
        return Ok(out);
    }
    if let Some(r) = cursor.finish() {
        apply(conn, &r, CallKind::Txn)?;
        note(&mut out, &r);
        on_record(&r);
        out.last_unconfirmed = true;
    }
    Ok(out)
}

fn note(out: &mut ReplayOutcome, r: &Record) {
    out.applied += 1;
    out.data_version = r.header.data_version;
    out.last_time_unix_ms = r.header.time_unix_ms;
    out.last_unconfirmed = false;
}

/// Checks a replayed database: SQLite's integrity check, and its
/// `vars.data_version` against the version the replay reached.
pub fn check_database(conn: &Connection, expected: u32, empty_allowed: bool) -> Result<()> {
    let integrity: String =
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).context("integrity check failed to run")?;
    if integrity != "ok" {
        bail!("the database fails SQLite's integrity check: {integrity}");
    }
    match crate::snapshot::data_version(conn)? {
        Some(v) if v == expected => Ok(()),
        None if empty_allowed && expected == 0 => Ok(()),
        got => bail!(
            "the database's vars.data_version is {}, but the journal's last applied change is data_version {expected}",
            got.map_or("missing".to_string(), |v| v.to_string())
        ),
    }
}
