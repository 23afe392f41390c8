//! A multi-group raft node: one engine, one log flusher, one transport, the meta group and P
//! partition groups, each with its proposal batcher.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ironhub_storage::{codec, keys, Flusher, KvEngine, LogStore, RocksEngine, WriteBatch};
use openraft::async_runtime::WatchReceiver;
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apply::{Apply, StateView};
use crate::batcher::{self, BatchConfig, BatcherHandle, Pending};
use crate::error::{NodeError, ProposeError};
use crate::forward::{Forwarder, ForwarderHandle};
use crate::metrics::RaftMetrics;
use crate::net::ClusterNet;
use crate::network::GroupNetworkFactory;
use crate::rpc::NodeRpc;
use crate::state_machine::GroupStateMachine;
use crate::testing::MemRouter;
use crate::transport::{ClusterIdCell, RpcKind, Security, Transport, TransportConfig};
use crate::types::{GroupId, GroupRaft, NodeAddr, NodeId, Proposal, META_GROUP};

/// The on-disk format this build writes; a data dir with a newer one is refused.
pub const DATA_FORMAT: u32 = 1;

/// Raft timing (DESIGN.md "Timing": tuned for 2-core hosts running three nodes and a bench).
/// The `[raft]` section of the configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Leader heartbeat interval, ms (default 150).
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, ms (default 600).
    pub election_min_ms: u64,
    /// Election timeout upper bound, ms (default 1000); also openraft's leader lease.
    pub election_max_ms: u64,
    /// Snapshot install/send timeout, ms (default 10000).
    pub snapshot_timeout_ms: u64,
    /// Build a snapshot after this many applied entries (default 20000).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for slow followers (default 10000).
    pub keep_behind_snapshot: u64,
    /// Also build a snapshot once this many bytes (or the last snapshot's size, if larger) were
    /// written to the group's log since the last one (default 4 MiB). Under load an entry is a batch of up to `batch.max_bytes`, so a bound
    /// in entries alone lets the log grow to gigabytes, which RocksDB then compacts over and over.
    pub snapshot_log_bytes: u64,
    /// At most about this many bytes of log are kept behind a snapshot (default 2 MiB), besides
    /// the `keep_behind_snapshot` entries bound; a follower further behind gets the snapshot.
    pub keep_behind_bytes: u64,
}

impl Timing {
    /// How long proposals and reads retry a leader change: two election timeouts and some slack.
    pub fn retry_window(&self) -> Duration {
        Duration::from_millis(self.election_max_ms * 2 + 500)
    }
}

/// Why 150 / 600–1000 ms and not DESIGN.md's 250 / 1000–2000: openraft 0.10.0-alpha.37 gives a
/// leader a lease of `election_max_ms` (followers refuse every vote until it expired) and retries a
/// failed (pre-)vote only one election timeout later. The first campaign, at `t < max` after the
/// last heartbeat, is therefore always refused, and the second one succeeds at `2t`: failover takes
/// `[max, 2 × max)`. With 1–2 s that is up to 4 s; with 600–1000 ms it is at most 2 s, and
/// `2 × min ≥ max` guarantees the second campaign is past the lease.
impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_min_ms: 600,
            election_max_ms: 1000,
            snapshot_timeout_ms: 10_000,
            snapshot_every: 20_000,
            keep_behind_snapshot: 10_000,
            snapshot_log_bytes: 4 << 20,
            keep_behind_bytes: 2 << 20,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Data directory (RocksDB in `db/`, snapshots in `snapshots/`).
    pub data_dir: PathBuf,
    /// Cluster (QUIC) bind address.
    pub cluster_bind: SocketAddr,
    /// Every voter including this node; empty for a single node.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Cluster transport security.
    pub security: Security,
    /// Partition groups of a new cluster (fixed at creation; default 16).
    pub partitions: u16,
    /// Raft timing.
    pub timing: Timing,
    /// Proposal batching limits.
    pub batch: BatchConfig,
    /// How much of each group's written log stays in memory.
    pub log_cache: ironhub_storage::log_store::CacheLimits,
    /// How many decoded values of each group's state apply keeps in memory.
    pub state_cache: crate::apply::StateCacheLimits,
}

