//! Tests of the journal on a real filesystem: appending, reopening, segment
//! switches, oversized records, torn tails at every sector, damage.

use super::format::{BaseKind, RECORD_HEADER_BYTES};
use super::reader::{Generation, JournalError};
use super::{layout, Compression, Journal, JournalOptions, SnapshotMade};
use crate::device::RealDevice;
use crate::state::{CallKind, Tip};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn opts(segment_bytes: u64) -> JournalOptions {
    JournalOptions { direct_io: true, block_bytes: 4096, segment_bytes, ..Default::default() }
}

fn open(dir: &Path, segment_bytes: u64) -> Journal {
    Journal::open(dir, Arc::new(RealDevice), opts(segment_bytes)).expect("journal opens")
}

fn empty_snapshot(path: &Path) -> anyhow::Result<SnapshotMade> {
    fs::File::create(path)?;
    Ok(SnapshotMade { base_kind: BaseKind::Empty, base_version: 0 })
}

fn stmt(i: u32, pad: usize) -> Vec<String> {
    vec![
        format!("INSERT INTO t VALUES ({i}, '{}');", "x".repeat(pad)),
        format!("{}{}", crate::state::INCREMENT_PREFIX, i - 1),
    ]
}

/// (data_version, is_txn, statement count) of every record of the newest generation.
fn read_all(dir: &Path) -> Result<Vec<(u32, bool, usize)>, JournalError> {
    let gens = super::reader::generations(dir)?;
    let g = gens.last().expect("a generation");
    let mut out = vec![];
    for r in g.records() {
        let r = r?;
        out.push((r.header.data_version, r.header.is_txn(), r.statements()?.len()));
    }
    Ok(out)
}

#[test]
fn append_reopen_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 1 << 20);
    assert_eq!(j.tip(), Tip::Empty);
    j.start_generation(&mut empty_snapshot).unwrap();
    for i in 1..=10 {
        j.append(i, CallKind::Txn, &stmt(i, 10)).unwrap();
    }
    j.append(10, CallKind::InPlace, &["PRAGMA foreign_keys = ON;"]).unwrap();
    drop(j);
    let mut j = open(dir.path(), 1 << 20);
    assert_eq!(j.tip(), Tip::At { version: 10, pending_txn: false });
    j.append(11, CallKind::Txn, &stmt(11, 10)).unwrap();
    j.seal().unwrap();
    j.seal().unwrap();
    drop(j);
    let j = open(dir.path(), 1 << 20);
    assert_eq!(j.tip(), Tip::At { version: 11, pending_txn: true }, "a seal keeps the pending flag");
    let recs = read_all(dir.path()).unwrap();
    assert_eq!(recs.len(), 13, "11 changes, 1 in-place record, 1 seal");
    assert_eq!(recs[10], (10, false, 1));
    assert_eq!(recs[11], (11, true, 2));
}

#[test]
fn segments_switch_and_oversized_records_get_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 64 << 10);
    j.start_generation(&mut empty_snapshot).unwrap();
    let mut expected = vec![];
    for i in 1..=200u32 {
        // Every 50th change is larger than a whole segment, compressed or not.
        let mut change = stmt(i, (i as usize * 37) % 3000);
        if i % 50 == 0 {
            change[0] = format!("INSERT INTO t VALUES ({i}, '{}');", noise(i as u64, 200 << 10));
        }
        j.append(i, CallKind::Txn, &change).unwrap();
        expected.push((i, true, 2));
    }
    drop(j);
    let gens = super::reader::generations(dir.path()).unwrap();
    assert!(gens[0].segments.len() > 10, "{} segments", gens[0].segments.len());
    assert!(gens[0].segments.iter().any(|s| s.file_bytes > 64 << 10), "an oversized segment");
    assert_eq!(read_all(dir.path()).unwrap(), expected);
    let mut j = open(dir.path(), 64 << 10);
    assert_eq!(j.tip(), Tip::At { version: 200, pending_txn: true });
    j.append(201, CallKind::Txn, &stmt(201, 10)).unwrap();
    drop(j);
    assert_eq!(read_all(dir.path()).unwrap().len(), 201);
}

/// Path, offset and bytes in use (header and payload) of the newest
/// generation's last record.
fn last_record(dir: &Path) -> (std::path::PathBuf, u64, u64) {
    let gens = super::reader::generations(dir).unwrap();
    let g = gens.last().unwrap();
    let last = g.records().map(Result::unwrap).last().unwrap();
    let seg = &g.segments[last.loc.segment as usize - 1];
    (seg.path.clone(), last.loc.offset, (RECORD_HEADER_BYTES + last.payload.len()) as u64)
}

