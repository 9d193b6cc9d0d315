//! The database a restore replaces: the last step of every restore (from the
//! journal, from the mirror, from a destination), where a bad day can be made
//! worse. So:
//!
//! - `--to` is absent or a regular file (not a directory, device, FIFO or
//!   symbolic link);
//! - no lightningd uses it: the lock lightningd holds on its pid file for its
//!   whole run (`lightningd-<network>.pid` in the lightning directory, the
//!   network directory's parent), and any process holding the file open
//!   (`/proc/*/fd`), which also catches a `--wallet` elsewhere;
//! - a newer state is never replaced by an older one without
//!   `--allow-older`: the file's committed `vars.data_version` is read (on a
//!   copy when a hot rollback journal or a WAL lies beside it, since reading
//!   would roll it back), and a file whose version cannot be told counts as
//!   newer;
//! - nothing is deleted: the file and every `-journal`, `-wal` and `-shm`
//!   beside it move aside as one set, `<name>.before-restore-<UTC time>`
//!   with each suffix after the time (so SQLite still pairs them), before the
//!   new file is renamed in; the moves and the install are flushed, and so
//!   is the directory. No hot journal is ever left beside a restored file.

use crate::files::{self, Durability, Staged};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The files SQLite keeps beside a database, by suffix.
pub const SIDECAR_SUFFIXES: [&str; 3] = ["-journal", "-wal", "-shm"];

/// What `--to` holds before the restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    Absent,
    /// A database at this committed data_version.
    Version(u32),
    /// A file whose committed data_version cannot be told, and why.
    Unknown(String),
}

/// What the install step did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Installed {
    /// The data_version of the file replaced, if it had one.
    pub replaced_data_version: Option<u32>,
    /// Where the replaced file and its companions now are.
    #[serde(serialize_with = "crate::files::serialize_paths_lossy")]
    pub set_aside: Vec<PathBuf>,
}

/// Checks made before a restore does any work: the target's kind, `--force`,
/// and that no lightningd uses it. Returns what it holds.
pub fn precheck(to: &Path, force: bool) -> Result<Existing> {
    match fs::symlink_metadata(to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot inspect {}: {e}", to.display()),
        Ok(m) => {
            let t = m.file_type();
            let kind = if t.is_dir() {
                Some("a directory: name the database file to create")
            } else if t.is_symlink() {
                Some("a symbolic link: name the file it points to")
            } else if t.is_block_device() || t.is_char_device() {
                Some("a device, not a database file")
            } else if t.is_fifo() || t.is_socket() {
                Some("a FIFO or socket, not a database file")
            } else {
                None
            };
            if let Some(kind) = kind {
                bail!("{} is {kind}; restore writes only a regular file", to.display());
            }
            if !force {
                bail!("{} exists; restore will not replace it without --force", to.display());
            }
        }
    }
    refuse_if_in_use(to)?;
    Ok(existing_version(to))
}

/// The committed data_version of the database at `to`.
pub fn existing_version(to: &Path) -> Existing {
    if !to.exists() {
        return Existing::Absent;
    }
    match read_committed_version(to) {
        Ok(Some(v)) => Existing::Version(v),
        Ok(None) => Existing::Unknown("it holds no vars.data_version".into()),
        Err(e) => Existing::Unknown(format!("{e:#}")),
    }
}

fn read_committed_version(to: &Path) -> Result<Option<u32>> {
    let hot = SIDECAR_SUFFIXES[..2].iter().any(|s| sidecar(to, s).metadata().is_ok_and(|m| m.len() > 0));
    if !hot {
        let conn = rusqlite::Connection::open_with_flags(to, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        return crate::snapshot::data_version(&conn);
    }
    // Opening it would roll the journal back into the file (or checkpoint
    // the WAL): read a copy of the set instead, in the same directory.
    let dir = tempfile::Builder::new()
        .prefix(".cln-replica-version-")
        .tempdir_in(files::parent_dir(to))
        .context("cannot make a temporary directory beside it")?;
    let copy = dir.path().join("db");
    fs::copy(to, &copy).context("cannot copy it to read its committed state")?;
    for s in SIDECAR_SUFFIXES {
        if sidecar(to, s).exists() {
            fs::copy(sidecar(to, s), sidecar(&copy, s)).context("cannot copy its journal")?;
        }
    }
    let conn = rusqlite::Connection::open(&copy)?;
    crate::snapshot::data_version(&conn)
}

/// `path` with `suffix` appended to its file name.
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Refuses when a running lightningd (or anything else) uses `to`.
pub fn refuse_if_in_use(to: &Path) -> Result<()> {
    if let Some((pid, pidfile)) = lightningd_running_for(to) {
        bail!(
            "lightningd (pid {pid}) is running on {}: it holds the lock on {}. Stop it first \
             (`lightning-cli stop`), then restore",
            files::parent_dir(to).display(),
            pidfile.display()
        );
    }
    if let Some((pid, exe)) = process_holding(to) {
        bail!("{} is open in process {pid} ({exe}): stop it first, then restore", to.display());
    }
    Ok(())
}

/// lightningd keeps a POSIX lock on `<lightning-dir>/lightningd-<network>.pid`
/// while it runs; the database lives in `<lightning-dir>/<network>/`.
fn lightningd_running_for(to: &Path) -> Option<(i32, PathBuf)> {
    let net_dir = fs::canonicalize(files::parent_dir(to)).ok()?;
    let network = net_dir.file_name()?.to_str()?.to_string();
    let pidfile = net_dir.parent()?.join(format!("lightningd-{network}.pid"));
    lock_holder(&pidfile).map(|pid| (pid, pidfile))
}

/// The pid holding a write lock on `path`, if any (fcntl F_GETLK).
fn lock_holder(path: &Path) -> Option<i32> {
    use std::os::unix::io::AsRawFd;
    let (f, _) = files::open_regular(path, Some(1 << 20)).ok()?;
    // SAFETY: a zeroed flock is a valid argument; F_GETLK only fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own, with a valid flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// A process with `to` (or one of its companions) open, found in /proc.
fn process_holding(to: &Path) -> Option<(u32, String)> {
    let target = fs::metadata(to).ok()?;
    let (dev, ino) = (target.dev(), target.ino());
    let me = std::process::id();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            // stat through the fd link: the same inode, whatever its name.
            if fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                let exe = fs::read_link(entry.path().join("exe")).map(|p| p.display().to_string());
                return Some((pid, exe.unwrap_or_else(|_| "?".into())));
            }
        }
    }
    None
}

