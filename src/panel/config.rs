//! `panel.toml`: the panel's own configuration, apart from cln-replica.toml.
//!
//! Why its own file: the panel is another process, run by systemd as another
//! unit with other permissions, and the plugin must not reject its
//! configuration because a build without the `panel` feature does not know
//! a `[panel]` section (cln-replica.toml denies unknown keys). The one value
//! both share is the status file's path. Unknown keys are errors here too.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/cln-replica/panel.toml";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// The plugin's status file (`status_file` in cln-replica.toml).
    pub status_file: PathBuf,
    /// lightningd's JSON-RPC socket, for `stop`.
    pub lightning_rpc: PathBuf,
    /// A status not rewritten for this long counts as unknown (the plugin
    /// rewrites it at least every second while it lives).
    #[serde(default = "default_status_stale_ms")]
    pub status_stale_ms: u64,
    /// If set, the panel raises the alert when nothing is mounted there.
    #[serde(default)]
    pub backup_mount: Option<PathBuf>,
    /// Holding the button this long starts the safe shutdown.
    #[serde(default = "default_long_press_ms")]
    pub long_press_ms: u64,
    /// A level must hold this long before the button counts as pressed or released.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// How long to wait for the plugin's status to say stopped and sealed
    /// after asking lightningd to stop (lightningd gives plugins 30 s).
    #[serde(default = "default_seal_timeout_ms")]
    pub seal_timeout_ms: u64,
    /// Each command must exit 0 within this long.
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Unmounts the backup device (argv, no shell). Empty: skip the step.
    /// The default asks systemd, because the panel's unit runs in its own
    /// mount namespace where a plain `umount` would not reach the host.
    #[serde(default = "default_unmount_command")]
    pub unmount_command: Vec<String>,
    /// Powers the machine off (argv, no shell).
    #[serde(default = "default_poweroff_command")]
    pub poweroff_command: Vec<String>,
    pub status_led: LineConfig,
    #[serde(default)]
    pub alert_led: Option<LineConfig>,
    pub button: LineConfig,
}

/// One GPIO line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// `gpiochip0` or `/dev/gpiochip0`.
    pub chip: String,
    /// The line's offset on the chip.
    pub line: u32,
    /// The line is active (LED lit, button pressed) when low.
    #[serde(default)]
    pub active_low: bool,
    #[serde(default)]
    pub bias: Bias,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Bias {
    /// Leave the line's bias as it is.
    #[default]
    AsIs,
    PullUp,
    PullDown,
    Disabled,
}

impl LineConfig {
    pub fn chip_path(&self) -> PathBuf {
        if self.chip.contains('/') {
            PathBuf::from(&self.chip)
        } else {
            Path::new("/dev").join(&self.chip)
        }
    }
}

fn default_status_stale_ms() -> u64 {
    5_000
}
fn default_long_press_ms() -> u64 {
    3_000
}
fn default_debounce_ms() -> u64 {
    30
}
fn default_seal_timeout_ms() -> u64 {
    90_000
}
fn default_command_timeout_ms() -> u64 {
    120_000
}
fn default_unmount_command() -> Vec<String> {
    vec!["systemctl".into(), "stop".into(), "mnt-lnbackup.mount".into()]
}
fn default_poweroff_command() -> Vec<String> {
    vec!["systemctl".into(), "poweroff".into()]
}

impl PanelConfig {
    pub fn parse(text: &str) -> Result<PanelConfig> {
        let c: PanelConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<PanelConfig> {
        let bytes = crate::files::read_regular(path, crate::config::CONFIG_BYTES_MAX)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
        PanelConfig::parse(&text).with_context(|| format!("invalid {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        // The heartbeat is 1 s; below 2 s a busy machine would flap to unknown.
        if !(2_000..=600_000).contains(&self.status_stale_ms) {
            bail!("status_stale_ms must be between 2000 and 600000");
        }
        if !(1..=1_000).contains(&self.debounce_ms) {
            bail!("debounce_ms must be between 1 and 1000");
        }
        if self.long_press_ms < 500 || self.long_press_ms > 60_000 || self.long_press_ms <= 2 * self.debounce_ms {
            bail!("long_press_ms must be between 500 and 60000 (and well above debounce_ms)");
        }
        if !(1_000..=600_000).contains(&self.seal_timeout_ms) {
            bail!("seal_timeout_ms must be between 1000 and 600000");
        }
        if !(100..=3_600_000).contains(&self.command_timeout_ms) {
            bail!("command_timeout_ms must be between 100 and 3600000");
        }
        if self.poweroff_command.is_empty() {
            bail!("poweroff_command is empty: name the command that powers off (e.g. [\"systemctl\", \"poweroff\"])");
        }
        let mut lines = vec![("status_led", &self.status_led), ("button", &self.button)];
        if let Some(a) = &self.alert_led {
            lines.push(("alert_led", a));
        }
        for (i, (name, l)) in lines.iter().enumerate() {
            if l.chip.is_empty() {
                bail!("{name}.chip is empty: name the GPIO chip, e.g. \"gpiochip0\"");
            }
            for (other, m) in &lines[..i] {
                if l.chip_path() == m.chip_path() && l.line == m.line {
                    bail!("{name} and {other} both use line {} of {}", l.line, l.chip);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
status_file = "/run/cln-replica/status.json"
lightning_rpc = "/home/bitcoin/.lightning/bitcoin/lightning-rpc"
[status_led]
chip = "gpiochip0"
line = 17
[button]
chip = "/dev/gpiochip0"
line = 22
active_low = true
bias = "pull-up"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = PanelConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.long_press_ms, 3_000);
        assert_eq!(c.poweroff_command, ["systemctl", "poweroff"]);
        assert_eq!(c.status_led.chip_path(), Path::new("/dev/gpiochip0"));
        assert_eq!(c.button.bias, Bias::PullUp);
        assert!(c.button.active_low && !c.status_led.active_low);
        assert_eq!(c.alert_led, None);
        assert_eq!(PanelConfig::parse(&toml::to_string(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = PanelConfig::parse(&format!("long_pres_ms = 1\n{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains("long_pres_ms"), "{e}");
        assert!(PanelConfig::parse(&MINIMAL.replace("pull-up", "pullup")).is_err());
        assert!(PanelConfig::parse(&format!("long_press_ms = 10\n{MINIMAL}")).is_err());
        assert!(PanelConfig::parse(&format!("poweroff_command = []\n{MINIMAL}")).is_err());
        assert!(PanelConfig::parse(&format!("status_stale_ms = 500\n{MINIMAL}")).is_err());
        let same_line = MINIMAL.replace("line = 22", "line = 17");
        assert!(PanelConfig::parse(&same_line).unwrap_err().to_string().contains("both use line 17"));
    }
}
