//! Restore on a bad day, through the real binary: whatever it finds in the
//! target directory, the journal or the command line, restore must never
//! turn a recoverable situation into a loss.

mod common;

use cln_replica::device::RealDevice;
use cln_replica::journal::format::BaseKind;
use cln_replica::journal::{Journal, JournalOptions, SnapshotMade};
use cln_replica::sim::workload::Workload;
use cln_replica::state::{CallKind, INCREMENT_PREFIX};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs the binary; a run that outlives `CLI_TIMEOUT` is killed and fails
/// the test (a hang is a bug here: nothing it reads may block it).
fn run(args: &[&str]) -> Output {
    run_in(args, None)
}

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn run_in(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(EXE);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("cln-replica {args:?} hung for {CLI_TIMEOUT:?}: {}", text(&out));
        }
        // Polling a child's exit, not a synchronisation of the test.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A database whose writer was killed mid-transaction: a hot rollback
/// journal beside it (the files as they stand while the transaction is open
/// and its pages have spilled into the database file).
fn with_hot_journal(at: &Path) {
    let live = at.with_extension("live");
    let conn = rusqlite::Connection::open(&live).unwrap();
    conn.execute_batch("PRAGMA cache_size = 10; CREATE TABLE big (x BLOB); BEGIN;").unwrap();
    for _ in 0..500 {
        conn.execute("INSERT INTO big VALUES (randomblob(4000))", []).unwrap();
    }
    let journal = cln_replica::restore::target::sidecar(&live, "-journal");
    assert!(std::fs::metadata(&journal).unwrap().len() > 0, "the transaction spilled");
    std::fs::copy(&live, at).unwrap();
    std::fs::copy(&journal, cln_replica::restore::target::sidecar(at, "-journal")).unwrap();
    drop(conn);
}

#[test]
fn a_hot_journal_is_moved_aside_with_the_file_it_belongs_to() {
    let (s, node) = backed_up(5, 40);
    let to = s.path("lightningd.sqlite3");
    with_hot_journal(&to);
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--force", "--allow-older", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!cln_replica::restore::target::sidecar(&to, "-journal").exists(), "no journal left beside it");
    // The restored file opens clean and equals the node.
    let conn = rusqlite::Connection::open(&to).unwrap();
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    drop(conn);
    let live = s.path("node.sqlite3");
    node.copy_database(&live).unwrap();
    assert!(cln_replica::dbcompare::compare_files(&live, &to).unwrap().is_empty());
    // The old pair sits aside together: SQLite still rolls its journal back.
    let aside: Vec<PathBuf> =
        report["set_aside"].as_array().unwrap().iter().map(|p| PathBuf::from(p.as_str().unwrap())).collect();
    assert_eq!(aside.len(), 2, "{aside:?}");
    assert_eq!(aside[1], cln_replica::restore::target::sidecar(&aside[0], "-journal"));
    let old = rusqlite::Connection::open(&aside[0]).unwrap();
    let n: i64 = old.query_row("SELECT COUNT(*) FROM big", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "the uncommitted transaction was rolled back, not merged into the restore");
}

#[test]
fn an_older_state_never_silently_replaces_a_newer_one() {
    let (s, node) = backed_up(5, 40);
    let newest = node.data_version();
    let to = s.path("lightningd.sqlite3");
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to)]);
    assert!(o.status.success(), "{}", text(&o));
    let at = (newest - 10).to_string();
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--at", &at, "--force"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(&format!("data_version {newest}")) && t.contains(&format!("data_version {at}")), "{t}");
    assert!(t.contains("--allow-older"), "{t}");
    let conn = rusqlite::Connection::open(&to).unwrap();
    assert_eq!(cln_replica::snapshot::data_version(&conn).unwrap(), Some(newest), "untouched");
    drop(conn);
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--at", &at, "--force", "--allow-older"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("kept as"), "{}", text(&o));
    // The same version (or a newer one) needs no flag.
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn only_a_regular_file_is_replaced() {
    let (s, _node) = backed_up(5, 5);
    let fifo = s.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = s.path("link");
    std::os::unix::fs::symlink(s.path("elsewhere"), &link).unwrap();
    for (to, why) in [("/dev/null", "a device"), (path(&fifo), "a FIFO"), (path(&link), "a symbolic link")] {
        let o = run(&["restore", "--from", path(&s.journal), "--to", to, "--force"]);
        assert!(!o.status.success());
        assert!(text(&o).contains(to) && text(&o).contains(why), "{to}: {}", text(&o));
    }
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&std::fs::metadata("/dev/null").unwrap().file_type()));
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(s.tmp.path()), "--force"]);
    assert!(text(&o).contains("a directory"), "{}", text(&o));
}

