use std::time::Duration;

use openraft::type_config::TypeConfigExt;
use parking_lot::Condvar;

use super::*;
use crate::engine::KvPair;
use crate::engine::ScanVisitor;
use crate::mem::MemEngine;
use crate::rocks::RocksEngine;
use crate::testing::blank;
use crate::testing::log_id;
use crate::testing::normal;
use crate::testing::vote;
use crate::testing::TestConfig;
use crate::testing::TestEntry;

type Store = LogStore<TestConfig>;

fn open(engine: Arc<dyn KvEngine>) -> (Store, Flusher) {
    let flusher = Flusher::start(engine.clone()).unwrap();
    (Store::open(engine, flusher.clone(), 1).unwrap(), flusher)
}

/// Appends and waits for the flush callback.
async fn append_flushed(store: &mut Store, entries: Vec<TestEntry>) {
    let (tx, rx) = TestConfig::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
}

fn ids(entries: &[TestEntry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.log_id().leader_id.term, e.index())).collect()
}

/// An engine whose writes (or, with `gate_flush`, WAL flushes) wait until the test opens the gate.
struct Gated {
    inner: MemEngine,
    gate_flush: bool,
    open: parking_lot::Mutex<bool>,
    cv: Condvar,
}

impl Gated {
    fn new(gate_flush: bool) -> Arc<Self> {
        Arc::new(Gated {
            inner: MemEngine::new(),
            gate_flush,
            open: parking_lot::Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    fn wait(&self) {
        let mut open = self.open.lock();
        while !*open {
            self.cv.wait(&mut open);
        }
    }
}

/// Opens the gate when dropped, so a failing test does not leave the flusher blocked (dropping
/// the last `Flusher` waits for its thread).
struct OpenOnDrop(Arc<Gated>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        *self.0.open.lock() = true;
        self.0.cv.notify_all();
    }
}

impl KvEngine for Gated {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError> {
        if !self.gate_flush {
            self.wait();
        }
        self.inner.write(batch, sync)
    }
    fn flush_wal(&self, sync: bool) -> Result<(), StorageError> {
        if self.gate_flush {
            self.wait();
        }
        self.inner.flush_wal(sync)
    }
    fn scan(&self, s: &[u8], e: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        self.inner.scan(s, e, limit)
    }
    fn scan_consistent(&self, s: &[u8], e: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        self.inner.scan_consistent(s, e, f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_readable_before_their_flush_completes() {
    let engine = Gated::new(false);
    let (store, _flusher) = open(engine.clone());
    // A zero-size cache still keeps every entry the flusher has not written yet.
    let mut store = store.with_cache_capacity(0);
    let _open_on_drop = OpenOnDrop(engine.clone());
    let (tx, mut rx) = TestConfig::oneshot();
    store.append(vec![blank(1, 1), blank(1, 2)], IOFlushed::signal(tx)).await.unwrap();
    let (tx2, rx2) = TestConfig::oneshot();
    store.append(vec![blank(1, 3)], IOFlushed::signal(tx2)).await.unwrap();

    let mut reader = store.get_log_reader().await;
    let got = reader.try_get_log_entries(1..4).await.unwrap();
    assert_eq!(ids(&got), vec![(1, 1), (1, 2), (1, 3)]);
    let last = store.get_log_state().await.unwrap().last_log_id;
    assert_eq!(last, Some(log_id(1, 3)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fired = rx.try_recv().is_ok();
    assert!(!fired, "the callback fired before the write reached the engine");
    assert!(engine.inner.is_empty());

    *engine.open.lock() = true;
    engine.cv.notify_all();
    rx.await.unwrap().unwrap();
    rx2.await.unwrap().unwrap();
    assert_eq!(engine.inner.len(), 3);
    // Once written, entries may leave the cache; reads then come from the engine.
    append_flushed(&mut store, vec![blank(1, 4)]).await;
    assert!(store.cached_entries() <= 1);
    assert_eq!(reader.try_get_log_entries(..).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_callback_waits_for_the_fsync_not_just_the_write() {
    let engine = Gated::new(true);
    let (mut store, _flusher) = open(engine.clone());
    let _open_on_drop = OpenOnDrop(engine.clone());
    let (tx, mut rx) = TestConfig::oneshot();
    store.append(vec![blank(1, 1)], IOFlushed::signal(tx)).await.unwrap();
    // Wait until the entry is written (unsynced) and the flusher sits in flush_wal.
    while engine.inner.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fired = rx.try_recv().is_ok();
    assert!(!fired, "the callback fired before flush_wal(true) returned");

    *engine.open.lock() = true;
    engine.cv.notify_all();
    rx.await.unwrap().unwrap();
}

#[tokio::test]
async fn cache_is_bounded_and_reads_merge_engine_and_cache() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemEngine::new());
    let (store, _flusher) = open(engine);
    let mut store = store.with_cache_capacity(4);
    for i in 1..=20 {
        append_flushed(&mut store, vec![normal(1, i, &format!("v{i}"))]).await;
        assert!(store.cached_entries() <= 4, "cache holds {}", store.cached_entries());
    }
    let all = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(all.len(), 20);
    assert!(all.iter().zip(1..).all(|(e, i)| e.index() == i && e.to_string().contains(&format!("v{i}"))));
    // A read entirely below the cache comes from the engine.
    assert_eq!(ids(&store.try_get_log_entries(2..4).await.unwrap()), vec![(1, 2), (1, 3)]);

    // Replace the tail below the cached part: truncate then append with a new term.
    store.truncate_after(Some(log_id(1, 10))).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 10)));
    append_flushed(&mut store, vec![blank(2, 11), blank(2, 12), blank(2, 13)]).await;
    let all = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(ids(&all[9..]), vec![(1, 10), (2, 11), (2, 12), (2, 13)]);

    store.purge(log_id(1, 5)).await.unwrap();
    let left = store.try_get_log_entries(0..=13).await.unwrap();
    assert_eq!(left.first().map(|e| e.index()), Some(6));
    assert_eq!(left.len(), 8);
    assert_eq!(store.limited_get_log_entries(0, 100).await.unwrap().first().map(|e| e.index()), Some(6));
}

#[tokio::test]
async fn cache_is_bounded_in_bytes_and_counts_truncate_and_purge() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemEngine::new());
    let (store, _flusher) = open(engine);
    let mut store = store.with_cache_bytes(2_000);
    let appended = store.appended_bytes();
    let big = "x".repeat(300);
    for i in 1..=20 {
        append_flushed(&mut store, vec![normal(1, i, &format!("{big}{i}"))]).await;
        assert!(store.cached_bytes() <= 2_000, "cache holds {} bytes", store.cached_bytes());
    }
    // The size counter (what the snapshot policy reads) saw every entry, evicted or not.
    let total = appended.load(std::sync::atomic::Ordering::Relaxed);
    assert!((20 * 300..20 * 400).contains(&total), "{total} bytes appended for 20 entries of ~300");
    let cached = store.cached_entries();
    assert!((4..20).contains(&cached), "{cached} entries of ~300 bytes in 2,000 bytes");
    // Every entry is still readable (evicted ones from the engine).
    let all = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(all.len(), 20);
    // Truncate and purge give their bytes back.
    store.truncate_after(Some(log_id(1, 18))).await.unwrap();
    let after_truncate = store.cached_bytes();
    assert!(after_truncate < 2_000 && store.cached_entries() == cached - 2);
    store.purge(log_id(1, 18)).await.unwrap();
    assert_eq!((store.cached_bytes(), store.cached_entries()), (0, 0));
}

#[tokio::test]
async fn reopen_restores_vote_committed_purged_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(dir.path()).unwrap());
        let (mut store, flusher) = open(engine);
        append_flushed(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        store.save_vote(&vote(3)).await.unwrap();
        store.save_committed(Some(log_id(1, 7))).await.unwrap();
        store.purge(log_id(1, 3)).await.unwrap();
        store.truncate_after(Some(log_id(1, 8))).await.unwrap();
        flusher.shutdown().await.unwrap();
        assert!(store.save_vote(&vote(4)).await.is_err(), "writes after shutdown must fail");
    }
    let engine: Arc<dyn KvEngine> = Arc::new(RocksEngine::open(dir.path()).unwrap());
    let (mut store, _flusher) = open(engine);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    assert_eq!(store.read_vote().await.unwrap(), Some(vote(3)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 7)));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.index()).collect::<Vec<_>>(), (4..=8).collect::<Vec<_>>());
}

