//! Checks that serde cannot express: the seed's CHECK constraints, unique
//! names, cross references (an alert rule's device and tag must exist) and
//! per-protocol rules. Every failed check is reported, located by key path.

use std::collections::HashMap;
use std::time::Duration;

use crate::alert::AlertRuleConfig;
use crate::device::{Access, DataType, DeviceConfig, DriverOptions, TagConfig, TagOptions};
use crate::error::ConfigError;
use crate::gateway::{GatewayConfig, SinkKind};
use crate::load::Source;
use crate::modbus::{self, ModbusDevice};
use crate::simulator::{ConstantValue, Generator};

pub(crate) fn gateway(g: &GatewayConfig, src: &Source, errors: &mut Vec<ConfigError>) {
    let mut e = |key: &str, msg: String| errors.push(src.error(key, msg));
    if g.gateway_id.trim().is_empty() {
        e("gateway_id", "must not be empty".into());
    } else {
        // Stored as `gateway:<id>` in the seed's VARCHAR(255) columns.
        max_chars(
            &mut e,
            "gateway_id",
            Some(&g.gateway_id),
            200,
            "devices.gateway_id",
        );
    }
    if g.wal.max_bytes == Some(0) {
        e(
            "wal.max_bytes",
            "must be > 0 (omit the key for no size limit)".into(),
        );
    }
    if let Some(t) = &g.http.token {
        if t.trim().is_empty() {
            e(
                "http.token",
                "must not be empty (omit the key to leave /api open)".into(),
            );
        }
    }
    let s = &g.supervisor;
    positive(&mut e, "supervisor.restart_backoff", s.restart_backoff);
    positive(&mut e, "supervisor.shutdown_timeout", s.shutdown_timeout);
    if s.max_restart_backoff < s.restart_backoff {
        e(
            "supervisor.max_restart_backoff",
            "must be >= supervisor.restart_backoff".into(),
        );
    }
    for (name, sink) in &g.sinks {
        let base = format!("sinks.{name}");
        check_name(&mut e, &base, name, "sink name");
        if name == "alerts" {
            e(
                &base,
                "the name `alerts` is the alert engine's consumer on the frame bus; choose another".into(),
            );
        }
        match &sink.kind {
            SinkKind::File(f) => {
                if f.path.as_os_str().is_empty() {
                    e(&format!("{base}.path"), "must not be empty".into());
                }
                if f.batch_size == 0 {
                    e(&format!("{base}.batch_size"), "must be > 0".into());
                }
                if f.max_file_size == Some(0) {
                    e(&format!("{base}.max_file_size"), "must be > 0".into());
                }
            }
            SinkKind::Influx(i) => {
                let k = |key: &str| format!("{base}.{key}");
                match i.url.split_once("://") {
                    Some(("http", rest)) if !rest.is_empty() => {}
                    Some(("https", _)) => e(
                        &k("url"),
                        "https is not supported by this build (no TLS); put a TLS proxy in front or use http on a trusted network".into(),
                    ),
                    _ => e(&k("url"), format!("{:?} is not an http:// URL", i.url)),
                }
                match i.api {
                    crate::InfluxApi::V1 if i.database.as_deref().is_none_or(|d| d.trim().is_empty()) => {
                        e(&k("database"), "api = \"v1\" needs `database`".into())
                    }
                    crate::InfluxApi::V2 if i.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) => {
                        e(&k("bucket"), "api = \"v2\" needs `bucket`".into())
                    }
                    _ => {}
                }
                if i.batch_lines == 0 {
                    e(&k("batch_lines"), "must be > 0".into());
                }
                if i.batch_bytes < 1024 {
                    e(&k("batch_bytes"), "must be at least 1KiB".into());
                }
                if !(1..=64).contains(&i.concurrency) {
                    e(&k("concurrency"), "must be 1..=64".into());
                }
                positive(&mut e, &k("flush_interval"), i.flush_interval);
                positive(&mut e, &k("timeout"), i.timeout);
                positive(&mut e, &k("max_retry_interval"), i.max_retry_interval);
                let mut renamed = std::collections::HashSet::new();
                for (from, to) in &i.tag_keys {
                    let key = format!("{base}.tag_keys.{from}");
                    if !crate::influx::BUILTIN_TAGS.contains(&from.as_str()) {
                        e(
                            &key,
                            format!(
                                "`{from}` is not a built-in tag; these can be renamed: {}",
                                crate::influx::BUILTIN_TAGS.join(", ")
                            ),
                        );
                    } else if to.trim().is_empty() {
                        e(&key, "the new name must not be empty".into());
                    } else if !renamed.insert(to.as_str()) || i.tags.contains_key(to) {
                        e(
                            &key,
                            format!("`{to}` is used twice (renames and static tags must be distinct)"),
                        );
                    }
                }
                for t in i.tags.keys() {
                    if crate::influx::BUILTIN_TAGS.contains(&t.as_str()) {
                        e(
                            &format!("{base}.tags.{t}"),
                            format!("`{t}` is a tag the sink sets itself; choose another name"),
                        );
                    }
                }
                if i.measurement.trim().is_empty() || i.event_measurement.trim().is_empty() {
                    e(&k("measurement"), "measurement names must not be empty".into());
                }
            }
            SinkKind::Webhook(w) => {
                let k = |key: &str| format!("{base}.{key}");
                match w.url.split_once("://") {
                    Some(("http", rest)) if !rest.is_empty() => {}
                    Some(("https", _)) => e(
                        &k("url"),
                        "https is not supported by this build (no TLS); put a TLS proxy in front or use http on a trusted network".into(),
                    ),
                    _ => e(&k("url"), format!("{:?} is not an http:// URL", w.url)),
                }
                if w.events.is_empty() {
                    e(
                        &k("events"),
                        "must name at least one of fired, resolved, acknowledged, suppressed".into(),
                    );
                }
                for (h, v) in &w.headers {
                    let valid_name = !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !valid_name {
                        e(
                            &format!("{base}.headers.{h}"),
                            format!("{h:?} is not a valid HTTP header name"),
                        );
                    } else if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                        e(
                            &format!("{base}.headers.{h}"),
                            "header values must not contain control characters".into(),
                        );
                    }
                }
                positive(&mut e, &k("timeout"), w.timeout);
                positive(&mut e, &k("max_retry_interval"), w.max_retry_interval);
            }
            SinkKind::Mqtt(m) => {
                let k = |key: &str| format!("{base}.{key}");
                match crate::mqtt::BrokerAddress::parse(&m.url) {
                    Ok(a) => tls_files(
                        &mut e,
                        &format!("{base}."),
                        m.ca_file.as_deref(),
                        m.cert_file.as_deref(),
                        m.key_file.as_deref(),
                        a.tls || m.ca_file.is_some(),
                    ),
                    Err(msg) => e(&k("url"), msg),
                }
                keep_alive(&mut e, &k("keep_alive"), m.keep_alive, m.version);
                qos_supported(&mut e, &k("qos"), m.qos);
                if m.max_inflight == 0 {
                    e(&k("max_inflight"), "must be > 0".into());
                }
                positive(&mut e, &k("max_retry_interval"), m.max_retry_interval);
                let sample = |t: &str| {
                    t.replace("{gateway_id}", "g")
                        .replace("{device}", "d")
                        .replace("{tag}", "t")
                        .replace("{kind}", "k")
                };
                for (key, t) in [
                    ("topic", &m.topic),
                    ("frame_topic", &m.frame_topic),
                    ("event_topic", &m.event_topic),
                    ("status_topic", &m.status_topic),
                ] {
                    if let Err(msg) = crate::mqtt::check_topic_name(&sample(t)) {
                        e(&k(key), msg);
                    }
                }
            }
            SinkKind::Postgres(p) => {
                let k = |key: &str| format!("{base}.{key}");
                match p.url.split_once("://") {
                    Some(("postgres" | "postgresql", rest)) if !rest.is_empty() => {}
                    _ => e(
                        &k("url"),
                        format!(
                            "{:?} is not a postgres:// URL (e.g. \"postgres://gateway:${{PG_PASSWORD}}@127.0.0.1:5432/gateway_rust\")",
                            redact_url(&p.url)
                        ),
                    ),
                }
                if p.batch_frames == 0 {
                    e(&k("batch_frames"), "must be > 0".into());
                }
                positive(&mut e, &k("connect_timeout"), p.connect_timeout);
                positive(&mut e, &k("timeout"), p.timeout);
                positive(&mut e, &k("max_retry_interval"), p.max_retry_interval);
                if let Some(ca) = &p.ssl_root_cert {
                    if !ca.is_file() {
                        e(
                            &k("ssl_root_cert"),
                            format!("{} is not a readable file", ca.display()),
                        );
                    }
                }
            }
        }
    }
}

