//! `cln-replica simnode`: a simulated lightningd that runs until stopped, for
//! the appliance image's stand-in lightningd service (image/README.md).
//!
//! It is [`SimNode`] (a real SQLite database, the real plugin binary spoken
//! to over the plugin protocol) with a CLN-shaped workload at a modest rate,
//! plus what a service needs from lightningd: a JSON-RPC socket answering
//! `stop` (the panel's safe shutdown), `listconfigs` (the plugin's wallet
//! check) and `getinfo`, and a clean stop on SIGTERM or `stop` the way
//! lightningd does it (the `shutdown` notification, then it waits for the
//! plugin to exit on its own), so systemd can stop it.
//!
//! Restarts resume the workload: every workload change is one transaction, so
//! the database's data_version says how many were committed, and the
//! generator (deterministic for its seed) is wound forward that far.
//!
//! Not Core Lightning: no peers, no chain, no payments; only the database
//! writes and the plugin protocol around them.

use crate::sim::workload::Workload;
use crate::sim::{Change, HookOutcome, SimNode};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run a SIMULATED lightningd (not Core Lightning) with a cln-replica plugin, until stopped
///
/// A stand-in for lightningd where none is available (the appliance image's
/// lightningd.service): a real SQLite database in DIR and the real plugin
/// binary as its important plugin over the plugin protocol, fed a CLN-shaped
/// workload; a JSON-RPC socket answering `stop`, `getinfo` and `listconfigs`;
/// a clean stop (shutdown notification, then waiting for the plugin to exit)
/// on SIGTERM, SIGINT or `stop`. It has no peers, chain or payments.
#[derive(clap::Args)]
pub struct Args {
    /// The network directory (lightningd's lightning-dir/NETWORK): the
    /// database and cln-replica.toml; the plugin runs in it
    #[arg(long)]
    dir: PathBuf,
    /// The plugin to run (default: this executable)
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// The JSON-RPC socket, absolute or relative to --dir (lightningd's `rpc-file`)
    #[arg(long, default_value = "lightning-rpc")]
    rpc_file: PathBuf,
    /// The socket's permissions, in octal (lightningd's `rpc-file-mode`)
    #[arg(long, default_value = "0600")]
    rpc_file_mode: String,
    /// One workload change this often, in milliseconds
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// Workload seed; keep it across restarts (the workload resumes from the
    /// database's data_version)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop by itself after this many changes in this run (0: run until stopped)
    #[arg(long, default_value_t = 0)]
    changes: u64,
}

/// Set by SIGTERM and SIGINT.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Release);
}

/// A progress line this often, in seconds.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// An RPC client must send its request within this long.
const RPC_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The stop flags are checked this often while waiting between changes.
const POLL: Duration = Duration::from_millis(50);

fn log(msg: &str) {
    eprintln!("cln-replica simnode: {msg}");
}

/// What the RPC thread and the main loop share.
struct Shared {
    stop_requested: AtomicBool,
    finished: AtomicBool,
    data_version: AtomicU32,
    dir: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mode = u32::from_str_radix(a.rpc_file_mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("--rpc-file-mode {}: not an octal permission such as 0600", a.rpc_file_mode))?;
    if a.interval_ms == 0 || a.interval_ms > 3_600_000 {
        bail!("--interval-ms must be between 1 and 3600000");
    }
    let plugin = match &a.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir).with_context(|| format!("cannot resolve {}", a.dir.display()))?;
    let socket = dir.join(&a.rpc_file);
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(sig, &action) }.context("cannot install the signal handler")?;
    }
    log(&format!(
        "a SIMULATED lightningd (cln-replica's simulator, not Core Lightning) in {}, plugin {}, one change every {} ms",
        dir.display(),
        plugin.display(),
        a.interval_ms
    ));

    let mut node = SimNode::open(&dir)?;
    let shared = Arc::new(Shared {
        stop_requested: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        data_version: AtomicU32::new(node.data_version()),
        dir: dir.clone(),
    });
    // The socket first, as lightningd has it up before its plugins' init.
    let listener = bind_rpc(&socket, mode)?;
    let rpc = {
        let shared = shared.clone();
        std::thread::Builder::new().name("rpc".into()).spawn(move || serve_rpc(listener, &shared))?
    };
    let result = run_node(&a, &plugin, &socket, &mut node, &shared);
    shared.finished.store(true, Ordering::Release);
    let _ = rpc.join();
    let _ = std::fs::remove_file(&socket);
    result
}

