//! Backends own the cluster under test and carry out faults on it.
//!
//! [`Backend`] is the whole interface the nemesis uses: start and stop nodes, signal them, cut the
//! network. [`process::ProcessBackend`] runs three `ironhub serve` processes on loopback;
//! [`netns::NetnsBackend`] runs each in its own network namespace so the network can be cut. A
//! docker backend (the compose cluster) is one more implementation of the same trait.

pub mod disk;
pub mod netns;
pub mod process;
pub mod relay;

use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::FaultKind;
use relay::{RelayStats, Rules};

/// What a run needs from the cluster beyond plain nodes; the run derives it from its schedule, so
/// runs without the faults that need these start the nodes exactly as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Data dirs on a tmpfs of this many MiB each (for `disk-full`; root only).
    pub disk_mb: Option<u64>,
    /// UDP relays in front of the cluster ports (for `latency`; process backend only).
    pub relays: bool,
    /// `[raft] snapshot_every` for the nodes (for `snapshot-lag`).
    pub snapshot_every: Option<u64>,
    /// `[raft] keep_behind_snapshot` for the nodes.
    pub keep_behind_snapshot: Option<u64>,
}

/// A node id (1-based, as in `--node-id`).
pub type NodeId = u64;

/// Where a node can be reached.
#[derive(Debug, Clone)]
pub struct NodeEndpoints {
    /// Node id.
    pub id: NodeId,
    /// Base URL of its API, e.g. `http://127.0.0.1:23001`.
    pub api: String,
    /// MQTT host.
    pub mqtt_host: String,
    /// MQTT port.
    pub mqtt_port: u16,
}

/// A directed cut: packets from `from` to `to` are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
}

/// The cluster under test, as the nemesis sees it. Methods block briefly (a signal, a spawn, a
/// few `ip` commands); [`Backend::stop`] waits up to its timeout.
pub trait Backend: Send {
    /// Short name (`process`, `netns`).
    fn name(&self) -> &'static str;
    /// Every node's endpoints.
    fn nodes(&self) -> Vec<NodeEndpoints>;
    /// The admin token the nodes were started with.
    fn admin_token(&self) -> String;
    /// `Err(why)` when this backend cannot inject the fault.
    fn supports(&self, kind: FaultKind) -> Result<(), String>;
    /// Starts a node (first start or restart with the same data dir).
    fn start(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// `kill -9` and reap the process.
    fn kill(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// SIGTERM and wait for the exit; `kill -9` after `timeout`. Returns whether it exited by itself.
    fn stop(&mut self, id: NodeId, timeout: Duration) -> anyhow::Result<bool>;
    /// SIGSTOP.
    fn pause(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// SIGCONT.
    fn resume(&mut self, id: NodeId) -> anyhow::Result<()>;
    /// Drops cluster traffic along each cut (in addition to cuts already in place).
    fn cut(&mut self, cuts: &[Cut]) -> anyhow::Result<()>;
    /// Removes every cut.
    fn heal_network(&mut self) -> anyhow::Result<()>;
    /// Whether the node's process is alive (it may have exited by itself: that is a finding).
    fn is_alive(&mut self, id: NodeId) -> bool;
    /// Log files kept for the report.
    fn logs(&self) -> Vec<PathBuf>;
    /// Kills every process and removes what the backend set up (also called from `Drop`).
    fn shutdown(&mut self);
    /// How the node's process ended, if it ended by itself (`exit status: 1`, `signal: 6`).
    fn exit_status(&mut self, id: NodeId) -> Option<String>;
    /// Fills the node's data dir (a tmpfs) to the last byte; returns the bytes written.
    fn fill_disk(&mut self, id: NodeId) -> anyhow::Result<u64>;
    /// Deletes the filler; returns the bytes freed.
    fn free_disk(&mut self, id: NodeId) -> anyhow::Result<u64>;
    /// (used, total) bytes of the node's data dir file system, when it is a tmpfs of ours.
    fn disk_usage(&self, id: NodeId) -> Option<(u64, u64)>;
    /// Replaces the impairments of the relays (an empty [`Rules`] clears them).
    fn impair(&mut self, rules: Rules) -> anyhow::Result<()>;
    /// Relay packet counters since the last call (None without relays).
    fn relay_stats(&mut self) -> Option<RelayStats>;
    /// The wall-clock skew (s) the node gets at its next start (None: the true time).
    fn set_clock_skew(&mut self, id: NodeId, skew_s: Option<i64>) -> anyhow::Result<()>;
}
