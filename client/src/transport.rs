//! Byte streams to the broker: TCP from a chosen source address, TLS (rustls), WebSocket and secure
//! WebSocket (tungstenite, binary frames, subprotocol `mqtt`) and QUIC (quinn, one bidirectional
//! stream per MQTT connection, ALPN `mqtt`). Every transport ends as one [`Io`]: a boxed
//! `AsyncRead + AsyncWrite` the connection driver reads and writes without knowing which it is.
//!
//! The socket is ours (not rumqttc's), which is what makes `--ifaddr` possible: the TCP socket is
//! bound to the source address before `connect`, and QUIC endpoints are bound per source address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;

use super::ClientError;

/// Which transport carries MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over secure WebSocket.
    Wss,
    /// MQTT over QUIC (one bidirectional stream per connection, ALPN `mqtt`).
    Quic,
}

impl Transport {
    /// Whether the transport needs a TLS configuration.
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Quic)
    }
}

/// A connection's byte stream.
pub trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}

/// A boxed byte stream.
pub type Io = Box<dyn AsyncIo>;

/// Why the transport could not be set up (before any connection).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read or held no certificate.
    #[error("--ca {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// No usable TLS roots.
    #[error("{0}")]
    Tls(String),
    /// The host did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
}

/// Where and how every client of a run connects; built once per run, shared by all clients.
pub struct Endpoint {
    transport: Transport,
    /// The broker's address (resolved once).
    addr: SocketAddr,
    host: String,
    port: u16,
    ws_path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: ServerName<'static>,
    /// QUIC client endpoints, one per source address (one UDP socket carries many connections).
    quic: Mutex<HashMap<Option<IpAddr>, quinn::Endpoint>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({:?} {})", self.transport, self.addr)
    }
}

/// TLS options.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust (default: the system bundle).
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (self-signed test brokers).
    pub insecure: bool,
}

/// The system CA bundle (Debian, Ubuntu, Alpine).
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts every certificate (`--insecure`); signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn read_roots(path: &Path) -> Result<rustls::RootCertStore, SetupError> {
    let err = |why: String| SetupError::Ca { path: path.display().to_string(), why };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        // A bundle may hold certificates webpki cannot parse; skip those, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(err("no usable PEM certificate in it".into()));
    }
    Ok(roots)
}

fn tls_config(o: &TlsOptions, alpn: Option<&[u8]>) -> Result<rustls::ClientConfig, SetupError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?;
    let mut cfg = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let path = o.ca.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA));
        builder.with_root_certificates(read_roots(&path)?).with_no_client_auth()
    };
    if let Some(a) = alpn {
        cfg.alpn_protocols = vec![a.to_vec()];
    }
    Ok(cfg)
}

impl Endpoint {
    /// Resolves `host` once and prepares TLS for `transport`.
    pub async fn new(
        transport: Transport,
        host: &str,
        port: u16,
        ws_path: &str,
        tls: &TlsOptions,
    ) -> Result<Self, SetupError> {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| SetupError::Resolve(format!("{host}:{port}")))?;
        let tls = match transport {
            Transport::Tcp | Transport::Ws => None,
            Transport::Tls | Transport::Wss => Some(Arc::new(tls_config(tls, None)?)),
            Transport::Quic => Some(Arc::new(tls_config(tls, Some(b"mqtt"))?)),
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| SetupError::Tls(format!("server name {host}: {e}")))?;
        Ok(Endpoint {
            transport,
            addr,
            host: host.to_string(),
            port,
            ws_path: ws_path.to_string(),
            tls,
            server_name,
            quic: Mutex::new(HashMap::new()),
        })
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn tcp(&self, source: Option<IpAddr>) -> Result<tokio::net::TcpStream, ClientError> {
        let socket = if self.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let socket = socket.map_err(|e| ClientError::io("socket", &e))?;
        socket.set_nodelay(true).map_err(|e| ClientError::io("socket", &e))?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| ClientError::io("bind", &e))?;
        }
        socket.connect(self.addr).await.map_err(|e| ClientError::io("connect", &e))
    }

    async fn tls_over<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, ClientError> {
        let cfg = self.tls.clone().ok_or_else(|| ClientError::new("tls", "no TLS configuration"))?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(self.server_name.clone(), s)
            .await
            .map_err(|e| ClientError::new("tls", e.to_string()))
    }

    async fn ws_over<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        s: S,
        scheme: &str,
    ) -> Result<Io, ClientError> {
        let url = format!("{scheme}://{}:{}{}", self.host, self.port, self.ws_path);
        let mut req = url.into_client_request().map_err(|e| ClientError::new("ws", e.to_string()))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", tungstenite::http::HeaderValue::from_static("mqtt"));
        let (ws, _resp) = tokio_tungstenite::client_async(req, s)
            .await
            .map_err(|e| ClientError::new("ws", e.to_string()))?;
        Ok(Box::new(WsIo { ws, rd: Bytes::new() }))
    }

    fn quic_endpoint(&self, source: Option<IpAddr>) -> Result<quinn::Endpoint, ClientError> {
        let mut map = self.quic.lock();
        if let Some(e) = map.get(&source) {
            return Ok(e.clone());
        }
        let bind = match (source, self.addr) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        };
        let mut ep = quinn::Endpoint::client(bind).map_err(|e| ClientError::io("bind", &e))?;
        let tls = self.tls.clone().ok_or_else(|| ClientError::new("tls", "no TLS configuration"))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::new("tls", e.to_string()))?;
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        map.insert(source, ep.clone());
        Ok(ep)
    }

    async fn quic(&self, source: Option<IpAddr>) -> Result<Io, ClientError> {
        let ep = self.quic_endpoint(source)?;
        let name = match &self.server_name {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            _ => self.host.clone(),
        };
        let conn = ep
            .connect(self.addr, &name)
            .map_err(|e| ClientError::new("quic", e.to_string()))?
            .await
            .map_err(|e| ClientError::new("quic", e.to_string()))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| ClientError::new("quic", e.to_string()))?;
        Ok(Box::new(QuicIo { io: tokio::io::join(recv, send), _conn: conn }))
    }

    /// Opens a byte stream to the broker from `source` (any local address when `None`).
    pub async fn open(&self, source: Option<IpAddr>) -> Result<Io, ClientError> {
        match self.transport {
            Transport::Tcp => Ok(Box::new(self.tcp(source).await?)),
            Transport::Tls => Ok(Box::new(self.tls_over(self.tcp(source).await?).await?)),
            Transport::Ws => self.ws_over(self.tcp(source).await?, "ws").await,
            Transport::Wss => {
                let tls = self.tls_over(self.tcp(source).await?).await?;
                self.ws_over(tls, "wss").await
            }
            Transport::Quic => self.quic(source).await,
        }
    }
}

/// MQTT over one QUIC stream; holds the connection so it lives as long as the stream.
struct QuicIo {
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    _conn: quinn::Connection,
}

impl AsyncRead for QuicIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A WebSocket as a byte stream: each write is one binary message; reads concatenate the binary
/// messages received (MQTT packets may span or share messages).
struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last message received.
    rd: Bytes,
}

fn ws_err(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::UnexpectedEof, "websocket closed")
        }
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.rd.is_empty() {
                let n = self.rd.len().min(buf.remaining());
                buf.put_slice(&self.rd[..n]);
                self.rd.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.rd = b,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // Pings are answered by tungstenite on the next write or flush; text is not MQTT.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
    }
}
