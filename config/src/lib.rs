//! Gateway_Rust configuration: the TOML schema of `gateway.toml` and
//! `devices/*.toml`, loading, `${ENV}` substitution and validation with
//! errors that name file, line, column and key path.
//!
//! # Files
//! - `gateway.toml`: `gateway_id`, `data_dir`, `devices_dir`, `[wal]`,
//!   `[http]`, `[supervisor]`, `[sinks.NAME]` (each with a `type`) and
//!   `[[alert_rules]]` ([`GatewayConfig`]).
//! - `devices/*.toml`, one device per file: the seed's device and
//!   driver-config columns, the keys of its `protocol` next to them, and
//!   `[[tags]]` ([`DeviceConfig`]). Protocol keys are typed per protocol:
//!   the loader splits each table into the common keys and the rest, and
//!   deserializes the rest into the protocol's own struct
//!   ([`DriverOptions`], [`TagOptions`]), so a typo is an unknown key either way.
//!
//! Durations are `"500ms"`, `"10s"`, `"24h"` (or integer milliseconds, as
//! in the seed's columns); sizes are `"512MiB"`, `"2GiB"` (or bytes).
//! Strings may hold `${VAR}` / `${VAR:-default}`; `$${` is a literal `${`.
//!
//! # Invariants
//! - Loading never stops at the first problem: all syntax errors of a file,
//!   every tag, sink and rule deserialized on its own, then every semantic
//!   check; each [`ConfigError`] has file, line, column and key path.
//! - Unknown keys are errors (with a "did you mean" hint).
//! - A [`Config`] that is returned passed every check: the gateway never
//!   starts half-configured.
//!
//! This crate does no device or storage I/O; it depends on no other
//! workspace crate (`gateway → config`).

mod alert;
mod device;
mod error;
pub mod expression;
mod gateway;
mod influx;
mod load;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
mod postgres;
mod simulator;
pub mod units;
mod validate;
mod webhook;

use std::path::{Path, PathBuf};

pub use alert::{AlertLevel, AlertRuleConfig, AlertsConfig, CompareOp};
pub use device::{
    Access, DataType, DeviceConfig, DriverOptions, Protocol, RetryPolicy, TagConfig, TagOptions,
};
pub use error::{ConfigError, ConfigErrors};
pub use gateway::{
    FileSinkConfig, GatewayConfig, HttpConfig, SinkConfig, SinkKind, SupervisorConfig, WalConfig, WalSync,
};
pub use influx::{InfluxApi, InfluxSinkConfig, UnsignedAs};
pub use load::EnvLookup;
pub use modbus::{ByteOrder, ModbusDevice, ModbusPoint, ModbusTag, Parity, SerialSettings, Table};
pub use mqtt::{
    BrokerAddress, MqttConnection, MqttDevice, MqttMessageMode, MqttSinkConfig, MqttTag, MqttVersion,
    PayloadFormat, Qos, TimestampFormat,
};
pub use opcua::{
    AcquisitionMode, ArrayMode, DeadbandType, Namespace, NodeAddress, NodeIdentifier, OpcuaDevice, OpcuaTag,
    SecurityMode, SecurityPolicy, TimestampSource,
};
pub use postgres::{PostgresSinkConfig, SslMode};
pub use simulator::{ConstantValue, Generator, SimulatorDevice, SimulatorTag};
pub use validate::{expr_kind, redact_url};
pub use webhook::{WebhookEvent, WebhookSinkConfig};

use load::{de, parse, read, split, table_value, take_array, take_tables, Source};

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `gateway.toml` it came from.
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    /// Sorted by file name.
    pub devices: Vec<DeviceConfig>,
}

impl Config {
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Loads `gateway.toml` and its device directory with the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with an explicit environment (tests, `gateway check`).
pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let (gateway, gsrc) = load_gateway(path, env, &mut errors);
    let devices_dir = match &gateway {
        Some(g) => Some(g.devices_dir.clone()),
        None => gsrc.as_ref().map(|(_, dir)| dir.clone()),
    };
    let mut devices = Vec::new();
    if let Some(dir) = devices_dir {
        devices = load_devices(&dir, env, &mut errors);
    }
    finish(path, gateway, gsrc.map(|(src, _)| src), devices, errors)
}

