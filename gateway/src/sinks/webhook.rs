//! `type = "webhook"`: alert notifications as HTTP POSTs of JSON, from the
//! sink's own cursor.
//!
//! One request per alert event (`ALERT_FIRED`, `_RESOLVED`,
//! `_ACKNOWLEDGED`, `_SUPPRESSED`) at or above `min_level` and among
//! `events`; every other frame is acknowledged without a request. Body:
//!
//! ```json
//! {"event_id": "…", "event": "fired", "alert_id": "…", "rule": "tank_high",
//!  "device": "tank", "tag": "level", "level": "CRITICAL", "message": "…",
//!  "value": 93.5, "at": "2026-11-23T10:00:00.000Z", "at_ns": 1795…,
//!  "gateway_id": "line-3", "attributes": {"threshold_value": "90", …}}
//! ```
//!
//! The first start subscribes at the head (no replay of older alerts).
//! Delivery is at-least-once: the cursor moves past an event only after
//! the receiver answered 2xx, so a receiver that is down gets every event,
//! in order, once it is back (retries back off from 250 ms to
//! `max_retry_interval`); after a crash the event in flight may come twice
//! — receivers deduplicate by `event_id` (also sent as the
//! `Idempotency-Key` header). A 4xx other than 408/429 means the receiver
//! refuses that event for good (`Retry-After` is not read: 429 and 5xx
//! are retried with the backoff): it is counted
//! (`gateway_notifications_total{result="rejected"}`), logged and skipped.

use std::time::Duration;

use config::WebhookSinkConfig;
use proto::{EventFrame, EventKind, FrameType, Message};
use serde_json::json;
use tracing::{info, warn};

use super::{SinkContext, SinkError};
use crate::metrics::{SinkLabel, SinkResultLabels};
use crate::status::{lock, rfc3339, value_json};

fn event_name(k: EventKind) -> Option<config::WebhookEvent> {
    use config::WebhookEvent as W;
    Some(match k {
        EventKind::AlertFired => W::Fired,
        EventKind::AlertResolved => W::Resolved,
        EventKind::AlertAcknowledged => W::Acknowledged,
        EventKind::AlertSuppressed => W::Suppressed,
        _ => return None,
    })
}

fn level_rank(l: config::AlertLevel) -> i32 {
    crate::alerts::events::proto_level(l) as i32
}

/// The JSON body for `e`, if the sink wants it.
fn body(cfg: &WebhookSinkConfig, gateway_id: &str, e: &EventFrame) -> Option<serde_json::Value> {
    let kind = EventKind::try_from(e.kind).ok()?;
    let name = event_name(kind)?;
    if !cfg.events.contains(&name) || e.level < level_rank(cfg.min_level) {
        return None;
    }
    let alert_id = match kind {
        EventKind::AlertFired => e.event_id.clone(),
        _ => e.attributes.get("alert_id").cloned().unwrap_or_default(),
    };
    let level = proto::AlertLevel::try_from(e.level).map_or("UNSPECIFIED", |l| l.as_str_name());
    Some(json!({
        "event_id": e.event_id,
        "event": name.as_str(),
        "alert_id": alert_id,
        "rule": e.rule_id,
        "device": e.device_id,
        "tag": e.tag,
        "level": level,
        "message": e.message,
        "value": e.value.as_ref().map_or(serde_json::Value::Null, value_json),
        "at": rfc3339(e.event_ts_ns),
        "at_ns": e.event_ts_ns,
        "gateway_id": gateway_id,
        "attributes": e.attributes,
    }))
}

enum Delivery {
    Sent,
    /// Refused for good (4xx): skip it.
    Rejected(String),
    /// Try again later.
    Failed(String),
}

async fn post(
    client: &reqwest::Client,
    cfg: &WebhookSinkConfig,
    event_id: &str,
    body: &serde_json::Value,
) -> Delivery {
    let mut req = client
        .post(&cfg.url)
        .header("content-type", "application/json")
        .header("idempotency-key", event_id)
        .body(body.to_string());
    for (k, v) in &cfg.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Delivery::Sent,
        Ok(r) => {
            let code = r.status().as_u16();
            let text: String = r.text().await.unwrap_or_default().chars().take(200).collect();
            if (400..500).contains(&code) && code != 408 && code != 429 {
                Delivery::Rejected(format!("HTTP {code}: {text}"))
            } else {
                Delivery::Failed(format!("HTTP {code}: {text}"))
            }
        }
        Err(e) if e.is_timeout() => Delivery::Failed(format!("timeout: {e}")),
        Err(e) => Delivery::Failed(format!("{e}")),
    }
}

