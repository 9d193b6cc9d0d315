//! `sftp://user@host:port/path`: a directory on an SSH server, through the
//! `openssh-sftp-client` crate over the system's `ssh` client (`ssh -s sftp`,
//! key-based only: `ssh_key` or `?key=` names the private key; `known_hosts`
//! is `strict` (default), `add` or `accept`; a password in the URL is
//! refused).
//!
//! Durable on the server's disk before it is acknowledged: an object is
//! written under a temporary name, flushed with `fsync@openssh.com`, linked to
//! its name (`hardlink@openssh.com`, which refuses an existing name: never an
//! overwrite), and the directory is flushed too (opened as a file and sent
//! `fsync@openssh.com`, which OpenSSH's sftp-server runs on any file
//! descriptor: [`super::sftp_dirsync`]). A server without those extensions is refused: it cannot say
//! what is on its disk. The tip is renamed over the old one
//! (`posix-rename@openssh.com`, atomic).

use super::settings::DestinationConfig;
use super::sftp_dirsync::DirSyncer;
use super::store::CALL_TIMEOUT;
use super::store::{ObjectReader, ParsedUrl, Store, StoreError, StoreResult};
use anyhow::{anyhow, bail, Result};
use openssh_sftp_client::error::{Error as SftpError, SftpErrorKind};
use openssh_sftp_client::{Sftp, SftpOptions};
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// Bytes per write request (OpenSSH accepts up to 255 KiB).
const WRITE_BYTES: usize = 128 << 10;

pub struct SftpStore {
    describe: String,
    root: String,
    ssh_args: Vec<String>,
    rt: tokio::runtime::Runtime,
    conn: Mutex<Option<Conn>>,
    dirsync: Mutex<Option<DirSyncer>>,
}

struct Conn {
    sftp: Sftp,
    _child: tokio::process::Child,
}

fn not_found(e: &SftpError) -> bool {
    matches!(e, SftpError::SftpError(SftpErrorKind::NoSuchFile, _))
}

