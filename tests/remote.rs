//! Replication to destinations, through the real binary: what goes out
//! restores to the node's database, tampering is refused by name, and the
//! synchronous tier never lets a channel-state change commit unreplicated.
//!
//! The file:// tests run everywhere. The S3 and SFTP ones need real servers
//! on 127.0.0.1 and are `#[ignore]`d: scripts/test.d/60-remote starts them and
//! runs `cargo test --features remote,remote-sftp --test remote -- --ignored`
//! with CLN_REPLICA_S3S_FS (the s3s-fs binary) and CLN_REPLICA_SFTP_URL /
//! CLN_REPLICA_SFTP_KEY set.

mod common;

use cln_replica::remote::crypto::Key;
use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, HookOutcome, SimNode};
use cln_replica::status::PluginStatus;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A node whose config names `destinations` (TOML tables) and a fresh key.
fn setup(destinations: &str, extra: &str) -> (Setup, PathBuf) {
    let s = Setup::new("");
    let key = s.path("replica.key");
    Key::generate().unwrap().write_new_file(&key).unwrap();
    let status = s.path("status.json");
    let conf = s.node_dir.join("cln-replica.toml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "key_file = {key:?}\nstatus_file = {status:?}\nremote_lag_ms = 200\n{extra}\n{destinations}"
    ));
    std::fs::write(&conf, text).unwrap();
    (s, key)
}

fn file_destination(dir: &Path) -> String {
    format!("[[destination]]\nurl = \"file://{}\"\n", dir.display())
}

fn start(s: &Setup) -> SimNode {
    let mut node = s.node_with_plugin();
    for c in Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    node.init_plugin().unwrap();
    node
}

