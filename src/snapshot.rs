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
    backup_flushing(&src, &mut dst, dest).with_context(|| format!("cannot copy {} to the snapshot", db.display()))?;
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

/// The snapshot is flushed after every this many bytes copied: its writeback
/// then happens in the hook's thread as it goes (charged to its cgroup, at
/// the device's pace), and a Pi's memory, shared with bitcoind, never holds
/// more than this of it dirty; one flush at the end let a 1 GiB snapshot sit
/// in the page cache and be written back by the kernel all at once.
const SNAPSHOT_FLUSH_BYTES: i64 = 8 << 20;

/// SQLite's online backup of `src` into `dst` (the file `dest`), flushing
/// `dest` every [`SNAPSHOT_FLUSH_BYTES`]. lightningd waits in its hook, so
/// the source cannot change; a busy source (lightningd spilling a large
/// transaction) is retried for at most [`LIVE_BUSY_TIMEOUT`].
fn backup_flushing(src: &Connection, dst: &mut Connection, dest: &Path) -> Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    const BUSY_RETRY: Duration = Duration::from_millis(1);
    let page_bytes: i64 = src.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages_per_step = (SNAPSHOT_FLUSH_BYTES / page_bytes.max(512)) as std::os::raw::c_int;
    let flusher = fs::File::open(dest).with_context(|| format!("cannot open {}", dest.display()))?;
    let backup = Backup::new(src, dst)?;
    let mut busy_since: Option<std::time::Instant> = None;
    loop {
        match backup.step(pages_per_step)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {
                busy_since = None;
                flusher.sync_data().with_context(|| format!("cannot flush {}", dest.display()))?;
            }
            StepResult::Busy | StepResult::Locked => {
                let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > LIVE_BUSY_TIMEOUT {
                    bail!("the live database stayed locked for more than {LIVE_BUSY_TIMEOUT:?}");
                }
                std::thread::sleep(BUSY_RETRY);
            }
            // A variant a later rusqlite adds: nothing copied, so try again
            // within the same bound.
            _ => {
                let since = *busy_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > LIVE_BUSY_TIMEOUT {
                    bail!("the backup made no progress for {LIVE_BUSY_TIMEOUT:?}");
                }
            }
        }
    }
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
