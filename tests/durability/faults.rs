//! Operating errors under the real engine: a failed flush, a full device, a
//! read-only remount, a device that vanishes. Each must refuse the hook with a
//! message an operator can act on (lightningd then stops before committing),
//! leave the backup restorable at the last acknowledged state, and, once the
//! device is healthy again, let a restarted node continue.

use crate::harness::*;
use crate::scratch;
use cln_replica::device::fault::{FaultDevice, OpKind};
use cln_replica::device::RealDevice;
use cln_replica::plugin::engine::Answer;
use cln_replica::restore::{self, RestoreOptions};
use cln_replica::sim::workload::Workload;
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Bed {
    base: tempfile::TempDir,
    journal: PathBuf,
    fault: FaultDevice,
    ln: Lightningd,
    work: Workload,
}

fn bed() -> Bed {
    let base = scratch();
    let root = base.path().join("dev");
    let node = base.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    let journal = root.join("journal");
    configure(&node, &journal, 64 << 10, "zstd");
    let fault = FaultDevice::new(Arc::new(RealDevice), &root);
    let mut ln = Lightningd::open(&node, Arc::new(fault.clone()), Some(fault.clone()));
    ln.settle = true;
    for c in Workload::schema() {
        ln.apply(&c);
    }
    ln.start_plugin();
    let t = "CREATE TABLE durability_blobs (k INTEGER PRIMARY KEY, v BLOB NOT NULL)".to_string();
    assert_eq!(ln.txn(&[t], TxnEnd::Commit), Answer::Continue);
    let mut work = Workload::new(77);
    for _ in 0..5 {
        assert_eq!(ln.apply(&work.next_change()), Answer::Continue);
    }
    Bed { base, journal, fault, ln, work }
}

fn restored_hash(bed: &Bed) -> anyhow::Result<u64> {
    let to = bed.base.path().join("restored.sqlite3");
    let _ = std::fs::remove_file(&to);
    let opts = RestoreOptions {
        from: bed.journal.clone(),
        to: to.clone(),
        at: None,
        before_unix_ms: None,
        force: true,
        allow_older: false,
    };
    restore::restore(&opts, |_| {})?;
    file_hash(&to)
}

/// The hashes of the changes sent to the hook since the last acknowledgement.
fn sent_since_ack(ln: &Lightningd) -> Vec<u64> {
    let mut out = vec![];
    for n in &ln.notes {
        match n {
            Note::Acked { .. } => out.clear(),
            Note::Sent { hash, .. } => out.push(*hash),
            _ => {}
        }
    }
    out
}

fn refusal(a: Answer) -> String {
    match a {
        Answer::Refuse(why) => why,
        Answer::Continue => panic!("the hook answered continue"),
    }
}

/// Restore gives the last acknowledged state, or the refused change if its
/// record happened to reach the device (never acknowledged, as in a cut).
fn assert_restorable_at_last_ack(bed: &Bed, acked: u64) {
    let got = restored_hash(bed).expect("restorable");
    assert!(
        got == acked || sent_since_ack(&bed.ln).contains(&got),
        "the restore is neither the acknowledged state nor a refused one"
    );
}

/// lightningd stopped on the refusal; the operator fixes the device and
/// starts it again: the plugin reopens the journal and the node continues.
fn restart_and_continue(bed: &mut Bed) {
    bed.ln.stop_plugin();
    bed.fault.clear_faults();
    bed.ln.start_plugin();
    for _ in 0..3 {
        let c = bed.work.next_change();
        assert_eq!(bed.ln.apply(&c), Answer::Continue, "{:?}", bed.ln.last_refusal);
    }
    bed.ln.stop_plugin();
    assert_eq!(restored_hash(bed).unwrap(), bed.ln.hash(), "the restore equals the database after the restart");
}

