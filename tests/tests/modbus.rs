//! The Modbus driver end to end: the real `gateway` binary polls a real
//! pymodbus server (TCP, and RTU over a socat pty pair); the tests read
//! what landed in the WAL with `gateway wal tail --json` and compare it
//! with the server's register map (`tests/peers/modbus_server.py`).

use tests::harness as common;

use std::time::Duration;

use common::peers::{ModbusServer, PtyPair};
use common::{device_file, latest_samples, tag_samples, wal_frames, DemoDir, Gateway};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// Every tag of `device` has a sample in the WAL.
fn wait_samples(
    g: &mut Gateway,
    demo: &DemoDir,
    device: &str,
    n: usize,
) -> std::collections::HashMap<String, Value> {
    let mut out = Default::default();
    g.wait_until(&format!("{n} tags of {device} in the WAL"), LIMIT, |_| {
        out = latest_samples(&wal_frames(&demo.wal()), device);
        out.len() >= n
    });
    out
}

const ALL_TYPES: &[&str] = &[
    r#"name = "u16"
address = "40001"
data_type = "uint16""#,
    r#"name = "u16_scaled"
address = "40001"
data_type = "uint16"
scaling = 0.1
offset = -1000.0"#,
    r#"name = "i16"
address = "40002"
data_type = "int16""#,
    r#"name = "i32_abcd"
address = "40003"
data_type = "int32""#,
    r#"name = "i32_cdab"
address = "40005"
data_type = "int32"
byte_order = "CDAB""#,
    r#"name = "i32_badc"
address = "40007"
data_type = "int32"
byte_order = "BADC""#,
    r#"name = "i32_dcba"
address = "40009"
data_type = "int32"
byte_order = "DCBA""#,
    r#"name = "u32"
address = "40011"
data_type = "uint32""#,
    r#"name = "f32_abcd"
address = "40013"
data_type = "float32""#,
    r#"name = "f32_cdab"
address = "40015"
data_type = "float32"
byte_order = "CDAB""#,
    r#"name = "f32_badc"
address = "40017"
data_type = "float32"
byte_order = "BADC""#,
    r#"name = "f32_dcba"
address = "40019"
data_type = "float32"
byte_order = "DCBA""#,
    r#"name = "i64"
address = "40021"
data_type = "int64""#,
    r#"name = "u64"
address = "40025"
data_type = "uint64""#,
    r#"name = "f64_abcd"
address = "40029"
data_type = "float64""#,
    r#"name = "f64_dcba"
address = "40033"
data_type = "float64"
byte_order = "DCBA""#,
    r#"name = "i64_cdab"
address = "40037"
data_type = "int64"
byte_order = "CDAB""#,
    r#"name = "bit0"
address = "40041.0"
data_type = "bool""#,
    r#"name = "bit1"
address = "40041.1"
data_type = "bool""#,
    r#"name = "bit13"
table = "holding"
address = 40
bit = 13
data_type = "bool""#,
    r#"name = "name"
address = "40042"
data_type = "string"
length = 5"#,
    r#"name = "code"
address = "40047"
data_type = "string"
length = 3
byte_order = "BA""#,
    r#"name = "u16_ba"
address = "40051"
data_type = "uint16"
byte_order = "BA""#,
    r#"name = "in0"
address = "30001"
data_type = "uint16"
max_value = 500.0"#,
    r#"name = "in_f32"
table = "input"
address = 1
data_type = "float32""#,
    r#"name = "coil0"
address = "00001"
data_type = "bool""#,
    r#"name = "coil1"
table = "coil"
address = 1
data_type = "bool""#,
    r#"name = "coil7"
address = "000008"
data_type = "bool""#,
    r#"name = "di1"
address = "10002"
data_type = "bool""#,
    r#"name = "di3"
table = "discrete_input"
address = 3
data_type = "bool""#,
];

