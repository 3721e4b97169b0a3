//! `type = "mqtt"`: bus frames published to an MQTT broker (northbound),
//! from the sink's own cursor.
//!
//! # Messages
//! - Samples, `mode = "sample"` (default): one message per sample on
//!   `topic` (`gateway/{gateway_id}/{device}/{tag}`):
//!   `{"device","name","value","quality","timestamp","ts_ns","unit","seq"}`
//!   (`error_code` when not 0, `raw_value` when scaled).
//! - `mode = "frame"`: one message per frame on `frame_topic`:
//!   `{"device","seq","timestamp","samples":[{"name","value",…}]}`.
//! - Events (alerts, device status, command results, audit) on
//!   `event_topic` with `{kind}` = `alert_fired`, `device_status_changed`,
//!   …, as the JSON of `gateway wal tail --json`.
//! - Birth and last will: `online` (retained, QoS 1) on `status_topic`
//!   after each connect; the broker publishes the retained `offline` will
//!   when the gateway vanishes, and a clean stop publishes it itself.
//!
//! # Delivery guarantee
//! At-least-once, in bus order. Messages go out in order on one
//! connection; the cursor moves past a frame only once the broker
//! confirmed every message of it and of all frames before it (PUBACK for
//! QoS 1, PUBCOMP for QoS 2; QoS 0 counts as confirmed once written to the
//! socket, so QoS 0 can lose what was in flight). At most `max_inflight`
//! messages are unconfirmed. When the connection drops, the sink
//! reconnects with backoff (250 ms doubling to `max_retry_interval`) on a
//! clean session and republishes from the cursor: the unconfirmed window
//! is published twice, nothing is skipped. While the broker is down the
//! WAL buffers. After a crash the same holds from the persisted cursor
//! (it trails the confirmations by at most the bus's cursor flush
//! interval, 100 ms).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use config::{MqttMessageMode, MqttSinkConfig, Qos};
use drivers::mqtt::client::{self, Event, Outgoing};
use proto::{EventKind, FrameEnvelope, FrameType};
use serde_json::{json, Value as Json};
use tracing::{info, warn};

use super::{SinkContext, SinkError};
use crate::metrics::SinkLabel;
use crate::status::{lock, quality_str, rfc3339, value_json};

/// One message handed to the connection, in publish order.
struct Entry {
    /// The frame this message completes (its last message, or the frame's
    /// placeholder when it produced no message).
    completes: Option<u64>,
    /// Packet id once the event loop sent it (0 for QoS 0).
    pkid: Option<u16>,
    /// Waits for its `Sent` event.
    unsent: bool,
    confirmed: bool,
}

/// Units of the configured tags, for the sample messages.
fn units(c: &config::Config) -> HashMap<(String, String), String> {
    let mut m = HashMap::new();
    for d in &c.devices {
        for t in &d.tags {
            if let Some(u) = &t.unit {
                m.insert((d.name.clone(), t.name.clone()), u.clone());
            }
        }
    }
    m
}

fn topic(template: &str, gateway_id: &str, device: &str, tag: &str, kind: &str) -> String {
    template
        .replace("{gateway_id}", gateway_id)
        .replace("{device}", device)
        .replace("{tag}", tag)
        .replace("{kind}", kind)
}

/// The messages of one frame (empty for frames this sink does not forward).
pub fn messages(
    cfg: &MqttSinkConfig,
    gateway_id: &str,
    units: &HashMap<(String, String), String>,
    f: &FrameEnvelope,
) -> Result<Vec<Outgoing>, String> {
    let mut out = Vec::new();
    match FrameType::try_from(f.frame_type) {
        Ok(FrameType::Data) => {
            let d = f.data_frame().map_err(|e| e.to_string())?;
            let sample = |s: &proto::Sample| {
                let mut j = json!({
                    "name": s.tag,
                    "value": s.value.as_ref().map_or(Json::Null, value_json),
                    "quality": quality_str(s.quality),
                    "timestamp": rfc3339(s.source_ts_ns),
                    "ts_ns": s.source_ts_ns,
                    "unit": units.get(&(d.device_id.clone(), s.tag.clone())),
                });
                if let Json::Object(m) = &mut j {
                    if s.error_code != 0 {
                        m.insert("error_code".into(), json!(s.error_code));
                    }
                    if let Some(r) = &s.raw_value {
                        m.insert("raw_value".into(), value_json(r));
                    }
                }
                j
            };
            match cfg.mode {
                MqttMessageMode::Sample => {
                    for s in &d.samples {
                        let mut j = sample(s);
                        if let Json::Object(m) = &mut j {
                            m.insert("device".into(), json!(d.device_id));
                            m.insert("seq".into(), json!(f.sequence_id));
                        }
                        out.push(Outgoing {
                            topic: topic(&cfg.topic, gateway_id, &d.device_id, &s.tag, ""),
                            payload: j.to_string().into_bytes(),
                            qos: cfg.qos,
                            retain: cfg.retain,
                        });
                    }
                }
                MqttMessageMode::Frame => {
                    if !d.samples.is_empty() {
                        let j = json!({
                            "device": d.device_id,
                            "seq": f.sequence_id,
                            "timestamp": rfc3339(f.timestamp_ns),
                            "samples": d.samples.iter().map(sample).collect::<Vec<_>>(),
                        });
                        out.push(Outgoing {
                            topic: topic(&cfg.frame_topic, gateway_id, &d.device_id, "", ""),
                            payload: j.to_string().into_bytes(),
                            qos: cfg.qos,
                            retain: cfg.retain,
                        });
                    }
                }
            }
        }
        Ok(FrameType::Event) => {
            let e = f.event_frame().map_err(|e| e.to_string())?;
            let kind = EventKind::try_from(e.kind)
                .map_or("unknown", |k| k.as_str_name())
                .to_ascii_lowercase();
            out.push(Outgoing {
                topic: topic(&cfg.event_topic, gateway_id, &e.device_id, &e.tag, &kind),
                payload: crate::frame_json::frame(f).to_string().into_bytes(),
                qos: cfg.qos,
                retain: cfg.retain_events,
            });
        }
        _ => {}
    }
    Ok(out)
}

