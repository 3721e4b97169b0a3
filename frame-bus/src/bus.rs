//! The [`FrameBus`] handle: open, publish, subscribe, stats, close.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use proto::{FrameEnvelope, FrameType};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::warn;

use crate::keys;
use crate::retention::{self, RetentionReport};
use crate::stats::{BusStats, ConsumerStats};
use crate::store::{self, CursorState, Shared};
use crate::writer::{PublishRequest, Request, Txn, Writer};
use crate::{BusConfig, BusError, StartFrom};

/// One committed state entry: (key within the consumer's namespace, value).
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// What [`FrameBus::commit`] writes atomically for a stateful consumer.
#[derive(Debug, Default, Clone)]
pub struct Commit {
    /// New cursor position (every seq up to it is processed), or `None` to
    /// leave the cursor where it is.
    pub ack: Option<u64>,
    /// State entries to put (`Some`) or delete (`None`), keyed within the
    /// consumer's own namespace.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Frames to publish (consecutive seqs, like `publish_batch`).
    pub publish: Vec<(FrameType, Vec<u8>)>,
}

/// Seqs assigned to one publish call: `first..=last`, consecutive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    /// Number of frames in the range.
    pub fn len(&self) -> u64 {
        self.last + 1 - self.first
    }
    /// Never true for a range returned by the bus.
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

struct Threads {
    writer: Option<JoinHandle<()>>,
    retention: Option<JoinHandle<()>>,
    retention_stop: Option<std::sync::mpsc::Sender<()>>,
}

struct Handle {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    head_rx: watch::Receiver<u64>,
    cursor_wakeup: Arc<Notify>,
    threads: Mutex<Threads>,
}

/// The frame bus. Cheap to clone; all clones share one writer.
/// The bus closes when [`FrameBus::close`] is called or the last clone drops.
#[derive(Clone)]
pub struct FrameBus {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for FrameBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBus")
            .field("path", &self.inner.shared.path)
            .field("head", &self.inner.shared.head())
            .finish()
    }
}

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

