//! Thin binary over the `trainer` library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    match trainer::run(trainer::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
