//! A [`Device`] that injects faults and models power cuts, for tests.
//!
//! [`FaultDevice`] wraps another device (normally [`super::RealDevice`] on a
//! tmpfs directory): every operation really happens on the inner device, so
//! the journal, its reader and restore run unchanged on real files. Beside
//! that, the device keeps a model of what the *media* would hold after a power
//! cut ([`Media`]), and can:
//!
//! - count I/O steps (every operation that changes the media: create, write,
//!   flush, directory change) and cut the power after step k: that step and
//!   every later one fail with EIO and reach nothing;
//! - make one operation, or every later one of a kind, fail with an errno
//!   (EIO, ENOSPC, EROFS, ...), or make the whole device vanish;
//! - record every step in a log ([`Event`]) that a test replays into a
//!   [`Media`] to visit every crash point of one run offline.
//!
//! The media model, stated so that a test's result means something:
//! - File data: a write is volatile until `sync_data` of that file succeeds.
//!   At a cut, each volatile write may be lost, kept, or kept for only some of
//!   its 512-byte sectors, in any combination ([`Cut`]): a torn write and
//!   reordered unflushed writes. A *failed* flush loses the file's volatile
//!   writes for good (Linux may drop dirty pages after a failed fsync), even
//!   though the running process still reads them back.
//! - Directory entries (create, rename, remove): volatile until `sync_dir` of
//!   the directory they change (for a rename, either side). Flushing a file
//!   does not make its name durable. At a cut, each volatile entry change may
//!   be lost or kept; kept changes apply in their original order, and one
//!   that no longer applies (its directory never reached the media) is lost.
//! - Files written by someone else (SQLite writing a snapshot) are unknown to
//!   the model until [`Device::sync_file`]: the flush is the point where their
//!   content is captured as durable; before it they hold nothing after a cut.
//!   The name they were created under becomes durable like any other entry.
//!
//! Not for production: nothing here is on the plugin's path.

use super::{Device, DeviceFile};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sector size of the modelled media: the unit a power cut tears writes at.
pub const SECTOR_BYTES: usize = 512;

/// Kinds of operation, for targeting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Create,
    OpenRw,
    Write,
    SyncData,
    SyncFile,
    CreateDir,
    SyncDir,
    Rename,
    Remove,
    FreeBytes,
}

impl OpKind {
    /// Whether the operation changes the media (and so counts as a step).
    fn is_step(self) -> bool {
        !matches!(self, OpKind::OpenRw | OpKind::FreeBytes)
    }
}

/// One injected failure: operations of `kind` fail with `errno`; the `skip`
/// first matching ones still succeed; `once` limits it to one failure.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub kind: OpKind,
    pub errno: i32,
    pub skip: u64,
    pub once: bool,
}

/// One step as the media sees it, relative to the device's root.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new, empty file (or an existing name truncated: a new file replaces it).
    CreateFile {
        path: PathBuf,
        ino: u64,
    },
    /// A file written by someone else, flushed: its whole content, now durable.
    Adopt {
        path: PathBuf,
        ino: u64,
        data: Arc<[u8]>,
    },
    Write {
        ino: u64,
        offset: u64,
        data: Arc<[u8]>,
    },
    SyncData {
        ino: u64,
    },
    /// A flush that failed: the file's unflushed writes are lost for good.
    SyncFailed {
        ino: u64,
    },
    CreateDir {
        path: PathBuf,
    },
    SyncDir {
        path: PathBuf,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// A test's own note in the log (an acknowledgement, a commit): not a step.
    Mark(u64),
}

impl Event {
    /// Whether a power cut can fall right after this event.
    pub fn is_step(&self) -> bool {
        !matches!(self, Event::Mark(_))
    }
}

/// What survives a power cut of the volatile state (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing volatile reaches the media.
    DropUnflushed,
    /// Everything written reached the media, only the flushes were missing.
    KeepAll,
    /// Everything reached the media except the last data write, of which
    /// only the first `sectors` sectors did (a write torn at the cut).
    TornLast { sectors: u32 },
    /// As `TornLast`, but only the last `sectors` sectors of it (the device
    /// wrote the write's sectors out of order).
    TornLastTail { sectors: u32 },
    /// Each volatile entry change and each sector of each volatile write
    /// survives or not, at random (reordering), from this seed.
    Random(u64),
}

