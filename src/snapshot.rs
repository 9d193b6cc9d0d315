//! Snapshots of lightningd's database, taken from inside the `db_write` hook.
//!
//! While the hook runs, lightningd holds its write transaction open and waits
//! for the answer: another connection reads the last *committed* state, and
//! that state cannot change until we answer. The snapshot copies it with
//! SQLite's online backup API over a read-only connection, then checks the
//! copy's `vars.data_version` against the version the state machine expects
//! (pair assertion: the check is made on what was written, not on the source).

use crate::filter::Filter;
use crate::journal::format::BaseKind;
use crate::journal::SnapshotMade;
use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// How long to wait for a lock on the live database. lightningd only holds a
/// lock that blocks readers while it spills a very large transaction to disk;
/// it then waits for us, so waiting longer would only delay the failure.
const LIVE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the database has a table of this name.
pub fn has_table(conn: &Connection, name: &str) -> Result<bool> {
    conn.query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |r| r.get(0))
        .context("cannot read the schema")
}

/// The data_version a database holds: `None` if it has no `vars` table or no
/// data_version row (a database lightningd has not finished creating).
pub fn data_version(conn: &Connection) -> Result<Option<u32>> {
    if !has_table(conn, "vars")? {
        return Ok(None);
    }
    let v: Option<i64> = conn
        .query_row("SELECT intval FROM vars WHERE name = 'data_version'", [], |r| r.get(0))
        .optional()
        .context("cannot read vars.data_version")?;
    // lightningd keeps the version as a u32 and binds it into a 64-bit column.
    Ok(v.map(|v| v as u32))
}

/// Copies the committed state of the live database at `db` to `dest`, which
/// must then hold data_version `expected`. A database that does not exist yet,
/// or has no schema yet (the first hook creates it), gives an empty snapshot,
/// valid only when `expected` is 0. The tables `filter` leaves out are
/// emptied in the copy.
pub fn copy_live(db: &Path, dest: &Path, expected: u32, filter: Filter) -> Result<SnapshotMade> {
    let empty = |why: &str| -> Result<SnapshotMade> {
        if expected != 0 {
            bail!(
                "lightningd is at data_version {expected} but {} {why}: is `database` in cln-replica.toml the \
                 file lightningd uses (its --wallet option)?",
                db.display()
            );
        }
        fs::File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
    };
    if !db.exists() {
        return empty("does not exist");
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open lightningd's database {} read-only", db.display()))?;
    src.busy_timeout(LIVE_BUSY_TIMEOUT)?;
    if data_version(&src).with_context(|| format!("reading {}", db.display()))?.is_none() {
        return empty("has no data_version yet");
    }
    let mut dst = Connection::open(dest).with_context(|| format!("cannot create the snapshot {}", dest.display()))?;
    // The journal flushes and renames the file itself; SQLite need not.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        backup
            .run_to_completion(4096, Duration::ZERO, None)
            .with_context(|| format!("cannot copy {} to the snapshot", db.display()))?;
    }
    let got = data_version(&dst).context("cannot read the snapshot back")?;
    if got != Some(expected) {
        bail!(
            "the snapshot of {} is at data_version {}, but lightningd's hook implies {expected}: \
             is `database` in cln-replica.toml the file lightningd uses?",
            db.display(),
            got.map_or("none".to_string(), |v| v.to_string())
        );
    }
    leave_out(&dst, filter).with_context(|| format!("cannot filter the snapshot of {}", db.display()))?;
    dst.close().map_err(|(_, e)| e).context("cannot close the snapshot")?;
    Ok(SnapshotMade { base_kind: BaseKind::Snapshot, base_version: expected })
}

/// Empties the tables `filter` leaves out, and gives their pages back
/// (VACUUM), so the snapshot is as small as the journal's records are.
/// Nothing refers to a cache table (docs/CACHES.md), so deleting its rows
/// cascades nowhere; foreign keys stay off in this connection regardless.
pub fn leave_out(conn: &Connection, filter: Filter) -> Result<()> {
    if filter.tables().is_empty() {
        return Ok(());
    }
    for t in filter.tables() {
        if has_table(conn, t)? {
            conn.execute_batch(&format!("DELETE FROM \"{t}\";"))?;
        }
    }
    conn.execute_batch("VACUUM;")?;
    Ok(())
}

/// Copies a database file that nobody is writing (lightningd stopped) for
/// `cln-replica init`: the same backup API, with whatever version it holds.
pub fn copy_stopped(db: &Path, dest: &Path, filter: Filter) -> Result<SnapshotMade> {
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open {} read-only", db.display()))?;
    match data_version(&src)? {
        None => copy_live(db, dest, 0, filter),
        Some(v) => copy_live(db, dest, v, filter),
    }
}
