//! The route view of one node: every session's subscriptions and owner, kept current by apply on
//! every node (each node applies every partition, as voter or learner), and the connections this
//! node holds. Matching a topic gives the receivers with their delivery QoS; shared subscriptions
//! pick one member per group (connected members first, round robin).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use ironhub_raft::{GroupId, NodeId, RaftNode, StateView};
use ironhub_storage::{codec, StorageError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch, Notify};

use super::clock::PeerClocks;
use super::metrics::MqttMetrics;
use super::trie::Trie;
use crate::state::session::{Message, Owner, QueueRows, Queued, Session, Sub, OUTBOX, SESSIONS};
use crate::state::Hooks;

/// Where one session's messages go, as the route view knows it.
#[derive(Debug, Clone)]
pub struct ClientRoute {
    /// The session's partition.
    pub group: GroupId,
    /// Its owner.
    pub owner: Owner,
    /// Whether the owner is connected.
    pub connected: bool,
    /// Subscriptions by filter (shared ones with their prefix).
    pub subs: BTreeMap<String, Sub>,
    /// When the partition leader must look at the session again (will delay, expiry), ms.
    pub deadline: Option<u64>,
    /// When this node learned the current owner (the session audit leaves fresh owners alone).
    pub owner_since: std::time::Instant,
}

/// One receiver of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Client id.
    pub client: String,
    /// Its partition.
    pub group: GroupId,
    /// Its owner.
    pub owner: Owner,
    /// Whether it is connected.
    pub connected: bool,
    /// Delivery QoS.
    pub qos: u8,
    /// Retain flag to deliver.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
}

/// A QoS 0 message for a connection of this node.
#[derive(Debug, Clone)]
pub struct Live {
    /// The message.
    pub msg: Arc<Message>,
    /// Retain flag to deliver.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
}

/// A connection held by this node.
pub struct LocalConn {
    /// Its connection id.
    pub conn: u64,
    /// Its session epoch once its `Connect` applied (0 before).
    pub epoch: AtomicU64,
    /// QoS 0 messages (bounded; full drops).
    pub live: mpsc::Sender<Live>,
    /// Woken when its queue grew.
    pub wake: Notify,
    /// Set to a DISCONNECT reason code to close the connection.
    pub kick: watch::Sender<Option<u8>>,
    /// Its partition.
    pub group: GroupId,
    /// When its session was established (after `Connect` applied).
    pub since: std::time::Instant,
    /// Rows just appended to the queue of the session it owns, handed over once committed so the
    /// connection need not read them back, and where that queue ends.
    fresh: Mutex<Fresh>,
}

/// The end of a connection's queue as this node applied it, with its newest rows.
#[derive(Default)]
struct Fresh {
    /// At most [`FRESH_ROWS`], in sequence order.
    rows: VecDeque<(u64, Queued)>,
    /// The queue's next sequence number: from the session at `Connect`, then from every `Enqueue`
    /// to the session this connection owns (0 until the `Connect` applied).
    tail: u64,
}

/// Where a connection's next queue rows come from ([`LocalConn::next_rows`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Handed over by apply, continuing the cursor.
    Rows(QueueRows),
    /// None: the cursor is at the queue's end.
    Empty,
    /// Not in memory: read the queue.
    Read,
}

/// Most rows a connection's [`LocalConn::fresh`] holds (a few receive windows); older ones are
/// read from the queue. Bounds the memory of connections whose receivers stall: 128 rows each.
pub const FRESH_ROWS: usize = 128;

impl LocalConn {
    /// A connection of `group` with connection id `conn`.
    pub fn new(conn: u64, group: GroupId, live: mpsc::Sender<Live>, kick: watch::Sender<Option<u8>>) -> Self {
        Self {
            conn,
            epoch: AtomicU64::new(0),
            live,
            wake: Notify::new(),
            kick,
            group,
            since: std::time::Instant::now(),
            fresh: Mutex::new(Fresh::default()),
        }
    }

    /// Records that the queue of the session this connection owns ends before `next_seq`: at its
    /// `Connect` (the queue so far) and when a snapshot replaces the group's state
    /// ([`Router::restore`]); rows applied in between arrive through [`Router::committed`].
    pub fn queue_ends_at(&self, next_seq: u64) {
        let mut fresh = self.fresh.lock();
        fresh.tail = fresh.tail.max(next_seq);
    }

    fn hand_over(&self, rows: QueueRows, next_seq: u64) {
        let mut fresh = self.fresh.lock();
        fresh.tail = fresh.tail.max(next_seq);
        fresh.rows.extend(rows);
        while fresh.rows.len() > FRESH_ROWS {
            fresh.rows.pop_front();
        }
    }

