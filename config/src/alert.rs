//! `[[alert_rules]]` in `gateway.toml`: the seed's `alert_rules` columns.
//! The engine that evaluates them is the alert issue's; this module checks
//! them at load so a broken rule never reaches it.

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

/// The seed's `alert_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
    #[serde(default)]
    pub condition_expression: Option<String>,
    pub op: CompareOp,
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
    #[serde(default = "yes")]
    pub enabled: bool,
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
