//! Prometheus metrics of the raft layer, registered in the node's registry.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Raft-layer metrics (cheap to clone: every clone updates the same series).
#[derive(Clone)]
pub struct RaftMetrics {
    commands: IntCounterVec,
    entries: IntCounterVec,
    apply_seconds: HistogramVec,
    commit_seconds: HistogramVec,
    snapshots: IntCounterVec,
    snapshot_bytes: IntGaugeVec,
    /// Leader changes seen per group (a change of leader or of term with a leader).
    pub leader_changes: IntCounterVec,
    /// Elections: terms this node saw start, per group.
    pub elections: IntCounterVec,
    /// Log entries kept (last index minus purged index), per group.
    pub log_entries: IntGaugeVec,
    /// Current term per group.
    pub term: IntGaugeVec,
    /// 1 if this node leads the group.
    pub is_leader: IntGaugeVec,
    /// Proposals refused because the group's batcher was full.
    pub busy: IntCounterVec,
    /// Proposals forwarded to the leader on another node.
    pub forwarded: IntCounterVec,
    /// Log-flush rounds and fsync time of the node's storage thread.
    pub flush_rounds: prometheus::IntGauge,
    /// Entries made durable by the storage thread.
    pub flushed_entries: prometheus::IntGauge,
    /// Seconds spent in fsync by the storage thread.
    pub fsync_seconds: prometheus::Gauge,
    rpc_seconds: HistogramVec,
    rpc_errors: IntCounterVec,
    /// Reads of decoded state by apply: served from memory, or read and decoded.
    state_cache_hits: prometheus::IntCounter,
    state_cache_misses: prometheus::IntCounter,
}

fn group_label(group: u16) -> String {
    group.to_string()
}

