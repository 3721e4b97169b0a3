//! The single writer: assigns sequence numbers and group-commits frames.
//!
//! Publishers send [`Request`]s over a bounded channel (backpressure) and wait
//! on a oneshot for their sequence numbers. The writer runs on its own OS
//! thread (fsync blocks; it must not stall the async runtime) and loops:
//!
//! 1. wait for a request (or for dirty cursors to come due);
//! 2. take everything else already queued, up to `max_batch_frames` /
//!    `max_batch_bytes` (optionally lingering `max_batch_delay`);
//! 3. check free disk space; assign seqs head+1.., stamp times, put every frame
//!    and every dirty cursor into one `WriteBatch`;
//! 4. write it with `sync = true` (modes batch/always) — one fsync — then
//!    publish the new head to subscribers and answer every publisher.
//!
//! A failed write answers every publisher of the batch with the error and
//! leaves `head` unchanged, so no seq is skipped or reused; the database is
//! then reopened before the next write (RocksDB keeps an instance whose
//! write failed read-only), and if the failed batch had reached the WAL after
//! all, recovery finds it and `head` moves past it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::FrameEnvelope;
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::keys::{encode_u64, frame_key, state_key, CF_CURSORS, CF_FRAMES, CF_STATE};
use crate::store::{cf, now_ns, Shared};
use crate::{disk, BusError, SeqRange, SyncMode};

/// A stateful consumer's part of a [`crate::Commit`]: written in the same
/// batch as the request's frames.
pub(crate) struct Txn {
    pub consumer: String,
    pub ack: Option<u64>,
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A publish call: frames already checksummed, seq/time filled by the writer.
pub(crate) struct PublishRequest {
    pub frames: Vec<FrameEnvelope>,
    /// Set for [`crate::FrameBus::commit`]; `None` for a plain publish.
    pub txn: Option<Txn>,
    pub bytes: usize,
    pub enqueued: Instant,
    /// The frames travel back with the answer so the publisher's thread frees
    /// the memory it allocated (cross-thread frees cost the writer ~20 % in
    /// `none` mode with small frames).
    pub reply: oneshot::Sender<(Result<SeqRange, BusError>, Vec<FrameEnvelope>)>,
}

impl PublishRequest {
    fn answer(self, result: Result<SeqRange, BusError>) {
        let _ = self.reply.send((result, self.frames));
    }
}

pub(crate) enum Request {
    Publish(PublishRequest),
    /// Persist acknowledged cursors now; answer when done.
    FlushCursors(oneshot::Sender<Result<(), BusError>>),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    cursor_wakeup: Arc<tokio::sync::Notify>,
    /// Broadcasts the new head to subscriptions; dropped when the writer
    /// stops, which tells them the bus is closed.
    head_tx: tokio::sync::watch::Sender<u64>,
    last_ts: u64,
    /// Last time a disk-full rejection was logged (one line per burst).
    last_disk_full_log: Option<Instant>,
    /// A write failed: the RocksDB instance may be in its read-only error
    /// state and is reopened before the next write (at most every 500 ms).
    needs_reopen: bool,
    last_reopen_attempt: Option<Instant>,
    /// Encoding buffer reused for every frame.
    scratch: Vec<u8>,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        cursor_wakeup: Arc<tokio::sync::Notify>,
        head_tx: tokio::sync::watch::Sender<u64>,
    ) -> Self {
        Writer {
            last_ts: shared.last_ts_at_open,
            shared,
            rx,
            cursor_wakeup,
            head_tx,
            last_disk_full_log: None,
            needs_reopen: false,
            last_reopen_attempt: None,
            scratch: Vec::with_capacity(4096),
        }
    }

