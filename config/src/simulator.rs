//! Keys of `protocol = "simulator"` devices and their tags.
//!
//! A simulator tag's `address` names its generator: `sine`, `ramp`,
//! `random_walk`, `counter`, `square` (or `boolean`) and `constant`.

use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// Device keys of the simulator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorDevice {
    /// Seed of the random generators; fixed for reproducible runs.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Probability per poll that an error burst starts (0 = never).
    #[serde(default)]
    pub error_rate: f64,
    /// Polls an error burst lasts; during it every sample is BAD and the
    /// poll counts as failed.
    #[serde(default = "d_burst")]
    pub error_burst: u32,
}

impl Default for SimulatorDevice {
    fn default() -> Self {
        SimulatorDevice {
            seed: None,
            error_rate: 0.0,
            error_burst: d_burst(),
        }
    }
}

fn d_burst() -> u32 {
    3
}

/// Which signal a simulator tag produces (its `address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// `base + amplitude * sin(2πt / period)`.
    Sine,
    /// Rises from `base` by `amplitude` over one `period`, then starts over.
    Ramp,
    /// `base`, then ± up to `step` per poll, kept within `min_value..max_value` when set.
    RandomWalk,
    /// `base`, `base + step`, `base + 2·step`, … (a production counter).
    Counter,
    /// On for `duty` of each `period`, off for the rest (boolean or `base`/`base + amplitude`).
    Square,
    /// Always `value`.
    Constant,
}

impl Generator {
    pub const NAMES: &'static [&'static str] = &[
        "sine",
        "ramp",
        "random_walk",
        "counter",
        "square",
        "boolean",
        "constant",
    ];

    pub fn parse(s: &str) -> Option<Generator> {
        Some(match s.trim() {
            "sine" => Generator::Sine,
            "ramp" => Generator::Ramp,
            "random_walk" => Generator::RandomWalk,
            "counter" => Generator::Counter,
            "square" | "boolean" => Generator::Square,
            "constant" => Generator::Constant,
            _ => return None,
        })
    }
}

/// A constant's value, typed as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConstantValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

/// Tag keys of the simulator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorTag {
    #[serde(default)]
    pub base: f64,
    #[serde(default = "d_amplitude")]
    pub amplitude: f64,
    #[serde(default = "d_period", deserialize_with = "units::duration")]
    pub period: Duration,
    #[serde(default = "d_amplitude")]
    pub step: f64,
    #[serde(default = "d_duty")]
    pub duty: f64,
    #[serde(default)]
    pub value: Option<ConstantValue>,
}

impl Default for SimulatorTag {
    fn default() -> Self {
        SimulatorTag {
            base: 0.0,
            amplitude: d_amplitude(),
            period: d_period(),
            step: d_amplitude(),
            duty: d_duty(),
            value: None,
        }
    }
}

fn d_amplitude() -> f64 {
    1.0
}
fn d_period() -> Duration {
    Duration::from_secs(60)
}
fn d_duty() -> f64 {
    0.5
}
