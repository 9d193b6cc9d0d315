//! The restore drill: proof, made on a schedule, that the backup restores.
//!
//! The local journal is verified ([`crate::verify`]); then each configured
//! destination on its own is surveyed, fetched and restored, exactly as
//! `restore --from URL` does it ([`crate::remote::fetch`], then
//! [`crate::restore`]), into a scratch directory the drill makes and removes
//! (never lightningd's directory: [`check_work_dir`]). The restored copy is
//! checked with SQLite's integrity check and its data_version compared with
//! the journal's newest. The outcome ([`DrillResult`]) is written as JSON,
//! atomically and 0600, for the plugin, the panel and the metrics to read
//! back with [`read_result`].
//!
//! Not here: the command line's output (src/cli/drill.rs), and any repair:
//! the drill only reports.

use crate::config::Config;
use crate::files::{self, Durability, Staged};
use crate::journal::identity::{self, JournalId};
use crate::remote::crypto::Key;
use crate::remote::fetch::{self, Which};
use crate::remote::DestinationConfig;
use crate::restore::{restore, RestoreOptions};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The result's file name beside `status_file` when `drill_result_file` is
/// not set.
pub const RESULT_FILE: &str = "drill-result.json";
/// A result file larger than this is refused unread (and never written).
pub const RESULT_BYTES_MAX: u64 = 1 << 20;
/// An error kept in the result is cut to this many characters, so that the
/// file stays far below [`RESULT_BYTES_MAX`] with many destinations.
pub const ERROR_CHARS_MAX: usize = 2000;
/// At most this many of the journal's problems are named in the result
/// (`cln-replica verify` lists every one).
const JOURNAL_PROBLEMS_SHOWN_MAX: usize = 3;

/// What one drill found. The JSON shape is read by other components: keep
/// it as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillResult {
    pub finished_unix_ms: u64,
    /// The journal is sound, and every destination restored and is behind
    /// the journal by less than the drill's allowance.
    pub ok: bool,
    pub journal: JournalCheck,
    pub destinations: Vec<DestinationCheck>,
}

/// The local journal, verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalCheck {
    pub ok: bool,
    /// Its newest data_version (possibly an acknowledged change lightningd
    /// never committed), when it could be read.
    pub data_version: Option<u32>,
    pub error: Option<String>,
}

/// How one destination did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Restored, intact, and at (or past) the journal's newest data_version.
    Ok,
    /// Restored and intact, but older than the journal's newest.
    Behind,
    /// Could not be restored, or the result failed its checks: `error` says why.
    Failed,
}

/// One destination's restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationCheck {
    /// The destination's URL without a password or options.
    pub url: String,
    pub outcome: Outcome,
    /// The restored copy's data_version.
    pub data_version: Option<u32>,
    /// How many data_versions, and how many milliseconds of the journal's
    /// record times, the restored copy is behind the journal's newest (0
    /// when it is not behind; none when it failed or the journal could not
    /// be read).
    pub behind_versions: Option<u32>,
    pub behind_ms: Option<u64>,
    pub error: Option<String>,
}

impl DestinationCheck {
    /// Whether this destination lets the drill pass: a destination behind
    /// the journal by less than `behind_ms_max` is one that ships in the
    /// background (`remote_lag_ms`) on a busy node.
    pub fn passes(&self, behind_ms_max: u64) -> bool {
        match self.outcome {
            Outcome::Ok => true,
            Outcome::Behind => self.behind_ms.is_some_and(|ms| ms < behind_ms_max),
            Outcome::Failed => false,
        }
    }
}

/// How the drill runs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Where the scratch directory is made.
    pub work_dir: PathBuf,
    /// Directories the scratch directory must not be in (lightningd's).
    pub forbidden: Vec<PathBuf>,
    /// A destination behind by this many milliseconds or more fails the drill.
    pub behind_ms_max: u64,
}

/// Why a result file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a drill result: {source}", path.display())]
    Malformed { path: PathBuf, source: serde_json::Error },
}

