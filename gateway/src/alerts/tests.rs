//! Rule semantics, driven by synthetic frames with controlled times: every
//! operator and its boundaries, hold duration, resolve hold, cooldown,
//! staleness, BAD quality, expressions, expiry, operator actions, reloads,
//! and replays after a crash (same events, same ids).

use std::time::Duration;

use config::expression::{Expression, VarKind};
use config::{AlertLevel, CompareOp};
use proto::{DataFrame, EventFrame, EventKind, Quality, Sample};

use super::engine::{ActionError, Engine, Persisted};
use super::rules::{Rule, RuleSet};

const BASE: u64 = 1_800_000_000_000_000_000;

fn at(s: f64) -> u64 {
    BASE + (s * 1e9) as u64
}

fn rule(name: &str, op: CompareOp, t: f64) -> Rule {
    Rule {
        name: name.into(),
        device: "tank".into(),
        tag: Some("level".into()),
        expr: None,
        inputs: vec!["level".into()],
        op,
        threshold: t,
        low: f64::NEG_INFINITY,
        high: f64::INFINITY,
        level: AlertLevel::Critical,
        eval_interval: Duration::from_secs(1),
        hold: Duration::ZERO,
        cooldown: Duration::ZERO,
        stale_after: Duration::ZERO,
        auto_resolve_after: Duration::ZERO,
    }
}

fn range(op: CompareOp, low: f64, high: f64) -> Rule {
    Rule {
        low,
        high,
        ..rule("r", op, 0.0)
    }
}

fn expr_rule(src: &str) -> Rule {
    let kinds = |n: &str| match n {
        "temp_in" | "temp_out" => Some(VarKind::Number),
        "pump_on" => Some(VarKind::Bool),
        _ => None,
    };
    let x = Expression::compile(src, &kinds).unwrap();
    Rule {
        tag: None,
        inputs: x.references().map(str::to_string).collect(),
        expr: Some(x),
        device: "hx".into(),
        ..rule("x", CompareOp::Ne, 0.0)
    }
}

struct H {
    e: Engine,
    seq: u64,
    /// What would be in the state column family after each commit.
    store: std::collections::BTreeMap<String, Persisted>,
}

type Ev = (EventKind, String, Option<String>);

fn summary(events: &[EventFrame]) -> Vec<Ev> {
    events
        .iter()
        .map(|e| {
            (
                EventKind::try_from(e.kind).unwrap(),
                e.rule_id.clone(),
                e.attributes.get("reason").cloned(),
            )
        })
        .collect()
}

impl H {
    fn new(rules: Vec<Rule>) -> H {
        H::resume(rules, vec![], 0)
    }

    fn resume(rules: Vec<Rule>, state: Vec<(String, Persisted)>, seq: u64) -> H {
        H {
            store: state.iter().cloned().collect(),
            e: Engine::new("gw", RuleSet::new(rules), state, at(0.0)),
            seq,
        }
    }

    /// Takes the engine's changes as a commit would, keeping the state.
    fn take(&mut self) -> super::engine::Changes {
        let ch = self.e.take();
        for (k, v) in &ch.state {
            let name = String::from_utf8(k.clone())
                .unwrap()
                .strip_prefix("rule/")
                .unwrap()
                .to_string();
            match v {
                Some(v) => self.store.insert(name, serde_json::from_slice(v).unwrap()),
                None => self.store.remove(&name),
            };
        }
        ch
    }

    fn frame(&mut self, t: f64, device: &str, samples: &[(&str, proto::Value, Quality)]) -> Vec<EventFrame> {
        self.seq += 1;
        let f = DataFrame {
            device_id: device.into(),
            samples: samples
                .iter()
                .map(|(tag, v, q)| Sample {
                    tag: (*tag).into(),
                    value: Some(v.clone()),
                    quality: *q as i32,
                    ..Sample::default()
                })
                .collect(),
        };
        self.e.on_data(self.seq, at(t), &f);
        self.take().events
    }

    fn level(&mut self, t: f64, v: f64) -> Vec<EventFrame> {
        self.frame(t, "tank", &[("level", proto::Value::float(v), Quality::Good)])
    }

    fn bad(&mut self, t: f64, v: f64) -> Vec<EventFrame> {
        self.frame(t, "tank", &[("level", proto::Value::float(v), Quality::Bad)])
    }

