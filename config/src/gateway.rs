//! `gateway.toml`: process-wide settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::alert::{AlertRuleConfig, AlertsConfig};
use crate::units;

/// Everything in `gateway.toml` (paths resolved against its directory).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Names this gateway in the status API, logs and (with the storage issues) stored rows (default: the host name).
    pub gateway_id: String,
    /// Holds `wal/` (the frame bus) and driver state.
    pub data_dir: PathBuf,
    /// Directory of device files, one device per `*.toml`.
    pub devices_dir: PathBuf,
    pub wal: WalConfig,
    pub http: HttpConfig,
    pub supervisor: SupervisorConfig,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub alerts: AlertsConfig,
    pub alert_rules: Vec<AlertRuleConfig>,
}

/// `[wal]`: the frame bus.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// `"batch"` (group commit + fsync, default), `"always"` or `"none"`.
    #[serde(default)]
    pub sync: WalSync,
    /// Frames older than this are dropped even if unacknowledged (default 24h; `"0s"` = never).
    #[serde(default = "d_max_age", deserialize_with = "units::duration")]
    pub max_age: Duration,
    /// Cap on the frames' size on disk; the oldest are dropped beyond it.
    #[serde(default, deserialize_with = "units::opt_bytes")]
    pub max_bytes: Option<u64>,
    /// Publishes are refused below this free space (`BusError::DiskFull`): the
    /// bus stays intact; the polls that could not be stored are counted as
    /// `bus` errors and the driver is restarted with backoff until space returns.
    #[serde(default = "d_min_free", deserialize_with = "units::opt_bytes")]
    pub min_free_bytes: Option<u64>,
}

impl WalSync {
    pub fn as_str(self) -> &'static str {
        match self {
            WalSync::Batch => "batch",
            WalSync::Always => "always",
            WalSync::None => "none",
        }
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync: WalSync::default(),
            max_age: d_max_age(),
            max_bytes: None,
            min_free_bytes: d_min_free(),
        }
    }
}

fn d_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn d_min_free() -> Option<u64> {
    Some(64 << 20)
}

/// Durability of a publish (see `frame_bus::SyncMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalSync {
    #[default]
    Batch,
    Always,
    None,
}

/// `[http]`: metrics, health and the status API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "d_listen")]
    pub listen: SocketAddr,
    /// Bearer token required on `/api/*` when set.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: d_listen(),
            token: None,
        }
    }
}

fn d_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

/// `[supervisor]`: restarts and shutdown.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// First delay before restarting a failed driver or sink.
    #[serde(default = "d_backoff_min", deserialize_with = "units::duration")]
    pub restart_backoff: Duration,
    /// Cap on the restart delay.
    #[serde(default = "d_backoff_max", deserialize_with = "units::duration")]
    pub max_restart_backoff: Duration,
    /// How long sinks get to finish in-flight batches on shutdown.
    #[serde(default = "d_shutdown", deserialize_with = "units::duration")]
    pub shutdown_timeout: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            restart_backoff: d_backoff_min(),
            max_restart_backoff: d_backoff_max(),
            shutdown_timeout: d_shutdown(),
        }
    }
}

fn d_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn d_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn d_shutdown() -> Duration {
    Duration::from_secs(10)
}

/// `[sinks.NAME]`: one consumer of the bus with its own cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub enabled: bool,
    pub kind: SinkKind,
}

/// The sink's `type` and its keys.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// `type = "file"`: decoded frames as JSON Lines in a local file.
    File(FileSinkConfig),
    /// `type = "influxdb"`: samples and events as line protocol.
    Influx(Box<crate::influx::InfluxSinkConfig>),
    /// `type = "postgres"`: configuration, device status, alert history and
    /// audit log in the seed's relational schema.
    Postgres(Box<crate::postgres::PostgresSinkConfig>),
    /// `type = "webhook"`: alert notifications as HTTP POSTs.
    Webhook(Box<crate::webhook::WebhookSinkConfig>),
    /// `type = "mqtt"`: samples and events published to a broker.
    Mqtt(Box<crate::mqtt::MqttSinkConfig>),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Influx(_) => "influxdb",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Mqtt(_) => "mqtt",
        }
    }
}

pub(crate) const SINK_TYPES: &[&str] = &["file", "influxdb", "postgres", "webhook", "mqtt"];

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Target file (relative to `data_dir`).
    pub path: PathBuf,
    /// Frames per write + fsync.
    #[serde(default = "d_sink_batch")]
    pub batch_size: usize,
    /// When the file passes this size it is renamed to `<path>.1` (replacing
    /// the previous one) and a new file is started.
    #[serde(default = "d_rotate", deserialize_with = "units::opt_bytes")]
    pub max_file_size: Option<u64>,
}

fn d_sink_batch() -> usize {
    512
}
fn d_rotate() -> Option<u64> {
    Some(64 << 20)
}

// ---- serde form of the top level (sinks and alert rules are split off) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    #[serde(default)]
    pub gateway_id: Option<String>,
    #[serde(default = "d_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "d_devices_dir")]
    pub devices_dir: PathBuf,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
}

fn d_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn d_devices_dir() -> PathBuf {
    PathBuf::from("devices")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkCommon {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

pub(crate) const SINK_KEYS: &[&str] = &["type", "enabled"];

fn yes() -> bool {
    true
}
