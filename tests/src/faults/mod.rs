//! The end-to-end fault suite: the real `gateway` binary in a full
//! topology of real peers, faults injected, and a checker that computes
//! from first principles what storage must hold.
//!
//! * [`topology`] starts the peers — Mosquitto, influxd 1.x, PostgreSQL, a
//!   pymodbus device, an asyncua server, a northbound MQTT subscriber — and
//!   the gateway with four sources (an MQTT stream of numbered messages, a
//!   Modbus TCP device, an OPC UA subscription, an alert rule that fires and
//!   resolves every 20 s) and four sinks (file archive, InfluxDB,
//!   PostgreSQL, MQTT northbound).
//! * [`load`] publishes the numbered stream: message `n` carries value `n`
//!   and timestamp `base + n` ms, so the checker knows the exact set of
//!   points InfluxDB must hold. Only numbers the broker confirmed (PUBACK)
//!   count as published.
//! * [`checker`] compares what the sources published and the bus carried
//!   (the archive) with InfluxDB, PostgreSQL and the subscriber. It is a
//!   pure function of what was collected, so its self-test feeds it one
//!   dropped and one duplicated sample and expects a failing verdict.
//! * [`scenarios`] are the faults. Each returns a [`Report`]; the
//!   `faults` binary runs them all and prints the table of
//!   `docs/reliability.md`, `tests/tests/faults.rs` runs each in its
//!   short form in CI.
//!
//! A scenario that cannot run on a machine (no tmpfs mount without root)
//! reports [`Verdict::NotRun`] with the reason, never a pass.

pub mod checker;
pub mod load;
pub mod proxy;
pub mod scenarios;
pub mod topology;

use std::fmt;
use std::time::Duration;

pub use checker::Counts;

/// How long and how often: [`Opts::short`] for CI, [`Opts::full`] for the
/// documented run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// SIGKILL rounds.
    pub kill_rounds: u32,
    /// Clean (SIGTERM) restarts.
    pub term_rounds: u32,
    /// How long a peer stays down in the outage scenarios.
    pub outage: Duration,
    /// Numbered MQTT messages per second (the stream's load).
    pub rate: u32,
    /// How long the load runs before and after a fault.
    pub steady: Duration,
}

impl Opts {
    /// The CI form: every scenario, fewer rounds, shorter outages.
    pub fn short() -> Opts {
        Opts {
            kill_rounds: 5,
            term_rounds: 2,
            outage: Duration::from_secs(10),
            rate: 500,
            steady: Duration::from_secs(4),
        }
    }

    /// The documented run (`scripts/faults.sh`).
    pub fn full() -> Opts {
        Opts {
            kill_rounds: 50,
            term_rounds: 10,
            outage: Duration::from_secs(120),
            rate: 1000,
            steady: Duration::from_secs(10),
        }
    }
}

/// A scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// The scenario could not run here (the reason); never a pass.
    NotRun(String),
}

/// One row of the results table.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    pub rounds: u32,
    pub counts: Counts,
    /// Highest `gateway_consumer_lag_frames` (sum over consumers) sampled.
    pub max_lag: u64,
    /// Longest time from the end of a fault until the gateway had caught
    /// up again (see [`topology::Topology::wait_caught_up`]).
    pub recovery: Option<Duration>,
    /// Highest resident set size of a gateway process (VmHWM), KiB.
    pub rss_peak_kib: u64,
    /// Scenario-specific figures (`what: value`).
    pub notes: Vec<String>,
    pub verdict: Verdict,
}

impl Report {
    pub fn not_run(scenario: &'static str, why: String) -> Report {
        Report {
            scenario,
            rounds: 0,
            counts: Counts::default(),
            max_lag: 0,
            recovery: None,
            rss_peak_kib: 0,
            notes: Vec::new(),
            verdict: Verdict::NotRun(why),
        }
    }

    /// The markdown table header matching [`Report::row`].
    pub fn header() -> &'static str {
        "| scenario | rounds | published | stored | lost | duplicated | dropped (retention) | northbound missing / redelivered | alerts fired / in PostgreSQL | max lag (frames) | recovery | RSS peak | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    pub fn row(&self) -> String {
        let c = &self.counts;
        let verdict = match &self.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::Fail(why) => format!("**FAIL**: {why}"),
            Verdict::NotRun(why) => format!("not run: {why}"),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |",
            self.scenario,
            self.rounds,
            c.published,
            c.stored,
            c.lost,
            c.duplicated,
            c.dropped_by_retention,
            c.north_missing,
            c.north_redelivered,
            c.alerts_fired,
            c.alerts_stored,
            self.max_lag,
            self.recovery
                .map_or("–".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            if self.rss_peak_kib > 0 {
                format!("{:.1} MiB", self.rss_peak_kib as f64 / 1024.0)
            } else {
                "–".into()
            },
            verdict
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}\n{}", Self::header(), self.row())?;
        for n in &self.notes {
            writeln!(f, "- {n}")?;
        }
        Ok(())
    }
}
