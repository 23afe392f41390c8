//! MQTT 3.1, 3.1.1 and 5 on the replicated state.
//!
//! - [`codec`]: the wire codec (vendored mqttbytes 0.6, patched); [`proto`]: 3.x ⇄ 5 packet mapping,
//!   so one session logic serves every version.
//! - [`conn`]: one connection: CONNECT, the session's commands, inbound and outbound QoS flows.
//! - [`router`]: the node's route view (kept by apply) and its connections; [`trie`]: filter index.
//! - [`fanout`]: per-partition leader work: outbox fan-out, will/expiry timers, session audit,
//!   and the watchdog that drops clients of partitions this node cannot reach.
//! - [`listen`]: TCP, TLS, WebSocket, secure WebSocket and QUIC listeners.

pub mod clock;
pub mod codec;
pub mod conn;
pub mod fanout;
pub mod listen;
pub mod metrics;
pub mod proto;
pub mod router;
pub mod trie;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ironhub_raft::{GroupId, NodeId, RaftNode};
use ironhub_storage::codec as wire;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Mqtt;
use router::{Live, RemoteBatch, Router};

/// Node-to-node messages of the MQTT layer.
#[derive(Debug, Serialize, Deserialize)]
pub enum AppMessage {
    /// QoS 0 messages for connections of the receiving node.
    Deliver(RemoteBatch),
    /// Session audit of a partition leader: which of these (client, connection) does the node hold?
    Audit(Vec<(String, u64)>),
    /// Route barrier of a fan-out round: for each group, after a read barrier, the index this
    /// node's route view of it is current to (`Router::route_index`); `None` where the read failed.
    RouteBarrier(Vec<GroupId>),
}

/// The answer to [`AppMessage::Audit`]: the connections the node does NOT hold.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditReply {
    /// Clients whose connection is gone.
    pub gone: Vec<String>,
}

/// Everything a connection needs: the raft node, the route view, limits, metrics.
pub struct Broker {
    /// The raft node.
    pub node: RaftNode,
    /// Route view and local connections (also the state machine's hooks).
    pub router: Arc<Router>,
    /// Limits.
    pub cfg: Mqtt,
    /// Stops every connection and task.
    pub shutdown: CancellationToken,
    /// Owns connection tasks.
    pub tasks: TaskTracker,
    conn_base: u64,
    next_conn: AtomicU64,
    rate: Mutex<HashMap<String, (u64, u32)>>,
    open: std::sync::atomic::AtomicUsize,
}

/// One of the node's `mqtt.max_connections` places, held from CONNECT to the connection's end.
pub struct Slot(Arc<Broker>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.router.metrics.connections.dec();
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Broker {
    /// A broker on `node`, whose state machine calls `router`.
    pub fn new(node: RaftNode, router: Arc<Router>, cfg: Mqtt, shutdown: CancellationToken) -> Arc<Self> {
        router.set_node(node.clone());
        let broker = Arc::new(Self {
            node,
            router,
            cfg,
            shutdown,
            tasks: TaskTracker::new(),
            // Connection ids are unique across restarts: start time in ms, then a counter.
            conn_base: now_ms() << 23,
            next_conn: AtomicU64::new(1),
            rate: Mutex::new(HashMap::new()),
            open: Default::default(),
        });
        let b = broker.clone();
        broker.node.set_app_handler(Arc::new(move |from, body| {
            let b = b.clone();
            Box::pin(async move { b.handle_app(from, body).await })
        }));
        broker
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_base | (self.next_conn.fetch_add(1, Ordering::Relaxed) & ((1 << 23) - 1))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node.id()
    }

    /// Takes a connection place; `None` when the node already holds `max_connections`.
    pub fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.router.metrics.connections.inc();
        Some(Slot(self.clone()))
    }

    /// Counts a connection attempt of `client`; false when it exceeds the per-minute rate.
    pub fn connect_allowed(&self, client: &str) -> bool {
        // A window of one minute from the client's first attempt in it (not the calendar minute,
        // whose boundary would let a burst through twice).
        let now = now_ms();
        let mut rate = self.rate.lock();
        if rate.len() > 100_000 {
            rate.retain(|_, (start, _)| now.saturating_sub(*start) < 60_000);
        }
        let e = rate.entry(client.to_string()).or_insert((now, 0));
        if now.saturating_sub(e.0) >= 60_000 {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= self.cfg.connect_rate_per_min
    }

    async fn handle_app(&self, _from: NodeId, body: Bytes) -> Result<Bytes, String> {
        let msg: AppMessage = wire::decode(&body, "MQTT node message").map_err(|e| e.to_string())?;
        match msg {
            AppMessage::Deliver(batch) => {
                for (msg, targets) in batch {
                    let msg = Arc::new(msg);
                    for (client, retain, sub_ids) in targets {
                        self.router.deliver_local(&client, Live { msg: msg.clone(), retain, sub_ids });
                    }
                }
                Ok(Bytes::new())
            }
            AppMessage::Audit(conns) => {
                let gone =
                    conns.into_iter().filter(|(c, id)| !self.router.holds(c, *id)).map(|(c, _)| c).collect();
                wire::encode(&AuditReply { gone }).map(Bytes::from).map_err(|e| e.to_string())
            }
            AppMessage::RouteBarrier(groups) => {
                let current = futures::future::join_all(groups.iter().map(|g| async move {
                    self.node.read_barrier(*g).await.ok()?;
                    Some(self.router.route_index(*g, self.node.applied(*g)))
                }))
                .await;
                wire::encode(&current).map(Bytes::from).map_err(|e| e.to_string())
            }
        }
    }

    /// Waits for connection tasks to end (after `shutdown` was cancelled), at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}
