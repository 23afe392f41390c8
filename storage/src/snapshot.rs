//! Snapshot files of one group's DATA range, and their crash-safe installation.
//!
//! File format (all integers big-endian), streamed, never held whole in memory:
//!
//! ```text
//! header  : b"IHSNAP\0" [format: u8 = 1] [group: u16] [meta_len: u32] [meta bytes]
//! records : ([klen: u32] [key, relative to the group's data prefix] [vlen: u32] [value])*
//! trailer : [0xFFFF_FFFF: u32] [record count: u64] [CRC32 of every preceding byte: u32]
//! ```
//!
//! Installing writes an `INSTALLING` marker (synced) naming the file, replaces the group's data
//! range in ~4 MiB unsynced batches, then in one synced batch writes the caller's `finish` ops
//! (applied log id, membership) and clears the marker. A node that starts with the marker set
//! ([`interrupted_install`]) either redoes the install from the retained file — redo is
//! idempotent — or resets the group and lets the leader resend.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::codec;
use crate::codec::MAX_VALUE;
use crate::engine::KvEngine;
use crate::engine::KvPair;
use crate::engine::WriteBatch;
use crate::error::StorageError;
use crate::keys;
use crate::keys::GroupId;
use crate::keys::RaftTag;

/// The magic bytes opening every snapshot file; the last byte is the file format version.
pub const MAGIC: &[u8; 8] = b"IHSNAP\0\x01";

/// The snapshot file format this build writes and reads.
pub const SNAPSHOT_FORMAT: u8 = 1;

/// The length field value that ends the records.
const END_OF_RECORDS: u32 = u32::MAX;

/// Target size of each unsynced batch while installing.
pub const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

const IO_BUFFER: usize = 256 * 1024;

/// A snapshot file on disk: openraft's `SnapshotData` for ironhub state machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Where the file is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(format!("{what} {}", path.display()), e)
}

/// A writer that keeps a running CRC32 of everything written.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

fn len_u32(len: usize, what: &str) -> Result<u32, StorageError> {
    if len > MAX_VALUE {
        return Err(StorageError::Rejected {
            what: what.to_string(),
            detail: format!("{len} bytes exceed the {MAX_VALUE}-byte limit"),
        });
    }
    u32::try_from(len).map_err(|_| StorageError::Rejected {
        what: what.to_string(),
        detail: format!("{len} bytes do not fit a u32 length"),
    })
}

fn unique_name(group: GroupId) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("g{group}-{nanos}-{n}-{}.snap", std::process::id())
}

/// The raft bookkeeping records of a group (`APPLIED`, `MEMBERSHIP`, ...), read from the same
/// point-in-time view as a snapshot's data.
#[derive(Debug, Default, Clone)]
pub struct RaftRecords {
    records: BTreeMap<u8, Vec<u8>>,
}

impl RaftRecords {
    /// The stored value of `tag`, if any.
    pub fn get(&self, tag: RaftTag) -> Option<&[u8]> {
        self.records.get(&(tag as u8)).map(Vec::as_slice)
    }
}

/// Produces a snapshot's metadata bytes from the group's raft records.
pub type MetaFn<'a> = dyn FnMut(&RaftRecords) -> Result<Vec<u8>, StorageError> + 'a;

/// Writes a snapshot of `group`'s data range, taken from one consistent view of `engine`, into a
/// new file in `dir` (created if missing). `meta` is opaque to this crate (the caller's encoded
/// openraft `SnapshotMeta`). Blocks: run it on a blocking thread.
///
/// `meta` must describe the data as of the view this function takes. If the state machine keeps
/// applying while the snapshot is built, use [`build_snapshot_consistent`] instead.
pub fn build_snapshot(
    engine: &dyn KvEngine,
    group: GroupId,
    dir: &Path,
    meta: &[u8],
) -> Result<SnapshotFile, StorageError> {
    build(engine, group, dir, false, &mut |_| Ok(meta.to_vec()))
}

