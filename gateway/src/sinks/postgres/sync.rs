//! Configuration sync: the devices, tags, driver configs and alert rules
//! of the running configuration, and the compiled-in drivers, upserted in
//! one transaction.
//!
//! - Rows are matched by gateway id + name (tags by device + name); a row
//!   whose values did not change is not touched (its `updated_at` stays).
//! - A row that disappeared from the files is set `enabled = false`, never
//!   deleted, so history keeps its foreign keys.
//! - Gateways sharing one database serialise their syncs on an advisory
//!   lock keyed by the gateway id.

use std::collections::HashMap;

use config::{Access, Config, DataType, DeviceConfig, DriverOptions, Protocol};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Row ids of the gateway's devices, tags and rules, by name.
#[derive(Debug, Default, Clone)]
pub struct Ids {
    pub devices: HashMap<String, Uuid>,
    pub tags: HashMap<(Uuid, String), Uuid>,
    pub rules: HashMap<String, Uuid>,
}

impl Ids {
    /// Reads the ids of every row of `gateway_id` (enabled or not).
    pub async fn load(pool: &PgPool, gateway_id: &str) -> Result<Ids, sqlx::Error> {
        let devices: Vec<(String, Uuid)> =
            sqlx::query_as("SELECT name, id FROM devices WHERE gateway_id = $1")
                .bind(gateway_id)
                .fetch_all(pool)
                .await?;
        let tags: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
            "SELECT t.device_id, t.name, t.id FROM tags t JOIN devices d ON d.id = t.device_id \
             WHERE d.gateway_id = $1",
        )
        .bind(gateway_id)
        .fetch_all(pool)
        .await?;
        let rules: Vec<(String, Uuid)> =
            sqlx::query_as("SELECT name, id FROM alert_rules WHERE gateway_id = $1")
                .bind(gateway_id)
                .fetch_all(pool)
                .await?;
        Ok(Ids {
            devices: devices.into_iter().collect(),
            tags: tags.into_iter().map(|(d, n, id)| ((d, n), id)).collect(),
            rules: rules.into_iter().collect(),
        })
    }

    pub fn device(&self, name: &str) -> Option<Uuid> {
        self.devices.get(name).copied()
    }

    pub fn tag(&self, device: &str, tag: &str) -> Option<Uuid> {
        let d = self.device(device)?;
        self.tags.get(&(d, tag.to_string())).copied()
    }
}

/// The seed's `protocol_kind` value of a protocol.
pub fn protocol_kind(p: Protocol) -> &'static str {
    match p {
        Protocol::Simulator => "Simulator",
        Protocol::ModbusTcp => "ModbusTcp",
        Protocol::ModbusRtu => "ModbusRtu",
        Protocol::ModbusRtuOverTcp => "ModbusRtuOverTcp",
        Protocol::Mqtt => "Mqtt",
        Protocol::Opcua => "OpcUa",
    }
}

fn data_type(t: DataType) -> &'static str {
    match t {
        DataType::Boolean => "Boolean",
        DataType::Int8 => "Int8",
        DataType::UInt8 => "UInt8",
        DataType::Int16 => "Int16",
        DataType::UInt16 => "UInt16",
        DataType::Int32 => "Int32",
        DataType::UInt32 => "UInt32",
        DataType::Int64 => "Int64",
        DataType::UInt64 => "UInt64",
        DataType::Float => "Float",
        DataType::Double => "Double",
        DataType::String => "String",
        DataType::DateTime => "DateTime",
        DataType::ByteArray => "ByteArray",
    }
}

fn access(a: Access) -> &'static str {
    match a {
        Access::Read => "Read",
        Access::Write => "Write",
        Access::ReadWrite => "ReadWrite",
    }
}

fn ms(d: std::time::Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// How the driver reaches the device (`driver_configs.connection_type`).
fn connection_type(p: Protocol) -> &'static str {
    match p {
        Protocol::Simulator => "internal",
        Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => "tcp",
        Protocol::ModbusRtu => "serial",
        Protocol::Mqtt => "mqtt",
        Protocol::Opcua => "opc.tcp",
    }
}