#[test]
fn tcp_decodes_every_data_type_and_byte_order_exactly() {
    let demo0 = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(demo0.path());
    let head = format!(
        "protocol = \"modbus-tcp\"\nendpoint = \"{}\"\nunit_id = 1\nmax_gap = 5\nscan_interval = \"200ms\"\ntimeout = \"2s\"",
        server.address
    );
    let demo = DemoDir::with_devices(&[device_file("plc", &head, ALL_TYPES)]);

    // The plan (max_gap 5): holding 0..=50, inputs 0..=2, coils 0..=7, DIs 1..=3: one read each.
    let out = std::process::Command::new(common::gateway_bin())
        .args(["check", "--plan", "--config"])
        .arg(demo.config())
        .env("GATEWAY_DATA_DIR", demo.data())
        .env("GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("plan of plc (unit 1): 4 requests for 30 tags"),
        "{text}"
    );
    assert!(text.contains("FC3 holding"), "{text}");

    let mut g = Gateway::start(&demo, &[]);
    let s = wait_samples(&mut g, &demo, "plc", ALL_TYPES.len());
    let value = |t: &str| s[t]["value"].clone();
    let expect = [
        ("u16", json!(12345)),
        ("i16", json!(-1234)),
        ("i32_abcd", json!(-123456789)),
        ("i32_cdab", json!(-123456789)),
        ("i32_badc", json!(-123456789)),
        ("i32_dcba", json!(-123456789)),
        ("u32", json!(3000000000u64)),
        ("i64", json!(-1234567890123i64)),
        ("u64", json!(12345678901234567890u64)),
        ("f64_abcd", json!(std::f64::consts::E)),
        ("f64_dcba", json!(std::f64::consts::E)),
        ("i64_cdab", json!(-1234567890123i64)),
        ("bit0", json!(true)),
        ("bit1", json!(false)),
        ("bit13", json!(true)),
        ("name", json!("PUMP-7")),
        ("code", json!("AB12")),
        ("u16_ba", json!(4660)),
        ("in_f32", json!(-40.5)),
        ("coil0", json!(true)),
        ("coil1", json!(false)),
        ("coil7", json!(true)),
        ("di1", json!(true)),
        ("di3", json!(false)),
    ];
    for (tag, want) in expect {
        assert_eq!(value(tag), want, "{tag}: {}", s[tag]);
        assert_eq!(s[tag]["quality"], "GOOD", "{tag}: {}", s[tag]);
        assert_eq!(s[tag]["error_code"], 0, "{tag}");
    }
    assert_eq!(value("in0"), json!(555));
    for tag in ["f32_abcd", "f32_cdab", "f32_badc", "f32_dcba"] {
        let v = value(tag).as_f64().unwrap();
        // The peer stores 3.14159 (not π) as float32.
        #[allow(clippy::approx_constant)]
        let want = 3.14159;
        assert!((v - want).abs() < 1e-6, "{tag}: {v}");
    }
    // Scaling keeps the raw value; 12345 * 0.1 - 1000 = 234.5.
    let scaled = &s["u16_scaled"];
    assert!(
        (scaled["value"].as_f64().unwrap() - 234.5).abs() < 1e-9,
        "{scaled}"
    );
    assert_eq!(scaled["raw_value"], json!(12345));
    // Above max_value (555 > 500): the value is kept, the quality is UNCERTAIN.
    assert_eq!(s["in0"]["quality"], "UNCERTAIN", "{}", s["in0"]);

    // Metrics: 4 requests per poll, no errors.
    let polls = g.metric_sum("gateway_device_polls_total").unwrap();
    let requests = g.metric_sum("gateway_device_requests_total").unwrap();
    assert!(polls > 0.0);
    assert!(
        (requests / polls - 4.0).abs() < 0.5,
        "{requests} requests in {polls} polls"
    );
    assert_eq!(g.metric_sum("gateway_device_errors_total").unwrap_or(0.0), 0.0);
}

#[test]
fn exceptions_fail_only_their_request_and_busy_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(tmp.path());
    let base = format!(
        "protocol = \"modbus-tcp\"\nendpoint = \"{}\"\nscan_interval = \"200ms\"\ntimeout = \"2s\"",
        server.address
    );
    let tags = [
        "name = \"ok\"\naddress = \"40001\"\ndata_type = \"uint16\"",
        "name = \"missing\"\naddress = \"40101\"\ndata_type = \"uint16\"",
        "name = \"busy\"\naddress = \"40301\"\ndata_type = \"uint16\"",
    ];
    let patient = format!("{base}\nunit_id = 1\nbusy_retries = 3\nbusy_retry_interval = \"20ms\"");
    let impatient = format!("{base}\nunit_id = 2\nbusy_retries = 0");
    let demo = DemoDir::with_devices(&[
        device_file("patient", &patient, &tags),
        device_file("impatient", &impatient, &tags),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    let p = wait_samples(&mut g, &demo, "patient", 3);
    assert_eq!(p["ok"]["value"], json!(12345), "{}", p["ok"]);
    assert_eq!(p["missing"]["quality"], "BAD");
    assert_eq!(p["missing"]["error_code"], 2, "illegal data address");
    assert_eq!(
        p["busy"]["value"],
        json!(777),
        "busy answered on the 3rd try: {}",
        p["busy"]
    );
    assert_eq!(p["busy"]["quality"], "GOOD");
    let i = wait_samples(&mut g, &demo, "impatient", 3);
    assert_eq!(i["ok"]["value"], json!(2222), "unit 2's own map");
    // Without retries, some polls see exception 6 (busy) — wait for one.
    g.wait_until("a busy sample of the impatient device", LIMIT, |_| {
        tag_samples(&wal_frames(&demo.wal()), "impatient", "busy")
            .iter()
            .any(|s| s["error_code"] == 6 && s["quality"] == "BAD")
    });
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"gateway_device_errors_total{device="patient",kind="exception",code="2"}"#),
        "{metrics}"
    );
    // Exceptions mean the device answered: it stays Online.
    let status = g.status();
    for d in status["devices"].as_array().unwrap() {
        assert_eq!(d["status"], "Online", "{d}");
    }
}