    fn tick(&mut self, t: f64) -> Vec<EventFrame> {
        self.e.tick(at(t));
        self.take().events
    }

    /// The persisted state as it would be after the last commit.
    fn persisted(&mut self) -> Vec<(String, Persisted)> {
        self.take();
        self.store.clone().into_iter().collect()
    }
}

fn kinds(events: &[EventFrame]) -> Vec<EventKind> {
    events
        .iter()
        .map(|e| EventKind::try_from(e.kind).unwrap())
        .collect()
}

const FIRED: EventKind = EventKind::AlertFired;
const RESOLVED: EventKind = EventKind::AlertResolved;

#[test]
fn every_operator_at_and_around_its_threshold() {
    use CompareOp::*;
    // (rule, value, fires)
    let cases: Vec<(Rule, f64, bool)> = vec![
        (rule("r", Gt, 10.0), 10.0, false),
        (rule("r", Gt, 10.0), 10.000_001, true),
        (rule("r", Gte, 10.0), 10.0, true),
        (rule("r", Gte, 10.0), 9.999_999, false),
        (rule("r", Lt, 10.0), 10.0, false),
        (rule("r", Lt, 10.0), 9.999_999, true),
        (rule("r", Lte, 10.0), 10.0, true),
        (rule("r", Lte, 10.0), 10.000_001, false),
        (rule("r", Eq, 10.0), 10.0, true),
        (rule("r", Eq, 10.0), 10.5, false),
        (rule("r", Ne, 10.0), 10.0, false),
        (rule("r", Ne, 10.0), -10.0, true),
        (range(Between, 5.0, 10.0), 5.0, true),
        (range(Between, 5.0, 10.0), 10.0, true),
        (range(Between, 5.0, 10.0), 10.1, false),
        (range(Between, 5.0, 10.0), 4.9, false),
        // low = high: exactly that value.
        (range(Between, 5.0, 5.0), 5.0, true),
        (range(Between, 5.0, 5.0), 5.000_001, false),
        (range(NotBetween, 5.0, 10.0), 5.0, false),
        (range(NotBetween, 5.0, 10.0), 10.0, false),
        (range(NotBetween, 5.0, 10.0), 4.9, true),
        (range(NotBetween, 5.0, 10.0), 10.1, true),
        (range(NotBetween, 5.0, 5.0), 5.0, false),
        (range(NotBetween, 5.0, 5.0), 5.1, true),
        // NaN never satisfies a condition.
        (rule("r", Ne, 10.0), f64::NAN, false),
    ];
    for (r, v, fires) in cases {
        let desc = format!(
            "{} {}..{} / {} with {v}",
            r.op.as_str(),
            r.low,
            r.high,
            r.threshold
        );
        let mut h = H::new(vec![r]);
        let ev = h.level(1.0, v);
        assert_eq!(kinds(&ev) == [FIRED], fires, "{desc}: {:?}", summary(&ev));
    }
}

#[test]
fn booleans_and_integers_compare_as_numbers() {
    let mut h = H::new(vec![rule("r", CompareOp::Eq, 1.0)]);
    let ev = h.frame(1.0, "tank", &[("level", proto::Value::bool(true), Quality::Good)]);
    assert_eq!(kinds(&ev), [FIRED]);
    let ev = h.frame(2.0, "tank", &[("level", proto::Value::uint(0), Quality::Good)]);
    assert_eq!(kinds(&ev), [RESOLVED]);
    // A string value is no evidence either way.
    let ev = h.frame(
        3.0,
        "tank",
        &[("level", proto::Value::string("x"), Quality::Good)],
    );
    assert!(ev.is_empty());
}