/// Like [`build_snapshot`], but the metadata is made by `meta` from the group's raft records
/// (`APPLIED`, `MEMBERSHIP`, ...) read from the same point-in-time view as the data, so the
/// snapshot's last log id matches its data even while apply goes on. This requires the state
/// machine to write those records in the same batch as the data they describe.
pub fn build_snapshot_consistent(
    engine: &dyn KvEngine,
    group: GroupId,
    dir: &Path,
    meta: &mut MetaFn<'_>,
) -> Result<SnapshotFile, StorageError> {
    build(engine, group, dir, true, meta)
}

fn build(
    engine: &dyn KvEngine,
    group: GroupId,
    dir: &Path,
    with_raft_records: bool,
    meta: &mut MetaFn<'_>,
) -> Result<SnapshotFile, StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating snapshot directory", dir, e))?;
    let name = unique_name(group);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let res = write_file(engine, group, &tmp, with_raft_records, meta).and_then(|size| {
        std::fs::rename(&tmp, &path).map_err(|e| io_err("renaming snapshot into place", &path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("syncing snapshot directory", dir, e))?;
        Ok(size)
    });
    match res {
        Ok(size) => Ok(SnapshotFile { path, size }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_header<W: Write>(w: &mut CrcWriter<W>, group: GroupId, meta: &[u8]) -> Result<(), std::io::Error> {
    w.put(MAGIC)?;
    w.put(&group.to_be_bytes())?;
    // `meta.len()` was checked against MAX_VALUE by the caller, so it fits a u32.
    w.put(&(meta.len() as u32).to_be_bytes())?;
    w.put(meta)
}

fn write_file(
    engine: &dyn KvEngine,
    group: GroupId,
    tmp: &Path,
    with_raft_records: bool,
    meta: &mut MetaFn<'_>,
) -> Result<u64, StorageError> {
    let file = File::create(tmp).map_err(|e| io_err("creating snapshot file", tmp, e))?;
    let mut w = CrcWriter { inner: BufWriter::with_capacity(IO_BUFFER, file), crc: crc32fast::Hasher::new() };
    let werr = |e: std::io::Error| io_err("writing snapshot file", tmp, e);

    let data_start = keys::data_prefix(group);
    let prefix_len = data_start.len();
    let start = if with_raft_records { keys::raft_range(group).0 } else { data_start.clone() };
    let end = keys::data_range(group).1;
    let mut raft = RaftRecords::default();
    let mut header = false;
    let mut count: u64 = 0;
    let mut put_header = |w: &mut CrcWriter<BufWriter<File>>, raft: &RaftRecords| {
        let meta = meta(raft)?;
        len_u32(meta.len(), "snapshot metadata")?;
        write_header(w, group, &meta).map_err(werr)
    };
    // One view: the raft records (RAFT space sorts before DATA), then the data.
    engine.scan_consistent(&start, &end, &mut |key, value| {
        if key < data_start.as_slice() {
            if let [_, _, _, tag] = key {
                raft.records.insert(*tag, value.to_vec());
            }
            return Ok(());
        }
        if !header {
            put_header(&mut w, &raft)?;
            header = true;
        }
        let rel = key.get(prefix_len..).unwrap_or_default();
        w.put(&len_u32(rel.len(), "snapshot record key")?.to_be_bytes()).map_err(werr)?;
        w.put(rel).map_err(werr)?;
        w.put(&len_u32(value.len(), "snapshot record value")?.to_be_bytes()).map_err(werr)?;
        w.put(value).map_err(werr)?;
        count += 1;
        Ok(())
    })?;
    if !header {
        put_header(&mut w, &raft)?;
    }

    w.put(&END_OF_RECORDS.to_be_bytes()).map_err(werr)?;
    w.put(&count.to_be_bytes()).map_err(werr)?;
    let crc = w.crc.clone().finalize();
    w.inner.write_all(&crc.to_be_bytes()).map_err(werr)?;
    let file = w.inner.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(|e| io_err("syncing snapshot file", tmp, e))?;
    let size = file.metadata().map_err(|e| io_err("reading size of snapshot file", tmp, e))?.len();
    Ok(size)
}

/// The parsed header of a snapshot file.
struct Header {
    group: GroupId,
    meta: Vec<u8>,
}

/// Streams a snapshot file, checking lengths as it goes and the CRC at the end.
struct SnapshotReader {
    inner: BufReader<File>,
    crc: crc32fast::Hasher,
    path: PathBuf,
    records: u64,
}

impl SnapshotReader {
    fn open(path: &Path) -> Result<(Self, Header), StorageError> {
        let file = File::open(path).map_err(|e| io_err("opening snapshot file", path, e))?;
        let mut r = SnapshotReader {
            inner: BufReader::with_capacity(IO_BUFFER, file),
            crc: crc32fast::Hasher::new(),
            path: path.to_path_buf(),
            records: 0,
        };
        let mut magic = [0u8; 8];
        r.exact(&mut magic, "magic")?;
        if magic[..7] != MAGIC[..7] {
            return Err(r.corrupt("not an ironhub snapshot file (bad magic)"));
        }
        if magic[7] > SNAPSHOT_FORMAT {
            return Err(StorageError::NewerFormat {
                what: format!("snapshot file {}", path.display()),
                found: magic[7],
                supported: SNAPSHOT_FORMAT,
            });
        }
        if magic[7] != SNAPSHOT_FORMAT {
            return Err(r.corrupt(format!("unknown snapshot format {}", magic[7])));
        }
        let mut g = [0u8; 2];
        r.exact(&mut g, "group")?;
        let meta_len = r.u32("metadata length")?;
        let meta = r.bytes(meta_len, "metadata")?;
        Ok((r, Header { group: u16::from_be_bytes(g), meta }))
    }

    fn corrupt(&self, detail: impl Into<String>) -> StorageError {
        StorageError::corrupt(format!("snapshot file {}", self.path.display()), detail)
    }

    fn exact(&mut self, buf: &mut [u8], field: &str) -> Result<(), StorageError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.crc.update(buf);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(format!("truncated: file ends inside the {field}")))
            }
            Err(e) => Err(io_err("reading snapshot file", &self.path, e)),
        }
    }

    fn u32(&mut self, field: &str) -> Result<u32, StorageError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, field)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads `len` bytes, refusing lengths over [`MAX_VALUE`] before allocating anything.
    fn bytes(&mut self, len: u32, field: &str) -> Result<Vec<u8>, StorageError> {
        let len = len as usize;
        if len > MAX_VALUE {
            return Err(self.corrupt(format!("{field} length {len} exceeds the {MAX_VALUE}-byte limit")));
        }
        let mut buf = Vec::new();
        let got = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_err("reading snapshot file", &self.path, e))?;
        if got != len {
            return Err(self.corrupt(format!("truncated: file ends inside the {field}")));
        }
        self.crc.update(&buf);
        Ok(buf)
    }

    /// The next record as (relative key, value), or `None` after checking the trailer.
    fn next_record(&mut self) -> Result<Option<KvPair>, StorageError> {
        let klen = self.u32("record key length")?;
        if klen == END_OF_RECORDS {
            self.finish()?;
            return Ok(None);
        }
        let key = self.bytes(klen, "record key")?;
        let vlen = self.u32("record value length")?;
        let value = self.bytes(vlen, "record value")?;
        self.records += 1;
        Ok(Some((key, value)))
    }

    fn finish(&mut self) -> Result<(), StorageError> {
        let mut count = [0u8; 8];
        self.exact(&mut count, "record count")?;
        let count = u64::from_be_bytes(count);
        if count != self.records {
            return Err(
                self.corrupt(format!("trailer counts {count} records, the file holds {}", self.records))
            );
        }
        let want = self.crc.clone().finalize();
        let mut crc = [0u8; 4];
        if self.inner.read_exact(&mut crc).is_err() {
            return Err(self.corrupt("truncated: file ends inside the checksum"));
        }
        if u32::from_be_bytes(crc) != want {
            return Err(self.corrupt("checksum mismatch"));
        }
        let mut extra = [0u8; 1];
        match self.inner.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.corrupt("trailing bytes after the checksum")),
            Err(e) => Err(io_err("reading snapshot file", &self.path, e)),
        }
    }
}