#[test]
fn a_torn_last_record_is_discarded_at_every_sector() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 1 << 20);
    j.start_generation(&mut empty_snapshot).unwrap();
    for i in 1..=5 {
        j.append(i, CallKind::Txn, &stmt(i, 9000)).unwrap();
    }
    drop(j);
    let (path, offset, len) = last_record(dir.path());
    let pristine = fs::read(&path).unwrap();
    // A power cut leaves the first k sectors of the last write, or only the
    // later ones (reordered), or garbage in one sector.
    let sectors = len.div_ceil(512);
    for k in 0..sectors {
        for variant in 0..3 {
            fs::write(&path, &pristine).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            match variant {
                0 => f.write_all_at(&vec![0u8; ((sectors - k) * 512) as usize], offset + k * 512).unwrap(),
                1 => f.write_all_at(&vec![0u8; (k.max(1) * 512) as usize], offset).unwrap(),
                _ => f.write_all_at(&[0xA5u8; 512], offset + k * 512).unwrap(),
            }
            drop(f);
            let recs = read_all(dir.path()).unwrap();
            assert_eq!(recs.len(), 4, "sector {k} variant {variant}: the torn record is dropped, the rest kept");
            let mut j = open(dir.path(), 1 << 20);
            assert_eq!(j.tip(), Tip::At { version: 4, pending_txn: true });
            j.append(5, CallKind::Txn, &stmt(5, 10)).unwrap();
            drop(j);
            assert_eq!(read_all(dir.path()).unwrap().len(), 5, "appending after a torn tail works");
        }
    }
}

#[test]
fn damage_before_a_valid_record_is_an_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 1 << 20);
    j.start_generation(&mut empty_snapshot).unwrap();
    for i in 1..=5 {
        j.append(i, CallKind::Txn, &stmt(i, 100)).unwrap();
    }
    drop(j);
    let gens = super::reader::generations(dir.path()).unwrap();
    let recs: Vec<_> = gens[0].records().map(Result::unwrap).collect();
    let victim = &recs[2];
    let path = gens[0].segments[0].path.clone();
    let pristine = fs::read(&path).unwrap();
    for (what, bytes) in [("flipped bit", None), ("zeroed block", Some(vec![0u8; 4096]))] {
        fs::write(&path, &pristine).unwrap();
        let f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        match bytes {
            None => {
                let at = victim.loc.offset + RECORD_HEADER_BYTES as u64 + 3;
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).unwrap();
                f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
            }
            Some(z) => f.write_all_at(&z, victim.loc.offset).unwrap(),
        }
        drop(f);
        let err = read_all(dir.path()).unwrap_err();
        match &err {
            JournalError::Corrupt { loc, .. } => assert_eq!(*loc, victim.loc, "{what}"),
            other => panic!("{what}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("byte offset {}", victim.loc.offset)), "{what}: {msg}");
        // The writer refuses to continue past damage it would otherwise hide.
        assert!(Journal::open(dir.path(), Arc::new(RealDevice), opts(1 << 20)).is_err(), "{what}");
    }
}

#[test]
fn interrupted_creations_are_invisible_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 1 << 20);
    j.start_generation(&mut empty_snapshot).unwrap();
    j.append(1, CallKind::Txn, &stmt(1, 10)).unwrap();
    drop(j);
    // A generation and a segment whose creation was cut short.
    let tmp_gen = layout::generation_tmp_dir(dir.path(), 2);
    fs::create_dir(&tmp_gen).unwrap();
    fs::write(tmp_gen.join(layout::SNAPSHOT_FILE), b"partial").unwrap();
    let g1 = layout::generation_dir(dir.path(), 1);
    let tmp_seg = layout::segment_tmp_path(&g1, 9);
    fs::write(&tmp_seg, b"partial").unwrap();
    assert_eq!(super::reader::generations(dir.path()).unwrap().len(), 1, "readers ignore .tmp");
    let j = open(dir.path(), 1 << 20);
    assert_eq!(j.tip(), Tip::At { version: 1, pending_txn: true });
    assert!(!tmp_gen.exists() && !tmp_seg.exists(), "the writer removes leftovers");
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let _j = open(dir.path(), 1 << 20);
    let err = Journal::open(dir.path(), Arc::new(RealDevice), opts(1 << 20)).err().unwrap().to_string();
    assert!(err.contains("another process is writing"), "{err}");
}

