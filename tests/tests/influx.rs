//! The InfluxDB sink end to end: the real `gateway` binary with a
//! simulator device writes to a private `influxd` 1.x (v1 API) or
//! VictoriaMetrics (v2 API) on loopback; the tests query the points back
//! and compare them with the ground truth: a file sink on the same bus
//! (`archive.jsonl`, every frame exactly once — tested in runtime.rs),
//! read after the device was stopped and both sinks caught up.

use tests::harness as common;

use std::collections::HashMap;
use std::time::Duration;

use common::peers::{Influxd, VictoriaMetrics};
use common::{tag_samples, DemoDir, Gateway};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

fn line_device() -> (String, String) {
    (
        "line-1".into(),
        r#"name = "line-1"
protocol = "simulator"
endpoint = "sim://line-1"
location = "Hall 3"
scan_interval = "50ms"

[[tags]]
name = "temp"
address = "constant"
data_type = "Double"
value = 21.5
unit = "°C"

[[tags]]
name = "count"
address = "counter"
data_type = "UInt32"
base = 1
step = 1

[[tags]]
name = "on"
address = "constant"
data_type = "Boolean"
value = true

[[tags]]
name = "mode"
address = "constant"
data_type = "String"
value = "AUTO"
"#
        .into(),
    )
}

use common::ARCHIVE_SINK as ARCHIVE;

fn sink_v1(url: &str) -> String {
    format!(
        "{ARCHIVE}\n[sinks.influx]\ntype = \"influxdb\"\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"gw\"\n\
         batch_lines = 200\nflush_interval = \"100ms\"\nmax_retry_interval = \"500ms\"\n\
         [sinks.influx.tags]\ngateway_id = \"test-gw\"\n"
    )
}

/// Stops the device (SIGHUP with `enabled = false`) and waits until every
/// sink caught up; the gateway goes on running. Returns the device file's
/// original text (see [`restore_device`]).
fn quiesce(g: &mut Gateway, demo: &DemoDir) -> String {
    let path = demo.dir.path().join("devices/line-1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\n", "\nenabled = false\n", 1)).unwrap();
    g.signal(libc::SIGHUP);
    g.wait_until("device stopped", LIMIT, |g| {
        g.metric_sum("gateway_device_up") == Some(0.0)
    });
    g.wait_until("every sink caught up", LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames") == Some(0.0)
    });
    text
}

/// Puts back the device file [`quiesce`] changed.
fn restore_device(demo: &DemoDir, text: String) {
    std::fs::write(demo.dir.path().join("devices/line-1.toml"), text).unwrap();
}

/// [`quiesce`], then stops the gateway cleanly and restores the device file.
fn quiesce_and_stop(mut g: Gateway, demo: &DemoDir) {
    let text = quiesce(&mut g, demo);
    stop(g);
    restore_device(demo, text);
}

/// Samples of `device` in the archive: `tag → [(source_ts_ns, value)]`.
fn truth(demo: &DemoDir, device: &str) -> HashMap<String, Vec<(u64, Value)>> {
    let mut out: HashMap<String, Vec<(u64, Value)>> = HashMap::new();
    for f in common::archive_frames(&demo.data()) {
        if f["type"] != "DATA" || f["device"] != device {
            continue;
        }
        for s in f["samples"].as_array().unwrap() {
            out.entry(s["tag"].as_str().unwrap().to_string())
                .or_default()
                .push((s["ts_ns"].as_u64().unwrap(), s["value"].clone()));
        }
    }
    out
}

fn count(influx: &Influxd, tag: &str) -> u64 {
    influx
        .rows(
            "gw",
            &format!("SELECT count(quality) FROM device_data WHERE tag_name = '{tag}'"),
        )
        .first()
        .and_then(|r| r["count"].as_u64())
        .unwrap_or(0)
}

fn stop(mut g: Gateway) {
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(LIMIT).success(), "{}", g.log_text());
}