/// The metadata bytes stored in a snapshot file's header (the file is not verified).
pub fn read_snapshot_meta(path: &Path) -> Result<Vec<u8>, StorageError> {
    SnapshotReader::open(path).map(|(_, header)| header.meta)
}

/// Reads the whole file once, checking every length, the record count and the checksum.
pub fn verify_snapshot(path: &Path) -> Result<(), StorageError> {
    let (mut r, _) = SnapshotReader::open(path)?;
    while r.next_record()?.is_some() {}
    Ok(())
}

/// Replaces `group`'s data range with the snapshot in `path`, crash-safely (see the module
/// docs). `finish` is written in the final synced batch, together with clearing the marker.
/// Blocks: run it on a blocking thread.
///
/// The file is verified before anything is touched, so a corrupt file leaves the group as it
/// was. Keep the file until this returns: after a crash the marker names it for the redo.
pub fn install_snapshot(
    engine: &dyn KvEngine,
    group: GroupId,
    path: &Path,
    finish: WriteBatch,
) -> Result<(), StorageError> {
    install_snapshot_in_batches(engine, group, path, finish, INSTALL_BATCH_BYTES)
}

pub(crate) fn install_snapshot_in_batches(
    engine: &dyn KvEngine,
    group: GroupId,
    path: &Path,
    mut finish: WriteBatch,
    batch_bytes: usize,
) -> Result<(), StorageError> {
    verify_snapshot(path)?;
    let (mut reader, header) = SnapshotReader::open(path)?;
    if header.group != group {
        return Err(reader.corrupt(format!("holds group {}, expected group {group}", header.group)));
    }
    let abs = std::path::absolute(path).map_err(|e| io_err("resolving snapshot path", path, e))?;
    let path_str = abs.to_str().ok_or_else(|| StorageError::Rejected {
        what: format!("installing marker for {}", abs.display()),
        detail: "the snapshot path is not valid UTF-8".into(),
    })?;
    let marker = keys::raft_key(group, RaftTag::Installing);
    let mut begin = WriteBatch::new();
    begin.put(marker.clone(), codec::encode(path_str)?);
    engine.write(&begin, true)?;

    let (start, end) = keys::data_range(group);
    let mut batch = WriteBatch::new();
    batch.delete_range(start, end);
    let mut size = 0;
    while let Some((rel, value)) = reader.next_record()? {
        size += rel.len() + value.len();
        batch.put(keys::data_key(group, &rel), value);
        if size >= batch_bytes {
            engine.write(&batch, false)?;
            batch = WriteBatch::new();
            size = 0;
        }
    }
    if !batch.is_empty() {
        engine.write(&batch, false)?;
    }
    finish.delete(marker);
    engine.write(&finish, true)
}

/// The snapshot file of an install of `group` that was interrupted by a crash, if any.
pub fn interrupted_install(engine: &dyn KvEngine, group: GroupId) -> Result<Option<PathBuf>, StorageError> {
    let key = keys::raft_key(group, RaftTag::Installing);
    match engine.get(&key)? {
        None => Ok(None),
        Some(bytes) => {
            let what = format!("read of group {group} snapshot-installing marker");
            codec::decode::<String>(&bytes, &what).map(|p| Some(PathBuf::from(p)))
        }
    }
}

#[cfg(test)]
mod tests;
