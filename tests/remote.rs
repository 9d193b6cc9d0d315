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
mod remote_common;

use cln_replica::remote::crypto::Key;
use cln_replica::sim::workload::Workload;
use cln_replica::sim::{Change, HookOutcome, SimNode};
use cln_replica::status::PluginStatus;
use common::*;
use remote_common::*;
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
    apply_schema(&mut node);
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

/// The destination directory goes away (a NAS unmounted): a file where the
/// directory was, so every upload fails. Returns where it was put aside.
fn take_away(dest: &Path) -> PathBuf {
    let aside = dest.with_extension("aside");
    std::fs::rename(dest, &aside).unwrap();
    std::fs::write(dest, b"not a directory").unwrap();
    aside
}

/// The destination comes back as it was.
fn bring_back(dest: &Path, aside: &Path) {
    std::fs::remove_file(dest).unwrap();
    std::fs::rename(aside, dest).unwrap();
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
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
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
    let aside = take_away(&dest);
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
    bring_back(&dest, &aside);
    wait_caught_up(&s, &node, Duration::from_secs(60));
    let restored = restore_from(&s, &format!("file://{}", dest.display()), &key, "after-outage.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
}

/// A destination that is away while a compaction and retention remove the
/// local generation it was shipping: when it comes back, it goes on from the
/// newer generation's base (the removed generation's changes are all in it)
/// and restores the node, instead of retrying a generation that is gone.
#[test]
fn a_generation_retired_before_it_was_shipped_is_skipped_for_the_next_base() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "keep_generations = 1\ncompact_journal_bytes = 0\n");
    let mut node = start(&s);
    let mut w = Workload::new(21);
    run(&mut node, &mut w, 50);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let aside = take_away(&dest);
    run(&mut node, &mut w, 50);
    let answer = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert_eq!(answer["result"]["started"], true, "{answer}");
    // The compaction finishes in the background (no hooks meanwhile, so it
    // needs no catching up); the next hook switches to it, and retention
    // then removes generation 1. Bounded waits, long enough for emulation.
    let deadline = Instant::now() + Duration::from_secs(600);
    while replica_status(&mut node)["compaction"]["state"] != "ready" {
        assert!(Instant::now() < deadline, "the compaction did not finish: {}", replica_status(&mut node));
        std::thread::sleep(Duration::from_millis(50));
    }
    run(&mut node, &mut w, 1);
    while s.journal.join("gen-0000000001").exists() {
        assert!(Instant::now() < deadline, "generation 1 still there: {}", replica_status(&mut node));
        std::thread::sleep(Duration::from_millis(50));
    }
    // A restart in the outage: the new process learns the destination's
    // position (in generation 1) from its tip when it comes back.
    let (ok, _) = node.shutdown_plugin().unwrap();
    assert!(ok.success());
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    bring_back(&dest, &aside);
    run(&mut node, &mut w, 5);
    wait_caught_up(&s, &node, Duration::from_secs(90));
    let restored = restore_from(&s, &format!("file://{}", dest.display()), &key, "after-retention.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
    assert!(node.logs().iter().any(|l| l.contains("removed by retention before it was all shipped")));
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
    let aside = take_away(&dest);
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
    bring_back(&dest, &aside);
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
    take_away(&dest);
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

/// A busy node gets its synchronous tier back after an outage. Its changes
/// come more often than the background worker ships (it gathers a batch for
/// `remote_lag_ms / 4`, and each upload takes its round trip), so the
/// destination seldom holds everything before a channel-state change; once
/// it is nearly there, one short wait of a channel-state change lets it
/// catch up to that change. Returns the hooks it took.
fn busy_node_gets_its_synchronous_tier_back(
    destination: &str,
    outage: &mut dyn FnMut(),
    back: &mut dyn FnMut(),
) -> u64 {
    let (s, _key) = setup(
        destination,
        "remote_sync = \"channel-state\"\nremote_sync_timeout_ms = 500\nremote_sync_on_timeout = \"degrade\"\n",
    );
    let mut node = start(&s);
    let mut w = Workload::new(4);
    run(&mut node, &mut w, 60);
    wait_caught_up(&s, &node, Duration::from_secs(60));
    outage();
    let channel = |i: u64| vec![format!("UPDATE channels SET state = state WHERE id = -{i};")];
    expect_continue(node.commit(&channel(1)).unwrap(), &node);
    assert_eq!(replica_status(&mut node)["remote"]["degraded"], true, "{}", node.logs().join("\n"));
    back();
    // A busy node: a change every few milliseconds, every tenth a channel's.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut hooks = 0u64;
    while replica_status(&mut node)["remote"]["degraded"] == true {
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded after {hooks} hooks: {}\n{}",
            replica_status(&mut node)["remote"],
            node.logs().join("\n")
        );
        for _ in 0..9 {
            expect_continue(node.apply(&w.next_change()).unwrap(), &node);
        }
        hooks += 10;
        expect_continue(node.commit(&channel(hooks)).unwrap(), &node);
    }
    assert!(logs_contain(&node, "the synchronous tier is active again"));
    // Synchronous again: a channel-state change waits for the destination,
    // so it is there when the hook returns.
    expect_continue(node.commit(&channel(hooks + 1)).unwrap(), &node);
    let dests = replica_status(&mut node)["remote"]["destinations"].clone();
    assert_eq!(dests[0]["acked_data_version"].as_u64(), Some(u64::from(node.data_version())), "{dests}");
    node.shutdown_plugin().unwrap();
    hooks
}

