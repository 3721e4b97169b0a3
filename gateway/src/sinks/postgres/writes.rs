//! Frames → rows. A batch of frames is first *planned* (decoded and
//! turned into [`Op`]s, without side effects, so a failed transaction can
//! be planned again), then *applied* in one transaction: in bulk
//! (`super::bulk`, one statement per run of one kind) or, when the
//! database rejects that, op by op with [`apply`].
//!
//! | frame | row |
//! |---|---|
//! | `DATA` with a GOOD sample | `devices.last_seen`, at most once per `last_seen_interval` per device |
//! | `DEVICE_STATUS_CHANGED` | `update_device_status(id, status, last_seen)` |
//! | `ALERT_FIRED` | insert into `alert_history` (`event_id` unique: a replay inserts nothing) |
//! | `ALERT_ACKNOWLEDGED` / `_RESOLVED` / `_SUPPRESSED` | update of the row whose `event_id` is the `alert_id` attribute |
//! | `COMMAND_RESULT` | `audit_logs` row `tag.write` (`event_id` unique) |
//! | `AUDIT` | `audit_logs` row of its `action` (`event_id` unique) |
//!
//! Every statement is idempotent, so at-least-once delivery from the bus
//! stores each event once. Timestamps are the event's own (`event_ts_ns`),
//! never the time of the write, so a replay after an outage writes the
//! same values.

use std::collections::HashMap;

use proto::{value::Kind, DataFrame, EventFrame, EventKind, FrameEnvelope, FrameType, Message, Quality};
use serde_json::{json, Map, Value as Json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::sync::Ids;

/// One statement to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    LastSeen {
        device: Uuid,
        at_us: i64,
    },
    Status {
        device: Uuid,
        status: &'static str,
        at_us: i64,
    },
    AlertFired {
        event_id: String,
        rule: Uuid,
        device: Option<Uuid>,
        tag: Option<Uuid>,
        at_us: i64,
        value: Option<f64>,
        threshold: Option<f64>,
        level: &'static str,
        message: String,
        details: Json,
    },
    AlertChanged {
        alert_id: String,
        change: AlertChange,
        at_us: i64,
        by: Option<String>,
    },
    Audit(Box<AuditRow>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertChange {
    Acknowledged,
    Resolved,
    Suppressed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub event_id: String,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub resource_name: Option<String>,
    pub details: Json,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub actor: Option<String>,
    pub success: bool,
    pub error_message: Option<String>,
    pub at_us: i64,
}

/// A planned op and the frame it came from (for logs).
#[derive(Debug, Clone)]
pub struct Planned {
    pub seq: u64,
    pub op: Op,
}

/// A frame that produced nothing it should have.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub seq: u64,
    pub reason: String,
}

/// The outcome of planning one batch.
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Planned>,
    pub skipped: Vec<Skipped>,
    /// `last_seen` positions to remember once the batch committed.
    last_seen: HashMap<Uuid, i64>,
}

/// Turns frames into ops; remembers when each device's `last_seen` was
/// last written.
#[derive(Debug)]
pub struct Planner {
    interval_us: i64,
    last_seen: HashMap<Uuid, i64>,
}

fn us(ns: u64) -> i64 {
    i64::try_from(ns / 1000).unwrap_or(i64::MAX)
}

/// Microseconds after which PostgreSQL's `timestamptz` ends (year 294276;
/// a little earlier here): later times are refused, not written.
const MAX_US: i64 = 9_000_000_000_000_000;

/// A string for a `VARCHAR(max)` column: NULs (which PostgreSQL text
/// cannot hold) removed, cut to `max` characters.
fn column(s: &str, max: usize) -> String {
    s.chars().filter(|c| *c != '\0').take(max).collect()
}

/// The seed's `device_status` value of a driver's status string.
fn device_status(s: &str) -> &'static str {
    match s {
        "Online" => "Online",
        "Offline" => "Offline",
        "Error" => "Error",
        "Maintenance" => "Maintenance",
        _ => "Unknown",
    }
}

fn level(l: i32) -> &'static str {
    match proto::AlertLevel::try_from(l) {
        Ok(proto::AlertLevel::Warning) => "WARNING",
        Ok(proto::AlertLevel::Critical) => "CRITICAL",
        Ok(proto::AlertLevel::Fatal) => "FATAL",
        _ => "INFO",
    }
}