#[test]
fn a_slow_device_goes_offline_with_backoff_and_comes_back_online() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(tmp.path());
    let head = format!(
        "protocol = \"modbus-tcp\"\nendpoint = \"{}\"\nscan_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         max_retries = 2\nretry_interval = \"200ms\"\nmax_retry_interval = \"400ms\"",
        server.address
    );
    let demo = DemoDir::with_devices(&[device_file(
        "slow",
        &head,
        &["name = \"v\"\naddress = \"40001\"\ndata_type = \"uint16\""],
    )]);
    let mut g = Gateway::start(&demo, &[]);
    let events = |demo: &DemoDir| -> Vec<String> {
        wal_frames(&demo.wal())
            .iter()
            .filter(|f| f["type"] == "EVENT" && f["kind"] == "DEVICE_STATUS_CHANGED")
            .map(|f| f["status"].as_str().unwrap().to_string())
            .collect()
    };
    g.wait_until("Online event", LIMIT, |_| events(&demo) == ["Online"]);
    server.set_delay(1.0);
    g.wait_until("Offline event", LIMIT, |_| events(&demo) == ["Online", "Offline"]);
    let s = latest_samples(&wal_frames(&demo.wal()), "slow");
    assert_eq!(s["v"]["quality"], "BAD");
    assert_eq!(s["v"]["error_code"], -1, "timeout: {}", s["v"]);
    assert_eq!(g.status()["devices"][0]["status"], "Offline");
    // Backoff: while offline the device is retried every ≤ 400 ms, not every 100 ms.
    let polls_0 = g.metric_sum("gateway_device_polls_total").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let polls_1 = g.metric_sum("gateway_device_polls_total").unwrap();
    // 2 s at (300 ms timeout + 400 ms backoff) per attempt: ~3 attempts, far below 20.
    assert!(
        polls_1 - polls_0 <= 6.0,
        "{} polls in 2 s while offline",
        polls_1 - polls_0
    );
    server.set_delay(0.0);
    g.wait_until("Online again", LIMIT, |_| {
        events(&demo) == ["Online", "Offline", "Online"]
    });
    g.wait_until("a good sample", LIMIT, |_| {
        latest_samples(&wal_frames(&demo.wal()), "slow")["v"]["quality"] == "GOOD"
    });
    assert!(g.metric_sum("gateway_device_errors_total").unwrap() > 0.0);
}

