//! Group commit for the raft logs of every group of a node.
//!
//! One dedicated thread (`ironhub-log-flush`) owns all log writes. Each round it takes every
//! queued job — appends, truncates, purges, votes of all groups, in arrival order — writes them
//! into the engine without sync, issues exactly one `flush_wal(true)`, and only then completes the
//! round's callbacks. A round of fire-and-forget writes only (the committed index) is not synced:
//! the next round with a waiter, or the stop, covers it. So one fsync covers the appends of all 17 groups, and no callback can fire
//! before its entries are durable. Keeping every write on one thread also keeps openraft's rule
//! that log I/O is serialized: a vote and an append are durable in the order they were issued.
//!
//! [`Flusher`] is the cheap-clone handle; the thread stops when [`Flusher::shutdown`] is called
//! or when the last handle is dropped, after finishing the jobs already queued. Dropping the last
//! handle waits for the thread (so the engine is closed when the drop returns); prefer
//! `shutdown().await` on async code paths.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::engine::KvEngine;
use crate::engine::WriteBatch;
use crate::error::StorageError;

/// Capacity of the job queue.
///
/// Full-queue policy: producers `send().await`, so when the flusher falls behind, `append`,
/// `truncate_after`, `purge` and `save_vote` wait, which back-pressures openraft (and through
/// the proposal gate, clients). Nothing is dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// Largest number of jobs handled in one round (bounds the latency of a round).
const MAX_ROUND_JOBS: usize = QUEUE_CAPACITY;

/// Merged writes are split once they exceed this many bytes (still one fsync per round).
const MAX_MERGED_BYTES: usize = 16 * 1024 * 1024;

/// Called on the flusher thread once a job is durable (or failed).
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A unit of work for the flusher thread.
pub(crate) enum Job {
    /// Writes `batch`; then `written` is raised to `seq`, and `done` is called after the fsync.
    Write {
        /// The operations, written in order after every earlier job's.
        batch: WriteBatch,
        /// Number of log entries in the batch (for statistics).
        entries: u64,
        /// A watermark raised once the batch is in the engine (readable, maybe not yet durable).
        written: Option<(Arc<AtomicU64>, u64)>,
        /// Called once the batch is durable; `None` for fire-and-forget writes.
        done: Option<Completion>,
    },
    /// Finish the queued jobs, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the flusher, for metrics. All only grow.
#[derive(Debug, Default)]
pub struct FlusherStats {
    /// Rounds completed that waited for durability (each ends with one `flush_wal(true)`; rounds
    /// of fire-and-forget writes only are not synced and not counted).
    pub rounds: AtomicU64,
    /// Log entries made durable.
    pub flushed_entries: AtomicU64,
    /// Total time spent in `flush_wal(true)`, in nanoseconds.
    pub fsync_nanos_total: AtomicU64,
}

/// Owns the thread's handle; dropping the last [`Flusher`] joins the thread.
struct ThreadGuard(Mutex<Option<JoinHandle<()>>>);

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        // The last handle is gone, so the channel is closed (`Flusher::tx` is dropped before
        // this guard): the thread finishes the queued jobs, closes its engine handle and exits.
        // Waiting for it means the engine is released before the owner goes on (a RocksDB
        // still open in a detached thread at process exit aborts the process).
        if let Some(handle) = self.0.get_mut().take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// Handle to the node's log flusher thread. Cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    // Field order matters: the sender must be dropped before the thread guard joins.
    tx: mpsc::Sender<Job>,
    stats: Arc<FlusherStats>,
    thread: Arc<ThreadGuard>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").field("closed", &self.tx.is_closed()).finish()
    }
}

impl Flusher {
    /// Starts the flusher thread writing into `engine`.
    pub fn start(engine: Arc<dyn KvEngine>) -> Result<Flusher, StorageError> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(FlusherStats::default());
        let worker = Worker { engine, rx, stats: stats.clone(), failed: None, dirty: false };
        let handle = std::thread::Builder::new()
            .name("ironhub-log-flush".into())
            .spawn(move || worker.run())
            .map_err(|e| StorageError::io("spawning the ironhub-log-flush thread", e))?;
        Ok(Flusher { tx, stats, thread: Arc::new(ThreadGuard(Mutex::new(Some(handle)))) })
    }

    /// The flusher's counters.
    pub fn stats(&self) -> &FlusherStats {
        &self.stats
    }

    /// Writes `batch` after every job queued before it and returns once it is durable.
    pub async fn write_synced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let done: Completion = Box::new(move |res| {
            let _ = tx.send(res);
        });
        self.submit(Job::Write { batch, entries: 0, written: None, done: Some(done) }).await?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Queues `batch` to be written after every job queued before it, without waiting for it.
    ///
    /// It becomes durable with the next round's fsync; a failure makes every later job fail.
    pub async fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.submit(Job::Write { batch, entries: 0, written: None, done: None }).await
    }

    /// Queues a job; waits while the queue is full.
    pub(crate) async fn submit(&self, job: Job) -> Result<(), StorageError> {
        self.tx.send(job).await.map_err(|_| StorageError::Closed)
    }

    /// Finishes the queued jobs, then stops the thread. Later writes fail with
    /// [`StorageError::Closed`]. Calling it again is harmless.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Shutdown(tx)).await.is_ok() {
            // An error means the thread is already gone; either way it is stopping.
            let _ = rx.await;
        }
        let handle = self.thread.0.lock().take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| {
                    StorageError::io("joining the ironhub-log-flush thread", std::io::Error::other(e))
                })?
                .map_err(|_| {
                    StorageError::io(
                        "joining the ironhub-log-flush thread",
                        std::io::Error::other("the thread panicked"),
                    )
                })?;
        }
        Ok(())
    }
}

