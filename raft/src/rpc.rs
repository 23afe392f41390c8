//! Inbound cluster requests: raft messages of every group, forwarded proposals and reads,
//! bootstrap and administration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{OnceLock, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use ironhub_storage::codec;
use ironhub_storage::snapshot::SnapshotFile;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ProposeError;
use crate::node::{Inner, RaftNode};
use crate::transport::{RpcHandler, RpcKind};
use crate::types::{GroupId, NodeAddr, NodeId, Proposal, SnapshotMeta, Vote};

/// Administrative requests between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminRequest {
    /// Asks whether the peer already belongs to a cluster.
    Hello,
    /// Bootstrap: initialise `group` on the receiver with these voters (only if it has no state).
    InitGroup { members: BTreeMap<NodeId, NodeAddr> },
    /// Membership plan step, on the group's leader: these voters over these nodes.
    Reconfigure { voters: std::collections::BTreeSet<NodeId>, nodes: BTreeMap<NodeId, NodeAddr> },
}

/// Answer to [`AdminRequest::Hello`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloResponse {
    pub(crate) node_id: NodeId,
    pub(crate) cluster_id: Option<uuid::Uuid>,
}

/// The transport's handler: dispatches to the node's groups.
pub(crate) struct NodeRpc {
    pub(crate) node: OnceLock<Weak<Inner>>,
}

fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    codec::decode(body, what).map_err(|e| e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Bytes, String> {
    codec::encode(v).map(Bytes::from).map_err(|e| e.to_string())
}

/// Encodes an openraft call's result as `Result<T, String>` for the caller to decode.
fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Bytes, String> {
    encode(&r.map_err(|e| e.to_string()))
}

impl NodeRpc {
    fn node(&self) -> Result<RaftNode, String> {
        self.node
            .get()
            .and_then(|w| w.upgrade())
            .map(|inner| RaftNode { inner })
            .ok_or_else(|| "node is starting or shutting down".to_string())
    }
}

async fn dispatch(
    node: RaftNode,
    from: NodeId,
    g: GroupId,
    kind: RpcKind,
    body: Bytes,
) -> Result<Bytes, String> {
    let group = node.group(g).map_err(|e| e.to_string())?;
    let raft = group.raft.clone();
    match kind {
        RpcKind::Append => reply(raft.append_entries(decode(&body, "append entries")?).await),
        RpcKind::Vote => reply(raft.vote(decode(&body, "vote")?).await),
        RpcKind::PreVote => reply(raft.pre_vote(decode(&body, "pre-vote")?).await),
        RpcKind::TransferLeader => {
            reply(raft.handle_transfer_leader(decode(&body, "transfer leader")?).await)
        }
        RpcKind::Forward => {
            let batch: Vec<Proposal> = decode(&body, "forwarded proposals")?;
            encode(&node.propose_local_batch(g, batch).await)
        }
        RpcKind::Read => encode(&node.read_index_local(g).await),
        RpcKind::Admin => match decode::<AdminRequest>(&body, "admin request")? {
            AdminRequest::Hello => {
                encode(&HelloResponse { node_id: node.id(), cluster_id: node.cluster_id() })
            }
            AdminRequest::InitGroup { members } => {
                let r: Result<(), ProposeError> = node.init_group_from_peer(from, g, members).await;
                encode(&r)
            }
            req @ AdminRequest::Reconfigure { .. } => encode(&node.reconfigure_local(g, req).await),
        },
        RpcKind::Snapshot => Err("snapshots travel on their own stream".into()),
        // Application messages travel with the meta group's id (any existing group would do).
        RpcKind::App => match node.inner.app_handler.get() {
            Some(h) => h(from, body).await,
            None => Err("this node serves no application messages yet".into()),
        },
    }
}

impl RpcHandler for NodeRpc {
    fn handle(
        &self,
        from: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let node = self.node();
        Box::pin(async move { dispatch(node?, from, group, kind, body).await })
    }

    fn handle_snapshot(
        &self,
        _from: NodeId,
        g: GroupId,
        header: Bytes,
        file: PathBuf,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let node = self.node();
        Box::pin(async move {
            let node = node?;
            let (vote, meta): (Vote, SnapshotMeta) = decode(&header, "snapshot header")?;
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let raft = node.group(g).map_err(|e| e.to_string())?.raft.clone();
            let snapshot = openraft::Snapshot { meta, snapshot: SnapshotFile { path: file, size } };
            reply(raft.install_full_snapshot(vote, snapshot).await)
        })
    }
}
