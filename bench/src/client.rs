//! One MQTT client for the bench over rumqttc, with MQTT 3.1.1 and 5 behind one type.
//!
//! A [`Client`] enqueues requests (subscribe, publish, disconnect) without waiting; its
//! [`Events`] must be polled by the same task to move bytes, and yields the few events the bench
//! cares about ([`Event`]). rumqttc bounds the request queue ([`REQUEST_CAPACITY`]) and the
//! outgoing in-flight window (`--inflight`): when both are full, [`Client::try_publish`] returns
//! [`Publish::Full`] and the publisher waits for the next event before trying again.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

use crate::cli::{Protocol, Qos};

/// Requests queued per client before `try_publish` reports `Full`.
pub const REQUEST_CAPACITY: usize = 64;

/// Largest packet accepted from the broker (bytes).
const MAX_PACKET: usize = 1024 * 1024;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT version.
    pub protocol: Protocol,
    /// Client identifier.
    pub client_id: String,
    /// Clean session (3.1.1) / clean start with no session expiry (5); otherwise a persistent session.
    pub clean: bool,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Outgoing QoS 1/2 publishes in flight at once.
    pub inflight: u16,
    /// Connect timeout, seconds.
    pub connect_timeout_s: u64,
}

/// The events the bench acts on.
#[derive(Debug)]
pub enum Event {
    /// CONNACK accepted.
    Connected,
    /// SUBACK: `true` when every filter was granted.
    Subscribed(bool),
    /// An incoming PUBLISH payload.
    Message(Bytes),
    /// PUBACK or PUBCOMP: one outgoing QoS 1/2 publish completed.
    Acked,
    /// A QoS 0 publish was written to the socket.
    SentQos0,
    /// Anything else.
    Other,
}

/// A client error, named by kind for the error table.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or broke.
    #[error("{kind}: {detail}")]
    Connection {
        /// Short stable kind (`io`, `refused`, `timeout`, `protocol`).
        kind: &'static str,
        /// What rumqttc said.
        detail: String,
    },
}

impl ClientError {
    /// The error's kind for the error table.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connection { kind, .. } => kind,
        }
    }
}

/// Result of a non-blocking publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Queued.
    Queued,
    /// The request queue is full (or the event loop is gone): poll events, then retry.
    Full,
}

/// The request side of a client.
#[derive(Debug, Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V311(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// The event side of a client: poll it to move bytes.
pub enum Events {
    /// MQTT 3.1.1.
    V311(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<v5::EventLoop>),
}

fn qos4(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::Q0 => rumqttc::QoS::AtMostOnce,
        Qos::Q1 => rumqttc::QoS::AtLeastOnce,
        Qos::Q2 => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: Qos) -> v5::mqttbytes::QoS {
    match q {
        Qos::Q0 => v5::mqttbytes::QoS::AtMostOnce,
        Qos::Q1 => v5::mqttbytes::QoS::AtLeastOnce,
        Qos::Q2 => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Creates a client; nothing is sent until [`Events::next`] is polled.
pub fn connect(cfg: &ClientConfig) -> (Client, Events) {
    match cfg.protocol {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                .set_clean_session(cfg.clean)
                .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                .set_inflight(cfg.inflight.max(1))
                .set_request_channel_capacity(REQUEST_CAPACITY);
            if let Some((u, p)) = &cfg.credentials {
                o.set_credentials(u.clone(), p.clone());
            }
            let (c, mut e) = rumqttc::AsyncClient::new(o, REQUEST_CAPACITY);
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            net.set_connection_timeout(cfg.connect_timeout_s);
            e.set_network_options(net);
            (Client::V311(c), Events::V311(Box::new(e)))
        }
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
            o.set_keep_alive(cfg.keep_alive)
                .set_clean_start(cfg.clean)
                .set_max_packet_size(Some(MAX_PACKET as u32))
                .set_outgoing_inflight_upper_limit(cfg.inflight.max(1))
                .set_request_channel_capacity(REQUEST_CAPACITY)
                .set_connection_timeout(cfg.connect_timeout_s);
            if !cfg.clean {
                // A persistent MQTT 5 session needs an expiry; keep it for an hour.
                o.set_session_expiry_interval(Some(3600));
            }
            if let Some((u, p)) = &cfg.credentials {
                o.set_credentials(u.clone(), p.clone());
            }
            let mut net = rumqttc::NetworkOptions::new();
            net.set_tcp_nodelay(true);
            net.set_connection_timeout(cfg.connect_timeout_s);
            o.set_network_options(net);
            let (c, e) = v5::AsyncClient::new(o, REQUEST_CAPACITY);
            (Client::V5(c), Events::V5(Box::new(e)))
        }
    }
}

