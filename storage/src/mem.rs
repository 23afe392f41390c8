//! An in-memory [`KvEngine`] for tests: a `BTreeMap` under a read-write lock.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use crate::engine::KvEngine;
use crate::engine::KvPair;
use crate::engine::ScanVisitor;
use crate::engine::WriteBatch;
use crate::engine::WriteOp;
use crate::error::StorageError;

/// An in-memory engine. Nothing survives the process; `flush_wal` is a no-op.
#[derive(Debug, Default)]
pub struct MemEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }
}

fn range<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(start), Bound::Excluded(end))
}

impl KvEngine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.map.read().get(key).cloned())
    }

    fn write(&self, batch: &WriteBatch, _sync: bool) -> Result<(), StorageError> {
        let mut map = self.map.write();
        for op in &batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                WriteOp::Delete(k) => {
                    map.remove(k);
                }
                WriteOp::DeleteRange(s, e) => {
                    if s < e {
                        let doomed: Vec<Vec<u8>> =
                            map.range::<[u8], _>(range(s, e)).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_wal(&self, _sync: bool) -> Result<(), StorageError> {
        Ok(())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.map.read();
        Ok(map.range::<[u8], _>(range(start, end)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn scan_consistent(&self, start: &[u8], end: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        // Copy the range under the lock, then visit without it, so that `f` may write to this
        // engine (and writers are not stalled by a slow visitor). A test engine can afford the copy.
        let view = self.scan(start, end, usize::MAX)?;
        for (k, v) in &view {
            f(k, v)?;
        }
        Ok(())
    }

    fn last_in_range(&self, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let map = self.map.read();
        Ok(map.range::<[u8], _>(range(start, end)).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conformance;

    #[test]
    fn mem_engine_conforms() {
        conformance::run_all(&MemEngine::new());
    }
}
