use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::*;
use crate::engine::KvPair;
use crate::engine::ScanVisitor;
use crate::mem::MemEngine;
use crate::rocks::RocksEngine;

const G: GroupId = 2;

fn fill(engine: &dyn KvEngine, group: GroupId, n: usize, tag: &str) {
    let mut b = WriteBatch::new();
    for i in 0..n {
        let value = format!("{tag}-{i}-").repeat(1 + i % 50);
        b.put(keys::data_key(group, format!("k{i:05}").as_bytes()), value.into_bytes());
    }
    engine.write(&b, false).unwrap();
}

fn data(engine: &dyn KvEngine, group: GroupId) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (s, e) = keys::data_range(group);
    engine.scan(&s, &e, usize::MAX).unwrap()
}

fn finish_batch() -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put(keys::raft_key(G, RaftTag::Applied), b"applied".to_vec());
    b
}

/// Source with group G data (plus an empty key), target with stale G data and other groups.
fn source_and_file(dir: &Path) -> (MemEngine, SnapshotFile) {
    let src = MemEngine::new();
    fill(&src, G, 300, "src");
    let mut b = WriteBatch::new();
    b.put(keys::data_key(G, b""), b"empty-key".to_vec());
    src.write(&b, false).unwrap();
    fill(&src, G + 1, 10, "not-in-snapshot");
    let file = build_snapshot(&src, G, &dir.join("snaps"), b"meta-bytes").unwrap();
    (src, file)
}

fn prepare_target(target: &dyn KvEngine) {
    fill(target, G, 400, "stale");
    fill(target, G + 1, 20, "other-group");
    let mut b = WriteBatch::new();
    b.put(keys::log_key(G, 7), b"log entry".to_vec());
    target.write(&b, true).unwrap();
}

fn assert_installed(src: &MemEngine, target: &dyn KvEngine, other: &[(Vec<u8>, Vec<u8>)]) {
    assert_eq!(data(target, G), data(src, G), "group data must equal the source exactly");
    assert_eq!(data(target, G + 1), other, "other groups must be untouched");
    assert_eq!(target.get(&keys::log_key(G, 7)).unwrap(), Some(b"log entry".to_vec()));
    assert_eq!(target.get(&keys::raft_key(G, RaftTag::Applied)).unwrap(), Some(b"applied".to_vec()));
    assert_eq!(interrupted_install(target, G).unwrap(), None);
}

#[test]
fn build_then_install_round_trips_between_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (src, file) = source_and_file(dir.path());
    assert!(file.path.exists());
    assert_eq!(file.size, std::fs::metadata(&file.path).unwrap().len());
    assert_eq!(read_snapshot_meta(&file.path).unwrap(), b"meta-bytes");
    verify_snapshot(&file.path).unwrap();
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path().join("snaps")).unwrap().count(), 1);

    let target = RocksEngine::open(&dir.path().join("db")).unwrap();
    prepare_target(&target);
    let other = data(&target, G + 1);
    install_snapshot(&target, G, &file.path, finish_batch()).unwrap();
    assert_installed(&src, &target, &other);

    // Back again, Rocks -> Mem, through a second file.
    let back = build_snapshot(&target, G, &dir.path().join("snaps"), b"").unwrap();
    assert_ne!(back.path, file.path);
    let mem = MemEngine::new();
    install_snapshot(&mem, G, &back.path, WriteBatch::new()).unwrap();
    assert_eq!(data(&mem, G), data(&src, G));
}

#[test]
fn consistent_build_takes_meta_and_data_from_one_view() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RocksEngine::open(&dir.path().join("db")).unwrap();
    fill(&engine, G, 50, "v1");
    let mut b = WriteBatch::new();
    b.put(keys::raft_key(G, RaftTag::Applied), b"applied-1".to_vec());
    b.put(keys::raft_key(G, RaftTag::Membership), b"members-1".to_vec());
    engine.write(&b, false).unwrap();
    let before = data(&engine, G);

    let file = build_snapshot_consistent(&engine, G, &dir.path().join("snaps"), &mut |raft| {
        // Apply goes on while the snapshot is built: neither this nor the new APPLIED may show.
        let mut b = WriteBatch::new();
        b.put(keys::data_key(G, b"k00001"), b"changed".to_vec())
            .put(keys::data_key(G, b"zz-new"), b"new".to_vec())
            .put(keys::raft_key(G, RaftTag::Applied), b"applied-2".to_vec());
        engine.write(&b, false)?;
        let mut meta = raft.get(RaftTag::Applied).unwrap_or_default().to_vec();
        meta.extend_from_slice(raft.get(RaftTag::Membership).unwrap_or_default());
        Ok(meta)
    })
    .unwrap();
    assert_eq!(read_snapshot_meta(&file.path).unwrap(), b"applied-1members-1");
    let mem = MemEngine::new();
    install_snapshot(&mem, G, &file.path, WriteBatch::new()).unwrap();
    assert_eq!(data(&mem, G), before);

    // With no data at all, the header still carries the records.
    let empty = MemEngine::new();
    let mut b = WriteBatch::new();
    b.put(keys::raft_key(G, RaftTag::Applied), b"a".to_vec());
    empty.write(&b, false).unwrap();
    let file = build_snapshot_consistent(&empty, G, dir.path(), &mut |raft| {
        Ok(raft.get(RaftTag::Applied).unwrap_or_default().to_vec())
    })
    .unwrap();
    assert_eq!(read_snapshot_meta(&file.path).unwrap(), b"a");
}