#[test]
fn v1_writes_exact_values_types_and_timestamps_once() {
    let tmp = tempfile::tempdir().unwrap();
    let influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    let demo = DemoDir::with_gateway(&[line_device()], &sink_v1(&influx.url));
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("20 temp points in influxd", LIMIT, |_| {
        count(&influx, "temp") >= 20
    });
    // An event: a write the simulator refuses is recorded as COMMAND_RESULT.
    let (code, _) = g.post_json("/api/v1/devices/line-1/tags/temp/write", &json!({"value": 1.0}));
    assert_eq!(code, 409);
    quiesce_and_stop(g, &demo);
    let all = influx.rows("gw", "SELECT * FROM alert_events");
    // The quiescing reload is audited too (an AUDIT event); it is checked
    // by the PostgreSQL tests, here only the write's result matters.
    assert!(all.iter().any(|e| e["event_type"] == "AUDIT"), "{all:?}");
    let events: Vec<_> = all.into_iter().filter(|e| e["event_type"] != "AUDIT").collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(
        (
            e["event_type"].clone(),
            e["status"].clone(),
            e["device_id"].clone(),
            e["tag_name"].clone()
        ),
        (
            json!("COMMAND_RESULT"),
            json!("unsupported"),
            json!("line-1"),
            json!("temp")
        )
    );
    assert_eq!(e["value"].as_f64(), Some(1.0));
    assert!(
        e["message"].as_str().unwrap().contains("does not accept writes"),
        "{e:?}"
    );

    let wal = truth(&demo, "line-1");
    for tag in ["temp", "count", "on", "mode"] {
        assert_eq!(
            count(&influx, tag),
            wal[tag].len() as u64,
            "{tag}: every sample once"
        );
    }
    // Exact values, types, tags and timestamps.
    let temp = influx.rows(
        "gw",
        "SELECT value, quality, error_code, unit, location, protocol, gateway_id, device_id FROM device_data WHERE tag_name = 'temp'",
    );
    let wal_ts: Vec<u64> = wal["temp"].iter().map(|(ts, _)| *ts).collect();
    let influx_ts: Vec<u64> = temp.iter().map(|r| r["time"].as_u64().unwrap()).collect();
    assert_eq!(influx_ts, wal_ts, "timestamps are the samples' source times");
    let r = &temp[0];
    assert_eq!(r["value"], json!(21.5));
    assert_eq!(
        (r["quality"].clone(), r["error_code"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(r["unit"], "°C");
    assert_eq!(r["location"], "Hall 3");
    assert_eq!(r["protocol"], "simulator");
    assert_eq!(r["gateway_id"], "test-gw");
    assert_eq!(r["device_id"], "line-1");
    // The counter: exact integers 1, 2, 3, … with no gap.
    let counts: Vec<u64> = influx
        .rows(
            "gw",
            "SELECT value_uint FROM device_data WHERE tag_name = 'count'",
        )
        .iter()
        .map(|r| r["value_uint"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        (1..=counts.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let on = influx.rows(
        "gw",
        "SELECT value_bool FROM device_data WHERE tag_name = 'on' LIMIT 1",
    );
    assert_eq!(on[0]["value_bool"], json!(true));
    let mode = influx.rows(
        "gw",
        "SELECT value_str FROM device_data WHERE tag_name = 'mode' LIMIT 1",
    );
    assert_eq!(mode[0]["value_str"], "AUTO");
    // Field types as InfluxDB stored them.
    let keys = influx.rows("gw", "SHOW FIELD KEYS FROM device_data");
    let types: HashMap<String, String> = keys
        .iter()
        .map(|r| {
            (
                r["fieldKey"].as_str().unwrap().to_string(),
                r["fieldType"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(types["value"], "float");
    assert_eq!(types["value_bool"], "boolean");
    assert_eq!(types["value_str"], "string");
    assert_eq!(types["quality"], "integer");
}

#[test]
fn sigkill_and_an_outage_lose_nothing_and_store_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    let demo = DemoDir::with_gateway(&[line_device()], &sink_v1(&influx.url));
    for round in 0..3 {
        let mut g = Gateway::start(&demo, &[]);
        let before = count(&influx, "temp");
        g.wait_until(&format!("round {round}: points flow"), LIMIT, |_| {
            count(&influx, "temp") > before + 5
        });
        g.signal(libc::SIGKILL);
        g.wait_exit(LIMIT);
    }
    // An outage: the sink retries, frames wait in the WAL, lag rises and falls.
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("caught up after the kills", LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames")
            .is_some_and(|l| l < 5.0)
    });
    influx.stop();
    g.wait_until("lag to grow during the outage", LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames")
            .is_some_and(|l| l > 20.0)
    });
    assert!(g.metric_sum("gateway_sink_retries_total").unwrap() > 0.0);
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"gateway_sink_write_errors_total{sink="influx",cause="network"}"#),
        "{metrics}"
    );
    assert!(g.metric_sum("gateway_sink_write_duration_seconds_count").unwrap() > 0.0);
    influx.restart();
    g.wait_until("lag back to ~0", LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames")
            .is_some_and(|l| l < 5.0)
    });
    quiesce_and_stop(g, &demo);
    let wal = truth(&demo, "line-1");
    for tag in ["temp", "count", "on", "mode"] {
        assert_eq!(
            count(&influx, tag),
            wal[tag].len() as u64,
            "{tag}: every sample of 4 runs exactly once"
        );
    }
}

#[test]
fn a_point_the_server_refuses_is_dead_lettered_and_the_rest_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    // `value_str` becomes an integer field: the string tag's points conflict.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    influx.write("gw", &format!("device_data,tag_name=seed value_str=1i {now}\n"));
    let demo = DemoDir::with_gateway(&[line_device()], &sink_v1(&influx.url));
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("dead letters", LIMIT, |g| {
        g.metric_sum("gateway_sink_dead_lettered_total").unwrap_or(0.0) >= 3.0
    });
    g.wait_until("other points flow", LIMIT, |_| count(&influx, "temp") >= 20);
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"gateway_sink_write_errors_total{sink="influx",cause="refused"}"#),
        "{metrics}"
    );
    g.wait_until("the cursor keeps up", LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames")
            .is_some_and(|l| l < 5.0)
    });
    let text = quiesce(&mut g, &demo);
    // Exactly the string points were refused (bad-input matrix row 4, see
    // bad_input.rs): one dead letter, one counter increment and one
    // warning each.
    let modes = tag_samples(&common::archive_frames(&demo.data()), "line-1", "mode").len();
    let dead = std::fs::read_to_string(demo.data().join("dead-letter/influx.jsonl")).unwrap();
    let lines: Vec<Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 3);
    for l in &lines {
        assert!(l["line"].as_str().unwrap().contains("tag_name=mode"), "{l}");
        assert!(l["error"].as_str().unwrap().contains("conflict"), "{l}");
    }
    assert_eq!(lines.len(), modes, "one dead letter per string point");
    assert_eq!(
        g.metric("gateway_sink_dead_lettered_total", &[("sink", "influx")]),
        Some(modes as f64)
    );
    // Every refused request (batches before they were split, and single lines) counts.
    let refused = g
        .metric(
            "gateway_sink_write_errors_total",
            &[("sink", "influx"), ("cause", "refused")],
        )
        .unwrap_or(0.0);
    assert!(
        refused >= modes as f64,
        "{refused} refused requests for {modes} lines"
    );
    let log = g.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("line refused by the server; dead-lettered"))
        .collect();
    assert_eq!(
        warnings.len(),
        modes,
        "one warning per dead letter: {warnings:#?}"
    );
    for want in ["WARN", "influx", "tag_name=mode", "conflict"] {
        assert!(warnings[0].contains(want), "{want:?} not in {:?}", warnings[0]);
    }
    // Refused lines do not make the sink unhealthy.
    assert_eq!(
        g.status()["sinks"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "influx").cloned())
            .map(|s| s["healthy"].clone()),
        Some(json!(true))
    );
    stop(g);
    restore_device(&demo, text);
    // The rest flowed: every numeric point is stored once, none of the refused ones.
    assert_eq!(count(&influx, "mode"), 0);
    assert_eq!(
        count(&influx, "temp"),
        truth(&demo, "line-1")["temp"].len() as u64
    );

    // The operator sees them, fixes the cause and replays them.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::gateway_bin())
            .arg("dead-letter")
            .args(args)
            .arg("--config")
            .arg(demo.config())
            .env("GATEWAY_DATA_DIR", demo.data())
            .env("GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = cli(&["list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("influx               {} lines", lines.len())),
        "{text}"
    );
    assert!(text.contains("archive              0 lines"), "{text}");
    // Still conflicting: nothing goes through, every line is kept.
    let (ok, text) = cli(&["replay", "--sink", "influx"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("0 lines written, {} still refused", lines.len())),
        "{text}"
    );
    influx.query("gw", "DROP MEASUREMENT device_data");
    let (ok, text) = cli(&["replay", "--sink", "influx"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{} lines written, 0 still refused", lines.len())),
        "{text}"
    );
    assert_eq!(count(&influx, "mode"), lines.len() as u64);
    let (_, text) = cli(&["list"]);
    assert!(text.contains("influx               0 lines"), "{text}");
}

