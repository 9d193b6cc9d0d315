//! The guard: if the plugin dies, lightningd commits nothing more.
//!
//! lightningd v26.06 reacts to the death of an important plugin by dropping
//! it from the `db_write` hook and then shutting down like after `stop`; what
//! it commits on the way (seen with a real node: a block, a network event)
//! passes with nobody on the hook, so the journal misses it
//! (docs/REAL-NODE.md, step 4). The plugin cannot answer once it is dead, so
//! a tiny process forked at start-up, before any thread, stands guard:
//! - it keeps a copy of the plugin's stdout, so lightningd does not see the
//!   plugin go (a `db_write` it sends meanwhile just waits, uncommitted);
//! - it waits on a pipe from the plugin: a byte means a deliberate exit
//!   ([`release`]); end of file without it means the plugin died (SIGKILL,
//!   out of memory, a panic's abort), and the guard SIGKILLs lightningd
//!   through a pidfd taken at start (never a reused pid). A crash of
//!   lightningd is what the journal already handles: nothing uncommitted is
//!   lost, nothing committed is missing.
//!
//! Not for: stopping lightningd on purpose. Deliberate exits call
//! [`release`] first and let lightningd's important-plugin handling log why.

use std::sync::atomic::{AtomicI32, Ordering};

/// The write end of the pipe to the guard; -1 when there is no guard.
static RELEASE_FD: AtomicI32 = AtomicI32::new(-1);

const DIED: &[u8] = b"cln-replica guard: the plugin died without a clean exit; killing lightningd (SIGKILL) \
so that it commits nothing the journal has not seen\n";

/// Set to `0` to run without the guard, `1` to guard a parent that is not
/// named `lightningd`.
pub const GUARD_ENV: &str = "CLN_REPLICA_GUARD";

/// Starts the guard for lightningd, the parent process. Must run before the
/// plugin starts any thread. Only a parent named `lightningd` is guarded: the
/// simulator and the tests run the plugin under themselves, and kill it on
/// purpose. Without a guard (no pidfd support, a fork failure) the plugin
/// still runs, and says so on stderr.
pub fn start() {
    let parent = unsafe { libc::getppid() };
    let wanted = match std::env::var(GUARD_ENV).as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => std::fs::read_to_string(format!("/proc/{parent}/comm")).is_ok_and(|c| c.trim_end() == "lightningd"),
    };
    if !wanted {
        return;
    }
    match spawn(parent) {
        Ok((fd, _guard)) => RELEASE_FD.store(fd, Ordering::Release),
        Err(e) => eprintln!("cln-replica: no guard process ({e}); if the plugin dies, lightningd may commit unseen"),
    }
}

/// Tells the guard that the plugin exits on purpose: it then exits quietly.
/// Idempotent; call before every deliberate exit.
pub fn release() {
    let fd = RELEASE_FD.swap(-1, Ordering::AcqRel);
    if fd >= 0 {
        release_fd(fd);
    }
}

fn release_fd(fd: i32) {
    unsafe {
        let _ = libc::write(fd, b"c".as_ptr().cast(), 1);
        libc::close(fd);
    }
}

/// Forks a guard for `victim`; returns the write end of its pipe and the
/// guard's pid.
fn spawn(victim: libc::pid_t) -> std::io::Result<(i32, libc::pid_t)> {
    use std::io::Error;
    if victim <= 1 {
        return Err(Error::other("no parent process to guard"));
    }
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, victim, 0) } as i32;
    if pidfd < 0 {
        return Err(Error::last_os_error());
    }
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = Error::last_os_error();
        unsafe { libc::close(pidfd) };
        return Err(e);
    }
    match unsafe { libc::fork() } {
        -1 => {
            let e = Error::last_os_error();
            unsafe {
                libc::close(pidfd);
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            Err(e)
        }
        // The child: only async-signal-safe calls from here on.
        0 => unsafe {
            libc::close(fds[1]);
            libc::close(0);
            // Keep only stdout, stderr, the pipe and the pidfd: a descriptor
            // inherited from another thread (a journal's LOCK, say) would
            // otherwise stay open, and locked, for the guard's whole life.
            let (lo, hi) = (fds[0].min(pidfd) as u32, fds[0].max(pidfd) as u32);
            for (from, to) in [(3, lo.saturating_sub(1)), (lo + 1, hi.saturating_sub(1)), (hi + 1, u32::MAX)] {
                if from <= to && libc::syscall(libc::SYS_close_range, from, to, 0) != 0 {
                    for fd in from..to.min(4096).saturating_add(1) {
                        libc::close(fd as i32);
                    }
                }
            }
            let mut byte = 0u8;
            let n = loop {
                let n = libc::read(fds[0], (&mut byte as *mut u8).cast(), 1);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break n;
            };
            if n != 1 {
                libc::syscall(libc::SYS_pidfd_send_signal, pidfd, libc::SIGKILL, std::ptr::null::<libc::c_void>(), 0);
                let _ = libc::write(2, DIED.as_ptr().cast(), DIED.len());
            }
            libc::_exit(0)
        },
        guard => {
            unsafe {
                libc::close(fds[0]);
                libc::close(pidfd);
            }
            Ok((fds[1], guard))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn reap(pid: libc::pid_t) {
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn a_plugin_that_dies_takes_lightningd_down() {
        let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
        let (fd, guard) = spawn(victim.id() as i32).unwrap();
        // The plugin "dies": its end of the pipe closes without the byte.
        unsafe { libc::close(fd) };
        let status = wait_exit(&mut victim, Duration::from_secs(10)).expect("the guard killed the victim");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        reap(guard);
    }

    #[test]
    fn a_deliberate_exit_leaves_lightningd_alone() {
        let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
        let (fd, guard) = spawn(victim.id() as i32).unwrap();
        release_fd(fd);
        // The guard exits on the byte, and the victim outlives it.
        reap(guard);
        assert!(victim.try_wait().unwrap().is_none(), "a released guard must not kill");
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
}