/// The URL with its password replaced, for error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn positive(e: &mut impl FnMut(&str, String), key: &str, d: Duration) {
    if d.is_zero() {
        e(key, "must be a positive duration, got 0".into());
    }
}

fn check_name(e: &mut impl FnMut(&str, String), key: &str, name: &str, what: &str) {
    if name.trim().is_empty() {
        e(key, format!("{what} must not be empty or blank"));
    } else if name.trim() != name {
        e(key, format!("{what} {name:?} has leading or trailing spaces"));
    } else if name.len() > 128 {
        e(key, format!("{what} is longer than 128 bytes"));
    } else if name.chars().any(char::is_control) {
        e(key, format!("{what} {name:?} contains control characters"));
    }
}

/// The seed's `VARCHAR(n)` limits (the PostgreSQL store could not store a
/// longer value, so it is refused here, where the file can name it).
fn max_chars(e: &mut impl FnMut(&str, String), key: &str, value: Option<&str>, n: usize, column: &str) {
    if let Some(v) = value {
        let len = v.chars().count();
        if len > n {
            e(
                key,
                format!("is {len} characters long; at most {n} (seed column {column} VARCHAR({n}))"),
            );
        }
    }
}

pub(crate) fn device(d: &DeviceConfig, src: &Source, errors: &mut Vec<ConfigError>) {
    let mut e = |key: &str, msg: String| errors.push(src.error(key, msg));
    check_name(&mut e, "name", &d.name, "device name");
    max_chars(&mut e, "endpoint", Some(&d.endpoint), 255, "devices.endpoint");
    max_chars(&mut e, "location", d.location.as_deref(), 255, "devices.location");
    if d.endpoint.trim().is_empty() {
        let what = if d.protocol == crate::Protocol::ModbusRtu {
            "a modbus-rtu device needs `port` (the serial device, e.g. \"/dev/ttyUSB0\")"
        } else {
            "must not be empty (seed CHECK devices_endpoint_not_empty)"
        };
        e("endpoint", what.into());
    }
    positive(&mut e, "scan_interval", d.scan_interval);
    positive(&mut e, "timeout", d.timeout);
    positive(&mut e, "retry_interval", d.retry.retry_interval);
    if d.max_concurrent == 0 {
        e("max_concurrent", "must be > 0".into());
    }
    if d.batch_size == 0 {
        e("batch_size", "must be > 0".into());
    }
    if d.retry.max_retry_interval < d.retry.retry_interval {
        e("max_retry_interval", "must be >= retry_interval".into());
    }
    match &d.driver {
        DriverOptions::Simulator(s) => {
            if !(0.0..=1.0).contains(&s.error_rate) {
                e(
                    "error_rate",
                    format!("must be between 0 and 1, got {}", s.error_rate),
                );
            }
            if s.error_burst == 0 {
                e("error_burst", "must be > 0 polls".into());
            }
        }
        DriverOptions::Modbus(m) => modbus_device(d, m, &mut e),
        DriverOptions::Mqtt(m) => mqtt_device(d, m, &mut e),
        DriverOptions::Opcua(o) => opcua_device(d, o, &mut e),
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, t) in d.tags.iter().enumerate() {
        let base = format!("tags[{i}]");
        if let Some(first) = seen.insert(t.name.as_str(), i) {
            e(
                &format!("{base}.name"),
                format!("duplicate tag name {:?} (first defined at tags[{first}])", t.name),
            );
        }
        tag(t, &base, &mut e);
        if let (DriverOptions::Modbus(m), TagOptions::Modbus(o)) = (&d.driver, &t.driver) {
            modbus_tag(m, t, o, &base, &mut e);
        }
        if let (DriverOptions::Mqtt(m), TagOptions::Mqtt(o)) = (&d.driver, &t.driver) {
            mqtt_tag(d, m, t, o, &base, &mut e);
        }
        if let (DriverOptions::Opcua(m), TagOptions::Opcua(o)) = (&d.driver, &t.driver) {
            opcua_tag(m, t, o, &base, &mut e);
        }
    }
    if d.tags.is_empty() {
        e("tags", "a device needs at least one [[tags]] entry".into());
    }
}

