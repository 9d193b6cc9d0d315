//! `cln-replica panel`: the appliance's LEDs and safe-shutdown button
//! (docs/PANEL.md). A thin shell over [`crate::panel`].

use crate::panel::config::{PanelConfig, DEFAULT_PATH};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Show the backup's state on GPIO LEDs and shut down safely on a long button press (run by systemd)
#[derive(clap::Args)]
pub struct Args {
    /// The panel's configuration
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Check the configuration and print it, then exit
    #[arg(long)]
    check: bool,
    /// Run the safe-shutdown sequence now, as a long press would (stop
    /// lightningd, wait for the sealed journal, sync, unmount, power off), and
    /// exit: for a shutdown over SSH, and for testing it against a real node.
    #[arg(long, conflicts_with = "check")]
    shutdown_now: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let config = PanelConfig::load(&a.config)?;
    if a.check {
        print!("{}", toml::to_string(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    if a.shutdown_now {
        let mut steps = crate::panel::shutdown::RealSteps::from_config(&config);
        let mut log = |line: &str| eprintln!("cln-replica panel: {line}");
        return match crate::panel::shutdown::run_sequence(&mut steps, &mut log) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(f) => {
                eprintln!(
                    "cln-replica panel: safe shutdown stopped at {} before power-off: {:#}",
                    f.step.name(),
                    f.error
                );
                Ok(ExitCode::FAILURE)
            }
        };
    }
    crate::panel::daemon::run(&config)?;
    Ok(ExitCode::SUCCESS)
}
