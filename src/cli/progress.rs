//! A progress bar with rate and ETA on a terminal (stderr); silent when
//! stderr is not a terminal (scripts, logs, tests).

use std::time::{Duration, Instant};

pub struct Bar {
    what: &'static str,
    total_bytes: u64,
    started: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Bar {
    pub fn new(what: &'static str, total_bytes: u64) -> Bar {
        // SAFETY: isatty on a file descriptor number; no memory involved.
        let enabled = unsafe { libc::isatty(2) } == 1;
        Bar { what, total_bytes: total_bytes.max(1), started: Instant::now(), last_draw: None, enabled }
    }

    pub fn update(&mut self, records: u64, done_bytes: u64) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        self.last_draw = Some(Instant::now());
        self.draw(records, done_bytes.min(self.total_bytes));
    }

    fn draw(&self, records: u64, done_bytes: u64) {
        let frac = done_bytes as f64 / self.total_bytes as f64;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = records as f64 / secs;
        let eta = if frac > 0.0 { secs * (1.0 - frac) / frac } else { 0.0 };
        let filled = (frac * 30.0) as usize;
        eprint!(
            "\r{} [{}{}] {:3.0}%  {records} changes, {rate:.0}/s, ETA {eta:.0} s   ",
            self.what,
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            frac * 100.0
        );
    }

    pub fn finish(&mut self, records: u64) {
        if self.enabled && self.last_draw.is_some() {
            self.draw(records, self.total_bytes);
            eprintln!();
        }
    }
}
