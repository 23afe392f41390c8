//! The hello exchange that opens every connection, and secret-mode authentication.
//!
//! Right after the QUIC/TLS handshake the client opens a bidirectional stream and sends a
//! [`Hello`] with its node id; the server verifies it and answers with its own. In secret mode each
//! hello carries `HMAC-SHA256(secret, role || exporter || node_id)` where `role` is `"client"` or
//! `"server"` and `exporter` is 32 bytes of TLS keying material (label `"ironhub-cluster"`, empty
//! context). The exporter is unique to this TLS session, so a proof relayed from another
//! connection does not verify. Whichever side fails closes the connection with [`CLOSE_AUTH`].

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::error::{read_error, write_error, CLOSE_AUTH, CLOSE_PROTOCOL};
use super::frame::{Hello, HELLO_FIXED_LEN, MAC_LEN};
use super::{NodeId, TransportError};

type HmacSha256 = Hmac<Sha256>;

const EXPORTER_LABEL: &[u8] = b"ironhub-cluster";
const ROLE_CLIENT: &[u8] = b"client";
const ROLE_SERVER: &[u8] = b"server";

/// What a node proves in its hello.
#[derive(Clone)]
pub(crate) enum Proof {
    /// Nothing: certificate mode (TLS authenticated both sides) or insecure dev mode.
    None,
    /// Knowledge of the cluster secret.
    Secret(Arc<[u8]>),
}

impl Proof {
    pub(crate) fn secret(s: &str) -> Self {
        Self::Secret(Arc::from(s.as_bytes()))
    }

    fn compute(
        secret: &[u8],
        conn: &quinn::Connection,
        role: &[u8],
        node_id: NodeId,
    ) -> Result<HmacSha256, String> {
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| "TLS keying material export failed".to_string())?;
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|e| format!("HMAC key: {e}"))?;
        mac.update(role);
        mac.update(&exporter);
        mac.update(&node_id.to_be_bytes());
        Ok(mac)
    }

    fn mac(
        &self,
        conn: &quinn::Connection,
        role: &[u8],
        node_id: NodeId,
    ) -> Result<Option<[u8; MAC_LEN]>, String> {
        match self {
            Self::None => Ok(None),
            Self::Secret(s) => {
                let tag = Self::compute(s, conn, role, node_id)?.finalize().into_bytes();
                let mut out = [0u8; MAC_LEN];
                out.copy_from_slice(&tag);
                Ok(Some(out))
            }
        }
    }

    /// Checks the peer's proof; the error says what a human should check.
    fn verify(
        &self,
        conn: &quinn::Connection,
        role: &[u8],
        node_id: NodeId,
        mac: Option<&[u8; MAC_LEN]>,
    ) -> Result<(), String> {
        match (self, mac) {
            (Self::None, None) => Ok(()),
            (Self::None, Some(_)) => {
                Err("the peer uses a cluster secret but this node does not (--cluster-secret)".into())
            }
            (Self::Secret(_), None) => {
                Err("the peer sent no cluster secret proof: it runs without --cluster-secret".into())
            }
            (Self::Secret(s), Some(mac)) => Self::compute(s, conn, role, node_id)?
                .verify_slice(mac)
                .map_err(|_| "wrong cluster secret?".to_string()),
        }
    }
}

async fn read_hello(recv: &mut quinn::RecvStream, peer: NodeId) -> Result<Hello, TransportError> {
    let mut fixed = [0u8; HELLO_FIXED_LEN];
    recv.read_exact(&mut fixed).await.map_err(|e| read_error(peer, e))?;
    let (node_id, mac_len) =
        Hello::decode_fixed(&fixed).map_err(|e| TransportError::protocol(peer, format!("hello: {e}")))?;
    let mac = if mac_len == MAC_LEN {
        let mut mac = [0u8; MAC_LEN];
        recv.read_exact(&mut mac).await.map_err(|e| read_error(peer, e))?;
        Some(mac)
    } else {
        None
    };
    Ok(Hello { node_id, mac })
}

async fn write_hello(
    send: &mut quinn::SendStream,
    hello: &Hello,
    peer: NodeId,
) -> Result<(), TransportError> {
    send.write_all(&hello.encode()).await.map_err(|e| write_error(peer, e))?;
    // Finishing can only fail if the stream is already closed; the read side reports that.
    let _ = send.finish();
    Ok(())
}

fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
}

/// Client side: prove ourselves to `peer` and check that it is `peer` and knows the secret.
pub(crate) async fn client_hello(
    conn: &quinn::Connection,
    our_id: NodeId,
    peer: NodeId,
    proof: &Proof,
) -> Result<(), TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| super::error::conn_error(peer, &e))?;
    let mac = proof.mac(conn, ROLE_CLIENT, our_id).map_err(TransportError::Auth)?;
    write_hello(&mut send, &Hello { node_id: our_id, mac }, peer).await?;
    let theirs = read_hello(&mut recv, peer).await?;
    if theirs.node_id != peer {
        close(conn, CLOSE_PROTOCOL, "unexpected node id");
        return Err(TransportError::Unreachable {
            peer,
            reason: format!(
                "{} answers as node {}, not node {peer}: check the peer addresses",
                conn.remote_address(),
                theirs.node_id
            ),
        });
    }
    if let Err(why) = proof.verify(conn, ROLE_SERVER, theirs.node_id, theirs.mac.as_ref()) {
        close(conn, CLOSE_AUTH, "server failed cluster authentication");
        return Err(TransportError::Auth(format!("node {peer} failed cluster authentication: {why}")));
    }
    Ok(())
}

/// Server side: read and check the client's hello, answer with ours. Returns the client's node id.
/// On failure the connection is closed (with [`CLOSE_AUTH`] for a bad proof) and the error logged
/// by the caller.
pub(crate) async fn server_hello(
    conn: &quinn::Connection,
    our_id: NodeId,
    proof: &Proof,
) -> Result<NodeId, TransportError> {
    // Node id 0 stands for "not yet known" in errors until the hello names the peer.
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| super::error::conn_error(0, &e))?;
    let theirs = read_hello(&mut recv, 0).await?;
    if theirs.node_id == our_id {
        close(conn, CLOSE_PROTOCOL, "peer claims our own node id");
        return Err(TransportError::protocol(our_id, "a peer claims to be this node (duplicate node id?)"));
    }
    if let Err(why) = proof.verify(conn, ROLE_CLIENT, theirs.node_id, theirs.mac.as_ref()) {
        close(conn, CLOSE_AUTH, &format!("cluster authentication failed: {why}"));
        return Err(TransportError::Auth(format!(
            "peer {} ({}) failed cluster authentication: {why}",
            theirs.node_id,
            conn.remote_address()
        )));
    }
    let mac = proof.mac(conn, ROLE_SERVER, our_id).map_err(TransportError::Auth)?;
    write_hello(&mut send, &Hello { node_id: our_id, mac }, theirs.node_id).await?;
    Ok(theirs.node_id)
}
