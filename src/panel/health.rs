//! From the plugin's status file to one [`Condition`] the LEDs can show.
//!
//! Pure: the caller reads the file and the clocks. The panel parses the file
//! into its own lenient [`StatusView`] (unknown fields ignored, new optional
//! fields defaulted) so that a newer plugin never blinds an older panel; a
//! state it does not know makes the file unreadable, hence unknown.
//!
//! Either side may restart: the plugin rewrites the file at least every
//! second while it lives and leaves a final `stopped` (or `halted`) one when
//! it exits; the panel rereads it every few hundred milliseconds. A status
//! older than `status_stale_ms` is never "in sync".

use crate::status::PluginState;
use serde::Deserialize;
use std::path::Path;

/// Writes this recent count as "writing" (the LED flickers).
pub const WRITING_WINDOW_MS: u64 = 500;

/// The fields of the plugin's status file the panel uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusView {
    pub state: PluginState,
    #[serde(default)]
    pub reason: Option<String>,
    pub pid: u32,
    #[serde(default)]
    pub data_version: Option<u32>,
    #[serde(default)]
    pub last_write_unix_ms: u64,
    #[serde(default)]
    pub sealed: bool,
    pub updated_unix_ms: u64,
    /// Optional, for remote destinations: the plugin says a remote copy is
    /// behind the local journal. Absent means "no remote" (not lagging).
    #[serde(default)]
    pub remote_lagging: Option<bool>,
    /// Optional, for `on_device_lost = "degrade"`: the plugin goes on without
    /// its backup device and says why here. Present means alert.
    #[serde(default)]
    pub degraded: Option<String>,
    /// Optional: the backup device fills within `warn_days_left` days or has
    /// less than `warn_free_percent` free. Absent means false.
    #[serde(default)]
    pub device_nearly_full: bool,
    /// Optional: the last restore drill failed (`Some(false)`). Absent means
    /// no drill has run.
    #[serde(default)]
    pub drill_ok: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Every committed change is in the journal; nothing written just now.
    InSync,
    /// In sync, and changes are being written right now.
    Writing,
    /// In sync locally; a remote copy is behind.
    RemoteLagging,
    /// In sync, but the backup device fills soon (or has little room left):
    /// lightningd stops when it is full.
    DeviceNearlyFull,
    /// The plugin halted, the backup device is gone, or the plugin runs
    /// degraded: the node is not (or no longer) backed up.
    Alert(String),
    /// lightningd is not running (clean stop, exit, or still starting).
    LightningdDown(String),
    /// The panel cannot tell: no status file, unreadable, or not refreshed.
    Unknown(String),
}

impl Condition {
    /// The number of flashes a short press shows (docs/PANEL.md).
    pub fn code(&self) -> u8 {
        match self {
            Condition::InSync | Condition::Writing => 1,
            Condition::RemoteLagging => 2,
            Condition::Alert(_) => 3,
            Condition::LightningdDown(_) => 4,
            Condition::Unknown(_) => 5,
            Condition::DeviceNearlyFull => 6,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Condition::InSync => "in sync".into(),
            Condition::Writing => "in sync, writing".into(),
            Condition::RemoteLagging => "in sync locally, remote copy lagging".into(),
            Condition::Alert(why) => format!("ALERT: {why}"),
            Condition::LightningdDown(why) => format!("lightningd not running: {why}"),
            Condition::Unknown(why) => format!("status unknown: {why}"),
            Condition::DeviceNearlyFull => "in sync, backup device nearly full".into(),
        }
    }
}

/// What the panel knows at one moment.
pub struct Inputs<'a> {
    /// The parsed status file, or why it could not be read.
    pub status: Result<StatusView, String>,
    pub now_unix_ms: u64,
    pub status_stale_ms: u64,
    /// `Some(false)`: the backup mount point has nothing mounted.
    pub backup_mounted: Option<bool>,
    pub pid_alive: &'a dyn Fn(u32) -> bool,
}

