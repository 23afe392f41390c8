//! Client-facing listeners: MQTT over TCP, TLS, WebSocket and secure WebSocket (path `/mqtt`,
//! subprotocol `mqtt`), and QUIC (ALPN `mqtt`, one bidirectional stream per MQTT connection).
//! Every accepted connection runs [`conn::serve`] as a task of the broker; all stop on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{conn, Broker};

/// Server TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// CA for optional client certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

fn tls_config(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cfg = ironhub_raft::transport::client_facing_server(
        &files.cert,
        &files.key,
        files.client_ca.as_deref(),
        alpn,
    )
    .context("loading the server certificate (--tls-cert/--tls-key/--tls-client-ca)")?;
    Ok(Arc::new(cfg))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener {addr} (in use? change it)"))
}

fn spawn_conn<S>(b: &Arc<Broker>, stream: S, peer: SocketAddr, listener: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let b2 = b.clone();
    b.tasks.spawn(async move { conn::serve(b2, stream, peer, listener).await });
}

/// MQTT over TCP, or over TLS when `tls` is given. Returns the bound address.
pub async fn tcp(b: Arc<Broker>, addr: SocketAddr, tls: Option<TlsFiles>) -> anyhow::Result<SocketAddr> {
    let name = if tls.is_some() { "mqtts" } else { "mqtt" };
    let acceptor = match &tls {
        Some(files) => Some(TlsAcceptor::from(tls_config(files, &[b"mqtt"])?)),
        None => None,
    };
    let listener = bind(addr, name).await?;
    let local = listener.local_addr()?;
    let b2 = b.clone();
    b.tasks.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = b2.shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // fd exhaustion and the like: back off instead of spinning
                        tracing::warn!(listener = name, "accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            match &acceptor {
                None => spawn_conn(&b2, stream, peer, name),
                Some(acceptor) => {
                    let (acceptor, b3) = (acceptor.clone(), b2.clone());
                    b2.tasks.spawn(async move {
                        let timeout = std::time::Duration::from_secs(b3.cfg.connect_timeout_s);
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => conn::serve(b3, tls, peer, name).await,
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tracing::info!(listener = name, %local, "MQTT listening");
    Ok(local)
}

/// MQTT over WebSocket (`/mqtt`), or secure WebSocket when `tls` is given. Returns the bound address.
pub async fn websocket(
    b: Arc<Broker>,
    addr: SocketAddr,
    tls: Option<TlsFiles>,
) -> anyhow::Result<SocketAddr> {
    let name: &'static str = if tls.is_some() { "wss" } else { "ws" };
    let acceptor = match &tls {
        Some(files) => Some(TlsAcceptor::from(tls_config(files, &[b"http/1.1"])?)),
        None => None,
    };
    let listener = bind(addr, name).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/mqtt", axum::routing::get(upgrade))
        .with_state((b.clone(), name))
        .into_make_service_with_connect_info::<PeerAddr>();
    let shutdown = b.shutdown.clone();
    match acceptor {
        None => {
            b.tasks.spawn(async move {
                let r = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
                if let Err(e) = r {
                    tracing::warn!(listener = name, "stopped: {e}");
                }
            });
        }
        Some(acceptor) => {
            let tls_listener = TlsListener::start(&b, listener, acceptor);
            b.tasks.spawn(async move {
                let r =
                    axum::serve(tls_listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
                if let Err(e) = r {
                    tracing::warn!(listener = name, "stopped: {e}");
                }
            });
        }
    }
    tracing::info!(listener = name, %local, "MQTT over WebSocket listening on /mqtt");
    Ok(local)
}

async fn upgrade(
    State((b, name)): State<(Arc<Broker>, &'static str)>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    ws.protocols(["mqtt"]).on_upgrade(move |socket| bridge(b, socket, peer, name))
}

/// Runs a connection over a WebSocket: binary frames carry the MQTT byte stream both ways.
async fn bridge(b: Arc<Broker>, socket: WebSocket, peer: SocketAddr, name: &'static str) {
    let (conn_side, ws_side) = tokio::io::duplex(64 * 1024);
    let (mut to_ws, mut from_ws) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(ws_side);
    let inbound = tokio::spawn(async move {
        while let Some(Ok(m)) = from_ws.next().await {
            // MQTT over WebSocket is binary only (MQTT 5 6.0): text frames are ignored
            let written = match m {
                WsMessage::Binary(d) => wr.write_all(&d).await.is_ok(),
                WsMessage::Close(_) => false,
                _ => true,
            };
            if !written {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_ws.send(WsMessage::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = to_ws.close().await;
    });
    conn::serve(b, conn_side, peer, name).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), outbound).await;
    inbound.abort();
}

/// The client's address, for both WebSocket listeners.
#[derive(Clone, Copy, Debug)]
struct PeerAddr(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// An axum listener whose connections come out of TLS handshakes run in their own tasks (a slow
/// handshake never blocks the next accept).
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(b: &Arc<Broker>, listener: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let b2 = b.clone();
        b.tasks.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = b2.shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(_) => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                // As on the TCP listener: without it the TLS and HTTP upgrade handshake of a
                // secure WebSocket waited on delayed ACKs (~44 ms per connect, measured).
                let _ = stream.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                let timeout = std::time::Duration::from_secs(b2.cfg.connect_timeout_s);
                b2.tasks.spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Self { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // the accept loop ended (shutdown): wait for axum's graceful shutdown to stop us
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// MQTT over QUIC (UDP, ALPN `mqtt`): each bidirectional stream a client opens is one MQTT connection.
pub async fn quic(b: Arc<Broker>, addr: SocketAddr, tls: TlsFiles) -> anyhow::Result<SocketAddr> {
    let mut rustls_cfg = (*tls_config(&tls, &[b"mqtt"])?).clone();
    rustls_cfg.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg).context("QUIC TLS configuration")?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server, addr).with_context(|| {
        format!("binding the MQTT over QUIC listener {addr} (UDP; in use? change --quic)")
    })?;
    let local = endpoint.local_addr()?;
    let b2 = b.clone();
    b.tasks.spawn(async move {
        loop {
            let incoming = tokio::select! {
                _ = b2.shutdown.cancelled() => break,
                i = endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let b3 = b2.clone();
            b2.tasks.spawn(async move {
                let Ok(connection) = incoming.await else { return };
                let peer = connection.remote_address();
                loop {
                    let (send, recv) = tokio::select! {
                        _ = b3.shutdown.cancelled() => return,
                        s = connection.accept_bi() => match s { Ok(s) => s, Err(_) => return },
                    };
                    spawn_conn(&b3, tokio::io::join(recv, send), peer, "quic");
                }
            });
        }
        endpoint.close(0u32.into(), b"shutdown");
    });
    tracing::info!(listener = "quic", %local, "MQTT over QUIC listening");
    Ok(local)
}
