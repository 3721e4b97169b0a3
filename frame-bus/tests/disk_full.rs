//! Disk full: the bus on a small tmpfs, filled during ingest.
//!
//! Needs root (to mount a tmpfs). Not root, or mounting refused: the test
//! prints why and fails unless `GATEWAY_ALLOW_SKIP_DISK_FULL=1` is set, so
//! CI (which runs as root) can never skip it silently.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use frame_bus::{BusConfig, BusError, FrameBus};
use proto::FrameType;

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(Tmpfs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn tmpfs_or_explain(size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(t) => Some(t),
        Err(why) => {
            let msg = format!("disk-full test needs a tmpfs mount (root): {why}");
            if std::env::var("GATEWAY_ALLOW_SKIP_DISK_FULL").as_deref() == Ok("1") {
                eprintln!("SKIPPED: {msg}");
                None
            } else {
                panic!("{msg} (set GATEWAY_ALLOW_SKIP_DISK_FULL=1 to skip knowingly)");
            }
        }
    }
}

fn filler(dir: &Path, name: &str, bytes: usize) -> PathBuf {
    let p = dir.join(name);
    // Ignore the error: on a full filesystem the file is as large as fits.
    let _ = std::fs::write(&p, vec![0xA5u8; bytes]);
    p
}

fn small_bus_config(min_free: u64) -> BusConfig {
    BusConfig {
        min_free_bytes: min_free,
        write_buffer_bytes: 256 << 10,
        ..config()
    }
}

/// The free-space guard rejects publishes with a typed error before RocksDB
/// fails; everything acknowledged stays readable; publishing resumes when
/// space is freed, with no gap in seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rejects_when_full_and_resumes_when_space_returns() {
    let Some(fs) = tmpfs_or_explain("24m") else { return };
    let wal = fs.path().join("wal");
    let bus = FrameBus::open(&wal, small_bus_config(2 << 20)).unwrap();
    let ballast = filler(fs.path(), "ballast", 12 << 20);
    let mut acked = Vec::new();
    let mut err = None;
    for i in 1..=100_000u64 {
        match bus.publish(FrameType::Data, payload(i, 2048)).await {
            Ok(seq) => acked.push(seq),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the filesystem filled up");
    assert!(
        matches!(err, BusError::DiskFull { .. }),
        "typed disk-full error, got {err:?}"
    );
    assert!(!acked.is_empty());
    // Still full: rejected again. RocksDB may free a little space in the
    // background (an obsolete WAL file after a flush), so a few more
    // publishes can pass first; each one must continue the seqs without a gap.
    let mut again = None;
    for i in 0..1000u64 {
        let next = *acked.last().unwrap() + 1;
        match bus.publish(FrameType::Data, payload(next, 2048)).await {
            Ok(seq) => acked.push(seq),
            Err(e) => {
                again = Some((i, e));
                break;
            }
        }
    }
    let (_, again) = again.expect("rejected again while the disk stays full");
    assert!(matches!(again, BusError::DiskFull { .. }), "{again:?}");
    let last = *acked.last().unwrap();
    assert_eq!(acked, (1..=last).collect::<Vec<_>>());
    assert_eq!(bus.head_seq(), last, "a rejected publish assigns no seq");
    let st = bus.stats();
    assert!(st.disk_full_rejections_total >= 2);

    std::fs::remove_file(&ballast).unwrap();
    let next = bus
        .publish(FrameType::Data, payload(last + 1, 2048))
        .await
        .unwrap();
    assert_eq!(next, last + 1, "resumes without a gap");

    // Every acknowledged frame is intact, after a reopen too.
    bus.close();
    drop(bus);
    let bus = FrameBus::open(&wal, small_bus_config(2 << 20)).unwrap();
    let mut sub = bus.subscribe("check", None).unwrap();
    for seq in 1..=next {
        let f = sub.recv().await.unwrap();
        assert_eq!((f.sequence_id, f.data.len()), (seq, 2048));
        assert_eq!(f.data, payload(seq, 2048));
    }
    assert_eq!(bus.stats().corrupt_frames_total, 0);
}

/// Without the guard RocksDB itself meets ENOSPC and its instance turns
/// read-only: publish returns an error (no panic), no seq is assigned, and
/// once space is freed the bus reopens the database in-process and publishes
/// again without a gap; every acknowledged frame is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_inside_rocksdb_is_recovered_in_process() {
    let Some(fs) = tmpfs_or_explain("16m") else { return };
    let wal = fs.path().join("wal");
    let bus = FrameBus::open(&wal, small_bus_config(0)).unwrap();
    // A consumer reads live the whole time: while the disk fills, across the
    // reopen, until the first frame published after recovery.
    let mut reader = bus.subscribe("reader", None).unwrap();
    let marker = payload(1_000_000, 4096);
    let expect_marker = marker.clone();
    let live = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let f = tokio::time::timeout(Duration::from_secs(120), reader.recv())
                .await
                .expect("reader kept receiving")
                .expect("no error surfaces to the reader");
            seen.push((f.sequence_id, f.data == expect_marker));
            if f.data == expect_marker {
                return (seen, reader);
            }
        }
    });
    let ballast = filler(fs.path(), "ballast", 8 << 20);
    let mut last = 0;
    let mut failed = None;
    for i in 1..=100_000u64 {
        match bus.publish(FrameType::Data, payload(i, 4096)).await {
            Ok(seq) => {
                assert_eq!(seq, last + 1);
                last = seq;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("rocksdb ran out of space");
    assert!(
        matches!(e, BusError::DiskFull { .. } | BusError::Storage(_)),
        "{e:?}"
    );
    // Still full: still an error.
    assert!(bus.publish(FrameType::Data, vec![1; 16]).await.is_err());
    std::fs::remove_file(&ballast).unwrap();

    // Reopen attempts are spaced 500 ms apart; bounded wait for the next one.
    let mut resumed = None;
    for _ in 0..100 {
        match bus.publish(FrameType::Data, marker.clone()).await {
            Ok(seq) => {
                resumed = Some(seq);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let resumed = resumed.expect("publishing resumed in-process after space was freed");
    // A batch that reported an error may still have reached the WAL; then
    // head moved past it. Either way: no gap, no reuse.
    assert!(
        resumed == last + 1 || resumed == last + 2,
        "resumed at {resumed}, last acked {last}"
    );
    eprintln!("ENOSPC inside RocksDB after seq {last}: {e}; resumed at {resumed}");

    // The live subscription saw every frame, in order, across the reopen.
    let (seen, reader) = live.await.unwrap();
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=resumed).collect::<Vec<_>>());
    drop(reader);
    bus.close();
    drop(bus);
    let bus = FrameBus::open(&wal, small_bus_config(0)).unwrap();
    assert_eq!(bus.head_seq(), resumed);
    let mut sub = bus.subscribe("check", None).unwrap();
    for seq in 1..=last {
        let f = sub.recv().await.unwrap();
        assert_eq!(f.sequence_id, seq);
        assert_eq!(f.data, payload(seq, 4096));
    }
    assert_eq!(bus.stats().corrupt_frames_total, 0);
}
