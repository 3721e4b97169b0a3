//! One device file (`devices/*.toml`): the seed's `devices` and
//! `driver_configs` columns at the top, `[[tags]]` as the seed's `tags`
//! table, and the keys of the device's protocol next to them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::modbus::{ModbusDevice, ModbusTag};
use crate::mqtt::{MqttDevice, MqttTag};
use crate::opcua::{OpcuaDevice, OpcuaTag};
use crate::simulator::{SimulatorDevice, SimulatorTag};
use crate::units;

/// Protocols this build has a driver for (`protocol = "…"` in a device file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Generated signals: the demo's device and the benchmark workload.
    Simulator,
    /// Modbus TCP (MBAP framing), `endpoint = "host:port"`.
    ModbusTcp,
    /// Modbus RTU on a serial line, `port = "/dev/ttyUSB0"`.
    ModbusRtu,
    /// RTU frames over a TCP socket (serial-to-Ethernet converters).
    ModbusRtuOverTcp,
    /// Subscriptions on an MQTT broker, `endpoint = "mqtt://host:1883"`.
    Mqtt,
    /// An OPC UA server, `endpoint = "opc.tcp://host:4840/path"`.
    #[serde(alias = "opc-ua")]
    Opcua,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Simulator => "simulator",
            Protocol::ModbusTcp => "modbus-tcp",
            Protocol::ModbusRtu => "modbus-rtu",
            Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
            Protocol::Mqtt => "mqtt",
            Protocol::Opcua => "opcua",
        }
    }
    pub fn is_modbus(self) -> bool {
        matches!(
            self,
            Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp
        )
    }
}

/// The seed's `tag_data_type`, with the lower-case spellings Modbus users write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DataType {
    #[serde(alias = "bool", alias = "boolean")]
    Boolean,
    #[serde(alias = "int8")]
    Int8,
    #[serde(alias = "uint8")]
    UInt8,
    #[serde(alias = "int16")]
    Int16,
    #[serde(alias = "uint16")]
    UInt16,
    #[serde(alias = "int32")]
    Int32,
    #[serde(alias = "uint32")]
    UInt32,
    #[serde(alias = "int64")]
    Int64,
    #[serde(alias = "uint64")]
    UInt64,
    #[serde(alias = "float", alias = "float32")]
    Float,
    #[serde(alias = "double", alias = "float64")]
    Double,
    #[serde(alias = "string")]
    String,
    #[serde(alias = "datetime")]
    DateTime,
    #[serde(alias = "bytes", alias = "bytearray")]
    ByteArray,
}

impl DataType {
    pub fn is_integer(self) -> bool {
        use DataType::*;
        matches!(
            self,
            Int8 | UInt8 | Int16 | UInt16 | Int32 | UInt32 | Int64 | UInt64
        )
    }
    pub fn is_numeric(self) -> bool {
        self.is_integer() || matches!(self, DataType::Float | DataType::Double)
    }
}

/// The seed's `tag_access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum Access {
    #[default]
    Read,
    Write,
    ReadWrite,
}

/// The seed's `driver_configs` retry columns.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub retry_interval: Duration,
    pub exponential_backoff: bool,
    pub max_retry_interval: Duration,
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        if !self.exponential_backoff {
            return self.retry_interval;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.retry_interval
            .checked_mul(factor)
            .unwrap_or(self.max_retry_interval)
            .min(self.max_retry_interval)
    }
}

/// Protocol-specific keys of a device.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverOptions {
    Simulator(SimulatorDevice),
    Modbus(ModbusDevice),
    Mqtt(MqttDevice),
    Opcua(Box<OpcuaDevice>),
}

/// Protocol-specific keys of a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum TagOptions {
    Simulator(SimulatorTag),
    Modbus(ModbusTag),
    Mqtt(MqttTag),
    Opcua(OpcuaTag),
}

/// One device (one file).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// The file it was read from.
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub protocol: Protocol,
    pub endpoint: String,
    pub location: Option<String>,
    pub enabled: bool,
    pub scan_interval: Duration,
    pub timeout: Duration,
    pub max_concurrent: u32,
    pub batch_size: u32,
    pub retry: RetryPolicy,
    pub driver: DriverOptions,
    pub tags: Vec<TagConfig>,
}

impl DeviceConfig {
    /// The tags that are polled.
    pub fn enabled_tags(&self) -> impl Iterator<Item = &TagConfig> {
        self.tags.iter().filter(|t| t.enabled)
    }
    pub fn tag(&self, name: &str) -> Option<&TagConfig> {
        self.tags.iter().find(|t| t.name == name)
    }
}