#[test]
fn a_busy_node_gets_its_synchronous_tier_back_after_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let aside = std::cell::RefCell::new(None);
    let hooks = busy_node_gets_its_synchronous_tier_back(
        &file_destination(&dest),
        &mut || *aside.borrow_mut() = Some(take_away(&dest)),
        &mut || bring_back(&dest, aside.borrow().as_ref().unwrap()),
    );
    eprintln!("file://: the synchronous tier was back after {hooks} hooks");
}

// ---- S3 (s3s-fs) and SFTP (sshd): real servers on 127.0.0.1 ----

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
        err.is_some_and(|e| e.contains("another journal"))
    });
    node2.kill_plugin().unwrap();
    // The first node's copy is intact.
    let restored = restore_from(&s1, &format!("file://{}", dest.display()), &key1, "first.sqlite3").unwrap();
    assert_same_as_node(&s1, &node1, &restored);
}

// ---- What a destination acknowledges, and what a restore trusts ----

fn key_args(key: &Path) -> Vec<String> {
    vec!["--key-file".into(), key.display().to_string()]
}

fn restored_version(path: &Path) -> u32 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT intval FROM vars WHERE name = 'data_version'", [], |r| r.get(0)).unwrap()
}

fn dir_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Objects (relative names) at a file destination.
fn object_names(dir: &Path) -> Vec<String> {
    objects(dir).iter().map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()).collect()
}

fn replica_status(node: &mut SimNode) -> serde_json::Value {
    node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"].clone()
}

