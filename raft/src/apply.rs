//! The [`Apply`] trait the broker implements, and the transaction it applies through.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use ironhub_storage::{codec, keys, KvEngine, StorageError, WriteBatch};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// How many decoded values of each group's state apply keeps in memory (the `[state_cache]`
/// section of the configuration file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateCacheLimits {
    /// Values kept per group (default 20,000; 0 turns the cache off).
    pub entries: usize,
    /// Encoded bytes of the values kept per group (default 16 MiB; a larger value is not kept).
    pub bytes: usize,
}

impl Default for StateCacheLimits {
    fn default() -> Self {
        Self { entries: 20_000, bytes: 16 << 20 }
    }
}

/// A decoded value as cached.
type Decoded = Arc<dyn Any + Send + Sync>;

/// A decoded value with its encoded size.
type Kept = (Decoded, usize);

/// The cached values of a group, with their encoded sizes and the sum of those.
#[derive(Default)]
struct Values {
    map: HashMap<Vec<u8>, Kept>,
    bytes: usize,
}

impl Values {
    fn remove(&mut self, key: &[u8]) {
        if let Some((_, size)) = self.map.remove(key) {
            self.bytes -= size;
        }
    }

    /// Keeps `value` (`size` bytes encoded) under `limits`, dropping other values to make room
    /// (any ones: they are read from the engine again when needed).
    fn insert(&mut self, limits: &StateCacheLimits, key: Vec<u8>, value: Decoded, size: usize) {
        self.remove(&key);
        if limits.entries == 0 || size > limits.bytes {
            return;
        }
        while self.map.len() >= limits.entries || self.bytes + size > limits.bytes {
            let Some(old) = self.map.keys().next().cloned() else { break };
            self.remove(&old);
        }
        self.bytes += size;
        self.map.insert(key, (value, size));
    }
}

/// Values of one group's state that apply read with [`StateTxn::get_decoded`] or wrote with
/// [`StateTxn::put_encoded`], decoded, as stored: a value a transaction writes enters only once its
/// batch is written ([`StateTxn::publish_decoded`]); a batch that fails adds none of its writes
/// (values it read from the engine may stay: they are what the engine holds). Apply of a group is
/// serial (the state machine's lock), and so is every change of the cache; an install of a
/// snapshot clears it. Bounded in entries and in encoded bytes ([`StateCacheLimits`]).
pub struct DecodedCache {
    values: Mutex<Values>,
    limits: StateCacheLimits,
}

impl DecodedCache {
    /// An empty cache.
    pub fn new(limits: &StateCacheLimits) -> Self {
        Self { values: Mutex::new(Values::default()), limits: limits.clone() }
    }

    fn get(&self, key: &[u8]) -> Option<Decoded> {
        self.values.lock().map.get(key).map(|(v, _)| v.clone())
    }

    /// Forgets every value (the group's state was replaced).
    pub(crate) fn clear(&self) {
        *self.values.lock() = Values::default();
    }
}

/// One application key's write in a transaction (the last one wins: a key written several times
/// by one applied batch is written to the engine once).
enum Write {
    Put(Vec<u8>),
    Delete,
    /// Written with [`StateTxn::put_encoded`]: kept decoded, encoded when the batch is written.
    Value(Decoded, Encode),
}

/// Encodes a value kept as [`Decoded`] (the `T` it was written as).
type Encode = fn(&(dyn Any + Send + Sync)) -> Result<Vec<u8>, StorageError>;

fn encode_as<T: Serialize + 'static>(value: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, StorageError> {
    match value.downcast_ref::<T>() {
        Some(v) => codec::encode(v),
        None => Err(StorageError::corrupt("decoded value", "not of the type it was written as")),
    }
}

impl Write {
    fn bytes(&self) -> Result<Option<Vec<u8>>, StorageError> {
        match self {
            Write::Put(v) => Ok(Some(v.clone())),
            Write::Delete => Ok(None),
            Write::Value(v, encode) => encode(v.as_ref()).map(Some),
        }
    }
}

/// The writes of one applied batch of entries: reads see earlier writes of the same batch.
pub struct StateTxn<'a> {
    view: StateView<'a>,
    overlay: BTreeMap<Vec<u8>, Write>,
    raw_overlay: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(crate) batch: WriteBatch,
    cache: Option<&'a DecodedCache>,
    /// After [`StateTxn::finish`]: each key written, with its value and encoded size if written
    /// decoded.
    written: Vec<(Vec<u8>, Option<Kept>)>,
    /// Reads served from memory, and reads that decoded a stored value.
    pub(crate) cache_hits: u64,
    pub(crate) cache_misses: u64,
}

