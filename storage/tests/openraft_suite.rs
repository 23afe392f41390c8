//! openraft's own storage test suite against [`LogStore`], on RocksDB and on the memory engine.
//!
//! The suite needs a state machine too: [`TestSm`] applies nothing but tracks the last applied
//! log id and membership, and snapshots the group's data range through `build_snapshot` /
//! `install_snapshot`, with the openraft snapshot metadata as the file's header metadata.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use ironhub_storage::codec;
use ironhub_storage::keys;
use ironhub_storage::keys::GroupId;
use ironhub_storage::keys::RaftTag;
use ironhub_storage::Flusher;
use ironhub_storage::KvEngine;
use ironhub_storage::LogStore;
use ironhub_storage::MemEngine;
use ironhub_storage::RocksEngine;
use ironhub_storage::SnapshotFile;
use ironhub_storage::WriteBatch;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::StoredMembershipOf;
use openraft::type_config::TypeConfigExt;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StorageError;
use parking_lot::Mutex;
use tempfile::TempDir;

openraft::declare_raft_types!(
    /// The suite's type config: string commands and responses.
    pub TypeConfig:
        D = String,
        R = String,
);

type C = TypeConfig;

const GROUP: GroupId = 3;

#[derive(Default)]
struct SmState {
    applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    current: Option<SnapshotFile>,
}

/// A minimal state machine over a group's data range.
#[derive(Clone)]
struct TestSm {
    engine: Arc<dyn KvEngine>,
    dir: PathBuf,
    state: Arc<Mutex<SmState>>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl TestSm {
    fn new(engine: Arc<dyn KvEngine>, dir: PathBuf) -> Self {
        Self { engine, dir, state: Arc::new(Mutex::new(SmState::default())) }
    }

    fn meta(&self) -> SnapshotMetaOf<C> {
        let st = self.state.lock();
        SnapshotMetaOf::<C> { last_log_id: st.applied, last_membership: st.membership.clone() }
    }
}

impl RaftSnapshotBuilder<C> for TestSm {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotFile>, io::Error> {
        let meta = self.meta();
        let meta_bytes = codec::encode(&meta)?;
        let (engine, dir) = (self.engine.clone(), self.dir.clone());
        let file = tokio::task::spawn_blocking(move || {
            ironhub_storage::build_snapshot(&*engine, GROUP, &dir, &meta_bytes)
        })
        .await
        .map_err(other)??;
        self.state.lock().current = Some(file.clone());
        Ok(SnapshotOf::<C, SnapshotFile> { meta, snapshot: file })
    }
}

impl RaftStateMachine<C> for TestSm {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let st = self.state.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            {
                let mut st = self.state.lock();
                if let Some(m) = entry.get_membership() {
                    st.membership = StoredMembershipOf::<C>::new(Some(log_id), m);
                }
                st.applied = Some(log_id);
            }
            if let Some(responder) = responder {
                responder.send(String::new());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let mut finish = WriteBatch::new();
        finish
            .put(keys::raft_key(GROUP, RaftTag::Applied), codec::encode(&meta.last_log_id)?)
            .put(keys::raft_key(GROUP, RaftTag::Membership), codec::encode(&meta.last_membership)?);
        let engine = self.engine.clone();
        let path = snapshot.path.clone();
        tokio::task::spawn_blocking(move || {
            ironhub_storage::install_snapshot(&*engine, GROUP, &path, finish)
        })
        .await
        .map_err(other)??;
        let mut st = self.state.lock();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.current = Some(snapshot);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotFile>>, io::Error> {
        let Some(file) = self.state.lock().current.clone() else {
            return Ok(None);
        };
        // The metadata comes back from the file's header, proving it round-trips.
        let bytes = ironhub_storage::read_snapshot_meta(&file.path)?;
        let meta: SnapshotMetaOf<C> = codec::decode(&bytes, "snapshot metadata")?;
        Ok(Some(SnapshotOf::<C, SnapshotFile> { meta, snapshot: file }))
    }
}

/// Which engine the suite runs on.
#[derive(Clone, Copy)]
enum Engine {
    Rocks,
    Mem,
}

struct Builder(Engine);

fn sto_err(e: impl std::error::Error + 'static) -> StorageError<C> {
    StorageError::read(C::err_from_error(&e))
}

impl StoreBuilder<C, LogStore<C>, TestSm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<C>, TestSm), StorageError<C>> {
        let dir = TempDir::new().map_err(sto_err)?;
        let engine: Arc<dyn KvEngine> = match self.0 {
            Engine::Rocks => Arc::new(RocksEngine::open(&dir.path().join("db")).map_err(sto_err)?),
            Engine::Mem => Arc::new(MemEngine::new()),
        };
        let flusher = Flusher::start(engine.clone()).map_err(sto_err)?;
        let store = LogStore::<C>::open(engine.clone(), flusher, GROUP).map_err(sto_err)?;
        let sm = TestSm::new(engine, dir.path().join("snapshots"));
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_rocksdb() {
    Suite::test_all(Builder(Engine::Rocks)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_memory_engine() {
    Suite::test_all(Builder(Engine::Mem)).await.unwrap();
}
