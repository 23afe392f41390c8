//! The openraft type configuration: raft entries carry batches of opaque commands.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use ironhub_storage::GroupId;

/// A node's id, as in `--node-id` and `--peers`.
pub type NodeId = u64;

/// The meta group: membership, plans, cluster-wide records.
pub const META_GROUP: GroupId = 0;

/// Where a node can be reached, stored in every group's raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The cluster (QUIC) address, `host:port`.
    pub cluster: String,
}

/// Identifies one proposal for idempotency: `(origin node, connection incarnation, seq)`, with `seq`
/// increasing per incarnation. A replay of an applied id gets the stored response and changes nothing.
/// Only the highest `seq` is remembered, and a lower one is answered as applied: keep one proposal
/// of an incarnation in flight at a time. (MQTT PUBLISHes, many in flight per connection, use the
/// broker's own window instead: `PublishWindow` in broker/src/state/session.rs.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// The node that accepted the request from a client.
    pub origin: NodeId,
    /// A number unique per client connection on that node (e.g. a per-node counter).
    pub incarnation: u64,
    /// Increasing per incarnation.
    pub seq: u64,
}

/// One command as proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Set for commands that must apply at most once although they may be retried.
    pub id: Option<ProposalId>,
    /// The command.
    pub body: Body,
}

/// What a proposal carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Opaque bytes for the [`crate::Apply`] implementation.
    App(Bytes),
    /// A command of the raft layer itself (meta group: nodes and membership plans).
    System(crate::membership::SystemCommand),
}

impl Proposal {
    /// An application command without idempotency id.
    pub fn app(command: impl Into<Bytes>) -> Self {
        Self { id: None, body: Body::App(command.into()) }
    }

    /// The same proposal with an idempotency id.
    pub fn with_id(mut self, id: ProposalId) -> Self {
        self.id = Some(id);
        self
    }

    /// Approximate encoded size, for batching limits.
    pub fn size(&self) -> usize {
        match &self.body {
            Body::App(b) => b.len() + 32,
            Body::System(_) => 256,
        }
    }
}

/// The payload of one raft entry: a batch of commands, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch {
    /// Commands in proposal order.
    pub commands: Vec<Proposal>,
}

impl fmt::Display for CommandBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandBatch({} commands)", self.commands.len())
    }
}

/// The responses to one [`CommandBatch`], one per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// One response per command.
    pub responses: Vec<Bytes>,
}

openraft::declare_raft_types!(
    /// ironhub's raft type configuration.
    pub TypeConfig:
        D = CommandBatch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = NodeAddr,
);

/// A raft instance of one group.
pub type GroupRaft = openraft::Raft<TypeConfig, crate::state_machine::GroupStateMachine>;
/// A log id of this configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// Stored membership of this configuration.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A raft entry of this configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
