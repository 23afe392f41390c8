//! The one error type of the storage crate.
//!
//! Every variant names what was touched (a key, a file, a group's log) and, where it matters,
//! whether it was a read or a write, so an operator can tell a full disk from a damaged data
//! directory from a downgrade.

use std::io;

/// An error from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key-value engine (RocksDB) refused an operation.
    #[error(
        "storage engine {op} of {what} failed: {msg}; check the data directory's disk space, \
         permissions and health, and that no other ironhub process uses it"
    )]
    Engine {
        /// The operation: `"open"`, `"read"`, `"write"` or `"flush"`.
        op: &'static str,
        /// What was touched: a key, a key range or a path.
        what: String,
        /// The engine's own message.
        msg: String,
    },

    /// Stored bytes do not decode: the data directory is damaged.
    #[error(
        "corrupt data in {what}: {detail}; this node's data directory is damaged: stop the node, \
         move the data directory aside and re-add the node so it copies state from its peers"
    )]
    Corrupt {
        /// What was read: a key, a file.
        what: String,
        /// Why it does not decode.
        detail: String,
    },

    /// Stored bytes were written by a newer ironhub with a storage format this build cannot read.
    #[error(
        "{what} was written in storage format {found}, but this build reads formats up to \
         {supported}: run the newer ironhub build that wrote this data directory"
    )]
    NewerFormat {
        /// What was read.
        what: String,
        /// The format version found in the data.
        found: u8,
        /// The newest format version this build understands.
        supported: u8,
    },

    /// A write was refused before reaching the engine: a value too large for the codec, a
    /// failing `Serialize`, or an append that would leave a hole in a log. A caller bug.
    #[error("refused to write {what}: {detail}; nothing was written (a bug in the caller)")]
    Rejected {
        /// What was to be written.
        what: String,
        /// Why it was refused.
        detail: String,
    },

    /// A file-system operation failed (snapshot files, directories).
    #[error("I/O error on {what}: {source}; check the disk and the directory's permissions")]
    Io {
        /// What was touched: usually a path and the operation.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The log flusher has shut down, so nothing more can be written; the node is stopping.
    #[error("the storage log flusher has shut down: the node is stopping, no more writes are accepted")]
    Closed,
}

impl StorageError {
    /// Builds an [`StorageError::Io`] error.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io { what: what.into(), source }
    }

    /// Builds a [`StorageError::Corrupt`] error.
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StorageError::Corrupt { what: what.into(), detail: detail.into() }
    }

    /// The [`io::ErrorKind`] that best describes this error.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            StorageError::Engine { .. } => io::ErrorKind::Other,
            StorageError::Corrupt { .. } | StorageError::NewerFormat { .. } => io::ErrorKind::InvalidData,
            StorageError::Rejected { .. } => io::ErrorKind::InvalidInput,
            StorageError::Io { source, .. } => source.kind(),
            StorageError::Closed => io::ErrorKind::BrokenPipe,
        }
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        io::Error::new(e.io_kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_subject_and_the_verb() {
        let e = StorageError::Engine {
            op: "write",
            what: "group 3 log".into(),
            msg: "No space left on device".into(),
        };
        let s = e.to_string();
        assert!(s.contains("write of group 3 log"), "{s}");
        assert!(s.contains("disk space"), "{s}");

        let e = StorageError::NewerFormat { what: "key 00 03 02 01".into(), found: 7, supported: 1 };
        assert!(e.to_string().contains("format 7"));
    }

    #[test]
    fn converts_to_io_error_keeping_the_message_and_kind() {
        let e: io::Error = StorageError::corrupt("vote of group 1", "truncated").into();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("vote of group 1"));

        let inner = io::Error::new(io::ErrorKind::NotFound, "gone");
        let e: io::Error = StorageError::io("snapshot /x", inner).into();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
