//! Replaying a generation's records onto a copy of its snapshot, exactly as
//! lightningd ran them: `PRAGMA foreign_keys = ON`, one transaction per
//! transactional record, in-place (PRAGMA-only) records outside any
//! transaction. Used by restore, verify and the mirror.
//!
//! Which records to replay is decided on the journal's one path through a
//! generation ([`crate::journal::committed`]); this module only applies them
//! and says precisely where a replay failed.

use crate::journal::format::RecordHeader;
use crate::journal::format::RECORD_PAYLOAD_BYTES_MAX;
use crate::journal::reader::{Generation, Record, RecordLoc};
use crate::journal::{Bound, Change, Cursor, Resolved};
use crate::state::CallKind;
use anyhow::{anyhow, bail, Context, Result};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A database that journal records are replayed onto: restore's, verify's
/// trial replay, compaction's new snapshot, the mirror. While a record's
/// statements run, SQLite's authorizer lets through only what lightningd
/// sends (docs/LIGHTNINGD.md, "Every statement lightningd can send"): a
/// journal whose CRC-32C records were forged by someone who can write the
/// backup device cannot attach or create other files, load extensions,
/// write another schema or change settings beyond `PRAGMA foreign_keys`.
pub struct ReplayDb {
    conn: Connection,
    guard: Arc<Guard>,
}

/// The authorizer's state: on only while a record's statements run (our
/// own BEGIN/COMMIT and checks run with it off), and what it last denied.
#[derive(Default)]
struct Guard {
    active: AtomicBool,
    denied: Mutex<Option<String>>,
}

impl std::ops::Deref for ReplayDb {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl ReplayDb {
    /// Opens `path` for replay with lightningd's settings, guarded.
    pub fn open(path: &Path) -> Result<ReplayDb> {
        let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // Foreign keys as lightningd runs them: `DELETE FROM blocks` must cascade.
        // The rollback journal stays in memory: a failed replay discards the file.
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF;")
            .with_context(|| format!("cannot configure {}", path.display()))?;
        ReplayDb::guard(conn)
    }

    /// Guards an open connection (the mirror opens its own, in WAL mode).
    pub fn guard(mut conn: Connection) -> Result<ReplayDb> {
        use rusqlite::limits::Limit;
        // No database can be attached at all, whatever the authorizer says;
        // no statement can be longer than a record.
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, RECORD_PAYLOAD_BYTES_MAX as i32)?;
        let guard = Arc::new(Guard::default());
        let g = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            if !g.active.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match lightningd_may(&ctx) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    *g.denied.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    Authorization::Deny
                }
            }
        }))?;
        Ok(ReplayDb { conn, guard })
    }

    /// Runs one of a record's statements under the authorizer.
    fn run_record_statement(&self, sql: &str) -> Result<(), StatementError> {
        // VACUUM is not an authorizer action: refused by its text (lightningd
        // never sends it; VACUUM INTO would write a file anywhere).
        if sql.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("VACUUM")) {
            return Err(StatementError::Denied("VACUUM, which lightningd never sends".into()));
        }
        self.guard.active.store(true, Ordering::Relaxed);
        let r = self.conn.execute_batch(sql);
        self.guard.active.store(false, Ordering::Relaxed);
        match r {
            Ok(()) => Ok(()),
            Err(e) => match self.guard.denied.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(why) => Err(StatementError::Denied(why)),
                None => Err(StatementError::Sqlite(e)),
            },
        }
    }

    pub fn close(self) -> Result<()> {
        self.conn.close().map_err(|(_, e)| e).context("cannot close the database")
    }
}

/// Why one of a record's statements did not run.
#[derive(Debug)]
enum StatementError {
    /// Something lightningd never sends: the journal is forged or damaged.
    Denied(String),
    Sqlite(rusqlite::Error),
}

