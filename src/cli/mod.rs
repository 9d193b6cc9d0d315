//! The command line: a thin shell over the library, one file per subcommand.

#[cfg(feature = "lab")]
mod bench;
mod compact;
#[cfg(feature = "lab")]
mod demo;
mod drill;
mod init;
mod keygen;
#[cfg(feature = "panel")]
mod panel;
pub mod progress;
mod restore;
#[cfg(feature = "lab")]
mod simnode;
mod status;

mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cln-replica",
    version,
    about = "A durable, never-behind backup of Core Lightning's database",
    long_about = "cln-replica keeps a journal of every change lightningd commits on a second device, and rebuilds \
                  lightningd.sqlite3 from it.\n\nStarted by lightningd (important-plugin=/path/to/cln-replica) it is \
                  the plugin; started by a person it is this command line."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Init(init::Args),
    Restore(restore::Args),
    Verify(verify::Args),
    Status(status::Args),
    Compact(compact::Args),
    Drill(drill::Args),
    #[cfg(feature = "lab")]
    Demo(demo::Args),
    #[cfg(feature = "lab")]
    Bench(bench::Args),
    #[cfg(feature = "panel")]
    Panel(panel::Args),
    Keygen(keygen::Args),
    #[cfg(feature = "lab")]
    Simnode(simnode::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => init::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Status(a) => status::run(a),
        Command::Compact(a) => compact::run(a),
        Command::Drill(a) => drill::run(a),
        #[cfg(feature = "lab")]
        Command::Demo(a) => demo::run(a),
        #[cfg(feature = "lab")]
        Command::Bench(a) => bench::run(a),
        #[cfg(feature = "panel")]
        Command::Panel(a) => panel::run(a),
        Command::Keygen(a) => keygen::run(a),
        #[cfg(feature = "lab")]
        Command::Simnode(a) => simnode::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cln-replica: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Human-readable byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