impl RaftMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let state_cache = IntCounterVec::new(
            Opts::new(
                "ironhub_raft_state_cache_total",
                "Reads of decoded state by apply: hit (from memory) or miss (read and decoded)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(state_cache.clone()))?;
        let buckets =
            vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let m = Self {
            commands: IntCounterVec::new(
                Opts::new("ironhub_raft_commands_applied_total", "Commands applied, per group"),
                &["group"],
            )?,
            entries: IntCounterVec::new(
                Opts::new("ironhub_raft_entries_applied_total", "Raft entries applied, per group"),
                &["group"],
            )?,
            apply_seconds: HistogramVec::new(
                HistogramOpts::new("ironhub_raft_apply_seconds", "Time to apply one batch of entries")
                    .buckets(buckets.clone()),
                &["group"],
            )?,
            commit_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "ironhub_raft_commit_seconds",
                    "Proposal to applied response, as seen by the proposer",
                )
                .buckets(buckets),
                &["group"],
            )?,
            snapshots: IntCounterVec::new(
                Opts::new("ironhub_raft_snapshots_total", "Snapshots built or installed"),
                &["group", "kind"],
            )?,
            snapshot_bytes: IntGaugeVec::new(
                Opts::new("ironhub_raft_snapshot_bytes", "Size of the latest snapshot"),
                &["group"],
            )?,
            leader_changes: IntCounterVec::new(
                Opts::new("ironhub_raft_leader_changes_total", "Leader changes seen"),
                &["group"],
            )?,
            elections: IntCounterVec::new(
                Opts::new("ironhub_raft_elections_total", "New terms seen"),
                &["group"],
            )?,
            log_entries: IntGaugeVec::new(
                Opts::new("ironhub_raft_log_entries", "Entries kept in the log"),
                &["group"],
            )?,
            term: IntGaugeVec::new(Opts::new("ironhub_raft_term", "Current term"), &["group"])?,
            is_leader: IntGaugeVec::new(
                Opts::new("ironhub_raft_is_leader", "1 if this node leads the group"),
                &["group"],
            )?,
            busy: IntCounterVec::new(
                Opts::new("ironhub_raft_busy_total", "Proposals refused: batcher full"),
                &["group"],
            )?,
            forwarded: IntCounterVec::new(
                Opts::new("ironhub_raft_forwarded_total", "Proposals forwarded to the leader"),
                &["group"],
            )?,
            flush_rounds: prometheus::IntGauge::new(
                "ironhub_storage_flush_rounds",
                "Log flush rounds (one fsync each)",
            )?,
            flushed_entries: prometheus::IntGauge::new(
                "ironhub_storage_flushed_entries",
                "Log entries made durable",
            )?,
            rpc_seconds: HistogramVec::new(
                HistogramOpts::new("ironhub_raft_rpc_seconds", "Raft RPC round trips to peers, by kind")
                    .buckets(vec![0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
                &["kind"],
            )?,
            rpc_errors: IntCounterVec::new(
                Opts::new(
                    "ironhub_raft_rpc_errors_total",
                    "Raft RPCs that failed (unreachable, timeout), by kind",
                ),
                &["kind"],
            )?,
            fsync_seconds: prometheus::Gauge::new(
                "ironhub_storage_fsync_seconds",
                "Seconds spent in log fsync",
            )?,
            state_cache_hits: state_cache.with_label_values(&["hit"]),
            state_cache_misses: state_cache.with_label_values(&["miss"]),
        };
        registry.register(Box::new(m.commands.clone()))?;
        registry.register(Box::new(m.entries.clone()))?;
        registry.register(Box::new(m.apply_seconds.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.snapshots.clone()))?;
        registry.register(Box::new(m.snapshot_bytes.clone()))?;
        registry.register(Box::new(m.leader_changes.clone()))?;
        registry.register(Box::new(m.elections.clone()))?;
        registry.register(Box::new(m.log_entries.clone()))?;
        registry.register(Box::new(m.term.clone()))?;
        registry.register(Box::new(m.is_leader.clone()))?;
        registry.register(Box::new(m.busy.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.flush_rounds.clone()))?;
        registry.register(Box::new(m.flushed_entries.clone()))?;
        registry.register(Box::new(m.fsync_seconds.clone()))?;
        registry.register(Box::new(m.rpc_seconds.clone()))?;
        registry.register(Box::new(m.rpc_errors.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (for tests).
    pub fn unregistered() -> Self {
        // A fresh registry cannot hold duplicates, so registration cannot fail.
        #[allow(clippy::expect_used)]
        Self::new(&Registry::new()).expect("fresh registry")
    }

    pub(crate) fn observe_apply(&self, group: u16, entries: u64, commands: u64, took: Duration) {
        let g = group_label(group);
        self.entries.with_label_values(&[&g]).inc_by(entries);
        self.commands.with_label_values(&[&g]).inc_by(commands);
        self.apply_seconds.with_label_values(&[&g]).observe(took.as_secs_f64());
    }

    pub(crate) fn observe_state_cache(&self, hits: u64, misses: u64) {
        self.state_cache_hits.inc_by(hits);
        self.state_cache_misses.inc_by(misses);
    }

    pub(crate) fn observe_commit(&self, group: u16, took: Duration) {
        self.commit_seconds.with_label_values(&[&group_label(group)]).observe(took.as_secs_f64());
    }

    pub(crate) fn observe_snapshot(&self, group: u16, kind: &str, bytes: u64, _took: Duration) {
        let g = group_label(group);
        self.snapshots.with_label_values(&[&g, kind]).inc();
        self.snapshot_bytes.with_label_values(&[&g]).set(bytes as i64);
    }

    pub(crate) fn observe_rpc(&self, kind: crate::transport::RpcKind, ok: bool, took: Duration) {
        let k = format!("{kind:?}").to_lowercase();
        if ok {
            self.rpc_seconds.with_label_values(&[&k]).observe(took.as_secs_f64());
        } else {
            self.rpc_errors.with_label_values(&[&k]).inc();
        }
    }

    /// Records the size of `group`'s current snapshot (found at start).
    pub(crate) fn set_snapshot_bytes(&self, group: u16, bytes: u64) {
        self.snapshot_bytes.with_label_values(&[&group_label(group)]).set(bytes as i64);
    }

    /// The gauge of `group`'s current snapshot size (0: none).
    pub(crate) fn snapshot_bytes(&self, group: u16) -> prometheus::IntGauge {
        self.snapshot_bytes.with_label_values(&[&group_label(group)])
    }

    pub(crate) fn group(&self, group: u16) -> String {
        group_label(group)
    }
}
