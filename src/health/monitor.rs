//! The health thread: once a second (and at every change of the status) it
//! samples the backup device, logs a nearly full device once per
//! transition, hands raised and cleared conditions to the `on_alert`
//! runner, and rewrites `metrics_file`. It never touches the journal or the
//! hook: it reads the status board and the filesystem.

use super::alerts::{Conditions, Runner};
use super::device::{self, GrowthWindow, Thresholds};
use crate::clock::now_unix_ms;
use crate::plugin::protocol::Output;
use crate::status::StatusBoard;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The device is sampled and the metrics written at most this often.
pub const TICK: Duration = Duration::from_secs(1);
/// Status changes are looked at no more often than this.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// At exit, queued alert commands get at most this long to run.
pub const ALERT_DRAIN_AT_EXIT: Duration = Duration::from_secs(10);

/// What the thread needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub journal: PathBuf,
    pub thresholds: Thresholds,
    pub metrics_file: Option<PathBuf>,
    pub on_alert: Option<Vec<String>>,
    /// The restore drill's result file (crate::drill::result_path).
    pub drill_result: Option<PathBuf>,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Settings {
        Settings {
            journal: c.journal.clone(),
            thresholds: Thresholds { days_left: c.warn_days_left, free_percent: c.warn_free_percent },
            metrics_file: c.metrics_file.clone(),
            on_alert: c.on_alert.clone(),
            drill_result: crate::drill::result_path(c),
        }
    }
}

pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<Runner>>>,
}

impl Monitor {
    pub fn spawn(settings: Settings, board: Arc<StatusBoard>, out: Arc<Output>) -> std::io::Result<Monitor> {
        let stop = Arc::new(AtomicBool::new(false));
        let runner = match &settings.on_alert {
            Some(argv) => {
                let log = out.clone();
                Some(Runner::start(
                    argv.clone(),
                    Arc::new(move |level: &str, msg: &str| log.log(level, &format!("cln-replica: {msg}"))),
                )?)
            }
            None => None,
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("health".into()).spawn(move || {
            crate::priority::background_priority();
            let mut state = State {
                settings,
                board,
                out,
                runner,
                growth: GrowthWindow::default(),
                conditions: Conditions::default(),
                nearly_full: false,
                metrics_error_reported: false,
                drill_seen: None,
            };
            state.run(&s);
            state.runner
        })?;
        Ok(Monitor { stop, thread: Some(thread) })
    }

    /// At exit, after the final status is set: one last look (a halt just
    /// before exit still raises its alert), then the queued commands are
    /// given [`ALERT_DRAIN_AT_EXIT`].
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.thread.take() {
            if let Ok(Some(runner)) = h.join() {
                runner.finish(ALERT_DRAIN_AT_EXIT);
            }
        }
    }
}

struct State {
    settings: Settings,
    board: Arc<StatusBoard>,
    out: Arc<Output>,
    runner: Option<Runner>,
    growth: GrowthWindow,
    conditions: Conditions,
    nearly_full: bool,
    metrics_error_reported: bool,
    /// The drill result file's (mtime, size) when last read: it is read
    /// again only when it changes.
    drill_seen: Option<(std::time::SystemTime, u64)>,
}

impl State {
    fn run(&mut self, stop: &AtomicBool) {
        let mut seen = 0;
        let mut next_tick = Instant::now();
        loop {
            let stopping = stop.load(Ordering::Acquire);
            let now = Instant::now();
            let tick = stopping || now >= next_tick;
            if tick {
                self.sample_device();
                self.read_drill();
                next_tick = now + TICK;
            }
            let status = self.board.snapshot();
            for t in self.conditions.observe(&status) {
                if let Some(r) = &self.runner {
                    if !r.submit(t.clone()) {
                        self.out.log(
                            "warn",
                            &format!(
                                "cln-replica: on_alert queue full ({} waiting): {} {} not sent",
                                super::alerts::ALERT_QUEUE_MAX,
                                t.condition.name(),
                                t.state()
                            ),
                        );
                    }
                }
            }
            if tick {
                self.write_metrics(&status);
            }
            if stopping {
                return;
            }
            std::thread::sleep(MIN_INTERVAL);
            let wait = next_tick.saturating_duration_since(Instant::now());
            seen = match self.board.progress() {
                Some(p) => p.wait_past(seen, wait).counter,
                None => {
                    std::thread::sleep(wait);
                    seen
                }
            };
        }
    }

    fn sample_device(&mut self) {
        let Ok((free, size)) = device::filesystem_space(&self.settings.journal) else { return };
        let progress = self.board.progress().map(|p| p.get());
        let current = progress
            .filter(|p| p.generation > 0)
            .map(|p| crate::journal::layout::generation_dir(&self.settings.journal, p.generation));
        let in_use = progress.map_or(0, |p| p.journal_bytes);
        let Some(journal_bytes) = device::journal_bytes(&self.settings.journal, current.as_deref(), in_use) else {
            return;
        };
        let now = now_unix_ms();
        let rate = self.growth.bytes_per_day(now, journal_bytes);
        self.growth.record(now, journal_bytes);
        let h = device::assess(free, size, journal_bytes, rate, self.settings.thresholds);
        if h.nearly_full != self.nearly_full {
            self.nearly_full = h.nearly_full;
            let t = self.settings.thresholds;
            if h.nearly_full {
                self.out.log(
                    "warn",
                    &format!(
                        "cln-replica: the backup device is nearly full: {} (warn_free_percent = {}, warn_days_left \
                         = {}); free space or compact the journal: lightningd stops when it is full",
                        h.describe(),
                        t.free_percent,
                        t.days_left
                    ),
                );
            } else {
                self.out.log("info", &format!("cln-replica: the backup device has room again: {}", h.describe()));
            }
        }
        self.board.set_device(h);
    }

    /// Publishes the last drill's outcome. A result that cannot be read
    /// counts as a failed drill: the operator must look.
    fn read_drill(&mut self) {
        let Some(path) = &self.settings.drill_result else { return };
        let seen = std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        if seen == self.drill_seen {
            return;
        }
        self.drill_seen = seen;
        if seen.is_none() {
            self.board.set_drill(None);
            return;
        }
        match crate::drill::read_result(path) {
            Ok(r) => self.board.set_drill(Some((r.ok, r.finished_unix_ms))),
            Err(e) => {
                self.out.log("warn", &format!("cln-replica: the restore drill's result is unreadable: {e}"));
                self.board.set_drill(Some((false, now_unix_ms())));
            }
        }
    }

    fn write_metrics(&mut self, status: &crate::status::PluginStatus) {
        let Some(path) = &self.settings.metrics_file else { return };
        let text = super::metrics::render(status, &self.board.hook_histogram);
        match crate::files::replace_with_bytes(path, text.as_bytes(), crate::files::Durability::AtomicOnly) {
            Ok(()) => self.metrics_error_reported = false,
            Err(e) if !self.metrics_error_reported => {
                self.out.log("warn", &format!("cln-replica: cannot write metrics_file: {e:#}"));
                self.metrics_error_reported = true;
            }
            Err(_) => {}
        }
    }
}
