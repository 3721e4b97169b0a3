//! Alert instances and the `EventFrame`s that record them (shape documented
//! in `frame.proto`): ids are name-based UUIDs (v5), so the same alert gets
//! the same id however often the frames that caused it are replayed.

use std::collections::HashMap;

use proto::{EventFrame, EventKind};
use serde::{Deserialize, Serialize};

/// Namespace of the gateway's alert ids (a fixed, random UUID).
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1f_3a7e_9b2d_4e61_8f0a_7d3c_2b19_e845);

/// A name-based id: the same `name` always gives the same id.
pub fn id(name: &str) -> String {
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// What made an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The rule's condition held for `eval_duration`.
    Threshold,
    /// The rule's tag(s) had no good sample for `stale_after`.
    Stale,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Threshold => "threshold",
            AlertKind::Stale => "stale",
        }
    }
}

/// One open alert (an `alert_history` row in status ACTIVE/ACKNOWLEDGED).
/// Self-contained, so it can be resolved after its rule was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub kind: AlertKind,
    pub rule: String,
    pub device: String,
    #[serde(default)]
    pub tag: Option<String>,
    pub level: config::AlertLevel,
    pub fired_ns: u64,
    /// NaN when no value was ever seen (a stale alert); stored as `null`.
    #[serde(with = "nan_as_null")]
    pub value: f64,
    pub message: String,
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub acked_ns: Option<u64>,
}

/// JSON has no NaN: a non-finite value is written as `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The event's value: none for a non-finite one.
fn value(v: f64) -> Option<proto::Value> {
    v.is_finite().then(|| proto::Value::float(v))
}

pub fn proto_level(l: config::AlertLevel) -> proto::AlertLevel {
    match l {
        config::AlertLevel::Info => proto::AlertLevel::Info,
        config::AlertLevel::Warning => proto::AlertLevel::Warning,
        config::AlertLevel::Critical => proto::AlertLevel::Critical,
        config::AlertLevel::Fatal => proto::AlertLevel::Fatal,
    }
}

fn base(a: &Alert, kind: EventKind, event_id: String, at_ns: u64, message: String) -> EventFrame {
    let mut attributes = HashMap::new();
    attributes.insert("alert_kind".to_string(), a.kind.as_str().to_string());
    EventFrame {
        event_id,
        kind: kind as i32,
        device_id: a.device.clone(),
        tag: a.tag.clone().unwrap_or_default(),
        rule_id: a.rule.clone(),
        level: proto_level(a.level) as i32,
        message,
        value: value(a.value),
        event_ts_ns: at_ns,
        attributes,
        ..EventFrame::default()
    }
}

/// `ALERT_FIRED`: `event_id` is the alert's id.
pub fn fired(a: &Alert, extra: Vec<(String, String)>) -> EventFrame {
    let mut e = base(
        a,
        EventKind::AlertFired,
        a.id.clone(),
        a.fired_ns,
        a.message.clone(),
    );
    e.attributes.extend(extra);
    e
}

/// `ALERT_RESOLVED` with `reason` (condition_cleared, data_received,
/// expired, rule_removed).
pub fn resolved(a: &Alert, at_ns: u64, reason: &str, value: f64) -> EventFrame {
    let mut e = base(
        a,
        EventKind::AlertResolved,
        id(&format!("{}/resolved", a.id)),
        at_ns,
        format!("resolved ({reason}): {}", a.message),
    );
    e.value = self::value(value);
    e.attributes.insert("alert_id".into(), a.id.clone());
    e.attributes.insert("reason".into(), reason.into());
    e.attributes.insert(
        "duration_ms".into(),
        (at_ns.saturating_sub(a.fired_ns) / 1_000_000).to_string(),
    );
    e
}

/// `ALERT_ACKNOWLEDGED` by `by`.
pub fn acknowledged(a: &Alert, at_ns: u64, by: &str) -> EventFrame {
    let mut e = base(
        a,
        EventKind::AlertAcknowledged,
        id(&format!("{}/acknowledged", a.id)),
        at_ns,
        format!("acknowledged by {by}: {}", a.message),
    );
    e.attributes.insert("alert_id".into(), a.id.clone());
    e.attributes.insert("by".into(), by.into());
    e
}

/// `ALERT_SUPPRESSED`: the alert is closed because its rule was suppressed by `by`.
pub fn suppressed(a: &Alert, at_ns: u64, by: &str) -> EventFrame {
    let mut e = base(
        a,
        EventKind::AlertSuppressed,
        id(&format!("{}/suppressed", a.id)),
        at_ns,
        format!("suppressed by {by}: {}", a.message),
    );
    e.attributes.insert("alert_id".into(), a.id.clone());
    e.attributes.insert("by".into(), by.into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(id("gw/rule/7/100"), id("gw/rule/7/100"));
        assert_ne!(id("gw/rule/7/100"), id("gw/rule/8/100"));
        assert_eq!(uuid::Uuid::parse_str(&id("x")).unwrap().get_version_num(), 5);
    }
}
