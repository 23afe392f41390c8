//! The RocksDB [`KvEngine`]: one database per node, shared by every raft group.
//!
//! Tuned for small machines (see DESIGN "RocksDB tuning"): two background jobs (one flush, one
//! compaction), 64 MiB write buffers so short-lived queue entries die in the memtable, no
//! compression (the crate is built without compression libraries), write-ahead log on.

use std::path::Path;
use std::path::PathBuf;

use rocksdb::DBCompressionType;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::engine::KvEngine;
use crate::engine::KvPair;
use crate::engine::ScanVisitor;
use crate::engine::WriteBatch;
use crate::engine::WriteOp;
use crate::error::StorageError;
use crate::keys;

/// Size of each memtable.
const WRITE_BUFFER_BYTES: usize = 64 * 1024 * 1024;
/// Background flush + compaction threads.
const BACKGROUND_JOBS: i32 = 2;

/// A RocksDB database opened on a directory.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine").field("path", &self.path).finish()
    }
}

impl RocksEngine {
    /// Opens (creating if missing) the database in `dir`.
    ///
    /// A locked (already open) or corrupt database is an error naming the path, never a panic.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(BACKGROUND_JOBS);
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES);
        opts.set_compression_type(DBCompressionType::None);
        opts.set_keep_log_file_num(4);
        let db = DB::open(&opts, dir)
            .map_err(|e| convert(e, "open", format!("RocksDB database {}", dir.display())))?;
        Ok(Self { db, path: dir.to_path_buf() })
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rocksdb::Error, op: &'static str, what: impl std::fmt::Display) -> StorageError {
        convert(e, op, format!("{what} in {}", self.path.display()))
    }
}

fn convert(e: rocksdb::Error, op: &'static str, what: String) -> StorageError {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => StorageError::Corrupt { what, detail: e.into_string() },
        _ => StorageError::Engine { op, what, msg: e.into_string() },
    }
}

fn range_name(start: &[u8], end: &[u8]) -> String {
    format!("range [{}, {})", keys::describe(start), keys::describe(end))
}

impl KvEngine for RocksEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get(key).map_err(|e| self.err(e, "read", keys::describe(key)))
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put(k, v) => wb.put(k, v),
                WriteOp::Delete(k) => wb.delete(k),
                // RocksDB rejects inverted ranges; an empty or inverted range deletes nothing.
                WriteOp::DeleteRange(s, e) if s < e => wb.delete_range(s, e),
                WriteOp::DeleteRange(..) => {}
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db
            .write_opt(wb, &wo)
            .map_err(|e| self.err(e, "write", format_args!("a batch of {} operations", batch.len())))
    }

    fn flush_wal(&self, sync: bool) -> Result<(), StorageError> {
        self.db.flush_wal(sync).map_err(|e| self.err(e, "flush", "the write-ahead log"))
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>, StorageError> {
        let mut out = Vec::new();
        if start >= end || limit == 0 {
            return Ok(out);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(start);
        while let Some((k, v)) = it.item() {
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
            it.next();
        }
        it.status().map_err(|e| self.err(e, "read", range_name(start, end)))?;
        Ok(out)
    }

    fn scan_consistent(&self, start: &[u8], end: &[u8], f: &mut ScanVisitor<'_>) -> Result<(), StorageError> {
        if start >= end {
            return Ok(());
        }
        let snapshot = self.db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        // A full scan (snapshot build) should not evict the hot working set from the block cache.
        ro.fill_cache(false);
        let mut it = snapshot.raw_iterator_opt(ro);
        it.seek(start);
        while let Some((k, v)) = it.item() {
            f(k, v)?;
            it.next();
        }
        it.status().map_err(|e| self.err(e, "read", range_name(start, end)))
    }

    fn last_in_range(&self, start: &[u8], end: &[u8]) -> Result<Option<KvPair>, StorageError> {
        if start >= end {
            return Ok(None);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek_to_last();
        let found = it.item().map(|(k, v)| (k.to_vec(), v.to_vec()));
        it.status().map_err(|e| self.err(e, "read", range_name(start, end)))?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conformance;

    #[test]
    fn rocks_engine_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RocksEngine::open(dir.path()).unwrap();
        conformance::run_all(&engine);
    }

    #[test]
    fn reopen_keeps_synced_and_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(dir.path()).unwrap();
            let mut b = WriteBatch::new();
            b.put(b"synced".to_vec(), b"1".to_vec());
            e.write(&b, true).unwrap();
            let mut b = WriteBatch::new();
            b.put(b"flushed".to_vec(), b"2".to_vec()).delete(b"synced-gone".to_vec());
            e.write(&b, false).unwrap();
            e.flush_wal(true).unwrap();
        }
        let e = RocksEngine::open(dir.path()).unwrap();
        assert_eq!(e.get(b"synced").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"flushed").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn second_open_of_a_locked_database_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RocksEngine::open(dir.path()).unwrap();
        let err = RocksEngine::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(matches!(err, StorageError::Engine { op: "open", .. }), "{err:?}");
    }

    #[test]
    fn corrupt_database_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = RocksEngine::open(dir.path()).unwrap();
            e.flush_wal(true).unwrap();
        }
        // Destroy every metadata file RocksDB needs to open the database.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("MANIFEST") || name == "CURRENT" {
                std::fs::write(&p, b"garbage that is not a manifest").unwrap();
            }
        }
        let err = RocksEngine::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }
}
