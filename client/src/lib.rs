//! The MQTT 3.1.1 / 5 client of `ironhub-bench` and `ironhub-chaos`: our own socket (so it can be
//! bound to a source address, and carried over TLS, WebSocket or QUIC), rumqttc's packet codecs,
//! and a small session state machine that survives reconnects.
//!
//! - [`transport`]: the byte stream (TCP from a chosen source address, TLS, WS, WSS, QUIC).
//! - [`codec`]: packets to and from bytes, over `rumqttc::mqttbytes` (3.1.1) and
//!   `rumqttc::v5::mqttbytes` (5).
//! - [`session`]: packet ids, the outgoing QoS 1/2 window, the QoS 2 handshakes, and what a resumed
//!   session sends again; pure, tested by its exact output.
//!
//! A [`Client`] enqueues requests (subscribe, publish, disconnect) without waiting; its [`Events`]
//! must be polled by the same task to move bytes, and yields the few events the tools care about
//! ([`Event`]). The request queue holds [`REQUEST_CAPACITY`] requests and the session at most
//! `inflight` unacknowledged QoS 1/2 publishes (fewer if an MQTT 5 broker's Receive Maximum says
//! so): when both are full, [`Client::try_publish`] returns [`Publish::Full`] and the publisher
//! waits for the next event before trying again.
//!
//! **Persistent sessions.** [`Events::into_session`] takes the session back when a connection
//! ends, and [`connect_with`] resumes it on the next connection, to the same broker or another
//! node of a cluster: if the broker answers "session present", every unacknowledged PUBLISH (DUP
//! set) and unfinished PUBREL is sent again in order and incoming QoS 2 messages stay
//! deduplicated, so QoS 2 is exactly once across reconnects (which rumqttc 0.25 cannot do: it
//! forgets incoming QoS 2 packet ids on reconnect and then refuses the broker's PUBREL).
//!
//! **Acknowledgements** of incoming QoS 1/2 messages are written on the poll after the one that
//! returned the message, so a client acknowledges only what the application has seen.
//!
//! Why not rumqttc's own event loop: it creates its socket itself and cannot bind a source address
//! (0.25 offers only `bind_device`, a device name, not an address), its `EventLoop::network` cannot
//! be replaced from outside (the `Network` type is private, and a handed-over stream would skip
//! CONNECT), and its TLS / WebSocket features need crates that are not in this workspace. Its
//! packet codecs are public and well tested, so they are kept.

#![warn(missing_docs)]

pub mod codec;
pub mod session;
pub mod transport;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use session::In;
pub use session::{Event, Message, Session};
pub use transport::{Endpoint, Transport};

use codec::Request;

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1", alias = "3", alias = "4")]
    V311,
    /// MQTT 5.
    #[value(name = "5")]
    V5,
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Qos {
    /// At most once.
    #[value(name = "0")]
    Q0,
    /// At least once.
    #[value(name = "1")]
    Q1,
    /// Exactly once.
    #[value(name = "2")]
    Q2,
}

/// Requests queued per client before `try_publish` reports `Full`.
pub const REQUEST_CAPACITY: usize = 64;

/// Bytes waiting to be written above which no new request is taken.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// MQTT version.
    pub protocol: Protocol,
    /// Client identifier.
    pub client_id: String,
    /// Clean session (3.1.1) / clean start with no session expiry (5); otherwise a persistent
    /// session (MQTT 5: expiring an hour after the connection ends).
    pub clean: bool,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Outgoing QoS 1/2 publishes in flight at once.
    pub inflight: u16,
    /// Source address of the connection (`--ifaddr`); any when `None`.
    pub source: Option<IpAddr>,
}

/// A client error, named by kind for the error table.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ClientError {
    /// Short stable kind (`io`, `tcp_refused`, `addr_not_available`, `timeout`, `connect_refused`,
    /// `tls`, `ws`, `quic`, `protocol`, `closed`, `server_disconnect`).
    pub kind: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl ClientError {
    /// An error of `kind`.
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        ClientError { kind, detail: detail.into() }
    }

    /// An I/O error during `op`, classified by its kind.
    pub fn io(op: &str, e: &io::Error) -> Self {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => "tcp_refused",
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => "addr_not_available",
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                "closed"
            }
            _ => "io",
        };
        ClientError::new(kind, format!("{op}: {e}"))
    }

    /// The error's kind for the error table.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// Result of a non-blocking publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Queued.
    Queued,
    /// The request queue is full (or the connection is gone): poll events, then retry.
    Full,
}