pub(crate) struct Group {
    pub(crate) id: GroupId,
    pub(crate) raft: GroupRaft,
    pub(crate) batcher: BatcherHandle,
    pub(crate) forwarder: ForwarderHandle,
    pub(crate) reads: parking_lot::Mutex<crate::reads::ReadRound>,
    /// Bytes appended to the group's log (see `LogStore::appended_bytes`).
    pub(crate) log_bytes: Arc<std::sync::atomic::AtomicU64>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) config: NodeConfig,
    pub(crate) engine: Arc<dyn KvEngine>,
    pub(crate) flusher: Flusher,
    pub(crate) net: Arc<dyn ClusterNet>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) cluster_id: Arc<ClusterIdCell>,
    pub(crate) groups: Vec<Group>,
    pub(crate) metrics: RaftMetrics,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) partitions: u16,
    pub(crate) fatal: tokio::sync::watch::Sender<Option<String>>,
    pub(crate) app_handler: OnceLock<AppHandler>,
}

/// Handles the application's node-to-node messages ([`RaftNode::call_app`]): sender, body → reply.
pub type AppHandler =
    Arc<dyn Fn(NodeId, Bytes) -> futures::future::BoxFuture<'static, Result<Bytes, String>> + Send + Sync>;

/// A running node (cheap to clone).
#[derive(Clone)]
pub struct RaftNode {
    pub(crate) inner: Arc<Inner>,
}

/// One group as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group id (0 = meta).
    pub group: GroupId,
    /// Current leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// This node's role: leader, follower, candidate, learner.
    pub role: String,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub last_applied: Option<u64>,
    /// Index up to which the log is purged.
    pub purged: Option<u64>,
    /// Last snapshot's index.
    pub snapshot: Option<u64>,
}

fn node_meta<T: serde::de::DeserializeOwned>(
    engine: &dyn KvEngine,
    name: &str,
) -> Result<Option<T>, NodeError> {
    match engine.get(&keys::node_key(name.as_bytes()))? {
        Some(v) => Ok(Some(codec::decode(&v, name)?)),
        None => Ok(None),
    }
}

fn put_node_meta<T: Serialize>(engine: &dyn KvEngine, name: &str, v: &T) -> Result<(), NodeError> {
    let mut b = WriteBatch::default();
    b.put(keys::node_key(name.as_bytes()), codec::encode(v)?);
    engine.write(&b, true)?;
    Ok(())
}

/// The partition group (1..=partitions) of a device key: FNV-1a 64 of the key, mod `partitions`.
/// Fixed forever: changing it would move every device.
pub fn partition_of(key: &[u8], partitions: u16) -> GroupId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (h % u64::from(partitions.max(1))) as GroupId
}

impl RaftNode {
    /// Opens the data dir, starts the transport and every group, and bootstraps a new cluster
    /// when this is its first start. Returns once every group runs (leaders come later).
    pub async fn start(
        config: NodeConfig,
        app: Arc<dyn Apply>,
        registry: &prometheus::Registry,
    ) -> Result<RaftNode, NodeError> {
        let metrics = RaftMetrics::new(registry).map_err(|e| NodeError::Config(format!("metrics: {e}")))?;
        let db_dir = config.data_dir.join("db");
        let engine: Arc<dyn KvEngine> = {
            let dir = db_dir.clone();
            let opened = tokio::task::spawn_blocking(move || RocksEngine::open(&dir))
                .await
                .map_err(|e| NodeError::DataDir(format!("opening {}: {e}", db_dir.display())))??;
            Arc::new(opened)
        };
        Self::start_on(config, engine, app, metrics, None).await
    }

