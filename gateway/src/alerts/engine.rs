//! The alert state machine. Pure: driven by data frames, ticks and operator
//! actions, each with an explicit time, and producing events plus the
//! persisted state that changed. The task in `mod.rs` feeds it from the bus
//! and commits what it produces; tests drive it with synthetic frames.
//!
//! Per rule (see `docs/alerts.md` for the diagram):
//!
//! ```text
//! NORMAL --cond true--> PENDING --held eval_duration, cooldown over--> ACTIVE
//!    ^                     |                                            |
//!    +----cond false-------+          <--false for eval_duration--------+
//! ```
//!
//! - A sample with BAD quality (or a value that is not a number, or an
//!   expression giving NaN) is no evidence either way: nothing moves, and
//!   the condition is unknown until the next good evaluation (ticks do not
//!   complete a hold on it). UNCERTAIN counts as good.
//! - An expression rule is evaluated when all its tags have a good value.
//! - Ticks re-check time-based transitions with the last evaluated
//!   condition, every `eval_interval` per rule: PENDING → ACTIVE, clearing →
//!   resolved, staleness, expiry after `auto_resolve_after`, end of a timed
//!   suppression. A condition not yet evaluated in this process (after a
//!   restart) moves nothing until its next sample.
//! - Times are the bus's append times (`FrameEnvelope.timestamp_ns`, the
//!   gateway's clock, non-decreasing) for samples, and the wall clock for
//!   ticks; the engine's clock never goes backwards.
//!
//! Persisted per rule (key `rule/<name>`, JSON [`Persisted`]): pending-since,
//! the open alerts, clearing-since, last fire time (cooldown) and a
//! suppression. Not persisted: last values and the staleness clocks, which
//! restart with the process.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use proto::{DataFrame, EventFrame, Quality};
use serde::{Deserialize, Serialize};

use super::events::{self, Alert, AlertKind};
use super::rules::{Rule, RuleSet};
use crate::status::rfc3339;

/// Key prefix of a rule's persisted state.
pub const STATE_PREFIX: &str = "rule/";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub since_ns: u64,
    /// Seq of the frame whose sample started it (part of the alert's id).
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    pub by: String,
    pub since_ns: u64,
    #[serde(default)]
    pub until_ns: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A rule's durable state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub active: Option<Alert>,
    /// The condition has been false since (while `active`).
    #[serde(default)]
    pub clearing_since_ns: Option<u64>,
    #[serde(default)]
    pub last_fired_ns: Option<u64>,
    /// Alerts this rule opened so far (threshold and stale): part of each
    /// alert's id, so two alerts of one rule never share one, whatever the
    /// clocks do.
    #[serde(default)]
    pub fires: u64,
    #[serde(default)]
    pub stale: Option<Alert>,
    #[serde(default)]
    pub suppressed: Option<Suppression>,
}

impl Persisted {
    fn is_empty(&self) -> bool {
        *self == Persisted::default()
    }
}

#[derive(Debug, Clone)]
struct Input {
    value: Option<f64>,
    good: bool,
    last_good_ns: u64,
    last_good_seq: u64,
}

#[derive(Debug, Clone)]
struct RuleState {
    p: Persisted,
    inputs: Vec<Input>,
    /// Last evaluated condition (this process only).
    last_condition: Option<bool>,
    last_value: f64,
    last_seq: u64,
    last_check_ns: u64,
    last_error_log_ns: Option<u64>,
    /// Index in the current frame's list of touched rules (`NONE` outside
    /// `on_data`): one lookup per sample, not a search.
    slot: usize,
}

const NONE: usize = usize::MAX;

impl RuleState {
    fn new(rule: &Rule, p: Persisted, now_ns: u64) -> RuleState {
        RuleState {
            p,
            inputs: rule
                .inputs
                .iter()
                .map(|_| Input {
                    value: None,
                    good: false,
                    last_good_ns: now_ns,
                    last_good_seq: 0,
                })
                .collect(),
            last_condition: None,
            last_value: f64::NAN,
            last_seq: 0,
            last_check_ns: now_ns,
            last_error_log_ns: None,
            slot: NONE,
        }
    }
}

/// Counters the task turns into metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub evaluations: u64,
    pub eval_errors: u64,
    pub fired: HashMap<&'static str, u64>,
    pub resolved: HashMap<&'static str, u64>,
}