fn run(node: &mut SimNode, w: &mut Workload, n: usize) {
    for _ in 0..n {
        let c = w.next_change();
        expect_continue(node.apply(&c).unwrap(), node);
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Restores from `url` with the real binary; Err carries its output.
fn restore_from(s: &Setup, url: &str, key: &Path, name: &str) -> Result<PathBuf, String> {
    let to = s.path(name);
    let _ = std::fs::remove_file(&to);
    let o = cli(&["restore", "--from", url, "--to", to.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    if o.status.success() {
        Ok(to)
    } else {
        Err(text(&o))
    }
}

fn assert_same_as_node(s: &Setup, node: &SimNode, restored: &Path) {
    let live = s.path("live.sqlite3");
    let _ = std::fs::remove_file(&live);
    node.copy_database(&live).unwrap();
    let diffs = cln_replica::dbcompare::compare_files(&live, restored).unwrap();
    assert!(diffs.is_empty(), "remote restore differs from the node's database:\n{}", diffs.join("\n"));
}

fn status(s: &Setup) -> Option<PluginStatus> {
    serde_json::from_slice(&std::fs::read(s.path("status.json")).ok()?).ok()
}

/// Polls the status file (written by the plugin every few hundred ms) until
/// `pred` holds; after `timeout`, panics with the last status and the node's log.
fn wait_status(
    s: &Setup,
    node: &SimNode,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&PluginStatus) -> bool,
) -> PluginStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let st = status(s);
        if let Some(st) = st.as_ref().filter(|st| pred(st)) {
            return st.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in {timeout:?}; last status {st:?}\nlog:\n{}",
            node.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every destination holds the node's newest data_version.
fn wait_caught_up(s: &Setup, node: &SimNode, timeout: Duration) {
    let v = node.data_version();
    wait_status(s, node, "destinations caught up", timeout, |st| {
        let r = st.remote.as_ref().expect("remote status");
        r.destinations.iter().all(|d| d.acked_data_version == Some(v) && d.queue_records == 0)
    });
}

fn objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for g in std::fs::read_dir(dir).unwrap() {
        let g = g.unwrap().path();
        if g.is_dir() {
            for o in std::fs::read_dir(&g).unwrap() {
                out.push(o.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for o in objects(from) {
        let rel = o.strip_prefix(from).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&o, to.join(rel)).unwrap();
    }
}

#[test]
fn file_destination_restores_the_node_and_refuses_tampering_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    // Synchronous for everything: one object per change, so there are many.
    let (s, key) = setup(&file_destination(&dest), "remote_sync = \"all\"\n");
    let mut node = start(&s);
    let mut w = Workload::new(11);
    run(&mut node, &mut w, 150);
    expect_continue(node.apply(&w.big_change(2 << 20)).unwrap(), &node);
    run(&mut node, &mut w, 50);
    let (st, _) = node.shutdown_plugin().unwrap();
    assert!(st.success());
    let url = format!("file://{}", dest.display());
    let restored = restore_from(&s, &url, &key, "from-file.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    let o = cli(&["verify", "--from", &url, "--key-file", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Nothing in clear: no SQL text in any object.
    for o in objects(&dest) {
        let b = std::fs::read(&o).unwrap();
        assert!(!b.windows(11).any(|w| w == b"INSERT INTO"), "{} holds clear text", o.display());
    }

    let recs: Vec<PathBuf> = objects(&dest).into_iter().filter(|p| p.to_string_lossy().contains("/rec-")).collect();
    assert!(recs.len() > 20, "one object per synchronous change: {}", recs.len());
    let tampered = tmp.path().join("tampered");
    let turl = format!("file://{}", tampered.display());
    let name = |p: &Path| p.strip_prefix(&dest).unwrap().to_string_lossy().into_owned();
    let expect_refusal = |what: &str, needle: &str, object: &str| {
        let e = restore_from(&s, &turl, &key, "tampered.sqlite3").expect_err(what);
        assert!(e.contains(needle) && e.contains(object), "{what}: expected {needle:?} naming {object}, got: {e}");
        let v = cli(&["verify", "--from", &turl, "--key-file", key.to_str().unwrap()]);
        assert_eq!(v.status.code(), Some(1), "{what}: verify must fail: {}", text(&v));
    };
    let victim = &recs[recs.len() / 2];
    let at = |p: &Path| tampered.join(p.strip_prefix(&dest).unwrap());
    // A flipped bit.
    copy_dir(&dest, &tampered);
    let mut b = std::fs::read(at(victim)).unwrap();
    let i = b.len() - 20;
    b[i] ^= 0x40;
    std::fs::write(at(victim), &b).unwrap();
    expect_refusal("bit flip", "authentication failed", &name(victim));
    // Truncated.
    copy_dir(&dest, &tampered);
    let b = std::fs::read(at(victim)).unwrap();
    std::fs::write(at(victim), &b[..b.len() - 1]).unwrap();
    expect_refusal("truncation", "authentication failed", &name(victim));
    // Reordered: another object's content under this name.
    copy_dir(&dest, &tampered);
    std::fs::copy(&recs[1], at(victim)).unwrap();
    expect_refusal("swap", "authentication failed", &name(victim));
    // Deleted from the middle of the sequence.
    copy_dir(&dest, &tampered);
    std::fs::remove_file(at(victim)).unwrap();
    let missing = victim.file_name().unwrap().to_string_lossy();
    let first: u64 = missing.split('-').nth(1).unwrap().parse().unwrap();
    expect_refusal("deletion", "missing", &format!("records {first}..="));
    // The base deleted: only an older, incomplete generation is left.
    copy_dir(&dest, &tampered);
    let base = objects(&tampered).into_iter().find(|p| p.ends_with("base")).unwrap();
    std::fs::remove_file(&base).unwrap();
    assert!(restore_from(&s, &turl, &key, "tampered.sqlite3").unwrap_err().contains("no base"));
    // Another key.
    let other = s.path("other.key");
    Key::generate().unwrap().write_new_file(&other).unwrap();
    let e = restore_from(&s, &url, &other, "wrong-key.sqlite3").unwrap_err();
    assert!(e.contains("another key"), "{e}");
}

#[test]
fn compressed_records_ship_and_restore_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "compression = \"zstd\"\n");
    let mut node = start(&s);
    let mut w = Workload::new(12);
    for i in 0..40 {
        let c = if i % 8 == 3 { w.big_change(40_000) } else { w.next_change() };
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let (st, _) = node.shutdown_plugin().unwrap();
    assert!(st.success());
    let gens = cln_replica::journal::reader::generations(&s.journal).unwrap();
    let compressed = gens.iter().flat_map(|g| g.records().map(|r| r.unwrap().header.is_compressed())).filter(|&z| z);
    assert!(compressed.count() >= 5, "the big changes are stored compressed");
    let url = format!("file://{}", dest.display());
    let restored = restore_from(&s, &url, &key, "compressed.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    let o = cli(&["verify", "--from", &url, "--key-file", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_filtered_backup_ships_filtered_and_its_remote_restore_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "filter = \"caches\"\n");
    let mut node = start(&s);
    run(&mut node, &mut Workload::new(13), 300);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let (st, _) = node.shutdown_plugin().unwrap();
    assert!(st.success());
    let url = format!("file://{}", dest.display());
    let to = s.path("filtered.sqlite3");
    let o = cli(&["restore", "--from", &url, "--to", to.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("--rescan=-"), "{}", text(&o));
    let live = s.path("live.sqlite3");
    node.copy_database(&live).unwrap();
    let conn = rusqlite::Connection::open(&live).unwrap();
    assert!(conn.query_row("SELECT COUNT(*) FROM utxoset", [], |r| r.get::<_, i64>(0)).unwrap() > 0);
    conn.execute_batch("DELETE FROM utxoset").unwrap();
    drop(conn);
    let diffs = cln_replica::dbcompare::compare_files(&live, &to).unwrap();
    assert!(diffs.is_empty(), "remote restore of a filtered backup:\n{}", diffs.join("\n"));
}

#[test]
fn a_remote_restore_at_the_version_where_the_filter_was_switched_on_is_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "");
    let mut node = start(&s);
    let mut w = Workload::new(14);
    run(&mut node, &mut w, 200);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let (st, _) = node.shutdown_plugin().unwrap();
    assert!(st.success());
    let v = node.data_version();
    let whole = s.path("whole.sqlite3");
    node.copy_database(&whole).unwrap();
    let conf = s.node_dir.join("cln-replica.toml");
    let text_before = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("filter = \"caches\"\n{text_before}")).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 50);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    node.shutdown_plugin().unwrap();
    // Generation 2 (filtered) starts at v, where generation 1 ends: the
    // restore at v is the whole database, with its utxoset.
    let url = format!("file://{}", dest.display());
    let to = s.path("at-switch.sqlite3");
    let vs = v.to_string();
    let o = cli(&[
        "restore",
        "--from",
        &url,
        "--to",
        to.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--at",
        &vs,
    ]);
    assert!(o.status.success() && !text(&o).contains("--rescan"), "{}", text(&o));
    let diffs = cln_replica::dbcompare::compare_files(&whole, &to).unwrap();
    assert!(diffs.is_empty(), "restore at the switch:\n{}", diffs.join("\n"));
}

#[test]
fn background_shipping_survives_an_outage_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "");
    let mut node = start(&s);
    let mut w = Workload::new(5);
    run(&mut node, &mut w, 100);
    wait_caught_up(&s, &node, Duration::from_secs(20));
    // The destination goes away (a NAS unmounted): a file where the directory was.
    let aside = tmp.path().join("nas-aside");
    std::fs::rename(&dest, &aside).unwrap();
    std::fs::write(&dest, b"not a directory").unwrap();
    run(&mut node, &mut w, 100);
    wait_status(&s, &node, "the outage shows", Duration::from_secs(30), |st| {
        st.remote
            .as_ref()
            .is_some_and(|r| r.destinations[0].queue_records > 0 && r.destinations[0].last_error.is_some())
    });
    // The plugin restarts during the outage, then the destination returns.
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 50);
    std::fs::remove_file(&dest).unwrap();
    std::fs::rename(&aside, &dest).unwrap();
    wait_caught_up(&s, &node, Duration::from_secs(60));
    let restored = restore_from(&s, &format!("file://{}", dest.display()), &key, "after-outage.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
}

