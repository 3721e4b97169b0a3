//! What a driver needs from the gateway: a publisher and a place to report.

use std::future::Future;
use std::time::Duration;

use proto::DataFrame;

/// Why a poll failed (the `kind` label of `gateway_device_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The device did not answer within `timeout`.
    Timeout,
    /// No connection (refused, reset, serial port gone).
    Connection,
    /// The reply was malformed (wrong length, bad CRC, undecodable payload).
    Protocol,
    /// The device answered with an error (e.g. a Modbus exception).
    Device,
    /// The bus refused the frame (disk full, closed).
    Bus,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Device => "device",
            ErrorKind::Bus => "bus",
        }
    }
}

/// One finished poll cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct PollReport {
    pub duration: Duration,
    /// Samples in the published frame (after deadband).
    pub samples: usize,
    /// `None` when every read succeeded.
    pub error: Option<ErrorKind>,
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
    /// Called after every poll cycle.
    fn poll_finished(&self, report: &PollReport);
    /// The device became reachable (`true`) or unreachable (`false`).
    fn connection_changed(&self, up: bool);
}