/// The one condition to show. Order matters: a reason to alarm beats a
/// reason to reassure, and a stale status never reassures.
pub fn assess(i: &Inputs) -> Condition {
    let s = match &i.status {
        Ok(s) => s,
        Err(why) => return Condition::Unknown(why.clone()),
    };
    // Halted is final for the plugin process, so even a stale one stands.
    if s.state == PluginState::Halted {
        return Condition::Alert(s.reason.clone().unwrap_or_else(|| "the plugin halted".into()));
    }
    if i.backup_mounted == Some(false) {
        return Condition::Alert("the backup device is not mounted".into());
    }
    if let Some(why) = &s.degraded {
        return Condition::Alert(format!("running without backup: {why}"));
    }
    if s.state == PluginState::Stopped {
        return Condition::LightningdDown(if s.sealed {
            "stopped cleanly, journal sealed".into()
        } else {
            "stopped, journal not sealed".into()
        });
    }
    let age_ms = i.now_unix_ms as i128 - s.updated_unix_ms as i128;
    if age_ms > i.status_stale_ms as i128 || -age_ms > i.status_stale_ms as i128 {
        if !(i.pid_alive)(s.pid) {
            return Condition::LightningdDown(format!("the plugin (pid {}) exited without a clean stop", s.pid));
        }
        // Stable text (no age), so the panel logs the change once.
        return Condition::Unknown(format!(
            "not refreshed within {} ms (last updated at unix ms {}, plugin pid {} alive)",
            i.status_stale_ms, s.updated_unix_ms, s.pid
        ));
    }
    match s.state {
        PluginState::Starting => Condition::LightningdDown("starting".into()),
        // A copy that does not restore is no backup: the alert, though the
        // journal itself is in sync.
        PluginState::InSync if s.drill_ok == Some(false) => {
            Condition::Alert("the last restore drill failed (cln-replica drill)".into())
        }
        PluginState::InSync if s.device_nearly_full => Condition::DeviceNearlyFull,
        PluginState::InSync if s.remote_lagging == Some(true) => Condition::RemoteLagging,
        PluginState::InSync if i.now_unix_ms.saturating_sub(s.last_write_unix_ms) < WRITING_WINDOW_MS => {
            Condition::Writing
        }
        PluginState::InSync => Condition::InSync,
        PluginState::Degraded => Condition::Alert("running without backup".into()),
        PluginState::Halted | PluginState::Stopped => unreachable!("handled above"),
    }
}

/// Reads and parses the status file.
pub fn read_status(path: &Path) -> Result<StatusView, String> {
    let bytes = crate::files::read_regular(path, crate::status::STATUS_FILE_BYTES_MAX)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("cannot parse {}: {e}", path.display()))
}

/// Whether something is mounted at `path` (it sits on another device than
/// its parent, or is the root).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata(path) else { return false };
    let Some(parent) = path.parent() else { return true };
    match std::fs::metadata(parent) {
        Ok(p) => p.dev() != me.dev() || p.ino() == me.ino(),
        Err(_) => false,
    }
}

