//! Typed errors of the bus.

use std::path::PathBuf;

/// Everything that can go wrong on the bus. None of these leaves the bus in a
/// corrupted state: a failed publish assigned no sequence number.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The filesystem holding the data directory is (nearly) full. When the
    /// free-space guard rejected the batch, nothing of it was stored; when it
    /// maps a RocksDB ENOSPC, see the crate docs on failed writes. Publishing
    /// works again once space is freed.
    #[error("disk full at {path}: {available} bytes free, {required} required")]
    DiskFull {
        path: PathBuf,
        available: u64,
        required: u64,
    },
    /// RocksDB reported an error (I/O, corruption of its own files, …).
    #[error("storage error: {0}")]
    Storage(String),
    /// Creating or inspecting the data directory failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The directory was written by a newer, incompatible version of the bus.
    #[error("bus format version {found} is newer than this build supports ({supported})")]
    UnsupportedFormat { found: u64, supported: u64 },
    /// The database is being reopened after a write error (or the reopen
    /// failed and is retried). Transient: subscriptions wait it out.
    #[error("frame bus database unavailable while it is reopened after a write error")]
    Unavailable,
    /// The bus was closed (or its writer stopped).
    #[error("frame bus is closed")]
    Closed,
    /// A frame's type must be DATA, COMMAND, EVENT or HEARTBEAT.
    #[error("invalid frame type {0}")]
    InvalidFrameType(i32),
    /// `publish_batch` was called with no frames.
    #[error("empty publish batch")]
    EmptyBatch,
    /// Consumer names are non-empty, at most 128 bytes, without control characters.
    #[error("invalid consumer name {0:?}")]
    InvalidConsumerName(String),
    /// Another live subscription already uses this consumer name.
    #[error("consumer {0:?} already has a live subscription")]
    ConsumerBusy(String),
    /// `commit` named a consumer that never subscribed (or was removed).
    #[error("unknown consumer {0:?}")]
    UnknownConsumer(String),
    /// An acknowledgement named a sequence number that was never published.
    #[error("ack of seq {seq} beyond head {head}")]
    AckBeyondHead { seq: u64, head: u64 },
}

impl BusError {
    /// Maps a RocksDB error, recognising a full disk.
    pub(crate) fn from_rocksdb(e: rocksdb::Error, path: &std::path::Path) -> Self {
        let msg = e.into_string();
        if msg.contains("No space left") || msg.contains("NoSpace") || msg.contains("ENOSPC") {
            BusError::DiskFull {
                path: path.to_path_buf(),
                available: crate::disk::available_bytes(path).unwrap_or(0),
                required: 0,
            }
        } else {
            BusError::Storage(msg)
        }
    }

    /// Whether retrying later may succeed (disk full, transient I/O).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BusError::DiskFull { .. } | BusError::Storage(_) | BusError::Unavailable
        )
    }
}
