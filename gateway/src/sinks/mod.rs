//! Sinks: consumers of the frame bus, each with its own durable cursor.
//!
//! A sink acknowledges a frame only after its downstream confirmed it
//! (DESIGN.md invariant 4) and makes writes idempotent so a replay after a
//! crash stores each frame once (invariant 5).

pub mod file;
pub mod influx;
pub mod mqtt;
pub mod postgres;
pub mod webhook;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use config::SinkKind;

use frame_bus::FrameBus;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::SinkState;

/// What every sink task gets.
#[derive(Clone)]
pub struct SinkContext {
    pub name: String,
    pub bus: FrameBus,
    pub metrics: Arc<Metrics>,
    pub state: Arc<Mutex<SinkState>>,
    pub shutdown: watch::Receiver<bool>,
    /// The configuration the gateway runs, replaced on every reload.
    pub config: watch::Receiver<Arc<config::Config>>,
}

/// Why a sink task stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("frame bus: {0}")]
    Bus(#[from] frame_bus::BusError),
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the sink of `kind` until shutdown (→ `Ok`) or failure (→ `Err`,
/// restarted by the supervisor). Relative paths resolve against `data_dir`.
pub async fn run(
    ctx: SinkContext,
    kind: SinkKind,
    data_dir: PathBuf,
    index: influx::DeviceIndex,
) -> Result<(), SinkError> {
    match kind {
        SinkKind::File(f) => {
            let path = if f.path.is_absolute() {
                f.path.clone()
            } else {
                data_dir.join(&f.path)
            };
            file::run(ctx, f, path).await
        }
        SinkKind::Influx(i) => influx::run(ctx, *i, index, data_dir).await,
        SinkKind::Postgres(p) => postgres::run(ctx, *p).await,
        SinkKind::Webhook(w) => webhook::run(ctx, *w).await,
        SinkKind::Mqtt(m) => mqtt::run(ctx, *m).await,
    }
}
