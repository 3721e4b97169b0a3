//! The `gateway` binary's CLI, run as a real process.

use std::process::Command;

use frame_bus::{BusConfig, FrameBus};
use proto::FrameType;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

#[test]
fn version_prints_the_crate_version() {
    let out = gateway().arg("--version").output().expect("run gateway");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("gateway {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stats_reports_head_and_consumers_without_deleting() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = FrameBus::open(dir.path(), BusConfig::default()).unwrap();
        for _ in 0..5 {
            bus.publish(FrameType::Data, vec![1, 2, 3]).await.unwrap();
        }
        let sub = bus.subscribe("influxdb", None).unwrap();
        sub.ack(2).unwrap();
        drop(sub);
        bus.flush_cursors().await.unwrap();
        bus.close();
    }
    let out = gateway().args(["wal", "stats"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("head_seq      5"), "{text}");
    assert!(text.contains("stored_frames 5"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("consumer influxdb") && l.contains("cursor            2")),
        "{text}"
    );
}

#[test]
fn wal_stats_on_a_missing_directory_is_a_clear_error() {
    let out = gateway()
        .args(["wal", "stats", "/nonexistent/gateway-wal"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such bus directory"));
}
