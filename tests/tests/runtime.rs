//! End-to-end tests of `gateway run` with the demo configuration (simulator
//! devices, file sink): metrics, status API, SIGTERM, SIGKILL + restart,
//! SIGHUP reload, API token. Real binary, real signals, loopback only.

use tests::harness as common;

use std::time::Duration;

use common::{archive_seqs, wal_cursors, wal_frames, DemoDir, Gateway};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn demo_publishes_serves_metrics_and_status_and_stops_cleanly_on_sigterm() {
    let demo = DemoDir::new();
    let mut g = Gateway::start(&demo, &[]);

    // Samples flow: the counter grows between scrapes.
    let mut first = None;
    g.wait_until("samples to increase", LIMIT, |g| {
        let now = g.metric_sum("gateway_samples_published_total").unwrap_or(0.0);
        match first {
            None if now > 0.0 => {
                first = Some(now);
                false
            }
            Some(f) => now > f,
            None => false,
        }
    });
    for family in [
        "gateway_frames_published_total",
        "gateway_wal_head_seq",
        "gateway_wal_fsyncs_total",
        "gateway_consumer_lag_frames",
        "gateway_consumer_cursor_seq",
        "gateway_device_up",
        "gateway_device_poll_duration_seconds_count",
        "gateway_wal_corrupt_frames_total",
        "gateway_wal_dropped_frames_total",
    ] {
        assert!(g.metric_sum(family).is_some(), "metric {family} missing");
    }
    assert_eq!(g.metric_sum("gateway_device_up"), Some(3.0), "three devices up");
    assert_eq!(g.get("/healthz").map(|r| r.0), Some(200));

    // Status: every device and tag, with values once polled.
    g.wait_until("boiler-1 tags to have values", LIMIT, |g| {
        let s = g.status();
        let devices = s["devices"].as_array().unwrap();
        let boiler = devices.iter().find(|d| d["name"] == "boiler-1").unwrap();
        boiler["tags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["value"].is_null())
    });
    let s = g.status();
    assert_eq!(s["gateway_id"], "demo-gw");
    let devices = s["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3);
    let boiler = devices.iter().find(|d| d["name"] == "boiler-1").unwrap();
    assert_eq!(boiler["status"], "Online");
    assert!(boiler["last_poll"].is_string());
    let names: Vec<&str> = boiler["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["water_temp", "pressure", "burner_on", "burner_starts"]);
    let burner = &boiler["tags"][2];
    assert!(burner["value"].is_boolean(), "{burner}");
    assert!(s["wal"]["head_seq"].as_u64().unwrap() > 0);
    let archive = &s["sinks"][0];
    assert_eq!(archive["name"], "archive");
    assert!(archive["cursor"].is_u64(), "{archive}");
    let cursor_before = archive["cursor"].as_u64().unwrap();

    g.signal(libc::SIGTERM);
    let status = g.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0:\n{}", g.log_text());
    assert!(g.log_text().contains("gateway stopped cleanly"));

    // The persisted cursor is where the sink got to, and the archive holds
    // exactly the frames up to it, each once, in order.
    let cursors = wal_cursors(&demo.wal());
    let persisted = cursors["archive"];
    assert!(
        persisted >= cursor_before,
        "persisted {persisted} < {cursor_before} seen before"
    );
    let seqs = archive_seqs(&demo.data().join("archive.jsonl"));
    assert_eq!(seqs.last().copied(), Some(persisted));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "archive has gaps or duplicates"
    );
    assert_eq!(seqs.first().copied(), Some(1));
}

#[test]
fn sigkill_then_restart_continues_the_sequence_without_gap_or_duplicate() {
    let demo = DemoDir::new();
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("some frames", LIMIT, |g| {
        g.metric_sum("gateway_wal_head_seq").unwrap_or(0.0) >= 20.0
    });
    g.signal(libc::SIGKILL);
    let status = g.wait_exit(LIMIT);
    assert_eq!(status.code(), None, "killed by a signal");
    drop(g);

    let before = wal_frames(&demo.wal());
    let head_before = before.last().unwrap()["seq"].as_u64().unwrap();
    assert!(head_before >= 20);

    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("new frames after restart", LIMIT, |g| {
        g.metric_sum("gateway_wal_head_seq").unwrap_or(0.0) >= (head_before + 20) as f64
    });
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(LIMIT).code(), Some(0));

    // Acknowledged frames are deleted by retention, so the archive holds
    // 1..=cursor and the WAL cursor+1..=head: together every seq exactly once.
    let cursor = wal_cursors(&demo.wal())["archive"];
    let archived = archive_seqs(&demo.data().join("archive.jsonl"));
    assert_eq!(archived.first().copied(), Some(1));
    assert!(
        archived.windows(2).all(|w| w[1] == w[0] + 1),
        "archive has gaps or duplicates"
    );
    assert_eq!(archived.last().copied(), Some(cursor));
    let after = wal_frames(&demo.wal());
    let seqs: Vec<u64> = after.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap in the WAL");
    let head = seqs.last().copied().unwrap_or(cursor);
    assert!(
        seqs.first().is_none_or(|&s| s <= cursor + 1),
        "WAL lost frames the sink never acknowledged"
    );
    assert!(head >= head_before + 20, "the sequence continued after the crash");
    assert!(
        after.iter().all(|f| f.get("error").is_none()),
        "undecodable frame"
    );
    // Frames from before the crash that are still stored are unchanged.
    for f in &before {
        if let Some(same) = after.iter().find(|a| a["seq"] == f["seq"]) {
            assert_eq!(same, f, "frame changed across the crash");
        }
    }
}

#[test]
fn sighup_restarts_only_the_device_whose_file_changed() {
    let demo = DemoDir::new();
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("all devices polled", LIMIT, |g| {
        g.status()["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["polls"].as_u64().unwrap_or(0) > 0)
    });
    let before = g.status();
    let started = |s: &serde_json::Value, name: &str| {
        let d = s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap()
            .clone();
        (
            d["config_version"].as_u64().unwrap(),
            d["started_at"].as_str().unwrap().to_string(),
        )
    };

    // A broken edit is rejected as a whole; nothing restarts.
    let file = demo.dir.path().join("devices/conveyor-1.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        original.replace("scan_interval = \"250ms\"", "scan_interval = \"soon\""),
    )
    .unwrap();
    g.signal(libc::SIGHUP);
    g.wait_until("rejected reload", LIMIT, |g| {
        g.metric_sum("gateway_config_reloads_total").unwrap_or(0.0) >= 1.0
    });
    assert!(
        g.log_text().contains("conveyor-1.toml:6:"),
        "reload errors name file and line"
    );
    assert_eq!(started(&g.status(), "conveyor-1"), started(&before, "conveyor-1"));

    std::fs::write(
        &file,
        original.replace("scan_interval = \"250ms\"", "scan_interval = \"500ms\""),
    )
    .unwrap();
    g.signal(libc::SIGHUP);
    g.wait_until("conveyor-1 restarted", LIMIT, |g| {
        started(&g.status(), "conveyor-1").0 == 2
    });
    let after = g.status();
    for other in ["boiler-1", "press-7"] {
        assert_eq!(
            started(&after, other),
            started(&before, other),
            "{other} must not restart"
        );
    }
    assert_ne!(started(&after, "conveyor-1").1, started(&before, "conveyor-1").1);
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(LIMIT).code(), Some(0));
}