#[test]
fn a_failed_flush_refuses_and_is_never_retried_as_if_safe() {
    let mut bed = bed();
    let acked = bed.ln.hash();
    bed.fault.fail(OpKind::SyncData, libc::EIO, 0, true);
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("backup device failed") && why.contains("Input/output error"), "{why}");
    assert_eq!(bed.ln.hash(), acked, "lightningd did not commit");
    // The fault was a single one: the device would flush fine now. The plugin
    // must still refuse (the kernel may have dropped the data), without
    // touching the device.
    let steps = bed.fault.steps();
    let c = bed.work.next_change();
    let again = refusal(bed.ln.apply(&c));
    assert_eq!(again, why, "the same refusal, every time");
    assert_eq!(bed.fault.steps(), steps, "nothing written after the failure");
    assert_restorable_at_last_ack(&bed, acked);
    restart_and_continue(&mut bed);
}

#[test]
fn a_full_device_refuses_with_a_clear_message_and_a_restart_continues_once_freed() {
    let mut bed = bed();
    let acked = bed.ln.hash();
    bed.fault.fail(OpKind::Write, libc::ENOSPC, 0, false);
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("backup device is full") && why.contains("No space left on device"), "{why}");
    assert!(why.contains("data_version"), "says which change: {why}");
    assert_restorable_at_last_ack(&bed, acked);
    assert_eq!(restored_hash(&bed).unwrap(), acked, "nothing of the refused change reached the device");
    // Restarted while still full: refused again, nothing lost.
    bed.ln.stop_plugin();
    bed.ln.start_plugin();
    let c = bed.work.next_change();
    assert!(refusal(bed.ln.apply(&c)).contains("full"));
    assert_eq!(restored_hash(&bed).unwrap(), acked);
    restart_and_continue(&mut bed);
}

#[test]
fn a_full_device_at_a_segment_switch_or_a_new_generation_refuses() {
    // Segment creation (background and then synchronous) fails: the change
    // that needs the new segment is refused.
    let mut bed = bed();
    bed.fault.fail(OpKind::Create, libc::ENOSPC, 0, false);
    let mut refused = None;
    for i in 0..40 {
        let acked = bed.ln.hash();
        let big = format!("INSERT INTO durability_blobs VALUES ({i}, x'{}')", "ab".repeat(6000));
        match bed.ln.txn(&[big], TxnEnd::Commit) {
            Answer::Continue => {}
            Answer::Refuse(why) => {
                refused = Some((why, acked));
                break;
            }
        }
    }
    let (why, acked) = refused.expect("a segment switch happened and failed");
    assert!(why.contains("backup device is full") && why.contains("segment"), "{why}");
    assert_restorable_at_last_ack(&bed, acked);
    restart_and_continue(&mut bed);

    // A gap needs a new generation: its snapshot cannot be flushed.
    bed.ln.stop_plugin();
    let c = bed.work.next_change();
    bed.ln.apply(&c); // committed without the plugin
    let acked = restored_hash(&bed).unwrap();
    bed.ln.start_plugin();
    bed.fault.fail(OpKind::SyncFile, libc::ENOSPC, 0, false);
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("backup device is full"), "{why}");
    assert_eq!(restored_hash(&bed).unwrap(), acked, "the half-made generation is invisible");
    restart_and_continue(&mut bed);
}

#[test]
fn a_read_only_or_vanished_device_refuses() {
    let mut bed = bed();
    let acked = bed.ln.hash();
    bed.fault.fail(OpKind::Write, libc::EROFS, 0, false);
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("read-only"), "{why}");
    assert_restorable_at_last_ack(&bed, acked);
    restart_and_continue(&mut bed);

    bed.ln.start_plugin();
    let c = bed.work.next_change();
    assert_eq!(bed.ln.apply(&c), Answer::Continue);
    let acked = bed.ln.hash();
    bed.fault.vanish(libc::EIO);
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("backup device failed"), "{why}");
    // Restarted while the device is still gone: the journal cannot open.
    bed.ln.stop_plugin();
    bed.ln.start_plugin();
    let c = bed.work.next_change();
    let why = refusal(bed.ln.apply(&c));
    assert!(why.contains("cannot open the journal") || why.contains("backup device"), "{why}");
    assert_restorable_at_last_ack(&bed, acked);
    restart_and_continue(&mut bed);
}

