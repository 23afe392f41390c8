//! Cluster membership: the node list and membership plans, kept in the meta group.
//!
//! Adding or removing a node is a **plan** stored in the meta group's state
//! ([`SystemCommand::StartPlan`]). The meta group's leader executes it group by group: it asks each
//! group's leader to reconfigure (`AdminRequest::Reconfigure`: add the new node as a learner and wait
//! until it caught up, then replace the voters with the new placement, then drop nodes that left),
//! and records each finished group ([`SystemCommand::PlanProgress`]). A new meta leader resumes
//! from the recorded progress; reconfiguring a group that already has the target membership is a
//! no-op, so repeating a step is harmless. Placement is the same rule as at bootstrap:
//! [`group_voters`] over the sorted node ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ironhub_storage::{codec, StorageError};
use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::apply::{StateTxn, StateView};
use crate::bootstrap::group_voters;
use crate::error::ProposeError;
use crate::node::RaftNode;
use crate::rpc::AdminRequest;
use crate::transport::RpcKind;
use crate::types::{Body, GroupId, NodeAddr, NodeId, Proposal, META_GROUP};

/// Raft-layer commands, applied by the raft crate itself (meta group only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemCommand {
    /// Sets the cluster's node list (written at bootstrap and by plans).
    SetNodes(BTreeMap<NodeId, NodeAddr>),
    /// Starts a membership plan; refused while another plan runs.
    StartPlan(MembershipPlan),
    /// Records that `group` has the plan's target membership.
    PlanProgress {
        /// The plan.
        plan: u64,
        /// The group done.
        group: GroupId,
    },
    /// Ends the plan (with an error message if it was abandoned).
    FinishPlan {
        /// The plan.
        plan: u64,
        /// None when every group was reconfigured.
        error: Option<String>,
    },
}

/// What a plan changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a node (started with an empty data dir).
    AddNode {
        /// Its id.
        id: NodeId,
        /// Its cluster address.
        addr: NodeAddr,
    },
    /// Removes a node from every group.
    RemoveNode {
        /// Its id.
        id: NodeId,
    },
}

/// A membership plan and its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipPlan {
    /// Plan id (the meta log index that started it is not known to the proposer: a random id).
    pub id: u64,
    /// The change.
    pub change: MembershipChange,
    /// The node list once the plan is done.
    pub nodes_after: BTreeMap<NodeId, NodeAddr>,
    /// Groups already reconfigured.
    pub done: BTreeSet<GroupId>,
    /// Set once finished: `Some(None)` success, `Some(Some(e))` abandoned.
    pub finished: Option<Option<String>>,
}

const NODES_KEY: &[u8] = b"nodes";
const PLAN_KEY: &[u8] = b"plan";

fn raft_key(k: &[u8]) -> Vec<u8> {
    crate::apply::raft_data_key(META_GROUP, k)
}

fn reply(r: Result<(), String>) -> Result<Bytes, StorageError> {
    codec::encode(&r).map(Bytes::from)
}

