//! Work of a partition's leader: fan-out of its outbox, will-delay and session-expiry timers, the
//! session audit (connections whose node lost them), and one node-wide watchdog (rule 7).
//!
//! A supervisor looks at leadership every 100 ms and runs these loops for exactly the partitions
//! this node leads; a leader change cancels them, and the new leader resumes from the stored
//! cursor (`od`), so a message is enqueued at least once and, by the per-source cursor in each
//! session, never twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ironhub_raft::{GroupId, NodeId, Proposal, ProposeError};
use ironhub_storage::codec as wire;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::router::QueueRoom;
use super::{now_ms, AppMessage, AuditReply, Broker};
use crate::state::session::{
    outbox_id, outbox_key, EnqueueItem, Message, MsgId, Owner, SessionCommand, Target, OUTBOX_DONE,
};
use crate::state::{Command, Response};

/// Messages fanned out per round.
const ROUND: usize = 128;
/// How long a fan-out round waits for room in its receivers' queues.
const QUEUE_PATIENCE: Duration = Duration::from_secs(1);
/// How often the timers and the audit run.
const TICK: Duration = Duration::from_secs(1);
/// Audit rounds a node may miss before its sessions are considered lost.
const AUDIT_MISSES: u32 = 3;

/// Starts the supervisor and the watchdog; both stop with the broker.
pub fn spawn(b: Arc<Broker>) {
    let b2 = b.clone();
    b.tasks.spawn(async move { supervise(b2).await });
    let b3 = b.clone();
    b.tasks.spawn(async move { watchdog(b3).await });
}

