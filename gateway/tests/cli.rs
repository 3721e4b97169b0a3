//! The `gateway` binary's CLI, run as a real process: `--version`, `--help`,
//! `check` (exit codes, every error printed), and the `wal` subcommands.

use std::path::Path;
use std::process::{Command, Output};

use frame_bus::{BusConfig, FrameBus};
use proto::{DataFrame, FrameType, Message, Sample, Value};

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn version_prints_the_crate_version() {
    let out = gateway().arg("--version").output().expect("run gateway");
    assert!(out.status.success());
    assert_eq!(
        text(&out).0.trim(),
        format!("gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_is_available_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["check", "--help"],
        vec!["wal", "--help"],
        vec!["wal", "tail", "--help"],
        vec!["wal", "set-cursor", "--help"],
        vec!["db", "--help"],
        vec!["db", "migrate", "--help"],
        vec!["db", "status", "--help"],
        vec!["dead-letter", "--help"],
    ] {
        let out = gateway().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out).0.contains("Usage:"), "{args:?}");
    }
}

fn demo() -> std::path::PathBuf {
    manifest_dir().join("../deploy/demo/gateway.toml")
}

#[test]
fn check_accepts_the_demo_and_prints_a_summary() {
    let out = gateway()
        .arg("check")
        .arg("--config")
        .arg(demo())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("devices      3 (9 tags)"), "{stdout}");
    assert!(
        stdout.contains("boiler-1") && stdout.contains("simulator"),
        "{stdout}"
    );
    assert!(stdout.contains("archive") && stdout.contains("file"), "{stdout}");
    assert!(stdout.contains("alert rules  3"), "{stdout}");
    assert!(stdout.contains("burner_on and water_temp > 90"), "{stdout}");
    assert!(
        stdout.contains("alert-hook") && stdout.contains("webhook"),
        "{stdout}"
    );
}

#[test]
fn check_exits_2_and_prints_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "[wal]\nmax_age = \"fast\"\n").unwrap();
    std::fs::write(
        dir.path().join("devices/a.toml"),
        "name = \"a\"\nprotocol = \"simulator\"\nendpoint = \"sim://a\"\n\n[[tags]]\nname = \"t\"\n\
         address = \"sine\"\ndata_type = \"Double\"\nscalng = 2.0\n",
    )
    .unwrap();
    let out = gateway()
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("gateway.toml:2:"), "{stderr}");
    assert!(
        stderr.contains("`wal.max_age`") && stderr.contains("invalid duration"),
        "{stderr}"
    );
    assert!(stderr.contains("a.toml:9:"), "{stderr}");
    assert!(
        stderr.contains("`tags[0].scalng`") && stderr.contains("did you mean `scaling`"),
        "{stderr}"
    );
    assert!(stderr.contains("2 configuration errors"), "{stderr}");
}