/// The compaction window: the compacted generation's base is one change
/// older than the end of the generation it continues (the pending change is
/// carried as a record). Killed right after that base lands, the
/// destination still restores what it acknowledged, its status never went
/// back, and the older generation was not deleted remotely.
#[test]
fn a_compacted_base_counts_only_once_its_carried_records_are_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    // A slow destination: the pause after the base (its bytes at this rate) is the window.
    let d = format!("[[destination]]\nurl = \"file://{}\"\nupload_bytes_per_s_max = 40000\n", dest.display());
    let (s, key) = setup(&d, "remote_retain_generations = 1\nkeep_generations = 2\n");
    let mut node = start(&s);
    let mut w = Workload::new(31);
    run(&mut node, &mut w, 30);
    wait_caught_up(&s, &node, Duration::from_secs(120));
    let acked = node.data_version();
    let answer = node.request("replica-compact", serde_json::json!({})).unwrap().unwrap();
    assert_eq!(answer["result"]["started"], true, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica_status(&mut node)["compaction"]["state"] != "ready" {
        assert!(Instant::now() < deadline, "compaction not ready: {}", replica_status(&mut node));
        std::thread::sleep(Duration::from_millis(20));
    }
    run(&mut node, &mut w, 1); // adopted at this hook
    assert_eq!(replica_status(&mut node)["generation"], 2);
    let base = dest.join("gen-0000000002/base");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !base.exists() {
        assert!(Instant::now() < deadline, "the compacted base never landed\n{}", node.logs().join("\n"));
        std::thread::sleep(Duration::from_millis(5));
    }
    // In the window: the status must not go back to the compacted base's version.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some(d) = status(&s).and_then(|st| st.remote).map(|r| r.destinations[0].clone()) {
            assert!(d.acked_data_version >= Some(acked), "the status went backwards: {d:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    node.kill_plugin().unwrap();
    assert!(
        !dest.join("gen-0000000002").join(format!("rec-{:020}-{:020}", 1, 1)).exists(),
        "the carried record was shipped already: the window was missed (rate too high?)"
    );
    assert!(
        dest.join("gen-0000000001/base").exists(),
        "generation 1 deleted remotely before generation 2 held as much"
    );
    let restored = restore_from(&s, &dir_url(&dest), &key, "window.sqlite3").unwrap();
    assert!(restored_version(&restored) >= acked, "restored {} < acknowledged {acked}", restored_version(&restored));
    let to = s.path("window-at.sqlite3");
    let mut args =
        vec!["restore".to_string(), "--from".into(), dir_url(&dest), "--to".into(), to.display().to_string()];
    args.extend(["--at".into(), acked.to_string()]);
    args.extend(key_args(&key));
    let o = Command::new(EXE).args(&args).output().unwrap();
    assert!(o.status.success(), "--at {acked}: {}", text(&o));
    // The next start picks up where the tip says, finishes generation 2, and then retires 1.
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 5);
    wait_caught_up(&s, &node, Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(30);
    while dest.join("gen-0000000001").exists() {
        assert!(Instant::now() < deadline, "generation 1 is never retired remotely");
        std::thread::sleep(Duration::from_millis(20));
    }
    node.shutdown_plugin().unwrap();
    let restored = restore_from(&s, &dir_url(&dest), &key, "after-window.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
}

/// A name planted at the destination (anyone with write access can) is not
/// a position: the synchronous tier waits for objects this process wrote.
#[test]
fn a_planted_object_never_counts_as_shipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, key) = setup(&file_destination(&dest), "remote_sync = \"all\"\nremote_sync_timeout_ms = 5000\n");
    let mut node = start(&s);
    let mut w = Workload::new(41);
    run(&mut node, &mut w, 20);
    node.shutdown_plugin().unwrap();
    let last: u64 = object_names(&dest)
        .iter()
        .filter_map(|n| n.rsplit_once('-').map(|(_, l)| l.parse::<u64>().unwrap_or(0)))
        .max()
        .unwrap();
    let planted = dest.join(format!("gen-0000000001/rec-{:020}-{:020}", last + 1, 99_999_999));
    std::fs::write(&planted, b"").unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 3);
    // The status file is rewritten a moment after each change: wait for the
    // one that shows the newest version acknowledged.
    let v = node.data_version();
    let st = wait_status(&s, &node, "the acknowledgement", Duration::from_secs(20), |st| {
        st.data_version == Some(v) && st.remote.as_ref().is_some_and(|r| r.destinations[0].queue_records == 0)
    });
    let d = &st.remote.unwrap().destinations[0];
    assert!(d.acked_seq < 99_999_999 && d.acked_data_version == Some(node.data_version()), "{d:?}");
    node.shutdown_plugin().unwrap();
    let restored = restore_from(&s, &dir_url(&dest), &key, "planted.sqlite3").unwrap();
    assert_same_as_node(&s, &node, &restored);
}

/// The destination says it holds more than the local journal has (the
/// journal directory was replaced by an older copy): the worker refuses,
/// loudly, instead of shipping into it.
#[test]
fn a_tip_past_the_local_journal_is_refused_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, _key) = setup(&file_destination(&dest), "");
    let mut node = start(&s);
    let mut w = Workload::new(42);
    run(&mut node, &mut w, 20);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    node.shutdown_plugin().unwrap();
    let aside = tmp.path().join("journal-copy");
    assert!(Command::new("cp").arg("-a").arg(&s.journal).arg(&aside).status().unwrap().success());
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 20);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    node.shutdown_plugin().unwrap();
    std::fs::remove_dir_all(&s.journal).unwrap();
    std::fs::rename(&aside, &s.journal).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    node.init_plugin().unwrap();
    run(&mut node, &mut w, 2);
    wait_status(&s, &node, "the refusal", Duration::from_secs(20), |st| {
        let e = st.remote.as_ref().and_then(|r| r.destinations[0].last_error.clone());
        e.is_some_and(|e| e.contains("past this journal's last record"))
    });
    assert!(logs_contain(&node, "past this journal's last record"));
    node.kill_plugin().unwrap();
}

