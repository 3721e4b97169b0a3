//! `[sinks.NAME] type = "postgres"`: the relational store (devices, tags,
//! driver configs, alert rules from the configuration; device status,
//! alert history and the audit log from the bus).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user:${PG_PASSWORD}@host:5432/gateway_rust` (libpq URL
    /// syntax; query parameters such as `sslmode` are honoured).
    pub url: String,
    /// Overrides the URL's `sslmode` (`disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`).
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// CA certificate (PEM) for `verify-ca` / `verify-full`.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Apply pending migrations when the store starts (otherwise it waits,
    /// not ready, until `gateway db migrate` was run).
    #[serde(default = "yes")]
    pub migrate: bool,
    /// Upsert devices, tags, driver configs and alert rules from the
    /// configuration on start and on every reload.
    #[serde(default = "yes")]
    pub sync_config: bool,
    /// Frames per transaction.
    #[serde(default = "d_batch")]
    pub batch_frames: usize,
    /// `devices.last_seen` moves at most this often per device (from data
    /// frames with a good sample); status changes are written at once.
    #[serde(default = "d_last_seen", deserialize_with = "units::duration")]
    pub last_seen_interval: Duration,
    /// Deadline of a connection attempt.
    #[serde(default = "d_connect", deserialize_with = "units::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one transaction (a batch, or the configuration sync).
    #[serde(default = "d_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// Longest wait between retries while the database is unreachable.
    #[serde(default = "d_max_retry", deserialize_with = "units::duration")]
    pub max_retry_interval: Duration,
}

fn yes() -> bool {
    true
}
fn d_batch() -> usize {
    1000
}
fn d_last_seen() -> Duration {
    Duration::from_secs(30)
}
fn d_connect() -> Duration {
    Duration::from_secs(5)
}
fn d_timeout() -> Duration {
    // Below the default shutdown_timeout (10 s), so a clean stop can still
    // commit the batch in hand.
    Duration::from_secs(8)
}
fn d_max_retry() -> Duration {
    Duration::from_secs(30)
}