pub async fn run(mut ctx: SinkContext, cfg: WebhookSinkConfig) -> Result<(), SinkError> {
    // A URL the client cannot use would fail every attempt and block the
    // cursor: refuse it here (logged, restarted with backoff) instead.
    reqwest::Url::parse(&cfg.url).map_err(|e| SinkError::Setup(format!("webhook url {:?}: {e}", cfg.url)))?;
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .build()
        .map_err(|e| SinkError::Setup(format!("HTTP client: {e}")))?;
    let gateway_id = ctx.config.borrow().gateway.gateway_id.clone();
    // A new webhook starts at the head: it notifies from now on, instead of
    // replaying the WAL's history of alerts (up to `[wal] max_age`).
    let mut sub = ctx.bus.subscribe(&ctx.name, Some(frame_bus::StartFrom::Latest))?;
    let label = SinkLabel {
        sink: ctx.name.clone(),
    };
    let result = |r: &str| SinkResultLabels {
        sink: ctx.name.clone(),
        result: r.into(),
    };
    ctx.metrics.sink_up.get_or_create(&label).set(1);
    info!(sink = ctx.name, url = cfg.url, "webhook sink started");
    loop {
        let frames = tokio::select! {
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(()),
            f = sub.recv_batch(256) => f?,
        };
        for f in frames {
            let event = (f.frame_type == FrameType::Event as i32)
                .then(|| EventFrame::decode(f.data.clone()))
                .transpose();
            let body = match event {
                Ok(Some(e)) => body(&cfg, &gateway_id, &e).map(|b| (e.event_id, b)),
                Ok(None) => None,
                Err(e) => {
                    warn!(sink = ctx.name, seq = f.sequence_id, error = %e, "undecodable event frame skipped");
                    ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                    None
                }
            };
            if let Some((event_id, body)) = body {
                let mut delay = Duration::from_millis(250);
                let mut failing = false;
                loop {
                    match post(&client, &cfg, &event_id, &body).await {
                        Delivery::Sent => {
                            ctx.metrics.notifications.get_or_create(&result("sent")).inc();
                            ctx.metrics.sink_written.get_or_create(&label).inc();
                            lock(&ctx.state).written += 1;
                            if failing {
                                info!(sink = ctx.name, "webhook receiver reachable again");
                                ctx.metrics.sink_up.get_or_create(&label).set(1);
                                lock(&ctx.state).last_error = None;
                            }
                            break;
                        }
                        Delivery::Rejected(why) => {
                            if failing {
                                // It answered: reachable again.
                                ctx.metrics.sink_up.get_or_create(&label).set(1);
                                lock(&ctx.state).last_error = None;
                            }
                            ctx.metrics.notifications.get_or_create(&result("rejected")).inc();
                            ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                            warn!(
                                sink = ctx.name,
                                event_id,
                                seq = f.sequence_id,
                                error = why,
                                "webhook receiver refused the event; skipped"
                            );
                            break;
                        }
                        Delivery::Failed(why) => {
                            ctx.metrics.notifications.get_or_create(&result("failed")).inc();
                            ctx.metrics.sink_failures.get_or_create(&label).inc();
                            if !failing {
                                warn!(
                                    sink = ctx.name,
                                    event_id,
                                    error = why,
                                    "webhook delivery failed; retrying with backoff (events wait in the WAL)"
                                );
                                ctx.metrics.sink_up.get_or_create(&label).set(0);
                                failing = true;
                            }
                            lock(&ctx.state).last_error = Some(why);
                            tokio::select! {
                                _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(()),
                                _ = tokio::time::sleep(delay) => {}
                            }
                            ctx.metrics.sink_retries.get_or_create(&label).inc();
                            delay = (delay * 2).min(cfg.max_retry_interval);
                        }
                    }
                }
            }
            sub.ack(f.sequence_id)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: config::AlertLevel) -> WebhookSinkConfig {
        WebhookSinkConfig {
            url: "http://127.0.0.1:1/x".into(),
            min_level: min,
            events: vec![config::WebhookEvent::Fired, config::WebhookEvent::Resolved],
            headers: Default::default(),
            timeout: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(1),
        }
    }

    fn event(kind: EventKind, level: proto::AlertLevel) -> EventFrame {
        EventFrame {
            event_id: "e1".into(),
            kind: kind as i32,
            level: level as i32,
            ..EventFrame::default()
        }
    }

    #[test]
    fn filters_by_level_and_event_kind() {
        let c = cfg(config::AlertLevel::Critical);
        assert!(body(
            &c,
            "gw",
            &event(EventKind::AlertFired, proto::AlertLevel::Critical)
        )
        .is_some());
        assert!(body(&c, "gw", &event(EventKind::AlertFired, proto::AlertLevel::Fatal)).is_some());
        assert!(body(
            &c,
            "gw",
            &event(EventKind::AlertFired, proto::AlertLevel::Warning)
        )
        .is_none());
        // Not among `events`, and not an alert event at all:
        assert!(body(
            &c,
            "gw",
            &event(EventKind::AlertAcknowledged, proto::AlertLevel::Fatal)
        )
        .is_none());
        assert!(body(&c, "gw", &event(EventKind::Audit, proto::AlertLevel::Fatal)).is_none());
        let b = body(&c, "gw", &event(EventKind::AlertFired, proto::AlertLevel::Fatal)).unwrap();
        assert_eq!(b["event"], "fired");
        assert_eq!(b["alert_id"], "e1");
        assert_eq!(b["level"], "FATAL");
        assert_eq!(b["gateway_id"], "gw");
    }
}
