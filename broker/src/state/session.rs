//! MQTT sessions, queues and the outbox as replicated state, and the deterministic apply of their
//! commands (see DESIGN.md "QoS1/QoS2 durability" and "Session takeover rules").
//!
//! Keys inside the partition of a client (`partition_of(client id)`):
//! - `s/<client>`: the [`Session`];
//! - `q/<len u16><client><seq u64>`: the session's queue, one [`Queued`] per message, in `seq` order;
//! - `o/<index u64><slot u32>`: the outbox of messages published by this partition's clients, waiting
//!   for fan-out; `od`: the last fanned-out message id.
//!
//! Every session-mutating command names the connection it comes from ([`Owner`]: node, connection
//! id and epoch) and is refused ([`Response::Stale`]) unless that connection still owns the session.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use ironhub_raft::{ApplyContext, GroupId, NodeId, StateTxn};
use ironhub_storage::{codec, StorageError};
use serde::{Deserialize, Serialize};

use super::{Hooks, Response};

/// A message id: the raft position of the command that published it (log index, slot in the entry).
pub type MsgId = (u64, u32);

/// The connection that owns a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Node holding the connection.
    pub node: NodeId,
    /// Connection id, unique per node process lifetime and across restarts (start time + counter).
    pub conn: u64,
    /// Session epoch assigned by the `Connect` that made this connection the owner (0 in a `Connect`).
    pub epoch: u64,
}

/// MQTT 5 message properties that travel with a message (all optional, empty for MQTT 3.x).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Props {
    /// Payload format indicator (0 bytes, 1 UTF-8).
    pub payload_format: Option<u8>,
    /// Message expiry interval in seconds, counted from `Message::at_ms`.
    pub expiry_s: Option<u32>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation: Option<Bytes>,
    /// User properties, in order.
    pub user: Vec<(String, String)>,
}

/// A published message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag as published.
    pub retain: bool,
    /// Properties.
    pub props: Props,
    /// Publisher's wall clock when accepted, ms since the epoch.
    pub at_ms: u64,
    /// The node whose clock stamped `at_ms` (0: not known), see `mqtt::clock`.
    pub node: u64,
    /// Publisher's client id (for no-local); empty for the API.
    pub from: String,
}

impl Message {
    /// True once the message's expiry interval, or the queue retention, has passed at age `age_ms`.
    pub fn expired(&self, age_ms: u64, retention_s: u64) -> bool {
        let age_s = age_ms / 1000;
        age_s >= retention_s || self.props.expiry_s.is_some_and(|e| age_s >= u64::from(e))
    }
}

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sub {
    /// Maximum QoS granted.
    pub qos: u8,
    /// MQTT 5 no-local.
    pub no_local: bool,
    /// MQTT 5 retain-as-published.
    pub retain_as_published: bool,
    /// MQTT 5 retain handling (0 send, 1 send if new, 2 never).
    pub retain_handling: u8,
    /// MQTT 5 subscription identifier.
    pub id: Option<u32>,
}

/// A will message and its delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Will {
    /// The message.
    pub msg: Message,
    /// MQTT 5 will delay interval, seconds.
    pub delay_s: u32,
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The owning connection (its epoch is the session's epoch).
    pub owner: Owner,
    /// True while the owner is connected.
    pub connected: bool,
    /// Session expiry after disconnect, seconds (0: ends with the connection).
    pub expiry_s: u32,
    /// When the owner disconnected (ms since the epoch), if it did.
    pub disconnected_at_ms: u64,
    /// Subscriptions by filter (shared ones keep their `$share/<group>/` prefix).
    pub subs: BTreeMap<String, Sub>,
    /// The will of the current connection.
    pub will: Option<Will>,
    /// A will waiting for its delay: fires at this time unless the client reconnects.
    pub will_at_ms: Option<u64>,
    /// Next queue sequence number.
    pub next_seq: u64,
    /// Every queue entry below this is acknowledged (deleted).
    pub head: u64,
    /// Entries below this were sent at least once (redelivered with DUP).
    pub sent_upto: u64,
    /// QoS 2 entries whose PUBREC arrived: the PUBREL is resent, never the PUBLISH.
    pub rel: BTreeSet<u64>,
    /// QoS 2 inbound packet ids stored and awaiting PUBREL (a resent PUBLISH is not stored again).
    pub awaiting_rel: BTreeSet<u16>,
    /// Per source partition, the last message enqueued from it (fan-out is idempotent).
    pub last_from: BTreeMap<GroupId, MsgId>,
    /// Messages dropped from this session's queue because it was full or they expired.
    pub dropped: u64,
}

impl Session {
    /// Time at which an offline session ends, if it is offline.
    pub fn expires_at_ms(&self) -> Option<u64> {
        (!self.connected).then(|| self.disconnected_at_ms.saturating_add(u64::from(self.expiry_s) * 1000))
    }
}

/// One queued message of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The message.
    pub msg: Message,
    /// QoS of the delivery (the minimum of the publish and the subscription).
    pub qos: u8,
    /// Retain flag to deliver (retain-as-published).
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
}

/// Queue entries with their sequence numbers, in order.
pub type QueueRows = Vec<(u64, Queued)>;

/// Who receives one fanned-out message in a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Client id.
    pub client: String,
    /// Delivery QoS.
    pub qos: u8,
    /// Retain flag to deliver.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
}

/// One message of an `Enqueue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueItem {
    /// Its id in the source partition.
    pub id: MsgId,
    /// The message.
    pub msg: Message,
    /// Receivers in this partition.
    pub targets: Vec<Target>,
}

/// What `Connect` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// Session epoch of the new connection.
    pub epoch: u64,
    /// Whether an earlier session was resumed.
    pub session_present: bool,
    /// The previous owner, if it was still connected (to be kicked).
    pub previous: Option<Owner>,
    /// The session as resumed.
    pub session: Session,
    /// Raft index of the `Connect` (the new owner reads the session from state applied at or after it).
    pub index: u64,
}

