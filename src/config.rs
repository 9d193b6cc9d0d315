//! `cln-replica.toml`: where the plugin finds its configuration.
//!
//! lightningd calls `db_write` before `init`, so plugin options cannot carry
//! the configuration: the plugin reads this file from its working directory
//! (the lightning network directory) or from the path in `CLN_REPLICA_CONFIG`.
//! Unknown keys are errors, so that a typo never silently disables a setting.

use crate::filter::Filter;
use crate::journal::{Compression, JournalOptions};
use crate::remote::{DestinationConfig, OnTimeout, RemoteSync};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "cln-replica.toml";
pub const CONFIG_ENV: &str = "CLN_REPLICA_CONFIG";
pub const DEFAULT_DATABASE: &str = "lightningd.sqlite3";
/// The most `remote_sync_timeout_ms` may be. lightningd itself never gives
/// up on a db_write answer, but while it waits it serves no peer: eclair
/// drops a commitment exchange that stalls 20 s, lnd one that stalls a
/// minute (docs/LIGHTNINGD.md, "Time limits"). The hook's deliberate waits,
/// this one and the mirror's backpressure
/// ([`crate::plugin::background::MIRROR_BACKPRESSURE_MAX`]), add up to 15 s.
pub const REMOTE_SYNC_TIMEOUT_MS_MAX: u64 = 10_000;

/// A configuration file larger than this is refused unread.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory on the backup device that holds the journal.
    pub journal: PathBuf,
    /// lightningd's database, relative to the lightning network directory
    /// (the plugin's working directory) unless absolute.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// O_DIRECT journal writes; refusing them stops the node unless this is false.
    #[serde(default = "default_true")]
    pub direct_io: bool,
    /// Record alignment in bytes (a power of two, at least the device's).
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u32,
    /// Size of each preallocated journal segment.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// After lightningd's `shutdown` notification, exit once no hook has come
    /// for this long.
    #[serde(default = "default_shutdown_quiet_ms")]
    pub shutdown_quiet_ms: u64,
    /// Where the plugin publishes its status as JSON (atomically replaced;
    /// relative to this file's directory unless absolute, so the plugin, the
    /// panel and `cln-replica status` find the same file).
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// Where `cln-replica drill` writes its result as JSON (default:
    /// `drill-result.json` beside `status_file`; relative to this file's
    /// directory unless absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_result_file: Option<PathBuf>,
    /// Retention: how many generations to keep (at least 1). An older
    /// generation is removed only once a newer one is durable; `restore --at`
    /// and `--before` reach back across the generations kept.
    #[serde(default = "default_keep_generations")]
    pub keep_generations: u32,
    /// Compact in the background once the current generation's records take
    /// this many bytes (0: never by size).
    #[serde(default = "default_compact_journal_bytes")]
    pub compact_journal_bytes: u64,
    /// Compact in the background once the current generation is this old and
    /// holds at least one change (0: never by age).
    #[serde(default)]
    pub compact_after_secs: u64,
    /// The background compaction's average write rate on the journal's
    /// device, in bytes/s (0: no rate bound; it still leaves the device idle
    /// half the time). At most half the device's sustained write rate keeps
    /// the hooks' flushes from queueing behind it (docs/COMPACTION.md).
    #[serde(default = "default_compact_bytes_per_s_max")]
    pub compact_bytes_per_s_max: u64,
    /// A second SQLite database kept up to date from the journal, bootable as
    /// is (relative to this file's directory unless absolute).
    #[serde(default)]
    pub mirror: Option<PathBuf>,
    /// The mirror never lags the journal by more than this many
    /// data_versions: past it, the hook waits for the mirror (up to 10 s).
    #[serde(default = "default_mirror_max_lag")]
    pub mirror_max_lag: u32,
    /// What the plugin does when the backup device fails or disappears.
    #[serde(default)]
    pub on_device_lost: DeviceLostPolicy,
    /// "none" or "caches": leave lightningd's cache tables out of the backup
    /// (docs/CACHES.md: a restored node must then rescan the chain).
    #[serde(default)]
    pub filter: Filter,
    /// "zstd" (the default) or "off": store a change of more than one block
    /// zstd-compressed when that saves blocks (docs/COMPRESSION.md). Only new
    /// records are affected; the journal reads both kinds either way. A
    /// journal with compressed records needs a cln-replica that knows the
    /// flag to read it (docs/FORMAT.md).
    #[serde(default)]
    pub compression: Compression,
    /// A change larger than this many bytes is stored as chunk records of
    /// about this size, which count only as a whole (docs/FORMAT.md): a
    /// reader then holds a bounded part of a change of any size.
    #[serde(default = "default_change_chunk_bytes")]
    pub change_chunk_bytes: u32,
    /// Warn (log, status, panel, on_alert) when the backup device fills in
    /// fewer than this many days at the journal's growth rate (0: never).
    #[serde(default = "default_warn_days_left")]
    pub warn_days_left: u32,
    /// ...or has less than this percentage of its space free (0: never).
    #[serde(default = "default_warn_free_percent")]
    pub warn_free_percent: u32,
    /// Where the plugin writes its metrics in the Prometheus text format
    /// (relative to this file's directory unless absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_file: Option<PathBuf>,
    /// A command (absolute path, then arguments; no shell) run when a
    /// condition is raised or cleared (docs/METRICS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_alert: Option<Vec<String>>,
    /// Remote destinations (docs/REMOTE.md): the key everything is encrypted
    /// with, from a key file (relative to this file's directory)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// ...or derived from lightningd's hsm_secret (relative to the network directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm_secret: Option<PathBuf>,
    /// The passphrase lightningd was started with (`--hsm-passphrase`), for
    /// an hsm_secret that needs one: a file holding it (0600; relative to
    /// this file's directory).
    #[serde(default)]
    pub hsm_passphrase_file: Option<PathBuf>,
    /// Which changes wait for the destinations: "none", "channel-state", "all".
    #[serde(default)]
    pub remote_sync: RemoteSync,
    /// How many destinations must acknowledge a synchronous change.
    #[serde(default = "default_remote_quorum")]
    pub remote_quorum: usize,
    #[serde(default = "default_remote_sync_timeout_ms")]
    pub remote_sync_timeout_ms: u64,
    /// "halt" (refuse the hook: lightningd stops) or "degrade".
    #[serde(default)]
    pub remote_sync_on_timeout: OnTimeout,
    /// Background shipping: the lag behind the journal while a destination is up.
    #[serde(default = "default_remote_lag_ms")]
    pub remote_lag_ms: u64,
    /// On a clean stop, wait at most this long for the destinations to catch up.
    #[serde(default = "default_remote_drain_ms")]
    pub remote_drain_ms: u64,
    /// Generations kept at each destination (the newest complete one included).
    #[serde(default = "default_remote_retain_generations")]
    pub remote_retain_generations: u64,
    #[serde(default, rename = "destination", skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<DestinationConfig>,
}

