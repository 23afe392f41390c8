//! What a node needs from the network: the QUIC [`Transport`] in production, the in-memory
//! [`crate::testing::MemRouter`] (with faults) in tests.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::transport::{RpcKind, Transport, TransportError};
use crate::types::{GroupId, NodeId};

/// Request/response messaging between nodes.
pub trait ClusterNet: Send + Sync + 'static {
    /// Sends one request to `target` and waits for its reply.
    fn call(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>>;

    /// Streams a snapshot file to `target`.
    fn send_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        header: Bytes,
        file: PathBuf,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>>;

    /// Stops serving and sending.
    fn shutdown(&self) -> BoxFuture<'static, ()>;

    /// Learns (or updates) the address of node `id` (from raft membership).
    fn set_peer(&self, id: NodeId, addr: &str);
}

impl ClusterNet for Transport {
    fn call(
        &self,
        target: NodeId,
        group: GroupId,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let t = self.clone();
        Box::pin(async move { t.call(target, group, kind, body, timeout).await })
    }

    fn send_snapshot(
        &self,
        target: NodeId,
        group: GroupId,
        header: Bytes,
        file: PathBuf,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, TransportError>> {
        let t = self.clone();
        Box::pin(async move { t.send_snapshot(target, group, header, &file, timeout).await })
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let t = self.clone();
        Box::pin(async move { t.shutdown().await })
    }

    fn set_peer(&self, id: NodeId, addr: &str) {
        use std::net::ToSocketAddrs;
        match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
            Some(a) => Transport::set_peer(self, id, a),
            None => tracing::warn!(node = id, addr, "membership names an address that does not resolve"),
        }
    }
}