/// Session and queue commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCommand {
    /// A client connects (takeover rules 1, 5, 6, 8).
    Connect {
        /// Client id.
        client: String,
        /// The new connection (epoch ignored, assigned by apply).
        owner: Owner,
        /// Clean start / clean session.
        clean_start: bool,
        /// Session expiry after disconnect, seconds.
        expiry_s: u32,
        /// The connection's will.
        will: Option<Will>,
        /// Connect time, ms since the epoch.
        at_ms: u64,
    },
    /// Adds or replaces subscriptions.
    Subscribe {
        /// Client id.
        client: String,
        /// Sender.
        owner: Owner,
        /// Filter and options.
        subs: Vec<(String, Sub)>,
    },
    /// Removes subscriptions.
    Unsubscribe {
        /// Client id.
        client: String,
        /// Sender.
        owner: Owner,
        /// Filters.
        filters: Vec<String>,
    },
    /// A QoS 1/2 PUBLISH of the client: stored in the outbox of its partition.
    Publish {
        /// Client id.
        client: String,
        /// Sender.
        owner: Owner,
        /// The message.
        msg: Message,
        /// QoS 2: the packet id (a resent PUBLISH whose id awaits PUBREL is not stored twice).
        qos2_pkid: Option<u16>,
        /// The PUBLISH's sequence number on its connection: a proposal retried after an unknown
        /// outcome is stored once (see [`PublishWindow`]).
        seq: u64,
    },
    /// PUBREL of an inbound QoS 2 packet id.
    Released {
        /// Client id.
        client: String,
        /// Sender.
        owner: Owner,
        /// Packet id.
        pkid: u16,
    },
    /// Acknowledgements as a cursor: entries below `upto` are done, `rel` got their PUBREC.
    Acked {
        /// Client id.
        client: String,
        /// Sender.
        owner: Owner,
        /// Every entry below this is acknowledged.
        upto: u64,
        /// Entries below this were sent.
        sent_upto: u64,
        /// Entries whose PUBREC arrived.
        rel: Vec<u64>,
    },
    /// The connection ended (DISCONNECT, error, or its node lost it).
    Disconnect {
        /// Client id.
        client: String,
        /// The connection that ended.
        owner: Owner,
        /// Whether the will is published (not after a normal DISCONNECT).
        fire_will: bool,
        /// MQTT 5 DISCONNECT may change the session expiry.
        expiry_s: Option<u32>,
        /// When, ms since the epoch.
        at_ms: u64,
    },
    /// Timer of the partition leader: fires a delayed will and ends an expired session, if due at `at_ms`.
    Tick {
        /// Client id.
        client: String,
        /// Epoch that armed the timer.
        epoch: u64,
        /// The leader's clock, ms since the epoch.
        at_ms: u64,
    },
    /// Fan-out: messages for sessions of this partition.
    Enqueue {
        /// Source partition of the messages.
        source: GroupId,
        /// The messages, in id order.
        items: Vec<EnqueueItem>,
        /// Queue limit per session (the proposer's configuration, so apply is deterministic).
        limit: u32,
    },
    /// Fan-out finished every outbox message up to and including `upto`.
    OutboxDone {
        /// Last message fanned out.
        upto: MsgId,
    },
}

impl SessionCommand {
    /// True for the commands that can change who subscribes to what (everything but message
    /// traffic), which the route barrier waits for.
    pub fn may_change_routes(&self) -> bool {
        !matches!(
            self,
            Self::Publish { .. }
                | Self::Released { .. }
                | Self::Acked { .. }
                | Self::Enqueue { .. }
                | Self::OutboxDone { .. }
        )
    }
}

/// Key of the publish window of `client`'s current connection.
fn window_key(client: &str) -> Vec<u8> {
    [b"p/".as_slice(), client.as_bytes()].concat()
}

/// Which QoS >= 1 PUBLISHes of a session's current connection are stored: the highest sequence
/// number seen and a bitmap of the [`PublishWindow::SPAN`] below it. Idempotency is by connection
/// sequence, never by packet id (ids are reused). A connection has at most `receive_maximum`
/// (<= SPAN) PUBLISHes unacknowledged, so a retry always falls inside the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishWindow {
    /// The connection it counts for (node, connection id).
    conn: (u64, u64),
    /// Highest sequence number seen plus one.
    top: u64,
    /// Bit `i` (word `i / 64`, bit `i % 64`): sequence number `top - 1 - i` is stored.
    bits: Vec<u64>,
}

impl PublishWindow {
    /// Sequence numbers remembered below the highest.
    pub const SPAN: u64 = 1024;
    const WORDS: usize = (Self::SPAN / 64) as usize;

    fn for_conn(conn: (u64, u64)) -> Self {
        Self { conn, top: 0, bits: vec![0; Self::WORDS] }
    }

    /// Records `seq`; false when it was recorded before (or is too old to be a retry).
    pub fn insert(&mut self, seq: u64) -> bool {
        self.bits.resize(Self::WORDS, 0);
        if seq >= self.top {
            self.shift(seq + 1 - self.top);
            self.top = seq + 1;
        }
        let i = self.top - 1 - seq;
        if i >= Self::SPAN {
            return false;
        }
        let (word, bit) = ((i / 64) as usize, i % 64);
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }

    /// Moves every bit `n` places up (older), dropping those past the span.
    fn shift(&mut self, n: u64) {
        if n >= Self::SPAN {
            self.bits.iter_mut().for_each(|w| *w = 0);
            return;
        }
        let (words, bits) = ((n / 64) as usize, (n % 64) as u32);
        for j in (0..Self::WORDS).rev() {
            let mut v = if j >= words { self.bits[j - words] << bits } else { 0 };
            if bits > 0 && j > words {
                v |= self.bits[j - words - 1] >> (64 - bits);
            }
            self.bits[j] = v;
        }
    }
}

/// Key of a session.
pub fn session_key(client: &str) -> Vec<u8> {
    [b"s/".as_slice(), client.as_bytes()].concat()
}

/// Start of all sessions' keys, and its end.
pub const SESSIONS: (&[u8], &[u8]) = (b"s/", b"s0");

