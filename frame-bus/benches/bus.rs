//! Frame bus benchmark with a raw-RocksDB baseline measured in the same run.
//!
//! Run: `scripts/bench.sh` (or `cargo bench -p frame-bus --bench bus`).
//! Environment:
//! * `BENCH_FRAMES`   frames per publish cell (default 400000)
//! * `BENCH_REOPEN`   comma-separated stored-frame counts for the reopen test
//!   (default `1000000,10000000`)
//! * `BENCH_CALL`     frames per publish call in the throughput matrix (default 128)
//! * `BENCH_REPS`     runs per publish cell, medians reported (default 3)
//! * `BENCH_DIR`      where the databases go (default: a temp dir under /var/tmp)
//!
//! Every cell prints the bus figure, the raw baseline and their ratio. The raw
//! baseline writes the same keys and the same encoded envelopes, in
//! `WriteBatch`es of the size the bus actually committed on average in that
//! cell, with the same sync flag, from one thread: what the bus costs over
//! RocksDB itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frame_bus::keys::frame_key;
use frame_bus::{BusConfig, FrameBus, RetentionConfig, StartFrom, SyncMode};
use proto::{FrameEnvelope, FrameType, Message};
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench_config(sync: SyncMode) -> BusConfig {
    BusConfig {
        sync,
        retention: RetentionConfig {
            max_age: None,
            max_bytes: None,
            interval: Duration::from_secs(3600),
        },
        min_free_bytes: 0,
        ..BusConfig::default()
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x % 64) as u8; // partly compressible, like real sample data
    }
    v
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// Raw RocksDB with exactly the bus's options (compression, memtables, CFs),
/// so the ratio measures the bus's own work, not a different configuration.
fn raw_open(path: &Path) -> DB {
    let (opts, cfs) = frame_bus::rocksdb_options(&bench_config(SyncMode::Batch));
    DB::open_cf_descriptors(&opts, path, cfs).expect("raw open")
}

/// The frames of one publish call.
type Call = Vec<(FrameType, Vec<u8>)>;

struct PublishResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    avg_batch: f64,
}

impl PublishResult {
    /// Table cells: bus rate, raw rate, ratio, frames per commit, p50, p99.
    fn row(&self, raw: f64) -> String {
        format!(
            "{:.0} | {:.0} | {:.2} | {:.1} | {:.2} | {:.2}",
            self.rate,
            raw,
            self.rate / raw,
            self.avg_batch,
            self.p50_ms,
            self.p99_ms
        )
    }
}

