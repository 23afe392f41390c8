//! ironhub-chaos: fault injection with checkers that prove nothing acknowledged is lost.
//!
//! This is the skeleton: the command line below is the plan (issue "ironhub-chaos"); `run` prints
//! that it is not yet available.

use clap::{Parser, Subcommand};

/// Runs a workload against a cluster while injecting faults, then checks the history.
#[derive(Debug, Parser)]
#[command(name = "ironhub-chaos", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario: faults (kill, pause, partition, ...) under a workload, then check.
    Run {
        /// Scenario file (TOML).
        #[arg(long)]
        scenario: Option<std::path::PathBuf>,
        /// Seed for a random fault schedule (a failing run prints the seed that replays it).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() {
    let cli = Cli::parse();
    eprintln!(
        "ironhub-chaos: {:?} is not available in this build yet (see the ironhub-chaos issue)",
        cli.command
    );
    std::process::exit(2);
}
