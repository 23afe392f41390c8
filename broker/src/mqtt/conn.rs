//! One MQTT connection over any byte stream (TCP, TLS, WebSocket, QUIC stream).
//!
//! After CONNECT (whose `Connect` command makes this connection the session's owner), one task
//! runs a loop over: packets from the client, QoS 0 messages for it, its queue growing, proposals
//! completing, a takeover kick and the keepalive deadline. Client requests are answered in the order
//! they arrived (one ordered pipeline of proposals). Outbound QoS 1/2 messages come from the
//! replicated queue; their packet id is derived from the queue sequence (`seq % 32767 + 1`), so a
//! redelivery after failover uses the same id, and acknowledgements travel back as a cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use ironhub_raft::{partition_of, GroupId, Proposal, ProposeError};
use ironhub_storage::codec as wire;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::Instrument;

use super::codec::{self, v5, Packet, Protocol, QoS};
use super::metrics::{packet_index, Dir, PACKET_TYPES};
use super::router::{parse_shared, Live, LocalConn, Next};
use super::{now_ms, proto, Broker};
use crate::state::session::{
    queue_key, queue_seq, Message, Owner, Props, QueueRows, Queued, SessionCommand, Sub, Will,
};
use crate::state::{retained_key, Command, Response, Retained, RETAINED};

/// Least time between two stored ack cursors of one connection (DESIGN: acks as cursors)...
const ACK_INTERVAL: Duration = Duration::from_millis(20);
/// ...unless this many acks are waiting: messages stay in the session's queue (and count against
/// `mqtt.max_queue`) until the cursor passing them is stored, so a busy subscriber's cursor must
/// not fall far behind what it acknowledged.
const ACK_BATCH: u64 = 32;

/// Bytes of ready output (acks, QoS 0 messages) gathered into one write before flushing.
const COALESCE_BYTES: usize = 64 * 1024;

/// How long a QoS >= 1 PUBLISH waits for room in its partition's fan-out backlog.
const FANOUT_PATIENCE: Duration = Duration::from_secs(3);

/// First packet id of retained-message deliveries (not from the queue).
const TRANSIENT_PKID: u16 = 32768;

