//! The OPC UA driver end to end: the real `gateway` binary against real
//! servers — Python asyncua (`tests/peers/opcua_server.py`) and node-opcua
//! (`tests/peers/opcua_node_server.js`) — on loopback. What reached the
//! bus is read back with `gateway wal tail --json`.

use tests::harness as common;

use std::collections::HashMap;
use std::time::Duration;

use common::opcua::OpcuaServer;
use common::{
    device_file, device_status, gateway_bin, latest_samples, tag_entry, tag_samples, wal_frames, DemoDir,
    Gateway,
};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
/// SourceTimestamp of the servers' fixed values: 2026-01-02T03:04:05.123456Z.
const FIXED_TS: u64 = 1_767_323_045_123_456_000;
const BAD_NODE_ID_UNKNOWN: i64 = 0x8034_0000u32 as i32 as i64;
const BAD_SENSOR_FAILURE: i64 = 0x808C_0000u32 as i32 as i64;
const UNCERTAIN_LAST_USABLE: i64 = 0x4090_0000;

/// `(tag, node, data_type, expected value)` of the fixed variables.
fn fixed(ns: u16) -> Vec<(&'static str, String, &'static str, Value)> {
    let s = |id: &str| format!("ns={ns};s={id}");
    vec![
        ("bool", s("Types/Boolean"), "Boolean", json!(true)),
        ("sbyte", s("Types/SByte"), "Int8", json!(-12)),
        ("byte", s("Types/Byte"), "UInt8", json!(200)),
        ("i16", s("Types/Int16"), "Int16", json!(-30000)),
        ("u16", s("Types/UInt16"), "UInt16", json!(60000)),
        ("i32", s("Types/Int32"), "Int32", json!(-2_000_000_000)),
        ("u32", s("Types/UInt32"), "UInt32", json!(4_000_000_000u64)),
        (
            "i64",
            s("Types/Int64"),
            "Int64",
            json!(-9_000_000_000_000_000_000i64),
        ),
        (
            "u64",
            s("Types/UInt64"),
            "UInt64",
            json!(18_000_000_000_000_000_000u64),
        ),
        ("float", s("Types/Float"), "Float", json!(1.5)),
        ("double", s("Types/Double"), "Double", json!(std::f64::consts::PI)),
        ("string", s("Types/String"), "String", json!("héllo, wörld")),
        (
            "datetime",
            s("Types/DateTime"),
            "DateTime",
            json!(1_795_507_200_123i64),
        ),
        // `wal tail --json` prints bytes as hex.
        ("bytes", s("Types/ByteString"), "ByteArray", json!("0001feff")),
        (
            "doubles",
            s("Types/DoubleArray"),
            "Double",
            json!("[1.5,-2.25,3.0]"),
        ),
        ("ints", s("Types/Int32Array"), "Int32", json!("[1,2,3,4]")),
        ("numeric_id", format!("ns={ns};i=1001"), "Double", json!(42.5)),
        (
            "guid_id",
            format!("ns={ns};g=6f1a2b3c-0000-4000-8000-000000000001"),
            "Int32",
            json!(7),
        ),
        ("opaque_id", format!("ns={ns};b=AQID"), "String", json!("opaque")),
    ]
}