/// A process that holds `file` open (and, with `lockf`, a POSIX lock on
/// it, as lightningd holds one on its pid file), until killed.
fn holder(file: &Path, lockf: bool) -> std::process::Child {
    let script = if lockf {
        "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(120)"
    } else {
        "import sys,time\nf=open(sys.argv[1],'rb')\nprint('held',flush=True)\ntime.sleep(120)"
    };
    let mut c = Command::new("python3").args(["-c", script]).arg(file).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "held");
    c
}

#[test]
fn a_database_in_use_is_not_replaced() {
    let (s, _node) = backed_up(5, 5);
    let net = s.tmp.path().join("ln").join("regtest");
    std::fs::create_dir_all(&net).unwrap();
    let to = net.join("lightningd.sqlite3");
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to)]);
    assert!(o.status.success(), "{}", text(&o));
    let mut open = holder(&to, false);
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--force"]);
    let _ = open.kill();
    let _ = open.wait();
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("is open in process {}", open.id())), "{}", text(&o));
    // lightningd's own sign of life: the lock on lightningd-<network>.pid.
    let pidfile = s.tmp.path().join("ln").join("lightningd-regtest.pid");
    let mut lightningd = holder(&pidfile, true);
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--force"]);
    let _ = lightningd.kill();
    let _ = lightningd.wait();
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("lightningd (pid {})", lightningd.id())), "{}", text(&o));
    // The stale pid file of a node killed with -9 holds no lock.
    let o = run(&["restore", "--from", path(&s.journal), "--to", path(&to), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
}

fn schema_record() -> Vec<String> {
    vec![
        "CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER)".into(),
        "INSERT INTO vars VALUES ('data_version', NULL, 0)".into(),
        format!("{INCREMENT_PREFIX}0"),
    ]
}

/// A journal whose data_version 2 record holds `statement`, with valid
/// checksums: what someone who can write the backup device can make.
fn forged(dir: &Path, statement: &str) -> PathBuf {
    let journal = dir.join("journal");
    let mut j = Journal::open(&journal, Arc::new(RealDevice), JournalOptions::default()).unwrap();
    j.start_generation(&mut |p: &Path| {
        std::fs::File::create(p)?;
        Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
    })
    .unwrap();
    j.append(1, CallKind::Txn, &schema_record()).unwrap();
    j.append(2, CallKind::Txn, &[statement.to_string(), format!("{INCREMENT_PREFIX}1")]).unwrap();
    j.seal().unwrap();
    journal
}

#[test]
fn a_forged_record_runs_nothing_lightningd_never_sends() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let evil = outside.join("evil.sqlite3");
    let e = evil.display();
    for statement in [
        format!("ATTACH DATABASE '{e}' AS evil"),
        format!("VACUUM INTO '{e}'"),
        format!("SELECT 1; VACUUM INTO '{e}'"),
        format!("CREATE TABLE x (a); ATTACH '{e}' AS evil; CREATE TABLE evil.t (a)"),
        "PRAGMA writable_schema = ON".to_string(),
        "PRAGMA journal_mode = WAL".to_string(),
        "CREATE TEMP TABLE t (a)".to_string(),
        "SELECT load_extension('/tmp/nothing.so')".to_string(),
        "CREATE TRIGGER t AFTER INSERT ON vars BEGIN DELETE FROM vars; END".to_string(),
    ] {
        let case = tempfile::tempdir().unwrap();
        let journal = forged(case.path(), &statement);
        // Refused by the authorizer, or by SQLite itself before anything ran
        // (VACUUM inside a transaction): either way at the record's place.
        let refused = |t: &str| t.contains("lightningd never sends") || t.contains("cannot VACUUM");
        let o = run(&["verify", "--from", path(&journal)]);
        assert!(!o.status.success(), "{statement}: {}", text(&o));
        let t = text(&o);
        assert!(refused(&t) && t.contains("data_version 2"), "{statement}: {t}");
        let to = case.path().join("restored.sqlite3");
        let o = run(&["restore", "--from", path(&journal), "--to", path(&to)]);
        assert!(!o.status.success(), "{statement}: {}", text(&o));
        let t = text(&o);
        assert!(refused(&t) && t.contains("generation 1, segment 1, byte offset"), "{statement}: {t}");
        assert!(!to.exists(), "{statement}: no restored file");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{statement}: nothing created outside");
    }
}