/// A channel-state change that no destination acknowledged is refused (halt)
/// or, with `degrade`, let through with the status flag set.
#[test]
fn sync_tier_never_continues_for_an_unreplicated_channel_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "remote_sync = \"channel-state\"\nremote_sync_timeout_ms = 500\n");
    let mut node = start(&s);
    let mut w = Workload::new(3);
    run(&mut node, &mut w, 60);
    std::fs::rename(&dest, tmp.path().join("gone")).unwrap();
    std::fs::write(&dest, b"not a directory").unwrap();
    // An invoice: background tier, answered at once.
    let invoice = vec!["INSERT INTO vars (name, intval) VALUES ('remote-test', 1);".to_string()];
    expect_continue(node.commit(&invoice).unwrap(), &node);
    let v = node.data_version();
    let channel = vec!["UPDATE channels SET state = state WHERE id = -1;".to_string()];
    let why = refusal(node.commit(&channel).unwrap());
    assert!(why.contains("no quorum") && why.contains("halt"), "{why}");
    assert_eq!(node.data_version(), v, "lightningd did not commit it");
    node.kill_plugin().unwrap();
    // The remote holds nothing newer than what was acknowledged before.
    std::fs::remove_file(&dest).unwrap();
    std::fs::rename(tmp.path().join("gone"), &dest).unwrap();
    let restored = restore_from(&s, &format!("file://{}", dest.display()), &key, "halted.sqlite3").unwrap();
    let conn = rusqlite::Connection::open(&restored).unwrap();
    let rv: i64 = conn.query_row("SELECT intval FROM vars WHERE name = 'data_version'", [], |r| r.get(0)).unwrap();
    assert!(rv < v as i64 + 1, "the refused change is not at the destination");

    // Degrade: the change goes through, loudly, and the status says so.
    let conf = s.node_dir.join("cln-replica.toml");
    let t = std::fs::read_to_string(&conf).unwrap().replacen(
        "[[destination]]",
        "remote_sync_on_timeout = \"degrade\"\n[[destination]]",
        1,
    );
    std::fs::write(&conf, t).unwrap();
    std::fs::rename(&dest, tmp.path().join("gone")).unwrap();
    std::fs::write(&dest, b"not a directory").unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    let channel = vec!["UPDATE channels SET state = state WHERE id = -2;".to_string()];
    let out = node.commit(&channel).unwrap();
    if out != HookOutcome::Continue {
        panic!("degrade must continue: {out:?}");
    }
    assert!(logs_contain(&node, "SYNCHRONOUS REPLICATION DEGRADED"));
    wait_status(&s, &node, "degraded in the status file", Duration::from_secs(30), |st| {
        st.remote.as_ref().is_some_and(|r| r.degraded)
    });
    node.kill_plugin().unwrap();
}