fn number(v: &Option<proto::Value>) -> Option<f64> {
    match v.as_ref()?.kind.as_ref()? {
        Kind::FloatValue(f) => Some(*f).filter(|f| f.is_finite()),
        Kind::IntValue(i) => Some(*i as f64),
        Kind::UintValue(u) => Some(*u as f64),
        Kind::BoolValue(b) => Some(f64::from(u8::from(*b))),
        Kind::StringValue(_) | Kind::BytesValue(_) => None,
    }
}

fn value_json(v: &Option<proto::Value>) -> Json {
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(Kind::FloatValue(f)) => json!(f),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::UintValue(u)) => json!(u),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BytesValue(b)) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        None => Json::Null,
    }
}

fn attributes_json(e: &EventFrame, except: &[&str]) -> Map<String, Json> {
    let mut keys: Vec<&String> = e
        .attributes
        .keys()
        .filter(|k| !except.contains(&k.as_str()))
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|k| (k.clone(), json!(e.attributes[k])))
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Planner {
    pub fn new(last_seen_interval: std::time::Duration) -> Planner {
        Planner {
            interval_us: i64::try_from(last_seen_interval.as_micros()).unwrap_or(i64::MAX),
            last_seen: HashMap::new(),
        }
    }

    /// Remembers the `last_seen` writes of a committed plan.
    pub fn committed(&mut self, plan: &Plan) {
        self.last_seen
            .extend(plan.last_seen.iter().map(|(k, v)| (*k, *v)));
    }

    /// Plans `frames` (no side effects).
    pub fn plan(&self, frames: &[FrameEnvelope], ids: &Ids) -> Plan {
        let mut plan = Plan::default();
        for f in frames {
            let seq = f.sequence_id;
            match FrameType::try_from(f.frame_type) {
                Ok(FrameType::Data) => match DataFrame::decode(f.data.as_ref()) {
                    Ok(d) => self.plan_data(seq, &d, ids, &mut plan),
                    Err(e) => plan.skipped.push(Skipped {
                        seq,
                        reason: format!("undecodable DataFrame: {e}"),
                    }),
                },
                Ok(FrameType::Event) => match EventFrame::decode(f.data.as_ref()) {
                    Ok(e) => plan_event(seq, e, ids, &mut plan),
                    Err(e) => plan.skipped.push(Skipped {
                        seq,
                        reason: format!("undecodable EventFrame: {e}"),
                    }),
                },
                // Commands are recorded by their COMMAND_RESULT event.
                _ => {}
            }
        }
        plan
    }

    fn plan_data(&self, seq: u64, d: &DataFrame, ids: &Ids, plan: &mut Plan) {
        let Some(at) = d
            .samples
            .iter()
            .filter(|s| s.quality == Quality::Good as i32)
            .map(|s| us(s.source_ts_ns))
            .filter(|at| *at < MAX_US)
            .max()
        else {
            return;
        };
        // Frames of a device the configuration no longer has are ignored
        // here: last_seen is a convenience, not a record.
        let Some(device) = ids.device(&d.device_id) else {
            return;
        };
        let previous = plan
            .last_seen
            .get(&device)
            .or_else(|| self.last_seen.get(&device))
            .copied();
        if previous.is_some_and(|p| at < p.saturating_add(self.interval_us)) {
            return;
        }
        plan.last_seen.insert(device, at);
        plan.ops.push(Planned {
            seq,
            op: Op::LastSeen { device, at_us: at },
        });
    }
}