enum End {
    Shutdown,
    Lost(String),
}

pub async fn run(mut ctx: SinkContext, cfg: MqttSinkConfig) -> Result<(), SinkError> {
    let gateway_id = ctx.config.borrow().gateway.gateway_id.clone();
    let conn = cfg
        .connection(&format!("{gateway_id}-{}", ctx.name))
        .map_err(SinkError::Setup)?;
    let label = SinkLabel {
        sink: ctx.name.clone(),
    };
    info!(
        sink = ctx.name,
        broker = format!("{}:{}", conn.address.host, conn.address.port),
        client_id = conn.client_id,
        qos = cfg.qos.0,
        "MQTT sink started"
    );
    let mut failures = 0u32;
    loop {
        match session(&mut ctx, &cfg, &conn, &gateway_id, &mut failures).await? {
            End::Shutdown => return Ok(()),
            End::Lost(why) => {
                failures += 1;
                ctx.metrics.sink_up.get_or_create(&label).set(0);
                ctx.metrics.mqtt_inflight.get_or_create(&label).set(0);
                ctx.metrics.sink_failures.get_or_create(&label).inc();
                let delay = client::backoff(failures, Duration::from_millis(250), cfg.max_retry_interval);
                if failures == 1 {
                    warn!(sink = ctx.name, error = why, "MQTT sink connection lost; frames wait in the WAL");
                }
                lock(&ctx.state).last_error = Some(why);
                tokio::select! {
                    _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                ctx.metrics.sink_retries.get_or_create(&label).inc();
            }
        }
    }
}

/// One connection: from connect until it drops or the gateway stops.
async fn session(
    ctx: &mut SinkContext,
    cfg: &MqttSinkConfig,
    conn: &config::MqttConnection,
    gateway_id: &str,
    failures: &mut u32,
) -> Result<End, SinkError> {
    let label = SinkLabel {
        sink: ctx.name.clone(),
    };
    let status_topic = topic(&cfg.status_topic, gateway_id, "", "", "");
    let (client, mut events) = client::connect(
        conn,
        client::Options {
            manual_acks: false,
            last_will: Some((status_topic.clone(), b"offline".to_vec())),
        },
    )
    .map_err(|e| SinkError::Setup(e.0))?;
    // Wait for CONNACK.
    loop {
        tokio::select! {
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(End::Shutdown),
            e = events.poll() => match e {
                Ok(Event::Connected { .. }) => break,
                Ok(_) => {}
                Err(e) => return Ok(End::Lost(e.0)),
            },
        }
    }
    if *failures > 0 {
        info!(sink = ctx.name, "MQTT sink connected again; publishing from its cursor");
    }
    *failures = 0;
    ctx.metrics.sink_up.get_or_create(&label).set(1);
    lock(&ctx.state).last_error = None;
    // Resubscribing resumes after the last confirmed frame: whatever was
    // in flight on a lost connection is published again.
    let mut sub = ctx.bus.subscribe(&ctx.name, None)?;
    let mut units_map = units(&ctx.config.borrow());
    let mut entries: VecDeque<Entry> = VecDeque::new();
    let mut inflight = 0usize;
    let max_inflight = usize::from(cfg.max_inflight);
    let birth = Outgoing {
        topic: status_topic.clone(),
        payload: b"online".to_vec(),
        qos: Qos(1),
        retain: true,
    };
    if let Err(e) = client.publish(birth) {
        return Ok(End::Lost(e.0));
    }
    entries.push_back(Entry {
        completes: None,
        pkid: None,
        unsent: true,
        confirmed: false,
    });
    inflight += 1;
    loop {
        tokio::select! {
            biased;
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => {
                stop(&client, &mut events, &status_topic, &mut entries, &sub).await;
                return Ok(End::Shutdown);
            }
            e = events.poll() => match e {
                Ok(Event::Sent(pkid)) => {
                    if let Some(en) = entries.iter_mut().find(|en| en.unsent) {
                        en.unsent = false;
                        en.pkid = Some(pkid);
                        if pkid == 0 {
                            en.confirmed = true;
                        }
                    }
                }
                Ok(Event::Confirmed(pkid)) => {
                    if let Some(en) = entries.iter_mut().find(|en| en.pkid == Some(pkid) && !en.confirmed) {
                        en.confirmed = true;
                        ctx.metrics.mqtt_publish_acks.get_or_create(&label).inc();
                    }
                }
                Ok(_) => {}
                Err(e) => return Ok(End::Lost(e.0)),
            },
            frames = sub.recv_batch(max_inflight.saturating_sub(inflight).clamp(1, 256)), if inflight < max_inflight => {
                if ctx.config.has_changed() {
                    units_map = units(&ctx.config.borrow_and_update());
                }
                for f in frames? {
                    let msgs = match messages(cfg, gateway_id, &units_map, &f) {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(sink = ctx.name, seq = f.sequence_id, error = e, "undecodable frame skipped");
                            ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                            Vec::new()
                        }
                    };
                    if msgs.is_empty() {
                        entries.push_back(Entry { completes: Some(f.sequence_id), pkid: None, unsent: false, confirmed: true });
                        continue;
                    }
                    let n = msgs.len();
                    for (i, m) in msgs.into_iter().enumerate() {
                        if let Err(e) = client.publish(m) {
                            return Ok(End::Lost(e.0));
                        }
                        ctx.metrics.mqtt_published.get_or_create(&label).inc();
                        entries.push_back(Entry {
                            completes: (i + 1 == n).then_some(f.sequence_id),
                            pkid: None,
                            unsent: true,
                            confirmed: false,
                        });
                        inflight += 1;
                    }
                }
            }
        }
        // Settle the confirmed prefix.
        let mut done_to = None;
        let mut written = 0u64;
        while entries.front().is_some_and(|e| e.confirmed) {
            let Some(e) = entries.pop_front() else { break };
            if e.pkid.is_some() || e.unsent {
                inflight = inflight.saturating_sub(1);
            }
            if let Some(seq) = e.completes {
                done_to = Some(seq);
            }
            if e.pkid.is_some() && e.completes.is_some() {
                written += 1;
            }
        }
        if let Some(seq) = done_to {
            sub.ack(seq)?;
            ctx.metrics.sink_written.get_or_create(&label).inc_by(written);
            lock(&ctx.state).written += written;
        }
        ctx.metrics
            .mqtt_inflight
            .get_or_create(&label)
            .set(i64::try_from(inflight).unwrap_or(i64::MAX));
    }
}

