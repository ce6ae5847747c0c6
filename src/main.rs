use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    deputy::cli::run(deputy::cli::Cli::parse())
}