/// Newest objects lost or hidden: the restore names what is missing against
/// the tip and refuses unless told to accept the older state; a rolled-back
/// tip cannot be told from a destination that is behind, but the age is
/// printed, and a second destination gives the newest state.
#[test]
fn hidden_newest_objects_are_named_and_several_destinations_give_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let dests = format!("{}{}", file_destination(&a), file_destination(&b));
    let (s, key) = setup(&dests, "");
    let mut node = start(&s);
    let mut w = Workload::new(43);
    run(&mut node, &mut w, 60);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let early = object_names(&a);
    let old_tip = std::fs::read(a.join("tip")).unwrap();
    let early_version = node.data_version();
    run(&mut node, &mut w, 60);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    node.shutdown_plugin().unwrap();
    for n in object_names(&a).iter().filter(|n| !early.contains(n) && n.as_str() != "tip") {
        std::fs::remove_file(a.join(n)).unwrap();
    }
    let e = restore_from(&s, &dir_url(&a), &key, "hidden.sqlite3").unwrap_err();
    assert!(e.contains("its tip") && e.contains("missing") && e.contains("--allow-older"), "{e}");
    let to = s.path("older.sqlite3");
    let mut args = vec!["restore".to_string(), "--from".into(), dir_url(&a), "--to".into(), to.display().to_string()];
    args.extend(key_args(&key));
    args.push("--allow-older".into());
    let o = Command::new(EXE).args(&args).output().unwrap();
    assert!(
        o.status.success() && text(&o).contains("restored state: data_version") && text(&o).contains(" ago)"),
        "{}",
        text(&o)
    );
    assert_eq!(restored_version(&to), early_version);
    // The tip rolled back too: consistent, older, and said how old.
    std::fs::write(a.join("tip"), &old_tip).unwrap();
    let older = restore_from(&s, &dir_url(&a), &key, "rolled-back.sqlite3").unwrap();
    assert_eq!(restored_version(&older), early_version);
    // Both destinations: the newest wins, the other is named.
    let to = s.path("both.sqlite3");
    let mut args = vec!["restore".to_string(), "--from".into(), dir_url(&a), "--from".into(), dir_url(&b)];
    args.extend(["--to".into(), to.display().to_string()]);
    args.extend(key_args(&key));
    let o = Command::new(EXE).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("behind: {} reaches only data_version {early_version}", dir_url(&a))),
        "{}",
        text(&o)
    );
    assert_same_as_node(&s, &node, &to);
    // status --from shows the tip, the generations and what is restorable.
    let mut args = vec!["status".to_string(), "--from".into(), dir_url(&b)];
    args.extend(key_args(&key));
    let o = Command::new(EXE).args(&args).output().unwrap();
    let t = text(&o);
    assert!(o.status.success() && t.contains("tip (counter") && t.contains("generation 1:"), "{t}");
    assert!(t.contains(&format!("restorable: data_version {}", node.data_version())), "{t}");
}

/// Two nodes under the same key: objects of one never pass as the other's.
#[test]
fn objects_of_another_journal_are_refused_even_under_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    // One object per change on both, so that names line up.
    let (sa, key) = setup(&file_destination(&da), "remote_sync = \"all\"\n");
    let (sb, key_b) = setup(&file_destination(&db), "remote_sync = \"all\"\n");
    std::fs::remove_file(&key_b).unwrap();
    std::fs::copy(&key, &key_b).unwrap();
    let mut na = start(&sa);
    let mut nb = start(&sb);
    run(&mut na, &mut Workload::new(44), 30);
    run(&mut nb, &mut Workload::new(45), 30);
    na.shutdown_plugin().unwrap();
    nb.shutdown_plugin().unwrap();
    let spliced = tmp.path().join("spliced");
    let surl = dir_url(&spliced);
    // One of B's records objects in place of A's object of the same name.
    copy_dir(&da, &spliced);
    let in_b = object_names(&db);
    let common: Vec<String> =
        object_names(&da).into_iter().filter(|n| n.contains("/rec-") && in_b.contains(n)).collect();
    assert!(common.len() > 4, "names line up: {common:?}");
    let victim = common[common.len() / 2].clone();
    std::fs::copy(db.join(&victim), spliced.join(&victim)).unwrap();
    let e = restore_from(&sa, &surl, &key, "spliced.sqlite3").unwrap_err();
    assert!(e.contains(&victim) && e.contains("another journal"), "{e}");
    // B's whole generation in place of A's.
    copy_dir(&da, &spliced);
    std::fs::remove_dir_all(spliced.join("gen-0000000001")).unwrap();
    copy_dir(&db.join("gen-0000000001"), &spliced.join("gen-0000000001-tmp"));
    std::fs::rename(spliced.join("gen-0000000001-tmp"), spliced.join("gen-0000000001")).unwrap();
    let e = restore_from(&sa, &surl, &key, "spliced2.sqlite3").unwrap_err();
    assert!(e.contains("another journal"), "{e}");
    // A's own objects still restore A.
    let restored = restore_from(&sa, &dir_url(&da), &key, "a.sqlite3").unwrap();
    assert_same_as_node(&sa, &na, &restored);
}

