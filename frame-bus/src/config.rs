//! Tuning knobs of the bus. Defaults are what a small edge box wants.

use std::time::Duration;

/// When a publish is allowed to return (DESIGN.md invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Group commit: everything waiting when the writer wakes is written as
    /// one `WriteBatch` and fsynced once. A returned publish survives a power cut.
    #[default]
    Batch,
    /// One fsynced write per publish call, no grouping across publishers.
    /// Same guarantee as `Batch`, at a much lower rate.
    Always,
    /// The batch is written to the RocksDB WAL (the OS page cache) without
    /// fsync: survives a crash of the process, not a power cut or kernel panic.
    None,
}

impl SyncMode {
    /// Whether writes in this mode are fsynced before publish returns.
    pub fn fsyncs(self) -> bool {
        !matches!(self, SyncMode::None)
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(SyncMode::Batch),
            "always" => Ok(SyncMode::Always),
            "none" => Ok(SyncMode::None),
            other => Err(format!(
                "unknown sync mode {other:?}; expected \"batch\", \"always\" or \"none\""
            )),
        }
    }
}

/// Where a consumer that has no stored cursor starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest frame still stored (replays the whole retained backlog).
    #[default]
    Earliest,
    /// Only frames published after the subscription was created.
    Latest,
}

/// When frames are deleted even though not every consumer acknowledged them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Frames older than this are dropped (default 24 h, as in the seed design).
    pub max_age: Option<Duration>,
    /// When the frame column family grows past this many bytes on disk, the
    /// oldest frames are dropped until it is back under 90 % of the limit.
    pub max_bytes: Option<u64>,
    /// How often the retention task runs.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: Some(Duration::from_secs(24 * 3600)),
            max_bytes: None,
            interval: Duration::from_secs(1),
        }
    }
}

/// Configuration of one [`crate::FrameBus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusConfig {
    /// Durability of a returned publish.
    pub sync: SyncMode,
    /// Soft cap on frames in one group commit (a single publish call is never split).
    pub max_batch_frames: usize,
    /// Soft cap on payload bytes in one group commit.
    pub max_batch_bytes: usize,
    /// How long the writer lingers for more publishers after the first one
    /// arrives. Zero (default) relies on natural batching: whatever queued up
    /// during the previous fsync forms the next batch.
    pub max_batch_delay: Duration,
    /// Publish requests that may wait for the writer before `publish` itself
    /// waits (backpressure to drivers).
    pub queue_capacity: usize,
    /// Acknowledged cursors are persisted at most this long after `ack`
    /// (or with the next frame batch, whichever comes first).
    pub cursor_flush_interval: Duration,
    /// Publishing fails fast with [`crate::BusError::DiskFull`] while the data
    /// directory's filesystem has less free space than this. The guard counts
    /// the batch, not the space memtable flushes and compactions need (up to
    /// 3 × `write_buffer_bytes` + a 64 MiB SST), so RocksDB can still meet
    /// ENOSPC on a tight disk; the writer then reopens it (see crate docs).
    pub min_free_bytes: u64,
    /// Start position of consumers without a stored cursor.
    pub default_start: StartFrom,
    /// Forced deletion limits.
    pub retention: RetentionConfig,
    /// RocksDB memtable size for the frame column family.
    pub write_buffer_bytes: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            sync: SyncMode::Batch,
            max_batch_frames: 16 * 1024,
            max_batch_bytes: 8 << 20,
            max_batch_delay: Duration::ZERO,
            queue_capacity: 1024,
            cursor_flush_interval: Duration::from_millis(100),
            min_free_bytes: 16 << 20,
            default_start: StartFrom::Earliest,
            retention: RetentionConfig::default(),
            write_buffer_bytes: 32 << 20,
        }
    }
}