    /// Up to `limit` handed-over rows that continue the queue at `cursor`, in order; [`Next::Empty`]
    /// when the cursor is at the queue's end, [`Next::Read`] when the row at `cursor` is not in
    /// memory. Rows before the cursor are discarded.
    pub fn next_rows(&self, cursor: u64, limit: usize) -> Next {
        let mut fresh = self.fresh.lock();
        while fresh.rows.front().is_some_and(|(seq, _)| *seq < cursor) {
            fresh.rows.pop_front();
        }
        let mut rows = Vec::new();
        while rows.len() < limit
            && fresh.rows.front().is_some_and(|(seq, _)| *seq == cursor + rows.len() as u64)
        {
            rows.extend(fresh.rows.pop_front());
        }
        if !rows.is_empty() {
            Next::Rows(rows)
        } else if cursor >= fresh.tail {
            Next::Empty
        } else {
            Next::Read
        }
    }
}

/// A receiver on another node: (client, retain flag, subscription ids).
pub type RemoteTarget = (String, bool, Vec<u32>);
/// One QoS 0 message for connections of another node.
pub type RemoteItem = (Message, Vec<RemoteTarget>);
/// QoS 0 messages for connections of another node.
pub type RemoteBatch = Vec<RemoteItem>;
/// Members of one shared group matching a topic.
type ShareMembers<'a> = Vec<(&'a str, &'a ClientRoute, &'a Sub)>;

/// A session's queue as applied here (the queue-depth gauge, the fan-out's back-pressure).
struct QueueFill {
    depth: u64,
    /// When its receiver last acknowledged something (a queue that drains is waited for).
    acked_at: Option<std::time::Instant>,
    /// A receiver that let a fan-out round wait out its patience is not waited for until then.
    slow_until: Option<std::time::Instant>,
}

/// What [`Router::wait_queue_room`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRoom {
    /// Every queue had room.
    Free,
    /// Room came after waiting for acks.
    Waited,
    /// Still full after the patience (those receivers are skipped for a while).
    Slow,
}

/// One partition's fan-out backlog as this node applied it.
struct Backlog {
    /// Outbox messages applied and not yet fanned out.
    len: AtomicU64,
    /// Notified when it shrinks.
    shrank: Notify,
    /// When it last shrank, was loaded, or grew from empty.
    progress: Mutex<std::time::Instant>,
}

impl Default for Backlog {
    fn default() -> Self {
        Self {
            len: AtomicU64::new(0),
            shrank: Notify::new(),
            progress: Mutex::new(std::time::Instant::now()),
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Receivers whose queues grew: client, session owner, next sequence number, appended rows.
    clients: Vec<(String, Owner, u64, QueueRows)>,
    outbox: bool,
}

#[derive(Default)]
struct Index {
    trie: Trie<(Arc<str>, Arc<str>)>,
    clients: HashMap<String, ClientRoute>,
}

/// The node's route view and local connections.
pub struct Router {
    node_id: NodeId,
    index: RwLock<Index>,
    local: Mutex<HashMap<String, Arc<LocalConn>>>,
    outbox: Vec<Notify>,
    /// Per group: messages in its outbox (applied here, not yet fanned out), and a signal when it
    /// shrinks (publishers held back by `mqtt.max_fanout_backlog` wait for it).
    backlog: Vec<Backlog>,
    rr: AtomicUsize,
    /// Queue depth of every session with queue traffic, as applied here, and a signal when a
    /// queue was drained (the fan-out waits for room in draining queues: [`Router::wait_queue_room`]).
    fills: Mutex<HashMap<String, QueueFill>>,
    drained: Notify,
    /// Wake-ups held until the applied writes are readable (`Hooks::committed`).
    pending: Mutex<HashMap<GroupId, Pending>>,
    remote: Mutex<HashMap<NodeId, mpsc::Sender<RemoteItem>>>,
    node: OnceLock<RaftNode>,
    /// Peers' clock offsets, to age messages by the clock that stamped them.
    pub clocks: PeerClocks,
    /// Per group: the index of the last applied command that may have changed routes (u64::MAX:
    /// not known since the state was loaded or replaced).
    route_index: Vec<AtomicU64>,
    /// Metrics.
    pub metrics: MqttMetrics,
}

/// `$share/<group>/<filter>` or `$queue/<filter>`: (share group, filter).
pub fn parse_shared(key: &str) -> Option<(&str, &str)> {
    if let Some(rest) = key.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/')?;
        return Some((group, filter));
    }
    key.strip_prefix("$queue/").map(|f| ("$queue", f))
}

/// The filter a subscription key matches with.
pub fn filter_of(key: &str) -> &str {
    parse_shared(key).map_or(key, |(_, f)| f)
}

impl Router {
    /// An empty view for node `node_id`.
    pub fn new(node_id: NodeId, metrics: MqttMetrics) -> Self {
        Self {
            node_id,
            index: RwLock::new(Index::default()),
            local: Mutex::new(HashMap::new()),
            // one per possible group (partitions are at most 1024, fixed when the cluster is created)
            outbox: (0..=1024).map(|_| Notify::new()).collect(),
            backlog: (0..=1024).map(|_| Backlog::default()).collect(),
            rr: AtomicUsize::new(0),
            fills: Mutex::new(HashMap::new()),
            drained: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            node: OnceLock::new(),
            clocks: PeerClocks::new(node_id, metrics.clock_lead.clone()),
            route_index: (0..=1024).map(|_| AtomicU64::new(u64::MAX)).collect(),
            metrics,
        }
    }

