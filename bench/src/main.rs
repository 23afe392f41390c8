//! ironhub-bench: the load generator users run against any MQTT broker (ironhub, mosquitto, EMQX).
//!
//! This is the skeleton: the scenarios below are the planned command line (issue "ironhub-bench");
//! each prints that it is not yet available. Raft commit throughput is measured today by
//! `cargo run --release -p ironhub-raft --example commit_bench` (see docs/benchmarks.md).

use clap::{Parser, Subcommand};

/// Load generator for MQTT brokers, with publish-to-receive latency and loss/duplicate accounting.
#[derive(Debug, Parser)]
#[command(name = "ironhub-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N connections at a rate and hold them.
    Conn,
    /// Publishers only.
    Pub,
    /// Subscribers only.
    Sub,
    /// Many publishers, one subscriber.
    FanIn,
    /// One publisher, many subscribers.
    FanOut,
    /// N publisher/subscriber pairs.
    P2p,
    /// Shared subscriptions.
    Shared,
    /// Run one scenario against two brokers and print the ratios.
    Compare,
}

fn main() {
    let cli = Cli::parse();
    eprintln!(
        "ironhub-bench: scenario {:?} is not available in this build yet (see the ironhub-bench issue)",
        cli.scenario
    );
    std::process::exit(2);
}