impl Client {
    /// Queues a SUBSCRIBE (waits only if the request queue is full).
    pub async fn subscribe(&self, filter: &str, qos: Qos) -> bool {
        match self {
            Client::V311(c) => c.subscribe(filter, qos4(qos)).await.is_ok(),
            Client::V5(c) => c.subscribe(filter, qos5(qos)).await.is_ok(),
        }
    }

    /// Queues a PUBLISH without waiting.
    pub fn try_publish(&self, topic: &str, qos: Qos, payload: Vec<u8>) -> Publish {
        // rumqttc reports "queue full" and "event loop gone" alike; a gone event loop also fails
        // the caller's next poll, which ends the client.
        let ok = match self {
            Client::V311(c) => c.try_publish(topic, qos4(qos), false, payload).is_ok(),
            Client::V5(c) => c.try_publish(topic, qos5(qos), false, payload).is_ok(),
        };
        if ok {
            Publish::Queued
        } else {
            Publish::Full
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub fn try_disconnect(&self) {
        let _ = match self {
            Client::V311(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        };
    }
}

fn kind4(e: &rumqttc::ConnectionError) -> &'static str {
    use rumqttc::ConnectionError as E;
    match e {
        E::Io(_) => "io",
        E::NetworkTimeout | E::FlushTimeout => "timeout",
        E::ConnectionRefused(_) => "connect_refused",
        E::RequestsDone => "closed",
        E::MqttState(_) | E::NotConnAck(_) => "protocol",
    }
}

fn kind5(e: &v5::ConnectionError) -> &'static str {
    use v5::ConnectionError as E;
    match e {
        E::Io(_) => "io",
        E::Timeout(_) => "timeout",
        E::ConnectionRefused(_) => "connect_refused",
        E::RequestsDone => "closed",
        _ => "protocol",
    }
}

impl Events {
    /// Polls the connection until the next event (or error). Cancel-safe as rumqttc's `poll`.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        match self {
            Events::V311(e) => {
                use rumqttc::{Event as E, Incoming as I, Outgoing as O};
                let ev = e
                    .poll()
                    .await
                    .map_err(|err| ClientError::Connection { kind: kind4(&err), detail: err.to_string() })?;
                Ok(match ev {
                    E::Incoming(I::ConnAck(_)) => Event::Connected,
                    E::Incoming(I::SubAck(a)) => Event::Subscribed(
                        a.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                    ),
                    E::Incoming(I::Publish(p)) => Event::Message(p.payload),
                    E::Incoming(I::PubAck(_)) | E::Incoming(I::PubComp(_)) => Event::Acked,
                    E::Outgoing(O::Publish(0)) => Event::SentQos0,
                    _ => Event::Other,
                })
            }
            Events::V5(e) => {
                use v5::mqttbytes::v5::Packet as P;
                use v5::Event as E;
                let ev = e
                    .poll()
                    .await
                    .map_err(|err| ClientError::Connection { kind: kind5(&err), detail: err.to_string() })?;
                Ok(match ev {
                    E::Incoming(P::ConnAck(_)) => Event::Connected,
                    E::Incoming(P::SubAck(a)) => Event::Subscribed(
                        a.return_codes
                            .iter()
                            .all(|c| matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))),
                    ),
                    E::Incoming(P::Publish(p)) => Event::Message(p.payload),
                    E::Incoming(P::PubAck(_)) | E::Incoming(P::PubComp(_)) => Event::Acked,
                    E::Outgoing(rumqttc::Outgoing::Publish(0)) => Event::SentQos0,
                    _ => Event::Other,
                })
            }
        }
    }
}