    /// Connects the view to its raft node (for cross-node QoS 0 delivery).
    pub fn set_node(&self, node: RaftNode) {
        let _ = self.node.set(node);
    }

    /// The log index up to which `g` must be applied for this node's route view to hold every
    /// subscription it has applied so far: the last route-changing command, or `applied` when
    /// that is not known (state just loaded).
    pub fn route_index(&self, g: GroupId, applied: u64) -> u64 {
        match self.route_index.get(g as usize).map(|i| i.load(Ordering::Acquire)) {
            Some(u64::MAX) | None => applied,
            Some(i) => i.min(applied),
        }
    }

    /// Notified when `g`'s outbox grew.
    pub fn outbox_signal(&self, g: GroupId) -> Option<&Notify> {
        self.outbox.get(g as usize)
    }

    /// Messages in `g`'s outbox waiting for fan-out, as applied on this node.
    pub fn fanout_backlog(&self, g: GroupId) -> u64 {
        self.backlog.get(g as usize).map_or(0, |b| b.len.load(Ordering::Acquire))
    }

    /// Waits until `g`'s fan-out backlog is below `limit`, at most `patience`; whether it is. A
    /// fan-out that made no progress for `patience` is stuck (no leader for a subscriber's
    /// partition, say): then nobody waits, so publishers are not held for the whole patience.
    pub async fn wait_fanout_room(&self, g: GroupId, limit: u64, patience: std::time::Duration) -> bool {
        let Some(b) = self.backlog.get(g as usize) else { return true };
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let notified = b.shrank.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if b.len.load(Ordering::Acquire) < limit {
                return true;
            }
            if b.progress.lock().elapsed() > patience {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return b.len.load(Ordering::Acquire) < limit;
            }
        }
    }

    /// Subscriber-side back-pressure of the fan-out: waits until each queue in `wants` (client →
    /// messages about to be queued) has room for them under `limit`, at most `patience`. Only
    /// queues that drain are waited for — whose receiver acknowledged within the patience — so an
    /// offline session's queue overflows as configured (oldest dropped, counted) instead of
    /// holding everyone back, and a receiver that let a round wait out the whole patience is not
    /// waited for during the next ten.
    pub async fn wait_queue_room(
        &self,
        wants: &HashMap<&str, u64>,
        limit: u64,
        patience: std::time::Duration,
    ) -> QueueRoom {
        let deadline = std::time::Instant::now() + patience;
        let mut waited = false;
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let now = std::time::Instant::now();
                let mut fills = self.fills.lock();
                let full: Vec<&str> = wants
                    .iter()
                    .filter(|(c, n)| {
                        fills.get(**c).is_some_and(|f| {
                            f.depth + (**n).min(limit) > limit
                                && f.acked_at.is_some_and(|t| t.elapsed() < patience)
                                && f.slow_until.is_none_or(|t| t <= now)
                        })
                    })
                    .map(|(c, _)| *c)
                    .collect();
                if full.is_empty() {
                    return if waited { QueueRoom::Waited } else { QueueRoom::Free };
                }
                if now >= deadline {
                    for c in full {
                        if let Some(f) = fills.get_mut(c) {
                            f.slow_until = Some(now + patience * 10);
                        }
                    }
                    return QueueRoom::Slow;
                }
            }
            waited = true;
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// Registers a local connection; an older local connection of the same client is kicked.
    pub fn register(&self, client: &str, conn: Arc<LocalConn>) {
        if let Some(old) = self.local.lock().insert(client.to_string(), conn) {
            self.metrics.takeovers.inc();
            let _ = old.kick.send(Some(0x8E));
        }
    }

    /// Removes a local connection (if it is still the registered one).
    pub fn unregister(&self, client: &str, conn: u64) {
        let mut local = self.local.lock();
        if local.get(client).is_some_and(|c| c.conn == conn) {
            local.remove(client);
        }
    }

    /// Whether this node holds connection `conn` of `client`.
    pub fn holds(&self, client: &str, conn: u64) -> bool {
        self.local.lock().get(client).is_some_and(|c| c.conn == conn)
    }