impl SftpStore {
    pub fn new(url: &ParsedUrl, cfg: &DestinationConfig) -> Result<SftpStore> {
        let Some((userinfo, hostport)) = url.authority.rsplit_once('@') else {
            bail!("an SFTP destination needs a user: sftp://user@host:port/path");
        };
        if userinfo.contains(':') {
            bail!(
                "an SFTP destination authenticates with a key (ssh_key = \"...\"), not a password: remove the password \
                 from the URL"
            );
        }
        if url.path.is_empty() {
            bail!("an SFTP destination needs a directory: sftp://user@host:port/path");
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| anyhow!("invalid port in the SFTP URL"))?),
            None => (hostport, 22),
        };
        let mut args = vec![
            "-oBatchMode=yes".to_string(),
            "-oServerAliveInterval=15".into(),
            "-oServerAliveCountMax=3".into(),
            format!("-oConnectTimeout={}", CALL_TIMEOUT.as_secs()),
            "-p".into(),
            port.to_string(),
        ];
        match cfg.option("known_hosts").as_deref().unwrap_or("strict") {
            "strict" => args.push("-oStrictHostKeyChecking=yes".into()),
            "add" => args.push("-oStrictHostKeyChecking=accept-new".into()),
            "accept" => args.extend(["-oStrictHostKeyChecking=no".into(), "-oUserKnownHostsFile=/dev/null".into()]),
            _ => bail!("known_hosts must be \"strict\", \"add\" or \"accept\""),
        }
        if let Some(k) = cfg.option("ssh_key").or_else(|| cfg.option("key")) {
            args.extend(["-i".into(), k, "-oIdentitiesOnly=yes".into()]);
        }
        args.extend(["-oLogLevel=ERROR".into(), format!("{userinfo}@{host}"), "-s".into(), "sftp".into()]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow!("cannot start the I/O runtime for a remote destination: {e}"))?;
        Ok(SftpStore {
            describe: format!("sftp://{userinfo}@{hostport}{}", url.path),
            root: url.path.clone(),
            ssh_args: args,
            rt,
            conn: Mutex::new(None),
            dirsync: Mutex::new(None),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.split('/').any(|c| c == ".." || c == ".") || name.starts_with('/') {
            bail!("invalid object name {name:?}");
        }
        Ok(PathBuf::from(format!("{}/{}", self.root, name.trim_end_matches('/'))))
    }

    /// The connection, opened on first use (and again after a failure).
    fn conn(&self) -> Result<MutexGuard<'_, Option<Conn>>> {
        let mut g = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let args = self.ssh_args.clone();
            let conn = self.block(&format!("connecting to {}", self.describe), async move {
                let mut child = tokio::process::Command::new("ssh")
                    .args(&args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(SftpError::IOError)?;
                let stdin = child.stdin.take().expect("piped");
                let stdout = child.stdout.take().expect("piped");
                let sftp = Sftp::new(stdin, stdout, SftpOptions::new()).await?;
                Ok(Conn { sftp, _child: child })
            })?;
            if !(conn.sftp.support_fsync() && conn.sftp.support_hardlink() && conn.sftp.support_posix_rename()) {
                bail!(
                    "the SFTP server at {} lacks fsync@openssh.com, hardlink@openssh.com or posix-rename@openssh.com: \
                     it cannot say what is on its disk (use OpenSSH's sftp-server)",
                    self.describe
                );
            }
            *g = Some(conn);
        }
        Ok(g)
    }

    fn block<T>(&self, what: &str, f: impl Future<Output = Result<T, SftpError>>) -> Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .map_err(|_| anyhow!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("{what}: {e}"))
    }

    /// Runs `f` on the connection; a failure drops the connection, so the next
    /// call starts a fresh one.
    fn with<T>(&self, what: &str, f: impl AsyncFnOnce(&Sftp) -> Result<T, SftpError>) -> StoreResult<T> {
        let mut g = self.conn()?;
        let sftp = &g.as_ref().expect("connected").sftp;
        let r = self.rt.block_on(async { tokio::time::timeout(CALL_TIMEOUT, f(sftp)).await });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(e, SftpError::SftpError(..)) {
                    // The server answered: the connection is sound.
                } else {
                    *g = None;
                }
                Err(anyhow!("{what}: {e}").into())
            }
            Err(_) => {
                *g = None;
                Err(anyhow!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs()).into())
            }
        }
    }

    /// Creates the destination's directory and `dir` under it if missing,
    /// flushing each parent after a creation.
    fn mkdirs(&self, dir: &std::path::Path) -> StoreResult<()> {
        let root = PathBuf::from(&self.root);
        let mut todo = vec![root.clone()];
        if dir != root {
            todo.push(dir.to_path_buf());
        }
        for p in todo {
            let q = p.clone();
            let created = self.with(&format!("creating {}", p.display()), async move |s| {
                if s.fs().metadata(&q).await.is_ok() {
                    return Ok(false);
                }
                match s.fs().create_dir(&q).await {
                    Ok(()) => Ok(true),
                    // Created by someone else meanwhile.
                    Err(_) if s.fs().metadata(&q).await.is_ok() => Ok(false),
                    Err(e) => Err(e),
                }
            })?;
            if created {
                if let Some(parent) = p.parent() {
                    self.sync_dir(parent)?;
                }
            }
        }
        Ok(())
    }

    /// `fsync@openssh.com` on the directory, opened as a file (over a
    /// connection of its own: [`super::sftp_dirsync`]).
    fn sync_dir(&self, dir: &std::path::Path) -> StoreResult<()> {
        let mut g = self.dirsync.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(
                DirSyncer::connect(&self.ssh_args, CALL_TIMEOUT).map_err(|e| anyhow!("{}: {e:#}", self.describe))?,
            );
        }
        let r = g.as_mut().expect("connected").sync_dir(&dir.to_string_lossy());
        if r.is_err() {
            *g = None;
        }
        Ok(r.map_err(|e| anyhow!("flushing the directory {}: {e:#}", dir.display()))?)
    }

    fn write_all(
        &self,
        file: &mut openssh_sftp_client::file::File,
        data: &mut dyn Read,
        what: &str,
    ) -> StoreResult<()> {
        let mut buf = vec![0u8; WRITE_BYTES];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow!("{what}: {e}").into()),
            };
            let chunk = &buf[..n];
            let f = &mut *file;
            self.with(what, async move |_| f.write_all(chunk).await)?;
        }
    }

    fn write_temporary(&self, path: &std::path::Path, data: &mut dyn Read) -> StoreResult<PathBuf> {
        let dir = path.parent().expect("object has a parent");
        self.mkdirs(dir)?;
        let tmp = dir.join(format!(".{}.{}.partial", path.file_name().unwrap().to_string_lossy(), std::process::id()));
        let t = tmp.clone();
        let what = format!("writing {}", path.display());
        let mut file = self.with(&what, async move |s| {
            let _ = s.fs().remove_file(&t).await;
            s.options().write(true).create(true).truncate(true).open(&t).await
        })?;
        let written = self.write_all(&mut file, data, &what).and_then(|()| {
            self.with(&what, async move |_| {
                // On the server's disk before anything refers to it.
                file.sync_all().await?;
                file.close().await
            })
        });
        if let Err(e) = written {
            let t = tmp.clone();
            let _ = self.with("removing a partial upload", async move |s| s.fs().remove_file(&t).await);
            return Err(e);
        }
        Ok(tmp)
    }
}

