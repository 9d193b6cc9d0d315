//! A simulated lightningd: a real SQLite database and the real plugin binary
//! spoken to over the plugin protocol, as lightningd does it.
//!
//! For each change it runs `BEGIN`, the statements, lightningd's own
//! data_version increment, the `db_write` hook, and `COMMIT` only on
//! `continue` (db/exec.c, `db_commit_transaction`). PRAGMA-only calls run
//! outside a transaction and are reported at the current version
//! (db/db_sqlite3.c, table rebuilds). It can also do what a real node's life
//! does to a backup: hooks before `init`, a plugin restart, a crash between
//! hook and commit, writes while the plugin is absent (a gap), and an older
//! database put back in place (versions going backwards).

use crate::plugin::protocol::{Frame, FrameReader};
use crate::sim::trace::TraceCall;
use crate::sim::TxnEnd;
use crate::state::{CallKind, INCREMENT_PREFIX};
use anyhow::{anyhow, bail, Context, Result};
use rusqlite::Connection;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the simulator waits for any answer from the plugin. A real
/// lightningd waits forever; a test must not.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// The plugin answered `continue`: the change was committed.
    Continue,
    /// The plugin answered anything else (its whole answer): lightningd would
    /// stop without committing. The change was rolled back.
    Refused(String),
    /// The plugin went away (EOF on its stdout) before answering; lightningd
    /// would stop (important plugin). The change was rolled back.
    PluginGone,
}

/// A change as lightningd would make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Statements of one transaction; the simulator adds the increment.
    Txn(Vec<String>),
    /// A PRAGMA-only call, outside any transaction.
    InPlace(String),
}

struct PluginProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: FrameReader<ChildStdout>,
    next_id: u64,
}

/// The simulated node.
pub struct SimNode {
    /// The network directory: the plugin's working directory, home of
    /// `lightningd.sqlite3` and `cln-replica.toml`.
    pub dir: PathBuf,
    conn: Connection,
    data_version: u32,
    plugin: Option<PluginProcess>,
    /// Round-trip time of every answered hook, in microseconds.
    pub hook_latencies_us: Vec<u64>,
    /// Messages the plugin logged (`log` notifications) and wrote to stderr.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Hook calls made (answered or not).
    pub hooks: u64,
}

pub fn database_path(dir: &Path) -> PathBuf {
    dir.join(crate::config::DEFAULT_DATABASE)
}

