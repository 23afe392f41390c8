//! The key-value engine trait that the rest of ironhub stores through.
//!
//! [`KvEngine`] knows nothing of raft or RocksDB; [`crate::RocksEngine`] and [`crate::MemEngine`]
//! implement it, and both pass the same conformance tests (`engine::conformance`).
//!
//! Every method blocks the calling thread (RocksDB I/O): call it from the log flusher thread,
//! `tokio::task::spawn_blocking` or start-up code, never directly on a tokio worker.

use crate::error::StorageError;

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Sets `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Delete(Vec<u8>),
    /// Removes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl WriteOp {
    /// Approximate size in bytes, used to bound batch sizes.
    pub fn size(&self) -> usize {
        match self {
            WriteOp::Put(k, v) => k.len() + v.len(),
            WriteOp::Delete(k) => k.len(),
            WriteOp::DeleteRange(s, e) => s.len() + e.len(),
        }
    }
}

/// An ordered list of operations written atomically by [`KvEngine::write`].
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// The operations, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put of `key` = `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Put(key.into(), value.into()));
        self
    }

    /// Appends a delete of `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete(key.into()));
        self
    }

    /// Appends a delete of every key in `[start, end)`.
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::DeleteRange(start.into(), end.into()));
        self
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends all operations of `other`, after this batch's own.
    pub fn extend(&mut self, other: WriteBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// Approximate size in bytes of all keys and values.
    pub fn size(&self) -> usize {
        self.ops.iter().map(WriteOp::size).sum()
    }
}

/// A key and its value, as returned by scans.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// The visitor of [`KvEngine::scan_consistent`]: called with each key and value in order.
pub type ScanVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StorageError> + 'a;

/// An ordered key-value store with atomic batches and a write-ahead log.
pub trait KvEngine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Writes `batch` atomically. With `sync`, the write-ahead log is synced to disk before
    /// returning; without it, the write is durable only after a later [`KvEngine::flush_wal`]
    /// with `sync` (or a later synced write).
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError>;

    /// Flushes the write-ahead log; with `sync`, fsyncs it, making every earlier write durable.
    fn flush_wal(&self, sync: bool) -> Result<(), StorageError>;

    /// Keys in `[start, end)` in order, at most `limit`.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError>;

    /// Visits `[start, end)` of one consistent point-in-time view (RocksDB snapshot), in key
    /// order. Writes made while visiting are not seen. An error from `f` stops the scan and is
    /// returned.
    fn scan_consistent(&self, start: &[u8], end: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError>;

    /// The greatest key in `[start, end)` and its value, if any.
    ///
    /// The default scans forward in pages; engines override it with a reverse seek.
    fn last_in_range(&self, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        const PAGE: usize = 1024;
        let mut from = start.to_vec();
        let mut last = None;
        loop {
            let page = self.scan(&from, end, PAGE)?;
            let full = page.len() == PAGE;
            if let Some((k, v)) = page.into_iter().next_back() {
                from = k.clone();
                from.push(0);
                last = Some((k, v));
            }
            if !full {
                return Ok(last);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_builders_keep_order() {
        let mut a = WriteBatch::new();
        a.put(b"k".to_vec(), b"v".to_vec()).delete(b"x".to_vec());
        let mut b = WriteBatch::default();
        b.delete_range(b"a".to_vec(), b"z".to_vec());
        a.extend(b);
        assert_eq!(a.len(), 3);
        assert!(!a.is_empty());
        assert_eq!(a.size(), 5);
        assert_eq!(
            a.ops,
            vec![
                WriteOp::Put(b"k".to_vec(), b"v".to_vec()),
                WriteOp::Delete(b"x".to_vec()),
                WriteOp::DeleteRange(b"a".to_vec(), b"z".to_vec()),
            ]
        );
    }
}