/// What an operator action can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    #[error("no open alert with id {0:?}")]
    UnknownAlert(String),
    #[error("alert {id} was already acknowledged by {by}")]
    AlreadyAcknowledged { id: String, by: String },
    #[error("no enabled rule named {0:?}")]
    UnknownRule(String),
}

/// An open alert as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    #[serde(flatten)]
    pub alert: Alert,
    pub fired_at: String,
}

/// A rule's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub name: String,
    pub device: String,
    pub tag: Option<String>,
    pub level: config::AlertLevel,
    pub state: &'static str,
    pub pending_since: Option<String>,
    pub suppressed: Option<Suppression>,
    pub active_alert: Option<String>,
    pub stale_alert: Option<String>,
}

/// Events and state entries produced since the last [`Engine::take`].
#[derive(Debug, Default)]
pub struct Changes {
    pub events: Vec<EventFrame>,
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

pub struct Engine {
    gateway_id: String,
    rules: RuleSet,
    states: Vec<RuleState>,
    /// Rule names whose persisted state changed.
    dirty: BTreeSet<String>,
    /// State keys to delete (rules gone).
    gone: BTreeSet<String>,
    events: Vec<EventFrame>,
    clock_ns: u64,
    pub stats: Stats,
}

fn elapsed(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

fn number(v: &proto::Value) -> Option<f64> {
    use proto::value::Kind;
    match v.kind.as_ref()? {
        Kind::BoolValue(b) => Some(if *b { 1.0 } else { 0.0 }),
        Kind::IntValue(i) => Some(*i as f64),
        Kind::UintValue(u) => Some(*u as f64),
        Kind::FloatValue(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

impl Engine {
    /// An engine for `rules`, resuming `persisted` (state keys without the
    /// prefix → state). Persisted state of rules that no longer exist (or
    /// are disabled) is closed: its open alerts are resolved (`rule_removed`).
    pub fn new(gateway_id: &str, rules: RuleSet, persisted: Vec<(String, Persisted)>, now_ns: u64) -> Engine {
        let mut by_name: HashMap<String, Persisted> = persisted.into_iter().collect();
        let states = rules
            .rules
            .iter()
            .map(|r| RuleState::new(r, by_name.remove(&r.name).unwrap_or_default(), now_ns))
            .collect();
        let mut e = Engine {
            gateway_id: gateway_id.to_string(),
            rules,
            states,
            dirty: BTreeSet::new(),
            gone: BTreeSet::new(),
            events: Vec::new(),
            // Replayed frames keep their own times; ticks bring the wall clock.
            clock_ns: 0,
            stats: Stats::default(),
        };
        for (name, p) in by_name {
            e.close_removed(&name, p, now_ns);
        }
        e
    }

    /// Applies a new rule set (a reload): rules keep their state by name
    /// (values too, if they read the same tags); removed ones are closed.
    pub fn reload(&mut self, rules: RuleSet, now_ns: u64) {
        self.clock_ns = self.clock_ns.max(now_ns);
        let old_rules = std::mem::take(&mut self.rules.rules);
        let mut old: HashMap<String, (Rule, RuleState)> = old_rules
            .into_iter()
            .zip(std::mem::take(&mut self.states))
            .map(|(r, s)| (r.name.clone(), (r, s)))
            .collect();
        let states = rules
            .rules
            .iter()
            .map(|r| match old.remove(&r.name) {
                Some((o, mut s)) if o.inputs == r.inputs && o.device == r.device => {
                    // Values stay; a condition judged under another op,
                    // threshold or expression does not.
                    if !o.same_condition(r) {
                        s.last_condition = None;
                        s.last_value = f64::NAN;
                    }
                    s
                }
                Some((_, s)) => RuleState::new(r, s.p, self.clock_ns),
                None => RuleState::new(r, Persisted::default(), self.clock_ns),
            })
            .collect();
        self.rules = rules;
        self.states = states;
        for (name, (_, s)) in old {
            self.close_removed(&name, s.p, self.clock_ns);
        }
    }

    fn close_removed(&mut self, name: &str, p: Persisted, at: u64) {
        for a in [p.active, p.stale].into_iter().flatten() {
            self.count_resolved(&a);
            tracing::info!(
                rule = name,
                alert_id = a.id,
                "alert resolved: its rule was removed or disabled"
            );
            self.events
                .push(events::resolved(&a, at.max(a.fired_ns), "rule_removed", a.value));
        }
        self.gone.insert(name.to_string());
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Feeds one data frame (`seq`, appended at `ts_ns`).
    pub fn on_data(&mut self, seq: u64, ts_ns: u64, frame: &DataFrame) {
        if !self.rules.watches_device(&frame.device_id) {
            return;
        }
        let t = self.clock_ns.max(ts_ns);
        self.clock_ns = t;
        // (rule, whether one of its samples in this frame was good)
        let mut touched: Vec<(usize, bool)> = Vec::new();
        for s in &frame.samples {
            let readers = self.rules.readers(&frame.device_id, &s.tag);
            if readers.is_empty() {
                continue;
            }
            let value = s.value.as_ref().and_then(number);
            let good = s.quality != Quality::Bad as i32 && value.is_some();
            for &(ri, ii) in readers {
                let input = &mut self.states[ri].inputs[ii];
                input.good = good;
                if good {
                    input.value = value;
                    input.last_good_ns = t;
                    input.last_good_seq = seq;
                }
                let st = &mut self.states[ri];
                if st.slot == NONE {
                    st.slot = touched.len();
                    touched.push((ri, good));
                } else {
                    touched[st.slot].1 |= good;
                }
            }
        }
        for &(ri, _) in &touched {
            self.states[ri].slot = NONE;
        }
        for (ri, good) in touched {
            if good {
                self.data_arrived(ri, t);
            }
            // A BAD input makes the condition unknown: ticks do not carry a
            // hold or a clearing forward on a value the device disowned.
            if self.states[ri].inputs.iter().any(|i| !i.good) {
                self.states[ri].last_condition = None;
            }
            self.evaluate(ri, t, seq);
        }
    }

    /// A good sample may end a stale-data alert.
    fn data_arrived(&mut self, ri: usize, t: u64) {
        let r = &self.rules.rules[ri];
        let st = &mut self.states[ri];
        if st.p.stale.is_none() {
            return;
        }
        let fresh = r.stale_after.is_zero()
            || st
                .inputs
                .iter()
                .all(|i| elapsed(i.last_good_ns, t) < r.stale_after);
        if fresh {
            if let Some(a) = st.p.stale.take() {
                self.dirty.insert(r.name.clone());
                *self.stats.resolved.entry(a.level.as_str()).or_default() += 1;
                tracing::info!(
                    rule = r.name,
                    alert_id = a.id,
                    "stale-data alert resolved: data received"
                );
                self.events
                    .push(events::resolved(&a, t, "data_received", a.value));
            }
        }
    }

    fn evaluate(&mut self, ri: usize, t: u64, seq: u64) {
        let r = &self.rules.rules[ri];
        let st = &mut self.states[ri];
        if st.inputs.iter().any(|i| !i.good || i.value.is_none()) {
            return;
        }
        let v = match &r.expr {
            None => st.inputs[0].value.unwrap_or(f64::NAN),
            Some(x) => {
                let values: Vec<f64> = st.inputs.iter().map(|i| i.value.unwrap_or(f64::NAN)).collect();
                match x.eval(&values) {
                    Ok(v) => v,
                    Err(e) => {
                        self.stats.eval_errors += 1;
                        st.last_condition = None;
                        // Logged once per minute per rule, not per sample.
                        if st
                            .last_error_log_ns
                            .is_none_or(|l| elapsed(l, t) >= Duration::from_secs(60))
                        {
                            st.last_error_log_ns = Some(t);
                            tracing::warn!(rule = r.name, error = %e, values = ?values, "alert expression failed; rule not evaluated for this sample (logged once a minute)");
                        }
                        return;
                    }
                }
            }
        };
        if v.is_nan() {
            // No evidence either way (e.g. 0/0 in an expression).
            self.stats.eval_errors += 1;
            st.last_condition = None;
            return;
        }
        self.stats.evaluations += 1;
        let c = r.holds(v);
        st.last_condition = Some(c);
        st.last_value = v;
        st.last_seq = seq;
        self.step(ri, c, v, t);
    }

    /// One transition of rule `ri` with condition `c` at `t`.
    fn step(&mut self, ri: usize, c: bool, v: f64, t: u64) {
        let r = &self.rules.rules[ri];
        let st = &mut self.states[ri];
        if st.p.suppressed.is_some() {
            return;
        }
        let mut changed = false;
        let mut fire = None;
        let mut resolve = None;
        if st.p.active.is_some() {
            if c {
                changed |= st.p.clearing_since_ns.take().is_some();
            } else {
                let since = *st.p.clearing_since_ns.get_or_insert_with(|| {
                    changed = true;
                    t
                });
                if elapsed(since, t) >= r.hold {
                    resolve = st.p.active.take();
                    st.p.clearing_since_ns = None;
                    changed = true;
                }
            }
        } else if c {
            let seq = st.last_seq;
            let p = st.p.pending.get_or_insert_with(|| {
                changed = true;
                Pending { since_ns: t, seq }
            });
            let cooled = st.p.last_fired_ns.is_none_or(|f| elapsed(f, t) >= r.cooldown);
            if elapsed(p.since_ns, t) >= r.hold && cooled {
                fire = st.p.pending.take();
                changed = true;
            }
        } else {
            changed |= st.p.pending.take().is_some();
        }
        if let Some(a) = resolve {
            *self.stats.resolved.entry(a.level.as_str()).or_default() += 1;
            tracing::info!(rule = r.name, alert_id = a.id, value = v, "alert resolved");
            self.events.push(events::resolved(&a, t, "condition_cleared", v));
        }
        if let Some(p) = fire {
            let fires = self.states[ri].p.fires;
            let id = alert_id(&self.gateway_id, &r.name, "threshold", fires, p.seq, p.since_ns);
            let message = format!(
                "{} {} {} (value {v})",
                r.subject(),
                r.op.as_str(),
                r.threshold_text()
            );
            let a = Alert {
                id,
                kind: AlertKind::Threshold,
                rule: r.name.clone(),
                device: r.device.clone(),
                tag: r.tag.clone(),
                level: r.level,
                fired_ns: t,
                value: v,
                message,
                acked_by: None,
                acked_ns: None,
            };
            let mut extra = vec![
                (
                    "threshold_value".to_string(),
                    if r.op.is_range() {
                        r.low.to_string()
                    } else {
                        r.threshold.to_string()
                    },
                ),
                ("op".to_string(), r.op.as_str().to_string()),
                ("pending_since_ns".to_string(), p.since_ns.to_string()),
                ("sample_seq".to_string(), p.seq.to_string()),
            ];
            if r.op.is_range() {
                extra.push(("threshold_low".into(), r.low.to_string()));
                extra.push(("threshold_high".into(), r.high.to_string()));
            }
            if let Some(x) = &r.expr {
                extra.push(("expression".into(), x.source().to_string()));
            }
            *self.stats.fired.entry(r.level.as_str()).or_default() += 1;
            tracing::info!(
                rule = r.name,
                alert_id = a.id,
                level = r.level.as_str(),
                value = v,
                "alert fired"
            );
            self.events.push(events::fired(&a, extra));
            let st = &mut self.states[ri];
            st.p.fires += 1;
            st.p.last_fired_ns = Some(t);
            st.p.clearing_since_ns = None;
            st.p.active = Some(a);
        }
        if changed {
            self.dirty.insert(self.rules.rules[ri].name.clone());
        }
    }

    fn count_resolved(&mut self, a: &Alert) {
        *self.stats.resolved.entry(a.level.as_str()).or_default() += 1;
    }

    /// Time-based transitions at wall-clock `now_ns` (see module docs).
    pub fn tick(&mut self, now_ns: u64) {
        let t = self.clock_ns.max(now_ns);
        self.clock_ns = t;
        for ri in 0..self.rules.rules.len() {
            let r = &self.rules.rules[ri];
            let st = &mut self.states[ri];
            if elapsed(st.last_check_ns, t) < r.eval_interval {
                continue;
            }
            st.last_check_ns = t;
            let name = r.name.clone();
            // End of a timed suppression.
            if let Some(until) = st.p.suppressed.as_ref().and_then(|s| s.until_ns) {
                if t >= until {
                    st.p.suppressed = None;
                    self.dirty.insert(name.clone());
                    tracing::info!(rule = name, "alert rule suppression ended");
                }
            }
            // Expiry (the seed's auto_resolve_expired_alerts).
            let r = &self.rules.rules[ri];
            let st = &mut self.states[ri];
            if !r.auto_resolve_after.is_zero() {
                for slot in [&mut st.p.active, &mut st.p.stale] {
                    if slot
                        .as_ref()
                        .is_some_and(|a| elapsed(a.fired_ns, t) >= r.auto_resolve_after)
                    {
                        if let Some(a) = slot.take() {
                            *self.stats.resolved.entry(a.level.as_str()).or_default() += 1;
                            tracing::info!(rule = r.name, alert_id = a.id, "alert resolved: expired");
                            self.events.push(events::resolved(&a, t, "expired", a.value));
                            self.dirty.insert(name.clone());
                        }
                    }
                }
                if st.p.active.is_none() {
                    st.p.clearing_since_ns = None;
                }
            }
            if let Some(c) = st.last_condition {
                let v = st.last_value;
                self.stats.evaluations += 1;
                self.step(ri, c, v, t);
            }
            self.check_stale(ri, t);
        }
    }

    fn check_stale(&mut self, ri: usize, t: u64) {
        let r = &self.rules.rules[ri];
        let st = &mut self.states[ri];
        if r.stale_after.is_zero() || st.p.stale.is_some() || st.p.suppressed.is_some() {
            return;
        }
        let stale: Vec<&str> = r
            .inputs
            .iter()
            .zip(&st.inputs)
            .filter(|(_, i)| elapsed(i.last_good_ns, t) >= r.stale_after)
            .map(|(n, _)| n.as_str())
            .collect();
        if stale.is_empty() {
            return;
        }
        let last_seq = st.inputs.iter().map(|i| i.last_good_seq).min().unwrap_or(0);
        let message = format!(
            "stale data: no good sample of {}.{} for {}",
            r.device,
            stale.join(", "),
            humantime::format_duration(r.stale_after)
        );
        let a = Alert {
            id: alert_id(&self.gateway_id, &r.name, "stale", st.p.fires, last_seq, t),
            kind: AlertKind::Stale,
            rule: r.name.clone(),
            device: r.device.clone(),
            tag: r.tag.clone(),
            level: r.level,
            fired_ns: t,
            value: st.last_value,
            message,
            acked_by: None,
            acked_ns: None,
        };
        *self.stats.fired.entry(r.level.as_str()).or_default() += 1;
        tracing::warn!(rule = r.name, alert_id = a.id, tags = ?stale, "stale-data alert fired");
        self.events.push(events::fired(
            &a,
            vec![("stale_after_s".into(), r.stale_after.as_secs_f64().to_string())],
        ));
        st.p.stale = Some(a);
        st.p.fires += 1;
        self.dirty.insert(r.name.clone());
    }

    fn find_alert(&mut self, id: &str) -> Option<(usize, &mut Alert)> {
        self.states.iter_mut().enumerate().find_map(|(ri, st)| {
            [st.p.active.as_mut(), st.p.stale.as_mut()]
                .into_iter()
                .flatten()
                .find(|a| a.id == id)
                .map(|a| (ri, a))
        })
    }

    /// Acknowledges open alert `id` on behalf of `by`.
    pub fn acknowledge(&mut self, id: &str, by: &str, now_ns: u64) -> Result<Alert, ActionError> {
        let t = self.clock_ns.max(now_ns);
        self.clock_ns = t;
        let (ri, a) = self
            .find_alert(id)
            .ok_or_else(|| ActionError::UnknownAlert(id.to_string()))?;
        if let Some(prev) = &a.acked_by {
            return Err(ActionError::AlreadyAcknowledged {
                id: id.to_string(),
                by: prev.clone(),
            });
        }
        a.acked_by = Some(by.to_string());
        a.acked_ns = Some(t);
        let a = a.clone();
        self.events.push(events::acknowledged(&a, t, by));
        self.dirty.insert(self.rules.rules[ri].name.clone());
        Ok(a)
    }

    /// Suppresses rule `name` (until `until_ns`, if given): its open alerts
    /// are closed as SUPPRESSED and it does not fire until unsuppressed.
    pub fn suppress(
        &mut self,
        name: &str,
        by: &str,
        until_ns: Option<u64>,
        reason: Option<String>,
        now_ns: u64,
    ) -> Result<Vec<Alert>, ActionError> {
        let t = self.clock_ns.max(now_ns);
        self.clock_ns = t;
        let ri = self
            .rules
            .rules
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| ActionError::UnknownRule(name.to_string()))?;
        let st = &mut self.states[ri];
        st.p.suppressed = Some(Suppression {
            by: by.to_string(),
            since_ns: t,
            until_ns,
            reason,
        });
        st.p.pending = None;
        st.p.clearing_since_ns = None;
        let closed: Vec<Alert> = [st.p.active.take(), st.p.stale.take()]
            .into_iter()
            .flatten()
            .collect();
        for a in &closed {
            self.events.push(events::suppressed(a, t, by));
        }
        self.dirty.insert(name.to_string());
        Ok(closed)
    }

    /// Lifts a suppression; the rule moves again from its next evaluation
    /// (a sample, or the next tick with the last known condition).
    /// Returns whether the rule was suppressed.
    pub fn unsuppress(&mut self, name: &str, now_ns: u64) -> Result<bool, ActionError> {
        self.clock_ns = self.clock_ns.max(now_ns);
        let ri = self
            .rules
            .rules
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| ActionError::UnknownRule(name.to_string()))?;
        let was = self.states[ri].p.suppressed.take().is_some();
        if was {
            self.dirty.insert(name.to_string());
        }
        Ok(was)
    }

    /// Every open alert (threshold and stale), in rule order.
    fn open(&self) -> impl Iterator<Item = &Alert> {
        self.states
            .iter()
            .flat_map(|st| [st.p.active.as_ref(), st.p.stale.as_ref()])
            .flatten()
    }

    /// Open alerts, oldest first.
    pub fn open_alerts(&self) -> Vec<AlertView> {
        let mut v: Vec<AlertView> = self
            .open()
            .map(|a| AlertView {
                alert: a.clone(),
                fired_at: rfc3339(a.fired_ns),
            })
            .collect();
        v.sort_by_key(|a| a.alert.fired_ns);
        v
    }

    /// Open alerts per level.
    pub fn open_by_level(&self) -> HashMap<&'static str, i64> {
        let mut m = HashMap::new();
        for a in self.open() {
            *m.entry(a.level.as_str()).or_default() += 1;
        }
        m
    }

    pub fn rule_views(&self) -> Vec<RuleView> {
        self.rules
            .rules
            .iter()
            .zip(&self.states)
            .map(|(r, st)| RuleView {
                name: r.name.clone(),
                device: r.device.clone(),
                tag: r.tag.clone(),
                level: r.level,
                state: if st.p.suppressed.is_some() {
                    "suppressed"
                } else if st.p.active.is_some() {
                    "active"
                } else if st.p.pending.is_some() {
                    "pending"
                } else {
                    "normal"
                },
                pending_since: st.p.pending.as_ref().map(|p| rfc3339(p.since_ns)),
                suppressed: st.p.suppressed.clone(),
                active_alert: st.p.active.as_ref().map(|a| a.id.clone()),
                stale_alert: st.p.stale.as_ref().map(|a| a.id.clone()),
            })
            .collect()
    }

    /// Takes the events and state changes produced so far (to commit them).
    pub fn take(&mut self) -> Changes {
        let mut state = Vec::new();
        for name in std::mem::take(&mut self.gone) {
            if !self.rules.rules.iter().any(|r| r.name == name) {
                state.push((format!("{STATE_PREFIX}{name}").into_bytes(), None));
            }
        }
        for name in std::mem::take(&mut self.dirty) {
            let Some(ri) = self.rules.rules.iter().position(|r| r.name == name) else {
                continue;
            };
            let p = &self.states[ri].p;
            let key = format!("{STATE_PREFIX}{name}").into_bytes();
            let value = if p.is_empty() {
                None
            } else {
                // Serializing plain data cannot fail; an empty value would decode as default.
                Some(serde_json::to_vec(p).unwrap_or_default())
            };
            state.push((key, value));
        }
        Changes {
            events: std::mem::take(&mut self.events),
            state,
        }
    }
}

/// An alert's id: a v5 UUID of an unambiguous encoding (a JSON array, so
/// a `/` in a rule or gateway name cannot make two names equal) of the
/// gateway, the rule, the kind, the rule's fire counter and the pending
/// period's first sample (seq, time).
fn alert_id(gateway: &str, rule: &str, kind: &str, fires: u64, seq: u64, since_ns: u64) -> String {
    let name = serde_json::json!([gateway, rule, kind, fires, seq, since_ns]).to_string();
    events::id(&name)
}

/// Decodes persisted entries (`rule/<name>` → JSON); bad ones are logged and dropped.
pub fn decode_state(entries: Vec<frame_bus::StateEntry>) -> Vec<(String, Persisted)> {
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let key = String::from_utf8(k).ok()?;
            let name = key.strip_prefix(STATE_PREFIX)?.to_string();
            match serde_json::from_slice::<Persisted>(&v) {
                Ok(p) => Some((name, p)),
                Err(e) => {
                    tracing::error!(rule = name, error = %e, "unreadable persisted alert state; the rule starts afresh");
                    None
                }
            }
        })
        .collect()
}
