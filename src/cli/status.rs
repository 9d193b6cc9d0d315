//! `cln-replica status`: what the journal holds, and the plugin's live state.

use crate::config::{self, Config};
use crate::inventory::inventory;
use crate::journal::format::BaseKind;
use crate::status::PluginStatus;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Show the journal's generations, the restorable versions and times, and the plugin's state
#[derive(clap::Args)]
pub struct Args {
    /// The journal directory (default: from the configuration), or a
    /// destination URL (s3://, sftp://, file://): what it holds
    #[arg(long)]
    from: Option<std::ffi::OsString>,
    #[command(flatten)]
    key: super::restore::KeyArgs,
    /// The configuration file (default: $CLN_REPLICA_CONFIG, or cln-replica.toml in --lightning-dir)
    #[arg(long)]
    config: Option<PathBuf>,
    /// The lightning network directory holding cln-replica.toml
    #[arg(long)]
    lightning_dir: Option<PathBuf>,
    /// Print as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(url) = a.from.as_ref().and_then(|f| f.to_str()).filter(|f| crate::remote::store::is_url(f)) {
        return remote(url, &a);
    }
    let cwd = std::env::current_dir()?;
    let net_dir = a.lightning_dir.clone().unwrap_or(cwd);
    let config = match (&a.from, &a.config) {
        (Some(_), None) => None,
        (_, Some(path)) => Some(Config::load(path, &net_dir)?),
        (None, None) => {
            let path = config::locate(&net_dir);
            if !path.exists() {
                bail!("no journal given: use --from DIR, --config FILE or --lightning-dir DIR (no {})", path.display());
            }
            Some(Config::load(&path, &net_dir)?)
        }
    };
    let journal = a
        .from
        .clone()
        .map(PathBuf::from)
        .or_else(|| config.as_ref().map(|c| c.journal.clone()))
        .expect("journal known");
    let inv = inventory(&journal)?;
    let live: Option<PluginStatus> = config
        .as_ref()
        .and_then(|c| c.status_file.as_ref())
        .and_then(|p| crate::files::read_regular(p, crate::status::STATUS_FILE_BYTES_MAX).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json!({"journal": inv, "plugin": live}))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("journal {}", inv.journal.display());
    if inv.generations.is_empty() {
        println!("  no generation yet: the plugin takes the first snapshot at its first database write");
    }
    let fmt = crate::clock::format_unix_ms;
    for (i, g) in inv.generations.iter().enumerate() {
        let origin = match (g.base, i.checked_sub(1).map(|p| &inv.generations[p])) {
            (BaseKind::Compacted, Some(p)) => format!(", compacted from generation {}", p.generation),
            (BaseKind::Compacted, None) => ", compacted (older generations removed by retention)".into(),
            _ => String::new(),
        };
        println!(
            "  generation {}: {} at data_version {} ({}){origin}, changes up to data_version {}, {} records, last write {}{}",
            g.generation,
            g.base.name(),
            g.base_version,
            super::bytes(g.snapshot_bytes),
            g.last_version,
            g.records,
            fmt(g.last_write_unix_ms),
            if g.sealed { ", sealed (clean stop)" } else { "" }
        );
        println!(
            "    restorable: data_versions {}..={}, times {} .. {}; {} on disk ({} of records)",
            g.base_version,
            g.last_version,
            fmt(g.created_unix_ms),
            fmt(g.last_write_unix_ms),
            super::bytes(g.disk_bytes),
            super::bytes(g.record_bytes)
        );
        if g.filter != crate::filter::Filter::None {
            println!(
                "    filtered (filter = \"{}\"): leaves out {}; a node restored from it must rescan (docs/CACHES.md)",
                g.filter,
                crate::filter::Filter::Caches.tables().join(", ")
            );
        }
        if let Some(e) = &g.error {
            println!("    PROBLEM: {e} (run `cln-replica verify`)");
        }
        if let Some(gap) = inv.gaps.iter().find(|x| x.after_generation == g.generation) {
            println!(
                "  GAP: data_versions {}..={} are not restorable: lightningd committed them without the plugin",
                gap.first_version, gap.last_version
            );
        }
    }
    if let (Some(first), Some(last)) = (inv.generations.first(), inv.generations.last()) {
        println!(
            "restorable overall: data_versions {}..={}{}; times from {} (`restore --before`) to the newest state at {}",
            first.base_version,
            last.last_version,
            if inv.gaps.is_empty() { String::new() } else { format!(" except {} gap(s) above", inv.gaps.len()) },
            fmt(first.created_unix_ms),
            fmt(last.last_write_unix_ms)
        );
    }
    if let Some(s) = live {
        println!(
            "plugin (pid {}): {:?}{}, data_version {:?}, hook p50 {:?} us, p99 {:?} us, status updated {}",
            s.pid,
            s.state,
            s.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            s.data_version,
            s.hook_latency_us_p50,
            s.hook_latency_us_p99,
            crate::clock::format_unix_ms(s.updated_unix_ms)
        );
        if let Some(r) = &s.remote {
            println!(
                "remote (synchronous tier {:?}){}{}",
                r.sync,
                if r.lagging { ", LAGGING" } else { "" },
                r.degraded_reason.as_ref().map(|w| format!(": DEGRADED ({w})")).unwrap_or_default()
            );
            for d in &r.destinations {
                println!(
                    "  {}: acknowledged generation {} record {} (data_version {}), queue {} record(s), lag {} ms, \
                     behind for {} ms, {} object(s) / {} shipped, tip counter {}{}",
                    d.name,
                    d.acked_generation,
                    d.acked_seq,
                    d.acked_data_version.map_or("-".into(), |v| v.to_string()),
                    d.queue_records,
                    d.lag_ms,
                    d.behind_ms,
                    d.objects_shipped,
                    super::bytes(d.bytes_shipped),
                    d.tip_counter,
                    d.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --from URL`: the destination's tip, and per generation its base,
/// the versions and times it holds, and any problem.
fn remote(url: &str, a: &Args) -> Result<ExitCode> {
    use crate::remote::fetch;
    let key = a.key.load()?;
    let store = crate::remote::open_store(&crate::remote::DestinationConfig::new(url))?;
    let s = fetch::survey(store.as_ref(), &key)?;
    let newest = fetch::plan(&s, fetch::Which::Newest, false);
    if a.json {
        let v = json!({"survey": s, "restorable": newest.as_ref().ok().map(|p| json!({
            "generations": p.generations, "data_version": p.reach.data_version, "time_unix_ms": p.time_unix_ms,
        })), "problem": newest.as_ref().err().map(|e| e.to_string())});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let fmt = crate::clock::format_unix_ms;
    let now = crate::clock::now_unix_ms();
    println!("destination {}", s.destination);
    match (&s.tip, &s.tip_problem) {
        (Some(t), _) => println!(
            "  tip (counter {}, written {}, {} ago): journal {}, generation {} record {}, data_version {} of {}",
            t.counter,
            fmt(t.written_unix_ms),
            super::restore::age(now.saturating_sub(t.written_unix_ms)),
            t.journal,
            t.generation,
            t.seq,
            t.data_version,
            fmt(t.time_unix_ms)
        ),
        (None, Some(p)) => println!("  tip: PROBLEM: {p}"),
        (None, None) => println!("  tip: none"),
    }
    if s.generations.is_empty() {
        println!("  no generation");
    }
    for g in &s.generations {
        match (g.base_version, g.data_version) {
            (Some(b), Some(v)) => println!(
                "  generation {}: {} base at data_version {} ({}{}), records 1..={} up to data_version {} of {}",
                g.generation,
                g.base_kind.unwrap_or("?"),
                b,
                fmt(g.created_unix_ms.unwrap_or(0)),
                match g.filter {
                    Some(f) if f != crate::filter::Filter::None.name() => format!(", filtered \"{f}\""),
                    _ => String::new(),
                },
                g.seq,
                v,
                fmt(g.time_unix_ms.unwrap_or(0))
            ),
            _ => println!("  generation {}: not restorable", g.generation),
        }
        if let Some(p) = &g.problem {
            println!("    PROBLEM: {p}");
        }
    }
    match newest {
        Ok(p) => println!(
            "restorable: data_version {} (generation {} record {}) written {} ({} ago)",
            p.reach.data_version,
            p.reach.generation,
            p.reach.seq,
            fmt(p.time_unix_ms),
            super::restore::age(now.saturating_sub(p.time_unix_ms))
        ),
        Err(e) => println!("NOT RESTORABLE as it is: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}
