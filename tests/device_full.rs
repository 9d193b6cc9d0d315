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
