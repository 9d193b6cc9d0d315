//! `metrics_file`: the plugin's numbers in the Prometheus text exposition
//! format (version 0.0.4), for node_exporter's textfile collector. Written
//! by [`super::monitor`] at most once a second, atomically (a temporary
//! file beside it, renamed over it: node_exporter reads only `*.prom`).
//!
//! Everything comes from the published status ([`PluginStatus`]) except the
//! hook latency histogram, whose buckets the hook bumps itself: one atomic
//! add to a bucket and one to the sum, no lock (docs/METRICS.md).

use crate::status::{PluginState, PluginStatus};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the hook latency buckets, in microseconds: from the
/// fastest flush of a good device (about 100 µs) to the 10 s the hook's
/// deliberate waits may take.
pub const HOOK_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// The hook's latency histogram: a counter per bucket (not cumulative; the
/// last one is +Inf) and the sum.
#[derive(Default)]
pub struct HookHistogram {
    buckets: [AtomicU64; HOOK_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl HookHistogram {
    /// On the hook's path: a search over 16 constants and two atomic adds.
    pub fn record(&self, us: u64) {
        let i = HOOK_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(HOOK_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is +Inf, the total), and the sum.
    pub fn snapshot(&self) -> ([u64; HOOK_BUCKETS_US.len() + 1], u64) {
        let mut out = [0u64; HOOK_BUCKETS_US.len() + 1];
        let mut acc = 0;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc += b.load(Ordering::Relaxed);
            *o = acc;
        }
        (out, self.sum_us.load(Ordering::Relaxed))
    }
}

const STATES: [(PluginState, &str); 5] = [
    (PluginState::Starting, "starting"),
    (PluginState::InSync, "in_sync"),
    (PluginState::Halted, "halted"),
    (PluginState::Stopped, "stopped"),
    (PluginState::Degraded, "degraded"),
];

/// A label value as the format wants it: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }
    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, "", v);
    }
}

/// The whole file.
pub fn render(s: &PluginStatus, hooks: &HookHistogram) -> String {
    let mut t = Text(String::with_capacity(4096));
    let (cumulative, sum_us) = hooks.snapshot();
    let name = "cln_replica_hook_duration_seconds";
    t.family(name, "histogram", "Time from reading a db_write to answering it.");
    for (bound, count) in HOOK_BUCKETS_US.iter().zip(cumulative) {
        t.sample(&format!("{name}_bucket"), &format!("le=\"{}\"", *bound as f64 / 1e6), count as f64);
    }
    let total = cumulative[HOOK_BUCKETS_US.len()];
    t.sample(&format!("{name}_bucket"), "le=\"+Inf\"", total as f64);
    t.sample(&format!("{name}_sum"), "", sum_us as f64 / 1e6);
    t.sample(&format!("{name}_count"), "", total as f64);

    t.family("cln_replica_state", "gauge", "The plugin's state: 1 for the current one.");
    for (state, label_value) in STATES {
        t.sample("cln_replica_state", &format!("state=\"{label_value}\""), (s.state == state) as u8 as f64);
    }
    t.gauge("cln_replica_generation", "The journal's current generation.", s.generation as f64);
    if let Some(v) = s.data_version {
        t.gauge("cln_replica_data_version", "The last data_version in the journal.", v as f64);
    }
    t.gauge("cln_replica_journal_bytes", "Bytes of the current generation's segments in use.", s.journal_bytes as f64);
    t.gauge(
        "cln_replica_last_write_timestamp_seconds",
        "When the last change was made durable (Unix time).",
        seconds(s.last_write_unix_ms),
    );
    t.gauge("cln_replica_sealed", "1 once the journal is sealed by a clean stop.", s.sealed as u8 as f64);
    t.gauge(
        "cln_replica_status_updated_timestamp_seconds",
        "When this status was taken (Unix time): a stale value means a hung plugin.",
        seconds(s.updated_unix_ms),
    );
    if let Some(ms) = s.last_error_unix_ms {
        t.gauge(
            "cln_replica_last_error_timestamp_seconds",
            "The last failure: a halt, the device lost, or a destination's error (Unix time).",
            seconds(ms),
        );
    }
    device(&mut t, s);
    remote(&mut t, s);
    t.0
}

