//! What a driver needs from the gateway: a publisher and a place to report.

use std::future::Future;
use std::time::Duration;

use proto::{DataFrame, EventFrame};

/// Why a poll failed (the `kind` label of `gateway_device_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The device did not answer within `timeout`.
    Timeout,
    /// No connection (refused, reset, serial port gone).
    Connection,
    /// The reply was malformed (wrong length or function, undecodable
    /// payload; a frame with a bad CRC is dropped and ends as a timeout).
    Protocol,
    /// The device reported a fault (the simulator's error bursts).
    Device,
    /// The device answered with a protocol exception (Modbus exception
    /// code in [`PollError::code`]).
    Exception,
    /// The bus refused the frame (disk full, closed).
    Bus,
    /// The device answered with a usable value that does not convert to
    /// the tag's data type (OPC UA `BadTypeMismatch`, `BadOutOfRange`: the
    /// status code in [`PollError::code`]). Like an exception, an answer:
    /// the device stays Online, the tag is BAD.
    Conversion,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Device => "device",
            ErrorKind::Exception => "exception",
            ErrorKind::Bus => "bus",
            ErrorKind::Conversion => "conversion",
        }
    }
}

/// One failed request of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollError {
    pub kind: ErrorKind,
    /// The sample `error_code` of the failure: a Modbus exception code,
    /// or the driver's negative code for timeout/connection/malformed
    /// (`drivers::modbus::{TIMEOUT, CONNECTION, MALFORMED}`); 0 when none.
    pub code: i32,
}

/// One finished poll cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollReport {
    pub duration: Duration,
    /// Samples in the published frame (after deadband).
    pub samples: usize,
    /// Requests sent to the device (0 for drivers without requests).
    pub requests: u32,
    /// Samples withheld by their deadband.
    pub suppressed: u32,
    /// Scheduled polls of this group that were skipped because the
    /// previous one overran its period.
    pub skipped_ticks: u32,
    /// One entry per failed request; empty when every read succeeded.
    pub errors: Vec<PollError>,
}

impl PollReport {
    /// The first failure, if any.
    pub fn error(&self) -> Option<ErrorKind> {
        self.errors.first().map(|e| e.kind)
    }
}

/// What an OPC UA driver reports for its metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpcuaStat {
    /// The session is up (`true`) or not.
    SessionUp(bool),
    /// One session attempt ended (opened, or failed).
    SessionAttempt { ok: bool },
    /// Subscriptions and monitored items that exist on the server now.
    Items {
        subscriptions: usize,
        monitored_items: usize,
    },
    /// Data change notifications received.
    Notifications(u64),
    /// Values received with a Bad status (including refused items).
    BadValues(u64),
    /// Round trip of one Read request (poll mode).
    ReadLatency(Duration),
}

/// The bus refused a frame.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish failed: {message}")]
pub struct HostError {
    pub message: String,
    /// Retrying later may succeed (disk full, bus reopening).
    pub transient: bool,
}

/// Why a driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Publish(#[from] HostError),
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
}

/// The gateway side of a driver: the bus publisher plus status reporting.
pub trait DriverHost: Send + Sync + 'static {
    /// Appends one poll cycle to the bus; resolves when the bus accepted it
    /// with its configured durability.
    fn publish(&self, frame: DataFrame) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Appends an event (device status change) to the bus.
    fn publish_event(&self, event: EventFrame) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Called after every poll cycle.
    fn poll_finished(&self, report: &PollReport);
    /// The device became reachable (`true`) or unreachable (`false`);
    /// drivers publish the matching `DEVICE_STATUS_CHANGED` event through
    /// their pipeline, in order with their data.
    fn connection_changed(&self, up: bool);
    /// Push drivers (MQTT): messages received from the device's broker.
    fn messages_received(&self, _n: u64) {}
    /// Push drivers: messages acknowledged to the broker after their
    /// frame reached the bus.
    fn messages_acked(&self, _n: u64) {}
    /// Push drivers: a message (or one tag's part of it) was malformed and
    /// skipped; `reason` is a short snake_case word.
    fn payload_rejected(&self, _reason: &'static str) {}
    /// The device refuses the gateway's settings (security, identity):
    /// status `Error` rather than `Offline`.
    fn connection_failed(&self, _reason: &str) {
        self.connection_changed(false);
    }
    /// OPC UA drivers: session and subscription figures.
    fn opcua(&self, _stat: OpcuaStat) {}
}