/// The protocol keys of a device, as `devices.config` / `driver_configs.config`.
fn driver_json(d: &DeviceConfig) -> serde_json::Value {
    let options = match &d.driver {
        DriverOptions::Simulator(s) => json!({
            "seed": s.seed,
            "error_rate": s.error_rate,
            "error_burst": s.error_burst,
        }),
        DriverOptions::Modbus(m) => json!({
            "unit_id": m.unit_id,
            "address_base": m.address_base,
            "byte_order": format!("{:?}", m.byte_order),
            "max_registers_per_request": m.max_registers_per_request,
            "max_bits_per_request": m.max_bits_per_request,
            "max_gap": m.max_gap,
            "one_request_per_tag": m.one_request_per_tag,
            "pause_between_requests_ms": m.pause_between_requests.as_millis() as u64,
            "close_connection_after_poll": m.close_connection_after_poll,
            "busy_retries": m.busy_retries,
            "busy_retry_interval_ms": m.busy_retry_interval.as_millis() as u64,
            "port": m.port,
            "baud_rate": m.baud_rate,
        }),
        // No credentials: the password stays out of the database.
        DriverOptions::Mqtt(m) => json!({
            "client_id": m.client_id,
            "username": m.username,
            "version": m.version.as_str(),
            "keep_alive_ms": m.keep_alive.as_millis() as u64,
            "clean_session": m.clean_session,
            "qos": m.qos.0,
            "topic": m.topic,
            "format": m.format.as_str(),
            "tls": m.ca_file.is_some() || d.endpoint.starts_with("mqtts://") || d.endpoint.starts_with("ssl://"),
            "max_payload": m.max_payload,
            "no_message_timeout_ms": m.no_message_timeout.map(|t| t.as_millis() as u64),
        }),
        // No credentials, no key paths' contents.
        DriverOptions::Opcua(o) => json!({
            "security_policy": o.security_policy.as_str(),
            "security_mode": o.mode_of_security().as_str(),
            "username": o.username,
            "identity": if o.username.is_some() { "username" } else if o.user_cert_file.is_some() { "certificate" } else { "anonymous" },
            "mode": format!("{:?}", o.mode).to_lowercase(),
            "queue_size": o.queue_size,
            "max_nodes_per_read": o.max_nodes_per_read,
            "session_timeout_ms": o.session_timeout.as_millis() as u64,
            "keep_alive_interval_ms": o.keep_alive_interval.as_millis() as u64,
            "trust_server_certs": o.trust_server_certs,
        }),
    };
    json!({
        "protocol": d.protocol.as_str(),
        "file": d.file.display().to_string(),
        "scan_interval_ms": d.scan_interval.as_millis() as u64,
        "timeout_ms": d.timeout.as_millis() as u64,
        "options": options,
    })
}

/// The drivers compiled into this build, as `driver_registry` rows:
/// (protocol_kind, name, description, capabilities).
const DRIVERS: &[(Protocol, &str, &str, &[&str])] = &[
    (
        Protocol::Simulator,
        "simulator",
        "Generated signals (demo and benchmark workload)",
        &["read"],
    ),
    (
        Protocol::ModbusTcp,
        "modbus-tcp",
        "Modbus TCP client (MBAP framing)",
        &["read", "write", "batch-read"],
    ),
    (
        Protocol::ModbusRtu,
        "modbus-rtu",
        "Modbus RTU master on a serial line",
        &["read", "write", "batch-read", "shared-line"],
    ),
    (
        Protocol::ModbusRtuOverTcp,
        "modbus-rtu-over-tcp",
        "Modbus RTU frames over a TCP socket (serial-to-Ethernet converters)",
        &["read", "write", "batch-read", "shared-line"],
    ),
    (
        Protocol::Mqtt,
        "mqtt",
        "MQTT 3.1.1/5 subscriptions (JSON, plain, raw payloads), acknowledged after the WAL",
        &["subscribe", "tls"],
    ),
    (
        Protocol::Opcua,
        "opcua",
        "OPC UA client: subscriptions and batched reads, security policies, re-created sessions",
        &["read", "write", "subscribe", "batch-read", "browse", "security"],
    ),
];

/// `ON CONFLICT (key) DO UPDATE SET c = EXCLUDED.c, … WHERE (table.c, …)
/// IS DISTINCT FROM (EXCLUDED.c, …)`: an upsert that leaves a row whose
/// `cols` did not change untouched (so its `updated_at` stays).
fn on_conflict_update(table: &str, key: &str, cols: &[&str]) -> String {
    let list = |f: &dyn Fn(&str) -> String| cols.iter().map(|c| f(c)).collect::<Vec<_>>().join(", ");
    format!(
        " ON CONFLICT ({key}) DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
        list(&|c| format!("{c} = EXCLUDED.{c}")),
        list(&|c| format!("{table}.{c}")),
        list(&|c| format!("EXCLUDED.{c}")),
    )
}

