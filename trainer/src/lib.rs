//! The offline half of the optimizer: it will read the request and query logs the server
//! recorded, fit the latency predictor and the anomaly scorer, and export them as ONNX files plus
//! a manifest (see `DESIGN.md`).
//!
//! For now it holds only the command-line surface, so that scripts and the Makefile can be
//! written against it; each command says plainly that it is not built yet and exits non-zero.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// `trainer` command line.
#[derive(Debug, Parser)]
#[command(
    name = "trainer",
    version,
    about = "Fits the shop API's models from captured logs"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The trainer's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the latency predictor and anomaly scorer and export them as ONNX.
    Train {
        /// A log folder or glob of log files.
        #[arg(long, default_value = "data/logs")]
        logs: String,
        /// Where the models and manifest go.
        #[arg(long, default_value = "models")]
        out: PathBuf,
    },
    /// Summarize what the logs say, per route and per query fingerprint.
    Report {
        /// A log folder or glob of log files.
        #[arg(long, default_value = "data/logs")]
        logs: String,
    },
}

/// Runs one command.
///
/// # Errors
/// Every command fails until the trainer issue lands: nothing is trained or reported yet.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let name = match cli.command {
        Command::Train { .. } => "train",
        Command::Report { .. } => "report",
    };
    anyhow::bail!("`trainer {name}` is not implemented yet (see the trainer issue)")
}