impl<'a> StateTxn<'a> {
    pub(crate) fn new(engine: &'a dyn KvEngine, group: GroupId) -> Self {
        Self {
            view: StateView { engine, group },
            overlay: BTreeMap::new(),
            raw_overlay: BTreeMap::new(),
            batch: WriteBatch::default(),
            cache: None,
            written: Vec::new(),
            cache_hits: 0,
            cache_misses: 0,
        }
    }

    /// A transaction that reads decoded values through `cache` (see [`DecodedCache`]).
    pub(crate) fn with_cache(engine: &'a dyn KvEngine, group: GroupId, cache: &'a DecodedCache) -> Self {
        Self { cache: Some(cache), ..Self::new(engine, group) }
    }

    /// Reads and decodes one application key (`what` names it in errors), seeing this
    /// transaction's own writes. A value decoded before — read or written by an earlier batch of
    /// this group's apply — comes from memory, not from the engine. Apply stays deterministic only
    /// if `T` survives an encode/decode round trip unchanged (no `#[serde(skip)]`, no lossy
    /// fields): a node that just started decodes what another node has in memory.
    pub fn get_decoded<T>(&mut self, key: &[u8], what: &str) -> Result<Option<T>, StorageError>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let written = self.overlay.get(key);
        if let Some(Write::Value(v, _)) = written {
            if let Some(v) = v.downcast_ref::<T>() {
                self.cache_hits += 1;
                return Ok(Some(v.clone()));
            }
        }
        let untouched = written.is_none();
        if untouched {
            if let Some(v) = self.cache.and_then(|c| c.get(key)) {
                if let Some(v) = v.downcast_ref::<T>() {
                    self.cache_hits += 1;
                    return Ok(Some(v.clone()));
                }
            }
        }
        self.cache_misses += 1;
        let Some(raw) = self.get(key)? else { return Ok(None) };
        let value: T = codec::decode(&raw, what)?;
        if let (true, Some(cache)) = (untouched, self.cache) {
            // As stored (no write of this transaction touched it): valid for later batches too.
            cache.values.lock().insert(&cache.limits, key.to_vec(), Arc::new(value.clone()), raw.len());
        }
        Ok(Some(value))
    }

    /// Writes one application key, kept decoded for later reads; it is encoded once, when the
    /// batch is written, however often the batch writes it (so a value too large to encode fails
    /// the batch then, not this call).
    pub fn put_encoded<T>(&mut self, key: &[u8], value: T) -> Result<(), StorageError>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.overlay.insert(key.to_vec(), Write::Value(Arc::new(value), encode_as::<T>));
        Ok(())
    }

    /// Moves the application writes into the write batch, encoding the values written decoded
    /// (the last write of each key only). Called once, before the batch is written.
    pub(crate) fn finish(&mut self) -> Result<(), StorageError> {
        let group = self.view.group;
        for (key, write) in std::mem::take(&mut self.overlay) {
            let decoded = match write {
                Write::Put(v) => {
                    self.batch.put(app_key(group, &key), v);
                    None
                }
                Write::Delete => {
                    self.batch.delete(app_key(group, &key));
                    None
                }
                Write::Value(v, encode) => {
                    let bytes = encode(v.as_ref())?;
                    let size = bytes.len();
                    self.batch.put(app_key(group, &key), bytes);
                    Some((v, size))
                }
            };
            self.written.push((key, decoded));
        }
        Ok(())
    }

    /// After this transaction's batch was written: the values it wrote decoded replace those
    /// cached, and keys it wrote or deleted otherwise leave the cache.
    pub(crate) fn publish_decoded(&mut self) {
        let Some(cache) = self.cache else { return };
        let mut values = cache.values.lock();
        for (key, decoded) in std::mem::take(&mut self.written) {
            match decoded {
                Some((v, size)) => values.insert(&cache.limits, key, v, size),
                None => values.remove(&key),
            }
        }
    }

    /// Reads one application key, seeing this transaction's own writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.overlay.get(key) {
            Some(w) => w.bytes(),
            None => self.view.get(key),
        }
    }

    /// Application keys in `[start, end)`, at most `limit`, seeing this transaction's own writes.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = self.view.scan(start, end, limit)?.into_iter().collect();
        for (k, w) in self.overlay.range(start.to_vec()..end.to_vec()) {
            match w.bytes()? {
                Some(v) => rows.insert(k.clone(), v),
                None => rows.remove(k),
            };
        }
        Ok(rows.into_iter().take(limit).collect())
    }

    /// Writes one application key.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.overlay.insert(key.to_vec(), Write::Put(value.to_vec()));
    }

    /// Deletes one application key.
    pub fn delete(&mut self, key: &[u8]) {
        self.overlay.insert(key.to_vec(), Write::Delete);
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

    /// A transaction over `engine` for `group` reading decoded values through `cache`, as apply's
    /// are (tests only).
    #[doc(hidden)]
    pub fn for_test_cached(engine: &'a dyn KvEngine, group: GroupId, cache: &'a DecodedCache) -> Self {
        Self::with_cache(engine, group, cache)
    }

    /// Writes the transaction's batch, then lets its decoded values into the cache (tests only).
    #[doc(hidden)]
    pub fn commit_for_test(mut self) -> Result<(), StorageError> {
        self.finish()?;
        self.view.engine.write(&self.batch, false)?;
        self.publish_decoded();
        Ok(())
    }

    /// True if the transaction wrote nothing (tests only).
    #[doc(hidden)]
    pub fn is_empty_for_test(&self) -> bool {
        self.batch.is_empty() && self.overlay.is_empty()
    }
}

