//! `[[alert_rules]]` and `[alerts]` in `gateway.toml`: the seed's
//! `alert_rules` columns plus the engine's settings. Rules are checked at
//! load (thresholds, durations, device and tag names, the expression), so a
//! broken rule never reaches the engine; the semantics are in
//! `docs/alerts.md`.

use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// The seed's `compare_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareOp {
    Gt,
    Lt,
    Gte,
    Lte,
    Eq,
    Ne,
    Between,
    NotBetween,
}

impl CompareOp {
    /// BETWEEN and NOT_BETWEEN take `threshold_low`/`threshold_high`.
    /// The seed's spelling (`GT`, `NOT_BETWEEN`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => "GT",
            CompareOp::Lt => "LT",
            CompareOp::Gte => "GTE",
            CompareOp::Lte => "LTE",
            CompareOp::Eq => "EQ",
            CompareOp::Ne => "NE",
            CompareOp::Between => "BETWEEN",
            CompareOp::NotBetween => "NOT_BETWEEN",
        }
    }

    pub fn is_range(self) -> bool {
        matches!(self, CompareOp::Between | CompareOp::NotBetween)
    }
}

/// The seed's `alert_level` (ordered: `Info < Warning < Critical < Fatal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AlertLevel {
    Info,
    Warning,
    Critical,
    Fatal,
}

impl AlertLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertLevel::Info => "INFO",
            AlertLevel::Warning => "WARNING",
            AlertLevel::Critical => "CRITICAL",
            AlertLevel::Fatal => "FATAL",
        }
    }
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Device name (a device file's `name`).
    pub device: String,
    /// Tag name within `device`; absent for a device-level rule.
    #[serde(default)]
    pub tag: Option<String>,
    /// An expression over the device's tags (see [`crate::expression`]);
    /// when set it is evaluated instead of the tag's value.
    #[serde(default)]
    pub condition_expression: Option<String>,
    /// Comparison of the value (the tag's, or the expression's) with the
    /// threshold(s). Required for a tag rule; an expression rule without it
    /// fires while the expression is true (`NE 0`).
    #[serde(default)]
    pub op: Option<CompareOp>,
    #[serde(default)]
    pub threshold_value: Option<f64>,
    #[serde(default)]
    pub threshold_low: Option<f64>,
    #[serde(default)]
    pub threshold_high: Option<f64>,
    pub level: AlertLevel,
    #[serde(default = "d_eval_interval", deserialize_with = "units::duration")]
    pub eval_interval: Duration,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub eval_duration: Option<Duration>,
    #[serde(default = "d_cooldown", deserialize_with = "units::duration")]
    pub cooldown_duration: Duration,
    /// Overrides `[alerts] stale_after` for this rule (`"0s"` = never stale).
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub stale_after: Option<Duration>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl AlertRuleConfig {
    /// The comparison in effect: `op`, or `NE 0` for an expression without one.
    pub fn effective_op(&self) -> CompareOp {
        self.op.unwrap_or(CompareOp::Ne)
    }

    /// `threshold_value` in effect (0 for an expression rule without `op`).
    pub fn effective_threshold(&self) -> Option<f64> {
        match (self.op, &self.condition_expression) {
            (None, Some(_)) => Some(0.0),
            _ => self.threshold_value,
        }
    }
}

/// `[alerts]`: settings of the alert engine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A rule whose tag(s) had no good sample for this long raises a "stale
    /// data" alert at the rule's level (default 5 min; `"0s"` = never).
    #[serde(default = "d_stale", deserialize_with = "units::duration")]
    pub stale_after: Duration,
    /// Active alerts older than this are resolved (default 24 h, as the
    /// seed's `auto_resolve_expired_alerts`; `"0s"` = never).
    #[serde(default = "d_expire", deserialize_with = "units::duration")]
    pub auto_resolve_after: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            stale_after: d_stale(),
            auto_resolve_after: d_expire(),
        }
    }
}

fn d_stale() -> Duration {
    Duration::from_secs(300)
}
fn d_expire() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn d_eval_interval() -> Duration {
    Duration::from_secs(60)
}
fn d_cooldown() -> Duration {
    Duration::from_secs(300)
}
fn yes() -> bool {
    true
}
