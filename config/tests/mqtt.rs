//! MQTT device files and `type = "mqtt"` sinks: what loads, the defaults
//! filled in, and every refusal naming file, line, column and key.

use std::path::Path;

use config::{Config, ConfigErrors, DriverOptions, MqttVersion, PayloadFormat, SinkKind, TagOptions};

const GATEWAY: &str = "gateway_id = \"gw-7\"\ndata_dir = \"data\"\n";

const DEVICE: &str = concat!(
    "name = \"press\"\n",                     // 1
    "protocol = \"mqtt\"\n",                  // 2
    "endpoint = \"mqtt://127.0.0.1:1883\"\n", // 3
    "topic = \"plant/{device}/{tag}\"\n",     // 4
    "format = \"plain\"\n",                   // 5
    "\n",                                     // 6
    "[[tags]]\n",                             // 7
    "name = \"temp\"\n",                      // 8
    "address = \"payload\"\n",                // 9
    "data_type = \"Double\"\n",               // 10
    "\n",                                     // 11
    "[[tags]]\n",                             // 12
    "name = \"state\"\n",                     // 13
    "address = \"/machine/state\"\n",         // 14
    "data_type = \"String\"\n",               // 15
    "topic = \"plant/+/json\"\n",             // 16
    "format = \"json\"\n",                    // 17
    "timestamp_pointer = \"/ts\"\n",          // 18
);

fn load(gateway: &str, device: &str) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), gateway).unwrap();
    std::fs::write(dir.path().join("devices/press.toml"), device).unwrap();
    let r = config::load_with_env(&dir.path().join("gateway.toml"), &|_| None);
    drop(dir);
    r
}

#[track_caller]
fn errors(gateway: &str, device: &str) -> ConfigErrors {
    match load(gateway, device) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    }
}

/// The error with `key` in `file` at (line, column) containing `fragment`.
#[track_caller]
fn expect(errs: &ConfigErrors, file: &str, key: &str, pos: (usize, usize), fragment: &str) {
    let found = errs.iter().any(|e| {
        e.key == key
            && Path::new(&e.file).ends_with(file)
            && (e.line, e.column) == (Some(pos.0), Some(pos.1))
            && e.message.contains(fragment)
    });
    assert!(
        found,
        "no error `{key}` at {pos:?} containing {fragment:?} in {file}; got:\n{errs}"
    );
}

#[test]
fn an_mqtt_device_loads_with_its_defaults() {
    let c = load(GATEWAY, DEVICE).unwrap_or_else(|e| panic!("{e}"));
    let d = c.device("press").unwrap();
    let DriverOptions::Mqtt(m) = &d.driver else {
        panic!("not mqtt")
    };
    assert_eq!(m.client_id.as_deref(), Some("gw-7-press"), "default client id");
    assert_eq!(m.qos.0, 1);
    assert!(!m.clean_session, "persistent session by default");
    assert_eq!(m.version, MqttVersion::V311);
    assert_eq!(m.format, PayloadFormat::Plain);
    let TagOptions::Mqtt(t) = &d.tags[1].driver else {
        panic!("not mqtt")
    };
    assert_eq!(t.format, Some(PayloadFormat::Json));
    let conn = m.connection(&d.endpoint, "x").unwrap();
    assert_eq!(
        (conn.address.host.as_str(), conn.address.port),
        ("127.0.0.1", 1883)
    );
}

#[test]
fn bad_mqtt_keys_are_refused_where_they_are() {
    let bad = DEVICE
        .replace("mqtt://127.0.0.1:1883", "http://127.0.0.1:1883")
        .replace("address = \"payload\"", "address = \"/temp\"")
        .replace("address = \"/machine/state\"", "address = \"machine/state\"")
        .replace("topic = \"plant/+/json\"", "topic = \"plant/#/json\"")
        .replace(
            "timestamp_pointer = \"/ts\"",
            "timestamp_pointer = \"/ts\"\naccess = \"ReadWrite\"",
        );
    let errs = errors(GATEWAY, &bad);
    let f = "press.toml";
    expect(&errs, f, "endpoint", (3, 12), "unknown scheme");
    expect(
        &errs,
        f,
        "tags[0].address",
        (9, 11),
        "address must be \"payload\"",
    );
    expect(&errs, f, "tags[1].address", (14, 11), "is not a JSON pointer");
    expect(
        &errs,
        f,
        "tags[1].topic",
        (16, 9),
        "'#' must be a whole level and the last one",
    );
    expect(&errs, f, "tags[1].access", (19, 10), "read-only");
}

