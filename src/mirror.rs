//! The mirror: a second SQLite database, bootable as is, fed from the journal
//! (never from the hook) by a follower thread that wakes on every durable
//! record ([`Progress`]) and replays exactly as restore replays
//! ([`crate::replay`]).
//!
//! - While the plugin runs, the mirror holds the *confirmed* records: every
//!   change but the pending last one (acknowledged, maybe not committed by
//!   lightningd). On a clean stop it is brought fully up to date, pending
//!   change included (as restore does), checkpointed and switched back to a
//!   single-file rollback-journal database.
//! - Each record is its own SQLite transaction in WAL mode
//!   (`synchronous = NORMAL`): a crash at any moment leaves a consistent
//!   database at some data_version the journal covers (SQLite's atomicity),
//!   possibly a few changes behind; no fsync competes with the hook's.
//! - The mirror knows its data_version from its `vars` table, and which
//!   generation it derives from from a small sidecar file
//!   (`<mirror>.cln-replica.json`, replaced atomically). A compacted
//!   generation continues the same history; any other new generation (a
//!   re-snapshot after a gap) rebuilds the mirror from its snapshot, in a
//!   temporary file renamed into place.
//! - If the mirror applied a pending change that lightningd then never
//!   committed (it crashed and sent that data_version again), the sidecar
//!   names it, the follower sees it superseded, and rebuilds.

use crate::files::{self, Durability, Staged};
use crate::journal::format::BaseKind;
use crate::journal::reader::Generation;
use crate::journal::{layout, Bound, Change, Cursor, Progress, Resolved};
use crate::replay::{self, ReplayDb};
use crate::state::CallKind;
use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which generation the mirror derives from, and the pending change it
/// applied at a clean stop (identified by data_version and time, which a
/// compacted generation's carried copy keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub generation: u64,
    pub unconfirmed: Option<(u32, u64)>,
}

pub fn sidecar_path(mirror: &Path) -> PathBuf {
    let name = mirror.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    mirror.with_file_name(format!("{name}.cln-replica.json"))
}

