//! Prometheus metrics of the MQTT front end, registered on the node's registry (`/metrics`).

use super::codec::v5;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The MQTT metrics.
#[derive(Clone)]
pub struct MqttMetrics {
    /// Open connections (after CONNACK).
    pub connections: IntGauge,
    /// Connection attempts by result (`accepted`, or the refusal).
    pub connects: IntCounterVec,
    /// Packets by direction (`in`/`out`) and type.
    pub packets: IntCounterVec,
    /// Bytes by direction.
    pub bytes: IntCounterVec,
    /// PUBLISH messages by direction and QoS.
    pub messages: IntCounterVec,
    /// Messages dropped, by reason (`queue_full`, `expired`, `too_large`, `qos0_buffer`, `no_route`).
    pub dropped: IntCounterVec,
    /// Connections closed for a protocol violation, by reason code.
    pub protocol_errors: IntCounterVec,
    /// Queued messages per partition led by this node.
    pub queue_depth: IntGaugeVec,
    /// Outbox messages waiting for fan-out per partition led by this node.
    pub outbox_depth: IntGaugeVec,
    /// Time from a message's commit to its fan-out (seconds).
    pub fanout_lag: Histogram,
    /// How far this node's clock leads each peer's, ms (estimated from the messages they stamp).
    pub clock_lead: IntGaugeVec,
    /// Time of each fan-out step: `barrier` (route barrier), `enqueue` (Enqueue commits of a round).
    pub fanout_step: HistogramVec,
    /// Time from PUBLISH accepted to delivery to a subscriber, by QoS (seconds).
    pub deliver_latency: HistogramVec,
    /// Sessions taken over by a newer connection.
    pub takeovers: IntCounter,
    /// Back-pressure waits, by outcome: QoS >= 1 PUBLISHes held back by a full fan-out backlog,
    /// `waited` (room came) or `gave_up` (stored after `FANOUT_PATIENCE` anyway); fan-out rounds
    /// held back by a draining receiver's full queue, `round_waited` (room came) or `round_slow`
    /// (queued anyway after the patience; that receiver is not waited for a while).
    pub fanout_held: IntCounterVec,
    /// The series every packet touches, looked up once.
    pub hot: PerPacket,
}