fn tag(t: &TagConfig, base: &str, e: &mut impl FnMut(&str, String)) {
    let k = |key: &str| format!("{base}.{key}");
    check_name(e, &k("name"), &t.name, "tag name");
    max_chars(e, &k("address"), Some(&t.address), 255, "tags.address");
    max_chars(e, &k("unit"), t.unit.as_deref(), 50, "tags.unit");
    if t.address.trim().is_empty() {
        e(
            &k("address"),
            "must not be empty (seed CHECK tags_address_not_empty)".into(),
        );
    }
    if !(t.scaling > 0.0 && t.scaling.is_finite()) {
        e(
            &k("scaling"),
            format!(
                "must be > 0 (seed CHECK tags_scaling_positive), got {}",
                t.scaling
            ),
        );
    }
    if !t.offset.is_finite() {
        e(&k("offset"), "must be a finite number".into());
    }
    for (key, v) in [("min_value", t.min_value), ("max_value", t.max_value)] {
        if v.is_some_and(|v| !v.is_finite()) {
            e(&k(key), "must be a finite number".into());
        }
    }
    if let (Some(lo), Some(hi)) = (t.min_value, t.max_value) {
        if lo > hi {
            e(
                &k("min_value"),
                format!("min_value {lo} is greater than max_value {hi} (seed CHECK tags_min_max_order)"),
            );
        }
    }
    if let Some(db) = t.deadband {
        if !(db >= 0.0 && db.is_finite()) {
            e(&k("deadband"), format!("must be >= 0, got {db}"));
        }
    }
    if t.scan_rate == Some(Duration::ZERO) {
        e(
            &k("scan_rate"),
            "must be > 0 (seed CHECK tags_scan_rate_positive)".into(),
        );
    }
    match &t.driver {
        TagOptions::Simulator(s) => {
            let Some(g) = Generator::parse(&t.address) else {
                if !t.address.trim().is_empty() {
                    e(
                        &k("address"),
                        format!(
                            "unknown simulator generator {:?}; expected one of: {}",
                            t.address,
                            Generator::NAMES.join(", ")
                        ),
                    );
                }
                return;
            };
            let dt = t.data_type;
            let ok = match g {
                Generator::Square => dt == DataType::Boolean || dt.is_numeric(),
                Generator::Constant => true,
                _ => dt.is_numeric(),
            };
            if !ok {
                e(
                    &k("data_type"),
                    format!("the {:?} generator cannot produce {dt:?} values", t.address),
                );
            }
            if matches!(g, Generator::Sine | Generator::Ramp | Generator::Square) && s.period.is_zero() {
                e(&k("period"), "must be a positive duration".into());
            }
            if g == Generator::Square && !(s.duty > 0.0 && s.duty < 1.0) {
                e(
                    &k("duty"),
                    format!("must be between 0 and 1 (exclusive), got {}", s.duty),
                );
            }
            if g == Generator::Constant {
                match &s.value {
                    None => e(&k("value"), "the constant generator needs `value`".into()),
                    Some(v) => {
                        let fits = match v {
                            ConstantValue::Bool(_) => dt == DataType::Boolean,
                            ConstantValue::Int(_) => dt.is_numeric(),
                            ConstantValue::Float(_) => matches!(dt, DataType::Float | DataType::Double),
                            ConstantValue::String(_) => dt == DataType::String,
                        };
                        if !fits {
                            e(&k("value"), format!("value {v:?} does not fit data_type {dt:?}"));
                        }
                    }
                }
            }
        }
        // Need the device's options: checked by `modbus_tag`, `mqtt_tag`.
        TagOptions::Modbus(_) | TagOptions::Mqtt(_) | TagOptions::Opcua(_) => {}
    }
}

