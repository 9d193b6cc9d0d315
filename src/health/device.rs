//! Room left on the backup device: free space (statvfs of the journal's
//! filesystem) and the journal's net growth over a bounded window, hence an
//! estimate of the days until the device is full.
//!
//! The journal's size is every file under the journal directory as the
//! device allocated it, except the current generation's segments, which
//! count as far as records fill them: segments are allocated whole (16 MiB
//! by default) ahead of their records, and counting the allocation would
//! make a fresh segment look like a day's growth. Compaction and retention
//! remove files, so they shrink the size and with it the net growth.
//!
//! Pure apart from [`sample`]: [`GrowthWindow`] and [`assess`] take the
//! times and sizes they are given, so tests drive them with a fake clock.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One sample of growth is kept per this many milliseconds.
pub const GROWTH_SAMPLE_INTERVAL_MS: u64 = 60_000;
/// The growth rate is measured over at most this long...
pub const GROWTH_WINDOW_MS: u64 = 24 * 3_600_000;
/// ...and only once at least this much history exists: a shorter one is
/// dominated by a single large change or a compaction.
pub const GROWTH_HISTORY_MIN_MS: u64 = 3_600_000;
/// Bounds the window's samples (one per interval over the window, plus the ends).
const GROWTH_SAMPLES_MAX: usize = (GROWTH_WINDOW_MS / GROWTH_SAMPLE_INTERVAL_MS) as usize + 2;
/// Bounds the directory walk: the journal holds a few generations of a
/// few segments each; past this many entries the size is not estimated.
const JOURNAL_ENTRIES_MAX: usize = 100_000;

/// The configured thresholds (`warn_days_left`, `warn_free_percent`; 0 turns one off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub days_left: u32,
    pub free_percent: u32,
}

/// What [`assess`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DeviceHealth {
    pub free_bytes: u64,
    pub size_bytes: u64,
    pub journal_bytes: u64,
    /// Net growth of the journal; None until enough history exists.
    pub growth_bytes_per_day: Option<f64>,
    /// Days until the free space is used at that rate; None when the
    /// journal does not grow or the rate is not known yet.
    pub days_left: Option<f64>,
    pub nearly_full: bool,
}

impl DeviceHealth {
    pub fn free_percent(&self) -> f64 {
        if self.size_bytes == 0 {
            return 0.0;
        }
        self.free_bytes as f64 * 100.0 / self.size_bytes as f64
    }

    /// One line for the log and the alert's description (numbers only: no
    /// path, nothing secret).
    pub fn describe(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = format!(
            "{:.1}% free ({:.1} MiB of {:.1} MiB)",
            self.free_percent(),
            mib(self.free_bytes),
            mib(self.size_bytes)
        );
        match (self.growth_bytes_per_day, self.days_left) {
            (Some(rate), Some(days)) => {
                s +=
                    &format!(", {days:.1} days left at the journal's growth of {:.1} MiB/day", rate / (1024.0 * 1024.0))
            }
            (Some(rate), None) => {
                s += &format!(", the journal's net growth is {:.1} MiB/day", rate / (1024.0 * 1024.0))
            }
            (None, _) => s += ", growth rate not known yet",
        }
        s
    }
}

/// Net growth over a bounded window of (time, journal bytes) samples.
#[derive(Debug, Default)]
pub struct GrowthWindow {
    samples: VecDeque<(u64, u64)>,
}

impl GrowthWindow {
    /// Takes a sample at `now_ms` if the last one is at least an interval old.
    pub fn record(&mut self, now_ms: u64, journal_bytes: u64) {
        if self.samples.back().is_some_and(|&(t, _)| now_ms.saturating_sub(t) < GROWTH_SAMPLE_INTERVAL_MS) {
            return;
        }
        self.samples.push_back((now_ms, journal_bytes));
        while self.samples.len() > GROWTH_SAMPLES_MAX
            || self.samples.front().is_some_and(|&(t, _)| now_ms.saturating_sub(t) > GROWTH_WINDOW_MS)
        {
            self.samples.pop_front();
        }
    }

    /// Net bytes per day between the oldest sample and `(now_ms,
    /// journal_bytes)`; negative when compaction or retention removed more
    /// than was written.
    pub fn bytes_per_day(&self, now_ms: u64, journal_bytes: u64) -> Option<f64> {
        let &(t0, b0) = self.samples.front()?;
        let elapsed_ms = now_ms.checked_sub(t0)?;
        if elapsed_ms < GROWTH_HISTORY_MIN_MS {
            return None;
        }
        let grown = journal_bytes as f64 - b0 as f64;
        Some(grown * 86_400_000.0 / elapsed_ms as f64)
    }
}

/// Whether the device is nearly full, from its free space and the journal's growth.
pub fn assess(
    free_bytes: u64,
    size_bytes: u64,
    journal_bytes: u64,
    growth_bytes_per_day: Option<f64>,
    t: Thresholds,
) -> DeviceHealth {
    let days_left = growth_bytes_per_day.filter(|r| *r > 0.0).map(|r| free_bytes as f64 / r);
    let mut h =
        DeviceHealth { free_bytes, size_bytes, journal_bytes, growth_bytes_per_day, days_left, nearly_full: false };
    let low_space = t.free_percent > 0 && h.free_percent() < t.free_percent as f64;
    let soon_full = t.days_left > 0 && days_left.is_some_and(|d| d < t.days_left as f64);
    h.nearly_full = low_space || soon_full;
    h
}