#[test]
fn generations_are_numbered_and_self_describing() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path(), 1 << 20);
    j.start_generation(&mut empty_snapshot).unwrap();
    j.append(1, CallKind::Txn, &stmt(1, 10)).unwrap();
    let g = j
        .start_generation(&mut |p: &Path| {
            fs::write(p, b"not really sqlite, but bytes with a checksum")?;
            Ok(SnapshotMade { base_kind: BaseKind::Snapshot, base_version: 7 })
        })
        .unwrap();
    assert_eq!(g, 2);
    assert_eq!(j.tip(), Tip::At { version: 7, pending_txn: false });
    j.append(8, CallKind::Txn, &stmt(8, 10)).unwrap();
    drop(j);
    let gen2 = Generation::open(dir.path(), 2).unwrap();
    assert_eq!(gen2.header.base_version, 7);
    assert_eq!(gen2.header.snapshot_bytes, 44);
    // A segment moved into another generation is caught by its header.
    let stray = layout::segment_path(&layout::generation_dir(dir.path(), 1), 1);
    fs::copy(&stray, layout::segment_path(&gen2.dir, 3)).unwrap();
    fs::copy(&stray, layout::segment_path(&gen2.dir, 2)).unwrap();
    let err = Generation::open(dir.path(), 2).unwrap_err().to_string();
    assert!(err.contains("disagrees"), "{err}");
}

/// A real device that counts, per file, the writes and flushes made through
/// it, and can refuse O_DIRECT as tmpfs and some FUSE filesystems do.
struct CountingDevice {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (u64, u64)>>>,
    refuse_direct: bool,
}

struct CountingFile {
    inner: Box<dyn crate::device::DeviceFile>,
    path: std::path::PathBuf,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (u64, u64)>>>,
}

impl crate::device::DeviceFile for CountingFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.counts.lock().unwrap().entry(self.path.clone()).or_default().0 += 1;
        self.inner.write_all_at(buf, offset)
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.counts.lock().unwrap().entry(self.path.clone()).or_default().1 += 1;
        self.inner.sync_data()
    }
    fn size(&mut self) -> std::io::Result<u64> {
        self.inner.size()
    }
}

