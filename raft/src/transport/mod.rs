//! Cluster transport: QUIC between ironhub nodes, bytes in, bytes out.
//!
//! The transport knows nothing of openraft or MQTT. A caller sends an opaque request body for a
//! `(group, kind)` to a node and gets the peer [`RpcHandler`]'s reply; snapshot files are streamed
//! from disk to the peer's `snapshot_dir`.
//!
//! # Connections and streams
//!
//! - One outbound QUIC connection per peer (ALPN [`ALPN`]), owned by the transport in a per-peer
//!   slot that is dialled lazily and re-dialled with backoff (`peers`). A pair of nodes therefore
//!   shares two connections, one per direction: each node calls over the connection it dialled and
//!   serves the one the peer dialled. This avoids simultaneous-open races.
//! - **Stream scheme: one bidirectional stream per request.** QUIC streams are cheap (a stream id,
//!   no round trip), so a request never waits behind another (no head-of-line blocking of a
//!   heartbeat behind a large append), and a lost caller simply abandons its stream. Snapshots use
//!   their own stream at a lower priority ([`SendStream::set_priority`](quinn::SendStream)).
//! - Frames are described in [`frame`]; `len` is checked against `max_frame` before any body byte
//!   is read, by both the server (requests) and the client (replies).
//! - The cluster id travels in every frame (zeros = unknown). Both known and different: the
//!   request is refused and the caller gets [`TransportError::ClusterMismatch`]. Ours unknown and
//!   theirs known (from an authenticated peer): the [`ClusterIdCell`] adopts it and notifies.
//!
//! # Security
//!
//! TLS 1.3 is always on (ring provider). See [`Security`] and `auth` for the three modes.
//!
//! # Tasks
//!
//! The accept loop, each connection and each request stream are tasks on the transport's
//! [`TaskTracker`], stopped by its [`CancellationToken`]; [`Transport::shutdown`] closes the
//! endpoint and waits for all of them.

mod auth;
pub mod certs;
mod client;
mod cluster_id;
mod error;
pub mod frame;
mod peers;
mod server;
mod snapshot;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cluster_id::{Adoption, ClusterIdCell};
pub use error::TransportError;
pub use tls::{client_facing_server, IDLE_TIMEOUT, KEEP_ALIVE};

use client::WriteOutcome;
use frame::{RequestHeader, ResponseHeader, Status};
use peers::{DialContext, PeerSlot, PeerTable};
use server::Shared;

/// A node's id in the cluster.
pub type NodeId = u64;

/// ALPN protocol id of the cluster transport.
pub const ALPN: &[u8] = b"ironhub-cluster/1";
/// TLS server name used by every node; `ironhub ctl certs` puts it in every node certificate.
pub const CLUSTER_SERVER_NAME: &str = "ironhub-cluster";
/// Default `max_frame`: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;
/// Default `connect_timeout`: short, so an unreachable peer fails fast.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Requests served concurrently per inbound connection; when all are busy the connection stops
/// accepting streams until one finishes (see `server`).
pub const MAX_INFLIGHT_PER_CONNECTION: usize = 256;
/// Concurrent bidirectional streams a peer may open on one connection (QUIC flow control); a
/// caller beyond it waits in `open_bi`.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// What a request is for; the byte on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RpcKind {
    /// Raft AppendEntries (including heartbeats).
    Append = 1,
    /// Raft RequestVote.
    Vote = 2,
    /// Raft pre-vote.
    PreVote = 3,
    /// Leadership transfer.
    TransferLeader = 4,
    /// A batch of proposals forwarded to the leader, queued there in batch order.
    Forward = 5,
    /// A linearizable read forwarded to the leader.
    Read = 6,
    /// Administrative request (membership plans...).
    Admin = 7,
    /// Snapshot transfer (only through [`Transport::send_snapshot`]).
    Snapshot = 8,
    /// A message of the layer above (the broker's cross-node routing), see [`crate::RaftNode::call_app`].
    App = 9,
}

