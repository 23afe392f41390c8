//! `ironhub serve`: opens the data dir, starts the raft node and the listeners, and stops them
//! all on SIGTERM/SIGINT (one cancellation token, every task owned).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use ironhub_raft::transport::Security;
use ironhub_raft::{NodeConfig, RaftNode};
use tokio_util::sync::CancellationToken;

use crate::config::{listener_enabled, parse_peers, resolve, Config};
use crate::http::{self, ApiState};
use crate::mqtt::listen::{self, TlsFiles};
use crate::mqtt::metrics::MqttMetrics;
use crate::mqtt::router::Router;
use crate::mqtt::{fanout, Broker};
use crate::state::HubState;

/// Reads the admin token: configured, else stored in the data dir, else generated and stored.
fn admin_token(cfg: &Config) -> anyhow::Result<String> {
    if let Some(t) = &cfg.api.admin_token {
        return Ok(t.clone());
    }
    let path = cfg.data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    let token = random_hex();
    write_private(&path, &token).with_context(|| format!("storing the admin token in {}", path.display()))?;
    println!("ironhub: generated admin token (stored in {}): {token}", path.display());
    Ok(token)
}

fn random_hex() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Logs the limits of this process (open files) once at start.
/// Logs the open-files limit and returns its soft value, if readable.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    tracing::info!("{}", line.split_whitespace().collect::<Vec<_>>().join(" "));
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Files the node needs besides client connections (RocksDB, snapshots, cluster, API).
const RESERVED_FILES: usize = 1024;

/// Caps `mqtt.max_connections` below the process's open-files limit, so a full node refuses
/// CONNECTs (0x97) instead of failing to open its own files.
fn cap_connections(cfg: &mut Config, limit: Option<usize>) {
    let Some(limit) = limit else { return };
    let room = limit.saturating_sub(RESERVED_FILES).max(1);
    if cfg.mqtt.max_connections > room {
        tracing::warn!(
            configured = cfg.mqtt.max_connections,
            capped = room,
            "mqtt.max_connections is above the open-files limit ({limit}) minus {RESERVED_FILES} reserved; capping (raise `ulimit -n` for more)"
        );
        cfg.mqtt.max_connections = room;
    }
}

/// Runs a node until SIGTERM/SIGINT.
pub async fn serve(mut cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let limit = open_files_limit();
    cap_connections(&mut cfg, limit);
    let token = admin_token(&cfg)?;
    let peers = parse_peers(&cfg.cluster.peers)?;
    let security = match (&cfg.cluster.secret, &cfg.cluster.ca, &cfg.cluster.cert, &cfg.cluster.key) {
        (_, Some(ca), Some(cert), Some(key)) => {
            Security::Certs { ca: ca.clone(), cert: cert.clone(), key: key.clone() }
        }
        (Some(s), ..) => Security::Secret(s.clone()),
        // A single node talks to no peer; a random secret keeps its loopback port closed to others.
        _ if peers.is_empty() => Security::Secret(random_hex()),
        _ => Security::InsecureDev,
    };
    if listener_enabled(&cfg.listeners.coap) {
        tracing::warn!(listener = "coap", addr = %cfg.listeners.coap, "CoAP is not yet available in this build");
    }
    // Bind the API first: a port in use fails the start before the node joins the cluster.
    let api_addr: SocketAddr = resolve(&cfg.listeners.api).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the API listener {api_addr} (in use? change --api)"))?;
    let registry = prometheus::Registry::new();
    let node_cfg = NodeConfig {
        node_id: cfg.node_id,
        data_dir: cfg.data_dir.clone(),
        cluster_bind: cfg.cluster_bind()?,
        peers: peers.clone(),
        security,
        partitions: cfg.cluster.partitions,
        timing: cfg.raft.clone(),
        batch: cfg.batch.clone(),
        log_cache: cfg.log_cache.clone(),
        state_cache: cfg.state_cache.clone(),
    };
    let mqtt_metrics = MqttMetrics::new(&registry).context("registering MQTT metrics")?;
    // The route view is kept by apply, so it exists before the node starts applying.
    let router = Arc::new(Router::new(cfg.node_id, mqtt_metrics));
    let node = RaftNode::start(node_cfg, Arc::new(HubState::new(router.clone())), &registry)
        .await
        .context("starting the raft node")?;
    tracing::info!(node = cfg.node_id, cluster = %node.cluster_addr(), partitions = node.partitions(), "raft node started");
    let shutdown = CancellationToken::new();
    let broker = Broker::new(node.clone(), router, cfg.mqtt.clone(), shutdown.clone());
    fanout::spawn(broker.clone());
    start_listeners(&cfg, &broker).await?;

    tracing::info!(%api_addr, "API listening");
    let state = Arc::new(ApiState {
        node: node.clone(),
        admin_token: token,
        registry,
        max_topic_len: cfg.mqtt.max_topic_len,
    });
    let http = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, http::router(state))
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };

    let (fatal, stopped) = tokio::select! {
        _ = wait_for_signal() => (None, None),
        msg = node.fatal() => (Some(msg), None),
        msg = node.group_stopped() => (None, Some(msg)),
    };
    if let Some(msg) = &stopped {
        tracing::error!(
            "{msg}: exiting (code 1) so that the supervisor restarts the node; its data is intact"
        );
    }
    tracing::info!(
        "shutting down: closing MQTT connections, then the API, raft groups, transport and storage"
    );
    shutdown.cancel();
    broker.drain(std::time::Duration::from_secs(5)).await;
    if let Ok(Err(e)) = http.await {
        tracing::warn!("API server: {e}");
    }
    node.shutdown().await;
    tracing::info!("stopped");
    match (fatal, stopped) {
        (Some(msg), _) => Err(crate::config::ConfigError { key: "cluster.peers", problem: msg }.into()),
        (None, Some(msg)) => Err(anyhow::anyhow!("{msg}")),
        (None, None) => Ok(()),
    }
}