#[test]
fn rtu_two_slaves_share_one_serial_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(tmp.path());
    let _server = ModbusServer::rtu(tmp.path(), &pty.b, 19200);
    let line = format!(
        "protocol = \"modbus-rtu\"\nport = \"{}\"\nbaud_rate = 19200\nparity = \"none\"\nscan_interval = \"200ms\"\ntimeout = \"1s\"",
        pty.a.display()
    );
    let tags = [
        "name = \"hr0\"\naddress = \"40001\"\ndata_type = \"uint16\"",
        "name = \"temp\"\naddress = \"30002\"\ndata_type = \"float32\"",
        "name = \"coil0\"\naddress = \"00001\"\ndata_type = \"bool\"",
    ];
    let demo = DemoDir::with_devices(&[
        device_file("slave-1", &format!("{line}\nunit_id = 1"), &tags),
        device_file("slave-2", &format!("{line}\nunit_id = 2"), &tags),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    let s1 = wait_samples(&mut g, &demo, "slave-1", 3);
    let s2 = wait_samples(&mut g, &demo, "slave-2", 3);
    assert_eq!(s1["hr0"]["value"], json!(12345), "{}", s1["hr0"]);
    assert_eq!(s2["hr0"]["value"], json!(2222), "{}", s2["hr0"]);
    for s in [&s1, &s2] {
        assert_eq!(s["temp"]["value"], json!(-40.5));
        assert_eq!(s["coil0"]["value"], json!(true));
    }
    // Both keep polling over the one line, without errors.
    let frames = |d: &str| {
        wal_frames(&demo.wal())
            .iter()
            .filter(|f| f["type"] == "DATA" && f["device"] == d)
            .count()
    };
    let (a, b) = (frames("slave-1"), frames("slave-2"));
    g.wait_until("both slaves to poll again", LIMIT, |_| {
        frames("slave-1") > a + 3 && frames("slave-2") > b + 3
    });
    assert_eq!(g.metric_sum("gateway_device_errors_total").unwrap_or(0.0), 0.0);
}

#[test]
fn writes_reach_the_device_and_are_recorded_on_the_bus() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(tmp.path());
    let head = format!(
        "protocol = \"modbus-tcp\"\nendpoint = \"{}\"\nscan_interval = \"200ms\"\ntimeout = \"2s\"",
        server.address
    );
    let tags = [
        "name = \"setpoint\"\naddress = \"40061\"\ndata_type = \"uint16\"\naccess = \"ReadWrite\"\nscaling = 0.1",
        "name = \"flow\"\naddress = \"40062\"\ndata_type = \"float32\"\naccess = \"Write\"\nbyte_order = \"CDAB\"",
        "name = \"pump\"\naddress = \"00009\"\ndata_type = \"bool\"\naccess = \"ReadWrite\"",
        "name = \"ro\"\naddress = \"40001\"\ndata_type = \"uint16\"",
    ];
    let demo = DemoDir::with_devices(&[device_file("plc", &head, &tags)]);
    let mut g = Gateway::start(&demo, &[]);
    wait_samples(&mut g, &demo, "plc", 3);
    let url = |t: &str| format!("/api/v1/devices/plc/tags/{t}/write");

    // 42.5 / 0.1 = 425 into holding register 60 (FC6).
    let (code, body) = g.post_json(&url("setpoint"), &json!({"value": 42.5}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "ok");
    let w = server.wait_write(LIMIT, |w| w["address"] == 60);
    assert_eq!(w["write"], "holding");
    assert_eq!(w["values"], json!([425]));
    g.wait_until("the poll to read 42.5 back", LIMIT, |_| {
        latest_samples(&wal_frames(&demo.wal()), "plc")["setpoint"]["raw_value"] == json!(425)
    });

    // A float in CDAB order: two registers, FC16, low word first.
    let (code, body) = g.post_json(&url("flow"), &json!({"value": 1.5}));
    assert_eq!(code, 200, "{body}");
    let w = server.wait_write(LIMIT, |w| w["address"] == 61);
    let bits = 1.5f32.to_bits();
    assert_eq!(w["values"], json!([bits & 0xFFFF, bits >> 16]));

    // A coil (FC5).
    let (code, body) = g.post_json(&url("pump"), &json!({"value": true}));
    assert_eq!(code, 200, "{body}");
    let w = server.wait_write(LIMIT, |w| w["write"] == "coil");
    assert_eq!(
        (w["address"].clone(), w["values"].clone()),
        (json!(8), json!([true]))
    );

    // Refused before the wire: read-only tag, out of range, unknown tag, bad body.
    let (code, body) = g.post_json(&url("ro"), &json!({"value": 1}));
    assert_eq!((code, body["status"].clone()), (422, json!("rejected")), "{body}");
    let (code, body) = g.post_json(&url("setpoint"), &json!({"value": 7000.0}));
    assert_eq!(code, 422, "70000 does not fit uint16: {body}");
    assert_eq!(g.post_json(&url("nope"), &json!({"value": 1})).0, 404);
    assert_eq!(g.post_json(&url("setpoint"), &json!({"v": 1})).0, 400);
    assert_eq!(server.writes().len(), 3, "nothing else reached the device");

    // The bus holds each command and its result.
    let frames = wal_frames(&demo.wal());
    let commands: Vec<&Value> = frames.iter().filter(|f| f["type"] == "COMMAND").collect();
    let results: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "EVENT" && f["kind"] == "COMMAND_RESULT")
        .collect();
    assert_eq!(commands.len(), 5, "3 written + 2 rejected by the driver");
    assert_eq!(results.len(), 5);
    assert_eq!(commands[0]["tag"], "setpoint");
    assert_eq!(commands[0]["origin"], "http");
    assert_eq!(results[0]["status"], "ok");
    assert_eq!(results[0]["attributes"]["command_id"], commands[0]["command_id"]);
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        metrics.contains(r#"gateway_device_writes_total{device="plc",result="ok"} 3"#),
        "{metrics}"
    );
}

