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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_wallet_is_the_default_database() {
        assert_eq!(
            effective_wallet_dsn(None, Path::new("/home/ln/.lightning/bitcoin")),
            "sqlite3:///home/ln/.lightning/bitcoin/lightningd.sqlite3"
        );
        assert_eq!(effective_wallet_dsn(Some("postgres://db".into()), Path::new("/x")), "postgres://db");
    }
}
