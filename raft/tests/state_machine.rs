//! The real [`GroupStateMachine`] on the memory engine and on RocksDB: openraft's storage suite with
//! our log store, apply order and atomicity, idempotent proposals, snapshot round trips across
//! engines and restarts, an install cut short by a crash (child process), and system commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ironhub_raft::metrics::RaftMetrics;
use ironhub_raft::types::{BatchResponse, Entry, LogId, SnapshotMeta, StoredMembership};
use ironhub_raft::{
    Apply, ApplyContext, Body, CommandBatch, GroupId, GroupStateMachine, MembershipChange, MembershipPlan,
    NodeAddr, NodeId, Proposal, ProposalId, StateCacheLimits, StateTxn, StateView, SystemCommand, TypeConfig,
    META_GROUP,
};
use ironhub_storage::engine::{KvPair, ScanVisitor};
use ironhub_storage::keys::{self, RaftTag};
use ironhub_storage::{
    codec, Flusher, KvEngine, LogStore, MemEngine, RocksEngine, SnapshotFile, StorageError, WriteBatch,
};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::Membership;
use parking_lot::Mutex;
use tempfile::TempDir;

type C = TypeConfig;

/// A partition group (not the meta group).
const G: GroupId = 1;

/// Test application: each command names a counter (the command bytes are its key); applying
/// increments it and answers `"<command>=<new value>@<index>.<slot>"`, so a replayed response is
/// told apart from a fresh one. With `pad > 0` it also writes a `pad`-byte value per command.
/// The command `boom` fails like a storage error.
#[derive(Default)]
struct Counters {
    pad: usize,
    /// `(group, number of application keys)` at each `restore` call.
    restores: Mutex<Vec<(GroupId, usize)>>,
}

