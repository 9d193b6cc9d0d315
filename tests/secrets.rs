//! A secret never appears in a log line, a hook's answer, the status file or
//! a command's output, whatever fails around it. Each case puts one secret
//! where an operator can put one (an S3 key in the configuration or a URL, an
//! SFTP password, a key file, an hsm_secret, a mistyped key's value), makes
//! that path fail, and searches everything the plugin and the CLI said.
//!
//! The S3 cases need a binary built with `--features remote` (run by
//! scripts/test.d/60-remote); without it they check the same output with
//! the "built without S3 support" refusal.

mod common;

use cln_replica::remote::crypto::Key;
use cln_replica::sim::workload::Workload;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "Zq8sEcReT0wJalrXUtnFEMIK7MDENGbPxRfiCYvalue";

/// What the plugin said, answered and published while `extra` configured it.
fn plugin_output(extra: &str) -> String {
    let s = Setup::new(extra);
    Key::generate().unwrap().write_new_file(&s.node_dir.join("k")).unwrap();
    let status = s.path("status.json");
    let conf = s.node_dir.join("cln-replica.toml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text = text.replacen('\n', &format!("\nstatus_file = {status:?}\n"), 1);
    std::fs::write(&conf, text).unwrap();
    let mut node = s.node_with_plugin();
    let mut said = vec![];
    for c in Workload::schema().into_iter().take(3) {
        // A refused change is rolled back: the next one cannot follow it.
        match node.apply(&c) {
            Ok(cln_replica::sim::HookOutcome::Continue) => said.push("continue".into()),
            other => {
                said.push(format!("{other:?}"));
                break;
            }
        }
    }
    if let Ok(init) = node.init_plugin() {
        said.push(init.to_string());
    }
    // Give the background workers a moment to fail and say so: bounded,
    // and the assertion is on what they said, not on when.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !node.logs().iter().any(|l| l.contains("destination")) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = node.shutdown_plugin();
    said.extend(node.logs());
    said.push(std::fs::read_to_string(&status).unwrap_or_default());
    said.join("\n")
}

fn assert_failed(what: &str, text: &str, needle: &str) {
    assert!(text.contains(needle), "{what}: the path did not fail as expected (no {needle:?}):\n{text}");
}

fn assert_secret_absent(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what}: the secret appears in:\n{text}");
    assert!(!text.contains(&SECRET[..12]), "{what}: part of the secret appears in:\n{text}");
}

#[test]
fn an_s3_secret_in_the_configuration_is_never_shown() {
    let out = plugin_output(&format!(
        "key_file = \"k\"\n[[destination]]\nurl = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:9\"\n\
         access_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"{SECRET}\"\n"
    ));
    assert_secret_absent("s3 secret_access_key", &out);
    assert_failed("s3 secret_access_key", &out, "s3://bucket");
}

