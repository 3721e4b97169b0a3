//! The fault suite in its short form (CI): each scenario of
//! `tests::faults::scenarios` against the real gateway and real peers must
//! pass — nothing lost, duplicated, invented or altered, and the
//! scenario's own checks (backpressure seen, corruption reported, …).
//! A scenario that cannot run here fails the test: CI runs on a machine
//! that can host all of them. The documented run with all rounds is
//! `scripts/faults.sh` (docs/reliability.md).
//!
//! Scenarios run one at a time (each starts every peer and loads the
//! machine's two cores).

use std::sync::Mutex;

use tests::faults::checker::{check, Observed, Point, STREAM_DEVICE, STREAM_TAG};
use tests::faults::{scenarios, Opts, Verdict};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(name: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_, scenario) = scenarios::all()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("scenario exists");
    let report = scenario(&Opts::short());
    eprintln!("{report}");
    assert_eq!(report.verdict, Verdict::Pass, "\n{report}");
}

#[test]
fn sigkill_at_random_moments_under_load() {
    run("sigkill");
}

#[test]
fn sigterm_restarts_under_load() {
    run("sigterm");
}

#[test]
fn influxdb_down_then_back() {
    run("influx_down");
}

#[test]
fn postgresql_down_then_back() {
    run("postgres_down");
}

#[test]
fn mqtt_broker_restarted() {
    run("broker_restart");
}

#[test]
fn opcua_server_restarted() {
    run("opcua_restart");
}

#[test]
fn modbus_device_unplugged_and_back() {
    run("modbus_unplug");
}

#[test]
fn disk_full_during_ingest_then_space_returns() {
    run("disk_full");
}

#[test]
fn wal_bytes_flipped_while_stopped() {
    run("wal_corruption");
}

#[test]
fn source_timestamps_jump_back_and_ahead() {
    run("clock_jump");
}

#[test]
fn slow_influxdb_backpressure_with_flat_memory() {
    run("slow_sink");
}

/// The checker on synthetic data: a complete store passes; one sample
/// dropped, one number stored twice, one value altered, a frame archived
/// twice, a northbound frame missing, an alert missing in PostgreSQL —
/// each fails with its own count.
#[test]
fn the_checker_catches_every_kind_of_damage() {
    let frame = |seq: u64, n: u64| {
        serde_json::json!({"seq": seq, "type": "DATA", "device": STREAM_DEVICE,
            "samples": [{"tag": STREAM_TAG, "value": n, "ts_ns": (1000 + n) * 1_000_000, "quality": "GOOD"}]})
    };
    let point = |n: u64, ts_ms: u64| Point {
        device: STREAM_DEVICE.into(),
        tag: STREAM_TAG.into(),
        ts_ns: ts_ms * 1_000_000,
        uint: Some(n),
    };
    let fired = serde_json::json!({"seq": 4, "type": "EVENT", "kind": "ALERT_FIRED", "event_id": "e1", "rule_id": "r"});
    let good = Observed {
        archive: vec![frame(1, 1), frame(2, 2), frame(3, 3), fired.clone()],
        stream: vec![(1, 1001), (2, 1002), (3, 1003)],
        influx: vec![point(1, 1001), point(2, 1002), point(3, 1003)],
        north_seqs: vec![1, 2, 3, 3],
        pg_alert_ids: vec!["e1".into()],
        ..Observed::default()
    };
    let c = check(&good);
    assert_eq!(c.verdict(), Verdict::Pass, "{c:?}");
    assert_eq!((c.published, c.stored, c.north_redelivered), (3, 3, 1));

    let mut dropped = good.clone();
    dropped.influx.remove(1);
    let c = check(&dropped);
    assert_eq!(c.lost, 1);
    assert!(matches!(c.verdict(), Verdict::Fail(w) if w.contains("1 lost")));

    let mut twice = good.clone();
    twice.influx.push(point(2, 1500));
    let c = check(&twice);
    assert_eq!((c.duplicated, c.unexpected), (1, 1));
    assert_ne!(c.verdict(), Verdict::Pass);

    let mut altered = good.clone();
    altered.influx[2].uint = Some(7);
    assert_eq!(check(&altered).mismatched, 1);

    let mut repeated = good.clone();
    repeated.archive.push(frame(2, 2));
    assert_eq!(check(&repeated).bus_repeated, 1);

    let mut gap = good.clone();
    gap.archive.remove(1);
    gap.stream.remove(1);
    gap.influx.remove(1);
    assert_eq!(check(&gap).bus_gaps, 1);
    gap.corrupt_seqs.insert(2);
    assert_eq!(check(&gap).bus_gaps, 0, "a seq reported corrupt is not a gap");

    let mut north = good.clone();
    north.north_seqs = vec![1, 3];
    assert_eq!(check(&north).north_missing, 1);

    let mut alert = good.clone();
    alert.pg_alert_ids.clear();
    assert_eq!(check(&alert).alerts_lost, 1);
    let mut double = good.clone();
    let mut again = fired;
    again["seq"] = 5.into();
    again["event_id"] = "e2".into();
    double.archive.push(again);
    double.pg_alert_ids.push("e2".into());
    assert_eq!(check(&double).duplicated, 1, "fired twice without resolving");

    // A confirmed number that never reached the bus is lost too.
    let mut unacked = good.clone();
    unacked.stream.push((4, 1004));
    assert_eq!(check(&unacked).lost, 1);
}
