//! A real full device (run by scripts/test.d/20-device-full, as root, with
//! `CLN_REPLICA_FULL_DEVICE` naming a small ext4 mount): the real plugin, fed
//! by the simulator until the device is full, refuses the hook with a clear
//! message; the restore gives the last acknowledged version; once space is
//! freed, a restart continues.

mod common;

use cln_replica::sim::{HookOutcome, SimNode};
use common::*;
use std::path::Path;

#[test]
#[ignore = "needs a small ext4 mount in CLN_REPLICA_FULL_DEVICE: run scripts/test.d/20-device-full as root"]
fn enospc_on_a_real_device() {
    let mount = std::env::var("CLN_REPLICA_FULL_DEVICE").expect("CLN_REPLICA_FULL_DEVICE names the mount");
    let mount = Path::new(&mount);
    let s = Setup::new("");
    let journal = mount.join("journal");
    std::fs::write(s.node_dir.join("cln-replica.toml"), format!("journal = {journal:?}\nsegment_bytes = 1048576\n"))
        .unwrap();
    let setup = Setup { journal: journal.clone(), ..s };
    let mut node = SimNode::open(&setup.node_dir).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    for c in cln_replica::sim::workload::Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    expect_continue(node.commit(&["CREATE TABLE full_test (k INTEGER PRIMARY KEY, v BLOB)".into()]).unwrap(), &node);
    // Ballast: leave about 3 MiB free.
    let free = nix::sys::statvfs::statvfs(mount).unwrap();
    let free_bytes = free.blocks_available() as u64 * free.fragment_size() as u64;
    let ballast = mount.join("ballast");
    let f = std::fs::File::create(&ballast).unwrap();
    let len = (free_bytes - (3 << 20)) as libc::off_t;
    // SAFETY: fallocate on a file descriptor we own.
    let rc = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, len) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    drop(f);
    let mut refusal_text = None;
    // Random bytes: records are stored compressed when that saves space, and
    // a repeated pattern would never fill the device.
    let mut rng = cln_replica::rng::SplitMix64(7);
    let mut incompressible = |n: usize| -> String { (0..n).map(|_| format!("{:02x}", rng.next_u64() as u8)).collect() };
    for k in 0..200 {
        let stmt = format!("INSERT INTO full_test VALUES ({k}, x'{}')", incompressible(100_000));
        match node.commit(&[stmt]).unwrap() {
            HookOutcome::Continue => {}
            HookOutcome::Refused(why) => {
                refusal_text = Some(why);
                break;
            }
            HookOutcome::PluginGone => panic!("the plugin died instead of refusing: {:?}", node.logs()),
        }
    }
    let why = refusal_text.expect("the device filled up");
    eprintln!("refusal at ENOSPC: {why}");
    assert!(why.contains("backup device is full") && why.contains("No space left on device"), "{why}");
    // lightningd stops; the backup holds exactly what was acknowledged.
    node.close_plugin().unwrap();
    setup.assert_restores_to(&node);
    // Still full: a restart refuses again, nothing lost.
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    let again = node.commit(&[format!("INSERT INTO full_test VALUES (1000, x'{}')", incompressible(100_000))]).unwrap();
    assert!(matches!(again, HookOutcome::Refused(_)), "{again:?}");
    node.close_plugin().unwrap();
    setup.assert_restores_to(&node);
    // The operator frees space; the node starts again and continues.
    std::fs::remove_file(&ballast).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    for k in 2000..2005 {
        expect_continue(node.commit(&[format!("INSERT INTO full_test VALUES ({k}, x'01')")]).unwrap(), &node);
    }
    node.close_plugin().unwrap();
    setup.assert_restores_to(&node);
}

/// Fills the free space of `mount` but `leave` bytes with a ballast file.
fn ballast(mount: &Path, leave: u64) -> std::path::PathBuf {
    let free = nix::sys::statvfs::statvfs(mount).unwrap();
    let free_bytes = free.blocks_available() as u64 * free.fragment_size() as u64;
    let path = mount.join("ballast-warn");
    let f = std::fs::File::create(&path).unwrap();
    // SAFETY: fallocate on a file descriptor we own.
    let rc = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, (free_bytes - leave) as _) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    f.sync_all().unwrap();
    path
}

