//! Helpers shared by the frame bus integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use frame_bus::{BusConfig, FrameBus, RetentionConfig};
use proto::FrameType;

/// A config whose background retention never runs during a test
/// (tests call `run_retention` themselves, so results are deterministic).
pub fn config() -> BusConfig {
    BusConfig {
        retention: retention(None, None, Duration::from_secs(3600)),
        min_free_bytes: 0,
        write_buffer_bytes: 4 << 20,
        ..BusConfig::default()
    }
}

/// Retention limits and pass interval, spelled compactly.
pub fn retention(max_age: Option<Duration>, max_bytes: Option<u64>, interval: Duration) -> RetentionConfig {
    RetentionConfig {
        max_age,
        max_bytes,
        interval,
    }
}

pub fn open(dir: &Path) -> FrameBus {
    FrameBus::open(dir, config()).expect("open bus")
}

/// Payload whose content is derived from `i`, so a test can check it.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut v = format!("frame-{i}-").into_bytes();
    while v.len() < len {
        v.push((i.wrapping_mul(31).wrapping_add(v.len() as u64) % 251) as u8);
    }
    v.truncate(len.max(1));
    v
}

/// Opens the bus directory with plain RocksDB (bus closed), for tampering.
pub fn raw_db(dir: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(
        &opts,
        dir,
        [
            frame_bus::column_families::FRAMES,
            frame_bus::column_families::CURSORS,
            frame_bus::column_families::STATE,
            frame_bus::column_families::META,
        ],
    )
    .expect("open raw rocksdb")
}

pub async fn publish_n(bus: &FrameBus, from: u64, n: u64, len: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in from..from + n {
        seqs.push(
            bus.publish(FrameType::Data, payload(i, len))
                .await
                .expect("publish"),
        );
    }
    seqs
}