fn status_events(demo: &DemoDir, device: &str) -> Vec<(String, String)> {
    wal_frames(&demo.wal())
        .iter()
        .filter(|f| f["type"] == "EVENT" && f["kind"] == "DEVICE_STATUS_CHANGED" && f["device"] == device)
        .map(|f| {
            (
                f["status"].as_str().unwrap_or_default().to_string(),
                f["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every sample of `tag` of `device` in bus order.
fn series(demo: &DemoDir, device: &str, tag: &str) -> Vec<Value> {
    tag_samples(&wal_frames(&demo.wal()), device, tag)
}

fn wait_tags(g: &mut Gateway, demo: &DemoDir, device: &str, tags: &[&str]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    g.wait_until(
        &format!("{} tags of {device} on the bus", tags.len()),
        LIMIT,
        |_| {
            out = latest_samples(&wal_frames(&demo.wal()), device);
            tags.iter().all(|t| out.contains_key(*t))
        },
    );
    out
}

#[track_caller]
fn check_fixed(s: &HashMap<String, Value>, device: &str, ns: u16) {
    for (name, _, _, want) in fixed(ns) {
        let got = &s[name];
        assert_eq!(got["value"], want, "{device}.{name}: {got}");
        assert_eq!(got["quality"], "GOOD", "{device}.{name}: {got}");
        assert_eq!(got["ts_ns"], FIXED_TS, "{device}.{name}: SourceTimestamp {got}");
        assert_eq!(got["error_code"], 0, "{device}.{name}: {got}");
    }
}

/// Subscription and poll modes read every type exactly, with the server's
/// SourceTimestamp; status codes become quality and error_code; arrays are
/// JSON or one sample per element; a percent deadband uses the EURange;
/// an unknown node is one BAD tag, not a dead device; a device whose
/// server is unreachable does not hold the others back.
#[test]
fn subscription_and_poll_deliver_exact_values_status_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let mut tags: Vec<String> = fixed(2)
        .iter()
        .map(|(n, a, dt, _)| tag_entry(n, a, dt, ""))
        .collect();
    tags.push(tag_entry("bad", "ns=2;s=Status/Bad", "Double", ""));
    tags.push(tag_entry("uncertain", "ns=2;s=Status/Uncertain", "Double", ""));
    tags.push(tag_entry("missing", "ns=2;s=No/Such/Node", "Double", ""));
    tags.push(tag_entry(
        "elements",
        "ns=2;s=Types/DoubleArray",
        "Double",
        "array_mode = \"elements\"",
    ));
    tags.push(tag_entry(
        "level",
        "ns=2;s=Analog/Level",
        "Double",
        "deadband_type = \"percent\"\ndeadband_value = 5.0",
    ));
    let head = |mode: &str| {
        format!(
            "protocol = \"opcua\"\nendpoint = \"{}\"\nmode = \"{mode}\"\nscan_interval = \"200ms\"\n\
             timeout = \"2s\"\nretry_interval = \"200ms\"\nmax_retry_interval = \"1s\"",
            server.url
        )
    };
    let mut poll_tags: Vec<String> = tags
        .iter()
        .filter(|t| !t.contains("deadband_type"))
        .cloned()
        .collect();
    poll_tags.push(tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", ""));
    // Sampled faster than it changes, queued between publishes.
    tags.push(tag_entry(
        "counter",
        "ns=2;s=Dynamic/Counter",
        "UInt32",
        "sampling_interval = \"50ms\"",
    ));
    let dead_port = common::free_port();
    let demo = DemoDir::with_devices(&[
        device_file("sub", &head("subscription"), &tags),
        device_file("poll", &head("poll"), &poll_tags),
        device_file(
            "dead",
            &format!(
                "protocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{dead_port}/\"\ntimeout = \"5s\"\n\
                 retry_interval = \"5s\""
            ),
            &[tag_entry("x", "ns=2;i=1", "Double", "")],
        ),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    let names: Vec<&str> = fixed(2).iter().map(|f| f.0).collect();
    for d in ["sub", "poll"] {
        let s = wait_tags(&mut g, &demo, d, &names);
        check_fixed(&s, d, 2);
        let bad = &s["bad"];
        assert_eq!(bad["quality"], "BAD", "{d}: {bad}");
        assert_eq!(bad["value"], Value::Null, "{d}: {bad}");
        assert_eq!(bad["error_code"], BAD_SENSOR_FAILURE, "{d}: {bad}");
        let u = &s["uncertain"];
        assert_eq!(
            (u["quality"].clone(), u["value"].clone()),
            (json!("UNCERTAIN"), json!(5.5)),
            "{d}: {u}"
        );
        assert_eq!(u["error_code"], UNCERTAIN_LAST_USABLE, "{d}: {u}");
        let m = &s["missing"];
        assert_eq!(
            (m["quality"].clone(), m["error_code"].clone()),
            (json!("BAD"), json!(BAD_NODE_ID_UNKNOWN)),
            "{d}: {m}"
        );
        for (i, v) in [1.5, -2.25, 3.0].iter().enumerate() {
            assert_eq!(s[&format!("elements[{i}]")]["value"], json!(v), "{d}");
        }
    }
    // Changing values: the counter advances, stamped by the server.
    g.wait_until("the counter to advance 10 times in both modes", LIMIT, |_| {
        ["sub", "poll"]
            .iter()
            .all(|d| series(&demo, d, "counter").len() >= 10)
    });
    for d in ["sub", "poll"] {
        let c = series(&demo, d, "counter");
        let values: Vec<u64> = c.iter().filter_map(|s| s["value"].as_u64()).collect();
        assert!(
            values.windows(2).all(|w| w[1] >= w[0]),
            "{d}: counter went back: {values:?}"
        );
        let ts: Vec<u64> = c.iter().filter_map(|s| s["ts_ns"].as_u64()).collect();
        assert!(
            ts.iter().all(|t| *t > FIXED_TS),
            "{d}: counter timestamps are the server's"
        );
    }
    // Subscription mode with a 100 ms server period and queue_size 10:
    // consecutive counter values, none lost between publishes.
    let sub: Vec<u64> = series(&demo, "sub", "counter")
        .iter()
        .filter_map(|s| s["value"].as_u64())
        .collect();
    let gaps = sub.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(gaps, 0, "subscription lost counter values: {sub:?}");
    // Percent deadband: 5 % of the EURange 0..200 = 10 units between notifications.
    g.wait_until("three level notifications", LIMIT, |_| {
        series(&demo, "sub", "level").len() >= 3
    });
    let level: Vec<f64> = series(&demo, "sub", "level")
        .iter()
        .filter_map(|s| s["value"].as_f64())
        .collect();
    for w in level.windows(2) {
        let moved = (w[1] - w[0]).abs();
        assert!(
            moved > 10.0 || w[1] < w[0],
            "level moved {moved} < deadband: {level:?}"
        );
    }
    // Metrics and status: both devices Online with their items; the dead one Offline.
    assert_eq!(device_status(&g, "sub")["status"], "Online");
    assert_eq!(device_status(&g, "poll")["status"], "Online");
    g.wait_until("the dead device Offline", LIMIT, |g| {
        device_status(g, "dead")["status"] == "Offline"
    });
    let metrics = g.get("/metrics").unwrap().1;
    let monitored = tags.len() - 1; // "missing" was refused
    assert!(
        metrics.contains(&format!(
            "gateway_opcua_monitored_items{{device=\"sub\"}} {monitored}"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("opcua"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("gateway_opcua_session_up{device=\"sub\"} 1"));
    assert!(metrics.contains("gateway_opcua_subscriptions{device=\"sub\"} 1"));
    assert!(g.metric_sum("gateway_opcua_notifications_total").unwrap() > 20.0);
    assert!(g.metric_sum("gateway_opcua_read_duration_seconds_count").unwrap() > 5.0);
    assert!(g.metric_sum("gateway_opcua_bad_values_total").unwrap() >= 2.0);
    assert_eq!(server.sessions_created(), 2, "one session per device");
    drop(g);
}

/// Writes: the node's own type, inverse scaling, refusals before the wire.
#[test]
fn writes_reach_the_server_with_the_node_type() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &[]);
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"{}\"\ntimeout = \"2s\"",
        server.url
    );
    let tags = [
        tag_entry(
            "setpoint",
            "ns=2;s=Control/Setpoint",
            "Double",
            "access = \"ReadWrite\"\nscaling = 0.5",
        ),
        tag_entry(
            "enable",
            "ns=2;s=Control/Enable",
            "Boolean",
            "access = \"ReadWrite\"",
        ),
        tag_entry("mode", "ns=2;s=Control/Mode", "Int16", "access = \"Write\""),
        tag_entry("ro", "ns=2;s=Types/Double", "Double", ""),
        tag_entry(
            "not_writable",
            "ns=2;s=Types/Int32",
            "Int32",
            "access = \"ReadWrite\"",
        ),
    ];
    let demo = DemoDir::with_devices(&[device_file("plc", &head, &tags)]);
    let mut g = Gateway::start(&demo, &[]);
    wait_tags(&mut g, &demo, "plc", &["setpoint", "enable"]);
    let url = |t: &str| format!("/api/v1/devices/plc/tags/{t}/write");
    let (code, body) = g.post_json(&url("setpoint"), &json!({"value": 12.5}));
    assert_eq!((code, body["status"].clone()), (200, json!("ok")), "{body}");
    assert_eq!(
        g.post_json(&url("enable"), &json!({"value": true})).1["status"],
        "ok"
    );
    assert_eq!(g.post_json(&url("mode"), &json!({"value": -3})).1["status"], "ok");
    let writes = server.writes();
    assert_eq!(
        writes,
        vec![
            json!({"node": "ns=2;s=Control/Setpoint", "value": 25.0, "type": "Double"}),
            json!({"node": "ns=2;s=Control/Enable", "value": true, "type": "Boolean"}),
            json!({"node": "ns=2;s=Control/Mode", "value": -3, "type": "Int16"}),
        ],
        "12.5 / scaling 0.5 = 25.0 as a Double; the Int16 as an Int16"
    );
    g.wait_until("the subscription to report the new setpoint", LIMIT, |_| {
        latest_samples(&wal_frames(&demo.wal()), "plc")["setpoint"]["value"] == json!(12.5)
    });
    // Refused by the gateway, never sent.
    let (_, body) = g.post_json(&url("ro"), &json!({"value": 1.0}));
    assert_eq!(body["status"], "rejected", "{body}");
    let (_, body) = g.post_json(&url("mode"), &json!({"value": 40000}));
    assert_eq!(body["status"], "rejected", "{body}");
    // Refused by the server: its status code comes back.
    let (_, body) = g.post_json(&url("not_writable"), &json!({"value": 1}));
    assert_eq!(body["status"], "exception", "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("Bad"),
        "{body}"
    );
    assert_eq!(server.writes().len(), 3);
}

/// Basic256Sha256 SignAndEncrypt with a username. The server certificate
/// is unknown at first: both devices are in status Error naming the
/// certificate and where to trust it (no crash, paced retries). The
/// operator's step — moving it from `<pki_dir>/rejected` to
/// `<pki_dir>/trusted` — heals the right password by itself, and the wrong
/// one stays Error with the identity refusal as its new reason.
#[test]
fn secure_sessions_trust_list_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(
        dir.path(),
        &["--secure", "--users", "alice:secret", "--no-anonymous"],
    );
    let pki = dir.path().join("pki");
    let secure_with = |name: &str, policy: &str, pw_var: &str| {
        device_file(
            name,
            &format!(
                "protocol = \"opcua\"\nendpoint = \"{}\"\nsecurity_policy = \"{policy}\"\n\
                 security_mode = \"SignAndEncrypt\"\nusername = \"alice\"\npassword = \"${{{pw_var}}}\"\n\
                 pki_dir = \"{}\"\ntimeout = \"3s\"\nretry_interval = \"300ms\"\nmax_retry_interval = \"1s\"",
                server.url,
                pki.display()
            ),
            &[tag_entry("double", "ns=2;s=Types/Double", "Double", "")],
        )
    };
    let secure = |name: &str, pw_var: &str| secure_with(name, "Basic256Sha256", pw_var);
    let demo = DemoDir::with_devices(&[
        secure("good", "PW_GOOD"),
        secure("wrongpw", "PW_BAD"),
        secure_with("aes128", "Aes128_Sha256_RsaOaep", "PW_GOOD"),
        secure_with("aes256", "Aes256_Sha256_RsaPss", "PW_GOOD"),
    ]);
    let mut g = Gateway::start(&demo, &[("PW_GOOD", "secret"), ("PW_BAD", "wrong")]);
    for d in ["good", "wrongpw"] {
        g.wait_until(&format!("{d} in status Error"), LIMIT, |g| {
            device_status(g, d)["status"] == "Error"
        });
        let ev = status_events(&demo, d);
        assert_eq!(ev[0].0, "Error", "{d}: {ev:?}");
        // The first device to see the unknown certificate gets
        // BadCertificateUntrusted (and saves it in rejected/); the other
        // then finds it in rejected/: BadSecurityChecksFailed. Both
        // reasons say where to trust it.
        let trusted = format!("move it to {}", pki.join("trusted").display());
        assert!(
            (ev[0].1.contains("BadCertificateUntrusted") || ev[0].1.contains("BadSecurityChecksFailed"))
                && ev[0].1.contains(&trusted),
            "{d}: the reason names the cause and the fix: {ev:?}"
        );
    }
    // The gateway's own certificate was created on first start.
    assert!(pki.join("own/cert.der").is_file());
    assert!(pki.join("private/private.pem").is_file());
    // The operator trusts the rejected server certificate.
    let rejected: Vec<_> = std::fs::read_dir(pki.join("rejected"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    for p in &rejected {
        std::fs::rename(p, pki.join("trusted").join(p.file_name().unwrap())).unwrap();
    }
    // The same over the two newer policies (SignAndEncrypt, username).
    for d in ["good", "aes128", "aes256"] {
        let s = wait_tags(&mut g, &demo, d, &["double"]);
        assert_eq!(s["double"]["value"], json!(std::f64::consts::PI), "{d}");
        assert_eq!(s["double"]["ts_ns"], FIXED_TS, "{d}");
        assert_eq!(device_status(&g, d)["status"], "Online", "{d}");
    }
    g.wait_until("wrongpw's identity refusal", LIMIT, |_| {
        status_events(&demo, "wrongpw")
            .last()
            .is_some_and(|e| e.0 == "Error" && !e.1.contains("Certificate"))
    });
    let ev = status_events(&demo, "wrongpw");
    assert!(ev.iter().all(|e| e.0 == "Error"), "never Online: {ev:?}");
    assert!(latest_samples(&wal_frames(&demo.wal()), "wrongpw").is_empty());
    // Paced: retries at 300 ms doubling to 1 s, not a tight loop.
    let attempts = g.metric_sum("gateway_opcua_session_attempts_total").unwrap();
    assert!(attempts < 200.0, "{attempts} session attempts");
}

/// A server restart (SIGKILL, down for 3 s) mid-stream: Offline with BAD
/// samples, then the driver creates a new session and every subscription
/// by itself — one new session on the restarted server, not a flood —
/// and values flow again.
#[test]
fn server_restart_recreates_the_session_and_all_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"{}\"\ntimeout = \"1s\"\nretry_interval = \"200ms\"\n\
         max_retry_interval = \"1s\"\nkeep_alive_interval = \"1s\"\nsession_timeout = \"10s\"",
        server.url
    );
    let tags = [
        tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", ""),
        tag_entry("sine", "ns=2;s=Dynamic/Sine", "Double", "scan_rate = \"500ms\""),
        // Constant values behind a gateway deadband: the BAD samples of
        // the loss go through the deadband too, so the first good value
        // after the restart is published although it did not move.
        tag_entry(
            "double",
            "ns=2;s=Types/Double",
            "Double",
            "mode = \"poll\"\ndeadband = 1.0",
        ),
        tag_entry("i32", "ns=2;s=Types/Int32", "Int32", "deadband = 5.0"),
        tag_entry(
            "elems",
            "ns=2;s=Types/Int32Array",
            "Int32",
            "array_mode = \"elements\"",
        ),
    ];
    let demo = DemoDir::with_devices(&[device_file("plc", &head, &tags)]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("counter values", LIMIT, |_| {
        series(&demo, "plc", "counter").len() >= 5
    });
    assert_eq!(server.sessions_created(), 1);
    let before = series(&demo, "plc", "counter").len();
    server.kill();
    g.wait_until("Offline", LIMIT, |_| {
        status_events(&demo, "plc").iter().any(|e| e.0 == "Offline")
    });
    // One BAD sample per tag follows the Offline event.
    g.wait_until("BAD samples after the loss", LIMIT, |_| {
        let bad = latest_samples(&wal_frames(&demo.wal()), "plc");
        ["counter", "sine", "double", "i32", "elems[0]", "elems[3]"]
            .iter()
            .all(|t| bad[*t]["quality"] == "BAD")
    });
    std::thread::sleep(Duration::from_secs(3));
    let failed_while_down = g
        .metric_sum("gateway_opcua_session_attempts_total")
        .unwrap_or(0.0);
    server.restart();
    g.wait_until("Online again", LIMIT, |_| {
        status_events(&demo, "plc")
            .iter()
            .filter(|e| e.0 == "Online")
            .count()
            == 2
    });
    // Both subscriptions (1 s and 500 ms) and the poll group deliver again.
    g.wait_until("fresh counter, sine and double values", LIMIT, |_| {
        let s = latest_samples(&wal_frames(&demo.wal()), "plc");
        ["counter", "sine", "double", "i32", "elems[0]", "elems[3]"]
            .iter()
            .all(|t| s[*t]["quality"] == "GOOD")
            && series(&demo, "plc", "counter").len() > before + 5
    });
    // The restarted server counts its sessions from zero: exactly one.
    assert_eq!(server.sessions_created(), 1, "one new session after the restart");
    // Paced attempts while the server was down: 200 ms doubling to 1 s for
    // ~3 s is at most ~8 attempts, nowhere near a flood.
    assert!(failed_while_down <= 12.0, "{failed_while_down} session attempts");
    let m = g.get("/metrics").unwrap().1;
    assert!(m.contains("gateway_opcua_subscriptions{device=\"plc\"} 2"), "{m}");
    assert!(
        m.contains("gateway_opcua_monitored_items{device=\"plc\"} 4"),
        "{m}"
    );
}

/// A second, independent server implementation (node-opcua): the same
/// subscription reads exact values and its timestamps, and a write lands.
#[test]
fn node_opcua_subscription_and_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::node(dir.path());
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"{}\"\ntimeout = \"3s\"\nscan_interval = \"200ms\"",
        server.url
    );
    let tags = [
        tag_entry("counter", "ns=1;s=Dynamic/Counter", "UInt32", ""),
        tag_entry("double", "ns=1;s=Types/Double", "Double", ""),
        tag_entry("i32", "ns=1;s=Types/Int32", "Int32", ""),
        tag_entry("string", "ns=1;s=Types/String", "String", ""),
        tag_entry("bool", "ns=1;s=Types/Boolean", "Boolean", ""),
        tag_entry("doubles", "ns=1;s=Types/DoubleArray", "Double", ""),
        tag_entry(
            "setpoint",
            "ns=1;s=Control/Setpoint",
            "Double",
            "access = \"ReadWrite\"",
        ),
    ];
    let demo = DemoDir::with_devices(&[device_file("node", &head, &tags)]);
    let mut g = Gateway::start(&demo, &[]);
    let s = wait_tags(
        &mut g,
        &demo,
        "node",
        &["counter", "double", "i32", "string", "bool", "doubles"],
    );
    assert_eq!(s["double"]["value"], json!(std::f64::consts::PI));
    assert_eq!(s["i32"]["value"], json!(-2_000_000_000));
    assert_eq!(s["string"]["value"], json!("héllo, wörld"));
    assert_eq!(s["bool"]["value"], json!(true));
    assert_eq!(s["doubles"]["value"], json!("[1.5,-2.25,3.0]"));
    // JavaScript dates have millisecond precision.
    assert_eq!(s["double"]["ts_ns"], 1_767_323_045_123_000_000u64);
    g.wait_until("the counter to advance", LIMIT, |_| {
        series(&demo, "node", "counter").len() >= 5
    });
    let c: Vec<u64> = series(&demo, "node", "counter")
        .iter()
        .filter_map(|s| s["value"].as_u64())
        .collect();
    assert!(c.windows(2).all(|w| w[1] > w[0]), "{c:?}");
    let (_, body) = g.post_json(
        "/api/v1/devices/node/tags/setpoint/write",
        &json!({"value": 33.25}),
    );
    assert_eq!(body["status"], "ok", "{body}");
    g.wait_until("the new setpoint", LIMIT, |_| {
        latest_samples(&wal_frames(&demo.wal()), "node")["setpoint"]["value"] == json!(33.25)
    });
    assert_eq!(server.sessions_created(), 1);
}

/// `gateway discover opcua URL` prints a device file the gateway accepts,
/// with the right addresses and types; `--endpoints` lists the policies.
#[test]
fn discovery_prints_a_valid_device_file_and_the_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--secure"]);
    let pki = dir.path().join("pki");
    let out = std::process::Command::new(gateway_bin())
        .args([
            "discover",
            "opcua",
            &server.url,
            "--depth",
            "4",
            "--name",
            "found",
            "--pki-dir",
        ])
        .arg(&pki)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "address = \"ns=2;s=Types/Double\"\ndata_type = \"Double\"",
        "address = \"ns=2;s=Types/UInt64\"\ndata_type = \"UInt64\"",
        "address = \"ns=2;s=Control/Setpoint\"\ndata_type = \"Double\"\naccess = \"ReadWrite\"",
        "address = \"ns=2;i=1001\"",
        "address = \"ns=2;g=6f1a2b3c-0000-4000-8000-000000000001\"",
        "address = \"ns=2;b=AQID\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("i=2253"), "the Server object is skipped");
    let demo = DemoDir::with_devices(&[("found".into(), text.clone())]);
    let check = std::process::Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(demo.config())
        .env("GATEWAY_DATA_DIR", demo.data())
        .env("GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "gateway check refused the discovered file:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // And it runs: the discovered device reads the server.
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("discovered tags on the bus", LIMIT, |_| {
        latest_samples(&wal_frames(&demo.wal()), "found").len() > 10
    });
    drop(g);
    let out = std::process::Command::new(gateway_bin())
        .args(["discover", "opcua", "--endpoints", &server.url, "--pki-dir"])
        .arg(&pki)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in ["None", "Basic256Sha256", "SignAndEncrypt"] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
}

/// X.509 user identity (certificate and key made with `openssl`): the
/// server's known user certificate activates a session and reads values;
/// an unknown one is refused — status Error, not a crash. Both devices
/// trust the server on first use (`trust_server_certs = true`): the
/// certificate is written to `<pki_dir>/trusted`.
#[test]
fn x509_user_identity_and_trust_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let user = |cn: &str| -> (std::path::PathBuf, std::path::PathBuf) {
        let (der, pem) = (
            dir.path().join(format!("{cn}.der")),
            dir.path().join(format!("{cn}.pem")),
        );
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-outform", "DER",
            ])
            .arg("-keyout")
            .arg(&pem)
            .arg("-out")
            .arg(&der)
            .arg("-subj")
            .arg(format!("/CN={cn}"))
            .output()
            .expect("openssl must be installed (scripts/test.sh installs it)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (der, pem)
    };
    let (op_der, op_pem) = user("operator-1");
    let (in_der, in_pem) = user("intruder");
    let server = OpcuaServer::asyncua(
        dir.path(),
        &[
            "--secure",
            "--user-cert",
            &op_der.display().to_string(),
            "--no-anonymous",
        ],
    );
    let pki = dir.path().join("pki");
    let dev = |name: &str, der: &std::path::Path, pem: &std::path::Path| {
        device_file(
            name,
            &format!(
                "protocol = \"opcua\"\nendpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\n\
                 user_cert_file = \"{}\"\nuser_key_file = \"{}\"\npki_dir = \"{}\"\n\
                 trust_server_certs = true\ntimeout = \"3s\"\nretry_interval = \"300ms\"\nmax_retry_interval = \"1s\"",
                server.url,
                der.display(),
                pem.display(),
                pki.display()
            ),
            &[tag_entry("double", "ns=2;s=Types/Double", "Double", "")],
        )
    };
    let demo = DemoDir::with_devices(&[
        dev("operator", &op_der, &op_pem),
        dev("intruder", &in_der, &in_pem),
    ]);
    let mut g = Gateway::start(&demo, &[]);
    let s = wait_tags(&mut g, &demo, "operator", &["double"]);
    assert_eq!(s["double"]["value"], json!(std::f64::consts::PI));
    g.wait_until("intruder in status Error", LIMIT, |g| {
        device_status(g, "intruder")["status"] == "Error"
    });
    let ev = status_events(&demo, "intruder");
    assert!(ev[0].1.contains("BadUserAccessDenied"), "{ev:?}");
    assert!(latest_samples(&wal_frames(&demo.wal()), "intruder").is_empty());
    let identities = server.state()["identities"].clone();
    assert!(
        identities
            .as_array()
            .is_some_and(|a| a.contains(&json!("cert:operator-1"))),
        "{identities}"
    );
    // Trusted on first use: the server certificate is in trusted/.
    let trusted = std::fs::read_dir(pki.join("trusted")).unwrap().count();
    assert_eq!(trusted, 1, "the server certificate was trusted on first use");
    assert!(
        g.log_text().contains("trust_server_certs = true"),
        "the start-up warning"
    );
}

/// The server behind a port forward (socat): the endpoint it advertises
/// (its own port) is not reachable from the gateway's side, so the driver
/// must connect to the configured URL. Cutting the forward while the
/// server keeps running loses the connection (Offline, BAD samples);
/// restoring it opens a new session and values flow again.
#[test]
fn configured_url_behind_a_port_forward_and_a_cut_network() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let port = common::free_port();
    let forward = || {
        std::process::Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:127.0.0.1:{}", server.port))
            .spawn()
            .expect("socat must be installed (scripts/test.sh installs it)")
    };
    // socat's forked children hold the accepted connections: end them too.
    let cut = |mut socat: std::process::Child| {
        let _ = socat.kill();
        let _ = socat.wait();
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("TCP-LISTEN:{port},")])
            .status();
    };
    let socat = forward();
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/gateway-test/\"\ntimeout = \"1s\"\n\
         retry_interval = \"200ms\"\nmax_retry_interval = \"1s\"\nkeep_alive_interval = \"1s\"\nsession_timeout = \"10s\""
    );
    let demo = DemoDir::with_devices(&[device_file(
        "fwd",
        &head,
        &[tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", "")],
    )]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("counter values through the forward", LIMIT, |_| {
        series(&demo, "fwd", "counter").len() >= 5
    });
    cut(socat);
    g.wait_until("Offline and BAD after the cut", LIMIT, |_| {
        status_events(&demo, "fwd").iter().any(|e| e.0 == "Offline")
            && latest_samples(&wal_frames(&demo.wal()), "fwd")["counter"]["quality"] == "BAD"
    });
    let n = series(&demo, "fwd", "counter").len();
    let socat = forward();
    g.wait_until("values again after the forward is back", LIMIT, |_| {
        series(&demo, "fwd", "counter").len() > n + 5
            && latest_samples(&wal_frames(&demo.wal()), "fwd")["counter"]["quality"] == "GOOD"
    });
    assert_eq!(device_status(&g, "fwd")["status"], "Online");
    drop(g);
    cut(socat);
}

/// A server that drops its subscriptions without a word (no
/// StatusChangeNotification, the session and the connection stay up —
/// the "connected but silent" failure): the driver notices that the
/// subscription sends neither data nor keep-alives, replaces the session
/// and re-creates the subscription, and values flow again.
#[test]
fn a_silently_dropped_subscription_is_detected_and_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcuaServer::asyncua(dir.path(), &["--period", "0.1"]);
    let head = format!(
        "protocol = \"opcua\"\nendpoint = \"{}\"\nscan_interval = \"200ms\"\ntimeout = \"1s\"\n\
         retry_interval = \"200ms\"\nmax_retry_interval = \"1s\"\nkeep_alive_interval = \"1s\"\nsession_timeout = \"10s\"",
        server.url
    );
    let demo = DemoDir::with_devices(&[device_file(
        "quiet",
        &head,
        &[tag_entry("counter", "ns=2;s=Dynamic/Counter", "UInt32", "")],
    )]);
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("counter values", LIMIT, |_| {
        series(&demo, "quiet", "counter").len() >= 5
    });
    assert_eq!(server.sessions_created(), 1);
    server.signal(libc::SIGUSR1);
    g.wait_until("the subscription dropped on the server", LIMIT, |_| {
        server.state()["subscriptions_dropped"] == 1
    });
    g.wait_until("the silence noticed", LIMIT, |_| {
        status_events(&demo, "quiet")
            .iter()
            .any(|e| e.0 == "Offline" && e.1.contains("sent nothing"))
    });
    let n = series(&demo, "quiet", "counter").len();
    g.wait_until("values again from a new session", LIMIT, |_| {
        series(&demo, "quiet", "counter").len() > n + 5
            && latest_samples(&wal_frames(&demo.wal()), "quiet")["counter"]["quality"] == "GOOD"
    });
    assert_eq!(server.sessions_created(), 2, "one new session");
    assert_eq!(device_status(&g, "quiet")["status"], "Online");
}
