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
//! QoS 1; QoS 0 counts as confirmed once written to the
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
    /// Packet id once the event loop sent it (0 for QoS 0); `None` and
    /// not confirmed = waits for its `Sent` event (a placeholder is
    /// confirmed from the start).
    pkid: Option<u16>,
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
    safe_topic(
        template
            .replace("{gateway_id}", gateway_id)
            .replace("{device}", device)
            .replace("{tag}", tag)
            .replace("{kind}", kind),
    )
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
    Lost(client::MqttError),
}

/// Replaces what would make a generated topic invalid (a device or tag
/// name holding `+`, `#` or NUL) with `_`.
fn safe_topic(t: String) -> String {
    if t.contains(['+', '#', '\0']) {
        t.replace(['+', '#', '\0'], "_")
    } else {
        t
    }
}

/// Largest message the sink hands to the broker connection; a larger one
/// (a frame of thousands of samples in `mode = "frame"`) is dead-lettered.
const MAX_MESSAGE: usize = 16 << 20;

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
                    warn!(
                        sink = ctx.name,
                        error = why.message,
                        "MQTT sink connection lost; frames wait in the WAL"
                    );
                }
                {
                    let mut st = lock(&ctx.state);
                    // A refused CONNACK (credentials, ACL) needs an operator.
                    st.unhealthy = why
                        .refused
                        .then(|| format!("broker refused the connection: {}", why.message));
                    st.last_error = Some(why.message);
                }
                tokio::select! {
                    _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                ctx.metrics.sink_retries.get_or_create(&label).inc();
            }
        }
    }
}

/// Messages handed to the connection, in order, until the broker
/// confirmed them.
#[derive(Default)]
struct Window {
    entries: VecDeque<Entry>,
    /// Messages handed over and not yet confirmed.
    inflight: usize,
}

impl Window {
    fn push(&mut self, completes: Option<u64>, published: bool) {
        self.entries.push_back(Entry {
            completes,
            pkid: None,
            confirmed: !published,
        });
        if published {
            self.inflight += 1;
        }
    }

    fn sent(&mut self, pkid: u16) {
        if let Some(en) = self
            .entries
            .iter_mut()
            .find(|en| en.pkid.is_none() && !en.confirmed)
        {
            en.pkid = Some(pkid);
            // QoS 0 has no confirmation: written to the socket is all.
            en.confirmed = pkid == 0;
        }
    }

