//! openraft's network for one group, carried by the node's QUIC [`Transport`].
//!
//! Requests are bincode-encoded openraft messages; every group of a node shares one transport.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ironhub_storage::codec;
use ironhub_storage::snapshot::SnapshotFile;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::Arc;

use crate::metrics::RaftMetrics;
use crate::net::ClusterNet;
use crate::transport::{RpcKind, TransportError};
use crate::types::{GroupId, NodeAddr, NodeId, TypeConfig, Vote};

/// Creates the per-target network clients of one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub(crate) net: Arc<dyn ClusterNet>,
    pub(crate) group: GroupId,
    pub(crate) metrics: RaftMetrics,
    /// Nodes whose address `--peers` gives: it wins over an address stored in membership (a node
    /// restarted on a new address, e.g. a single-node hub restarted as part of a cluster).
    pub(crate) configured: Arc<std::collections::BTreeSet<NodeId>>,
}

/// The network client of one group towards one target node.
pub struct GroupNetwork {
    net: Arc<dyn ClusterNet>,
    metrics: RaftMetrics,
    group: GroupId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> GroupNetwork {
        // Membership carries every node's address: nodes added later become reachable this way.
        if !self.configured.contains(&target) {
            self.net.set_peer(target, &node.cluster);
        }
        GroupNetwork { net: self.net.clone(), metrics: self.metrics.clone(), group: self.group, target }
    }
}

fn rpc_err(e: TransportError) -> RPCError<TypeConfig> {
    match e {
        TransportError::Remote(_) | TransportError::FrameTooLarge { .. } => {
            RPCError::Network(NetworkError::new(&e))
        }
        _ => RPCError::Unreachable(Unreachable::new(&e)),
    }
}

impl GroupNetwork {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RpcKind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let started = std::time::Instant::now();
        let sent = self.net.call(self.target, self.group, kind, Bytes::from(body), ttl).await;
        self.metrics.observe_rpc(kind, sent.is_ok(), started.elapsed());
        let resp = sent.map_err(rpc_err)?;
        let r: Result<Resp, String> = codec::decode(&resp, "raft rpc response")
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|msg| RPCError::Network(NetworkError::from_string(msg)))
    }
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcKind::Append, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcKind::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = codec::encode(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let send = self.net.send_snapshot(
            self.target,
            self.group,
            Bytes::from(header),
            snapshot.snapshot.path.clone(),
            option.hard_ttl(),
        );
        let resp = tokio::select! {
            r = send => r.map_err(|e| match rpc_err(e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::new(&other)),
            })?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let r: Result<SnapshotResponse<TypeConfig>, String> = codec::decode(&resp, "snapshot response")
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        r.map_err(|msg| StreamingError::Network(NetworkError::from_string(msg)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcKind::TransferLeader, &req, option.hard_ttl()).await
    }

    fn backoff(&self) -> Option<Backoff> {
        // Retry an unreachable peer every 200 ms: well inside the 1-2 s election timeout, cheap on CPU.
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
