use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;
use crate::engine::KvPair;
use crate::engine::ScanVisitor;
use crate::engine::WriteOp;
use crate::mem::MemEngine;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Write { sync: bool, keys: Vec<Vec<u8>> },
    Flush { sync: bool },
    Done { job: usize, ok: bool },
}

/// A MemEngine that records every call in order, with a slow fsync so that rounds batch, and
/// that can fail one chosen write.
struct Recording {
    inner: MemEngine,
    events: Arc<Mutex<Vec<Event>>>,
    writes: AtomicUsize,
    fail_write_no: Option<usize>,
}

impl Recording {
    fn new(fail_write_no: Option<usize>) -> (Arc<Self>, Arc<Mutex<Vec<Event>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = Arc::new(Self {
            inner: MemEngine::new(),
            events: events.clone(),
            writes: AtomicUsize::new(0),
            fail_write_no,
        });
        (e, events)
    }
}

impl KvEngine for Recording {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if Some(n) == self.fail_write_no {
            return Err(StorageError::Engine {
                op: "write",
                what: "test".into(),
                msg: "injected failure".into(),
            });
        }
        self.inner.write(batch, sync)?;
        let keys = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Put(k, _) => Some(k.clone()),
                _ => None,
            })
            .collect();
        self.events.lock().push(Event::Write { sync, keys });
        Ok(())
    }
    fn flush_wal(&self, sync: bool) -> Result<(), StorageError> {
        std::thread::sleep(Duration::from_millis(3));
        self.events.lock().push(Event::Flush { sync });
        Ok(())
    }
    fn scan(&self, s: &[u8], e: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        self.inner.scan(s, e, limit)
    }
    fn scan_consistent(&self, s: &[u8], e: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        self.inner.scan_consistent(s, e, f)
    }
}

fn job_keys(job: usize) -> Vec<Vec<u8>> {
    (0..3).map(|i| format!("job{job}-entry{i}").into_bytes()).collect()
}