/// Applies a system command inside the state machine of `group`.
pub(crate) fn apply_system(
    group: GroupId,
    cmd: &SystemCommand,
    txn: &mut StateTxn<'_>,
) -> Result<Bytes, StorageError> {
    if group != META_GROUP {
        return reply(Err("system commands belong to the meta group".into()));
    }
    let plan: Option<MembershipPlan> = match txn.raw_get(&raft_key(PLAN_KEY))? {
        Some(v) => Some(codec::decode(&v, "membership plan")?),
        None => None,
    };
    match cmd {
        SystemCommand::SetNodes(nodes) => {
            txn.raw_put(raft_key(NODES_KEY), codec::encode(nodes)?);
            reply(Ok(()))
        }
        SystemCommand::StartPlan(p) => {
            if let Some(cur) = plan.filter(|c| c.finished.is_none()) {
                return reply(Err(format!("membership plan {} ({:?}) is still running", cur.id, cur.change)));
            }
            let mut p = p.clone();
            p.done.clear();
            p.finished = None;
            if let MembershipChange::AddNode { .. } = p.change {
                // Everyone learns the new node's address at once.
                txn.raw_put(raft_key(NODES_KEY), codec::encode(&p.nodes_after)?);
            }
            txn.raw_put(raft_key(PLAN_KEY), codec::encode(&p)?);
            reply(Ok(()))
        }
        SystemCommand::PlanProgress { plan: id, group } => match plan {
            Some(mut p) if p.id == *id && p.finished.is_none() => {
                p.done.insert(*group);
                txn.raw_put(raft_key(PLAN_KEY), codec::encode(&p)?);
                reply(Ok(()))
            }
            _ => reply(Err(format!("plan {id} is not running"))),
        },
        SystemCommand::FinishPlan { plan: id, error } => match plan {
            Some(mut p) if p.id == *id && p.finished.is_none() => {
                if error.is_none() {
                    txn.raw_put(raft_key(NODES_KEY), codec::encode(&p.nodes_after)?);
                } else if let MembershipChange::AddNode { id: added, .. } = &p.change {
                    // An abandoned add: the node is not a member. Groups it may already have joined
                    // drop it at the next plan (reconfigure removes nodes outside the list), or at
                    // `remove-node`.
                    let mut nodes = p.nodes_after.clone();
                    nodes.remove(added);
                    txn.raw_put(raft_key(NODES_KEY), codec::encode(&nodes)?);
                }
                p.finished = Some(error.clone());
                txn.raw_put(raft_key(PLAN_KEY), codec::encode(&p)?);
                reply(Ok(()))
            }
            _ => reply(Err(format!("plan {id} is not running"))),
        },
    }
}

fn read_nodes(v: &StateView<'_>) -> Result<Option<BTreeMap<NodeId, NodeAddr>>, StorageError> {
    match v.raw_get(&raft_key(NODES_KEY))? {
        Some(b) => Ok(Some(codec::decode(&b, "node list")?)),
        None => Ok(None),
    }
}

fn read_plan(v: &StateView<'_>) -> Result<Option<MembershipPlan>, StorageError> {
    match v.raw_get(&raft_key(PLAN_KEY))? {
        Some(b) => Ok(Some(codec::decode(&b, "membership plan")?)),
        None => Ok(None),
    }
}

/// How long one group waits for a new learner to catch up before the step fails.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);

/// How often the meta leader looks for plan work.
const PLAN_TICK: Duration = Duration::from_millis(500);

impl RaftNode {
    /// The cluster's nodes as this node last applied them (before the first `SetNodes`: the
    /// configured peers, or this node alone).
    pub async fn cluster_nodes(&self) -> BTreeMap<NodeId, NodeAddr> {
        let stored = self.with_state(META_GROUP, read_nodes).await.ok().flatten();
        stored.unwrap_or_else(|| self.configured_nodes())
    }

    pub(crate) fn configured_nodes(&self) -> BTreeMap<NodeId, NodeAddr> {
        let peers = &self.inner.config.peers;
        if peers.is_empty() {
            BTreeMap::from([(self.inner.id, self.node_addr(self.inner.id))])
        } else {
            peers.keys().map(|id| (*id, self.node_addr(*id))).collect()
        }
    }

    /// The current or last membership plan, as this node last applied it.
    pub async fn membership_plan(&self) -> Option<MembershipPlan> {
        self.with_state(META_GROUP, read_plan).await.ok().flatten()
    }

    async fn propose_system(&self, cmd: SystemCommand) -> Result<Result<(), String>, ProposeError> {
        let raw = self.propose(META_GROUP, Proposal { id: None, body: Body::System(cmd) }).await?;
        codec::decode(&raw, "system command response")
            .map_err(|e| ProposeError::Fatal { group: META_GROUP, reason: e.to_string() })
    }

    /// Starts a plan adding node `id` at `addr` (a node started with an empty data dir and
    /// `--peers` naming the cluster). Returns the plan; progress shows in [`Self::membership_plan`].
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<MembershipPlan, String> {
        let nodes = self.current_nodes_linearizable().await?;
        if nodes.contains_key(&id) {
            return Err(format!("node {id} is already a member"));
        }
        let addr = NodeAddr { cluster: addr };
        let mut after = nodes.clone();
        after.insert(id, addr.clone());
        self.start_plan(MembershipChange::AddNode { id, addr }, after).await
    }