#[test]
fn v2_api_into_victoria_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = VictoriaMetrics::start(tmp.path());
    let sink = format!(
        "{ARCHIVE}\n[sinks.vm]\ntype = \"influxdb\"\nurl = \"{}\"\napi = \"v2\"\norg = \"plant\"\nbucket = \"gw\"\n\
         token = \"secret\"\nbatch_lines = 200\nflush_interval = \"100ms\"\n",
        vm.url
    );
    let demo = DemoDir::with_gateway(&[line_device()], &sink);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("points written", LIMIT, |g| {
        g.metric_sum("gateway_sink_frames_written_total").unwrap_or(0.0) >= 80.0
    });
    quiesce_and_stop(g, &demo);
    let wal = truth(&demo, "line-1");
    let mut series = Vec::new();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < LIMIT {
        series = vm.export(r#"{__name__="device_data_value",tag_name="temp"}"#);
        let n: usize = series.iter().map(|s| s["values"].as_array().unwrap().len()).sum();
        if n >= wal["temp"].len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(series.len(), 1, "{series:?}");
    let s = &series[0];
    assert_eq!(s["metric"]["location"], "Hall 3");
    assert_eq!(s["metric"]["unit"], "°C");
    let values = s["values"].as_array().unwrap();
    assert!(values.iter().all(|v| v.as_f64() == Some(21.5)), "{values:?}");
    // VictoriaMetrics keeps millisecond timestamps: every sample (50 ms apart) is there once.
    assert_eq!(values.len(), wal["temp"].len());
    let ms: Vec<u64> = wal["temp"].iter().map(|(ts, _)| ts / 1_000_000).collect();
    let got: Vec<u64> = s["timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(got, ms);
}

#[test]
fn refused_credentials_make_the_sink_unhealthy_and_the_gateway_unready() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = VictoriaMetrics::start_with_auth(tmp.path(), Some(("admin", "right")));
    // The sink sends a token; the server wants Basic auth: 401 on every write.
    let sink = format!(
        "\n[sinks.vm]\ntype = \"influxdb\"\nurl = \"{}\"\napi = \"v2\"\nbucket = \"gw\"\ntoken = \"wrong\"\n\
         flush_interval = \"2s\"\nmax_retry_interval = \"1s\"\n",
        vm.url
    );
    let demo = DemoDir::with_gateway(&[line_device()], &sink);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("/readyz to report the sink", LIMIT, |g| {
        g.get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("sink vm: credentials refused"))
    });
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"gateway_sink_write_errors_total{sink="vm",cause="unauthorized"}"#),
        "{metrics}"
    );
    let status = g.status();
    assert_eq!(status["sinks"][0]["healthy"], false, "{status}");
    // Nothing was acknowledged: the frames wait in the WAL.
    assert!(g.metric_sum("gateway_consumer_lag_frames").unwrap() > 0.0);
    stop(g);
}