#[test]
fn with_on_device_lost_degrade_a_vanished_device_lets_lightningd_go_on_and_raises_the_alert() {
    let mut bed = bed();
    let config = bed.ln.dir.join("cln-replica.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}on_device_lost = \"degrade\"\n")).unwrap();
    bed.ln.stop_plugin();
    bed.ln.start_plugin();
    assert_eq!(bed.ln.apply(&bed.work.next_change()), Answer::Continue);
    let acked = bed.ln.hash();
    bed.fault.vanish(libc::EIO);
    for _ in 0..3 {
        assert_eq!(bed.ln.apply(&bed.work.next_change()), Answer::Continue, "degraded: lightningd goes on");
    }
    let status = bed.ln.status().unwrap();
    assert_eq!(status.state, cln_replica::status::PluginState::Degraded);
    assert!(status.degraded.as_deref().is_some_and(|w| w.contains("backup device")), "{status:?}");
    // The journal holds what was acknowledged before the loss.
    assert_restorable_at_last_ack(&bed, acked);
    // Restarted while the device is still gone: still degraded, never refused.
    bed.ln.stop_plugin();
    bed.ln.start_plugin();
    assert_eq!(bed.ln.apply(&bed.work.next_change()), Answer::Continue);
    assert_eq!(bed.ln.status().unwrap().state, cln_replica::status::PluginState::Degraded);
    // The device is back and lightningd restarts: the backup resumes (a gap:
    // a new snapshot) and restores to the node's database.
    bed.ln.stop_plugin();
    bed.fault.clear_faults();
    bed.ln.start_plugin();
    assert_eq!(bed.ln.apply(&bed.work.next_change()), Answer::Continue);
    assert_eq!(bed.ln.status().unwrap().state, cln_replica::status::PluginState::InSync);
    assert_eq!(restored_hash(&bed).unwrap(), bed.ln.hash());
}

/// The real device, with a slow `remove_dir_all`: retention (which removes
/// a retired generation with it) is still running when the plugin stops.
struct SlowRetirement;

impl cln_replica::device::Device for SlowRetirement {
    fn create(&self, p: &Path, direct: bool) -> std::io::Result<Box<dyn cln_replica::device::DeviceFile>> {
        RealDevice.create(p, direct)
    }
    fn open_rw(&self, p: &Path, direct: bool) -> std::io::Result<Box<dyn cln_replica::device::DeviceFile>> {
        RealDevice.open_rw(p, direct)
    }
    fn sync_file(&self, p: &Path) -> std::io::Result<()> {
        RealDevice.sync_file(p)
    }
    fn create_dir(&self, p: &Path) -> std::io::Result<()> {
        RealDevice.create_dir(p)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        RealDevice.sync_dir(p)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealDevice.rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        RealDevice.remove_file(p)
    }
    fn remove_dir_all(&self, p: &Path) -> std::io::Result<()> {
        // Widens the window a test without the join would fall into; the
        // assertions below do not depend on it.
        std::thread::sleep(std::time::Duration::from_millis(300));
        RealDevice.remove_dir_all(p)
    }
    fn free_bytes(&self, p: &Path) -> std::io::Result<u64> {
        RealDevice.free_bytes(p)
    }
    fn dio_alignment(&self, p: &Path) -> Option<u32> {
        RealDevice.dio_alignment(p)
    }
}

