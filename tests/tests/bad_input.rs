//! The bad-input matrix (issue 10) end to end: for each kind of bad input,
//! the real `gateway` binary gets it from a real peer (pymodbus, Mosquitto,
//! asyncua; influxd for row 4) or from its configuration, and the test checks three
//! things: the counter that records it (an exact value or an exact
//! relation, read by label from `/metrics`), the log line an operator
//! would see (the harness runs the gateway with `RUST_LOG=info`, so only
//! info, warn and error lines are there), and that the gateway goes on (a
//! good value after the bad one is stored, the device stays usable).
//!
//! | row | input | counter | log line |
//! |-----|-------|---------|----------|
//! | 1 | Modbus exception 2 and 6 | `gateway_device_errors_total{device,kind="exception",code}` | "Modbus read failed: exception or malformed reply" |
//! | 2 | malformed MQTT payloads | `gateway_mqtt_parse_errors_total{device,reason}` | "malformed MQTT message(s) counted, acknowledged and skipped" |
//! | 3 | OPC UA Bad status | `gateway_opcua_bad_values_total{device}` | none at info or above (sample BAD in the WAL) |
//! | 4 | InfluxDB 400 (field type conflict) | `gateway_sink_dead_lettered_total{sink="influx"}` | "line refused by the server; dead-lettered" |
//! | 5 | MQTT sink message above the broker's maximum packet size | `gateway_sink_dead_lettered_total{sink="north"}` | "message too large for the broker; skipped" |
//! | 6 | bad value in a device file | none (exit code 2) | stderr `file:line:column: `key`: message` |
//!
//! Row 4 is tested with the InfluxDB sink's other tests, in `influx.rs`
//! (`a_point_the_server_refuses_is_dead_lettered_and_the_rest_flows`).

use tests::harness as common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::mqtt::{Mosquitto, Subscriber};
use common::opcua::OpcuaServer;
use common::peers::ModbusServer;
use common::{
    device_file, device_status, latest_samples, metric_in, tag_entry, tag_samples, wal_frames, DemoDir,
    Gateway,
};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// The lines of the gateway's log that contain `what`.
fn log_lines(g: &Gateway, what: &str) -> Vec<String> {
    g.log_text()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// Lines a "logged once per 10 s" warning may have produced in `elapsed`:
/// the first at once, then at most one per 10 s.
fn burst_limit(elapsed: Duration) -> usize {
    1 + (elapsed.as_secs() / 10) as usize
}

fn stop(mut g: Gateway) {
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(LIMIT).success(), "{}", g.log_text());
}

// ---------------------------------------------------------------------------
// Row 1: Modbus exception replies.
// ---------------------------------------------------------------------------

/// The warning the Modbus driver logs for an exception or a malformed reply.
const MODBUS_REFUSAL: &str = "Modbus read failed: exception or malformed reply; its tags are BAD";

/// The lines of `lines` about the request at (zero-based) `address`.
fn at_address(lines: &[String], address: u16) -> Vec<&String> {
    let field = format!("address={address} ");
    lines.iter().filter(|l| l.contains(&field)).collect()
}

