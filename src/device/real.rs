//! The real backup device: O_DIRECT files, fdatasync, fsync'd directories.
//!
//! How a write is made durable is [`SyncMode`]: by default a `pwrite` then an
//! `fdatasync` (two system calls); `CLN_REPLICA_SYNC=dsync` opens O_DIRECT
//! files with O_DSYNC as well, so the `pwrite` itself returns only once the
//! data is durable and the flush becomes a no-op. Both were measured on a
//! loop device and a throttled one (docs/REAL-NODE.md, "Cost").

use super::{Device, DeviceFile};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, Default, Clone, Copy)]
pub struct RealDevice;

/// How the journal's O_DIRECT files are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `pwrite`, then `fdatasync`.
    Fdatasync,
    /// Opened with O_DSYNC: each `pwrite` is durable when it returns.
    Dsync,
}

/// The environment variable that selects [`SyncMode`]: `dsync` or `fdatasync`
/// (the default; any other value is named on stderr, which lightningd logs,
/// and fdatasync is used).
pub const SYNC_MODE_ENV: &str = "CLN_REPLICA_SYNC";

impl SyncMode {
    /// The mode of this process, read once from [`SYNC_MODE_ENV`].
    pub fn current() -> SyncMode {
        static MODE: std::sync::OnceLock<SyncMode> = std::sync::OnceLock::new();
        *MODE.get_or_init(|| match std::env::var(SYNC_MODE_ENV).as_deref() {
            Ok("dsync") => SyncMode::Dsync,
            Ok("fdatasync") | Ok("") | Err(_) => SyncMode::Fdatasync,
            Ok(other) => {
                eprintln!(
                    "cln-replica: {SYNC_MODE_ENV}={other:?} is neither \"dsync\" nor \"fdatasync\"; using fdatasync"
                );
                SyncMode::Fdatasync
            }
        })
    }
}

struct RealFile {
    file: File,
    /// Opened O_DIRECT|O_DSYNC: every write was durable when it returned.
    dsync: bool,
}

impl DeviceFile for RealFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        if self.dsync {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn size(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

fn open(path: &Path, create: bool, direct: bool) -> io::Result<RealFile> {
    open_in(path, create, direct, SyncMode::current())
}

fn open_in(path: &Path, create: bool, direct: bool, mode: SyncMode) -> io::Result<RealFile> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).mode(0o600);
    if create {
        opts.create(true).truncate(true);
    }
    let dsync = direct && mode == SyncMode::Dsync;
    if dsync {
        opts.custom_flags(libc::O_DIRECT | libc::O_DSYNC);
    } else if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    Ok(RealFile { file: opts.open(path)?, dsync })
}

impl Device for RealDevice {
    fn create(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>> {
        Ok(Box::new(open(path, true, direct)?))
    }

    fn open_rw(&self, path: &Path, direct: bool) -> io::Result<Box<dyn DeviceFile>> {
        Ok(Box::new(open(path, false, direct)?))
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn free_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    fn dio_alignment(&self, path: &Path) -> Option<u32> {
        dio_alignment(path)
    }
}

/// The file offset alignment O_DIRECT needs for the regular file `file`, from
/// `statx(STATX_DIOALIGN)` (Linux 6.1+; filesystems report it for regular
/// files only). `None` when the kernel or filesystem does not say.
pub fn dio_alignment(file: &Path) -> Option<u32> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    const STATX_DIOALIGN: u32 = 0x2000;
    // struct statx is 256 bytes; stx_dio_offset_align sits at byte 156.
    let mut buf = [0u64; 32];
    let c = CString::new(file.as_os_str().as_bytes()).ok()?;
    // SAFETY: buf is 256 bytes, the size of struct statx, and properly aligned.
    let rc =
        unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, STATX_DIOALIGN, buf.as_mut_ptr() as *mut libc::statx) };
    if rc != 0 {
        return None;
    }
    let bytes: &[u8; 256] = unsafe { &*(buf.as_ptr() as *const [u8; 256]) };
    let mask = u32::from_ne_bytes(bytes[0..4].try_into().ok()?);
    if mask & STATX_DIOALIGN == 0 {
        return None;
    }
    let offset_align = u32::from_ne_bytes(bytes[156..160].try_into().ok()?);
    (offset_align != 0).then_some(offset_align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{is_direct_io_refusal, AlignedBuf};

    /// O_DIRECT|O_DSYNC: the file is opened with both flags, a write reads
    /// back, and the flush is skipped (the write was durable on return).
    #[test]
    fn dsync_files_write_and_skip_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dsync");
        let mut f = match open_in(&path, true, true, SyncMode::Dsync) {
            Ok(f) => f,
            Err(e) if is_direct_io_refusal(&e) => return,
            Err(e) => panic!("cannot create {}: {e}", path.display()),
        };
        assert!(f.dsync);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f.file);
        // SAFETY: fd is open for the call's duration.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_eq!(flags & libc::O_DSYNC, libc::O_DSYNC, "O_DSYNC set");
        assert_eq!(flags & libc::O_DIRECT, libc::O_DIRECT, "O_DIRECT set");
        let mut block = AlignedBuf::with_capacity(4096);
        block.reset_zeroed(4096);
        block[..5].copy_from_slice(b"dsync");
        f.write_all_at(&block, 4096).unwrap();
        f.sync_data().unwrap();
        let mut back = AlignedBuf::with_capacity(4096);
        back.reset_zeroed(4096);
        assert_eq!(f.read_at(&mut back, 4096).unwrap(), 4096);
        assert_eq!(&back[..5], b"dsync");
        // Buffered files never get O_DSYNC: only O_DIRECT ones are switched.
        let plain = open_in(&dir.path().join("plain"), true, false, SyncMode::Dsync).unwrap();
        assert!(!plain.dsync);
    }

    /// Offsets past 4 GiB reach the file intact, also on 32-bit targets
    /// (armv7: usize is 32 bits, and a libc off_t too unless the 64-bit calls
    /// are used). The file is sparse, so this writes two blocks. Run under
    /// qemu-arm by scripts/test.d/40-cross.
    #[test]
    fn offsets_past_4_gib_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let offset: u64 = (5 << 30) + 4096;
        let truncated = offset & u64::from(u32::MAX);
        for direct in [false, true] {
            let path = dir.path().join(format!("sparse-direct-{direct}"));
            let mut f = match RealDevice.create(&path, direct) {
                Ok(f) => f,
                Err(e) if direct && is_direct_io_refusal(&e) => continue,
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            };
            let mut block = AlignedBuf::with_capacity(4096);
            block.reset_zeroed(4096);
            block[..8].copy_from_slice(b"past4gib");
            block[4088..].copy_from_slice(&offset.to_le_bytes());
            f.write_all_at(&block, offset).unwrap();
            f.sync_data().unwrap();
            assert_eq!(f.size().unwrap(), offset + 4096, "direct={direct}");

            let mut back = AlignedBuf::with_capacity(4096);
            back.reset_zeroed(4096);
            assert_eq!(f.read_at(&mut back, offset).unwrap(), 4096);
            assert_eq!(&back[..], &block[..], "direct={direct}: read back differs");
            // Nothing landed at the offset cut to 32 bits.
            back.reset_zeroed(4096);
            assert_eq!(f.read_at(&mut back, truncated).unwrap(), 4096);
            assert!(back.iter().all(|&b| b == 0), "direct={direct}: the write wrapped around 4 GiB");
            // A read that starts before the end stops at it.
            back.reset_zeroed(8192);
            assert_eq!(f.read_at(&mut back, offset).unwrap(), 4096);
        }
    }
}