    /// Abandons the running plan: groups already reconfigured stay so (each step leaves a valid
    /// membership), the rest keep their old one, and a new plan may start. For a mistyped address
    /// or a node that never came up.
    pub async fn cancel_plan(&self) -> Result<MembershipPlan, String> {
        self.read_barrier(META_GROUP).await.map_err(|e| e.to_string())?;
        let plan = self
            .membership_plan()
            .await
            .filter(|p| p.finished.is_none())
            .ok_or_else(|| "no membership plan is running".to_string())?;
        let error = Some("cancelled by the operator".to_string());
        self.propose_system(SystemCommand::FinishPlan { plan: plan.id, error })
            .await
            .map_err(|e| e.to_string())??;
        tracing::warn!(plan = plan.id, change = ?plan.change, "membership plan cancelled");
        // The commit happened on the meta leader; read it back from this node's state.
        self.read_barrier(META_GROUP).await.map_err(|e| e.to_string())?;
        self.membership_plan().await.ok_or_else(|| "plan vanished".to_string())
    }

    /// Starts a plan removing node `id` from every group.
    pub async fn remove_node(&self, id: NodeId) -> Result<MembershipPlan, String> {
        let nodes = self.current_nodes_linearizable().await?;
        // A node left in some group by an abandoned plan can be removed although it is not listed.
        let in_a_group = self.status().iter().any(|g| g.voters.contains(&id) || g.learners.contains(&id));
        if !nodes.contains_key(&id) && !in_a_group {
            return Err(format!("node {id} is not a member"));
        }
        if nodes.len() <= 1 {
            return Err("cannot remove the last node".into());
        }
        let mut after = nodes.clone();
        after.remove(&id);
        self.start_plan(MembershipChange::RemoveNode { id }, after).await
    }

    async fn current_nodes_linearizable(&self) -> Result<BTreeMap<NodeId, NodeAddr>, String> {
        self.read_barrier(META_GROUP).await.map_err(|e| e.to_string())?;
        Ok(self.cluster_nodes().await)
    }

