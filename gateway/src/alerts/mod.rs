//! The alert engine: evaluates `[[alert_rules]]` on the samples of the frame
//! bus and publishes what happens to alerts as `EventFrame`s on the same bus
//! (`ALERT_FIRED`, `_RESOLVED`, `_ACKNOWLEDGED`, `_SUPPRESSED`), so every
//! sink sees them: the PostgreSQL store writes `alert_history`, the InfluxDB
//! sink `alert_events`, webhooks notify.
//!
//! # Guarantees
//!
//! - **Own cursor** (consumer `alerts`), started at the head the first time
//!   (history in the WAL is not re-evaluated), and only once there is a
//!   rule: a gateway without rules does not consume (its WAL is trimmed by
//!   its sinks and limits only).
//! - **Exactly-once events.** Every step that changes a rule's persisted
//!   state is one [`frame_bus::FrameBus::commit`]: the events it produced,
//!   the rule states and the cursor in one RocksDB write batch. After a
//!   crash the engine resumes with the state and cursor of its last commit,
//!   so an alert that was active stays active (no re-fire), a pending period
//!   keeps its start, and the frames after the commit are evaluated again —
//!   producing the events that were lost with the crash, with the same ids
//!   (name-based UUIDs of rule, gateway, triggering seq and time).
//! - Frames that change no state are acknowledged the cheap way (cursor
//!   persisted lazily); replaying them changes nothing.
//! - Operator actions (acknowledge, suppress, unsuppress) are requests to
//!   this task, applied and committed in order with the frames; each also
//!   publishes an `AUDIT` event in the same commit.
//!
//! # State format
//!
//! Column family `state`, keys `alerts\0rule/<rule name>`, values JSON
//! [`engine::Persisted`]. A rule back to normal with no history needed has
//! no key.

pub mod engine;
pub mod events;
pub mod rules;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use frame_bus::{BusError, Commit, FrameBus, StartFrom};
use proto::{DataFrame, FrameType, Message};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tracing::{info, warn};

use crate::audit::{self, Actor};
use crate::metrics::{LevelLabel, Metrics};
use engine::{ActionError, AlertView, Changes, Engine, RuleView};
use events::Alert;
use rules::RuleSet;

/// The engine's consumer name on the bus.
pub const CONSUMER: &str = "alerts";

/// Frames behind the head above which the engine is replaying, not
/// following: ticks wait until it has caught up.
const REPLAY_BACKLOG: u64 = 4096;

/// How often time-based transitions are checked (each rule acts on its own
/// `eval_interval`, rounded up to this).
const TICK: Duration = Duration::from_secs(1);

/// An operator action, or a question about the engine's state.
pub enum Request {
    List(oneshot::Sender<Vec<AlertView>>),
    Rules(oneshot::Sender<Vec<RuleView>>),
    Acknowledge {
        id: String,
        by: String,
        actor: Actor,
        reply: oneshot::Sender<Result<Alert, RequestError>>,
    },
    Suppress {
        rule: String,
        by: String,
        duration: Option<Duration>,
        reason: Option<String>,
        actor: Actor,
        reply: oneshot::Sender<Result<Vec<Alert>, RequestError>>,
    },
    Unsuppress {
        rule: String,
        by: String,
        actor: Actor,
        reply: oneshot::Sender<Result<bool, RequestError>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error("the action could not be recorded on the frame bus: {0}")]
    Bus(#[from] BusError),
}

/// Sends requests to the running engine (held by the HTTP API).
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
}

impl Handle {
    /// A handle and the receiver the engine task reads from.
    pub fn new() -> (Handle, Arc<Mutex<mpsc::Receiver<Request>>>) {
        let (tx, rx) = mpsc::channel(64);
        (Handle { tx }, Arc::new(Mutex::new(rx)))
    }

    /// Sends `make(reply)` and waits for the answer; `None` when the engine
    /// does not answer within 10 s (restarting after a failure, shutting down).
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        let exchange = async {
            self.tx.send(make(reply)).await.ok()?;
            rx.await.ok()
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .ok()
            .flatten()
    }
}

/// What the engine task needs.
#[derive(Clone)]
pub struct EngineContext {
    pub gateway_id: String,
    pub bus: FrameBus,
    pub metrics: Arc<Metrics>,
    pub config: watch::Receiver<Arc<config::Config>>,
    pub shutdown: watch::Receiver<bool>,
    pub requests: Arc<Mutex<mpsc::Receiver<Request>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("frame bus: {0}")]
    Bus(#[from] BusError),
}

fn now_ns() -> u64 {
    crate::now_ns()
}