fn run_node(a: &Args, plugin: &Path, socket: &Path, node: &mut SimNode, shared: &Shared) -> Result<ExitCode> {
    // The guard (src/plugin/guard.rs) watches a parent named lightningd; this
    // one is not, so ask for it: the plugin dying then kills this process, as
    // it would kill lightningd.
    node.start_plugin(plugin, &[("CLN_REPLICA_GUARD", "1")])?;
    let schema = Workload::schema();
    let schema_txns = schema.iter().filter(|c| matches!(c, Change::Txn(_))).count() as u32;
    let start_version = node.data_version();
    // lightningd's first start (or the rest of an interrupted one): the
    // schema and migrations, before init, as lightningd runs them.
    let mut txns = 0;
    for c in &schema {
        let is_txn = matches!(c, Change::Txn(_));
        if txns < start_version {
            txns += u32::from(is_txn);
            continue;
        }
        txns += u32::from(is_txn);
        if let Some(code) = check(node.apply(c)?, "a schema change", node) {
            return Ok(code);
        }
    }
    let init = json!({
        "options": {},
        "configuration": {
            "lightning-dir": node.dir,
            "rpc-file": a.rpc_file,
            "startup": true,
            "network": "regtest",
            "feature_set": {},
            "lightning-dir-root": node.dir.parent().unwrap_or(&node.dir),
        }
    });
    let answer = node.request("init", init)?.context("the plugin exited during init")?;
    if answer.get("error").is_some() {
        bail!("the plugin refused init: {answer}");
    }
    let mut workload = Workload::new(a.seed);
    let resumed = node.data_version().saturating_sub(schema_txns);
    for _ in 0..resumed {
        workload.next_change();
    }
    log(&format!(
        "started at data_version {} ({} workload changes before this run); JSON-RPC on {}",
        node.data_version(),
        resumed,
        socket.display()
    ));
    drain_logs(node);

    let interval = Duration::from_millis(a.interval_ms);
    let mut done = 0u64;
    let mut last_progress = Instant::now();
    let stopping = || SIGNALLED.load(Ordering::Acquire) || shared.stop_requested.load(Ordering::Acquire);
    while !stopping() && (a.changes == 0 || done < a.changes) {
        let change = workload.next_change();
        let outcome = node.apply(&change)?;
        drain_logs(node);
        if let Some(code) = check(outcome, "a workload change", node) {
            return Ok(code);
        }
        done += 1;
        shared.data_version.store(node.data_version(), Ordering::Release);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            let mut lat = std::mem::take(&mut node.hook_latencies_us);
            lat.sort_unstable();
            log(&format!(
                "data_version {}, {done} changes this run; db_write round trip p50 {} us, max {} us (last {} s)",
                node.data_version(),
                super::demo::percentile(&lat, 0.5),
                lat.last().copied().unwrap_or(0),
                PROGRESS_EVERY.as_secs()
            ));
            last_progress = Instant::now();
        }
        let next = Instant::now() + interval;
        while !stopping() && Instant::now() < next {
            std::thread::sleep(POLL.min(next.saturating_duration_since(Instant::now())));
        }
    }
    let why = if SIGNALLED.load(Ordering::Acquire) {
        "a signal"
    } else if shared.stop_requested.load(Ordering::Acquire) {
        "the stop command"
    } else {
        "--changes"
    };
    log(&format!(
        "stopping on {why} at data_version {} after {done} changes: shutdown notification to the plugin",
        node.data_version()
    ));
    let (status, took) = node.shutdown_plugin()?;
    drain_logs(node);
    log(&format!(
        "the plugin exited ({status}) {} ms after the shutdown notification; final data_version {}",
        took.as_millis(),
        node.data_version()
    ));
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `None` to go on; an exit code when lightningd would stop.
fn check(outcome: HookOutcome, what: &str, node: &mut SimNode) -> Option<ExitCode> {
    match outcome {
        HookOutcome::Continue => None,
        HookOutcome::Refused(answer) => {
            drain_logs(node);
            log(&format!("the plugin refused {what} ({answer}): not committed; stopping, as lightningd does"));
            Some(ExitCode::FAILURE)
        }
        HookOutcome::PluginGone => {
            drain_logs(node);
            log(&format!("the important plugin died before answering {what}: not committed; stopping"));
            Some(ExitCode::FAILURE)
        }
    }
}

/// The plugin's log lines and stderr, to ours (the journal, under systemd).
fn drain_logs(node: &mut SimNode) {
    let lines = std::mem::take(&mut *node.logs.lock().unwrap_or_else(|e| e.into_inner()));
    for l in lines {
        eprintln!("plugin: {l}");
    }
}

