//! The command line: one subcommand per scenario, sharing [`CommonArgs`], plus `compare`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::scenario;
pub use ironhub_client::{Protocol, Qos, Transport};

/// Load generator for MQTT brokers (any broker: ironhub, mosquitto, EMQX …), with
/// publish-to-receive latency and loss/duplicate/out-of-order accounting.
#[derive(Debug, Parser)]
#[command(name = "ironhub-bench", version, about, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one scenario against one broker.
    #[command(flatten)]
    Run(ScenarioCmd),
    /// Run one scenario against two brokers one after the other and print the ratios (B / A).
    Compare(CompareArgs),
}

/// The scenarios.
#[derive(Debug, Clone, Subcommand)]
pub enum ScenarioCmd {
    /// Open N connections at --connect-rate and hold them for --duration.
    Conn(scenario::conn::ConnArgs),
    /// Publishers only, each on its own topic.
    Pub(scenario::publish::PubArgs),
    /// Subscribers only, on one filter (publish from elsewhere).
    Sub(scenario::subscribe::SubArgs),
    /// Many publishers, few subscribers on a wildcard.
    FanIn(scenario::fan_in::FanInArgs),
    /// Few publishers, many subscribers on one topic.
    FanOut(scenario::fan_out::FanOutArgs),
    /// N publisher/subscriber pairs, one topic per pair.
    P2p(scenario::p2p::P2pArgs),
    /// Shared subscriptions ($share/GROUP/TOPIC): each message goes to one member per group.
    Shared(scenario::shared::SharedArgs),
}

/// `compare`: the same scenario against two brokers.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// First broker, HOST:PORT (overrides the scenario's --host/--port).
    #[arg(long)]
    pub a: String,
    /// Second broker, HOST:PORT.
    #[arg(long)]
    pub b: String,
    /// The scenario and its arguments.
    #[command(subcommand)]
    pub scenario: ScenarioCmd,
}

/// Arguments every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Broker host (traffic goes only to this address).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port (of the listener for --transport).
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Transport: tcp, tls, ws (WebSocket), wss (secure WebSocket) or quic (UDP; one stream per
    /// connection, ALPN `mqtt`).
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// TLS (tls, wss, quic): PEM file of the CA to trust (default: the system bundle).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// TLS (tls, wss, quic): accept any server certificate (self-signed test brokers).
    #[arg(long)]
    pub insecure: bool,
    /// WebSocket path (ws, wss).
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// Source addresses to spread connections over, comma separated
    /// (e.g. 127.0.0.1,127.0.0.2,127.0.0.3): each address has its own ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    pub ifaddr: Vec<IpAddr>,
    /// Worker processes (0 = one per 15,000 connections, 1 = never split).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long = "mqtt", value_enum, default_value = "3.1.1")]
    pub protocol: Protocol,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long, value_enum, default_value = "1")]
    pub qos: Qos,
    /// Payload size in bytes (at least 20: the header with publisher id, sequence and send time).
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// Publish rate per publisher, messages/s (0 = as fast as the broker acknowledges).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Total publish rate over all publishers, messages/s (overrides --rate).
    #[arg(long)]
    pub rate_total: Option<f64>,
    /// How long to publish (or hold connections), seconds. Default 10 unless --count is given.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Messages per publisher; the run stops when every publisher has sent them
    /// (bounded anyway by --duration, default 300 s with --count).
    #[arg(long)]
    pub count: Option<u64>,
    /// New connections per second.
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Use persistent sessions (clean-session 0 / clean-start 0 with a 1 h session expiry).
    #[arg(long)]
    pub persistent: bool,
    /// File with credentials: `username:password` on the first line (or username, then password
    /// on two lines).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Keep-alive, seconds.
    #[arg(long, default_value_t = 30)]
    pub keep_alive: u64,
    /// Outgoing QoS 1/2 publishes in flight per client.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// After publishing stops, how long to wait for outstanding messages and acks, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Topic prefix (a unique one per run by default, so runs never see each other's messages).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Client id prefix.
    #[arg(long, default_value = "ihb")]
    pub client_prefix: String,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a PNG plot of throughput and latency over time to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Broker process id whose CPU use to record (repeatable; read from /proc/PID/stat).
    #[arg(long = "broker-pid")]
    pub broker_pids: Vec<u32>,
    /// Hide the live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: run as worker K of N (`K/N`) under a coordinating ironhub-bench.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
    /// Internal: the run's tag (client ids), shared by the workers of one run.
    #[arg(long, hide = true)]
    pub run_tag: Option<String>,
}

