//! First start of a cluster: create the cluster id, initialise the meta group, and have each
//! partition initialised by its preferred leader so leaders start spread.
//!
//! Only the lowest node id bootstraps, and only after a majority of the voters (itself included)
//! answered that they belong to no cluster; if any peer already knows a cluster id it refuses and
//! says to use `ironhub ctl cluster add-node`. Other nodes never initialise on their own: they
//! initialise a partition only when the bootstrapping node asks (`AdminRequest::InitGroup`), so an
//! emptied node rejoining an existing cluster cannot fork it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ironhub_storage::codec;

use crate::error::ProposeError;
use crate::node::RaftNode;
use crate::rpc::{AdminRequest, HelloResponse};
use crate::transport::RpcKind;
use crate::types::{GroupId, NodeAddr, NodeId, META_GROUP};

/// Voters of group `g`: `min(3, N)` nodes starting at the preferred leader `ids[g mod N]`.
pub fn group_voters(ids: &[NodeId], g: GroupId) -> Vec<NodeId> {
    if ids.is_empty() {
        return Vec::new();
    }
    let n = ids.len();
    let start = g as usize % n;
    (0..n.min(3)).map(|i| ids[(start + i) % n]).collect()
}

impl RaftNode {
    fn voter_ids(&self) -> Vec<NodeId> {
        let peers = &self.inner.config.peers;
        if peers.is_empty() {
            vec![self.inner.id]
        } else {
            peers.keys().copied().collect()
        }
    }

    fn members(&self, ids: &[NodeId]) -> BTreeMap<NodeId, NodeAddr> {
        ids.iter().map(|id| (*id, self.node_addr(*id))).collect()
    }

    pub(crate) async fn bootstrap(&self) {
        let ids = self.voter_ids();
        if ids.first() != Some(&self.inner.id) {
            tracing::info!("new node: waiting for node {:?} to bootstrap the cluster", ids.first());
            return;
        }
        if let Err(e) = self.bootstrap_as_first(&ids).await {
            // Refusing to fork a cluster is fatal for this node: the binary exits with a config error.
            self.stop_fatally(e);
        }
    }

    /// At start with a known cluster id: a peer that answers for another cluster means this data
    /// dir or `--peers` is wrong; stop with a message rather than serve a mixed cluster.
    pub(crate) async fn check_peers_cluster(&self) {
        let me = self.inner.id;
        let Ok(body) = codec::encode(&AdminRequest::Hello) else {
            return;
        };
        let mut unanswered: Vec<NodeId> = self.voter_ids().into_iter().filter(|p| *p != me).collect();
        // Ask until every configured peer answered once (peers may start after us).
        while !unanswered.is_empty() {
            let mut still = Vec::new();
            for peer in unanswered {
                let r = self
                    .inner
                    .net
                    .call(peer, META_GROUP, RpcKind::Admin, Bytes::from(body.clone()), Duration::from_secs(2))
                    .await;
                match r {
                    Err(crate::transport::TransportError::ClusterMismatch { ours, theirs }) => {
                        let msg = format!(
                            "data dir {} belongs to cluster {ours}, but peer {peer} belongs to cluster {theirs}: \
                             wrong --data-dir or --peers?",
                            self.inner.config.data_dir.display()
                        );
                        self.stop_fatally(msg);
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer, "cluster check: {e}");
                        still.push(peer);
                    }
                }
            }
            unanswered = still;
            if unanswered.is_empty() {
                break;
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        self.add_declared_peers().await;
    }

    /// `--peers` lists every voter: peers it names that the cluster does not have yet (a single-node
    /// hub restarted with `--peers` of three, say) are added by the meta leader, one membership plan
    /// at a time, as `ironhub ctl cluster add-node` would. Runs until none is missing, the node is not
    /// the meta leader, or a minute passed.
    async fn add_declared_peers(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        tracing::debug!("every peer answered; checking that the cluster has every node of --peers");
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let Some(meta) = self.status().into_iter().next() else { return };
            let Some(leader) = meta.leader else { continue };
            if leader != self.inner.id {
                return; // the leader's own copy of this task does it
            }
            let members: Vec<NodeId> = meta.voters.iter().chain(&meta.learners).copied().collect();
            let missing = self.inner.config.peers.iter().find(|(id, _)| !members.contains(id));
            let Some((id, addr)) = missing else { return };
            if self.membership_plan().await.is_some_and(|p| p.finished.is_none()) {
                continue; // wait for the running plan
            }
            match self.add_node(*id, addr.to_string()).await {
                Ok(_) => tracing::info!(node = id, %addr, "adding a node named in --peers to the cluster"),
                Err(e) => tracing::info!(node = id, "not adding node named in --peers yet: {e}"),
            }
        }
    }

