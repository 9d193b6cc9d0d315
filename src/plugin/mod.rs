//! cln-replica as lightningd's plugin: the message loop.
//!
//! One thread reads lightningd's messages and answers them in order; the
//! `db_write` hook is answered inline (lightningd waits for it anyway). The
//! loop ends when lightningd closes stdin, or, after the `shutdown`
//! notification, once no message has come for `shutdown_quiet_ms`: lightningd
//! would otherwise hold `stop` for 30 s waiting for us (docs/LIGHTNINGD.md, "Shutdown"). Either way
//! the journal is sealed before the process exits.

pub mod background;
pub mod engine;
pub mod guard;
pub mod protocol;

use crate::device::RealDevice;
use crate::status;
use engine::Engine;
use protocol::{Frame, FrameReader, Incoming, Output};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether this process was started by lightningd as a plugin.
pub fn started_by_lightningd() -> bool {
    std::env::var_os("LIGHTNINGD_PLUGIN").is_some_and(|v| v == "1")
}

fn manifest() -> serde_json::Value {
    json!({
        "options": [],
        "rpcmethods": [{
            "name": "replica-status",
            "usage": "",
            "description": "Show what cln-replica's journal holds and whether it is in sync",
        }, {
            "name": "replica-compact",
            "usage": "",
            "description": "Compact cln-replica's journal in the background: a new generation rolled up from the \
                            current one (its snapshot plus its records); see replica-status for progress",
        }],
        "subscriptions": ["shutdown"],
        "hooks": [{"name": "db_write"}],
        "dynamic": false,
        "nonnumericids": true,
    })
}

/// Runs the plugin on stdin/stdout; returns the process exit code.
pub fn run() -> i32 {
    // First, while this process has a single thread (it forks).
    guard::start();
    // Whatever the build's panic strategy, a panic in any thread ends the
    // process: lightningd then sees its important plugin die and stops,
    // rather than waiting on a hook nobody will answer.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let out = Arc::new(Output::new(Box::new(std::io::stdout())));
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut engine = Engine::new(cwd, out.clone(), Arc::new(RealDevice));
    let reader = FrameReader::new(std::io::stdin(), Some(0));
    let code = serve(reader, &out, &mut engine);
    guard::release();
    code
}

/// The loop, over any reader (tests feed it directly).
pub fn serve<R: std::io::Read>(mut reader: FrameReader<R>, out: &Arc<Output>, engine: &mut Engine) -> i32 {
    let mut shutdown: Option<Duration> = None;
    let stop_publisher = Arc::new(AtomicBool::new(false));
    let mut publisher_started = false;
    // Started once the configuration is known (at the first hook or init,
    // never at getmanifest): a refusal before init still raises its alert.
    let mut monitor: Option<crate::health::monitor::Monitor> = None;
    let code = loop {
        let frame = match reader.next(shutdown) {
            Ok(f) => f,
            Err(e) => {
                out.log("error", &format!("cln-replica: {e}; stopping"));
                break 1;
            }
        };
        let msg = match frame {
            Frame::Message(m) => m,
            Frame::Eof => break 0,
            Frame::Timeout => {
                out.log("info", "no database writes since the shutdown notification: sealing the journal");
                break 0;
            }
        };
        let started = Instant::now();
        let incoming: Incoming = match serde_json::from_slice(&msg) {
            Ok(m) => m,
            Err(e) => {
                out.log("error", &format!("cln-replica: unreadable message from lightningd ({e}); stopping"));
                break 1;
            }
        };
        let method = incoming.method.as_deref().unwrap_or("");
        let Some(id) = incoming.id else {
            if method == "shutdown" {
                let quiet = engine.config().map(|c| c.shutdown_quiet_ms).unwrap_or(500);
                shutdown = Some(Duration::from_millis(quiet));
            }
            continue;
        };
        let sent = match method {
            "db_write" => {
                let answer = engine.db_write(incoming.params);
                let r = out.reply(id, &answer.to_json());
                engine.status.record_hook(started.elapsed().as_micros() as u64);
                r
            }
            "getmanifest" => out.reply(id, &manifest().to_string()),
            "init" => {
                if let Err(why) = engine.ensure_ready() {
                    // Answering init would let lightningd run on; `disable`
                    // would silently drop an important plugin. Exit instead:
                    // lightningd stops because this plugin is important.
                    let _ = out.reply_error(id, -32600, &why.to_string());
                    break 1;
                }
                check_wallet_in_background(incoming.params, engine, out);
                if !publisher_started {
                    if let Some(path) = engine.config().and_then(|c| c.status_file.clone()) {
                        status::spawn_publisher(engine.status.clone(), path, stop_publisher.clone());
                        publisher_started = true;
                    }
                }
                out.reply(id, "{}")
            }
            "replica-status" => {
                let mut v = serde_json::to_value(engine.status.snapshot()).expect("json");
                v["compaction"] = serde_json::to_value(engine.compaction_status()).expect("json");
                v["mirror"] = serde_json::to_value(engine.mirror_status()).expect("json");
                out.reply(id, &v.to_string())
            }
            "replica-compact" => match engine.request_compaction() {
                Ok(g) => out.reply(
                    id,
                    &json!({"started": true, "generation": g,
                            "note": "runs in the background; the switch happens at the next database write"})
                    .to_string(),
                ),
                Err(why) => out.reply_error(id, -32600, &why.to_string()),
            },
            other => out.reply_error(id, -32601, &format!("cln-replica has no method {other:?}")),
        };
        if let Err(e) = sent {
            eprintln!("cln-replica: cannot answer lightningd: {e}");
            break 1;
        }
        if monitor.is_none() && matches!(method, "db_write" | "init") {
            monitor = start_monitor(engine, out);
        }
    };
    engine.seal();
    if publisher_started {
        stop_publisher.store(true, Ordering::Release);
        if let Some(path) = engine.config().and_then(|c| c.status_file.clone()) {
            let _ = status::write_status_file(&path, &engine.status.snapshot());
        }
    }
    let _ = engine.status.flush_hook_trace();
    if let Some(m) = monitor {
        m.finish();
    }
    code
}

