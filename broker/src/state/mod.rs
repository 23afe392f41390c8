//! The replicated commands of the hub and their deterministic apply.
//!
//! Every command is encoded once ([`Command::encode`]) and travels through raft as opaque bytes;
//! [`HubState`] implements [`ironhub_raft::Apply`]. Later device features (sessions, registry,
//! shadows, OTA) add variants here and handlers beside them; the key spaces below keep them apart.
//!
//! Key spaces inside a group (application keys):
//! - `r/<topic>`: retained message of `<topic>` (in the partition of the topic's hash).

use bytes::Bytes;
use ironhub_raft::{Apply, ApplyContext, StateTxn};
use ironhub_storage::{codec, StorageError};
use serde::{Deserialize, Serialize};

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
    },
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

/// The hub's state machine.
#[derive(Debug, Default)]
pub struct HubState;

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
            Ok(Command::SetRetained { topic, payload, qos, at_ms }) => {
                let key = retained_key(&topic);
                if payload.is_empty() {
                    txn.delete(&key);
                } else {
                    let r = Retained { payload, qos, at_ms, index: ctx.index };
                    txn.put(&key, &codec::encode(&r)?);
                }
                Response::Applied { index: ctx.index, slot: ctx.slot }
            }
        };
        codec::encode(&response).map(Bytes::from)
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
        let raw = HubState.apply(&ctx, &cmd.encode().expect("encode"), &mut txn).expect("apply");
        txn.commit_for_test().expect("commit");
        codec::decode(&raw, "response").expect("decode")
    }

    #[test]
    fn retained_set_then_cleared_by_empty_payload() {
        let engine = MemEngine::new();
        let set =
            Command::SetRetained { topic: "a/b".into(), payload: Bytes::from_static(b"x"), qos: 1, at_ms: 5 };
        assert_eq!(apply_one(&engine, &set, 7), Response::Applied { index: 7, slot: 0 });
        let view = StateView::for_test(&engine, 1);
        let stored: Retained =
            codec::decode(&view.get(&retained_key("a/b")).expect("get").expect("present"), "r")
                .expect("decode");
        assert_eq!(stored, Retained { payload: Bytes::from_static(b"x"), qos: 1, at_ms: 5, index: 7 });
        let clear = Command::SetRetained { topic: "a/b".into(), payload: Bytes::new(), qos: 0, at_ms: 6 };
        apply_one(&engine, &clear, 8);
        assert_eq!(view.get(&retained_key("a/b")).expect("get"), None);
    }

    #[test]
    fn garbage_command_is_rejected_and_changes_nothing() {
        let engine = MemEngine::new();
        let mut txn = StateTxn::for_test(&engine, 1);
        let ctx = ApplyContext { group: 1, index: 1, slot: 0 };
        let raw = HubState.apply(&ctx, &[0xff, 0x00, 0x13], &mut txn).expect("apply");
        assert!(matches!(codec::decode(&raw, "response").expect("decode"), Response::Rejected { .. }));
        assert!(txn.is_empty_for_test());
    }
}
