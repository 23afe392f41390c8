//! The openraft state machine of one group: the shared engine plus the broker's [`Apply`].
//!
//! Applied state lives in the node's one KV engine under the group's prefix. Each raft entry's
//! writes, its applied log id and (for membership entries) the membership go in one atomic write
//! batch, so a crash never leaves a half-applied entry. Applying and snapshotting run on blocking
//! threads; a per-group lock keeps a snapshot's data and its applied log id consistent.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use ironhub_storage::snapshot::{self, SnapshotFile};
use ironhub_storage::{codec, keys, KvEngine, StorageError, WriteBatch};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::apply::{raft_data_key, Apply, ApplyContext, DecodedCache, StateCacheLimits, StateTxn, StateView};
use crate::membership;
use crate::metrics::RaftMetrics;
use crate::types::{
    BatchResponse, Body, GroupId, LogId, ProposalId, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The snapshot record kept in the engine: what `get_current_snapshot` returns after a restart.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    path: String,
    size: u64,
}

/// The last applied proposal of one (origin, incarnation), for idempotent retries.
#[derive(Serialize, Deserialize)]
struct AppliedProposal {
    seq: u64,
    response: Bytes,
}

struct Shared {
    group: GroupId,
    engine: Arc<dyn KvEngine>,
    app: Arc<dyn Apply>,
    dir: PathBuf,
    /// Held while applying and while building or installing a snapshot.
    lock: Mutex<()>,
    metrics: RaftMetrics,
    /// The snapshot file the current one replaced, kept until the next replacement: a transfer to a
    /// follower that started with it can still read it.
    retired: Mutex<Option<PathBuf>>,
    /// Decoded values of the group's state, for apply.
    cache: DecodedCache,
}

/// The state machine of one raft group (cheap to clone: all clones share one state).
#[derive(Clone)]
pub struct GroupStateMachine {
    shared: Arc<Shared>,
}

fn to_io(e: StorageError) -> io::Error {
    io::Error::other(e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, io::Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(to_io),
        Err(e) => Err(io::Error::other(format!("state machine task failed: {e}"))),
    }
}