impl Apply for Counters {
    fn apply(
        &self,
        ctx: &ApplyContext,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError> {
        if command == b"boom" {
            return Err(StorageError::corrupt("test command", "boom"));
        }
        // Through the decoded-state cache: a failed batch or an installed snapshot must not
        // leave a counter's value behind in it (the tests below would count from a wrong value).
        let next = txn.get_decoded::<u64>(command, "counter")?.unwrap_or(0) + 1;
        txn.put_encoded(command, next)?;
        if self.pad > 0 {
            let mut k = b"pad/".to_vec();
            k.extend_from_slice(command);
            txn.put(&k, &vec![b'p'; self.pad]);
        }
        let name = String::from_utf8_lossy(command);
        Ok(Bytes::from(format!("{name}={next}@{}.{}", ctx.index, ctx.slot)))
    }

    fn restore(&self, group: GroupId, state: &StateView<'_>) -> Result<(), StorageError> {
        let n = state.scan(b"", b"\xff", usize::MAX)?.len();
        self.restores.lock().push((group, n));
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Mem,
    Rocks,
}

const KINDS: [Kind; 2] = [Kind::Mem, Kind::Rocks];

fn open_engine(kind: Kind, dir: &Path) -> Arc<dyn KvEngine> {
    match kind {
        Kind::Mem => Arc::new(MemEngine::new()),
        Kind::Rocks => Arc::new(RocksEngine::open(&dir.join("db")).expect("open rocksdb")),
    }
}

fn open_sm(group: GroupId, engine: Arc<dyn KvEngine>, app: Arc<Counters>, dir: &Path) -> GroupStateMachine {
    let cache = StateCacheLimits::default();
    GroupStateMachine::open(group, engine, app, dir.join("snapshots"), RaftMetrics::unregistered(), &cache)
        .expect("open state machine")
}

/// One state machine with its engine, application and directory.
struct Sm {
    dir: TempDir,
    engine: Arc<dyn KvEngine>,
    app: Arc<Counters>,
    sm: GroupStateMachine,
}

impl Sm {
    fn new(kind: Kind, group: GroupId) -> Self {
        Self::with_app(kind, group, Counters::default())
    }

    fn with_app(kind: Kind, group: GroupId, app: Counters) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open_engine(kind, dir.path());
        let app = Arc::new(app);
        let sm = open_sm(group, engine.clone(), app.clone(), dir.path());
        Self { dir, engine, app, sm }
    }

    fn counter(&self, group: GroupId, name: &str) -> u64 {
        let v = StateView::for_test(self.engine.as_ref(), group).get(name.as_bytes()).expect("read counter");
        v.map_or(0, |v| ironhub_storage::codec::decode(&v, "counter").expect("decode counter"))
    }
}

fn lid(term: u64, index: u64) -> LogId {
    LogId::new(<C as openraft::RaftTypeConfig>::LeaderId::new_committed(term, 0), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(lid(term, index))
}

fn normal(term: u64, index: u64, commands: Vec<Proposal>) -> Entry {
    Entry::new_normal(lid(term, index), CommandBatch { commands })
}

fn members(voters: &[NodeId]) -> Membership<NodeId, NodeAddr> {
    Membership::new_with_defaults(vec![voters.iter().copied().collect::<BTreeSet<_>>()], [])
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    Entry::new_membership(lid(term, index), members(voters))
}

fn app(cmd: &str) -> Proposal {
    Proposal::app(cmd.as_bytes().to_vec())
}

fn with_id(cmd: &str, origin: NodeId, incarnation: u64, seq: u64) -> Proposal {
    app(cmd).with_id(ProposalId { origin, incarnation, seq })
}

fn system(cmd: SystemCommand) -> Proposal {
    Proposal { id: None, body: Body::System(cmd) }
}

fn resp(responses: &[&str]) -> BatchResponse {
    BatchResponse { responses: responses.iter().map(|r| Bytes::from(r.to_string())).collect() }
}

/// Applies through `RaftStateMachine::apply` (no client waiting, as on a follower).
async fn apply(sm: &mut GroupStateMachine, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.expect("apply");
}

/// Applies and returns the response of each entry, as the responders would get them.
async fn apply_answers(
    sm: &GroupStateMachine,
    entries: Vec<Entry>,
) -> Result<Vec<BatchResponse>, StorageError> {
    let sm = sm.clone();
    tokio::task::spawn_blocking(move || sm.apply_for_test(&entries)).await.expect("apply task")
}

async fn answers(sm: &GroupStateMachine, entries: Vec<Entry>) -> Vec<BatchResponse> {
    apply_answers(sm, entries).await.expect("apply")
}

/// The group's whole data range: application keys and the raft layer's records (idempotency,
/// membership plans).
fn group_data(engine: &dyn KvEngine, group: GroupId) -> Vec<KvPair> {
    let (s, e) = keys::data_range(group);
    engine.scan(&s, &e, usize::MAX).expect("scan data range")
}

// ---------------------------------------------------------------------------------------------
// 1. openraft's storage suite: our log store and our state machine together.

struct SuiteBuilder(Kind);

fn suite_err(e: impl std::error::Error + 'static) -> openraft::StorageError<C> {
    openraft::StorageError::read(C::err_from_error(&e))
}

impl StoreBuilder<C, LogStore<C>, GroupStateMachine, TempDir> for SuiteBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore<C>, GroupStateMachine), openraft::StorageError<C>> {
        let dir = TempDir::new().map_err(suite_err)?;
        let engine: Arc<dyn KvEngine> = match self.0 {
            Kind::Rocks => Arc::new(RocksEngine::open(&dir.path().join("db")).map_err(suite_err)?),
            Kind::Mem => Arc::new(MemEngine::new()),
        };
        let flusher = Flusher::start(engine.clone()).map_err(suite_err)?;
        let store = LogStore::<C>::open(engine.clone(), flusher, G).map_err(suite_err)?;
        let sm = GroupStateMachine::open(
            G,
            engine,
            Arc::new(Counters::default()),
            dir.path().join("snapshots"),
            RaftMetrics::unregistered(),
            &StateCacheLimits::default(),
        )
        .map_err(suite_err)?;
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_group_state_machine_on_memory_engine() {
    Suite::test_all(SuiteBuilder(Kind::Mem)).await.expect("suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_group_state_machine_on_rocksdb() {
    Suite::test_all(SuiteBuilder(Kind::Rocks)).await.expect("suite");
}

// ---------------------------------------------------------------------------------------------
// 2. Apply order and atomicity.

fn mixed_stream() -> Vec<Entry> {
    vec![
        blank(1, 1),
        membership(1, 2, &[1, 2, 3]),
        normal(1, 3, vec![app("a"), app("b"), app("a")]),
        blank(2, 4),
        normal(2, 5, vec![]),
        normal(2, 6, vec![app("b")]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_answers_every_command_in_order_and_records_last_log_id_and_membership() {
    for kind in KINDS {
        let mut s = Sm::new(kind, G);
        let got = answers(&s.sm, mixed_stream()).await;
        assert_eq!(
            got,
            vec![
                resp(&[]),
                resp(&[]),
                resp(&["a=1@3.0", "b=1@3.1", "a=2@3.2"]),
                resp(&[]),
                resp(&[]),
                resp(&["b=2@6.0"]),
            ],
            "{kind:?}"
        );
        assert_eq!(s.counter(G, "a"), 2, "{kind:?}");
        assert_eq!(s.counter(G, "b"), 2, "{kind:?}");
        assert_eq!(
            s.sm.applied_state().await.expect("applied state"),
            (Some(lid(2, 6)), StoredMembership::new(Some(lid(1, 2)), members(&[1, 2, 3]))),
            "{kind:?}"
        );

        // A later call that ends on a membership entry.
        let got = answers(&s.sm, vec![normal(3, 7, vec![app("c")]), membership(3, 8, &[1, 2])]).await;
        assert_eq!(got, vec![resp(&["c=1@7.0"]), resp(&[])], "{kind:?}");
        assert_eq!(
            s.sm.applied_state().await.expect("applied state"),
            (Some(lid(3, 8)), StoredMembership::new(Some(lid(3, 8)), members(&[1, 2]))),
            "{kind:?}"
        );

        // The trait's apply (no responders) leaves exactly the same state.
        let mut t = Sm::new(kind, G);
        apply(&mut t.sm, mixed_stream()).await;
        apply(&mut t.sm, vec![normal(3, 7, vec![app("c")]), membership(3, 8, &[1, 2])]).await;
        assert_eq!(
            t.sm.applied_state().await.expect("applied state"),
            s.sm.applied_state().await.expect("applied state"),
            "{kind:?}"
        );
        assert_eq!(group_data(t.engine.as_ref(), G), group_data(s.engine.as_ref(), G), "{kind:?}");
        assert_eq!(t.counter(G, "c"), 1, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_writes_nothing_of_its_entries() {
    for kind in KINDS {
        let s = Sm::new(kind, G);
        answers(&s.sm, vec![normal(1, 1, vec![app("a")]), membership(1, 2, &[1])]).await;
        let before_state = s.sm.clone().applied_state().await.expect("applied state");
        let before_data = group_data(s.engine.as_ref(), G);

        // Earlier commands of the failing entry and whole earlier entries of the same call.
        let err = apply_answers(
            &s.sm,
            vec![
                normal(1, 3, vec![app("a"), with_id("b", 9, 1, 1)]),
                membership(1, 4, &[1, 2]),
                normal(1, 5, vec![app("c"), app("boom"), app("d")]),
            ],
        )
        .await
        .expect_err("the failing command fails the apply");
        assert!(err.to_string().contains("boom"), "{kind:?}: {err}");

        assert_eq!(s.sm.clone().applied_state().await.expect("applied state"), before_state, "{kind:?}");
        assert_eq!(group_data(s.engine.as_ref(), G), before_data, "{kind:?}");
        assert_eq!(s.counter(G, "a"), 1, "{kind:?}");

        // The same entries without the failing command apply afresh (no idempotency record of
        // the failed attempt survived).
        let got = answers(
            &s.sm,
            vec![
                normal(1, 3, vec![app("a"), with_id("b", 9, 1, 1)]),
                membership(1, 4, &[1, 2]),
                normal(1, 5, vec![app("c"), app("d")]),
            ],
        )
        .await;
        assert_eq!(
            got,
            vec![resp(&["a=2@3.0", "b=1@3.1"]), resp(&[]), resp(&["c=1@5.0", "d=1@5.1"])],
            "{kind:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Idempotent proposals.

/// A memory engine whose next write fails when asked to (a full disk, say).
#[derive(Default)]
struct FailingWrites {
    inner: MemEngine,
    fail_next: AtomicBool,
}

impl KvEngine for FailingWrites {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StorageError::Engine { op: "write", what: "test".into(), msg: "disk full".into() });
        }
        self.inner.write(batch, sync)
    }
    fn flush_wal(&self, sync: bool) -> Result<(), StorageError> {
        self.inner.flush_wal(sync)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        self.inner.scan(start, end, limit)
    }
    fn scan_consistent(&self, start: &[u8], end: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        self.inner.scan_consistent(start, end, f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_a_batch_whose_write_failed_are_not_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(FailingWrites::default());
    let sm = open_sm(G, engine.clone(), Arc::new(Counters::default()), dir.path());
    assert_eq!(
        answers(&sm, vec![normal(1, 1, vec![app("a"), app("a")])]).await,
        vec![resp(&["a=1@1.0", "a=2@1.1"])]
    );
    engine.fail_next.store(true, Ordering::SeqCst);
    let err = apply_answers(&sm, vec![normal(1, 2, vec![app("a")])]).await.expect_err("write fails");
    assert!(err.to_string().contains("disk full"), "{err}");
    // Applied again (a restarted apply, say): counted from the stored value, not the lost write.
    assert_eq!(answers(&sm, vec![normal(1, 2, vec![app("a")])]).await, vec![resp(&["a=3@2.0"])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_id_applies_once_and_replays_its_first_response() {
    for kind in KINDS {
        let s = Sm::new(kind, G);
        let got = answers(
            &s.sm,
            vec![
                // The same id twice in one entry, then a command without id.
                normal(1, 1, vec![with_id("x", 7, 1, 1), with_id("x", 7, 1, 1), app("x")]),
                // A retry in a later entry of the same call.
                normal(1, 2, vec![with_id("x", 7, 1, 1)]),
                // A newer seq applies.
                normal(1, 3, vec![with_id("x", 7, 1, 3)]),
            ],
        )
        .await;
        assert_eq!(
            got,
            vec![resp(&["x=1@1.0", "x=1@1.0", "x=2@1.2"]), resp(&["x=1@1.0"]), resp(&["x=3@3.0"])],
            "{kind:?}"
        );
        assert_eq!(s.counter(G, "x"), 3, "{kind:?}");

        // In a later call: an older seq of the same incarnation answers empty and changes nothing;
        // the latest seq replays; other incarnations and origins are independent.
        let before = group_data(s.engine.as_ref(), G);
        let got = answers(
            &s.sm,
            vec![
                normal(1, 4, vec![with_id("x", 7, 1, 2), with_id("x", 7, 1, 1)]),
                normal(1, 5, vec![with_id("x", 7, 1, 3)]),
            ],
        )
        .await;
        assert_eq!(got, vec![resp(&["", ""]), resp(&["x=3@3.0"])], "{kind:?}");
        assert_eq!(group_data(s.engine.as_ref(), G), before, "{kind:?}");
        assert_eq!(s.counter(G, "x"), 3, "{kind:?}");

        let got = answers(
            &s.sm,
            vec![normal(1, 6, vec![with_id("x", 7, 2, 1), with_id("x", 8, 1, 1), with_id("x", 7, 1, 4)])],
        )
        .await;
        assert_eq!(got, vec![resp(&["x=4@6.0", "x=5@6.1", "x=6@6.2"])], "{kind:?}");
        assert_eq!(s.counter(G, "x"), 6, "{kind:?}");

        if kind == Kind::Rocks {
            // The records survive a restart.
            let Sm { dir, engine, sm, .. } = s;
            drop((engine, sm));
            let engine = open_engine(kind, dir.path());
            let sm = open_sm(G, engine, Arc::new(Counters::default()), dir.path());
            let got =
                answers(&sm, vec![normal(2, 7, vec![with_id("x", 7, 1, 4), with_id("x", 7, 1, 2)])]).await;
            assert_eq!(got, vec![resp(&["x=6@6.2", ""])]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Snapshot round trips.

/// Entries giving a state machine counters, idempotency records and a membership.
fn snapshot_stream() -> Vec<Entry> {
    vec![
        blank(1, 1),
        membership(1, 2, &[1, 2, 3]),
        normal(1, 3, vec![app("a"), with_id("b", 5, 1, 1), app("a")]),
        normal(2, 4, vec![with_id("c", 5, 2, 9), app("d")]),
        blank(2, 5),
    ]
}

/// What `install_snapshot` is given on a follower: the transport's copy of the leader's file.
fn received_copy(file: &SnapshotFile, dir: &Path) -> SnapshotFile {
    std::fs::create_dir_all(dir).expect("incoming dir");
    let path = dir.join("incoming.snap");
    std::fs::copy(&file.path, &path).expect("copy snapshot");
    SnapshotFile { path, size: file.size }
}

async fn snapshot_round_trip(src_kind: Kind, dst_kind: Kind) {
    let ctx = format!("{src_kind:?} -> {dst_kind:?}");
    let mut a = Sm::new(src_kind, G);
    assert!(a.sm.get_current_snapshot().await.expect("current").is_none(), "{ctx}");
    apply(&mut a.sm, snapshot_stream()).await;
    let want_state = (Some(lid(2, 5)), StoredMembership::new(Some(lid(1, 2)), members(&[1, 2, 3])));
    assert_eq!(a.sm.applied_state().await.expect("applied"), want_state, "{ctx}");

    let snap = a.sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert_eq!((snap.meta.last_log_id, snap.meta.last_membership.clone()), want_state, "{ctx}");
    assert_eq!(
        snap.snapshot.size,
        std::fs::metadata(&snap.snapshot.path).expect("snapshot file").len(),
        "{ctx}"
    );
    let a_cur = a.sm.get_current_snapshot().await.expect("current").expect("A has a snapshot");
    assert_eq!(a_cur.meta, snap.meta, "{ctx}");
    assert_eq!(a_cur.snapshot, snap.snapshot, "{ctx}");

    // B starts with other state and its own snapshot of it: the install replaces both.
    let mut b = Sm::new(dst_kind, G);
    apply(&mut b.sm, vec![membership(1, 1, &[9]), normal(1, 2, vec![app("stale"), with_id("a", 5, 1, 1)])])
        .await;
    let b_old = b.sm.get_snapshot_builder().await.build_snapshot().await.expect("build on B");
    let incoming = received_copy(&snap.snapshot, &b.dir.path().join("incoming"));
    b.sm.install_snapshot(&snap.meta, incoming).await.expect("install");

    assert_eq!(b.sm.applied_state().await.expect("applied"), want_state, "{ctx}");
    let a_data = group_data(a.engine.as_ref(), G);
    assert_eq!(group_data(b.engine.as_ref(), G), a_data, "{ctx}");
    assert_eq!(b.counter(G, "stale"), 0, "{ctx}");
    assert_eq!(b.counter(G, "a"), 2, "{ctx}");
    // Restored at open (no keys yet) and after the install (counters a, b, c, d).
    assert_eq!(*b.app.restores.lock(), vec![(G, 0), (G, 4)], "{ctx}");
    // B's older snapshot is retired, not deleted yet (a transfer may still read it) ...
    assert!(b_old.snapshot.path.exists(), "{ctx}: B's older snapshot is kept one generation");

    let b_cur = b.sm.get_current_snapshot().await.expect("current").expect("B has the snapshot");
    assert_eq!(b_cur.meta, snap.meta, "{ctx}");
    assert_eq!(b_cur.snapshot.size, snap.snapshot.size, "{ctx}");
    assert!(b_cur.snapshot.path.starts_with(b.dir.path().join("snapshots")), "{ctx}");
    // A keeps its own snapshot.
    let a_cur = a.sm.get_current_snapshot().await.expect("current").expect("A still has it");
    assert_eq!(a_cur.meta, snap.meta, "{ctx}");
    assert_eq!(a_cur.snapshot, snap.snapshot, "{ctx}");

    // Building again without new entries hands back the current snapshot, on both sides; A keeps
    // one snapshot file, B its current one and the one it replaced (retired for one generation).
    let again = b.sm.get_snapshot_builder().await.build_snapshot().await.expect("rebuild on B");
    assert_eq!((again.meta, again.snapshot), (b_cur.meta.clone(), b_cur.snapshot.clone()), "{ctx}");
    let again = a.sm.get_snapshot_builder().await.build_snapshot().await.expect("rebuild on A");
    assert_eq!((again.meta, again.snapshot), (snap.meta.clone(), snap.snapshot.clone()), "{ctx}");
    for (s, want) in [(&a, 1), (&b, 2)] {
        let files = std::fs::read_dir(s.dir.path().join("snapshots")).expect("snapshot dir").count();
        assert_eq!(files, want, "{ctx}: snapshot files in {}", s.dir.path().display());
    }

    // The idempotency records travelled with the snapshot; B counts on from the installed
    // state, not from values it had decoded before the install ("a" was 1, "stale" 1).
    let got = answers(
        &b.sm,
        vec![normal(
            3,
            6,
            vec![with_id("b", 5, 1, 1), with_id("c", 5, 2, 8), app("b"), app("a"), app("stale")],
        )],
    )
    .await;
    assert_eq!(got, vec![resp(&["b=1@3.1", "", "b=2@6.2", "a=3@6.3", "stale=1@6.4"])], "{ctx}");

    // Restart whichever side is on RocksDB: its current snapshot and state are still there.
    for (side, s, cur) in [("A", a, a_cur), ("B", b, b_cur)] {
        let kind = if side == "A" { src_kind } else { dst_kind };
        if kind != Kind::Rocks {
            continue;
        }
        let Sm { dir, engine, sm, .. } = s;
        let before_state = sm.clone().applied_state().await.expect("applied");
        let before_data = group_data(engine.as_ref(), G);
        drop((engine, sm));
        let engine = open_engine(kind, dir.path());
        let app = Arc::new(Counters::default());
        let mut sm = open_sm(G, engine.clone(), app.clone(), dir.path());
        let again = sm.get_current_snapshot().await.expect("current").expect("snapshot after restart");
        assert_eq!(again.meta, cur.meta, "{ctx}: {side} after restart");
        assert_eq!(again.snapshot, cur.snapshot, "{ctx}: {side} after restart");
        assert_eq!(sm.applied_state().await.expect("applied"), before_state, "{ctx}: {side}");
        assert_eq!(group_data(engine.as_ref(), G), before_data, "{ctx}: {side}");
        assert_eq!(app.restores.lock().len(), 1, "{ctx}: {side} restores at open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_from_memory_installs_on_rocksdb_and_survives_restart() {
    snapshot_round_trip(Kind::Mem, Kind::Rocks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_from_rocksdb_installs_on_memory_and_survives_restart() {
    snapshot_round_trip(Kind::Rocks, Kind::Mem).await;
}

// ---------------------------------------------------------------------------------------------
// 5. An install cut short by a crash is finished at the next open.

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
        if self.writes_left.fetch_sub(1, Ordering::SeqCst) == 1 {
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

const CRASH_CHILD_ENV: &str = "IRONHUB_SM_INSTALL_CRASH_CHILD";
const CRASH_TEST: &str = "install_cut_short_by_a_crash_is_finished_at_next_open";
/// Bytes of padding per command: 96 commands make ~6 MiB, two install batches of ~4 MiB.
const PAD: usize = 64 * 1024;

fn read_meta(path: &Path) -> SnapshotMeta {
    let raw = ironhub_storage::read_snapshot_meta(path).expect("snapshot header");
    codec::decode(&raw, "snapshot meta").expect("decode snapshot meta")
}

/// The child's half: install the received file and crash after the first batch of records.
async fn crash_child(root: &Path) {
    let engine = Arc::new(AbortAfter {
        inner: RocksEngine::open(&root.join("db")).expect("open rocksdb"),
        // The INSTALLING marker, then one batch of records.
        writes_left: AtomicUsize::new(2),
    });
    let mut sm = open_sm(G, engine, Arc::new(Counters::default()), root);
    let path = root.join("incoming.snap");
    let meta = read_meta(&path);
    let size = std::fs::metadata(&path).expect("incoming file").len();
    let _ = sm.install_snapshot(&meta, SnapshotFile { path, size }).await;
    // Reaching here means the crash point was never hit.
    std::process::exit(3);
}

fn applied_record(engine: &dyn KvEngine) -> Option<LogId> {
    let raw =
        engine.get(&keys::raft_key(G, RaftTag::Applied)).expect("read applied").expect("an applied record");
    codec::decode(&raw, "applied log id").expect("decode applied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_cut_short_by_a_crash_is_finished_at_next_open() {
    if let Some(root) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&root)).await;
        return;
    }
    // The leader's state: ~6 MiB over 96 commands in 8 entries, plus a membership.
    let mut a = Sm::with_app(Kind::Mem, G, Counters { pad: PAD, ..Counters::default() });
    let mut entries = vec![membership(1, 1, &[1, 2, 3])];
    for e in 0..8u64 {
        let cmds = (0..12).map(|c| with_id(&format!("k{e}-{c}"), 4, e * 12 + c, 1)).collect();
        entries.push(normal(1, 2 + e, cmds));
    }
    apply(&mut a.sm, entries).await;
    let snap = a.sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert_eq!(snap.meta.last_log_id, Some(lid(1, 9)));
    let a_data = group_data(a.engine.as_ref(), G);
    assert_eq!(a_data.len(), 96 * 3, "counter, padding and idempotency record per command");

    // The follower's own older state on RocksDB, and the file the transport received.
    let root = tempfile::tempdir().expect("tempdir");
    let (stale_data, stale_snapshot) = {
        let engine = open_engine(Kind::Rocks, root.path());
        let mut sm = open_sm(G, engine.clone(), Arc::new(Counters::default()), root.path());
        apply(&mut sm, vec![membership(1, 1, &[9]), normal(1, 2, vec![app("stale-1"), app("stale-2")])])
            .await;
        let old = sm.get_snapshot_builder().await.build_snapshot().await.expect("build on B");
        (group_data(engine.as_ref(), G), old.snapshot.path)
    };
    std::fs::copy(&snap.snapshot.path, root.path().join("incoming.snap")).expect("copy snapshot");

    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", CRASH_TEST, "--test-threads=1", "--nocapture"])
        .env(CRASH_CHILD_ENV, root.path())
        .output()
        .expect("run child");
    let status = out.status;
    assert!(
        !status.success(),
        "the child must crash mid-install: {status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(status.code(), Some(3), "the child finished the install without crashing");

    // The crash left the marker, part of the new data and the old applied record.
    let engine: Arc<dyn KvEngine> = open_engine(Kind::Rocks, root.path());
    let marked = ironhub_storage::interrupted_install(engine.as_ref(), G)
        .expect("read marker")
        .expect("the installing marker survives the crash");
    assert_eq!(marked, std::path::absolute(root.path().join("snapshots/installed-1-9.snap")).expect("path"));
    let partial = group_data(engine.as_ref(), G);
    assert_ne!(partial, a_data, "the crash must land mid-install");
    assert_ne!(partial, stale_data, "a first batch was written before the crash");
    assert_eq!(applied_record(engine.as_ref()), Some(lid(1, 2)));

    // Opening the state machine finishes the install.
    let app = Arc::new(Counters::default());
    let mut sm = open_sm(G, engine.clone(), app.clone(), root.path());
    assert_eq!(ironhub_storage::interrupted_install(engine.as_ref(), G).expect("marker"), None);
    assert_eq!(
        sm.applied_state().await.expect("applied"),
        (snap.meta.last_log_id, snap.meta.last_membership.clone())
    );
    assert_eq!(group_data(engine.as_ref(), G), a_data);
    assert_eq!(*app.restores.lock(), vec![(G, 96 * 2)]);
    let cur = sm.get_current_snapshot().await.expect("current").expect("the installed snapshot");
    assert_eq!(cur.meta, snap.meta);
    assert_eq!(cur.snapshot.path, marked);
    assert_eq!(cur.snapshot.size, snap.snapshot.size);
    // As after an install that was not interrupted, the replaced snapshot is gone.
    assert!(!stale_snapshot.exists(), "the follower's older snapshot must be deleted");
}

// ---------------------------------------------------------------------------------------------
// 6. System commands.

fn meta_record(engine: &dyn KvEngine, name: &[u8]) -> Option<Vec<u8>> {
    let mut k = vec![0u8];
    k.extend_from_slice(name);
    engine.get(&keys::data_key(META_GROUP, &k)).expect("read meta record")
}

fn plan(engine: &dyn KvEngine) -> Option<MembershipPlan> {
    meta_record(engine, b"plan").map(|v| codec::decode(&v, "plan").expect("decode plan"))
}

fn nodes(engine: &dyn KvEngine) -> Option<BTreeMap<NodeId, NodeAddr>> {
    meta_record(engine, b"nodes").map(|v| codec::decode(&v, "nodes").expect("decode nodes"))
}

fn node_map(ids: &[NodeId]) -> BTreeMap<NodeId, NodeAddr> {
    ids.iter().map(|id| (*id, NodeAddr { cluster: format!("10.0.0.{id}:7000") })).collect()
}

/// Decodes each system command response of one entry.
fn results(r: &BatchResponse) -> Vec<Result<(), String>> {
    r.responses.iter().map(|b| codec::decode(b, "system response").expect("decode system response")).collect()
}

async fn system_answers(
    sm: &GroupStateMachine,
    index: u64,
    cmds: Vec<SystemCommand>,
) -> Vec<Result<(), String>> {
    let got = answers(sm, vec![normal(1, index, cmds.into_iter().map(system).collect())]).await;
    assert_eq!(got.len(), 1);
    results(&got[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_group_runs_one_membership_plan_at_a_time() {
    for kind in KINDS {
        let s = Sm::new(kind, META_GROUP);
        let e = s.engine.as_ref();
        assert_eq!(
            system_answers(&s.sm, 1, vec![SystemCommand::SetNodes(node_map(&[1, 2, 3]))]).await,
            vec![Ok(())]
        );
        assert_eq!(nodes(e), Some(node_map(&[1, 2, 3])), "{kind:?}");
        assert_eq!(plan(e), None, "{kind:?}");

        // Starting clears whatever progress the proposer sent; adding a node publishes its address.
        let add = MembershipChange::AddNode { id: 4, addr: node_map(&[4])[&4].clone() };
        let mut p1 = MembershipPlan {
            id: 11,
            change: add.clone(),
            nodes_after: node_map(&[1, 2, 3, 4]),
            done: BTreeSet::from([0, 5]),
            finished: Some(None),
        };
        assert_eq!(
            system_answers(&s.sm, 2, vec![SystemCommand::StartPlan(p1.clone())]).await,
            vec![Ok(())],
            "{kind:?}"
        );
        p1.done.clear();
        p1.finished = None;
        assert_eq!(plan(e), Some(p1.clone()), "{kind:?}");
        assert_eq!(nodes(e), Some(node_map(&[1, 2, 3, 4])), "{kind:?}");

        // A second plan is refused while the first runs.
        let p2 = MembershipPlan {
            id: 12,
            change: MembershipChange::RemoveNode { id: 1 },
            nodes_after: node_map(&[2, 3, 4]),
            done: BTreeSet::new(),
            finished: None,
        };
        assert_eq!(
            system_answers(&s.sm, 3, vec![SystemCommand::StartPlan(p2.clone())]).await,
            vec![Err(format!("membership plan 11 ({add:?}) is still running"))],
            "{kind:?}"
        );
        assert_eq!(plan(e), Some(p1.clone()), "{kind:?}");

        // Progress of the running plan is recorded; of another plan it is refused.
        assert_eq!(
            system_answers(
                &s.sm,
                4,
                vec![
                    SystemCommand::PlanProgress { plan: 11, group: 0 },
                    SystemCommand::PlanProgress { plan: 11, group: 2 },
                    SystemCommand::PlanProgress { plan: 99, group: 1 },
                ]
            )
            .await,
            vec![Ok(()), Ok(()), Err("plan 99 is not running".into())],
            "{kind:?}"
        );
        p1.done = BTreeSet::from([0, 2]);
        assert_eq!(plan(e), Some(p1.clone()), "{kind:?}");

        // Finishing, then nothing more for that plan; the next plan may start.
        assert_eq!(
            system_answers(
                &s.sm,
                5,
                vec![
                    SystemCommand::FinishPlan { plan: 11, error: None },
                    SystemCommand::PlanProgress { plan: 11, group: 1 },
                    SystemCommand::FinishPlan { plan: 11, error: None },
                ]
            )
            .await,
            vec![Ok(()), Err("plan 11 is not running".into()), Err("plan 11 is not running".into())],
            "{kind:?}"
        );
        p1.finished = Some(None);
        assert_eq!(plan(e), Some(p1), "{kind:?}");
        assert_eq!(nodes(e), Some(node_map(&[1, 2, 3, 4])), "{kind:?}");

        assert_eq!(
            system_answers(&s.sm, 6, vec![SystemCommand::StartPlan(p2.clone())]).await,
            vec![Ok(())],
            "{kind:?}"
        );
        // Removing a node changes the node list only when the plan succeeds: here it is abandoned.
        assert_eq!(nodes(e), Some(node_map(&[1, 2, 3, 4])), "{kind:?}");
        assert_eq!(
            system_answers(
                &s.sm,
                7,
                vec![SystemCommand::FinishPlan { plan: 12, error: Some("gave up".into()) }]
            )
            .await,
            vec![Ok(())],
            "{kind:?}"
        );
        let mut p2_done = p2;
        p2_done.finished = Some(Some("gave up".into()));
        assert_eq!(plan(e), Some(p2_done), "{kind:?}");
        assert_eq!(nodes(e), Some(node_map(&[1, 2, 3, 4])), "{kind:?}");
        assert_eq!(s.sm.clone().applied_state().await.expect("applied").0, Some(lid(1, 7)), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_group_refuses_system_commands() {
    for kind in KINDS {
        // Group 0 and group 1 share one engine, as on a node.
        let meta = Sm::new(kind, META_GROUP);
        let part = open_sm(G, meta.engine.clone(), Arc::new(Counters::default()), meta.dir.path());
        system_answers(&meta.sm, 1, vec![SystemCommand::SetNodes(node_map(&[1, 2, 3]))]).await;
        let meta_before = group_data(meta.engine.as_ref(), META_GROUP);

        let refused = Err("system commands belong to the meta group".to_string());
        let start = MembershipPlan {
            id: 5,
            change: MembershipChange::RemoveNode { id: 3 },
            nodes_after: node_map(&[1, 2]),
            done: BTreeSet::new(),
            finished: None,
        };
        assert_eq!(
            system_answers(
                &part,
                1,
                vec![
                    SystemCommand::SetNodes(node_map(&[7])),
                    SystemCommand::StartPlan(start),
                    SystemCommand::FinishPlan { plan: 5, error: None },
                ]
            )
            .await,
            vec![refused.clone(), refused.clone(), refused],
            "{kind:?}"
        );
        assert_eq!(group_data(meta.engine.as_ref(), G), vec![], "{kind:?}");
        assert_eq!(group_data(meta.engine.as_ref(), META_GROUP), meta_before, "{kind:?}");
        assert_eq!(part.clone().applied_state().await.expect("applied").0, Some(lid(1, 1)));
    }
}
