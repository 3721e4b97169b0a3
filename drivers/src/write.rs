//! Writes to tags: what the gateway asks a driver to do, and the answer.
//!
//! The gateway records each command on the bus (a `CommandFrame`, for the
//! audit trail), hands it to the device's driver as a [`WriteRequest`] and
//! records the [`WriteResult`] as an event. Commands are executed at most
//! once and never replayed after a restart: writing a set-point from an
//! hour ago into a running machine is worse than reporting that it failed.

use std::sync::Arc;

use proto::Value;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Write requests a device may have waiting.
pub const QUEUE_DEPTH: usize = 16;

/// One write to one tag of the receiving driver's device.
#[derive(Debug)]
pub struct WriteRequest {
    pub tag: String,
    /// Engineering value; the driver applies inverse scaling.
    pub value: Value,
    pub reply: oneshot::Sender<WriteResult>,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStatus {
    /// The device confirmed the write.
    Ok,
    /// Refused before reaching the device (unknown or read-only tag, value
    /// out of range, wrong type).
    Rejected,
    /// The device answered with an exception (`code`).
    Exception,
    /// No answer within the device's timeout.
    Timeout,
    /// The device could not be reached.
    Connection,
    /// The answer was malformed.
    Protocol,
    /// The driver does not support writes, or the device is not running.
    Unsupported,
}

impl WriteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteStatus::Ok => "ok",
            WriteStatus::Rejected => "rejected",
            WriteStatus::Exception => "exception",
            WriteStatus::Timeout => "timeout",
            WriteStatus::Connection => "connection",
            WriteStatus::Protocol => "protocol",
            WriteStatus::Unsupported => "unsupported",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    pub status: WriteStatus,
    /// The device's error code (Modbus exception code), else 0.
    pub code: i32,
    pub message: String,
}

impl WriteResult {
    pub fn ok() -> WriteResult {
        WriteResult {
            status: WriteStatus::Ok,
            code: 0,
            message: "written".into(),
        }
    }
    pub fn failed(status: WriteStatus, code: i32, message: impl Into<String>) -> WriteResult {
        WriteResult {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The receiving end of a device's write queue. It outlives driver
/// restarts: the supervisor hands the same queue to each new driver task,
/// which holds the lock while it runs.
pub type WriteQueue = Arc<Mutex<mpsc::Receiver<WriteRequest>>>;

/// A new write queue for one device.
pub fn write_queue() -> (mpsc::Sender<WriteRequest>, WriteQueue) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    (tx, Arc::new(Mutex::new(rx)))
}