    /// Runs until every sender is gone; persists cursors on the way out.
    pub fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "frame bus writer could not start its runtime");
                return;
            }
        };
        rt.block_on(self.event_loop());
        if let Err(e) = self.write(&mut [], 0) {
            warn!(error = %e, "persisting cursors at shutdown failed");
        }
        // A clean close flushes the memtables, so the next open has no WAL to replay.
        if let Ok(db) = self.shared.db() {
            for name in [CF_FRAMES, CF_CURSORS, CF_STATE, crate::keys::CF_META] {
                if let Err(e) = db.flush_cf(cf(&db, name)) {
                    warn!(error = %e, cf = name, "flush at shutdown failed; the next open replays the WAL");
                    break;
                }
            }
        }
    }

    async fn event_loop(&mut self) {
        let flush_every = self.shared.config.cursor_flush_interval;
        let mut cursor_due: Option<tokio::time::Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                req = self.rx.recv() => match req {
                    Some(r) => Some(r),
                    None => return,
                },
                _ = self.cursor_wakeup.notified(), if cursor_due.is_none() => {
                    cursor_due = Some(tokio::time::Instant::now() + flush_every);
                    continue;
                }
                _ = sleep_until_opt(cursor_due) => None,
                // After a write error, retry the reopen even when nobody publishes.
                _ = tokio::time::sleep(Duration::from_secs(1)), if self.needs_reopen => None,
            };
            let mut publishes = Vec::new();
            let mut flushes = Vec::new();
            let mut frames = 0usize;
            let mut bytes = 0usize;
            let mut push = |r: Request, frames: &mut usize, bytes: &mut usize| match r {
                Request::Publish(p) => {
                    *frames += p.frames.len();
                    *bytes += p.bytes;
                    publishes.push(p);
                }
                Request::FlushCursors(tx) => flushes.push(tx),
            };
            if let Some(r) = first {
                push(r, &mut frames, &mut bytes);
                let cfg = &self.shared.config;
                let linger_until = Instant::now() + cfg.max_batch_delay;
                while frames < cfg.max_batch_frames && bytes < cfg.max_batch_bytes {
                    match self.rx.try_recv() {
                        Ok(r) => push(r, &mut frames, &mut bytes),
                        Err(mpsc::error::TryRecvError::Empty) => {
                            let left = linger_until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break;
                            }
                            match tokio::time::timeout(left, self.rx.recv()).await {
                                Ok(Some(r)) => push(r, &mut frames, &mut bytes),
                                _ => break,
                            }
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                    }
                }
            }
            cursor_due = None;
            if self.shared.config.sync == SyncMode::Always && publishes.len() > 1 {
                for p in publishes {
                    self.commit(vec![p]);
                }
            } else {
                self.commit(publishes);
            }
            // Dirty cursors not already carried by a frame batch; answers flush requests.
            let flushed = self.write(&mut [], 0).map(|_| ());
            if let Err(e) = &flushed {
                warn!(error = %e, "persisting cursors failed; retrying on the cursor timer");
            }
            for tx in flushes {
                let _ = tx.send(flushed.clone());
            }
            // Cursors whose write failed stay dirty: retry on the timer, not only on the next ack.
            if self.shared.cursors_dirty.load(Ordering::Acquire) {
                cursor_due = Some(tokio::time::Instant::now() + flush_every);
            }
        }
    }

    /// Writes one group commit and answers its publishers.
    fn commit(&mut self, publishes: Vec<PublishRequest>) {
        if publishes.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let c = &shared.counters;
        let total_frames: usize = publishes.iter().map(|p| p.frames.len()).sum();
        let total_bytes: usize = publishes.iter().map(|p| p.bytes).sum();
        // Disk guard: refuse before RocksDB could hit ENOSPC.
        let min_free = self.shared.config.min_free_bytes;
        if min_free > 0 {
            if let Ok(avail) = disk::available_bytes(&self.shared.path) {
                let required = min_free.saturating_add(total_bytes as u64);
                if avail < required {
                    c.disk_full_rejections
                        .fetch_add(publishes.len() as u64, Ordering::Relaxed);
                    c.publish_errors
                        .fetch_add(publishes.len() as u64, Ordering::Relaxed);
                    let now = Instant::now();
                    if self
                        .last_disk_full_log
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
                    {
                        warn!(path = %self.shared.path.display(), available = avail, required, "disk full: rejecting publishes until space is freed");
                        self.last_disk_full_log = Some(now);
                    }
                    for p in publishes {
                        p.answer(Err(BusError::DiskFull {
                            path: self.shared.path.clone(),
                            available: avail,
                            required,
                        }));
                    }
                    return;
                }
            }
        }
        if self.needs_reopen {
            if let Err(e) = self.try_reopen() {
                c.publish_errors
                    .fetch_add(publishes.len() as u64, Ordering::Relaxed);
                for p in publishes {
                    p.answer(Err(e.clone()));
                }
                return;
            }
        }
        let ts = now_ns().max(self.last_ts);
        let mut publishes = publishes;
        match self.write(&mut publishes, ts) {
            Ok(ranges) => {
                self.last_ts = ts;
                if self.last_disk_full_log.take().is_some() {
                    tracing::info!("publishing resumed after disk full");
                }
                c.frames_published
                    .fetch_add(total_frames as u64, Ordering::Relaxed);
                c.bytes_published.fetch_add(total_bytes as u64, Ordering::Relaxed);
                let now = Instant::now();
                for (p, r) in publishes.into_iter().zip(ranges) {
                    c.publish_latency.record(now.duration_since(p.enqueued));
                    p.answer(Ok(r));
                }
            }
            Err(e) => {
                c.publish_errors
                    .fetch_add(publishes.len() as u64, Ordering::Relaxed);
                warn!(error = %e, frames = total_frames, "frame batch write failed; publishers get the error, no seq was assigned");
                for p in publishes {
                    p.answer(Err(e.clone()));
                }
            }
        }
    }

    /// Assigns seqs head+1.. to the frames of `publishes` (stamped `ts`),
    /// encodes them straight into one `WriteBatch` together with all dirty
    /// cursors, writes it, and on success advances head and wakes readers.
    /// Returns each request's seq range, in order.
    fn write(&mut self, publishes: &mut [PublishRequest], ts: u64) -> Result<Vec<SeqRange>, BusError> {
        if self.needs_reopen {
            self.try_reopen()?;
        }
        let shared = self.shared.clone();
        let sh = &shared;
        let db = sh.db()?;
        let mut batch = WriteBatch::default();
        let frames_cf = cf(&db, CF_FRAMES);
        let mut seq = sh.head();
        let mut ranges = Vec::with_capacity(publishes.len());
        for p in publishes.iter_mut() {
            let first = seq + 1;
            for env in p.frames.iter_mut() {
                seq += 1;
                env.sequence_id = seq;
                env.timestamp_ns = ts;
                // One reusable buffer: no allocation per frame.
                self.scratch.clear();
                env.encode_into(&mut self.scratch);
                batch.put_cf(frames_cf, frame_key(seq), &self.scratch);
            }
            ranges.push(SeqRange { first, last: seq });
        }
        let new_head = ranges.last().map(|r| r.last);
        let mut cursor_updates = Vec::new();
        let has_txn = publishes.iter().any(|p| p.txn.is_some());
        // Held across the write so `remove_consumer` cannot interleave and be undone.
        let _cursor_guard;
        let dirty = sh.cursors_dirty.swap(false, Ordering::AcqRel);
        if dirty || has_txn {
            _cursor_guard = sh.cursor_write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let cursors_cf = cf(&db, CF_CURSORS);
            let map = sh.cursors();
            if dirty {
                for (name, st) in map.iter() {
                    if st.acked != st.persisted || st.needs_write {
                        batch.put_cf(cursors_cf, name.as_bytes(), encode_u64(st.acked));
                        cursor_updates.push((name.clone(), st.acked));
                    }
                }
            }
            // Commits: state and cursor in the same batch as their frames. A
            // consumer removed meanwhile gets neither (its keys are gone).
            let state_cf = cf(&db, CF_STATE);
            for txn in publishes.iter().filter_map(|p| p.txn.as_ref()) {
                let Some(st) = map.get(&txn.consumer) else {
                    continue;
                };
                for (key, value) in &txn.state {
                    let k = state_key(&txn.consumer, key);
                    match value {
                        Some(v) => batch.put_cf(state_cf, k, v),
                        None => batch.delete_cf(state_cf, k),
                    }
                }
                if let Some(ack) = txn.ack {
                    // Written after the dirty cursors, so this value wins.
                    let at = ack.max(st.acked);
                    batch.put_cf(cursors_cf, txn.consumer.as_bytes(), encode_u64(at));
                    cursor_updates.push((txn.consumer.clone(), at));
                }
            }
        }
        if batch.is_empty() {
            return Ok(ranges);
        }
        let mut wo = WriteOptions::default();
        let sync = sh.config.sync.fsyncs();
        wo.set_sync(sync);
        if let Err(e) = db.write_opt(batch, &wo) {
            if dirty {
                sh.cursors_dirty.store(true, Ordering::Release);
            }
            self.needs_reopen = true;
            return Err(sh.storage_err(e));
        }
        let c = &sh.counters;
        c.batches_written.fetch_add(1, Ordering::Relaxed);
        if sync {
            c.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if !cursor_updates.is_empty() {
            c.cursor_writes
                .fetch_add(cursor_updates.len() as u64, Ordering::Relaxed);
            let mut map = sh.cursors();
            for (name, acked) in cursor_updates {
                if let Some(st) = map.get_mut(&name) {
                    st.acked = st.acked.max(acked);
                    st.persisted = st.persisted.max(acked);
                    if st.persisted >= st.acked {
                        st.needs_write = false;
                    }
                }
            }
        }
        if let Some(h) = new_head {
            sh.head.store(h, Ordering::Release);
            self.head_tx.send_replace(h);
        }
        Ok(ranges)
    }
}

