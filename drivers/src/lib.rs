//! Gateway_Rust device drivers (simulator, Modbus TCP/RTU/RTU-over-TCP,
//! MQTT subscriptions, OPC UA subscriptions and reads): device I/O in, `proto::DataFrame`s
//! and device status events out, tag writes in through a [`write::WriteQueue`].
//!
//! # Contract
//! - A driver runs as one task per device ([`run_device`]) and hands every
//!   poll cycle to its [`DriverHost`] as one `DataFrame` (`device_id` = the
//!   device's `name`, one `Sample` per tag read in that cycle). The host is
//!   the gateway's bus publisher; a driver never talks to a sink or storage.
//! - `publish` returns once the frame is in the bus. Drivers publish through
//!   a [`pipeline::Pipeline`]: up to `pipeline::DEPTH` polls may wait for the
//!   bus, so an fsync stall does not cost polls, and a slower bus than that
//!   slows polling (backpressure) instead of growing memory.
//! - Values follow the tag config ([`sample`]): `value = raw * scaling +
//!   offset` with `raw_value` kept, `min_value`/`max_value` violations give
//!   quality UNCERTAIN (value kept), a failed read gives BAD with an
//!   `error_code`, and `deadband` suppresses samples that moved less.
//! - A malformed device reply is counted ([`PollReport`]) and skipped; no
//!   input from a device can panic a driver. A driver returns `Err` only
//!   when it cannot go on (the supervisor restarts it with backoff).
//! - Status: a driver calls [`DriverHost::connection_changed`] and queues a
//!   `DEVICE_STATUS_CHANGED` event ([`status`]) when its device goes
//!   Online or Offline, in order with its data frames.
//! - Writes arrive on the device's [`write::WriteQueue`]; every request is
//!   answered, by drivers that cannot write with `Unsupported`.
//! - Drivers stop at their next await point once `shutdown` turns true.

mod burst_log;
mod host;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod pipeline;
pub mod sample;
pub mod simulator;
pub mod status;
pub mod write;

pub use host::{DriverError, DriverHost, ErrorKind, HostError, OpcuaStat, PollError, PollReport};

use std::sync::Arc;

use config::{DeviceConfig, DriverOptions};
use tokio::sync::watch;

/// Runs the driver of `device` until `shutdown` turns true (→ `Ok`) or it
/// fails (→ `Err`, to be restarted by the caller).
pub async fn run_device<H: DriverHost>(
    device: Arc<DeviceConfig>,
    host: H,
    shutdown: watch::Receiver<bool>,
    writes: write::WriteQueue,
) -> Result<(), DriverError> {
    match &device.driver {
        DriverOptions::Simulator(_) => simulator::run(device.clone(), host, shutdown, writes).await,
        DriverOptions::Modbus(_) => modbus::run(device.clone(), host, shutdown, writes).await,
        DriverOptions::Mqtt(_) => mqtt::run(device.clone(), host, shutdown, writes).await,
        DriverOptions::Opcua(_) => opcua::run(device.clone(), host, shutdown, writes).await,
    }
}
