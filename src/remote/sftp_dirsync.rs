//! Flushing a directory on an SFTP server: OpenSSH's sftp-server opens a
//! directory as a file when asked for read access only, and runs
//! `fsync@openssh.com` on any open file descriptor, which for a directory
//! makes its entries (a new object's name) durable. The client crate the
//! SFTP destination uses refuses `fsync` on a handle opened read-only, so
//! this speaks the few SFTP v3 packets it needs itself (draft-ietf-secsh-
//! filexfer-02: INIT, OPEN, EXTENDED, CLOSE) over its own `ssh -s sftp`,
//! kept open, with every read bounded by a deadline.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_EXTENDED: u8 = 200;
const SSH_FXF_READ: u32 = 1;
/// No packet this client reads is larger (a VERSION with its extensions).
const PACKET_BYTES_MAX: usize = 64 << 10;

pub struct DirSyncer {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    next_id: u32,
    timeout: Duration,
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

impl DirSyncer {
    pub fn connect(ssh_args: &[String], timeout: Duration) -> Result<DirSyncer> {
        let mut child = Command::new("ssh")
            .args(ssh_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run ssh")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut d = DirSyncer { child, stdin, stdout, next_id: 1, timeout };
        d.send(SSH_FXP_INIT, &3u32.to_be_bytes())?;
        let (t, body) = d.recv(Instant::now() + timeout)?;
        if t != SSH_FXP_VERSION {
            bail!("the SFTP server answered INIT with packet type {t}");
        }
        if !body.windows(17).any(|w| w == b"fsync@openssh.com") {
            bail!("the SFTP server lacks fsync@openssh.com");
        }
        Ok(d)
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        let mut p = Vec::with_capacity(5 + body.len());
        p.extend_from_slice(&(1 + body.len() as u32).to_be_bytes());
        p.push(kind);
        p.extend_from_slice(body);
        self.stdin.write_all(&p).and_then(|()| self.stdin.flush()).context("the SFTP connection closed")
    }

    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [nix::poll::PollFd::new(self.stdout.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).context("poll")?;
            if ready == 0 {
                if Instant::now() >= deadline {
                    bail!("no answer within {} s", self.timeout.as_secs());
                }
                continue;
            }
            match self.stdout.read(&mut buf[done..]) {
                Ok(0) => bail!("the SFTP connection closed"),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from the SFTP connection"),
            }
        }
        Ok(())
    }

    fn recv(&mut self, deadline: Instant) -> Result<(u8, Vec<u8>)> {
        let mut len = [0u8; 4];
        self.read_exact_by(&mut len, deadline)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > PACKET_BYTES_MAX {
            bail!("the SFTP server sent a packet of {len} bytes");
        }
        let mut p = vec![0u8; len];
        self.read_exact_by(&mut p, deadline)?;
        Ok((p[0], p[1..].to_vec()))
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Waits for the answer to request `id`: its type and what follows the id.
    fn answer(&mut self, id: u32, deadline: Instant) -> Result<(u8, Vec<u8>)> {
        let (t, body) = self.recv(deadline)?;
        if body.len() < 4 || u32::from_be_bytes(body[..4].try_into().expect("4 bytes")) != id {
            bail!("the SFTP server answered out of order");
        }
        Ok((t, body[4..].to_vec()))
    }

    fn status_ok(&mut self, id: u32, what: &str, deadline: Instant) -> Result<()> {
        let (t, body) = self.answer(id, deadline)?;
        let code = body.get(..4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
        if t != SSH_FXP_STATUS || code != Some(0) {
            bail!("{what} failed (SFTP status {code:?})");
        }
        Ok(())
    }

    /// Makes the entries of directory `path` durable on the server.
    pub fn sync_dir(&mut self, path: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let open = self.id();
        let mut b = open.to_be_bytes().to_vec();
        string(&mut b, path.as_bytes());
        b.extend_from_slice(&SSH_FXF_READ.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes()); // no attributes
        self.send(SSH_FXP_OPEN, &b)?;
        let (t, body) = self.answer(open, deadline)?;
        if t != SSH_FXP_HANDLE || body.len() < 4 {
            bail!("cannot open the directory {path} on the SFTP server");
        }
        let n = u32::from_be_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let handle = body.get(4..4 + n).ok_or_else(|| anyhow!("a malformed SFTP handle"))?.to_vec();
        let fsync = self.id();
        let mut b = fsync.to_be_bytes().to_vec();
        string(&mut b, b"fsync@openssh.com");
        string(&mut b, &handle);
        self.send(SSH_FXP_EXTENDED, &b)?;
        let close = self.id();
        let mut c = close.to_be_bytes().to_vec();
        string(&mut c, &handle);
        self.send(SSH_FXP_CLOSE, &c)?;
        let synced = self.status_ok(fsync, &format!("fsync@openssh.com of the directory {path}"), deadline);
        let closed = self.status_ok(close, &format!("closing the directory {path}"), deadline);
        synced.and(closed)
    }
}

impl Drop for DirSyncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