#[derive(Debug, Clone)]
struct Volatile {
    seq: u64,
    offset: u64,
    data: Arc<[u8]>,
}

#[derive(Debug, Clone, Default)]
struct FileData {
    durable: Vec<u8>,
    volatile: Vec<Volatile>,
}

#[derive(Debug, Clone)]
enum Entry {
    CreateFile { path: PathBuf, ino: u64 },
    CreateDir { path: PathBuf },
    Rename { from: PathBuf, to: PathBuf },
    Remove { path: PathBuf },
}

impl Entry {
    /// The directories whose content the change alters.
    fn touches(&self, dir: &Path) -> bool {
        let parent_is = |p: &Path| p.parent() == Some(dir);
        match self {
            Entry::CreateFile { path, .. } | Entry::CreateDir { path } | Entry::Remove { path } => parent_is(path),
            Entry::Rename { from, to } => parent_is(from) || parent_is(to),
        }
    }
}

/// What the media would hold after a power cut now: durable file data and
/// directory entries, and the volatile ones that a cut may or may not keep.
#[derive(Debug, Clone, Default)]
pub struct Media {
    files: HashMap<u64, FileData>,
    /// Directory entry changes in order, each with whether it is durable.
    entries: Vec<(Entry, bool)>,
    write_seq: u64,
}

/// A node of a materialised directory tree.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File(u64),
}

/// Deterministic choices for [`Cut::Random`].
type Rng = crate::rng::SplitMix64;

impl Media {
    pub fn new() -> Media {
        Media::default()
    }