#[test]
fn qos_version_topic_and_tls_are_checked() {
    let bad = DEVICE.replace("format = \"plain\"\n", "format = \"plain\"\nqos = 3\n");
    let errs = errors(GATEWAY, &bad);
    expect(&errs, "press.toml", "qos", (6, 7), "qos must be 0, 1 or 2");
    // QoS 2 is refused (the MQTT client's handshake state), and so is a
    // keep-alive under 5 s with MQTT 5 (the client would panic).
    let bad = DEVICE.replace(
        "format = \"plain\"\n",
        "format = \"plain\"\nqos = 2\nversion = \"5\"\nkeep_alive = \"2s\"\n",
    );
    let errs = errors(GATEWAY, &bad);
    expect(&errs, "press.toml", "qos", (6, 7), "QoS 2 is not supported");
    expect(
        &errs,
        "press.toml",
        "keep_alive",
        (8, 14),
        "at least 5s with MQTT 5",
    );

    // No topic at all: the tag says it needs one.
    let bad = DEVICE.replace("topic = \"plant/{device}/{tag}\"\n", "\n");
    let errs = errors(GATEWAY, &bad);
    assert!(
        errs.iter()
            .any(|e| e.key == "tags[0].topic" && e.message.contains("needs a topic")),
        "{errs}"
    );

    // TLS without a CA, and a client certificate without its key.
    let bad = DEVICE
        .replace("mqtt://127.0.0.1:1883", "mqtts://broker:8883")
        .replace(
            "format = \"plain\"\n",
            "format = \"plain\"\ncert_file = \"client.pem\"\n",
        );
    let errs = errors(GATEWAY, &bad);
    assert!(
        errs.iter()
            .any(|e| e.key == "ca_file" && e.message.contains("TLS needs ca_file")),
        "{errs}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "cert_file" && e.message.contains("both cert_file and key_file")),
        "{errs}"
    );
    assert!(
        errs.iter()
            .any(|e| e.key == "cert_file" && e.message.contains("not a readable file")),
        "{errs}"
    );

    // Shared subscriptions would never match a tag.
    let bad = DEVICE.replace("plant/+/json", "$share/g/plant/+/json");
    let errs = errors(GATEWAY, &bad);
    expect(
        &errs,
        "press.toml",
        "tags[1].topic",
        (16, 9),
        "shared subscriptions",
    );

    let bad = DEVICE.replace("format = \"plain\"\n", "format = \"plain\"\nversion = \"4.0\"\n");
    let errs = errors(GATEWAY, &bad);
    assert!(errs.iter().any(|e| e.key == "version"), "{errs}");
}

#[test]
fn the_mqtt_sink_loads_and_its_topics_and_client_id_are_checked() {
    let gw = format!(
        "{GATEWAY}[sinks.north]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nqos = 0\nretain = true\nmode = \"frame\"\n"
    );
    let c = load(&gw, DEVICE).unwrap_or_else(|e| panic!("{e}"));
    let SinkKind::Mqtt(m) = &c.gateway.sinks["north"].kind else {
        panic!("not an mqtt sink")
    };
    assert_eq!(m.qos.0, 0);
    assert_eq!(m.topic, "gateway/{gateway_id}/{device}/{tag}");
    assert_eq!(m.status_topic, "gateway/{gateway_id}/status");
    // A wildcard in a topic to publish to, and a client id taken by a device.
    let gw = format!(
        "{GATEWAY}[sinks.north]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nevent_topic = \"gw/+/events\"\nclient_id = \"gw-7-press\"\n"
    );
    let errs = errors(&gw, DEVICE);
    assert!(
        errs.iter()
            .any(|e| e.key == "sinks.north.event_topic" && e.message.contains("cannot hold")),
        "{errs}"
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("also used by device \"press\"")),
        "{errs}"
    );
}