/// Where the result goes: `drill_result_file`, else `drill-result.json`
/// beside `status_file`, else nowhere.
pub fn result_path(config: &Config) -> Option<PathBuf> {
    config
        .drill_result_file
        .clone()
        .or_else(|| config.status_file.as_deref().map(|s| files::parent_dir(s).join(RESULT_FILE)))
}

/// Reads a result file (a regular file of at most [`RESULT_BYTES_MAX`]).
pub fn read_result(path: &Path) -> Result<DrillResult, ReadError> {
    let bytes = files::read_regular(path, RESULT_BYTES_MAX)
        .map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| ReadError::Malformed { path: path.to_path_buf(), source })
}

/// Writes `result` to `path`: 0600, flushed, renamed over the old one.
pub fn write_result(path: &Path, result: &DrillResult) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let json = serde_json::to_vec_pretty(result)?;
    assert!(json.len() as u64 <= RESULT_BYTES_MAX, "errors are cut to ERROR_CHARS_MAX");
    let staged = Staged::beside(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(staged.path())
        .with_context(|| format!("cannot create {}", staged.path().display()))?;
    f.write_all(&json).with_context(|| format!("cannot write {}", staged.path().display()))?;
    drop(f);
    staged.install(Durability::Flushed)
}

/// Refuses a work directory inside one of `forbidden`: the drill's copies
/// never go where lightningd keeps its database.
pub fn check_work_dir(work_dir: &Path, forbidden: &[PathBuf]) -> Result<PathBuf> {
    let work = work_dir
        .canonicalize()
        .with_context(|| format!("the drill's work directory {} cannot be used", work_dir.display()))?;
    for f in forbidden {
        let Ok(f) = f.canonicalize() else { continue };
        if work.starts_with(&f) {
            bail!(
                "the drill's work directory {} is inside {}, lightningd's directory: name another with --work-dir \
                 (or TMPDIR)",
                work.display(),
                f.display()
            );
        }
    }
    Ok(work)
}

/// The journal's newest record.
#[derive(Debug, Clone, Copy)]
struct Newest {
    data_version: u32,
    time_unix_ms: u64,
}

/// Runs the drill. `Err` only when it cannot start (its work directory);
/// every check's failure is in the result.
pub fn drill(config: &Config, opts: &DrillOptions) -> Result<DrillResult> {
    let work = check_work_dir(&opts.work_dir, &opts.forbidden)?;
    let scratch = tempfile::Builder::new()
        .prefix(".cln-replica-drill-")
        .tempdir_in(&work)
        .with_context(|| format!("cannot create a scratch directory in {}", work.display()))?;
    let (journal, newest) = check_journal(&config.journal, scratch.path());
    let local_id = identity::read(&config.journal).ok();
    let key = (!config.destinations.is_empty()).then(|| {
        crate::remote::Replicator::load_key(
            config.key_file.as_deref(),
            config.hsm_secret.as_deref(),
            config.hsm_passphrase_file.as_deref(),
        )
        .map_err(|e| format!("{e:#}"))
    });
    let mut destinations = Vec::with_capacity(config.destinations.len());
    for d in &config.destinations {
        let key = key.as_ref().expect("loaded when destinations are configured");
        destinations.push(check_destination(d, key, local_id, newest, scratch.path()));
    }
    let ok = journal.ok && destinations.iter().all(|d| d.passes(opts.behind_ms_max));
    scratch.close().context("cannot remove the drill's scratch directory")?;
    Ok(DrillResult { finished_unix_ms: crate::clock::now_unix_ms(), ok, journal, destinations })
}

fn check_journal(journal: &Path, scratch: &Path) -> (JournalCheck, Option<Newest>) {
    match crate::verify::verify_in(journal, true, scratch) {
        Err(e) => (JournalCheck { ok: false, data_version: None, error: Some(cut(format!("{e:#}"))) }, None),
        Ok(report) => {
            let newest = report
                .generations
                .last()
                .map(|g| Newest { data_version: g.last_version, time_unix_ms: g.last_time_unix_ms });
            let error = (!report.ok()).then(|| {
                let mut shown: Vec<String> =
                    report.problems.iter().take(JOURNAL_PROBLEMS_SHOWN_MAX).map(describe_problem).collect();
                if report.problems.len() > JOURNAL_PROBLEMS_SHOWN_MAX {
                    shown.push(format!("and {} more (run `cln-replica verify`)", report.problems.len() - shown.len()));
                }
                cut(shown.join("; "))
            });
            (JournalCheck { ok: report.ok(), data_version: newest.map(|n| n.data_version), error }, newest)
        }
    }
}

