//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::ScheduleMode;
use crate::schedule::FaultKind;

/// ironhub-chaos: runs a workload against a three-node ironhub cluster while injecting faults —
/// kill -9 (a random node or the leader of a group), graceful restart, pause (SIGSTOP/SIGCONT),
/// network partition, bridge and one-way partitions (netns backend), rolling restart, disk full
/// (tmpfs data dirs), latency and loss (UDP relays, process backend), clock skew (libfaketime), a
/// follower that lags while the leaders snapshot and purge their logs — records what
/// every client saw, and checks the history: no acknowledged QoS 1 message lost, persistent
/// sessions resumed, the last acknowledged retained value kept, every raft group led again after
/// every fault, and the time to the first successful write. A fixed or seeded random schedule, or a
/// scenario file; the same seed replays the same schedule.
///
/// Exit codes: 0 every checker passed, 1 a checker failed (or the run broke), 2 bad usage.
#[derive(Debug, Parser)]
#[command(name = "ironhub-chaos", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario: start a cluster, inject faults (kill, pause, partition, restart, ...) under a
    /// workload, then check the history and write the report. Every run stops by itself.
    Run(RunArgs),
    /// Print the schedule a seed (or scenario) gives, without running anything.
    Plan(RunArgs),
    /// Re-run the checkers on a saved history.jsonl.
    Check {
        /// The history file of a run.
        history: PathBuf,
    },
}

/// Which backend runs the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Three local processes on loopback: kill, restart, pause, rolling restart, disk full, latency,
    /// clock skew, snapshot lag (no network cuts).
    Process,
    /// Each node in its own network namespace (root): adds partition, bridge and one-way (no latency).
    Netns,
}

impl BackendKind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Process => "process",
            BackendKind::Netns => "netns",
        }
    }
}

/// Workloads that can be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadKind {
    /// QoS 1/2 publishers and persistent subscribers over MQTT (with session takeover/roaming).
    Queue,
    /// Retained messages through the API.
    Retained,
}

/// Options of `run` and `plan`. Flags override the scenario file.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Scenario file (TOML), e.g. chaos/scenarios/ci.toml.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// Seed for the random schedule and random targets; a failing run prints the seed (and the
    /// whole command) that replays it. Given without a scenario or --schedule: a random schedule.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How the schedule is made: the scenario's steps, the fixed rotation, or random from the seed.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleMode>,
    /// Fault kinds for fixed and random schedules, comma separated: kill, restart, pause,
    /// partition, bridge, one-way, rolling-restart, disk-full, latency, clock-skew, snapshot-lag
    /// (default: all the backend supports here).
    #[arg(long, value_delimiter = ',')]
    pub faults: Option<Vec<FaultKind>>,
    /// Seconds of fault injection; the run then heals, drains, checks and stops.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Where the cluster runs.
    #[arg(long, value_enum, default_value = "process")]
    pub backend: BackendKind,
    /// The ironhub binary (default: $IRONHUB_BIN, $CARGO_TARGET_DIR/release/ironhub,
    /// /var/cache/ironhub/target/release/ironhub).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Output directory for history.jsonl, results.json, report.html and node logs
    /// (default: /tmp/ironhub-chaos/<scenario>-seed<seed>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Workloads, comma separated (default: the scenario's, else queue,retained).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub workloads: Option<Vec<WorkloadKind>>,
    /// Publisher clients of the queue workload.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Persistent subscriber clients of the queue workload.
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Messages per second per publisher.
    #[arg(long)]
    pub rate: Option<u32>,
    /// QoS of the queue workload: 1 (duplicates counted) or 2 (exactly once: a duplicate fails).
    #[arg(long)]
    pub qos: Option<u8>,
    /// Seconds the cluster may take to be fully led again after a fault.
    #[arg(long, default_value_t = 60.0)]
    pub recovery_timeout: f64,
    /// Seconds subscribers may take, after the faults, to receive every acknowledged message.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_names_the_faults_and_the_seed() {
        let top = Cli::command().render_long_help().to_string();
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap().render_long_help().to_string();
        for word in ["kill", "pause", "partition", "seed"] {
            assert!(top.to_lowercase().contains(word), "top help lacks {word}");
            assert!(run.to_lowercase().contains(word), "run help lacks {word}");
        }
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert!(Cli::try_parse_from(["ironhub-chaos", "run", "--faults", "nuke"]).is_err());
        assert!(Cli::try_parse_from(["ironhub-chaos", "run", "--backend", "vm"]).is_err());
        let ok =
            Cli::try_parse_from(["ironhub-chaos", "run", "--faults", "kill,pause", "--seed", "3"]).unwrap();
        let Command::Run(a) = ok.command else { panic!() };
        assert_eq!(a.faults, Some(vec![FaultKind::Kill, FaultKind::Pause]));
    }
}