pub fn read_sidecar(mirror: &Path) -> Option<Sidecar> {
    files::read_regular(&sidecar_path(mirror), 1 << 16).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_sidecar(mirror: &Path, s: &Sidecar) -> Result<()> {
    files::replace_with_bytes(&sidecar_path(mirror), &serde_json::to_vec(s)?, Durability::Flushed)
}

fn open_mirror(path: &Path) -> Result<ReplayDb> {
    let conn = Connection::open(path).with_context(|| format!("cannot open the mirror {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .with_context(|| format!("cannot configure the mirror {}", path.display()))?;
    ReplayDb::guard(conn)
}

/// `a` is after `b` in data_version order (modulo 2^32).
fn after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 31
}

/// Applies the journal to a mirror database.
pub struct Follower {
    journal: PathBuf,
    path: PathBuf,
    conn: Option<ReplayDb>,
    sidecar: Sidecar,
    /// The mirror's data_version (its `vars`), confirmed or the applied pending one.
    version: u32,
    /// Where the follower stands in the generation it follows.
    cursor: Option<Cursor>,
    /// Set when the records show the mirror holds a change lightningd never committed.
    diverged: bool,
    /// Times an existing mirror file was replaced by a rebuild.
    pub rebuilds: u64,
}

impl Follower {
    pub fn new(journal: &Path, mirror: &Path) -> Follower {
        Follower {
            journal: journal.to_path_buf(),
            path: mirror.to_path_buf(),
            conn: None,
            sidecar: Sidecar::default(),
            version: 0,
            cursor: None,
            diverged: false,
            rebuilds: 0,
        }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn generation(&self) -> u64 {
        self.sidecar.generation
    }

    /// Positions the follower on generation `g`: continues the mirror file
    /// if it derives from `g` or from a generation `g` compacts, else
    /// rebuilds it from `g`'s snapshot.
    fn attach(&mut self, g: &Generation) -> Result<()> {
        self.conn = None;
        let existing = self.path.exists().then(|| read_sidecar(&self.path)).flatten();
        let mut resume = None;
        if let Some(sc) = existing {
            let conn = open_mirror(&self.path)?;
            let v = crate::snapshot::data_version(&conn)?.unwrap_or(0);
            let same = sc.generation == g.number;
            let continues = sc.generation < g.number
                && g.header.base_kind == BaseKind::Compacted
                && !after(g.header.base_version, v);
            if same || continues {
                resume = Some((conn, sc, v));
            }
        }
        match resume {
            Some((conn, sc, v)) => {
                self.conn = Some(conn);
                self.version = v;
                self.sidecar = Sidecar { generation: g.number, ..sc };
            }
            None => {
                self.rebuild(g)?;
                return Ok(());
            }
        }
        self.cursor = Some(Cursor::start(g));
        self.diverged = false;
        write_sidecar(&self.path, &self.sidecar)?;
        Ok(())
    }

    /// Builds the mirror afresh from `g`'s snapshot, in a temporary file
    /// renamed into place (the old file, closed first, is consistent until then).
    fn rebuild(&mut self, g: &Generation) -> Result<()> {
        self.conn = None;
        let existed = self.path.exists();
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let staged = Staged::beside(&self.path);
        replay::copy_snapshot(g, staged.path())?;
        {
            let conn = Connection::open(staged.path())?;
            conn.execute_batch("PRAGMA journal_mode = DELETE;")?;
        }
        // A WAL left by the old file must not be applied to the new one.
        files::remove_if_exists(&self.path.with_file_name(format!("{name}-wal")));
        files::remove_if_exists(&self.path.with_file_name(format!("{name}-shm")));
        staged.install(Durability::Flushed)?;
        self.sidecar = Sidecar { generation: g.number, unconfirmed: None };
        write_sidecar(&self.path, &self.sidecar)?;
        self.conn = Some(open_mirror(&self.path)?);
        self.version = g.header.base_version;
        self.cursor = Some(Cursor::start(g));
        self.diverged = false;
        self.rebuilds += u64::from(existed);
        Ok(())
    }

    fn apply(&mut self, kind: CallKind, r: &Change) -> Result<()> {
        let v = r.data_version();
        let needed = match kind {
            CallKind::Txn => after(v, self.version),
            // PRAGMA-only records are connection settings: re-running one
            // at the current version is harmless, skipping one is not.
            CallKind::InPlace => !after(self.version, v),
        };
        if needed {
            let conn = self.conn.as_ref().expect("attached");
            replay::apply(conn, r, kind).with_context(|| format!("mirror {}", self.path.display()))?;
            if kind == CallKind::Txn {
                self.version = v;
            }
        }
        Ok(())
    }

    /// Applies `g`'s committed records after `cursor`, up to record `limit`.
    /// Stops early, setting `diverged`, when the change the mirror applied
    /// unconfirmed at a clean stop turns out never to have been committed.
    fn follow(&mut self, g: &Generation, cursor: &mut Cursor, limit: Option<u64>) -> Result<()> {
        let bound = limit.map_or(Bound::End, |seq| Bound::Durable { seq });
        let id = |c: &Change| (c.data_version(), c.time_unix_ms());
        for item in cursor.read(g, bound)? {
            match item? {
                Resolved::Applied { kind, change } => {
                    if self.sidecar.unconfirmed == Some(id(&change)) {
                        // lightningd did commit it: the mirror was right.
                        self.sidecar.unconfirmed = None;
                        write_sidecar(&self.path, &self.sidecar)?;
                    }
                    self.apply(kind, &change)?;
                }
                Resolved::Cancelled(change) if self.sidecar.unconfirmed == Some(id(&change)) => {
                    self.diverged = true;
                    return Ok(());
                }
                Resolved::Cancelled(_) => {}
            }
        }
        Ok(())
    }

    /// Brings the mirror up to generation `generation`'s record `limit`
    /// (durable records only), or to its end when `None`. With
    /// `include_pending` the last, unconfirmed change is applied too (clean
    /// stop, restore). Returns the mirror's data_version.
    pub fn sync(&mut self, generation: u64, limit: Option<u64>, include_pending: bool) -> Result<u32> {
        let previous = self.sidecar.generation;
        if self.conn.is_some() && previous != 0 && previous < generation {
            // Finish the generation it was on first (it is complete): a
            // compacted successor's base is then at or below the mirror's
            // version, and the mirror continues without a rebuild.
            if layout::generation_dir(&self.journal, previous).exists() {
                if let Err(e) = self.sync(previous, None, false) {
                    eprintln!("cln-replica: mirror: finishing generation {previous}: {e:#}");
                }
            }
        }
        let g = Generation::open(&self.journal, generation)?;
        if self.conn.is_none() || self.sidecar.generation != generation {
            self.attach(&g)?;
        }
        let mut cursor = self.cursor.take().expect("attached");
        let result = self.follow(&g, &mut cursor, limit);
        self.cursor = Some(cursor);
        result?;
        if self.diverged {
            // The mirror holds a change lightningd never committed.
            self.rebuild(&g)?;
            return self.sync(generation, limit, include_pending);
        }
        if include_pending {
            if let Some(r) = self.cursor.as_ref().and_then(Cursor::pending).cloned() {
                if after(r.data_version(), self.version) {
                    self.apply(CallKind::Txn, &r)?;
                    self.sidecar.unconfirmed = Some((r.data_version(), r.time_unix_ms()));
                    write_sidecar(&self.path, &self.sidecar)?;
                }
            }
        }
        Ok(self.version)
    }

    /// Leaves the mirror as one self-contained file (WAL checkpointed,
    /// rollback-journal mode), flushed: what an operator copies and boots.
    pub fn close(mut self) -> Result<()> {
        if let Some(conn) = self.conn.take() {
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")
                .with_context(|| format!("cannot checkpoint the mirror {}", self.path.display()))?;
            conn.close().context("cannot close the mirror")?;
            files::sync_file_and_dir(&self.path)?;
        }
        Ok(())
    }
}

/// What `replica-status` shows about the mirror.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MirrorStatus {
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub path: PathBuf,
    pub generation: u64,
    pub data_version: Option<u32>,
    pub rebuilds: u64,
    pub error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    status: Mutex<MirrorStatus>,
    moved: Condvar,
}

/// The follower thread.
pub struct Mirror {
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    handle: Option<JoinHandle<Follower>>,
}

impl Mirror {
    pub fn spawn(journal: PathBuf, path: PathBuf, progress: Arc<Progress>) -> Result<Mirror> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            status: Mutex::new(MirrorStatus { path: path.clone(), ..Default::default() }),
            moved: Condvar::new(),
        });
        let (sh, pr) = (shared.clone(), progress.clone());
        let handle = std::thread::Builder::new().name("mirror".into()).spawn(move || {
            crate::priority::background_priority();
            let mut f = Follower::new(&journal, &path);
            let mut failing = false;
            while !sh.stop.load(Ordering::Acquire) {
                let p = pr.get();
                if p.generation != 0 {
                    let r = f.sync(p.generation, Some(p.seq), false);
                    let mut st = sh.status.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(v) => {
                            st.data_version = Some(v);
                            st.generation = f.generation();
                            st.rebuilds = f.rebuilds;
                            st.error = None;
                            failing = false;
                        }
                        Err(e) => {
                            st.error = Some(format!("{e:#}"));
                            if !failing {
                                eprintln!("cln-replica: the mirror {} fell behind: {e:#}", path.display());
                            }
                            failing = true;
                            // Start over from the file at the next attempt.
                            f = Follower::new(&journal, &path);
                        }
                    }
                    drop(st);
                    sh.moved.notify_all();
                }
                if failing {
                    std::thread::sleep(Duration::from_secs(1));
                }
                // Wakes at the next durable record (or the stop request).
                pr.wait_past(p.counter, Duration::from_millis(500));
            }
            f
        })?;
        Ok(Mirror { shared, progress, handle: Some(handle) })
    }

    /// Waits (at most `timeout`) until the mirror follows generation
    /// `generation` or a later one: retention keeps the generation the
    /// mirror is on until it has moved on.
    pub fn watcher(&self) -> impl Fn(u64, Duration) -> bool + Send + 'static {
        let shared = self.shared.clone();
        move |generation, timeout| {
            let st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
            let (st, _) = shared
                .moved
                .wait_timeout_while(st, timeout, |s| s.generation < generation && s.error.is_none())
                .unwrap_or_else(|e| e.into_inner());
            st.generation >= generation
        }
    }

    pub fn status(&self) -> MirrorStatus {
        self.shared.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Backpressure: waits (at most `timeout`) until the mirror is within
    /// `max_lag` data_versions of `tip`. Returns false on timeout or while
    /// the mirror is failing (the hook then goes on: the journal is the backup).
    pub fn wait_within(&self, tip: u32, max_lag: u32, timeout: Duration) -> bool {
        let st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        let lagging = |s: &MirrorStatus| {
            s.error.is_none() && s.data_version.is_some_and(|v| tip.wrapping_sub(v) > max_lag && after(tip, v))
        };
        if !lagging(&st) {
            return true;
        }
        let (st, _) =
            self.shared.moved.wait_timeout_while(st, timeout, |s| lagging(s)).unwrap_or_else(|e| e.into_inner());
        !lagging(&st)
    }

    /// At a clean stop, after the journal is sealed: stops the thread, brings
    /// the mirror fully up to date (pending change included) and closes it as
    /// a single bootable file.
    pub fn finish(mut self, generation: u64) -> Result<u32> {
        self.shared.stop.store(true, Ordering::Release);
        self.progress.publish(|_| {});
        let mut f =
            self.handle.take().expect("joined once").join().map_err(|_| anyhow!("the mirror thread panicked"))?;
        if generation == 0 {
            bail!("the journal holds no generation");
        }
        let v = f.sync(generation, None, true)?;
        f.close()?;
        Ok(v)
    }
}

