//! Outbound connections: one slot per peer, dialled lazily, re-dialled with backoff.
//!
//! A slot holds at most one live connection. Callers take the fast path (clone the live
//! connection) under a short lock; when it is missing or dead, one caller dials while the others
//! wait on the slot's dial lock and then share the result. After a failed dial the slot fails fast
//! (the same kind of error, without dialling) until its backoff expires: 50 ms doubling to 1 s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::auth::{client_hello, Proof};
use super::error::{conn_error, CLOSE_REPLACED};
use super::{NodeId, TransportError, CLUSTER_SERVER_NAME};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Kind of the last dial failure, replayed while backing off so callers see a stable error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailureKind {
    Unreachable,
    Auth,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
    last: Option<(FailureKind, String)>,
}

/// One peer's connection slot.
pub(crate) struct PeerSlot {
    id: NodeId,
    addr: SocketAddr,
    conn: Mutex<Option<quinn::Connection>>,
    dial: tokio::sync::Mutex<Backoff>,
    removed: AtomicBool,
    /// When a request over this slot last got an answer (ms since [`epoch`]).
    last_answer_ms: AtomicU64,
}

/// A connection whose peer has not answered for this long while requests time out is presumed
/// dead (e.g. the peer process was killed and restarted, which QUIC only notices after its idle
/// timeout) and is closed, so the next request re-dials. Heartbeats answer every 150 ms.
const STALE_AFTER_MS: u64 = 1000;

fn epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Everything a dial needs, borrowed from the transport.
pub(crate) struct DialContext<'a> {
    pub endpoint: &'a quinn::Endpoint,
    pub our_id: NodeId,
    pub proof: &'a Proof,
    pub connect_timeout: Duration,
}

impl PeerSlot {
    fn new(id: NodeId, addr: SocketAddr) -> Self {
        Self {
            id,
            addr,
            conn: Mutex::new(None),
            dial: tokio::sync::Mutex::new(Backoff::default()),
            removed: AtomicBool::new(false),
            last_answer_ms: AtomicU64::new(epoch_ms()),
        }
    }

    /// Records that a request got an answer.
    pub(crate) fn answered(&self) {
        self.last_answer_ms.store(epoch_ms(), Ordering::Relaxed);
    }

    /// A request timed out: drop the connection if the peer has been silent for too long.
    pub(crate) fn timed_out(&self) {
        let silent = epoch_ms().saturating_sub(self.last_answer_ms.load(Ordering::Relaxed));
        if silent >= STALE_AFTER_MS {
            if let Some(c) = self.conn.lock().take() {
                tracing::info!(
                    peer = self.id,
                    silent_ms = silent,
                    "peer silent: closing the connection to re-dial"
                );
                c.close(quinn::VarInt::from_u32(CLOSE_REPLACED), b"no answer: re-dialling");
            }
            // Do not close again until another quiet second has passed.
            self.answered();
        }
    }

    fn live(&self) -> Option<quinn::Connection> {
        let guard = self.conn.lock();
        guard.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }

    /// Forgets `dead` if it is still the slot's connection (so the next call re-dials).
    pub(crate) fn forget(&self, dead: &quinn::Connection) {
        let mut guard = self.conn.lock();
        if guard.as_ref().is_some_and(|c| c.stable_id() == dead.stable_id()) {
            *guard = None;
        }
    }

    fn close(&self) {
        self.removed.store(true, Ordering::SeqCst);
        if let Some(c) = self.conn.lock().take() {
            c.close(quinn::VarInt::from_u32(CLOSE_REPLACED), b"peer removed or moved");
        }
    }

