//! An in-process lightningd for crash tests: a real SQLite database driven as
//! lightningd drives it (BEGIN, statements, the data_version increment, the
//! `db_write` hook, COMMIT only on `continue`), with the plugin's real
//! [`Engine`] answering the hook over a device of the test's choice.
//!
//! Every event a crash check needs (a change sent to the hook, acknowledged,
//! committed, rolled back) is noted in order, and, with a recording
//! [`FaultDevice`], marked in the device's log between the I/O steps, so that
//! a crash point knows what lightningd had seen acknowledged when the power
//! went.

use cln_replica::device::fault::FaultDevice;
use cln_replica::device::Device;
use cln_replica::plugin::engine::{Answer, Engine};
use cln_replica::plugin::protocol::Output;
use cln_replica::sim::Change;
pub use cln_replica::sim::TxnEnd;
use cln_replica::state::INCREMENT_PREFIX;
use rusqlite::types::Value;
use rusqlite::Connection;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What happened, in order; marks in the device log index into this.
#[derive(Debug, Clone)]
pub enum Note {
    /// A transaction (content hash of the database as it would be once
    /// committed) or an in-place call (hash unchanged) went to the hook.
    Sent { version: u32, hash: u64 },
    /// The hook answered `continue` for the state with this hash.
    Acked { version: u32, hash: u64 },
    /// lightningd committed: its database now has this hash. `db` is a copy of
    /// the file at that point (for reboots).
    Committed { version: u32, hash: u64, db: Option<PathBuf> },
    /// The transaction was rolled back (refused, or lightningd crashed).
    RolledBack,
}

pub struct Lightningd {
    pub dir: PathBuf,
    pub conn: Connection,
    pub version: u32,
    device: Arc<dyn Device>,
    fault: Option<FaultDevice>,
    engine: Option<Engine>,
    pub notes: Vec<Note>,
    /// Where to keep a copy of the database at each commit (`None`: no copies).
    pub copies: Option<PathBuf>,
    /// Last refusal's text.
    pub last_refusal: Option<String>,
    /// Hash every state (for crash checks); off for a reboot's run, which
    /// only compares the end.
    pub track: bool,
    /// Wait for the journal's background segment creation after each hook,
    /// so that a fault injected next meets the hook's I/O, not the
    /// preparer's (fault tests; the power-cut runs keep the real interleaving).
    pub settle: bool,
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("lightningd.sqlite3")
}

/// Writes the plugin's configuration into a node directory; `compression`
/// is the key's value, "zstd" or "off". Changes are cut into chunk records at
/// the smallest chunk size the journal takes ([`CHANGE_CHUNK_BYTES`]), so a
/// change of a few statements is already several records, and power cuts
/// fall between a change's chunks as well as between changes.
/// The smallest `change_chunk_bytes` the journal accepts.
pub const CHANGE_CHUNK_BYTES: u32 = 4096;

pub fn configure(node_dir: &Path, journal: &Path, segment_bytes: u64, compression: &str) {
    std::fs::create_dir_all(node_dir).unwrap();
    std::fs::write(
        node_dir.join("cln-replica.toml"),
        format!(
            "journal = {journal:?}\nsegment_bytes = {segment_bytes}\nblock_bytes = 4096\ncompression = {compression:?}\n\
             change_chunk_bytes = {CHANGE_CHUNK_BYTES}\n"
        ),
    )
    .unwrap();
}

