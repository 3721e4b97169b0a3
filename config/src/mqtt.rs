//! Keys of `protocol = "mqtt"` devices and their tags, of `[sinks.NAME]
//! type = "mqtt"`, and the broker connection both share ([`MqttConnection`]).
//!
//! # Device files
//! - `endpoint = "mqtt://host:1883"` (`mqtts://` or `ssl://` for TLS;
//!   `tcp://` and a bare `host:port` mean plain TCP). Port defaults: 1883,
//!   8883 with TLS.
//! - `topic`: the default topic (template) of every tag; a tag's own
//!   `topic` overrides it. `{device}` is replaced by the device name and
//!   `{tag}` by the tag name, so `plant/{device}/{tag}` written in many
//!   device files is one rule for many devices. MQTT wildcards `+` and `#`
//!   are allowed.
//! - A tag's `address` says where its value is in the payload: a JSON
//!   pointer (RFC 6901, e.g. `/sensors/0/temp`) for `format = "json"`, or
//!   `payload` for the whole payload (any format).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1", alias = "4", alias = "v4", alias = "3")]
    V311,
    #[serde(rename = "5", alias = "5.0", alias = "v5")]
    V5,
}

impl MqttVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        }
    }
}

/// How a payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON document; each tag's `address` is a JSON pointer into it.
    #[default]
    Json,
    /// UTF-8 text: a number, `true`/`false`/`on`/`off`, or a string.
    Plain,
    /// The bytes as they are: byte-array and string tags take them whole,
    /// numeric tags read them big-endian with the width of their type.
    Raw,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Plain => "plain",
            PayloadFormat::Raw => "raw",
        }
    }
}

/// How a timestamp in a payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Seconds since the Unix epoch (fractions allowed).
    EpochS,
    /// Milliseconds since the Unix epoch.
    #[default]
    EpochMs,
    /// Microseconds since the Unix epoch.
    EpochUs,
    /// Nanoseconds since the Unix epoch.
    EpochNs,
    /// `2026-11-24T08:00:00.123+08:00` (`Z` or an offset).
    Rfc3339,
}

/// Quality of service of a subscription or a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Qos(pub u8);

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Qos, D::Error> {
        let q = u8::deserialize(d)?;
        if q > 2 {
            return Err(serde::de::Error::custom(format!(
                "qos must be 0, 1 or 2, got {q}"
            )));
        }
        Ok(Qos(q))
    }
}

/// Where a broker is, parsed from an endpoint or URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerAddress {
    /// `mqtt://h:p`, `tcp://h:p`, `mqtts://h:p`, `ssl://h:p` or `h:p`
    /// (a bracketed IPv6 host is allowed); the port defaults to 1883, or
    /// 8883 with TLS.
    pub fn parse(s: &str) -> Result<BrokerAddress, String> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://").or_else(|| s.strip_prefix("ssl://")) {
            (true, r)
        } else if let Some(r) = s.strip_prefix("mqtt://").or_else(|| s.strip_prefix("tcp://")) {
            (false, r)
        } else if s.contains("://") {
            return Err(format!(
                "unknown scheme in {s:?}; expected mqtt://, mqtts://, tcp:// or ssl://"
            ));
        } else {
            (false, s)
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("{s:?} has a path; a broker address is host[:port]"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), parse_port(p, s)?),
                None if after.is_empty() => (h.to_string(), default_port),
                None => return Err(format!("unexpected {after:?} after the IPv6 host in {s:?}")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), parse_port(p, s)?),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        Ok(BrokerAddress { host, port, tls })
    }
}

fn parse_port(p: &str, s: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port {p:?} in {s:?}")),
        Ok(n) => Ok(n),
    }
}

/// A broker connection as the driver and the sink open it.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConnection {
    pub address: BrokerAddress,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub version: MqttVersion,
    pub keep_alive: Duration,
    /// `false` (the default) keeps a persistent session: the broker queues
    /// QoS 1/2 messages while the client is away and redelivers
    /// unacknowledged ones.
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Largest packet accepted from the broker (MQTT 5 announces it, so
    /// the broker drops larger messages itself).
    pub max_packet_size: u64,
    /// Outgoing QoS 1/2 messages not yet confirmed by the broker.
    pub max_inflight: u16,
}

