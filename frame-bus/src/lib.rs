//! The frame bus: a RocksDB-backed, sequence-keyed write-ahead log of frames
//! with a durable cursor per consumer.
//!
//! Drivers publish every sample (as a frame) here; every consumer — each sink,
//! the alert engine — reads from its own cursor. After a crash, a power cut or
//! a long outage downstream, everything not yet acknowledged replays from
//! disk. This crate knows nothing about drivers, sinks or config files.
//!
//! # On-disk layout
//!
//! One RocksDB instance in the bus directory, four column families:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `frames`  | `frame:{seq:020}` — 26 ASCII bytes, so byte order is seq order | encoded [`proto::FrameEnvelope`] (protobuf), `checksum` = CRC32 of `data` |
//! | `cursors` | consumer name (UTF-8, ≤ 128 bytes) | last acknowledged seq, u64 big-endian |
//! | `state`   | consumer name, `0x00`, the consumer's key | the consumer's bytes ([`FrameBus::commit`]) |
//! | `meta`    | `deleted_through` | u64 big-endian: every seq ≤ it was deleted |
//!
//! Frames are LZ4-compressed in SST files; the RocksDB WAL is the durability
//! point. Deletion is by range tombstone (`[oldest, floor]`) written together
//! with `deleted_through` in one batch.
//!
//! # Invariants
//!
//! 1. **Sequence.** Seqs are assigned by the single writer thread: strictly
//!    increasing from 1, no gaps, never reused. On open the writer continues
//!    after `max(last stored key, deleted_through)` — found with one seek and
//!    one point read, never a scan, so sequence numbers keep increasing even
//!    if every frame had been deleted before the restart.
//! 2. **Durability of publish.** [`FrameBus::publish`] returns only after the
//!    frame's `WriteBatch` is in the RocksDB WAL and, in [`SyncMode::Batch`]
//!    (default) and [`SyncMode::Always`], fsynced. `Batch` is group commit:
//!    whatever publishers queued while the previous fsync ran is written as
//!    one batch with one fsync. [`SyncMode::None`] survives a process crash
//!    (the WAL write reached the kernel) but not a power cut. A failed write
//!    returns an error to its publishers and `head` does not move. If RocksDB
//!    reported the error after the bytes had reached its WAL, the reopen that
//!    follows (see 6) recovers that batch and `head` moves past it: seqs stay
//!    unique and gapless, and a publisher that retried has its frame twice in
//!    the bus (sinks are idempotent; see DESIGN.md invariant 5).
//! 3. **Consumers.** A [`Subscription`] delivers frames from its cursor + 1 in
//!    seq order: first the stored backlog, then live frames (woken by the
//!    writer, no polling). [`Subscription::ack`] moves the cursor forward in
//!    memory; the writer persists dirty cursors with its next batch or within
//!    `cursor_flush_interval`. A restart resumes after the last *persisted*
//!    cursor: delivery is at-least-once, and a frame not acknowledged is never
//!    skipped (unless retention force-dropped it — counted, see 4).
//!
//!    **Stateful consumers.** [`FrameBus::commit`] writes frames to
//!    publish, the consumer's state entries and its cursor in one write
//!    batch: after a crash the consumer finds state and cursor from the same
//!    commit, so replaying the frames after it yields the same output, which
//!    was not yet published (exactly-once output for a deterministic consumer).
//! 4. **Deletion.** A frame is deleted when every registered consumer's
//!    persisted cursor is at or past it, or when a retention limit forces it
//!    (`max_age`, default 24 h; `max_bytes`). Forced drops are counted per
//!    cause in [`BusStats`] and logged with their seq range; a consumer that
//!    was behind them logs and counts the skipped range. With no registered
//!    consumer nothing is deleted by acknowledgement, only by the limits. A
//!    consumer with no cursor yet starts at `Earliest` (oldest stored) or
//!    `Latest` (head); it stays registered until `remove_consumer`.
//! 5. **Verification.** Every read checks the key format, decodes the
//!    envelope, verifies its CRC and that its `sequence_id` matches the key.
//!    A bad record is skipped, counted (`corrupt_frames_total`,
//!    `malformed_keys_total`), logged once per read with its seqs, and never
//!    stops a consumer. A bad cursor value found at open is counted and its
//!    consumer replays from the oldest stored frame (at-least-once holds).
//!    A block RocksDB itself cannot read (its block checksum failed: bytes
//!    flipped on disk) hides every frame in it: readers count and report
//!    each seq it hides and step past it; at open, if that block holds the
//!    newest or the oldest frame, head and floor come from the SST files'
//!    metadata and the memtable instead of a seek, so the bus still opens
//!    (the head may then skip one seq if a range tombstone bounded the
//!    file). [`WalReader`] (`gateway wal tail`) shows such seqs as corrupt.
//!    A corrupt record in RocksDB's own log (`*.log`) is handled by
//!    RocksDB's point-in-time recovery, which drops the log's tail after it.
//! 6. **Disk full.** The writer checks free space before each batch and
//!    rejects it with [`BusError::DiskFull`] below `min_free_bytes` (nothing
//!    of it is stored). A RocksDB write error (ENOSPC or other I/O) is
//!    returned too, never a panic; RocksDB keeps such an instance read-only,
//!    so the writer reopens the database in-process — on the next request or
//!    its 1 s retry tick, once free space ≥ max(`min_free_bytes`, 1 MiB) —
//!    while subscriptions wait (`BusError::Unavailable` is never surfaced by
//!    `recv`). If the reopen itself fails (no space even to open), it is
//!    retried; publishing resumes as soon as it succeeds.
//!
//! # Threads
//!
//! `frame-bus-writer` (all frame and cursor writes) and `frame-bus-retention`
//! are OS threads: fsync and compaction block, and must not stall the async
//! runtime the drivers run on. Subscriptions read RocksDB directly in the
//! calling task, in chunks of max(1024, requested) frames; a chunk's stored
//! values are copied into one buffer and every delivered payload is a
//! zero-copy `Bytes` slice of it (holding one frame keeps its chunk's buffer
//! alive).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), frame_bus::BusError> {
//! use frame_bus::{BusConfig, FrameBus};
//! use proto::FrameType;
//! let bus = FrameBus::open("/var/lib/gateway/wal", BusConfig::default())?;
//! let seq = bus.publish(FrameType::Data, b"encoded DataFrame".to_vec()).await?;
//! let mut sub = bus.subscribe("influxdb", None)?;
//! let frame = sub.recv().await?;
//! // … write it downstream, then:
//! sub.ack(frame.sequence_id)?;
//! # let _ = seq; Ok(()) }
//! ```

mod bus;
mod config;
mod disk;
mod error;
pub mod keys;
mod reader;
mod retention;
mod stats;
mod store;
mod subscription;
mod writer;

pub use bus::{Commit, FrameBus, SeqRange, StateEntry};
pub use config::{BusConfig, RetentionConfig, StartFrom, SyncMode};
pub use error::BusError;
pub use reader::{WalReader, WalRecord};
pub use retention::RetentionReport;
pub use stats::{BusStats, ConsumerStats, HistogramSnapshot, LATENCY_BUCKETS};
pub use store::rocksdb_options;
pub use subscription::Subscription;

/// Names of the column families (for tools and tests that open the database directly).
pub mod column_families {
    pub use crate::keys::{CF_CURSORS as CURSORS, CF_FRAMES as FRAMES, CF_META as META, CF_STATE as STATE};
}
