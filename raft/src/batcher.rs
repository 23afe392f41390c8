//! The bounded proposal batcher in front of one group's raft (the in-flight gate).
//!
//! Proposals queue in a bounded channel (`queue` deep). The worker takes whatever is queued, up to
//! `max_commands` commands or `max_bytes` bytes, and submits it as one raft entry: when the group is
//! idle a proposal goes out at once, under load entries grow. At most `max_inflight` entries are
//! in flight; openraft's own channels are unbounded, so this gate is the back-pressure. When the
//! queue is full a proposal is refused with the retriable [`ProposeError::Busy`] (the MQTT layer
//! then withholds the PUBACK and receive-maximum throttles the client). Each entry's responses come
//! back in command order, and entries are submitted in queue order.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use openraft::errors::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ProposeError;
use crate::metrics::RaftMetrics;
use crate::types::{CommandBatch, GroupId, GroupRaft, Proposal};

/// Limits of one group's batcher (the `[batch]` section of the configuration file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Commands per raft entry at most (default 256).
    pub max_commands: usize,
    /// Bytes of commands per raft entry at most (default 64 KiB).
    pub max_bytes: usize,
    /// Proposals waiting at most before `Busy` (default 8192).
    pub queue: usize,
    /// Entries proposed but not yet applied at most (default 32).
    pub max_inflight: usize,
    /// How long a busy group waits for more commands before proposing an entry, µs (default 1000).
    pub linger_us: u64,
}

impl BatchConfig {
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.linger_us)
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_commands: 256, max_bytes: 64 * 1024, queue: 8192, max_inflight: 32, linger_us: 1000 }
    }
}

type Reply = oneshot::Sender<Result<Bytes, ProposeError>>;

/// Submits proposals to one group's batcher (cheap to clone).
#[derive(Clone)]
pub struct BatcherHandle {
    group: GroupId,
    tx: mpsc::Sender<(Proposal, Reply)>,
    metrics: RaftMetrics,
}

/// The outcome of a queued proposal.
pub type Pending = futures::future::BoxFuture<'static, Result<Bytes, ProposeError>>;

impl BatcherHandle {
    /// Queues `p` and waits for its response. Must be called on the group's leader.
    pub async fn propose(&self, p: Proposal) -> Result<Bytes, ProposeError> {
        self.submit(p)?.await
    }

    /// Queues `p` now (proposals submitted one after another enter the log in that order) and
    /// returns its response as a future. `Busy` at once when the queue is full.
    pub(crate) fn submit(&self, p: Proposal) -> Result<Pending, ProposeError> {
        let (tx, rx) = oneshot::channel();
        let started = Instant::now();
        match self.tx.try_send((p, tx)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.busy.with_label_values(&[&self.metrics.group(self.group)]).inc();
                return Err(ProposeError::Busy { group: self.group });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(ProposeError::ShuttingDown),
        }
        let (metrics, group) = (self.metrics.clone(), self.group);
        Ok(Box::pin(async move {
            let r = rx.await.map_err(|_| ProposeError::ShuttingDown)?;
            metrics.observe_commit(group, started.elapsed());
            r
        }))
    }
}

/// Starts the batcher of `group` on `tracker`; it stops on `shutdown`.
pub fn start(
    group: GroupId,
    raft: GroupRaft,
    cfg: BatchConfig,
    metrics: RaftMetrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> BatcherHandle {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let worker =
        Worker { group, raft, cfg, rx, inflight: Arc::new(Semaphore::new(0)), tracker: tracker.clone() };
    tracker.spawn(worker.run(shutdown));
    BatcherHandle { group, tx, metrics }
}

struct Worker {
    group: GroupId,
    raft: GroupRaft,
    cfg: BatchConfig,
    rx: mpsc::Receiver<(Proposal, Reply)>,
    inflight: Arc<Semaphore>,
    tracker: TaskTracker,
}

fn map_write_error(group: GroupId, e: ClientWriteError<crate::types::TypeConfig>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ProposeError::NotLeader { group, leader: f.leader_id },
        ClientWriteError::LogEntryDiscarded(_) => ProposeError::Unknown { group },
        ClientWriteError::ChangeMembershipError(m) => ProposeError::Fatal { group, reason: m.to_string() },
        ClientWriteError::PreconditionFailed(p) => ProposeError::Fatal { group, reason: p.to_string() },
    }
}

impl Worker {
    async fn run(mut self, shutdown: CancellationToken) {
        self.inflight.add_permits(self.cfg.max_inflight.max(1));
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = self.rx.recv() => match m { Some(m) => m, None => break },
            };
            let Ok(permit) = self.inflight.clone().acquire_owned().await else {
                break;
            };
            let mut bytes = first.0.size();
            let mut batch = vec![first];
            // Idle group (nothing else in flight): go at once. Busy: linger up to `linger` so the
            // entry carries more commands (fewer entries, appends and fsyncs per command).
            let busy = self.inflight.available_permits() + 1 < self.cfg.max_inflight;
            let deadline = tokio::time::Instant::now() + self.cfg.linger();
            while batch.len() < self.cfg.max_commands && bytes < self.cfg.max_bytes {
                let next = match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) if busy => tokio::time::timeout_at(deadline, self.rx.recv()).await.ok().flatten(),
                    Err(_) => None,
                };
                match next {
                    Some(m) => {
                        bytes += m.0.size();
                        batch.push(m);
                    }
                    None => break,
                }
            }
            let (commands, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let group = self.group;
            // Enqueue in order; the stream of results is consumed by a separate task.
            let stream = match self.raft.client_write_many([CommandBatch { commands }]).await {
                Ok(s) => s,
                Err(fatal) => {
                    let e = ProposeError::Fatal { group, reason: fatal.to_string() };
                    for r in replies {
                        let _ = r.send(Err(e.clone()));
                    }
                    continue;
                }
            };
            self.tracker.spawn(async move {
                let mut stream = stream;
                let result = match stream.next().await {
                    Some(Ok(Ok(resp))) => Ok(resp.response.responses),
                    Some(Ok(Err(e))) => Err(map_write_error(group, e)),
                    Some(Err(fatal)) => Err(ProposeError::Fatal { group, reason: fatal.to_string() }),
                    None => Err(ProposeError::ShuttingDown),
                };
                match result {
                    Ok(responses) => {
                        let mut it = responses.into_iter();
                        for r in replies {
                            let _ = r.send(Ok(it.next().unwrap_or_default()));
                        }
                    }
                    Err(e) => {
                        for r in replies {
                            let _ = r.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
        // Refuse what is still queued.
        self.rx.close();
        while let Ok((_, r)) = self.rx.try_recv() {
            let _ = r.send(Err(ProposeError::ShuttingDown));
        }
    }
}