async fn supervise(b: Arc<Broker>) {
    let mut running: HashMap<GroupId, CancellationToken> = HashMap::new();
    let me = b.node_id();
    loop {
        for g in 1..=b.node.partitions() {
            let leads = b.node.leader(g) == Some(me);
            match (leads, running.contains_key(&g)) {
                (true, false) => {
                    let token = b.shutdown.child_token();
                    running.insert(g, token.clone());
                    let (b1, t1) = (b.clone(), token.clone());
                    b.tasks.spawn(async move { outbox_loop(b1, g, t1).await });
                    let (b2, t2) = (b.clone(), token);
                    b.tasks.spawn(async move { timer_loop(b2, g, t2).await });
                }
                (false, true) => {
                    if let Some(t) = running.remove(&g) {
                        t.cancel();
                    }
                    b.router.metrics.queue_depth.with_label_values(&[&g.to_string()]).set(0);
                    b.router.metrics.outbox_depth.with_label_values(&[&g.to_string()]).set(0);
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = b.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Proposes until it is applied, the leadership is lost, or the loop is cancelled.
async fn propose_until(
    b: &Broker,
    g: GroupId,
    cmd: &Command,
    cancel: &CancellationToken,
) -> Option<Response> {
    let bytes = cmd.encode().ok()?;
    loop {
        match b.node.propose(g, Proposal::app(bytes.clone())).await {
            Ok(raw) => return wire::decode(&raw, "command response").ok(),
            Err(ProposeError::ShuttingDown) => return None,
            Err(e) => tracing::debug!(group = g, "fan-out proposal retried: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// A fan-out round whose `Enqueue`s are in flight: its last message and its oldest publish time.
struct Round {
    enqueued: tokio::task::JoinHandle<bool>,
    last: MsgId,
    oldest_ms: u64,
}

/// Fans out `g`'s outbox in rounds. Rounds overlap: while one round's `Enqueue`s commit, the next
/// round is read and its route barrier taken; its `Enqueue`s are proposed only after the previous
/// round's committed (each target partition must see one source's messages in id order), and the
/// `OutboxDone` cursor is committed in the background, coalesced ([`commit_done`]).
async fn outbox_loop(b: Arc<Broker>, g: GroupId, cancel: CancellationToken) {
    let Some(signal) = b.router.outbox_signal(g) else { return };
    let partitions: Vec<GroupId> = (1..=b.node.partitions()).collect();
    let label = g.to_string();
    // The last message handed to a round; `None`: start after the stored cursor.
    let mut handed: Option<MsgId> = None;
    let mut inflight: Option<Round> = None;
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    b.tasks.spawn(commit_done(b.clone(), g, done_rx, cancel.clone()));
    loop {
        // Everything applied on this node (the leader) up to now.
        let rows = b.node.with_state_now(g, |v| {
            let after: Option<MsgId> = match handed {
                Some(id) => Some(id),
                None => v.get(OUTBOX_DONE)?.map(|raw| wire::decode(&raw, "outbox cursor")).transpose()?,
            };
            let from = after.map_or(outbox_key((0, 0)), |(i, s)| outbox_key((i, s + 1)));
            v.scan(&from, &outbox_key((u64::MAX, u32::MAX)), ROUND)
        });
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(group = g, "reading the outbox: {e}");
                Vec::new()
            }
        };
        b.router.metrics.outbox_depth.with_label_values(&[&label]).set(rows.len() as i64);
        if rows.is_empty() {
            if let Some(round) = inflight.take() {
                if !finish(&b, round, &done_tx).await {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = signal.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        // Route barrier: every subscription committed before these messages is in the local view.
        let started = Instant::now();
        let barrier = route_barrier(&b, &partitions).await;
        b.router.metrics.fanout_step.with_label_values(&["barrier"]).observe(started.elapsed().as_secs_f64());
        if let Err(e) = barrier {
            tracing::debug!(group = g, "route barrier: {e}");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            }
        }
        let mut per_partition: BTreeMap<GroupId, Vec<EnqueueItem>> = BTreeMap::new();
        let mut last = (0, 0);
        let mut oldest_ms = u64::MAX;
        for (key, value) in rows {
            let id = outbox_id(&key);
            last = id;
            let msg: Message = match wire::decode(&value, "outbox message") {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(group = g, ?id, "undecodable outbox message skipped: {e}");
                    continue;
                }
            };
            oldest_ms = oldest_ms.min(msg.at_ms);
            let mut targets: BTreeMap<GroupId, Vec<Target>> = BTreeMap::new();
            for m in b.router.route(&msg) {
                let t = Target { client: m.client, qos: m.qos, retain: m.retain, sub_ids: m.sub_ids };
                targets.entry(m.group).or_default().push(t);
            }
            for (p, targets) in targets {
                per_partition.entry(p).or_default().push(EnqueueItem { id, msg: msg.clone(), targets });
            }
        }
        if let Some(round) = inflight.take() {
            if !finish(&b, round, &done_tx).await {
                return;
            }
        }
        let limit = b.cfg.max_queue;
        // Subscriber-side back-pressure: a connected receiver's queue that would overflow waits
        // for its acks (the outbox backlog grows meanwhile, and holds the publishers back).
        let mut wants: HashMap<&str, u64> = HashMap::new();
        for t in per_partition.values().flatten().flat_map(|i| &i.targets) {
            *wants.entry(t.client.as_str()).or_default() += 1;
        }
        let outcome = match b.router.wait_queue_room(&wants, u64::from(limit), QUEUE_PATIENCE).await {
            QueueRoom::Free => None,
            QueueRoom::Waited => Some("round_waited"),
            QueueRoom::Slow => Some("round_slow"),
        };
        if let Some(outcome) = outcome {
            b.router.metrics.fanout_held.with_label_values(&[outcome]).inc();
        }
        drop(wants);
        let enqueues = per_partition.into_iter().map(|(p, items)| {
            let cmd = Command::Session(SessionCommand::Enqueue { source: g, items, limit });
            let (b, cancel) = (b.clone(), cancel.clone());
            async move { propose_until(&b, p, &cmd, &cancel).await.is_some() }
        });
        let enqueues = join_all(enqueues);
        let step = b.router.metrics.fanout_step.with_label_values(&["enqueue"]);
        let enqueued = b.tasks.spawn(async move {
            let started = Instant::now();
            let ok = enqueues.await.into_iter().all(|ok| ok);
            step.observe(started.elapsed().as_secs_f64());
            ok
        });
        inflight = Some(Round { enqueued, last, oldest_ms });
        handed = Some(last);
    }
}

/// Route barrier: once it returns, every subscription committed before it started is in this
/// node's route view. Partitions this node leads take a local read barrier. For the others, one
/// message per leader: the leader takes its read barrier and answers with the index of its last
/// applied route-changing command in each (`Router::route_index`), and this node waits to have
/// applied that far — usually already done. Waiting for the leader's newest commit index instead
/// would cost up to a heartbeat per round, since a follower learns it with the next append.
async fn route_barrier(b: &Broker, partitions: &[GroupId]) -> Result<(), String> {
    let me = b.node_id();
    let mut remote: BTreeMap<NodeId, Vec<GroupId>> = BTreeMap::new();
    let mut local = Vec::new();
    for p in partitions {
        match b.node.leader(*p) {
            Some(l) if l != me => remote.entry(l).or_default().push(*p),
            _ => local.push(*p),
        }
    }
    let local = join_all(local.iter().map(|p| b.node.read_barrier(*p)));
    let remote = join_all(remote.into_iter().map(|(node, groups)| async move {
        let body = wire::encode(&AppMessage::RouteBarrier(groups.clone())).map_err(|e| e.to_string())?;
        let reply = b.node.call_app(node, body.into(), Duration::from_secs(5)).await?;
        let current: Vec<Option<u64>> =
            wire::decode(&reply, "route barrier reply").map_err(|e| e.to_string())?;
        if current.len() != groups.len() {
            return Err(format!("node {node} answered {} of {} groups", current.len(), groups.len()));
        }
        for (g, index) in groups.iter().zip(current) {
            let index = index.ok_or_else(|| format!("node {node}: no read barrier for group {g}"))?;
            b.node.wait_applied(*g, index).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }));
    let (local, remote) = futures::future::join(local, remote).await;
    local.into_iter().try_for_each(|r| r.map_err(|e| e.to_string()))?;
    remote.into_iter().collect()
}

/// Waits for a round's `Enqueue`s, then hands its last message to the `OutboxDone` committer. False
/// when the round was cancelled (leadership lost: the next leader resumes from the stored cursor).
async fn finish(b: &Arc<Broker>, round: Round, done: &tokio::sync::watch::Sender<Option<MsgId>>) -> bool {
    if !round.enqueued.await.unwrap_or(false) {
        return false;
    }
    if round.oldest_ms != u64::MAX {
        b.router.metrics.fanout_lag.observe(now_ms().saturating_sub(round.oldest_ms) as f64 / 1000.0);
    }
    done.send_replace(Some(round.last));
    true
}

/// Commits the `OutboxDone` cursor of `g`: one proposal at a time, always the latest finished round
/// (rounds finished meanwhile collapse into one). A cursor behind only costs re-enqueues after a
/// leader change, which `Enqueue` ignores.
async fn commit_done(
    b: Arc<Broker>,
    g: GroupId,
    mut done: tokio::sync::watch::Receiver<Option<MsgId>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = done.changed() => if changed.is_err() { return },
        }
        let Some(upto) = *done.borrow_and_update() else { continue };
        let cmd = Command::Session(SessionCommand::OutboxDone { upto });
        if propose_until(&b, g, &cmd, &cancel).await.is_none() {
            return;
        }
    }
}

async fn timer_loop(b: Arc<Broker>, g: GroupId, cancel: CancellationToken) {
    let me = b.node_id();
    let label = g.to_string();
    let mut misses: HashMap<NodeId, u32> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = now_ms();
        let sessions = b.router.sessions_of(g);
        let depth = b.router.queued(sessions.iter().map(|(c, _)| c.as_str()));
        b.router.metrics.queue_depth.with_label_values(&[&label]).set(depth as i64);
        // Due will delays and session expiries.
        for (client, r) in &sessions {
            if !r.connected && r.deadline.is_some_and(|d| d <= now) {
                let cmd = Command::Session(SessionCommand::Tick {
                    client: client.clone(),
                    epoch: r.owner.epoch,
                    at_ms: now,
                });
                if propose_until(&b, g, &cmd, &cancel).await.is_none() {
                    return;
                }
            }
        }
        // Session audit: connected sessions whose connection no longer exists end (their will fires).
        let mut by_node: BTreeMap<NodeId, Vec<(String, Owner)>> = BTreeMap::new();
        // An owner that connected within the last two ticks may not be registered where the audit
        // looks yet (a takeover on the same node): leave it to the next round.
        let settled = |r: &super::router::ClientRoute| r.owner_since.elapsed() > TICK * 2;
        for (client, r) in sessions.into_iter().filter(|(_, r)| r.connected && settled(r)) {
            by_node.entry(r.owner.node).or_default().push((client, r.owner));
        }
        for (node, conns) in by_node {
            let gone: Vec<(String, Owner)> = if node == me {
                conns.into_iter().filter(|(c, o)| !b.router.holds(c, o.conn)).collect()
            } else {
                match audit(&b, node, &conns).await {
                    Some(gone) => {
                        misses.remove(&node);
                        conns.into_iter().filter(|(c, _)| gone.contains(c)).collect()
                    }
                    None => {
                        let m = misses.entry(node).or_default();
                        *m += 1;
                        if *m < AUDIT_MISSES {
                            continue;
                        }
                        tracing::info!(
                            group = g,
                            node,
                            "node unreachable: ending its {} sessions",
                            conns.len()
                        );
                        conns
                    }
                }
            };
            for (client, owner) in gone {
                let cmd = Command::Session(SessionCommand::Disconnect {
                    client,
                    owner,
                    fire_will: true,
                    expiry_s: None,
                    at_ms: now_ms(),
                });
                if propose_until(&b, g, &cmd, &cancel).await.is_none() {
                    return;
                }
            }
        }
    }
}

/// Asks `node` which of `conns` it no longer holds; `None` when it does not answer.
async fn audit(b: &Broker, node: NodeId, conns: &[(String, Owner)]) -> Option<Vec<String>> {
    let list = conns.iter().map(|(c, o)| (c.clone(), o.conn)).collect();
    let body = wire::encode(&AppMessage::Audit(list)).ok()?;
    let reply = b.node.call_app(node, body.into(), Duration::from_secs(2)).await.ok()?;
    let r: AuditReply = wire::decode(&reply, "audit reply").ok()?;
    Some(r.gone)
}

/// Rule 7: a node that cannot reach a partition's leader for longer than the election timeout
/// closes that partition's connections (MQTT 5: 0x9C use another server), so no session lives on
/// the minority side of a network partition. Reachability is proven by a linearizable read barrier
/// (a quorum answered the leader), every 500 ms, for the partitions that have connections here.
async fn watchdog(b: Arc<Broker>) {
    let limit = b.node.election_timeout();
    let mut last_ok: HashMap<GroupId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = b.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let groups = b.router.groups_with_connections();
        let node = &b.node;
        let checks = groups.iter().map(|g| async move {
            let ok = matches!(tokio::time::timeout(limit, node.read_barrier(*g)).await, Ok(Ok(())));
            (*g, ok)
        });
        let now = Instant::now();
        for (g, ok) in join_all(checks).await {
            let since = last_ok.entry(g).or_insert(now);
            if ok {
                *since = Instant::now();
            } else if since.elapsed() > limit {
                let n = b.router.kick_group(g, 0x9C, (*since).into_std());
                if n > 0 {
                    tracing::warn!(
                        group = g,
                        clients = n,
                        "partition leader unreachable: closed its connections here"
                    );
                }
            }
        }
        last_ok.retain(|g, _| groups.contains(g));
    }
}
