//! The openraft log store of one raft group, over the shared engine and the node's [`Flusher`].
//!
//! Entries go into an in-memory cache first (so they are readable the moment `append` returns),
//! then to the flusher thread, which writes and fsyncs them together with every other group's
//! and only then fires openraft's `IOFlushed` callback. Readers serve from the cache and fall back
//! to the engine on a blocking-pool thread.
//!
//! The cache holds the contiguous tail `[cache_lo, next)` of the log. Everything below `cache_lo`
//! is already in the engine, so a read is "engine part ++ cache part". Truncate and purge bump
//! an epoch; a read whose engine part raced with one of them is retried.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::OptionalSend;
use openraft::RaftTypeConfig;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::engine::KvEngine;
use crate::engine::WriteBatch;
use crate::error::StorageError;
use crate::flusher::Completion;
use crate::flusher::Flusher;
use crate::flusher::Job;
use crate::keys;
use crate::keys::GroupId;
use crate::keys::RaftTag;

/// Default number of entries kept in a group's cache (entries not yet written are never evicted).
pub const DEFAULT_CACHE_ENTRIES: usize = 8192;

/// Default bytes (encoded) of written entries kept in a group's cache. Entries are batches of up
/// to 64 KiB, so the entry count alone let each group's cache grow to hundreds of MiB under load
/// (measured: a node's RSS passed 1 GiB after a minute of unthrottled QoS 1).
pub const DEFAULT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How much of a group's written log stays in memory (the `[log_cache]` section of the
/// configuration file); the rest is read from the engine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheLimits {
    /// Written entries kept per group (default 8192).
    pub entries: usize,
    /// Encoded bytes of written entries kept per group (default 4 MiB).
    pub bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self { entries: DEFAULT_CACHE_ENTRIES, bytes: DEFAULT_CACHE_BYTES }
    }
}

/// Most entries returned by one `limited_get_log_entries` (one replication message).
pub const MAX_LIMITED_READ: u64 = 128;

/// A read whose engine part keeps racing with truncates or purges gives up after this many tries.
const MAX_READ_ATTEMPTS: usize = 64;

/// The in-memory view of one group's log. Only the store's single writer changes it.
struct GroupLog<C: RaftTypeConfig> {
    /// The tail `[cache_lo, next)`: index -> (append sequence number, encoded size, entry).
    cache: BTreeMap<u64, (u64, usize, C::Entry)>,
    /// Encoded bytes of the cached entries.
    cached_bytes: usize,
    /// Entries below this index are in the engine.
    cache_lo: u64,
    /// First present index (equal to `next` when the log is empty).
    first: u64,
    /// One past the last present index.
    next: u64,
    /// The last present entry's id, or `last_purged` if there is none.
    last_log_id: Option<LogIdOf<C>>,
    last_purged: Option<LogIdOf<C>>,
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    /// Sequence number of the next append job.
    next_seq: u64,
    /// Bumped by every truncate and purge.
    epoch: u64,
    /// Entries kept in the cache once written.
    capacity: usize,
    /// Encoded bytes kept in the cache once written.
    capacity_bytes: usize,
}

impl<C: RaftTypeConfig> GroupLog<C> {
    /// Drops the cached entries from `from` on (truncate).
    fn uncache_from(&mut self, from: u64) {
        let removed = self.cache.split_off(&from);
        self.cached_bytes = self.cached_bytes.saturating_sub(removed.values().map(|(_, n, _)| n).sum());
    }

    /// Drops the cached entries below `upto` (purge).
    fn uncache_below(&mut self, upto: u64) {
        let kept = self.cache.split_off(&upto);
        self.cached_bytes = self.cached_bytes.saturating_sub(self.cache.values().map(|(_, n, _)| n).sum());
        self.cache = kept;
    }
}

struct Shared<C: RaftTypeConfig> {
    log: Mutex<GroupLog<C>>,
    /// Highest append sequence number the flusher has written into the engine.
    written: Arc<AtomicU64>,
    /// Encoded bytes of every entry appended since the store was opened.
    appended: Arc<AtomicU64>,
}