#[test]
fn rtu_over_tcp_reads_two_units_through_one_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::rtu_over_tcp(tmp.path());
    let head = format!(
        "protocol = \"modbus-rtu-over-tcp\"\nendpoint = \"{}\"\nscan_interval = \"200ms\"\ntimeout = \"2s\"",
        server.address
    );
    let tags = ["name = \"hr0\"\naddress = \"40001\"\ndata_type = \"uint16\""];
    let demo = DemoDir::with_devices(&[
        device_file("unit-1", &format!("{head}\nunit_id = 1"), &tags),
        device_file("unit-2", &format!("{head}\nunit_id = 2"), &tags),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    assert_eq!(
        wait_samples(&mut g, &demo, "unit-1", 1)["hr0"]["value"],
        json!(12345)
    );
    assert_eq!(
        wait_samples(&mut g, &demo, "unit-2", 1)["hr0"]["value"],
        json!(2222)
    );
    assert_eq!(g.metric_sum("gateway_device_errors_total").unwrap_or(0.0), 0.0);
}

#[test]
fn a_silent_slave_does_not_starve_the_others_on_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pty = PtyPair::new(tmp.path());
    let _server = ModbusServer::rtu(tmp.path(), &pty.b, 19200);
    let line = format!(
        "protocol = \"modbus-rtu\"\nport = \"{}\"\nbaud_rate = 19200\nscan_interval = \"200ms\"\ntimeout = \"300ms\"\n\
         max_retries = 2\nretry_interval = \"200ms\"\nmax_retry_interval = \"1s\"",
        pty.a.display()
    );
    let tags = ["name = \"hr0\"\naddress = \"40001\"\ndata_type = \"uint16\""];
    // Unit 5 does not exist: on a serial line nobody answers, every request times out.
    let demo = DemoDir::with_devices(&[
        device_file("slave-1", &format!("{line}\nunit_id = 1"), &tags),
        device_file("ghost", &format!("{line}\nunit_id = 5"), &tags),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("the ghost to go Offline", LIMIT, |_| {
        wal_frames(&demo.wal()).iter().any(|f| {
            f["kind"] == "DEVICE_STATUS_CHANGED" && f["device"] == "ghost" && f["status"] == "Offline"
        })
    });
    let good = |demo: &DemoDir| {
        wal_frames(&demo.wal())
            .iter()
            .filter(|f| f["type"] == "DATA" && f["device"] == "slave-1")
            .filter(|f| f["samples"][0]["quality"] == "GOOD")
            .count()
    };
    let before = good(&demo);
    std::thread::sleep(Duration::from_secs(3));
    let after = good(&demo);
    // 3 s at 200 ms is 15 polls; the ghost's 300 ms timeouts (backed off
    // to one per second) may delay some, but slave-1 keeps its turns.
    assert!(
        after - before >= 6,
        "slave-1 got {} good polls in 3 s",
        after - before
    );
    let (_, metrics) = g.get("/metrics").unwrap();
    assert!(
        !metrics.contains(r#"gateway_device_errors_total{device="slave-1""#),
        "slave-1 must not fail because of the ghost:\n{metrics}"
    );
    assert!(metrics.contains(r#"gateway_device_errors_total{device="ghost",kind="timeout",code="-1"}"#));
}

#[test]
fn devices_on_one_endpoint_share_a_connection_unless_told_to_close_it() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = ModbusServer::tcp(tmp.path());
    let closing = ModbusServer::tcp(tmp.path());
    let head = |addr: &str, extra: &str| {
        format!("protocol = \"modbus-tcp\"\nendpoint = \"{addr}\"\nscan_interval = \"100ms\"\ntimeout = \"2s\"\n{extra}")
    };
    let tags = ["name = \"hr0\"\naddress = \"40001\"\ndata_type = \"uint16\""];
    let demo = DemoDir::with_devices(&[
        device_file("a", &head(&shared.address, "unit_id = 1"), &tags),
        device_file("b", &head(&shared.address, "unit_id = 2"), &tags),
        device_file(
            "c",
            &head(
                &closing.address,
                "unit_id = 1\nclose_connection_after_poll = true",
            ),
            &tags,
        ),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    let polls = |g: &Gateway| g.metric_sum("gateway_device_polls_total").unwrap_or(0.0);
    g.wait_until("30 polls", LIMIT, |g| polls(g) >= 30.0);
    assert_eq!(
        shared.connections(),
        1,
        "units 1 and 2 of one endpoint share one connection"
    );
    assert!(
        closing.connections() >= 5,
        "close_connection_after_poll reconnects every poll; {} connections",
        closing.connections()
    );
    assert_eq!(g.metric_sum("gateway_device_errors_total").unwrap_or(0.0), 0.0);
}
