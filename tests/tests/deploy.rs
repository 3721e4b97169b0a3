//! The operator files under `deploy/` against the real binary:
//! the example configurations pass `gateway check`, the packaged default
//! configuration too, the systemd unit passes `systemd-analyze verify`,
//! and every metric the Grafana dashboard queries exists in a live scrape.
//! (The Debian package itself is built and inspected by
//! `scripts/package.sh --check`, which `scripts/test.sh` runs.)

use std::path::Path;
use std::process::Command;

use tests::harness as common;

use common::{gateway_bin, repo_dir};

/// The secrets the examples reference (`${VAR}`), as an operator's
/// `/etc/gateway/env` would provide them.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("GATEWAY_API_TOKEN", "example-token"),
    ("INFLUX_TOKEN", "example-influx-token"),
    ("PG_PASSWORD", "example-pg"),
    ("NORTH_MQTT_PASSWORD", "example-north"),
    ("FLEET_MQTT_PASSWORD", "example-fleet"),
    ("PLC_OPCUA_PASSWORD", "example-plc"),
];

/// A command's stdout and stderr, for assertion messages.
fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `systemd-analyze verify` of the unit file at `path`.
fn verify_unit(path: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .expect("systemd-analyze")
}

fn check(config: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(gateway_bin());
    cmd.args(["check", "--config"]).arg(config).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gateway check")
}

#[test]
fn the_example_configurations_pass_check_and_name_every_missing_secret() {
    let config = repo_dir().join("deploy/examples/gateway.toml");
    let out = check(&config, EXAMPLE_ENV);
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    // Every example device is loaded (one file per RTU slave).
    for device in [
        "energy-meter-main",
        "plc-line-1",
        "cold-store",
        "oven-zone-1",
        "oven-zone-2",
        "oven-zone-3",
    ] {
        assert!(text.contains(device), "{device} not loaded:\n{text}");
    }
    // Without the secrets, each one is named (exit 2), none silently empty.
    let out = check(&config, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for (var, _) in EXAMPLE_ENV {
        assert!(err.contains(var), "{var} not named:\n{err}");
    }
}

#[test]
fn the_compose_lab_configuration_passes_check() {
    // deploy/compose/gateway is mounted as /etc/gateway in the lab; its
    // secrets come from the compose file's environment.
    let config = repo_dir().join("deploy/compose/gateway/gateway.toml");
    let out = check(
        &config,
        &[
            ("GATEWAY_API_TOKEN", "lab-token"),
            ("INFLUX_PASSWORD", "lab-influx"),
            ("PG_PASSWORD", "lab-pg"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_packaged_default_configuration_passes_check() {
    // deploy/debian/etc is what the package installs to /etc/gateway; the
    // data dir is moved into a temp dir (check does not create it anyway).
    let tmp = tempfile::tempdir().unwrap();
    let src = repo_dir().join("deploy/debian/etc");
    std::fs::create_dir(tmp.path().join("devices")).unwrap();
    let toml = std::fs::read_to_string(src.join("gateway.toml")).unwrap();
    assert!(
        toml.contains("data_dir = \"/var/lib/gateway\""),
        "the unit's StateDirectory"
    );
    let data = tmp.path().join("data");
    std::fs::write(
        tmp.path().join("gateway.toml"),
        toml.replace("/var/lib/gateway", &data.display().to_string()),
    )
    .unwrap();
    std::fs::copy(
        src.join("devices/example.toml"),
        tmp.path().join("devices/example.toml"),
    )
    .unwrap();
    let out = check(&tmp.path().join("gateway.toml"), &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    // `systemd-analyze verify` prints warnings (unknown keys, bad values)
    // but exits 0: the test requires it to print nothing at all.
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze not found: install systemd (scripts/lib/common.sh ensure_cargo_deb does)"
    );
    let unit = std::fs::read_to_string(repo_dir().join("deploy/systemd/gateway.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/gateway "),
        "the packaged binary's path"
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gateway.service");
    // ExecStart must name an existing executable: the built one.
    std::fs::write(
        &path,
        unit.replace("/usr/bin/gateway", &gateway_bin().display().to_string()),
    )
    .unwrap();
    let out = verify_unit(&path);
    let text = text(&out);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
    // The same check catches a mistake (so it is not vacuous).
    std::fs::write(
        &path,
        unit.replace("Type=notify", "Type=notifyy")
            .replace("/usr/bin/gateway", &gateway_bin().display().to_string()),
    )
    .unwrap();
    let out = verify_unit(&path);
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "a broken Type= went unnoticed"
    );
}

/// Metric families that only exist after an event this scrape does not
/// provoke (each reason is in `deploy/grafana/check_metrics.py`).
const EVENT_ONLY: &[&str] = &[
    "gateway_device_errors_total",
    "gateway_device_suppressed_samples_total",
    "gateway_device_skipped_ticks_total",
    "gateway_device_writes_total",
    "gateway_task_restarts_total",
    "gateway_sink_write_errors_total",
    "gateway_notifications_total",
    "gateway_mqtt_parse_errors_total",
    "gateway_opcua_bad_values_total",
    "gateway_opcua_read_duration_seconds_bucket",
    "gateway_opcua_read_duration_seconds_sum",
    "gateway_opcua_read_duration_seconds_count",
];

#[test]
fn every_metric_of_the_grafana_dashboard_exists_in_a_live_scrape() {
    // The fault suite's topology: MQTT, Modbus and OPC UA devices, the
    // InfluxDB, PostgreSQL, MQTT and file sinks, alert rules — and a
    // reload — so only event-driven families may be missing.
    let mut t = tests::faults::topology::Topology::new(
        &tests::faults::Opts::short(),
        tests::faults::topology::Setup::default(),
    )
    .expect("topology");
    t.start_gateway();
    t.run_for(std::time::Duration::from_secs(3));
    let g = t.gw();
    g.signal(libc::SIGHUP);
    g.wait_until("the reload counted", std::time::Duration::from_secs(60), |g| {
        g.metric_sum("gateway_config_reloads_total").is_some()
    });
    let (code, body) = g.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    let scrape = t.demo.dir.path().join("scrape.txt");
    std::fs::write(&scrape, body).unwrap();
    let out = Command::new("python3")
        .arg(repo_dir().join("deploy/grafana/check_metrics.py"))
        .arg(repo_dir().join("deploy/grafana/gateway-dashboard.json"))
        .arg(&scrape)
        .arg("--allow")
        .arg(EVENT_ONLY.join(","))
        .output()
        .expect("python3");
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    // The check can fail: a dashboard naming a metric that does not exist.
    let dash = std::fs::read_to_string(repo_dir().join("deploy/grafana/gateway-dashboard.json")).unwrap();
    let broken = t.demo.dir.path().join("broken.json");
    std::fs::write(
        &broken,
        dash.replace("gateway_consumer_lag_frames", "gateway_consumer_lag_framez"),
    )
    .unwrap();
    let out = Command::new("python3")
        .arg(repo_dir().join("deploy/grafana/check_metrics.py"))
        .arg(&broken)
        .arg(&scrape)
        .output()
        .expect("python3");
    assert_eq!(out.status.code(), Some(1), "a misspelt metric passed");
}