/// The panel's "remote lagging": plugin, status file, panel condition, with
/// a destination that stops answering and comes back.
#[test]
fn the_panel_shows_a_destination_that_stops_answering_and_comes_back() {
    use cln_replica::panel::health;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("nas");
    let (s, _key) = setup(&file_destination(&dest), "");
    let mut node = start(&s);
    let mut w = Workload::new(46);
    run(&mut node, &mut w, 20);
    wait_caught_up(&s, &node, Duration::from_secs(30));
    let condition = || {
        let alive = |_| true;
        health::assess(&health::Inputs {
            status: health::read_status(&s.path("status.json")),
            now_unix_ms: cln_replica::clock::now_unix_ms(),
            status_stale_ms: 5_000,
            backup_mounted: None,
            pid_alive: &alive,
        })
    };
    wait_status(&s, &node, "in sync", Duration::from_secs(10), |st| st.remote_lagging == Some(false));
    assert_ne!(condition(), health::Condition::RemoteLagging);
    let aside = take_away(&dest);
    run(&mut node, &mut w, 5);
    let st = wait_status(&s, &node, "lagging", Duration::from_secs(30), |st| st.remote_lagging == Some(true));
    let d = &st.remote.as_ref().unwrap().destinations[0];
    assert!(d.lagging && d.queue_records > 0 && d.last_error.is_some(), "{d:?}");
    assert_eq!(condition(), health::Condition::RemoteLagging);
    bring_back(&dest, &aside);
    let st = wait_status(&s, &node, "caught up again", Duration::from_secs(60), |st| st.remote_lagging == Some(false));
    assert_eq!(st.remote.unwrap().destinations[0].queue_records, 0);
    assert_ne!(condition(), health::Condition::RemoteLagging);
    node.shutdown_plugin().unwrap();
}

// ---- The node's own secret keys the destinations ----

/// The CLN v26.06 build (`CLN_SHARED_DIR`, or /work/shared/cln, or beside the checkout).
fn cln_tarball() -> PathBuf {
    let name = "cln-v26.06-x86_64-linux.tar.xz";
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = std::env::var_os("CLN_SHARED_DIR").map(PathBuf::from).into_iter().collect();
    dirs.extend([repo.join("../shared/cln"), repo.join("../../shared/cln"), PathBuf::from("/work/shared/cln")]);
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists()).expect("the CLN v26.06 tarball (set CLN_SHARED_DIR)")
}

