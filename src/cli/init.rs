//! `cln-replica init`: write cln-replica.toml and take the first snapshot
//! while lightningd is stopped. Optional: the plugin sets itself up on its
//! own when the journal is empty.

use crate::config::{self, Config};
use crate::device::RealDevice;
use crate::filter::Filter;
use crate::journal::Journal;
use crate::snapshot;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Configure cln-replica for a node and take the first snapshot (lightningd must be stopped)
#[derive(clap::Args)]
#[command(after_help = "Then add `important-plugin=/path/to/cln-replica` to lightningd's config and start it.")]
pub struct Args {
    /// lightningd's directory: the network directory holding lightningd.sqlite3, or its parent
    #[arg(long)]
    lightning_dir: PathBuf,
    /// The network, when --lightning-dir is the parent of the network directory
    #[arg(long, default_value = "bitcoin")]
    network: String,
    /// The journal directory, on the backup device
    #[arg(long)]
    journal: PathBuf,
    /// Replace an existing cln-replica.toml, and start a new generation in a journal that has one
    #[arg(long)]
    force: bool,
    /// Leave lightningd's cache tables out of the backup (`caches`; a restored node must rescan:
    /// docs/CACHES.md)
    #[arg(long, value_enum, default_value = "none")]
    filter: FilterArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FilterArg {
    None,
    Caches,
}

/// The network directory and the pid file lightningd locks while it runs.
fn network_dir(dir: &Path, network: &str) -> (PathBuf, PathBuf) {
    let nested = dir.join(network);
    if !dir.join(config::DEFAULT_DATABASE).exists() && nested.is_dir() {
        (nested, dir.join(format!("lightningd-{network}.pid")))
    } else {
        let parent = dir.parent().unwrap_or(dir);
        let net = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| network.into());
        (dir.to_path_buf(), parent.join(format!("lightningd-{net}.pid")))
    }
}

/// Whether a process holds lightningd's pid-file lock (lockf, as lightningd takes it).
fn lightningd_running(pidfile: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(pidfile) else { return false };
    // SAFETY: lockf(F_TEST) on a descriptor we own; it does not take the lock.
    unsafe { libc::lockf(f.as_raw_fd(), libc::F_TEST, 0) != 0 }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (net_dir, pidfile) = network_dir(&a.lightning_dir, &a.network);
    if lightningd_running(&pidfile) {
        bail!(
            "lightningd is running ({} is locked): stop it first, or let the plugin take its first snapshot on its own",
            pidfile.display()
        );
    }
    let config_path = net_dir.join(config::CONFIG_FILE);
    if config_path.exists() && !a.force {
        bail!("{} exists; use --force to replace it", config_path.display());
    }
    let journal_dir = std::path::absolute(&a.journal).context("cannot resolve --journal")?;
    let mut cfg = Config::new(journal_dir.clone());
    cfg.filter = match a.filter {
        FilterArg::None => Filter::None,
        FilterArg::Caches => Filter::Caches,
    };
    let filter = cfg.filter;
    let db = net_dir.join(&cfg.database);
    let mut journal = Journal::open(&journal_dir, Arc::new(RealDevice), cfg.journal_options())?;
    if journal.generation() != 0 && !a.force {
        bail!(
            "the journal {} already holds generation {}; use --force to start a new generation from {}",
            journal_dir.display(),
            journal.generation(),
            db.display()
        );
    }
    let g = if db.exists() {
        journal.start_generation(&mut |dest: &Path| snapshot::copy_stopped(&db, dest, filter))?
    } else {
        journal.start_generation(&mut |dest: &Path| snapshot::copy_live(&db, dest, 0, filter))?
    };
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&config_path)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        writeln!(f, "# cln-replica configuration (see the README). Written by `cln-replica init`.")?;
        f.write_all(cfg.to_toml()?.as_bytes())?;
        f.sync_all()?;
    }
    println!(
        "wrote {}; generation {g} of {} holds {} at {}",
        config_path.display(),
        journal_dir.display(),
        db.display(),
        match journal.tip() {
            crate::state::Tip::At { version, .. } => format!("data_version {version}"),
            crate::state::Tip::Empty => "nothing".into(),
        }
    );
    println!("now add `important-plugin={}` to lightningd's config", std::env::current_exe()?.display());
    Ok(ExitCode::SUCCESS)
}