#[test]
fn hold_duration_before_firing_and_before_resolving() {
    let mut h = H::new(vec![Rule {
        hold: Duration::from_secs(10),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.level(0.0, 11.0).is_empty(), "pending, not fired");
    assert!(h.level(5.0, 12.0).is_empty());
    assert!(h.level(9.999, 12.0).is_empty(), "just short of the hold");
    let ev = h.level(10.0, 13.0);
    assert_eq!(kinds(&ev), [FIRED]);
    assert_eq!(ev[0].value, Some(proto::Value::float(13.0)));
    assert_eq!(ev[0].event_ts_ns, at(10.0));
    assert_eq!(ev[0].attributes["threshold_value"], "10");
    // False for less than the hold: still active; true again resets the clearing.
    assert!(h.level(11.0, 5.0).is_empty());
    assert!(h.level(15.0, 11.0).is_empty());
    assert!(h.level(16.0, 5.0).is_empty());
    assert!(h.level(25.9, 5.0).is_empty());
    let ev = h.level(26.0, 4.0);
    assert_eq!(
        summary(&ev),
        [(RESOLVED, "r".into(), Some("condition_cleared".into()))]
    );
    assert_eq!(ev[0].attributes["duration_ms"], "16000");
}

#[test]
fn a_pending_period_ends_when_the_condition_breaks() {
    let mut h = H::new(vec![Rule {
        hold: Duration::from_secs(10),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.level(0.0, 11.0).is_empty());
    assert!(h.level(5.0, 9.0).is_empty(), "pending cancelled");
    assert!(h.level(12.0, 11.0).is_empty(), "pending again from 12 s");
    assert!(h.level(21.0, 11.0).is_empty(), "only 9 s");
    assert_eq!(kinds(&h.level(22.0, 11.0)), [FIRED]);
}

#[test]
fn ticks_fire_and_resolve_without_new_samples() {
    let mut h = H::new(vec![Rule {
        hold: Duration::from_secs(10),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.level(0.0, 11.0).is_empty());
    assert!(h.tick(5.0).is_empty());
    assert_eq!(kinds(&h.tick(10.5)), [FIRED]);
    assert!(h.level(11.0, 1.0).is_empty());
    assert!(h.tick(20.0).is_empty());
    assert_eq!(kinds(&h.tick(21.5)), [RESOLVED]);
}

#[test]
fn cooldown_blocks_a_refire() {
    let mut h = H::new(vec![Rule {
        cooldown: Duration::from_secs(60),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    let first = h.level(0.0, 11.0);
    assert_eq!(kinds(&first), [FIRED]);
    assert_eq!(kinds(&h.level(1.0, 5.0)), [RESOLVED], "no hold: resolves at once");
    assert!(h.level(2.0, 11.0).is_empty(), "inside the cooldown");
    assert!(h.level(59.9, 12.0).is_empty());
    let second = h.level(60.0, 12.0);
    assert_eq!(kinds(&second), [FIRED], "fires once the cooldown is over");
    assert_ne!(first[0].event_id, second[0].event_id, "a new alert, a new id");
}

#[test]
fn bad_quality_neither_fires_nor_resolves() {
    let mut h = H::new(vec![rule("r", CompareOp::Gt, 10.0)]);
    assert!(h.bad(0.0, 100.0).is_empty());
    assert!(h.tick(5.0).is_empty());
    assert_eq!(kinds(&h.level(6.0, 100.0)), [FIRED]);
    assert!(h.bad(7.0, 0.0).is_empty(), "a BAD zero does not clear the alert");
    assert_eq!(h.e.open_alerts().len(), 1);
    // UNCERTAIN is evidence.
    let ev = h.frame(
        8.0,
        "tank",
        &[("level", proto::Value::float(0.0), Quality::Uncertain)],
    );
    assert_eq!(kinds(&ev), [RESOLVED]);
}

#[test]
fn stale_data_raises_and_clears_its_own_alert() {
    let mut h = H::new(vec![Rule {
        stale_after: Duration::from_secs(30),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.level(0.0, 1.0).is_empty());
    assert!(h.tick(29.0).is_empty());
    // BAD samples do not count as data.
    assert!(h.bad(20.0, 1.0).is_empty());
    let ev = h.tick(30.5);
    assert_eq!(kinds(&ev), [FIRED]);
    assert_eq!(ev[0].attributes["alert_kind"], "stale");
    assert_eq!(
        ev[0].level,
        proto::AlertLevel::Critical as i32,
        "at the rule's level"
    );
    assert!(ev[0].message.contains("stale data"), "{}", ev[0].message);
    assert!(h.tick(40.0).is_empty(), "raised once");
    let ev = h.level(41.0, 1.0);
    assert_eq!(
        summary(&ev),
        [(RESOLVED, "r".into(), Some("data_received".into()))]
    );
}

#[test]
fn a_tag_never_seen_goes_stale_from_the_start() {
    let mut h = H::new(vec![Rule {
        stale_after: Duration::from_secs(30),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.tick(29.0).is_empty());
    let ev = h.tick(30.0);
    assert_eq!(kinds(&ev), [FIRED]);
    assert_eq!(ev[0].value, None, "no value was ever seen");
    // Its state (no value) survives a restart.
    let state = h.persisted();
    let mut h2 = H::resume(
        vec![Rule {
            stale_after: Duration::from_secs(30),
            ..rule("r", CompareOp::Gt, 10.0)
        }],
        state,
        0,
    );
    assert_eq!(h2.e.open_alerts().len(), 1);
    assert_eq!(kinds(&h2.level(31.0, 1.0)), [RESOLVED]);
}

#[test]
fn expressions_over_several_tags() {
    let mut h = H::new(vec![expr_rule("temp_in - temp_out > 5 and pump_on")]);
    let f = |a: f64, b: f64, p: bool| {
        vec![
            ("temp_in", proto::Value::float(a), Quality::Good),
            ("temp_out", proto::Value::float(b), Quality::Good),
            ("pump_on", proto::Value::bool(p), Quality::Good),
        ]
    };
    assert!(h.frame(0.0, "hx", &f(30.0, 20.0, false)).is_empty());
    let ev = h.frame(1.0, "hx", &f(30.0, 20.0, true));
    assert_eq!(kinds(&ev), [FIRED]);
    assert_eq!(
        ev[0].attributes["expression"],
        "temp_in - temp_out > 5 and pump_on"
    );
    assert_eq!(ev[0].tag, "");
    // One tag changes on its own: evaluated with the others' last values.
    let ev = h.frame(
        2.0,
        "hx",
        &[("temp_out", proto::Value::float(26.0), Quality::Good)],
    );
    assert_eq!(kinds(&ev), [RESOLVED]);
    // A BAD input stops evaluation.
    let ev = h.frame(3.0, "hx", &[("temp_out", proto::Value::float(0.0), Quality::Bad)]);
    assert!(ev.is_empty());
    assert_eq!(h.e.stats.evaluations, 3);
}

#[test]
fn expression_results_are_compared_with_op_and_threshold() {
    let mut r = expr_rule("abs(temp_in - temp_out)");
    r.op = CompareOp::Gte;
    r.threshold = 10.0;
    let mut h = H::new(vec![r]);
    let two = |a: f64, b: f64| {
        vec![
            ("temp_in", proto::Value::float(a), Quality::Good),
            ("temp_out", proto::Value::float(b), Quality::Good),
        ]
    };
    assert!(h.frame(0.0, "hx", &two(20.0, 29.0)).is_empty());
    assert_eq!(kinds(&h.frame(1.0, "hx", &two(20.0, 30.0))), [FIRED]);
}

#[test]
fn active_alerts_expire_after_auto_resolve_after() {
    let mut h = H::new(vec![Rule {
        auto_resolve_after: Duration::from_secs(24 * 3600),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert_eq!(kinds(&h.level(0.0, 11.0)), [FIRED]);
    assert!(h.tick(86_399.0).is_empty());
    let ev = h.tick(86_400.0);
    // Resolved as expired; the condition still holds, so a new alert opens.
    assert_eq!(summary(&ev)[0], (RESOLVED, "r".into(), Some("expired".into())));
    assert_eq!(kinds(&ev)[1..], [FIRED]);
}

#[test]
fn acknowledge_once_with_who() {
    let mut h = H::new(vec![rule("r", CompareOp::Gt, 10.0)]);
    let id = h.level(0.0, 11.0)[0].event_id.clone();
    assert!(matches!(
        h.e.acknowledge("nope", "ann", at(1.0)),
        Err(ActionError::UnknownAlert(_))
    ));
    let a = h.e.acknowledge(&id, "ann", at(1.0)).unwrap();
    assert_eq!(a.acked_by.as_deref(), Some("ann"));
    let ev = h.take().events;
    assert_eq!(kinds(&ev), [EventKind::AlertAcknowledged]);
    assert_eq!(ev[0].attributes["alert_id"], id);
    assert_eq!(ev[0].attributes["by"], "ann");
    assert!(matches!(
        h.e.acknowledge(&id, "bob", at(2.0)),
        Err(ActionError::AlreadyAcknowledged { by, .. }) if by == "ann"
    ));
    // Acknowledged is still open; resolving closes it.
    assert_eq!(h.e.open_alerts().len(), 1);
    assert_eq!(kinds(&h.level(3.0, 1.0)), [RESOLVED]);
    assert!(h.e.open_alerts().is_empty());
}

#[test]
fn suppression_closes_open_alerts_and_mutes_the_rule() {
    let mut h = H::new(vec![rule("r", CompareOp::Gt, 10.0)]);
    let id = h.level(0.0, 11.0)[0].event_id.clone();
    let closed =
        h.e.suppress("r", "ann", Some(at(100.0)), Some("maintenance".into()), at(1.0))
            .unwrap();
    assert_eq!(closed.len(), 1);
    let ev = h.take().events;
    assert_eq!(kinds(&ev), [EventKind::AlertSuppressed]);
    assert_eq!(ev[0].attributes["alert_id"], id);
    assert!(h.level(2.0, 50.0).is_empty(), "muted");
    assert!(matches!(
        h.e.suppress("nope", "ann", None, None, at(3.0)),
        Err(ActionError::UnknownRule(_))
    ));
    assert!(h.e.unsuppress("r", at(4.0)).unwrap());
    assert_eq!(kinds(&h.level(5.0, 50.0)), [FIRED]);
    // A timed suppression ends by itself on a tick.
    h.e.suppress("r", "ann", Some(at(10.0)), None, at(6.0)).unwrap();
    h.take();
    assert!(h.tick(9.0).is_empty());
    assert!(h.level(9.5, 50.0).is_empty());
    // The tick that ends it re-applies the last condition (true): fired.
    assert_eq!(kinds(&h.tick(10.5)), [FIRED]);
    assert!(h.level(11.0, 50.0).is_empty());
}

#[test]
fn a_removed_rule_resolves_its_alerts_and_drops_its_state() {
    let mut h = H::new(vec![
        rule("r", CompareOp::Gt, 10.0),
        rule("keep", CompareOp::Gt, 10.0),
    ]);
    assert_eq!(kinds(&h.level(0.0, 11.0)), [FIRED, FIRED]);
    h.e.reload(RuleSet::new(vec![rule("keep", CompareOp::Gt, 20.0)]), at(1.0));
    let ch = h.take();
    assert_eq!(
        summary(&ch.events),
        [(RESOLVED, "r".into(), Some("rule_removed".into()))]
    );
    assert_eq!(ch.state, vec![(b"rule/r".to_vec(), None)]);
    // The kept rule keeps its alert and uses its new threshold.
    assert_eq!(h.e.open_alerts().len(), 1);
    assert_eq!(
        kinds(&h.level(2.0, 15.0)),
        [RESOLVED],
        "the new threshold applies"
    );
}

#[test]
fn a_restart_resumes_pending_and_active_without_refiring() {
    let hold = Rule {
        hold: Duration::from_secs(10),
        ..rule("r", CompareOp::Gt, 10.0)
    };
    // Uninterrupted run: pending at 0 s, fired at 10 s.
    let mut a = H::new(vec![hold.clone()]);
    assert!(a.level(0.0, 11.0).is_empty());
    let state = a.persisted();
    let fired = a.level(10.0, 11.0);
    assert_eq!(kinds(&fired), [FIRED]);

    // Crash after the pending commit: the restarted engine keeps the pending
    // start and fires the same alert (same id) at the same point.
    let mut b = H::resume(vec![hold.clone()], state, 1);
    assert!(b.level(5.0, 11.0).is_empty());
    let again = b.level(10.0, 11.0);
    assert_eq!(kinds(&again), [FIRED]);
    assert_eq!(
        again[0].event_id, fired[0].event_id,
        "same alert id after the restart"
    );

    // Crash after the fire commit: no re-fire, and it resolves normally.
    let state = b.persisted();
    let mut c = H::resume(vec![hold], state, 2);
    assert!(c.level(11.0, 12.0).is_empty(), "already active: not fired again");
    assert_eq!(c.e.open_alerts().len(), 1);
    assert!(c.level(12.0, 1.0).is_empty());
    let ev = c.level(22.0, 1.0);
    assert_eq!(kinds(&ev), [RESOLVED]);
    assert_eq!(ev[0].attributes["alert_id"], fired[0].event_id);
}

#[test]
fn replaying_the_same_frames_gives_the_same_events_and_ids() {
    let rules = || {
        vec![
            Rule {
                hold: Duration::from_secs(2),
                ..rule("a", CompareOp::Gt, 10.0)
            },
            range(CompareOp::NotBetween, 0.0, 20.0),
        ]
    };
    let values = [1.0, 11.0, 12.0, 25.0, 25.0, 3.0, 3.0, 3.0, 30.0];
    let run = || {
        let mut h = H::new(rules());
        let mut all = Vec::new();
        for (i, v) in values.iter().enumerate() {
            all.extend(h.level(i as f64 * 1.5, *v));
        }
        all
    };
    let first = run();
    let second = run();
    assert!(first.len() >= 4, "{:?}", summary(&first));
    assert_eq!(first, second);
}

#[test]
fn a_bad_sample_makes_the_condition_unknown_until_the_next_good_one() {
    let mut h = H::new(vec![Rule {
        hold: Duration::from_secs(10),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert!(h.level(0.0, 11.0).is_empty(), "pending");
    assert!(h.bad(5.0, 11.0).is_empty());
    assert!(
        h.tick(12.0).is_empty(),
        "no tick completes the hold on a disowned value"
    );
    // The pending period itself is kept: the next good sample fires.
    assert_eq!(kinds(&h.level(13.0, 11.0)), [FIRED]);
}

#[test]
fn a_nan_expression_result_is_no_evidence() {
    let mut r = expr_rule("temp_in / temp_out");
    r.op = CompareOp::Lt;
    r.threshold = 100.0;
    let mut h = H::new(vec![r]);
    let two = |a: f64, b: f64| {
        vec![
            ("temp_in", proto::Value::float(a), Quality::Good),
            ("temp_out", proto::Value::float(b), Quality::Good),
        ]
    };
    assert_eq!(kinds(&h.frame(0.0, "hx", &two(1.0, 1.0))), [FIRED]);
    // 0/0 is NaN: neither true nor false, so the alert stays open.
    assert!(h.frame(1.0, "hx", &two(0.0, 0.0)).is_empty());
    assert!(h.tick(5.0).is_empty());
    assert_eq!(h.e.open_alerts().len(), 1);
    assert_eq!(h.e.stats.eval_errors, 1);
    // 1/0 is +inf: a real value, and not below 100.
    assert_eq!(kinds(&h.frame(6.0, "hx", &two(1.0, 0.0))), [RESOLVED]);
}

#[test]
fn a_reload_that_changes_the_threshold_forgets_the_old_verdict() {
    let hold = |t: f64| Rule {
        hold: Duration::from_secs(5),
        ..rule("r", CompareOp::Gt, t)
    };
    let mut h = H::new(vec![hold(50.0)]);
    assert!(h.level(0.0, 60.0).is_empty(), "pending at GT 50");
    h.e.reload(RuleSet::new(vec![hold(100.0)]), at(1.0));
    h.take();
    // 60 > 100 was never evaluated: no tick may fire on the GT 50 verdict.
    assert!(h.tick(6.0).is_empty());
    assert!(
        h.level(7.0, 60.0).is_empty(),
        "false under GT 100: pending cancelled"
    );
    assert!(h.tick(20.0).is_empty());
}

#[test]
fn a_bad_sample_does_not_end_a_stale_alert() {
    let mut h = H::new(vec![Rule {
        stale_after: Duration::from_secs(30),
        ..rule("r", CompareOp::Gt, 10.0)
    }]);
    assert_eq!(kinds(&h.tick(30.0)), [FIRED]);
    assert!(h.bad(31.0, 1.0).is_empty(), "BAD is not data");
    assert_eq!(h.e.open_alerts().len(), 1);
    assert_eq!(kinds(&h.level(32.0, 1.0)), [RESOLVED]);
}

#[test]
fn alerts_of_one_rule_never_share_an_id_even_at_the_same_instant() {
    let mut h = H::new(vec![rule("r", CompareOp::Gt, 10.0)]);
    let first = h.level(1.0, 11.0);
    assert_eq!(kinds(&first), [FIRED]);
    // Suppress and lift at the same instant; the tick re-fires on the same
    // sample (same seq, same time): only the fire counter tells them apart.
    h.e.suppress("r", "ann", None, None, at(1.0)).unwrap();
    h.e.unsuppress("r", at(1.0)).unwrap();
    h.take();
    let second = h.tick(1.0);
    assert_eq!(kinds(&second), [FIRED]);
    assert_ne!(first[0].event_id, second[0].event_id);
}