/// The most `warn_days_left` may be (ten years).
pub const WARN_DAYS_LEFT_MAX: u32 = 3650;

/// `on_device_lost`: what a failed or vanished backup device does to lightningd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceLostPolicy {
    /// Refuse the hook: lightningd stops before committing an unprotected
    /// change. The safe default: a node without its backup is one SD card
    /// failure away from losing funds.
    #[default]
    Halt,
    /// Answer `continue` without a backup, log it loudly and raise the alert
    /// (status `degraded`, the panel's alert LED). The backup resumes, with a
    /// new snapshot, when the plugin next starts with the device back.
    Degrade,
}

fn default_database() -> PathBuf {
    PathBuf::from(DEFAULT_DATABASE)
}
fn default_true() -> bool {
    true
}
fn default_block_bytes() -> u32 {
    JournalOptions::default().block_bytes
}
fn default_segment_bytes() -> u64 {
    JournalOptions::default().segment_bytes
}
fn default_change_chunk_bytes() -> u32 {
    crate::journal::format::CHANGE_CHUNK_BYTES_DEFAULT
}
fn default_shutdown_quiet_ms() -> u64 {
    500
}
fn default_mirror_max_lag() -> u32 {
    1000
}
fn default_keep_generations() -> u32 {
    2
}
fn default_compact_journal_bytes() -> u64 {
    1 << 30
}
/// 8 MiB/s: under half a USB 2 stick's 20 MB/s.
fn default_compact_bytes_per_s_max() -> u64 {
    8 << 20
}
fn default_remote_quorum() -> usize {
    1
}
fn default_remote_sync_timeout_ms() -> u64 {
    5_000
}
fn default_remote_lag_ms() -> u64 {
    2_000
}
fn default_remote_drain_ms() -> u64 {
    10_000
}
fn default_remote_retain_generations() -> u64 {
    2
}
fn default_warn_days_left() -> u32 {
    7
}
fn default_warn_free_percent() -> u32 {
    10
}