    async fn bootstrap_as_first(&self, ids: &[NodeId]) -> Result<(), String> {
        let me = self.inner.id;
        // Ask the peers until a majority (with us) is known to be new.
        loop {
            let mut fresh = 1;
            for &peer in ids.iter().filter(|p| **p != me) {
                let body = codec::encode(&AdminRequest::Hello).map_err(|e| e.to_string())?;
                let r = self
                    .inner
                    .net
                    .call(peer, META_GROUP, RpcKind::Admin, Bytes::from(body), Duration::from_secs(2))
                    .await;
                let Ok(resp) = r else { continue };
                let Ok(hello) = codec::decode::<HelloResponse>(&resp, "hello") else {
                    tracing::warn!(peer, "bootstrap: undecodable hello answer");
                    continue;
                };
                if let Some(cid) = hello.cluster_id {
                    return Err(format!(
                        "refusing to initialise a new cluster: peer {peer} already belongs to cluster {cid}. \
                         This node's data dir is empty: add it to the existing cluster with \
                         `ironhub ctl cluster add-node`, or start it with its old data dir"
                    ));
                }
                fresh += 1;
            }
            if fresh * 2 > ids.len() {
                break;
            }
            if self.inner.shutdown.is_cancelled() {
                return Ok(());
            }
            tracing::info!("bootstrap: waiting for a majority of {:?} to answer", ids);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let cid = uuid::Uuid::new_v4();
        self.persist_cluster_id(cid).map_err(|e| e.to_string())?;
        self.inner.cluster_id.set(cid);
        tracing::info!(cluster_id = %cid, voters = ?ids, partitions = self.inner.partitions, "bootstrapping a new cluster");
        for g in 0..=self.inner.partitions {
            let voters =
                if g == META_GROUP { ids.iter().copied().take(3).collect() } else { group_voters(ids, g) };
            let members = self.members(&voters);
            let target = voters[0];
            let n = self.clone();
            self.inner.tasks.spawn(async move { n.init_group_on(target, g, members).await });
        }
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.record_initial_nodes().await });
        if ids.len() > 3 {
            // With more than three nodes, every node that is not a voter of a group follows it as
            // a learner, so every node can route from applied state.
            let n = self.clone();
            let ids = ids.to_vec();
            self.inner.tasks.spawn(async move { n.add_bootstrap_learners(&ids).await });
        }
        Ok(())
    }

    async fn add_bootstrap_learners(&self, ids: &[NodeId]) {
        let nodes = self.members(ids);
        for g in 0..=self.inner.partitions {
            let voters =
                if g == META_GROUP { ids.iter().copied().take(3).collect() } else { group_voters(ids, g) };
            loop {
                match self.reconfigure_group(g, voters.iter().copied().collect(), nodes.clone()).await {
                    Ok(()) => break,
                    Err(e) => tracing::debug!(group = g, "bootstrap: adding learners: {e}"),
                }
                tokio::select! {
                    _ = self.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
        tracing::info!("bootstrap: every node follows every group");
    }

    /// Initialises `g` on `target` (ourselves or a peer), retrying until it is done or the group
    /// shows a leader.
    async fn init_group_on(&self, target: NodeId, g: GroupId, members: BTreeMap<NodeId, NodeAddr>) {
        loop {
            let r = if target == self.inner.id {
                self.init_group_local(g, members.clone()).await
            } else {
                match codec::encode(&AdminRequest::InitGroup { members: members.clone() }) {
                    Ok(body) => match self
                        .inner
                        .net
                        .call(target, g, RpcKind::Admin, Bytes::from(body), Duration::from_secs(2))
                        .await
                    {
                        Ok(resp) => codec::decode::<Result<(), ProposeError>>(&resp, "init group response")
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string())),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            };
            match r {
                Ok(()) => return,
                Err(e) => tracing::info!(group = g, target, "bootstrap: init pending: {e}"),
            }
            if let Some(gr) = self.raft(g) {
                use openraft::async_runtime::WatchReceiver;
                if gr.metrics().borrow_watched().current_leader.is_some() {
                    return;
                }
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    async fn init_group_local(&self, g: GroupId, members: BTreeMap<NodeId, NodeAddr>) -> Result<(), String> {
        let raft = self.raft(g).ok_or_else(|| format!("no group {g}"))?;
        if raft.is_initialized().await.map_err(|e| e.to_string())? {
            return Ok(());
        }
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = e.to_string();
                // Already initialised by an earlier try: done.
                if raft.is_initialized().await.unwrap_or(false) {
                    Ok(())
                } else {
                    Err(msg)
                }
            }
        }
    }

    /// A peer (the bootstrapping node) asks us to initialise `g`.
    pub(crate) async fn init_group_from_peer(
        &self,
        from: NodeId,
        g: GroupId,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<(), ProposeError> {
        let Some(cid) = self.inner.cluster_id.get() else {
            return Err(ProposeError::Fatal {
                group: g,
                reason: "no cluster id in the bootstrap request".into(),
            });
        };
        if let Err(e) = self.persist_cluster_id(cid) {
            return Err(ProposeError::Fatal { group: g, reason: e.to_string() });
        }
        tracing::info!(group = g, from, "initialising group at the bootstrapping node's request");
        self.init_group_local(g, members).await.map_err(|reason| ProposeError::Fatal { group: g, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::group_voters;

    #[test]
    fn voters_start_at_the_preferred_leader_and_spread() {
        let ids = [1, 2, 3];
        assert_eq!(group_voters(&ids, 1), vec![2, 3, 1]);
        assert_eq!(group_voters(&ids, 3), vec![1, 2, 3]);
        let leaders: Vec<_> = (1..=16).map(|g| group_voters(&ids, g)[0]).collect();
        for n in ids {
            assert!(leaders.iter().filter(|l| **l == n).count() >= 5);
        }
        assert_eq!(group_voters(&[1, 2, 3, 4, 5], 4), vec![5, 1, 2]);
        assert_eq!(group_voters(&[7], 9), vec![7]);
    }
}
