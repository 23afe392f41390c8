//! The transport's error type.

use std::time::Duration;

use uuid::Uuid;

use super::NodeId;

/// What can go wrong sending a request to a peer or starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (connect failed or timed out, connection lost, backing off).
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable {
        /// Target node.
        peer: NodeId,
        /// What failed.
        reason: String,
    },
    /// The whole call did not finish within the caller's timeout.
    #[error("request to node {peer} timed out after {after:?}")]
    Timeout {
        /// Target node.
        peer: NodeId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer's handler returned an error (its message).
    #[error("peer handler failed: {0}")]
    Remote(String),
    /// The two nodes belong to different clusters.
    #[error(
        "cluster id mismatch: this node is in cluster {ours}, the peer is in cluster {theirs}; \
         a node cannot talk to another cluster (check --peers, or clear this node's data dir and \
         add it with `ironhub ctl cluster add-node`)"
    )]
    ClusterMismatch {
        /// Our cluster id.
        ours: Uuid,
        /// The peer's cluster id.
        theirs: Uuid,
    },
    /// A frame is larger than the receiver's `max_frame`; refused before its body was read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes (raise max_frame on every node)")]
    FrameTooLarge {
        /// Frame body length.
        len: u64,
        /// The limit it broke.
        max: u64,
    },
    /// TLS or cluster-secret authentication failed.
    #[error(
        "cluster authentication failed: {0} (every node needs the same --cluster-secret, or \
         certificates from one CA made by `ironhub ctl certs`)"
    )]
    Auth(String),
    /// A peer broke the wire protocol (corrupt frame, wrong node behind an address...).
    #[error("protocol error with node {peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// Bad transport configuration (certificate files, TLS setup, bind address).
    #[error("invalid cluster transport configuration: {0}")]
    Config(String),
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the file or socket.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The transport was shut down.
    #[error("the cluster transport is shut down")]
    Closed,
    /// No address is known for this node id.
    #[error("no address known for node {0} (not in --peers and not added to the cluster)")]
    UnknownPeer(NodeId),
    /// A call targeted this node itself; the raft layer must handle local requests locally.
    #[error("node {0} is this node: the transport never calls itself")]
    SelfTarget(NodeId),
}

impl TransportError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn protocol(peer: NodeId, reason: impl Into<String>) -> Self {
        Self::Protocol { peer, reason: reason.into() }
    }
}

/// QUIC application close code: cluster authentication failed.
pub(crate) const CLOSE_AUTH: u32 = 0x41;
/// QUIC application close code: the peer broke the protocol.
pub(crate) const CLOSE_PROTOCOL: u32 = 0x42;
/// QUIC application close code: the transport is shutting down.
pub(crate) const CLOSE_SHUTDOWN: u32 = 0x00;
/// QUIC application close code: the peer's address changed or it was removed.
pub(crate) const CLOSE_REPLACED: u32 = 0x43;

fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (u64::from(code) & !0xff) == 0x100
}

/// Maps a lost or failed connection to what the caller should see.
pub(crate) fn conn_error(peer: NodeId, e: &quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as C;
    match e {
        C::ApplicationClosed(close) if close.error_code == quinn::VarInt::from_u32(CLOSE_AUTH) => {
            TransportError::Auth(format!(
                "node {peer} rejected us: {}",
                String::from_utf8_lossy(&close.reason)
            ))
        }
        C::ConnectionClosed(close) if is_crypto(close.error_code) => {
            TransportError::Auth(format!("node {peer} refused the TLS handshake: {close}"))
        }
        C::TransportError(te) if is_crypto(te.code) => {
            TransportError::Auth(format!("TLS handshake with node {peer} failed: {te}"))
        }
        C::LocallyClosed => TransportError::Closed,
        other => TransportError::Unreachable { peer, reason: format!("connection lost: {other}") },
    }
}

/// Maps a failed read of a frame.
pub(crate) fn read_error(peer: NodeId, e: quinn::ReadExactError) -> TransportError {
    match e {
        quinn::ReadExactError::FinishedEarly(n) => {
            TransportError::protocol(peer, format!("stream ended after {n} bytes in the middle of a frame"))
        }
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => conn_error(peer, &c),
        quinn::ReadExactError::ReadError(other) => {
            TransportError::Unreachable { peer, reason: format!("stream failed: {other}") }
        }
    }
}

/// Maps a failed write that is not a `Stopped` (which callers treat as "go read the reply").
pub(crate) fn write_error(peer: NodeId, e: quinn::WriteError) -> TransportError {
    match e {
        quinn::WriteError::ConnectionLost(c) => conn_error(peer, &c),
        other => TransportError::Unreachable { peer, reason: format!("stream failed: {other}") },
    }
}
