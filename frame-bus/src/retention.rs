//! The retention task: deletes frames every consumer acknowledged, and
//! force-drops frames past `max_age` or `max_bytes` (counted and logged).
//!
//! Each pass computes one deletion floor `F` and issues a single range delete
//! `[oldest, F]` together with `meta.deleted_through = F` in one `WriteBatch`,
//! so the floor on disk and the deleted range never disagree. Range deletes
//! are O(1) to write; space comes back when compaction drops the covered
//! files, which the task triggers itself for the deleted range whenever it
//! deleted a lot, or when the size limit is exceeded.
//!
//! * ack floor   = min(persisted cursor of every registered consumer)
//!   (a cursor that only lives in memory does not count: after a crash the
//!   consumer would resume from the persisted one and must find its frames);
//! * age floor   = seq just below the first frame younger than `now - max_age`,
//!   found by binary search over seqs (frame times are non-decreasing);
//! * size floor  = enough of the oldest frames to bring the column family to
//!   90 % of `max_bytes`, estimated from the average stored frame size.
//!
//! Frames between the ack floor and a forced floor are the dropped ones.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};
use tracing::{debug, warn};

use crate::keys::{encode_u64, frame_key, CF_FRAMES, CF_META, META_DELETED_THROUGH};
use crate::store::{cf, now_ns, Shared};
use crate::BusError;

/// Frames deleted in one pass above which the task compacts the range at once.
const COMPACT_AFTER_FRAMES: u64 = 200_000;

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Frames deleted because all consumers acknowledged them.
    pub deleted_acked: u64,
    /// Frames dropped unacknowledged because of `max_age`.
    pub dropped_age: u64,
    /// Frames dropped unacknowledged because of `max_bytes`.
    pub dropped_size: u64,
    /// The new floor (every seq at or below it is gone).
    pub deleted_through: u64,
}

pub(crate) fn run(shared: Arc<Shared>, stop: Receiver<()>) {
    let interval = shared.config.retention.interval;
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = run_once(&shared) {
                    warn!(error = %e, "retention pass failed; retrying next interval");
                }
            }
            // Stop requested, or the handle is gone.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One retention pass (also called directly by `FrameBus::run_retention`).
pub(crate) fn run_once(sh: &Shared) -> Result<RetentionReport, BusError> {
    let _pass = sh.retention_lock.lock().unwrap_or_else(|p| p.into_inner());
    let head = sh.head();
    let floor = sh.deleted_through.load(Ordering::Acquire);
    let mut report = RetentionReport {
        deleted_through: floor,
        ..Default::default()
    };
    if head <= floor {
        return Ok(report);
    }
    let cfg = &sh.config.retention;

    // 1. Acknowledged by every registered consumer.
    let ack_floor = {
        let map = sh.cursors();
        map.values().map(|c| c.persisted).min().unwrap_or(floor)
    }
    .clamp(floor, head);

    // 2. Age.
    let mut age_floor = floor;
    if let Some(max_age) = cfg.max_age {
        let cutoff = now_ns().saturating_sub(u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX));
        age_floor = first_seq_not_older_than(sh, floor + 1, head, cutoff)?.saturating_sub(1);
    }

    // 3. Size.
    let mut size_floor = floor;
    if let Some(max_bytes) = cfg.max_bytes {
        let mut bytes = sh.approx_bytes();
        if bytes > max_bytes && floor > 0 {
            // Space of frames already deleted may not be reclaimed yet: compact first.
            reclaim(sh, floor)?;
            bytes = sh.approx_bytes();
        }
        if bytes > max_bytes {
            let stored = head - floor;
            let avg = (bytes / stored.max(1)).max(1);
            let target = max_bytes / 10 * 9;
            let drop = (bytes - target).div_ceil(avg).min(stored);
            size_floor = floor + drop;
        }
    }

    let forced = age_floor.max(size_floor);
    let new_floor = ack_floor.max(forced).min(head);
    if new_floor <= floor {
        return Ok(report);
    }
    report.deleted_acked = ack_floor.saturating_sub(floor);
    if forced > ack_floor {
        let age_part = age_floor.saturating_sub(ack_floor);
        let size_part = size_floor.saturating_sub(ack_floor.max(age_floor));
        report.dropped_age = age_part;
        report.dropped_size = size_part;
    }

    let db = sh.db()?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf(&db, CF_FRAMES), frame_key(floor + 1), frame_key(new_floor + 1));
    batch.put_cf(cf(&db, CF_META), META_DELETED_THROUGH, encode_u64(new_floor));
    let mut wo = WriteOptions::default();
    wo.set_sync(sh.config.sync.fsyncs());
    db.write_opt(batch, &wo).map_err(|e| sh.storage_err(e))?;
    drop(db);
    sh.deleted_through.fetch_max(new_floor, Ordering::AcqRel);
    report.deleted_through = new_floor;

    let c = &sh.counters;
    c.frames_deleted_acked
        .fetch_add(report.deleted_acked, Ordering::Relaxed);
    c.frames_dropped_age
        .fetch_add(report.dropped_age, Ordering::Relaxed);
    c.frames_dropped_size
        .fetch_add(report.dropped_size, Ordering::Relaxed);
    if forced > ack_floor {
        warn!(
            first_seq = ack_floor + 1,
            last_seq = forced.min(head),
            by_age = report.dropped_age,
            by_size = report.dropped_size,
            "retention dropped frames that not every consumer acknowledged"
        );
    } else {
        debug!(
            through = new_floor,
            frames = report.deleted_acked,
            "deleted acknowledged frames"
        );
    }
    if report.dropped_size > 0 || new_floor - floor >= COMPACT_AFTER_FRAMES {
        // Compaction reclaims the range deleted above (and any earlier one).
        reclaim(sh, new_floor)?;
    }
    Ok(report)
}

/// Flushes memtables and compacts the deleted range so its space is reclaimed.
fn reclaim(sh: &Shared, through: u64) -> Result<(), BusError> {
    // Not DeleteFilesInRange: it may drop a file holding a range tombstone
    // while older copies of the covered keys survive below (rocksdb#3059).
    let db = sh.db()?;
    let cf = cf(&db, CF_FRAMES);
    db.flush_cf(cf).map_err(|e| sh.storage_err(e))?;
    db.compact_range_cf(cf, Some(frame_key(0)), Some(frame_key(through.saturating_add(1))));
    Ok(())
}

/// Binary search over `lo..=hi` for the first frame whose time is `>= cutoff`;
/// returns `hi + 1` if every frame is older. Frame times are non-decreasing in
/// seq order (the writer stamps `max(now, previous)`). Corrupt frames are
/// stepped over (the next readable frame decides).
fn first_seq_not_older_than(sh: &Shared, lo: u64, hi: u64, cutoff: u64) -> Result<u64, BusError> {
    let (mut lo, mut hi_excl) = (lo, hi + 1);
    while lo < hi_excl {
        let mid = lo + (hi_excl - lo) / 2;
        match sh.first_frame_at_or_after(mid, hi)? {
            Some((seq, ts)) if seq < hi_excl => {
                if ts >= cutoff {
                    hi_excl = mid;
                } else {
                    lo = seq + 1;
                }
            }
            // Nothing readable in mid..hi_excl: treat that stretch as old.
            _ => lo = mid + 1,
        }
    }
    Ok(lo)
}
