//! Live state for `/api/v1/status` and `/readyz`: per device its status,
//! last poll and the last value and quality of every tag; per sink its
//! position. Updated by the publishers and sinks, read by the HTTP API.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::{value::Kind, Quality, Value};
use serde_json::json;

/// The seed's `device_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Online,
    Offline,
    Error,
    Unknown,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Online => "Online",
            DeviceStatus::Offline => "Offline",
            DeviceStatus::Error => "Error",
            DeviceStatus::Unknown => "Unknown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TagValue {
    pub value: Option<Value>,
    pub quality: i32,
    pub ts_ns: u64,
}

#[derive(Debug)]
pub struct DeviceState {
    pub protocol: &'static str,
    pub enabled: bool,
    pub status: DeviceStatus,
    pub last_poll_ns: u64,
    pub last_error: Option<String>,
    pub polls: u64,
    pub errors: u64,
    /// Supervisor restarts after a failure.
    pub restarts: u64,
    /// Bumped every time a reload changed this device's config and restarted it.
    pub config_version: u64,
    pub started_at_ns: u64,
    pub tags: HashMap<String, TagValue>,
    /// Configured tag names, in file order (for a stable listing).
    pub tag_order: Vec<String>,
}

#[derive(Debug, Default)]
pub struct SinkState {
    pub kind: &'static str,
    pub written: u64,
    pub last_error: Option<String>,
    /// Set while the sink cannot work without an operator (e.g. its
    /// server refuses the credentials); makes `/readyz` answer 503.
    pub unhealthy: Option<String>,
}

/// Shared state of the running gateway.
#[derive(Default)]
pub struct Status {
    devices: Mutex<BTreeMap<String, Arc<Mutex<DeviceState>>>>,
    sinks: Mutex<BTreeMap<String, Arc<Mutex<SinkState>>>>,
    pub ready: AtomicBool,
    pub started_ns: AtomicU64,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Status {
    /// Registers (or re-registers after a config change) a device.
    pub fn device(&self, d: &config::DeviceConfig, config_version: u64) -> Arc<Mutex<DeviceState>> {
        let state = Arc::new(Mutex::new(DeviceState {
            protocol: d.protocol.as_str(),
            enabled: d.enabled,
            status: if d.enabled {
                DeviceStatus::Unknown
            } else {
                DeviceStatus::Offline
            },
            last_poll_ns: 0,
            last_error: None,
            polls: 0,
            errors: 0,
            restarts: 0,
            config_version,
            started_at_ns: crate::now_ns(),
            tags: HashMap::new(),
            tag_order: d
                .tags
                .iter()
                .filter(|t| t.enabled)
                .map(|t| t.name.clone())
                .collect(),
        }));
        lock(&self.devices).insert(d.name.clone(), state.clone());
        state
    }

    /// The first unhealthy sink and why, if any.
    pub fn unhealthy_sink(&self) -> Option<(String, String)> {
        lock(&self.sinks)
            .iter()
            .find_map(|(name, st)| Some((name.clone(), lock(st).unhealthy.clone()?)))
    }

    pub fn remove_device(&self, name: &str) {
        lock(&self.devices).remove(name);
    }

    pub fn sink(&self, name: &str, kind: &'static str) -> Arc<Mutex<SinkState>> {
        lock(&self.sinks)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(SinkState {
                    kind,
                    ..SinkState::default()
                }))
            })
            .clone()
    }

    /// The `/api/v1/status` document.
    pub fn to_json(&self, gateway_id: &str, bus: &frame_bus::FrameBus) -> serde_json::Value {
        let stats = bus.stats();
        let devices: Vec<serde_json::Value> = lock(&self.devices)
            .iter()
            .map(|(name, st)| {
                let st = lock(st);
                let tags: Vec<serde_json::Value> = st
                    .tag_order
                    .iter()
                    .map(|t| match st.tags.get(t) {
                        Some(v) => json!({
                            "name": t,
                            "value": v.value.as_ref().map_or(serde_json::Value::Null, value_json),
                            "quality": quality_str(v.quality),
                            "timestamp": rfc3339(v.ts_ns),
                        }),
                        None => json!({ "name": t, "value": null, "quality": null, "timestamp": null }),
                    })
                    .collect();
                json!({
                    "name": name,
                    "protocol": st.protocol,
                    "enabled": st.enabled,
                    "status": st.status.as_str(),
                    "last_poll": (st.last_poll_ns > 0).then(|| rfc3339(st.last_poll_ns)),
                    "last_error": st.last_error,
                    "polls": st.polls,
                    "errors": st.errors,
                    "restarts": st.restarts,
                    "config_version": st.config_version,
                    "started_at": rfc3339(st.started_at_ns),
                    "tags": tags,
                })
            })
            .collect();
        let sinks: Vec<serde_json::Value> = lock(&self.sinks)
            .iter()
            .map(|(name, st)| {
                let st = lock(st);
                let c = stats.consumers.iter().find(|c| &c.name == name);
                json!({
                    "name": name,
                    "type": st.kind,
                    "cursor": c.map(|c| c.cursor),
                    "lag": c.map(|c| c.lag),
                    "frames_written": st.written,
                    "last_error": st.last_error,
                    "healthy": st.unhealthy.is_none(),
                })
            })
            .collect();
        let started = self.started_ns.load(Ordering::Relaxed);
        json!({
            "gateway_id": gateway_id,
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.ready.load(Ordering::Relaxed),
            "uptime_seconds": crate::now_ns().saturating_sub(started) / 1_000_000_000,
            "wal": {
                "path": bus.path().display().to_string(),
                "head_seq": stats.head_seq,
                "oldest_seq": stats.oldest_seq,
                "stored_frames": stats.stored_frames,
                "size_bytes": stats.approx_bytes,
                "frames_published": stats.frames_published_total,
                "corrupt_frames": stats.corrupt_frames_total,
            },
            "devices": devices,
            "sinks": sinks,
        })
    }
}

pub fn quality_str(q: i32) -> &'static str {
    match Quality::try_from(q) {
        Ok(Quality::Good) => "GOOD",
        Ok(Quality::Bad) => "BAD",
        Ok(Quality::Uncertain) => "UNCERTAIN",
        Err(_) => "UNKNOWN",
    }
}

/// A sample value as JSON (bytes as hex).
pub fn value_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::UintValue(u)) => json!(u),
        Some(Kind::FloatValue(f)) if f.is_finite() => json!(f),
        Some(Kind::FloatValue(f)) => json!(f.to_string()),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BytesValue(b)) => json!(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        None => serde_json::Value::Null,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ns: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    humantime::format_rfc3339_millis(t).to_string()
}