/// Refuses to put `restored` data_version over a newer (or unknown) file
/// unless `allow_older`.
pub fn check_not_older(to: &Path, existing: &Existing, restored: u32, allow_older: bool) -> Result<()> {
    if allow_older {
        return Ok(());
    }
    match existing {
        Existing::Absent => Ok(()),
        Existing::Version(v) if !crate::state::is_after(*v, restored) => Ok(()),
        Existing::Version(v) => bail!(
            "{} is at data_version {v}, newer than the data_version {restored} this restore gives: an older \
             channel state is what a node's peers punish. Restore the newest state, or pass --allow-older if \
             this is really what you want (the newer file is kept aside)",
            to.display()
        ),
        Existing::Unknown(why) => bail!(
            "cannot tell the data_version of {} ({why}): it may be newer than the data_version {restored} this \
             restore gives. Pass --allow-older to replace it anyway (it is kept aside, with its journal)",
            to.display()
        ),
    }
}

/// Moves the file at `to` and its companions aside, then installs `staged`
/// over `to`. Refuses again if a lightningd started meanwhile.
pub fn put_in_place(staged: Staged, existing: &Existing) -> Result<Installed> {
    let to = staged.dest().to_path_buf();
    refuse_if_in_use(&to)?;
    let mut installed = Installed {
        replaced_data_version: match existing {
            Existing::Version(v) => Some(*v),
            _ => None,
        },
        set_aside: vec![],
    };
    let base = free_aside_name(&to);
    // The database first, then its companions: a crash in between leaves
    // the old set's journal under the old name with no database beside it,
    // which is moved aside (with this set's name) before the install below.
    if fs::symlink_metadata(&to).is_ok() {
        fs::rename(&to, &base).with_context(|| format!("cannot move {} aside", to.display()))?;
        installed.set_aside.push(base.clone());
    }
    for s in SIDECAR_SUFFIXES {
        let from = sidecar(&to, s);
        if fs::symlink_metadata(&from).is_ok() {
            let aside = sidecar(&base, s);
            fs::rename(&from, &aside).with_context(|| format!("cannot move {} aside", from.display()))?;
            installed.set_aside.push(aside);
        }
    }
    if !installed.set_aside.is_empty() {
        files::sync_dir_of(&to)?;
    }
    // Invariant: no journal of another database is left beside the new one.
    for s in SIDECAR_SUFFIXES {
        assert!(fs::symlink_metadata(sidecar(&to, s)).is_err(), "nothing named {s} beside the restored file");
    }
    staged.install(Durability::Flushed)?;
    Ok(installed)
}

/// `<name>.before-restore-<UTC time>`, with `-2`, `-3`, ... if taken.
fn free_aside_name(to: &Path) -> PathBuf {
    let stamp = crate::clock::format_unix_ms_compact(crate::clock::now_unix_ms());
    let taken = |p: &Path| {
        fs::symlink_metadata(p).is_ok() || SIDECAR_SUFFIXES.iter().any(|s| fs::symlink_metadata(sidecar(p, s)).is_ok())
    };
    let first = sidecar(to, &format!(".before-restore-{stamp}"));
    if !taken(&first) {
        return first;
    }
    (2..).map(|i| sidecar(to, &format!(".before-restore-{stamp}-{i}"))).find(|p| !taken(p)).expect("a free name")
}