    /// Applies one step of a recorded log.
    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::CreateFile { path, ino } => {
                self.files.insert(*ino, FileData::default());
                self.entries.push((Entry::CreateFile { path: path.clone(), ino: *ino }, false));
            }
            Event::Adopt { path, ino, data } => {
                self.files.insert(*ino, FileData { durable: data.to_vec(), volatile: vec![] });
                self.entries.push((Entry::CreateFile { path: path.clone(), ino: *ino }, false));
            }
            Event::Write { ino, offset, data } => {
                self.write_seq += 1;
                let seq = self.write_seq;
                if let Some(f) = self.files.get_mut(ino) {
                    f.volatile.push(Volatile { seq, offset: *offset, data: data.clone() });
                }
            }
            Event::SyncData { ino } => {
                if let Some(f) = self.files.get_mut(ino) {
                    for v in std::mem::take(&mut f.volatile) {
                        overlay(&mut f.durable, v.offset, &v.data);
                    }
                }
            }
            Event::SyncFailed { ino } => {
                if let Some(f) = self.files.get_mut(ino) {
                    f.volatile.clear();
                }
            }
            Event::CreateDir { path } => self.entries.push((Entry::CreateDir { path: path.clone() }, false)),
            Event::Rename { from, to } => {
                self.entries.push((Entry::Rename { from: from.clone(), to: to.clone() }, false))
            }
            Event::Remove { path } => self.entries.push((Entry::Remove { path: path.clone() }, false)),
            Event::SyncDir { path } => {
                for (e, durable) in self.entries.iter_mut() {
                    if !*durable && e.touches(path) {
                        *durable = true;
                    }
                }
            }
            Event::Mark(_) => {}
        }
    }

    /// Reads a file as the device holds it while powered: durable data with
    /// the volatile writes that were not lost (what an O_DIRECT read sees).
    pub fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> usize {
        let Some(f) = self.files.get(&ino) else { return 0 };
        let mut content = f.durable.clone();
        for v in &f.volatile {
            overlay(&mut content, v.offset, &v.data);
        }
        let start = (offset as usize).min(content.len());
        let n = (content.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&content[start..start + n]);
        n
    }

    /// Whether anything volatile is pending (a cut variant could differ from
    /// [`Cut::DropUnflushed`]).
    pub fn has_volatile(&self) -> bool {
        self.entries.iter().any(|(_, d)| !d) || self.files.values().any(|f| !f.volatile.is_empty())
    }

    /// Sectors of the last volatile data write, if there is one.
    pub fn last_write_sectors(&self) -> Option<u32> {
        self.files
            .values()
            .flat_map(|f| f.volatile.iter())
            .max_by_key(|v| v.seq)
            .map(|v| v.data.len().div_ceil(SECTOR_BYTES) as u32)
    }

    fn tree(&self, cut: Cut, rng: &mut Rng) -> BTreeMap<PathBuf, Node> {
        let mut tree: BTreeMap<PathBuf, Node> = BTreeMap::new();
        tree.insert(PathBuf::new(), Node::Dir);
        let parent_exists = |tree: &BTreeMap<PathBuf, Node>, p: &Path| {
            matches!(tree.get(p.parent().unwrap_or(Path::new(""))), Some(Node::Dir))
        };
        for (e, durable) in &self.entries {
            let keep = *durable
                || match cut {
                    Cut::DropUnflushed => false,
                    Cut::KeepAll | Cut::TornLast { .. } | Cut::TornLastTail { .. } => true,
                    Cut::Random(_) => rng.coin(),
                };
            if !keep {
                continue;
            }
            match e {
                Entry::CreateFile { path, ino } => {
                    if parent_exists(&tree, path) && !matches!(tree.get(path), Some(Node::Dir)) {
                        tree.insert(path.clone(), Node::File(*ino));
                    }
                }
                Entry::CreateDir { path } => {
                    if parent_exists(&tree, path) && !tree.contains_key(path) {
                        tree.insert(path.clone(), Node::Dir);
                    }
                }
                Entry::Rename { from, to } => {
                    if !tree.contains_key(from) || !parent_exists(&tree, to) {
                        continue;
                    }
                    let moved: Vec<PathBuf> = tree.keys().filter(|k| k.starts_with(from)).cloned().collect();
                    let old_to: Vec<PathBuf> = tree.keys().filter(|k| k.starts_with(to)).cloned().collect();
                    for k in old_to {
                        tree.remove(&k);
                    }
                    for k in moved {
                        let node = tree.remove(&k).expect("listed");
                        let rel = k.strip_prefix(from).expect("prefix");
                        let dest = if rel.as_os_str().is_empty() { to.clone() } else { to.join(rel) };
                        tree.insert(dest, node);
                    }
                }
                Entry::Remove { path } => {
                    let gone: Vec<PathBuf> = tree.keys().filter(|k| k.starts_with(path)).cloned().collect();
                    for k in gone {
                        tree.remove(&k);
                    }
                }
            }
        }
        tree
    }

    fn file_bytes(&self, ino: u64, cut: Cut, last_seq: u64, rng: &mut Rng) -> Vec<u8> {
        let Some(f) = self.files.get(&ino) else { return vec![] };
        let mut out = f.durable.clone();
        for v in &f.volatile {
            let sectors = v.data.len().div_ceil(SECTOR_BYTES);
            let keep_range = |lo: usize, hi: usize, out: &mut Vec<u8>| {
                let (a, b) = (lo * SECTOR_BYTES, (hi * SECTOR_BYTES).min(v.data.len()));
                if a < b {
                    overlay(out, v.offset + a as u64, &v.data[a..b]);
                }
            };
            match cut {
                Cut::DropUnflushed => {}
                Cut::KeepAll => keep_range(0, sectors, &mut out),
                Cut::TornLast { sectors: k } if v.seq == last_seq => keep_range(0, k as usize, &mut out),
                Cut::TornLastTail { sectors: k } if v.seq == last_seq => {
                    keep_range(sectors.saturating_sub(k as usize), sectors, &mut out)
                }
                Cut::TornLast { .. } | Cut::TornLastTail { .. } => keep_range(0, sectors, &mut out),
                Cut::Random(_) => {
                    for s in 0..sectors {
                        if rng.coin() {
                            keep_range(s, s + 1, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    /// Writes what the media would hold after a power cut into `dir`, which
    /// must be empty: the device's root as found on reboot.
    pub fn materialize(&self, dir: &Path, cut: Cut) -> io::Result<()> {
        let seed = match cut {
            Cut::Random(s) => s,
            _ => 0,
        };
        let mut rng = crate::rng::SplitMix64(seed);
        let last_seq = self.files.values().flat_map(|f| f.volatile.iter()).map(|v| v.seq).max().unwrap_or(0);
        let tree = self.tree(cut, &mut rng);
        // BTreeMap order puts every directory before its content.
        for (rel, node) in &tree {
            let path = dir.join(rel);
            match node {
                Node::Dir if rel.as_os_str().is_empty() => {}
                Node::Dir => fs::create_dir(&path)?,
                Node::File(ino) => fs::write(&path, self.file_bytes(*ino, cut, last_seq, &mut rng))?,
            }
        }
        Ok(())
    }
}

fn overlay(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset as usize..end].copy_from_slice(data);
}

struct State {
    /// Paths under the root are modelled; the rest pass through unmodelled.
    root: PathBuf,
    steps: u64,
    cut_after: Option<u64>,
    /// The power is off: every operation fails and reaches nothing.
    dead: bool,
    /// Every operation fails with this errno (the device went away).
    vanished: Option<i32>,
    rules: Vec<FaultRule>,
    /// Matching operations seen per rule (for `skip`).
    rule_seen: Vec<u64>,
    free_bytes: Option<u64>,
    media: Media,
    log: Option<Vec<Event>>,
    next_ino: u64,
    /// Current name of every modelled file: which inode a path opens.
    names: HashMap<PathBuf, u64>,
    injected: u64,
}

impl State {
    fn rel(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    fn record(&mut self, ev: Event) {
        self.media.apply(&ev);
        if let Some(log) = &mut self.log {
            log.push(ev);
        }
    }

    /// Decides whether an operation of `kind` may run: counts the step,
    /// applies the power cut and the injected faults.
    fn admit(&mut self, kind: OpKind) -> io::Result<()> {
        if let Some(errno) = self.vanished {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if self.dead {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if kind.is_step() {
            if self.cut_after.is_some_and(|k| self.steps >= k) {
                self.dead = true;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.steps += 1;
        }
        for i in 0..self.rules.len() {
            if self.rules[i].kind != kind {
                continue;
            }
            self.rule_seen[i] += 1;
            let r = self.rules[i].clone();
            if self.rule_seen[i] > r.skip {
                if r.once {
                    self.rules[i].kind = OpKind::FreeBytes;
                    self.rules[i].skip = u64::MAX;
                }
                self.injected += 1;
                return Err(io::Error::from_raw_os_error(r.errno));
            }
        }
        Ok(())
    }
}

/// The fault-injecting device. Clones share one state.
#[derive(Clone)]
pub struct FaultDevice {
    inner: Arc<dyn Device>,
    state: Arc<Mutex<State>>,
}

impl FaultDevice {
    /// Wraps `inner`; paths under `root` are modelled. Whatever `root`
    /// already holds is taken as durable: it is what the media held at boot.
    pub fn new(inner: Arc<dyn Device>, root: &Path) -> FaultDevice {
        let d = FaultDevice {
            inner,
            state: Arc::new(Mutex::new(State {
                root: root.to_path_buf(),
                steps: 0,
                cut_after: None,
                dead: false,
                vanished: None,
                rules: vec![],
                rule_seen: vec![],
                free_bytes: None,
                media: Media::new(),
                log: None,
                next_ino: 1,
                names: HashMap::new(),
                injected: 0,
            })),
        };
        {
            let mut s = d.lock();
            let mut dirs = vec![PathBuf::new()];
            adopt_tree(&mut s, root, Path::new(""), &mut dirs);
            for dir in dirs {
                s.record(Event::SyncDir { path: dir });
            }
        }
        d
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a log of every step from now on.
    pub fn record(&self) {
        self.lock().log = Some(vec![]);
    }

    /// The log recorded so far.
    pub fn take_log(&self) -> Vec<Event> {
        self.lock().log.take().unwrap_or_default()
    }

    /// Adds a test's note to the log, between steps.
    pub fn mark(&self, tag: u64) {
        let mut s = self.lock();
        if let Some(log) = &mut s.log {
            log.push(Event::Mark(tag));
        }
    }

    /// Steps (media-changing operations) admitted so far.
    pub fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Cuts the power once `steps` steps have run: the next step and all
    /// later operations fail with EIO and change nothing.
    pub fn cut_power_after(&self, steps: u64) {
        self.lock().cut_after = Some(steps);
    }

    /// Whether the power is off.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Makes every later operation fail with `errno` (the device went away).
    pub fn vanish(&self, errno: i32) {
        self.lock().vanished = Some(errno);
    }

    /// Makes operations of `kind` fail with `errno` after `skip` successes;
    /// once, or from then on.
    pub fn fail(&self, kind: OpKind, errno: i32, skip: u64, once: bool) {
        let mut s = self.lock();
        s.rules.push(FaultRule { kind, errno, skip, once });
        s.rule_seen.push(0);
    }

    /// Removes every injected fault rule (the operator freed space).
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.rule_seen.clear();
        s.vanished = None;
    }

    /// What `free_bytes` reports (`None`: the inner device's answer).
    pub fn set_free_bytes(&self, bytes: Option<u64>) {
        self.lock().free_bytes = bytes;
    }

    /// A copy of the media model now.
    pub fn media(&self) -> Media {
        self.lock().media.clone()
    }
}

/// Registers everything under `root/rel` as existing (see [`FaultDevice::new`]).
fn adopt_tree(s: &mut State, root: &Path, rel: &Path, dirs: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let child = rel.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                s.record(Event::CreateDir { path: child.clone() });
                dirs.push(child.clone());
                adopt_tree(s, root, &child, dirs);
            }
            Ok(t) if t.is_file() => {
                let data: Arc<[u8]> = Arc::from(fs::read(root.join(&child)).unwrap_or_default());
                let ino = s.next_ino;
                s.next_ino += 1;
                s.names.insert(child.clone(), ino);
                s.record(Event::Adopt { path: child, ino, data });
            }
            _ => {}
        }
    }
}

struct FaultFile {
    inner: Box<dyn DeviceFile>,
    /// Opened with O_DIRECT: reads see the media (durable data and the
    /// volatile writes not lost), not the page cache.
    direct: bool,
    /// The modelled inode, `None` outside the root.
    ino: Option<u64>,
    state: Arc<Mutex<State>>,
}

impl DeviceFile for FaultFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.admit(OpKind::Write)?;
        self.inner.write_all_at(buf, offset)?;
        if let Some(ino) = self.ino {
            s.record(Event::Write { ino, offset, data: Arc::from(buf) });
        }
        Ok(())
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(errno) = s.vanished {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if let (true, Some(ino)) = (self.direct, self.ino) {
                return Ok(s.media.read(ino, offset, buf));
            }
        }
        self.inner.read_at(buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let r = s.admit(OpKind::SyncData).and_then(|()| self.inner.sync_data());
        if let Some(ino) = self.ino {
            match &r {
                Ok(()) => s.record(Event::SyncData { ino }),
                // A failed flush (but not a dead device: nothing reaches the
                // media then anyway) loses the unflushed writes for good.
                Err(_) if !s.dead => s.record(Event::SyncFailed { ino }),
                Err(_) => {}
            }
        }
        r
    }

    fn size(&mut self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl FaultDevice {
    fn open_file(&self, path: &Path, direct: bool, create: bool) -> io::Result<Box<dyn DeviceFile>> {
        let mut s = self.lock();
        s.admit(if create { OpKind::Create } else { OpKind::OpenRw })?;
        let inner = if create { self.inner.create(path, direct)? } else { self.inner.open_rw(path, direct)? };
        let ino = match s.rel(path) {
            Some(rel) if create => {
                let ino = s.next_ino;
                s.next_ino += 1;
                s.names.insert(rel.clone(), ino);
                s.record(Event::CreateFile { path: rel, ino });
                Some(ino)
            }
            Some(rel) => s.names.get(&rel).copied(),
            None => None,
        };
        Ok(Box::new(FaultFile { inner, direct, ino, state: self.state.clone() }))
    }
}

impl Device for FaultDevice {
    fn create(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>> {
        self.open_file(path, direct, true)
    }

    fn open_rw(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>> {
        let file = self.open_file(path, direct, false)?;
        Ok(file)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::SyncFile)?;
        self.inner.sync_file(path)?;
        if let Some(rel) = s.rel(path) {
            match s.names.get(&rel).copied() {
                Some(ino) => s.record(Event::SyncData { ino }),
                None => {
                    // Written by someone else: its content is durable from now.
                    let data: Arc<[u8]> = Arc::from(fs::read(path)?);
                    let ino = s.next_ino;
                    s.next_ino += 1;
                    s.names.insert(rel.clone(), ino);
                    s.record(Event::Adopt { path: rel, ino, data });
                }
            }
        }
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::CreateDir)?;
        self.inner.create_dir(path)?;
        if let Some(rel) = s.rel(path) {
            s.record(Event::CreateDir { path: rel });
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::SyncDir)?;
        self.inner.sync_dir(path)?;
        if let Some(rel) = s.rel(path) {
            s.record(Event::SyncDir { path: rel });
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::Rename)?;
        self.inner.rename(from, to)?;
        if let (Some(f), Some(t)) = (s.rel(from), s.rel(to)) {
            let moved: Vec<(PathBuf, u64)> =
                s.names.iter().filter(|(k, _)| k.starts_with(&f)).map(|(k, v)| (k.clone(), *v)).collect();
            for (k, ino) in moved {
                s.names.remove(&k);
                let rel = k.strip_prefix(&f).expect("prefix").to_path_buf();
                s.names.insert(if rel.as_os_str().is_empty() { t.clone() } else { t.join(rel) }, ino);
            }
            s.record(Event::Rename { from: f, to: t });
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::Remove)?;
        self.inner.remove_file(path)?;
        if let Some(rel) = s.rel(path) {
            s.names.remove(&rel);
            s.record(Event::Remove { path: rel });
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.admit(OpKind::Remove)?;
        self.inner.remove_dir_all(path)?;
        if let Some(rel) = s.rel(path) {
            s.names.retain(|k, _| !k.starts_with(&rel));
            s.record(Event::Remove { path: rel });
        }
        Ok(())
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let mut s = self.lock();
        s.admit(OpKind::FreeBytes)?;
        match s.free_bytes {
            Some(b) => Ok(b),
            None => self.inner.free_bytes(path),
        }
    }

    fn dio_alignment(&self, path: &Path) -> Option<u32> {
        self.inner.dio_alignment(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::RealDevice;

    fn device() -> (tempfile::TempDir, FaultDevice) {
        let dir = tempfile::tempdir().unwrap();
        let d = FaultDevice::new(Arc::new(RealDevice), dir.path());
        (dir, d)
    }

    fn image(d: &FaultDevice, cut: Cut) -> tempfile::TempDir {
        let out = tempfile::tempdir().unwrap();
        d.media().materialize(out.path(), cut).unwrap();
        out
    }

    #[test]
    fn unflushed_data_and_names_are_lost_flushed_ones_kept() {
        let (dir, d) = device();
        let sub = dir.path().join("sub");
        d.create_dir(&sub).unwrap();
        let mut f = d.create(&sub.join("a"), false).unwrap();
        f.write_all_at(&[1u8; 1024], 0).unwrap();
        // Data flushed, names not: nothing survives.
        f.sync_data().unwrap();
        let img = image(&d, Cut::DropUnflushed);
        assert!(!img.path().join("sub").exists());
        d.sync_dir(&sub).unwrap();
        assert!(!image(&d, Cut::DropUnflushed).path().join("sub").exists(), "sub itself is not durable yet");
        d.sync_dir(dir.path()).unwrap();
        let img = image(&d, Cut::DropUnflushed);
        assert_eq!(fs::read(img.path().join("sub/a")).unwrap(), vec![1u8; 1024]);
        // An unflushed overwrite: dropped, kept, or torn at a sector.
        f.write_all_at(&[2u8; 1024], 0).unwrap();
        assert_eq!(fs::read(image(&d, Cut::DropUnflushed).path().join("sub/a")).unwrap(), vec![1u8; 1024]);
        assert_eq!(fs::read(image(&d, Cut::KeepAll).path().join("sub/a")).unwrap(), vec![2u8; 1024]);
        let torn = fs::read(image(&d, Cut::TornLast { sectors: 1 }).path().join("sub/a")).unwrap();
        assert_eq!(&torn[..512], &[2u8; 512][..]);
        assert_eq!(&torn[512..], &[1u8; 512][..]);
        let tail = fs::read(image(&d, Cut::TornLastTail { sectors: 1 }).path().join("sub/a")).unwrap();
        assert_eq!(&tail[..512], &[1u8; 512][..]);
        assert_eq!(&tail[512..], &[2u8; 512][..]);
    }

    #[test]
    fn a_failed_flush_loses_the_data_for_good() {
        let (dir, d) = device();
        let mut f = d.create(&dir.path().join("a"), false).unwrap();
        d.sync_dir(dir.path()).unwrap();
        f.write_all_at(&[7u8; 512], 0).unwrap();
        d.fail(OpKind::SyncData, libc::EIO, 0, true);
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        // A retry succeeds, but the page cache dropped the data first.
        f.sync_data().unwrap();
        let img = image(&d, Cut::DropUnflushed);
        assert_eq!(fs::read(img.path().join("a")).unwrap(), Vec::<u8>::new());
        assert_eq!(d.injected(), 1);
    }

    #[test]
    fn renames_move_trees_and_cuts_stop_the_world() {
        let (dir, d) = device();
        let tmp = dir.path().join("g.tmp");
        d.create_dir(&tmp).unwrap();
        let mut f = d.create(&tmp.join("s"), false).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        d.sync_dir(&tmp).unwrap();
        d.rename(&tmp, &dir.path().join("g")).unwrap();
        d.sync_dir(dir.path()).unwrap();
        let img = image(&d, Cut::DropUnflushed);
        assert_eq!(fs::read(img.path().join("g/s")).unwrap(), b"hello");
        assert!(!img.path().join("g.tmp").exists());
        let steps = d.steps();
        d.cut_power_after(steps + 1);
        let mut f = d.open_rw(&dir.path().join("g/s"), false).unwrap();
        f.write_all_at(b"HELLO", 0).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        assert!(d.is_dead());
        assert!(d.create_dir(&dir.path().join("x")).is_err());
        assert_eq!(fs::read(image(&d, Cut::DropUnflushed).path().join("g/s")).unwrap(), b"hello");
    }

    #[test]
    fn the_log_replays_to_the_same_media() {
        let (dir, d) = device();
        d.record();
        d.create_dir(&dir.path().join("j")).unwrap();
        let mut f = d.create(&dir.path().join("j/a"), false).unwrap();
        f.write_all_at(&[3u8; 2000], 100).unwrap();
        d.mark(42);
        f.sync_data().unwrap();
        d.sync_dir(dir.path()).unwrap();
        d.sync_dir(&dir.path().join("j")).unwrap();
        let log = d.take_log();
        assert_eq!(log.iter().filter(|e| e.is_step()).count() as u64, d.steps());
        let mut m = Media::new();
        for e in &log {
            m.apply(e);
        }
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        m.materialize(a.path(), Cut::DropUnflushed).unwrap();
        d.media().materialize(b.path(), Cut::DropUnflushed).unwrap();
        assert_eq!(fs::read(a.path().join("j/a")).unwrap(), fs::read(b.path().join("j/a")).unwrap());
        assert_eq!(fs::read(a.path().join("j/a")).unwrap().len(), 2100);
    }
}