/// The health thread (device space, metrics, on_alert), if the configuration is loaded.
fn start_monitor(engine: &Engine, out: &Arc<Output>) -> Option<crate::health::monitor::Monitor> {
    let settings = crate::health::monitor::Settings::from_config(engine.config()?);
    match crate::health::monitor::Monitor::spawn(settings, engine.status.clone(), out.clone()) {
        Ok(m) => Some(m),
        Err(e) => {
            out.log("warn", &format!("cln-replica: cannot start the health thread: {e}"));
            None
        }
    }
}

/// After `init`: ask lightningd which wallet it uses. With PostgreSQL the
/// hook never carries statements (cln-replica supports SQLite only), and a
/// database other than the configured one would make every snapshot wrong.
/// Either way the plugin exits, which stops lightningd.
fn check_wallet_in_background(params: Option<&serde_json::value::RawValue>, engine: &Engine, out: &Arc<Output>) {
    let Some(params) = params else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(params.get()) else { return };
    let conf = &v["configuration"];
    let (Some(dir), Some(rpc)) = (conf["lightning-dir"].as_str(), conf["rpc-file"].as_str()) else { return };
    let socket = Path::new(dir).join(rpc);
    let lightning_dir = PathBuf::from(dir);
    let Some(database) = engine.config().map(|c| c.database.clone()) else { return };
    let out = out.clone();
    std::thread::Builder::new()
        .name("wallet-check".into())
        .spawn(move || {
            let dsn = match crate::rpc::wallet_dsn(&socket) {
                Ok(d) => crate::rpc::effective_wallet_dsn(d, &lightning_dir),
                Err(e) => {
                    out.log("warn", &format!("cln-replica: could not check lightningd's wallet setting: {e:#}"));
                    return;
                }
            };
            if let Some(problem) = wallet_problem(&dsn, &database) {
                out.log("error", &format!("cln-replica: {problem}; stopping lightningd"));
                eprintln!("cln-replica: {problem}");
                guard::release();
                std::process::exit(1);
            }
        })
        .expect("spawn the wallet check");
}

/// What is wrong with lightningd's wallet DSN for this configuration, if anything.
pub fn wallet_problem(dsn: &str, database: &Path) -> Option<String> {
    if dsn.starts_with("postgres") {
        return Some(format!(
            "lightningd uses a PostgreSQL wallet ({}); cln-replica supports SQLite wallets only",
            dsn.split('@').next_back().unwrap_or("postgres")
        ));
    }
    let path = dsn.strip_prefix("sqlite3://")?;
    // `sqlite3://main:replica`: lightningd's own replica follows the colon.
    let main = path.split(':').next().unwrap_or(path);
    let same = match (std::fs::canonicalize(main), std::fs::canonicalize(database)) {
        (Ok(a), Ok(b)) => a == b,
        _ => Path::new(main) == database,
    };
    (!same).then(|| {
        format!(
            "lightningd's wallet is {main} but cln-replica.toml names {} as the database: set `database = \"{main}\"`",
            database.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wallet_problems() {
        assert!(wallet_problem("postgres://user:secret@db/ln", Path::new("/x")).unwrap().contains("PostgreSQL"));
        assert!(!wallet_problem("postgres://user:secret@db/ln", Path::new("/x")).unwrap().contains("secret"));
        assert_eq!(wallet_problem("sqlite3:///a/lightningd.sqlite3", Path::new("/a/lightningd.sqlite3")), None);
        assert_eq!(
            wallet_problem("sqlite3:///a/lightningd.sqlite3:/b/replica", Path::new("/a/lightningd.sqlite3")),
            None
        );
        assert!(wallet_problem("sqlite3:///other.sqlite3", Path::new("/a/lightningd.sqlite3")).is_some());
    }
}
