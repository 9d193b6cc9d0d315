//! `cln-replica compact`: roll the journal up into a new generation while the
//! plugin is stopped (it takes the journal's lock). With the plugin running,
//! use its `replica-compact` method instead.

use crate::config::{self, Config};
use crate::device::RealDevice;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Compact the journal: a new generation whose snapshot is the current one plus its records
#[derive(clap::Args)]
#[command(after_help = "The new snapshot is built from the journal alone (never from lightningd's \
database); the old generation is removed only once the new one is durable, and only beyond \
keep_generations. While the plugin runs it holds the journal's lock: run `lightning-cli \
replica-compact` then.")]
pub struct Args {
    /// The configuration file (default: $CLN_REPLICA_CONFIG, or cln-replica.toml in --lightning-dir)
    #[arg(long)]
    config: Option<PathBuf>,
    /// The lightning network directory holding cln-replica.toml
    #[arg(long)]
    lightning_dir: Option<PathBuf>,
    /// The journal directory, with default settings (instead of a configuration)
    #[arg(long, conflicts_with = "config")]
    from: Option<PathBuf>,
    /// Generations to keep (default: keep_generations from the configuration)
    #[arg(long)]
    keep: Option<u32>,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cwd = std::env::current_dir()?;
    let net_dir = a.lightning_dir.clone().unwrap_or(cwd);
    let mut config = match (&a.from, &a.config) {
        (Some(from), _) => Config::new(from.clone()),
        (None, Some(path)) => Config::load(path, &net_dir)?,
        (None, None) => {
            let path = config::locate(&net_dir);
            if !path.exists() {
                bail!("no journal given: use --from DIR, --config FILE or --lightning-dir DIR (no {})", path.display());
            }
            Config::load(&path, &net_dir)?
        }
    };
    if let Some(k) = a.keep {
        config.keep_generations = k;
    }
    config.validate()?;
    let bar = Arc::new(std::sync::Mutex::new(None::<super::progress::Bar>));
    let records = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (b, r) = (bar.clone(), records.clone());
    let progress = Box::new(move |p: &crate::restore::ReplayProgress| {
        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
        b.get_or_insert_with(|| super::progress::Bar::new("compact", p.total_bytes)).update(p.records, p.done_bytes);
        r.store(p.records, std::sync::atomic::Ordering::Relaxed);
    });
    let report = crate::compact::compact_offline(&config, Arc::new(RealDevice), Some(progress));
    if let Some(b) = bar.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        b.finish(records.load(std::sync::atomic::Ordering::Relaxed));
    }
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "generation {} compacted into generation {} at data_version {} ({} changes applied, {} carried, \
             snapshot {}; {:.2} s)",
            report.old_generation,
            report.generation,
            report.base_version,
            report.records_applied,
            report.records_carried,
            super::bytes(report.snapshot_bytes),
            report.seconds
        );
        if !report.removed_generations.is_empty() {
            println!("retention: removed generation(s) {:?}", report.removed_generations);
        }
    }
    Ok(ExitCode::SUCCESS)
}
