//! The `glance-sync` command line: parses arguments, sets up logging, runs a command, and turns its
//! outcome into an exit code (0 in sync, 1 something failed, 2 configuration or usage error).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