#[test]
fn modbus_exceptions_are_counted_by_code_logged_once_per_burst_and_the_device_stays_online() {
    // Matrix row 1: Modbus exception replies. The pymodbus peer answers
    // holding 100 (unmapped) with exception 2 on every poll, and holding
    // 300 with exception 6 (busy) twice out of every three reads; without
    // busy retries the driver sees each 6.
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(tmp.path());
    let head = format!(
        "protocol = \"modbus-tcp\"\nendpoint = \"{}\"\nunit_id = 1\nscan_interval = \"200ms\"\n\
         timeout = \"2s\"\nbusy_retries = 0",
        server.address
    );
    let demo = DemoDir::with_devices(&[device_file(
        "plc",
        &head,
        &[
            tag_entry("ok", "40001", "uint16", ""),
            tag_entry("missing", "40101", "uint16", ""),
            tag_entry("busy", "40301", "uint16", ""),
        ],
    )]);
    let started = Instant::now();
    let mut g = Gateway::start(&demo, &[]);

    // Counters: every poll has one exception 2; poll n has an exception 6
    // unless n is a multiple of 3; nothing else failed. Read from one
    // scrape (two counters of one poll can straddle a scrape: retried).
    let errors = "gateway_device_errors_total";
    let t0 = Instant::now();
    loop {
        let (_, body) = g.get("/metrics").expect("metrics");
        let polls = metric_in(&body, "gateway_device_polls_total", &[("device", "plc")]).unwrap_or(0.0);
        let e2 = metric_in(
            &body,
            errors,
            &[("device", "plc"), ("kind", "exception"), ("code", "2")],
        )
        .unwrap_or(0.0);
        let e6 = metric_in(
            &body,
            errors,
            &[("device", "plc"), ("kind", "exception"), ("code", "6")],
        )
        .unwrap_or(0.0);
        let all = metric_in(&body, errors, &[("device", "plc")]).unwrap_or(0.0);
        let n = polls as u64;
        if n >= 6 && e2 == polls && e6 == (n - n / 3) as f64 && all == e2 + e6 {
            break;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "errors do not match the polls: {polls} polls, exception 2: {e2}, exception 6: {e6}, \
             all errors: {all}\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The samples: the failed requests' tags are BAD with the exception
    // code, the other tag is GOOD, and a busy register reads 777 on every
    // third poll, after two BAD ones: the device goes on.
    let mut frames = Vec::new();
    g.wait_until("six polls in the WAL", LIMIT, |_| {
        frames = wal_frames(&demo.wal());
        tag_samples(&frames, "plc", "busy").len() >= 6
    });
    let s = latest_samples(&frames, "plc");
    assert_eq!(
        (
            s["missing"]["quality"].clone(),
            s["missing"]["error_code"].clone()
        ),
        (json!("BAD"), json!(2)),
        "{}",
        s["missing"]
    );
    assert_eq!(s["missing"]["value"], Value::Null, "{}", s["missing"]);
    for o in tag_samples(&frames, "plc", "ok") {
        assert_eq!(
            (o["quality"].clone(), o["value"].clone()),
            (json!("GOOD"), json!(12345)),
            "{o}"
        );
    }
    let busy = tag_samples(&frames, "plc", "busy");
    for (k, b) in busy.iter().enumerate() {
        if (k + 1) % 3 == 0 {
            assert_eq!(
                (b["quality"].clone(), b["value"].clone()),
                (json!("GOOD"), json!(777)),
                "poll {}: {b}",
                k + 1
            );
        } else {
            assert_eq!(
                (b["quality"].clone(), b["error_code"].clone()),
                (json!("BAD"), json!(6)),
                "poll {}: {b}",
                k + 1
            );
        }
    }
    // An exception is an answer: Online, and the status says why the tag is BAD.
    let st = device_status(&g, "plc");
    assert_eq!(st["status"], "Online", "{st}");
    assert_eq!(st["last_error"], "exception error (code 2)", "{st}");
    assert_eq!(st["errors"], st["polls"], "every poll had an exception: {st}");

    // The log: one warning per failing request (not per poll), naming the
    // device, the request's table and address, its tags and the code.
    let lines = log_lines(&g, MODBUS_REFUSAL);
    let elapsed = started.elapsed();
    let (missing, busy) = (at_address(&lines, 100), at_address(&lines, 300));
    assert!(
        !missing.is_empty(),
        "no warning for exception 2:\n{}",
        g.log_text()
    );
    assert!(!busy.is_empty(), "no warning for exception 6:\n{}", g.log_text());
    for (l, code, name) in [(missing[0], "code=2", "missing"), (busy[0], "code=6", "busy")] {
        for want in [
            "WARN",
            "plc",
            "holding",
            name,
            code,
            "failed=1",
            "(logged once per 10s per request)",
        ] {
            assert!(l.contains(want), "{want:?} not in {l:?}");
        }
    }
    assert_eq!(
        lines.len(),
        missing.len() + busy.len(),
        "the good request is never logged: {lines:#?}"
    );
    for (what, got) in [("exception 2", missing.len()), ("exception 6", busy.len())] {
        assert!(
            got <= burst_limit(elapsed),
            "{what}: {got} warnings in {elapsed:?} (once per 10 s): {lines:#?}"
        );
    }
    stop(g);
}

// ---------------------------------------------------------------------------
// Row 2: malformed MQTT payloads.
// ---------------------------------------------------------------------------

const MQTT_MALFORMED: &str =
    "malformed MQTT message(s) counted, acknowledged and skipped (logged once per 10s)";

#[test]
fn malformed_mqtt_payloads_are_counted_by_reason_logged_and_the_next_value_is_stored() {
    // Matrix row 2: malformed MQTT payloads (not JSON, wrong type, out of
    // range), each followed by the next message; the last one is good.
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path());
    let meter = (
        "meter".to_string(),
        format!(
            "name = \"meter\"\nprotocol = \"mqtt\"\nendpoint = \"{}\"\ntopic = \"meter/data\"\n\n\
             [[tags]]\nname = \"v\"\naddress = \"/v\"\ndata_type = \"Double\"\n\n\
             [[tags]]\nname = \"i\"\naddress = \"/i\"\ndata_type = \"Int8\"\n",
            broker.url()
        ),
    );
    let demo = DemoDir::with_devices(&[meter]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("meter Online", LIMIT, |g| {
        device_status(g, "meter")["status"] == "Online"
    });
    let first_bad = Instant::now();
    broker.publish("meter/data", 1, b"{not json");
    broker.publish("meter/data", 1, br#"{"v": "abc", "i": 1}"#);
    broker.publish("meter/data", 1, br#"{"v": 1.5, "i": 300}"#);
    broker.publish("meter/data", 1, br#"{"v": 42.0, "i": 7}"#);
    let dev = ("device", "meter");
    g.wait_until("4 messages acknowledged", LIMIT, |g| {
        g.metric("gateway_mqtt_messages_acked_total", &[dev]) == Some(4.0)
    });

    // Counters: one per reason, nothing else; each is also a protocol
    // error of the device (code -3, as a malformed Modbus reply).
    let parse = "gateway_mqtt_parse_errors_total";
    for reason in ["not_json", "wrong_type", "out_of_range"] {
        assert_eq!(g.metric(parse, &[dev, ("reason", reason)]), Some(1.0), "{reason}");
    }
    assert_eq!(g.metric(parse, &[dev]), Some(3.0), "no other reason counted");
    assert_eq!(
        g.metric(
            "gateway_device_errors_total",
            &[dev, ("kind", "protocol"), ("code", "-3")]
        ),
        Some(3.0)
    );
    assert_eq!(
        g.metric("gateway_mqtt_messages_received_total", &[dev]),
        Some(4.0)
    );

    // The log: the first bad message at once (its reason, topic and
    // payload, `skipped=1`), the rest of the burst counted, not logged.
    let lines = log_lines(&g, MQTT_MALFORMED);
    let elapsed = first_bad.elapsed();
    assert!(!lines.is_empty(), "no warning:\n{}", g.log_text());
    for want in [
        "WARN",
        "meter",
        "not_json",
        "meter/data",
        "{not json",
        "skipped=1",
    ] {
        assert!(lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
    }
    assert!(
        lines.len() <= burst_limit(elapsed),
        "{} warnings in {elapsed:?} (once per 10 s): {lines:#?}",
        lines.len()
    );
    assert_eq!(device_status(&g, "meter")["status"], "Online");
    stop(g);

    // The good parts of the partly bad messages and the good message are
    // stored, in order.
    let frames = wal_frames(&demo.wal());
    let values = |t: &str| -> Vec<Value> {
        tag_samples(&frames, "meter", t)
            .iter()
            .map(|s| s["value"].clone())
            .collect()
    };
    assert_eq!(values("v"), vec![json!(1.5), json!(42.0)]);
    assert_eq!(values("i"), vec![json!(1), json!(7)]);
}

// ---------------------------------------------------------------------------
// Row 3: OPC UA values with a Bad status.
// ---------------------------------------------------------------------------

/// StatusCode BadSensorFailure as the sample's `error_code` (an i32).
const BAD_SENSOR_FAILURE: i64 = 0x808C_0000u32 as i32 as i64;

/// Counter samples of `device` that are GOOD and come after its first BAD
/// `bad` sample in the WAL.
fn good_after_bad(frames: &[Value], device: &str) -> usize {
    let mut seen_bad = false;
    let mut good = 0;
    for f in frames
        .iter()
        .filter(|f| f["type"] == "DATA" && f["device"] == device)
    {
        for s in f["samples"].as_array().into_iter().flatten() {
            if s["tag"] == "bad" && s["quality"] == "BAD" {
                seen_bad = true;
            } else if seen_bad && s["tag"] == "counter" && s["quality"] == "GOOD" {
                good += 1;
            }
        }
    }
    good
}

#[test]
fn opcua_bad_status_is_a_bad_sample_counted_per_device_and_good_values_go_on() {
    // Matrix row 3: an OPC UA value whose server status is Bad
    // (`Status/Bad`, BadSensorFailure), in subscription and in poll mode.
    // The driver logs nothing at info or above for a Bad value: the
    // counter and the BAD sample are what records it.
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let head = |mode: &str| {
        format!(
            "protocol = \"opcua\"\nendpoint = \"{}\"\nmode = \"{mode}\"\nscan_interval = \"200ms\"\n\
             timeout = \"2s\"\nretry_interval = \"200ms\"\nmax_retry_interval = \"1s\"",
            server.url
        )
    };
    let tags = [
        tag_entry("bad", "ns=2;s=Status/Bad", "Double", ""),
        tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", ""),
    ];
    let demo = DemoDir::with_devices(&[
        device_file("sub", &head("subscription"), &tags),
        device_file("poll", &head("poll"), &tags),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until(
        "good counter values after the BAD sample in both modes",
        LIMIT,
        |_| {
            let frames = wal_frames(&demo.wal());
            ["sub", "poll"].iter().all(|d| good_after_bad(&frames, d) >= 5)
        },
    );
    let frames = wal_frames(&demo.wal());
    for d in ["sub", "poll"] {
        let latest = latest_samples(&frames, d);
        let bad = &latest["bad"];
        assert_eq!(bad["quality"], "BAD", "{d}: {bad}");
        assert_eq!(bad["value"], Value::Null, "{d}: {bad}");
        assert_eq!(bad["error_code"], BAD_SENSOR_FAILURE, "{d}: {bad}");
    }

    // One session per device all along (a new session would send the
    // subscription's Bad value again).
    assert_eq!(server.sessions_created(), 2, "one session per device");
    // Subscription: the value never changes, so the server sends it once.
    let bad_values = "gateway_opcua_bad_values_total";
    assert_eq!(g.metric(bad_values, &[("device", "sub")]), Some(1.0));
    // Poll: one Bad value per Read, one Read per poll (one scrape; the
    // two counters of one poll can straddle it: retried).
    let t0 = Instant::now();
    loop {
        let (_, body) = g.get("/metrics").expect("metrics");
        let polls = metric_in(&body, "gateway_device_polls_total", &[("device", "poll")]).unwrap_or(0.0);
        let bad = metric_in(&body, bad_values, &[("device", "poll")]).unwrap_or(0.0);
        if polls >= 5.0 && bad == polls {
            break;
        }
        assert!(
            t0.elapsed() < LIMIT,
            "poll: {bad} Bad values in {polls} polls\n{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A Bad value is the server's answer: the device stays Online, nothing failed.
    for d in ["sub", "poll"] {
        assert_eq!(device_status(&g, d)["status"], "Online", "{d}");
        assert_eq!(
            g.metric("gateway_device_errors_total", &[("device", d)]),
            None,
            "{d}"
        );
    }
    let log = g.log_text();
    assert!(!log.contains("panicked"), "{log}");
    stop(g);
}

#[test]
fn an_opcua_value_that_does_not_fit_its_data_type_is_counted_logged_and_bad() {
    // Matrix row 3b: the server sends a usable value that the tag's
    // `data_type` cannot hold — a String read as Int32 (BadTypeMismatch),
    // Int16 -30000 read as UInt8 (BadOutOfRange). The gateway refuses the
    // conversion (no silent rounding): BAD sample with that status code,
    // `gateway_device_errors_total{kind="conversion"}`, one warning per tag
    // per burst; the device stays Online and its good tag goes on.
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"{}\"\nmode = \"poll\"\nscan_interval = \"200ms\"\n\
         timeout = \"2s\"\nretry_interval = \"200ms\"\nmax_retry_interval = \"1s\"",
        server.url
    );
    let tags = [
        tag_entry("text", "ns=2;s=Types/String", "Int32", ""),
        tag_entry("small", "ns=2;s=Types/Int16", "UInt8", ""),
        tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", ""),
    ];
    let demo = DemoDir::with_devices(&[device_file("conv", &head, &tags)]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("five polls with good counter values", LIMIT, |g| {
        g.metric("gateway_device_polls_total", &[("device", "conv")])
            .is_some_and(|p| p >= 5.0)
    });
    const BAD_TYPE_MISMATCH: i64 = 0x8074_0000u32 as i32 as i64;
    const BAD_OUT_OF_RANGE: i64 = 0x803C_0000u32 as i32 as i64;
    let frames = wal_frames(&demo.wal());
    let latest = latest_samples(&frames, "conv");
    for (tag, code) in [("text", BAD_TYPE_MISMATCH), ("small", BAD_OUT_OF_RANGE)] {
        let s = &latest[tag];
        assert_eq!(s["quality"], "BAD", "{tag}: {s}");
        assert_eq!(s["value"], Value::Null, "{tag}: {s}");
        assert_eq!(s["error_code"], code, "{tag}: {s}");
    }
    assert_eq!(latest["counter"]["quality"], "GOOD");
    // Counted per poll and per refused value (two per poll), from one scrape.
    let (_, body) = g.get("/metrics").expect("metrics");
    let polls = metric_in(&body, "gateway_device_polls_total", &[("device", "conv")]).unwrap_or(0.0);
    let errors = "gateway_device_errors_total";
    let mismatch = metric_in(
        &body,
        errors,
        &[
            ("device", "conv"),
            ("kind", "conversion"),
            ("code", &BAD_TYPE_MISMATCH.to_string()),
        ],
    );
    let range = metric_in(
        &body,
        errors,
        &[
            ("device", "conv"),
            ("kind", "conversion"),
            ("code", &BAD_OUT_OF_RANGE.to_string()),
        ],
    );
    assert!(
        mismatch.is_some_and(|m| m >= polls - 1.0 && m <= polls),
        "{mismatch:?} type mismatches in {polls} polls"
    );
    assert_eq!(mismatch, range, "one of each per poll");
    assert_eq!(
        metric_in(&body, errors, &[("device", "conv")]),
        mismatch.map(|m| 2.0 * m),
        "no other kind of error"
    );
    // The server answered: Online, the reason in `last_error`.
    let st = device_status(&g, "conv");
    assert_eq!(st["status"], "Online", "{st}");
    // One warning per tag (both within the first 10 s).
    let lines = log_lines(&g, "OPC UA value does not convert to the tag's data type");
    for (tag, code) in [("text", "BadTypeMismatch"), ("small", "BadOutOfRange")] {
        let of_tag: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&format!("tag=\"{tag}\"")) || l.contains(&format!("tag={tag} ")))
            .collect();
        assert_eq!(of_tag.len(), 1, "{tag}: {lines:#?}");
        assert!(of_tag[0].contains(code), "{code} not in {:?}", of_tag[0]);
        assert!(of_tag[0].contains("WARN"), "{:?}", of_tag[0]);
    }
    stop(g);
}

// Row 4 (InfluxDB refuses a line: HTTP 400, field type conflict) is
// tests/tests/influx.rs, `a_point_the_server_refuses_is_dead_lettered_and_the_rest_flows`.

// ---------------------------------------------------------------------------
// Row 5: an MQTT sink message larger than the broker takes.
// ---------------------------------------------------------------------------

const TOO_LARGE: &str = "message too large for the broker; skipped";

#[test]
fn an_mqtt_sink_message_above_the_brokers_packet_limit_is_dead_lettered_and_the_next_goes_out() {
    // Matrix row 5: oversize. The northbound broker announces a maximum
    // packet size of 16 KiB (MQTT 5 CONNACK); the sink keeps 1 KiB for the
    // packet's header, so its limit is 15 360 bytes. A 60 000-character
    // string value (received from a device on another broker, which has
    // no limit) makes a sample message above it.
    let tmp = tempfile::tempdir().unwrap();
    let south = Mosquitto::start(tmp.path());
    let north = Mosquitto::start_with(tmp.path(), "max_packet_size 16384\n");
    let labeler = (
        "labeler".to_string(),
        format!(
            "name = \"labeler\"\nprotocol = \"mqtt\"\nendpoint = \"{}\"\ntopic = \"labeler/label\"\n\
             format = \"plain\"\n\n[[tags]]\nname = \"label\"\naddress = \"payload\"\ndata_type = \"String\"\n",
            south.url()
        ),
    );
    // The archive keeps every frame (the WAL drops what every sink acknowledged).
    let sink = format!(
        "{}\n[sinks.north]\ntype = \"mqtt\"\nurl = \"{}\"\nversion = \"5\"\nqos = 1\n",
        common::ARCHIVE_SINK,
        north.url()
    );
    let sub = Subscriber::start(north.port, "bad-input-north", "gateway/test-gw/labeler/#");
    let demo = DemoDir::with_gateway(&[labeler], &sink);
    let mut g = Gateway::start(&demo, &[]);
    let north_sink = [("sink", "north")];
    g.wait_until("labeler Online and the sink connected", LIMIT, |g| {
        device_status(g, "labeler")["status"] == "Online"
            && g.metric("gateway_sink_up", &north_sink) == Some(1.0)
    });
    let long = "L".repeat(60_000);
    south.publish("labeler/label", 1, long.as_bytes());
    south.publish("labeler/label", 1, b"after-oversize");
    let label_values = |sub: &Subscriber| -> Vec<String> {
        sub.messages()
            .iter()
            .filter(|(t, _)| t == "gateway/test-gw/labeler/label")
            .map(|(_, p)| {
                serde_json::from_slice::<Value>(p).expect("JSON sample message")["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    g.wait_until("the good value northbound", LIMIT, |_| {
        label_values(&sub).iter().any(|v| v == "after-oversize")
    });
    // Both values are on the bus; only the good one went out.
    let mut stored: Vec<usize> = Vec::new();
    g.wait_until("both values in the archive", LIMIT, |_| {
        stored = tag_samples(&common::archive_frames(&demo.data()), "labeler", "label")
            .iter()
            .map(|s| s["value"].as_str().map_or(0, str::len))
            .collect();
        stored.len() >= 2
    });
    assert_eq!(stored, vec![60_000, "after-oversize".len()]);
    assert_eq!(label_values(&sub), vec!["after-oversize".to_string()]);
    // Counted once, logged once with the limit, and the connection is intact.
    assert_eq!(
        g.metric("gateway_sink_dead_lettered_total", &north_sink),
        Some(1.0)
    );
    let lines = log_lines(&g, TOO_LARGE);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for want in ["WARN", "north", "max_message=15360"] {
        assert!(lines[0].contains(want), "{want:?} not in {:?}", lines[0]);
    }
    assert_eq!(g.metric("gateway_sink_up", &north_sink), Some(1.0));
    assert_eq!(g.metric("gateway_sink_failures_total", &north_sink), Some(0.0));
    stop(g);
}

// ---------------------------------------------------------------------------
// Row 6: a bad value in a device file.
// ---------------------------------------------------------------------------

/// A Modbus device file whose `scan_interval` (line 4, value at column 17)
/// is not a duration.
const BAD_DEVICE: &str = concat!(
    "name = \"press\"\n",             // 1
    "protocol = \"modbus-tcp\"\n",    // 2
    "endpoint = \"127.0.0.1:502\"\n", // 3
    "scan_interval = \"soon\"\n",     // 4
    "\n",                             // 5
    "[[tags]]\n",                     // 6
    "name = \"pressure\"\n",          // 7
    "address = \"40001\"\n",          // 8
    "data_type = \"uint16\"\n",       // 9
);

fn check(demo: &DemoDir) -> (Option<i32>, String, String) {
    let out = Command::new(common::gateway_bin())
        .args(["check", "--config"])
        .arg(demo.config())
        .env("GATEWAY_DATA_DIR", demo.data())
        .env("GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run gateway check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_bad_value_in_a_device_file_is_refused_by_check_with_file_line_column_and_key() {
    // Matrix row 6: configuration. `gateway check` refuses the file with
    // exit code 2 and names file:line:column, the key and the value, with
    // the source line and a caret under the value.
    let demo = DemoDir::with_devices(&[("press".to_string(), BAD_DEVICE.to_string())]);
    let (code, _, stderr) = check(&demo);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("press.toml:4:17: `scan_interval`: invalid duration \"soon\""),
        "{stderr}"
    );
    assert!(stderr.contains("    | scan_interval = \"soon\"\n"), "{stderr}");
    assert!(stderr.contains(&format!("    | {}^", " ".repeat(16))), "{stderr}");
    assert!(stderr.contains("1 configuration error"), "{stderr}");
    assert!(!stderr.contains("2 configuration errors"), "{stderr}");
    assert!(!demo.wal().exists(), "check writes nothing");
    // Fixed, the same file is accepted.
    std::fs::write(
        demo.dir.path().join("devices/press.toml"),
        BAD_DEVICE.replace("\"soon\"", "\"1s\""),
    )
    .unwrap();
    let (code, stdout, stderr) = check(&demo);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
}
