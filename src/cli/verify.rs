//! `cln-replica verify`: check a journal end to end without changing it.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Check every checksum and the continuity of versions, and replay the newest generation
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 when the journal is sound, 1 when a problem was found (each \
problem names its generation, data_version and byte offset), 2 when the journal cannot be read.")]
pub struct Args {
    /// The journal directory, or a destination URL (s3://, sftp://, file://)
    #[arg(long)]
    from: std::ffi::OsString,
    #[command(flatten)]
    key: super::restore::KeyArgs,
    /// Skip replaying the newest generation (checksums and continuity only)
    #[arg(long)]
    no_replay: bool,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let url = a.from.to_str().filter(|f| crate::remote::store::is_url(f)).map(String::from);
    let (_guard, from) = if let Some(url) = &url {
        // Every object is downloaded and authenticated; a refusal names it.
        let (dir, fetched) = match fetch_all(&a, url) {
            Ok(x) => x,
            Err(e) => {
                println!("PROBLEM: {e:#}");
                println!("destination has problems");
                return Ok(ExitCode::from(1));
            }
        };
        if !a.json {
            println!("fetched {} object(s), all authenticated", fetched.objects);
        }
        let p = dir.path().to_path_buf();
        (Some(dir), p)
    } else {
        (None, PathBuf::from(&a.from))
    };
    let report = crate::verify::verify(&from, !a.no_replay)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for g in &report.generations {
            println!(
                "generation {}: data_versions {}..{}, {} records{}",
                g.generation,
                g.base_version,
                g.last_version,
                g.records,
                g.torn_tail.as_ref().map(|t| format!(", torn unacknowledged tail at {t}")).unwrap_or_default()
            );
        }
        if let Some(v) = report.replayed_to {
            println!("replayed the newest generation to data_version {v}: integrity check ok");
        }
        for p in &report.problems {
            println!("PROBLEM [{}]: {}", p.place(), p.detail);
        }
        println!("{}", if report.ok() { "journal OK" } else { "journal has problems" });
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every generation of the destination, into a temporary local journal.
fn fetch_all(a: &Args, url: &str) -> Result<(tempfile::TempDir, crate::remote::fetch::Fetched)> {
    use crate::remote::fetch;
    let key = a.key.load()?;
    let store = crate::remote::open_store(&crate::remote::DestinationConfig::new(url))?;
    let survey = fetch::survey(store.as_ref(), &key)?;
    let plan = fetch::plan(&survey, fetch::Which::All, false)?;
    let dir = tempfile::Builder::new().prefix(".cln-replica-fetch-").tempdir_in(std::env::temp_dir())?;
    let fetched = fetch::fetch(store.as_ref(), &key, &survey, &plan, dir.path())?;
    Ok((dir, fetched))
}