/// Clean stop: wait (briefly) for what is in flight, publish the
/// retained `offline` status (a clean disconnect does not trigger the
/// will) and disconnect.
async fn stop(
    client: &client::Client,
    events: &mut client::EventLoop,
    status_topic: &str,
    entries: &mut VecDeque<Entry>,
    sub: &frame_bus::Subscription,
) {
    let _ = client.publish(Outgoing {
        topic: status_topic.to_string(),
        payload: b"offline".to_vec(),
        qos: Qos(1),
        retain: true,
    });
    entries.push_back(Entry {
        completes: None,
        pkid: None,
        unsent: true,
        confirmed: false,
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !entries.iter().all(|e| e.confirmed) {
            match events.poll().await {
                Ok(Event::Sent(pkid)) => {
                    if let Some(en) = entries.iter_mut().find(|en| en.unsent) {
                        en.unsent = false;
                        en.pkid = Some(pkid);
                        en.confirmed = pkid == 0;
                    }
                }
                Ok(Event::Confirmed(pkid)) => {
                    if let Some(en) = entries.iter_mut().find(|en| en.pkid == Some(pkid) && !en.confirmed) {
                        en.confirmed = true;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
            let mut done_to = None;
            while entries.front().is_some_and(|e| e.confirmed) {
                if let Some(seq) = entries.pop_front().and_then(|e| e.completes) {
                    done_to = Some(seq);
                }
            }
            if let Some(seq) = done_to {
                let _ = sub.ack(seq);
            }
        }
    })
    .await;
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while events.poll().await.is_ok() {}
    })
    .await;
}