/// Starts the MQTT listeners that are enabled (TLS ones only with a certificate).
async fn start_listeners(cfg: &Config, b: &Arc<Broker>) -> anyhow::Result<()> {
    let l = &cfg.listeners;
    let tls = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => {
            Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: cfg.tls.client_ca.clone() })
        }
        _ => None,
    };
    if let Some(t) = &tls {
        // A certificate that does not load is a configuration error (exit 2), not a warning.
        ironhub_raft::transport::client_facing_server(&t.cert, &t.key, t.client_ca.as_deref(), &[])
            .map_err(|e| crate::config::ConfigError { key: "tls.cert", problem: e.to_string() })?;
    }
    let addr =
        |key: &'static str, a: &str| resolve(a).map_err(|p| crate::config::ConfigError { key, problem: p });
    if listener_enabled(&l.mqtt) {
        listen::tcp(b.clone(), addr("listeners.mqtt", &l.mqtt)?, None).await?;
    }
    // The MQTT TCP listener must bind; the others are extras a busy host may not have room for
    // (several nodes on one machine share the default ports): they warn and stay off.
    let extra = |what: &str, r: anyhow::Result<std::net::SocketAddr>| {
        if let Err(e) = r {
            tracing::warn!("{what} listener off: {e:#}");
        }
    };
    if listener_enabled(&l.ws) {
        extra(
            "WebSocket",
            async { listen::websocket(b.clone(), addr("listeners.ws", &l.ws)?, None).await }.await,
        );
    }
    match &tls {
        Some(tls) => {
            if listener_enabled(&l.mqtts) {
                let r = async {
                    listen::tcp(b.clone(), addr("listeners.mqtts", &l.mqtts)?, Some(tls.clone())).await
                };
                extra("MQTT over TLS", r.await);
            }
            if listener_enabled(&l.wss) {
                let r = async {
                    listen::websocket(b.clone(), addr("listeners.wss", &l.wss)?, Some(tls.clone())).await
                };
                extra("secure WebSocket", r.await);
            }
            if listener_enabled(&l.quic) {
                let r =
                    async { listen::quic(b.clone(), addr("listeners.quic", &l.quic)?, tls.clone()).await };
                extra("QUIC", r.await);
            }
        }
        None => tracing::info!("no --tls-cert: MQTT over TLS, secure WebSocket and QUIC are off"),
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_stays_below_the_open_files_limit() {
        let mut cfg = Config::default();
        cap_connections(&mut cfg, Some(4096));
        assert_eq!(cfg.mqtt.max_connections, 4096 - RESERVED_FILES);
        let mut cfg = Config::default();
        cap_connections(&mut cfg, Some(1_000_000));
        assert_eq!(cfg.mqtt.max_connections, 18_000, "a configured value below the limit is kept");
        cap_connections(&mut cfg, None);
        assert_eq!(cfg.mqtt.max_connections, 18_000);
    }
}