/// Whether lightningd's statements can ask SQLite for this (what the
/// authorizer saw replaying real traces, docs/LIGHTNINGD.md): rows and
/// tables of the main database, indexes, `PRAGMA foreign_keys`, and the
/// reads and functions SQLite runs for them (an ALTER TABLE reads and
/// updates `sqlite_temp_master` in `temp`). Everything else is refused.
fn lightningd_may(ctx: &AuthContext<'_>) -> Result<(), String> {
    let main = |what: &str| match ctx.database_name {
        None | Some("main") => Ok(()),
        Some(db) => Err(format!("{what} in the database {db:?}, not lightningd's")),
    };
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { table_name, .. } | AuthAction::Update { table_name, .. }
            if ctx.database_name == Some("temp") && table_name == "sqlite_temp_master" =>
        {
            Ok(())
        }
        AuthAction::Read { .. } => main("a read"),
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::AlterTable { table_name, .. } => main(&format!("a write to {table_name}")),
        AuthAction::Reindex { .. } => main("a reindex"),
        AuthAction::Pragma { pragma_name, pragma_value }
            if pragma_name.eq_ignore_ascii_case("foreign_keys")
                && pragma_value.is_none_or(|v| v.eq_ignore_ascii_case("ON") || v.eq_ignore_ascii_case("OFF")) =>
        {
            Ok(())
        }
        // SQLite checks a table itself (read-only) after some ALTER TABLE
        // ADD COLUMN (constraints, STRICT tables).
        AuthAction::Pragma { pragma_name, .. } if pragma_name.eq_ignore_ascii_case("quick_check") => Ok(()),
        AuthAction::Function { function_name } if !function_name.eq_ignore_ascii_case("load_extension") => Ok(()),
        AuthAction::Attach { filename } => Err(format!("ATTACH of {filename:?}")),
        AuthAction::Detach { database_name } => Err(format!("DETACH of {database_name:?}")),
        AuthAction::Pragma { pragma_name, pragma_value } => {
            Err(format!("PRAGMA {pragma_name}{}", pragma_value.map(|v| format!(" = {v}")).unwrap_or_default()))
        }
        AuthAction::Function { function_name } => Err(format!("the function {function_name}()")),
        other => Err(format!("{other:?}")),
    }
}

/// Opens a database for replay with lightningd's settings.
pub fn open_for_replay(path: &Path) -> Result<ReplayDb> {
    ReplayDb::open(path)
}