/// MQTT packet types, as the `type` label names them, in the order of [`packet_index`].
pub const PACKET_TYPES: [&str; 15] = [
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// The packet's position in [`PACKET_TYPES`].
pub fn packet_index(p: &v5::Packet) -> usize {
    use v5::Packet as P;
    match p {
        P::Connect(_) => 0,
        P::ConnAck(_) => 1,
        P::Publish(_) => 2,
        P::PubAck(_) => 3,
        P::PubRec(_) => 4,
        P::PubRel(_) => 5,
        P::PubComp(_) => 6,
        P::Subscribe(_) => 7,
        P::SubAck(_) => 8,
        P::Unsubscribe(_) => 9,
        P::UnsubAck(_) => 10,
        P::PingReq => 11,
        P::PingResp => 12,
        P::Disconnect(_) => 13,
        P::Auth(_) => 14,
    }
}

/// Handles of the series counted for every packet and message, resolved when the metrics are
/// made: a labelled lookup hashes its labels and takes a lock, several times per message.
#[derive(Clone)]
pub struct PerPacket {
    packets: [Vec<IntCounter>; 2],
    messages: [Vec<IntCounter>; 2],
    bytes: [IntCounter; 2],
    deliver_latency: Vec<Histogram>,
}

/// Direction of a packet: index of the `dir` label.
#[derive(Clone, Copy)]
pub enum Dir {
    /// From the client.
    In = 0,
    /// To the client.
    Out = 1,
}

impl PerPacket {
    fn new(
        packets: &IntCounterVec,
        messages: &IntCounterVec,
        bytes: &IntCounterVec,
        latency: &HistogramVec,
    ) -> Self {
        let dirs = ["in", "out"];
        let qos = ["0", "1", "2"];
        let per = |f: &dyn Fn(&str) -> Vec<IntCounter>| [f(dirs[0]), f(dirs[1])];
        Self {
            packets: per(&|d| PACKET_TYPES.iter().map(|t| packets.with_label_values(&[d, t])).collect()),
            messages: per(&|d| qos.iter().map(|q| messages.with_label_values(&[d, q])).collect()),
            bytes: dirs.map(|d| bytes.with_label_values(&[d])),
            deliver_latency: qos.iter().map(|q| latency.with_label_values(&[q])).collect(),
        }
    }

    /// Counts a packet of type `PACKET_TYPES[kind]`.
    pub fn packet(&self, dir: Dir, kind: usize) {
        if let Some(c) = self.packets[dir as usize].get(kind) {
            c.inc();
        }
    }

    /// Counts a PUBLISH of QoS `qos`.
    pub fn message(&self, dir: Dir, qos: u8) {
        self.messages[dir as usize][usize::from(qos.min(2))].inc();
    }

    /// Counts bytes.
    pub fn bytes(&self, dir: Dir, n: u64) {
        self.bytes[dir as usize].inc_by(n);
    }

    /// Observes a publish-to-deliver latency at QoS `qos`.
    pub fn deliver_latency(&self, qos: u8, seconds: f64) {
        self.deliver_latency[usize::from(qos.min(2))].observe(seconds);
    }
}

impl MqttMetrics {
    /// Registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let buckets = vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
        let packets = IntCounterVec::new(
            Opts::new("ironhub_mqtt_packets_total", "MQTT packets by direction and type"),
            &["dir", "type"],
        )?;
        let bytes =
            IntCounterVec::new(Opts::new("ironhub_mqtt_bytes_total", "MQTT bytes by direction"), &["dir"])?;
        let messages = IntCounterVec::new(
            Opts::new("ironhub_mqtt_messages_total", "MQTT PUBLISH messages by direction and QoS"),
            &["dir", "qos"],
        )?;
        let deliver_latency = HistogramVec::new(
            HistogramOpts::new(
                "ironhub_publish_deliver_seconds",
                "From PUBLISH accepted to sent to a subscriber",
            )
            .buckets(buckets.clone()),
            &["qos"],
        )?;
        let m = Self {
            connections: IntGauge::new("ironhub_mqtt_connections", "Open MQTT connections")?,
            connects: IntCounterVec::new(
                Opts::new("ironhub_mqtt_connects_total", "MQTT connection attempts by result"),
                &["result"],
            )?,
            packets: packets.clone(),
            bytes: bytes.clone(),
            messages: messages.clone(),
            dropped: IntCounterVec::new(
                Opts::new("ironhub_queue_dropped_total", "Messages dropped before delivery, by reason"),
                &["reason"],
            )?,
            protocol_errors: IntCounterVec::new(
                Opts::new(
                    "ironhub_mqtt_protocol_errors_total",
                    "Connections closed for a bad packet, by reason code",
                ),
                &["reason"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new("ironhub_queue_depth", "Queued messages in the partitions this node leads"),
                &["group"],
            )?,
            outbox_depth: IntGaugeVec::new(
                Opts::new(
                    "ironhub_outbox_depth",
                    "Messages waiting for fan-out in the partitions this node leads",
                ),
                &["group"],
            )?,
            fanout_lag: Histogram::with_opts(
                HistogramOpts::new("ironhub_fanout_lag_seconds", "From publish to fan-out committed")
                    .buckets(buckets.clone()),
            )?,
            clock_lead: IntGaugeVec::new(
                Opts::new("ironhub_clock_lead_ms", "How far this node's wall clock leads a peer's, ms"),
                &["node"],
            )?,
            fanout_step: HistogramVec::new(
                HistogramOpts::new("ironhub_fanout_step_seconds", "Time of one fan-out step, by step")
                    .buckets(buckets.clone()),
                &["step"],
            )?,
            deliver_latency: deliver_latency.clone(),
            takeovers: IntCounter::new("ironhub_mqtt_session_takeovers_total", "Sessions taken over")?,
            fanout_held: IntCounterVec::new(
                Opts::new(
                    "ironhub_fanout_backpressure_total",
                    "Back-pressure waits: PUBLISHes held while their partition's fan-out backlog was full, fan-out rounds held while receivers' queues were full",
                ),
                &["outcome"],
            )?,
            hot: PerPacket::new(&packets, &messages, &bytes, &deliver_latency),
        };
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connects.clone()))?;
        registry.register(Box::new(m.packets.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.protocol_errors.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.outbox_depth.clone()))?;
        registry.register(Box::new(m.fanout_lag.clone()))?;
        registry.register(Box::new(m.fanout_step.clone()))?;
        registry.register(Box::new(m.clock_lead.clone()))?;
        registry.register(Box::new(m.deliver_latency.clone()))?;
        registry.register(Box::new(m.takeovers.clone()))?;
        registry.register(Box::new(m.fanout_held.clone()))?;
        // Exported from the start (at 0), so a dashboard sees the family before the first wait.
        for outcome in ["waited", "gave_up", "round_waited", "round_slow"] {
            m.fanout_held.with_label_values(&[outcome]);
        }
        Ok(m)
    }

    /// Metrics registered nowhere (tests).
    #[cfg(test)]
    pub fn unregistered() -> Self {
        Self::new(&Registry::new()).expect("a fresh registry has no duplicates")
    }
}
