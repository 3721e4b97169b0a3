//! `protocol = "simulator"`: generated signals at each tag's scan rate.
//!
//! Tags are grouped by effective scan period; every group is one poll cycle
//! and one `DataFrame`. Periodic generators (sine, ramp, square) follow the
//! wall clock, so a restarted gateway continues the same curve. With
//! `error_rate > 0` a poll starts an error burst with that probability: for
//! `error_burst` polls every sample is BAD with `error_code = 1` and the
//! poll counts as a `device` error.
//!
//! Missed ticks are skipped, not bunched up: after a stall the next poll is
//! the next multiple of the period.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::sync::Arc;
use std::time::Duration;

use config::{ConstantValue, DeviceConfig, DriverOptions, Generator, TagConfig, TagOptions};
use proto::Sample;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::pipeline::Pipeline;
use crate::sample::{self, now_ns, Deadband, Raw};
use crate::write::{WriteQueue, WriteResult, WriteStatus};
use crate::{DriverError, DriverHost, ErrorKind, PollError, PollReport};

/// `error_code` of samples in a simulated error burst.
pub const SIMULATED_FAULT: i32 = 1;

struct TagState {
    tag: TagConfig,
    generator: Generator,
    walk: f64,
    count: f64,
    deadband: Deadband,
}

struct Group {
    period: Duration,
    next: Instant,
    /// Ticks skipped after the last poll overran, reported with the next.
    skipped: u32,
    tags: Vec<TagState>,
}

impl TagState {
    fn new(tag: &TagConfig) -> Option<TagState> {
        let TagOptions::Simulator(opts) = &tag.driver else {
            return None;
        };
        Some(TagState {
            generator: Generator::parse(&tag.address)?,
            walk: opts.base,
            count: opts.base,
            deadband: Deadband::default(),
            tag: tag.clone(),
        })
    }

    /// The next raw reading.
    fn generate(&mut self, rng: &mut fastrand::Rng, ts_ns: u64) -> Raw {
        let TagOptions::Simulator(o) = &self.tag.driver else {
            return Raw::Float(0.0);
        };
        let phase = || {
            let p = o.period.as_nanos().max(1);
            (u128::from(ts_ns) % p) as f64 / p as f64
        };
        let dt = self.tag.data_type;
        match self.generator {
            Generator::Sine => sample::raw_for(dt, o.base + o.amplitude * (TAU * phase()).sin()),
            Generator::Ramp => sample::raw_for(dt, o.base + o.amplitude * phase()),
            Generator::RandomWalk => {
                self.walk += (rng.f64() * 2.0 - 1.0) * o.step;
                // Keep the walk inside the tag's range (expressed in raw units).
                let to_raw = |eng: f64| (eng - self.tag.offset) / self.tag.scaling;
                if let Some(lo) = self.tag.min_value {
                    self.walk = self.walk.max(to_raw(lo));
                }
                if let Some(hi) = self.tag.max_value {
                    self.walk = self.walk.min(to_raw(hi));
                }
                sample::raw_for(dt, self.walk)
            }
            Generator::Counter => {
                let v = self.count;
                self.count += o.step;
                sample::raw_for(dt, v)
            }
            Generator::Square => {
                let on = phase() < o.duty;
                if dt == config::DataType::Boolean {
                    Raw::Bool(on)
                } else {
                    sample::raw_for(dt, o.base + if on { o.amplitude } else { 0.0 })
                }
            }
            Generator::Constant => match o.value.clone() {
                Some(ConstantValue::Bool(b)) => Raw::Bool(b),
                Some(ConstantValue::Int(i)) => sample::raw_for(dt, i as f64),
                Some(ConstantValue::Float(f)) => sample::raw_for(dt, f),
                Some(ConstantValue::String(s)) => Raw::String(s),
                None => sample::raw_for(dt, o.base),
            },
        }
    }
}

