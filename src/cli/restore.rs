//! `cln-replica restore`: rebuild lightningd.sqlite3 from the journal.

use crate::remote::fetch::{Source, Which};
use crate::restore::{restore, RestoreOptions};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Rebuild lightningd's database from the journal (latest, or at a data_version)
#[derive(clap::Args)]
#[command(after_help = "Stop lightningd before putting a restored database in place. A restored \
database is checked (SQLite integrity check, vars.data_version) before it is renamed to --to.")]
pub struct Args {
    /// The journal directory (`journal` in cln-replica.toml), or a destination:
    /// s3://bucket/prefix, sftp://user@host:port/path, file:///path
    #[arg(long)]
    from: std::ffi::OsString,
    /// Key file for a destination URL (made by `cln-replica keygen`)
    #[arg(long, value_name = "FILE", conflicts_with = "hsm_secret")]
    key_file: Option<PathBuf>,
    /// lightningd's hsm_secret, when the destinations' key is derived from it
    #[arg(long, value_name = "FILE")]
    hsm_secret: Option<PathBuf>,
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
    /// Replace --to if it exists (it is moved aside with its -journal, -wal
    /// and -shm as <name>.before-restore-<UTC time>, never deleted)
    #[arg(long)]
    force: bool,
    /// Replace a --to that holds a newer data_version (or one that cannot be
    /// told) with this older state
    #[arg(long)]
    allow_older: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(mirror) = &a.from_mirror {
        let r =
            crate::mirror::restore_from_mirror(std::path::Path::new(&a.from), mirror, &a.to, a.force, a.allow_older)?;
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
    let before_unix_ms = a.before.as_deref().map(crate::clock::parse_to_unix_ms).transpose()?;
    let source = Source { from: a.from.to_string_lossy().into_owned(), key_file: a.key_file, hsm_secret: a.hsm_secret };
    let _fetched;
    let from = if source.is_remote() {
        let near = match a.to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let which = a.at.map(Which::At).unwrap_or(Which::Newest);
        let (dir, fetched) = source.materialise(which, &near)?;
        for s in &fetched.skipped {
            eprintln!("note: {s}");
        }
        if !a.json {
            println!(
                "fetched {} object(s), {} from {}: generation(s) {:?}, every object authenticated",
                fetched.objects,
                super::bytes(fetched.bytes),
                a.from.to_string_lossy().split('?').next().unwrap_or(""),
                fetched.generations
            );
        }
        let path = dir.path().to_path_buf();
        _fetched = dir;
        path
    } else {
        PathBuf::from(&a.from)
    };
    let opts = RestoreOptions { from, to: a.to, at: a.at, before_unix_ms, force: a.force, allow_older: a.allow_older };
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
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
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
