//! An in-memory cluster network with faults, for tests: isolate a node, drop or delay messages.
//!
//! Every registered node gets a [`MemNet`]; calls go straight to the target's [`RpcHandler`].
//! Faults apply to both directions of a pair. Cluster ids are adopted as the QUIC transport does.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rand::Rng;

use crate::net::ClusterNet;
use crate::transport::{ClusterIdCell, RpcHandler, RpcKind, TransportError};
use crate::types::{GroupId, NodeId};

#[derive(Default)]
struct Faults {
    isolated: HashSet<NodeId>,
    /// Probability (0..=1) that a message is dropped.
    drop_rate: f64,
    /// Extra latency per message.
    delay: Duration,
}

struct Endpoint {
    handler: Arc<dyn RpcHandler>,
    cluster_id: Arc<ClusterIdCell>,
    dir: PathBuf,
}

/// The in-memory network shared by the nodes of one test cluster.
#[derive(Clone, Default)]
pub struct MemRouter {
    nodes: Arc<Mutex<HashMap<NodeId, Endpoint>>>,
    faults: Arc<Mutex<Faults>>,
}

/// One node's view of a [`MemRouter`].
pub struct MemNet {
    router: MemRouter,
    me: NodeId,
}

impl MemRouter {
    /// A router with no nodes and no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or re-registers after a restart) node `id`; snapshots it receives land in `dir`.
    pub fn register(
        &self,
        id: NodeId,
        handler: Arc<dyn RpcHandler>,
        cluster_id: Arc<ClusterIdCell>,
        dir: PathBuf,
    ) -> Arc<dyn ClusterNet> {
        self.nodes.lock().insert(id, Endpoint { handler, cluster_id, dir });
        Arc::new(MemNet { router: self.clone(), me: id })
    }

    /// Removes node `id` (it crashed): calls to it fail as unreachable.
    pub fn unregister(&self, id: NodeId) {
        self.nodes.lock().remove(&id);
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        self.faults.lock().isolated.insert(id);
    }

    /// Reconnects `id`.
    pub fn heal(&self, id: NodeId) {
        self.faults.lock().isolated.remove(&id);
    }

    /// Drops each message with probability `rate`.
    pub fn set_drop_rate(&self, rate: f64) {
        self.faults.lock().drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Delays every message by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.faults.lock().delay = d;
    }

    fn route(
        &self,
        from: NodeId,
        to: NodeId,
    ) -> Result<(Arc<dyn RpcHandler>, Duration, PathBuf), TransportError> {
        let f = self.faults.lock();
        let unreachable = |reason: &str| TransportError::Unreachable { peer: to, reason: reason.to_string() };
        if f.isolated.contains(&from) || f.isolated.contains(&to) {
            return Err(unreachable("isolated by the test"));
        }
        if f.drop_rate > 0.0 && rand::rng().random_bool(f.drop_rate) {
            return Err(unreachable("dropped by the test"));
        }
        let delay = f.delay;
        drop(f);
        let nodes = self.nodes.lock();
        let (src, dst) = (nodes.get(&from), nodes.get(&to).ok_or_else(|| unreachable("node is down"))?);
        if let (Some(src), Some(theirs)) = (src, src.and_then(|s| s.cluster_id.get())) {
            let _ = src;
            match dst.cluster_id.get() {
                None => {
                    dst.cluster_id.adopt(theirs);
                }
                Some(ours) if ours != theirs => return Err(TransportError::ClusterMismatch { ours, theirs }),
                Some(_) => {}
            }
        }
        Ok((dst.handler.clone(), delay, dst.dir.clone()))
    }
}

impl ClusterNet for MemNet {
    fn call(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let routed = self.router.route(self.me, target);
        let me = self.me;
        Box::pin(async move {
            let (handler, delay, _) = routed?;
            let work = async move {
                tokio::time::sleep(delay).await;
                handler.handle(me, group, kind, body).await.map_err(TransportError::Remote)
            };
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| TransportError::Timeout { peer: target, after: timeout })?
        })
    }

    fn send_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        header: Bytes,
        file: PathBuf,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let routed = self.router.route(self.me, target);
        let me = self.me;
        Box::pin(async move {
            let (handler, delay, dir) = routed?;
            tokio::time::sleep(delay).await;
            let _ = std::fs::create_dir_all(&dir);
            let dest = dir.join(format!("recv-{}-{}.snap", group, rand::rng().random::<u64>()));
            std::fs::copy(&file, &dest).map_err(|e| TransportError::Unreachable {
                peer: target,
                reason: format!("copy snapshot: {e}"),
            })?;
            tokio::time::timeout(timeout, handler.handle_snapshot(me, group, header, dest))
                .await
                .map_err(|_| TransportError::Timeout { peer: target, after: timeout })?
                .map_err(TransportError::Remote)
        })
    }

    fn set_peer(&self, _id: NodeId, _addr: &str) {}

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let router = self.router.clone();
        let me = self.me;
        Box::pin(async move { router.unregister(me) })
    }
}
