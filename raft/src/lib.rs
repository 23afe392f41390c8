//! ironhub-raft: the replicated core. Knows nothing of MQTT: raft entries carry batches of opaque
//! commands for an [`Apply`] implementation supplied by the layer above.
//!
//! Modules:
//! - [`types`]: openraft type configuration (entries = [`CommandBatch`]), ids, proposal ids.
//! - [`apply`]: the [`Apply`] trait and the transaction/view it reads and writes through.
//! - `state_machine`: openraft state machine of one group (engine + `Apply`, snapshot files).
//! - [`batcher`]: bounded per-group proposal batcher, the in-flight gate in front of openraft.
//! - [`node`]: [`RaftNode`], the multi-group node: start, propose (forwarded to leaders), reads, status.
//! - `bootstrap`: first start of a cluster; `balance`: metrics watchers and leader balancing.
//! - `network` + `rpc`: openraft messages over the cluster [`transport`] (QUIC).
//! - [`metrics`]: Prometheus metrics; [`error`]: typed errors.
#![warn(missing_docs)]

pub mod apply;
mod balance;
pub mod batcher;
mod bootstrap;
pub mod error;
mod forward;
mod log_size;
pub mod membership;
pub mod metrics;
pub mod net;
mod network;
pub mod node;
mod reads;
mod rpc;
mod state_machine;
pub mod testing;
pub mod transport;
pub mod types;

pub use apply::{Apply, ApplyContext, DecodedCache, StateCacheLimits, StateTxn, StateView};
pub use batcher::{BatchConfig, Pending};
pub use bootstrap::group_voters;
pub use error::{NodeError, ProposeError};
pub use membership::{MembershipChange, MembershipPlan, SystemCommand};
pub use node::{partition_of, GroupStatus, NodeConfig, RaftNode, Timing};
pub use state_machine::GroupStateMachine;
pub use types::{
    Body, CommandBatch, GroupId, NodeAddr, NodeId, Proposal, ProposalId, TypeConfig, META_GROUP,
};
