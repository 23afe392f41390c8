//! The replicated commands of the hub and their deterministic apply.
//!
//! Every command is encoded once ([`Command::encode`]) and travels through raft as opaque bytes;
//! [`HubState`] implements [`ironhub_raft::Apply`]. Later device features (sessions, registry,
//! shadows, OTA) add variants here and handlers beside them; the key spaces below keep them apart.
//!
//! Key spaces inside a group (application keys):
//! - `r/<topic>`: retained message of `<topic>` (in the partition of the topic's hash);
//! - `s/`, `q/`, `o/`, `od`: sessions, queues and the outbox (see [`session`]).
//!
//! Apply also keeps in-memory indexes of the layers above current (the route index, waiting
//! connections) through [`Hooks`]: called on every node that applies, never blocking.

pub mod session;

use std::sync::Arc;

use bytes::Bytes;
use ironhub_raft::{Apply, ApplyContext, GroupId, StateTxn, StateView};
use ironhub_storage::{codec, StorageError};
use serde::{Deserialize, Serialize};

use session::{Connected, Owner, Props, Session, SessionCommand};

/// In-memory consequences of applied commands (route index, wake-ups, metrics). Every method must
/// return at once: apply runs on the group's apply thread.
pub trait Hooks: Send + Sync + 'static {
    /// A session was created or changed (owner, connection state, subscriptions).
    fn session_changed(&self, _group: GroupId, _client: &str, _session: &Session) {}
    /// A session ended (deleted with its queue).
    fn session_ended(&self, _group: GroupId, _client: &str) {}
    /// `rows` (sequence number, entry) were appended to the queue of `client`, whose session has
    /// `owner` and whose queue now ends before `next_seq` (readable once `committed` is called);
    /// empty when the fan-out was a retry. Rows the same command dropped again (queue overflow)
    /// are not among them.
    fn queue_appended(
        &self,
        _group: GroupId,
        _client: &str,
        _owner: Owner,
        _next_seq: u64,
        _rows: session::QueueRows,
    ) {
    }
    /// `client`'s queue holds `depth` messages after an enqueue or, with `acked`, after its
    /// receiver's acknowledgement cursor moved (other session changes report the depth through
    /// `session_changed`).
    fn queue_depth(&self, _group: GroupId, _client: &str, _depth: u64, _acked: bool) {}
    /// A message was appended to `group`'s outbox (readable once `committed` is called).
    fn outbox_appended(&self, _group: GroupId, _msg: &session::Message) {}
    /// Fan-out finished `count` messages of `group`'s outbox (they were removed).
    fn outbox_done(&self, _group: GroupId, _count: u64) {}
    /// A command that may change routes (connect, subscribe, unsubscribe, session end) was
    /// applied at `index` of `group` (see `Router::route_index`).
    fn routes_changed(&self, _group: GroupId, _index: u64) {}
    /// The writes of the commands applied so far in `group` are readable.
    fn committed(&self, _group: GroupId) {}
    /// Queued messages were dropped because a queue was full.
    fn queue_dropped(&self, _count: u64) {}
    /// The group's state was replaced (snapshot) or loaded (start): rebuild indexes from `state`.
    fn restore(&self, _group: GroupId, _state: &StateView<'_>) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Hooks that do nothing (tests of apply, tools).
#[derive(Debug, Default)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the retained message of `topic` (an empty payload clears it, as in MQTT).
    SetRetained {
        /// Topic name (no wildcards).
        topic: String,
        /// Payload; empty clears.
        payload: Bytes,
        /// QoS the message was published with.
        qos: u8,
        /// Publisher's wall clock, ms since the epoch (informational; apply never reads clocks).
        at_ms: u64,
        /// MQTT 5 properties of the message.
        props: Props,
    },
    /// A session, queue or outbox command (in the client's partition).
    Session(SessionCommand),
}

/// The response to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied at this raft position.
    Applied {
        /// Raft log index of the entry.
        index: u64,
        /// Slot inside the entry.
        slot: u32,
    },
    /// Refused by validation at apply time.
    Rejected {
        /// Why.
        reason: String,
    },
    /// A session command from a connection that no longer owns the session (or no session).
    Stale,
    /// A QoS 2 PUBLISH whose packet id already awaits PUBREL: stored before, not stored again.
    Duplicate,
    /// One flag per item (subscribe: the filter existed; unsubscribe: it was found).
    Flags(Vec<bool>),
    /// A `Connect` was applied.
    Connected(Box<Connected>),
}

