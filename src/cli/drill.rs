//! `cln-replica drill`: verify the journal and restore from every
//! destination into a scratch copy, and say how each did (docs/DRILL.md).

use crate::config::{self, Config};
use crate::drill::{self, DrillOptions, DrillResult, Outcome};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;

/// Prove that the backup restores: verify the journal, restore from each destination into a scratch copy
#[derive(clap::Args)]
#[command(after_help = "Exit status: 0 when every check passed, 1 when one failed (each is named), 2 when the \
drill could not run. The result is written as JSON to drill_result_file (default: drill-result.json beside \
status_file), or to --result. lightningd's database and directory are never written.")]
pub struct Args {
    /// The configuration file (default: $CLN_REPLICA_CONFIG, or cln-replica.toml in --lightning-dir)
    #[arg(long)]
    config: Option<PathBuf>,
    /// The lightning network directory holding cln-replica.toml
    #[arg(long)]
    lightning_dir: Option<PathBuf>,
    /// Write the result here (default: drill_result_file, or drill-result.json beside status_file)
    #[arg(long, value_name = "PATH")]
    result: Option<PathBuf>,
    /// Where the scratch copies are made (default: $TMPDIR or /tmp); never inside lightningd's directory
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// A destination behind the journal's newest record by this long or more fails the drill
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    max_behind_secs: u64,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    // The copies are lightningd's database: readable by this user only.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let cwd = std::env::current_dir()?;
    let net_dir = a.lightning_dir.clone().unwrap_or(cwd);
    let config = match &a.config {
        Some(path) => Config::load(path, &net_dir)?,
        None => {
            let path = config::locate(&net_dir);
            if !path.exists() {
                bail!("no configuration: use --config FILE or --lightning-dir DIR (no {})", path.display());
            }
            Config::load(&path, &net_dir)?
        }
    };
    let mut forbidden: Vec<PathBuf> = a.lightning_dir.iter().cloned().collect();
    if config.database.exists() {
        forbidden.push(crate::files::parent_dir(&config.database).to_path_buf());
    }
    let opts = DrillOptions {
        work_dir: a.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        forbidden,
        behind_ms_max: a.max_behind_secs.saturating_mul(1000),
    };
    let result = drill::drill(&config, &opts)?;
    let path = a.result.clone().or_else(|| drill::result_path(&config));
    let written = path.as_ref().map(|p| drill::write_result(p, &result));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_human(&config, &result, a.max_behind_secs);
        match (&path, &written) {
            (Some(p), Some(Ok(()))) => println!("result written to {}", p.display()),
            (None, _) => println!("result not written: set drill_result_file or status_file, or give --result"),
            _ => {}
        }
    }
    if let Some(Err(e)) = written {
        return Err(e.context("the drill ran, but its result could not be written"));
    }
    Ok(if result.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_human(config: &Config, r: &DrillResult, max_behind_secs: u64) {
    let j = &r.journal;
    let newest = j.data_version.map_or("none".into(), |v| format!("newest data_version {v}"));
    match &j.error {
        None => println!("journal {}: ok, {newest}, replayed, integrity check ok", config.journal.display()),
        Some(e) => println!("journal {}: FAILED ({newest}): {e}", config.journal.display()),
    }
    if r.destinations.is_empty() {
        println!("no destination configured: only the journal was checked");
    }
    for d in &r.destinations {
        let v = d.data_version.map_or("-".into(), |v| v.to_string());
        match d.outcome {
            Outcome::Ok => println!("destination {}: ok, restored data_version {v}, integrity check ok", d.url),
            Outcome::Behind => println!(
                "destination {}: {} by {} version(s) and {:.1} s: restored data_version {v}, integrity check ok",
                d.url,
                if d.passes(max_behind_secs.saturating_mul(1000)) { "behind (within the allowance)" } else { "BEHIND" },
                d.behind_versions.unwrap_or(0),
                d.behind_ms.unwrap_or(0) as f64 / 1000.0
            ),
            Outcome::Failed => {
                println!("destination {}: FAILED: {}", d.url, d.error.as_deref().unwrap_or("unknown"))
            }
        }
    }
    println!("{}", if r.ok { "drill OK" } else { "drill FAILED" });
}