/// rumqttc accepts a keep-alive of 0 (off) or at least 1 s with MQTT
/// 3.1.1, at least 5 s with MQTT 5 (it asserts, so this is checked here);
/// CONNECT carries it in 16 bits of seconds.
fn keep_alive(e: &mut impl FnMut(&str, String), key: &str, d: Duration, version: crate::mqtt::MqttVersion) {
    if d > Duration::from_secs(65_535) {
        e(
            key,
            format!("must be at most 65535s (16 bits in CONNECT), got {d:?}"),
        );
    } else if version == crate::mqtt::MqttVersion::V5 && d < Duration::from_secs(5) {
        e(
            key,
            format!("must be at least 5s with MQTT 5 (the client library's minimum), got {d:?}"),
        );
    } else if !d.is_zero() && d < Duration::from_secs(1) {
        e(key, format!("must be 0 (off) or at least 1s, got {d:?}"));
    }
}

/// QoS 2 is refused: rumqttc 0.25 forgets the QoS 2 messages it has
/// PUBREC'd when a connection drops, so the broker's PUBREL after a
/// reconnect on a kept session is an error that breaks every new
/// connection (rumqtt issue #664), and a refused PUBREC never frees its
/// in-flight slot. QoS 1 gives the same at-least-once guarantee here.
fn qos_supported(e: &mut impl FnMut(&str, String), key: &str, q: crate::mqtt::Qos) {
    if q.0 == 2 {
        e(
            key,
            "QoS 2 is not supported by this build (its MQTT client loses the QoS 2 handshake state across reconnects); use 1: the gateway's guarantee is at-least-once either way".into(),
        );
    }
}

fn tls_files(
    e: &mut impl FnMut(&str, String),
    prefix: &str,
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    tls: bool,
) {
    if cert.is_some() != key.is_some() {
        e(
            &format!("{prefix}cert_file"),
            "a client certificate needs both cert_file and key_file".into(),
        );
    }
    if (cert.is_some() || key.is_some()) && !tls {
        e(
            &format!("{prefix}cert_file"),
            "a client certificate needs TLS: use an mqtts:// address or set ca_file".into(),
        );
    }
    if tls && ca.is_none() {
        e(
            &format!("{prefix}ca_file"),
            "TLS needs ca_file (the PEM file of the CA that signed the broker's certificate)".into(),
        );
    }
    for (k, f) in [("ca_file", ca), ("cert_file", cert), ("key_file", key)] {
        if let Some(f) = f {
            if !f.is_file() {
                e(
                    &format!("{prefix}{k}"),
                    format!("{} is not a readable file", f.display()),
                );
            }
        }
    }
}