impl Writer {
    /// Reopens the database after a failed write, once free space allows.
    /// A batch whose write reported an error may still have reached the WAL
    /// (the error can come after the bytes were written); recovery then finds
    /// it and head moves past it, so seqs stay unique and gapless.
    fn try_reopen(&mut self) -> Result<(), BusError> {
        let now = Instant::now();
        if let Some(t) = self.last_reopen_attempt {
            if now.duration_since(t) < Duration::from_millis(500) {
                return Err(BusError::Storage(
                    "waiting to reopen the database after a write error".into(),
                ));
            }
        }
        self.last_reopen_attempt = Some(now);
        let need = self.shared.config.min_free_bytes.max(1 << 20);
        let avail = disk::available_bytes(&self.shared.path).unwrap_or(u64::MAX);
        if avail < need {
            return Err(BusError::DiskFull {
                path: self.shared.path.clone(),
                available: avail,
                required: need,
            });
        }
        let before = self.shared.head();
        let rec = self.shared.reopen()?;
        self.needs_reopen = false;
        self.last_ts = self.last_ts.max(rec.last_ts);
        let head = self.shared.head();
        if head != before {
            self.head_tx.send_replace(head);
        }
        tracing::info!(
            head,
            recovered_past = head - before,
            "frame bus database reopened after a write error"
        );
        Ok(())
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