fn put_raw(engine: &MemEngine, key: Vec<u8>, value: Vec<u8>) {
    let mut b = WriteBatch::new();
    b.put(key, value);
    engine.write(&b, true).unwrap();
}

#[tokio::test]
async fn corrupt_entry_is_a_read_error_naming_group_key_and_read() {
    let engine = Arc::new(MemEngine::new());
    for i in 1..=5 {
        put_raw(&engine, keys::log_key(1, i), codec::encode(&blank(1, i)).unwrap());
    }
    put_raw(&engine, keys::log_key(1, 3), vec![codec::FORMAT_VERSION, 0xFF, 0xFF, 0xFF]);
    let (mut store, _flusher) = open(engine.clone());
    let err = store.try_get_log_entries(1..6).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    for want in ["read", "group 1", "log entry 3", "key 0x0001010000000000000003"] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    // Entries around it still read.
    assert_eq!(store.try_get_log_entries(4..6).await.unwrap().len(), 2);

    // An entry from a newer build says so.
    put_raw(&engine, keys::log_key(1, 4), vec![codec::FORMAT_VERSION + 1, 0]);
    let err = store.try_get_log_entries(4..5).await.unwrap_err();
    assert!(err.to_string().contains("format 2"), "{err}");
}

#[test]
fn corrupt_vote_fails_open_with_a_clear_error() {
    let engine = Arc::new(MemEngine::new());
    put_raw(&engine, keys::raft_key(1, RaftTag::Vote), vec![codec::FORMAT_VERSION]);
    let flusher = Flusher::start(engine.clone()).unwrap();
    let err = Store::open(engine, flusher, 1).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("read of group 1 raft key"), "{msg}");
    assert!(matches!(err, StorageError::Corrupt { .. }));
}