fn mqtt_device(d: &DeviceConfig, m: &crate::mqtt::MqttDevice, e: &mut impl FnMut(&str, String)) {
    match crate::mqtt::BrokerAddress::parse(&d.endpoint) {
        Ok(a) => tls_files(
            e,
            "",
            m.ca_file.as_deref(),
            m.cert_file.as_deref(),
            m.key_file.as_deref(),
            a.tls || m.ca_file.is_some(),
        ),
        Err(msg) if !d.endpoint.trim().is_empty() => e("endpoint", msg),
        Err(_) => {}
    }
    keep_alive(e, "keep_alive", m.keep_alive, m.version);
    qos_supported(e, "qos", m.qos);
    if m.max_payload == 0 {
        e("max_payload", "must be > 0".into());
    }
    if m.max_inflight == 0 {
        e("max_inflight", "must be > 0".into());
    }
    if let Some(t) = m.no_message_timeout {
        positive(e, "no_message_timeout", t);
        if t > Duration::from_secs(365 * 86_400) {
            e("no_message_timeout", format!("must be at most a year, got {t:?}"));
        }
    }
    if m.version == crate::mqtt::MqttVersion::V5 && m.session_expiry.as_secs() > u64::from(u32::MAX) {
        e("session_expiry", "must fit in 32 bits of seconds (MQTT 5)".into());
    }
    if let Some(id) = &m.client_id {
        if id.is_empty() || id.len() > 65_535 {
            e("client_id", "must be 1..=65535 bytes".into());
        }
    }
    if let Some(p) = &m.timestamp_pointer {
        json_pointer(e, "timestamp_pointer", p);
    }
    if let Some(t) = &m.topic {
        let f = crate::mqtt::expand_topic(t, &d.name, "x");
        if let Err(msg) = crate::mqtt::check_filter(&f).and_then(|()| not_shared(&f)) {
            e("topic", msg);
        }
    }
}

fn opcua_device(d: &DeviceConfig, o: &crate::opcua::OpcuaDevice, e: &mut impl FnMut(&str, String)) {
    use crate::opcua::{SecurityMode, SecurityPolicy};
    if !d.endpoint.trim().is_empty() {
        if let Err(msg) = crate::opcua::check_endpoint(&d.endpoint) {
            e("endpoint", msg);
        }
    }
    match (o.security_policy, o.mode_of_security()) {
        (SecurityPolicy::None, SecurityMode::None) => {}
        (SecurityPolicy::None, m) => e(
            "security_mode",
            format!(
                "{} needs a security_policy other than None (e.g. \"Basic256Sha256\")",
                m.as_str()
            ),
        ),
        (p, SecurityMode::None) => e(
            "security_mode",
            format!(
                "security_policy {} needs security_mode Sign or SignAndEncrypt",
                p.as_str()
            ),
        ),
        _ => {}
    }
    match (&o.username, &o.password) {
        (Some(u), Some(_)) if u.is_empty() => e("username", "must not be empty".into()),
        (Some(_), None) => e(
            "username",
            "needs a password (use password = \"${ENV_VAR}\")".into(),
        ),
        (None, Some(_)) => e("username", "password without username".into()),
        _ => {}
    }
    if o.user_cert_file.is_some() != o.user_key_file.is_some() {
        e(
            "user_cert_file",
            "an X.509 user identity needs both user_cert_file and user_key_file".into(),
        );
    }
    if o.username.is_some() && o.user_cert_file.is_some() {
        e(
            "user_cert_file",
            "choose one user identity: username/password or user_cert_file/user_key_file".into(),
        );
    }
    for (k, f, exts) in [
        ("user_cert_file", &o.user_cert_file, &["der", "pem"][..]),
        ("user_key_file", &o.user_key_file, &["pem"][..]),
    ] {
        if let Some(f) = f {
            if !f.is_file() {
                e(k, format!("{} is not a readable file", f.display()));
            }
            // The OPC UA library picks the format by the extension.
            let ext = f
                .extension()
                .and_then(|x| x.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !exts.contains(&ext.as_str()) {
                e(k, format!("{} must end in .{}", f.display(), exts.join(" or .")));
            }
        }
    }
    if o.application_name.trim().is_empty() {
        e("application_name", "must not be empty".into());
    }
    if o.application_uri.as_deref().is_some_and(|u| u.trim().is_empty()) {
        e("application_uri", "must not be empty".into());
    }
    positive(e, "keep_alive_interval", o.keep_alive_interval);
    if o.session_timeout < Duration::from_secs(10) || o.session_timeout.as_millis() > u128::from(u32::MAX) {
        e(
            "session_timeout",
            format!("must be between 10s and 49 days, got {:?}", o.session_timeout),
        );
    } else if o.keep_alive_interval.saturating_mul(2) > o.session_timeout {
        e(
            "keep_alive_interval",
            format!(
                "must be at most half of session_timeout ({:?}), or the session can time out between keep-alives",
                o.session_timeout
            ),
        );
    }
    for (k, v) in [
        ("queue_size", o.queue_size),
        ("max_nodes_per_read", o.max_nodes_per_read),
        ("max_items_per_request", o.max_items_per_request),
    ] {
        if v == 0 {
            e(k, "must be > 0".into());
        }
    }
}

fn opcua_tag(
    m: &crate::opcua::OpcuaDevice,
    t: &TagConfig,
    o: &crate::opcua::OpcuaTag,
    base: &str,
    e: &mut impl FnMut(&str, String),
) {
    use crate::opcua::{AcquisitionMode, DeadbandType};
    let k = |key: &str| format!("{base}.{key}");
    if !t.address.trim().is_empty() {
        if let Err(msg) = crate::opcua::NodeAddress::parse(&t.address) {
            e(&k("address"), msg);
        }
    }
    let mode = o.mode.unwrap_or(m.mode);
    if mode == AcquisitionMode::Poll {
        for (key, set) in [
            ("sampling_interval", o.sampling_interval.is_some()),
            ("queue_size", o.queue_size.is_some()),
            ("discard_oldest", o.discard_oldest.is_some()),
            ("deadband_type", o.deadband_type != DeadbandType::None),
        ] {
            if set {
                e(&k(key), "only applies to mode = \"subscription\"".into());
            }
        }
    }
    if o.queue_size == Some(0) {
        e(&k("queue_size"), "must be > 0".into());
    }
    match (o.deadband_type, o.deadband_value) {
        (DeadbandType::None, Some(_)) => e(
            &k("deadband_value"),
            "needs deadband_type = \"absolute\" or \"percent\"".into(),
        ),
        (DeadbandType::None, None) => {}
        (_, None) => e(&k("deadband_value"), "deadband_type needs deadband_value".into()),
        (kind, Some(v)) => {
            if !(v >= 0.0 && v.is_finite()) {
                e(&k("deadband_value"), format!("must be >= 0, got {v}"));
            } else if kind == DeadbandType::Percent && v > 100.0 {
                e(&k("deadband_value"), format!("a percent is at most 100, got {v}"));
            }
            if !t.data_type.is_numeric() {
                e(
                    &k("deadband_type"),
                    format!("a deadband needs a numeric data_type, not {:?}", t.data_type),
                );
            }
        }
    }
}

/// `$share/group/filter` delivers each message to one member of a group:
/// a device's persistent session is its own, so shared subscriptions are
/// refused rather than silently matching nothing.
fn not_shared(filter: &str) -> Result<(), String> {
    if filter.starts_with("$share/") {
        return Err(format!(
            "{filter:?}: shared subscriptions ($share/…) are not supported; subscribe to the topic itself"
        ));
    }
    Ok(())
}

fn json_pointer(e: &mut impl FnMut(&str, String), key: &str, p: &str) {
    if !p.starts_with('/') {
        e(
            key,
            format!("{p:?} is not a JSON pointer; it starts with '/' (e.g. \"/sensors/0/temp\")"),
        );
    } else if p.split('/').any(|s| {
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return true;
            }
        }
        false
    }) {
        e(key, format!("{p:?}: '~' must be followed by 0 or 1 (RFC 6901)"));
    }
}

