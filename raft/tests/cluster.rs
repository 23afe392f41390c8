//! In-process clusters over the in-memory router: elections, spread leaders, forwarding,
//! isolation, crash + restart with catch-up by snapshot, idempotent retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ironhub_raft::testing::MemRouter;
use ironhub_raft::transport::Security;
use ironhub_raft::{
    Apply, ApplyContext, BatchConfig, GroupId, NodeConfig, NodeId, Proposal, ProposalId, RaftNode, StateTxn,
    Timing,
};
use ironhub_storage::{KvEngine, MemEngine, StorageError};

/// Test application: each command names a counter; applying increments it and returns the new value.
struct Counters;

impl Apply for Counters {
    fn apply(
        &self,
        _ctx: &ApplyContext,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError> {
        let cur = txn.get(command)?.map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let next = cur + 1;
        txn.put(command, &next.to_be_bytes());
        Ok(Bytes::copy_from_slice(&next.to_be_bytes()))
    }
}

struct TestCluster {
    router: MemRouter,
    engines: BTreeMap<NodeId, Arc<dyn KvEngine>>,
    nodes: BTreeMap<NodeId, RaftNode>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    peers: BTreeMap<NodeId, SocketAddr>,
    partitions: u16,
    timing: Timing,
}

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + id as u16))
}

impl TestCluster {
    async fn start(n: u64, partitions: u16, timing: Timing) -> Self {
        let peers: BTreeMap<_, _> = (1..=n).map(|i| (i, addr(i))).collect();
        let mut c = TestCluster {
            router: MemRouter::new(),
            engines: BTreeMap::new(),
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            peers,
            partitions,
            timing,
        };
        for id in 1..=n {
            c.engines.insert(id, Arc::new(MemEngine::new()));
            c.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
            c.boot(id).await;
        }
        c
    }

    async fn boot(&mut self, id: NodeId) {
        let cfg = NodeConfig {
            node_id: id,
            data_dir: self.dirs[&id].path().to_path_buf(),
            cluster_bind: addr(id),
            peers: self.peers.clone(),
            security: Security::InsecureDev,
            partitions: self.partitions,
            timing: self.timing.clone(),
            batch: BatchConfig::default(),
            log_cache: Default::default(),
            state_cache: Default::default(),
        };
        let node = RaftNode::start_on(
            cfg,
            self.engines[&id].clone(),
            Arc::new(Counters),
            ironhub_raft::metrics::RaftMetrics::unregistered(),
            Some(self.router.clone()),
        )
        .await
        .expect("node starts");
        self.nodes.insert(id, node);
    }