fn describe_problem(p: &crate::verify::Problem) -> String {
    format!("[{}] {}", p.place(), p.detail)
}

/// What a destination restored to.
struct Restored {
    data_version: u32,
    /// Its newest record's time, as the destination's objects record it.
    time_unix_ms: u64,
}

fn check_destination(
    d: &DestinationConfig,
    key: &std::result::Result<Key, String>,
    local_id: Option<JournalId>,
    newest: Option<Newest>,
    scratch: &Path,
) -> DestinationCheck {
    let url = d.redacted_url();
    let restored = match key {
        Ok(key) => restore_one(d, key, local_id, scratch),
        Err(e) => Err(anyhow::anyhow!("no key: {e}")),
    };
    match restored {
        Err(e) => DestinationCheck {
            url,
            outcome: Outcome::Failed,
            data_version: None,
            behind_versions: None,
            behind_ms: None,
            error: Some(cut(scrub(d, format!("{e:#}")))),
        },
        Ok(r) => compare(url, &r, newest),
    }
}

/// The restored copy against the journal's newest record.
fn compare(url: String, r: &Restored, newest: Option<Newest>) -> DestinationCheck {
    let (outcome, behind_versions, behind_ms) = match newest {
        None => (Outcome::Ok, None, None),
        Some(n) if crate::state::is_after(n.data_version, r.data_version) => (
            Outcome::Behind,
            Some(n.data_version.wrapping_sub(r.data_version)),
            Some(n.time_unix_ms.saturating_sub(r.time_unix_ms)),
        ),
        // Equal, or past it: the journal went on while the drill ran.
        Some(_) => (Outcome::Ok, Some(0), Some(0)),
    };
    DestinationCheck { url, outcome, data_version: Some(r.data_version), behind_versions, behind_ms, error: None }
}

/// Survey, plan, fetch and restore from `d` alone, into a directory of its
/// own inside `scratch` that is removed before returning; then the
/// integrity check on the restored file.
fn restore_one(d: &DestinationConfig, key: &Key, local_id: Option<JournalId>, scratch: &Path) -> Result<Restored> {
    let store = crate::remote::open_store(d)?;
    let survey = fetch::survey(store.as_ref(), key)?;
    if let (Some(local), Some(remote)) = (local_id, survey.journal()) {
        if local != remote {
            bail!("it holds another journal (id {remote}; this node's journal is {local})");
        }
    }
    let plan = fetch::plan(&survey, Which::Newest, false)?;
    let dir = tempfile::Builder::new().prefix("destination-").tempdir_in(scratch)?;
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).with_context(|| format!("cannot create {}", journal.display()))?;
    fetch::fetch(store.as_ref(), key, &survey, &plan, &journal)?;
    let to = dir.path().join("restored.sqlite3");
    let opts = RestoreOptions {
        from: journal,
        to: to.clone(),
        at: None,
        before_unix_ms: None,
        force: false,
        allow_older: false,
    };
    let report = restore(&opts, |_| {})?;
    // Checked again on the installed file, as lightningd would open it.
    let conn = rusqlite::Connection::open_with_flags(&to, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the restored copy {}", to.display()))?;
    crate::replay::check_database(&conn, report.data_version, true)?;
    drop(conn);
    dir.close().context("cannot remove the restored copy")?;
    Ok(Restored { data_version: report.data_version, time_unix_ms: plan.time_unix_ms })
}