/// The raft log store of one group. Cloning is cheap; a clone is also its [`RaftLogReader`].
///
/// Requires a tokio runtime (engine reads run on `tokio::task::spawn_blocking`).
pub struct LogStore<C: RaftTypeConfig> {
    group: GroupId,
    engine: Arc<dyn KvEngine>,
    flusher: Flusher,
    shared: Arc<Shared<C>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            group: self.group,
            engine: self.engine.clone(),
            flusher: self.flusher.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.shared.log.lock();
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .field("first", &log.first)
            .field("next", &log.next)
            .field("cached", &log.cache.len())
            .finish()
    }
}

fn read_what(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("read of {} (key 0x{hex})", keys::describe(key))
}

fn read_value<T: DeserializeOwned>(engine: &dyn KvEngine, key: &[u8]) -> Result<Option<T>, StorageError> {
    match engine.get(key)? {
        None => Ok(None),
        Some(bytes) => codec::decode(&bytes, &read_what(key)).map(Some),
    }
}

/// Decodes a stored entry and checks it sits under its own index.
fn decode_entry<C: RaftTypeConfig>(key: &[u8], bytes: &[u8]) -> Result<(u64, C::Entry), StorageError> {
    let Some((_, index)) = keys::decode_log_key(key) else {
        return Err(StorageError::corrupt(read_what(key), "not a log key"));
    };
    let entry: C::Entry = codec::decode(bytes, &read_what(key))?;
    if entry.index() != index {
        return Err(StorageError::corrupt(
            read_what(key),
            format!("entry {} stored under index {index}", entry.index()),
        ));
    }
    Ok((index, entry))
}