/// Runs until shutdown (restarted by the supervisor on a bus error; it then
/// resumes from the last commit).
pub async fn run(mut ctx: EngineContext) -> Result<(), EngineError> {
    let mut requests = ctx.requests.clone().lock_owned().await;
    let bus = ctx.bus.clone();
    let config = ctx.config.borrow_and_update().clone();
    let rules = RuleSet::from_config(&config);
    // The engine is a consumer only once it has rules (or had them: its
    // cursor exists). Without, it must not acknowledge frames: a gateway
    // with no sink and no rule keeps its WAL history for `wal tail`.
    let known = bus.stats().consumers.iter().any(|c| c.name == CONSUMER);
    let mut sub = if known || !rules.rules.is_empty() {
        Some(bus.subscribe(CONSUMER, Some(StartFrom::Latest))?)
    } else {
        None
    };
    let persisted = engine::decode_state(bus.load_state(CONSUMER)?);
    let mut engine = Engine::new(&ctx.gateway_id, rules, persisted, now_ns());
    info!(
        rules = engine.rules().rules.len(),
        open_alerts = engine.open_alerts().len(),
        cursor = sub.as_ref().map(|s| s.position().saturating_sub(1)),
        "alert engine started"
    );
    let mut runner = Runner {
        bus: bus.clone(),
        metrics: ctx.metrics.clone(),
        subscribed: sub.is_some(),
    };
    runner.commit(&mut engine, None, vec![]).await?;
    runner.set_active(&engine);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(()),
            Some(req) = requests.recv() => runner.request(&mut engine, req).await?,
            Ok(()) = ctx.config.changed() => {
                let config = ctx.config.borrow_and_update().clone();
                engine.reload(RuleSet::from_config(&config), now_ns());
                info!(rules = engine.rules().rules.len(), "alert rules reloaded");
                if sub.is_none() && !engine.rules().rules.is_empty() {
                    sub = Some(bus.subscribe(CONSUMER, Some(StartFrom::Latest))?);
                    runner.subscribed = true;
                }
                runner.commit(&mut engine, None, vec![]).await?;
            }
            // Before the frames: under a steady stream of frames a later
            // branch would never be picked, and holds on quiet tags,
            // staleness and expiry would wait for a pause. But not while a
            // backlog is replayed (after a crash or a long stall): a tick
            // would move the clock to now, and the replayed frames would
            // be judged at today's time instead of their own.
            _ = tick.tick() => {
                let backlog = sub
                    .as_ref()
                    .map_or(0, |s| bus.head_seq().saturating_add(1).saturating_sub(s.position()));
                if backlog > REPLAY_BACKLOG {
                    continue;
                }
                engine.tick(now_ns());
                runner.commit(&mut engine, None, vec![]).await?;
            }
            frames = next_batch(&mut sub) => {
                let frames = frames?;
                let Some(last) = frames.last().map(|f| f.sequence_id) else { continue };
                if !engine.rules().rules.is_empty() {
                    for f in &frames {
                        if f.frame_type != FrameType::Data as i32 {
                            continue;
                        }
                        match DataFrame::decode(f.data.clone()) {
                            Ok(df) => engine.on_data(f.sequence_id, f.timestamp_ns, &df),
                            Err(e) => warn!(seq = f.sequence_id, error = %e, "alert engine: undecodable data frame skipped"),
                        }
                    }
                }
                runner.commit(&mut engine, Some(last).zip(sub.as_ref()), vec![]).await?;
            }
        }
    }
}

/// The next frames, or never without a subscription.
async fn next_batch(
    sub: &mut Option<frame_bus::Subscription>,
) -> Result<Vec<proto::FrameEnvelope>, BusError> {
    match sub {
        Some(s) => s.recv_batch(1024).await,
        None => std::future::pending().await,
    }
}

struct Runner {
    bus: FrameBus,
    metrics: Arc<Metrics>,
    /// Whether the engine is a bus consumer yet (see `run`).
    subscribed: bool,
}

impl Runner {
    /// Commits what the engine produced (plus `extra` events), with the
    /// cursor at `ack`; with nothing to commit, only acknowledges `ack`.
    async fn commit(
        &mut self,
        engine: &mut Engine,
        ack: Option<(u64, &frame_bus::Subscription)>,
        extra: Vec<proto::EventFrame>,
    ) -> Result<(), BusError> {
        self.record_stats(engine);
        let Changes { events, state } = engine.take();
        if events.is_empty() && state.is_empty() && extra.is_empty() {
            if let Some((seq, sub)) = ack {
                sub.ack(seq)?;
            }
            return Ok(());
        }
        let publish: Vec<(FrameType, Vec<u8>)> = events
            .iter()
            .chain(&extra)
            .map(|e| (FrameType::Event, e.encode_to_vec()))
            .collect();
        if !self.subscribed {
            // No rule ever ran, so there is no state: only audit events of
            // refused actions can come here.
            if !publish.is_empty() {
                self.bus.publish_batch(publish).await?;
            }
            return Ok(());
        }
        let commit = Commit {
            ack: ack.map(|(s, _)| s),
            state,
            publish,
        };
        // No retry in place: a write that reported an error may still have
        // reached RocksDB's WAL (see frame-bus's writer), and sending it
        // again would publish its events twice. The task fails instead; the
        // supervisor restarts it (with backoff) from what is on disk, and
        // the frames after the stored cursor are evaluated again.
        if let Err(e) = self.bus.commit(CONSUMER, commit).await {
            warn!(error = %e, "alert engine could not commit; restarting from its last commit (nothing is lost)");
            return Err(e);
        }
        self.set_active(engine);
        Ok(())
    }

