//! The `duplex` command.

use std::process::ExitCode;

fn main() -> ExitCode {
    duplex::cli::main()
}
