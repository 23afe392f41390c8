//! Inbound side: the accept loop, one task per connection, one task per request stream.
//!
//! Concurrency per connection is bounded by a semaphore of [`MAX_INFLIGHT_PER_CONNECTION`]
//! permits. The connection task takes a permit *before* accepting the next stream, so when all
//! permits are busy it stops accepting: new streams wait in QUIC (which buffers at most
//! [`super::MAX_STREAMS_PER_CONNECTION`] of them, within flow control) and, beyond that, the
//! caller's `open_bi` waits. Nothing is dropped; a caller's own timeout bounds its wait.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{server_hello, Proof};
use super::cluster_id::Adoption;
use super::frame::{RequestHeader, ResponseHeader, Status, REQUEST_HEADER_LEN};
use super::{ClusterIdCell, NodeId, RpcHandler, RpcKind, TransportError, MAX_INFLIGHT_PER_CONNECTION};

/// How long a new connection may take for its TLS handshake plus hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by the inbound tasks.
pub(crate) struct Shared {
    pub node_id: NodeId,
    pub cell: Arc<ClusterIdCell>,
    pub handler: Arc<dyn RpcHandler>,
    pub max_frame: usize,
    pub snapshot_dir: PathBuf,
    pub proof: Proof,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
}

/// What a request stream ends with.
pub(crate) enum Outcome {
    /// Send this reply.
    Reply(Status, Bytes),
    /// The stream is unusable (reset, connection lost): log and drop.
    Abort(String),
}

impl Outcome {
    pub(crate) fn ok(body: Bytes) -> Self {
        Self::Reply(Status::Ok, body)
    }
    pub(crate) fn remote(msg: String) -> Self {
        Self::Reply(Status::Remote, Bytes::from(msg))
    }
    pub(crate) fn bad_request(msg: String) -> Self {
        Self::Reply(Status::BadRequest, Bytes::from(msg))
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            inc = endpoint.accept() => match inc {
                Some(inc) => inc,
                None => break,
            },
        };
        let s = shared.clone();
        shared.tracker.spawn(async move {
            let cancel = s.cancel.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_connection(s, incoming) => {}
            }
        });
    }
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "cluster connection handshake failed (TLS / certificates?)");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "cluster connection handshake timed out");
            return;
        }
    };
    let peer =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, server_hello(&conn, shared.node_id, &shared.proof))
            .await
        {
            Ok(Ok(peer)) => peer,
            Ok(Err(TransportError::Auth(msg))) => {
                tracing::warn!(%remote, "{msg}");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%remote, error = %e, "cluster connection hello failed");
                return;
            }
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(super::error::CLOSE_PROTOCOL), b"hello timed out");
                tracing::warn!(%remote, "cluster connection sent no hello in time");
                return;
            }
        };
    tracing::debug!(peer, %remote, "cluster connection accepted");
    let permits = Arc::new(Semaphore::new(MAX_INFLIGHT_PER_CONNECTION));
    loop {
        // Full: wait here (stop accepting) rather than drop; see the module doc.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, %remote, reason = %e, "cluster connection closed");
                break;
            }
        };
        let s = shared.clone();
        shared.tracker.spawn(async move {
            let _permit = permit;
            let cancel = s.cancel.clone();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve_stream(&s, peer, send, recv) => {}
            }
        });
    }
}

async fn serve_stream(
    shared: &Shared,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut hdr = [0u8; REQUEST_HEADER_LEN];
    if let Err(e) = recv.read_exact(&mut hdr).await {
        tracing::debug!(peer, error = %e, "request stream ended before its header");
        return;
    }
    let (req, outcome) = match RequestHeader::decode(&hdr) {
        Ok(req) => (req, handle_request(shared, peer, &req, &mut recv).await),
        Err(e) => {
            tracing::warn!(peer, error = %e, "corrupt request frame");
            let req = RequestHeader { cluster_id: None, group: 0, kind: 0, request_id: 0, len: 0 };
            (req, Outcome::bad_request(format!("corrupt frame: {e}")))
        }
    };
    match outcome {
        Outcome::Reply(status, body) => {
            if status != Status::Ok {
                // Tell the caller to stop sending a body we will not read.
                let _ = recv.stop(quinn::VarInt::from_u32(0));
            }
            reply(shared, peer, &req, &mut send, status, body).await;
        }
        Outcome::Abort(why) => tracing::debug!(peer, group = req.group, "request dropped: {why}"),
    }
}

async fn handle_request(
    shared: &Shared,
    peer: NodeId,
    req: &RequestHeader,
    recv: &mut quinn::RecvStream,
) -> Outcome {
    if let Some(theirs) = req.cluster_id {
        match shared.cell.adopt(theirs) {
            Adoption::Same => {}
            Adoption::Adopted => {
                tracing::info!(peer, cluster_id = %theirs, "learned the cluster id from a peer");
            }
            Adoption::Conflict(ours) => {
                tracing::warn!(peer, %ours, %theirs, "refused a request from another cluster");
                return Outcome::Reply(Status::ClusterMismatch, Bytes::new());
            }
        }
    }
    let Some(kind) = RpcKind::from_u8(req.kind) else {
        return Outcome::bad_request(format!("unknown request kind {}", req.kind));
    };
    if req.len as usize > shared.max_frame {
        tracing::warn!(peer, len = req.len, max = shared.max_frame, "refused an oversized frame");
        return Outcome::Reply(
            Status::FrameTooLarge,
            Bytes::copy_from_slice(&(shared.max_frame as u64).to_be_bytes()),
        );
    }
    if kind == RpcKind::Snapshot {
        return super::snapshot::receive(shared, peer, req, recv).await;
    }
    let mut body = vec![0u8; req.len as usize];
    if let Err(e) = recv.read_exact(&mut body).await {
        return Outcome::Abort(super::error::read_error(peer, e).to_string());
    }
    match shared.handler.handle(peer, req.group, kind, Bytes::from(body)).await {
        Ok(reply) => Outcome::ok(reply),
        Err(msg) => Outcome::remote(msg),
    }
}

async fn reply(
    shared: &Shared,
    peer: NodeId,
    req: &RequestHeader,
    send: &mut quinn::SendStream,
    mut status: Status,
    mut body: Bytes,
) {
    if u32::try_from(body.len()).is_err() {
        status = Status::Remote;
        body = Bytes::from(format!("reply of {} bytes does not fit a frame", body.len()));
    }
    let header = ResponseHeader {
        header: RequestHeader {
            cluster_id: shared.cell.get(),
            group: req.group,
            kind: req.kind,
            request_id: req.request_id,
            len: body.len() as u32,
        },
        status,
    };
    let mut chunks = [Bytes::copy_from_slice(&header.encode()), body];
    if let Err(e) = send.write_all_chunks(&mut chunks).await {
        tracing::debug!(peer, error = %e, "could not send a reply (caller gone?)");
        return;
    }
    let _ = send.finish();
}