/// Runs one simulated device until shutdown.
pub async fn run<H: DriverHost>(
    device: Arc<DeviceConfig>,
    host: H,
    mut shutdown: watch::Receiver<bool>,
    writes: WriteQueue,
) -> Result<(), DriverError> {
    let DriverOptions::Simulator(opts) = &device.driver else {
        return Err(DriverError::Device {
            device: device.name.clone(),
            message: "not a simulator device".into(),
        });
    };
    let mut writes = writes.lock_owned().await;
    let mut writes_open = true;
    let mut rng = opts
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let start = Instant::now();
    let mut by_period: BTreeMap<Duration, Vec<TagState>> = BTreeMap::new();
    for tag in device.enabled_tags() {
        match TagState::new(tag) {
            Some(t) => by_period.entry(tag.effective_scan(&device)).or_default().push(t),
            None => {
                return Err(DriverError::Device {
                    device: device.name.clone(),
                    message: format!("tag {:?}: unknown generator {:?}", tag.name, tag.address),
                })
            }
        }
    }
    let mut groups: Vec<Group> = by_period
        .into_iter()
        .map(|(period, tags)| Group {
            period,
            next: start,
            skipped: 0,
            tags,
        })
        .collect();
    if groups.is_empty() {
        // Nothing enabled: idle until shutdown rather than spin.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    let host = Arc::new(host);
    host.connection_changed(true);
    let mut pipeline = Pipeline::new(host.clone());
    let mut burst_left = 0u32;
    loop {
        if *shutdown.borrow() {
            return pipeline.finish().await;
        }
        let Some(gi) = (0..groups.len()).min_by_key(|&i| groups[i].next) else {
            return pipeline.finish().await;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(groups[gi].next) => {}
            r = shutdown.changed() => {
                if r.is_err() {
                    return pipeline.finish().await;
                }
                continue;
            }
            w = writes.recv(), if writes_open => {
                match w {
                    Some(w) => {
                        let _ = w.reply.send(WriteResult::failed(
                            WriteStatus::Unsupported,
                            0,
                            "the simulator generates its values; it does not accept writes",
                        ));
                    }
                    None => writes_open = false,
                }
                continue;
            }
        }
        let t0 = Instant::now();
        let skipped = std::mem::take(&mut groups[gi].skipped);
        if burst_left == 0 && opts.error_rate > 0.0 && rng.f64() < opts.error_rate {
            burst_left = opts.error_burst;
        }
        let failing = burst_left > 0;
        burst_left = burst_left.saturating_sub(1);
        let ts = now_ns();
        let group = &mut groups[gi];
        let mut samples: Vec<Sample> = Vec::with_capacity(group.tags.len());
        for t in &mut group.tags {
            let s = if failing {
                sample::failed(&t.tag, SIMULATED_FAULT, ts)
            } else {
                let raw = t.generate(&mut rng, ts);
                sample::reading(&t.tag, raw, ts)
            };
            if t.deadband.admit(&t.tag, &s) {
                samples.push(s);
            }
        }
        let duration = t0.elapsed();
        let n = samples.len();
        let report = PollReport {
            duration,
            samples: n,
            suppressed: u32::try_from(group.tags.len() - n).unwrap_or(u32::MAX),
            skipped_ticks: skipped,
            errors: if failing {
                vec![PollError {
                    kind: ErrorKind::Device,
                    code: SIMULATED_FAULT,
                }]
            } else {
                Vec::new()
            },
            ..PollReport::default()
        };
        pipeline
            .finish_poll(host.as_ref(), &device.name, samples, report)
            .await?;
        // Next tick: the next multiple of the period after now (skip missed ones).
        let now = Instant::now();
        let period = group.period;
        group.next += period;
        if group.next <= now {
            let behind = now.duration_since(group.next).as_nanos() / period.as_nanos().max(1);
            let skip = u32::try_from(behind + 1).unwrap_or(u32::MAX);
            group.next += period.saturating_mul(skip);
            group.skipped = skip;
        }
    }
}
