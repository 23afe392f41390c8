//! TLS and QUIC configuration for the three [`Security`] modes, always on the ring provider.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::auth::Proof;
use super::{Security, TransportError, ALPN, CLUSTER_SERVER_NAME, MAX_STREAMS_PER_CONNECTION};

/// QUIC idle timeout: a peer silent this long is considered gone (heartbeats run every 250 ms).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive interval, well inside [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Everything the endpoint needs for one security mode.
pub(crate) struct EndpointConfigs {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
    pub proof: Proof,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str) -> impl FnOnce(rustls::Error) -> TransportError + '_ {
    move |e| TransportError::Config(format!("{what}: {e}"))
}

fn quic_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT.as_millis() as u32))));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// Builds server and client configs for `security`.
pub(crate) fn build(security: &Security) -> Result<EndpointConfigs, TransportError> {
    let p = provider();
    let (server_tls, client_tls, proof) = match security {
        Security::Secret(secret) => {
            if secret.is_empty() {
                return Err(TransportError::Config("the cluster secret is empty".into()));
            }
            let (certs, key) = self_signed()?;
            (server_no_client_auth(&p, certs, key)?, client_skip_verify(&p)?, Proof::secret(secret))
        }
        Security::InsecureDev => {
            tracing::warn!(
                "cluster transport runs with --insecure-dev-cluster: peers are NOT authenticated, \
                 anyone who reaches the cluster port can join; never use this outside development"
            );
            let (certs, key) = self_signed()?;
            (server_no_client_auth(&p, certs, key)?, client_skip_verify(&p)?, Proof::None)
        }
        Security::Certs { ca, cert, key } => {
            let roots = Arc::new(load_roots(ca)?);
            let chain = load_certs(cert)?;
            let key = load_key(key)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
                .build()
                .map_err(|e| TransportError::Config(format!("cluster CA {}: {e}", ca.display())))?;
            let server = rustls::ServerConfig::builder_with_provider(p.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(tls_err("TLS 1.3 server"))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(tls_err("cluster certificate/key"))?;
            let client = rustls::ClientConfig::builder_with_provider(p.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(tls_err("TLS 1.3 client"))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(tls_err("cluster client certificate/key"))?;
            (server, client, Proof::None)
        }
    };
    Ok(EndpointConfigs { server: server_config(server_tls)?, client: client_config(client_tls)?, proof })
}

fn server_config(mut tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, TransportError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Config(format!("QUIC server TLS: {e}")))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(quic_transport());
    Ok(cfg)
}

fn client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TransportError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Config(format!("QUIC client TLS: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(quic_transport());
    Ok(cfg)
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let ck = rcgen::generate_simple_self_signed(vec![CLUSTER_SERVER_NAME.to_string()])
        .map_err(|e| TransportError::Config(format!("generating the self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
        .map_err(|e| TransportError::Config(format!("self-signed key: {e}")))?;
    Ok((vec![ck.cert.der().clone()], key))
}

fn server_no_client_auth(
    p: &Arc<CryptoProvider>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TransportError> {
    rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 server"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_err("self-signed certificate"))
}

fn client_skip_verify(p: &Arc<CryptoProvider>) -> Result<rustls::ClientConfig, TransportError> {
    Ok(rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err("TLS 1.3 client"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(p.signature_verification_algorithms)))
        .with_no_client_auth())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::io(format!("reading {}", path.display()), e))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_pem(path)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Config(format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TransportError::Config(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .map_err(|e| TransportError::Config(format!("{} is not valid PEM: {e}", path.display())))?
        .ok_or_else(|| TransportError::Config(format!("{} holds no private key", path.display())))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TransportError::Config(format!("CA certificate {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// A server TLS configuration (TLS 1.2 and 1.3, ring) for client-facing listeners: `cert` and `key`
/// (PEM), optional client certificates signed by `client_ca` (clients without one are accepted;
/// authorisation decides), and the given ALPN protocols.
pub fn client_facing_server(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TransportError> {
    let p = provider();
    let builder = rustls::ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err("TLS server"))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), p)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TransportError::Config(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(tls_err("server certificate and key"))?;
    tls.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// Accepts any server certificate (secret and insecure modes) while still checking that the
/// handshake is signed by the presented key. Secret mode authenticates peers afterwards with an
/// HMAC bound to the TLS session, see `auth`.
#[derive(Debug)]
struct AnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
