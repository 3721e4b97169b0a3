//! Tag writes: a request (HTTP now; rules and MQTT northbound later)
//! becomes a `CommandFrame` on the bus, is executed once by the device's
//! driver, and its outcome becomes a `COMMAND_RESULT` `EventFrame`.
//!
//! Guarantees: every command that reached a running device is on the bus
//! before the driver sees it, and its result after; the bus is the audit
//! trail. Commands are never replayed from the WAL after a restart (see
//! `drivers::write`). A caller that stops waiting (the HTTP deadline) does
//! not cancel the write: it gets "pending" with the command id, and the
//! result is still recorded when the driver answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use config::DeviceConfig;
use drivers::write::{WriteRequest, WriteResult, WriteStatus};
use frame_bus::FrameBus;
use proto::{CommandFrame, EventFrame, EventKind, FrameType, Message, Value};
use tokio::sync::{mpsc, oneshot};

use crate::audit::Actor;
use crate::metrics::{DeviceResultLabels, Metrics};

/// A running device's write queue and the configuration it runs with.
type Writer = (mpsc::Sender<WriteRequest>, Arc<DeviceConfig>);

/// The write queue of each running device.
#[derive(Default)]
pub struct Writers {
    map: RwLock<HashMap<String, Writer>>,
}

impl Writers {
    pub fn insert(&self, device: Arc<DeviceConfig>, tx: mpsc::Sender<WriteRequest>) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.insert(device.name.clone(), (tx, device));
    }
    pub fn remove(&self, device: &str) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.remove(device);
    }
    fn get(&self, device: &str) -> Option<Writer> {
        let m = self.map.read().unwrap_or_else(|p| p.into_inner());
        m.get(device).cloned()
    }
}

/// Why a write was not attempted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no running device named {0:?}")]
    UnknownDevice(String),
    #[error("device {device:?} has no tag named {tag:?}")]
    UnknownTag { device: String, tag: String },
    #[error("the frame bus refused the command: {0}")]
    Bus(String),
    #[error("device {0:?} has {1} writes waiting; try again")]
    Busy(String, usize),
}

/// A write that was attempted.
#[derive(Debug)]
pub struct Outcome {
    pub command_id: String,
    /// `None`: still pending when the caller's deadline passed.
    pub result: Option<WriteResult>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Writes `value` to `device`.`tag` on behalf of `actor`.
pub async fn execute(
    bus: &FrameBus,
    writers: &Writers,
    metrics: &Arc<Metrics>,
    device: &str,
    tag: &str,
    value: Value,
    actor: &Actor,
) -> Result<Outcome, CommandError> {
    let (tx, config) = writers
        .get(device)
        .ok_or_else(|| CommandError::UnknownDevice(device.to_string()))?;
    if config.tag(tag).is_none() {
        return Err(CommandError::UnknownTag {
            device: device.to_string(),
            tag: tag.to_string(),
        });
    }
    let permit = match tx.try_reserve() {
        Ok(p) => p,
        Err(mpsc::error::TrySendError::Full(())) => {
            return Err(CommandError::Busy(
                device.to_string(),
                drivers::write::QUEUE_DEPTH,
            ))
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            return Err(CommandError::UnknownDevice(device.to_string()))
        }
    };
    let issued = crate::now_ns();
    let command_id = format!("cmd-{issued}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let command = CommandFrame {
        command_id: command_id.clone(),
        device_id: device.to_string(),
        tag: tag.to_string(),
        value: Some(value.clone()),
        issued_ts_ns: issued,
        origin: actor.origin.clone(),
    };
    bus.publish(FrameType::Command, command.encode_to_vec())
        .await
        .map_err(|e| CommandError::Bus(e.to_string()))?;

    let (reply, answer) = oneshot::channel();
    permit.send(WriteRequest {
        tag: tag.to_string(),
        value: value.clone(),
        reply,
    });
    // The result is recorded whether or not the caller still waits.
    let (done, done_rx) = oneshot::channel();
    let (bus, metrics) = (bus.clone(), metrics.clone());
    let (device, tag, actor, id) = (
        device.to_string(),
        tag.to_string(),
        actor.clone(),
        command_id.clone(),
    );
    tokio::spawn(async move {
        let result = answer.await.unwrap_or_else(|_| {
            WriteResult::failed(WriteStatus::Unsupported, 0, "the driver stopped before answering")
        });
        record(&bus, &metrics, &device, &tag, &actor, &id, value, &result).await;
        let _ = done.send(result);
    });
    let result = tokio::time::timeout(answer_deadline(&config), done_rx)
        .await
        .ok()
        .and_then(Result::ok);
    Ok(Outcome { command_id, result })
}

#[allow(clippy::too_many_arguments)]
async fn record(
    bus: &FrameBus,
    metrics: &Metrics,
    device: &str,
    tag: &str,
    actor: &Actor,
    command_id: &str,
    value: Value,
    result: &WriteResult,
) {
    metrics
        .device_writes
        .get_or_create(&DeviceResultLabels {
            device: device.to_string(),
            result: result.status.as_str().to_string(),
        })
        .inc();
    let mut attributes: std::collections::HashMap<String, String> = [
        ("command_id".to_string(), command_id.to_string()),
        ("error_code".to_string(), result.code.to_string()),
        ("origin".to_string(), actor.origin.clone()),
    ]
    .into_iter()
    .collect();
    actor.annotate(&mut attributes);
    let event = EventFrame {
        event_id: format!("{command_id}:result"),
        kind: EventKind::CommandResult as i32,
        device_id: device.to_string(),
        tag: tag.to_string(),
        message: result.message.clone(),
        value: Some(value),
        status: result.status.as_str().to_string(),
        event_ts_ns: crate::now_ns(),
        attributes,
        ..EventFrame::default()
    };
    if let Err(e) = bus.publish(FrameType::Event, event.encode_to_vec()).await {
        tracing::warn!(command_id, error = %e, "recording a write result on the bus failed");
    }
    if result.status != WriteStatus::Ok {
        tracing::warn!(
            device,
            tag,
            command_id,
            status = result.status.as_str(),
            code = result.code,
            message = result.message,
            "write failed"
        );
    }
}

/// How long a caller waits for a driver: a poll in flight, then the write
/// with its busy retries, each bounded by the device's timeout.
fn answer_deadline(d: &DeviceConfig) -> Duration {
    let tries = match &d.driver {
        config::DriverOptions::Modbus(m) => m.busy_retries.saturating_add(1),
        _ => 1,
    };
    d.timeout
        .saturating_mul(tries.saturating_add(1))
        .saturating_add(Duration::from_secs(5))
        .saturating_add(d.scan_interval)
}
