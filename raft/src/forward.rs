//! Ordered forwarding of proposals to a group's leader on another node.
//!
//! Each group has one forwarder per node. [`ForwarderHandle::submit`] queues a proposal at once, so
//! proposals submitted one after another (the PUBLISHes of one MQTT connection) reach the leader in
//! that order: the forwarder sends everything queued as one `ForwardBatch`, waits for the batch's
//! outcome, then sends the next; the leader queues a batch's proposals into its batcher in batch
//! order. One batch in flight per (node, group) keeps the order without sequence numbers; under load
//! the batches grow, so the cost is one round trip per batch rather than per proposal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ironhub_storage::codec;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::{BatcherHandle, Pending};
use crate::error::ProposeError;
use crate::metrics::RaftMetrics;
use crate::net::ClusterNet;
use crate::transport::RpcKind;
use crate::types::{GroupId, GroupRaft, NodeId, Proposal};

/// Proposals per forwarded batch at most.
const MAX_BATCH: usize = 1024;
/// Bytes of proposals per forwarded batch at most.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long a forwarded batch may take (queueing, commit and apply on the leader).
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before sending refused proposals again.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

type Reply = oneshot::Sender<Result<Bytes, ProposeError>>;

/// Queues proposals for the group's leader on another node (cheap to clone).
#[derive(Clone)]
pub(crate) struct ForwarderHandle {
    group: GroupId,
    tx: mpsc::Sender<(Proposal, Reply)>,
}

impl ForwarderHandle {
    /// Queues `p` now; the future resolves with the leader's response. `Busy` when the queue is full.
    pub(crate) fn submit(
        &self,
        p: Proposal,
    ) -> Result<impl Future<Output = Result<Bytes, ProposeError>> + Send + 'static, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send((p, tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProposeError::Busy { group: self.group },
            mpsc::error::TrySendError::Closed(_) => ProposeError::ShuttingDown,
        })?;
        Ok(async move { rx.await.unwrap_or(Err(ProposeError::ShuttingDown)) })
    }
}

/// What a forwarder needs of its node.
pub(crate) struct Forwarder {
    pub(crate) group: GroupId,
    pub(crate) me: NodeId,
    pub(crate) raft: GroupRaft,
    pub(crate) batcher: BatcherHandle,
    pub(crate) net: Arc<dyn ClusterNet>,
    pub(crate) metrics: RaftMetrics,
    /// How long refused proposals are retried (the node's leader-change retry window).
    pub(crate) retry: Duration,
}

impl Forwarder {
    /// Starts the forwarder on `tracker` with a queue of `queue` proposals; it stops on `shutdown`.
    pub(crate) fn start(
        self,
        queue: usize,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> ForwarderHandle {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let group = self.group;
        tracker.spawn(self.run(rx, shutdown));
        ForwarderHandle { group, tx }
    }

    /// Runs until shutdown; proposals still queued then are answered `ShuttingDown` (reply dropped).
    async fn run(self, mut rx: mpsc::Receiver<(Proposal, Reply)>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let mut bytes = first.0.size();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let Ok(m) = rx.try_recv() else { break };
                bytes += m.0.size();
                batch.push(m);
            }
            let (mut proposals, mut replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            // Proposals the leader refused for sure (queue full, leadership moving) are sent again
            // before anything queued after them, within the retry window; the rest are answered.
            let until = tokio::time::Instant::now() + self.retry;
            while !proposals.is_empty() {
                let results = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.send(proposals.clone()) => r,
                };
                let retry_allowed = tokio::time::Instant::now() < until;
                let (mut again, mut again_replies) = (Vec::new(), Vec::new());
                for ((p, reply), r) in proposals.into_iter().zip(replies).zip(results) {
                    match r {
                        Err(
                            ProposeError::Busy { .. }
                            | ProposeError::NoLeader { .. }
                            | ProposeError::NotLeader { .. },
                        ) if retry_allowed => {
                            again.push(p);
                            again_replies.push(reply);
                        }
                        r => {
                            let _ = reply.send(r);
                        }
                    }
                }
                (proposals, replies) = (again, again_replies);
                if !proposals.is_empty() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Sends one batch to the current leader; one result per proposal, in order.
    async fn send(&self, proposals: Vec<Proposal>) -> Vec<Result<Bytes, ProposeError>> {
        let n = proposals.len();
        let all = |e: ProposeError| vec![Err(e); n];
        let leader = self.raft.metrics().borrow_watched().current_leader;
        match leader {
            None => all(ProposeError::NoLeader { group: self.group }),
            // Leadership moved here while the batch waited: queue it locally, still in order.
            Some(l) if l == self.me => queue_in_order(&self.batcher, proposals).await,
            Some(leader) => {
                self.metrics.forwarded.with_label_values(&[&self.metrics.group(self.group)]).inc_by(n as u64);
                let failed = |reason: String| ProposeError::Forward { node: leader, reason };
                let body = match codec::encode(&proposals) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => return all(failed(e.to_string())),
                };
                let resp =
                    match self.net.call(leader, self.group, RpcKind::Forward, body, BATCH_TIMEOUT).await {
                        Ok(r) => r,
                        Err(e) => return all(failed(e.to_string())),
                    };
                match codec::decode::<Vec<Result<Bytes, ProposeError>>>(&resp, "forwarded batch response") {
                    Ok(results) if results.len() == n => results,
                    Ok(results) => all(failed(format!("{} results for {n} proposals", results.len()))),
                    Err(e) => all(failed(e.to_string())),
                }
            }
        }
    }
}

/// Queues `proposals` into `batcher` in order, then waits for their responses. Once one is refused
/// (queue full), the rest are refused with the same error, so what gets in is always a prefix and
/// the order holds when the caller retries.
pub(crate) async fn queue_in_order(
    batcher: &BatcherHandle,
    proposals: Vec<Proposal>,
) -> Vec<Result<Bytes, ProposeError>> {
    let mut refused: Option<ProposeError> = None;
    let pending: Vec<Result<Pending, ProposeError>> = proposals
        .into_iter()
        .map(|p| match &refused {
            Some(e) => Err(e.clone()),
            None => batcher.submit(p).inspect_err(|e| refused = Some(e.clone())),
        })
        .collect();
    futures::future::join_all(pending.into_iter().map(|p| async move {
        match p {
            Ok(f) => f.await,
            Err(e) => Err(e),
        }
    }))
    .await
}
