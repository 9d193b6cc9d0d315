//! `cln-replica restore`: rebuild lightningd.sqlite3 from the journal, or
//! from one of several remote destinations (the one that reaches furthest).

use crate::remote::board::Reach;
use crate::remote::crypto::Key;
use crate::remote::fetch::{self, Plan, Survey, Which};
use crate::restore::{restore, RestoreOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// The key to a destination, on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Key file for a destination URL (made by `cln-replica keygen`)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["hsm_secret", "mnemonic"])]
    pub key_file: Option<PathBuf>,
    /// lightningd's hsm_secret, when the destinations' key is derived from it
    #[arg(long, value_name = "FILE", conflicts_with = "mnemonic")]
    pub hsm_secret: Option<PathBuf>,
    /// Type the node's mnemonic words (from `lightning-hsmtool getsecret`) on
    /// standard input instead of giving the hsm_secret file
    #[arg(long)]
    pub mnemonic: bool,
    /// A file holding the passphrase lightningd was started with
    /// (`--hsm-passphrase`), if it was
    #[arg(long, value_name = "FILE")]
    pub hsm_passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    pub fn load(&self) -> Result<Key> {
        if self.mnemonic {
            let passphrase =
                self.hsm_passphrase_file.as_deref().map(crate::remote::hsm::load_passphrase).transpose()?;
            eprint!("mnemonic words: ");
            let mut words = String::new();
            std::io::stdin().read_line(&mut words).context("cannot read the words from standard input")?;
            return crate::remote::hsm::key_from_words(&words, passphrase.as_deref());
        }
        crate::remote::Replicator::load_key(
            self.key_file.as_deref(),
            self.hsm_secret.as_deref(),
            self.hsm_passphrase_file.as_deref(),
        )
        .context("a destination needs its key: --key-file FILE, --hsm-secret FILE or --mnemonic")
    }
}

/// Rebuild lightningd's database from the journal (latest, or at a data_version)
#[derive(clap::Args)]
#[command(after_help = "Stop lightningd before putting a restored database in place. A restored \
database is checked (SQLite integrity check, vars.data_version) before it is renamed to --to. \
With several --from destinations, the one that reaches furthest is used and the others are named.")]
pub struct Args {
    /// The journal directory (`journal` in cln-replica.toml), or a destination:
    /// s3://bucket/prefix, sftp://user@host:port/path, file:///path (repeat for several destinations)
    #[arg(long, required = true)]
    from: Vec<std::ffi::OsString>,
    #[command(flatten)]
    key: KeyArgs,
    /// The database file to create (e.g. ~/.lightning/bitcoin/lightningd.sqlite3)
    #[arg(long)]
    to: PathBuf,
    /// Restore the database as it was at this data_version (default: the newest)
    #[arg(long, value_name = "DATA_VERSION")]
    at: Option<u32>,
    /// Only changes written at or before this UTC time (YYYY-MM-DDTHH:MM:SSZ or @UNIX_SECONDS)
    #[arg(long, value_name = "TIME")]
    before: Option<String>,
    /// Start from this mirror file (`mirror` in cln-replica.toml) and bring it
    /// to the newest journal version: a few changes to replay, not a generation
    #[arg(long, value_name = "FILE", conflicts_with_all = ["at", "before"])]
    from_mirror: Option<PathBuf>,
    /// Accept an OLDER state: restore from a destination whose objects do
    /// not reach its own tip (its newest objects lost or hidden) or that has
    /// no tip, or replace a --to that holds a newer data_version (or one that
    /// cannot be told)
    #[arg(long)]
    allow_older: bool,
    /// Replace --to if it exists (it is moved aside with its -journal, -wal
    /// and -shm as <name>.before-restore-<UTC time>, never deleted)
    #[arg(long)]
    force: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

/// "3 h 12 min", "45 s": how long ago.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min {} s", s / 60, s % 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn describe_reach(r: &Reach, time_unix_ms: u64) -> String {
    format!(
        "data_version {} (generation {} record {}, written {})",
        r.data_version,
        r.generation,
        r.seq,
        crate::clock::format_unix_ms(time_unix_ms)
    )
}

