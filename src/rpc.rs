//! A small client for lightningd's JSON-RPC unix socket (`lightning-rpc`).
//!
//! Used off the hook's path only: the plugin checks lightningd's `wallet`
//! after `init`, and the panel asks lightningd to `stop`. Calling lightningd
//! from inside `db_write` would deadlock it (it waits for the hook).

use crate::plugin::protocol::{Frame, FrameReader};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Calls `method` with `params` and returns its `result`.
pub fn call(socket: &Path, method: &str, params: Value, timeout: Duration) -> Result<Value> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("cannot connect to lightningd at {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = serde_json::json!({"jsonrpc": "2.0", "id": format!("cln-replica:{method}"), "method": method, "params": params});
    stream.write_all(request.to_string().as_bytes())?;
    let mut reader = FrameReader::new(stream, None);
    let msg = match reader.next(None).with_context(|| format!("no answer from lightningd to {method}"))? {
        Frame::Message(m) => m,
        Frame::Eof | Frame::Timeout => bail!("lightningd closed the connection before answering {method}"),
    };
    let mut v: Value =
        serde_json::from_slice(&msg).with_context(|| format!("invalid answer from lightningd to {method}"))?;
    if let Some(err) = v.get("error") {
        bail!("lightningd refused {method}: {err}");
    }
    v.get_mut("result").map(Value::take).ok_or_else(|| anyhow!("lightningd's answer to {method} has no result"))
}

/// lightningd's `wallet` setting (a DSN such as `sqlite3:///path` or
/// `postgres://...`), from `listconfigs`; `None` when it is not set.
/// lightningd (v26.06) reports `wallet` only when it was given explicitly:
/// with the default wallet the answer is `{"configs":{}}`.
pub fn wallet_dsn(socket: &Path) -> Result<Option<String>> {
    let r = call(socket, "listconfigs", serde_json::json!({"config": "wallet"}), Duration::from_secs(30))?;
    if r.pointer("/configs/wallet").is_none() {
        return Ok(None);
    }
    r.pointer("/configs/wallet/value_str")
        .and_then(Value::as_str)
        .map(|s| Some(s.to_string()))
        .ok_or_else(|| anyhow!("listconfigs reported the wallet setting without a value: {r}"))
}

/// The wallet lightningd uses: the reported setting, or its default,
/// `lightningd.sqlite3` in the network directory (`lightning-dir` in the
/// plugin's `init`).
pub fn effective_wallet_dsn(reported: Option<String>, lightning_dir: &Path) -> String {
    reported.unwrap_or_else(|| format!("sqlite3://{}", lightning_dir.join(crate::config::DEFAULT_DATABASE).display()))
}

/// What came of asking lightningd to `stop`.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// lightningd accepted (its answer, or that it closed the connection on
    /// its way down).
    Stopping(String),
    /// Nothing listens on the socket: lightningd is not running.
    NotRunning,
}

/// Asks lightningd to `stop` (the panel's safe shutdown). Whether it has
/// stopped is for the caller to check (the plugin's sealed status): this
/// only fails if lightningd is there and refuses, or the socket is unusable.
pub fn stop(socket: &Path, timeout: Duration) -> Result<StopOutcome> {
    match call(socket, "stop", serde_json::json!({}), timeout) {
        Ok(v) => Ok(StopOutcome::Stopping(v.to_string())),
        // Only connecting yields these: no socket, or no one listening.
        Err(e)
            if e.root_cause().downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
            }) =>
        {
            Ok(StopOutcome::NotRunning)
        }
        // lightningd may close the socket before answering as it goes down.
        Err(e) if e.to_string().contains("closed the connection") => {
            Ok(StopOutcome::Stopping("no answer (connection closed while stopping)".into()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    /// A one-shot lightningd: reads the request, then sends `reply` (or
    /// nothing) and closes.
    fn serve_once(socket: &Path, reply: Option<&'static str>) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            if let Some(r) = reply {
                s.write_all(r.as_bytes()).unwrap();
            }
        })
    }

    #[test]
    fn an_unset_wallet_is_the_default_database() {
        assert_eq!(
            effective_wallet_dsn(None, Path::new("/home/ln/.lightning/bitcoin")),
            "sqlite3:///home/ln/.lightning/bitcoin/lightningd.sqlite3"
        );
        assert_eq!(effective_wallet_dsn(Some("postgres://db".into()), Path::new("/x")), "postgres://db");
    }

    #[test]
    fn stop_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(stop(&dir.path().join("absent"), t).unwrap(), StopOutcome::NotRunning);
        // A socket file nobody listens on: connection refused.
        drop(UnixListener::bind(dir.path().join("dead")).unwrap());
        assert_eq!(stop(&dir.path().join("dead"), t).unwrap(), StopOutcome::NotRunning);
        let s = dir.path().join("a");
        let h = serve_once(
            &s,
            Some("{\"jsonrpc\":\"2.0\",\"id\":\"cln-replica:stop\",\"result\":\"Shutdown complete\"}\n\n"),
        );
        assert_eq!(stop(&s, t).unwrap(), StopOutcome::Stopping("\"Shutdown complete\"".into()));
        h.join().unwrap();
        let s = dir.path().join("b");
        let h = serve_once(&s, None);
        assert!(matches!(stop(&s, t).unwrap(), StopOutcome::Stopping(w) if w.contains("closed")));
        h.join().unwrap();
        let s = dir.path().join("c");
        let h = serve_once(
            &s,
            Some("{\"jsonrpc\":\"2.0\",\"id\":\"cln-replica:stop\",\"error\":{\"code\":-1,\"message\":\"no\"}}\n\n"),
        );
        assert!(stop(&s, t).unwrap_err().to_string().contains("refused stop"));
        h.join().unwrap();
    }
}