    /// Kicks the local connections of partition `g` with `reason` that were established before
    /// `before` (a connection whose `Connect` committed later reached the leader since).
    pub fn kick_group(&self, g: GroupId, reason: u8, before: std::time::Instant) -> usize {
        let local = self.local.lock();
        let mut n = 0;
        for c in local
            .values()
            .filter(|c| c.group == g && c.since < before && c.epoch.load(Ordering::Acquire) != 0)
        {
            if c.kick.send(Some(reason)).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Partitions of the connections this node holds.
    pub fn groups_with_connections(&self) -> std::collections::BTreeSet<GroupId> {
        self.local.lock().values().map(|c| c.group).collect()
    }

    /// Sessions of partition `g`: (client, route).
    pub fn sessions_of(&self, g: GroupId) -> Vec<(String, ClientRoute)> {
        let index = self.index.read();
        index.clients.iter().filter(|(_, r)| r.group == g).map(|(c, r)| (c.clone(), r.clone())).collect()
    }

    /// The route of one client.
    pub fn route_of(&self, client: &str) -> Option<ClientRoute> {
        self.index.read().clients.get(client).cloned()
    }

    /// Receivers of `msg`: one entry per client (overlapping subscriptions merged: highest QoS, every
    /// identifier), one member per shared group.
    pub fn route(&self, msg: &Message) -> Vec<Matched> {
        let index = self.index.read();
        let mut hits = Vec::new();
        index.trie.matches(&msg.topic, &mut hits);
        let mut out: BTreeMap<&str, Matched> = BTreeMap::new();
        let mut shares: BTreeMap<(&str, &str), ShareMembers<'_>> = BTreeMap::new();
        for (client, key) in &hits {
            let Some(route) = index.clients.get(client.as_ref()) else { continue };
            let Some(sub) = route.subs.get(key.as_ref()) else { continue };
            match parse_shared(key) {
                Some(share) => shares.entry(share).or_default().push((client, route, sub)),
                None if sub.no_local && msg.from == client.as_ref() => {}
                None => merge(&mut out, client, route, sub, msg),
            }
        }
        for (_, mut members) in shares {
            members.sort_by_key(|(c, r, _)| (!r.connected, *c));
            let connected = members.iter().filter(|(_, r, _)| r.connected).count();
            let pool = if connected > 0 { connected } else { members.len() };
            let (client, route, sub) = members[self.rr.fetch_add(1, Ordering::Relaxed) % pool];
            merge(&mut out, client, route, sub, msg);
        }
        out.into_values().collect()
    }

    /// Delivers a QoS 0 message now to connected receivers, here or on their node.
    pub fn deliver_live(&self, msg: Message) {
        let matched = self.route(&msg);
        if matched.is_empty() {
            return;
        }
        let msg = Arc::new(msg);
        let mut remote: BTreeMap<NodeId, Vec<RemoteTarget>> = BTreeMap::new();
        for m in matched.into_iter().filter(|m| m.connected) {
            if m.owner.node == self.node_id {
                self.deliver_local(
                    &m.client,
                    Live { msg: msg.clone(), retain: m.retain, sub_ids: m.sub_ids },
                );
            } else {
                remote.entry(m.owner.node).or_default().push((m.client, m.retain, m.sub_ids));
            }
        }
        for (node, targets) in remote {
            self.send_remote(node, (*msg).clone(), targets);
        }
    }

    /// Hands a QoS 0 message to a local connection (dropped and counted when its buffer is full).
    pub fn deliver_local(&self, client: &str, live: Live) {
        let conn = self.local.lock().get(client).cloned();
        match conn {
            Some(c) => {
                if c.live.try_send(live).is_err() {
                    self.metrics.dropped.with_label_values(&["qos0_buffer"]).inc();
                }
            }
            None => self.metrics.dropped.with_label_values(&["no_route"]).inc(),
        }
    }

    fn send_remote(&self, node: NodeId, msg: Message, targets: Vec<RemoteTarget>) {
        let mut remote = self.remote.lock();
        let tx = remote.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(4096);
            if let Some(n) = self.node.get() {
                tokio::spawn(forward_live(n.clone(), node, rx));
            }
            tx
        });
        if tx.try_send((msg, targets)).is_err() {
            self.metrics.dropped.with_label_values(&["qos0_buffer"]).inc();
        }
    }

    fn set_route(&self, group: GroupId, client: &str, s: &Session) {
        self.set_fill(client, s.next_seq - s.head, false);
        let mut index = self.index.write();
        let old = index.clients.remove(client);
        let key_client: Arc<str> = Arc::from(client);
        if let Some(old) = &old {
            for key in old.subs.keys().filter(|k| !s.subs.contains_key(*k)) {
                index.trie.remove(filter_of(key), &(key_client.clone(), Arc::from(key.as_str())));
            }
        }
        for key in s.subs.keys().filter(|k| !old.as_ref().is_some_and(|o| o.subs.contains_key(*k))) {
            index.trie.insert(filter_of(key), (key_client.clone(), Arc::from(key.as_str())));
        }
        let deadline = match (s.will_at_ms, s.expires_at_ms()) {
            (Some(w), Some(e)) => Some(w.min(e)),
            (w, e) => w.or(e),
        };
        let owner_since = match &old {
            Some(o) if o.owner == s.owner => o.owner_since,
            _ => std::time::Instant::now(),
        };
        let route = ClientRoute {
            owner_since,
            group,
            owner: s.owner,
            connected: s.connected,
            subs: s.subs.clone(),
            deadline,
        };
        index.clients.insert(client.to_string(), route);
    }

    fn remove_route(&self, client: &str) {
        self.fills.lock().remove(client);
        let mut index = self.index.write();
        if let Some(old) = index.clients.remove(client) {
            let key_client: Arc<str> = Arc::from(client);
            for key in old.subs.keys() {
                index.trie.remove(filter_of(key), &(key_client.clone(), Arc::from(key.as_str())));
            }
        }
    }