/// A request from the bench to its connection.
#[derive(Debug)]
enum Req {
    Subscribe { filter: String, qos: Qos },
    Publish { topic: String, qos: Qos, payload: Bytes },
    Disconnect,
}

/// The request side of a client.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<Req>,
}

/// The event side of a client: poll it to move bytes.
pub struct Events {
    io: transport::Io,
    rx: mpsc::Receiver<Req>,
    session: Session,
    protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
    need_flush: bool,
    pending: VecDeque<Event>,
    /// A publish taken from the queue while the window was full.
    held: Option<Req>,
    keep_alive: Duration,
    last_out: Instant,
    ping_outstanding: bool,
    /// DISCONNECT queued: finish writing, then end.
    closing: bool,
    /// The CONNACK said the broker resumed a session.
    session_present: bool,
}

impl Client {
    /// Queues a SUBSCRIBE (waits only if the request queue is full).
    pub async fn subscribe(&self, filter: &str, qos: Qos) -> bool {
        self.tx.send(Req::Subscribe { filter: filter.to_string(), qos }).await.is_ok()
    }

    /// Queues a PUBLISH without waiting.
    pub fn try_publish(&self, topic: &str, qos: Qos, payload: Vec<u8>) -> Publish {
        match self.tx.try_send(Req::Publish { topic: topic.to_string(), qos, payload: payload.into() }) {
            Ok(()) => Publish::Queued,
            Err(_) => Publish::Full,
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub fn try_disconnect(&self) {
        let _ = self.tx.try_send(Req::Disconnect);
    }
}

/// Opens the byte stream, sends CONNECT and waits for an accepting CONNACK (the caller bounds
/// the wait), with a new session.
///
/// With `clean: false` the broker may still hold a session of this client id from an earlier
/// process, including QoS 2 packet ids it awaits a PUBREL for: a new session knows nothing of
/// them and may reuse one, and the broker then takes that new message for a resend and drops it.
/// Persistent QoS 2 publishers keep their [`Session`] ([`Events::into_session`]) and reconnect
/// with [`connect_with`], or start with a clean session.
pub async fn connect(ep: &Endpoint, cfg: &ClientConfig) -> Result<(Client, Events), ClientError> {
    connect_with(ep, cfg, Session::new(cfg.inflight)).await
}

/// [`connect`] carrying `session` from an earlier connection: if the broker resumes it (see
/// [`Events::session_present`]), what was in flight is sent again.
pub async fn connect_with(
    ep: &Endpoint,
    cfg: &ClientConfig,
    session: Session,
) -> Result<(Client, Events), ClientError> {
    let io = ep.open(cfg.source).await?;
    let keep_alive = cfg.keep_alive.max(Duration::from_secs(1));
    let (client, mut ev) = Events::over(io, cfg.protocol, keep_alive, session);
    ev.encode(Request::Connect {
        client_id: &cfg.client_id,
        keep_alive: keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
        clean: cfg.clean,
        // A persistent MQTT 5 session needs an expiry; keep it for an hour.
        session_expiry: (!cfg.clean && cfg.protocol == Protocol::V5).then_some(3600),
        credentials: cfg.credentials.as_ref(),
    })?;
    loop {
        if let Event::Connected { .. } = ev.next().await? {
            return Ok((client, ev));
        }
    }
}

/// One step of I/O: write what is buffered (and flush it), then read what has arrived. Ready when
/// bytes were read or written; an error ends the connection.
fn drive(
    io: &mut transport::Io,
    wbuf: &mut BytesMut,
    rbuf: &mut BytesMut,
    need_flush: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let mut progressed = false;
    while !wbuf.is_empty() {
        match Pin::new(&mut *io).poll_write(cx, wbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                wbuf.advance(n);
                *need_flush = true;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if *need_flush && wbuf.is_empty() {
        match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                *need_flush = false;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    let mut chunk = [0u8; 4096];
    let mut rb = ReadBuf::new(&mut chunk);
    match Pin::new(&mut *io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection",
            )))
        }
        Poll::Ready(Ok(())) => {
            rbuf.extend_from_slice(rb.filled());
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Pending => {}
    }
    if progressed {
        Poll::Ready(Ok(()))
    } else {
        Poll::Pending
    }
}

impl Events {
    /// A client over an open byte stream, before CONNECT.
    fn over(
        io: transport::Io,
        protocol: Protocol,
        keep_alive: Duration,
        session: Session,
    ) -> (Client, Events) {
        let (tx, rx) = mpsc::channel(REQUEST_CAPACITY);
        let ev = Events {
            io,
            rx,
            session,
            protocol,
            rbuf: BytesMut::with_capacity(1024),
            wbuf: BytesMut::with_capacity(256),
            need_flush: false,
            pending: VecDeque::new(),
            held: None,
            keep_alive,
            last_out: Instant::now(),
            ping_outstanding: false,
            closing: false,
            session_present: false,
        };
        (Client { tx }, ev)
    }

    /// Whether the broker resumed this client's session (CONNACK session present).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The session, to resume on the next connection ([`connect_with`]) once this one ended.
    pub fn into_session(self) -> Session {
        self.session
    }

    fn encode(&mut self, r: Request<'_>) -> Result<(), ClientError> {
        codec::encode(self.protocol, r, &mut self.wbuf)
            .map_err(|e| ClientError::new("protocol", e.to_string()))?;
        self.last_out = Instant::now();
        Ok(())
    }

    /// Carries out one request; a publish that does not fit the window is held.
    fn on_request(&mut self, r: Req) -> Result<(), ClientError> {
        match r {
            Req::Subscribe { filter, qos } => {
                let pkid = self.session.subscribe();
                self.encode(Request::Subscribe { pkid, filter: &filter, qos })
            }
            Req::Publish { topic, qos, payload } => match self.session.publish(qos) {
                Some(pkid) => {
                    let start = self.wbuf.len();
                    if let Err(e) = self.encode(Request::Publish { pkid, topic: &topic, qos, payload }) {
                        // Not sent (too large, say): the window slot and packet id are free again.
                        self.wbuf.truncate(start);
                        self.session.abandon(pkid);
                        return Err(e);
                    }
                    if qos == Qos::Q0 {
                        self.pending.push_back(Event::SentQos0);
                    } else {
                        // Kept until acknowledged, to be sent again if the session resumes elsewhere.
                        self.session.keep(pkid, Bytes::copy_from_slice(&self.wbuf[start..]));
                    }
                    Ok(())
                }
                None => {
                    self.held = Some(Req::Publish { topic, qos, payload });
                    Ok(())
                }
            },
            Req::Disconnect => {
                self.closing = true;
                self.encode(Request::Disconnect)
            }
        }
    }

    /// Polls the connection until the next event (or error). Cancel-safe: every step keeps its
    /// progress in `self` (buffers, held request), so a dropped call loses nothing.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            // Take every request queued meanwhile first, so one write carries them all.
            while !self.closing && self.held.is_none() && self.wbuf.len() < WRITE_HIGH_WATER {
                match self.rx.try_recv() {
                    Ok(r) => self.on_request(r)?,
                    // Empty, or closed (the select below sees that and disconnects).
                    Err(_) => break,
                }
            }
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            match codec::decode(self.protocol, &mut self.rbuf) {
                Ok(Some(p)) => {
                    if p == In::PingResp {
                        self.ping_outstanding = false;
                    }
                    let (out, ev) = self.session.on_packet(p).map_err(|e| match e {
                        session::ProtocolError::Refused(_) => {
                            ClientError::new("connect_refused", e.to_string())
                        }
                        session::ProtocolError::Disconnected(_) => {
                            ClientError::new("server_disconnect", e.to_string())
                        }
                        _ => ClientError::new("protocol", e.to_string()),
                    })?;
                    if let Some(out) = out {
                        self.encode(Request::Ack(out))?;
                    }
                    if let Event::Connected { session_present } = ev {
                        self.session_present = session_present;
                        for out in self.session.resend() {
                            self.encode(Request::Ack(out))?;
                        }
                    }
                    if ev != Event::Other {
                        return Ok(ev);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::new("protocol", e.to_string())),
            }
            if self.session.has_room() {
                if let Some(r) = self.held.take() {
                    self.on_request(r)?;
                    continue;
                }
            }
            if self.closing && self.wbuf.is_empty() && !self.need_flush {
                let _ = poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await;
                return Err(ClientError::new("closed", "disconnected"));
            }
            let accept = self.held.is_none() && !self.closing && self.wbuf.len() < WRITE_HIGH_WATER;
            let ping_at = self.last_out + self.keep_alive;
            let Events { io, wbuf, rbuf, need_flush, rx, .. } = self;
            tokio::select! {
                r = poll_fn(|cx| drive(io, wbuf, rbuf, need_flush, cx)) => {
                    r.map_err(|e| ClientError::io("connection", &e))?;
                }
                req = rx.recv(), if accept => match req {
                    Some(req) => self.on_request(req)?,
                    None => {
                        self.closing = true;
                        self.encode(Request::Disconnect)?;
                    }
                },
                _ = sleep_until(ping_at) => {
                    if self.ping_outstanding {
                        return Err(ClientError::new("timeout", "no PINGRESP within the keep-alive"));
                    }
                    self.ping_outstanding = true;
                    self.encode(Request::PingReq)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A scripted broker on a duplex pipe: the client's CONNECT, SUBSCRIBE and QoS 1 PUBLISH are
    /// read and answered, and a QoS 1 PUBLISH to the client is acknowledged.
    #[tokio::test]
    async fn a_client_connects_subscribes_publishes_and_acks_over_a_pipe() {
        let (client_side, mut broker) = tokio::io::duplex(4096);
        let (client, mut ev) =
            Events::over(Box::new(client_side), Protocol::V311, Duration::from_secs(30), Session::new(10));
        let broker_task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            broker.write_all(&[0x20, 0x02, 0x00, 0x00]).await.expect("connack");
            let (t, sub) = next_packet(&mut buf, &mut broker).await;
            assert_eq!(t >> 4, 8, "SUBSCRIBE");
            broker.write_all(&[0x90, 0x03, sub[2], sub[3], 0x01]).await.expect("suback");
            let (t, publish) = next_packet(&mut buf, &mut broker).await;
            assert_eq!(t, 0x32, "QoS 1 PUBLISH");
            // topic "t" (2 + 1 bytes) then the packet id
            let id = &publish[5..7];
            broker.write_all(&[0x40, 0x02, id[0], id[1]]).await.expect("puback");
            broker
                .write_all(&[0x32, 0x08, 0x00, 0x01, b't', 0x00, 0x07, b'h', b'i', b'!'])
                .await
                .expect("publish");
            let (t, ack) = next_packet(&mut buf, &mut broker).await;
            assert_eq!((t, &ack[2..]), (0x40, &[0x00, 0x07][..]), "PUBACK for id 7");
            let (t, _) = next_packet(&mut buf, &mut broker).await;
            assert_eq!(t, 0xE0, "DISCONNECT");
        });
        assert_eq!(ev.next().await.expect("connack"), Event::Connected { session_present: false });
        assert!(client.subscribe("t", Qos::Q1).await);
        assert_eq!(ev.next().await.expect("suback"), Event::Subscribed(true));
        assert_eq!(client.try_publish("t", Qos::Q1, b"x".to_vec()), Publish::Queued);
        assert_eq!(ev.next().await.expect("puback"), Event::Acked);
        let Event::Message(m) = ev.next().await.expect("publish") else { panic!("a message") };
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("t", &b"hi!"[..]));
        client.try_disconnect();
        assert_eq!(ev.next().await.expect_err("closed").kind(), "closed");
        broker_task.await.expect("broker script");
    }

    /// A QoS 2 exchange both ways is cut after PUBREC/PUBREL; the session resumes on a second
    /// connection: the client releases its publish again, does not hand over the message the
    /// broker resends, and completes both handshakes.
    #[tokio::test]
    async fn a_resumed_session_finishes_qos2_both_ways_on_the_next_connection() {
        let (client_side, mut broker) = tokio::io::duplex(4096);
        let (client, mut ev) =
            Events::over(Box::new(client_side), Protocol::V311, Duration::from_secs(30), Session::new(10));
        let first = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            broker.write_all(&[0x20, 0x02, 0x00, 0x00]).await.expect("connack");
            let (t, publish) = next_packet(&mut buf, &mut broker).await;
            assert_eq!(t, 0x34, "QoS 2 PUBLISH");
            let id = [publish[5], publish[6]];
            broker.write_all(&[0x50, 0x02, id[0], id[1]]).await.expect("pubrec");
            let (t, _) = next_packet(&mut buf, &mut broker).await;
            assert_eq!(t, 0x62, "PUBREL");
            // A QoS 2 message to the client, id 5; its PUBREC comes, then the connection breaks.
            broker.write_all(&[0x34, 0x06, 0x00, 0x01, b't', 0x00, 0x05, b'm']).await.expect("publish");
            let (t, rec) = next_packet(&mut buf, &mut broker).await;
            assert_eq!((t, &rec[2..]), (0x50, &[0x00, 0x05][..]), "PUBREC 5");
            id
        });
        assert_eq!(ev.next().await.expect("connack"), Event::Connected { session_present: false });
        assert_eq!(client.try_publish("t", Qos::Q2, b"x".to_vec()), Publish::Queued);
        let Event::Message(m) = ev.next().await.expect("message") else { panic!("a message") };
        assert_eq!(&m.payload[..], b"m");
        // The next poll writes the PUBREC; then the broker hangs up.
        assert_eq!(ev.next().await.expect_err("the broker hung up").kind(), "closed");
        let id = first.await.expect("first connection script");
        let session = ev.into_session();

        let (client_side, mut broker) = tokio::io::duplex(4096);
        let (_client, mut ev) =
            Events::over(Box::new(client_side), Protocol::V311, Duration::from_secs(30), session);
        let second = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            broker.write_all(&[0x20, 0x02, 0x01, 0x00]).await.expect("connack, session present");
            let (t, rel) = next_packet(&mut buf, &mut broker).await;
            assert_eq!((t, &rel[2..]), (0x62, &id[..]), "the PUBREL is sent again");
            // The broker did not get the PUBREC for 5: it resends the message with DUP.
            broker.write_all(&[0x3C, 0x06, 0x00, 0x01, b't', 0x00, 0x05, b'm']).await.expect("dup");
            let (t, rec) = next_packet(&mut buf, &mut broker).await;
            assert_eq!((t, &rec[2..]), (0x50, &[0x00, 0x05][..]), "PUBREC 5 again");
            broker.write_all(&[0x62, 0x02, 0x00, 0x05]).await.expect("pubrel 5");
            let (t, comp) = next_packet(&mut buf, &mut broker).await;
            assert_eq!((t, &comp[2..]), (0x70, &[0x00, 0x05][..]), "PUBCOMP 5");
            broker.write_all(&[0x70, 0x02, id[0], id[1]]).await.expect("pubcomp");
            let mut rest = [0u8; 16];
            let _ = broker.read(&mut rest).await;
        });
        assert_eq!(ev.next().await.expect("connack"), Event::Connected { session_present: true });
        assert_eq!(ev.next().await.expect("pubcomp"), Event::Acked, "no second delivery of 5 before it");
        second.abort();
    }

    async fn next_packet(buf: &mut BytesMut, broker: &mut tokio::io::DuplexStream) -> (u8, BytesMut) {
        loop {
            if let Some((first, len)) = frame(buf) {
                return (first, buf.split_to(len));
            }
            let mut chunk = [0u8; 256];
            let n = broker.read(&mut chunk).await.expect("read");
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The first byte and total length of the first whole packet in `buf`.
    fn frame(buf: &BytesMut) -> Option<(u8, usize)> {
        let mut len = 0usize;
        for i in 0..4 {
            let b = *buf.get(1 + i)?;
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let total = 2 + i + len;
                return (buf.len() >= total).then_some((buf[0], total));
            }
        }
        None
    }
}