/// A retained message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Publisher's wall clock, ms since the epoch.
    pub at_ms: u64,
    /// Raft log index that set it.
    pub index: u64,
    /// MQTT 5 properties.
    pub props: Props,
}

impl Command {
    /// Encodes with the versioned codec.
    pub fn encode(&self) -> Result<Bytes, StorageError> {
        codec::encode(self).map(Bytes::from)
    }
}

/// The key of the retained message of `topic`.
pub fn retained_key(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 2);
    k.extend_from_slice(b"r/");
    k.extend_from_slice(topic.as_bytes());
    k
}

/// Start and end of the retained messages' keys.
pub const RETAINED: (&[u8], &[u8]) = (b"r/", b"r0");

/// The hub's state machine.
pub struct HubState {
    hooks: Arc<dyn Hooks>,
}

impl HubState {
    /// A state machine calling `hooks` as it applies.
    pub fn new(hooks: Arc<dyn Hooks>) -> Self {
        Self { hooks }
    }
}

impl Default for HubState {
    fn default() -> Self {
        Self::new(Arc::new(NoHooks))
    }
}

impl Apply for HubState {
    fn apply(
        &self,
        ctx: &ApplyContext,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError> {
        let response = match codec::decode::<Command>(command, "command") {
            // An undecodable command (from a newer node during a rolling upgrade, say) is
            // rejected identically on every node: deterministic, and nothing changes.
            Err(e) => Response::Rejected { reason: e.to_string() },
            Ok(Command::SetRetained { topic, payload, qos, at_ms, props }) => {
                let key = retained_key(&topic);
                if payload.is_empty() {
                    txn.delete(&key);
                } else {
                    let r = Retained { payload, qos, at_ms, index: ctx.index, props };
                    txn.put(&key, &codec::encode(&r)?);
                }
                Response::Applied { index: ctx.index, slot: ctx.slot }
            }
            Ok(Command::Session(cmd)) => {
                if cmd.may_change_routes() {
                    self.hooks.routes_changed(ctx.group, ctx.index);
                }
                session::apply(ctx, cmd, txn, self.hooks.as_ref())?
            }
        };
        codec::encode(&response).map(Bytes::from)
    }

    fn restore(&self, group: GroupId, state: &StateView<'_>) -> Result<(), StorageError> {
        self.hooks.restore(group, state)
    }

    fn committed(&self, group: GroupId) {
        self.hooks.committed(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironhub_raft::StateView;
    use ironhub_storage::MemEngine;

    fn apply_one(engine: &MemEngine, cmd: &Command, index: u64) -> Response {
        let mut txn = StateTxn::for_test(engine, 1);
        let ctx = ApplyContext { group: 1, index, slot: 0 };
        let raw = HubState::default().apply(&ctx, &cmd.encode().expect("encode"), &mut txn).expect("apply");
        txn.commit_for_test().expect("commit");
        codec::decode(&raw, "response").expect("decode")
    }

    #[test]
    fn retained_set_then_cleared_by_empty_payload() {
        let engine = MemEngine::new();
        let set = Command::SetRetained {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos: 1,
            at_ms: 5,
            props: Props::default(),
        };
        assert_eq!(apply_one(&engine, &set, 7), Response::Applied { index: 7, slot: 0 });
        let view = StateView::for_test(&engine, 1);
        let stored: Retained =
            codec::decode(&view.get(&retained_key("a/b")).expect("get").expect("present"), "r")
                .expect("decode");
        assert_eq!(
            stored,
            Retained {
                payload: Bytes::from_static(b"x"),
                qos: 1,
                at_ms: 5,
                index: 7,
                props: Props::default()
            }
        );
        let clear = Command::SetRetained {
            topic: "a/b".into(),
            payload: Bytes::new(),
            qos: 0,
            at_ms: 6,
            props: Props::default(),
        };
        apply_one(&engine, &clear, 8);
        assert_eq!(view.get(&retained_key("a/b")).expect("get"), None);
    }

    #[test]
    fn garbage_command_is_rejected_and_changes_nothing() {
        let engine = MemEngine::new();
        let mut txn = StateTxn::for_test(&engine, 1);
        let ctx = ApplyContext { group: 1, index: 1, slot: 0 };
        let raw = HubState::default().apply(&ctx, &[0xff, 0x00, 0x13], &mut txn).expect("apply");
        assert!(matches!(codec::decode(&raw, "response").expect("decode"), Response::Rejected { .. }));
        assert!(txn.is_empty_for_test());
    }
}
