//! The `cln-replica` binary: lightningd's plugin when started by lightningd
//! (`LIGHTNINGD_PLUGIN=1`), the command line otherwise.

use std::process::ExitCode;

fn main() -> ExitCode {
    if cln_replica::plugin::started_by_lightningd() {
        return ExitCode::from(cln_replica::plugin::run() as u8);
    }
    cln_replica::cli::main()
}