impl GroupStateMachine {
    /// Opens the state machine of `group`, finishing a snapshot install a crash interrupted,
    /// and lets the application rebuild its indexes.
    pub fn open(
        group: GroupId,
        engine: Arc<dyn KvEngine>,
        app: Arc<dyn Apply>,
        snapshot_dir: PathBuf,
        metrics: RaftMetrics,
        cache: &StateCacheLimits,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir).map_err(|e| StorageError::Io {
            what: format!("create {}", snapshot_dir.display()),
            source: e,
        })?;
        let sm = Self {
            shared: Arc::new(Shared {
                group,
                engine,
                app,
                dir: snapshot_dir,
                lock: Mutex::new(()),
                metrics,
                retired: Mutex::new(None),
                cache: DecodedCache::new(cache),
            }),
        };
        if let Some(path) = snapshot::interrupted_install(sm.shared.engine.as_ref(), group)? {
            tracing::warn!(group, path = %path.display(), "finishing a snapshot install interrupted by a crash");
            let meta: SnapshotMeta = codec::decode(&snapshot::read_snapshot_meta(&path)?, "snapshot meta")?;
            let previous = sm.current()?;
            sm.install_file(&meta, &path)?;
            // As an install that was not interrupted does, drop the snapshot this one replaced
            // (at once: no transfer can be reading it while the node opens).
            sm.remove_old(previous, &path, false);
        }
        if let Some(current) = sm.current()? {
            // The size policy (`log_size`) waits for as much log as the last snapshot had.
            sm.shared.metrics.set_snapshot_bytes(group, current.size);
        }
        let view = StateView { engine: sm.shared.engine.as_ref(), group };
        sm.shared.app.restore(group, &view)?;
        Ok(sm)
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let e = self.shared.engine.as_ref();
        let g = self.shared.group;
        let applied = match e.get(&keys::raft_key(g, keys::RaftTag::Applied))? {
            Some(v) => codec::decode(&v, "applied log id")?,
            None => None,
        };
        let membership = match e.get(&keys::raft_key(g, keys::RaftTag::Membership))? {
            Some(v) => codec::decode(&v, "applied membership")?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Applies entries in order; returns one response per entry.
    fn apply_entries(
        &self,
        entries: &[openraft::alias::EntryOf<TypeConfig>],
    ) -> Result<Vec<BatchResponse>, StorageError> {
        let s = &self.shared;
        let _guard = s.lock.lock();
        let started = Instant::now();
        let mut txn = StateTxn::with_cache(s.engine.as_ref(), s.group, &s.cache);
        let mut out = Vec::with_capacity(entries.len());
        let mut commands = 0u64;
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            let resp = match &entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => {
                    let mut responses = Vec::with_capacity(batch.commands.len());
                    for (slot, p) in batch.commands.iter().enumerate() {
                        let ctx = ApplyContext { group: s.group, index, slot: slot as u32 };
                        let r = match &p.body {
                            Body::App(command) => self.apply_one(&ctx, p.id, command, &mut txn)?,
                            Body::System(cmd) => membership::apply_system(s.group, cmd, &mut txn)?,
                        };
                        responses.push(r);
                    }
                    commands += batch.commands.len() as u64;
                    BatchResponse { responses }
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                    txn.batch.put(keys::raft_key(s.group, keys::RaftTag::Membership), codec::encode(&sm)?);
                    BatchResponse::default()
                }
            };
            last = Some(entry.log_id);
            out.push(resp);
        }
        if let Some(last) = last {
            txn.batch.put(keys::raft_key(s.group, keys::RaftTag::Applied), codec::encode(&Some(last))?);
        }
        txn.finish()?;
        s.engine.write(&txn.batch, false)?;
        txn.publish_decoded();
        s.metrics.observe_state_cache(txn.cache_hits, txn.cache_misses);
        s.app.committed(s.group);
        s.metrics.observe_apply(s.group, entries.len() as u64, commands, started.elapsed());
        Ok(out)
    }

    /// Applies `entries` exactly as [`RaftStateMachine::apply`] does and returns the response each
    /// entry's responder would get (tests only: openraft's `ApplyResponder` cannot be built
    /// outside openraft). Blocks: call it from a blocking context or a test.
    #[doc(hidden)]
    pub fn apply_for_test(
        &self,
        entries: &[openraft::alias::EntryOf<TypeConfig>],
    ) -> Result<Vec<BatchResponse>, StorageError> {
        self.apply_entries(entries)
    }

    fn apply_one(
        &self,
        ctx: &ApplyContext,
        id: Option<ProposalId>,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError> {
        let Some(id) = id else {
            return self.shared.app.apply(ctx, command, txn);
        };
        let mut k = Vec::with_capacity(17);
        k.push(b'd');
        k.extend_from_slice(&id.origin.to_be_bytes());
        k.extend_from_slice(&id.incarnation.to_be_bytes());
        let key = raft_data_key(ctx.group, &k);
        if let Some(raw) = txn.raw_get(&key)? {
            let prev: AppliedProposal = codec::decode(&raw, "applied proposal record")?;
            if id.seq == prev.seq {
                return Ok(prev.response);
            }
            if id.seq < prev.seq {
                // An older retry overtaken by a newer command of the same incarnation: already applied.
                return Ok(Bytes::new());
            }
        }
        let response = self.shared.app.apply(ctx, command, txn)?;
        let rec = AppliedProposal { seq: id.seq, response: response.clone() };
        txn.raw_put(key, codec::encode(&rec)?);
        Ok(response)
    }

    fn current(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        match self.shared.engine.get(&keys::raft_key(self.shared.group, keys::RaftTag::SnapshotMeta))? {
            Some(v) => Ok(Some(codec::decode(&v, "current snapshot record")?)),
            None => Ok(None),
        }
    }

    fn build(&self) -> Result<(SnapshotMeta, SnapshotFile), StorageError> {
        let s = &self.shared;
        let started = Instant::now();
        // The data and its applied log id / membership come from one point-in-time view (apply
        // writes them in one batch), so apply goes on while the file is written.
        let mut meta = None;
        let file = snapshot::build_snapshot_consistent(s.engine.as_ref(), s.group, &s.dir, &mut |records| {
            let last_log_id: Option<LogId> = match records.get(keys::RaftTag::Applied) {
                Some(v) => codec::decode(v, "applied log id")?,
                None => None,
            };
            let last_membership: StoredMembership = match records.get(keys::RaftTag::Membership) {
                Some(v) => codec::decode(v, "applied membership")?,
                None => StoredMembership::default(),
            };
            let m = SnapshotMeta { last_log_id, last_membership };
            let bytes = codec::encode(&m)?;
            meta = Some(m);
            Ok(bytes)
        })?;
        let meta = meta.ok_or_else(|| StorageError::corrupt("snapshot build", "no metadata was produced"))?;
        // Everything in the view is in the WAL before this point: make it durable before the
        // snapshot lets the log behind it be purged.
        s.engine.flush_wal(true)?;
        let rec =
            CurrentSnapshot { meta: meta.clone(), path: file.path.display().to_string(), size: file.size };
        let mut b = WriteBatch::default();
        b.put(keys::raft_key(s.group, keys::RaftTag::SnapshotMeta), codec::encode(&rec)?);
        // An install may have replaced the state meanwhile: never let an older snapshot win.
        let _guard = s.lock.lock();
        let previous = self.current()?;
        if let Some(prev) = previous.as_ref().filter(|p| p.meta.last_log_id >= meta.last_log_id) {
            let _ = std::fs::remove_file(&file.path);
            let path = PathBuf::from(&prev.path);
            return Ok((prev.meta.clone(), SnapshotFile { path, size: prev.size }));
        }
        s.engine.write(&b, true)?;
        self.remove_old(previous, &file.path, true);
        s.metrics.observe_snapshot(s.group, "built", file.size, started.elapsed());
        tracing::info!(group = s.group, last = ?meta.last_log_id, bytes = file.size, "snapshot built");
        Ok((meta, file))
    }

    /// Retires the snapshot file a newer one replaced, deleting the one retired before it (never the
    /// one just made current); `retire: false` deletes it at once. One replaced generation stays on
    /// disk so that a snapshot transfer that began with it does not lose its file mid-way.
    fn remove_old(&self, previous: Option<CurrentSnapshot>, current: &std::path::Path, retire: bool) {
        let Some(prev) = previous else { return };
        let same = |a: &std::path::Path| std::path::absolute(a).ok() == std::path::absolute(current).ok();
        let p = PathBuf::from(prev.path);
        // The install marker holds an absolute path, the record maybe a relative one.
        if same(&p) {
            return;
        }
        let old = if retire { self.shared.retired.lock().replace(p) } else { Some(p) };
        if let Some(old) = old {
            if !same(&old) {
                if let Err(e) = std::fs::remove_file(&old) {
                    tracing::debug!(path = %old.display(), "old snapshot not removed: {e}");
                }
            }
        }
    }

    fn install_file(&self, meta: &SnapshotMeta, path: &std::path::Path) -> Result<(), StorageError> {
        let s = &self.shared;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let rec = CurrentSnapshot { meta: meta.clone(), path: path.display().to_string(), size };
        let mut finish = WriteBatch::default();
        finish.put(keys::raft_key(s.group, keys::RaftTag::Applied), codec::encode(&meta.last_log_id)?);
        finish.put(keys::raft_key(s.group, keys::RaftTag::Membership), codec::encode(&meta.last_membership)?);
        finish.put(keys::raft_key(s.group, keys::RaftTag::SnapshotMeta), codec::encode(&rec)?);
        snapshot::install_snapshot(s.engine.as_ref(), s.group, path, finish)
    }

    fn install(&self, meta: &SnapshotMeta, file: SnapshotFile) -> Result<(), StorageError> {
        let s = &self.shared;
        let _guard = s.lock.lock();
        let started = Instant::now();
        // Keep the received file beside our own snapshots: it becomes the current snapshot.
        let name = format!("installed-{}-{}.snap", s.group, meta.last_log_id.map(|l| l.index).unwrap_or(0));
        let target = s.dir.join(name);
        if file.path != target {
            std::fs::rename(&file.path, &target).map_err(|e| StorageError::Io {
                what: format!("move snapshot to {}", target.display()),
                source: e,
            })?;
        }
        let previous = self.current()?;
        // Whatever happens to the install, the state it replaces is not the cache's any more.
        s.cache.clear();
        self.install_file(meta, &target)?;
        self.remove_old(previous, &target, true);
        let view = StateView { engine: s.engine.as_ref(), group: s.group };
        s.app.restore(s.group, &view)?;
        s.metrics.observe_snapshot(s.group, "installed", file.size, started.elapsed());
        tracing::info!(group = s.group, last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let this = self.clone();
        let (meta, file) = blocking(move || this.build()).await?;
        Ok(openraft::Snapshot { meta, snapshot: file })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let this = self.clone();
        blocking(move || this.read_applied()).await
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let items: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let (entries, responders): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        let this = self.clone();
        let responses = blocking(move || this.apply_entries(&entries)).await?;
        for (responder, resp) in responders.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        blocking(move || this.install(&meta, snapshot)).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let this = self.clone();
        // Under the lock, so a build or install that replaces the snapshot cannot retire the file
        // between reading the record and checking the file.
        let cur = blocking(move || {
            let _guard = this.shared.lock.lock();
            Ok(this.current()?.filter(|c| std::path::Path::new(&c.path).exists()))
        })
        .await?;
        // A snapshot file that vanished (removed by hand) is as if no snapshot existed: openraft
        // then builds a new one.
        Ok(cur.map(|c| {
            let path = PathBuf::from(c.path);
            openraft::Snapshot { meta: c.meta, snapshot: SnapshotFile { path, size: c.size } }
        }))
    }
}