/// A new generation after a gap retires the old one in the background; a
/// clean stop waits for that, so a restore or verify that runs once the
/// plugin has stopped never meets a generation being removed (the power-cut
/// runs' reboot did, once in CI: "segment-00000001: No such file").
#[test]
fn a_clean_stop_waits_for_retention() {
    let base = scratch();
    let node = base.path().join("node");
    let journal = base.path().join("dev").join("journal");
    std::fs::create_dir_all(journal.parent().unwrap()).unwrap();
    configure(&node, &journal, 64 << 10, "zstd");
    let config = node.join("cln-replica.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}keep_generations = 1\n")).unwrap();
    let mut ln = Lightningd::open(&node, Arc::new(SlowRetirement), None);
    for c in Workload::schema() {
        ln.apply(&c);
    }
    let mut work = Workload::new(78);
    ln.start_plugin();
    for _ in 0..3 {
        assert_eq!(ln.apply(&work.next_change()), Answer::Continue);
    }
    ln.stop_plugin();
    ln.apply(&work.next_change()); // committed without the plugin: a gap
    ln.start_plugin();
    assert_eq!(ln.apply(&work.next_change()), Answer::Continue);
    ln.stop_plugin();
    let gens = cln_replica::journal::layout::list_generations(&journal).unwrap();
    assert_eq!(gens, [2], "generation 1 retired before the stop returned");
    let leftovers: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let to = base.path().join("restored.sqlite3");
    let opts = RestoreOptions {
        from: journal,
        to: to.clone(),
        at: None,
        before_unix_ms: None,
        force: true,
        allow_older: false,
    };
    restore::restore(&opts, |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(file_hash(&to).unwrap(), ln.hash());
}

#[test]
fn journal_poisoning_at_the_journal_level() {
    use cln_replica::journal::format::BaseKind;
    use cln_replica::journal::{Journal, JournalOptions, SnapshotMade};
    use cln_replica::state::{CallKind, INCREMENT_PREFIX};
    let base = scratch();
    let root = base.path();
    let fault = FaultDevice::new(Arc::new(RealDevice), root);
    let opts = JournalOptions { direct_io: true, block_bytes: 4096, segment_bytes: 64 << 10, ..Default::default() };
    let mut j = Journal::open(&root.join("j"), Arc::new(fault.clone()), opts).unwrap();
    j.start_generation(&mut |p: &Path| {
        std::fs::File::create(p)?;
        Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
    })
    .unwrap();
    let stmt = |i: u32| vec![format!("INSERT INTO t VALUES ({i})"), format!("{INCREMENT_PREFIX}{}", i - 1)];
    j.append(1, CallKind::Txn, &stmt(1)).unwrap();
    // The single failed flush must be the writer's: the next segment's
    // background creation (slow under qemu) would otherwise take it.
    j.wait_background();
    fault.fail(OpKind::SyncData, libc::EIO, 0, true);
    assert!(j.append(2, CallKind::Txn, &stmt(2)).is_err());
    assert!(j.poisoned().is_some());
    j.wait_background(); // only the writer's I/O is counted next
    let steps = fault.steps();
    let e = j.append(2, CallKind::Txn, &stmt(2)).unwrap_err().to_string();
    assert!(e.contains("stopped accepting writes"), "{e}");
    assert!(j.seal().is_err(), "no seal either");
    assert_eq!(fault.steps(), steps, "a poisoned journal does no I/O");
    assert!(j.progress().get().failed);
}

/// A flush fails; lightningd stops and is started again without a reboot, so
/// the refused record still sits in the page cache (but not on the media) and
/// the plugin appends after it. Then the power goes: the restore must still
/// give the database, not stop at "damage" where the refused record was.
#[test]
fn a_failed_flush_then_a_restart_then_a_power_cut() {
    use cln_replica::device::fault::Cut;
    let mut bed = bed();
    bed.fault.fail(OpKind::SyncData, libc::EIO, 0, true);
    let c = bed.work.next_change();
    refusal(bed.ln.apply(&c));
    restart_and_continue(&mut bed);
    let img = bed.base.path().join("after-cut");
    std::fs::create_dir_all(&img).unwrap();
    bed.fault.media().materialize(&img, Cut::DropUnflushed).unwrap();
    let to = bed.base.path().join("restored-after-cut.sqlite3");
    let opts = RestoreOptions {
        from: img.join("journal"),
        to: to.clone(),
        at: None,
        before_unix_ms: None,
        force: true,
        allow_older: false,
    };
    restore::restore(&opts, |_| {}).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(file_hash(&to).unwrap(), bed.ln.hash());
}