/// Free and total bytes of the filesystem holding `dir` (or its nearest
/// existing ancestor: the journal directory may not exist yet).
pub fn filesystem_space(dir: &Path) -> nix::Result<(u64, u64)> {
    let at = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let s = nix::sys::statvfs::statvfs(at)?;
    let frag = s.fragment_size() as u64;
    // f_bavail: what an unprivileged writer may still use (the plugin rarely runs as root).
    Ok((s.blocks_available() as u64 * frag, s.blocks() as u64 * frag))
}

/// The journal's size as described in the module docs: `current_segments_dir`
/// is the current generation's directory, whose segments count as
/// `current_in_use_bytes`.
pub fn journal_bytes(journal: &Path, current_generation_dir: Option<&Path>, current_in_use_bytes: u64) -> Option<u64> {
    let mut total = 0u64;
    let mut stack = vec![journal.to_path_buf()];
    let mut entries = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let in_current = current_generation_dir == Some(dir.as_path());
        for e in rd.flatten() {
            entries += 1;
            if entries > JOURNAL_ENTRIES_MAX {
                return None;
            }
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if !(in_current && e.file_name().to_string_lossy().starts_with("segment-")) {
                total += md.blocks() * 512;
            }
        }
    }
    Some(total + current_in_use_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { days_left: 7, free_percent: 10 };
    const MIB: u64 = 1 << 20;
    const HOUR: u64 = 3_600_000;

    #[test]
    fn free_percent_alone() {
        assert!(!assess(20 * MIB, 100 * MIB, 0, None, T).nearly_full);
        assert!(assess(9 * MIB, 100 * MIB, 0, None, T).nearly_full);
        let off = Thresholds { free_percent: 0, ..T };
        assert!(!assess(0, 100 * MIB, 0, None, off).nearly_full);
    }

    #[test]
    fn growth_gives_days_left() {
        let mut w = GrowthWindow::default();
        let t0 = 1_800_000_000_000;
        // 10 MiB a day: 1 hour of history is the least that counts.
        for i in 0..=60 {
            w.record(t0 + i * 60_000, i * 10 * MIB / (24 * 60));
        }
        let now = t0 + HOUR;
        let bytes = 10 * MIB / 24;
        let rate = w.bytes_per_day(now, bytes).unwrap();
        assert!((rate / MIB as f64 - 10.0).abs() < 0.01, "{rate}");
        // 50 MiB free on a 100 MiB device: 5 days < 7.
        let h = assess(50 * MIB, 100 * MIB, bytes, Some(rate), T);
        assert!((h.days_left.unwrap() - 5.0).abs() < 0.01 && h.nearly_full, "{h:?}");
        // 90 MiB free: 9 days, and 90% free: fine.
        assert!(!assess(90 * MIB, 100 * MIB, bytes, Some(rate), T).nearly_full);
        assert!(w.bytes_per_day(t0 + HOUR - 1, bytes).is_none(), "too little history");
    }

    #[test]
    fn compaction_shrinking_the_journal_means_no_end_in_sight() {
        let mut w = GrowthWindow::default();
        let t0 = 1_000;
        w.record(t0, 500 * MIB);
        let rate = w.bytes_per_day(t0 + 2 * HOUR, 100 * MIB).unwrap();
        assert!(rate < 0.0);
        let h = assess(MIB * 15, 100 * MIB, 100 * MIB, Some(rate), T);
        assert_eq!((h.days_left, h.nearly_full), (None, false));
    }

    #[test]
    fn the_window_is_bounded() {
        let mut w = GrowthWindow::default();
        for i in 0..(3 * GROWTH_SAMPLES_MAX as u64) {
            w.record(i * GROWTH_SAMPLE_INTERVAL_MS, i);
            // Samples closer than the interval are not kept.
            w.record(i * GROWTH_SAMPLE_INTERVAL_MS + 1, i);
        }
        assert!(w.samples.len() <= GROWTH_SAMPLES_MAX);
        let (first, last) = (w.samples.front().unwrap().0, w.samples.back().unwrap().0);
        assert!(last - first <= GROWTH_WINDOW_MS);
    }

    #[test]
    fn journal_size_counts_segments_as_used() {
        let dir = tempfile::tempdir().unwrap();
        let gen = dir.path().join("gen-1");
        std::fs::create_dir(&gen).unwrap();
        std::fs::write(gen.join("segment-00000001"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(gen.join("snapshot.sqlite3"), vec![1u8; 8192]).unwrap();
        let all = journal_bytes(dir.path(), None, 0).unwrap();
        assert!(all >= (1 << 20) + 8192, "{all}");
        let used = journal_bytes(dir.path(), Some(&gen), 4096).unwrap();
        assert!((8192 + 4096..(1 << 20)).contains(&used), "{used}");
        let (free, size) = filesystem_space(&dir.path().join("not-yet")).unwrap();
        assert!(size > 0 && free <= size);
    }
}
