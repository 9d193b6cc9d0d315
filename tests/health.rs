//! The operator's view without a log, through the real plugin binary driven
//! as lightningd drives it: `metrics_file` parsed by the Prometheus
//! project's own parser of the text format (prometheus_client, installed by
//! scripts/setup.d/32-metrics), `on_alert` run with what it must receive,
//! and the new `replica-status` fields. A device that really fills is in
//! tests/device_full.rs (root, a loop-mounted ext4).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every wait on the plugin's background thread is bounded by this.
const WAIT_MAX: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it gives Some, at most [`WAIT_MAX`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT_MAX:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// The file parsed by prometheus_client.parser: {family: {type, samples: [[name, labels, value]]}}.
fn parse_with_prometheus_client(path: &Path) -> Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    out[f.name] = {"type": f.type, "help": f.documentation,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let o = std::process::Command::new("python3").arg("-c").arg(script).arg(path).output().expect("run python3");
    assert!(
        o.status.success(),
        "prometheus_client could not parse {} (missing? run scripts/setup.d/32-metrics): {}",
        path.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
        matches.then(|| s[2].as_f64()).flatten()
    })
}

fn status(node: &mut cln_replica::sim::SimNode) -> Value {
    node.request("replica-status", serde_json::json!({})).unwrap().unwrap()["result"].clone()
}

fn start(extra: &str) -> (Setup, cln_replica::sim::SimNode) {
    let s = Setup::new(extra);
    let mut node = s.node_with_plugin();
    for c in cln_replica::sim::workload::Workload::schema() {
        expect_continue(node.apply(&c).unwrap(), &node);
    }
    node.init_plugin().unwrap();
    (s, node)
}