fn mqtt_tag(
    d: &DeviceConfig,
    m: &crate::mqtt::MqttDevice,
    t: &TagConfig,
    o: &crate::mqtt::MqttTag,
    base: &str,
    e: &mut impl FnMut(&str, String),
) {
    use crate::mqtt::PayloadFormat;
    let k = |key: &str| format!("{base}.{key}");
    match o.topic.as_ref().or(m.topic.as_ref()) {
        None => e(
            &k("topic"),
            "needs a topic: set `topic` on the tag or a default `topic` on the device".into(),
        ),
        Some(tpl) => {
            let filter = crate::mqtt::expand_topic(tpl, &d.name, &t.name);
            if let Err(msg) = crate::mqtt::check_filter(&filter).and_then(|()| not_shared(&filter)) {
                let key = if o.topic.is_some() {
                    k("topic")
                } else {
                    "topic".to_string()
                };
                e(&key, format!("{msg} (tag {:?})", t.name));
            }
        }
    }
    let format = o.format.unwrap_or(m.format);
    let addr = t.address.trim();
    if addr != "payload" {
        if format == PayloadFormat::Json {
            json_pointer(e, &k("address"), addr);
        } else {
            e(
                &k("address"),
                format!(
                    "a {} payload has no parts: address must be \"payload\" (the whole payload)",
                    format.as_str()
                ),
            );
        }
    }
    if format == PayloadFormat::Raw && t.data_type == DataType::DateTime {
        e(
            &k("data_type"),
            "a raw payload cannot hold a DateTime; use json or plain".into(),
        );
    }
    if let Some(p) = &o.timestamp_pointer {
        json_pointer(e, &k("timestamp_pointer"), p);
    }
    // A device-level pointer applies to the JSON tags only.
    if o.timestamp_pointer.is_some() && format != PayloadFormat::Json {
        e(
            &k("timestamp_pointer"),
            "only a json payload carries a timestamp".into(),
        );
    }
    if t.access != Access::Read {
        e(
            &k("access"),
            "MQTT tags are read-only in this build (subscriptions); writes are not supported".into(),
        );
    }
}

