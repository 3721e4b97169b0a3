//! `[sinks.NAME] type = "webhook"`: alert notifications as HTTP POSTs of JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::alert::AlertLevel;
use crate::units;

/// Which alert events a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    Fired,
    Resolved,
    Acknowledged,
    Suppressed,
}

impl WebhookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Fired => "fired",
            WebhookEvent::Resolved => "resolved",
            WebhookEvent::Acknowledged => "acknowledged",
            WebhookEvent::Suppressed => "suppressed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// Receiver URL, e.g. `http://127.0.0.1:9000/alerts` (plain HTTP in this build).
    pub url: String,
    /// Only alerts at or above this level (default `INFO`: all).
    #[serde(default = "d_level")]
    pub min_level: AlertLevel,
    /// Which alert events are sent (default: all four).
    #[serde(default = "d_events")]
    pub events: Vec<WebhookEvent>,
    /// Extra request headers, e.g. `Authorization = "Bearer ${HOOK_TOKEN}"`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout.
    #[serde(default = "d_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// Cap on the delay between retries (they start at 250 ms and double).
    #[serde(default = "d_max_retry", deserialize_with = "units::duration")]
    pub max_retry_interval: Duration,
}

fn d_level() -> AlertLevel {
    AlertLevel::Info
}
fn d_events() -> Vec<WebhookEvent> {
    vec![
        WebhookEvent::Fired,
        WebhookEvent::Resolved,
        WebhookEvent::Acknowledged,
        WebhookEvent::Suppressed,
    ]
}
fn d_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_max_retry() -> Duration {
    Duration::from_secs(60)
}