/// Starts the real lightningd once on a new directory (no Bitcoin backend:
/// it exits after hsmd has created hsm_secret) and returns that file.
fn real_hsm_secret(cln: &Path, dir: &Path, passphrase: Option<&str>) -> PathBuf {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(cln.join("bin/lightningd"));
    cmd.args(["--network=regtest", "--disable-plugin=bcli", "--bind-addr=127.0.0.1:1"])
        .arg(format!("--lightning-dir={}", dir.display()))
        .arg(format!("--log-file={}", dir.join("log").display()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if passphrase.is_some() {
        cmd.arg("--hsm-passphrase");
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(p) = passphrase {
        // A new node asks twice.
        child.stdin.as_mut().unwrap().write_all(format!("{p}\n{p}\n").as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    cln_replica::sim::node::wait_bounded(&mut child, Duration::from_secs(60)).unwrap();
    let secret = dir.join("regtest/hsm_secret");
    assert!(
        secret.exists(),
        "lightningd wrote no hsm_secret: {}",
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    );
    secret
}

#[test]
#[ignore = "needs the real lightningd (CLN_SHARED_DIR): scripts/test.d/60-remote"]
fn a_real_v26_hsm_secret_keys_the_destinations_and_restores_on_a_fresh_machine() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let cln = tmp.path().join("cln");
    std::fs::create_dir_all(&cln).unwrap();
    assert!(Command::new("tar").arg("-C").arg(&cln).arg("-xJf").arg(cln_tarball()).status().unwrap().success());
    let secret = real_hsm_secret(&cln, &tmp.path().join("ln1"), None);
    let len = std::fs::metadata(&secret).unwrap().len();
    assert!(len > 32 && std::fs::read(&secret).unwrap()[..32] == [0; 32], "the mnemonic format: {len} bytes");
    let dest = tmp.path().join("nas");
    let s = Setup::new("");
    let conf = s.node_dir.join("cln-replica.toml");
    let mut t = std::fs::read_to_string(&conf).unwrap();
    t.push_str(&format!(
        "hsm_secret = {secret:?}\nstatus_file = {:?}\nremote_lag_ms = 200\n{}",
        s.path("status.json"),
        file_destination(&dest)
    ));
    std::fs::write(&conf, t).unwrap();
    let mut node = start(&s);
    run(&mut node, &mut Workload::new(47), 40);
    node.shutdown_plugin().unwrap();
    // A fresh machine: the hsm_secret (a copy) and the URL, nothing else.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let copy = fresh.join("hsm_secret");
    std::fs::copy(&secret, &copy).unwrap();
    let to = fresh.join("lightningd.sqlite3");
    let o = Command::new(EXE)
        .args([
            "restore",
            "--from",
            &dir_url(&dest),
            "--to",
            to.to_str().unwrap(),
            "--hsm-secret",
            copy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_same_as_node(&s, &node, &to);
    // ...or the words, as lightning-hsmtool shows them, typed in.
    let words = Command::new(cln.join("bin/lightning-hsmtool")).arg("getsecret").arg(&secret).output().unwrap();
    assert!(words.status.success(), "{}", text(&words));
    let to2 = fresh.join("from-words.sqlite3");
    let mut child = Command::new(EXE)
        .args(["restore", "--from", &dir_url(&dest), "--to", to2.to_str().unwrap(), "--mnemonic"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&words.stdout).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_same_as_node(&s, &node, &to2);
    // With lightningd's passphrase: the stored hash is lightningd's own
    // SHA-256 of its BIP39 seed, so accepting the passphrase proves the
    // seed derived here is lightningd's.
    let secret2 = real_hsm_secret(&cln, &tmp.path().join("ln2"), Some("a passphrase"));
    let k = cln_replica::remote::hsm::load_hsm_secret(&secret2, Some("a passphrase")).unwrap();
    // The words as lightningd stored them, after the hash of the seed.
    let words2 = String::from_utf8(std::fs::read(&secret2).unwrap()[32..].to_vec()).unwrap();
    let typed = cln_replica::remote::hsm::key_from_words(&words2, Some("a passphrase")).unwrap();
    assert_eq!(k.id(), typed.id());
    let e = cln_replica::remote::hsm::load_hsm_secret(&secret2, Some("not it")).unwrap_err();
    assert!(format!("{e:#}").contains("wrong passphrase"), "{e:#}");
    assert!(
        format!("{:#}", cln_replica::remote::hsm::load_hsm_secret(&secret2, None).unwrap_err()).contains("passphrase")
    );
    let plain = cln_replica::remote::hsm::load_hsm_secret(&secret, None).unwrap();
    assert_ne!(plain.id(), k.id());
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.d/60-remote"]
fn s3_a_busy_node_gets_its_synchronous_tier_back_after_an_outage() {
    s3_env();
    let tmp = tempfile::tempdir().unwrap();
    let (root, port) = (tmp.path().join("s3"), free_port());
    let server = std::cell::RefCell::new(Some(S3Server::start(&root, port)));
    let destination = server.borrow().as_ref().unwrap().destination("busy");
    let hooks = busy_node_gets_its_synchronous_tier_back(
        &destination,
        &mut || server.borrow_mut().as_mut().unwrap().kill(),
        &mut || *server.borrow_mut() = Some(S3Server::start(&root, port)),
    );
    eprintln!("s3: the synchronous tier was back after {hooks} hooks");
}
