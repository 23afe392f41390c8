//! Command line: `ironhub serve | ctl | config print`. Every serve flag has an `IRONHUB_*` variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// ironhub: a self-hosted IoT device hub (clustered MQTT broker replicated by Raft).
#[derive(Debug, Parser)]
#[command(name = "ironhub", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a hub node.
    Serve(ServeArgs),
    /// Administer a running cluster through its API.
    Ctl(CtlArgs),
    /// Configuration helpers.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `ironhub config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults < file < environment < flags) as TOML.
    Print(ServeArgs),
}

/// Flags of `ironhub serve` (and `ironhub config print`).
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "IRONHUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (default 1).
    #[arg(long, env = "IRONHUB_NODE_ID")]
    pub node_id: Option<u64>,
    /// Data directory (default ./data).
    #[arg(long, env = "IRONHUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// MQTT over TCP listener (default 0.0.0.0:1883).
    #[arg(long, env = "IRONHUB_MQTT")]
    pub mqtt: Option<String>,
    /// MQTT over TLS listener (default 0.0.0.0:8883, needs --tls-cert).
    #[arg(long, env = "IRONHUB_MQTTS")]
    pub mqtts: Option<String>,
    /// MQTT over WebSocket listener (default 0.0.0.0:8083).
    #[arg(long, env = "IRONHUB_WS")]
    pub ws: Option<String>,
    /// MQTT over secure WebSocket listener (default 0.0.0.0:8084, needs --tls-cert).
    #[arg(long, env = "IRONHUB_WSS")]
    pub wss: Option<String>,
    /// MQTT over QUIC listener, UDP (default 0.0.0.0:14567, needs --tls-cert).
    #[arg(long, env = "IRONHUB_QUIC")]
    pub quic: Option<String>,
    /// CoAP listener, UDP (default 0.0.0.0:5683).
    #[arg(long, env = "IRONHUB_COAP")]
    pub coap: Option<String>,
    /// Management API, /metrics and /healthz (default 0.0.0.0:18080).
    #[arg(long, env = "IRONHUB_API")]
    pub api: Option<String>,
    /// Cluster (QUIC) bind address (default 127.0.0.1:17000 single node, else this node's --peers entry).
    #[arg(long, env = "IRONHUB_CLUSTER")]
    pub cluster: Option<String>,
    /// Every voter including this node: "1=HOST:PORT,2=HOST:PORT,3=HOST:PORT".
    #[arg(long, env = "IRONHUB_PEERS")]
    pub peers: Option<String>,
    /// Partition groups of a new cluster (default 16, fixed at creation).
    #[arg(long, env = "IRONHUB_PARTITIONS")]
    pub partitions: Option<u16>,
    /// Server certificate (PEM) for MQTT over TLS, WSS and QUIC.
    #[arg(long, env = "IRONHUB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "IRONHUB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM).
    #[arg(long, env = "IRONHUB_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Shared cluster secret (every node the same).
    #[arg(long, env = "IRONHUB_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Cluster CA certificate (from `ironhub ctl certs`).
    #[arg(long, env = "IRONHUB_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// This node's cluster certificate.
    #[arg(long, env = "IRONHUB_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,
    /// This node's cluster key.
    #[arg(long, env = "IRONHUB_CLUSTER_KEY")]
    pub cluster_key: Option<PathBuf>,
    /// Let peers talk without a secret or certificates (development only).
    #[arg(long, env = "IRONHUB_INSECURE_DEV_CLUSTER")]
    pub insecure_dev_cluster: bool,
    /// Admin API token (default: generated on first start, stored in the data dir).
    #[arg(long, env = "IRONHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "IRONHUB_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// `ironhub ctl`: talks to a node's API.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node's API URL.
    #[arg(long, env = "IRONHUB_API_URL", default_value = "http://127.0.0.1:18080")]
    pub api: String,
    /// Admin token (default: read from ./data/admin-token when present).
    #[arg(long, env = "IRONHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `ironhub ctl ...`
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Cluster status and membership.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make a cluster CA and one certificate per node for --cluster-ca/--cluster-cert/--cluster-key.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "./cluster-certs")]
        out: PathBuf,
        /// Nodes as "1=HOST,2=HOST,3=HOST" (HOST goes into the certificate's names).
        #[arg(long, default_value = "1=127.0.0.1,2=127.0.0.1,3=127.0.0.1")]
        nodes: String,
    },
}

/// `ironhub ctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show nodes, every group's leader, term and members.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a node (started with an empty data dir) to the cluster.
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its cluster address HOST:PORT.
        addr: String,
    },
    /// Abandon the running membership plan (e.g. the added node never came up).
    CancelPlan,
    /// Remove a node from every group.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
}

impl ServeArgs {
    /// Builds the effective config: defaults < file < environment < flags (clap merges env and flags).
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    key: "config",
                    problem: format!("cannot read {}: {e}", path.display()),
                })?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| ConfigError { key: "config", problem: format!("{}: {e}", path.display()) })?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($flag:expr => $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
            ($flag:expr => some $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = Some(v);
                }
            };
        }
        set!(self.node_id => c.node_id);
        set!(self.data_dir => c.data_dir);
        set!(self.mqtt => c.listeners.mqtt);
        set!(self.mqtts => c.listeners.mqtts);
        set!(self.ws => c.listeners.ws);
        set!(self.wss => c.listeners.wss);
        set!(self.quic => c.listeners.quic);
        set!(self.coap => c.listeners.coap);
        set!(self.api => c.listeners.api);
        set!(self.cluster => some c.cluster.bind);
        set!(self.peers => c.cluster.peers);
        set!(self.partitions => c.cluster.partitions);
        set!(self.tls_cert => some c.tls.cert);
        set!(self.tls_key => some c.tls.key);
        set!(self.tls_client_ca => some c.tls.client_ca);
        set!(self.cluster_secret => some c.cluster.secret);
        set!(self.cluster_ca => some c.cluster.ca);
        set!(self.cluster_cert => some c.cluster.cert);
        set!(self.cluster_key => some c.cluster.key);
        set!(self.admin_token => some c.api.admin_token);
        set!(self.log_format => c.log.format);
        if self.insecure_dev_cluster {
            c.cluster.insecure_dev = true;
        }
        c.validate()?;
        Ok(c)
    }
}