impl MqttConnection {
    pub fn tls(&self) -> bool {
        self.address.tls || self.ca_file.is_some()
    }
}

/// The largest packet MQTT can encode (remaining length 268 435 455 + header).
pub const MQTT_MAX_PACKET: u64 = 268_435_460;

/// Device keys of `protocol = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttDevice {
    /// Defaults to `{gateway_id}-{device}`; must be unique on the broker,
    /// and stable, or the persistent session is lost.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Use `${ENV}`: `password = "${PLANT_MQTT_PASSWORD}"`.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub version: MqttVersion,
    #[serde(default = "d_keep_alive", deserialize_with = "units::duration")]
    pub keep_alive: Duration,
    #[serde(default)]
    pub clean_session: bool,
    #[serde(default = "d_session_expiry", deserialize_with = "units::duration")]
    pub session_expiry: Duration,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Subscription QoS: 1 (default) is acknowledged only once the frame is
    /// in the bus; 0 is lossy (the broker never redelivers); 2 is refused
    /// at load (see `validate::qos_supported`).
    #[serde(default = "d_qos")]
    pub qos: Qos,
    /// Default topic template of the tags.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    /// JSON pointer of the message's timestamp (default: the receive time).
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
    #[serde(default)]
    pub timestamp_format: TimestampFormat,
    /// Larger payloads are counted (`too_large`), acknowledged and skipped.
    #[serde(default = "d_max_payload", deserialize_with = "units::bytes")]
    pub max_payload: u64,
    /// Offline when no message arrived for this long (default: only the
    /// connection state counts).
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub no_message_timeout: Option<Duration>,
    /// Messages received and not yet in the bus (MQTT 5 receive maximum;
    /// a 3.1.1 broker uses its own limit, 20 on Mosquitto).
    #[serde(default = "d_inflight")]
    pub max_inflight: u16,
}

impl MqttDevice {
    /// The connection of device `name` at `endpoint` (validated before).
    pub fn connection(&self, endpoint: &str, default_client_id: &str) -> Result<MqttConnection, String> {
        Ok(MqttConnection {
            address: BrokerAddress::parse(endpoint)?,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| default_client_id.to_string()),
            username: self.username.clone(),
            password: self.password.clone(),
            version: self.version,
            keep_alive: self.keep_alive,
            clean_session: self.clean_session,
            session_expiry: self.session_expiry,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            max_packet_size: match self.version {
                // A 3.1.1 client cannot tell the broker its limit, and a
                // packet over the client's limit breaks the connection, after
                // which the broker redelivers it forever. So every packet
                // the protocol allows is read, and an oversize payload is
                // counted, acknowledged and skipped.
                MqttVersion::V311 => MQTT_MAX_PACKET,
                // MQTT 5 announces the limit: the broker drops larger
                // messages itself (Mosquitto logs them).
                MqttVersion::V5 => self.max_payload.saturating_add(65_536).min(MQTT_MAX_PACKET),
            },
            max_inflight: self.max_inflight,
        })
    }
}

/// Tag keys of `protocol = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTag {
    /// Topic (template) of this tag; defaults to the device's `topic`.
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub format: Option<PayloadFormat>,
    #[serde(default)]
    pub timestamp_pointer: Option<String>,
    #[serde(default)]
    pub timestamp_format: Option<TimestampFormat>,
}

/// What a northbound message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttMessageMode {
    /// One message per sample on the sample's topic (default).
    #[default]
    Sample,
    /// One message per frame (a poll of one device) on the frame topic.
    Frame,
}

