//! The [`Apply`] trait the broker implements, and the transaction it applies through.

use std::collections::BTreeMap;

use bytes::Bytes;
use ironhub_storage::{keys, KvEngine, StorageError, WriteBatch};

use crate::types::GroupId;

/// A key and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// Prefix, inside a group's data space, of the application's keys (the raft layer keeps its
/// idempotency records under [`RAFT_DATA_PREFIX`]).
pub(crate) const APP_DATA_PREFIX: u8 = 0x01;
/// Prefix, inside a group's data space, of records the raft layer keeps (idempotency).
pub(crate) const RAFT_DATA_PREFIX: u8 = 0x00;

/// Where a command is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    /// The group whose log holds the command.
    pub group: GroupId,
    /// The raft log index of the entry holding the command.
    pub index: u64,
    /// Position of the command inside its entry's batch.
    pub slot: u32,
}

/// The replicated state machine of the layers above: applies one opaque command.
///
/// `apply` must be deterministic: the same state and command give the same writes and response on
/// every node. It runs on a blocking thread, never on a tokio worker. A command the application
/// rejects is a normal response (encode the rejection); an `Err` is a storage failure and stops the group.
pub trait Apply: Send + Sync + 'static {
    /// Applies `command`, reading and writing through `txn`, and returns the response bytes.
    fn apply(
        &self,
        ctx: &ApplyContext,
        command: &[u8],
        txn: &mut StateTxn<'_>,
    ) -> Result<Bytes, StorageError>;

    /// Called after the writes of applied commands are in the engine (once per applied batch of
    /// entries), so the application can wake readers of what those commands wrote.
    fn committed(&self, _group: GroupId) {}

    /// Called after the group's state was replaced by a snapshot, and once at start, so the
    /// application can rebuild in-memory indexes from `state`.
    fn restore(&self, _group: GroupId, _state: &StateView<'_>) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Read access to one group's application state as applied.
pub struct StateView<'a> {
    pub(crate) engine: &'a dyn KvEngine,
    pub(crate) group: GroupId,
}

impl StateView<'_> {
    /// Reads a raft-internal record.
    pub(crate) fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(key)
    }

    /// Reads one application key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(&app_key(self.group, key))
    }

    /// Application keys in `[start, end)` (keys without the group prefix), at most `limit`.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        let rows = self.engine.scan(&app_key(self.group, start), &app_key(self.group, end), limit)?;
        let cut = app_key(self.group, b"").len();
        Ok(rows.into_iter().map(|(k, v)| (k[cut..].to_vec(), v)).collect())
    }
}

/// The writes of one applied entry: reads see earlier writes of the same entry.
pub struct StateTxn<'a> {
    view: StateView<'a>,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    raw_overlay: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) batch: WriteBatch,
}

impl<'a> StateTxn<'a> {
    pub(crate) fn new(engine: &'a dyn KvEngine, group: GroupId) -> Self {
        Self {
            view: StateView { engine, group },
            overlay: BTreeMap::new(),
            raw_overlay: BTreeMap::new(),
            batch: WriteBatch::default(),
        }
    }

    /// Reads one application key, seeing this transaction's own writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(key),
        }
    }

    /// Application keys in `[start, end)`, at most `limit`, seeing this transaction's own writes.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = self.view.scan(start, end, limit)?.into_iter().collect();
        for (k, v) in self.overlay.range(start.to_vec()..end.to_vec()) {
            match v {
                Some(v) => rows.insert(k.clone(), v.clone()),
                None => rows.remove(k),
            };
        }
        Ok(rows.into_iter().take(limit).collect())
    }

    /// Writes one application key.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(app_key(self.view.group, key), value.to_vec());
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
    }

    /// Deletes one application key.
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete(app_key(self.view.group, key));
        self.overlay.insert(key.to_vec(), None);
    }

    /// The group being applied.
    pub fn group(&self) -> GroupId {
        self.view.group
    }

    /// Reads a raft-internal record (sees this transaction's own raw writes).
    pub(crate) fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.raw_overlay.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None => self.view.engine.get(key),
        }
    }

    /// Writes a raft-internal record.
    pub(crate) fn raw_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.raw_overlay.insert(key.clone(), value.clone());
        self.batch.put(key, value);
    }
}

/// The engine key of an application key of `group`.
pub(crate) fn app_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(APP_DATA_PREFIX);
    k.extend_from_slice(key);
    keys::data_key(group, &k)
}

/// The engine key of a raft-internal data record of `group`.
pub(crate) fn raft_data_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(RAFT_DATA_PREFIX);
    k.extend_from_slice(key);
    keys::data_key(group, &k)
}

/// Helpers for unit tests of [`Apply`] implementations in other crates.
impl<'a> StateTxn<'a> {
    /// A transaction over `engine` for `group`, outside any raft group (tests only).
    #[doc(hidden)]
    pub fn for_test(engine: &'a dyn KvEngine, group: GroupId) -> Self {
        Self::new(engine, group)
    }

    /// Writes the transaction's batch (tests only).
    #[doc(hidden)]
    pub fn commit_for_test(self) -> Result<(), StorageError> {
        self.view.engine.write(&self.batch, false)
    }

    /// True if the transaction wrote nothing (tests only).
    #[doc(hidden)]
    pub fn is_empty_for_test(&self) -> bool {
        self.batch.is_empty()
    }
}

impl<'a> StateView<'a> {
    /// A view of `group` in `engine` (tests only).
    #[doc(hidden)]
    pub fn for_test(engine: &'a dyn KvEngine, group: GroupId) -> Self {
        Self { engine, group }
    }
}