    /// Records `client`'s queue depth; `acked`: its receiver's cursor moved (wakes the fan-out).
    fn set_fill(&self, client: &str, depth: u64, acked: bool) {
        let mut fills = self.fills.lock();
        if !fills.contains_key(client) {
            fills.insert(client.to_string(), QueueFill { depth, acked_at: None, slow_until: None });
        }
        let Some(f) = fills.get_mut(client) else { return };
        f.depth = depth;
        if acked {
            f.acked_at = Some(std::time::Instant::now());
            drop(fills);
            self.drained.notify_waiters();
        }
    }

    /// Messages queued for `clients`, as applied here (the `ironhub_queue_depth` gauge).
    pub fn queued<'a>(&self, clients: impl IntoIterator<Item = &'a str>) -> u64 {
        let fills = self.fills.lock();
        clients.into_iter().filter_map(|c| fills.get(c)).map(|f| f.depth).sum()
    }
}

fn merge<'a>(
    out: &mut BTreeMap<&'a str, Matched>,
    client: &'a str,
    route: &ClientRoute,
    sub: &Sub,
    msg: &Message,
) {
    let qos = msg.qos.min(sub.qos);
    let retain = msg.retain && sub.retain_as_published;
    let m = out.entry(client).or_insert_with(|| Matched {
        client: client.to_string(),
        group: route.group,
        owner: route.owner,
        connected: route.connected,
        qos,
        retain,
        sub_ids: Vec::new(),
    });
    m.qos = m.qos.max(qos);
    m.retain |= retain;
    if let Some(id) = sub.id {
        if !m.sub_ids.contains(&id) {
            m.sub_ids.push(id);
        }
    }
}

/// Sends QoS 0 messages for another node's connections in batches (at most one call in flight).
async fn forward_live(node: RaftNode, target: NodeId, mut rx: mpsc::Receiver<RemoteItem>) {
    let mut batch: RemoteBatch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let body = match codec::encode(&super::AppMessage::Deliver(std::mem::take(&mut batch))) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(node = target, "encoding QoS 0 messages: {e}");
                continue;
            }
        };
        if let Err(e) = node.call_app(target, body.into(), std::time::Duration::from_secs(2)).await {
            tracing::debug!(node = target, "QoS 0 messages not delivered: {e}");
        }
    }
}

impl Hooks for Router {
    fn session_changed(&self, group: GroupId, client: &str, s: &Session) {
        self.set_route(group, client, s);
        // Rule 6: a newer epoch for a client connected here closes the older connection.
        let local = self.local.lock().get(client).cloned();
        if let Some(c) = local {
            let epoch = c.epoch.load(Ordering::Acquire);
            if c.conn != s.owner.conn && epoch != 0 && epoch < s.owner.epoch {
                self.metrics.takeovers.inc();
                let _ = c.kick.send(Some(0x8E));
            }
        }
    }

    fn session_ended(&self, _group: GroupId, client: &str) {
        self.remove_route(client);
    }

    fn queue_depth(&self, _group: GroupId, client: &str, depth: u64, acked: bool) {
        self.set_fill(client, depth, acked);
    }

    fn queue_appended(&self, group: GroupId, client: &str, owner: Owner, next_seq: u64, rows: QueueRows) {
        // Every node applies every partition: rows for sessions owned elsewhere are not kept
        // until the commit (their local connection, if any, is only woken).
        let rows = if owner.node == self.node_id { rows } else { Vec::new() };
        self.pending.lock().entry(group).or_default().clients.push((
            client.to_string(),
            owner,
            next_seq,
            rows,
        ));
    }

    fn routes_changed(&self, group: GroupId, index: u64) {
        if let Some(i) = self.route_index.get(group as usize) {
            i.store(index, Ordering::Release);
        }
    }

    fn outbox_appended(&self, group: GroupId, msg: &Message) {
        self.clocks.observe(msg.node, msg.at_ms);
        if let Some(b) = self.backlog.get(group as usize) {
            if b.len.fetch_add(1, Ordering::AcqRel) == 0 {
                // An idle fan-out is not a stuck one: its clock starts with the first message.
                *b.progress.lock() = std::time::Instant::now();
            }
        }
        self.pending.lock().entry(group).or_default().outbox = true;
    }

