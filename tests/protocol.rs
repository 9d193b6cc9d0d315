//! The plugin protocol edge by edge, against the real binary: framing, ids,
//! the manifest, bad input, a missing or wrong configuration, a PostgreSQL
//! wallet.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

/// Runs the binary as a plugin in `dir` with `input` on stdin; returns its
/// exit code and every JSON message it wrote.
fn run_plugin(dir: &std::path::Path, input: &[u8]) -> (i32, Vec<Value>) {
    let mut child = Command::new(EXE)
        .current_dir(dir)
        .env("LIGHTNINGD_PLUGIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let msgs = serde_json::Deserializer::from_str(&out).into_iter::<Value>().map(Result::unwrap).collect();
    (status.code().unwrap_or(-1), msgs)
}

fn answer<'a>(msgs: &'a [Value], id: &Value) -> &'a Value {
    msgs.iter().find(|m| &m["id"] == id).unwrap_or_else(|| panic!("no answer to {id}: {msgs:?}"))
}

#[test]
fn getmanifest_touches_no_files_and_registers_the_hook() {
    let s = Setup::new("");
    let before: Vec<_> = walk(s.tmp.path());
    let (code, msgs) =
        run_plugin(&s.node_dir, br#"{"jsonrpc":"2.0","id":"cln:getmanifest#1","method":"getmanifest","params":{}}"#);
    assert_eq!(code, 0);
    let m = &answer(&msgs, &json!("cln:getmanifest#1"))["result"];
    assert_eq!(m["hooks"], json!([{"name": "db_write"}]));
    assert_eq!(m["dynamic"], json!(false));
    assert_eq!(m["nonnumericids"], json!(true));
    assert_eq!(m["subscriptions"], json!(["shutdown"]));
    assert_eq!(walk(s.tmp.path()), before, "getmanifest created or changed files");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn ids_are_echoed_exactly_and_framing_tolerates_any_whitespace() {
    let s = Setup::new("");
    let input = b"{\"jsonrpc\":\"2.0\",\"id\":\"cln:getmanifest#1\",\"method\":\"getmanifest\",\"params\":{}}\n\n \t\r\n\
        {\"jsonrpc\":\"2.0\",\"id\":42,\"method\":\"replica-status\",\"params\":{}}{\"jsonrpc\":\"2.0\",\"id\":{\"weird\":[1]},\"method\":\"nope\",\"params\":{}}\n";
    let (code, msgs) = run_plugin(&s.node_dir, input);
    assert_eq!(code, 0);
    assert!(answer(&msgs, &json!("cln:getmanifest#1"))["result"].is_object());
    assert!(answer(&msgs, &json!(42))["result"]["state"].is_string());
    let unknown = answer(&msgs, &json!({"weird": [1]}));
    assert_eq!(unknown["error"]["code"], json!(-32601));
}

#[test]
fn malformed_input_stops_the_plugin() {
    let s = Setup::new("");
    for input in [&b"{\"id\":1,\"method\":\"getmanifest\"} garbage"[..], b"{\"id\":1,", b"[1,2]", b"\xff\xfe"] {
        let (code, msgs) = run_plugin(&s.node_dir, input);
        assert_ne!(code, 0, "{:?} must stop the plugin", String::from_utf8_lossy(input));
        assert!(msgs.iter().all(|m| m["result"]["result"] != json!("continue")));
    }
}

fn db_write(id: &str, version: u32, writes: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"db_write","params":{"data_version":version,"writes":writes}}).to_string()
}

#[test]
fn bad_db_write_parameters_are_refused() {
    let s = Setup::new("");
    for (i, writes) in [json!([1, 2]), json!("INSERT"), json!(null), json!([])].into_iter().enumerate() {
        let id = format!("cln:db_write#{i}");
        let (_, msgs) = run_plugin(&s.node_dir, db_write(&id, 1, writes.clone()).as_bytes());
        let a = answer(&msgs, &json!(id));
        assert_eq!(a["result"]["result"], json!("abort"), "{writes}: {a}");
    }
    let (_, msgs) = run_plugin(&s.node_dir, db_write("e", 1, json!([])).as_bytes());
    assert!(answer(&msgs, &json!("e"))["result"]["error"].as_str().unwrap().contains("SQLite"));
}