impl CountingDevice {
    fn wrap(
        &self,
        path: &Path,
        direct: bool,
        f: std::io::Result<Box<dyn crate::device::DeviceFile>>,
    ) -> std::io::Result<Box<dyn crate::device::DeviceFile>> {
        if direct && self.refuse_direct {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(Box::new(CountingFile { inner: f?, path: path.to_path_buf(), counts: self.counts.clone() }))
    }
}

impl crate::device::Device for CountingDevice {
    fn create(&self, path: &Path, direct: bool) -> std::io::Result<Box<dyn crate::device::DeviceFile>> {
        self.wrap(path, direct, RealDevice.create(path, direct))
    }
    fn open_rw(&self, path: &Path, direct: bool) -> std::io::Result<Box<dyn crate::device::DeviceFile>> {
        self.wrap(path, direct, RealDevice.open_rw(path, direct))
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        RealDevice.sync_file(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        RealDevice.create_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        RealDevice.sync_dir(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealDevice.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealDevice.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        RealDevice.remove_dir_all(path)
    }
    fn free_bytes(&self, path: &Path) -> std::io::Result<u64> {
        RealDevice.free_bytes(path)
    }
    fn dio_alignment(&self, path: &Path) -> Option<u32> {
        RealDevice.dio_alignment(path)
    }
}

#[test]
fn an_append_is_one_write_and_one_flush() {
    use crate::device::Device as _;
    for compression in [Compression::Off, Compression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let dev = Arc::new(CountingDevice { counts: Default::default(), refuse_direct: false });
        let mut j = Journal::open(dir.path(), dev.clone(), JournalOptions { compression, ..opts(4 << 20) }).unwrap();
        j.start_generation(&mut empty_snapshot).unwrap();
        j.append(1, CallKind::Txn, &stmt(1, 10)).unwrap();
        let segment = layout::segment_path(&layout::generation_dir(dir.path(), 1), 1);
        let before = dev.counts.lock().unwrap()[&segment];
        for v in 2..=101 {
            // Every tenth record spans several blocks: compressed when on.
            let pad = if v % 10 == 0 { 30_000 } else { 100 + v as usize * 7 };
            j.append(v, CallKind::Txn, &stmt(v, pad)).unwrap();
        }
        let after = dev.counts.lock().unwrap()[&segment];
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (100, 100),
            "{compression:?}: writes and flushes for 100 appends"
        );
        assert!(dev.dio_alignment(dir.path()).is_none_or(|a| a <= 4096));
        drop(j);
        let compressed = stored(dir.path()).iter().filter(|(_, z, _)| *z).count();
        assert_eq!(compressed, if compression == Compression::Zstd { 10 } else { 0 }, "{compression:?}");
    }
}

/// (data_version, stored compressed, blocks) of every record of the newest
/// generation, statements checked readable.
fn stored(dir: &Path) -> Vec<(u32, bool, u64)> {
    let gens = super::reader::generations(dir).unwrap();
    let g = gens.last().unwrap();
    g.records()
        .map(|r| {
            let r = r.unwrap();
            r.statements().unwrap();
            (r.header.data_version, r.header.is_compressed(), r.header.disk_bytes(g.block_bytes()) / 4096)
        })
        .collect()
}

fn open_with(dir: &Path, compression: Compression) -> Journal {
    Journal::open(dir, Arc::new(RealDevice), JournalOptions { compression, ..opts(1 << 20) }).unwrap()
}

/// ASCII that zstd cannot shrink by a block: uniformly random printable bytes.
fn noise(seed: u64, bytes: usize) -> String {
    let mut rng = crate::rng::SplitMix64(seed);
    (0..bytes).map(|_| (b' ' + rng.below(95) as u8) as char).collect()
}

#[test]
fn compression_is_decided_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open_with(dir.path(), Compression::Zstd);
    j.start_generation(&mut empty_snapshot).unwrap();
    let big = stmt(1, 40_000);
    let small = stmt(2, 3000);
    let incompressible = vec![format!("INSERT INTO t VALUES (3, '{}');", noise(3, 7000)), stmt(3, 0)[1].clone()];
    let appended = j.append(1, CallKind::Txn, &big).unwrap();
    let plain_blocks = (super::format::record_disk_bytes(super::format::payload_bytes(&big), 4096) / 4096) as u64;
    assert!(
        appended.disk_bytes / 4096 < plain_blocks,
        "{} blocks stored, {plain_blocks} plain",
        appended.disk_bytes / 4096
    );
    j.append(2, CallKind::Txn, &small).unwrap();
    j.append(3, CallKind::Txn, &incompressible).unwrap();
    j.append(3, CallKind::InPlace, &["PRAGMA foreign_keys = ON;"]).unwrap();
    j.seal().unwrap();
    drop(j);
    assert_eq!(
        stored(dir.path()),
        vec![(1, true, 1), (2, false, 1), (3, false, 2), (3, false, 1), (3, false, 1)],
        "big: compressed; one block: plain; incompressible: plain; seal: plain"
    );
    // Read back exactly, reopened and continued with compression off: the
    // choice is per record, not per journal.
    let gens = super::reader::generations(dir.path()).unwrap();
    let recs: Vec<_> = gens[0].records().map(Result::unwrap).collect();
    assert_eq!(recs[0].statements().unwrap(), big);
    assert_eq!(recs[2].statements().unwrap(), incompressible);
    let mut j = open_with(dir.path(), Compression::Off);
    assert_eq!(j.tip(), Tip::At { version: 3, pending_txn: false });
    j.append(4, CallKind::Txn, &stmt(4, 40_000)).unwrap();
    drop(j);
    let all = stored(dir.path());
    assert_eq!(all.len(), 6);
    assert_eq!(all[5], (4, false, 10));
}

#[test]
fn damage_inside_a_compressed_record_is_named_by_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open_with(dir.path(), Compression::Zstd);
    j.start_generation(&mut empty_snapshot).unwrap();
    for i in 1..=3 {
        j.append(i, CallKind::Txn, &stmt(i, 50_000)).unwrap();
    }
    drop(j);
    let gens = super::reader::generations(dir.path()).unwrap();
    let recs: Vec<_> = gens[0].records().map(Result::unwrap).collect();
    assert!(recs.iter().all(|r| r.header.is_compressed()));
    let victim = &recs[1];
    let path = gens[0].segments[0].path.clone();
    let f = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let at = victim.loc.offset + RECORD_HEADER_BYTES as u64 + 20;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    drop(f);
    match read_all(dir.path()).unwrap_err() {
        JournalError::Corrupt { loc, detail } => {
            assert_eq!(loc, victim.loc);
            assert!(detail.contains("checksum"), "{detail}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_filesystem_that_refuses_o_direct_is_named_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Arc::new(CountingDevice { counts: Default::default(), refuse_direct: true });
    let mut j = Journal::open(dir.path(), dev, opts(1 << 20)).unwrap();
    let err = format!("{:#}", j.start_generation(&mut empty_snapshot).unwrap_err());
    assert!(err.contains("refuses O_DIRECT") && err.contains("direct_io = false"), "{err}");
}

/// A change of `n` statements of `pad` bytes each, closing with the increment.
fn big_change(v: u32, n: usize, pad: usize) -> Vec<String> {
    let mut s: Vec<String> = (0..n).map(|i| format!("INSERT INTO t VALUES ({i}, '{}');", "y".repeat(pad))).collect();
    s.push(format!("{}{}", crate::state::INCREMENT_PREFIX, v - 1));
    s
}

/// (data_version, records, statements) of each change the journal's one
/// path yields, and (data_version, records) of the pending one.
type ChangesRead = (Vec<(u32, usize, usize)>, Option<(u32, usize)>);

fn committed_changes(dir: &Path) -> ChangesRead {
    let gens = super::reader::generations(dir).unwrap();
    let g = gens.last().unwrap();
    let mut cursor = super::Cursor::start(g);
    let mut out = vec![];
    for item in cursor.read(g, super::Bound::End).unwrap() {
        if let super::Resolved::Applied { change, .. } = item.unwrap() {
            let mut n = 0;
            change
                .for_each_chunk(|_, s| {
                    n += s.len();
                    Ok(())
                })
                .unwrap();
            out.push((change.data_version(), change.records().len(), n));
        }
    }
    let pending = cursor.finish().map(|c| (c.data_version(), c.records().len()));
    (out, pending)
}

#[test]
fn a_large_change_is_stored_as_chunks_that_count_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions { chunk_bytes: 16 << 10, compression: Compression::Off, ..opts(64 << 10) };
    let mut j = Journal::open(dir.path(), Arc::new(RealDevice), o.clone()).unwrap();
    j.start_generation(&mut empty_snapshot).unwrap();
    j.append(1, CallKind::Txn, &stmt(1, 10)).unwrap();
    // 400 statements of ~1 KiB: about 26 chunks, across several 64 KiB segments.
    let a = j.append(2, CallKind::Txn, &big_change(2, 400, 1000)).unwrap();
    j.append(3, CallKind::Txn, &stmt(3, 10)).unwrap();
    assert!(a.seq > 20, "stored as chunks: last chunk is record {}", a.seq);
    drop(j);
    let (changes, pending) = committed_changes(dir.path());
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0], (1, 1, 2));
    assert_eq!((changes[1].0, changes[1].2), (2, 401), "one change, every statement, in order");
    assert!(changes[1].1 > 20);
    assert_eq!(pending, Some((3, 1)));
    // Reopened, the writer continues after the last chunk.
    let mut j = Journal::open(dir.path(), Arc::new(RealDevice), o).unwrap();
    assert_eq!(j.tip(), Tip::At { version: 3, pending_txn: true });
    j.append(4, CallKind::Txn, &stmt(4, 10)).unwrap();
}