    fn outbox_done(&self, group: GroupId, count: u64) {
        if let Some(b) = self.backlog.get(group as usize) {
            let _ =
                b.len.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(count)));
            *b.progress.lock() = std::time::Instant::now();
            b.shrank.notify_waiters();
        }
    }

    fn committed(&self, group: GroupId) {
        let Some(p) = self.pending.lock().remove(&group) else { return };
        if p.outbox {
            if let Some(n) = self.outbox.get(group as usize) {
                n.notify_one();
            }
        }
        if !p.clients.is_empty() {
            let local = self.local.lock();
            for (client, owner, next_seq, rows) in p.clients {
                if let Some(c) = local.get(&client) {
                    // Only to the connection that owns the session (node and connection ids are
                    // unique; epochs are not: they restart at 1 when a session is deleted), never
                    // rows of an earlier session with the same client id.
                    if owner.node == self.node_id && owner.conn == c.conn {
                        c.hand_over(rows, next_seq);
                    }
                    c.wake.notify_one();
                }
            }
        }
    }

    fn queue_dropped(&self, count: u64) {
        self.metrics.dropped.with_label_values(&["queue_full"]).inc_by(count);
    }

    fn restore(&self, group: GroupId, state: &StateView<'_>) -> Result<(), StorageError> {
        if let Some(i) = self.route_index.get(group as usize) {
            i.store(u64::MAX, Ordering::Release);
        }
        let stale: Vec<String> = self
            .index
            .read()
            .clients
            .iter()
            .filter(|(_, r)| r.group == group)
            .map(|(c, _)| c.clone())
            .collect();
        for c in stale {
            self.remove_route(&c);
        }
        if let Some(b) = self.backlog.get(group as usize) {
            // Counted in pages: a large backlog (a long-unreachable subscriber partition) is never
            // read into memory at once.
            let (mut rows, mut from) = (0u64, OUTBOX.0.to_vec());
            loop {
                let page = state.scan(&from, OUTBOX.1, 1024)?;
                let Some((last, _)) = page.last() else { break };
                rows += page.len() as u64;
                from = [last.as_slice(), &[0]].concat();
            }
            b.len.store(rows, Ordering::Release);
            *b.progress.lock() = std::time::Instant::now();
            b.shrank.notify_waiters();
        }
        for (key, value) in state.scan(SESSIONS.0, SESSIONS.1, usize::MAX)? {
            let client = String::from_utf8_lossy(&key[SESSIONS.0.len()..]).into_owned();
            let s: Session = codec::decode(&value, "session")?;
            self.set_route(group, &client, &s);
            // An installed snapshot may hold Enqueues this node never applied (no hook saw them):
            // the queue of a connection held here ends where the snapshot says, and it looks.
            if let Some(c) = self.local.lock().get(&client) {
                if s.owner.node == self.node_id && s.owner.conn == c.conn {
                    c.queue_ends_at(s.next_seq);
                }
                c.wake.notify_one();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::session::Props;
    use futures::FutureExt;
    use std::collections::BTreeSet;

    fn session(node: NodeId, connected: bool, subs: &[(&str, u8)]) -> Session {
        Session {
            owner: Owner { node, conn: 1, epoch: 1 },
            connected,
            expiry_s: 60,
            disconnected_at_ms: 0,
            subs: subs
                .iter()
                .map(|(f, q)| {
                    let sub = Sub {
                        qos: *q,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                        id: None,
                    };
                    (f.to_string(), sub)
                })
                .collect(),
            will: None,
            will_at_ms: None,
            next_seq: 0,
            head: 0,
            sent_upto: 0,
            rel: BTreeSet::new(),
            awaiting_rel: BTreeSet::new(),
            last_from: BTreeMap::new(),
            dropped: 0,
        }
    }

    fn msg(topic: &str, qos: u8) -> Message {
        Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos,
            retain: false,
            props: Props::default(),
            at_ms: 0,
            node: 0,
            from: "pub".into(),
        }
    }

    #[test]
    fn overlapping_subscriptions_merge_and_qos_downgrades() {
        let r = Router::new(1, MqttMetrics::unregistered());
        r.session_changed(1, "a", &session(1, true, &[("t/+", 0), ("t/#", 1)]));
        r.session_changed(2, "b", &session(2, false, &[("t/x", 2)]));
        let mut got = r.route(&msg("t/x", 2));
        got.sort_by(|x, y| x.client.cmp(&y.client));
        assert_eq!(got.iter().map(|m| (m.client.as_str(), m.qos)).collect::<Vec<_>>(), [("a", 1), ("b", 2)]);
        assert_eq!(r.route(&msg("t/x", 0)).iter().map(|m| m.qos).max(), Some(0));
        // an unsubscribe (session changed without the filter) removes the route
        r.session_changed(2, "b", &session(2, false, &[]));
        assert_eq!(r.route(&msg("t/x", 1)).len(), 1);
        r.session_ended(1, "a");
        assert!(r.route(&msg("t/x", 1)).is_empty());
    }

    #[test]
    fn a_shared_group_gets_each_message_once_preferring_connected_members() {
        let r = Router::new(1, MqttMetrics::unregistered());
        r.session_changed(1, "m1", &session(1, true, &[("$share/g/s/+", 1)]));
        r.session_changed(1, "m2", &session(1, true, &[("$share/g/s/+", 1)]));
        r.session_changed(1, "m3", &session(1, false, &[("$share/g/s/+", 1)]));
        r.session_changed(1, "plain", &session(1, true, &[("s/+", 1)]));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..10 {
            let got = r.route(&msg("s/1", 1));
            assert_eq!(got.len(), 2, "one member of the group and the plain subscriber");
            for m in got {
                *counts.entry(m.client).or_default() += 1;
            }
        }
        assert_eq!(counts.get("plain"), Some(&10));
        assert_eq!(counts.get("m1"), Some(&5));
        assert_eq!(counts.get("m2"), Some(&5));
        assert_eq!(counts.get("m3"), None, "offline member skipped while others are connected");
    }

    /// The fan-out backlog of a partition as the hooks report it, and publishers waiting on it.
    #[tokio::test]
    async fn publishers_wait_for_fanout_room_until_the_backlog_shrinks() {
        let r = Arc::new(Router::new(1, MqttMetrics::unregistered()));
        for _ in 0..3 {
            r.outbox_appended(5, &msg("t", 1));
        }
        assert_eq!((r.fanout_backlog(5), r.fanout_backlog(6)), (3, 0));
        let short = std::time::Duration::from_millis(30);
        assert!(!r.wait_fanout_room(5, 3, short).await, "full: the wait times out");
        assert!(r.wait_fanout_room(5, 4, short).await, "below the limit: no wait");
        let r2 = r.clone();
        let waiter =
            tokio::spawn(async move { r2.wait_fanout_room(5, 3, std::time::Duration::from_secs(5)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still full");
        r.outbox_done(5, 2);
        assert!(waiter.await.expect("waiter"), "room after the fan-out");
        r.outbox_done(5, 9);
        assert_eq!(r.fanout_backlog(5), 0, "never below zero");
        // A fan-out that has not moved for longer than the patience is stuck: nobody waits.
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        r.outbox_appended(7, &msg("t", 1));
        let t0 = std::time::Instant::now();
        assert!(!r.wait_fanout_room(7, 1, short).await);
        assert!(t0.elapsed() >= short, "a fresh backlog is waited for, though the fan-out was idle long");
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        let t0 = std::time::Instant::now();
        assert!(!r.wait_fanout_room(7, 1, short).await);
        assert!(t0.elapsed() < short, "returned at once");
    }

    /// The fan-out's subscriber-side back-pressure: draining queues are waited for, others not.
    #[tokio::test]
    async fn fanout_waits_for_room_in_draining_queues_only() {
        let r = Arc::new(Router::new(1, MqttMetrics::unregistered()));
        let short = std::time::Duration::from_millis(30);
        let wants = |c: &'static str, n: u64| HashMap::from([(c, n)]);
        // Unknown queue, and a full queue whose receiver never acknowledged (offline): no wait.
        assert_eq!(r.wait_queue_room(&wants("new", 5), 10, short).await, QueueRoom::Free);
        r.queue_depth(1, "offline", 10, false);
        let offline = r.wait_queue_room(&wants("offline", 5), 10, short).await;
        assert_eq!(offline, QueueRoom::Free, "an offline queue overflows as configured");
        // A draining queue with room: no wait; without room: waits until its receiver acks.
        r.queue_depth(1, "busy", 5, true);
        assert_eq!(r.wait_queue_room(&wants("busy", 5), 10, short).await, QueueRoom::Free);
        r.queue_depth(1, "busy", 8, false);
        let (r2, long) = (r.clone(), std::time::Duration::from_secs(5));
        let waiter = tokio::spawn(async move { r2.wait_queue_room(&wants("busy", 5), 10, long).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "8 + 5 > 10: waits");
        r.queue_depth(1, "busy", 6, true);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "6 + 5 > 10: still waits");
        r.queue_depth(1, "busy", 2, true);
        assert_eq!(waiter.await.expect("waiter"), QueueRoom::Waited, "room after the acks");
        // More than the limit at once waits only for an empty queue.
        r.queue_depth(1, "busy", 0, true);
        assert_eq!(r.wait_queue_room(&wants("busy", 50), 10, short).await, QueueRoom::Free);
        // A receiver that lets a round wait out its patience is not waited for a while.
        r.queue_depth(1, "slow", 10, true);
        let r2 = r.clone();
        let acking = tokio::spawn(async move {
            for _ in 0..10 {
                r2.queue_depth(1, "slow", 10, true); // acks, yet the queue stays full
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        assert_eq!(r.wait_queue_room(&wants("slow", 1), 10, short).await, QueueRoom::Slow, "waited out");
        acking.await.expect("acking");
        r.queue_depth(1, "slow", 10, true);
        let skipped = r.wait_queue_room(&wants("slow", 1), 10, short).await;
        assert_eq!(skipped, QueueRoom::Free, "a slow receiver is skipped");
        // A session that ended is forgotten.
        r.session_ended(1, "busy");
        assert!(r.fills.lock().get("busy").is_none());
    }

    /// The queue-depth gauge follows enqueues and acks, and a session loaded or changed.
    #[test]
    fn queued_follows_enqueues_acks_and_session_changes() {
        let r = Router::new(1, MqttMetrics::unregistered());
        let mut s = session(1, false, &[("t", 1)]);
        (s.head, s.next_seq) = (4, 9);
        r.session_changed(1, "a", &s);
        assert_eq!(r.queued(["a"]), 5, "a stored queue counts before any traffic");
        r.queue_depth(1, "a", 7, false);
        r.queue_depth(1, "b", 2, false);
        assert_eq!(r.queued(["a", "b", "nobody"]), 9);
        r.queue_depth(1, "a", 0, true);
        assert_eq!(r.queued(["a", "b"]), 2);
        r.session_ended(1, "b");
        assert_eq!(r.queued(["b"]), 0);
    }

    /// Connection `conn` of client `client` in partition 1, registered with `r`.
    fn local_conn(r: &Router, client: &str, conn: u64) -> Arc<LocalConn> {
        let (live, _) = mpsc::channel(1);
        let (kick, _) = watch::channel(None);
        let c = Arc::new(LocalConn::new(conn, 1, live, kick));
        r.register(client, c.clone());
        c
    }

    #[test]
    fn committed_rows_reach_the_owning_connection_and_continue_its_cursor_only() {
        let r = Router::new(1, MqttMetrics::unregistered());
        let c = local_conn(&r, "a", 7);
        let q = |seq: u64| (seq, Queued { msg: msg("t", 1), qos: 1, retain: false, sub_ids: vec![] });
        let seqs = |next: Next| match next {
            Next::Rows(rows) => Some(rows.into_iter().map(|(s, _)| s).collect::<Vec<_>>()),
            other => {
                assert_eq!(other, Next::Read);
                None
            }
        };
        let mine = Owner { node: 1, conn: 7, epoch: 2 };
        // The Connect applied with rows 0..5 queued: they are read.
        c.queue_ends_at(5);
        assert_eq!(c.next_rows(0, 10), Next::Read);
        assert_eq!(c.next_rows(5, 10), Next::Empty, "at the end: nothing to read");
        // Not handed over (nor the end moved) before the group's writes are committed.
        r.queue_appended(1, "a", mine, 8, vec![q(5), q(6), q(7)]);
        r.queue_appended(1, "other", mine, 1, vec![q(0)]);
        assert_eq!(c.next_rows(5, 10), Next::Empty);
        r.committed(1);
        // A cursor behind the first row reads the queue instead; the rows stay.
        assert_eq!(seqs(c.next_rows(4, 10)), None);
        assert_eq!(seqs(c.next_rows(5, 2)), Some(vec![5, 6]), "at most the limit, in order");
        assert_eq!(seqs(c.next_rows(7, 10)), Some(vec![7]));
        assert_eq!(c.next_rows(8, 10), Next::Empty);
        // Never rows (nor the queue end) of a session another connection owns: epochs restart
        // when a session is deleted, so an earlier clean session's rows could carry this
        // connection's epoch.
        r.queue_appended(1, "a", Owner { conn: 6, ..mine }, 9, vec![q(8)]);
        r.queue_appended(1, "a", Owner { node: 2, ..mine }, 9, vec![q(8)]);
        r.committed(1);
        assert_eq!(c.next_rows(8, 10), Next::Empty, "not handed over");
        // A gap (rows that were dropped, or taken and not sent) reads the queue.
        r.queue_appended(1, "a", mine, 11, vec![q(10)]);
        r.committed(1);
        assert_eq!(seqs(c.next_rows(8, 10)), None);
        // Bounded: the oldest rows go first.
        r.queue_appended(1, "a", mine, FRESH_ROWS as u64 + 10, (0..FRESH_ROWS as u64 + 10).map(q).collect());
        r.committed(1);
        assert_eq!(c.fresh.lock().rows.len(), FRESH_ROWS);
        assert_eq!(seqs(c.next_rows(0, 1)), None);
        assert_eq!(seqs(c.next_rows(10, 1)), Some(vec![10]));
        // A retried fan-out appends nothing; the end never moves back.
        r.queue_appended(1, "a", mine, 3, vec![]);
        r.committed(1);
        assert_eq!(c.next_rows(FRESH_ROWS as u64 + 9, 1), Next::Rows(vec![q(FRESH_ROWS as u64 + 9)]));
        assert_eq!(c.next_rows(FRESH_ROWS as u64 + 10, 1), Next::Empty);
    }

    #[test]
    fn a_snapshot_install_moves_the_queue_end_of_the_connections_held_here() {
        let r = Router::new(1, MqttMetrics::unregistered());
        let c = local_conn(&r, "a", 7);
        c.queue_ends_at(2);
        assert_eq!(c.next_rows(2, 10), Next::Empty);
        // The installed state has rows 2..5 that no Enqueue applied here announced.
        let engine = ironhub_storage::MemEngine::new();
        let mut s = session(1, true, &[("t", 1)]);
        s.owner.conn = 7;
        s.next_seq = 5;
        let mut txn = ironhub_raft::StateTxn::for_test(&engine, 1);
        txn.put(&crate::state::session::session_key("a"), &codec::encode(&s).expect("encode"));
        txn.commit_for_test().expect("commit");
        r.restore(1, &StateView::for_test(&engine, 1)).expect("restore");
        assert_eq!(c.next_rows(2, 10), Next::Read, "the connection reads the rows the snapshot brought");
        assert!(c.wake.notified().now_or_never().is_some(), "and is woken to do so");
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let r = Router::new(1, MqttMetrics::unregistered());
        let mut s = session(1, true, &[("t", 1)]);
        if let Some(sub) = s.subs.get_mut("t") {
            sub.no_local = true;
        }
        r.session_changed(1, "pub", &s);
        assert!(r.route(&msg("t", 1)).is_empty());
    }
}
