//! ironhub storage: the key-value engine under every raft group of a node.
//!
//! Module map:
//!
//! - [`engine`]: the [`KvEngine`] trait (get, atomic batches, WAL flush, ordered and
//!   point-in-time scans) and [`WriteBatch`].
//! - [`rocks`]: [`RocksEngine`], the RocksDB engine shared by all groups of a node.
//! - [`mem`]: [`MemEngine`], an in-memory engine for tests.
//! - [`keys`]: the fixed-width big-endian key layout (`[group][space][rest]`).
//! - [`codec`]: the one versioned value codec (format byte + bincode with a decode limit).
//! - [`flusher`]: [`Flusher`], the node's single log-writing thread: group commit with one
//!   `flush_wal(true)` per round for every group.
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` for one group, with an entry cache.
//! - [`snapshot`]: snapshot files of a group's data range and their crash-safe installation.
//! - [`error`]: [`StorageError`], the crate's one error type.
//!
//! Nothing here knows about MQTT; blocking engine calls never run on a tokio worker thread.
//!
//! Wiring on a node: open one [`RocksEngine`] on the data directory and share it as
//! `Arc<dyn KvEngine>`; start one [`Flusher`] on it; open one [`LogStore`] per raft group with
//! clones of both. The state machine writes its group's `DATA` range and `RAFT` records directly
//! through the engine (on a blocking thread), builds snapshots with
//! [`snapshot::build_snapshot_consistent`] and installs them with [`install_snapshot`]. At start,
//! [`interrupted_install`] tells whether a group's install was cut short by a crash. On shutdown,
//! `Flusher::shutdown().await` after the raft groups stop, then drop the engine.

#![warn(missing_docs)]

pub mod codec;
pub mod engine;
pub mod error;
pub mod flusher;
pub mod keys;
pub mod log_store;
pub mod mem;
pub mod rocks;
pub mod snapshot;

#[cfg(test)]
pub(crate) mod testing;

pub use engine::KvEngine;
pub use engine::WriteBatch;
pub use engine::WriteOp;
pub use error::StorageError;
pub use flusher::Flusher;
pub use flusher::FlusherStats;
pub use keys::GroupId;
pub use log_store::LogStore;
pub use mem::MemEngine;
pub use rocks::RocksEngine;
pub use snapshot::build_snapshot;
pub use snapshot::build_snapshot_consistent;
pub use snapshot::install_snapshot;
pub use snapshot::interrupted_install;
pub use snapshot::read_snapshot_meta;
pub use snapshot::verify_snapshot;
pub use snapshot::SnapshotFile;
