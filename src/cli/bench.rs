//! `cln-replica bench` (being written).
use anyhow::Result;
use std::process::ExitCode;

/// Measure the hook round trip against the raw O_DIRECT write + fdatasync floor
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