#[test]
fn run_with_a_broken_config_exits_2_without_starting() {
    let out = gateway()
        .args(["run", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/gateway.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

fn sample_frame(i: u64) -> Vec<u8> {
    DataFrame {
        device_id: "boiler-1".into(),
        samples: vec![Sample {
            tag: "temp".into(),
            value: Some(Value::float(20.0 + i as f64)),
            raw_value: None,
            quality: 0,
            source_ts_ns: 1_700_000_000_000_000_000 + i,
            error_code: 0,
        }],
    }
    .encode_to_vec()
}

async fn bus_with_frames(dir: &Path, n: u64) {
    let bus = FrameBus::open(dir, BusConfig::default()).unwrap();
    for i in 1..=n {
        bus.publish(FrameType::Data, sample_frame(i)).await.unwrap();
    }
    let sub = bus.subscribe("influxdb", None).unwrap();
    sub.ack(2).unwrap();
    drop(sub);
    bus.flush_cursors().await.unwrap();
    bus.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_stat_tail_cursors_and_set_cursor() {
    let dir = tempfile::tempdir().unwrap();
    bus_with_frames(dir.path(), 5).await;
    let wal = |args: &[&str]| {
        gateway()
            .arg("wal")
            .args(args)
            .arg("--wal-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };

    let out = wal(&["stat"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("head_seq       5"), "{stdout}");
    assert!(stdout.contains("stored_frames  5"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("consumer influxdb") && l.contains("cursor            2")),
        "{stdout}"
    );

    let out = wal(&["stat", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["head_seq"], 5);
    assert_eq!(v["consumers"][0]["lag"], 3);

    // tail: the last 2 frames, decoded, as JSON Lines.
    let out = wal(&["tail", "-n", "2", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["seq"], 4);
    assert_eq!(lines[1]["device"], "boiler-1");
    assert_eq!(lines[1]["samples"][0]["value"], 25.0);
    assert_eq!(lines[1]["samples"][0]["quality"], "GOOD");

    let out = wal(&["tail", "--from", "3"]);
    let stdout = text(&out).0;
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.lines().next().unwrap().starts_with("#3 "), "{stdout}");
    assert!(stdout.contains("boiler-1 temp=23.0"), "{stdout}");

    let out = wal(&["set-cursor", "influxdb", "4"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let out = wal(&["set-cursor", "influxdb", "99"]);
    assert_eq!(out.status.code(), Some(1), "beyond head must fail");
    let out = wal(&["cursors", "--json"]);
    let v: serde_json::Value = serde_json::from_str(text(&out).0.trim()).unwrap();
    assert_eq!(v["name"], "influxdb");
    assert_eq!(v["cursor"], 4);
    assert_eq!(v["lag"], 1);

    let out = wal(&["remove-consumer", "influxdb"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(text(&wal(&["cursors"])).0, "", "cursor deleted");
    assert_eq!(wal(&["remove-consumer", "influxdb"]).status.code(), Some(1));
}

#[test]
fn wal_stat_on_a_missing_directory_is_a_clear_runtime_error() {
    let out = gateway()
        .args(["wal", "stat", "--wal-dir", "/nonexistent/gateway-wal"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no frame bus in this directory"), "{stderr}");
}

#[test]
fn set_cursor_on_a_mistyped_path_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("wall");
    let out = gateway()
        .args(["wal", "set-cursor", "influxdb", "1", "--wal-dir"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("no frame bus in this directory"));
    assert!(!typo.exists(), "set-cursor must not create a bus");
}

/// This package's directory, read when the test runs (cargo sets it), not
/// baked in at compile time: the target dir is shared between checkouts, so a
/// test binary built in another clone must still find this clone's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn db_commands_need_a_postgres_sink() {
    // The demo without its (disabled) postgres sink.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    let demo_dir = manifest_dir().join("../deploy/demo");
    for e in std::fs::read_dir(demo_dir.join("devices")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join("devices").join(e.file_name())).unwrap();
    }
    let toml = std::fs::read_to_string(demo_dir.join("gateway.toml")).unwrap();
    let cut = toml.find("[sinks.pg]").expect("the demo has a postgres sink");
    let end = toml[cut..].find("\n\n").map_or(toml.len(), |i| cut + i);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, format!("{}{}", &toml[..cut], &toml[end..])).unwrap();

    let out = gateway()
        .args(["db", "migrate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("has no postgres sink"), "{stderr}");
    // The demo's own sink is disabled, but named: a wrong name is an error.
    let out = gateway()
        .args(["db", "status", "--sink", "nope", "--config"])
        .arg(demo())
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no postgres sink named \"nope\""), "{stderr}");
}

/// `gateway check | head -1`: the reader closes the pipe early. The command
/// ends quietly (SIGPIPE, or done before it), it does not panic on EPIPE.
#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/gateway.toml");
    let mut child = gateway()
        .args(["check", "--config"])
        .arg(&demo)
        .env("GATEWAY_DATA_DIR", std::env::temp_dir().join("gw-cli-pipe"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gateway check");
    // Close the read end before the child writes its summary.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}
