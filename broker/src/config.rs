//! The hub's configuration: one typed struct, built as defaults < file < environment < flags.
//!
//! `ironhub config print` shows the effective result. Every field documents its unit and default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ironhub_raft::{BatchConfig, NodeId, StateCacheLimits, Timing};
use ironhub_storage::log_store::CacheLimits;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id (default 1).
    pub node_id: NodeId,
    /// Data directory (default `./data`).
    pub data_dir: PathBuf,
    /// Listener addresses.
    pub listeners: Listeners,
    /// Cluster membership and security.
    pub cluster: Cluster,
    /// Server TLS for MQTT over TLS, WSS and QUIC.
    pub tls: Tls,
    /// Management API.
    pub api: Api,
    /// Raft timing (`[raft]`).
    pub raft: Timing,
    /// Proposal batching (`[batch]`).
    pub batch: BatchConfig,
    /// How much of each raft group's written log stays in memory (`[log_cache]`).
    pub log_cache: CacheLimits,
    /// How many decoded values (sessions) of each group's state apply keeps in memory
    /// (`[state_cache]`).
    pub state_cache: StateCacheLimits,
    /// MQTT limits and behaviour (`[mqtt]`).
    pub mqtt: Mqtt,
    /// Logging.
    pub log: Log,
}

/// Listener addresses (`host:port`); `off` (or empty) disables one; a listener without a certificate
/// where it needs one is off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listeners {
    /// MQTT over TCP (default 0.0.0.0:1883).
    pub mqtt: String,
    /// MQTT over TLS (default 0.0.0.0:8883, when a certificate is configured).
    pub mqtts: String,
    /// MQTT over WebSocket, path /mqtt (default 0.0.0.0:8083).
    pub ws: String,
    /// MQTT over secure WebSocket (default 0.0.0.0:8084, when a certificate is configured).
    pub wss: String,
    /// MQTT over QUIC, UDP (default 0.0.0.0:14567, when a certificate is configured).
    pub quic: String,
    /// CoAP, UDP (default 0.0.0.0:5683).
    pub coap: String,
    /// Management API, /metrics and /healthz (default 0.0.0.0:18080).
    pub api: String,
}

/// Cluster settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// Cluster (QUIC) bind address; default 127.0.0.1:17000 for a single node, required with peers.
    pub bind: Option<String>,
    /// Every voter including this node: `"1=HOST:PORT,2=HOST:PORT,3=HOST:PORT"` (default empty: single node).
    pub peers: String,
    /// Shared cluster secret (HMAC over the TLS exporter).
    pub secret: Option<String>,
    /// Cluster CA certificate (PEM), with `cert` and `key` (made by `ironhub ctl certs`).
    pub ca: Option<PathBuf>,
    /// This node's cluster certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This node's cluster key (PEM).
    pub key: Option<PathBuf>,
    /// Allow peers without a secret or certificates (development only).
    pub insecure_dev: bool,
    /// Partition groups of a new cluster (default 16; fixed at creation).
    pub partitions: u16,
}

/// Server TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// Server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA for client certificates (PEM); when set, clients may present certificates.
    pub client_ca: Option<PathBuf>,
}

/// Management API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Api {
    /// Admin bearer token; generated on first start and stored in the data dir when unset.
    pub admin_token: Option<String>,
}