/// Converts a range of indexes to `[start, end)`.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    /// Opens the log of `group`, loading its vote, committed and purged ids and its bounds.
    ///
    /// Blocks on engine reads: call it at start-up or on a blocking thread.
    pub fn open(engine: Arc<dyn KvEngine>, flusher: Flusher, group: GroupId) -> Result<Self, StorageError> {
        let e = &*engine;
        let vote = read_value::<VoteOf<C>>(e, &keys::raft_key(group, RaftTag::Vote))?;
        let committed = read_value::<LogIdOf<C>>(e, &keys::raft_key(group, RaftTag::Committed))?;
        let last_purged = read_value::<LogIdOf<C>>(e, &keys::raft_key(group, RaftTag::Purged))?;
        let purged_next = last_purged.as_ref().map_or(0, |p| p.index() + 1);

        let (start, end) = keys::log_range(group);
        let first_present = e.scan(&start, &end, 1)?.into_iter().next();
        let last_present = e.last_in_range(&start, &end)?;
        let (first, next, last_log_id) = match (first_present, last_present) {
            (Some((fk, _)), Some((lk, lv))) => {
                let (last_index, last) = decode_entry::<C>(&lk, &lv)?;
                let first_index = keys::decode_log_key(&fk).map_or(0, |(_, i)| i);
                if last_index >= purged_next {
                    (first_index.max(purged_next), last_index + 1, Some(last.log_id()))
                } else {
                    (purged_next, purged_next, last_purged.clone())
                }
            }
            _ => (purged_next, purged_next, last_purged.clone()),
        };
        tracing::debug!(group, first, next, "opened raft log");

        let log = GroupLog {
            cache: BTreeMap::new(),
            cached_bytes: 0,
            cache_lo: next,
            first,
            next,
            last_log_id,
            last_purged,
            vote,
            committed,
            next_seq: 1,
            epoch: 0,
            capacity: DEFAULT_CACHE_ENTRIES,
            capacity_bytes: DEFAULT_CACHE_BYTES,
        };
        Ok(Self {
            group,
            engine,
            flusher,
            shared: Arc::new(Shared {
                log: Mutex::new(log),
                written: Arc::new(AtomicU64::new(0)),
                appended: Arc::new(AtomicU64::new(0)),
            }),
        })
    }

    /// Sets how many written entries the cache keeps (default [`DEFAULT_CACHE_ENTRIES`]).
    pub fn with_cache_capacity(self, entries: usize) -> Self {
        self.shared.log.lock().capacity = entries;
        self
    }

    /// Sets how many encoded bytes of written entries the cache keeps (default
    /// [`DEFAULT_CACHE_BYTES`]).
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        self.shared.log.lock().capacity_bytes = bytes;
        self
    }

    /// Sets both cache limits.
    pub fn with_cache_limits(self, limits: &CacheLimits) -> Self {
        self.with_cache_capacity(limits.entries).with_cache_bytes(limits.bytes)
    }

    /// Encoded bytes currently in the cache.
    pub fn cached_bytes(&self) -> usize {
        self.shared.log.lock().cached_bytes
    }

    /// A counter of the encoded bytes appended since the store was opened (it only grows): what
    /// a snapshot policy by size reads.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.shared.appended.clone()
    }

    /// The group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Number of entries currently in the cache.
    pub fn cached_entries(&self) -> usize {
        self.shared.log.lock().cache.len()
    }

    /// Reads the present entries in `[start, end)`: the engine part, then the cached tail.
    async fn read_range(&self, start: u64, end: u64) -> Result<Vec<C::Entry>, StorageError> {
        for _ in 0..MAX_READ_ATTEMPTS {
            let (s, split, epoch, cached) = {
                let log = self.shared.log.lock();
                let s = start.max(log.first);
                let e = end.min(log.next);
                if s >= e {
                    return Ok(Vec::new());
                }
                let split = log.cache_lo.clamp(s, e);
                let cached: Vec<C::Entry> =
                    log.cache.range(split..e).map(|(_, (_, _, ent))| ent.clone()).collect();
                if cached.len() as u64 != e - split {
                    return Err(self.hole(split, e, "cache"));
                }
                (s, split, log.epoch, cached)
            };
            if s == split {
                return Ok(cached);
            }
            let stored = self.read_engine(s, split).await?;
            if self.shared.log.lock().epoch != epoch {
                continue; // a truncate or purge raced with the engine read
            }
            let contiguous =
                stored.len() as u64 == split - s && stored.iter().zip(s..).all(|((i, _), want)| *i == want);
            if !contiguous {
                return Err(self.hole(s, split, "engine"));
            }
            let mut out: Vec<C::Entry> = stored.into_iter().map(|(_, ent)| ent).collect();
            out.extend(cached);
            return Ok(out);
        }
        Err(StorageError::Engine {
            op: "read",
            what: format!("group {} log [{start}, {end})", self.group),
            msg: "the log kept changing during the read".into(),
        })
    }

    fn hole(&self, s: u64, e: u64, source: &str) -> StorageError {
        StorageError::corrupt(
            format!("read of group {} log entries [{s}, {e})", self.group),
            format!("entries missing from the {source} inside the log's bounds"),
        )
    }

    async fn read_engine(&self, s: u64, e: u64) -> Result<Vec<(u64, C::Entry)>, StorageError> {
        let engine = self.engine.clone();
        let (start, end) = (keys::log_key(self.group, s), keys::log_key(self.group, e));
        let limit = usize::try_from(e - s).unwrap_or(usize::MAX);
        tokio::task::spawn_blocking(move || {
            engine
                .scan(&start, &end, limit)?
                .iter()
                .map(|(k, v)| decode_entry::<C>(k, v))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| StorageError::io("a blocking raft log read", io::Error::other(e)))?
    }

    fn do_append(&self, entries: &[C::Entry]) -> Result<(WriteBatch, u64), StorageError> {
        let mut batch = WriteBatch::new();
        let mut sizes = Vec::with_capacity(entries.len());
        for ent in entries {
            let bytes = codec::encode(ent)?;
            sizes.push(bytes.len());
            batch.put(keys::log_key(self.group, ent.index()), bytes);
        }
        self.shared.appended.fetch_add(sizes.iter().sum::<usize>() as u64, Ordering::Relaxed);
        let mut log = self.shared.log.lock();
        let mut expect = log.last_log_id.as_ref().map(|l| l.index() + 1);
        for ent in entries {
            if let Some(want) = expect.filter(|w| *w != ent.index()) {
                return Err(StorageError::Rejected {
                    what: format!("append to group {} log", self.group),
                    detail: format!(
                        "entry {} would not follow the last entry (expected {want})",
                        ent.index()
                    ),
                });
            }
            expect = Some(ent.index() + 1);
        }
        let seq = log.next_seq;
        log.next_seq += 1;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if log.first == log.next {
                // Empty log: it starts where this append starts.
                log.first = first.index();
                log.next = first.index();
                log.cache_lo = first.index();
            }
            log.next = last.index() + 1;
            log.last_log_id = Some(last.log_id());
            for (ent, n) in entries.iter().zip(sizes) {
                if let Some((_, old, _)) = log.cache.insert(ent.index(), (seq, n, ent.clone())) {
                    log.cached_bytes = log.cached_bytes.saturating_sub(old);
                }
                log.cached_bytes += n;
            }
        }
        // Evict the oldest entries, but only those the flusher has written into the engine.
        let written = self.shared.written.load(Ordering::Acquire);
        while log.cache.len() > log.capacity || log.cached_bytes > log.capacity_bytes {
            let Some(oldest) = log.cache.first_entry() else {
                break;
            };
            if oldest.get().0 > written {
                break;
            }
            let index = *oldest.key();
            let (_, n, _) = oldest.remove();
            log.cached_bytes = log.cached_bytes.saturating_sub(n);
            log.cache_lo = index + 1;
        }
        Ok((batch, seq))
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = bounds(&range);
        Ok(self.read_range(start, end).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.shared.log.lock().vote.clone())
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<C::Entry>, io::Error> {
        let end = end.min(start.saturating_add(MAX_LIMITED_READ));
        Ok(self.read_range(start, end).await?)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let log = self.shared.log.lock();
        Ok(LogState { last_purged_log_id: log.last_purged.clone(), last_log_id: log.last_log_id.clone() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(keys::raft_key(self.group, RaftTag::Vote), codec::encode(vote)?);
        self.flusher.write_synced(batch).await?;
        self.shared.log.lock().vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let key = keys::raft_key(self.group, RaftTag::Committed);
        let mut batch = WriteBatch::new();
        match &committed {
            Some(c) => batch.put(key, codec::encode(c)?),
            None => batch.delete(key),
        };
        self.shared.log.lock().committed = committed;
        // Not synced: it only speeds up recovery, and becomes durable with the next round.
        self.flusher.write_unsynced(batch).await?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.shared.log.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let n = entries.len() as u64;
        let (batch, seq) = self.do_append(&entries)?;
        let done: Completion = Box::new(move |res| callback.io_completed(res.map_err(io::Error::from)));
        let job = Job::Write {
            batch,
            entries: n,
            written: Some((self.shared.written.clone(), seq)),
            done: Some(done),
        };
        self.flusher.submit(job).await?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.as_ref().map_or(0, |l| l.index() + 1);
        {
            let mut log = self.shared.log.lock();
            if from >= log.next {
                // Nothing present to remove. Any stale tail still in the engine is covered by
                // the delete of the truncate that made it stale, queued before any later job.
                return Ok(());
            }
            log.uncache_from(from);
            log.next = from.max(log.first);
            log.cache_lo = log.cache_lo.min(log.next);
            log.last_log_id = if log.next > log.first { last_log_id } else { log.last_purged.clone() };
            log.epoch += 1;
        }
        let mut batch = WriteBatch::new();
        batch.delete_range(keys::log_key(self.group, from), keys::log_range(self.group).1);
        self.flusher.write_unsynced(batch).await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let upto = log_id.index() + 1;
        {
            let mut log = self.shared.log.lock();
            if log.last_purged.as_ref().is_some_and(|p| p.index() >= log_id.index()) {
                return Ok(());
            }
            log.last_purged = Some(log_id.clone());
            log.first = log.first.max(upto);
            log.next = log.next.max(log.first);
            if log.last_log_id.as_ref().is_none_or(|l| l.index() < log_id.index()) {
                log.last_log_id = Some(log_id.clone());
            }
            log.uncache_below(upto);
            log.cache_lo = log.cache_lo.clamp(log.first, log.next);
            log.epoch += 1;
        }
        // PURGED first, then the entries: openraft ignores entries at or below it anyway.
        let mut batch = WriteBatch::new();
        batch
            .put(keys::raft_key(self.group, RaftTag::Purged), codec::encode(&log_id)?)
            .delete_range(keys::log_range(self.group).0, keys::log_key(self.group, upto));
        self.flusher.write_unsynced(batch).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