/// Submits a job the way `LogStore::append` does, with a completion that records its moment.
async fn submit_append(
    flusher: &Flusher,
    events: &Arc<Mutex<Vec<Event>>>,
    job: usize,
) -> oneshot::Receiver<bool> {
    let mut batch = WriteBatch::new();
    for k in job_keys(job) {
        batch.put(k, b"entry".to_vec());
    }
    let (tx, rx) = oneshot::channel();
    let events = events.clone();
    let done: Completion = Box::new(move |res: Result<(), StorageError>| {
        events.lock().push(Event::Done { job, ok: res.is_ok() });
        let _ = tx.send(res.is_ok());
    });
    flusher.submit(Job::Write { batch, entries: 3, written: None, done: Some(done) }).await.unwrap();
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_fires_only_after_a_synced_flush_covers_its_entries() {
    let (engine, events) = Recording::new(None);
    let flusher = Flusher::start(engine).unwrap();
    const TASKS: usize = 8;
    const PER_TASK: usize = 40;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let flusher = flusher.clone();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            let mut rxs = Vec::new();
            for i in 0..PER_TASK {
                rxs.push(submit_append(&flusher, &events, t * PER_TASK + i).await);
            }
            for rx in rxs {
                assert!(rx.await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    flusher.shutdown().await.unwrap();

    let events = events.lock().clone();
    let mut written_at: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut last_sync_flush: Option<usize> = None;
    let mut done = 0;
    for (pos, ev) in events.iter().enumerate() {
        match ev {
            Event::Write { sync, keys } => {
                assert!(!sync, "log writes must be unsynced; the round's flush_wal(true) syncs them");
                for k in keys {
                    written_at.insert(k.clone(), pos);
                }
            }
            Event::Flush { sync } => {
                assert!(sync, "the round's flush must be flush_wal(true)");
                last_sync_flush = Some(pos);
            }
            Event::Done { job, ok } => {
                assert!(ok);
                done += 1;
                let flush = last_sync_flush.unwrap_or_else(|| panic!("job {job} completed before any fsync"));
                for k in job_keys(*job) {
                    let w =
                        written_at.get(&k).unwrap_or_else(|| panic!("job {job} completed before its write"));
                    assert!(*w < flush, "job {job} completed before a flush_wal(true) after its write");
                }
            }
        }
    }
    assert_eq!(done, TASKS * PER_TASK);

    let stats = flusher.stats();
    let flushes = events.iter().filter(|e| matches!(e, Event::Flush { .. })).count() as u64;
    assert_eq!(stats.rounds.load(Ordering::Relaxed), flushes, "exactly one flush per round");
    assert!(flushes < (TASKS * PER_TASK) as u64, "rounds must group jobs: {flushes} flushes");
    assert_eq!(stats.flushed_entries.load(Ordering::Relaxed), (TASKS * PER_TASK * 3) as u64);
    assert!(stats.fsync_nanos_total.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn write_synced_returns_after_the_flush() {
    let (engine, events) = Recording::new(None);
    let flusher = Flusher::start(engine.clone()).unwrap();
    let mut b = WriteBatch::new();
    b.put(b"vote".to_vec(), b"v".to_vec());
    flusher.write_synced(b).await.unwrap();
    let ev = events.lock().clone();
    assert_eq!(
        ev,
        vec![Event::Write { sync: false, keys: vec![b"vote".to_vec()] }, Event::Flush { sync: true }]
    );
    assert_eq!(engine.get(b"vote").unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn fire_and_forget_writes_alone_are_not_synced_until_a_waiter_or_the_stop() {
    let (engine, events) = Recording::new(None);
    let flusher = Flusher::start(engine.clone()).unwrap();
    let put = |k: &[u8]| {
        let mut b = WriteBatch::new();
        b.put(k.to_vec(), b"v".to_vec());
        b
    };
    flusher.write_unsynced(put(b"committed")).await.unwrap();
    while engine.get(b"committed").unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    flusher.write_synced(put(b"vote")).await.unwrap();
    flusher.write_unsynced(put(b"last")).await.unwrap();
    flusher.shutdown().await.unwrap();
    assert_eq!(
        events.lock().clone(),
        vec![
            Event::Write { sync: false, keys: vec![b"committed".to_vec()] },
            Event::Write { sync: false, keys: vec![b"vote".to_vec()] },
            Event::Flush { sync: true },
            Event::Write { sync: false, keys: vec![b"last".to_vec()] },
            Event::Flush { sync: true },
        ],
        "no fsync for the lone fire-and-forget write; the waiter's round and the stop sync"
    );
}

#[tokio::test]
async fn a_failed_write_fails_its_round_and_every_later_job() {
    let (engine, events) = Recording::new(Some(2));
    let flusher = Flusher::start(engine.clone()).unwrap();
    assert!(submit_append(&flusher, &events, 0).await.await.unwrap());
    assert!(!submit_append(&flusher, &events, 1).await.await.unwrap());
    // The engine would accept this one, but it comes after a lost write.
    assert!(!submit_append(&flusher, &events, 2).await.await.unwrap());
    let err = flusher.write_synced(WriteBatch::new()).await.unwrap_err();
    assert!(err.to_string().contains("earlier log write failed"), "{err}");
    assert_eq!(engine.get(&job_keys(2)[0]).unwrap(), None);
}

#[tokio::test]
async fn shutdown_finishes_queued_jobs_then_refuses_more() {
    let (engine, _events) = Recording::new(None);
    let flusher = Flusher::start(engine.clone()).unwrap();
    for i in 0..100u32 {
        let mut b = WriteBatch::new();
        b.put(i.to_be_bytes().to_vec(), b"x".to_vec());
        flusher.write_unsynced(b).await.unwrap();
    }
    flusher.shutdown().await.unwrap();
    assert_eq!(engine.inner.len(), 100);
    assert!(matches!(flusher.write_synced(WriteBatch::new()).await, Err(StorageError::Closed)));
    flusher.shutdown().await.unwrap();
}

#[tokio::test]
async fn written_watermark_rises_with_the_write() {
    let (engine, _events) = Recording::new(None);
    let flusher = Flusher::start(engine).unwrap();
    let mark = Arc::new(AtomicU64::new(0));
    let (tx, rx) = oneshot::channel();
    flusher
        .submit(Job::Write {
            batch: WriteBatch::new(),
            entries: 0,
            written: Some((mark.clone(), 7)),
            done: Some(Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            })),
        })
        .await
        .unwrap();
    assert!(rx.await.unwrap());
    assert_eq!(mark.load(Ordering::Acquire), 7);
}
