//! `protocol = "mqtt"`: a device whose values arrive as MQTT messages.
//!
//! # Delivery guarantee
//! With QoS 1 (the default; 2 is refused at load) and a persistent session
//! (`clean_session = false`, the default; MQTT 5: `session_expiry`), a
//! message is acknowledged to the broker (PUBACK) only
//! after the frame holding its samples is in the bus with the bus's
//! configured durability. A gateway killed before that never acknowledged
//! it, so the broker redelivers it when the gateway reconnects:
//! **at-least-once**, every number in the WAL at least once, duplicates
//! only for messages received and not yet acknowledged: the broker's
//! in-flight window in steady state (`max_inflight` with MQTT 5,
//! Mosquitto's `max_inflight_messages` with 3.1.1), but thousands when a
//! crash hits the drain of a backlog (Mosquitto 2.0.11 exceeds its window
//! there, rumqttc writes one queued ack per read of up to ten packets,
//! and a killed socket with unread data discards the acks in flight;
//! measured in docs/drivers/mqtt.md). QoS 0 is at-most-once: the
//! broker never redelivers.
//!
//! Acknowledgements go out in the order the messages arrived (MQTT
//! requires it for QoS 1), malformed messages included, as soon as their
//! batch is in the bus (through rumqttc's request queue; its event loop
//! runs in a task of its own, [`client::spawn`]): a malformed
//! message is counted by reason, logged once per burst, acknowledged (so
//! it is not redelivered forever) and skipped. Acks of messages received
//! on an earlier connection are never sent: after a reconnect the broker
//! redelivers them, and the packet id may already name another message.
//!
//! # Flow
//! The connection task parses each message into samples and appends them
//! to a pending batch; a publisher task writes one batch at a time to the
//! bus (one frame per batch, events in order between frames) and hands
//! back the acks of the messages it holds. While the bus is busy the next
//! batch grows, so a slow commit costs no throughput; past
//! [`MAX_PENDING`] messages the connection stops reading (backpressure on
//! the broker, which keeps the messages).
//!
//! # Status
//! Online on CONNACK, Offline when the connection drops (reconnects back
//! off per the device's retry policy) and, with `no_message_timeout`,
//! when nothing arrived for that long; each change is a
//! `DEVICE_STATUS_CHANGED` event in order with the data.

pub mod client;
pub mod payload;
pub mod router;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{DeviceConfig, DriverOptions};
use proto::{DataFrame, Sample};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::burst_log::{BurstLog, LOG_EVERY};
use crate::pipeline::Publication;
use crate::sample::{self, now_ns, Deadband};
use crate::status::status_event;
use crate::write::{WriteQueue, WriteResult, WriteStatus};
use crate::{DriverError, DriverHost, HostError, PollReport};
use client::{Event, Received};
use payload::{Message, Reason};
use router::Router;

/// Messages a pending batch may hold before the connection stops reading.
pub const MAX_PENDING: usize = 10_000;

/// What the publisher task writes to the bus, and the messages it settles.
#[derive(Default)]
struct Batch {
    items: Vec<Publication>,
    /// QoS 1/2 messages (with the connection they came on), to acknowledge
    /// once `items` are in the bus.
    acks: Vec<(u64, Received)>,
    messages: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.items.is_empty() && self.acks.is_empty()
    }
    fn push_samples(&mut self, device: &str, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        if let Some(Publication::Data(f)) = self.items.last_mut() {
            f.samples.extend(samples);
        } else {
            self.items.push(Publication::Data(DataFrame {
                device_id: device.to_string(),
                samples,
            }));
        }
    }
}

/// Settled acks, back from the publisher task: the batch's QoS 1
/// messages with the connection (epoch) each came on.
type Settled = Vec<(u64, Received)>;