/// MQTT limits (`[mqtt]`); defaults follow the Tencent IoT Hub limits where the seeds give one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    /// Largest packet accepted, fixed header included (bytes; default 16384, Tencent's 16 KB). Raise it
    /// for plain MQTT clients sending large payloads; MQTT 5 clients are told it in CONNACK.
    pub max_packet_size: u32,
    /// Longest topic name or filter (bytes; default 255).
    pub max_topic_len: usize,
    /// Messages queued per session before the oldest is dropped (default 150).
    pub max_queue: u32,
    /// How long a queued message waits for its receiver (seconds; default 86400 = 24 h).
    pub queue_retention_s: u64,
    /// Unacknowledged QoS 1/2 PUBLISHes a client may send (MQTT 5 receive maximum; default 128;
    /// more is a protocol error, 0x93).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1/2 PUBLISHes the server sends a client (default 32, capped by the
    /// client's receive maximum).
    pub max_inflight: u16,
    /// Largest keepalive accepted (seconds; default 900). A larger MQTT 5 request is answered with this
    /// as the server keepalive; MQTT 3.x connections with a larger one are refused.
    pub max_keepalive_s: u16,
    /// Keepalive imposed on clients that ask for 0 (none), in seconds; 0 allows no keepalive (default 0).
    pub server_keepalive_s: u16,
    /// Session expiry of MQTT 3.x persistent sessions (clean session 0), and the largest MQTT 5 session
    /// expiry granted (seconds; default 86400 × 7).
    pub max_session_expiry_s: u32,
    /// Topic aliases a client may use (MQTT 5 topic alias maximum; default 16; 0 = none).
    pub topic_alias_max: u16,
    /// Connection attempts per client id per node per minute before refusals (default 60).
    pub connect_rate_per_min: u32,
    /// Connections per node (default 18000, below the machine's 20000 open files).
    pub max_connections: usize,
    /// Seconds a new connection has to send CONNECT (default 10).
    pub connect_timeout_s: u64,
    /// Topic filters no client may subscribe to (SUBACK 0x80 / 0x87), e.g. `["#", "$SYS/#"]`.
    pub deny_filters: Vec<String>,
    /// QoS 0 messages buffered per connection before new ones are dropped (default 1000).
    pub qos0_buffer: usize,
    /// QoS 1/2 messages a partition may hold waiting for fan-out before its publishers are held
    /// back (their PUBACK/PUBREC waits, up to 10 s, then the message is stored anyway); default 1024.
    /// Bounds the time a message spends between its PUBACK and its subscribers' queues under
    /// overload, instead of letting it grow until their queues overflow.
    pub max_fanout_backlog: u64,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            max_packet_size: 16 * 1024,
            max_topic_len: 255,
            max_queue: 150,
            queue_retention_s: 24 * 3600,
            receive_maximum: 128,
            max_inflight: 32,
            max_keepalive_s: 900,
            server_keepalive_s: 0,
            max_session_expiry_s: 7 * 24 * 3600,
            topic_alias_max: 16,
            connect_rate_per_min: 60,
            max_connections: 18_000,
            connect_timeout_s: 10,
            deny_filters: Vec::new(),
            qos0_buffer: 1000,
            max_fanout_backlog: 1024,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` (default) or `ironhub_raft=debug,info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./data"),
            listeners: Listeners::default(),
            cluster: Cluster::default(),
            tls: Tls::default(),
            api: Api::default(),
            raft: Timing::default(),
            batch: BatchConfig::default(),
            log_cache: CacheLimits::default(),
            state_cache: StateCacheLimits::default(),
            mqtt: Mqtt::default(),
            log: Log::default(),
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            mqtt: "0.0.0.0:1883".into(),
            mqtts: "0.0.0.0:8883".into(),
            ws: "0.0.0.0:8083".into(),
            wss: "0.0.0.0:8084".into(),
            quic: "0.0.0.0:14567".into(),
            coap: "0.0.0.0:5683".into(),
            api: "0.0.0.0:18080".into(),
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            bind: None,
            peers: String::new(),
            secret: None,
            ca: None,
            cert: None,
            key: None,
            insecure_dev: false,
            partitions: 16,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

/// A configuration error: names the key and how to fix it (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("config `{key}`: {problem}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

fn err(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key, problem: problem.into() }
}

/// Parses `"1=HOST:PORT,2=HOST:PORT"`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| err("cluster.peers", format!("`{part}` is not ID=HOST:PORT")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| err("cluster.peers", format!("`{id}` in `{part}` is not a node id")))?;
        let addr = resolve(addr.trim()).map_err(|p| err("cluster.peers", p))?;
        if out.insert(id, addr).is_some() {
            return Err(err("cluster.peers", format!("node {id} is listed twice")));
        }
    }
    Ok(out)
}

/// A listener address of `""` or `off` disables that listener.
pub fn listener_enabled(addr: &str) -> bool {
    !(addr.is_empty() || addr.eq_ignore_ascii_case("off"))
}

