//! The MQTT driver and sink end to end: the real `gateway` binary against
//! private Mosquitto brokers on free loopback ports (stopped and restarted
//! mid-stream where a test needs it), `mosquitto_pub` as the devices, a
//! rumqttc subscriber as the northbound consumer, and a private influxd
//! for the exactly-once check after de-duplication.

use tests::harness as common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::mqtt::{Mosquitto, Subscriber};
use common::peers::Influxd;
use common::{device_status, tag_samples, wal_frames, DemoDir, Gateway};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// The ground truth where another sink consumes the bus (the WAL deletes
/// what every consumer acknowledged): a file sink with every frame once.
use common::ARCHIVE_SINK as ARCHIVE;

fn archive_frames(demo: &DemoDir) -> Vec<Value> {
    common::archive_frames(&demo.data())
}

fn stop(mut g: Gateway) {
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(LIMIT).success(), "{}", g.log_text());
}

fn kill(mut g: Gateway) {
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit(LIMIT);
}

/// `gateway_mqtt_parse_errors_total` by reason.
fn parse_errors(g: &Gateway) -> BTreeMap<String, u64> {
    let (_, body) = g.get("/metrics").expect("metrics");
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("gateway_mqtt_parse_errors_total{"))
    {
        let reason = line
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let v: f64 = line
            .rsplit_once(' ')
            .map_or(0.0, |(_, v)| v.parse().unwrap_or(0.0));
        *out.entry(reason.to_string()).or_default() += v as u64;
    }
    out
}

/// Values of `tag` of `device` in WAL order.
fn wal_values(frames: &[Value], device: &str, tag: &str) -> Vec<Value> {
    tag_samples(frames, device, tag)
        .into_iter()
        .map(|s| s["value"].clone())
        .collect()
}

fn device(name: &str, broker: &str, body: &str) -> (String, String) {
    (
        name.to_string(),
        format!("name = \"{name}\"\nprotocol = \"mqtt\"\nendpoint = \"{broker}\"\n{body}"),
    )
}