    /// `gateway_alerts_active` from the engine's open alerts.
    fn set_active(&self, engine: &Engine) {
        let open = engine.open_by_level();
        for level in ["INFO", "WARNING", "CRITICAL", "FATAL"] {
            self.metrics
                .alerts_active
                .get_or_create(&LevelLabel { level: level.into() })
                .set(open.get(level).copied().unwrap_or(0));
        }
    }

    fn record_stats(&self, engine: &mut Engine) {
        let s = std::mem::take(&mut engine.stats);
        let m = &self.metrics;
        m.alert_evaluations.inc_by(s.evaluations);
        m.alert_eval_errors.inc_by(s.eval_errors);
        for (level, n) in s.fired {
            m.alerts_fired
                .get_or_create(&LevelLabel { level: level.into() })
                .inc_by(n);
        }
        for (level, n) in s.resolved {
            m.alerts_resolved
                .get_or_create(&LevelLabel { level: level.into() })
                .inc_by(n);
        }
    }

    /// Applies one request. A request whose HTTP caller already gave up
    /// (timed out) is skipped, so a 503 answer means "not applied". A bus
    /// error while committing the action is returned: the task restarts
    /// from its last commit, so memory never runs ahead of the disk.
    async fn request(&mut self, engine: &mut Engine, req: Request) -> Result<(), BusError> {
        let abandoned = match &req {
            Request::List(r) => r.is_closed(),
            Request::Rules(r) => r.is_closed(),
            Request::Acknowledge { reply, .. } => reply.is_closed(),
            Request::Suppress { reply, .. } => reply.is_closed(),
            Request::Unsuppress { reply, .. } => reply.is_closed(),
        };
        if abandoned {
            warn!("alert request skipped: its HTTP caller gave up waiting (answered 503)");
            return Ok(());
        }
        let mut failure = None;
        let mut check = |outcome: &Result<(), RequestError>| {
            if let Err(RequestError::Bus(e)) = outcome {
                failure = Some(e.clone());
            }
        };
        match req {
            Request::List(reply) => {
                let _ = reply.send(engine.open_alerts());
            }
            Request::Rules(reply) => {
                let _ = reply.send(engine.rule_views());
            }
            Request::Acknowledge { id, by, actor, reply } => {
                let result = engine.acknowledge(&id, &by, now_ns());
                let outcome = self
                    .audited(
                        engine,
                        &actor,
                        "alert.acknowledge",
                        "alert",
                        &id,
                        result.as_ref().map(|_| ()),
                        vec![("by".into(), by)],
                    )
                    .await;
                check(&outcome);
                let _ = reply.send(outcome.and(result.map_err(RequestError::from)));
            }
            Request::Suppress {
                rule,
                by,
                duration,
                reason,
                actor,
                reply,
            } => {
                let until = duration
                    .map(|d| now_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
                let result = engine.suppress(&rule, &by, until, reason.clone(), now_ns());
                let mut details = vec![("by".to_string(), by)];
                if let Some(d) = duration {
                    details.push(("duration".into(), humantime::format_duration(d).to_string()));
                }
                if let Some(r) = reason {
                    details.push(("reason".into(), r));
                }
                let outcome = self
                    .audited(
                        engine,
                        &actor,
                        "alert_rule.suppress",
                        "alert_rule",
                        &rule,
                        result.as_ref().map(|_| ()),
                        details,
                    )
                    .await;
                check(&outcome);
                let _ = reply.send(outcome.and(result.map_err(RequestError::from)));
            }
            Request::Unsuppress {
                rule,
                by,
                actor,
                reply,
            } => {
                let result = engine.unsuppress(&rule, now_ns());
                let outcome = self
                    .audited(
                        engine,
                        &actor,
                        "alert_rule.unsuppress",
                        "alert_rule",
                        &rule,
                        result.as_ref().map(|_| ()),
                        vec![("by".into(), by)],
                    )
                    .await;
                check(&outcome);
                let _ = reply.send(outcome.and(result.map_err(RequestError::from)));
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Commits the action's effects with its `AUDIT` event. A refused action
    /// is audited too (outcome error) but changes nothing else. A permanent
    /// bus error is returned to the caller; the task itself goes on.
    #[allow(clippy::too_many_arguments)]
    async fn audited(
        &mut self,
        engine: &mut Engine,
        actor: &Actor,
        action: &str,
        resource_type: &str,
        resource: &str,
        result: Result<(), &ActionError>,
        details: Vec<(String, String)>,
    ) -> Result<(), RequestError> {
        let event = audit::event(
            actor,
            audit::Action {
                action,
                resource_type,
                resource,
                outcome: result.map_err(|e| e.to_string()),
                details,
            },
        );
        self.commit(engine, None, vec![event])
            .await
            .map_err(RequestError::from)
    }
}