#[test]
fn metrics_file_parses_with_prometheus_client() {
    let tmp = tempfile::tempdir().unwrap();
    let metrics = tmp.path().join("cln_replica.prom");
    let (_s, mut node) = start(&format!("metrics_file = {metrics:?}\n"));
    expect_continue(node.commit(&["CREATE TABLE m (k INTEGER PRIMARY KEY)".into()]).unwrap(), &node);
    for k in 0..30 {
        expect_continue(node.commit(&[format!("INSERT INTO m VALUES ({k})")]).unwrap(), &node);
    }
    let hooks = status(&mut node)["hooks"].as_u64().unwrap();
    let version = node.data_version();
    // The file is rewritten about once a second: wait for one that counts every hook.
    let families = wait_for("a metrics file counting every hook", || {
        std::fs::metadata(&metrics).ok()?;
        let f = parse_with_prometheus_client(&metrics);
        let count = sample(&f, "cln_replica_hook_duration_seconds", "cln_replica_hook_duration_seconds_count", &[])?;
        (count as u64 >= hooks).then_some(f)
    });
    let h = &families["cln_replica_hook_duration_seconds"];
    assert_eq!(h["type"], "histogram");
    let buckets: Vec<(f64, f64)> = h["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == "cln_replica_hook_duration_seconds_bucket")
        .map(|s| {
            let le = s[1]["le"].as_str().unwrap();
            (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, s[2].as_f64().unwrap())
        })
        .collect();
    assert!(buckets.len() >= 10 && buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{buckets:?}");
    let count = sample(&families, "cln_replica_hook_duration_seconds", "cln_replica_hook_duration_seconds_count", &[]);
    assert_eq!(buckets.last().unwrap().1, count.unwrap(), "+Inf is the count");
    let sum = sample(&families, "cln_replica_hook_duration_seconds", "cln_replica_hook_duration_seconds_sum", &[]);
    assert!(sum.unwrap() > 0.0);
    let gauge = |name: &str| sample(&families, name, name, &[]);
    assert_eq!(gauge("cln_replica_data_version"), Some(version as f64));
    assert_eq!(gauge("cln_replica_generation"), Some(1.0));
    assert!(gauge("cln_replica_journal_bytes").unwrap() > 0.0);
    assert!(gauge("cln_replica_device_free_bytes").unwrap() > 0.0);
    assert!(gauge("cln_replica_device_size_bytes").unwrap() >= gauge("cln_replica_device_free_bytes").unwrap());
    assert_eq!(gauge("cln_replica_device_nearly_full"), Some(0.0));
    assert_eq!(families["cln_replica_state"]["type"], "gauge");
    assert_eq!(sample(&families, "cln_replica_state", "cln_replica_state", &[("state", "in_sync")]), Some(1.0));
    assert_eq!(sample(&families, "cln_replica_state", "cln_replica_state", &[("state", "halted")]), Some(0.0));
    for (name, f) in families.as_object().unwrap() {
        assert!(name.starts_with("cln_replica_"), "{name}");
        assert!(!f["help"].as_str().unwrap().is_empty(), "{name} has no HELP");
    }
    // Only *.prom is read by node_exporter: nothing else is left beside it.
    let others: Vec<PathBuf> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| *p != metrics).collect();
    assert!(others.is_empty(), "{others:?}");
    node.close_plugin().unwrap();
}

#[test]
fn on_alert_gets_each_transition_in_env_and_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("received");
    let script = tmp.path().join("record-alert");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s %s [%s] args:' \"$CLN_REPLICA_ALERT\" \"$CLN_REPLICA_ALERT_STATE\" \
             \"$CLN_REPLICA_ALERT_DESCRIPTION\" >> {received:?}\nfor a in \"$@\"; do printf ' <%s>' \"$a\" >> \
             {received:?}; done\necho >> {received:?}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A threshold above the free space this machine has raises
    // device-nearly-full at the first sample.
    let fs = nix::sys::statvfs::statvfs(tmp.path()).unwrap();
    let free_percent = fs.blocks_available() as f64 * 100.0 / fs.blocks() as f64;
    let nearly_full = free_percent < 98.0;
    let extra = format!(
        "on_alert = [{script:?}, \"--node\", \"test node\"]\nwarn_free_percent = {}\n",
        if nearly_full { 99 } else { 0 }
    );
    let (_s, mut node) = start(&extra);
    let read = || std::fs::read_to_string(&received).unwrap_or_default();
    if nearly_full {
        let line = wait_for("the device-nearly-full alert", || {
            read().lines().find(|l| l.starts_with("device-nearly-full raised")).map(String::from)
        });
        assert!(line.contains("nearly full") && line.contains("MiB free"), "{line}");
        let description = &line[line.find('[').unwrap() + 1..line.find(']').unwrap()];
        let args = format!("args: <--node> <test node> <device-nearly-full> <raised> <{description}>");
        assert!(line.ends_with(&args), "{line}");
        let st = status(&mut node);
        assert_eq!(st["device_nearly_full"], true, "{st}");
        assert!(logs_contain(&node, "the backup device is nearly full"), "{:?}", node.logs());
    } else {
        eprintln!("NOTE: {free_percent:.1}% free here: device-nearly-full is left to tests/device_full.rs");
    }
    // lightningd's database goes backwards: the plugin halts.
    expect_continue(node.commit(&["CREATE TABLE a (k INTEGER PRIMARY KEY)".into()]).unwrap(), &node);
    for k in 0..8 {
        expect_continue(node.commit(&[format!("INSERT INTO a VALUES ({k})")]).unwrap(), &node);
    }
    let v = node.data_version();
    let bump = format!("UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = {}", v - 6);
    let why = refusal(node.hook(v - 5, &[bump]).unwrap());
    assert!(why.contains("already holds data_version"), "{why}");
    let line =
        wait_for("the halted alert", || read().lines().find(|l| l.starts_with("halted raised")).map(String::from));
    assert!(line.contains("args: <--node> <test node> <halted> <raised> <"), "{line}");
    // The description is fixed words: never the refusal's text.
    assert!(!line.contains(&why), "{line}");
    node.close_plugin().unwrap();
    assert_eq!(read().lines().filter(|l| l.starts_with("halted raised")).count(), 1, "{}", read());
}

/// The new status fields through `replica-status`, as `lightning-cli replica-status` shows them.
#[test]
fn replica_status_has_the_device_fields() {
    let (_s, mut node) = start("");
    let st = wait_for("a device sample", || {
        let st = status(&mut node);
        st["device_free_bytes"].as_u64().map(|_| st)
    });
    assert!(st["device_size_bytes"].as_u64().unwrap() >= st["device_free_bytes"].as_u64().unwrap());
    assert!(st["journal_disk_bytes"].as_u64().unwrap() > 0, "{st}");
    // Less than an hour of history: no growth rate, no days left yet.
    assert!(st["journal_growth_bytes_per_day"].is_null() && st["device_days_left"].is_null(), "{st}");
    assert_eq!(st["device_nearly_full"], false);
    assert!(st["last_error_unix_ms"].is_null());
    node.close_plugin().unwrap();
}