fn modbus_device(d: &DeviceConfig, m: &ModbusDevice, e: &mut impl FnMut(&str, String)) {
    use crate::Protocol;
    let serial_keys = [
        ("port", m.port.is_some()),
        ("baud_rate", m.baud_rate.is_some()),
        ("data_bits", m.data_bits.is_some()),
        ("parity", m.parity.is_some()),
        ("stop_bits", m.stop_bits.is_some()),
    ];
    if d.protocol != Protocol::ModbusTcp && !(1..=247).contains(&m.unit_id) {
        e(
            "unit_id",
            format!("must be 1..=247 for RTU addressing, got {}", m.unit_id),
        );
    }
    if d.protocol == Protocol::ModbusRtu {
        match &m.port {
            None if !d.endpoint.trim().is_empty() => e(
                "endpoint",
                "a modbus-rtu device is addressed by `port = \"/dev/ttyUSB0\"`, not `endpoint`".into(),
            ),
            Some(p) if p != &d.endpoint => e(
                "endpoint",
                "a modbus-rtu device is addressed by `port`; leave `endpoint` out".into(),
            ),
            _ => {}
        }
        if m.baud_rate == Some(0) {
            e("baud_rate", "must be > 0".into());
        }
        if m.data_bits.is_some_and(|b| !(5..=8).contains(&b)) {
            e("data_bits", "must be 5, 6, 7 or 8".into());
        }
        if m.stop_bits.is_some_and(|b| !(1..=2).contains(&b)) {
            e("stop_bits", "must be 1 or 2".into());
        }
    } else {
        for (key, set) in serial_keys {
            if set {
                e(
                    key,
                    format!(
                        "is a serial-line key; {} devices use `endpoint`",
                        d.protocol.as_str()
                    ),
                );
            }
        }
        if d.endpoint.contains("://") || d.endpoint.contains('/') {
            e(
                "endpoint",
                format!("{:?} is not host:port (no scheme or path)", d.endpoint),
            );
        } else if let Some((host, port)) = d.endpoint.rsplit_once(':') {
            if port.parse::<u16>().is_err() || host.is_empty() {
                e(
                    "endpoint",
                    format!("{:?} is not host:port (IPv6: \"[::1]:502\")", d.endpoint),
                );
            }
        }
    }
    if m.address_base.is_some_and(|b| b > 1) {
        e("address_base", "must be 0 or 1".into());
    }
    if !(1..=125).contains(&m.max_registers_per_request) {
        e(
            "max_registers_per_request",
            "must be 1..=125 (the Modbus limit for FC3/FC4)".into(),
        );
    }
    if !(1..=2000).contains(&m.max_bits_per_request) {
        e(
            "max_bits_per_request",
            "must be 1..=2000 (the Modbus limit for FC1/FC2)".into(),
        );
    }
}

fn modbus_tag(
    m: &ModbusDevice,
    t: &TagConfig,
    o: &modbus::ModbusTag,
    base: &str,
    e: &mut impl FnMut(&str, String),
) {
    match modbus::resolve(m, t, o) {
        Err((key, msg)) => e(&format!("{base}.{key}"), msg),
        Ok(p) => {
            let limit = if p.table.is_bits() {
                m.max_bits_per_request
            } else {
                m.max_registers_per_request
            };
            if p.count > limit {
                let key = if o.length.is_some() { "length" } else { "data_type" };
                e(
                    &format!("{base}.{key}"),
                    format!(
                        "{} registers do not fit one request (max_registers_per_request = {limit})",
                        p.count
                    ),
                );
            }
            if t.access != crate::Access::Read
                && matches!(p.table, modbus::Table::Input | modbus::Table::DiscreteInput)
            {
                e(
                    &format!("{base}.access"),
                    format!(
                        "{} is a read-only table; only coils and holding registers can be written",
                        p.table.as_str()
                    ),
                );
            }
        }
    }
}

/// Devices that share one serial port must agree on its line settings,
/// and each must have its own unit id (two files polling one slave would
/// interleave their requests and both read the same registers).
pub(crate) fn serial_ports(devices: &[(DeviceConfig, Source)], errors: &mut Vec<ConfigError>) {
    let mut seen: HashMap<String, (&str, crate::SerialSettings)> = HashMap::new();
    let mut units: HashMap<(String, u8), &str> = HashMap::new();
    for (d, src) in devices {
        let DriverOptions::Modbus(m) = &d.driver else {
            continue;
        };
        if d.protocol != crate::Protocol::ModbusRtu {
            continue;
        }
        let Some(s) = m.serial() else { continue };
        if let Some(other) = units.insert((s.port.clone(), m.unit_id), d.name.as_str()) {
            errors.push(src.error(
                "unit_id",
                format!(
                    "unit id {} on {} is already device {other:?}; each slave on a serial line \
                     needs its own unit id (one device file per slave)",
                    m.unit_id, s.port
                ),
            ));
        }
        match seen.get(&s.port) {
            Some((other, first)) if *first != s => errors.push(src.error(
                "port",
                format!(
                    "{} is shared with device {other:?}, which sets different line settings \
                     ({} baud, {} data bits, {:?} parity, {} stop bits); devices on one port must agree",
                    s.port, first.baud_rate, first.data_bits, first.parity, first.stop_bits
                ),
            )),
            Some(_) => {}
            None => {
                seen.insert(s.port.clone(), (d.name.as_str(), s));
            }
        }
    }
}

/// Unique device names across files.
pub(crate) fn devices_unique(devices: &[(DeviceConfig, Source)], errors: &mut Vec<ConfigError>) {
    let mut seen: HashMap<&str, &Source> = HashMap::new();
    for (d, src) in devices {
        if let Some(first) = seen.insert(d.name.as_str(), src) {
            errors.push(src.error(
                "name",
                format!(
                    "duplicate device name {:?}: also defined in {}",
                    d.name,
                    first.path.display()
                ),
            ));
        }
    }
}