/// A minimal InfluxDB-compatible write endpoint for the cases real servers
/// do not produce on demand: the first request gets `429 Retry-After: 1`,
/// any body above `max_lines` lines gets `413`; accepted lines are kept.
struct PickyServer {
    url: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    statuses: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl PickyServer {
    fn start(max_lines: usize) -> PickyServer {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, st) = (lines.clone(), statuses.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (l, st) = (l.clone(), st.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut w = conn;
                    loop {
                        let (mut len, mut gzip) = (0usize, false);
                        let mut first = String::new();
                        if r.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim().to_ascii_lowercase();
                            if h.is_empty() {
                                break;
                            }
                            if let Some(v) = h.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap();
                            }
                            gzip |= h == "content-encoding: gzip";
                        }
                        let mut body = vec![0; len];
                        r.read_exact(&mut body).unwrap();
                        let text = if gzip {
                            let mut s = String::new();
                            flate2::read::GzDecoder::new(&body[..])
                                .read_to_string(&mut s)
                                .unwrap();
                            s
                        } else {
                            String::from_utf8(body).unwrap()
                        };
                        let n = text.lines().count();
                        let status = {
                            let mut st = st.lock().unwrap();
                            let s = if st.is_empty() {
                                429
                            } else if n > max_lines {
                                413
                            } else {
                                204
                            };
                            st.push(s);
                            s
                        };
                        if status == 204 {
                            l.lock().unwrap().extend(text.lines().map(String::from));
                        }
                        let extra = if status == 429 { "Retry-After: 1\r\n" } else { "" };
                        let _ = write!(w, "HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n\r\n");
                    }
                });
            }
        });
        PickyServer { url, lines, statuses }
    }
}