/// One tag (the seed's `tags` row).
#[derive(Debug, Clone, PartialEq)]
pub struct TagConfig {
    pub name: String,
    pub description: Option<String>,
    pub address: String,
    pub data_type: DataType,
    pub access: Access,
    pub unit: Option<String>,
    /// `value = raw * scaling + offset`.
    pub scaling: f64,
    pub offset: f64,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
    /// A new sample is published only when it moved by more than this.
    pub deadband: Option<f64>,
    /// With `deadband`: publish at least this often even when unchanged
    /// (heartbeat), so a quiet value is still seen to be alive.
    pub max_report_interval: Option<Duration>,
    /// Overrides the device's `scan_interval` for this tag.
    pub scan_rate: Option<Duration>,
    pub enabled: bool,
    pub driver: TagOptions,
}

impl TagConfig {
    /// A readable, enabled tag with the defaults of a device file
    /// (scaling 1, offset 0, no range, deadband or scan rate override).
    pub fn new(name: &str, address: &str, data_type: DataType, driver: TagOptions) -> TagConfig {
        TagConfig {
            name: name.into(),
            description: None,
            address: address.into(),
            data_type,
            access: Access::Read,
            unit: None,
            scaling: 1.0,
            offset: 0.0,
            min_value: None,
            max_value: None,
            deadband: None,
            max_report_interval: None,
            scan_rate: None,
            enabled: true,
            driver,
        }
    }

    /// How often this tag is read.
    pub fn effective_scan(&self, device: &DeviceConfig) -> Duration {
        self.scan_rate.unwrap_or(device.scan_interval)
    }
}

// ---- serde forms: the common keys; protocol keys are split off by the loader ----

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceCommon {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub protocol: Protocol,
    /// Required except for `modbus-rtu` (whose `port` is its endpoint).
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "d_scan", deserialize_with = "units::duration")]
    pub scan_interval: Duration,
    #[serde(default = "d_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    #[serde(default = "d_concurrent")]
    pub max_concurrent: u32,
    #[serde(default = "d_batch")]
    pub batch_size: u32,
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    #[serde(default = "d_retry", deserialize_with = "units::duration")]
    pub retry_interval: Duration,
    #[serde(default = "yes")]
    pub exponential_backoff: bool,
    #[serde(default = "d_max_retry", deserialize_with = "units::duration")]
    pub max_retry_interval: Duration,
}

/// Keys of [`DeviceCommon`] plus `tags`; every other key belongs to the protocol.
pub(crate) const DEVICE_KEYS: &[&str] = &[
    "name",
    "description",
    "protocol",
    "endpoint",
    "location",
    "enabled",
    "scan_interval",
    "timeout",
    "max_concurrent",
    "batch_size",
    "max_retries",
    "retry_interval",
    "exponential_backoff",
    "max_retry_interval",
    "tags",
];

fn d_scan() -> Duration {
    secs(1)
}
fn d_timeout() -> Duration {
    secs(5)
}
fn d_concurrent() -> u32 {
    10
}
fn d_batch() -> u32 {
    100
}
fn d_retries() -> u32 {
    3
}
fn d_retry() -> Duration {
    secs(1)
}
fn d_max_retry() -> Duration {
    secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TagCommon {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(deserialize_with = "string_or_int")]
    pub address: String,
    pub data_type: DataType,
    #[serde(default, alias = "access_type")]
    pub access: Access,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default = "one")]
    pub scaling: f64,
    #[serde(default, alias = "tag_offset")]
    pub offset: f64,
    #[serde(default)]
    pub min_value: Option<f64>,
    #[serde(default)]
    pub max_value: Option<f64>,
    #[serde(default)]
    pub deadband: Option<f64>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub max_report_interval: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub scan_rate: Option<Duration>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

pub(crate) const TAG_KEYS: &[&str] = &[
    "name",
    "description",
    "address",
    "data_type",
    "access",
    "access_type",
    "unit",
    "scaling",
    "offset",
    "tag_offset",
    "min_value",
    "max_value",
    "deadband",
    "max_report_interval",
    "scan_rate",
    "enabled",
];

/// An address is a string (`"40001"`, `"sine"`) or, with an explicit
/// Modbus `table`, a plain integer.
fn string_or_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addr {
        S(String),
        I(i64),
    }
    match Addr::deserialize(d)? {
        Addr::S(s) => Ok(s),
        Addr::I(i) if i >= 0 => Ok(i.to_string()),
        Addr::I(i) => Err(serde::de::Error::custom(format!(
            "address must not be negative, got {i}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_retry_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            retry_interval: Duration::from_secs(1),
            exponential_backoff: true,
            max_retry_interval: Duration::from_secs(30),
        };
        let d: Vec<u64> = (1..=7).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(p.delay(1000), Duration::from_secs(30));
    }
}