/// `[sinks.NAME] type = "mqtt"`: bus frames published to a broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// `mqtt://host:1883`, `mqtts://host:8883`.
    pub url: String,
    /// Defaults to `{gateway_id}-{sink name}`.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub version: MqttVersion,
    #[serde(default = "d_keep_alive", deserialize_with = "units::duration")]
    pub keep_alive: Duration,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "d_qos")]
    pub qos: Qos,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub mode: MqttMessageMode,
    /// Topic of one sample (`mode = "sample"`).
    #[serde(default = "d_sample_topic")]
    pub topic: String,
    /// Topic of one frame (`mode = "frame"`).
    #[serde(default = "d_frame_topic")]
    pub frame_topic: String,
    /// Topic of events (alerts, device status, audit); `{kind}` is the
    /// event kind in lower case (`alert_fired`, `device_status_changed`).
    #[serde(default = "d_event_topic")]
    pub event_topic: String,
    /// Retain events too (off by default: a retained alert outlives it).
    #[serde(default)]
    pub retain_events: bool,
    /// Birth (`online`) and last will (`offline`), retained.
    #[serde(default = "d_status_topic")]
    pub status_topic: String,
    /// QoS 1/2 messages published and not yet confirmed.
    #[serde(default = "d_sink_inflight")]
    pub max_inflight: u16,
    /// Cap on the delay between reconnects (they start at 250 ms and double).
    #[serde(default = "d_max_retry", deserialize_with = "units::duration")]
    pub max_retry_interval: Duration,
}

impl MqttSinkConfig {
    pub fn connection(&self, default_client_id: &str) -> Result<MqttConnection, String> {
        Ok(MqttConnection {
            address: BrokerAddress::parse(&self.url)?,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| default_client_id.to_string()),
            username: self.username.clone(),
            password: self.password.clone(),
            version: self.version,
            keep_alive: self.keep_alive,
            // The sink's cursor is its session: nothing is queued for it.
            clean_session: true,
            session_expiry: Duration::ZERO,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            max_packet_size: 1 << 20,
            max_inflight: self.max_inflight,
        })
    }
}

fn d_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn d_session_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_qos() -> Qos {
    Qos(1)
}
fn d_max_payload() -> u64 {
    256 * 1024
}
fn d_inflight() -> u16 {
    100
}
fn d_sink_inflight() -> u16 {
    100
}
fn d_max_retry() -> Duration {
    Duration::from_secs(30)
}
fn d_sample_topic() -> String {
    "gateway/{gateway_id}/{device}/{tag}".into()
}
fn d_frame_topic() -> String {
    "gateway/{gateway_id}/{device}".into()
}
fn d_event_topic() -> String {
    "gateway/{gateway_id}/events/{kind}".into()
}
fn d_status_topic() -> String {
    "gateway/{gateway_id}/status".into()
}

/// Checks an MQTT topic filter (after template expansion): not empty, no
/// NUL, `#` only as the last level, `+` and `#` only as whole levels.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic must not be empty".into());
    }
    if filter.contains('\0') {
        return Err("a topic must not contain NUL".into());
    }
    if filter.len() > 65_535 {
        return Err("a topic is at most 65535 bytes".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "'#' must be a whole level and the last one in {filter:?}"
            ));
        }
        if l.contains('+') && *l != "+" {
            return Err(format!("'+' must be a whole level in {filter:?}"));
        }
    }
    Ok(())
}

/// Checks a topic to publish to (no wildcards).
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    check_filter(topic)?;
    if topic.contains(['+', '#']) {
        return Err(format!("{topic:?}: a topic to publish to cannot hold '+' or '#'"));
    }
    Ok(())
}

/// `{device}` and `{tag}` of a southbound template replaced.
pub fn expand_topic(template: &str, device: &str, tag: &str) -> String {
    template.replace("{device}", device).replace("{tag}", tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        let a = BrokerAddress::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("127.0.0.1", 1884, false));
        let a = BrokerAddress::parse("mqtts://broker.plant").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.tls), ("broker.plant", 8883, true));
        let a = BrokerAddress::parse("[::1]:1883").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 1883));
        assert_eq!(BrokerAddress::parse("localhost").unwrap().port, 1883);
        assert!(BrokerAddress::parse("http://x").is_err());
        assert!(BrokerAddress::parse("mqtt://x:0").is_err());
        assert!(BrokerAddress::parse("mqtt://x:99999").is_err());
        assert!(BrokerAddress::parse("mqtt://:1883").is_err());
        assert!(BrokerAddress::parse("mqtt://x/a").is_err());
    }

    #[test]
    fn filters() {
        assert!(check_filter("plant/+/line1/#").is_ok());
        assert!(check_filter("#").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("a/x+/b").is_err());
        assert!(check_filter("").is_err());
        assert!(check_topic_name("a/+").is_err());
        assert_eq!(expand_topic("plant/{device}/{tag}", "p1", "t"), "plant/p1/t");
    }
}
