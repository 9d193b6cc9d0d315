//! A background writer's share of the backup device: the plugin's compaction
//! writes a whole snapshot onto the device the journal's hooks flush to, and
//! a hook's flush waits behind whatever the device has queued.
//!
//! Two bounds, both kept over the whole job (a chunk that went fast does not
//! earn the next one a rest-free pass):
//! - a byte rate (`compact_bytes_per_s_max`): a device that acknowledges a
//!   chunk at once and pays for it later (a stick's write cache, the kernel's
//!   blk-throttle budget: measured here, a 128 KiB write and flush returned in
//!   1.6 ms on a 20 MB/s throttled device, so a rest as long as each chunk left
//!   the copy at the full 20 MB/s and the hooks' p99 at 6x) is bounded by the
//!   rate alone;
//! - half the time: a device slower than the rate (each chunk's flush takes
//!   longer than the rate allows) is left idle at least as long as the copy
//!   kept it busy.

use std::time::{Duration, Instant};

/// How a background job writes: in chunks of `chunk_bytes`, each flushed, at
/// most `bytes_per_s_max` on average (0: no rate bound, only the half-time
/// rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub chunk_bytes: u64,
    pub bytes_per_s_max: u64,
}

/// Keeps one job's writes within its [`Pace`].
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    started: Instant,
    written_bytes: u64,
    busy: Duration,
}

impl Pacer {
    pub fn new(pace: Pace) -> Pacer {
        assert!(pace.chunk_bytes > 0, "a paced job writes in chunks");
        Pacer { pace, started: Instant::now(), written_bytes: 0, busy: Duration::ZERO }
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.pace.chunk_bytes
    }

    /// `bytes` were just written and flushed, which took `took`: sleeps until
    /// the job's writes so far are within both bounds. A single rest is at most
    /// one chunk's share of the rate, or the time the last chunks took.
    pub fn rest_after(&mut self, bytes: u64, took: Duration) {
        self.written_bytes += bytes;
        self.busy += took;
        let by_rate = match self.pace.bytes_per_s_max {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(self.written_bytes as f64 / rate as f64),
        };
        let due = by_rate.max(self.busy * 2);
        let rest = due.saturating_sub(self.started.elapsed());
        if !rest.is_zero() {
            std::thread::sleep(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_device_is_held_to_the_rate_over_the_whole_job() {
        // 4 chunks of 64 KiB at 1 MiB/s: at least 250 ms, however fast each write.
        let mut p = Pacer::new(Pace { chunk_bytes: 64 << 10, bytes_per_s_max: 1 << 20 });
        let started = Instant::now();
        for _ in 0..4 {
            p.rest_after(64 << 10, Duration::from_micros(10));
        }
        assert!(started.elapsed() >= Duration::from_millis(250), "{:?}", started.elapsed());
    }

    #[test]
    fn a_slow_device_is_left_idle_as_long_as_it_was_busy() {
        // No rate bound; chunks that "took" 30 ms each: the job is due at twice that.
        let mut p = Pacer::new(Pace { chunk_bytes: 4096, bytes_per_s_max: 0 });
        let started = Instant::now();
        for _ in 0..3 {
            p.rest_after(4096, Duration::from_millis(30));
        }
        assert!(started.elapsed() >= Duration::from_millis(180), "{:?}", started.elapsed());
    }
}