/// One destination named on the command line, surveyed and planned.
struct Candidate {
    url: String,
    store: Box<dyn crate::remote::Store>,
    survey: Survey,
    plan: std::result::Result<Plan, String>,
}

/// Surveys every destination and picks the one that reaches furthest;
/// says which ones are behind or refused, and why.
fn choose(urls: &[String], key: &Key, which: Which, allow_older: bool) -> Result<Candidate> {
    let mut candidates = vec![];
    let mut unreadable = vec![];
    for url in urls {
        let shown = crate::remote::DestinationConfig::new(url).display_name();
        let store = match crate::remote::open_store(&crate::remote::DestinationConfig::new(url)) {
            Ok(s) => s,
            Err(e) => {
                unreadable.push(format!("{shown}: {e:#}"));
                continue;
            }
        };
        match fetch::survey(store.as_ref(), key) {
            Ok(survey) => {
                let plan = fetch::plan(&survey, which, allow_older).map_err(|e| e.to_string());
                candidates.push(Candidate { url: shown, store, survey, plan });
            }
            Err(e) => unreadable.push(format!("{shown}: {e:#}")),
        }
    }
    let journals: std::collections::BTreeSet<String> =
        candidates.iter().filter_map(|c| c.survey.journal()).map(|j| j.to_string()).collect();
    if journals.len() > 1 {
        bail!(
            "the destinations hold different journals ({}): name only this node's destinations",
            candidates
                .iter()
                .map(|c| format!("{}: {}", c.url, c.survey.journal().map_or("none".into(), |j| j.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut best: Option<usize> = None;
    for (i, c) in candidates.iter().enumerate() {
        if let Ok(p) = &c.plan {
            if best.is_none_or(|b| {
                let bp = candidates[b].plan.as_ref().expect("best has a plan");
                p.reach.at_least(&bp.reach) && p.reach != bp.reach
            }) {
                best = Some(i);
            }
        }
    }
    let report_others = |best: Option<usize>| {
        for u in &unreadable {
            eprintln!("not used: {u}");
        }
        for (i, c) in candidates.iter().enumerate() {
            if Some(i) == best {
                continue;
            }
            match &c.plan {
                Ok(p) => eprintln!("behind: {} reaches only {}", c.url, describe_reach(&p.reach, p.time_unix_ms)),
                Err(e) => eprintln!("refused: {e}"),
            }
        }
    };
    report_others(best);
    let Some(b) = best else {
        bail!("no destination can be restored from (each is named above)");
    };
    Ok(candidates.swap_remove(b))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let from = PathBuf::from(&a.from[0]);
    if let Some(mirror) = &a.from_mirror {
        let r = crate::mirror::restore_from_mirror(&from, mirror, &a.to, a.force, a.allow_older)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "restored {} at data_version {} from the mirror {} (at data_version {}){}",
                r.to.display(),
                r.data_version,
                mirror.display(),
                r.mirror_data_version.map_or("none".into(), |v| v.to_string()),
                if r.rebuilt { ", rebuilt from the journal's newest snapshot" } else { "" }
            );
            print_set_aside(&r.installed, &r.to);
            if let Some(note) = crate::restore::filtered_note(r.filter, r.rescan_from_height) {
                println!("IMPORTANT: {note}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // A URL is text; a local journal's path may not be UTF-8.
    let urls: Vec<String> = a
        .from
        .iter()
        .filter_map(|f| f.to_str())
        .filter(|f| crate::remote::store::is_url(f))
        .map(String::from)
        .collect();
    let remote = urls.len();
    if a.from.len() > 1 && remote != a.from.len() {
        bail!("several --from are destination URLs only (s3://, sftp://, file://): restore a local journal on its own");
    }
    let before_unix_ms = a.before.as_deref().map(crate::clock::parse_to_unix_ms).transpose()?;
    let _fetched;
    let journal = if remote > 0 {
        if a.before.is_some() {
            bail!("--before works on a local journal; from a destination, use --at DATA_VERSION");
        }
        let key = a.key.load()?;
        let which = a.at.map(Which::At).unwrap_or(Which::Newest);
        let c = choose(&urls, &key, which, a.allow_older)?;
        let plan = c.plan.as_ref().expect("chosen for its plan");
        for n in &plan.notes {
            eprintln!("WARNING: {n}");
        }
        let near = match a.to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = tempfile::Builder::new()
            .prefix(".cln-replica-fetch-")
            .tempdir_in(&near)
            .with_context(|| format!("cannot create a temporary directory in {}", near.display()))?;
        let fetched = fetch::fetch(c.store.as_ref(), &key, &c.survey, plan, dir.path())?;
        if !a.json {
            println!(
                "fetched {} object(s), {} from {}: generation(s) {:?}, every object authenticated; it reaches {}",
                fetched.objects,
                super::bytes(fetched.bytes),
                c.url,
                fetched.generations,
                describe_reach(&plan.reach, plan.time_unix_ms)
            );
        }
        let path = dir.path().to_path_buf();
        _fetched = dir;
        path
    } else {
        from
    };
    let opts = RestoreOptions {
        from: journal,
        to: a.to,
        at: a.at,
        before_unix_ms,
        force: a.force,
        allow_older: a.allow_older,
    };
    let mut bar = super::progress::Bar::new("restore", 0);
    let mut last = 0;
    let report = restore(&opts, |p| {
        if last == 0 {
            bar = super::progress::Bar::new("restore", p.total_bytes);
        }
        last = p.records;
        bar.update(p.records, p.done_bytes);
    })?;
    bar.finish(last);
    let now = crate::clock::now_unix_ms();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["age_ms"] = serde_json::json!(now.saturating_sub(report.time_unix_ms));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "restored {} at data_version {} ({} changes replayed onto generation {}'s snapshot at {}; {}; {:.2} s)",
            report.to.display(),
            report.data_version,
            report.records_applied,
            report.generation,
            report.base_version,
            super::bytes(report.bytes),
            report.seconds
        );
        println!(
            "restored state: data_version {}, written {} ({} ago)",
            report.data_version,
            crate::clock::format_unix_ms(report.time_unix_ms),
            age(now.saturating_sub(report.time_unix_ms))
        );
        if report.last_change_unconfirmed {
            println!(
                "note: the last change (data_version {}) was acknowledged to lightningd, which stopped or crashed \
                 before the journal could show it committed; it is included (a newer state is never punished)",
                report.data_version
            );
        }
        print_set_aside(&report.installed, &report.to);
        if report.torn_tail_ignored {
            println!("note: a torn record after the last acknowledged change was ignored (a power cut mid-write)");
        }
        if let Some(note) = crate::restore::filtered_note(report.filter, report.rescan_from_height) {
            println!("IMPORTANT: {note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the replaced file went, and how to go back to it.
fn print_set_aside(installed: &crate::restore::target::Installed, to: &std::path::Path) {
    let Some(db) = installed.set_aside.first() else { return };
    println!(
        "the file it replaced ({}) is kept as {}{}",
        installed.replaced_data_version.map_or("data_version unknown".into(), |v| format!("data_version {v}")),
        db.display(),
        if installed.set_aside.len() > 1 {
            format!(
                " with its {}",
                installed.set_aside[1..].iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        } else {
            String::new()
        }
    );
    println!(
        "  to go back to it: stop lightningd, move {} aside, and rename that set back to {} (each suffix too)",
        to.display(),
        to.display()
    );
}