async fn bench_bus_publish(
    dir: &Path,
    sync: SyncMode,
    size: usize,
    publishers: u64,
    per_call: u64,
    total: u64,
) -> PublishResult {
    let bus = FrameBus::open(dir, bench_config(sync)).expect("open");
    let per_pub = total / publishers;
    // Payloads are generated before the clock starts, as for the raw baseline.
    let mut calls: Vec<Vec<Call>> = (0..publishers)
        .map(|p| {
            let mut v = Vec::new();
            let mut i = 0;
            while i < per_pub {
                let n = per_call.min(per_pub - i);
                v.push(
                    (0..n)
                        .map(|k| (FrameType::Data, payload(p << 32 | (i + k), size)))
                        .collect(),
                );
                i += n;
            }
            v
        })
        .collect();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let bus = bus.clone();
        let my_calls = calls.pop().expect("one set per publisher");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(my_calls.len());
            for frames in my_calls {
                let s = Instant::now();
                bus.publish_batch(frames).await.expect("publish");
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = t0.elapsed();
    let st = bus.stats();
    bus.close();
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    PublishResult {
        rate: (per_pub * publishers) as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        avg_batch: st.frames_published_total as f64 / st.batches_written_total.max(1) as f64,
    }
}

fn bench_raw_publish(dir: &Path, sync: SyncMode, size: usize, total: u64, batch: usize) -> f64 {
    let db = raw_open(dir);
    let cf = db.cf_handle("frames").expect("cf");
    // Pre-encode outside the timed loop: the baseline is RocksDB alone.
    let values: Vec<(u64, Vec<u8>)> = (1..=total)
        .map(|seq| {
            let env = FrameEnvelope::new(seq, seq, FrameType::Data, payload(seq, size));
            (seq, env.encode_to_vec())
        })
        .collect();
    let mut wo = WriteOptions::default();
    wo.set_sync(sync.fsyncs());
    let t0 = Instant::now();
    for chunk in values.chunks(batch.max(1)) {
        let mut wb = WriteBatch::default();
        for (seq, v) in chunk {
            wb.put_cf(cf, frame_key(*seq), v);
        }
        db.write_opt(wb, &wo).expect("raw write");
    }
    total as f64 / t0.elapsed().as_secs_f64()
}

async fn fill(dir: &Path, frames: u64, size: usize) {
    let bus = FrameBus::open(dir, bench_config(SyncMode::None)).expect("open");
    let mut i = 0;
    let mut pending = Vec::new();
    while i < frames {
        let n = 4096.min(frames - i);
        let batch: Vec<_> = (0..n).map(|k| (FrameType::Data, payload(i + k, size))).collect();
        let b = bus.clone();
        pending.push(tokio::spawn(async move {
            b.publish_batch(batch).await.expect("fill")
        }));
        if pending.len() >= 8 {
            for p in pending.drain(..) {
                p.await.expect("task");
            }
        }
        i += n;
    }
    for p in pending {
        p.await.expect("task");
    }
    bus.close();
}

async fn bench_replay(dir: &Path, frames: u64) -> (f64, f64) {
    let bus = FrameBus::open(dir, bench_config(SyncMode::Batch)).expect("open");
    let mut sub = bus.subscribe("replay", Some(StartFrom::Earliest)).expect("sub");
    let t0 = Instant::now();
    let mut n = 0;
    while n < frames {
        n += sub.recv_batch(4096).await.expect("recv").len() as u64;
    }
    let bus_rate = n as f64 / t0.elapsed().as_secs_f64();
    drop(sub);
    bus.close();
    drop(bus);
    let db = raw_open(dir);
    let cf = db.cf_handle("frames").expect("cf");
    let t0 = Instant::now();
    let mut it = db.raw_iterator_cf(cf);
    it.seek_to_first();
    let mut m = 0u64;
    let mut bytes = 0usize;
    while it.valid() {
        bytes += it.value().map_or(0, <[u8]>::len);
        m += 1;
        it.next();
    }
    let raw_rate = m as f64 / t0.elapsed().as_secs_f64();
    assert!(bytes > 0 && m >= frames);
    (bus_rate, raw_rate)
}

/// Open time after an unclean stop (memtables not flushed: WAL replay).
fn bench_reopen_after_crash(dir: &Path, frames: u64) -> Duration {
    // Write a tail through raw RocksDB: with the WAL on, closing does not
    // flush memtables, which is the state a SIGKILL leaves behind.
    {
        let opts = Options::default();
        let db = DB::open_cf(&opts, dir, ["frames", "cursors", "state", "meta"]).expect("raw open");
        let cf = db.cf_handle("frames").expect("cf");
        let mut wb = WriteBatch::default();
        for k in 0..frames {
            let seq = 1_000_000_000 + k;
            let env = FrameEnvelope::new(seq, seq, FrameType::Data, payload(seq, 256));
            wb.put_cf(cf, frame_key(seq), env.encode_to_vec());
        }
        db.write(wb).expect("tail write");
    }
    let t0 = Instant::now();
    let bus = FrameBus::open(dir, bench_config(SyncMode::Batch)).expect("open");
    let t = t0.elapsed();
    bus.close();
    t
}

fn bench_reopen(dir: &Path) -> (Duration, Duration, u64) {
    let t0 = Instant::now();
    let bus = FrameBus::open(dir, bench_config(SyncMode::Batch)).expect("open");
    let bus_open = t0.elapsed();
    let head = bus.head_seq();
    bus.close();
    drop(bus);
    let t0 = Instant::now();
    let db = raw_open(dir);
    let raw_open_t = t0.elapsed();
    drop(db);
    (bus_open, raw_open_t, head)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let total = env_u64("BENCH_FRAMES", 400_000);
    let per_call = env_u64("BENCH_CALL", 128);
    let reps = env_u64("BENCH_REPS", 3).max(1);
    let reopen: Vec<u64> = std::env::var("BENCH_REOPEN")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let base = std::env::var("BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| {
        let p = std::env::temp_dir().join(format!("frame-bus-bench-{}", std::process::id()));
        p
    });
    std::fs::create_dir_all(&base).expect("bench dir");
    let base = Arc::new(base);
    println!(
        "# frame bus benchmark — {total} frames per cell, {per_call} frames per publish call, median of {reps} runs"
    );
    println!("## publish");
    println!("| size B | mode | publishers | bus frames/s | raw frames/s | bus/raw | avg frames/commit | p50 call ms | p99 call ms |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for size in [64usize, 256, 1024] {
        for (mode, name) in [(SyncMode::Batch, "batch"), (SyncMode::None, "none")] {
            for publishers in [1u64, 4, 16] {
                // `reps` alternating bus/raw runs; the medians are reported,
                // which keeps one fsync hiccup of the VM disk out of the ratio.
                let mut runs = Vec::new();
                for _ in 0..reps {
                    let dir = fresh(&base, "bus");
                    let r = bench_bus_publish(&dir, mode, size, publishers, per_call, total).await;
                    let rdir = fresh(&base, "raw");
                    let raw = bench_raw_publish(&rdir, mode, size, total, r.avg_batch.round() as usize);
                    runs.push((r, raw));
                }
                let mut raws: Vec<f64> = runs.iter().map(|x| x.1).collect();
                raws.sort_by(f64::total_cmp);
                let raw = raws[raws.len() / 2];
                runs.sort_by(|a, b| a.0.rate.total_cmp(&b.0.rate));
                let r = &runs[runs.len() / 2].0;
                println!("| {size} | {name} | {publishers} | {} |", r.row(raw));
            }
        }
    }
    // Single-frame publish calls: what a driver publishing one frame per call sees.
    println!("\n## single-frame publish calls (256 B, batch mode)");
    println!("| publishers | bus frames/s | raw frames/s | bus/raw | avg frames/commit | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for publishers in [1u64, 16, 64] {
        let n = (total / 20).max(publishers * 100);
        let dir = fresh(&base, "bus");
        let r = bench_bus_publish(&dir, SyncMode::Batch, 256, publishers, 1, n).await;
        let rdir = fresh(&base, "raw");
        let raw = bench_raw_publish(&rdir, SyncMode::Batch, 256, n, r.avg_batch.round() as usize);
        println!("| {publishers} | {} |", r.row(raw));
    }
    println!("\n## replay (256 B frames, stored backlog read from the start)");
    println!("| frames | bus frames/s | raw iterator frames/s | bus/raw |");
    println!("|---:|---:|---:|---:|");
    let dir = fresh(&base, "replay");
    let n = total.max(1_000_000);
    fill(&dir, n, 256).await;
    let (bus, raw) = bench_replay(&dir, n).await;
    println!("| {n} | {bus:.0} | {raw:.0} | {:.2} |", bus / raw);
    let _ = std::fs::remove_dir_all(&dir);

    println!("\n## reopen (256 B frames stored)");
    println!("| stored frames | bus open ms | raw RocksDB open ms | recovered head | bus open after unclean stop with 100k-frame WAL tail, ms |");
    println!("|---:|---:|---:|---:|---:|");
    for n in reopen {
        let dir = fresh(&base, "reopen");
        fill(&dir, n, 256).await;
        let (bus, raw, head) = bench_reopen(&dir);
        assert_eq!(head, n);
        let crash = bench_reopen_after_crash(&dir, 100_000);
        println!(
            "| {n} | {:.1} | {:.1} | {head} | {:.1} |",
            bus.as_secs_f64() * 1e3,
            raw.as_secs_f64() * 1e3,
            crash.as_secs_f64() * 1e3
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&*base);
}