pub(crate) fn rules(
    rules: &[AlertRuleConfig],
    devices: &[(DeviceConfig, Source)],
    src: &Source,
    errors: &mut Vec<ConfigError>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let mut e = |key: &str, msg: String| errors.push(src.error(key, msg));
        let k = |key: &str| format!("alert_rules[{i}].{key}");
        let whole = format!("alert_rules[{i}]");
        check_name(&mut e, &k("name"), &r.name, "rule name");
        max_chars(&mut e, &k("name"), Some(&r.name), 255, "alert_rules.name");
        if let Some(first) = seen.insert(r.name.as_str(), i) {
            e(
                &k("name"),
                format!("duplicate rule name {:?} (first at alert_rules[{first}])", r.name),
            );
        }
        match (r.op, &r.condition_expression, &r.tag) {
            (None, None, _) => e(
                &whole,
                "`op` is required (GT, LT, GTE, LTE, EQ, NE, BETWEEN or NOT_BETWEEN)".into(),
            ),
            (Some(op), _, _) if op.is_range() => match (r.threshold_low, r.threshold_high) {
                (Some(lo), Some(hi)) if lo > hi => e(
                    &k("threshold_low"),
                    format!("threshold_low {lo} is greater than threshold_high {hi}"),
                ),
                (Some(lo), Some(hi)) if !lo.is_finite() || !hi.is_finite() => {
                    e(&k("threshold_low"), "thresholds must be finite numbers".into())
                }
                (Some(_), Some(_)) => {}
                _ => e(
                    &whole,
                    format!(
                        "{} needs both threshold_low and threshold_high (seed CHECK alert_rules_threshold_check)",
                        op.as_str()
                    ),
                ),
            },
            (Some(op), _, _) => match r.threshold_value {
                None => e(
                    &whole,
                    format!(
                        "{} needs threshold_value (seed CHECK alert_rules_threshold_check)",
                        op.as_str()
                    ),
                ),
                Some(v) if !v.is_finite() => e(&k("threshold_value"), "must be a finite number".into()),
                Some(_) => {}
            },
            (None, Some(_), _) => {
                if r.threshold_value.is_some() || r.threshold_low.is_some() || r.threshold_high.is_some() {
                    e(
                        &whole,
                        "thresholds need an `op`; without one the rule fires while the expression is true".into(),
                    );
                }
            }
        }
        if r.tag.is_none() && r.condition_expression.is_none() {
            e(
                &whole,
                "a rule needs `tag` (compare the tag's value) or `condition_expression`".into(),
            );
        }
        positive(&mut e, &k("eval_interval"), r.eval_interval);
        if r.eval_duration == Some(Duration::ZERO) {
            e(
                &k("eval_duration"),
                "must be a positive duration (omit it to fire at once)".into(),
            );
        }
        let Some((d, _)) = devices.iter().find(|(d, _)| d.name == r.device) else {
            e(
                &k("device"),
                format!(
                    "no device named {:?} (device names come from devices/*.toml)",
                    r.device
                ),
            );
            continue;
        };
        if let Some(tag) = &r.tag {
            match d.tag(tag) {
                None => {
                    let names: Vec<&str> = d.tags.iter().map(|t| t.name.as_str()).collect();
                    let hint = crate::load::closest(tag, &names)
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default();
                    e(
                        &k("tag"),
                        format!("device {:?} has no tag named {tag:?}{hint}", d.name),
                    );
                }
                Some(t) if r.condition_expression.is_none() && expr_kind(t.data_type).is_none() => e(
                    &k("tag"),
                    format!(
                        "tag {tag:?} is {:?}; rules compare numeric or boolean tags",
                        t.data_type
                    ),
                ),
                Some(_) => {}
            }
        }
        if let Some(x) = &r.condition_expression {
            let kinds = |name: &str| d.tag(name).and_then(|t| expr_kind(t.data_type));
            match crate::expression::Expression::compile(x, &kinds) {
                Err(err) => errors.push(src.error_in_string(
                    &k("condition_expression"),
                    x,
                    err.offset,
                    format!("{} (in device {:?})", err.message, d.name),
                )),
                // Nothing would ever trigger its evaluation.
                Ok(c) if c.arity() == 0 => errors.push(src.error(
                    &k("condition_expression"),
                    format!(
                        "the expression reads no tag of device {:?}; it would never be evaluated",
                        d.name
                    ),
                )),
                Ok(_) => {}
            }
        }
    }
}

/// How an expression sees a tag of this type (`None`: not usable).
pub fn expr_kind(t: crate::DataType) -> Option<crate::expression::VarKind> {
    if t == crate::DataType::Boolean {
        Some(crate::expression::VarKind::Bool)
    } else if t.is_numeric() {
        Some(crate::expression::VarKind::Number)
    } else {
        None
    }
}