/// Logs a malformed message once per burst ([`BurstLog`]): the first at
/// once, then one line per [`LOG_EVERY`] with the count since the previous
/// line.
fn log_malformed(burst: &mut BurstLog, device: &str, reason: Reason, topic: &str, payload: &[u8]) {
    let Some(skipped) = burst.note() else {
        return;
    };
    let shown: String = payload
        .iter()
        .take(96)
        .copied()
        .map(char::from)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '.' })
        .collect();
    warn!(
        device,
        reason = reason.as_str(),
        topic,
        bytes = payload.len(),
        payload = shown,
        skipped,
        "malformed MQTT message(s) counted, acknowledged and skipped (logged once per {LOG_EVERY:?})"
    );
}

fn device_error(device: &DeviceConfig, message: impl Into<String>) -> DriverError {
    DriverError::Device {
        device: device.name.clone(),
        message: message.into(),
    }
}

/// Runs one MQTT device until shutdown.
pub async fn run<H: DriverHost>(
    device: Arc<DeviceConfig>,
    host: H,
    mut shutdown: watch::Receiver<bool>,
    writes: WriteQueue,
) -> Result<(), DriverError> {
    let DriverOptions::Mqtt(opts) = &device.driver else {
        return Err(device_error(&device, "not an MQTT device"));
    };
    let conn = opts
        // The loader always sets `client_id` (`{gateway_id}-{device}`).
        .connection(&device.endpoint, &device.name)
        .map_err(|e| device_error(&device, e))?;
    let router = Router::new(&device);
    if router.filters().is_empty() {
        return Err(device_error(&device, "no enabled tag has a topic"));
    }
    let host = Arc::new(host);
    let mut writes = writes.lock_owned().await;
    let mut writes_open = true;

    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1);
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<Settled>();
    let publisher = {
        let host = host.clone();
        tokio::spawn(async move {
            while let Some(b) = batch_rx.recv().await {
                for item in b.items {
                    match item {
                        Publication::Data(f) => host.publish(f).await?,
                        Publication::Event(e) => host.publish_event(e).await?,
                    }
                }
                if settled_tx.send(b.acks).is_err() {
                    break;
                }
            }
            Ok::<(), HostError>(())
        })
    };
    let publisher_error = |r: Result<Result<(), HostError>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => DriverError::Publish(HostError {
            message: "publisher stopped".into(),
            transient: true,
        }),
        Ok(Err(e)) => DriverError::Publish(e),
        Err(e) => DriverError::Publish(HostError {
            message: format!("publisher task failed: {e}"),
            transient: true,
        }),
    };

    let (client, events) = client::connect(
        &conn,
        client::Options {
            manual_acks: true,
            last_will: None,
        },
    )
    .map_err(|e| device_error(&device, e.message))?;
    info!(
        device = device.name,
        broker = format!("{}:{}", conn.address.host, conn.address.port),
        client_id = conn.client_id,
        version = conn.version.as_str(),
        filters = router.filters().len(),
        "MQTT device connecting"
    );
    let retry = device.retry.clone();
    let (mut events, event_task) = client::spawn(events, move |n| retry.delay(n));
    // The event loop task ends with this function, however it ends.
    let _event_task = client::AbortOnDrop(event_task);

    let mut pending = Batch::default();
    let mut deadbands: HashMap<usize, Deadband> = HashMap::new();
    let mut online: Option<bool> = None;
    let mut silent = false;
    let mut last_message = tokio::time::Instant::now();
    let mut epoch = 0u64;
    // SUBACKs still expected for this process's subscriptions; subscribed
    // once they all came (a session kept by the broker then keeps them).
    let mut subacks_due = 0usize;
    let mut subscribed = false;
    let mut failures = 0u32;
    let mut burst = BurstLog::default();
    let far = Duration::from_secs(86_400 * 365);

    let set_online = |online: &mut Option<bool>, pending: &mut Batch, up: bool, reason: &str| {
        if *online == Some(up) {
            return;
        }
        *online = Some(up);
        host.connection_changed(up);
        pending.items.push(Publication::Event(status_event(
            &device.name,
            up,
            reason,
            now_ns(),
        )));
    };

    loop {
        let quiet_at = opts
            .no_message_timeout
            .and_then(|t| last_message.checked_add(t))
            .unwrap_or_else(|| tokio::time::Instant::now() + far);
        tokio::select! {
            biased;
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            s = settled_rx.recv() => {
                let Some(s) = s else {
                    // The publisher stopped: the bus refused a frame.
                    return Err(publisher_error(publisher.await));
                };
                let mut n = 0u64;
                for (e, m) in &s {
                    if *e == epoch {
                        // Fails only when rumqttc's request queue is full:
                        // under a flood beyond the broker's in-flight window
                        // its event loop reads ten packets per ack it
                        // writes. The driver then restarts (supervised),
                        // and the broker redelivers what was not
                        // acknowledged.
                        client.ack(m).map_err(|e| {
                            device_error(
                                &device,
                                format!("acknowledgements fell behind the broker's flood ({}); reconnecting", e.message),
                            )
                        })?;
                        n += 1;
                    }
                }
                if n > 0 {
                    host.messages_acked(n);
                }
            }
            permit = batch_tx.reserve(), if !pending.is_empty() => match permit {
                Ok(p) => p.send(std::mem::take(&mut pending)),
                Err(_) => return Err(publisher_error(publisher.await)),
            },
            w = writes.recv(), if writes_open => match w {
                Some(w) => {
                    let _ = w.reply.send(WriteResult::failed(
                        WriteStatus::Unsupported,
                        0,
                        "MQTT tags are read-only (subscriptions)",
                    ));
                }
                None => writes_open = false,
            },
            _ = tokio::time::sleep_until(quiet_at), if opts.no_message_timeout.is_some() && !silent && online == Some(true) => {
                silent = true;
                let t = opts.no_message_timeout.unwrap_or_default();
                set_online(&mut online, &mut pending, false, &format!("no message for {t:?}"));
            }
            e = events.recv() => match e {
                None => return Err(device_error(&device, "MQTT event loop stopped")),
                Some(Ok(Event::Connected { session_present, .. })) => {
                    epoch += 1;
                    failures = 0;
                    // A new session, or this process's subscriptions not
                    // all confirmed yet (its filters may have changed):
                    // subscribe. A kept session still has them.
                    if !session_present || !subscribed {
                        client
                            .subscribe(router.filters(), opts.qos)
                            .map_err(|e| device_error(&device, e.message))?;
                        subacks_due = router.filters().len().div_ceil(64);
                    }
                    info!(device = device.name, session_present, "MQTT device connected");
                    last_message = tokio::time::Instant::now();
                    silent = false;
                    set_online(&mut online, &mut pending, true, "");
                }
                Some(Ok(Event::Subscribed { refused })) => {
                    if refused > 0 {
                        warn!(device = device.name, refused, "the broker refused subscriptions (ACL or invalid filter)");
                    }
                    subacks_due = subacks_due.saturating_sub(1);
                    if subacks_due == 0 {
                        subscribed = true;
                    }
                }
                Some(Ok(Event::Message(m))) => {
                    last_message = tokio::time::Instant::now();
                    if silent {
                        silent = false;
                        set_online(&mut online, &mut pending, true, "");
                    }
                    let t0 = Instant::now();
                    let (samples, report) = read_message(&device, opts.max_payload, &router, &mut deadbands, &m, &*host, &mut burst);
                    pending.push_samples(&device.name, samples);
                    pending.messages += 1;
                    if m.qos() > 0 {
                        pending.acks.push((epoch, m.ack_token()));
                    }
                    host.poll_finished(&PollReport { duration: t0.elapsed(), ..report });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // Acks settled from now on belong to a dead connection:
                    // on a new session their packet ids may name other
                    // messages, so they are never sent (the broker
                    // redelivers those messages instead). The event loop
                    // task waits the retry delay before reconnecting.
                    epoch += 1;
                    failures += 1;
                    if failures == 1 || online != Some(false) {
                        warn!(device = device.name, error = e.message, retry_in = ?device.retry.delay(failures), "MQTT connection down");
                    }
                    set_online(&mut online, &mut pending, false, &e.message);
                }
            },
        }
        if pending.messages >= MAX_PENDING {
            // Backpressure: stop reading until the bus took the batch (the
            // event loop task keeps the connection alive meanwhile, and the
            // broker keeps what does not fit in its channel).
            if batch_tx.send(std::mem::take(&mut pending)).await.is_err() {
                return Err(publisher_error(publisher.await));
            }
        }
    }

    // Clean stop: publish what was read, acknowledge it, and give the
    // event loop a moment to send the acks (anything not acknowledged is
    // redelivered at the next start).
    if !pending.is_empty() && batch_tx.send(std::mem::take(&mut pending)).await.is_err() {
        return Err(publisher_error(publisher.await));
    }
    drop(batch_tx);
    let published = publisher.await;
    while let Ok(s) = settled_rx.try_recv() {
        let mut n = 0u64;
        for (e, m) in &s {
            if *e == epoch && client.ack(m).is_ok() {
                n += 1;
            }
        }
        if n > 0 {
            host.messages_acked(n);
        }
    }
    // DISCONNECT goes out after the acks queued before it.
    client.disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = events.recv().await {}
    })
    .await;
    host.connection_changed(false);
    match published {
        Ok(Ok(())) => Ok(()),
        other => Err(publisher_error(other)),
    }
}