    /// PUBACK/PUBCOMP (or a refusal) for `pkid`: true if it matched.
    fn confirmed(&mut self, pkid: u16) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|en| en.pkid == Some(pkid) && !en.confirmed)
        {
            Some(en) => {
                en.confirmed = true;
                true
            }
            None => false,
        }
    }

    /// Pops the confirmed prefix: the last frame it completes and how many
    /// frames with messages it completes.
    fn settle(&mut self) -> (Option<u64>, u64) {
        let mut done_to = None;
        let mut frames = 0;
        while self.entries.front().is_some_and(|e| e.confirmed) {
            let Some(e) = self.entries.pop_front() else { break };
            if e.pkid.is_some() {
                self.inflight = self.inflight.saturating_sub(1);
            }
            if let Some(seq) = e.completes {
                done_to = Some(seq);
                if e.pkid.is_some() {
                    frames += 1;
                }
            }
        }
        (done_to, frames)
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
    let (client, events) = client::connect(
        conn,
        client::Options {
            manual_acks: false,
            last_will: Some((status_topic.clone(), b"offline".to_vec())),
        },
    )
    .map_err(|e| SinkError::Setup(e.message))?;
    // The event loop runs in its own task (its poll is not safe to drop
    // mid-way); a failed connection ends the session, and the sink's own
    // backoff runs before the next one, so the task never reconnects.
    let (mut events, task) = client::spawn(events, |_| Duration::from_secs(3600));
    let _task = client::AbortOnDrop(task);
    // Wait for CONNACK.
    let max_packet = loop {
        tokio::select! {
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => return Ok(End::Shutdown),
            e = events.recv() => match e {
                Some(Ok(Event::Connected { max_packet, .. })) => break max_packet,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ok(End::Lost(e)),
                None => return Ok(End::Lost(client::MqttError::new("event loop stopped"))),
            },
        }
    };
    // A message the broker cannot take would break the connection on
    // every retry: MQTT 5 brokers announce their limit.
    let max_message = max_packet.map_or(MAX_MESSAGE, |m| {
        (m as usize).saturating_sub(1024).min(MAX_MESSAGE)
    });
    if *failures > 0 {
        info!(
            sink = ctx.name,
            "MQTT sink connected again; publishing from its cursor"
        );
    }
    *failures = 0;
    ctx.metrics.sink_up.get_or_create(&label).set(1);
    {
        let mut st = lock(&ctx.state);
        st.last_error = None;
        st.unhealthy = None;
    }
    // Resubscribing resumes after the last confirmed frame: whatever was
    // in flight on a lost connection is published again.
    let mut sub = ctx.bus.subscribe(&ctx.name, None)?;
    let mut units_map = units(&ctx.config.borrow());
    let mut window = Window::default();
    // Messages of frames read from the bus and not yet handed over (with
    // the frame each one completes); `None` = a frame without messages.
    let mut outbox: VecDeque<(Option<Outgoing>, Option<u64>)> = VecDeque::new();
    let max_inflight = usize::from(cfg.max_inflight).max(1);
    outbox.push_back((
        Some(Outgoing {
            topic: status_topic.clone(),
            payload: b"online".to_vec(),
            qos: Qos(1),
            retain: true,
        }),
        None,
    ));
    loop {
        // Settle the confirmed prefix first: it frees window slots.
        settle(ctx, &label, &sub, &mut window)?;
        // Hand over what the window allows (the request channel never
        // holds more than `max_inflight` publishes).
        while window.inflight < max_inflight {
            let Some((msg, completes)) = outbox.pop_front() else {
                break;
            };
            match msg {
                None => window.push(completes, false),
                Some(m) => {
                    if let Err(e) = client.publish(m) {
                        return Ok(End::Lost(e));
                    }
                    ctx.metrics.mqtt_published.get_or_create(&label).inc();
                    window.push(completes, true);
                }
            }
        }
        // Frames that gave no message are confirmed as they are handed over.
        settle(ctx, &label, &sub, &mut window)?;
        ctx.metrics
            .mqtt_inflight
            .get_or_create(&label)
            .set(i64::try_from(window.inflight).unwrap_or(i64::MAX));
        tokio::select! {
            biased;
            _ = crate::supervisor::wait_true(&mut ctx.shutdown) => {
                stop(&client, &mut events, &status_topic, &mut window, &sub).await;
                return Ok(End::Shutdown);
            }
            e = events.recv() => match e {
                Some(Ok(Event::Sent(pkid))) => window.sent(pkid),
                Some(Ok(Event::Confirmed(pkid))) => {
                    if window.confirmed(pkid) {
                        ctx.metrics.mqtt_publish_acks.get_or_create(&label).inc();
                    }
                }
                Some(Ok(Event::Refused { pkid, reason })) => {
                    // Refused for good (MQTT 5 reason code, e.g. not
                    // authorized for that topic): counted and skipped, as
                    // retrying would refuse it again and stop the cursor.
                    if window.confirmed(pkid) {
                        ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                        warn!(sink = ctx.name, reason, "the broker refused a message; skipped");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ok(End::Lost(e)),
                None => return Ok(End::Lost(client::MqttError::new("event loop stopped"))),
            },
            frames = sub.recv_batch(16), if outbox.is_empty() => {
                if ctx.config.has_changed().unwrap_or(false) {
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
                    let msgs: Vec<Outgoing> = msgs
                        .into_iter()
                        .filter(|m| {
                            let fits = m.payload.len() + m.topic.len() <= max_message;
                            if !fits {
                                warn!(sink = ctx.name, seq = f.sequence_id, bytes = m.payload.len(), max_message, "message too large for the broker; skipped");
                                ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                            }
                            // An empty topic (a template of only `{device}`
                            // for an event without a device) cannot be sent.
                            let named = !m.topic.is_empty();
                            if !named {
                                warn!(sink = ctx.name, seq = f.sequence_id, "message with an empty topic; skipped");
                                ctx.metrics.sink_dead_lettered.get_or_create(&label).inc();
                            }
                            fits && named
                        })
                        .collect();
                    if msgs.is_empty() {
                        outbox.push_back((None, Some(f.sequence_id)));
                        continue;
                    }
                    let n = msgs.len();
                    for (i, m) in msgs.into_iter().enumerate() {
                        outbox.push_back((Some(m), (i + 1 == n).then_some(f.sequence_id)));
                    }
                }
            }
        }
    }
}

/// Pops the confirmed prefix of the window and moves the cursor past the
/// last frame it completes.
fn settle(
    ctx: &SinkContext,
    label: &SinkLabel,
    sub: &frame_bus::Subscription,
    window: &mut Window,
) -> Result<(), SinkError> {
    let (done_to, frames) = window.settle();
    if let Some(seq) = done_to {
        sub.ack(seq)?;
        ctx.metrics.sink_written.get_or_create(label).inc_by(frames);
        lock(&ctx.state).written += frames;
    }
    Ok(())
}

/// Clean stop: wait (briefly) for what is in flight, publish the
/// retained `offline` status (a clean disconnect does not trigger the
/// will) and disconnect.
async fn stop(
    client: &client::Client,
    events: &mut tokio::sync::mpsc::Receiver<client::Polled>,
    status_topic: &str,
    window: &mut Window,
    sub: &frame_bus::Subscription,
) {
    let offline = Outgoing {
        topic: status_topic.to_string(),
        payload: b"offline".to_vec(),
        qos: Qos(1),
        retain: true,
    };
    if client.publish(offline).is_ok() {
        window.push(None, true);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !window.entries.is_empty() {
            match events.recv().await {
                Some(Ok(Event::Sent(pkid))) => window.sent(pkid),
                Some(Ok(Event::Confirmed(pkid))) | Some(Ok(Event::Refused { pkid, .. })) => {
                    window.confirmed(pkid);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
            if let (Some(seq), _) = window.settle() {
                let _ = sub.ack(seq);
            }
        }
    })
    .await;
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(_)) = events.recv().await {}
    })
    .await;
}