#[test]
fn empty_group_snapshot_installs_an_empty_range() {
    let dir = tempfile::tempdir().unwrap();
    let file = build_snapshot(&MemEngine::new(), G, dir.path(), b"m").unwrap();
    let target = MemEngine::new();
    fill(&target, G, 5, "stale");
    install_snapshot(&target, G, &file.path, WriteBatch::new()).unwrap();
    assert!(data(&target, G).is_empty());
}

#[test]
fn corrupt_files_are_clear_errors_and_leave_the_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (_src, file) = source_and_file(dir.path());
    let good = std::fs::read(&file.path).unwrap();
    let bad = dir.path().join("bad.snap");
    let target = MemEngine::new();
    fill(&target, G, 3, "keep");
    let before = data(&target, G);

    let check = |bytes: &[u8], want: &str| {
        std::fs::write(&bad, bytes).unwrap();
        let err = verify_snapshot(&bad).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "expected {want:?} in: {msg}");
        assert!(msg.contains("bad.snap"), "the error must name the file: {msg}");
        assert!(install_snapshot(&target, G, &bad, WriteBatch::new()).is_err());
        assert_eq!(data(&target, G), before);
        assert_eq!(interrupted_install(&target, G).unwrap(), None);
    };

    // A flipped byte anywhere: magic, header, a record, the count, the checksum.
    for pos in [0, 9, 20, good.len() / 2, good.len() - 10, good.len() - 1] {
        let mut b = good.clone();
        b[pos] ^= 0x5A;
        std::fs::write(&bad, &b).unwrap();
        let err = verify_snapshot(&bad).unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "flip at {pos}: {err:?}");
        check(&b, "bad.snap");
    }
    // Truncated at several places.
    for len in [0, 5, 12, 30, good.len() / 3, good.len() - 5, good.len() - 1] {
        check(&good[..len], "truncated");
    }
    // Extra bytes after the checksum.
    let mut long = good.clone();
    long.push(0);
    check(&long, "trailing bytes");
    // A length bomb in the metadata length: refused before allocating.
    let mut bomb = good.clone();
    bomb[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    check(&bomb, "exceeds");
    // A newer format.
    let mut newer = good.clone();
    newer[7] = SNAPSHOT_FORMAT + 1;
    std::fs::write(&bad, &newer).unwrap();
    assert!(matches!(verify_snapshot(&bad), Err(StorageError::NewerFormat { found: 2, .. })));
    // The wrong group.
    let err = install_snapshot(&target, G + 1, &file.path, WriteBatch::new()).unwrap_err();
    assert!(err.to_string().contains("expected group 3"), "{err}");
}

/// Aborts the process after a number of writes, like a crash (no destructors, no flush).
struct AbortAfter {
    inner: RocksEngine,
    writes_left: AtomicUsize,
}

impl KvEngine for AbortAfter {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError> {
        self.inner.write(batch, sync)?;
        if self.writes_left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            std::process::abort();
        }
        Ok(())
    }
    fn flush_wal(&self, sync: bool) -> Result<(), StorageError> {
        self.inner.flush_wal(sync)
    }
    fn scan(&self, s: &[u8], e: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        self.inner.scan(s, e, limit)
    }
    fn scan_consistent(&self, s: &[u8], e: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        self.inner.scan_consistent(s, e, f)
    }
}

const CRASH_CHILD_ENV: &str = "IRONHUB_SNAPSHOT_CRASH_CHILD";
const CRASH_AFTER_BATCHES: usize = 3;
const SMALL_BATCH: usize = 8 * 1024;

/// The child's half: install with small batches and abort after a few record batches.
fn crash_child(root: &Path) {
    let snaps = root.join("snaps");
    let file = std::fs::read_dir(&snaps).unwrap().next().unwrap().unwrap().path();
    let engine = AbortAfter {
        inner: RocksEngine::open(&root.join("db")).unwrap(),
        // The marker write, then CRASH_AFTER_BATCHES record batches.
        writes_left: AtomicUsize::new(1 + CRASH_AFTER_BATCHES),
    };
    let _ = install_snapshot_in_batches(&engine, G, &file, finish_batch(), SMALL_BATCH);
    // Reaching here means the crash point was never hit.
    std::process::exit(3);
}

#[test]
fn install_crash_midway_is_redone_from_the_retained_file() {
    if let Some(root) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&root));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, file) = source_and_file(dir.path());
    let other = {
        let target = RocksEngine::open(&dir.path().join("db")).unwrap();
        prepare_target(&target);
        data(&target, G + 1)
    };

    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", "snapshot::tests::install_crash_midway_is_redone_from_the_retained_file"])
        .args(["--test-threads=1", "--nocapture"])
        .env(CRASH_CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let status = out.status;
    assert!(!status.success(), "the child must crash mid-install: {status}");
    assert_ne!(status.code(), Some(3), "the child finished the install without crashing");

    let target = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
    let marked = interrupted_install(&*target, G).unwrap().expect("the installing marker survives the crash");
    assert_eq!(marked, std::path::absolute(&file.path).unwrap());
    let partial = data(&*target, G);
    assert_ne!(partial, data(&src, G), "the crash must land mid-install");
    assert!(!partial.is_empty(), "some record batches were written before the crash");
    assert_eq!(target.get(&keys::raft_key(G, RaftTag::Applied)).unwrap(), None);

    install_snapshot(&*target, G, &marked, finish_batch()).unwrap();
    assert_installed(&src, &*target, &other);
}