/// The samples of one message (after deadband) and its report; malformed
/// parts are counted, logged once per burst and skipped.
fn read_message<H: DriverHost>(
    device: &DeviceConfig,
    max_payload: u64,
    router: &Router,
    deadbands: &mut HashMap<usize, Deadband>,
    m: &Received,
    host: &H,
    burst: &mut BurstLog,
) -> (Vec<Sample>, PollReport) {
    host.messages_received(1);
    let mut report = PollReport::default();
    let topic = m.topic();
    let payload = m.payload();
    // Each reason counts once per message (a payload that is not JSON
    // is one error, not one per tag reading it).
    let mut seen: Vec<Reason> = Vec::new();
    let mut reject = |reason: Reason, report: &mut PollReport| {
        if seen.contains(&reason) {
            return;
        }
        seen.push(reason);
        host.payload_rejected(reason.as_str());
        log_malformed(burst, &device.name, reason, &topic, payload);
        report.errors.push(crate::PollError {
            kind: crate::ErrorKind::Protocol,
            code: MALFORMED,
        });
    };
    if payload.len() as u64 > max_payload {
        reject(Reason::TooLarge, &mut report);
        return (Vec::new(), report);
    }
    let routes = router.routes(&topic);
    if routes.is_empty() {
        reject(Reason::Unmatched, &mut report);
        return (Vec::new(), report);
    }
    let received = now_ns();
    let mut msg = Message::new(payload);
    let mut samples = Vec::with_capacity(routes.len());
    for r in routes {
        let Some(tag) = device.tags.get(r.tag) else {
            continue;
        };
        match msg.read(r, tag, received) {
            Ok((raw, ts)) => {
                let s = sample::reading(tag, raw, ts);
                if deadbands.entry(r.tag).or_default().admit(tag, &s) {
                    samples.push(s);
                } else {
                    report.suppressed += 1;
                }
            }
            Err(reason) => reject(reason, &mut report),
        }
    }
    report.samples = samples.len();
    (samples, report)
}

/// The `error_code` of a malformed message in `gateway_device_errors_total`
/// (as the Modbus driver's malformed reply).
pub const MALFORMED: i32 = -3;