/// Packet id of queue entry `seq`.
pub fn pkid_of(seq: u64) -> u16 {
    (seq % 32767) as u16 + 1
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT (`will`: 0x04, publish the will anyway).
    Client { will: bool, expiry_s: Option<u32> },
    /// The connection broke or timed out: the will fires.
    Lost(&'static str),
    /// We close it with a v5 reason code; the will fires unless `quiet`.
    Server { code: u8, what: String, taken_over: bool },
}

fn violation(code: u8, what: impl Into<String>) -> End {
    End::Server { code, what: what.into(), taken_over: false }
}

/// Outcome of a request in the ordered pipeline.
enum Reply {
    Packet(v5::Packet),
    SubAck(v5::Packet, Vec<(String, Sub)>, Vec<bool>),
    End(End),
}

/// One outbound message in flight.
struct Flight {
    pkid: u16,
    qos: u8,
    released: bool,
}

/// A stored ack cursor: the PUBREC'd sequences it carried, and the outcome.
type AckFuture = BoxFuture<'static, (Vec<u64>, Result<Response, ProposeError>)>;

struct Conn<W> {
    b: Arc<Broker>,
    writer: W,
    out: BytesMut,
    protocol: Protocol,
    client: String,
    group: GroupId,
    owner: Owner,
    problem_info: bool,
    expiry_s: u32,
    // inbound
    aliases_in: HashMap<u16, String>,
    inbound_pending: usize,
    lane: Arc<Lane>,
    tickets: u64,
    /// This connection's place among the node's `max_connections` (taken on CONNECT).
    _slot: Option<super::Slot>,
    // outbound
    quota: usize,
    max_out: usize,
    aliases_out: HashMap<String, u16>,
    alias_out_max: u16,
    cursor: u64,
    inflight: BTreeMap<u64, Flight>,
    by_pkid: HashMap<u16, u64>,
    done: BTreeSet<u64>,
    head: u64,
    acked_head: u64,
    sent_upto: u64,
    acked_sent: u64,
    dup_below: u64,
    rel_pending: Vec<u64>,
    ack_in_flight: bool,
    /// Cuts the wait between two cursor updates short once [`ACK_BATCH`] acks are pending.
    ack_urgent: Arc<Notify>,
    retained_out: VecDeque<(Arc<Message>, u8, Vec<u32>)>,
    transient: HashMap<u16, u8>,
    next_transient: u16,
    resend_rel: bool,
    /// This connection in the router (once CONNECT was accepted).
    local: Option<Arc<LocalConn>>,
}

/// Serves one connection until it ends.
pub async fn serve<S>(b: Arc<Broker>, stream: S, peer: SocketAddr, listener: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(4096);
    let max = b.cfg.max_packet_size as usize;
    let first = tokio::time::timeout(Duration::from_secs(b.cfg.connect_timeout_s), async {
        loop {
            match codec::read(&mut buf, Protocol::V4, max) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(format!("{e:?}")),
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => return Err("closed before CONNECT".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let connect = match first {
        Ok(Ok(Packet::V4(v4))) => proto::lift(v4),
        Ok(Ok(Packet::V5(p))) => p,
        Ok(Err(e)) => {
            b.router.metrics.connects.with_label_values(&["malformed"]).inc();
            tracing::debug!(%peer, listener, "bad first packet: {e}");
            return;
        }
        Err(_) => {
            b.router.metrics.connects.with_label_values(&["timeout"]).inc();
            return;
        }
    };
    let v5::Packet::Connect(connect) = connect else {
        b.router.metrics.connects.with_label_values(&["not_connect"]).inc();
        return;
    };
    let protocol = connect.protocol;
    let span = tracing::info_span!("mqtt", client = %connect.client_id, %peer, listener);
    run(b, reader, writer, buf, connect, protocol).instrument(span).await;
}

async fn run<R, W>(
    b: Arc<Broker>,
    mut reader: R,
    writer: W,
    mut buf: BytesMut,
    connect: v5::Connect,
    protocol: Protocol,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let conn_id = b.next_conn_id();
    let mut c = Conn {
        b: b.clone(),
        writer,
        out: BytesMut::with_capacity(4096),
        protocol,
        client: connect.client_id.clone(),
        group: 0,
        owner: Owner { node: b.node_id(), conn: conn_id, epoch: 0 },
        problem_info: true,
        expiry_s: 0,
        aliases_in: HashMap::new(),
        inbound_pending: 0,
        quota: usize::from(b.cfg.max_inflight),
        max_out: usize::MAX,
        aliases_out: HashMap::new(),
        alias_out_max: 0,
        cursor: 0,
        inflight: BTreeMap::new(),
        by_pkid: HashMap::new(),
        done: BTreeSet::new(),
        head: 0,
        acked_head: 0,
        sent_upto: 0,
        acked_sent: 0,
        dup_below: 0,
        rel_pending: Vec::new(),
        ack_in_flight: false,
        ack_urgent: Arc::default(),
        retained_out: VecDeque::new(),
        transient: HashMap::new(),
        next_transient: TRANSIENT_PKID,
        resend_rel: false,
        local: None,
        lane: Arc::default(),
        tickets: 0,
        _slot: None,
    };
    let (live_tx, mut live_rx) = mpsc::channel(b.cfg.qos0_buffer);
    let (kick_tx, mut kick_rx) = watch::channel(None);
    let Some((local, keepalive)) = c.accept(connect, live_tx, kick_tx).await else {
        let _ = c.flush().await;
        return;
    };
    if c.flush().await.is_err() {
        c.finish(End::Lost("write failed")).await;
        return;
    }
    let max = b.cfg.max_packet_size as usize;
    let mut pipeline: FuturesOrdered<BoxFuture<'static, Reply>> = FuturesOrdered::new();
    let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let timeout = keepalive.map(|k| k * 3 / 2);
    let mut deadline = timeout.map(|t| Instant::now() + t);
    let mut pump_needed = true;
    let end = loop {
        if pump_needed {
            pump_needed = false;
            if let Err(e) = c.pump().await {
                break e;
            }
        }
        if let Some(f) = c.ack_future() {
            acks.push(f);
        }
        if c.flush().await.is_err() {
            break End::Lost("write failed");
        }
        // Decode every complete packet already buffered before reading more.
        match codec::read(&mut buf, c.protocol, max) {
            Ok(Some(p)) => {
                deadline = timeout.map(|t| Instant::now() + t);
                let p = match p {
                    Packet::V4(p) => proto::lift(p),
                    Packet::V5(p) => p,
                };
                c.count_in(&p);
                match c.handle(p, &mut pipeline) {
                    Ok(more) => pump_needed |= more,
                    Err(e) => break e,
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break violation(e.reason_code(), format!("{e:?}")),
        }
        tokio::select! {
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) => break End::Lost("closed by the client"),
                Ok(n) => { b.router.metrics.hot.bytes(Dir::In, n as u64); }
                Err(_) => break End::Lost("read failed"),
            },
            Some(reply) = pipeline.next(), if !pipeline.is_empty() => {
                // Replies already done go out in the same write.
                let mut reply = Some(reply);
                let mut ended = None;
                while let Some(r) = reply.take() {
                    match r {
                        Reply::Packet(p) => {
                            if matches!(p, v5::Packet::PubAck(_) | v5::Packet::PubComp(_)) {
                                c.inbound_pending = c.inbound_pending.saturating_sub(1);
                            }
                            c.send(p);
                        }
                        Reply::SubAck(p, subs, existed) => {
                            c.send(p);
                            c.queue_retained(subs, existed).await;
                            pump_needed = true;
                        }
                        Reply::End(e) => {
                            ended = Some(e);
                            break;
                        }
                    }
                    if c.out.len() < COALESCE_BYTES {
                        reply = pipeline.next().now_or_never().flatten();
                    }
                }
                if let Some(e) = ended {
                    break e;
                }
            }
            Some((rel, r)) = acks.next(), if !acks.is_empty() => {
                c.ack_in_flight = false;
                match r {
                    Ok(Response::Stale) => break End::Server { code: 0x8E, what: "session taken over".into(), taken_over: true },
                    Ok(_) => for seq in rel {
                        if let Some(f) = c.inflight.get(&seq) {
                            let pkid = f.pkid;
                            c.send(v5::Packet::PubRel(v5::PubRel::new(pkid)));
                        }
                    },
                    Err(e) => {
                        // Not stored: retried with the next cursor update.
                        tracing::debug!(client = %c.client, "ack cursor not stored: {e}");
                        c.rel_pending.extend(rel);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Some(live) = live_rx.recv() => {
                c.send_live(live);
                // Everything else already routed here goes out in the same write.
                while c.out.len() < COALESCE_BYTES {
                    match live_rx.try_recv() {
                        Ok(live) => c.send_live(live),
                        Err(_) => break,
                    }
                }
            }
            _ = local.wake.notified() => pump_needed = true,
            r = kick_rx.changed() => {
                let code = match r { Ok(()) => (*kick_rx.borrow()).unwrap_or(0x8B), Err(_) => 0x8B };
                break End::Server { code, what: "closed by the server".into(), taken_over: code == 0x8E };
            }
            _ = b.shutdown.cancelled() => break violation(0x8B, "server shutting down"),
            _ = sleep_until(deadline) => break End::Server { code: 0x8D, what: "keepalive timeout".into(), taken_over: false },
        }
    };
    c.finish(end).await;
    b.router.unregister(&c.client, conn_id);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn qos_of(q: QoS) -> u8 {
    q as u8
}

fn qos_from(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn props_of(p: Option<v5::PublishProperties>) -> Props {
    let Some(p) = p else { return Props::default() };
    Props {
        payload_format: p.payload_format_indicator,
        expiry_s: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation: p.correlation_data,
        user: p.user_properties,
    }
}

fn packet_type(p: &v5::Packet) -> &'static str {
    PACKET_TYPES[packet_index(p)]
}

fn encode(cmd: &Command) -> Result<bytes::Bytes, ProposeError> {
    cmd.encode().map_err(|e| ProposeError::Codec { reason: e.to_string() })
}

fn decode(raw: &[u8]) -> Result<Response, ProposeError> {
    wire::decode(raw, "command response").map_err(|e| ProposeError::Codec { reason: e.to_string() })
}

/// Proposes a session command, mapping the raft response.
async fn propose(b: &Broker, g: GroupId, cmd: &Command) -> Result<Response, ProposeError> {
    decode(&b.node.propose(g, Proposal::app(encode(cmd)?)).await?)
}

/// Proposes, retrying a full batcher (back-pressure) until `limit`.
async fn propose_patiently(
    b: &Broker,
    g: GroupId,
    cmd: Command,
    limit: Duration,
) -> Result<Response, ProposeError> {
    let until = Instant::now() + limit;
    loop {
        match propose(b, g, &cmd).await {
            Err(e) if e.is_retriable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Queues a command now, retrying a full queue or an election until `limit` before returning, so
/// commands queued one after another by one caller enter the log in that order. The returned future
/// is the outcome; one left unknown by a failed forward is retried like [`propose_patiently`].
async fn submit_patiently(
    b: &Arc<Broker>,
    g: GroupId,
    cmd: Command,
    limit: Duration,
) -> Result<BoxFuture<'static, Result<Response, ProposeError>>, ProposeError> {
    let until = Instant::now() + limit;
    let bytes = encode(&cmd)?;
    let pending = loop {
        match b.node.submit(g, Proposal::app(bytes.clone())) {
            Ok(p) => break p,
            Err(e) if e.is_retriable() && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let b = b.clone();
    Ok(Box::pin(async move {
        match pending.await {
            Ok(raw) => decode(&raw),
            Err(e) if e.is_retriable() && Instant::now() < until => {
                propose_patiently(&b, g, cmd, limit).await
            }
            Err(e) => Err(e),
        }
    }))
}

/// Keeps one connection's QoS ≥ 1 PUBLISHes in order on their way into the log: each takes a ticket
/// as it arrives and is queued on its turn; one refused for now (queue full, election) is retried
/// before anything after it is queued. Only the queueing takes turns: commits overlap.
#[derive(Default)]
struct Lane {
    turn: std::sync::atomic::AtomicU64,
    changed: Notify,
}

/// The turn of one ticket; passes to the next when dropped.
struct Turn(Arc<Lane>);

impl Lane {
    async fn wait(self: Arc<Self>, ticket: u64) -> Turn {
        loop {
            {
                let changed = self.changed.notified();
                if self.turn.load(Ordering::Acquire) != ticket {
                    changed.await;
                    continue;
                }
            }
            return Turn(self);
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.turn.fetch_add(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl<W: AsyncWrite + Unpin> Conn<W> {
    fn session_cmd(&self, cmd: SessionCommand) -> Command {
        Command::Session(cmd)
    }

    /// Queues a packet for the client (dropped silently if it does not exist in 3.x).
    fn send(&mut self, p: v5::Packet) {
        let kind = packet_index(&p);
        if let v5::Packet::Publish(ref publish) = p {
            self.b.router.metrics.hot.message(Dir::Out, qos_of(publish.qos));
        }
        if let Some(packet) = proto::lower(p, self.protocol) {
            let start = self.out.len();
            match codec::write(&packet, &mut self.out) {
                Ok(_) => self.b.router.metrics.hot.packet(Dir::Out, kind),
                Err(e) => {
                    // never leave half a packet in the stream
                    self.out.truncate(start);
                    let kind = PACKET_TYPES[kind];
                    tracing::warn!(client = %self.client, "{kind} not encodable, not sent: {e:?}");
                }
            }
        }
    }

    fn count_in(&self, p: &v5::Packet) {
        self.b.router.metrics.hot.packet(Dir::In, packet_index(p));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let n = self.out.len();
        let r = self.writer.write_all(&self.out).await;
        self.out.clear();
        self.b.router.metrics.hot.bytes(Dir::Out, n as u64);
        r?;
        self.writer.flush().await
    }

    fn refuse(&mut self, code: v5::ConnectReturnCode, why: &str) {
        self.b.router.metrics.connects.with_label_values(&[why]).inc();
        tracing::debug!(client = %self.client, "CONNECT refused: {why}");
        self.send(v5::Packet::ConnAck(v5::ConnAck { session_present: false, code, properties: None }));
    }

    /// Checks CONNECT, makes this connection the session's owner, sends CONNACK.
    async fn accept(
        &mut self,
        connect: v5::Connect,
        live: mpsc::Sender<Live>,
        kick: watch::Sender<Option<u8>>,
    ) -> Option<(Arc<LocalConn>, Option<Duration>)> {
        use v5::ConnectReturnCode as Code;
        let b = self.b.clone();
        let cfg = &b.cfg;
        let v5 = self.protocol == Protocol::V5;
        let props = connect.properties.clone().unwrap_or_else(|| v5::ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: vec![],
            authentication_method: None,
            authentication_data: None,
        });
        if props.authentication_method.is_some() {
            self.refuse(Code::BadAuthenticationMethod, "auth_method");
            return None;
        }
        let mut assigned = None;
        if self.client.is_empty() {
            if !v5 && !connect.clean_session {
                self.refuse(Code::ClientIdentifierNotValid, "empty_client_id");
                return None;
            }
            self.client = format!("ironhub-{:x}", self.owner.conn);
            assigned = Some(self.client.clone());
        }
        let Some(slot) = b.take_slot() else {
            self.refuse(if v5 { Code::QuotaExceeded } else { Code::ServerUnavailable }, "max_connections");
            return None;
        };
        self._slot = Some(slot);
        if !b.connect_allowed(&self.client) {
            self.refuse(if v5 { Code::ConnectionRateExceeded } else { Code::ServerUnavailable }, "rate");
            return None;
        }
        let mut server_keepalive = None;
        let mut keepalive = connect.keep_alive;
        if keepalive > cfg.max_keepalive_s {
            if !v5 {
                self.refuse(Code::UnspecifiedError, "keepalive");
                return None;
            }
            keepalive = cfg.max_keepalive_s;
            server_keepalive = Some(keepalive);
        } else if keepalive == 0 && cfg.server_keepalive_s > 0 {
            keepalive = cfg.server_keepalive_s;
            server_keepalive = v5.then_some(keepalive);
        }
        let will = match connect.last_will {
            Some(w) => {
                if !codec::valid_topic(&w.topic) || w.topic.len() > cfg.max_topic_len {
                    self.refuse(Code::TopicNameInvalid, "will_topic");
                    return None;
                }
                let delay_s = w.properties.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
                let props = w.properties.map(|p| Props {
                    payload_format: p.payload_format_indicator,
                    expiry_s: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation: p.correlation_data,
                    user: p.user_properties,
                });
                let msg = Message {
                    topic: w.topic,
                    payload: w.message,
                    qos: qos_of(w.qos),
                    retain: w.retain,
                    props: props.unwrap_or_default(),
                    at_ms: 0,
                    node: 0,
                    from: self.client.clone(),
                };
                Some(Will { msg, delay_s })
            }
            None => None,
        };
        let requested_expiry = match (v5, connect.clean_session) {
            (true, _) => props.session_expiry_interval.unwrap_or(0),
            (false, true) => 0,
            (false, false) => cfg.max_session_expiry_s,
        };
        self.expiry_s = requested_expiry.min(cfg.max_session_expiry_s);
        self.problem_info = props.request_problem_info != Some(0);
        self.quota = usize::from(props.receive_maximum.unwrap_or(u16::MAX).min(cfg.max_inflight));
        self.max_out = props.max_packet_size.map_or(usize::MAX, |m| m as usize);
        self.alias_out_max = props.topic_alias_max.unwrap_or(0);
        self.group = partition_of(self.client.as_bytes(), b.node.partitions());

        let local = Arc::new(LocalConn::new(self.owner.conn, self.group, live, kick));
        self.local = Some(local.clone());
        b.router.register(&self.client, local.clone());
        let cmd = self.session_cmd(SessionCommand::Connect {
            client: self.client.clone(),
            owner: self.owner,
            clean_start: connect.clean_session,
            expiry_s: self.expiry_s,
            will,
            at_ms: now_ms(),
        });
        let connected = match propose_patiently(&b, self.group, cmd, Duration::from_secs(5)).await {
            Ok(Response::Connected(c)) => c,
            Ok(other) => {
                tracing::warn!(client = %self.client, "unexpected CONNECT response {other:?}");
                b.router.unregister(&self.client, self.owner.conn);
                self.refuse(Code::UnspecifiedError, "rejected");
                return None;
            }
            Err(e) => {
                tracing::info!(client = %self.client, "CONNECT refused, partition unavailable: {e}");
                b.router.unregister(&self.client, self.owner.conn);
                self.refuse(Code::ServerUnavailable, "unavailable");
                return None;
            }
        };
        // Rule 5: read the session only from state applied at or after the Connect.
        if b.node.wait_applied(self.group, connected.index).await.is_err() {
            b.router.unregister(&self.client, self.owner.conn);
            self.refuse(Code::ServerUnavailable, "unavailable");
            return None;
        }
        self.owner.epoch = connected.epoch;
        local.epoch.store(connected.epoch, Ordering::Release);
        let s = &connected.session;
        local.queue_ends_at(s.next_seq);
        self.cursor = s.head;
        self.head = s.head;
        self.acked_head = s.head;
        self.sent_upto = s.sent_upto;
        self.acked_sent = s.sent_upto;
        self.dup_below = s.sent_upto;
        for seq in &s.rel {
            // PUBREC arrived before: only the PUBREL is resent.
            self.inflight.insert(*seq, Flight { pkid: pkid_of(*seq), qos: 2, released: true });
            self.by_pkid.insert(pkid_of(*seq), *seq);
            self.resend_rel = true;
        }
        let properties = v5.then(|| v5::ConnAckProperties {
            session_expiry_interval: (self.expiry_s != requested_expiry).then_some(self.expiry_s),
            receive_max: Some(cfg.receive_maximum),
            max_qos: None,
            retain_available: Some(1),
            max_packet_size: Some(cfg.max_packet_size),
            assigned_client_identifier: assigned,
            topic_alias_max: Some(cfg.topic_alias_max),
            reason_string: None,
            user_properties: vec![],
            wildcard_subscription_available: Some(1),
            subscription_identifiers_available: Some(1),
            shared_subscription_available: Some(1),
            server_keep_alive: server_keepalive,
            response_information: (props.request_response_info == Some(1))
                .then(|| format!("$response/{}", self.client)),
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        b.router.metrics.connects.with_label_values(&["accepted"]).inc();
        tracing::debug!(client = %self.client, epoch = connected.epoch, present = connected.session_present, "connected");
        self.send(v5::Packet::ConnAck(v5::ConnAck {
            session_present: connected.session_present,
            code: Code::Success,
            properties,
        }));
        Some((local, (keepalive > 0).then(|| Duration::from_secs(u64::from(keepalive)))))
    }

    /// Handles one packet; `Ok(true)` when the outbound queue may move.
    fn handle(
        &mut self,
        p: v5::Packet,
        pipeline: &mut FuturesOrdered<BoxFuture<'static, Reply>>,
    ) -> Result<bool, End> {
        use v5::Packet as P;
        match p {
            P::Publish(publish) => self.publish(publish, pipeline).map(|()| false),
            P::PubRel(rel) => {
                let b = self.b.clone();
                let (g, cmd) = (
                    self.group,
                    self.session_cmd(SessionCommand::Released {
                        client: self.client.clone(),
                        owner: self.owner,
                        pkid: rel.pkid,
                    }),
                );
                pipeline.push_back(Box::pin(async move {
                    match propose_patiently(&b, g, cmd, Duration::from_secs(10)).await {
                        Ok(Response::Flags(found)) => {
                            let mut comp = v5::PubComp::new(rel.pkid);
                            if found.first() == Some(&false) {
                                comp.reason = v5::PubCompReason::PacketIdentifierNotFound;
                            }
                            Reply::Packet(P::PubComp(comp))
                        }
                        Ok(_) => Reply::End(End::Server {
                            code: 0x8E,
                            what: "session taken over".into(),
                            taken_over: true,
                        }),
                        Err(e) => Reply::End(violation(0x89, format!("PUBREL not stored: {e}"))),
                    }
                }));
                Ok(false)
            }
            P::PubAck(a) => Ok(self.acked(a.pkid, 1)),
            P::PubComp(a) => Ok(self.acked(a.pkid, 2)),
            P::PubRec(a) => {
                if let Some(qos) = self.transient.get(&a.pkid).copied() {
                    if qos == 2 {
                        self.send(P::PubRel(v5::PubRel::new(a.pkid)));
                    }
                    return Ok(false);
                }
                match self.by_pkid.get(&a.pkid).copied() {
                    Some(seq) => {
                        let Some(f) = self.inflight.get_mut(&seq) else { return Ok(false) };
                        if f.qos != 2 {
                            return Err(violation(0x82, "PUBREC for a QoS 1 message"));
                        }
                        if (a.reason as u8) >= 0x80 {
                            // the receiver refused it: done
                            return Ok(self.acked(a.pkid, 2));
                        }
                        if !f.released {
                            f.released = true;
                            self.rel_pending.push(seq);
                        }
                        Ok(false)
                    }
                    None => Ok(false),
                }
            }
            P::Subscribe(s) => self.subscribe(s, pipeline).map(|()| false),
            P::Unsubscribe(u) => {
                for f in &u.filters {
                    if !valid_sub_filter(f, self.b.cfg.max_topic_len) {
                        return Err(violation(0x8F, format!("bad filter `{f}` in UNSUBSCRIBE")));
                    }
                }
                let b = self.b.clone();
                let g = self.group;
                let cmd = self.session_cmd(SessionCommand::Unsubscribe {
                    client: self.client.clone(),
                    owner: self.owner,
                    filters: u.filters.clone(),
                });
                pipeline.push_back(Box::pin(async move {
                    match propose_patiently(&b, g, cmd, Duration::from_secs(10)).await {
                        Ok(Response::Flags(found)) => {
                            let mut ack = v5::UnsubAck::new(u.pkid);
                            ack.reasons = found
                                .into_iter()
                                .map(|f| {
                                    if f {
                                        v5::UnsubAckReason::Success
                                    } else {
                                        v5::UnsubAckReason::NoSubscriptionExisted
                                    }
                                })
                                .collect();
                            Reply::Packet(P::UnsubAck(ack))
                        }
                        Ok(_) => Reply::End(End::Server {
                            code: 0x8E,
                            what: "session taken over".into(),
                            taken_over: true,
                        }),
                        Err(e) => Reply::End(violation(0x89, format!("UNSUBSCRIBE not stored: {e}"))),
                    }
                }));
                Ok(false)
            }
            P::PingReq => {
                self.send(P::PingResp);
                Ok(false)
            }
            P::Disconnect(d) => {
                let expiry_s = d.properties.as_ref().and_then(|p| p.session_expiry_interval);
                if self.expiry_s == 0 && expiry_s.is_some_and(|e| e > 0) {
                    return Err(violation(
                        0x82,
                        "DISCONNECT sets a session expiry on a session that had none",
                    ));
                }
                let will = d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage;
                Err(End::Client { will, expiry_s: expiry_s.map(|e| e.min(self.b.cfg.max_session_expiry_s)) })
            }
            P::Connect(_) => Err(violation(0x82, "second CONNECT")),
            P::Auth(_) => Err(violation(0x82, "AUTH without an authentication method")),
            other => Err(violation(0x82, format!("a client may not send {}", packet_type(&other)))),
        }
    }

    fn publish(
        &mut self,
        p: v5::Publish,
        pipeline: &mut FuturesOrdered<BoxFuture<'static, Reply>>,
    ) -> Result<(), End> {
        use v5::Packet as P;
        let qos = qos_of(p.qos);
        self.b.router.metrics.hot.message(Dir::In, qos);
        let mut topic = p.topic;
        let props = p.properties;
        if let Some(alias) = props.as_ref().and_then(|p| p.topic_alias) {
            if alias == 0 || alias > self.b.cfg.topic_alias_max {
                return Err(violation(0x94, format!("topic alias {alias} out of range")));
            }
            if topic.is_empty() {
                topic = self
                    .aliases_in
                    .get(&alias)
                    .cloned()
                    .ok_or_else(|| violation(0x82, format!("unknown topic alias {alias}")))?;
            } else {
                self.aliases_in.insert(alias, topic.clone());
            }
        }
        let refuse = |reason: v5::PubAckReason, qos: u8, pkid: u16| -> Option<v5::Packet> {
            match qos {
                0 => None,
                1 => Some(P::PubAck(v5::PubAck { pkid, reason, properties: None })),
                _ => Some(P::PubRec(v5::PubRec {
                    pkid,
                    reason: match reason {
                        v5::PubAckReason::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
                        _ => v5::PubRecReason::PayloadFormatInvalid,
                    },
                    properties: None,
                })),
            }
        };
        if topic.is_empty() || !codec::valid_topic(&topic) || topic.len() > self.b.cfg.max_topic_len {
            if self.protocol != Protocol::V5 || qos == 0 {
                return Err(violation(0x90, format!("topic name not accepted ({} bytes)", topic.len())));
            }
            if let Some(reply) = refuse(v5::PubAckReason::TopicNameInvalid, qos, p.pkid) {
                self.send(reply);
            }
            return Ok(());
        }
        let mut props = props_of(props);
        if props.payload_format == Some(1) && std::str::from_utf8(&p.payload).is_err() {
            if qos == 0 {
                return Err(violation(0x99, "payload is not UTF-8 as its format indicator says"));
            }
            if let Some(reply) = refuse(v5::PubAckReason::PayloadFormatInvalid, qos, p.pkid) {
                self.send(reply);
            }
            return Ok(());
        }
        if props.expiry_s == Some(0) {
            props.expiry_s = None;
        }
        let msg = Message {
            topic,
            payload: p.payload,
            qos,
            retain: p.retain,
            props,
            at_ms: now_ms(),
            node: self.b.node_id(),
            from: self.client.clone(),
        };
        let b = self.b.clone();
        if qos == 0 {
            if msg.retain {
                let (g, cmd) = retain_cmd(&b, &msg);
                let b2 = b.clone();
                b.tasks.spawn(async move {
                    if let Err(e) = propose_patiently(&b2, g, cmd, Duration::from_secs(5)).await {
                        tracing::info!("QoS 0 retained message not stored: {e}");
                    }
                });
            }
            b.router.deliver_live(msg);
            return Ok(());
        }
        if self.inbound_pending >= usize::from(self.b.cfg.receive_maximum) {
            return Err(violation(0x93, "receive maximum exceeded"));
        }
        self.inbound_pending += 1;
        let (g, pkid) = (self.group, p.pkid);
        let (lane, ticket) = (self.lane.clone(), self.tickets);
        self.tickets += 1;
        let cmd = self.session_cmd(SessionCommand::Publish {
            client: self.client.clone(),
            owner: self.owner,
            qos2_pkid: (qos == 2).then_some(pkid),
            msg: msg.clone(),
            seq: ticket,
        });
        pipeline.push_back(Box::pin(async move {
            let turn = lane.wait(ticket).await;
            // Back-pressure: while the partition's fan-out is far behind, the PUBACK/PUBREC waits
            // (so does this client's receive maximum) instead of the backlog growing until the
            // subscribers' queues overflow. After the patience it is stored anyway. Waited in turn:
            // publishes waiting before their turn all woke at once on each shrink (measured: a
            // fifth less throughput).
            let limit = b.cfg.max_fanout_backlog;
            if b.router.fanout_backlog(g) >= limit {
                let room = b.router.wait_fanout_room(g, limit, FANOUT_PATIENCE).await;
                b.router
                    .metrics
                    .fanout_held
                    .with_label_values(&[if room { "waited" } else { "gave_up" }])
                    .inc();
            }
            // A retained QoS≥1 message is stored before it is acknowledged (queued first, in turn).
            let retained = match msg.retain {
                true => {
                    let (rg, rcmd) = retain_cmd(&b, &msg);
                    Some(submit_patiently(&b, rg, rcmd, Duration::from_secs(10)).await)
                }
                false => None,
            };
            let stored = submit_patiently(&b, g, cmd, Duration::from_secs(10)).await;
            drop(turn);
            if let Some(r) = retained {
                let r = match r {
                    Ok(pending) => pending.await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    return Reply::End(violation(0x89, format!("retained message not stored: {e}")));
                }
            }
            let stored = match stored {
                Ok(pending) => pending.await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(Response::Applied { .. } | Response::Duplicate) => Reply::Packet(if qos == 1 {
                    P::PubAck(v5::PubAck::new(pkid))
                } else {
                    P::PubRec(v5::PubRec::new(pkid))
                }),
                Ok(_) => Reply::End(End::Server {
                    code: 0x8E,
                    what: "session taken over".into(),
                    taken_over: true,
                }),
                // Not acknowledged: the client resends after reconnecting.
                Err(e) => Reply::End(violation(0x89, format!("PUBLISH not stored: {e}"))),
            }
        }));
        Ok(())
    }

    fn subscribe(
        &mut self,
        s: v5::Subscribe,
        pipeline: &mut FuturesOrdered<BoxFuture<'static, Reply>>,
    ) -> Result<(), End> {
        use v5::SubscribeReasonCode as RC;
        let id = s.properties.as_ref().and_then(|p| p.id).map(|i| i as u32);
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut accepted = Vec::new();
        for f in s.filters {
            let shared = parse_shared(&f.path).is_some();
            if shared && f.nolocal {
                return Err(violation(0x82, "no-local on a shared subscription"));
            }
            if !valid_sub_filter(&f.path, self.b.cfg.max_topic_len) {
                codes.push(RC::TopicFilterInvalid);
                continue;
            }
            let filter = super::router::filter_of(&f.path);
            if self.b.cfg.deny_filters.iter().any(|d| d == filter || codec::matches(filter, d)) {
                codes.push(RC::NotAuthorized);
                continue;
            }
            let qos = qos_of(f.qos);
            codes.push(match qos {
                0 => RC::QoS0,
                1 => RC::QoS1,
                _ => RC::QoS2,
            });
            let sub = Sub {
                qos,
                no_local: f.nolocal,
                retain_as_published: f.preserve_retain,
                retain_handling: match f.retain_forward_rule {
                    v5::RetainForwardRule::OnEverySubscribe => 0,
                    v5::RetainForwardRule::OnNewSubscribe => 1,
                    v5::RetainForwardRule::Never => 2,
                },
                id,
            };
            accepted.push((f.path, sub));
        }
        let b = self.b.clone();
        let g = self.group;
        let pkid = s.pkid;
        let cmd = self.session_cmd(SessionCommand::Subscribe {
            client: self.client.clone(),
            owner: self.owner,
            subs: accepted.clone(),
        });
        pipeline.push_back(Box::pin(async move {
            let ack = |codes| v5::Packet::SubAck(v5::SubAck { pkid, return_codes: codes, properties: None });
            if accepted.is_empty() {
                return Reply::Packet(ack(codes));
            }
            match propose_patiently(&b, g, cmd, Duration::from_secs(10)).await {
                Ok(Response::Flags(existed)) => Reply::SubAck(ack(codes), accepted, existed),
                Ok(_) => Reply::End(End::Server {
                    code: 0x8E,
                    what: "session taken over".into(),
                    taken_over: true,
                }),
                Err(e) => Reply::End(violation(0x89, format!("SUBSCRIBE not stored: {e}"))),
            }
        }));
        Ok(())
    }

    /// Retained messages for new subscriptions (retain handling, never for shared ones).
    async fn queue_retained(&mut self, subs: Vec<(String, Sub)>, existed: Vec<bool>) {
        for ((key, sub), existed) in subs.into_iter().zip(existed) {
            if parse_shared(&key).is_some()
                || sub.retain_handling == 2
                || (sub.retain_handling == 1 && existed)
            {
                continue;
            }
            match retained_matching(&self.b, &key).await {
                Ok(found) => {
                    for (topic, r) in found {
                        let msg = Message {
                            topic,
                            payload: r.payload,
                            qos: r.qos,
                            retain: true,
                            props: r.props,
                            at_ms: r.at_ms,
                            node: 0,
                            from: String::new(),
                        };
                        let qos = r.qos.min(sub.qos);
                        self.retained_out.push_back((Arc::new(msg), qos, sub.id.into_iter().collect()));
                    }
                }
                Err(e) => {
                    tracing::info!(client = %self.client, "retained messages for `{key}` not read: {e}")
                }
            }
        }
    }

    /// A QoS 0 message routed to this connection.
    fn send_live(&mut self, live: Live) {
        let publish = self.publish_packet(&live.msg, 0, 0, live.retain, false, &live.sub_ids);
        if let Some(p) = publish {
            self.send(v5::Packet::Publish(p));
        }
    }

    /// Builds an outbound PUBLISH (topic alias, properties, remaining expiry); `None` when it is
    /// larger than the client accepts (dropped and counted).
    fn publish_packet(
        &mut self,
        msg: &Message,
        qos: u8,
        pkid: u16,
        retain: bool,
        dup: bool,
        sub_ids: &[u32],
    ) -> Option<v5::Publish> {
        let v5 = self.protocol == Protocol::V5;
        let now = now_ms();
        self.b.router.metrics.hot.deliver_latency(qos, now.saturating_sub(msg.at_ms) as f64 / 1000.0);
        let mut topic = msg.topic.clone();
        let mut new_alias = false;
        let properties = v5.then(|| {
            let mut alias = None;
            if self.alias_out_max > 0 {
                match self.aliases_out.get(&topic) {
                    Some(a) => {
                        alias = Some(*a);
                        topic = String::new();
                    }
                    None if self.aliases_out.len() < usize::from(self.alias_out_max) => {
                        let a = self.aliases_out.len() as u16 + 1;
                        self.aliases_out.insert(topic.clone(), a);
                        alias = Some(a);
                        new_alias = true;
                    }
                    None => {}
                }
            }
            let age_s = (now.saturating_sub(msg.at_ms) / 1000) as u32;
            v5::PublishProperties {
                payload_format_indicator: msg.props.payload_format,
                message_expiry_interval: msg.props.expiry_s.map(|e| e.saturating_sub(age_s).max(1)),
                topic_alias: alias,
                response_topic: msg.props.response_topic.clone(),
                correlation_data: msg.props.correlation.clone(),
                user_properties: msg.props.user.clone(),
                subscription_identifiers: sub_ids.iter().map(|i| *i as usize).collect(),
                content_type: msg.props.content_type.clone(),
            }
        });
        let p = v5::Publish {
            dup,
            qos: qos_from(qos),
            retain,
            topic,
            pkid,
            properties,
            payload: msg.payload.clone(),
        };
        if self.max_out != usize::MAX {
            // whole packet = type byte + remaining-length varint + remaining length (no encoding pass)
            let remaining = p.len();
            let varint = match remaining {
                0..=127 => 1,
                128..=16_383 => 2,
                16_384..=2_097_151 => 3,
                _ => 4,
            };
            if 1 + varint + remaining > self.max_out {
                self.b.router.metrics.dropped.with_label_values(&["too_large"]).inc();
                if new_alias {
                    self.aliases_out.remove(&msg.topic); // the client never learned it
                }
                return None;
            }
        }
        Some(p)
    }

    /// Up to `limit` queue rows from the cursor on: the ones apply handed over if they continue
    /// the cursor (no read), none if the cursor is at the queue's end as this node applied it (no
    /// read either), else read from the local state (a resumed session's backlog, rows
    /// enqueued before this connection's `Connect`, or more than
    /// [`FRESH_ROWS`](super::router::FRESH_ROWS) behind).
    fn next_rows(&mut self, limit: usize) -> Result<QueueRows, End> {
        match self.local.as_ref().map_or(Next::Read, |l| l.next_rows(self.cursor, limit)) {
            Next::Rows(rows) => Ok(rows),
            Next::Empty => Ok(Vec::new()),
            Next::Read => read_queue(&self.b, self.group, &self.client, self.cursor, limit),
        }
    }

    /// Sends queued and retained messages while the client's receive maximum allows.
    async fn pump(&mut self) -> Result<(), End> {
        while self.inflight.len() + self.transient.len() < self.quota {
            let Some((msg, qos, sub_ids)) = self.retained_out.pop_front() else { break };
            let pkid = if qos > 0 { self.transient_pkid() } else { 0 };
            if let Some(p) = self.publish_packet(&msg, qos, pkid, true, false, &sub_ids) {
                if qos > 0 {
                    self.transient.insert(pkid, qos);
                }
                self.send(v5::Packet::Publish(p));
            }
        }
        // A resumed session resends the PUBRELs of messages whose PUBREC arrived before.
        if std::mem::take(&mut self.resend_rel) {
            let pkids: Vec<u16> = self.inflight.values().filter(|f| f.released).map(|f| f.pkid).collect();
            for pkid in pkids {
                self.send(v5::Packet::PubRel(v5::PubRel::new(pkid)));
            }
        }
        loop {
            let room = self.quota.saturating_sub(self.inflight.len() + self.transient.len());
            let window_end = self.inflight.keys().next().map_or(u64::MAX, |low| low + 32766);
            if room == 0 || self.cursor >= window_end {
                return Ok(());
            }
            let rows = self.next_rows(room.min(64))?;
            if rows.is_empty() {
                return Ok(());
            }
            for (seq, q) in rows {
                if seq >= window_end {
                    return Ok(());
                }
                // Sequence numbers the scan skipped were dropped from the queue: nothing to deliver.
                for missing in self.cursor..seq {
                    self.complete(missing);
                }
                self.cursor = seq + 1;
                if self.inflight.contains_key(&seq) {
                    continue;
                }
                if q.msg.expired(self.b.router.clocks.age_ms(&q.msg), self.b.cfg.queue_retention_s) {
                    self.b.router.metrics.dropped.with_label_values(&["expired"]).inc();
                    self.complete(seq);
                    continue;
                }
                let pkid = pkid_of(seq);
                let dup = seq < self.dup_below;
                match self.publish_packet(
                    &q.msg,
                    q.qos,
                    if q.qos > 0 { pkid } else { 0 },
                    q.retain,
                    dup && q.qos > 0,
                    &q.sub_ids,
                ) {
                    Some(p) => {
                        self.send(v5::Packet::Publish(p));
                        self.sent_upto = self.sent_upto.max(seq + 1);
                        if q.qos == 0 {
                            self.complete(seq);
                        } else {
                            self.inflight.insert(seq, Flight { pkid, qos: q.qos, released: false });
                            self.by_pkid.insert(pkid, seq);
                        }
                    }
                    None => self.complete(seq),
                }
            }
        }
    }

    fn transient_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_transient;
            self.next_transient = if p == u16::MAX { TRANSIENT_PKID } else { p + 1 };
            if !self.transient.contains_key(&p) {
                return p;
            }
        }
    }

    /// PUBACK (`qos` 1) or PUBCOMP (`qos` 2) of an outbound message; true when more may be sent.
    fn acked(&mut self, pkid: u16, qos: u8) -> bool {
        if self.transient.remove(&pkid).is_some() {
            return true;
        }
        let Some(seq) = self.by_pkid.get(&pkid).copied() else { return false };
        // Rule 3: the ack must name the message in flight under that packet id with that QoS.
        if self.inflight.get(&seq).is_none_or(|f| f.qos != qos) {
            return false;
        }
        self.inflight.remove(&seq);
        self.by_pkid.remove(&pkid);
        self.complete(seq);
        true
    }

    fn complete(&mut self, seq: u64) {
        self.done.insert(seq);
        while self.done.remove(&self.head) {
            self.head += 1;
        }
        if self.ack_in_flight && self.head.saturating_sub(self.acked_head) >= ACK_BATCH {
            self.ack_urgent.notify_one();
        }
    }

    /// The next cursor update to store, if one is due and none is in flight.
    fn ack_future(&mut self) -> Option<AckFuture> {
        // Delivery progress alone (sent, not acked) is stored lazily: with an ack or a PUBREC.
        if self.ack_in_flight || (self.head == self.acked_head && self.rel_pending.is_empty()) {
            return None;
        }
        self.ack_in_flight = true;
        // A wake-up left from the previous update (it fired while that one was proposing or had
        // already slept out its interval) is spent: this update already carries those acks.
        let _ = self.ack_urgent.notified().now_or_never();
        self.acked_head = self.head;
        self.acked_sent = self.sent_upto;
        let rel = std::mem::take(&mut self.rel_pending);
        let cmd = self.session_cmd(SessionCommand::Acked {
            client: self.client.clone(),
            owner: self.owner,
            upto: self.head,
            sent_upto: self.sent_upto,
            rel: rel.clone(),
        });
        let (b, g, urgent) = (self.b.clone(), self.group, self.ack_urgent.clone());
        Some(Box::pin(async move {
            let started = Instant::now();
            let r = propose_patiently(&b, g, cmd, Duration::from_secs(5)).await;
            // Cursor-only updates go at most every ACK_INTERVAL (or at ACK_BATCH acks): acks
            // arriving meanwhile ride on the next one (fewer commits; a cursor behind only means
            // redelivery after failover). One that releases QoS 2 messages completes at once: its
            // PUBRELs wait for it.
            if rel.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep_until(started + ACK_INTERVAL) => {}
                    _ = urgent.notified() => {}
                }
            }
            (rel, r)
        }))
    }

    /// Sends the closing DISCONNECT (MQTT 5) and records the end of the connection.
    async fn finish(&mut self, end: End) {
        let (fire_will, expiry_s, code, taken_over) = match &end {
            End::Client { will, expiry_s } => (*will, *expiry_s, None, false),
            End::Lost(_) => (true, None, None, false),
            End::Server { code, taken_over, .. } => (true, None, Some(*code), *taken_over),
        };
        match &end {
            End::Server { code, what, .. } if *code >= 0x80 && *code != 0x8B && *code != 0x8E => {
                self.b.router.metrics.protocol_errors.with_label_values(&[&format!("0x{code:02X}")]).inc();
                tracing::info!(client = %self.client, "closing: {what} (0x{code:02X})");
            }
            End::Lost(why) => tracing::debug!(client = %self.client, "connection lost: {why}"),
            other => tracing::debug!(client = %self.client, "closing: {other:?}"),
        }
        if let (Some(code), Protocol::V5) = (code, self.protocol) {
            if let End::Server { what, .. } = &end {
                let reason = v5_disconnect_code(code);
                let properties = self.problem_info.then(|| v5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(what.clone()),
                    user_properties: vec![],
                    server_reference: None,
                });
                self.send(v5::Packet::Disconnect(v5::Disconnect { reason_code: reason, properties }));
            }
        }
        // Replies gathered before the end (a PUBACK of a stored message ready in the same poll as
        // the failure that ends the connection) still go out, or the client would resend them.
        if !self.out.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        if taken_over || self.owner.epoch == 0 {
            return;
        }
        // Store what was acknowledged, then end the connection (the will fires unless DISCONNECT).
        if self.head > self.acked_head || self.sent_upto > self.acked_sent || !self.rel_pending.is_empty() {
            self.ack_in_flight = false;
            if let Some(f) = self.ack_future() {
                let _ = f.await;
            }
        }
        let cmd = self.session_cmd(SessionCommand::Disconnect {
            client: self.client.clone(),
            owner: self.owner,
            fire_will,
            expiry_s,
            at_ms: now_ms(),
        });
        if let Err(e) = propose_patiently(&self.b, self.group, cmd, Duration::from_secs(5)).await {
            // The partition leader's session audit ends it later.
            tracing::info!(client = %self.client, "disconnect not stored: {e}");
        }
    }
}

/// Reads up to `limit` queue entries of `client` from `cursor` (local applied state).
fn read_queue(b: &Broker, group: GroupId, client: &str, cursor: u64, limit: usize) -> Result<QueueRows, End> {
    let (from, to) = (queue_key(client, cursor), queue_key(client, u64::MAX));
    let rows = b
        .node
        .with_state_now(group, |v| v.scan(&from, &to, limit))
        .map_err(|e| violation(0x80, format!("reading the queue: {e}")))?;
    rows.into_iter()
        .map(|(k, v)| {
            let q: Queued = wire::decode(&v, "queued message").map_err(|e| violation(0x80, e.to_string()))?;
            Ok((queue_seq(&k), q))
        })
        .collect()
}

fn v5_disconnect_code(code: u8) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match code {
        0x81 => D::MalformedPacket,
        0x82 => D::ProtocolError,
        0x87 => D::NotAuthorized,
        0x89 => D::ServerBusy,
        0x8B => D::ServerShuttingDown,
        0x8D => D::KeepAliveTimeout,
        0x8E => D::SessionTakenOver,
        0x8F => D::TopicFilterInvalid,
        0x90 => D::TopicNameInvalid,
        0x93 => D::ReceiveMaximumExceeded,
        0x94 => D::TopicAliasInvalid,
        0x95 => D::PacketTooLarge,
        0x97 => D::QuotaExceeded,
        0x99 => D::PayloadFormatInvalid,
        0x9C => D::UseAnotherServer,
        _ => D::UnspecifiedError,
    }
}

/// A subscription filter (plain or shared) that is well formed and within the length limit.
fn valid_sub_filter(key: &str, max_len: usize) -> bool {
    if key.len() > max_len {
        return false;
    }
    match parse_shared(key) {
        Some((group, filter)) => {
            !group.is_empty() && !group.contains(['+', '#']) && codec::valid_filter(filter)
        }
        None => !key.starts_with("$share/") && codec::valid_filter(key),
    }
}

/// The command that stores `msg` as the retained message of its topic.
fn retain_cmd(b: &Broker, msg: &Message) -> (GroupId, Command) {
    let g = partition_of(msg.topic.as_bytes(), b.node.partitions());
    let cmd = Command::SetRetained {
        topic: msg.topic.clone(),
        payload: msg.payload.clone(),
        qos: msg.qos,
        at_ms: msg.at_ms,
        props: msg.props.clone(),
    };
    (g, cmd)
}

/// Retained messages matching a subscription filter, read behind a barrier on their partitions.
pub async fn retained_matching(b: &Broker, filter: &str) -> Result<Vec<(String, Retained)>, String> {
    let partitions: Vec<GroupId> = if codec::has_wildcards(filter) {
        (1..=b.node.partitions()).collect()
    } else {
        vec![partition_of(filter.as_bytes(), b.node.partitions())]
    };
    let barriers = futures::future::join_all(partitions.iter().map(|g| b.node.read_barrier(*g))).await;
    barriers.into_iter().collect::<Result<Vec<()>, _>>().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for g in partitions {
        let rows = if codec::has_wildcards(filter) {
            b.node.with_state(g, |v| v.scan(RETAINED.0, RETAINED.1, usize::MAX)).await
        } else {
            let key = retained_key(filter);
            b.node
                .with_state(g, move |v| Ok(v.get(&key)?.map(|val| vec![(key, val)]).unwrap_or_default()))
                .await
        }
        .map_err(|e| e.to_string())?;
        for (k, v) in rows {
            let topic = String::from_utf8_lossy(&k[RETAINED.0.len()..]).into_owned();
            if codec::matches(&topic, filter) {
                let r: Retained = wire::decode(&v, "retained message").map_err(|e| e.to_string())?;
                out.push((topic, r));
            }
        }
    }
    Ok(out)
}