    async fn start_plan(
        &self,
        change: MembershipChange,
        nodes_after: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<MembershipPlan, String> {
        let plan =
            MembershipPlan { id: rand::random(), change, nodes_after, done: BTreeSet::new(), finished: None };
        self.propose_system(SystemCommand::StartPlan(plan.clone())).await.map_err(|e| e.to_string())??;
        tracing::info!(plan = plan.id, change = ?plan.change, "membership plan started");
        Ok(plan)
    }

    /// Writes the configured node list into the meta group once it has a leader (bootstrap).
    pub(crate) async fn record_initial_nodes(&self) {
        let nodes = self.configured_nodes();
        loop {
            match self.propose_system(SystemCommand::SetNodes(nodes.clone())).await {
                Ok(_) => return,
                Err(e) => tracing::info!("bootstrap: recording the node list: {e}"),
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }

    /// Executes running plans while this node leads the meta group.
    pub(crate) async fn plan_loop(&self) {
        let mut progressed = false;
        loop {
            // Steps run back to back while they succeed; idle or after a failure, wait a tick.
            if !std::mem::take(&mut progressed) {
                tokio::select! {
                    _ = self.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(PLAN_TICK) => {}
                }
            } else if self.inner.shutdown.is_cancelled() {
                return;
            }
            let leads_meta = self
                .raft(META_GROUP)
                .is_some_and(|r| r.metrics().borrow_watched().current_leader == Some(self.inner.id));
            if !leads_meta {
                continue;
            }
            let Some(plan) = self.membership_plan().await.filter(|p| p.finished.is_none()) else {
                continue;
            };
            match self.plan_step(&plan).await {
                Ok(()) => progressed = true,
                Err(e) => tracing::warn!(plan = plan.id, "membership plan step: {e}"),
            }
        }
    }

    /// Reconfigures the next group of `plan`, or finishes it.
    async fn plan_step(&self, plan: &MembershipPlan) -> Result<(), String> {
        let ids: Vec<NodeId> = plan.nodes_after.keys().copied().collect();
        let next = (0..=self.inner.partitions).find(|g| !plan.done.contains(g));
        let Some(g) = next else {
            self.propose_system(SystemCommand::FinishPlan { plan: plan.id, error: None })
                .await
                .map_err(|e| e.to_string())??;
            tracing::info!(plan = plan.id, change = ?plan.change, "membership plan finished");
            return Ok(());
        };
        let voters: BTreeSet<NodeId> = if g == META_GROUP {
            ids.iter().copied().take(3).collect()
        } else {
            group_voters(&ids, g).into_iter().collect()
        };
        self.reconfigure_group(g, voters, plan.nodes_after.clone()).await?;
        self.propose_system(SystemCommand::PlanProgress { plan: plan.id, group: g })
            .await
            .map_err(|e| e.to_string())??;
        tracing::info!(plan = plan.id, group = g, "group reconfigured");
        Ok(())
    }

    /// Asks the leader of `g` (maybe this node) to bring the group to `voters` over `nodes`.
    pub(crate) async fn reconfigure_group(
        &self,
        g: GroupId,
        voters: BTreeSet<NodeId>,
        nodes: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<(), String> {
        // The leader as this node knows it; a node outside the group asks the target voters.
        let known = self.raft(g).and_then(|r| r.metrics().borrow_watched().current_leader);
        let candidates: Vec<NodeId> = match known {
            Some(l) => vec![l],
            None => voters.iter().copied().collect(),
        };
        let req = AdminRequest::Reconfigure { voters, nodes };
        let mut last = format!("group {g} has no leader");
        for target in candidates {
            let r = if target == self.inner.id {
                self.reconfigure_local(g, req.clone()).await
            } else {
                self.reconfigure_remote(g, target, &req).await
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn reconfigure_remote(&self, g: GroupId, target: NodeId, req: &AdminRequest) -> Result<(), String> {
        let body = codec::encode(req).map_err(|e| e.to_string())?;
        let resp = self
            .inner
            .net
            .call(target, g, RpcKind::Admin, Bytes::from(body), Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        codec::decode::<Result<(), String>>(&resp, "reconfigure response").map_err(|e| e.to_string())?
    }

    /// On the leader of `g`: brings the group to `voters` over `nodes` (others become learners,
    /// nodes not listed are removed). Idempotent.
    pub(crate) async fn reconfigure_local(&self, g: GroupId, req: AdminRequest) -> Result<(), String> {
        let AdminRequest::Reconfigure { voters, nodes } = req else {
            return Err("not a reconfigure".into());
        };
        let raft = self.raft(g).ok_or_else(|| format!("no group {g}"))?;
        if raft.metrics().borrow_watched().current_leader != Some(self.inner.id) {
            return Err(format!("node {} does not lead group {g}", self.inner.id));
        }
        let m = raft.metrics().borrow_watched().membership_config.clone();
        let present: BTreeSet<NodeId> = m.membership().nodes().map(|(id, _)| *id).collect();
        let current: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        for (id, addr) in &nodes {
            // A new node, and a learner about to become a voter: an earlier attempt may have
            // added it and failed before it caught up (a leader change mid-step), and promoting
            // it then made a node that never started a voter. A learner that stays a learner
            // is not waited for (it may be down without holding up the plan).
            let promoted = voters.contains(id) && !current.contains(id);
            if !present.contains(id) || promoted {
                // Blocks until the learner caught up with the leader's log; a node that never
                // answers fails the step (the plan retries it, or the operator cancels the plan).
                tokio::time::timeout(LEARNER_CATCH_UP, raft.add_learner(*id, addr.clone(), true))
                    .await
                    .map_err(|_| {
                        format!("node {id} did not catch up within {LEARNER_CATCH_UP:?}: is it running?")
                    })?
                    .map_err(|e| format!("add learner {id}: {e}"))?;
            }
        }
        if current != voters {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
                .await
                .map_err(|e| format!("replace voters: {e}"))?;
        }
        let gone: BTreeSet<NodeId> = present.iter().filter(|id| !nodes.contains_key(id)).copied().collect();
        if !gone.is_empty() {
            raft.change_membership(ChangeMembers::RemoveNodes(gone.clone()), false)
                .await
                .map_err(|e| format!("remove nodes {gone:?}: {e}"))?;
        }
        Ok(())
    }
}
