//! Background tasks of a node: per-group metrics and the log size policy ([`crate::log_size`]),
//! leader balancing, persisting a learned cluster id.
//!
//! Balancing: every few seconds, each group this node leads whose preferred leader (the first voter
//! in the bootstrap order, see [`crate::bootstrap::group_voters`]) is another voter that has caught
//! up is handed over with `transfer_leader`, one group per round, so leaders spread again after a
//! node returns.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::bootstrap::group_voters;
use crate::log_size::{Action, LogSizePolicy};
use crate::node::RaftNode;
use crate::types::{NodeId, META_GROUP};

/// How far behind (in entries) a preferred leader may be and still receive leadership.
const BALANCE_MAX_LAG: u64 = 100;
/// Pause between balancing rounds.
const BALANCE_EVERY: Duration = Duration::from_secs(3);

impl RaftNode {
    pub(crate) fn spawn_watchers(&self) {
        for g in &self.inner.groups {
            let n = self.clone();
            let gid = g.id;
            self.inner.tasks.spawn(async move { n.watch_group(gid).await });
        }
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.balance_loop().await });
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.persist_learned_cluster_id().await });
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.plan_loop().await });
    }

    async fn watch_group(&self, g: u16) {
        let Some(raft) = self.raft(g) else { return };
        let mut rx = raft.metrics();
        let m = &self.inner.metrics;
        let label = m.group(g);
        let (mut last_leader, mut last_term) = (None, 0u64);
        let t = &self.inner.config.timing;
        let mut sizes = LogSizePolicy::new(t.snapshot_log_bytes, t.keep_behind_bytes, t.keep_behind_snapshot);
        let log_bytes = self.inner.groups[g as usize].log_bytes.clone();
        // Looked up once: this loop runs on every metrics change (every commit under load).
        let term = m.term.with_label_values(&[&label]);
        let is_leader = m.is_leader.with_label_values(&[&label]);
        let log_entries = m.log_entries.with_label_values(&[&label]);
        let snapshot_bytes = m.snapshot_bytes(g);
        loop {
            let action = {
                let s = rx.borrow_watched();
                if s.current_term != last_term {
                    if last_term != 0 {
                        m.elections.with_label_values(&[&label]).inc();
                    }
                    last_term = s.current_term;
                }
                if s.current_leader != last_leader {
                    if s.current_leader.is_some() {
                        m.leader_changes.with_label_values(&[&label]).inc();
                        tracing::info!(group = g, leader = ?s.current_leader, term = s.current_term, "leader");
                    }
                    last_leader = s.current_leader;
                }
                term.set(s.current_term as i64);
                is_leader.set(i64::from(s.state == ServerState::Leader));
                let last = s.last_log_index.unwrap_or(0);
                let purged = s.purged.map(|p| p.index).unwrap_or(0);
                log_entries.set(last.saturating_sub(purged) as i64);
                let appended = log_bytes.load(std::sync::atomic::Ordering::Relaxed);
                sizes.observe(
                    appended,
                    last,
                    s.snapshot.map(|l| l.index),
                    s.purged.map(|l| l.index),
                    snapshot_bytes.get().max(0) as u64,
                )
            };
            let done = match action {
                Some(Action::Snapshot) => raft.trigger().snapshot().await,
                Some(Action::Purge(upto)) => raft.trigger().purge_log(upto).await,
                None => Ok(()),
            };
            if let Err(e) = done {
                tracing::debug!(group = g, ?action, "log size policy: {e}");
            }
            if g == META_GROUP {
                use std::sync::atomic::Ordering::Relaxed;
                let st = self.inner.flusher.stats();
                m.flush_rounds.set(st.rounds.load(Relaxed) as i64);
                m.flushed_entries.set(st.flushed_entries.load(Relaxed) as i64);
                m.fsync_seconds.set(st.fsync_nanos_total.load(Relaxed) as f64 / 1e9);
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    async fn balance_loop(&self) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(BALANCE_EVERY) => {}
            }
            let all: Vec<NodeId> = self.cluster_nodes().await.keys().copied().collect();
            if let Some((g, to)) = self.next_transfer(&all) {
                tracing::info!(group = g, to, "balancing: handing leadership to the preferred leader");
                if let Some(raft) = self.raft(g) {
                    if let Err(e) = raft.trigger().transfer_leader(to).await {
                        tracing::warn!(group = g, to, "transfer_leader: {e}");
                    }
                }
            }
        }
    }

    /// The first group this node leads that its preferred leader should take over.
    fn next_transfer(&self, all: &[NodeId]) -> Option<(u16, NodeId)> {
        let me = self.inner.id;
        for g in &self.inner.groups {
            let m = g.raft.metrics().borrow_watched().clone();
            if m.state != ServerState::Leader {
                continue;
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let mut sorted = voters.clone();
            sorted.sort_unstable();
            let preferred = if g.id == META_GROUP {
                sorted.first().copied()
            } else {
                // The preferred leader among current voters, in placement order over all node ids.
                group_voters(all, g.id).into_iter().find(|v| voters.contains(v))
            };
            let Some(pref) = preferred else { continue };
            if pref == me {
                continue;
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&pref).cloned())
                .flatten()
                .map(|l| l.index)
                .unwrap_or(0);
            if matched + BALANCE_MAX_LAG >= last && matched > 0 {
                return Some((g.id, pref));
            }
        }
        None
    }

    /// Stores the cluster id once this node learns it from a peer (or creates it).
    async fn persist_learned_cluster_id(&self) {
        if self.inner.cluster_id.get().is_some() {
            return;
        }
        let id = tokio::select! {
            _ = self.inner.shutdown.cancelled() => return,
            id = self.inner.cluster_id.wait_known() => id,
        };
        match self.persist_cluster_id(id) {
            Ok(()) => tracing::info!(cluster_id = %id, "member of cluster"),
            Err(e) => tracing::error!("storing the cluster id: {e}"),
        }
    }
}