/// What a sync changed, for the log.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub devices: usize,
    pub tags: usize,
    pub rules: usize,
    pub disabled: u64,
}

/// Upserts `config` into the database in one transaction.
pub async fn sync(pool: &PgPool, config: &Config) -> Result<SyncReport, sqlx::Error> {
    let gw = config.gateway.gateway_id.as_str();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('gateway_rust.sync:' || $1))")
        .bind(gw)
        .execute(&mut *tx)
        .await?;
    let mut report = SyncReport::default();
    let mut device_ids = HashMap::new();
    for d in &config.devices {
        let id = upsert_device(&mut tx, gw, d).await?;
        upsert_driver_config(&mut tx, gw, d, id).await?;
        device_ids.insert(d.name.clone(), id);
        report.devices += 1;
    }
    let names: Vec<String> = config.devices.iter().map(|d| d.name.clone()).collect();
    for table in ["devices", "driver_configs"] {
        report.disabled += sqlx::query(&format!(
            "UPDATE {table} SET enabled = false WHERE gateway_id = $1 AND enabled AND NOT (name = ANY($2))"
        ))
        .bind(gw)
        .bind(&names)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    let tags = upsert_tags(&mut tx, config, &device_ids).await?;
    report.tags = tags.name.len();
    report.disabled += disable_missing_tags(&mut tx, gw, &tags).await?;
    report.rules = upsert_rules(&mut tx, gw, config).await?;
    let rule_names: Vec<String> = config
        .gateway
        .alert_rules
        .iter()
        .map(|r| r.name.clone())
        .collect();
    report.disabled += sqlx::query(
        "UPDATE alert_rules SET enabled = false WHERE gateway_id = $1 AND enabled AND NOT (name = ANY($2))",
    )
    .bind(gw)
    .bind(&rule_names)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    register_drivers(&mut tx, gw, config).await?;
    tx.commit().await?;
    Ok(report)
}

async fn upsert_device(tx: &mut PgConnection, gw: &str, d: &DeviceConfig) -> Result<Uuid, sqlx::Error> {
    // The seed requires a non-empty endpoint; validation guarantees one
    // (a serial device's is its port), this is a last resort.
    let endpoint = if d.endpoint.trim().is_empty() {
        format!("{}://{}", d.protocol.as_str(), d.name)
    } else {
        d.endpoint.clone()
    };
    sqlx::query(
        &format!(
            "INSERT INTO devices (gateway_id, name, description, protocol, location, endpoint, config, enabled, created_by, updated_by) \
         VALUES ($1, $2, $3, $4::protocol_kind, $5, $6, $7, $8, $9, $9){}",
            on_conflict_update("devices", "gateway_id, name", &["description", "protocol", "location", "endpoint", "config", "enabled", "updated_by"])
        ),
    )
    .bind(gw)
    .bind(&d.name)
    .bind(&d.description)
    .bind(protocol_kind(d.protocol))
    .bind(&d.location)
    .bind(&endpoint)
    .bind(driver_json(d))
    .bind(d.enabled)
    .bind(format!("gateway:{gw}"))
    .execute(&mut *tx)
    .await?;
    sqlx::query_scalar("SELECT id FROM devices WHERE gateway_id = $1 AND name = $2")
        .bind(gw)
        .bind(&d.name)
        .fetch_one(&mut *tx)
        .await
}

async fn upsert_driver_config(
    tx: &mut PgConnection,
    gw: &str,
    d: &DeviceConfig,
    device: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        &format!(
            "INSERT INTO driver_configs (gateway_id, device_id, name, description, protocol, connection_type, enabled, config, \
           scan_interval, timeout, max_concurrent, batch_size, max_retries, retry_interval, exponential_backoff, max_retry_interval) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16){}",
            on_conflict_update("driver_configs", "gateway_id, name", &["device_id", "description", "protocol", "connection_type", "enabled", "config", "scan_interval", "timeout", "max_concurrent", "batch_size", "max_retries", "retry_interval", "exponential_backoff", "max_retry_interval"])
        ),
    )
    .bind(gw)
    .bind(device)
    .bind(&d.name)
    .bind(&d.description)
    .bind(d.protocol.as_str())
    .bind(connection_type(d.protocol))
    .bind(d.enabled)
    .bind(driver_json(d))
    .bind(ms(d.scan_interval).max(1))
    .bind(ms(d.timeout).max(1))
    .bind(i32::try_from(d.max_concurrent).unwrap_or(i32::MAX).max(1))
    .bind(i32::try_from(d.batch_size).unwrap_or(i32::MAX).max(1))
    .bind(i32::try_from(d.retry.max_retries).unwrap_or(i32::MAX))
    .bind(ms(d.retry.retry_interval))
    .bind(d.retry.exponential_backoff)
    .bind(ms(d.retry.max_retry_interval))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Every tag of every device in one statement (arrays unnested server-side).
