//! A consumer's view of the bus: backlog from disk, then live frames.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proto::FrameEnvelope;
use tokio::sync::watch;
use tracing::warn;

use crate::store::Shared;
use crate::BusError;

/// Frames read from RocksDB per refill of the subscription's buffer.
const READ_CHUNK: usize = 1024;

/// A named consumer reading from its cursor.
///
/// Frames arrive in seq order, each verified (CRC, seq). `recv` first drains
/// the stored backlog after the cursor, then waits for new frames without
/// polling (the writer broadcasts every new head). Acknowledge with
/// [`Subscription::ack`] once the frame's effects are durable downstream; a
/// restart resumes after the last *persisted* ack, so delivery is
/// at-least-once. Dropping the subscription releases the consumer name (the
/// cursor stays registered, so retention keeps its unacknowledged frames;
/// use [`crate::FrameBus::remove_consumer`] to unregister).
pub struct Subscription {
    shared: Arc<Shared>,
    name: String,
    /// Next seq to read.
    next: u64,
    head_rx: watch::Receiver<u64>,
    buffer: VecDeque<FrameEnvelope>,
    wakeup: Arc<tokio::sync::Notify>,
}

impl Subscription {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: String,
        next: u64,
        head_rx: watch::Receiver<u64>,
        wakeup: Arc<tokio::sync::Notify>,
    ) -> Self {
        Subscription {
            shared,
            name,
            next,
            head_rx,
            buffer: VecDeque::new(),
            wakeup,
        }
    }

    /// The consumer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The seq the next delivered frame will have at the earliest.
    pub fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |f| f.sequence_id)
    }

    /// Next frame; waits for one if the consumer is caught up.
    /// Returns [`BusError::Closed`] once the bus is closed and drained.
    pub async fn recv(&mut self) -> Result<FrameEnvelope, BusError> {
        loop {
            if let Some(f) = self.buffer.pop_front() {
                return Ok(f);
            }
            self.fill(READ_CHUNK).await?;
        }
    }

    /// Up to `max` frames (at least one); waits if the consumer is caught up.
    pub async fn recv_batch(&mut self, max: usize) -> Result<Vec<FrameEnvelope>, BusError> {
        let max = max.max(1);
        if self.buffer.is_empty() {
            self.fill(max.max(READ_CHUNK)).await?;
        }
        let n = max.min(self.buffer.len());
        Ok(self.buffer.drain(..n).collect())
    }

    /// Frames available now, without waiting (possibly none).
    pub fn try_recv_batch(&mut self, max: usize) -> Result<Vec<FrameEnvelope>, BusError> {
        if self.buffer.is_empty() {
            match self.read_available(max.max(1)) {
                Ok(_) | Err(BusError::Unavailable) => {}
                Err(e) => return Err(e),
            }
        }
        let n = max.min(self.buffer.len());
        Ok(self.buffer.drain(..n).collect())
    }

    async fn fill(&mut self, chunk: usize) -> Result<(), BusError> {
        loop {
            match self.read_available(chunk) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // The writer is reopening the database: wait it out, asynchronously.
                Err(BusError::Unavailable) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if self.head_rx.changed().await.is_err() {
                // Writer gone: deliver what is still stored, then report closed.
                if self.read_available(chunk)? {
                    return Ok(());
                }
                return Err(BusError::Closed);
            }
        }
    }

    /// Reads from `next` up to the current head; true if frames were buffered.
    fn read_available(&mut self, chunk: usize) -> Result<bool, BusError> {
        loop {
            let head = *self.head_rx.borrow_and_update();
            if self.next > head {
                return Ok(false);
            }
            let oldest = self.shared.oldest();
            if self.next < oldest {
                let skipped = oldest - self.next;
                warn!(
                    consumer = %self.name,
                    first_seq = self.next,
                    last_seq = oldest - 1,
                    frames = skipped,
                    "frames were dropped by retention before this consumer read them"
                );
                if let Some(st) = self.shared.cursors().get_mut(&self.name) {
                    st.skipped_dropped += skipped;
                }
                self.next = oldest;
                if self.next > head {
                    return Ok(false);
                }
            }
            let out = self.shared.read_range(self.next, head, chunk, &self.name)?;
            let got = !out.frames.is_empty();
            self.next = if out.reached_end {
                head + 1
            } else {
                out.last_examined.map_or(head + 1, |s| s + 1)
            };
            self.buffer.extend(out.frames);
            if got {
                return Ok(true);
            }
        }
    }

    /// Acknowledges every frame up to and including `seq`. Cheap: the cursor
    /// is persisted by the writer within `cursor_flush_interval` (or with the
    /// next frame batch). Acks never move a cursor backwards.
    pub fn ack(&self, seq: u64) -> Result<(), BusError> {
        let head = self.shared.head();
        if seq > head {
            return Err(BusError::AckBeyondHead { seq, head });
        }
        let mut map = self.shared.cursors();
        if let Some(st) = map.get_mut(&self.name) {
            if seq > st.acked {
                st.acked = seq;
                drop(map);
                self.shared.cursors_dirty.store(true, Ordering::Release);
                self.wakeup.notify_one();
            }
        }
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(st) = self.shared.cursors().get_mut(&self.name) {
            st.active = false;
        }
    }
}