#[tokio::test]
async fn append_that_would_leave_a_hole_is_refused() {
    let (mut store, _flusher) = open(Arc::new(MemEngine::new()));
    append_flushed(&mut store, vec![blank(1, 1), blank(1, 2)]).await;
    let (tx, _rx) = TestConfig::oneshot();
    let err = store.append(vec![blank(1, 4)], IOFlushed::signal(tx)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("expected 3"), "{err}");
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 2)));
}

#[tokio::test]
async fn groups_share_one_engine_without_seeing_each_other() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemEngine::new());
    let flusher = Flusher::start(engine.clone()).unwrap();
    let mut a = Store::open(engine.clone(), flusher.clone(), 1).unwrap().with_cache_capacity(0);
    let mut b = Store::open(engine.clone(), flusher.clone(), 2).unwrap().with_cache_capacity(0);
    append_flushed(&mut a, (1..=3).map(|i| blank(1, i)).collect()).await;
    append_flushed(&mut b, (1..=5).map(|i| blank(2, i)).collect()).await;
    a.purge(log_id(1, 2)).await.unwrap();
    b.truncate_after(Some(log_id(2, 4))).await.unwrap();
    flusher.write_synced(WriteBatch::new()).await.unwrap();
    let a2 = Store::open(engine.clone(), flusher.clone(), 1).unwrap();
    let b2 = Store::open(engine, flusher, 2).unwrap();
    assert_eq!(ids(&a2.clone().try_get_log_entries(..).await.unwrap()), vec![(1, 3)]);
    assert_eq!(b2.clone().try_get_log_entries(..).await.unwrap().len(), 4);
}