    /// Returns a live, authenticated connection, dialling if needed. The bool is true when the
    /// connection was freshly dialled by this call.
    pub(crate) async fn connection(
        &self,
        ctx: &DialContext<'_>,
    ) -> Result<(quinn::Connection, bool), TransportError> {
        if let Some(c) = self.live() {
            return Ok((c, false));
        }
        let mut backoff = self.dial.lock().await;
        if let Some(c) = self.live() {
            return Ok((c, false));
        }
        if self.removed.load(Ordering::SeqCst) {
            return Err(TransportError::UnknownPeer(self.id));
        }
        if let (Some(at), Some((kind, why))) = (backoff.retry_at, &backoff.last) {
            let now = Instant::now();
            if now < at {
                let why = format!("{why} (next attempt in {:?})", at - now);
                return Err(match kind {
                    FailureKind::Auth => TransportError::Auth(why),
                    FailureKind::Unreachable => TransportError::Unreachable { peer: self.id, reason: why },
                });
            }
        }
        match self.dial(ctx).await {
            Ok(conn) => {
                *backoff = Backoff::default();
                if self.removed.load(Ordering::SeqCst) {
                    conn.close(quinn::VarInt::from_u32(CLOSE_REPLACED), b"peer removed or moved");
                    return Err(TransportError::UnknownPeer(self.id));
                }
                *self.conn.lock() = Some(conn.clone());
                Ok((conn, true))
            }
            Err(e) => {
                let kind = match &e {
                    TransportError::Auth(_) => FailureKind::Auth,
                    TransportError::Closed => return Err(e),
                    _ => FailureKind::Unreachable,
                };
                backoff.failures = backoff.failures.saturating_add(1);
                let delay = BACKOFF_MIN
                    .saturating_mul(1u32 << backoff.failures.saturating_sub(1).min(10))
                    .min(BACKOFF_MAX);
                backoff.retry_at = Some(Instant::now() + delay);
                let why = match &e {
                    TransportError::Auth(m) => m.clone(),
                    TransportError::Unreachable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                backoff.last = Some((kind, why));
                tracing::debug!(peer = self.id, addr = %self.addr, error = %e, ?delay, "dial failed");
                Err(e)
            }
        }
    }

    async fn dial(&self, ctx: &DialContext<'_>) -> Result<quinn::Connection, TransportError> {
        let peer = self.id;
        let connecting = ctx.endpoint.connect(self.addr, CLUSTER_SERVER_NAME).map_err(|e| {
            TransportError::Unreachable { peer, reason: format!("cannot connect to {}: {e}", self.addr) }
        })?;
        let timed_out = || TransportError::Unreachable {
            peer,
            reason: format!("no answer from {} within {:?}", self.addr, ctx.connect_timeout),
        };
        let conn = tokio::time::timeout(ctx.connect_timeout, connecting)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| conn_error(peer, &e))?;
        match tokio::time::timeout(ctx.connect_timeout, client_hello(&conn, ctx.our_id, peer, ctx.proof))
            .await
        {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                conn.close(quinn::VarInt::from_u32(super::error::CLOSE_PROTOCOL), b"hello timed out");
                Err(timed_out())
            }
        }
    }
}

/// The peer address book and connection slots.
#[derive(Default)]
pub(crate) struct PeerTable {
    slots: Mutex<HashMap<NodeId, Arc<PeerSlot>>>,
}

impl PeerTable {
    /// Adds or moves a peer; a moved peer's old connection is closed.
    pub(crate) fn set(&self, id: NodeId, addr: SocketAddr) {
        let old = {
            let mut slots = self.slots.lock();
            if slots.get(&id).is_some_and(|s| s.addr == addr) {
                return;
            }
            slots.insert(id, Arc::new(PeerSlot::new(id, addr)))
        };
        if let Some(old) = old {
            old.close();
        }
    }

    /// Removes a peer and closes its connection.
    pub(crate) fn remove(&self, id: NodeId) {
        let old = self.slots.lock().remove(&id);
        if let Some(old) = old {
            old.close();
        }
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<Arc<PeerSlot>> {
        self.slots.lock().get(&id).cloned()
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close_all(&self) {
        let slots: Vec<_> = self.slots.lock().drain().map(|(_, s)| s).collect();
        for s in slots {
            s.close();
        }
    }
}