/// A content hash of a database: schema and rows of every table, rows
/// sorted (rowids may differ, as in `dbcompare`).
pub fn content_hash(conn: &Connection) -> u64 {
    let mut h = DefaultHasher::new();
    let mut stmt = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let tables: Vec<(String, Option<String>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    for (name, sql) in tables {
        name.hash(&mut h);
        sql.hash(&mut h);
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<Value> = (0..n).map(|i| r.get::<_, Value>(i)).collect::<rusqlite::Result<_>>()?;
                Ok(format!("{cells:?}"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        rows.hash(&mut h);
    }
    h.finish()
}

pub fn file_hash(path: &Path) -> anyhow::Result<u64> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(content_hash(&conn))
}

impl Lightningd {
    pub fn open(dir: &Path, device: Arc<dyn Device>, fault: Option<FaultDevice>) -> Lightningd {
        let conn = Connection::open(db_path(dir)).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        let version = cln_replica::snapshot::data_version(&conn).unwrap().unwrap_or(0);
        Lightningd {
            dir: dir.to_path_buf(),
            conn,
            version,
            device,
            fault,
            engine: None,
            notes: vec![],
            copies: None,
            last_refusal: None,
            track: true,
            settle: false,
        }
    }

    fn note(&mut self, n: Note) {
        self.notes.push(n);
        if let Some(f) = &self.fault {
            f.mark(self.notes.len() as u64 - 1);
        }
    }

    pub fn hash(&self) -> u64 {
        content_hash(&self.conn)
    }

    /// The plugin starts (lightningd starts it): a new engine, which opens
    /// the journal at its first hook.
    pub fn start_plugin(&mut self) {
        assert!(self.engine.is_none());
        let out = Arc::new(Output::new(Box::new(std::io::sink())));
        self.engine = Some(Engine::new(self.dir.clone(), out, self.device.clone()));
    }

    /// The plugin stops as it does when lightningd closes its stdin: it seals.
    pub fn stop_plugin(&mut self) {
        if let Some(mut e) = self.engine.take() {
            e.seal();
        }
    }

    /// The plugin's published status, if it runs.
    pub fn status(&self) -> Option<cln_replica::status::PluginStatus> {
        self.engine.as_ref().map(|e| e.status.snapshot())
    }

    pub fn has_plugin(&self) -> bool {
        self.engine.is_some()
    }

    fn hook(&mut self, version: u32, writes: &[String]) -> Answer {
        let params = serde_json::json!({"data_version": version, "writes": writes}).to_string();
        let raw = serde_json::value::RawValue::from_string(params).unwrap();
        let engine = self.engine.as_mut().expect("plugin running");
        let answer = engine.db_write(Some(&raw));
        if self.settle {
            if let Some(j) = engine.journal() {
                j.wait_background();
            }
        }
        answer
    }

    fn committed(&mut self) {
        if !self.track {
            return;
        }
        let hash = self.hash();
        let db = self.copies.as_ref().map(|dir| {
            let p = dir.join(format!("db-{}.sqlite3", self.notes.len()));
            let mut dst = Connection::open(&p).unwrap();
            let b = rusqlite::backup::Backup::new(&self.conn, &mut dst).unwrap();
            b.run_to_completion(1024, std::time::Duration::ZERO, None).unwrap();
            p
        });
        self.note(Note::Committed { version: self.version, hash, db });
    }

    /// One transaction as lightningd runs it, ended as `end` says after a
    /// `continue`. Without a plugin it commits unseen (a gap). Returns the
    /// hook's answer (`Continue` without plugin).
    pub fn txn(&mut self, statements: &[String], end: TxnEnd) -> Answer {
        let mut writes = statements.to_vec();
        writes.push(format!("{INCREMENT_PREFIX}{}", self.version));
        self.conn.execute_batch("BEGIN").unwrap();
        for s in &writes {
            self.conn.execute_batch(s).unwrap_or_else(|e| panic!("the workload's statement fails: {e}: {s:.200}"));
        }
        let n = self.version.wrapping_add(1);
        if !self.has_plugin() {
            self.conn.execute_batch("COMMIT").unwrap();
            self.version = n;
            self.committed();
            return Answer::Continue;
        }
        let hash = if self.track { self.hash() } else { 0 };
        self.note(Note::Sent { version: n, hash });
        let answer = self.hook(n, &writes);
        match (&answer, end) {
            (Answer::Continue, TxnEnd::Commit) => {
                self.note(Note::Acked { version: n, hash });
                self.conn.execute_batch("COMMIT").unwrap();
                self.version = n;
                self.committed();
            }
            (Answer::Continue, TxnEnd::CrashBeforeCommit) => {
                self.note(Note::Acked { version: n, hash });
                self.conn.execute_batch("ROLLBACK").unwrap();
                self.note(Note::RolledBack);
                // lightningd died: the plugin sees its stdin close.
                self.stop_plugin();
            }
            (Answer::Refuse(why), _) => {
                self.last_refusal = Some(why.clone());
                self.conn.execute_batch("ROLLBACK").unwrap();
                self.note(Note::RolledBack);
            }
        }
        answer
    }

    /// A PRAGMA-only call, run outside any transaction at the current version.
    pub fn in_place(&mut self, statement: &str) -> Answer {
        self.conn.execute_batch(statement).unwrap();
        if !self.has_plugin() {
            return Answer::Continue;
        }
        let hash = self.hash();
        self.note(Note::Sent { version: self.version, hash });
        let answer = self.hook(self.version, &[statement.to_string()]);
        match &answer {
            Answer::Continue => self.note(Note::Acked { version: self.version, hash }),
            Answer::Refuse(why) => self.last_refusal = Some(why.clone()),
        }
        answer
    }

    pub fn apply(&mut self, change: &Change) -> Answer {
        match change {
            Change::Txn(s) => self.txn(s, TxnEnd::Commit),
            Change::InPlace(s) => self.in_place(s),
        }
    }
}