    /// Simulates a crash: the node stops talking; its engine (the "disk") is kept.
    async fn crash(&mut self, id: NodeId) {
        self.router.unregister(id);
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    fn groups(&self) -> u16 {
        self.partitions + 1
    }

    /// Waits until every group has a leader among `alive`, agreed by all of them.
    async fn wait_all_led(&self, alive: &[NodeId], within: Duration) -> BTreeMap<GroupId, NodeId> {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = BTreeMap::new();
            let mut ok = true;
            for g in 0..self.groups() {
                let seen: Vec<Option<NodeId>> =
                    alive.iter().map(|id| self.nodes[id].status()[g as usize].leader).collect();
                match seen[0] {
                    Some(l) if alive.contains(&l) && seen.iter().all(|s| *s == Some(l)) => {
                        leaders.insert(g, l);
                    }
                    _ => ok = false,
                }
            }
            if ok {
                return leaders;
            }
            assert!(Instant::now() < deadline, "groups not all led within {within:?}: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn incr(&self, via: NodeId, g: GroupId, key: &str) -> u64 {
        let p = Proposal::app(Bytes::copy_from_slice(key.as_bytes()));
        let r = self.nodes[&via].propose(g, p).await.expect("proposal commits");
        u64::from_be_bytes(r.as_ref().try_into().expect("8 bytes"))
    }

    async fn read(&self, via: NodeId, g: GroupId, key: &str) -> u64 {
        let node = &self.nodes[&via];
        node.read_barrier(g).await.expect("read barrier");
        let k = key.as_bytes().to_vec();
        node.with_state(g, move |v| v.get(&k))
            .await
            .expect("read")
            .map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
            .unwrap_or(0)
    }
}

fn fast_timing() -> Timing {
    Timing { heartbeat_ms: 100, election_min_ms: 400, election_max_ms: 800, ..Timing::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_every_group_with_leaders_spread() {
    let c = TestCluster::start(3, 6, fast_timing()).await;
    let leaders = c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    assert_eq!(leaders.len(), 7);
    // Partition g is initialised by its preferred leader voters[g mod 3], so each node leads some.
    for id in 1..=3 {
        assert!(leaders.values().any(|l| *l == id), "node {id} leads nothing: {leaders:?}");
    }
    let cid = c.nodes[&1].cluster_id().expect("cluster id");
    for id in 2..=3 {
        assert_eq!(c.nodes[&id].cluster_id(), Some(cid), "node {id} learned the cluster id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_applied_everywhere() {
    let c = TestCluster::start(3, 3, fast_timing()).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    let mut expected = 0;
    for round in 0..10 {
        for via in 1..=3 {
            for g in 0..c.groups() {
                let v = c.incr(via, g, "k").await;
                if g == 1 {
                    expected += 1;
                    assert_eq!(v, expected, "round {round} via {via}");
                }
            }
        }
    }
    for via in 1..=3 {
        assert_eq!(c.read(via, 1, "k").await, expected, "linearizable read on node {via}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_loses_its_groups_and_writes_resume() {
    let c = TestCluster::start(3, 3, fast_timing()).await;
    let leaders = c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    let victim = leaders[&1];
    let others: Vec<NodeId> = (1..=3).filter(|i| *i != victim).collect();
    let before = c.incr(others[0], 1, "x").await;
    c.router.isolate(victim);
    let started = Instant::now();
    let new_leaders = c.wait_all_led(&others, Duration::from_secs(10)).await;
    assert!(new_leaders.values().all(|l| *l != victim));
    let after = c.incr(others[1], 1, "x").await;
    assert_eq!(after, before + 1, "no acknowledged write lost");
    eprintln!("failover of every group took {:?}", started.elapsed());
    c.router.heal(victim);
    assert_eq!(c.read(victim, 1, "x").await, after, "the healed node catches up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_node_restarts_and_catches_up_by_snapshot() {
    let timing = Timing { snapshot_every: 50, keep_behind_snapshot: 10, ..fast_timing() };
    let mut c = TestCluster::start(3, 1, timing).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    c.incr(1, 1, "s").await;
    c.crash(3).await;
    c.wait_all_led(&[1, 2], Duration::from_secs(10)).await;
    let mut last = 0;
    for _ in 0..400 {
        last = c.incr(1, 1, "s").await;
    }
    // The leader snapshotted and purged past what node 3 has.
    let leader_status = c.nodes[&1].status();
    assert!(leader_status[1].purged.is_some() || c.nodes[&2].status()[1].purged.is_some(), "log purged");
    c.boot(3).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    assert_eq!(c.read(3, 1, "s").await, last, "restarted node caught up");
    let st = &c.nodes[&3].status()[1];
    assert!(st.snapshot.is_some(), "node 3 caught up through a snapshot: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_proposal_applies_once_and_gets_the_same_response() {
    let c = TestCluster::start(1, 1, fast_timing()).await;
    c.wait_all_led(&[1], Duration::from_secs(10)).await;
    let id = ProposalId { origin: 1, incarnation: 7, seq: 1 };
    let p = Proposal::app(Bytes::from_static(b"once")).with_id(id);
    let first = c.nodes[&1].propose(1, p.clone()).await.expect("commit");
    let again = c.nodes[&1].propose(1, p).await.expect("commit");
    assert_eq!(first, again);
    assert_eq!(c.read(1, 1, "once").await, 1);
    let next = Proposal::app(Bytes::from_static(b"once")).with_id(ProposalId { seq: 2, ..id });
    c.nodes[&1].propose(1, next).await.expect("commit");
    assert_eq!(c.read(1, 1, "once").await, 2);
}

async fn wait_plan_finished(node: &RaftNode, id: u64, within: Duration) -> ironhub_raft::MembershipPlan {
    let deadline = Instant::now() + within;
    loop {
        if let Some(p) = node.membership_plan().await {
            if p.id == id && p.finished.is_some() {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "plan not finished within {within:?}: {:?}",
            node.membership_plan().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_then_remove_node_by_plan() {
    let mut c = TestCluster::start(3, 4, fast_timing()).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    for g in 0..c.groups() {
        c.incr(1, g, "m").await;
    }
    // A fourth node starts empty, listing the cluster and itself; it never bootstraps on its own.
    c.peers.insert(4, addr(4));
    c.engines.insert(4, Arc::new(MemEngine::new()));
    c.dirs.insert(4, tempfile::tempdir().expect("tempdir"));
    c.boot(4).await;
    let plan = c.nodes[&2].add_node(4, addr(4).to_string()).await.expect("plan starts");
    assert!(c.nodes[&3].add_node(5, addr(5).to_string()).await.is_err(), "one plan at a time");
    let done = wait_plan_finished(&c.nodes[&1], plan.id, Duration::from_secs(60)).await;
    assert_eq!(done.finished, Some(None), "plan succeeded");
    let nodes = c.nodes[&4].cluster_nodes().await;
    assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // Every group now lists node 4 (voter where placement says so, learner elsewhere), and node 4 has the data.
    let st = c.nodes[&1].status();
    for g in &st {
        assert!(g.voters.contains(&4) || g.learners.contains(&4), "group {} lacks node 4: {g:?}", g.group);
    }
    assert!(st.iter().filter(|g| g.voters.contains(&4)).count() >= 2, "node 4 votes somewhere: {st:?}");
    for g in 0..c.groups() {
        assert_eq!(c.read(4, g, "m").await, 1, "group {g} replicated to node 4");
    }

    let plan = c.nodes[&4].remove_node(2).await.expect("remove plan starts");
    let done = wait_plan_finished(&c.nodes[&4], plan.id, Duration::from_secs(60)).await;
    assert_eq!(done.finished, Some(None), "plan succeeded: {done:?}");
    for id in [1, 3, 4] {
        for g in c.nodes[&id].status() {
            assert!(
                !g.voters.contains(&2) && !g.learners.contains(&2),
                "node 2 still in group {}: {g:?}",
                g.group
            );
        }
    }
    c.crash(2).await;
    c.wait_all_led(&[1, 3, 4], Duration::from_secs(20)).await;
    for g in 0..c.groups() {
        assert_eq!(c.incr(3, g, "m").await, 2, "group {g} writable without node 2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_three_voters_per_group_and_the_fourth_follows_as_learner() {
    let c = TestCluster::start(4, 4, fast_timing()).await;
    c.wait_all_led(&[1, 2, 3, 4], Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.nodes[&1].status();
        let complete = st.iter().all(|g| g.voters.len() == 3 && g.learners.len() == 1);
        if complete {
            break;
        }
        assert!(Instant::now() < deadline, "groups not 3 voters + 1 learner: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for g in 0..c.groups() {
        let v = c.incr(1, g, "l").await;
        assert_eq!(v, 1);
        for id in 1..=4 {
            assert_eq!(c.read(id, g, "l").await, 1, "group {g} on node {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_through_message_loss_and_delay() {
    let c = TestCluster::start(3, 2, fast_timing()).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    c.router.set_delay(Duration::from_millis(5));
    c.router.set_drop_rate(0.05);
    let mut last = 0;
    for i in 0..100u64 {
        // Idempotent proposals, so a retry after a lost reply applies once.
        let id = ProposalId { origin: 9, incarnation: 1, seq: i + 1 };
        let p = Proposal::app(Bytes::from_static(b"lossy")).with_id(id);
        let r = loop {
            match c.nodes[&((i % 3) + 1)].propose(1, p.clone()).await {
                Ok(r) => break r,
                Err(e) => assert!(e.is_retriable(), "{e}"),
            }
        };
        let v = u64::from_be_bytes(r.as_ref().try_into().expect("8 bytes"));
        assert_eq!(v, last + 1, "each command applied exactly once");
        last = v;
    }
    c.router.set_drop_rate(0.0);
    c.router.set_delay(Duration::ZERO);
    for id in 1..=3 {
        assert_eq!(c.read(id, 1, "lossy").await, 100);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_for_a_node_that_never_starts_can_be_cancelled() {
    let c = TestCluster::start(3, 2, fast_timing()).await;
    c.wait_all_led(&[1, 2, 3], Duration::from_secs(20)).await;
    // Node 7 is never started: the plan cannot make progress.
    let plan = c.nodes[&1].add_node(7, addr(7).to_string()).await.expect("plan starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = c.nodes[&1].membership_plan().await.expect("plan");
    assert_eq!((running.id, running.finished.clone()), (plan.id, None));
    assert!(c.nodes[&2].add_node(8, addr(8).to_string()).await.is_err(), "one plan at a time");
    let cancelled = c.nodes[&2].cancel_plan().await.expect("cancel");
    assert_eq!(cancelled.id, plan.id);
    assert_eq!(cancelled.finished, Some(Some("cancelled by the operator".into())));
    assert!(c.nodes[&3].cancel_plan().await.is_err(), "nothing left to cancel");
    c.nodes[&1].read_barrier(0).await.expect("barrier");
    let nodes = c.nodes[&1].cluster_nodes().await;
    assert_eq!(nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "node 7 is not a member");
    for g in 0..c.groups() {
        assert_eq!(c.incr(2, g, "c").await, 1, "group {g} still writable");
    }
}

/// The log is bounded by size, not only by entry count: with counts far out of reach, a group
/// whose log grew past `snapshot_log_bytes` snapshots, and keeps about `keep_behind_bytes` behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_snapshotted_and_purged_by_size() {
    let timing = Timing {
        snapshot_every: 1_000_000,
        keep_behind_snapshot: 1_000_000,
        snapshot_log_bytes: 64 * 1024,
        keep_behind_bytes: 8 * 1024,
        ..fast_timing()
    };
    let c = TestCluster::start(1, 1, timing).await;
    c.wait_all_led(&[1], Duration::from_secs(10)).await;
    // 400 entries of ~1 KiB: about 400 KiB of log, six times the threshold.
    let key = "k".repeat(1000);
    for _ in 0..400 {
        c.incr(1, 1, &key).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.nodes[&1].status()[1].clone();
        let (last, purged) = (st.last_log_index.unwrap_or(0), st.purged.unwrap_or(0));
        // 64 KiB since the last snapshot plus ~8 KiB behind it: well under 100 entries of 1 KiB.
        if st.snapshot.is_some() && last - purged < 100 {
            break;
        }
        assert!(Instant::now() < deadline, "log not bounded by size: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.read(1, 1, &key).await, 400, "nothing lost to the purges");
}