impl RpcKind {
    /// Parses the wire byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Append,
            2 => Self::Vote,
            3 => Self::PreVote,
            4 => Self::TransferLeader,
            5 => Self::Forward,
            6 => Self::Read,
            7 => Self::Admin,
            8 => Self::Snapshot,
            9 => Self::App,
            _ => return None,
        })
    }
}

/// How nodes authenticate each other. TLS is on in every mode.
#[derive(Clone, Debug)]
pub enum Security {
    /// A shared cluster secret: self-signed certificates, then each side proves the secret with an
    /// HMAC bound to the TLS session (a relayed handshake fails).
    Secret(String),
    /// Mutual TLS: both sides present a certificate signed by the cluster CA
    /// (see [`certs::generate_cluster_certs`]).
    Certs {
        /// CA certificate (PEM).
        ca: PathBuf,
        /// This node's certificate chain (PEM).
        cert: PathBuf,
        /// This node's private key (PEM).
        key: PathBuf,
    },
    /// TLS without any peer authentication: development only, logged loudly.
    InsecureDev,
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// UDP address to bind (port 0 picks one; see [`Transport::local_addr`]).
    pub bind: SocketAddr,
    /// Initial peer addresses; an entry for this node itself is ignored.
    pub peers: HashMap<NodeId, SocketAddr>,
    /// Authentication mode.
    pub security: Security,
    /// Largest frame body accepted or sent, in bytes (default [`DEFAULT_MAX_FRAME`], 64 MiB).
    pub max_frame: usize,
    /// Directory that receives snapshot files (created if missing).
    pub snapshot_dir: PathBuf,
    /// Limit for dialling a peer (QUIC handshake, then hello); default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

/// Serves inbound requests. Called concurrently, once per request.
pub trait RpcHandler: Send + Sync + 'static {
    /// Called for every inbound request. The frame's `cluster_id` is checked by the transport
    /// before this is called. `Err` reaches the caller as [`TransportError::Remote`].
    fn handle(
        &self,
        from: NodeId,
        group: u16,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, String>>;

    /// A snapshot file fully received (length and SHA-256 checked) into `snapshot_dir`; `header`
    /// is the sender's opaque header bytes. The file now belongs to the handler, which installs
    /// or deletes it.
    fn handle_snapshot(
        &self,
        from: NodeId,
        group: u16,
        header: Bytes,
        file: PathBuf,
    ) -> BoxFuture<'static, Result<Bytes, String>>;
}

struct Inner {
    node_id: NodeId,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    peers: PeerTable,
    shared: Arc<Shared>,
    connect_timeout: Duration,
    next_request_id: AtomicU64,
}

/// The cluster transport. Cheap to clone; all clones share one endpoint.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Binds the QUIC endpoint (server and client), spawns the accept loop and returns at once.
    /// Peers are dialled on first use.
    pub async fn start(
        cfg: TransportConfig,
        cluster_id: Arc<ClusterIdCell>,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<Transport, TransportError> {
        tokio::fs::create_dir_all(&cfg.snapshot_dir).await.map_err(|e| {
            TransportError::io(format!("creating snapshot dir {}", cfg.snapshot_dir.display()), e)
        })?;
        let tls = tls::build(&cfg.security)?;
        let mut endpoint = quinn::Endpoint::server(tls.server, cfg.bind)
            .map_err(|e| TransportError::io(format!("binding the cluster port {}", cfg.bind), e))?;
        endpoint.set_default_client_config(tls.client);
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| TransportError::io(format!("reading the address bound for {}", cfg.bind), e))?;
        let peers = PeerTable::default();
        for (&id, &addr) in &cfg.peers {
            if id != cfg.node_id {
                peers.set(id, addr);
            }
        }
        let shared = Arc::new(Shared {
            node_id: cfg.node_id,
            cell: cluster_id,
            handler,
            max_frame: cfg.max_frame,
            snapshot_dir: cfg.snapshot_dir,
            proof: tls.proof,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        shared.tracker.spawn(server::accept_loop(endpoint.clone(), shared.clone()));
        tracing::info!(node_id = cfg.node_id, addr = %local_addr, "cluster transport listening");
        Ok(Transport {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                endpoint,
                local_addr,
                peers,
                shared,
                connect_timeout: cfg.connect_timeout,
                next_request_id: AtomicU64::new(1),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Adds a peer or changes its address (its old connection is closed). Our own id is ignored.
    pub fn set_peer(&self, id: NodeId, addr: SocketAddr) {
        if id != self.inner.node_id {
            self.inner.peers.set(id, addr);
        }
    }

    /// Forgets a peer and closes our connection to it.
    pub fn remove_peer(&self, id: NodeId) {
        self.inner.peers.remove(id);
    }

    /// Sends a request and waits for the reply, all within `timeout`.
    pub async fn call(
        &self,
        target: NodeId,
        group: u16,
        kind: RpcKind,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if kind == RpcKind::Snapshot {
            return Err(TransportError::protocol(target, "snapshots go through send_snapshot"));
        }
        let len = self.check_len(body.len())?;
        if self.inner.shared.cancel.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let slot = self.slot(target)?;
        let work = async {
            let (_conn, mut send, mut recv) = self.open_stream(&slot, target).await?;
            let req = self.header(group, kind, len);
            let mut chunks = [client::header_chunk(&req), body];
            client::write_request(&mut send, target, &mut chunks).await?;
            self.finish(target, &req, &mut recv, len as u64).await
        };
        let r = self.run(target, timeout, work).await;
        match &r {
            Ok(_) | Err(TransportError::Remote(_)) => slot.answered(),
            Err(TransportError::Timeout { .. }) => slot.timed_out(),
            Err(_) => {}
        }
        r
    }

    /// Streams a snapshot file to `target` (from disk in chunks, on a low-priority stream) with an
    /// opaque `header`; returns the peer handler's reply. The whole transfer is bounded by
    /// `timeout`.
    pub async fn send_snapshot(
        &self,
        target: NodeId,
        group: u16,
        header: Bytes,
        file: &Path,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let len = self.check_len(header.len())?;
        let work = async {
            let slot = self.slot(target)?;
            let f = tokio::fs::File::open(file)
                .await
                .map_err(|e| TransportError::io(format!("opening snapshot {}", file.display()), e))?;
            let file_len = f
                .metadata()
                .await
                .map_err(|e| TransportError::io(format!("reading snapshot {}", file.display()), e))?
                .len();
            let (_conn, mut send, mut recv) = self.open_stream(&slot, target).await?;
            let req = self.header(group, RpcKind::Snapshot, len);
            let outcome = snapshot::send_file(&mut send, target, &req, header, f, file, file_len).await?;
            if outcome == WriteOutcome::Refused {
                tracing::debug!(peer = target, group, "peer refused the snapshot early");
            }
            self.finish(target, &req, &mut recv, len as u64).await
        };
        self.run(target, timeout, work).await
    }

    /// Stops accepting, closes every connection and waits for every transport task to end.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.cancel.cancel();
        self.inner.endpoint.close(quinn::VarInt::from_u32(error::CLOSE_SHUTDOWN), b"shutting down");
        self.inner.peers.close_all();
        shared.tracker.close();
        shared.tracker.wait().await;
        // Give the peers a moment to see the close; they also notice by idle timeout.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        tracing::info!(node_id = self.inner.node_id, "cluster transport stopped");
    }

    fn check_len(&self, len: usize) -> Result<u32, TransportError> {
        let max = self.inner.shared.max_frame;
        match u32::try_from(len) {
            Ok(l) if len <= max => Ok(l),
            _ => Err(TransportError::FrameTooLarge { len: len as u64, max: max as u64 }),
        }
    }

    fn slot(&self, target: NodeId) -> Result<Arc<PeerSlot>, TransportError> {
        if target == self.inner.node_id {
            return Err(TransportError::SelfTarget(target));
        }
        self.inner.peers.get(target).ok_or(TransportError::UnknownPeer(target))
    }

    fn header(&self, group: u16, kind: RpcKind, len: u32) -> RequestHeader {
        RequestHeader {
            cluster_id: self.inner.shared.cell.get(),
            group,
            kind: kind as u8,
            request_id: self.inner.next_request_id.fetch_add(1, Ordering::Relaxed),
            len,
        }
    }

    /// Opens a request stream; if a reused connection turns out dead, re-dials once (nothing was
    /// sent on it, so this is safe for any request).
    async fn open_stream(
        &self,
        slot: &PeerSlot,
        target: NodeId,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), TransportError> {
        let ctx = DialContext {
            endpoint: &self.inner.endpoint,
            our_id: self.inner.node_id,
            proof: &self.inner.shared.proof,
            connect_timeout: self.inner.connect_timeout,
        };
        let (conn, fresh) = slot.connection(&ctx).await?;
        match client::open(&conn, target).await {
            Ok((s, r)) => Ok((conn, s, r)),
            Err(e) => {
                slot.forget(&conn);
                if fresh {
                    return Err(e);
                }
                let (conn, _) = slot.connection(&ctx).await?;
                let (s, r) = client::open(&conn, target).await?;
                Ok((conn, s, r))
            }
        }
    }

    async fn finish(
        &self,
        target: NodeId,
        req: &RequestHeader,
        recv: &mut quinn::RecvStream,
        sent_len: u64,
    ) -> Result<Bytes, TransportError> {
        let max = self.inner.shared.max_frame;
        let (resp, body) = client::read_response(recv, target, req.request_id, max).await?;
        self.interpret(target, &resp, body, sent_len)
    }

    fn interpret(
        &self,
        target: NodeId,
        resp: &ResponseHeader,
        body: Bytes,
        sent_len: u64,
    ) -> Result<Bytes, TransportError> {
        let cell = &self.inner.shared.cell;
        if resp.status == Status::ClusterMismatch {
            return Err(TransportError::ClusterMismatch {
                ours: cell.get().unwrap_or_default(),
                theirs: resp.header.cluster_id.unwrap_or_default(),
            });
        }
        if let Some(theirs) = resp.header.cluster_id {
            match cell.adopt(theirs) {
                Adoption::Same => {}
                Adoption::Adopted => {
                    tracing::info!(peer = target, cluster_id = %theirs, "learned the cluster id from a peer");
                }
                Adoption::Conflict(ours) => return Err(TransportError::ClusterMismatch { ours, theirs }),
            }
        }
        let text = || String::from_utf8_lossy(&body).into_owned();
        match resp.status {
            Status::Ok => Ok(body),
            Status::Remote => Err(TransportError::Remote(text())),
            Status::BadRequest => Err(TransportError::protocol(target, format!("peer refused: {}", text()))),
            Status::FrameTooLarge => {
                let max = <[u8; 8]>::try_from(body.as_ref()).map(u64::from_be_bytes).unwrap_or(0);
                Err(TransportError::FrameTooLarge { len: sent_len, max })
            }
            Status::ClusterMismatch => Err(TransportError::protocol(target, "unreachable status")),
        }
    }

    async fn run<F>(&self, target: NodeId, timeout: Duration, work: F) -> Result<Bytes, TransportError>
    where
        F: std::future::Future<Output = Result<Bytes, TransportError>>,
    {
        let cancel = &self.inner.shared.cancel;
        if cancel.is_cancelled() {
            return Err(TransportError::Closed);
        }
        tokio::select! {
            _ = cancel.cancelled() => Err(TransportError::Closed),
            r = tokio::time::timeout(timeout, work) => {
                r.unwrap_or(Err(TransportError::Timeout { peer: target, after: timeout }))
            }
        }
    }
}
