//! Counters, the publish latency histogram and the [`BusStats`] snapshot
//! that the gateway exports as Prometheus metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket, lock-free histogram (Prometheus semantics: cumulative on export).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        let mut acc = 0;
        for (i, &le) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.buckets[i].load(Relaxed);
            cumulative.push((le, acc));
        }
        HistogramSnapshot {
            buckets: cumulative,
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Cumulative histogram buckets, ready for the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(le, cumulative count)`; the `+Inf` bucket equals `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// Monotonic counters of one bus instance (reset on restart, as Prometheus expects).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_published: AtomicU64,
    pub bytes_published: AtomicU64,
    pub batches_written: AtomicU64,
    pub fsyncs: AtomicU64,
    pub publish_errors: AtomicU64,
    pub disk_full_rejections: AtomicU64,
    pub corrupt_frames: AtomicU64,
    pub malformed_keys: AtomicU64,
    pub corrupt_cursors: AtomicU64,
    pub frames_deleted_acked: AtomicU64,
    pub frames_dropped_age: AtomicU64,
    pub frames_dropped_size: AtomicU64,
    pub cursor_writes: AtomicU64,
    pub publish_latency: Histogram,
}

/// Position of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: String,
    /// Last acknowledged seq (in memory).
    pub cursor: u64,
    /// Last acknowledged seq that is stored in RocksDB.
    pub persisted_cursor: u64,
    /// `head_seq - cursor`.
    pub lag: u64,
    /// Frames this consumer never saw because retention dropped them first.
    pub skipped_dropped: u64,
}

/// A point-in-time view of the bus for metrics and health checks.
#[derive(Debug, Clone, PartialEq)]
pub struct BusStats {
    /// Last assigned sequence number (0 when nothing was ever published).
    pub head_seq: u64,
    /// Lowest sequence number still stored (`head_seq + 1` when empty).
    pub oldest_seq: u64,
    /// Frames currently stored (`head_seq + 1 - oldest_seq`).
    pub stored_frames: u64,
    /// Approximate bytes of the frame column family (SST files + memtables).
    pub approx_bytes: u64,
    pub frames_published_total: u64,
    pub bytes_published_total: u64,
    pub batches_written_total: u64,
    pub fsyncs_total: u64,
    pub publish_errors_total: u64,
    pub disk_full_rejections_total: u64,
    /// Corrupt records met by readers (CRC mismatch, undecodable, seq mismatch);
    /// counted once per reader that met them.
    pub corrupt_frames_total: u64,
    /// Keys in the frame column family outside the `frame:{seq:020}` format.
    pub malformed_keys_total: u64,
    /// Cursor records that could not be decoded at open (their consumer replays).
    pub corrupt_cursors_total: u64,
    /// Frames deleted because every consumer acknowledged them.
    pub frames_deleted_acked_total: u64,
    /// Frames dropped unacknowledged by `max_age`.
    pub frames_dropped_age_total: u64,
    /// Frames dropped unacknowledged by `max_bytes`.
    pub frames_dropped_size_total: u64,
    pub cursor_writes_total: u64,
    pub consumers: Vec<ConsumerStats>,
    pub publish_latency: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_1, 1));
        assert_eq!(s.buckets.iter().find(|b| b.0 == 0.005).unwrap().1, 2);
        assert_eq!(s.buckets.last().unwrap().1, 2, "10 s is only in +Inf");
        assert!((s.sum_seconds - 10.00305).abs() < 1e-9);
    }
}