fn bind_rpc(socket: &Path, mode: u32) -> Result<UnixListener> {
    if UnixStream::connect(socket).is_ok() {
        bail!("another lightningd answers on {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Answers JSON-RPC requests, one connection at a time, until the node has
/// stopped.
fn serve_rpc(listener: UnixListener, shared: &Shared) {
    while !shared.finished.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_connection(stream, shared) {
                    log(&format!("JSON-RPC connection: {e:#}"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                log(&format!("JSON-RPC accept failed: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

fn serve_connection(stream: UnixStream, shared: &Shared) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(RPC_READ_TIMEOUT))?;
    stream.set_write_timeout(Some(RPC_READ_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    for request in serde_json::Deserializer::from_reader(&stream).into_iter::<Value>() {
        let request = match request {
            Ok(r) => r,
            // The client closed the connection, or sent nothing in time.
            Err(e) if e.is_eof() || e.is_io() => return Ok(()),
            Err(e) => bail!("not JSON: {e}"),
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let answer = match method {
            "stop" => {
                shared.stop_requested.store(true, Ordering::Release);
                json!({"jsonrpc": "2.0", "id": id, "result": "Shutdown complete"})
            }
            "listconfigs" => json!({"jsonrpc": "2.0", "id": id, "result": {"configs": {}}}),
            "getinfo" => json!({"jsonrpc": "2.0", "id": id, "result": {
                "alias": "SIMULATED-lightningd",
                "version": "v26.06-sim (cln-replica simnode: not Core Lightning)",
                "network": "regtest",
                "lightning-dir": shared.dir,
                "db_data_version": shared.data_version.load(Ordering::Acquire),
                "num_peers": 0,
            }}),
            other => json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32601,
                "message": format!("Unknown command '{other}' (cln-replica's simulated lightningd answers stop, getinfo and listconfigs)"),
            }}),
        };
        out.write_all(format!("{answer}\n\n").as_bytes())?;
        if method == "stop" {
            log("stop requested over JSON-RPC");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn shared() -> Shared {
        Shared {
            stop_requested: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            data_version: AtomicU32::new(7),
            dir: PathBuf::from("/n"),
        }
    }

    /// Sends requests the way the project's own client does (one JSON
    /// object, no delimiter), then closes; returns the answers.
    fn exchange(requests: &[Value]) -> (Vec<Value>, Shared) {
        let (client, server) = UnixStream::pair().unwrap();
        let s = shared();
        let mut c = client.try_clone().unwrap();
        for r in requests {
            c.write_all(r.to_string().as_bytes()).unwrap();
        }
        client.shutdown(std::net::Shutdown::Write).unwrap();
        serve_connection(server, &s).unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let answers = text.split("\n\n").filter(|t| !t.is_empty()).map(|t| serde_json::from_str(t).unwrap()).collect();
        (answers, s)
    }

    #[test]
    fn answers_getinfo_and_unknown_methods_without_stopping() {
        let (a, s) = exchange(&[
            json!({"jsonrpc": "2.0", "id": 1, "method": "getinfo", "params": {}}),
            json!({"jsonrpc": "2.0", "id": "x", "method": "pay", "params": {}}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "listconfigs", "params": {"config": "wallet"}}),
        ]);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0]["id"], 1);
        assert_eq!(a[0]["result"]["db_data_version"], 7);
        assert!(a[0]["result"]["version"].as_str().unwrap().contains("not Core Lightning"));
        assert_eq!(a[1]["id"], "x");
        assert_eq!(a[1]["error"]["code"], -32601);
        // The plugin's wallet check: no `wallet` setting, so the default database.
        assert_eq!(a[2]["result"], json!({"configs": {}}));
        assert!(!s.stop_requested.load(Ordering::Acquire));
    }

    #[test]
    fn stop_is_answered_then_requested() {
        let (a, s) = exchange(&[json!({"jsonrpc": "2.0", "id": "cln-replica:stop", "method": "stop", "params": {}})]);
        assert_eq!(a[0]["result"], "Shutdown complete");
        assert!(s.stop_requested.load(Ordering::Acquire));
    }

    #[test]
    fn the_panel_client_stops_it_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("lightning-rpc");
        let listener = bind_rpc(&socket, 0o660).unwrap();
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
        // A second node on the same socket is refused while the first listens.
        assert!(bind_rpc(&socket, 0o600).unwrap_err().to_string().contains("another lightningd"));
        let s = Arc::new(shared());
        let server = {
            let s = s.clone();
            std::thread::spawn(move || serve_rpc(listener, &s))
        };
        let outcome = crate::rpc::stop(&socket, Duration::from_secs(10)).unwrap();
        assert!(matches!(outcome, crate::rpc::StopOutcome::Stopping(ref a) if a.contains("Shutdown complete")));
        assert!(s.stop_requested.load(Ordering::Acquire));
        s.finished.store(true, Ordering::Release);
        server.join().unwrap();
    }
}