/// Key of queue entry `seq` of `client` (`seq = u64::MAX` bounds the range).
pub fn queue_key(client: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client.len() + 12);
    k.extend_from_slice(b"q/");
    k.extend_from_slice(&(client.len() as u16).to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number of a queue key.
pub fn queue_seq(key: &[u8]) -> u64 {
    let tail: [u8; 8] =
        key.get(key.len().saturating_sub(8)..).and_then(|t| t.try_into().ok()).unwrap_or([0; 8]);
    u64::from_be_bytes(tail)
}

/// Key of an outbox message.
pub fn outbox_key(id: MsgId) -> Vec<u8> {
    let mut k = Vec::with_capacity(14);
    k.extend_from_slice(b"o/");
    k.extend_from_slice(&id.0.to_be_bytes());
    k.extend_from_slice(&id.1.to_be_bytes());
    k
}

/// The message id of an outbox key.
pub fn outbox_id(key: &[u8]) -> MsgId {
    let idx: [u8; 8] = key.get(2..10).and_then(|t| t.try_into().ok()).unwrap_or([0; 8]);
    let slot: [u8; 4] = key.get(10..14).and_then(|t| t.try_into().ok()).unwrap_or([0; 4]);
    (u64::from_be_bytes(idx), u32::from_be_bytes(slot))
}

/// The key range of the outbox (`o/<index><slot>`).
pub const OUTBOX: (&[u8], &[u8]) = (b"o/", b"o0");

/// Key of the last fanned-out message id.
pub const OUTBOX_DONE: &[u8] = b"od";

/// Reads a session (decoded sessions stay in memory between commands: see
/// [`StateTxn::get_decoded`]).
pub fn load_session(txn: &mut StateTxn<'_>, client: &str) -> Result<Option<Session>, StorageError> {
    txn.get_decoded(&session_key(client), "session")
}

fn save(txn: &mut StateTxn<'_>, client: &str, s: &Session) -> Result<(), StorageError> {
    txn.put_encoded(&session_key(client), s.clone())
}

/// Deletes a session and its queue.
fn end_session(txn: &mut StateTxn<'_>, client: &str, s: &Session, hooks: &dyn Hooks) {
    for seq in s.head..s.next_seq {
        txn.delete(&queue_key(client, seq));
    }
    txn.delete(&session_key(client));
    txn.delete(&window_key(client));
    hooks.session_ended(txn.group(), client);
}

/// Appends a message to the partition's outbox.
fn to_outbox(
    txn: &mut StateTxn<'_>,
    ctx: &ApplyContext,
    msg: &Message,
    hooks: &dyn Hooks,
) -> Result<(), StorageError> {
    txn.put(&outbox_key((ctx.index, ctx.slot)), &codec::encode(msg)?);
    hooks.outbox_appended(txn.group(), msg);
    Ok(())
}

/// The will published now, or armed for later, when `s`'s connection ends at `at_ms`.
fn release_will(
    txn: &mut StateTxn<'_>,
    ctx: &ApplyContext,
    s: &mut Session,
    at_ms: u64,
    hooks: &dyn Hooks,
) -> Result<(), StorageError> {
    let Some(will) = s.will.take() else { return Ok(()) };
    // The will fires after its delay or when the session ends, whichever is first.
    let delay_s = will.delay_s.min(s.expiry_s);
    if delay_s == 0 {
        let msg = Message { at_ms, ..will.msg };
        to_outbox(txn, ctx, &msg, hooks)?;
    } else {
        s.will_at_ms = Some(at_ms + u64::from(delay_s) * 1000);
        s.will = Some(will);
    }
    Ok(())
}

fn owns(s: &Option<Session>, owner: &Owner) -> bool {
    s.as_ref().is_some_and(|s| s.owner == *owner)
}

/// Applies one session command.
pub fn apply(
    ctx: &ApplyContext,
    cmd: SessionCommand,
    txn: &mut StateTxn<'_>,
    hooks: &dyn Hooks,
) -> Result<Response, StorageError> {
    let applied = Response::Applied { index: ctx.index, slot: ctx.slot };
    Ok(match cmd {
        SessionCommand::Connect { client, owner, clean_start, expiry_s, will, at_ms } => {
            let old = load_session(txn, &client)?;
            let previous = old.as_ref().filter(|s| s.connected).map(|s| s.owner);
            let epoch = old.as_ref().map_or(0, |s| s.owner.epoch) + 1;
            let owner = Owner { epoch, ..owner };
            let mut session = match old {
                // Rule 8: clean start ends the old session; a still-connected owner's will fires.
                Some(mut s) if clean_start => {
                    if s.connected || s.will_at_ms.is_some() {
                        s.will_at_ms = None;
                        let will_at = at_ms;
                        if let Some(w) = s.will.take() {
                            to_outbox(txn, ctx, &Message { at_ms: will_at, ..w.msg }, hooks)?;
                        }
                    }
                    end_session(txn, &client, &s, hooks);
                    None
                }
                other => other,
            };
            let session_present = session.is_some();
            let s = session.get_or_insert_with(|| Session {
                owner,
                connected: true,
                expiry_s,
                disconnected_at_ms: 0,
                subs: BTreeMap::new(),
                will: None,
                will_at_ms: None,
                next_seq: 0,
                head: 0,
                sent_upto: 0,
                rel: BTreeSet::new(),
                awaiting_rel: BTreeSet::new(),
                last_from: BTreeMap::new(),
                dropped: 0,
            });
            // Rule 8: reconnecting with clean start 0 cancels a pending will.
            s.will_at_ms = None;
            s.owner = owner;
            s.connected = true;
            s.expiry_s = expiry_s;
            s.will = will;
            save(txn, &client, s)?;
            hooks.session_changed(txn.group(), &client, s);
            let c = Connected { epoch, session_present, previous, session: s.clone(), index: ctx.index };
            Response::Connected(Box::new(c))
        }
        SessionCommand::Subscribe { client, owner, subs } => {
            let mut s = load_session(txn, &client)?;
            if !owns(&s, &owner) {
                return Ok(Response::Stale);
            }
            let Some(s) = s.as_mut() else { return Ok(Response::Stale) };
            let mut existed = Vec::with_capacity(subs.len());
            for (filter, sub) in subs {
                existed.push(s.subs.insert(filter, sub).is_some());
            }
            save(txn, &client, s)?;
            hooks.session_changed(txn.group(), &client, s);
            Response::Flags(existed)
        }
        SessionCommand::Unsubscribe { client, owner, filters } => {
            let mut s = load_session(txn, &client)?;
            if !owns(&s, &owner) {
                return Ok(Response::Stale);
            }
            let Some(s) = s.as_mut() else { return Ok(Response::Stale) };
            let found = filters.iter().map(|f| s.subs.remove(f).is_some()).collect();
            save(txn, &client, s)?;
            hooks.session_changed(txn.group(), &client, s);
            Response::Flags(found)
        }
        SessionCommand::Publish { client, owner, msg, qos2_pkid, seq } => {
            let mut s = load_session(txn, &client)?;
            if !owns(&s, &owner) {
                return Ok(Response::Stale);
            }
            let Some(s) = s.as_mut() else { return Ok(Response::Stale) };
            let key = window_key(&client);
            let mut window: PublishWindow = txn.get_decoded(&key, "publish window")?.unwrap_or_default();
            if window.conn != (owner.node, owner.conn) {
                window = PublishWindow::for_conn((owner.node, owner.conn));
            }
            if !window.insert(seq) {
                return Ok(Response::Duplicate);
            }
            txn.put_encoded(&key, window)?;
            if let Some(pkid) = qos2_pkid {
                if !s.awaiting_rel.insert(pkid) {
                    return Ok(Response::Duplicate);
                }
                save(txn, &client, s)?;
            }
            to_outbox(txn, ctx, &msg, hooks)?;
            applied
        }
        SessionCommand::Released { client, owner, pkid } => {
            let mut s = load_session(txn, &client)?;
            if !owns(&s, &owner) {
                return Ok(Response::Stale);
            }
            let Some(s) = s.as_mut() else { return Ok(Response::Stale) };
            let found = s.awaiting_rel.remove(&pkid);
            save(txn, &client, s)?;
            Response::Flags(vec![found])
        }
        SessionCommand::Acked { client, owner, upto, sent_upto, rel } => {
            let s = load_session(txn, &client)?;
            let Some(mut s) = s.filter(|s| s.owner == owner) else { return Ok(Response::Stale) };
            let upto = upto.min(s.next_seq);
            for seq in s.head..upto {
                txn.delete(&queue_key(&client, seq));
            }
            s.head = s.head.max(upto);
            s.sent_upto = s.sent_upto.max(sent_upto.min(s.next_seq));
            s.rel.extend(rel.into_iter().filter(|r| *r >= s.head && *r < s.next_seq));
            s.rel = s.rel.split_off(&s.head);
            hooks.queue_depth(txn.group(), &client, s.next_seq - s.head, true);
            txn.put_encoded(&session_key(&client), s)?;
            applied
        }
        SessionCommand::Disconnect { client, owner, fire_will, expiry_s, at_ms } => {
            let mut s = load_session(txn, &client)?;
            if !owns(&s, &owner) {
                return Ok(Response::Stale);
            }
            let Some(s) = s.as_mut() else { return Ok(Response::Stale) };
            if let Some(e) = expiry_s {
                s.expiry_s = e;
            }
            s.connected = false;
            s.disconnected_at_ms = at_ms;
            if fire_will {
                release_will(txn, ctx, s, at_ms, hooks)?;
            } else {
                s.will = None;
            }
            if s.expiry_s == 0 {
                end_session(txn, &client, s, hooks);
            } else {
                save(txn, &client, s)?;
                hooks.session_changed(txn.group(), &client, s);
            }
            applied
        }
        SessionCommand::Tick { client, epoch, at_ms } => {
            let Some(mut s) = load_session(txn, &client)? else { return Ok(Response::Stale) };
            if s.owner.epoch != epoch || s.connected {
                return Ok(Response::Stale);
            }
            let expired = s.expires_at_ms().is_some_and(|t| at_ms >= t);
            if s.will_at_ms.is_some_and(|t| at_ms >= t) || (expired && s.will.is_some()) {
                s.will_at_ms = None;
                if let Some(w) = s.will.take() {
                    to_outbox(txn, ctx, &Message { at_ms, ..w.msg }, hooks)?;
                }
            }
            if expired {
                end_session(txn, &client, &s, hooks);
            } else {
                save(txn, &client, &s)?;
                hooks.session_changed(txn.group(), &client, &s);
            }
            applied
        }
        SessionCommand::Enqueue { source, items, limit } => {
            let mut dropped = 0u64;
            // Per receiver: its session and the rows appended to its queue.
            let mut sessions: BTreeMap<String, (Session, QueueRows)> = BTreeMap::new();
            for item in items {
                for t in item.targets {
                    let (s, rows) = match sessions.get_mut(&t.client) {
                        Some(s) => s,
                        None => match load_session(txn, &t.client)? {
                            Some(s) => sessions.entry(t.client.clone()).or_insert((s, Vec::new())),
                            None => continue,
                        },
                    };
                    if s.last_from.get(&source).is_some_and(|last| *last >= item.id) {
                        continue; // fan-out retried after a leader change: already queued
                    }
                    s.last_from.insert(source, item.id);
                    // QoS 0 is queued only for a connected receiver (MQTT 3.1.1 4.1: optional offline).
                    if t.qos == 0 && !s.connected {
                        continue;
                    }
                    let q =
                        Queued { msg: item.msg.clone(), qos: t.qos, retain: t.retain, sub_ids: t.sub_ids };
                    txn.put(&queue_key(&t.client, s.next_seq), &codec::encode(&q)?);
                    rows.push((s.next_seq, q));
                    s.next_seq += 1;
                    while s.next_seq - s.head > u64::from(limit) {
                        txn.delete(&queue_key(&t.client, s.head));
                        s.rel.remove(&s.head);
                        s.head += 1;
                        s.dropped += 1;
                        dropped += 1;
                    }
                }
            }
            for (client, (s, mut rows)) in sessions {
                hooks.queue_depth(txn.group(), &client, s.next_seq - s.head, false);
                // Rows that overflowed at once are not delivered (a read would not find them).
                rows.retain(|(seq, _)| *seq >= s.head);
                hooks.queue_appended(txn.group(), &client, s.owner, s.next_seq, rows);
                txn.put_encoded(&session_key(&client), s)?;
            }
            if dropped > 0 {
                hooks.queue_dropped(dropped);
            }
            applied
        }
        SessionCommand::OutboxDone { upto } => {
            let done: Option<MsgId> =
                txn.get(OUTBOX_DONE)?.map(|v| codec::decode(&v, "outbox cursor")).transpose()?;
            if done.is_none_or(|d| d < upto) {
                // From the previous cursor, not the start: the rows before it are deleted, and
                // iterating over their tombstones cost more than the rest of the round.
                let from = done.map_or(outbox_key((0, 0)), |(i, s)| outbox_key((i, s + 1)));
                let rows = txn.scan(&from, &outbox_key(upto), usize::MAX)?;
                let removed = rows.len() as u64 + u64::from(txn.get(&outbox_key(upto))?.is_some());
                for (k, _) in rows {
                    txn.delete(&k);
                }
                txn.delete(&outbox_key(upto));
                txn.put(OUTBOX_DONE, &codec::encode(&upto)?);
                hooks.outbox_done(txn.group(), removed);
            }
            applied
        }
    })
}

#[cfg(test)]
mod tests {
    //! The takeover rules of DESIGN.md, each as a test of `apply`, and the queue/outbox invariants.
    use super::*;
    use crate::state::{Command, HubState};
    use ironhub_raft::{Apply, DecodedCache, StateCacheLimits, StateView};
    use ironhub_storage::MemEngine;
    use parking_lot::Mutex;
    use std::sync::Arc;

    /// Records hook calls.
    #[derive(Default)]
    struct Recorder {
        changed: Mutex<Vec<(String, Owner, bool)>>,
        ended: Mutex<Vec<String>>,
        woken: Mutex<Vec<String>>,
        dropped: Mutex<u64>,
        /// Outbox messages appended and fanned out, as the hooks were told.
        outbox: Mutex<(u64, u64)>,
        /// Rows handed to `queue_appended`.
        appended: Mutex<Vec<Appended>>,
    }

    /// Client, session epoch, queue end, sequence numbers of the rows.
    type Appended = (String, u64, u64, Vec<u64>);

    impl Hooks for Recorder {
        fn session_changed(&self, _g: GroupId, client: &str, s: &Session) {
            self.changed.lock().push((client.to_string(), s.owner, s.connected));
        }
        fn session_ended(&self, _g: GroupId, client: &str) {
            self.ended.lock().push(client.to_string());
        }
        fn queue_appended(&self, _g: GroupId, client: &str, owner: Owner, next_seq: u64, rows: QueueRows) {
            self.woken.lock().push(client.to_string());
            let seqs = rows.into_iter().map(|(seq, _)| seq).collect();
            self.appended.lock().push((client.to_string(), owner.epoch, next_seq, seqs));
        }
        fn queue_dropped(&self, n: u64) {
            *self.dropped.lock() += n;
        }
        fn outbox_appended(&self, _g: GroupId, _msg: &Message) {
            self.outbox.lock().0 += 1;
        }
        fn outbox_done(&self, _g: GroupId, n: u64) {
            self.outbox.lock().1 += n;
        }
    }

    struct Fixture {
        engine: MemEngine,
        cache: DecodedCache,
        hooks: Arc<Recorder>,
        state: HubState,
        index: u64,
        publish_seq: u64,
    }

    impl Fixture {
        fn new() -> Self {
            let hooks = Arc::new(Recorder::default());
            Self {
                engine: MemEngine::new(),
                cache: DecodedCache::new(&StateCacheLimits::default()),
                state: HubState::new(hooks.clone()),
                hooks,
                index: 0,
                publish_seq: 0,
            }
        }

        /// A fresh connection sequence number for a PUBLISH.
        fn next_seq(&mut self) -> u64 {
            self.publish_seq += 1;
            self.publish_seq
        }

        fn apply(&mut self, cmd: SessionCommand) -> Response {
            self.index += 1;
            // Through a cache of decoded sessions, as apply runs: every rule below also runs on
            // values read from the cache and on writes deferred to the end of the batch.
            let mut txn = StateTxn::for_test_cached(&self.engine, 1, &self.cache);
            let ctx = ApplyContext { group: 1, index: self.index, slot: 0 };
            let raw = Command::Session(cmd).encode().expect("encode");
            let out = self.state.apply(&ctx, &raw, &mut txn).expect("apply");
            txn.commit_for_test().expect("commit");
            codec::decode(&out, "response").expect("decode")
        }

        /// Applies `cmds` in one transaction, as apply does with a batch of entries (writes are
        /// deferred to its end, reads see the earlier commands' writes).
        fn apply_all(&mut self, cmds: Vec<SessionCommand>) -> Vec<Response> {
            let mut txn = StateTxn::for_test_cached(&self.engine, 1, &self.cache);
            let mut out = Vec::new();
            for cmd in cmds {
                self.index += 1;
                let ctx = ApplyContext { group: 1, index: self.index, slot: 0 };
                let raw = Command::Session(cmd).encode().expect("encode");
                let resp = self.state.apply(&ctx, &raw, &mut txn).expect("apply");
                out.push(codec::decode(&resp, "response").expect("decode"));
            }
            txn.commit_for_test().expect("commit");
            out
        }

        /// Every application key and value of the group.
        fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
            StateView::for_test(&self.engine, 1).scan(b"", b"\xff", usize::MAX).expect("scan")
        }

        fn connect(
            &mut self,
            client: &str,
            node: NodeId,
            conn: u64,
            clean: bool,
            will: Option<Will>,
        ) -> Connected {
            let owner = Owner { node, conn, epoch: 0 };
            let cmd = SessionCommand::Connect {
                client: client.into(),
                owner,
                clean_start: clean,
                expiry_s: 3600,
                will,
                at_ms: 1_000,
            };
            match self.apply(cmd) {
                Response::Connected(c) => *c,
                other => panic!("connect: {other:?}"),
            }
        }

        fn session(&self, client: &str) -> Option<Session> {
            // As stored (not through the cache).
            let mut txn = StateTxn::for_test(&self.engine, 1);
            load_session(&mut txn, client).expect("load")
        }

        fn outbox(&self) -> Vec<Message> {
            let txn = StateTxn::for_test(&self.engine, 1);
            txn.scan(&outbox_key((0, 0)), &outbox_key((u64::MAX, u32::MAX)), usize::MAX)
                .expect("scan")
                .into_iter()
                .map(|(_, v)| codec::decode(&v, "msg").expect("decode"))
                .collect()
        }

        fn queue(&self, client: &str) -> Vec<u64> {
            let txn = StateTxn::for_test(&self.engine, 1);
            txn.scan(&queue_key(client, 0), &queue_key(client, u64::MAX), usize::MAX)
                .expect("scan")
                .into_iter()
                .map(|(k, _)| queue_seq(&k))
                .collect()
        }
    }

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from(payload.to_string()),
            qos: 1,
            retain: false,
            props: Props::default(),
            at_ms: 1_000,
            node: 0,
            from: String::new(),
        }
    }

    fn will(delay_s: u32) -> Option<Will> {
        Some(Will { msg: msg("wills/c", "gone"), delay_s })
    }

    fn sub(qos: u8) -> Sub {
        Sub { qos, no_local: false, retain_as_published: false, retain_handling: 0, id: None }
    }

    fn enqueue(f: &mut Fixture, id: MsgId, clients: &[(&str, u8)]) -> Response {
        let targets = clients
            .iter()
            .map(|(c, q)| Target { client: c.to_string(), qos: *q, retain: false, sub_ids: vec![] })
            .collect();
        let items = vec![EnqueueItem { id, msg: msg("t", &format!("{id:?}")), targets }];
        f.apply(SessionCommand::Enqueue { source: 2, items, limit: 3 })
    }

    #[test]
    fn rule1_concurrent_connects_apply_in_log_order_and_the_later_wins() {
        let mut f = Fixture::new();
        let a = f.connect("c", 1, 10, false, None);
        let b = f.connect("c", 2, 20, false, None);
        assert_eq!((a.epoch, b.epoch), (1, 2));
        assert!(!a.session_present && b.session_present);
        assert_eq!(b.previous, Some(Owner { node: 1, conn: 10, epoch: 1 }));
        assert_eq!(f.session("c").expect("session").owner, Owner { node: 2, conn: 20, epoch: 2 });
    }

    #[test]
    fn rule2_commands_of_a_superseded_connection_are_refused() {
        let mut f = Fixture::new();
        f.connect("c", 1, 10, false, None);
        let old = Owner { node: 1, conn: 10, epoch: 1 };
        f.connect("c", 2, 20, false, None);
        let r = f.apply(SessionCommand::Subscribe {
            client: "c".into(),
            owner: old,
            subs: vec![("a".into(), sub(1))],
        });
        assert_eq!(r, Response::Stale);
        let r = f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner: old,
            fire_will: true,
            expiry_s: None,
            at_ms: 5,
        });
        assert_eq!(r, Response::Stale);
        let s = f.session("c").expect("session");
        assert!(s.subs.is_empty() && s.connected, "nothing of the old connection applied");
        // Same epoch number from another connection id (a session recreated after deletion) is refused too.
        let forged = Owner { node: 1, conn: 99, epoch: 2 };
        let r = f.apply(SessionCommand::Acked {
            client: "c".into(),
            owner: forged,
            upto: 1,
            sent_upto: 1,
            rel: vec![],
        });
        assert_eq!(r, Response::Stale);
    }

    #[test]
    fn rule3_acks_are_a_cursor_that_deletes_exactly_the_acknowledged_entries() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        for i in 0..3 {
            enqueue(&mut f, (i + 1, 0), &[("c", 1)]);
        }
        assert_eq!(f.queue("c"), [0, 1, 2]);
        f.apply(SessionCommand::Acked { client: "c".into(), owner, upto: 2, sent_upto: 3, rel: vec![] });
        assert_eq!(f.queue("c"), [2]);
        // A cursor beyond the queue is clamped: it cannot acknowledge messages not yet queued.
        f.apply(SessionCommand::Acked { client: "c".into(), owner, upto: 99, sent_upto: 99, rel: vec![] });
        let s = f.session("c").expect("session");
        assert_eq!((s.head, s.next_seq, s.sent_upto), (3, 3, 3));
        enqueue(&mut f, (9, 0), &[("c", 1)]);
        assert_eq!(f.queue("c"), [3], "the next message is still delivered");
    }

    #[test]
    fn rule4_a_pubrec_is_stored_before_the_pubrel_and_survives_reconnect() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        enqueue(&mut f, (1, 0), &[("c", 2)]);
        enqueue(&mut f, (2, 0), &[("c", 2)]);
        f.apply(SessionCommand::Acked { client: "c".into(), owner, upto: 0, sent_upto: 2, rel: vec![0] });
        let resumed = f.connect("c", 2, 20, false, None);
        assert_eq!(
            resumed.session.rel.iter().copied().collect::<Vec<_>>(),
            [0],
            "PUBREL, not PUBLISH, is resent"
        );
        assert_eq!(resumed.session.sent_upto, 2, "both are redelivered with DUP");
        assert_eq!(f.queue("c"), [0, 1]);
    }

    #[test]
    fn rule5_the_new_owner_gets_the_session_as_of_its_connect() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        f.apply(SessionCommand::Subscribe { client: "c".into(), owner, subs: vec![("a/#".into(), sub(1))] });
        enqueue(&mut f, (1, 0), &[("c", 1)]);
        let index_before = f.index;
        let resumed = f.connect("c", 2, 20, false, None);
        assert_eq!(resumed.index, index_before + 1, "the index of the Connect itself");
        assert!(resumed.session.subs.contains_key("a/#"));
        assert_eq!((resumed.session.head, resumed.session.next_seq), (0, 1));
    }

    #[test]
    fn rule6_every_node_learns_the_newer_owner_from_apply() {
        let mut f = Fixture::new();
        f.connect("c", 1, 10, false, None);
        f.connect("c", 2, 20, false, None);
        let changed = f.hooks.changed.lock().clone();
        assert_eq!(changed.last(), Some(&("c".to_string(), Owner { node: 2, conn: 20, epoch: 2 }, true)));
    }

    #[test]
    fn rule7_a_session_whose_node_lost_it_is_ended_by_the_leader_and_its_will_fires() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, will(0));
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        // what the partition leader's audit proposes for a connection its node no longer holds
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner,
            fire_will: true,
            expiry_s: None,
            at_ms: 7,
        });
        let s = f.session("c").expect("persistent session kept");
        assert!(!s.connected);
        assert_eq!(
            f.outbox().iter().map(|m| m.payload.clone()).collect::<Vec<_>>(),
            [Bytes::from_static(b"gone")]
        );
    }

    #[test]
    fn rule8_clean_start_0_cancels_a_delayed_will_and_clean_start_1_fires_it() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, will(30));
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner,
            fire_will: true,
            expiry_s: None,
            at_ms: 1_000,
        });
        assert!(f.outbox().is_empty(), "delayed");
        assert_eq!(f.session("c").expect("s").will_at_ms, Some(31_000));
        // the timer armed by epoch 1 fires nothing once epoch 2 connected (and cancelled the will)
        let c2 = f.connect("c", 1, 11, false, None);
        assert_eq!(
            f.apply(SessionCommand::Tick { client: "c".into(), epoch: 1, at_ms: 40_000 }),
            Response::Stale
        );
        assert!(f.outbox().is_empty());
        assert_eq!(f.session("c").expect("s").will_at_ms, None);

        // a connection with a will, taken over with clean start 1: the old session ends, its will fires
        let owner2 = Owner { node: 1, conn: 11, epoch: c2.epoch };
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner: owner2,
            fire_will: false,
            expiry_s: None,
            at_ms: 2,
        });
        f.connect("c", 1, 12, false, will(30));
        let fresh = f.connect("c", 2, 20, true, None);
        assert!(!fresh.session_present);
        assert_eq!(f.outbox().len(), 1, "the old connection's will fired");
        assert!(f.hooks.ended.lock().contains(&"c".to_string()));
    }

    #[test]
    fn delayed_will_fires_on_tick_and_an_expired_session_ends() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, will(10));
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner,
            fire_will: true,
            expiry_s: Some(20),
            at_ms: 1_000,
        });
        f.apply(SessionCommand::Tick { client: "c".into(), epoch: 1, at_ms: 5_000 });
        assert!(f.outbox().is_empty(), "not due yet");
        f.apply(SessionCommand::Tick { client: "c".into(), epoch: 1, at_ms: 11_000 });
        assert_eq!(f.outbox().len(), 1);
        f.apply(SessionCommand::Tick { client: "c".into(), epoch: 1, at_ms: 21_000 });
        assert!(f.session("c").is_none(), "expired after 20 s offline");
    }

    #[test]
    fn rows_that_overflow_in_the_same_enqueue_are_not_handed_over() {
        let mut f = Fixture::new();
        f.connect("d", 1, 10, false, None);
        let target = Target { client: "d".into(), qos: 1, retain: false, sub_ids: vec![] };
        let items = (0..5)
            .map(|i| EnqueueItem { id: (i, 0), msg: msg("t", "x"), targets: vec![target.clone()] })
            .collect();
        f.apply(SessionCommand::Enqueue { source: 2, items, limit: 3 });
        assert_eq!(f.queue("d"), [2, 3, 4]);
        assert_eq!(*f.hooks.appended.lock(), [("d".to_string(), 1, 5, vec![2, 3, 4])]);
    }

    #[test]
    fn enqueue_is_idempotent_per_source_and_overflow_drops_the_oldest() {
        let mut f = Fixture::new();
        f.connect("c", 1, 10, false, None);
        enqueue(&mut f, (5, 0), &[("c", 1)]);
        enqueue(&mut f, (5, 0), &[("c", 1)]); // a new fan-out leader retries the same round
        assert_eq!(f.queue("c"), [0]);
        assert!(f.hooks.woken.lock().contains(&"c".to_string()), "its connection is woken");
        // The rows are handed over with the session's epoch (a connection may deliver them
        // without reading the queue back); the retry hands over nothing.
        assert_eq!(
            *f.hooks.appended.lock(),
            [("c".to_string(), 1, 1, vec![0]), ("c".to_string(), 1, 1, vec![])]
        );
        for i in 6..10 {
            enqueue(&mut f, (i, 0), &[("c", 1)]);
        }
        assert_eq!(f.queue("c"), [2, 3, 4], "limit 3: the two oldest dropped");
        assert_eq!(*f.hooks.dropped.lock(), 2);
        assert_eq!(f.session("c").expect("s").dropped, 2);
        // sessions that do not exist are skipped; QoS 0 is not queued for an offline session
        enqueue(&mut f, (10, 0), &[("nobody", 1)]);
        assert!(f.session("nobody").is_none());
        let owner = f.session("c").expect("s").owner;
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner,
            fire_will: false,
            expiry_s: None,
            at_ms: 1,
        });
        enqueue(&mut f, (11, 0), &[("c", 0)]);
        assert_eq!(f.queue("c"), [2, 3, 4]);
    }

    #[test]
    fn qos2_inbound_is_stored_once_per_packet_id_until_pubrel() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        let publish = |f: &mut Fixture| {
            let seq = f.next_seq();
            f.apply(SessionCommand::Publish {
                client: "c".into(),
                owner,
                msg: msg("t", "x"),
                qos2_pkid: Some(7),
                seq,
            })
        };
        assert!(matches!(publish(&mut f), Response::Applied { .. }));
        assert_eq!(publish(&mut f), Response::Duplicate);
        assert_eq!(f.outbox().len(), 1);
        assert_eq!(
            f.apply(SessionCommand::Released { client: "c".into(), owner, pkid: 7 }),
            Response::Flags(vec![true])
        );
        assert!(matches!(publish(&mut f), Response::Applied { .. }), "after PUBREL the id is new again");
        assert_eq!(f.outbox().len(), 2);
    }

    #[test]
    fn a_retried_publish_is_stored_once_by_connection_sequence() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        let publish = |f: &mut Fixture, seq: u64| {
            f.apply(SessionCommand::Publish {
                client: "c".into(),
                owner,
                msg: msg("t", "x"),
                qos2_pkid: None,
                seq,
            })
        };
        assert!(matches!(publish(&mut f, 0), Response::Applied { .. }));
        assert!(matches!(publish(&mut f, 2), Response::Applied { .. }));
        assert_eq!(publish(&mut f, 0), Response::Duplicate, "a retry of an applied publish");
        // 1 was overtaken by 2 (its first attempt lost with a leader): not a duplicate.
        assert!(matches!(publish(&mut f, 1), Response::Applied { .. }));
        assert_eq!(publish(&mut f, 1), Response::Duplicate);
        assert_eq!(f.outbox().len(), 3);
        // The next connection of the session counts from 0 again.
        let c2 = f.connect("c", 1, 11, false, None);
        let owner2 = Owner { node: 1, conn: 11, epoch: c2.epoch };
        let r = f.apply(SessionCommand::Publish {
            client: "c".into(),
            owner: owner2,
            msg: msg("t", "x"),
            qos2_pkid: None,
            seq: 0,
        });
        assert!(matches!(r, Response::Applied { .. }));
        // ... and so does a connection with the same id on another node.
        let c3 = f.connect("c", 2, 11, false, None);
        let owner3 = Owner { node: 2, conn: 11, epoch: c3.epoch };
        let r = f.apply(SessionCommand::Publish {
            client: "c".into(),
            owner: owner3,
            msg: msg("t", "x"),
            qos2_pkid: None,
            seq: 0,
        });
        assert!(matches!(r, Response::Applied { .. }), "{r:?}");
    }

    proptest::proptest! {
        /// The window answers like a set of every sequence number inserted, for retries within
        /// the span below the highest one.
        #[test]
        fn publish_window_matches_a_set(ops in proptest::collection::vec((0u64..3000, 0u64..1024), 1..400)) {
            let mut w = PublishWindow::for_conn((1, 1));
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u64;
            for (fresh, back) in ops {
                // alternate new numbers with retries at most SPAN below the highest
                let seq = if fresh % 2 == 0 { top + fresh % 300 } else { top.saturating_sub(back + 1) };
                if seq + PublishWindow::SPAN < top.max(seq + 1) {
                    continue;
                }
                proptest::prop_assert_eq!(w.insert(seq), seen.insert(seq), "seq {}", seq);
                top = top.max(seq + 1);
            }
        }
    }

    #[test]
    fn outbox_done_deletes_up_to_the_cursor_only() {
        let mut f = Fixture::new();
        let c = f.connect("c", 1, 10, false, None);
        let owner = Owner { node: 1, conn: 10, epoch: c.epoch };
        let mut ids = Vec::new();
        for seq in 0..3 {
            if let Response::Applied { index, slot } = f.apply(SessionCommand::Publish {
                client: "c".into(),
                owner,
                msg: msg("t", "x"),
                qos2_pkid: None,
                seq,
            }) {
                ids.push((index, slot));
            }
        }
        f.apply(SessionCommand::OutboxDone { upto: ids[1] });
        assert_eq!(f.outbox().len(), 1);
        f.apply(SessionCommand::OutboxDone { upto: ids[0] }); // an older cursor changes nothing
        assert_eq!(f.outbox().len(), 1);
        // The hooks count what the back-pressure counts: 3 appended, 2 fanned out.
        assert_eq!(*f.hooks.outbox.lock(), (3, 2));
        f.apply(SessionCommand::OutboxDone { upto: ids[2] });
        assert_eq!((f.outbox().len(), *f.hooks.outbox.lock()), (0, (3, 3)));
    }

    #[test]
    fn cached_values_survive_an_encode_decode_round_trip_unchanged() {
        // Apply reads sessions and publish windows from memory on a node that has them cached
        // and decodes them on one that does not: both must see the same value, or the nodes'
        // writes and responses would differ.
        let props = Props {
            payload_format: Some(1),
            expiry_s: Some(30),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation: Some(Bytes::from_static(b"\x00\xff")),
            user: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
        };
        let mut s = Session {
            owner: Owner { node: 3, conn: 9, epoch: 4 },
            connected: false,
            expiry_s: 600,
            disconnected_at_ms: 17,
            subs: [("a/+".to_string(), sub(1)), ("$share/g/b".to_string(), sub(2))].into_iter().collect(),
            will: Some(Will { msg: Message { props, ..msg("wills/c", "gone") }, delay_s: 5 }),
            will_at_ms: Some(99),
            next_seq: 12,
            head: 7,
            sent_upto: 9,
            rel: [8, 10].into_iter().collect(),
            awaiting_rel: [1, 65535].into_iter().collect(),
            last_from: [(2, (5, 1)), (7, (u64::MAX, u32::MAX))].into_iter().collect(),
            dropped: 3,
        };
        s.subs.get_mut("a/+").expect("sub").id = Some(268_435_455);
        let back: Session = codec::decode(&codec::encode(&s).expect("encode"), "session").expect("decode");
        assert_eq!(back, s);
        let mut w = PublishWindow::for_conn((3, 9));
        for seq in [0, 5, 70, 1100] {
            w.insert(seq);
        }
        let back: PublishWindow =
            codec::decode(&codec::encode(&w).expect("encode"), "window").expect("decode");
        assert_eq!(back, w);
    }

    #[test]
    fn commands_of_one_batch_leave_the_state_they_leave_one_by_one() {
        let owner = |conn, epoch| Owner { node: 1, conn, epoch };
        let items = |ids: &[u64]| {
            let t = Target { client: "c".into(), qos: 1, retain: false, sub_ids: vec![] };
            ids.iter()
                .map(|i| EnqueueItem { id: (*i, 0), msg: msg("t", "x"), targets: vec![t.clone()] })
                .collect()
        };
        let cmds = || {
            let connect = |conn, clean_start| SessionCommand::Connect {
                client: "c".into(),
                owner: owner(conn, 0),
                clean_start,
                expiry_s: 3600,
                will: None,
                at_ms: 1,
            };
            let publish = |seq| SessionCommand::Publish {
                client: "c".into(),
                owner: owner(1, 1),
                msg: msg("out", "y"),
                qos2_pkid: None,
                seq,
            };
            vec![
                connect(1, false),
                SessionCommand::Enqueue { source: 2, items: items(&[1, 2, 3]), limit: 10 },
                SessionCommand::Acked {
                    client: "c".into(),
                    owner: owner(1, 1),
                    upto: 2,
                    sent_upto: 3,
                    rel: vec![],
                },
                publish(1),
                publish(1), // a retry: stored once
                SessionCommand::Enqueue { source: 2, items: items(&[3, 4]), limit: 10 },
                SessionCommand::Disconnect {
                    client: "c".into(),
                    owner: owner(1, 1),
                    fire_will: false,
                    expiry_s: Some(0),
                    at_ms: 2,
                },
                connect(2, true),
                SessionCommand::Enqueue { source: 2, items: items(&[5]), limit: 10 },
            ]
        };
        let mut one = Fixture::new();
        let each: Vec<Response> = cmds().into_iter().map(|c| one.apply(c)).collect();
        let mut batch = Fixture::new();
        assert_eq!(batch.apply_all(cmds()), each, "the same responses");
        assert_eq!(batch.dump(), one.dump(), "the same stored state");
        assert_eq!(one.queue("c"), [0], "the new session has only the last message");
        // And the next batch reads the cached values as the engine holds them.
        let more = vec![SessionCommand::Enqueue { source: 2, items: items(&[6]), limit: 10 }];
        assert_eq!(batch.apply_all(more.clone()), more.into_iter().map(|c| one.apply(c)).collect::<Vec<_>>());
        assert_eq!(batch.dump(), one.dump());
    }

    #[test]
    fn a_clean_session_ends_with_its_connection() {
        let mut f = Fixture::new();
        let owner = Owner { node: 1, conn: 10, epoch: 0 };
        let r = f.apply(SessionCommand::Connect {
            client: "c".into(),
            owner,
            clean_start: true,
            expiry_s: 0,
            will: None,
            at_ms: 0,
        });
        let Response::Connected(c) = r else { panic!("{r:?}") };
        enqueue(&mut f, (1, 0), &[("c", 1)]);
        let owner = Owner { epoch: c.epoch, ..owner };
        f.apply(SessionCommand::Disconnect {
            client: "c".into(),
            owner,
            fire_will: false,
            expiry_s: None,
            at_ms: 1,
        });
        assert!(f.session("c").is_none());
        assert!(f.queue("c").is_empty(), "its queue went with it");
    }
}