    /// Like [`RaftNode::start`] on a given engine, over QUIC or (tests) an in-memory router.
    pub async fn start_on(
        config: NodeConfig,
        engine: Arc<dyn KvEngine>,
        app: Arc<dyn Apply>,
        metrics: RaftMetrics,
        router: Option<MemRouter>,
    ) -> Result<RaftNode, NodeError> {
        let id = config.node_id;
        if !config.peers.is_empty() && !config.peers.contains_key(&id) {
            return Err(NodeError::Config(format!(
                "--node-id {id} is not in --peers; list every voter including this node"
            )));
        }
        let dir = config.data_dir.display().to_string();
        let e = engine.as_ref();
        match node_meta::<u32>(e, "format")? {
            Some(f) if f > DATA_FORMAT => {
                return Err(NodeError::DataDir(format!(
                    "data dir {dir} was written by a newer ironhub (format {f}, this build reads up to {DATA_FORMAT}); upgrade the binary"
                )))
            }
            Some(_) => {}
            None => put_node_meta(e, "format", &DATA_FORMAT)?,
        }
        match node_meta::<NodeId>(e, "node_id")? {
            Some(stored) if stored != id => {
                return Err(NodeError::DataDir(format!(
                    "data dir {dir} belongs to node {stored}, not node {id}; use node {stored}'s --node-id or another --data-dir"
                )))
            }
            Some(_) => {}
            None => put_node_meta(e, "node_id", &id)?,
        }
        let partitions = match node_meta::<u16>(e, "partitions")? {
            Some(p) => {
                if p != config.partitions {
                    tracing::warn!(
                        stored = p,
                        configured = config.partitions,
                        "partitions are fixed at cluster creation; using {p}"
                    );
                }
                p
            }
            None => {
                if config.partitions == 0 {
                    return Err(NodeError::Config("partitions must be at least 1".into()));
                }
                put_node_meta(e, "partitions", &config.partitions)?;
                config.partitions
            }
        };
        let stored_cluster: Option<uuid::Uuid> = node_meta(e, "cluster_id")?;
        let cluster_id = Arc::new(ClusterIdCell::new(stored_cluster));
        let flusher = Flusher::start(engine.clone())?;

        let rpc = Arc::new(NodeRpc { node: OnceLock::new() });
        let incoming = config.data_dir.join("snapshots").join("incoming");
        let (net, local_addr): (Arc<dyn ClusterNet>, SocketAddr) = match router {
            Some(r) => (r.register(id, rpc.clone(), cluster_id.clone(), incoming), config.cluster_bind),
            None => {
                let t = Transport::start(
                    TransportConfig {
                        node_id: id,
                        bind: config.cluster_bind,
                        peers: config.peers.iter().map(|(k, v)| (*k, *v)).collect(),
                        security: config.security.clone(),
                        max_frame: 64 * 1024 * 1024,
                        snapshot_dir: incoming,
                        connect_timeout: Duration::from_millis(500),
                    },
                    cluster_id.clone(),
                    rpc.clone(),
                )
                .await?;
                let addr = t.local_addr();
                (Arc::new(t), addr)
            }
        };

        let raft_config = Arc::new(
            Config {
                cluster_name: "ironhub".into(),
                heartbeat_interval: config.timing.heartbeat_ms,
                election_timeout_min: config.timing.election_min_ms,
                election_timeout_max: config.timing.election_max_ms,
                install_snapshot_timeout: config.timing.snapshot_timeout_ms,
                snapshot_policy: SnapshotPolicy::LogsSinceLast(config.timing.snapshot_every),
                max_in_snapshot_log_to_keep: config.timing.keep_behind_snapshot,
                max_payload_entries: 64,
                ..Default::default()
            }
            .validate()
            .map_err(|e| NodeError::Config(format!("raft timing: {e}")))?,
        );

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let configured = Arc::new(config.peers.keys().copied().collect::<std::collections::BTreeSet<_>>());
        let mut groups = Vec::with_capacity(partitions as usize + 1);
        for g in 0..=partitions {
            let log = {
                let (engine, flusher, limits) = (engine.clone(), flusher.clone(), config.log_cache.clone());
                tokio::task::spawn_blocking(move || {
                    LogStore::open(engine, flusher, g).map(|s| s.with_cache_limits(&limits))
                })
                .await
                .map_err(|e| NodeError::Raft { group: g, reason: e.to_string() })??
            };
            let log_bytes = log.appended_bytes();
            let sm_dir = config.data_dir.join("snapshots").join(format!("g{g}"));
            let sm = {
                let (engine, app, metrics) = (engine.clone(), app.clone(), metrics.clone());
                let cache = config.state_cache.clone();
                tokio::task::spawn_blocking(move || {
                    GroupStateMachine::open(g, engine, app, sm_dir, metrics, &cache)
                })
                .await
                .map_err(|e| NodeError::Raft { group: g, reason: e.to_string() })??
            };
            let factory = GroupNetworkFactory {
                net: net.clone(),
                group: g,
                metrics: metrics.clone(),
                configured: configured.clone(),
            };
            let raft = GroupRaft::new(id, raft_config.clone(), factory, log, sm)
                .await
                .map_err(|e| NodeError::Raft { group: g, reason: e.to_string() })?;
            let batcher = batcher::start(
                g,
                raft.clone(),
                config.batch.clone(),
                metrics.clone(),
                &tasks,
                shutdown.clone(),
            );
            let forwarder = Forwarder {
                group: g,
                me: id,
                raft: raft.clone(),
                batcher: batcher.clone(),
                net: net.clone(),
                metrics: metrics.clone(),
                retry: config.timing.retry_window(),
            }
            .start(config.batch.queue, &tasks, shutdown.clone());
            groups.push(Group { id: g, raft, batcher, forwarder, reads: Default::default(), log_bytes });
        }

        let node = RaftNode {
            inner: Arc::new(Inner {
                id,
                config,
                engine,
                flusher,
                net,
                local_addr,
                cluster_id,
                groups,
                metrics,
                shutdown,
                tasks,
                partitions,
                fatal: tokio::sync::watch::channel(None).0,
                app_handler: OnceLock::new(),
            }),
        };
        let _ = rpc.node.set(Arc::downgrade(&node.inner));
        node.spawn_watchers();
        let n = node.clone();
        if node.inner.cluster_id.get().is_none() {
            node.inner.tasks.spawn(async move { n.bootstrap().await });
        } else {
            node.inner.tasks.spawn(async move { n.check_peers_cluster().await });
        }
        Ok(node)
    }