impl Config {
    /// A configuration with defaults for everything but the journal.
    pub fn new(journal: PathBuf) -> Config {
        Config {
            journal,
            database: default_database(),
            direct_io: true,
            block_bytes: default_block_bytes(),
            segment_bytes: default_segment_bytes(),
            shutdown_quiet_ms: default_shutdown_quiet_ms(),
            status_file: None,
            drill_result_file: None,
            on_device_lost: DeviceLostPolicy::Halt,
            filter: Filter::None,
            compression: Compression::default(),
            change_chunk_bytes: default_change_chunk_bytes(),
            keep_generations: default_keep_generations(),
            compact_journal_bytes: default_compact_journal_bytes(),
            compact_after_secs: 0,
            compact_bytes_per_s_max: default_compact_bytes_per_s_max(),
            mirror: None,
            mirror_max_lag: default_mirror_max_lag(),
            key_file: None,
            hsm_secret: None,
            hsm_passphrase_file: None,
            remote_sync: RemoteSync::None,
            remote_quorum: default_remote_quorum(),
            remote_sync_timeout_ms: default_remote_sync_timeout_ms(),
            remote_sync_on_timeout: OnTimeout::Halt,
            remote_lag_ms: default_remote_lag_ms(),
            remote_drain_ms: default_remote_drain_ms(),
            remote_retain_generations: default_remote_retain_generations(),
            destinations: vec![],
            warn_days_left: default_warn_days_left(),
            warn_free_percent: default_warn_free_percent(),
            metrics_file: None,
            on_alert: None,
        }
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", describe_toml_error(text, &e)))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        if self.journal.as_os_str().is_empty() {
            bail!("`journal` is empty: name the directory on the backup device");
        }
        self.journal_options().validate()?;
        if self.mirror.as_ref().is_some_and(|m| m.as_os_str().is_empty()) {
            bail!("`mirror` is empty: name the database file to keep, or remove the line");
        }
        if self.keep_generations == 0 {
            bail!("keep_generations must be at least 1 (the newest generation is the backup)");
        }
        if self.shutdown_quiet_ms > 30_000 {
            bail!("shutdown_quiet_ms must be at most 30000 (lightningd stops waiting for plugins after 30 s)");
        }
        self.validate_health()?;
        self.validate_remote()
    }

    fn validate_health(&self) -> Result<()> {
        if self.warn_days_left > WARN_DAYS_LEFT_MAX {
            bail!("warn_days_left must be between 0 (off) and {WARN_DAYS_LEFT_MAX}");
        }
        if self.warn_free_percent > 99 {
            bail!("warn_free_percent must be between 0 (off) and 99");
        }
        if self.metrics_file.as_ref().is_some_and(|m| m.as_os_str().is_empty()) {
            bail!(
                "`metrics_file` is empty: name the file (e.g. node_exporter's textfile directory), or remove the line"
            );
        }
        if let Some(argv) = &self.on_alert {
            match argv.first() {
                Some(p) if Path::new(p).is_absolute() => {}
                _ => bail!("on_alert must start with the command's absolute path, e.g. [\"/usr/local/bin/notify\"]"),
            }
            if argv.iter().any(|a| a.contains('\0')) {
                bail!("on_alert: an argument contains a NUL byte");
            }
        }
        Ok(())
    }

    fn validate_remote(&self) -> Result<()> {
        if self.destinations.is_empty() {
            if self.remote_sync != RemoteSync::None {
                bail!("remote_sync is set but no [[destination]] is configured");
            }
            return Ok(());
        }
        if self.key_file.is_some() == self.hsm_secret.is_some() {
            bail!(
                "[[destination]] needs exactly one of `key_file` (made by `cln-replica keygen --out FILE`) and \
                 `hsm_secret`: everything that leaves the box is encrypted"
            );
        }
        for d in &self.destinations {
            crate::remote::store::parse_url(&d.url)?;
        }
        if self.remote_sync != RemoteSync::None
            && (self.remote_quorum == 0 || self.remote_quorum > self.destinations.len())
        {
            bail!("remote_quorum must be between 1 and the number of destinations ({})", self.destinations.len());
        }
        if self.remote_drain_ms + self.shutdown_quiet_ms > 29_000 {
            bail!("remote_drain_ms + shutdown_quiet_ms must stay under 29000 (lightningd waits 30 s for plugins)");
        }
        if !(100..=3_600_000).contains(&self.remote_lag_ms) {
            bail!("remote_lag_ms must be between 100 and 3600000");
        }
        if !(1..=REMOTE_SYNC_TIMEOUT_MS_MAX).contains(&self.remote_sync_timeout_ms) {
            bail!(
                "remote_sync_timeout_ms must be between 1 and {REMOTE_SYNC_TIMEOUT_MS_MAX}: lightningd serves no peer \
                 while a hook waits, and peers drop a commitment exchange that stalls 20 s"
            );
        }
        Ok(())
    }

    pub fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            direct_io: self.direct_io,
            block_bytes: self.block_bytes,
            segment_bytes: self.segment_bytes,
            filter: self.filter,
            compression: self.compression,
            chunk_bytes: self.change_chunk_bytes,
        }
    }

    /// Reads and checks a configuration file; relative paths in it are
    /// resolved: `journal` against the file's directory, `database` against
    /// `network_dir`.
    pub fn load(path: &Path, network_dir: &Path) -> Result<Config> {
        let bytes = crate::files::read_regular(path, CONFIG_BYTES_MAX)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
        let mut c = Config::parse(&text).with_context(|| format!("invalid {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if c.journal.is_relative() {
            c.journal = base.join(&c.journal);
        }
        if let Some(m) = c.mirror.as_mut().filter(|m| m.is_relative()) {
            *m = base.join(&*m);
        }
        if let Some(m) = c.metrics_file.as_mut().filter(|m| m.is_relative()) {
            *m = base.join(&*m);
        }
        if let Some(s) = c.status_file.as_mut().filter(|s| s.is_relative()) {
            *s = base.join(&*s);
        }
        if c.database.is_relative() {
            c.database = network_dir.join(&c.database);
        }
        if let Some(d) = c.drill_result_file.as_mut().filter(|d| d.is_relative()) {
            *d = base.join(&*d);
        }
        if let Some(k) = c.key_file.as_mut().filter(|k| k.is_relative()) {
            *k = base.join(&*k);
        }
        if let Some(p) = c.hsm_passphrase_file.as_mut().filter(|p| p.is_relative()) {
            *p = base.join(&*p);
        }
        if let Some(h) = c.hsm_secret.as_mut().filter(|h| h.is_relative()) {
            *h = network_dir.join(&*h);
        }
        Ok(c)
    }

    /// The configuration as TOML. Fails on a path that is not UTF-8: TOML
    /// strings are UTF-8, so such a path cannot be written into the file.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| anyhow::anyhow!("cannot write the configuration as TOML ({e}): is a path not UTF-8?"))
    }
}