/// A chunked change whose last chunk never reached the device was never
/// acknowledged: readers leave it out, and the writer erases it at open so
/// that lightningd's resent change goes in its place.
#[test]
fn a_chunked_change_without_its_last_chunk_was_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions { chunk_bytes: 16 << 10, compression: Compression::Off, ..opts(64 << 10) };
    let mut j = Journal::open(dir.path(), Arc::new(RealDevice), o.clone()).unwrap();
    j.start_generation(&mut empty_snapshot).unwrap();
    j.append(1, CallKind::Txn, &stmt(1, 10)).unwrap();
    j.append(2, CallKind::Txn, &big_change(2, 100, 1000)).unwrap();
    drop(j);
    // Zero the last chunk, as if the process had died before writing it.
    let g = Generation::open(dir.path(), 1).unwrap();
    let last = g.records().map(Result::unwrap).last().unwrap();
    assert!(!last.header.continues());
    let seg = &g.segments[last.loc.segment as usize - 1].path;
    let f = fs::OpenOptions::new().write(true).open(seg).unwrap();
    f.write_all_at(&vec![0u8; last.header.disk_bytes(4096) as usize], last.loc.offset).unwrap();
    drop(f);
    let (changes, pending) = committed_changes(dir.path());
    assert_eq!(changes.len(), 0);
    assert_eq!(pending, Some((1, 1)), "the incomplete change is no part of the journal");
    let mut j = Journal::open(dir.path(), Arc::new(RealDevice), o).unwrap();
    assert_eq!(j.tip(), Tip::At { version: 1, pending_txn: true }, "resumes before the incomplete change");
    j.append(2, CallKind::Txn, &stmt(2, 10)).unwrap();
    drop(j);
    let (changes, pending) = committed_changes(dir.path());
    assert_eq!(changes, vec![(1, 1, 2)]);
    assert_eq!(pending, Some((2, 1)), "the resent change took its place");
}