fn device(t: &mut Text, s: &PluginStatus) {
    if let Some(b) = s.device_free_bytes {
        t.gauge("cln_replica_device_free_bytes", "Free bytes on the backup device's filesystem.", b as f64);
    }
    if let Some(b) = s.device_size_bytes {
        t.gauge("cln_replica_device_size_bytes", "Size of the backup device's filesystem.", b as f64);
    }
    if let Some(b) = s.journal_disk_bytes {
        t.gauge(
            "cln_replica_journal_disk_bytes",
            "The journal directory's size (current segments as far as filled).",
            b as f64,
        );
    }
    if let Some(r) = s.journal_growth_bytes_per_day {
        t.gauge(
            "cln_replica_journal_growth_bytes_per_second",
            "The journal's net growth over the last day (compaction and retention included).",
            r / 86_400.0,
        );
    }
    if let Some(d) = s.device_days_left {
        t.gauge(
            "cln_replica_device_full_in_seconds",
            "Time until the device is full at the journal's growth rate.",
            d * 86_400.0,
        );
    }
    t.gauge(
        "cln_replica_device_nearly_full",
        "1 while fewer than warn_days_left days or less than warn_free_percent remain.",
        s.device_nearly_full as u8 as f64,
    );
    if let (Some(ok), Some(ms)) = (s.drill_ok, s.drill_finished_unix_ms) {
        t.gauge("cln_replica_drill_ok", "1 if the last restore drill passed, 0 if it failed.", ok as u8 as f64);
        t.gauge(
            "cln_replica_drill_finished_timestamp_seconds",
            "When the last restore drill finished (Unix time).",
            ms as f64 / 1000.0,
        );
    }
}

fn remote(t: &mut Text, s: &PluginStatus) {
    let Some(r) = &s.remote else { return };
    t.gauge("cln_replica_remote_lagging", "1 while any destination lags or fails.", r.lagging as u8 as f64);
    t.gauge("cln_replica_remote_degraded", "1 after the synchronous tier fell back.", r.degraded as u8 as f64);
    let per =
        |t: &mut Text, name: &str, kind: &str, help: &str, v: &dyn Fn(&crate::remote::DestinationStatus) -> f64| {
            t.family(name, kind, help);
            for d in &r.destinations {
                t.sample(name, &format!("destination=\"{}\"", label(&d.name)), v(d));
            }
        };
    per(
        t,
        "cln_replica_destination_lag_seconds",
        "gauge",
        "How far behind the local journal, in journal time.",
        &|d| seconds(d.lag_ms),
    );
    per(
        t,
        "cln_replica_destination_queue_records",
        "gauge",
        "Records in the journal not yet at the destination.",
        &|d| d.queue_records as f64,
    );
    per(t, "cln_replica_destination_lagging", "gauge", "1 while behind by more than remote_lag_ms or failing.", &|d| {
        d.lagging as u8 as f64
    });
    per(t, "cln_replica_destination_shipped_bytes_total", "counter", "Bytes shipped by this process.", &|d| {
        d.bytes_shipped as f64
    });
    per(
        t,
        "cln_replica_destination_last_error_timestamp_seconds",
        "gauge",
        "The destination's last failure (Unix time; 0: none since the plugin started).",
        &|d| seconds(d.last_error_unix_ms),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inf_is_the_count() {
        let h = HookHistogram::default();
        for us in [50, 100, 101, 900, 20_000_000] {
            h.record(us);
        }
        let (c, sum) = h.snapshot();
        assert_eq!((c[0], c[1], c[3], c[HOOK_BUCKETS_US.len()]), (2, 3, 4, 5));
        assert_eq!(c[HOOK_BUCKETS_US.len() - 1], 4, "20 s is past the last bound");
        assert_eq!(sum, 50 + 100 + 101 + 900 + 20_000_000);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type() {
        let board = crate::status::StatusBoard::default();
        board.set_state(PluginState::InSync, None);
        let text = render(&board.snapshot(), &HookHistogram::default());
        let mut families = 0;
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(name.starts_with("cln_replica_"), "{name}");
            families += 1;
        }
        assert!(families >= 8, "{text}");
        assert!(text.contains("cln_replica_state{state=\"in_sync\"} 1"), "{text}");
    }
}