impl Store for SftpStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn put(&self, name: &str, data: &mut dyn Read) -> StoreResult<()> {
        let path = self.path(name)?;
        let tmp = self.write_temporary(&path, data)?;
        let (t, p) = (tmp.clone(), path.clone());
        let linked = self.with(&format!("creating {name}"), async move |s| {
            let r = s.fs().hard_link(&t, &p).await;
            let _ = s.fs().remove_file(&t).await;
            match r {
                Ok(()) => Ok(true),
                // link() refuses an existing name; the server says only "failure".
                Err(_) if s.fs().metadata(&p).await.is_ok() => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        if !linked {
            return Err(StoreError::Exists { name: name.to_string() });
        }
        self.sync_dir(path.parent().expect("object has a parent"))
    }

    fn replace(&self, name: &str, data: &[u8]) -> StoreResult<()> {
        let path = self.path(name)?;
        let tmp = self.write_temporary(&path, &mut &data[..])?;
        let (t, p) = (tmp.clone(), path.clone());
        self.with(&format!("replacing {name}"), async move |s| s.fs().rename(&t, &p).await)?;
        self.sync_dir(path.parent().expect("object has a parent"))
    }

    fn get(&self, name: &str) -> StoreResult<Option<ObjectReader<'_>>> {
        let path = self.path(name)?;
        let p = path.clone();
        let file = self.with(&format!("reading {name}"), async move |s| {
            let mut f = match s.open(&p).await {
                Ok(f) => f,
                Err(e) if not_found(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let regular = f.metadata().await?.file_type().is_some_and(|t| t.is_file());
            Ok(Some((f, regular)))
        })?;
        match file {
            None => Ok(None),
            Some((_, false)) => Err(anyhow!("{name} is not a regular file").into()),
            Some((f, true)) => Ok(Some(Box::new(SftpReader {
                store: self,
                file: Some(f),
                name: name.to_string(),
                buf: vec![],
                at: 0,
            }))),
        }
    }

    fn list(&self, dir: &str) -> StoreResult<Vec<String>> {
        let path = if dir.is_empty() { PathBuf::from(&self.root) } else { self.path(dir)? };
        let mut out = self.with(&format!("listing {}", path.display()), async move |s| {
            let d = match s.fs().open_dir(&path).await {
                Ok(d) => d,
                Err(e) if not_found(&e) => return Ok(vec![]),
                Err(e) => return Err(e),
            };
            let mut rd = Box::pin(d.read_dir());
            let mut out = vec![];
            while let Some(e) = std::future::poll_fn(|cx| futures_core::Stream::poll_next(rd.as_mut(), cx)).await {
                let e = e?;
                let name = e.filename().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if e.file_type().is_some_and(|t| t.is_dir()) {
                    out.push(format!("{name}/"));
                } else {
                    out.push(name);
                }
            }
            Ok(out)
        })?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, name: &str) -> StoreResult<()> {
        let path = self.path(name)?;
        let is_dir = name.ends_with('/');
        self.with(&format!("deleting {name}"), async move |s| {
            if is_dir {
                // Leftovers of interrupted uploads (hidden from listings).
                if let Ok(d) = s.fs().open_dir(&path).await {
                    let mut rd = Box::pin(d.read_dir());
                    while let Some(Ok(e)) =
                        std::future::poll_fn(|cx| futures_core::Stream::poll_next(rd.as_mut(), cx)).await
                    {
                        let n = e.filename().to_string_lossy().into_owned();
                        if n.starts_with('.') && n.ends_with(".partial") {
                            let _ = s.fs().remove_file(path.join(&n)).await;
                        }
                    }
                }
            }
            let r = if is_dir { s.fs().remove_dir(&path).await } else { s.fs().remove_file(&path).await };
            match r {
                Err(e) if not_found(&e) => Ok(()),
                r => r,
            }
        })
    }
}

/// An object read in requests of at most the server's read length.
struct SftpReader<'a> {
    store: &'a SftpStore,
    file: Option<openssh_sftp_client::file::File>,
    name: String,
    buf: Vec<u8>,
    at: usize,
}

impl Read for SftpReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            let Some(f) = self.file.as_mut() else { return Ok(0) };
            let got = self
                .store
                .with(&format!("reading {}", self.name), async move |_| f.read(256 << 10, bytes::BytesMut::new()).await)
                .map_err(std::io::Error::other)?;
            match got {
                None => {
                    self.file = None;
                    return Ok(0);
                }
                Some(b) => {
                    self.buf = b.to_vec();
                    self.at = 0;
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