#[test]
fn throttling_and_too_large_requests_are_retried_and_split() {
    let server = PickyServer::start(3);
    let sink = format!(
        "{ARCHIVE}\n[sinks.picky]\ntype = \"influxdb\"\nurl = \"{}\"\napi = \"v2\"\nbucket = \"gw\"\n\
         batch_lines = 40\nflush_interval = \"200ms\"\n",
        server.url
    );
    let demo = DemoDir::with_gateway(&[line_device()], &sink);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("points accepted", LIMIT, |_| {
        server.lines.lock().unwrap().len() >= 40
    });
    quiesce_and_stop(g, &demo);
    let statuses = server.statuses.lock().unwrap().clone();
    assert_eq!(statuses[0], 429, "{statuses:?}");
    assert!(
        statuses.contains(&413),
        "large batches were refused: {statuses:?}"
    );
    // Every sample arrived once (a split resends nothing twice here: 413 writes nothing).
    // Samples only: the quiescing reload adds an AUDIT event line.
    let lines: Vec<String> = server
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("device_data,"))
        .cloned()
        .collect();
    let truth = truth(&demo, "line-1");
    let total: usize = truth.values().map(Vec::len).sum();
    assert_eq!(lines.len(), total, "every sample exactly once");
    let unique: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!(unique.len(), total);
    // Nothing was dead-lettered: splitting to ≤ 3 lines fits.
    assert!(!demo.data().join("dead-letter/picky.jsonl").exists());
}

#[test]
fn modbus_frames_land_with_their_device_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    let plc = common::peers::ModbusServer::tcp(tmp.path());
    let device = (
        "plc".to_string(),
        format!(
            "name = \"plc\"\nprotocol = \"modbus-tcp\"\nendpoint = \"{}\"\nlocation = \"Line 2\"\nscan_interval = \"100ms\"\n\
             [[tags]]\nname = \"pi\"\naddress = \"40013\"\ndata_type = \"float32\"\nunit = \"bar\"\n\
             [[tags]]\nname = \"big\"\naddress = \"40025\"\ndata_type = \"uint64\"\n\
             [[tags]]\nname = \"coil0\"\naddress = \"00001\"\ndata_type = \"bool\"\n",
            plc.address
        ),
    );
    let demo = DemoDir::with_gateway(&[device], &sink_v1(&influx.url));
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("modbus points", LIMIT, |_| count(&influx, "pi") >= 5);
    g.signal(libc::SIGTERM);
    g.wait_exit(LIMIT);
    let pi = influx.rows(
        "gw",
        "SELECT value, unit, protocol, location FROM device_data WHERE tag_name = 'pi' LIMIT 1",
    );
    // The peer stores 3.14159 (not π) as float32.
    #[allow(clippy::approx_constant)]
    let want = 3.14159;
    assert!((pi[0]["value"].as_f64().unwrap() - want).abs() < 1e-6, "{pi:?}");
    assert_eq!(
        (pi[0]["unit"].clone(), pi[0]["protocol"].clone()),
        (json!("bar"), json!("modbus-tcp"))
    );
    assert_eq!(pi[0]["location"], "Line 2");
    // A uint64 above i64::MAX: v1 writes integers, saturated (1.x has no `u`).
    let big = influx.rows(
        "gw",
        "SELECT value_uint FROM device_data WHERE tag_name = 'big' LIMIT 1",
    );
    assert_eq!(big[0]["value_uint"], json!(i64::MAX), "{big:?}");
    let coil = influx.rows(
        "gw",
        "SELECT value_bool FROM device_data WHERE tag_name = 'coil0' LIMIT 1",
    );
    assert_eq!(coil[0]["value_bool"], json!(true));
}

#[test]
fn a_reload_updates_the_device_tags_of_new_points() {
    let tmp = tempfile::tempdir().unwrap();
    let influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    let demo = DemoDir::with_gateway(&[line_device()], &sink_v1(&influx.url));
    let mut g = Gateway::start(&demo, &[]);
    let located = |place: &str| {
        influx
            .rows(
                "gw",
                &format!(
                    "SELECT count(quality) FROM device_data WHERE tag_name = 'temp' AND location = '{place}'"
                ),
            )
            .first()
            .and_then(|r| r["count"].as_u64())
            .unwrap_or(0)
    };
    g.wait_until("points from Hall 3", LIMIT, |_| located("Hall 3") > 0);
    let path = demo.dir.path().join("devices/line-1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("Hall 3", "Hall 4")).unwrap();
    g.signal(libc::SIGHUP);
    g.wait_until("points from Hall 4 after the reload", LIMIT, |_| {
        located("Hall 4") > 0
    });
    stop(g);
}