/// A write job taken off the queue, waiting for its round.
struct Pending {
    batch: WriteBatch,
    entries: u64,
    written: Option<(Arc<AtomicU64>, u64)>,
    done: Option<Completion>,
}

/// The flusher thread's state.
struct Worker {
    engine: Arc<dyn KvEngine>,
    rx: mpsc::Receiver<Job>,
    stats: Arc<FlusherStats>,
    /// Set after the first failed write or fsync: every later job fails too, because writing
    /// past a lost write could leave a hole in a log.
    failed: Option<(&'static str, String)>,
    /// Writes are in the engine that no fsync covered yet (rounds without a waiter).
    dirty: bool,
}

impl Worker {
    fn run(mut self) {
        let mut jobs = Vec::with_capacity(MAX_ROUND_JOBS);
        let mut acks = Vec::new();
        let mut stopping = false;
        loop {
            jobs.clear();
            if stopping {
                // Closed: take what was queued before the close, without waiting.
                while jobs.len() < MAX_ROUND_JOBS {
                    match self.rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                if jobs.is_empty() {
                    break;
                }
            } else if self.rx.blocking_recv_many(&mut jobs, MAX_ROUND_JOBS) == 0 {
                // Every handle is gone.
                break;
            }
            let mut writes = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                match job {
                    Job::Write { batch, entries, written, done } => {
                        writes.push(Pending { batch, entries, written, done })
                    }
                    Job::Shutdown(ack) => {
                        acks.push(ack);
                        if !stopping {
                            stopping = true;
                            self.rx.close();
                        }
                    }
                }
            }
            if !writes.is_empty() {
                self.round(writes);
            }
        }
        if self.dirty && self.failed.is_none() {
            // Fire-and-forget writes of the last rounds: durable before the thread stops.
            if let Err(e) = self.engine.flush_wal(true) {
                tracing::error!("syncing the raft logs at stop failed: {e}");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
        tracing::debug!("ironhub-log-flush stopped");
    }

    /// Writes, fsyncs once, then completes, all the writes of one round.
    fn round(&mut self, writes: Vec<Pending>) {
        let mut entries = 0;
        let mut marks = Vec::new();
        let mut dones = Vec::new();
        let mut result = self.check_failed();
        let mut merged = WriteBatch::new();
        let mut merged_bytes = 0;
        for Pending { batch, entries: n, written, done } in writes {
            entries += n;
            marks.extend(written);
            dones.extend(done);
            if result.is_ok() {
                merged_bytes += batch.size();
                merged.extend(batch);
                if merged_bytes >= MAX_MERGED_BYTES {
                    result = self.engine.write(&merged, false);
                    merged = WriteBatch::new();
                    merged_bytes = 0;
                }
            }
        }
        if result.is_ok() && !merged.is_empty() {
            result = self.engine.write(&merged, false);
        }
        if result.is_ok() {
            for (mark, seq) in &marks {
                mark.fetch_max(*seq, Ordering::AcqRel);
            }
        }
        if dones.is_empty() {
            // Nobody waits for durability (fire-and-forget writes such as the committed index):
            // no fsync now; they become durable with the next round that has a waiter, or at stop.
            self.dirty |= result.is_ok();
            if let Err(e) = &result {
                self.fail(e);
            }
            return;
        }
        if result.is_ok() {
            let start = Instant::now();
            result = self.engine.flush_wal(true);
            let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats.fsync_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        }
        match &result {
            Ok(()) => {
                self.dirty = false;
                self.stats.rounds.fetch_add(1, Ordering::Relaxed);
                self.stats.flushed_entries.fetch_add(entries, Ordering::Relaxed);
            }
            Err(e) => self.fail(e),
        }
        for done in dones {
            done(self.check_failed());
        }
    }

    fn fail(&mut self, e: &StorageError) {
        if self.failed.is_none() {
            tracing::error!("raft log write failed; every later log write will fail: {e}");
            let op = match e {
                StorageError::Engine { op, .. } => op,
                _ => "write",
            };
            self.failed = Some((op, e.to_string()));
        }
    }

    fn check_failed(&self) -> Result<(), StorageError> {
        match &self.failed {
            None => Ok(()),
            Some((op, msg)) => Err(StorageError::Engine {
                op,
                what: "the raft logs (an earlier log write failed; restart the node)".into(),
                msg: msg.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