async fn upsert_tags(
    tx: &mut PgConnection,
    config: &Config,
    device_ids: &HashMap<String, Uuid>,
) -> Result<TagKeys, sqlx::Error> {
    let mut dev = Vec::new();
    let mut name = Vec::new();
    let mut description: Vec<Option<String>> = Vec::new();
    let mut address = Vec::new();
    let mut dtype = Vec::new();
    let mut acc = Vec::new();
    let mut unit: Vec<Option<String>> = Vec::new();
    let mut scaling = Vec::new();
    let mut offset = Vec::new();
    let mut min: Vec<Option<f64>> = Vec::new();
    let mut max: Vec<Option<f64>> = Vec::new();
    let mut deadband: Vec<Option<f64>> = Vec::new();
    let mut scan_rate: Vec<Option<i32>> = Vec::new();
    let mut enabled = Vec::new();
    for d in &config.devices {
        let Some(id) = device_ids.get(&d.name) else {
            continue;
        };
        for t in &d.tags {
            dev.push(*id);
            name.push(t.name.clone());
            description.push(t.description.clone());
            address.push(t.address.clone());
            dtype.push(data_type(t.data_type).to_string());
            acc.push(access(t.access).to_string());
            unit.push(t.unit.clone());
            scaling.push(t.scaling);
            offset.push(t.offset);
            min.push(t.min_value);
            max.push(t.max_value);
            deadband.push(t.deadband);
            scan_rate.push(t.scan_rate.map(|r| ms(r).max(1)));
            enabled.push(t.enabled);
        }
    }
    sqlx::query(
        &format!(
            "INSERT INTO tags (device_id, name, description, address, data_type, access_type, unit, scaling, tag_offset, \
           min_value, max_value, deadband, scan_rate, enabled) \
         SELECT u.device_id, u.name, u.description, u.address, u.data_type::tag_data_type, u.access_type::tag_access, \
           u.unit, u.scaling, u.tag_offset, u.min_value, u.max_value, u.deadband, u.scan_rate, u.enabled \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[], $13::int4[], $14::bool[]) \
           AS u(device_id, name, description, address, data_type, access_type, unit, scaling, tag_offset, \
                min_value, max_value, deadband, scan_rate, enabled){}",
            on_conflict_update("tags", "device_id, name", &["description", "address", "data_type", "access_type", "unit", "scaling", "tag_offset", "min_value", "max_value", "deadband", "scan_rate", "enabled"])
        ),
    )
    .bind(&dev)
    .bind(&name)
    .bind(&description)
    .bind(&address)
    .bind(&dtype)
    .bind(&acc)
    .bind(&unit)
    .bind(&scaling)
    .bind(&offset)
    .bind(&min)
    .bind(&max)
    .bind(&deadband)
    .bind(&scan_rate)
    .bind(&enabled)
    .execute(&mut *tx)
    .await?;
    Ok(TagKeys { device: dev, name })
}

/// The (device id, tag name) of every configured tag.
struct TagKeys {
    device: Vec<Uuid>,
    name: Vec<String>,
}

/// Tags of this gateway's devices that are not in the files any more
/// (including every tag of a removed device).
async fn disable_missing_tags(tx: &mut PgConnection, gw: &str, keys: &TagKeys) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE tags t SET enabled = false FROM devices d \
         WHERE t.device_id = d.id AND d.gateway_id = $1 AND t.enabled \
           AND NOT EXISTS (SELECT 1 FROM UNNEST($2::uuid[], $3::text[]) AS k(device_id, name) \
                           WHERE k.device_id = t.device_id AND k.name = t.name)",
    )
    .bind(gw)
    .bind(&keys.device)
    .bind(&keys.name)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

