//! Linearizable reads, batched per group: one read-index round serves every waiter that arrived
//! before the round started (on a follower, one forwarded `Read` request per round).
//!
//! A round starts when the first waiter arrives and no round is running; waiters that arrive
//! during a round wait for the next one (a round that started before a waiter arrived could
//! miss a write that committed in between). Rounds run back to back while waiters keep arriving,
//! so under load one round costs one heartbeat round trip for everyone waiting.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ironhub_storage::codec;
use tokio::sync::oneshot;

use crate::error::ProposeError;
use crate::node::RaftNode;
use crate::transport::RpcKind;
use crate::types::GroupId;

/// Waiters of one group's next read round.
#[derive(Default)]
pub(crate) struct ReadRound {
    waiting: Vec<oneshot::Sender<Result<u64, ProposeError>>>,
    running: bool,
}

impl RaftNode {
    /// Waits until this node's state of group `g` reflects every write committed before the call
    /// (a linearizable read barrier: read index on the leader, forwarded from followers; batched).
    pub async fn read_barrier(&self, g: GroupId) -> Result<(), ProposeError> {
        let group = self.group(g)?;
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut r = group.reads.lock();
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            let n = self.clone();
            self.inner.tasks.spawn(async move { n.read_rounds(g).await });
        }
        let index = rx.await.map_err(|_| ProposeError::ShuttingDown)??;
        self.wait_applied(g, index).await
    }

    /// How long proposals and reads retry leader changes: twice the election timeout, plus slack.
    pub(crate) fn retry_window(&self) -> Duration {
        self.inner.config.timing.retry_window()
    }

    async fn read_rounds(&self, g: GroupId) {
        let Ok(group) = self.group(g) else { return };
        loop {
            let waiters = {
                let mut r = group.reads.lock();
                if r.waiting.is_empty() {
                    r.running = false;
                    return;
                }
                std::mem::take(&mut r.waiting)
            };
            let result = self.read_index(g).await;
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    /// One read-index round, retrying leader changes within the retry window.
    async fn read_index(&self, g: GroupId) -> Result<u64, ProposeError> {
        let group = self.group(g)?;
        let deadline = Instant::now() + self.retry_window();
        loop {
            let attempt = match self.leader_of(group) {
                Some(l) if l == self.inner.id => self.read_index_local(g).await,
                Some(l) => self.read_index_remote(g, l).await,
                None => Err(ProposeError::NoLeader { group: g }),
            };
            match attempt {
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return Err(ProposeError::ShuttingDown),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                other => return other,
            }
        }
    }

    async fn read_index_remote(&self, g: GroupId, leader: u64) -> Result<u64, ProposeError> {
        let forward = |e: String| ProposeError::Forward { node: leader, reason: e };
        let resp = self
            .inner
            .net
            .call(leader, g, RpcKind::Read, Bytes::new(), Duration::from_secs(5))
            .await
            .map_err(|e| forward(e.to_string()))?;
        codec::decode::<Result<u64, ProposeError>>(&resp, "read index response")
            .map_err(|e| forward(e.to_string()))?
    }
}