/// What `restore --from-mirror` did.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorRestoreReport {
    #[serde(serialize_with = "crate::files::serialize_path_lossy")]
    pub to: PathBuf,
    pub mirror_data_version: Option<u32>,
    pub data_version: u32,
    pub generation: u64,
    /// The mirror could not be continued (another history, or missing) and
    /// was rebuilt from the generation's snapshot.
    pub rebuilt: bool,
    /// What the backup left out, and where a node on it must rescan from
    /// (as in [`crate::restore::RestoreReport`]).
    pub filter: crate::filter::Filter,
    pub rescan_from_height: Option<u32>,
    #[serde(flatten)]
    pub installed: crate::restore::target::Installed,
}

/// Brings a copy of the mirror to the newest journal version and puts it at
/// `to`: usually a few changes to replay instead of a whole generation.
pub fn restore_from_mirror(
    journal: &Path,
    mirror: &Path,
    to: &Path,
    force: bool,
    allow_older: bool,
) -> Result<MirrorRestoreReport> {
    let existing = crate::restore::target::precheck(to, force)?;
    if !mirror.exists() {
        bail!("the mirror {} does not exist", mirror.display());
    }
    let generations = crate::journal::reader::generations(journal)
        .with_context(|| format!("cannot read the journal {}", journal.display()))?;
    let Some(newest) = generations.last() else { bail!("the journal holds no generation: nothing to restore") };
    let staged = Staged::beside(to);
    let tmp = staged.path().to_path_buf();
    let tmp_sidecar = sidecar_path(&tmp);
    let result = (|| -> Result<MirrorRestoreReport> {
        // A consistent copy even while the plugin updates the mirror.
        let src = Connection::open_with_flags(mirror, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open the mirror {}", mirror.display()))?;
        src.busy_timeout(Duration::from_secs(10))?;
        {
            let mut dst = Connection::open(&tmp)?;
            rusqlite::backup::Backup::new(&src, &mut dst)?.run_to_completion(4096, Duration::ZERO, None)?;
            dst.execute_batch("PRAGMA journal_mode = DELETE;")?;
        }
        let mirror_version = crate::snapshot::data_version(&src)?;
        drop(src);
        match read_sidecar(mirror) {
            Some(sc) => write_sidecar(&tmp, &sc)?,
            None => files::remove_if_exists(&tmp_sidecar),
        }
        let mut f = Follower::new(journal, &tmp);
        let v = f.sync(newest.number, None, true)?;
        let rebuilt = f.rebuilds > 0;
        f.close()?;
        let conn = Connection::open(&tmp)?;
        replay::check_database(&conn, v, true)?;
        let filter = newest.header.filter;
        let rescan = crate::restore::rescan_from_height(&conn, filter)?;
        drop(conn);
        Ok(MirrorRestoreReport {
            to: to.to_path_buf(),
            mirror_data_version: mirror_version,
            data_version: v,
            generation: newest.number,
            rebuilt,
            filter,
            rescan_from_height: rescan,
            installed: Default::default(),
        })
    })();
    files::remove_if_exists(&tmp_sidecar);
    let report = result?;
    crate::restore::target::check_not_older(to, &existing, report.data_version, allow_older)?;
    let installed = crate::restore::target::put_in_place(staged, &existing)?;
    Ok(MirrorRestoreReport { installed, ..report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AlignedBuf, RealDevice};
    use crate::journal::format::{self, RecordKind};
    use crate::journal::{Journal, JournalOptions, SnapshotMade};
    use crate::state::INCREMENT_PREFIX;
    use std::os::unix::fs::FileExt;

    fn change(v: u32) -> Vec<String> {
        let mut s = vec![];
        if v == 1 {
            s.push("CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER)".into());
            s.push("INSERT INTO vars VALUES ('data_version', NULL, 0)".into());
        }
        s.push(format!("{INCREMENT_PREFIX}{}", v - 1));
        s
    }

    /// The mirror reads a generation on the same path as restore: a seal that
    /// does not repeat the tip its records lead to is damage, not skipped.
    #[test]
    fn the_mirror_checks_seals() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j");
        let mut j = Journal::open(&journal, Arc::new(RealDevice), JournalOptions::default()).unwrap();
        j.start_generation(&mut |p: &Path| {
            std::fs::File::create(p)?;
            Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
        })
        .unwrap();
        for v in 1..=3 {
            j.append(v, CallKind::Txn, &change(v)).unwrap();
        }
        j.seal().unwrap();
        drop(j);
        let clean = dir.path().join("clean.sqlite3");
        assert_eq!(Follower::new(&journal, &clean).sync(1, None, true).unwrap(), 3);

        let g = Generation::open(&journal, 1).unwrap();
        let seal = g.records().map(Result::unwrap).last().unwrap();
        assert_eq!(seal.header.kind, RecordKind::Seal);
        let forged = format::RecordHeader { data_version: 2, ..seal.header };
        let mut buf = AlignedBuf::with_capacity(0);
        let n = format::encode_record_stored(&mut buf, g.block_bytes(), &forged, &[]);
        let f = std::fs::OpenOptions::new().write(true).open(&g.segments[0].path).unwrap();
        f.write_all_at(&buf[..n], seal.loc.offset).unwrap();
        drop(f);
        let mirror = dir.path().join("mirror.sqlite3");
        let err = format!("{:#}", Follower::new(&journal, &mirror).sync(1, None, true).unwrap_err());
        assert!(err.contains("seal record disagrees"), "{err}");
    }
}