#[test]
fn json_plain_raw_and_templated_topics_map_to_devices_tags_and_values() {
    // `press` speaks MQTT 5, the ovens 3.1.1.
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let url = broker.url();
    let press = device(
        "press",
        &url,
        r#"topic = "plant/line1/press"
version = "5"
timestamp_pointer = "/ts"
timestamp_format = "rfc3339"

[[tags]]
name = "temp"
address = "/sensors/0/temp"
data_type = "Double"
scaling = 0.1
unit = "°C"

[[tags]]
name = "running"
address = "/state/running"
data_type = "Boolean"

[[tags]]
name = "count"
address = "/count"
data_type = "UInt32"

[[tags]]
name = "mode"
address = "/mode"
data_type = "String"
"#,
    );
    // One template for many devices: `plant/{device}/{tag}`.
    let oven = |name: &str, device_keys: &str, extra: &str| {
        device(
            name,
            &url,
            &format!(
                r#"topic = "plant/{{device}}/{{tag}}"
format = "plain"
{device_keys}

[[tags]]
name = "temp"
address = "payload"
data_type = "Float"

[[tags]]
name = "door"
address = "payload"
data_type = "Boolean"
{extra}"#
            ),
        )
    };
    let oven_a = oven(
        "oven-a",
        "qos = 1",
        r#"
[[tags]]
name = "alarm"
address = "payload"
data_type = "String"
topic = "alarms/+/{device}"
"#,
    );
    // oven-b goes Offline after 3 s without a message.
    let oven_b = oven(
        "oven-b",
        "no_message_timeout = \"3s\"",
        r#"
[[tags]]
name = "power"
address = "payload"
data_type = "Float"
format = "raw"
"#,
    );
    let demo = DemoDir::with_devices(&[press, oven_a, oven_b]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("three devices Online", LIMIT, |g| {
        g.status()["devices"]
            .as_array()
            .is_some_and(|d| d.len() == 3 && d.iter().all(|d| d["status"] == "Online"))
    });
    broker.publish(
        "plant/line1/press",
        1,
        json!({"ts": "2026-11-24T08:00:00.5+08:00", "sensors": [{"temp": 235}],
               "state": {"running": true}, "count": 7, "mode": "AUTO"})
        .to_string()
        .as_bytes(),
    );
    broker.publish("plant/oven-a/temp", 1, b"180.5");
    broker.publish("plant/oven-a/door", 1, b"on");
    broker.publish("plant/oven-b/temp", 1, b" 175\n");
    broker.publish("plant/oven-b/door", 1, b"false");
    broker.publish("alarms/zone-7/oven-a", 1, b"overheat");
    broker.publish("alarms/zone-7/oven-b", 1, b"not mine");
    broker.publish("plant/oven-b/power", 1, &1.25f32.to_be_bytes());
    let wanted = 4 + 3 + 3;
    g.wait_until("every value in the status", LIMIT, |g| {
        let st = g.status();
        st["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|d| d["tags"].as_array().cloned().unwrap_or_default())
            .filter(|t| !t["value"].is_null())
            .count()
            == wanted
    });
    let st = g.status();
    let value = |dev: &str, tag: &str| -> Value {
        st["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == dev)
            .and_then(|d| {
                d["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == tag)
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{dev}/{tag} in status: {st}"))
    };
    assert_eq!(value("press", "temp")["value"], json!(23.5));
    assert_eq!(value("press", "running")["value"], json!(true));
    assert_eq!(value("press", "count")["value"], json!(7));
    assert_eq!(value("press", "mode")["value"], json!("AUTO"));
    // The payload's time (08:00:00.5+08:00), not the receive time.
    assert_eq!(
        value("press", "temp")["timestamp"],
        json!("2026-11-24T00:00:00.500Z")
    );
    assert_eq!(value("oven-a", "temp")["value"], json!(180.5));
    assert_eq!(value("oven-a", "door")["value"], json!(true));
    assert_eq!(value("oven-a", "alarm")["value"], json!("overheat"));
    assert_eq!(value("oven-b", "temp")["value"], json!(175.0));
    assert_eq!(value("oven-b", "door")["value"], json!(false));
    assert_eq!(value("oven-b", "power")["value"], json!(1.25));
    // Silence: oven-b goes Offline, and a message brings it back.
    g.wait_until("oven-b Offline after 3 s of silence", LIMIT, |g| {
        device_status(g, "oven-b")["status"] == "Offline"
    });
    broker.publish("plant/oven-b/temp", 1, b"176");
    g.wait_until("oven-b Online again", LIMIT, |g| {
        device_status(g, "oven-b")["status"] == "Online"
    });
    // Every delivered message acknowledged: 1 press + 3 oven-a +
    // 4 oven-b (`alarms/zone-7/oven-b` matches no subscription).
    // (The ack follows the commit: it may come just after the status.)
    g.wait_until("8 messages acknowledged", LIMIT, |g| {
        g.metric_sum("gateway_mqtt_messages_acked_total") == Some(8.0)
    });
    assert_eq!(g.metric_sum("gateway_mqtt_messages_received_total"), Some(8.0));
    stop(g);
    // The WAL holds the same, with the raw value next to the scaled one,
    // and each device's status event before its data.
    let frames = wal_frames(&demo.wal());
    let press = common::latest_samples(&frames, "press");
    assert_eq!(press["temp"]["value"], json!(23.5));
    assert_eq!(press["temp"]["raw_value"], json!(235.0));
    assert_eq!(press["temp"]["ts_ns"], json!(1_795_478_400_500_000_000u64));
    assert_eq!(wal_values(&frames, "oven-a", "alarm"), vec![json!("overheat")]);
    let oven_b_status: Vec<String> = frames
        .iter()
        .filter(|f| f["device"] == "oven-b" && f["type"] == "EVENT")
        .map(|f| f["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(oven_b_status.len(), 3, "{oven_b_status:?}");
    assert!(
        oven_b_status[1].contains("Offline: no message for 3s"),
        "{oven_b_status:?}"
    );
    assert!(oven_b_status[2].ends_with("is Online"), "{oven_b_status:?}");
    for d in ["press", "oven-a", "oven-b"] {
        let first = frames
            .iter()
            .find(|f| f["device"] == d)
            .unwrap_or_else(|| panic!("no frame of {d}"));
        assert_eq!(first["type"], "EVENT", "{first}");
        assert_eq!(first["status"], "Online", "{first}");
    }
}

#[test]
fn malformed_payloads_are_counted_acknowledged_and_the_stream_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let meter = device(
        "meter",
        &broker.url(),
        r#"topic = "meter/data"
max_payload = "128KiB"

[[tags]]
name = "v"
address = "/v"
data_type = "Double"

[[tags]]
name = "i"
address = "/i"
data_type = "Int8"

[[tags]]
name = "text"
address = "payload"
data_type = "Double"
topic = "meter/plain"
format = "plain"

[[tags]]
name = "raw"
address = "payload"
data_type = "Float"
topic = "meter/raw"
format = "raw"

[[tags]]
name = "stamped"
address = "/v"
data_type = "Double"
topic = "meter/stamped"
timestamp_pointer = "/ts"
timestamp_format = "epoch_ms"
"#,
    );
    let demo = DemoDir::with_devices(&[meter]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("meter Online", LIMIT, |g| {
        g.status()["devices"][0]["status"] == "Online"
    });
    let deep = "[".repeat(100_000);
    let big = format!("{{\"v\": 1, \"pad\": \"{}\"}}", "x".repeat(140 * 1024));
    // (topic, payload, reason it is counted under)
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("meter/data", b"{not json".to_vec(), "not_json"),
        ("meter/data", b"   ".to_vec(), "empty"),
        ("meter/data", deep.into_bytes(), "not_json"),
        ("meter/data", br#"{"v": "abc", "i": 1}"#.to_vec(), "wrong_type"),
        ("meter/data", br#"{"v": 1.5, "i": 300}"#.to_vec(), "out_of_range"),
        ("meter/data", br#"{"v": null, "i": 1}"#.to_vec(), "null"),
        ("meter/data", br#"{"i": 1}"#.to_vec(), "missing_pointer"),
        ("meter/data", br#"[1, 2, 3]"#.to_vec(), "missing_pointer"),
        ("meter/data", big.into_bytes(), "too_large"),
        ("meter/plain", vec![0xff, 0xfe, 0x31], "not_utf8"),
        ("meter/plain", b"twelve".to_vec(), "wrong_type"),
        ("meter/raw", vec![1, 2, 3], "wrong_type"),
        ("meter/raw", f32::NAN.to_be_bytes().to_vec(), "out_of_range"),
        (
            "meter/stamped",
            br#"{"v": 1, "ts": "yesterday"}"#.to_vec(),
            "bad_timestamp",
        ),
        ("meter/stamped", br#"{"v": 1}"#.to_vec(), "bad_timestamp"),
    ];
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    // A good message after every bad one: the stream must go on.
    for (n, (topic, payload, reason)) in bad.iter().enumerate() {
        broker.publish(topic, 1, payload);
        *expected.entry(reason.to_string()).or_default() += 1;
        broker.publish(
            "meter/data",
            1,
            json!({"v": n as f64, "i": 1}).to_string().as_bytes(),
        );
    }
    g.wait_until("every good value", LIMIT, |g| {
        g.metric_sum("gateway_mqtt_messages_acked_total") == Some((2 * bad.len()) as f64)
    });
    assert_eq!(parse_errors(&g), expected);
    assert_eq!(
        g.metric_sum("gateway_mqtt_messages_received_total"),
        Some((2 * bad.len()) as f64)
    );
    // Messages whose other tags were fine still gave those values.
    stop(g);
    let frames = wal_frames(&demo.wal());
    let v: Vec<Value> = wal_values(&frames, "meter", "v");
    let good: Vec<Value> = (0..bad.len()).map(|n| json!(n as f64)).collect();
    // `{"v": 1.5, "i": 300}` kept v = 1.5 (only i was out of range).
    let mut want = good.clone();
    want.insert(4, json!(1.5));
    assert_eq!(v, want, "values of v in WAL order");
}

/// Numbers `from..=to` as JSON lines `{"n": N, "ts": BASE + N}`.
fn numbered(from: u64, to: u64, base_ms: u64) -> Vec<String> {
    (from..=to)
        .map(|n| format!("{{\"n\":{n},\"ts\":{}}}", base_ms + n))
        .collect()
}

fn numbers_in(frames: &[Value], device: &str) -> Vec<u64> {
    wal_values(frames, device, "n")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

fn counter_device(broker: &str, extra: &str) -> (String, String) {
    device(
        "seq",
        broker,
        &format!(
            r#"topic = "stream/seq"
qos = 1
{extra}
timestamp_pointer = "/ts"
timestamp_format = "epoch_ms"

[[tags]]
name = "n"
address = "/n"
data_type = "UInt32"
"#
        ),
    )
}

#[test]
fn sigkill_southbound_loses_no_qos1_message_and_influx_stores_each_once() {
    const N: u64 = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let influx = Influxd::start(tmp.path());
    influx.query("", "CREATE DATABASE gw");
    let sink = format!(
        "{ARCHIVE}\n[sinks.influx]\ntype = \"influxdb\"\nurl = \"{}\"\napi = \"v1\"\ndatabase = \"gw\"\n\
         batch_lines = 500\nflush_interval = \"100ms\"\nmax_retry_interval = \"500ms\"\n",
        influx.url
    );
    // MQTT 3.1.1 (the 5 path is covered by the broker restart test).
    let demo = DemoDir::with_gateway(&[counter_device(&broker.url(), "")], &sink);
    let base_ms = 1_790_000_000_000u64;
    // First start creates the persistent session (subscription) the
    // broker queues for while the gateway is dead.
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("seq Online", LIMIT, |g| {
        g.status()["devices"][0]["status"] == "Online"
    });
    // The whole stream is published at full speed: the broker queues it
    // for the session and hands it out 20 unacknowledged messages at a
    // time (`max_inflight_messages`), so the gateway is busy draining it
    // when it is killed, with messages received and not yet acknowledged.
    kill(g);
    for chunk in 0..(N / 1000) {
        let lines = numbered(chunk * 1000 + 1, chunk * 1000 + 1000, base_ms);
        assert!(
            broker.publish_lines("stream/seq", 1, &lines),
            "mosquitto_pub failed"
        );
    }
    let mut kills = 1;
    g = Gateway::start(&demo, &[]);
    while kills < 6 {
        // Kill once it is draining, at a random point; stop when a new
        // process gets nothing within 3 s (the queue is drained).
        let t0 = Instant::now();
        let received = |g: &Gateway| {
            g.metric_sum("gateway_mqtt_messages_received_total")
                .unwrap_or(0.0)
        };
        while received(&g) == 0.0 && t0.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if received(&g) == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..60)));
        eprintln!(
            "kill {kills}: received {:?} acked {:?}",
            g.metric_sum("gateway_mqtt_messages_received_total"),
            g.metric_sum("gateway_mqtt_messages_acked_total")
        );
        kill(g);
        kills += 1;
        g = Gateway::start(&demo, &[]);
    }
    assert!(kills >= 3, "the stream drained after {kills} kills");
    // A last number after the last restart marks the end of the stream
    // (the status API only knows values received by this process).
    let last = N + 1;
    assert!(broker.publish_lines("stream/seq", 1, &numbered(last, last, base_ms)));
    // Draining several hundred thousand redeliveries on 2 shared cores
    // can take a while: a generous guard, not a performance check.
    g.wait_until("the last number", 3 * LIMIT, |g| {
        g.status()["devices"][0]["tags"][0]["value"] == json!(last)
    });
    g.wait_until("influx caught up", 3 * LIMIT, |g| {
        g.metric_sum("gateway_consumer_lag_frames") == Some(0.0)
    });
    stop(g);
    let frames = archive_frames(&demo);
    let got = numbers_in(&frames, "seq");
    let distinct: HashSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = (1..=last).filter(|n| !distinct.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} numbers missing from the bus, e.g. {:?}; the archive holds {} frames, {} samples of \
         {} distinct numbers ({:?}..={:?}); broker log tail:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        frames.len(),
        got.len(),
        distinct.len(),
        distinct.iter().min(),
        distinct.iter().max(),
        broker.log_tail(40)
    );
    let dups = got.len() as u64 - last;
    eprintln!(
        "southbound SIGKILL x{kills}: {} samples on the bus for {last} messages ({dups} redelivered)",
        got.len()
    );
    // Redelivered = received by a killed process and not acknowledged
    // (or, with Mosquitto 2.0.11 flushing a backlog, acknowledged beyond
    // the in-flight window it exceeded; see docs/drivers/mqtt.md). The
    // kills must hit such messages, or the test proves nothing about
    // acknowledging only after the WAL: an early ack would lose them.
    assert!(dups > 0, "no kill hit an unacknowledged message");
    // De-duplicated by timestamp, InfluxDB holds each number once.
    let rows = influx.rows("gw", "SELECT value_uint FROM device_data WHERE tag_name = 'n'");
    let stored: Vec<u64> = rows.iter().filter_map(|r| r["value_uint"].as_u64()).collect();
    assert_eq!(stored.len() as u64, last, "points in InfluxDB");
    let set: HashSet<u64> = stored.iter().copied().collect();
    assert_eq!(set, (1..=last).collect::<HashSet<u64>>());
}

#[test]
fn broker_restart_mid_stream_loses_nothing_in_either_direction() {
    // The device speaks MQTT 5, the sink 3.1.1.
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(tmp.path());
    let sim = line_sim("20ms", "");
    let sink = format!(
        "{ARCHIVE}\n[sinks.north]\ntype = \"mqtt\"\nurl = \"{}\"\nqos = 1\nmax_retry_interval = \"500ms\"\n",
        broker.url()
    );
    let sub = Subscriber::start(broker.port, "north-reader", "gateway/test-gw/line/count");
    let demo = DemoDir::with_gateway(&[counter_device(&broker.url(), "version = \"5\""), sim], &sink);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("seq Online", LIMIT, |g| {
        device_status(g, "seq")["status"] == "Online"
    });
    let base_ms = 1_790_000_000_000u64;
    assert!(broker.publish_lines("stream/seq", 1, &numbered(1, 500, base_ms)));
    std::thread::sleep(Duration::from_millis(500));
    broker.stop();
    g.wait_until("seq Offline", LIMIT, |g| {
        device_status(g, "seq")["status"] == "Offline"
    });
    // Northbound frames wait in the WAL meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    assert!(broker.publish_lines("stream/seq", 1, &numbered(501, 1000, base_ms)));
    g.wait_until("all 1000 numbers", LIMIT, |g| {
        device_status(g, "seq")["tags"][0]["value"] == json!(1000)
    });
    // Stop the simulator and let the sink drain.
    drain_and_stop(g, &demo, LIMIT);
    let frames = archive_frames(&demo);
    let got: HashSet<u64> = numbers_in(&frames, "seq").into_iter().collect();
    let missing: Vec<u64> = (1..=1000).filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "southbound lost {} numbers across the broker restart: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let sent = frame_seqs(&frames, "line");
    let received: Vec<u64> = sub.messages().iter().map(|(_, p)| seq_of(p)).collect();
    check_order(&sent, &received, "broker restart");
}

/// The simulator device `line`: a counter every `scan`, plus `extra_tags`.
fn line_sim(scan: &str, extra_tags: &str) -> (String, String) {
    (
        "line".to_string(),
        format!(
            "name = \"line\"\nprotocol = \"simulator\"\nendpoint = \"sim://line\"\nscan_interval = \"{scan}\"\n\n\
             [[tags]]\nname = \"count\"\naddress = \"counter\"\ndata_type = \"UInt32\"\nbase = 1\nstep = 1\n{extra_tags}"
        ),
    )
}

/// Disables `line` (SIGHUP), waits until every sink caught up, lets the
/// broker deliver, and stops the gateway cleanly.
fn drain_and_stop(mut g: Gateway, demo: &DemoDir, limit: Duration) {
    let path = demo.dir.path().join("devices/line.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen('\n', "\nenabled = false\n", 1)).unwrap();
    g.signal(libc::SIGHUP);
    // The reload's audit event is the last frame: once the file sink has
    // it, every sink's lag of 0 means everything was handed on.
    g.wait_until("the reload audited", limit, |_| {
        archive_frames(demo).iter().any(|f| f["kind"] == "AUDIT")
    });
    g.wait_until("sink caught up", limit, |g| {
        g.metric_sum("gateway_consumer_lag_frames") == Some(0.0)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop(g);
}

/// The bus seq a northbound sample message carries.
fn seq_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(payload).unwrap()["seq"]
        .as_u64()
        .expect("a seq in every sample message")
}

/// The bus seqs of `device`'s data frames (one sample each here): the
/// identity of a northbound message (its `seq` field), unique across
/// restarts, unlike the simulator's counter, which starts again at 1.
fn frame_seqs(frames: &[Value], device: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "DATA" && f["device"] == device)
        .filter_map(|f| f["seq"].as_u64())
        .collect()
}

/// Every frame the bus holds was received, and in order: a seq lower than
/// the previous one only starts a replay of the unconfirmed window.
/// Returns the number of duplicates.
fn check_order(sent: &[u64], received: &[u64], what: &str) -> usize {
    assert!(!sent.is_empty(), "{what}: the simulator published nothing");
    let got: HashSet<u64> = received.iter().copied().collect();
    let missing: Vec<u64> = sent.iter().copied().filter(|v| !got.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} of {} values never reached the subscriber, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(10)]
    );
    // In order: after de-duplication (first arrival of each value), the
    // values come in WAL order.
    let mut seen = HashSet::new();
    let first: Vec<u64> = received.iter().copied().filter(|v| seen.insert(*v)).collect();
    let wal_order: Vec<u64> = sent.iter().copied().filter(|v| got.contains(v)).collect();
    assert_eq!(first, wal_order, "{what}: values out of order");
    received.len() - first.len()
}

#[test]
fn northbound_delivers_every_sample_in_order_across_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let sim = line_sim("10ms", "");
    let sink = format!(
        "{ARCHIVE}\n[sinks.north]\ntype = \"mqtt\"\nurl = \"{}\"\nqos = 1\nmax_inflight = 50\n",
        broker.url()
    );
    let sub = Subscriber::start(broker.port, "north-sigkill", "gateway/test-gw/#");
    let demo = DemoDir::with_gateway(&[sim], &sink);
    let mut g = Gateway::start(&demo, &[]);
    let mut kills = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700 + fastrand::u64(0..600)));
        kill(g);
        kills += 1;
        g = Gateway::start(&demo, &[]);
    }
    std::thread::sleep(Duration::from_millis(500));
    drain_and_stop(g, &demo, LIMIT);
    let frames = archive_frames(&demo);
    let sent = frame_seqs(&frames, "line");
    let msgs = sub.messages();
    let samples: Vec<u64> = msgs
        .iter()
        .filter(|(t, _)| t == "gateway/test-gw/line/count")
        .map(|(_, p)| seq_of(p))
        .collect();
    let dups = check_order(&sent, &samples, "SIGKILL");
    eprintln!(
        "northbound SIGKILL x{kills}: {} samples in the WAL, {} messages received, {dups} duplicates",
        sent.len(),
        samples.len()
    );
    // Duplicates come only from the window not yet confirmed or not yet in
    // the persisted cursor when the process died: at most the in-flight
    // window plus what 10 ms polls produce in the bus's cursor flush
    // interval (100 ms) — bounded generously by 2x.
    assert!(
        dups <= kills * 2 * (50 + 20),
        "{dups} duplicates for {kills} kills"
    );
    // Birth and will: the retained status ends `offline` after the clean stop,
    // and `online` was announced at each start.
    let status: Vec<String> = msgs
        .iter()
        .filter(|(t, _)| t == "gateway/test-gw/status")
        .map(|(_, p)| String::from_utf8_lossy(p).to_string())
        .collect();
    assert!(
        status.iter().filter(|s| *s == "online").count() > kills,
        "{status:?}"
    );
    assert_eq!(status.last().map(String::as_str), Some("offline"), "{status:?}");
    // Events go out on the events topic: the audited SIGHUP reload.
    assert!(
        msgs.iter().any(|(t, _)| t == "gateway/test-gw/events/audit"),
        "no audit event among {} messages",
        msgs.len()
    );
}

#[test]
fn northbound_qos0_keeps_up_without_acks_to_wake_it() {
    // QoS 0 brings no PUBACKs: the sink must move on as soon as its
    // messages are written (a 60 s keep-alive is the only other event).
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let sim = line_sim("2ms", &(1..8)
                .map(|i| format!("\n[[tags]]\nname = \"c{i}\"\naddress = \"constant\"\ndata_type = \"Double\"\nvalue = {i}.5\n"))
                .collect::<String>());
    // 8 messages per frame and a window of 1: the window is full after
    // every message, and only the sink itself can empty it.
    let sink = format!(
        "{ARCHIVE}\n[sinks.north]\ntype = \"mqtt\"\nurl = \"{}\"\nqos = 0\nkeep_alive = \"60s\"\nmax_inflight = 1\n",
        broker.url()
    );
    let sub = Subscriber::start(broker.port, "north-qos0", "gateway/test-gw/line/count");
    let demo = DemoDir::with_gateway(&[sim], &sink);
    let g = Gateway::start(&demo, &[]);
    std::thread::sleep(Duration::from_secs(2));
    drain_and_stop(g, &demo, Duration::from_secs(20));
    let sent = frame_seqs(&archive_frames(&demo), "line");
    assert!(sent.len() > 200, "only {} frames in 2 s", sent.len());
    let received: Vec<u64> = sub.messages().iter().map(|(_, p)| seq_of(p)).collect();
    // One connection, loopback, no restart: nothing lost even at QoS 0.
    assert_eq!(check_order(&sent, &received, "QoS 0"), 0);
}

/// `openssl` run in `dir`; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate signed by it for `cn` with `ext` (v3 extensions).
fn issue_cert(dir: &std::path::Path, ca: &str, name: &str, cn: &str, ext: &str) {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &ext_file,
        ],
    );
}

fn make_ca(dir: &std::path::Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

#[test]
fn tls_with_a_client_certificate_connects_and_a_wrong_ca_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    issue_cert(
        d,
        "ca",
        "server",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    issue_cert(
        d,
        "ca",
        "client",
        "gateway",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let p = |f: &str| d.join(f).display().to_string();
    // The broker requires a client certificate signed by `ca`.
    let broker = Mosquitto::start_with(
        d,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let tags = "topic = \"secure/{device}\"\nformat = \"plain\"\n\n[[tags]]\nname = \"v\"\naddress = \"payload\"\ndata_type = \"Double\"\n";
    let good = device(
        "good",
        &url,
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tags}",
            p("ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
    );
    // Trusts another CA: the broker's certificate must be refused.
    let wrong = device(
        "wrong",
        &url,
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tags}",
            p("other-ca.pem"),
            p("client.pem"),
            p("client.key")
        ),
    );
    let demo = DemoDir::with_devices(&[good, wrong]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("good Online", LIMIT, |g| {
        device_status(g, "good")["status"] == "Online"
    });
    broker.publish_with(
        &[
            "--cafile",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
        ],
        "secure/good",
        1,
        b"42.5",
    );
    g.wait_until("the value over TLS", LIMIT, |g| {
        device_status(g, "good")["tags"][0]["value"] == json!(42.5)
    });
    g.wait_until("wrong is Offline", LIMIT, |g| {
        device_status(g, "wrong")["status"] == "Offline"
    });
    stop(g);
    let frames = wal_frames(&demo.wal());
    assert_eq!(wal_values(&frames, "good", "v"), vec![json!(42.5)]);
    let wrong_events: Vec<&Value> = frames.iter().filter(|f| f["device"] == "wrong").collect();
    assert!(
        wrong_events
            .iter()
            .all(|f| f["type"] == "EVENT" && f["status"] == "Offline"),
        "{wrong_events:?}"
    );
    assert!(
        wrong_events.iter().any(|f| f["message"]
            .as_str()
            .is_some_and(|m| m.contains("certificate") || m.contains("Tls") || m.contains("TLS"))),
        "the Offline event names the TLS failure: {wrong_events:?}"
    );
}