#[test]
fn an_s3_secret_in_a_url_is_never_shown() {
    let out = plugin_output(&format!(
        "key_file = \"k\"\n[[destination]]\nurl = \"s3://bucket/p?endpoint=http://127.0.0.1:9&secret_access_key={SECRET}\"\n"
    ));
    assert_secret_absent("s3 secret in the url", &out);
    assert_failed("s3 secret in the url", &out, "s3://bucket");
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    Key::generate().unwrap().write_new_file(&key).unwrap();
    let url = format!("s3://bucket/p?endpoint=http://127.0.0.1:9&access_key_id=A&secret_access_key={SECRET}");
    let o = Command::new(EXE)
        .args(["restore", "--from", &url, "--key-file"])
        .arg(&key)
        .arg("--to")
        .arg(tmp.path().join("db"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_secret_absent("restore --from s3 url", &format!("{o:?}"));
    let o = Command::new(EXE).args(["status", "--from", &url, "--key-file"]).arg(&key).output().unwrap();
    assert_secret_absent("status --from s3 url", &format!("{o:?}"));
}

#[test]
fn an_sftp_password_is_never_shown() {
    let out = plugin_output(&format!(
        "key_file = \"k\"\n[[destination]]\nurl = \"sftp://bob:{SECRET}@127.0.0.1:9/backups\"\n"
    ));
    assert_secret_absent("sftp password", &out);
    let needle = if cfg!(feature = "remote-sftp") { "password" } else { "without SFTP support" };
    assert_failed("sftp password", &out, needle);
}

#[test]
fn a_key_file_or_hsm_secret_is_never_shown() {
    // A key file readable by others, and one that is not a key.
    for (contents, mode) in [(format!("{}\n", "ab".repeat(32)), 0o644), (format!("{SECRET}\n"), 0o600)] {
        let s = Setup::new("key_file = \"replica.key\"\n[[destination]]\nurl = \"file:///nonexistent/x\"\n");
        let key = s.node_dir.join("replica.key");
        std::fs::write(&key, &contents).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut node = s.node_with_plugin();
        let why = refusal(node.apply(&Workload::schema()[0]).unwrap());
        let all = format!("{why}\n{}", node.logs().join("\n"));
        assert!(!all.contains(contents.trim()), "key contents shown:\n{all}");
        assert_secret_absent("key file", &all);
    }
    // An hsm_secret that is not one: its bytes are never quoted.
    let s = Setup::new("hsm_secret = \"hsm_secret\"\n[[destination]]\nurl = \"file:///nonexistent/x\"\n");
    let hsm = s.node_dir.join("hsm_secret");
    std::fs::write(&hsm, format!("{}{SECRET} words that are not bip39", "\0".repeat(32))).unwrap();
    std::fs::set_permissions(&hsm, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut node = s.node_with_plugin();
    let why = refusal(node.apply(&Workload::schema()[0]).unwrap());
    assert_secret_absent("hsm_secret", &format!("{why}\n{}", node.logs().join("\n")));
    // And on the command line.
    let o = Command::new(EXE)
        .args(["restore", "--from", "file:///nonexistent/x", "--hsm-secret"])
        .arg(&hsm)
        .arg("--to")
        .arg(s.path("db"))
        .output()
        .unwrap();
    assert_secret_absent("restore --hsm-secret", &format!("{o:?}"));
}

#[test]
fn a_value_under_a_mistyped_key_is_never_shown() {
    for extra in [
        format!("key_file = \"k\"\n[[destination]]\nurl = \"s3://b/p\"\nsecret_access_kye = \"{SECRET}\"\n"),
        format!("remote_quorum = \"{SECRET}\"\n"),
        format!("secret = {SECRET}\n"),
    ] {
        let out = plugin_output(&extra);
        assert_secret_absent(&format!("config {extra:?}"), &out);
        let s = Setup::new(&extra);
        let o =
            Command::new(EXE).arg("status").arg("--config").arg(s.node_dir.join("cln-replica.toml")).output().unwrap();
        assert_secret_absent("status --config", &format!("{o:?}"));
    }
}

/// The drill's output and its result file, for destinations holding a
/// secret in the table, in a URL and as an SFTP password, each failing.
#[test]
fn the_drill_never_shows_a_secret() {
    let s = Setup::new(&format!(
        "key_file = \"k\"\nstatus_file = {:?}\n\
         [[destination]]\nurl = \"s3://bucket/a\"\nendpoint = \"http://127.0.0.1:9\"\n\
         access_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"{SECRET}\"\n\
         [[destination]]\nurl = \"s3://bucket/b?endpoint=http://127.0.0.1:9&access_key_id=A&secret_access_key={SECRET}\"\n\
         [[destination]]\nurl = \"sftp://bob:{SECRET}@127.0.0.1:9/backups\"\n",
        std::env::temp_dir().join("unused-status.json")
    ));
    Key::generate().unwrap().write_new_file(&s.node_dir.join("k")).unwrap();
    let result = s.path("drill-result.json");
    for json in [false, true] {
        let mut cmd = Command::new(EXE);
        cmd.args(["drill", "--lightning-dir"]).arg(&s.node_dir).arg("--result").arg(&result);
        if json {
            cmd.arg("--json");
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{o:?}");
        let all = format!("{o:?}\n{}", std::fs::read_to_string(&result).unwrap());
        assert_secret_absent("drill", &all);
        let r = cln_replica::drill::read_result(&result).unwrap();
        assert_eq!(r.destinations.len(), 3);
        for d in &r.destinations {
            assert_eq!(d.outcome, cln_replica::drill::Outcome::Failed, "{d:?}");
        }
        assert_failed("drill", &all, "sftp://bob@127.0.0.1:9/backups");
    }
}