async fn upsert_rules(tx: &mut PgConnection, gw: &str, config: &Config) -> Result<usize, sqlx::Error> {
    for r in &config.gateway.alert_rules {
        // Only the thresholds the operator uses are stored, and a rule
        // without an expression is stored with the one it means.
        let subject = r.tag.as_deref().unwrap_or(&r.device);
        let op = r.effective_op();
        let (value, low, high) = if op.is_range() {
            (None, r.threshold_low, r.threshold_high)
        } else {
            (r.effective_threshold(), None, None)
        };
        let expression = r
            .condition_expression
            .clone()
            .unwrap_or_else(|| match (value, low, high) {
                (_, Some(lo), Some(hi)) => format!("{subject} {} {lo} AND {hi}", op.as_str()),
                (Some(v), _, _) => format!("{subject} {} {v}", op.as_str()),
                _ => format!("{subject} {}", op.as_str()),
            });
        sqlx::query(
            &format!(
            "INSERT INTO alert_rules (gateway_id, name, description, device_id, tag_id, condition_expression, op, \
               threshold_value, threshold_high, threshold_low, level, eval_interval, eval_duration, cooldown_duration, \
               enabled, created_by) \
             SELECT $1, $2, $3, d.id, t.id, $6, $7::compare_op, $8, $9, $10, $11::alert_level, \
               make_interval(secs => $12), make_interval(secs => $13), make_interval(secs => $14), $15, $16 \
             FROM (SELECT 1) AS one \
             LEFT JOIN devices d ON d.gateway_id = $1 AND d.name = $4 \
             LEFT JOIN tags t ON t.device_id = d.id AND t.name = $5{}",
            on_conflict_update("alert_rules", "gateway_id, name", &["description", "device_id", "tag_id", "condition_expression", "op", "threshold_value", "threshold_high", "threshold_low", "level", "eval_interval", "eval_duration", "cooldown_duration", "enabled"])
        ),
        )
        .bind(gw)
        .bind(&r.name)
        .bind(&r.description)
        .bind(&r.device)
        .bind(&r.tag)
        .bind(&expression)
        .bind(op.as_str())
        .bind(value)
        .bind(high)
        .bind(low)
        .bind(r.level.as_str())
        .bind(r.eval_interval.as_secs_f64())
        .bind(r.eval_duration.map(|d| d.as_secs_f64()))
        .bind(r.cooldown_duration.as_secs_f64())
        .bind(r.enabled)
        .bind(format!("gateway:{gw}"))
        .execute(&mut *tx)
        .await?;
    }
    Ok(config.gateway.alert_rules.len())
}

/// `driver_registry`: one row per compiled-in driver; RUNNING when an
/// enabled device uses it, LOADED otherwise.
async fn register_drivers(tx: &mut PgConnection, gw: &str, config: &Config) -> Result<(), sqlx::Error> {
    for (protocol, name, description, capabilities) in DRIVERS {
        let running = config
            .devices
            .iter()
            .any(|d| d.enabled && d.protocol == *protocol);
        sqlx::query(
            "INSERT INTO driver_registry (gateway_id, protocol, name, version, description, api_version, metadata, \
               capabilities, status) \
             VALUES ($1, $2::protocol_kind, $3, $4, $5, 1, $6, $7, $8::driver_status) \
             ON CONFLICT (gateway_id, protocol) DO UPDATE SET name = EXCLUDED.name, version = EXCLUDED.version, \
               description = EXCLUDED.description, metadata = EXCLUDED.metadata, \
               capabilities = EXCLUDED.capabilities, status = EXCLUDED.status, error_message = NULL, \
               loaded_at = CASE WHEN driver_registry.version = EXCLUDED.version THEN driver_registry.loaded_at ELSE NOW() END \
             WHERE (driver_registry.name, driver_registry.version, driver_registry.description, driver_registry.metadata, \
                    driver_registry.capabilities, driver_registry.status, driver_registry.error_message) \
               IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.version, EXCLUDED.description, EXCLUDED.metadata, \
                    EXCLUDED.capabilities, EXCLUDED.status, NULL)",
        )
        .bind(gw)
        .bind(protocol_kind(*protocol))
        .bind(*name)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(*description)
        .bind(json!({"builtin": true, "protocol": protocol.as_str()}))
        .bind(json!(capabilities))
        .bind(if running { "RUNNING" } else { "LOADED" })
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