    /// Resolves with a message when the node must stop because of its configuration (it would
    /// fork or mix clusters); the binary then exits with code 2.
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(m) = rx.borrow_and_update().clone() {
                return m;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn stop_fatally(&self, msg: String) {
        tracing::error!("{msg}");
        let _ = self.inner.fatal.send(Some(msg));
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster id, once created or learned.
    pub fn cluster_id(&self) -> Option<uuid::Uuid> {
        self.inner.cluster_id.get()
    }

    /// Number of partition groups (group ids 1..=partitions; 0 is the meta group).
    pub fn partitions(&self) -> u16 {
        self.inner.partitions
    }

    /// The metrics of the raft layer.
    pub fn metrics(&self) -> &RaftMetrics {
        &self.inner.metrics
    }

    /// The cluster transport's bound address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub(crate) fn group(&self, g: GroupId) -> Result<&Group, ProposeError> {
        self.inner.groups.get(g as usize).ok_or(ProposeError::NoSuchGroup(g))
    }

    /// The raft instance of group `g` (for tests and administration).
    pub fn raft(&self, g: GroupId) -> Option<&GroupRaft> {
        self.inner.groups.get(g as usize).map(|x| &x.raft)
    }

    pub(crate) fn leader_of(&self, g: &Group) -> Option<NodeId> {
        g.raft.metrics().borrow_watched().current_leader
    }

    /// Proposes a command to group `g` from any node: applied locally on the leader, else forwarded.
    /// Retries leader changes for up to `2 × election timeout`; returns the command's response.
    pub async fn propose(&self, g: GroupId, p: Proposal) -> Result<Bytes, ProposeError> {
        let deadline = Instant::now() + self.retry_window();
        loop {
            let attempt = match self.submit_once(g, p.clone()) {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match attempt {
                Err(
                    e @ (ProposeError::NotLeader { .. }
                    | ProposeError::NoLeader { .. }
                    | ProposeError::Forward { .. }),
                ) if Instant::now() < deadline => {
                    // A forward whose outcome is unknown is only retried when the proposal is idempotent.
                    if matches!(e, ProposeError::Forward { .. }) && p.id.is_none() {
                        return Err(e);
                    }
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return Err(ProposeError::ShuttingDown),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Queues a command to group `g` now and returns its response as a future. Commands one caller
    /// submits one after another enter the group's log in that order while the leader stays the
    /// same (this node's batcher, or its ordered forward queue to the leader). Fails at once, and
    /// retriably, when no leader is known or the queue is full: the caller retries in its own order.
    /// A leader change after queueing is retried like [`RaftNode::propose`] (order is then not kept).
    pub fn submit(&self, g: GroupId, p: Proposal) -> Result<Pending, ProposeError> {
        let first = self.submit_once(g, p.clone())?;
        let node = self.clone();
        Ok(Box::pin(async move {
            match first.await {
                Err(ProposeError::NotLeader { .. } | ProposeError::NoLeader { .. }) => {
                    node.propose(g, p).await
                }
                other => other,
            }
        }))
    }

    fn submit_once(&self, g: GroupId, p: Proposal) -> Result<Pending, ProposeError> {
        let group = self.group(g)?;
        match self.leader_of(group) {
            Some(l) if l == self.inner.id => group.batcher.submit(p),
            Some(_) => Ok(Box::pin(group.forwarder.submit(p)?)),
            None => Err(ProposeError::NoLeader { group: g }),
        }
    }

    /// Queues a forwarded batch on this node if it leads `g`, in batch order (the forward target's side).
    pub(crate) async fn propose_local_batch(
        &self,
        g: GroupId,
        batch: Vec<Proposal>,
    ) -> Vec<Result<Bytes, ProposeError>> {
        let group = match self.group(g) {
            Ok(group) => group,
            Err(e) => return vec![Err(e); batch.len()],
        };
        match self.leader_of(group) {
            Some(l) if l == self.inner.id => {}
            leader => return vec![Err(ProposeError::NotLeader { group: g, leader }); batch.len()],
        }
        crate::forward::queue_in_order(&group.batcher, batch).await
    }

    pub(crate) async fn read_index_local(&self, g: GroupId) -> Result<u64, ProposeError> {
        let group = self.group(g)?;
        match group.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read) => Ok(read.index()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(ProposeError::NotLeader { group: g, leader: f.leader_id }),
                None => Err(ProposeError::NoLeader { group: g }),
            },
        }
    }

    /// Runs `f` on a blocking thread with a read view of group `g`'s applied application state.
    /// Call [`RaftNode::read_barrier`] first for a linearizable read.
    pub async fn with_state<T: Send + 'static>(
        &self,
        g: GroupId,
        f: impl FnOnce(&StateView<'_>) -> Result<T, ironhub_storage::StorageError> + Send + 'static,
    ) -> Result<T, ironhub_storage::StorageError> {
        let engine = self.inner.engine.clone();
        tokio::task::spawn_blocking(move || f(&StateView { engine: engine.as_ref(), group: g }))
            .await
            .map_err(|e| ironhub_storage::StorageError::Io {
                what: "state read task".into(),
                source: std::io::Error::other(e),
            })?
    }

    /// Like [`RaftNode::with_state`], but on the calling thread: for small reads of recent state (a
    /// queue's head, an outbox round) that RocksDB serves from its memtable and block cache in
    /// microseconds, where a trip to the blocking pool would cost two thread switches.
    pub fn with_state_now<T>(
        &self,
        g: GroupId,
        f: impl FnOnce(&StateView<'_>) -> Result<T, ironhub_storage::StorageError>,
    ) -> Result<T, ironhub_storage::StorageError> {
        f(&StateView { engine: self.inner.engine.as_ref(), group: g })
    }

    /// Sets the handler of application messages from other nodes (once; later calls are ignored).
    pub fn set_app_handler(&self, handler: AppHandler) {
        let _ = self.inner.app_handler.set(handler);
    }

    /// Sends an application message to node `target` and waits for its reply.
    pub async fn call_app(&self, target: NodeId, body: Bytes, timeout: Duration) -> Result<Bytes, String> {
        self.inner.net.call(target, META_GROUP, RpcKind::App, body, timeout).await.map_err(|e| e.to_string())
    }

    /// The leader of group `g` as this node sees it.
    pub fn leader(&self, g: GroupId) -> Option<NodeId> {
        self.group(g).ok().and_then(|group| self.leader_of(group))
    }

    /// The last index of group `g` applied on this node.
    pub fn applied(&self, g: GroupId) -> u64 {
        self.group(g)
            .ok()
            .and_then(|group| group.raft.metrics().borrow_watched().last_applied.map(|l| l.index))
            .unwrap_or(0)
    }

    /// Waits until this node applied group `g` up to `index` (at most the retry window).
    pub async fn wait_applied(&self, g: GroupId, index: u64) -> Result<(), ProposeError> {
        let group = self.group(g)?;
        let deadline = Instant::now() + self.retry_window();
        let mut rx = group.raft.metrics();
        loop {
            if rx.borrow_watched().last_applied.map(|l| l.index).unwrap_or(0) >= index {
                return Ok(());
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return Err(ProposeError::ShuttingDown),
                r = rx.changed() => if r.is_err() { return Err(ProposeError::ShuttingDown) },
                _ = tokio::time::sleep_until(deadline.into()) => return Err(ProposeError::NoLeader { group: g }),
            }
        }
    }

    /// The configured election timeout (its maximum).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.timing.election_max_ms)
    }

    /// Each group as this node sees it.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.inner
            .groups
            .iter()
            .map(|g| {
                let m = g.raft.metrics().borrow_watched().clone();
                let mem = m.membership_config.membership();
                let voters: Vec<NodeId> = mem.voter_ids().collect();
                let learners: Vec<NodeId> = mem.learner_ids().collect();
                GroupStatus {
                    group: g.id,
                    leader: m.current_leader,
                    term: m.current_term,
                    role: match m.state {
                        ServerState::Leader => "leader",
                        ServerState::Follower => "follower",
                        ServerState::Candidate => "candidate",
                        ServerState::Learner => "learner",
                        ServerState::Shutdown => "shutdown",
                    }
                    .into(),
                    voters,
                    learners,
                    last_log_index: m.last_log_index,
                    last_applied: m.last_applied.map(|l| l.index),
                    purged: m.purged.map(|l| l.index),
                    snapshot: m.snapshot.map(|l| l.index),
                }
            })
            .collect()
    }

    /// True while every group's raft runs (no fatal storage error).
    pub fn healthy(&self) -> bool {
        self.inner.groups.iter().all(|g| g.raft.metrics().borrow_watched().running_state.is_ok())
    }

    /// Resolves when a group's raft has stopped on a fatal error (a storage failure such as a full
    /// disk, or a snapshot it could not read), with what stopped it. Such a group never resumes in
    /// this process: the caller should exit so the supervisor restarts the node (the stored data is
    /// intact; RocksDB and the raft log are crash-safe).
    pub async fn group_stopped(&self) -> String {
        loop {
            for g in &self.inner.groups {
                if let Err(e) = &g.raft.metrics().borrow_watched().running_state {
                    return format!("raft group {} stopped: {e}", g.id);
                }
            }
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => std::future::pending::<()>().await,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Stops batchers, rafts, the transport and the flusher, in that order.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for g in &self.inner.groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, "raft shutdown: {e}");
            }
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.net.shutdown().await;
        if let Err(e) = self.inner.flusher.shutdown().await {
            tracing::warn!("log flusher shutdown: {e}");
        }
        if let Err(e) = self.inner.engine.flush_wal(true) {
            tracing::warn!("final flush: {e}");
        }
    }

    pub(crate) fn persist_cluster_id(&self, id: uuid::Uuid) -> Result<(), NodeError> {
        put_node_meta(self.inner.engine.as_ref(), "cluster_id", &id)
    }

    pub(crate) fn node_addr(&self, id: NodeId) -> NodeAddr {
        let addr = self.inner.config.peers.get(&id).copied().unwrap_or(self.inner.config.cluster_bind);
        NodeAddr { cluster: addr.to_string() }
    }
}
