//! `cln-replica keygen`: a new key for remote destinations.

use crate::remote::crypto::Key;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Create a key file for encrypting what goes to remote destinations
#[derive(clap::Args)]
#[command(after_help = "The file holds 32 random bytes as hex, mode 0600; it is never overwritten. Keep a copy \
away from the node (with the destinations' URLs): without it nothing at the destinations can be restored. \
Name it in cln-replica.toml as `key_file = \"...\"`.")]
pub struct Args {
    /// The key file to create
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let key = Key::generate()?;
    key.write_new_file(&a.out)?;
    println!("wrote {} (key id {}, mode 0600)", a.out.display(), key.id_hex());
    Ok(ExitCode::SUCCESS)
}