/// Polls replica-status until `pred` holds (at most 20 s).
fn wait_status(node: &mut SimNode, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"].clone();
        if pred(&st) {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {st}\n{:?}", node.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The warning before the device fills: with less than `warn_free_percent`
/// free the status, the status file, the metrics and on_alert say so, the
/// log says it once, every hook is still answered `continue`; freeing
/// space clears all of it.
#[test]
#[ignore = "needs a small ext4 mount in CLN_REPLICA_FULL_DEVICE: run scripts/test.d/20-device-full as root"]
fn nearly_full_warning_on_a_real_device() {
    let mount = std::env::var("CLN_REPLICA_FULL_DEVICE").expect("CLN_REPLICA_FULL_DEVICE names the mount");
    let mount = Path::new(&mount);
    let s = Setup::new("");
    let journal = mount.join("journal-warn");
    let (status_file, metrics, received) = (s.path("status.json"), s.path("cln_replica.prom"), s.path("received"));
    let script = s.path("record-alert");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$CLN_REPLICA_ALERT $CLN_REPLICA_ALERT_STATE\" >> {received:?}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        s.node_dir.join("cln-replica.toml"),
        format!(
            "journal = {journal:?}\nsegment_bytes = 1048576\nstatus_file = {status_file:?}\nmetrics_file = \
             {metrics:?}\non_alert = [{script:?}]\n"
        ),
    )
    .unwrap();
    let mut node = SimNode::open(&s.node_dir).unwrap();
    node.start_plugin(Path::new(EXE), &[]).unwrap();
    for c in cln_replica::sim::workload::Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    node.init_plugin().unwrap();
    expect_continue(node.commit(&["CREATE TABLE warn_test (k INTEGER PRIMARY KEY)".into()]).unwrap(), &node);
    let st = wait_status(&mut node, "a device sample", |st| st["device_free_bytes"].is_u64());
    assert_eq!(st["device_nearly_full"], false, "{st}");
    let size = st["device_size_bytes"].as_u64().unwrap();
    eprintln!("device: {} of {size} bytes free", st["device_free_bytes"]);

    // 3% of the device left: under the default warn_free_percent = 10.
    let ballast = ballast(mount, size * 3 / 100);
    let st = wait_status(&mut node, "the nearly-full flag", |st| st["device_nearly_full"] == true);
    eprintln!("nearly full: {} bytes free", st["device_free_bytes"]);
    for k in 0..5 {
        expect_continue(node.commit(&[format!("INSERT INTO warn_test VALUES ({k})")]).unwrap(), &node);
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let file: serde_json::Value = serde_json::from_str(&read(&status_file)).unwrap();
    assert_eq!(file["device_nearly_full"], true, "the status file the panel reads");
    wait_status(&mut node, "the metric and the alert", |_| {
        read(&metrics).contains("cln_replica_device_nearly_full 1")
            && read(&received).contains("device-nearly-full raised")
    });
    let warnings = node.logs().iter().filter(|l| l.contains("the backup device is nearly full")).count();
    assert_eq!(warnings, 1, "{:?}", node.logs());

    std::fs::remove_file(&ballast).unwrap();
    wait_status(&mut node, "the flag cleared", |st| st["device_nearly_full"] == false);
    wait_status(&mut node, "the metric and the alert cleared", |_| {
        read(&metrics).contains("cln_replica_device_nearly_full 0")
            && read(&received).contains("device-nearly-full cleared")
    });
    assert!(logs_contain(&node, "the backup device has room again"), "{:?}", node.logs());
    expect_continue(node.commit(&["INSERT INTO warn_test VALUES (100)".into()]).unwrap(), &node);
    node.close_plugin().unwrap();
    let setup = Setup { journal, ..s };
    setup.assert_restores_to(&node);
    assert_eq!(read(&received), "device-nearly-full raised\ndevice-nearly-full cleared\n");
}
