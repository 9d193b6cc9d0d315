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
}

pub fn run(a: Args) -> Result<ExitCode> {
    let config = PanelConfig::load(&a.config)?;
    if a.check {
        print!("{}", toml::to_string(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::panel::daemon::run(&config)?;
    Ok(ExitCode::SUCCESS)
}