fn open_db(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

impl SimNode {
    /// Opens the node in `dir` (creating the directory; the database file is
    /// created by lightningd's first transaction, as for a real node).
    pub fn open(dir: &Path) -> Result<SimNode> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let conn = open_db(&database_path(dir))?;
        let data_version = crate::snapshot::data_version(&conn)?.unwrap_or(0);
        Ok(SimNode {
            dir: dir.to_path_buf(),
            conn,
            data_version,
            plugin: None,
            hook_latencies_us: vec![],
            logs: Arc::new(Mutex::new(vec![])),
            hooks: 0,
        })
    }

    pub fn data_version(&self) -> u32 {
        self.data_version
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn has_plugin(&self) -> bool {
        self.plugin.is_some()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts the plugin as lightningd does (environment, working directory)
    /// and gets its manifest. `init` is separate: hooks may come first.
    pub fn start_plugin(&mut self, exe: &Path, env: &[(&str, &str)]) -> Result<Value> {
        if self.plugin.is_some() {
            bail!("the plugin is already running");
        }
        let mut cmd = Command::new(exe);
        cmd.current_dir(&self.dir)
            .env("LIGHTNINGD_PLUGIN", "1")
            .env("LIGHTNINGD_VERSION", "v26.06-sim")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("cannot start the plugin {}", exe.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                logs.lock().unwrap_or_else(|e| e.into_inner()).push(format!("stderr: {line}"));
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&stdout);
        self.plugin = Some(PluginProcess {
            stdin: child.stdin.take(),
            child,
            reader: FrameReader::new(stdout, Some(fd)),
            next_id: 1,
        });
        let manifest = self.request("getmanifest", json!({"allow-deprecated-apis": false}))?;
        let manifest = manifest.ok_or_else(|| anyhow!("the plugin exited before answering getmanifest"))?;
        let hooks = manifest["result"]["hooks"].to_string();
        if !hooks.contains("db_write") {
            bail!("the plugin's manifest registers no db_write hook: {manifest}");
        }
        Ok(manifest["result"].clone())
    }

    /// Sends `init` as lightningd does once the node has started.
    pub fn init_plugin(&mut self) -> Result<Value> {
        let lightning_dir = self.dir.parent().unwrap_or(&self.dir).to_path_buf();
        let params = json!({
            "options": {},
            "configuration": {
                // JSON strings are UTF-8, as lightningd's are.
                "lightning-dir": self.dir.to_string_lossy(),
                "rpc-file": "lightning-rpc",
                "startup": true,
                "network": "regtest",
                "feature_set": {},
                "lightning-dir-root": lightning_dir.to_string_lossy(),
            }
        });
        let answer = self.request("init", params)?.ok_or_else(|| anyhow!("the plugin exited during init"))?;
        if answer.get("error").is_some() {
            bail!("the plugin refused init: {answer}");
        }
        Ok(answer)
    }

    /// Sends a request and waits for the answer with its id. Notifications
    /// (logs) on the way are recorded. `None` if the plugin went away.
    pub fn request(&mut self, method: &str, params: Value) -> Result<Option<Value>> {
        let p = self.plugin.as_mut().ok_or_else(|| anyhow!("no plugin running"))?;
        let id = format!("cln:{method}#{}", p.next_id);
        p.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(msg.to_string().as_bytes())?;
        self.await_answer(&id)
    }

    /// Writes bytes to the plugin's stdin as lightningd frames them.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let p = self.plugin.as_mut().ok_or_else(|| anyhow!("no plugin running"))?;
        let stdin = p.stdin.as_mut().ok_or_else(|| anyhow!("plugin stdin closed"))?;
        // A plugin that died leaves a broken pipe: that is not our error.
        let _ = stdin.write_all(bytes).and_then(|()| stdin.write_all(b"\n\n")).and_then(|()| stdin.flush());
        Ok(())
    }

    /// Reads the plugin's messages until the answer to `id`.
    pub fn await_answer(&mut self, id: &str) -> Result<Option<Value>> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let p = self.plugin.as_mut().ok_or_else(|| anyhow!("no plugin running"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.reader.next(Some(left)).context("reading the plugin's stdout")? {
                Frame::Eof => return Ok(None),
                Frame::Timeout => bail!("the plugin did not answer {id} within {ANSWER_TIMEOUT:?}"),
                Frame::Message(m) => {
                    let v: Value = serde_json::from_slice(&m).with_context(|| {
                        format!("the plugin wrote something that is not JSON: {}", String::from_utf8_lossy(&m))
                    })?;
                    if v.get("id").and_then(Value::as_str) == Some(id) {
                        return Ok(Some(v));
                    }
                    if v.get("method").and_then(Value::as_str) == Some("log") {
                        let line = format!(
                            "{}: {}",
                            v["params"]["level"].as_str().unwrap_or("?"),
                            v["params"]["message"].as_str().unwrap_or("")
                        );
                        self.logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                        continue;
                    }
                    if v.get("id").is_some() && v.get("method").is_none() {
                        bail!("the plugin answered an id we did not send: {v}");
                    }
                    // Anything else (a request to lightningd) is not part of
                    // what cln-replica should send.
                    bail!("unexpected message from the plugin: {v}");
                }
            }
        }
    }

    /// Calls `db_write` for `data_version` with `writes`, as lightningd does.
    pub fn hook(&mut self, data_version: u32, writes: &[String]) -> Result<HookOutcome> {
        if self.plugin.is_none() {
            // lightningd with no db_write plugin commits unseen.
            return Ok(HookOutcome::Continue);
        }
        self.hooks += 1;
        let p = self.plugin.as_mut().expect("checked above");
        let id = format!("cln:db_write#{}", p.next_id);
        p.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "db_write",
                         "params": {"data_version": data_version, "writes": writes}})
        .to_string();
        // Timed from the first byte sent to the answer: lightningd's own
        // serialisation is not the plugin's cost.
        let started = Instant::now();
        self.send_raw(msg.as_bytes())?;
        let answer = self.await_answer(&id)?;
        let Some(answer) = answer else { return Ok(HookOutcome::PluginGone) };
        if answer["result"]["result"].as_str() == Some("continue") {
            self.hook_latencies_us.push(started.elapsed().as_micros() as u64);
            Ok(HookOutcome::Continue)
        } else {
            Ok(HookOutcome::Refused(answer.to_string()))
        }
    }

    fn exec_all(&self, statements: &[String]) -> Result<()> {
        for (i, s) in statements.iter().enumerate() {
            self.conn
                .execute_batch(s)
                .with_context(|| format!("the simulated node cannot run statement {} ({s:.120})", i + 1))?;
        }
        Ok(())
    }

    /// Runs a transaction and reports it; commits only on `continue`.
    pub fn commit(&mut self, statements: &[String]) -> Result<HookOutcome> {
        let mut writes = statements.to_vec();
        writes.push(format!("{INCREMENT_PREFIX}{}", self.data_version));
        self.run_txn(&writes, TxnEnd::Commit)
    }

    /// Runs a transaction whose statements already end with the increment
    /// (a recorded trace), ended as `end` says after a `continue`.
    fn run_txn(&mut self, writes: &[String], end: TxnEnd) -> Result<HookOutcome> {
        self.conn.execute_batch("BEGIN")?;
        if let Err(e) = self.exec_all(writes) {
            self.conn.execute_batch("ROLLBACK")?;
            return Err(e);
        }
        let n = self.data_version.wrapping_add(1);
        let outcome = self.hook(n, writes);
        match outcome {
            Ok(HookOutcome::Continue) if end == TxnEnd::Commit => {
                self.conn.execute_batch("COMMIT")?;
                self.data_version = n;
            }
            _ => self.conn.execute_batch("ROLLBACK")?,
        }
        outcome
    }

    /// A PRAGMA-only call: runs outside any transaction, then the hook at
    /// the current version (it has already taken effect, as in lightningd).
    pub fn in_place(&mut self, statement: &str) -> Result<HookOutcome> {
        self.conn.execute_batch(statement)?;
        self.hook(self.data_version, &[statement.to_string()])
    }

    pub fn apply(&mut self, change: &Change) -> Result<HookOutcome> {
        match change {
            Change::Txn(s) => self.commit(s),
            Change::InPlace(s) => self.in_place(s),
        }
    }

    /// Replays one recorded call verbatim. Its data_version must be what
    /// this node would send.
    pub fn replay_call(&mut self, call: &TraceCall) -> Result<HookOutcome> {
        let kind = crate::state::classify(call.data_version, &call.writes).map_err(anyhow::Error::msg)?;
        match kind {
            CallKind::Txn => {
                if call.data_version != self.data_version.wrapping_add(1) {
                    bail!(
                        "trace call for data_version {} does not follow the node's {}",
                        call.data_version,
                        self.data_version
                    );
                }
                self.run_txn(&call.writes, TxnEnd::Commit)
            }
            CallKind::InPlace => {
                if call.data_version != self.data_version {
                    bail!("in-place trace call at {} while the node is at {}", call.data_version, self.data_version);
                }
                for s in &call.writes {
                    self.conn.execute_batch(s)?;
                }
                self.hook(call.data_version, &call.writes)
            }
        }
    }

    /// lightningd dies after the plugin acknowledged the change and before
    /// COMMIT: the change is rolled back and the plugin's stdin closes.
    /// Returns the plugin's exit status.
    pub fn crash_after_hook(&mut self, statements: &[String]) -> Result<(HookOutcome, Option<ExitStatus>)> {
        let mut writes = statements.to_vec();
        writes.push(format!("{INCREMENT_PREFIX}{}", self.data_version));
        let outcome = self.run_txn(&writes, TxnEnd::CrashBeforeCommit)?;
        let status = self.close_plugin()?;
        Ok((outcome, status))
    }

    /// lightningd goes away: closes the plugin's stdin and waits for it to exit.
    pub fn close_plugin(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut p) = self.plugin.take() else { return Ok(None) };
        drop(p.stdin.take());
        wait_bounded(&mut p.child, ANSWER_TIMEOUT).map(Some)
    }

    /// A clean stop: the `shutdown` notification, then lightningd waits for
    /// the plugin to exit on its own (up to 30 s in lightningd; here the
    /// answer timeout). Returns how long the plugin took to exit.
    pub fn shutdown_plugin(&mut self) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        self.send_raw(json!({"jsonrpc": "2.0", "method": "shutdown", "params": {}}).to_string().as_bytes())?;
        let mut p = self.plugin.take().ok_or_else(|| anyhow!("no plugin running"))?;
        // Drain its output (final log lines) so it never blocks on a full pipe.
        let logs = self.logs.clone();
        let mut reader = p.reader;
        let drain = std::thread::spawn(move || {
            while let Ok(Frame::Message(m)) = reader.next(Some(ANSWER_TIMEOUT)) {
                logs.lock().unwrap_or_else(|e| e.into_inner()).push(String::from_utf8_lossy(&m).into_owned());
            }
        });
        let status = wait_bounded(&mut p.child, ANSWER_TIMEOUT)?;
        let elapsed = started.elapsed();
        drop(p.stdin.take());
        let _ = drain.join();
        Ok((status, elapsed))
    }

    /// SIGKILL to the plugin (lightningd sees its stdout close).
    pub fn kill_plugin(&mut self) -> Result<()> {
        if let Some(mut p) = self.plugin.take() {
            p.child.kill().ok();
            p.child.wait().context("waiting for the killed plugin")?;
        }
        Ok(())
    }

    /// The plugin's pid, to kill it from outside.
    pub fn plugin_pid(&self) -> Option<u32> {
        self.plugin.as_ref().map(|p| p.child.id())
    }

    /// Puts another database in place (an operator restoring an old copy).
    pub fn replace_database(&mut self, from: &Path) -> Result<()> {
        let src = Connection::open(from).with_context(|| format!("cannot open {}", from.display()))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)?;
            backup.run_to_completion(1024, Duration::ZERO, None)?;
        }
        self.data_version = crate::snapshot::data_version(&self.conn)?.unwrap_or(0);
        Ok(())
    }

    /// A consistent copy of the committed database.
    pub fn copy_database(&self, dest: &Path) -> Result<()> {
        let mut dst = Connection::open(dest)?;
        let backup = rusqlite::backup::Backup::new(&self.conn, &mut dst)?;
        backup.run_to_completion(1024, Duration::ZERO, None)?;
        Ok(())
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            drop(p.stdin.take());
            if wait_bounded(&mut p.child, Duration::from_secs(10)).is_err() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::unix::process::ExitStatusExt;
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(waitpid(pid, None));
    });
    let to_status = |w: Result<WaitStatus, nix::Error>| -> Result<ExitStatus> {
        match w? {
            WaitStatus::Exited(_, code) => Ok(ExitStatus::from_raw(code << 8)),
            WaitStatus::Signaled(_, sig, _) => Ok(ExitStatus::from_raw(sig as i32)),
            other => bail!("unexpected wait status {other:?}"),
        }
    };
    match rx.recv_timeout(timeout) {
        Ok(w) => to_status(w),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            bail!("process {pid} did not exit within {timeout:?}; killed it");
        }
    }
}
