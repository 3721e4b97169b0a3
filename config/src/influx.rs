//! `[sinks.NAME] type = "influxdb"`: measurements to InfluxDB 1.x (`api =
//! "v1"`) or InfluxDB 2.x / 3.x and compatible servers (`api = "v2"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// Which write API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `POST /write?db=&rp=&precision=ns` (InfluxDB 1.x; also VictoriaMetrics).
    V1,
    /// `POST /api/v2/write?org=&bucket=&precision=ns` with `Authorization: Token`.
    #[default]
    V2,
}

/// How unsigned integers are written (`u` needs InfluxDB 2.x/3.x; 1.x
/// parsers reject it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsignedAs {
    /// `123u`.
    #[default]
    Native,
    /// `123i`, saturating at `i64::MAX`.
    Integer,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086` (plain HTTP in this build).
    pub url: String,
    #[serde(default)]
    pub api: InfluxApi,
    /// v1: database (required) and retention policy.
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// v1: credentials, sent as HTTP Basic auth.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// v2: organisation and bucket (required).
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub bucket: Option<String>,
    /// v2: API token (`Authorization: Token …`).
    #[serde(default)]
    pub token: Option<String>,
    /// Measurement of samples.
    #[serde(default = "d_measurement")]
    pub measurement: String,
    /// Measurement of events (alerts, device status, command results).
    #[serde(default = "d_events")]
    pub event_measurement: String,
    /// Renames of built-in tag keys, e.g. `device_id = "device"` (keys:
    /// [`BUILTIN_TAGS`]).
    #[serde(default)]
    pub tag_keys: BTreeMap<String, String>,
    /// Extra tags on every point (e.g. `gateway_id = "line-3"`); must not
    /// reuse a built-in tag name ([`BUILTIN_TAGS`]).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Lines per write request.
    #[serde(default = "d_lines")]
    pub batch_lines: usize,
    /// Largest request body before gzip (`"4MiB"`); a batch ends at
    /// whichever of `batch_lines` and `batch_bytes` comes first.
    #[serde(default = "d_bytes", deserialize_with = "units::bytes")]
    pub batch_bytes: u64,
    /// Write requests in flight at once. The cursor still moves in order:
    /// seq N is acknowledged only when every batch up to N was written.
    #[serde(default = "d_concurrency")]
    pub concurrency: usize,
    /// Longest time a sample waits for its batch to fill.
    #[serde(default = "d_flush", deserialize_with = "units::duration")]
    pub flush_interval: Duration,
    /// Deadline of one write request.
    #[serde(default = "d_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// gzip request bodies.
    #[serde(default = "yes")]
    pub gzip: bool,
    /// Default: `native` for v2, `integer` for v1.
    #[serde(default)]
    pub unsigned: Option<UnsignedAs>,
    /// Longest wait between retries of a failing write.
    #[serde(default = "d_max_retry", deserialize_with = "units::duration")]
    pub max_retry_interval: Duration,
}

fn d_measurement() -> String {
    "device_data".into()
}
fn d_events() -> String {
    "alert_events".into()
}
fn d_lines() -> usize {
    5000
}
fn d_bytes() -> u64 {
    4 << 20
}
fn d_concurrency() -> usize {
    2
}
fn d_flush() -> Duration {
    Duration::from_secs(1)
}
fn d_timeout() -> Duration {
    // Below the default shutdown_timeout (10 s), so a clean stop can still
    // finish the batch in hand.
    Duration::from_secs(5)
}
fn d_max_retry() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}

/// Tags the sink sets itself (samples and events).
pub const BUILTIN_TAGS: &[&str] = &[
    "device_id",
    "device_name",
    "tag_name",
    "protocol",
    "location",
    "unit",
    "event_type",
    "rule_id",
    "level",
    "status",
];