fn plan_event(seq: u64, e: EventFrame, ids: &Ids, plan: &mut Plan) {
    let at_us = us(e.event_ts_ns);
    let skip = |plan: &mut Plan, reason: String| plan.skipped.push(Skipped { seq, reason });
    let Ok(kind) = EventKind::try_from(e.kind) else {
        return skip(plan, format!("unknown event kind {}", e.kind));
    };
    if at_us >= MAX_US {
        return skip(
            plan,
            format!("event time {} ns is beyond what PostgreSQL stores", e.event_ts_ns),
        );
    }
    let op = match kind {
        EventKind::DeviceStatusChanged => {
            let Some(device) = ids.device(&e.device_id) else {
                return skip(plan, format!("status of unknown device {:?}", e.device_id));
            };
            Op::Status {
                device,
                status: device_status(&e.status),
                at_us,
            }
        }
        EventKind::AlertFired => {
            if e.event_id.is_empty() || e.event_id.len() > 128 {
                return skip(plan, "ALERT_FIRED without a usable event_id".into());
            }
            let Some(rule) = ids.rules.get(&e.rule_id).copied() else {
                return skip(plan, format!("alert of unknown rule {:?}", e.rule_id));
            };
            let threshold = e
                .attributes
                .get("threshold_value")
                .and_then(|t| t.parse::<f64>().ok());
            let mut details = attributes_json(&e, &["threshold_value"]);
            details.insert("value".into(), value_json(&e.value));
            Op::AlertFired {
                event_id: e.event_id.clone(),
                rule,
                device: ids.device(&e.device_id),
                tag: ids.tag(&e.device_id, &e.tag),
                at_us,
                value: number(&e.value),
                threshold,
                level: level(e.level),
                message: if e.message.is_empty() {
                    format!("rule {} fired", e.rule_id)
                } else {
                    e.message.clone()
                },
                details: Json::Object(details),
            }
        }
        EventKind::AlertAcknowledged | EventKind::AlertResolved | EventKind::AlertSuppressed => {
            let Some(alert_id) = e.attributes.get("alert_id").filter(|a| !a.is_empty()) else {
                return skip(
                    plan,
                    format!("{} without an alert_id attribute", kind.as_str_name()),
                );
            };
            Op::AlertChanged {
                alert_id: alert_id.clone(),
                change: match kind {
                    EventKind::AlertAcknowledged => AlertChange::Acknowledged,
                    EventKind::AlertResolved => AlertChange::Resolved,
                    _ => AlertChange::Suppressed,
                },
                at_us,
                by: e.attributes.get("by").map(|b| column(b, 255)),
            }
        }
        EventKind::CommandResult => {
            let mut details = attributes_json(&e, &["client_ip", "user_agent", "actor"]);
            details.insert("value".into(), value_json(&e.value));
            details.insert("status".into(), json!(e.status));
            let ok = e.status == "ok";
            Op::Audit(Box::new(AuditRow {
                event_id: e.event_id.clone(),
                action: "tag.write".into(),
                resource_type: Some("tag".into()),
                resource_id: ids.tag(&e.device_id, &e.tag),
                resource_name: Some(format!("{}/{}", e.device_id, e.tag)),
                details: Json::Object(details),
                client_ip: e.attributes.get("client_ip").cloned(),
                user_agent: e.attributes.get("user_agent").cloned(),
                actor: e
                    .attributes
                    .get("actor")
                    .or_else(|| e.attributes.get("origin"))
                    .map(|a| column(a, 255)),
                success: ok,
                error_message: if ok {
                    None
                } else {
                    Some(format!("{}: {}", e.status, e.message))
                },
                at_us,
            }))
        }
        EventKind::Audit => {
            let Some(action) = e.attributes.get("action").filter(|a| !a.trim().is_empty()) else {
                return skip(plan, "AUDIT event without an action".into());
            };
            let resource_type = e.attributes.get("resource_type").cloned();
            let resource_name = e.attributes.get("resource").cloned();
            let resource_id = match (resource_type.as_deref(), resource_name.as_deref()) {
                (Some("device"), Some(d)) => ids.device(d),
                _ => None,
            };
            let ok = e.status == "ok";
            Op::Audit(Box::new(AuditRow {
                event_id: e.event_id.clone(),
                action: action.clone(),
                resource_type,
                resource_id,
                resource_name,
                details: Json::Object(attributes_json(
                    &e,
                    &[
                        "action",
                        "resource_type",
                        "resource",
                        "client_ip",
                        "user_agent",
                        "actor",
                    ],
                )),
                client_ip: e.attributes.get("client_ip").cloned(),
                user_agent: e.attributes.get("user_agent").cloned(),
                actor: e.attributes.get("actor").map(|a| column(a, 255)),
                success: ok,
                error_message: if ok { None } else { non_empty(&e.message) },
                at_us,
            }))
        }
        EventKind::Unspecified => return skip(plan, "event kind 0".into()),
    };
    if let Op::Audit(a) = &op {
        if a.event_id.is_empty() || a.event_id.len() > 128 {
            return skip(plan, "audit event without a usable event_id".into());
        }
    }
    plan.ops.push(Planned { seq, op });
}

/// `$n` microseconds since the epoch as a `timestamptz`.
macro_rules! ts {
    ($n:literal) => {
        concat!(
            "('epoch'::timestamptz + $",
            $n,
            "::int8 * INTERVAL '1 microsecond')"
        )
    };
}