/// A TOML error as an operator can act on it: the line and the key, and
/// what was expected, but never the value, nor the line's text (toml's own
/// message quotes both, and a value can be a secret).
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
    let key = line.and_then(|n| text.lines().nth(n - 1)).and_then(|l| {
        let k = l.split('=').next()?.trim().trim_matches(|c| c == '"' || c == '\'');
        (!k.is_empty() && k.len() < 64 && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
            .then(|| k.to_string())
    });
    let msg = e.message();
    // Key names (unknown/missing/duplicate field) are no secrets; anything
    // else may quote the value: keep only what was expected.
    let what = if msg.starts_with("unknown field") || msg.starts_with("missing field") || msg.starts_with("duplicate") {
        msg.lines().next().unwrap_or(msg).to_string()
    } else {
        match msg.split_once("expected ") {
            Some((_, expected)) => format!("invalid value, expected {}", expected.lines().next().unwrap_or("")),
            None => "invalid value or syntax".to_string(),
        }
    };
    match (line, key) {
        (Some(n), Some(k)) => format!("line {n}, key `{k}`: {what}"),
        (Some(n), None) => format!("line {n}: {what}"),
        _ => what,
    }
}

/// Where the plugin looks for its configuration: `$CLN_REPLICA_CONFIG`, or
/// `cln-replica.toml` in the working directory.
pub fn locate(cwd: &Path) -> PathBuf {
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => cwd.join(CONFIG_FILE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("journal = \"/mnt/lnbackup/cln-replica\"\n").unwrap();
        assert_eq!(c, Config::new("/mnt/lnbackup/cln-replica".into()));
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.journal_options().compression, Compression::Zstd);
        let off = Config::parse("journal = \"/j\"\ncompression = \"off\"\n").unwrap();
        assert_eq!(off.journal_options().compression, Compression::Off);
        assert!(Config::parse("journal = \"/j\"\ncompression = \"lz4\"\n").is_err());
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = Config::parse("journal = \"/j\"\ndirect_oi = false\n").unwrap_err().to_string();
        assert!(e.contains("direct_oi"), "{e}");
        assert!(Config::parse("").unwrap_err().to_string().contains("journal"));
        assert!(Config::parse("journal = \"/j\"\nblock_bytes = 1000\n").is_err());
        assert!(Config::parse("journal = \"/j\"\nsegment_bytes = 10\n").is_err());
        assert!(Config::parse("journal = 5\n").is_err());
        assert!(Config::parse("journal = \"\"\n").is_err());
        assert!(Config::parse("journal = \"/j\"\nkeep_generations = 0\n").is_err());
        let c = Config::parse("journal = \"/j\"\nkeep_generations = 3\ncompact_after_secs = 60\n").unwrap();
        assert_eq!((c.keep_generations, c.compact_after_secs), (3, 60));
    }

    /// A mistake in the file names the key and the line, never the value:
    /// the value may be a secret, and the message reaches lightningd's log.
    #[test]
    fn errors_never_quote_a_value() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        for text in [
            format!("journal = \"/j\"\nkey_file = \"k\"\n[[destination]]\nurl = \"s3://b/p\"\nsecret_acess_key = \"{secret}\"\n"),
            format!("journal = \"/j\"\nremote_quorum = \"{secret}\"\n"),
            format!("journal = \"/j\"\nfilter = \"{secret}\"\n"),
            format!("journal = \"/j\"\nsecret = {secret}\n"),
            format!("journal = \"{secret}\n"),
        ] {
            let e = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(!e.contains(secret) && !e.contains("wJalr"), "{e}");
            assert!(e.contains("line"), "{e}");
        }
        let e = Config::parse(&format!("journal = \"/j\"\nremote_quorum = \"{secret}\"\n")).unwrap_err().to_string();
        assert!(e.contains("`remote_quorum`") && e.contains("line 2"), "{e}");
        let e = Config::parse("journal = \"/j\"\ndirect_oi = false\n").unwrap_err().to_string();
        assert!(e.contains("direct_oi"), "{e}");
    }

    #[test]
    fn destinations_parse_and_need_a_key() {
        let text = "journal = \"/j\"\nkey_file = \"k\"\nremote_sync = \"channel-state\"\n\
                    [[destination]]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9000\"\n\
                    [[destination]]\nurl = \"file:///mnt/nas\"\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.remote_sync, RemoteSync::ChannelState);
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        assert!(Config::parse("journal = \"/j\"\n[[destination]]\nurl = \"file:///x\"\n").is_err(), "no key");
        assert!(Config::parse("journal = \"/j\"\nremote_sync = \"all\"\n").is_err(), "sync without destination");
        assert!(Config::parse("journal = \"/j\"\nkey_file = \"k\"\n[[destination]]\nurl = \"file:///x\"\nurll = 1\n")
            .is_err());
        assert!(Config::parse("journal = \"/j\"\nremote_sync = \"sometimes\"\n").is_err());
        let slow = "journal = \"/j\"\nkey_file = \"k\"\nremote_sync = \"all\"\nremote_sync_timeout_ms = 60000\n\
                    [[destination]]\nurl = \"file:///x\"\n";
        assert!(Config::parse(slow).unwrap_err().to_string().contains("remote_sync_timeout_ms"));
    }

    #[test]
    fn health_keys() {
        let c = Config::parse("journal = \"/j\"\n").unwrap();
        assert_eq!((c.warn_days_left, c.warn_free_percent, c.metrics_file, c.on_alert), (7, 10, None, None));
        let text = "journal = \"/j\"\nwarn_days_left = 0\nwarn_free_percent = 25\nmetrics_file = \"m.prom\"\n\
                    on_alert = [\"/usr/local/bin/notify\", \"--to\", \"me\"]\n";
        let c = Config::parse(&format!("{text}key_file = \"k\"\n[[destination]]\nurl = \"file:///x\"\n")).unwrap();
        assert_eq!((c.warn_days_left, c.warn_free_percent), (0, 25));
        assert_eq!(c.on_alert.as_deref().unwrap().len(), 3);
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
        for bad in [
            "warn_free_percent = 100",
            "warn_days_left = 100000",
            "warn_days_left = -1",
            "on_alert = []",
            "on_alert = [\"notify\"]",
            "on_alert = \"/bin/notify\"",
            "metrics_file = \"\"",
        ] {
            assert!(Config::parse(&format!("journal = \"/j\"\n{bad}\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "journal = \"j\"\nstatus_file = \"s.json\"\n").unwrap();
        let c = Config::load(&path, Path::new("/net")).unwrap();
        assert_eq!(c.journal, dir.path().join("j"));
        assert_eq!(c.status_file.as_deref(), Some(dir.path().join("s.json").as_path()));
        assert_eq!(c.database, Path::new("/net/lightningd.sqlite3"));
    }
}