/// Whether a process with this pid exists (as seen from this pid namespace).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn view(state: PluginState) -> StatusView {
        StatusView {
            state,
            reason: None,
            pid: 42,
            data_version: Some(7),
            last_write_unix_ms: NOW - 10_000,
            sealed: false,
            updated_unix_ms: NOW - 300,
            remote_lagging: None,
            degraded: None,
            device_nearly_full: false,
            drill_ok: None,
        }
    }

    #[test]
    fn a_failed_drill_is_an_alert_and_a_passed_one_is_not() {
        let mut v = view(PluginState::InSync);
        v.drill_ok = Some(false);
        assert!(matches!(assess_with(Ok(v.clone()), None, true), Condition::Alert(_)));
        v.drill_ok = Some(true);
        assert_eq!(assess_with(Ok(v), None, true), Condition::InSync);
    }

    fn assess_with(status: Result<StatusView, String>, mounted: Option<bool>, alive: bool) -> Condition {
        let alive_fn = move |_| alive;
        assess(&Inputs {
            status,
            now_unix_ms: NOW,
            status_stale_ms: 5_000,
            backup_mounted: mounted,
            pid_alive: &alive_fn,
        })
    }

    #[test]
    fn fresh_in_sync_variants() {
        assert_eq!(assess_with(Ok(view(PluginState::InSync)), Some(true), true), Condition::InSync);
        let mut v = view(PluginState::InSync);
        v.last_write_unix_ms = NOW - 100;
        assert_eq!(assess_with(Ok(v.clone()), None, true), Condition::Writing);
        v.remote_lagging = Some(true);
        assert_eq!(assess_with(Ok(v.clone()), None, true), Condition::RemoteLagging);
        v.remote_lagging = Some(false);
        assert_eq!(assess_with(Ok(v), None, true), Condition::Writing);
    }

    #[test]
    fn a_nearly_full_device_beats_remote_lagging_but_not_an_alarm() {
        let mut v = view(PluginState::InSync);
        v.device_nearly_full = true;
        assert_eq!(assess_with(Ok(v.clone()), Some(true), true), Condition::DeviceNearlyFull);
        v.remote_lagging = Some(true);
        v.last_write_unix_ms = NOW - 100;
        assert_eq!(assess_with(Ok(v.clone()), None, true), Condition::DeviceNearlyFull);
        assert_eq!(Condition::DeviceNearlyFull.code(), 6);
        v.degraded = Some("write error".into());
        assert!(matches!(assess_with(Ok(v.clone()), None, true), Condition::Alert(_)));
        v.degraded = None;
        v.updated_unix_ms = NOW - 5_001;
        assert!(matches!(assess_with(Ok(v.clone()), None, true), Condition::Unknown(_)), "stale stays unknown");
        // The plugin's own status file carries the flag.
        let board = crate::status::StatusBoard::default();
        board.set_state(PluginState::InSync, None);
        let mut s = board.snapshot();
        s.device_nearly_full = true;
        let parsed: StatusView = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert!(parsed.device_nearly_full);
    }

    #[test]
    fn stale_status_is_never_in_sync() {
        let mut v = view(PluginState::InSync);
        v.updated_unix_ms = NOW - 5_001;
        assert!(matches!(assess_with(Ok(v.clone()), None, true), Condition::Unknown(_)));
        assert!(matches!(assess_with(Ok(v.clone()), None, false), Condition::LightningdDown(_)));
        // A clock jump the other way is no better.
        v.updated_unix_ms = NOW + 60_000;
        assert!(matches!(assess_with(Ok(v), None, true), Condition::Unknown(_)));
        assert!(matches!(assess_with(Err("no file".into()), None, true), Condition::Unknown(_)));
    }

    #[test]
    fn alarms_beat_everything() {
        let mut v = view(PluginState::Halted);
        v.reason = Some("the backup device failed".into());
        v.updated_unix_ms = NOW - 3_600_000;
        assert_eq!(assess_with(Ok(v), Some(true), false), Condition::Alert("the backup device failed".into()));
        assert!(matches!(assess_with(Ok(view(PluginState::InSync)), Some(false), true), Condition::Alert(_)));
        let mut d = view(PluginState::InSync);
        d.degraded = Some("write error".into());
        assert!(matches!(assess_with(Ok(d), Some(true), true), Condition::Alert(_)));
    }

    #[test]
    fn stopped_and_starting_mean_lightningd_down() {
        let mut v = view(PluginState::Stopped);
        v.sealed = true;
        v.updated_unix_ms = NOW - 3_600_000;
        assert!(matches!(assess_with(Ok(v), None, false), Condition::LightningdDown(w) if w.contains("sealed")));
        assert!(matches!(assess_with(Ok(view(PluginState::Starting)), None, true), Condition::LightningdDown(_)));
    }

    /// A FIFO where the status file should be is an unknown status at
    /// once, never a read that blocks the panel (and its shutdown sequence).
    #[test]
    fn a_fifo_status_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("status.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_status(&fifo).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn reads_the_plugins_own_file_and_ignores_new_fields() {
        let board = crate::status::StatusBoard::default();
        board.set_state(PluginState::InSync, None);
        let mut json = serde_json::to_value(board.snapshot()).unwrap();
        json["some_future_field"] = serde_json::json!(1);
        json["remote_lagging"] = serde_json::json!(true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let v = read_status(&path).unwrap();
        assert_eq!((v.state, v.remote_lagging), (PluginState::InSync, Some(true)));
        std::fs::write(&path, json.to_string().replace("in_sync", "dancing")).unwrap();
        assert!(read_status(&path).is_err());
        assert!(read_status(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
        assert!(is_mount_point(Path::new("/")) && !is_mount_point(dir.path()));
    }
}
