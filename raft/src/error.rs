//! Errors of the raft layer: what a proposal or a read can fail with, and what stops a node.

use ironhub_storage::StorageError;
use serde::{Deserialize, Serialize};

use crate::transport::TransportError;
use crate::types::{GroupId, NodeId};

/// Why a proposal or a linearizable read failed. Retriable ones say so in [`ProposeError::is_retriable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    /// The group's proposal queue is full (back-pressure): retry after a short pause.
    #[error("group {group} is busy: its proposal queue is full; retry shortly")]
    Busy {
        /// The group.
        group: GroupId,
    },
    /// No leader is known (an election is under way or a majority is unreachable).
    #[error(
        "group {group} has no leader right now (election under way or no majority reachable); retry shortly"
    )]
    NoLeader {
        /// The group.
        group: GroupId,
    },
    /// This node is not the leader; `leader` is the current one if known.
    #[error("this node does not lead group {group} (leader: {leader:?})")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A leader change discarded the leader's copy of the entry: it may or may not commit through
    /// the new leader. Retry with the same [`crate::ProposalId`] to apply it at most once.
    #[error("group {group}: a leader change left the proposal's outcome unknown; retry it with the same id")]
    Unknown {
        /// The group.
        group: GroupId,
    },
    /// No such group on this cluster.
    #[error("no raft group {0} (groups are 0..=partitions)")]
    NoSuchGroup(GroupId),
    /// Forwarding to the leader failed; the outcome is unknown unless the proposal carries an id.
    #[error("forwarding to node {node} failed: {reason}")]
    Forward {
        /// The leader the proposal was sent to.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A command or its response could not be encoded or decoded (a defect, never retried).
    #[error("a command or its response could not be encoded or decoded: {reason}")]
    Codec {
        /// What failed.
        reason: String,
    },
    /// The group's raft stopped on a fatal error (storage failure); the node needs attention.
    #[error("raft group {group} stopped: {reason}")]
    Fatal {
        /// The group.
        group: GroupId,
        /// The fatal error.
        reason: String,
    },
}

impl ProposeError {
    /// True if the same proposal may simply be retried later.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::Busy { .. }
                | Self::NoLeader { .. }
                | Self::NotLeader { .. }
                | Self::Unknown { .. }
                | Self::Forward { .. }
        )
    }
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A storage failure (names what was touched).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The cluster transport failed to start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The data dir belongs to another node or cluster, or is from a newer version.
    #[error("{0}")]
    DataDir(String),
    /// The node refuses to bootstrap (e.g. its peers already form a cluster).
    #[error("{0}")]
    Refused(String),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// openraft refused to start a group.
    #[error("raft group {group} failed to start: {reason}")]
    Raft {
        /// The group.
        group: GroupId,
        /// openraft's error.
        reason: String,
    },
}