#[test]
fn a_missing_or_invalid_configuration_refuses_the_hook_and_stops_at_init() {
    let s = Setup::new("");
    let cfg = s.node_dir.join("cln-replica.toml");
    for (content, expect) in [
        (None, "no configuration at"),
        (Some("journal = \"/x\"\nsegment_bytes = 12\n"), "segment_bytes"),
        (Some("jounral = \"/x\"\n"), "jounral"),
        (Some("journal = \"/proc/cln-replica-cannot-be-here\"\n"), "cannot create the journal directory"),
    ] {
        match content {
            None => {
                let _ = std::fs::remove_file(&cfg);
            }
            Some(c) => std::fs::write(&cfg, c).unwrap(),
        }
        let incr = format!("{}0", cln_replica::state::INCREMENT_PREFIX);
        let input = db_write("w", 1, json!(["CREATE TABLE x (a);", incr]))
            + r#"{"jsonrpc":"2.0","id":"i","method":"init","params":{"options":{},"configuration":{}}}"#;
        let (code, msgs) = run_plugin(&s.node_dir, input.as_bytes());
        let why = answer(&msgs, &json!("w"))["result"]["error"].as_str().unwrap().to_string();
        assert!(why.contains(expect), "{content:?}: {why}");
        assert_ne!(code, 0, "{content:?}: the plugin must exit so that lightningd stops");
        let logged = msgs.iter().any(|m| m["method"] == json!("log") && m["params"]["level"] == json!("error"));
        assert!(logged, "{content:?}: one clear log line");
    }
}

#[test]
fn the_config_may_live_elsewhere() {
    let s = Setup::new("");
    let elsewhere = s.path("elsewhere.toml");
    std::fs::rename(s.node_dir.join("cln-replica.toml"), &elsewhere).unwrap();
    let mut node = s.node();
    node.start_plugin(std::path::Path::new(EXE), &[("CLN_REPLICA_CONFIG", elsewhere.to_str().unwrap())]).unwrap();
    for c in cln_replica::sim::workload::Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    s.assert_restores_to(&node);
}

/// A stand-in for lightningd's JSON-RPC socket that answers `listconfigs`.
fn fake_rpc(dir: &std::path::Path, wallet: String) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(dir.join("lightning-rpc")).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req: Value = serde_json::from_slice(&buf[..n]).unwrap_or(json!({}));
            let resp = json!({"jsonrpc":"2.0","id":req["id"],"result":{"configs":{"wallet":{"value_str":wallet,"source":"cmdline"}}}});
            let _ = conn.write_all(resp.to_string().as_bytes());
        }
    })
}

#[test]
fn a_postgresql_wallet_stops_lightningd() {
    let s = Setup::new("");
    let rpc = fake_rpc(&s.node_dir, "postgres://user:secret@127.0.0.1/lightning".into());
    let mut node = s.node_with_plugin();
    node.init_plugin().unwrap();
    // The plugin exits on its own (EOF on its stdout) after asking lightningd.
    assert_eq!(node.await_answer("nothing").unwrap(), None);
    let status = node.close_plugin().unwrap().unwrap();
    rpc.join().unwrap();
    assert!(!status.success());
    assert!(logs_contain(&node, "PostgreSQL"), "{:?}", node.logs());
    assert!(!node.logs().iter().any(|l| l.contains("secret")), "credentials never logged");
}

#[test]
fn a_wallet_other_than_the_configured_database_stops_lightningd() {
    let s = Setup::new("");
    let rpc = fake_rpc(&s.node_dir, "sqlite3:///somewhere/else.sqlite3".into());
    let mut node = s.node_with_plugin();
    node.init_plugin().unwrap();
    assert_eq!(node.await_answer("nothing").unwrap(), None);
    let status = node.close_plugin().unwrap().unwrap();
    rpc.join().unwrap();
    assert!(!status.success());
    assert!(logs_contain(&node, "set `database"), "{:?}", node.logs());
}