impl FrameBus {
    /// Opens or creates the bus in directory `path` and starts its writer and
    /// retention threads. Recovery is a few seeks, independent of the backlog.
    pub fn open(path: impl AsRef<Path>, config: BusConfig) -> Result<FrameBus, BusError> {
        let queue = config.queue_capacity.max(1);
        let (shared, head_tx, head_rx) = store::open(path.as_ref(), config)?;
        let shared = Arc::new(shared);
        let (tx, rx) = mpsc::channel(queue);
        let cursor_wakeup = Arc::new(Notify::new());
        if shared.cursors_dirty.load(Ordering::Acquire) {
            cursor_wakeup.notify_one();
        }
        let writer = Writer::new(shared.clone(), rx, cursor_wakeup.clone(), head_tx);
        let spawn_err = |e: std::io::Error| BusError::Io {
            path: path.as_ref().to_path_buf(),
            source: std::sync::Arc::new(e),
        };
        let writer = std::thread::Builder::new()
            .name("frame-bus-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_err)?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let retention = std::thread::Builder::new()
            .name("frame-bus-retention".into())
            .spawn(move || retention::run(sh, stop_rx))
            .map_err(spawn_err)?;
        Ok(FrameBus {
            inner: Arc::new(Handle {
                shared,
                tx: Mutex::new(Some(tx)),
                head_rx,
                cursor_wakeup,
                threads: Mutex::new(Threads {
                    writer: Some(writer),
                    retention: Some(retention),
                    retention_stop: Some(stop_tx),
                }),
            }),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, BusError> {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(BusError::Closed)
    }

    /// Publishes one frame; returns its seq once it is durable per the sync mode.
    pub async fn publish(&self, frame_type: FrameType, data: Vec<u8>) -> Result<u64, BusError> {
        self.publish_batch(vec![(frame_type, data)])
            .await
            .map(|r| r.first)
    }

    /// Publishes frames as one unit: consecutive seqs, one write, one reply.
    pub async fn publish_batch(&self, frames: Vec<(FrameType, Vec<u8>)>) -> Result<SeqRange, BusError> {
        if frames.is_empty() {
            return Err(BusError::EmptyBatch);
        }
        self.submit(frames, 0, None).await
    }

    /// One atomic step of a stateful consumer (the alert engine): publishes
    /// `commit.publish`, writes `commit.state` under `consumer`'s prefix of
    /// the `state` column family and moves its cursor to `commit.ack`, all
    /// in one RocksDB write batch (fsynced per the sync mode). Either all of
    /// it is durable when this returns `Ok`, or none of it is: a crash
    /// replays from the previous commit's cursor with the previous commit's
    /// state, so a consumer that derives its frames deterministically from
    /// its input publishes each of them exactly once. Returns the seqs of
    /// the published frames (`None` if there were none). The cursor never
    /// moves backwards; `consumer` must be registered (subscribed once).
    pub async fn commit(&self, consumer: &str, commit: Commit) -> Result<Option<SeqRange>, BusError> {
        {
            let sh = &self.inner.shared;
            if !sh.cursors().contains_key(consumer) {
                return Err(BusError::UnknownConsumer(consumer.to_string()));
            }
            if let Some(seq) = commit.ack {
                let head = sh.head();
                if seq > head {
                    return Err(BusError::AckBeyondHead { seq, head });
                }
            }
        }
        let state_bytes = commit
            .state
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let n = commit.publish.len();
        let txn = Txn {
            consumer: consumer.to_string(),
            ack: commit.ack,
            state: commit.state,
        };
        let range = self.submit(commit.publish, state_bytes, Some(txn)).await?;
        Ok((n > 0).then_some(range))
    }

    /// Hands frames (and a commit's part) to the writer and waits for the
    /// durable answer.
    async fn submit(
        &self,
        frames: Vec<(FrameType, Vec<u8>)>,
        extra_bytes: usize,
        txn: Option<Txn>,
    ) -> Result<SeqRange, BusError> {
        if let Some((t, _)) = frames.iter().find(|(t, _)| *t == FrameType::Unspecified) {
            return Err(BusError::InvalidFrameType(*t as i32));
        }
        let enqueued = Instant::now();
        let bytes = frames.iter().map(|f| f.1.len()).sum::<usize>() + extra_bytes;
        // Checksums are computed here, in the publisher's task, not in the writer.
        let frames = frames
            .into_iter()
            .map(|(t, d)| FrameEnvelope::new(0, 0, t, d))
            .collect();
        let (reply, rx) = oneshot::channel();
        {
            // The sender clone is dropped before waiting for the reply, so a
            // pending publish never keeps the writer alive past `close`.
            let tx = self.sender()?;
            tx.send(Request::Publish(PublishRequest {
                frames,
                txn,
                bytes,
                enqueued,
                reply,
            }))
            .await
            .map_err(|_| BusError::Closed)?;
        }
        let (result, frames) = rx.await.map_err(|_| BusError::Closed)?;
        drop(frames);
        result
    }

    /// Every state entry `consumer` committed (keys without the consumer
    /// prefix), in key order. Read once at start-up by a stateful consumer.
    pub fn load_state(&self, consumer: &str) -> Result<Vec<StateEntry>, BusError> {
        let sh = &self.inner.shared;
        let db = sh.db()?;
        let (start, end) = keys::state_range(consumer);
        let prefix = start.len();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(start);
        ro.set_iterate_upper_bound(end);
        let mut out = Vec::new();
        for item in db.iterator_cf_opt(store::cf(&db, keys::CF_STATE), ro, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| sh.storage_err(e))?;
            out.push((k[prefix..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Subscribes as `consumer`, resuming after its stored cursor. A consumer
    /// seen for the first time is registered (and persisted) at `start`, or at
    /// the configured `default_start` when `None`; from then on retention keeps
    /// the frames it has not acknowledged.
    pub fn subscribe(
        &self,
        consumer: &str,
        start: Option<StartFrom>,
    ) -> Result<crate::Subscription, BusError> {
        if !valid_consumer_name(consumer) {
            return Err(BusError::InvalidConsumerName(consumer.to_string()));
        }
        let sh = &self.inner.shared;
        let next = {
            let mut map = sh.cursors();
            let floor = sh.deleted_through.load(Ordering::Acquire);
            let st = map.entry(consumer.to_string()).or_insert_with(|| {
                let at = match start.unwrap_or(sh.config.default_start) {
                    StartFrom::Earliest => floor,
                    StartFrom::Latest => sh.head(),
                };
                CursorState {
                    acked: at,
                    persisted: at,
                    active: false,
                    skipped_dropped: 0,
                    needs_write: true,
                }
            });
            if st.active {
                return Err(BusError::ConsumerBusy(consumer.to_string()));
            }
            st.active = true;
            let needs_write = st.needs_write;
            let next = st.acked + 1;
            drop(map);
            if needs_write {
                sh.cursors_dirty.store(true, Ordering::Release);
                self.inner.cursor_wakeup.notify_one();
            }
            next
        };
        Ok(crate::Subscription::new(
            sh.clone(),
            consumer.to_string(),
            next,
            self.inner.head_rx.clone(),
            self.inner.cursor_wakeup.clone(),
        ))
    }

    /// Unregisters a consumer: its cursor is deleted and retention stops
    /// keeping frames for it. Fails with `ConsumerBusy` while it is subscribed.
    pub fn remove_consumer(&self, consumer: &str) -> Result<bool, BusError> {
        let sh = &self.inner.shared;
        // The db handle first: lock order is db → cursor locks, as in the writer.
        let db = sh.db()?;
        let _writes = sh.cursor_write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = sh.cursors();
        match map.get(consumer) {
            None => return Ok(false),
            Some(st) if st.active => return Err(BusError::ConsumerBusy(consumer.to_string())),
            Some(_) => {}
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sh.config.sync.fsyncs());
        // The cursor and any committed state go together.
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(store::cf(&db, keys::CF_CURSORS), consumer.as_bytes());
        let (start, end) = keys::state_range(consumer);
        batch.delete_range_cf(store::cf(&db, keys::CF_STATE), start, end);
        db.write_opt(batch, &wo).map_err(|e| sh.storage_err(e))?;
        map.remove(consumer);
        Ok(true)
    }

    /// Moves `consumer`'s cursor to `seq` (its next read starts at `seq + 1`),
    /// creating the consumer if needed; an operator's tool for replaying a
    /// range (move back) or skipping a backlog (move forward). Written with
    /// the bus's sync mode before it returns. Fails with `ConsumerBusy` while
    /// the consumer is subscribed and `AckBeyondHead` past the head; a seq
    /// below the deletion floor is raised to it (those frames are gone).
    pub fn set_cursor(&self, consumer: &str, seq: u64) -> Result<u64, BusError> {
        if !valid_consumer_name(consumer) {
            return Err(BusError::InvalidConsumerName(consumer.to_string()));
        }
        let sh = &self.inner.shared;
        let head = sh.head();
        if seq > head {
            return Err(BusError::AckBeyondHead { seq, head });
        }
        let seq = seq.max(sh.deleted_through.load(Ordering::Acquire));
        let db = sh.db()?;
        let _writes = sh.cursor_write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = sh.cursors();
        if map.get(consumer).is_some_and(|st| st.active) {
            return Err(BusError::ConsumerBusy(consumer.to_string()));
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sh.config.sync.fsyncs());
        db.put_cf_opt(
            store::cf(&db, crate::keys::CF_CURSORS),
            consumer.as_bytes(),
            crate::keys::encode_u64(seq),
            &wo,
        )
        .map_err(|e| sh.storage_err(e))?;
        map.insert(
            consumer.to_string(),
            CursorState {
                acked: seq,
                persisted: seq,
                active: false,
                skipped_dropped: 0,
                needs_write: false,
            },
        );
        Ok(seq)
    }

    /// Persists every acknowledged cursor now and waits for it.
    pub async fn flush_cursors(&self) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(Request::FlushCursors(tx))
            .await
            .map_err(|_| BusError::Closed)?;
        rx.await.map_err(|_| BusError::Closed)?
    }

    /// Runs one retention pass now (the background task runs one every
    /// `retention.interval`).
    pub fn run_retention(&self) -> Result<RetentionReport, BusError> {
        retention::run_once(&self.inner.shared)
    }

    /// Last assigned seq.
    pub fn head_seq(&self) -> u64 {
        self.inner.shared.head()
    }

    /// Directory of the RocksDB instance.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// A snapshot of positions and counters for metrics.
    pub fn stats(&self) -> BusStats {
        let sh = &self.inner.shared;
        let c = &sh.counters;
        let head = sh.head();
        let oldest = sh.oldest().min(head + 1);
        let mut consumers: Vec<ConsumerStats> = sh
            .cursors()
            .iter()
            .map(|(name, st)| ConsumerStats {
                name: name.clone(),
                cursor: st.acked,
                persisted_cursor: st.persisted,
                lag: head.saturating_sub(st.acked),
                skipped_dropped: st.skipped_dropped,
            })
            .collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        BusStats {
            head_seq: head,
            oldest_seq: oldest,
            stored_frames: head + 1 - oldest,
            approx_bytes: sh.approx_bytes(),
            frames_published_total: r(&c.frames_published),
            bytes_published_total: r(&c.bytes_published),
            batches_written_total: r(&c.batches_written),
            fsyncs_total: r(&c.fsyncs),
            publish_errors_total: r(&c.publish_errors),
            disk_full_rejections_total: r(&c.disk_full_rejections),
            corrupt_frames_total: r(&c.corrupt_frames),
            malformed_keys_total: r(&c.malformed_keys),
            corrupt_cursors_total: r(&c.corrupt_cursors),
            frames_deleted_acked_total: r(&c.frames_deleted_acked),
            frames_dropped_age_total: r(&c.frames_dropped_age),
            frames_dropped_size_total: r(&c.frames_dropped_size),
            cursor_writes_total: r(&c.cursor_writes),
            consumers,
            publish_latency: c.publish_latency.snapshot(),
        }
    }

    /// Stops accepting publishes, lets the writer finish what is queued,
    /// persists cursors and joins the background threads. Idempotent.
    /// The RocksDB instance closes when the last `Subscription` is dropped too.
    pub fn close(&self) {
        self.inner.shutdown();
    }
}

impl Handle {
    fn shutdown(&self) {
        // Dropping the last sender ends the writer loop after the queue drains.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut t = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        t.retention_stop.take();
        for h in [t.writer.take(), t.retention.take()].into_iter().flatten() {
            if h.join().is_err() {
                warn!("a frame bus thread panicked");
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
