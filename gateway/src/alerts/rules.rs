//! Rules as the engine evaluates them: compiled from `[[alert_rules]]`,
//! indexed by the (device, tag) pairs they read.

use std::collections::HashMap;
use std::time::Duration;

use config::expression::Expression;
use config::{AlertLevel, AlertRuleConfig, AlertsConfig, CompareOp, Config};

/// One enabled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub device: String,
    /// The rule's tag (`alert_history.tag_id`); for an expression rule
    /// without `tag`, none.
    pub tag: Option<String>,
    pub expr: Option<Expression>,
    /// Tags read: the tag, or the expression's references (same order as
    /// `Expression::eval` takes them).
    pub inputs: Vec<String>,
    pub op: CompareOp,
    pub threshold: f64,
    pub low: f64,
    pub high: f64,
    pub level: AlertLevel,
    pub eval_interval: Duration,
    /// `eval_duration`: how long the condition must hold to fire, and be
    /// false to resolve (zero: at once).
    pub hold: Duration,
    pub cooldown: Duration,
    /// Zero: never stale.
    pub stale_after: Duration,
    /// Zero: never expire.
    pub auto_resolve_after: Duration,
}

impl Rule {
    /// Builds the engine's form of a validated rule (`None` for a rule that
    /// is disabled, or whose expression no longer compiles against its device).
    pub fn from_config(r: &AlertRuleConfig, alerts: &AlertsConfig, config: &Config) -> Option<Rule> {
        if !r.enabled {
            return None;
        }
        let device = config.device(&r.device)?;
        let expr = match &r.condition_expression {
            Some(src) => {
                let kinds = |name: &str| device.tag(name).and_then(|t| config::expr_kind(t.data_type));
                match Expression::compile(src, &kinds) {
                    Ok(x) => Some(x),
                    Err(e) => {
                        tracing::error!(rule = r.name, error = %e, "alert rule expression does not compile; rule skipped");
                        return None;
                    }
                }
            }
            None => None,
        };
        let inputs = match (&expr, &r.tag) {
            (Some(x), _) => x.references().map(str::to_string).collect(),
            (None, Some(t)) => vec![t.clone()],
            (None, None) => return None,
        };
        Some(Rule {
            name: r.name.clone(),
            device: r.device.clone(),
            tag: r.tag.clone(),
            expr,
            inputs,
            op: r.effective_op(),
            threshold: r.effective_threshold().unwrap_or(0.0),
            low: r.threshold_low.unwrap_or(f64::NEG_INFINITY),
            high: r.threshold_high.unwrap_or(f64::INFINITY),
            level: r.level,
            eval_interval: r.eval_interval,
            hold: r.eval_duration.unwrap_or(Duration::ZERO),
            cooldown: r.cooldown_duration,
            stale_after: r.stale_after.unwrap_or(alerts.stale_after),
            auto_resolve_after: alerts.auto_resolve_after,
        })
    }

    /// Whether `other` judges its inputs the same way (op, thresholds,
    /// expression): a reload that changes any of them forgets the last
    /// evaluated condition.
    pub fn same_condition(&self, other: &Rule) -> bool {
        self.op == other.op
            && self.threshold.to_bits() == other.threshold.to_bits()
            && self.low.to_bits() == other.low.to_bits()
            && self.high.to_bits() == other.high.to_bits()
            && self.expr.as_ref().map(|x| x.source()) == other.expr.as_ref().map(|x| x.source())
    }

    /// The rule's comparison. Equality is exact (the value and threshold
    /// are both f64); BETWEEN includes both bounds, NOT_BETWEEN excludes them.
    pub fn holds(&self, v: f64) -> bool {
        if v.is_nan() {
            return false;
        }
        let t = self.threshold;
        match self.op {
            CompareOp::Gt => v > t,
            CompareOp::Lt => v < t,
            CompareOp::Gte => v >= t,
            CompareOp::Lte => v <= t,
            CompareOp::Eq => v == t,
            CompareOp::Ne => v != t,
            CompareOp::Between => self.low <= v && v <= self.high,
            CompareOp::NotBetween => v < self.low || v > self.high,
        }
    }

    /// The threshold as the `threshold_value` attribute (the low bound for
    /// range operators; both go into the message).
    pub fn threshold_text(&self) -> String {
        if self.op.is_range() {
            format!("{}..{}", self.low, self.high)
        } else {
            self.threshold.to_string()
        }
    }

    /// What the rule watches, for messages: `tank.level` or the expression.
    pub fn subject(&self) -> String {
        match (&self.expr, &self.tag) {
            (Some(x), _) => format!("{}: {}", self.device, x.source()),
            (None, Some(t)) => format!("{}.{t}", self.device),
            (None, None) => self.device.clone(),
        }
    }
}

/// All enabled rules, with an index from (device, tag) to the rules reading it.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// device → tag → (rule index, input index).
    by_input: HashMap<String, HashMap<String, Vec<(usize, usize)>>>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut by_input: HashMap<String, HashMap<String, Vec<(usize, usize)>>> = HashMap::new();
        for (ri, r) in rules.iter().enumerate() {
            for (ii, tag) in r.inputs.iter().enumerate() {
                by_input
                    .entry(r.device.clone())
                    .or_default()
                    .entry(tag.clone())
                    .or_default()
                    .push((ri, ii));
            }
        }
        RuleSet { rules, by_input }
    }

    pub fn from_config(config: &Config) -> RuleSet {
        let g = &config.gateway;
        RuleSet::new(
            g.alert_rules
                .iter()
                .filter_map(|r| Rule::from_config(r, &g.alerts, config))
                .collect(),
        )
    }

    /// (rule index, input index) of every rule reading `device`.`tag`.
    pub fn readers(&self, device: &str, tag: &str) -> &[(usize, usize)] {
        self.by_input
            .get(device)
            .and_then(|tags| tags.get(tag))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether any rule reads a tag of `device` (frames of other devices are skipped whole).
    pub fn watches_device(&self, device: &str) -> bool {
        self.by_input.contains_key(device)
    }
}