/// An error's text with any secret the destination's settings hold
/// replaced: a store's message may quote a URL.
fn scrub(d: &DestinationConfig, text: String) -> String {
    let mut secrets: Vec<String> = vec![];
    if let Some(s) = &d.secret_access_key {
        secrets.push(s.0.clone());
    }
    if let Some((_, rest)) = d.url.split_once("://") {
        let userinfo = rest.split_once('@').map(|(u, _)| u).filter(|u| !u.contains('/'));
        if let Some((_, password)) = userinfo.and_then(|u| u.split_once(':')) {
            secrets.push(password.to_string());
        }
    }
    if let Some((_, query)) = d.url.split_once('?') {
        secrets.push(query.to_string());
        secrets.extend(query.split('&').filter_map(|kv| kv.split_once('=')).map(|(_, v)| v.to_string()));
    }
    let mut out = text;
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

fn cut(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(ERROR_CHARS_MAX) {
        s.truncate(i);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcome: Outcome, behind_ms: Option<u64>) -> DestinationCheck {
        DestinationCheck {
            url: "file:///x".into(),
            outcome,
            data_version: Some(1),
            behind_versions: behind_ms.map(|_| 1),
            behind_ms,
            error: None,
        }
    }

    #[test]
    fn behind_passes_only_under_the_allowance() {
        assert!(check(Outcome::Ok, Some(0)).passes(0));
        assert!(check(Outcome::Behind, Some(500)).passes(60_000));
        assert!(!check(Outcome::Behind, Some(500)).passes(500));
        assert!(!check(Outcome::Behind, Some(0)).passes(0), "an allowance of 0 tolerates nothing");
        assert!(!check(Outcome::Failed, None).passes(u64::MAX));
    }

    #[test]
    fn compare_counts_versions_across_the_wrap() {
        let r = Restored { data_version: u32::MAX - 1, time_unix_ms: 1_000 };
        let c = compare("u".into(), &r, Some(Newest { data_version: 2, time_unix_ms: 4_000 }));
        assert_eq!((c.outcome, c.behind_versions, c.behind_ms), (Outcome::Behind, Some(4), Some(3_000)));
        let ahead = compare("u".into(), &r, Some(Newest { data_version: u32::MAX - 3, time_unix_ms: 0 }));
        assert_eq!((ahead.outcome, ahead.behind_versions), (Outcome::Ok, Some(0)));
    }

    #[test]
    fn the_result_round_trips_in_its_exact_shape() {
        let r = DrillResult {
            finished_unix_ms: 5,
            ok: false,
            journal: JournalCheck { ok: true, data_version: Some(7), error: None },
            destinations: vec![DestinationCheck { error: Some("x".into()), ..check(Outcome::Failed, None) }],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"finished_unix_ms": 5, "ok": false,
                "journal": {"ok": true, "data_version": 7, "error": null},
                "destinations": [{"url": "file:///x", "outcome": "failed", "data_version": 1,
                    "behind_versions": null, "behind_ms": null, "error": "x"}]})
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RESULT_FILE);
        write_result(&path, &r).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_result(&path).unwrap(), r);
        std::fs::write(&path, b"{}").unwrap();
        assert!(matches!(read_result(&path), Err(ReadError::Malformed { .. })));
    }

    #[test]
    fn secrets_are_scrubbed_and_errors_cut() {
        let mut d = DestinationConfig::new("sftp://bob:hunter22@host/p?key=/secret/k");
        d.secret_access_key = Some(crate::remote::settings::Secret("AKIAsecret".into()));
        let s = scrub(&d, "failed at sftp://bob:hunter22@host/p?key=/secret/k with AKIAsecret".into());
        assert!(!s.contains("hunter22") && !s.contains("/secret/k") && !s.contains("AKIAsecret"), "{s}");
        assert_eq!(cut("é".repeat(ERROR_CHARS_MAX + 5)).chars().count(), ERROR_CHARS_MAX + 3);
    }

    #[test]
    fn a_work_dir_inside_lightningds_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("bitcoin");
        std::fs::create_dir_all(net.join("sub")).unwrap();
        assert!(check_work_dir(&net.join("sub"), std::slice::from_ref(&net)).is_err());
        assert!(check_work_dir(&net, std::slice::from_ref(&net)).is_err());
        assert!(check_work_dir(dir.path(), &[net]).is_ok());
    }
}