#[test]
fn a_fifo_in_the_journal_is_an_error_not_a_hang() {
    let (s, _node) = backed_up(5, 5);
    let seg = s.journal.join("gen-0000000001").join("segment-00000001");
    std::fs::remove_file(&seg).unwrap();
    nix::unistd::mkfifo(&seg, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let to = s.path("restored.sqlite3");
    for args in [
        vec!["restore", "--from", path(&s.journal), "--to", path(&to)],
        vec!["verify", "--from", path(&s.journal)],
        vec!["status", "--from", path(&s.journal)],
    ] {
        let o = run(&args);
        assert!(text(&o).contains("FIFO"), "{args:?}: {}", text(&o));
    }
    // The plugin, at its first hook: a refusal, at once.
    let mut node = s.node_with_plugin();
    let change = cln_replica::sim::Change::Txn(vec!["UPDATE vars SET val = 'x' WHERE name = 'none'".into()]);
    let why = refusal(node.apply(&change).unwrap());
    assert!(why.contains("FIFO"), "{why}");
}

#[test]
fn an_absurd_segment_is_refused_at_once() {
    let (s, _node) = backed_up(5, 5);
    let gen = s.journal.join("gen-0000000001");
    // A 64 GiB sparse segment whose header says so.
    let h = cln_replica::journal::Generation::open(&s.journal, 1).unwrap().header;
    let big = cln_replica::journal::format::SegmentHeader { segment: 2, segment_bytes: 64 << 30, ..h };
    let seg = gen.join("segment-00000002");
    let f = std::fs::File::create(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &big.encode(), 0).unwrap();
    f.set_len(64 << 30).unwrap();
    drop(f);
    // Refused from its header, not scanned block by block.
    let o = run(&["verify", "--from", path(&s.journal)]);
    assert!(!o.status.success());
    assert!(text(&o).contains("more than"), "{}", text(&o));
}

#[test]
fn a_config_error_never_shows_a_value() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let s = Setup::new(&format!(
        "key_file = \"k\"\n[[destination]]\nurl = \"file:///x\"\nsecret_acess_key = \"{secret}\"\n"
    ));
    let mut node = s.node_with_plugin();
    let why = refusal(node.apply(&Workload::schema()[0]).unwrap());
    assert!(why.contains("secret_acess_key") && why.contains("line"), "{why}");
    assert!(!why.contains(secret), "{why}");
    assert!(!node.logs().iter().any(|l| l.contains(secret)), "{:?}", node.logs());
    let o = run(&["status", "--config", path(&s.node_dir.join("cln-replica.toml"))]);
    assert!(!text(&o).contains(secret), "{}", text(&o));
}

#[test]
fn a_journal_path_that_is_not_utf8_works() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    // TOML holds only UTF-8: the path comes from the directory the
    // configuration sits in (a relative `journal`).
    let node_dir = tmp.path().join(std::ffi::OsStr::from_bytes(b"node-\xff\xfe")).join("regtest");
    std::fs::create_dir_all(&node_dir).unwrap();
    let status = tmp.path().join("status.json");
    std::fs::write(node_dir.join("cln-replica.toml"), format!("journal = \"j\"\nstatus_file = {:?}\n", status))
        .unwrap();
    let mut node = cln_replica::sim::SimNode::open(&node_dir).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    apply_schema(&mut node);
    let answer = node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"].clone();
    assert!(answer["journal"].as_str().is_some_and(|j| j.contains("node-")), "{answer}");
    node.shutdown_plugin().unwrap();
    assert!(status.exists(), "the status file was written");
    let journal = node_dir.join("j");
    let to = tmp.path().join(std::ffi::OsStr::from_bytes(b"restored-\xff.sqlite3"));
    let o = Command::new(EXE)
        .arg("restore")
        .arg("--from")
        .arg(&journal)
        .arg("--to")
        .arg(&to)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(EXE).arg("status").arg("--from").arg(&journal).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Every call of both traces recorded from a real lightningd (a first start
/// with all migrations, and a three-node workload) replays under the guard:
/// the authorizer lets through everything lightningd really sends.
#[test]
fn the_guard_lets_through_every_recorded_real_call() {
    use cln_replica::state::{classify, CallKind};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["cln-v26.06-first-start.jsonl.zst", "cln-v26.06-realnode.jsonl.zst"] {
        let calls = cln_replica::sim::trace::load(&dir.join(name)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let db = cln_replica::replay::ReplayDb::open(&tmp.path().join("db")).unwrap();
        for (i, c) in calls.iter().enumerate() {
            let kind = classify(c.data_version, &c.writes).unwrap();
            // Under the guard, as a record's statements run.
            let r = cln_replica::replay::run_guarded(&db, &c.writes, kind == CallKind::Txn);
            r.unwrap_or_else(|e| panic!("{name}, call {i} (data_version {}): {e:#}", c.data_version));
        }
    }
    // lightningd in developer mode creates STRICT tables; adding a column
    // to one makes SQLite check the table (an internal PRAGMA quick_check).
    let tmp = tempfile::tempdir().unwrap();
    let db = cln_replica::replay::ReplayDb::open(&tmp.path().join("db")).unwrap();
    let strict = [
        "CREATE TABLE t (a INTEGER) STRICT",
        "INSERT INTO t VALUES (1)",
        "ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 0",
    ];
    cln_replica::replay::run_guarded(&db, &strict, true).unwrap();
}