/// Applies one resolved change: all its records' statements, in one
/// transaction for a transaction (a chunked change loaded one chunk at a
/// time). A failing statement is named by its data_version, its position in
/// its record and the record's location; so is a statement lightningd never
/// sends, which is refused before it runs.
pub fn apply(db: &ReplayDb, change: &Change, kind: CallKind) -> Result<()> {
    let txn = kind == CallKind::Txn;
    if txn {
        db.conn.execute_batch("BEGIN").context("cannot begin a transaction")?;
    }
    let result = change.for_each_chunk(|rec, statements| {
        for (i, s) in statements.iter().enumerate() {
            if let Err(e) = db.run_record_statement(s) {
                return Err(statement_failed(rec, statements, i, e));
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        if txn {
            let _ = db.conn.execute_batch("ROLLBACK");
        }
        return Err(e);
    }
    if txn {
        db.conn
            .execute_batch("COMMIT")
            .map_err(|e| anyhow!("commit of data_version {} failed: {e}", change.data_version()))?;
    }
    Ok(())
}

fn statement_failed(rec: &Record, statements: &[&str], i: usize, e: StatementError) -> anyhow::Error {
    let s = statements[i];
    let shown: String = s.chars().take(160).collect();
    let why = match e {
        StatementError::Denied(what) => format!(
            "refused: it asks for {what}, which lightningd never sends (the journal is forged or damaged; \
             nothing was run)"
        ),
        StatementError::Sqlite(e) => e.to_string(),
    };
    anyhow!(
        "replaying data_version {} failed at statement {} of {} (record {} at {}): {why}\n  statement: {shown}{}",
        rec.header.data_version,
        i + 1,
        statements.len(),
        rec.header.seq,
        rec.loc,
        if shown.len() < s.len() { "..." } else { "" }
    )
}

enum RunError {
    Statement(StatementError),
    Commit(rusqlite::Error),
}

/// Runs one call's statements under the guard: in one transaction
/// (`txn`), or in place. On failure, the index of the statement.
fn run_statements<S: AsRef<str>>(db: &ReplayDb, statements: &[S], txn: bool) -> Result<(), (usize, RunError)> {
    let conn = &db.conn;
    if txn {
        conn.execute_batch("BEGIN").map_err(|e| (0, RunError::Commit(e)))?;
    }
    for (i, s) in statements.iter().enumerate() {
        if let Err(e) = db.run_record_statement(s.as_ref()) {
            if txn {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err((i, RunError::Statement(e)));
        }
    }
    if txn {
        conn.execute_batch("COMMIT").map_err(|e| (statements.len(), RunError::Commit(e)))?;
    }
    Ok(())
}

/// [`apply`] for statements that are not a journal record (tests of the
/// guard against recorded traces).
pub fn run_guarded<S: AsRef<str>>(db: &ReplayDb, statements: &[S], txn: bool) -> Result<()> {
    run_statements(db, statements, txn).map_err(|(i, e)| match e {
        RunError::Statement(StatementError::Denied(what)) => anyhow!("statement {} refused: {what}", i + 1),
        RunError::Statement(StatementError::Sqlite(e)) | RunError::Commit(e) => anyhow!("statement {}: {e}", i + 1),
    })
}

/// Copies a generation's snapshot to `dest` (mode 0600), checking its size
/// and checksum against the generation header on the way.
pub fn copy_snapshot(generation: &Generation, dest: &Path) -> Result<()> {
    copy_snapshot_paced(generation, dest, None, &mut |_| {})
}

/// [`copy_snapshot`] in the pacer's chunks when given (at most 1 MiB), each
/// read, written and flushed, then rested within the pacer's bounds
/// ([`crate::pace`]): a background copy then never has more than one chunk in
/// the device's queue in front of the journal's flushes. `on_copied` is told
/// the bytes copied so far after each chunk.
pub fn copy_snapshot_paced(
    generation: &Generation,
    dest: &Path,
    mut pacer: Option<&mut crate::pace::Pacer>,
    on_copied: &mut dyn FnMut(u64),
) -> Result<()> {
    const CHUNK_MAX_BYTES: u64 = 1 << 20;
    let src_path = generation.snapshot_path();
    let (mut src, _) = crate::files::open_regular(&src_path, Some(generation.header.snapshot_bytes))
        .with_context(|| format!("cannot open the snapshot {}", src_path.display()))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let chunk = pacer.as_ref().map_or(CHUNK_MAX_BYTES, |p| p.chunk_bytes());
    let mut buf = vec![0u8; chunk.clamp(4096, CHUNK_MAX_BYTES) as usize];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let started = std::time::Instant::now();
        let n = read_full(&mut src, &mut buf).with_context(|| format!("cannot read {}", src_path.display()))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
        dst.write_all(&buf[..n]).with_context(|| format!("cannot write {}", dest.display()))?;
        if let Some(p) = pacer.as_deref_mut() {
            dst.sync_data().with_context(|| format!("cannot flush {}", dest.display()))?;
            p.rest_after(n as u64, started.elapsed());
        }
        on_copied(len);
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

/// Reads until `buf` is full or the file ends.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
    conn: &ReplayDb,
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
        let Resolved::Applied { kind, change } = item? else { continue };
        if within(&change.first().header) {
            apply(conn, &change, kind)?;
            note(&mut out, &change);
            on_record(change.first());
        }
    }
    out.stopped_early = records.stopped_early();
    out.torn_tail = records.torn_tail();
    drop(records);
    if out.stopped_early {
        return Ok(out);
    }
    if let Some(c) = cursor.finish() {
        apply(conn, &c, CallKind::Txn)?;
        note(&mut out, &c);
        on_record(c.first());
        out.last_unconfirmed = true;
    }
    Ok(out)
}

fn note(out: &mut ReplayOutcome, c: &Change) {
    out.applied += 1;
    out.data_version = c.data_version();
    out.last_time_unix_ms = c.time_unix_ms();
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