impl ScenarioCmd {
    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            ScenarioCmd::Conn(_) => "conn",
            ScenarioCmd::Pub(_) => "pub",
            ScenarioCmd::Sub(_) => "sub",
            ScenarioCmd::FanIn(_) => "fan-in",
            ScenarioCmd::FanOut(_) => "fan-out",
            ScenarioCmd::P2p(_) => "p2p",
            ScenarioCmd::Shared(_) => "shared",
        }
    }

    /// The common arguments.
    pub fn common(&self) -> &CommonArgs {
        match self {
            ScenarioCmd::Conn(a) => &a.common,
            ScenarioCmd::Pub(a) => &a.common,
            ScenarioCmd::Sub(a) => &a.common,
            ScenarioCmd::FanIn(a) => &a.common,
            ScenarioCmd::FanOut(a) => &a.common,
            ScenarioCmd::P2p(a) => &a.common,
            ScenarioCmd::Shared(a) => &a.common,
        }
    }

    /// The common arguments, mutable (compare overrides the broker address).
    pub fn common_mut(&mut self) -> &mut CommonArgs {
        match self {
            ScenarioCmd::Conn(a) => &mut a.common,
            ScenarioCmd::Pub(a) => &mut a.common,
            ScenarioCmd::Sub(a) => &mut a.common,
            ScenarioCmd::FanIn(a) => &mut a.common,
            ScenarioCmd::FanOut(a) => &mut a.common,
            ScenarioCmd::P2p(a) => &mut a.common,
            ScenarioCmd::Shared(a) => &mut a.common,
        }
    }

    /// Who connects, subscribes and publishes, with `prefix` as the topic prefix.
    pub fn plan(&self, prefix: &str) -> scenario::Plan {
        match self {
            ScenarioCmd::Conn(a) => a.plan(prefix),
            ScenarioCmd::Pub(a) => a.plan(prefix),
            ScenarioCmd::Sub(a) => a.plan(prefix),
            ScenarioCmd::FanIn(a) => a.plan(prefix),
            ScenarioCmd::FanOut(a) => a.plan(prefix),
            ScenarioCmd::P2p(a) => a.plan(prefix),
            ScenarioCmd::Shared(a) => a.plan(prefix),
        }
    }
}

/// Reads `username:password` (one line) or username and password (two lines) from a file's text.
pub fn parse_credentials(text: &str) -> Option<(String, String)> {
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.is_empty());
    let first = lines.next()?;
    match lines.next() {
        Some(password) => Some((first.to_string(), password.to_string())),
        None => first.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())),
    }
}

/// Splits `HOST:PORT` (the port after the last colon).
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_in_both_layouts() {
        assert_eq!(parse_credentials("u:p:w\n"), Some(("u".into(), "p:w".into())));
        assert_eq!(parse_credentials("user\npass\n"), Some(("user".into(), "pass".into())));
        assert_eq!(parse_credentials("nocolon\n"), None);
    }

    #[test]
    fn host_port_splits_at_the_last_colon() {
        assert_eq!(parse_host_port("127.0.0.1:1883"), Some(("127.0.0.1".into(), 1883)));
        assert_eq!(parse_host_port("[::1]:1884"), Some(("::1".into(), 1884)));
        assert_eq!(parse_host_port("nohost"), None);
    }

    #[test]
    fn help_lists_every_scenario() {
        use clap::CommandFactory;
        let help = Cli::command().render_help().to_string();
        for s in ["conn", "pub", "sub", "fan-in", "fan-out", "p2p", "shared", "compare"] {
            assert!(help.contains(s), "{s} missing from --help");
        }
    }
}