impl<'a> StateView<'a> {
    /// A view of `group` in `engine` (tests only).
    #[doc(hidden)]
    pub fn for_test(engine: &'a dyn KvEngine, group: GroupId) -> Self {
        Self { engine, group }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironhub_storage::MemEngine;

    /// Writes `values` (key, u64) through a cached transaction and commits it.
    fn write(engine: &MemEngine, cache: &DecodedCache, values: &[(&str, u64)]) {
        let mut txn = StateTxn::for_test_cached(engine, 1, cache);
        for (k, v) in values {
            txn.put_encoded(k.as_bytes(), *v).expect("put");
        }
        txn.commit_for_test().expect("commit");
    }

    #[test]
    fn the_cache_keeps_within_its_entries_and_bytes() {
        let engine = MemEngine::new();
        // A u64 encodes as 2 bytes here (version byte + one varint byte below 251).
        let cache = DecodedCache::new(&StateCacheLimits { entries: 3, bytes: 100 });
        write(&engine, &cache, &[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        assert_eq!(cache.values.lock().map.len(), 3, "at most 3 entries");
        let cache = DecodedCache::new(&StateCacheLimits { entries: 100, bytes: 5 });
        write(&engine, &cache, &[("a", 1), ("b", 2), ("c", 3)]);
        let v = cache.values.lock();
        assert_eq!((v.map.len(), v.bytes), (2, 4), "at most 5 bytes: two 2-byte values");
        drop(v);
        // A value larger than the whole budget is not kept; every value still reads right.
        let cache = DecodedCache::new(&StateCacheLimits { entries: 100, bytes: 1 });
        write(&engine, &cache, &[("a", 7)]);
        assert!(cache.values.lock().map.is_empty());
        let mut txn = StateTxn::for_test_cached(&engine, 1, &cache);
        assert_eq!(txn.get_decoded::<u64>(b"a", "a").expect("get"), Some(7));
        assert_eq!(txn.get_decoded::<u64>(b"d", "d").expect("get"), Some(4));
        assert_eq!(txn.get_decoded::<u64>(b"zz", "zz").expect("get"), None);
    }

    #[test]
    fn a_deleted_or_rewritten_key_leaves_the_cache_with_its_bytes() {
        let engine = MemEngine::new();
        let cache = DecodedCache::new(&StateCacheLimits::default());
        write(&engine, &cache, &[("a", 1), ("b", 2)]);
        let mut txn = StateTxn::for_test_cached(&engine, 1, &cache);
        txn.delete(b"a");
        txn.put(b"b", &codec::encode(&9u64).expect("encode"));
        txn.commit_for_test().expect("commit");
        let v = cache.values.lock();
        assert_eq!((v.map.len(), v.bytes), (0, 0));
        drop(v);
        let mut txn = StateTxn::for_test_cached(&engine, 1, &cache);
        assert_eq!(txn.get_decoded::<u64>(b"a", "a").expect("get"), None);
        assert_eq!(txn.get_decoded::<u64>(b"b", "b").expect("get"), Some(9));
    }
}