// ---- S3 (s3s-fs) and SFTP (sshd): real servers on 127.0.0.1 ----

struct S3Server {
    child: std::process::Child,
    root: PathBuf,
    port: u16,
}

impl S3Server {
    fn start(root: &Path, port: u16) -> S3Server {
        let exe = std::env::var("CLN_REPLICA_S3S_FS").expect("CLN_REPLICA_S3S_FS names the s3s-fs binary");
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let child = Command::new(exe)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "testkey", "--secret-key", "testsecret"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, root: root.to_path_buf(), port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn destination(&self, prefix: &str) -> String {
        format!(
            "[[destination]]\nurl = \"s3://bucket/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testkey\"\nsecret_access_key = \"testsecret\"\n",
            self.port
        )
    }

    fn url(&self, prefix: &str) -> String {
        format!("s3://bucket/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn s3_env() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testkey");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testsecret");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.d/60-remote"]
fn s3_restore_equals_the_node_after_a_server_killed_mid_upload() {
    s3_env();
    let tmp = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(&tmp.path().join("s3"), free_port());
    let (s, key) = setup(&server.destination("node1"), "");
    let mut node = start(&s);
    let mut w = Workload::new(21);
    run(&mut node, &mut w, 200);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    // A large change, and the server killed while it is being uploaded.
    expect_continue(node.apply(&w.big_change(6 << 20)).unwrap(), &node);
    // A moment for the upload to begin: aims the kill, synchronises nothing
    // (what follows holds whether the kill lands mid-upload or not).
    std::thread::sleep(Duration::from_millis(60));
    server.kill();
    run(&mut node, &mut w, 200);
    wait_status(&s, &node, "records queued while the server is down", Duration::from_secs(30), |st| {
        st.remote.as_ref().is_some_and(|r| r.destinations[0].queue_records > 0)
    });
    let root = server.root.clone();
    let port = server.port;
    drop(server);
    let server = S3Server::start(&root, port);
    run(&mut node, &mut w, 50);
    wait_caught_up(&s, &node, Duration::from_secs(120));
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
    let restored = restore_from(&s, &server.url("node1"), &key, "from-s3.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    let o = cli(&["verify", "--from", &server.url("node1"), "--key-file", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.d/60-remote"]
fn s3_sync_tier_halts_without_the_server_and_latency_per_mode() {
    s3_env();
    let tmp = tempfile::tempdir().unwrap();
    let server = S3Server::start(&tmp.path().join("s3"), free_port());
    let mut report = vec![];
    for mode in ["no destination", "none", "channel-state", "all"] {
        let (s, _key) = if mode == "no destination" {
            (Setup::new(""), PathBuf::new())
        } else {
            setup(&server.destination(&format!("lat-{mode}")), &format!("remote_sync = \"{mode}\"\n"))
        };
        let mut node = start(&s);
        let mut w = Workload::new(99);
        run(&mut node, &mut w, 50);
        let mut all = vec![];
        let mut chan = vec![];
        for _ in 0..300 {
            let c = w.next_change();
            let touches = match &c {
                Change::Txn(st) => {
                    cln_replica::remote::settings::needs_sync(cln_replica::remote::RemoteSync::ChannelState, st)
                }
                _ => false,
            };
            let t = Instant::now();
            expect_continue(node.apply(&c).unwrap(), &node);
            let us = t.elapsed().as_micros() as u64;
            all.push(us);
            if touches {
                chan.push(us);
            }
        }
        let pct = |v: &mut Vec<u64>, q: f64| {
            v.sort_unstable();
            if v.is_empty() {
                0
            } else {
                v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
            }
        };
        report.push(format!(
            "remote_sync={mode}: all changes p50 {} us p99 {} us; channel-state changes ({}) p50 {} us p99 {} us",
            pct(&mut all, 0.5),
            pct(&mut all, 0.99),
            chan.len(),
            pct(&mut chan, 0.5),
            pct(&mut chan, 0.99)
        ));
        let (ok, _) = node.shutdown_plugin().unwrap();
        assert!(ok.success());
    }
    for r in &report {
        eprintln!("LATENCY {r}");
    }
    // Server gone: the synchronous tier refuses a channel-state change.
    let (s, _key) =
        setup(&server.destination("halt"), "remote_sync = \"channel-state\"\nremote_sync_timeout_ms = 1000\n");
    let mut node = start(&s);
    drop(server);
    let v = node.data_version();
    let why = refusal(node.commit(&["UPDATE channels SET state = state WHERE id = -1;".to_string()]).unwrap());
    assert!(why.contains("no quorum"), "{why}");
    assert_eq!(node.data_version(), v);
    node.kill_plugin().unwrap();
}

#[test]
#[ignore = "needs sshd: scripts/test.d/60-remote"]
fn sftp_restore_equals_the_node() {
    let url = std::env::var("CLN_REPLICA_SFTP_URL").expect("CLN_REPLICA_SFTP_URL");
    let ssh_key = std::env::var("CLN_REPLICA_SFTP_KEY").expect("CLN_REPLICA_SFTP_KEY");
    let dest = format!("[[destination]]\nurl = \"{url}/node1\"\nssh_key = \"{ssh_key}\"\nknown_hosts = \"accept\"\n");
    let (s, key) = setup(&dest, "remote_sync = \"channel-state\"\n");
    let mut node = start(&s);
    let mut w = Workload::new(8);
    run(&mut node, &mut w, 150);
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
    let full = format!("{url}/node1?key={ssh_key}&known_hosts=accept");
    let restored = restore_from(&s, &full, &key, "from-sftp.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
}

/// A journal started anew (or another node) on the same location never
/// continues the generation it finds there.
#[test]
fn a_new_journal_never_continues_another_journals_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s1, key1) = setup(&file_destination(&dest), "");
    let mut node1 = start(&s1);
    run(&mut node1, &mut Workload::new(1), 30);
    wait_caught_up(&s1, &node1, Duration::from_secs(20));
    let (ok, _) = node1.shutdown_plugin().unwrap();
    assert!(ok.success());
    let (s2, key2) = setup(&file_destination(&dest), "");
    std::fs::copy(&key1, &key2).unwrap();
    let mut node2 = start(&s2);
    run(&mut node2, &mut Workload::new(2), 10);
    wait_status(&s2, &node2, "the refusal of another journal's objects", Duration::from_secs(20), |st| {
        let err = st.remote.as_ref().and_then(|r| r.destinations[0].last_error.as_deref());
        err.is_some_and(|e| e.contains("not this journal's generation"))
    });
    node2.kill_plugin().unwrap();
    // The first node's copy is intact.
    let restored = restore_from(&s1, &format!("file://{}", dest.display()), &key1, "first.sqlite3").unwrap();
    assert_same_as_node(&s1, &node1, &restored);
}