#[test]
fn api_token_protects_the_api_but_not_metrics_or_health() {
    let demo = DemoDir::new();
    let cfg = demo.config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("# token = ", "token = ")).unwrap();
    let mut g = Gateway::start(&demo, &[("GATEWAY_API_TOKEN", "s3cret-token")]);
    assert_eq!(g.get("/api/v1/status").unwrap().0, 401);
    assert_eq!(g.get_with("/api/v1/status", Some("wrong")).unwrap().0, 401);
    assert_eq!(g.get_with("/api/v1/status", Some("s3cret-token")).unwrap().0, 200);
    assert_eq!(g.get("/metrics").unwrap().0, 200);
    assert_eq!(g.get("/healthz").unwrap().0, 200);
    g.signal(libc::SIGTERM);
    assert_eq!(g.wait_exit(LIMIT).code(), Some(0));
}

#[test]
fn a_missing_secret_refuses_to_start_with_exit_2() {
    let demo = DemoDir::new();
    let cfg = demo.config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("# token = ", "token = ")).unwrap();
    let out = std::process::Command::new(common::gateway_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("GATEWAY_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GATEWAY_API_TOKEN") && stderr.contains("gateway.toml:"),
        "{stderr}"
    );
    assert!(!demo.wal().exists(), "nothing may start on a config error");
}