/// [`load_with_env`] on text instead of files: `text` is the contents of
/// the `gateway.toml` at `path`, `devices` the `(path, contents)` of its
/// device files, loaded in the order given. The same parsing, `${ENV}`
/// substitution and checks as [`load_with_env`], except that neither
/// file is read: the paths only name the files in errors and anchor
/// relative paths, and the gateway's `devices_dir` is not listed (so an
/// empty `devices` is not an error here). For fuzzing
/// (`fuzz/fuzz_targets/config_load.rs`) and for tools that hold the files
/// in memory.
pub fn load_from_str(
    path: &Path,
    text: &str,
    devices: &[(&Path, &str)],
    env: EnvLookup<'_>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let (gateway, gsrc) = load_gateway_text(path, text, env, &mut errors);
    let devices: Vec<(DeviceConfig, Source)> = devices
        .iter()
        .filter_map(|&(p, t)| {
            let (d, src) = load_device_text(p, t, env, &mut errors)?;
            validate::device(&d, &src, &mut errors);
            Some((d, src))
        })
        .collect();
    finish(path, gateway, gsrc.map(|(src, _)| src), devices, errors)
}

/// The checks across files and the outcome of a load, shared by
/// [`load_with_env`] and [`load_from_str`].
fn finish(
    path: &Path,
    gateway: Option<GatewayConfig>,
    gsrc: Option<Source>,
    mut devices: Vec<(DeviceConfig, Source)>,
    mut errors: Vec<ConfigError>,
) -> Result<Config, ConfigErrors> {
    validate::devices_unique(&devices, &mut errors);
    validate::serial_ports(&devices, &mut errors);
    if let (Some(g), Some(src)) = (&gateway, &gsrc) {
        validate::gateway(g, src, &mut errors);
        validate::rules(&g.alert_rules, &devices, src, &mut errors);
    }
    if let (Some(g), Some(src)) = (&gateway, &gsrc) {
        mqtt_client_ids(g, src, &mut devices, &mut errors);
        opcua_defaults(g, &mut devices, &mut errors);
    }
    match gateway {
        Some(gateway) if errors.is_empty() => Ok(Config {
            path: path.to_path_buf(),
            gateway,
            devices: devices.into_iter().map(|(d, _)| d).collect(),
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Gives OPC UA devices the gateway's defaults: the PKI directory
/// `<data_dir>/pki/opcua` (one client certificate for the gateway, one
/// trust list) and the application URI `urn:gateway-rust:<gateway_id>`.
///
/// The client certificate in a PKI directory carries one application URI
/// (the server checks it against the session's), so devices sharing a
/// `pki_dir` must share `application_uri`.
fn opcua_defaults(g: &GatewayConfig, devices: &mut [(DeviceConfig, Source)], errors: &mut Vec<ConfigError>) {
    let mut uris: std::collections::HashMap<PathBuf, (String, String)> = std::collections::HashMap::new();
    for (d, src) in devices.iter_mut() {
        if let DriverOptions::Opcua(o) = &mut d.driver {
            let pki = o
                .pki_dir
                .get_or_insert_with(|| g.data_dir.join("pki").join("opcua"))
                .clone();
            let uri = o
                .application_uri
                .get_or_insert_with(|| format!("urn:gateway-rust:{}", g.gateway_id))
                .clone();
            match uris.get(&pki) {
                Some((other_uri, other)) if *other_uri != uri => errors.push(src.error(
                    "application_uri",
                    format!(
                        "{uri:?} differs from {other_uri:?} of device {other:?}, which shares pki_dir {}: one certificate has one application URI; use the same URI or another pki_dir",
                        pki.display()
                    ),
                )),
                Some(_) => {}
                None => {
                    uris.insert(pki, (uri, d.name.clone()));
                }
            }
        }
    }
}

/// Gives MQTT devices without `client_id` the default `{gateway_id}-{device}`
/// and refuses two connections with one client id on one broker: the
/// broker would disconnect one whenever the other connects.
fn mqtt_client_ids(
    g: &GatewayConfig,
    gsrc: &Source,
    devices: &mut [(DeviceConfig, Source)],
    errors: &mut Vec<ConfigError>,
) {
    let mut seen: std::collections::HashMap<(String, String), String> = std::collections::HashMap::new();
    for (d, src) in devices.iter_mut() {
        let DriverOptions::Mqtt(m) = &mut d.driver else {
            continue;
        };
        let id = m
            .client_id
            .get_or_insert_with(|| format!("{}-{}", g.gateway_id, d.name))
            .clone();
        let Ok(addr) = mqtt::BrokerAddress::parse(&d.endpoint) else {
            continue;
        };
        let broker = format!("{}:{}", addr.host, addr.port);
        if let Some(other) = seen.insert((broker, id.clone()), format!("device {:?}", d.name)) {
            errors.push(src.error(
                "client_id",
                format!("client id {id:?} is also used by {other} on the same broker; each connection needs its own"),
            ));
        }
    }
    for (name, s) in &g.sinks {
        if let SinkKind::Mqtt(m) = &s.kind {
            let id = m
                .client_id
                .clone()
                .unwrap_or_else(|| format!("{}-{}", g.gateway_id, name));
            if let Ok(addr) = mqtt::BrokerAddress::parse(&m.url) {
                let broker = format!("{}:{}", addr.host, addr.port);
                if let Some(other) = seen.insert((broker, id.clone()), format!("sink {name:?}")) {
                    let key = if m.client_id.is_some() {
                        format!("sinks.{name}.client_id")
                    } else {
                        format!("sinks.{name}")
                    };
                    errors.push(gsrc.error(
                        &key,
                        format!("client id {id:?} is also used by {other} on the same broker; each connection needs its own"),
                    ));
                }
            }
        }
    }
}

/// Returns the gateway config (if it deserialized) and its source with the
/// devices directory (known even when other keys are broken).
fn load_gateway(
    path: &Path,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> (Option<GatewayConfig>, Option<(Source, PathBuf)>) {
    let Some(text) = read(path, errors) else {
        return (None, None);
    };
    load_gateway_text(path, &text, env, errors)
}

/// [`load_gateway`] on the file's contents `text`.
fn load_gateway_text(
    path: &Path,
    text: &str,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> (Option<GatewayConfig>, Option<(Source, PathBuf)>) {
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let Some((root, src)) = parse(path, text, env, errors) else {
        return (None, None);
    };
    let span = root.span();
    let mut t = root.into_inner();
    let devices_dir = match t.get("devices_dir").map(|v| v.get_ref()) {
        Some(toml::de::DeValue::String(s)) => resolve(Path::new(s.as_ref())),
        _ => resolve(Path::new("devices")),
    };
    let rules = take_array(&src, &mut t, "alert_rules", errors);
    let sinks = take_tables(&src, &mut t, "sinks", errors);
    let file: Option<gateway::GatewayFile> = de(
        &src,
        table_value(span, t),
        "",
        Some(&["sinks", "alert_rules"]),
        errors,
    );

    let mut sink_configs = std::collections::BTreeMap::new();
    for (name, v) in sinks {
        let base = format!("sinks.{name}");
        let vspan = v.span();
        let toml::de::DeValue::Table(table) = v.into_inner() else {
            errors.push(src.error(&base, format!("`{base}` must be a table")));
            continue;
        };
        let (common, rest) = split(table, gateway::SINK_KEYS);
        let Some(c) =
            de::<gateway::SinkCommon>(&src, table_value(vspan.clone(), common), &base, None, errors)
        else {
            continue;
        };
        let kind = match c.kind.as_str() {
            "file" => de(
                &src,
                table_value(vspan, rest),
                &base,
                Some(gateway::SINK_KEYS),
                errors,
            )
            .map(SinkKind::File),
            "influxdb" => de(
                &src,
                table_value(vspan, rest),
                &base,
                Some(gateway::SINK_KEYS),
                errors,
            )
            .map(|c| SinkKind::Influx(Box::new(c))),
            "webhook" => de(
                &src,
                table_value(vspan.clone(), rest),
                &base,
                Some(gateway::SINK_KEYS),
                errors,
            )
            .map(|c| SinkKind::Webhook(Box::new(c))),
            "mqtt" => de(
                &src,
                table_value(vspan.clone(), rest),
                &base,
                Some(gateway::SINK_KEYS),
                errors,
            )
            .map(|mut c: MqttSinkConfig| {
                for f in [&mut c.ca_file, &mut c.cert_file, &mut c.key_file] {
                    *f = f.as_deref().map(resolve);
                }
                SinkKind::Mqtt(Box::new(c))
            }),
            "postgres" => de(
                &src,
                table_value(vspan, rest),
                &base,
                Some(gateway::SINK_KEYS),
                errors,
            )
            .map(|mut c: PostgresSinkConfig| {
                c.ssl_root_cert = c.ssl_root_cert.as_deref().map(resolve);
                SinkKind::Postgres(Box::new(c))
            }),
            other => {
                errors.push(src.error(
                    &format!("{base}.type"),
                    format!(
                        "unknown sink type {other:?}; this build supports: {}",
                        gateway::SINK_TYPES.join(", ")
                    ),
                ));
                None
            }
        };
        if let Some(kind) = kind {
            sink_configs.insert(
                name.clone(),
                SinkConfig {
                    name,
                    enabled: c.enabled,
                    kind,
                },
            );
        }
    }
    let alert_rules: Vec<Option<AlertRuleConfig>> = rules
        .into_iter()
        .enumerate()
        .map(|(i, v)| de(&src, v, &format!("alert_rules[{i}]"), None, errors))
        .collect();

    let gateway = match (file, alert_rules.iter().all(Option::is_some)) {
        (Some(f), true) => Some(GatewayConfig {
            gateway_id: f.gateway_id.unwrap_or_else(hostname),
            data_dir: resolve(&f.data_dir),
            devices_dir: resolve(&f.devices_dir),
            wal: f.wal,
            http: f.http,
            supervisor: f.supervisor,
            alerts: f.alerts,
            sinks: sink_configs,
            alert_rules: alert_rules.into_iter().flatten().collect(),
        }),
        _ => None,
    };
    (gateway, Some((src, devices_dir)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_string())
}

/// The `*.toml` files of `dir`, sorted; errors when there are none.
#[allow(clippy::result_large_err)] // one error per call, off the hot path
pub fn device_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::file(dir, format!("cannot read devices directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::file(
            dir,
            "no device files (*.toml) in the devices directory; a gateway needs at least one device",
        ));
    }
    Ok(files)
}

fn load_devices(
    dir: &Path,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(DeviceConfig, Source)> {
    let files = match device_files(dir) {
        Ok(f) => f,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    files
        .iter()
        .filter_map(|f| {
            let (d, src) = load_device(f, env, errors)?;
            validate::device(&d, &src, errors);
            // Kept even when invalid: alert rules must still find it by name.
            Some((d, src))
        })
        .collect()
}

/// Loads one device file (deserialization only; validation is separate).
fn load_device(
    path: &Path,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(DeviceConfig, Source)> {
    let text = read(path, errors)?;
    load_device_text(path, &text, env, errors)
}

/// [`load_device`] on the file's contents `text`.
fn load_device_text(
    path: &Path,
    text: &str,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(DeviceConfig, Source)> {
    let (root, src) = parse(path, text, env, errors)?;
    let span = root.span();
    let mut t = root.into_inner();
    let raw_tags = take_array(&src, &mut t, "tags", errors);
    let (common, rest) = split(t, device::DEVICE_KEYS);
    let common: Option<device::DeviceCommon> = de(&src, table_value(span.clone(), common), "", None, errors);
    let driver = common.as_ref().and_then(|c| {
        let rest = table_value(span.clone(), rest);
        let keys = Some(device::DEVICE_KEYS);
        match c.protocol {
            Protocol::Simulator => de(&src, rest, "", keys, errors).map(DriverOptions::Simulator),
            Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp => {
                de(&src, rest, "", keys, errors).map(DriverOptions::Modbus)
            }
            Protocol::Mqtt => de(&src, rest, "", keys, errors).map(|mut m: MqttDevice| {
                let dir = path.parent().unwrap_or(Path::new("."));
                for f in [&mut m.ca_file, &mut m.cert_file, &mut m.key_file] {
                    if let Some(p) = f.as_mut() {
                        if p.is_relative() {
                            *p = dir.join(&*p);
                        }
                    }
                }
                DriverOptions::Mqtt(m)
            }),
            Protocol::Opcua => de(&src, rest, "", keys, errors).map(|mut o: OpcuaDevice| {
                let dir = path.parent().unwrap_or(Path::new("."));
                for f in [&mut o.pki_dir, &mut o.user_cert_file, &mut o.user_key_file] {
                    if let Some(p) = f.as_mut() {
                        if p.is_relative() {
                            *p = dir.join(&*p);
                        }
                    }
                }
                DriverOptions::Opcua(Box::new(o))
            }),
        }
    });
    let mut tags = Vec::with_capacity(raw_tags.len());
    let mut tags_ok = true;
    for (i, v) in raw_tags.into_iter().enumerate() {
        let base = format!("tags[{i}]");
        let vspan = v.span();
        let toml::de::DeValue::Table(table) = v.into_inner() else {
            errors.push(src.error(&base, "each [[tags]] entry must be a table"));
            continue;
        };
        let (tc, trest) = split(table, device::TAG_KEYS);
        let tc: Option<device::TagCommon> = de(&src, table_value(vspan.clone(), tc), &base, None, errors);
        let topt = common.as_ref().and_then(|c| {
            let rest = table_value(vspan, trest);
            let keys = Some(device::TAG_KEYS);
            match c.protocol {
                Protocol::Simulator => de(&src, rest, &base, keys, errors).map(TagOptions::Simulator),
                Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp => {
                    de(&src, rest, &base, keys, errors).map(TagOptions::Modbus)
                }
                Protocol::Mqtt => de(&src, rest, &base, keys, errors).map(TagOptions::Mqtt),
                Protocol::Opcua => de(&src, rest, &base, keys, errors).map(TagOptions::Opcua),
            }
        });
        if let (Some(c), Some(driver)) = (tc, topt) {
            tags.push(TagConfig {
                name: c.name,
                description: c.description,
                address: c.address,
                data_type: c.data_type,
                access: c.access,
                unit: c.unit,
                scaling: c.scaling,
                offset: c.offset,
                min_value: c.min_value,
                max_value: c.max_value,
                deadband: c.deadband,
                max_report_interval: c.max_report_interval,
                scan_rate: c.scan_rate,
                enabled: c.enabled,
                driver,
            });
        } else {
            tags_ok = false;
        }
    }
    let (c, driver) = (common?, driver?);
    if !tags_ok {
        return None;
    }
    // A serial device's endpoint is its port.
    let endpoint = match (&driver, c.endpoint.is_empty()) {
        (DriverOptions::Modbus(m), true) => m.port.clone().unwrap_or_default(),
        _ => c.endpoint,
    };
    let device = DeviceConfig {
        file: path.to_path_buf(),
        name: c.name,
        description: c.description,
        protocol: c.protocol,
        endpoint,
        location: c.location,
        enabled: c.enabled,
        scan_interval: c.scan_interval,
        timeout: c.timeout,
        max_concurrent: c.max_concurrent,
        batch_size: c.batch_size,
        retry: RetryPolicy {
            max_retries: c.max_retries,
            retry_interval: c.retry_interval,
            exponential_backoff: c.exponential_backoff,
            max_retry_interval: c.max_retry_interval,
        },
        driver,
        tags,
    };
    Some((device, src))
}