/// Resolves `host:port` to one socket address.
pub fn resolve(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not a HOST:PORT address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

impl Config {
    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(err("node_id", "must be 1 or more"));
        }
        let peers = parse_peers(&self.cluster.peers)?;
        if !peers.is_empty() {
            if !peers.contains_key(&self.node_id) {
                return Err(err(
                    "cluster.peers",
                    format!(
                        "--node-id {} is not in --peers; list every voter including this node",
                        self.node_id
                    ),
                ));
            }
            let has_certs =
                self.cluster.ca.is_some() && self.cluster.cert.is_some() && self.cluster.key.is_some();
            if self.cluster.secret.is_none() && !has_certs && !self.cluster.insecure_dev {
                return Err(err(
                    "cluster.secret",
                    "a cluster with --peers needs --cluster-secret S, or --cluster-ca/--cluster-cert/--cluster-key \
                     (make them with `ironhub ctl certs`), or --insecure-dev-cluster for development",
                ));
            }
            if self.cluster.secret.as_deref().is_some_and(|s| s.len() < 8) {
                return Err(err("cluster.secret", "use at least 8 characters"));
            }
        }
        if self.cluster.ca.is_some() != self.cluster.cert.is_some()
            || self.cluster.cert.is_some() != self.cluster.key.is_some()
        {
            return Err(err("cluster.ca", "--cluster-ca, --cluster-cert and --cluster-key go together"));
        }
        if self.cluster.partitions == 0 || self.cluster.partitions > 1024 {
            return Err(err("cluster.partitions", "must be 1..=1024 (default 16)"));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(err("tls.cert", "--tls-cert and --tls-key go together"));
        }
        resolve(&self.listeners.api).map_err(|p| err("listeners.api", p))?;
        if let Some(b) = &self.cluster.bind {
            resolve(b).map_err(|p| err("cluster.bind", p))?;
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_min_ms <= r.heartbeat_ms * 2
            || r.election_max_ms <= r.election_min_ms
            || r.election_min_ms * 2 < r.election_max_ms
        {
            return Err(err(
                "raft.election_min_ms",
                "need 0 < heartbeat_ms, election_min_ms > 2 × heartbeat_ms, and election_min_ms < election_max_ms \
                 ≤ 2 × election_min_ms (failover takes up to 2 × election_max_ms; see docs/architecture.md)",
            ));
        }
        let b = &self.batch;
        if b.max_commands == 0 || b.queue == 0 || b.max_inflight == 0 || b.max_bytes == 0 {
            return Err(err("batch.queue", "batch limits must be at least 1 (see docs/architecture.md)"));
        }
        if r.snapshot_every == 0 {
            return Err(err("raft.snapshot_every", "must be at least 1 (default 20000)"));
        }
        if r.snapshot_log_bytes < b.max_bytes as u64 {
            return Err(err(
                "raft.snapshot_log_bytes",
                "must be at least one batch (batch.max_bytes, 65536 by default; default 4194304)",
            ));
        }
        let m = &self.mqtt;
        if m.max_packet_size < 64 || m.max_packet_size > 256 * 1024 * 1024 {
            return Err(err("mqtt.max_packet_size", "must be 64..=268435456 bytes (default 16384)"));
        }
        if m.max_topic_len == 0 || m.max_topic_len > 65535 {
            return Err(err("mqtt.max_topic_len", "must be 1..=65535 (default 255)"));
        }
        if m.max_queue == 0 || m.receive_maximum == 0 || m.max_inflight == 0 || m.qos0_buffer == 0 {
            return Err(err(
                "mqtt.max_queue",
                "max_queue, receive_maximum, max_inflight and qos0_buffer must be at least 1",
            ));
        }
        if m.max_fanout_backlog == 0 {
            return Err(err("mqtt.max_fanout_backlog", "must be at least 1 (default 1024)"));
        }
        if u64::from(m.receive_maximum) > crate::state::session::PublishWindow::SPAN {
            return Err(err(
                "mqtt.receive_maximum",
                "must be 1..=1024 (default 128; publishes are deduplicated over the last 1024 of a connection)",
            ));
        }
        if m.max_inflight > 32767 {
            return Err(err("mqtt.max_inflight", "must be at most 32767 (default 32)"));
        }
        if m.max_connections == 0 {
            return Err(err("mqtt.max_connections", "must be at least 1 (default 18000)"));
        }
        for f in &m.deny_filters {
            if !crate::mqtt::codec::valid_filter(f) {
                return Err(err("mqtt.deny_filters", format!("`{f}` is not a valid topic filter")));
            }
        }
        for (key, addr) in [
            ("listeners.mqtt", &self.listeners.mqtt),
            ("listeners.mqtts", &self.listeners.mqtts),
            ("listeners.ws", &self.listeners.ws),
            ("listeners.wss", &self.listeners.wss),
            ("listeners.quic", &self.listeners.quic),
        ] {
            if listener_enabled(addr) {
                resolve(addr).map_err(|p| err(key, p))?;
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(err("log.format", "use `text` or `json`"));
        }
        Ok(())
    }

    /// The cluster bind address: `cluster.bind`, else this node's `--peers` entry, else 127.0.0.1:17000.
    pub fn cluster_bind(&self) -> Result<SocketAddr, ConfigError> {
        if let Some(b) = &self.cluster.bind {
            return resolve(b).map_err(|p| err("cluster.bind", p));
        }
        let peers = parse_peers(&self.cluster.peers)?;
        match peers.get(&self.node_id) {
            Some(a) => Ok(*a),
            None => Ok(SocketAddr::from(([127, 0, 0, 1], 17000))),
        }
    }

    /// The config as TOML with secrets redacted (for `ironhub config print`).
    pub fn to_toml_redacted(&self) -> Result<String, toml::ser::Error> {
        let mut c = self.clone();
        if c.cluster.secret.is_some() {
            c.cluster.secret = Some("<redacted>".into());
        }
        if c.api.admin_token.is_some() {
            c.api.admin_token = Some("<redacted>".into());
        }
        toml::to_string_pretty(&c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        let text = c.to_toml_redacted().expect("toml");
        let back: Config = toml::from_str(&text).expect("parse");
        assert_eq!(back.listeners.api, "0.0.0.0:18080");
        assert_eq!(back.cluster.partitions, 16);
    }

    #[test]
    fn peers_parse_and_errors_name_the_key() {
        let p = parse_peers("1=127.0.0.1:1,2=127.0.0.1:2").expect("parse");
        assert_eq!(p.len(), 2);
        assert_eq!(parse_peers("1=x").unwrap_err().key, "cluster.peers");
        assert!(parse_peers("1=127.0.0.1:1,1=127.0.0.1:2").unwrap_err().problem.contains("twice"));
    }

    #[test]
    fn peers_need_a_secret_and_must_include_self() {
        let mut c = Config::default();
        c.cluster.peers = "1=127.0.0.1:1,2=127.0.0.1:2".into();
        assert_eq!(c.validate().unwrap_err().key, "cluster.secret");
        c.cluster.secret = Some("long-enough-secret".into());
        c.validate().expect("valid");
        c.node_id = 3;
        assert!(c.validate().unwrap_err().problem.contains("not in --peers"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("nod_id = 3").is_err());
        assert!(toml::from_str::<Config>("[log_cache]\nbyte = 1").is_err());
        assert!(toml::from_str::<Config>("[state_cache]\nentry = 1").is_err());
    }

    #[test]
    fn state_cache_limits_parse_with_defaults_for_the_rest() {
        let d = Config::default().state_cache;
        assert_eq!((d.entries, d.bytes), (20_000, 16 << 20));
        let c: Config = toml::from_str("[state_cache]\nentries = 0").expect("parse");
        assert_eq!((c.state_cache.entries, c.state_cache.bytes), (0, 16 << 20), "0 turns the cache off");
        assert!(toml::from_str::<Config>("[state_cache]\nbytes = -1").is_err());
    }

    #[test]
    fn log_cache_limits_parse_with_defaults_for_the_rest() {
        let c: Config = toml::from_str("[log_cache]\nbytes = 1048576").expect("parse");
        assert_eq!((c.log_cache.bytes, c.log_cache.entries), (1_048_576, CacheLimits::default().entries));
    }

    #[test]
    fn snapshot_size_policy_parses_and_refuses_less_than_a_batch() {
        let mut c: Config = toml::from_str("[raft]\nsnapshot_log_bytes = 1048576").expect("parse");
        assert_eq!((c.raft.snapshot_log_bytes, c.raft.keep_behind_bytes), (1_048_576, 2 << 20));
        assert!(c.validate().is_ok());
        c.raft.snapshot_log_bytes = 1000;
        assert_eq!(c.validate().unwrap_err().key, "raft.snapshot_log_bytes");
    }

    #[test]
    fn mqtt_limits_out_of_range_name_their_key() {
        let mut c = Config::default();
        c.mqtt.receive_maximum = 1025;
        assert_eq!(c.validate().unwrap_err().key, "mqtt.receive_maximum");
        c.mqtt.receive_maximum = 1024;
        assert!(c.validate().is_ok());
        c.mqtt.max_topic_len = 0;
        assert_eq!(c.validate().unwrap_err().key, "mqtt.max_topic_len");
    }
}