/// Runs one op for gateway `gateway_id`. Returns the rows it changed.
pub async fn apply(conn: &mut PgConnection, gateway_id: &str, op: &Op) -> Result<u64, sqlx::Error> {
    let done = match op {
        Op::LastSeen { device, at_us } => {
            sqlx::query(concat!(
                "UPDATE devices SET last_seen = ",
                ts!(2),
                " WHERE id = $1 AND (last_seen IS NULL OR last_seen < ",
                ts!(2),
                ")"
            ))
            .bind(device)
            .bind(at_us)
            .execute(&mut *conn)
            .await?
        }
        Op::Status { device, status, at_us } => {
            // The seed's function; last_seen moves only when the device
            // answered (an Offline event keeps the last time it was seen).
            sqlx::query(concat!(
                "SELECT update_device_status(d.id, $2::device_status, ",
                "CASE WHEN $2::device_status = 'Online' THEN GREATEST(d.last_seen, ",
                ts!(3),
                ") ELSE d.last_seen END) FROM devices d WHERE d.id = $1"
            ))
            .bind(device)
            .bind(*status)
            .bind(at_us)
            .execute(&mut *conn)
            .await?
        }
        Op::AlertFired {
            event_id,
            rule,
            device,
            tag,
            at_us,
            value,
            threshold,
            level,
            message,
            details,
        } => {
            sqlx::query(concat!(
                "INSERT INTO alert_history (event_id, rule_id, device_id, tag_id, fired_at, triggered_value, ",
                "threshold_value, level, status, message, details) ",
                "SELECT $1, $2, (SELECT id FROM devices WHERE id = $3), (SELECT id FROM tags WHERE id = $4), ",
                ts!(5),
                ", $6, $7, $8::alert_level, 'ACTIVE', $9, $10 ",
                "ON CONFLICT (event_id) DO NOTHING"
            ))
            .bind(event_id)
            .bind(rule)
            .bind(device)
            .bind(tag)
            .bind(at_us)
            .bind(value)
            .bind(threshold)
            .bind(*level)
            .bind(message)
            .bind(details)
            .execute(&mut *conn)
            .await?
        }
        Op::AlertChanged {
            alert_id,
            change: AlertChange::Resolved,
            at_us,
            ..
        } => {
            sqlx::query(concat!(
                "UPDATE alert_history SET status = 'RESOLVED', resolved_at = GREATEST(",
                ts!(2),
                ", fired_at), duration = GREATEST(",
                ts!(2),
                ", fired_at) - fired_at WHERE event_id = $1 AND status <> 'RESOLVED'"
            ))
            .bind(alert_id)
            .bind(at_us)
            .execute(&mut *conn)
            .await?
        }
        Op::AlertChanged {
            alert_id,
            change: AlertChange::Acknowledged,
            at_us,
            by,
        } => {
            sqlx::query(concat!(
                "UPDATE alert_history SET acknowledged_at = GREATEST(",
                ts!(2),
                ", fired_at), acknowledged_by = $3, ",
                "status = CASE WHEN status = 'ACTIVE' THEN 'ACKNOWLEDGED'::alert_status ELSE status END ",
                "WHERE event_id = $1 AND acknowledged_at IS NULL"
            ))
            .bind(alert_id)
            .bind(at_us)
            .bind(by)
            .execute(&mut *conn)
            .await?
        }
        Op::AlertChanged {
            alert_id,
            change: AlertChange::Suppressed,
            ..
        } => {
            sqlx::query(
                "UPDATE alert_history SET status = 'SUPPRESSED' \
                 WHERE event_id = $1 AND status IN ('ACTIVE', 'ACKNOWLEDGED')",
            )
            .bind(alert_id)
            .execute(&mut *conn)
            .await?
        }
        Op::Audit(a) => {
            sqlx::query(concat!(
                "INSERT INTO audit_logs (event_id, gateway_id, action, resource_type, resource_id, resource_name, ",
                "details, ip_address, user_agent, actor, success, error_message, created_at) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet, $9, $10, $11, $12, ",
                ts!(13),
                ") ON CONFLICT (event_id) DO NOTHING"
            ))
            .bind(&a.event_id)
            .bind(gateway_id)
            .bind(&a.action)
            .bind(&a.resource_type)
            .bind(a.resource_id)
            .bind(&a.resource_name)
            .bind(&a.details)
            .bind(a.client_ip.as_deref().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()))
            .bind(&a.user_agent)
            .bind(&a.actor)
            .bind(a.success)
            .bind(&a.error_message)
            .bind(a.at_us)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(done.rows_affected())
}
