//! `protocol = "opcua"`: an OPC UA client per device (async-opcua).
//!
//! # Session lifecycle
//! One task per device: connect (one session attempt: GetEndpoints,
//! secure channel, CreateSession, ActivateSession — [`client::connect`]),
//! then create **every** subscription and monitored item from the config
//! ([`plan`]), run until the connection is lost, and start over after the
//! device's retry policy (`retry_interval` doubling to
//! `max_retry_interval`). Attempts are sequential and paced, so a server
//! that restarts sees one new session, not a flood; a device whose server
//! is unreachable waits in its own task and never delays another device.
//!
//! - A subscription the server refuses, or a CreateMonitoredItems request
//!   that fails as a whole, fails the session (it is closed and retried):
//!   the driver never runs with part of its subscriptions silently
//!   missing. A single monitored item the server refuses (unknown node,
//!   filter not allowed) gives that tag one BAD sample with the status
//!   code, is counted and logged, and is tried again on the next session.
//! - Keep-alive: a Read of the server state every `keep_alive_interval`
//!   keeps the session alive whatever the scan rates (the session timeout
//!   must be at least twice that, checked at load); two unanswered in a
//!   row close the connection. Subscriptions ask the server for a
//!   keep-alive at least every `keep_alive_interval` too.
//! - Status: `Online` once the session and its subscriptions exist;
//!   `Offline` when it is lost or the server cannot be reached; `Error`
//!   when the server refuses the gateway's security or identity
//!   (certificate not trusted, wrong password, no matching endpoint),
//!   which retrying alone will not fix — the driver still retries, with
//!   backoff, so fixing the trust list or the server heals it. Each change
//!   is one `DEVICE_STATUS_CHANGED` event; losing the session also
//!   publishes one BAD sample (`BadNotConnected` or the loss code) per tag.
//!
//! # Data
//! Subscription mode: each notification message of a subscription becomes
//! one `DataFrame`. Poll mode: each scan of a poll group reads its nodes
//! with Read requests of at most `max_nodes_per_read` nodes and publishes
//! one frame. Values, status codes and timestamps are mapped by [`value`].
//! Notifications are acknowledged to the server by the library when they
//! arrive, before they reach the bus: a crash in between loses them, and
//! the next session's first notification of each item is its current value.
//!
//! # Writes
//! `ReadWrite`/`Write` tags take commands: a Write service call with the
//! value in the node's own built-in type (its DataType attribute is read
//! first; the tag's `data_type` when the server does not say), inverse
//! scaling applied; a Bad status is answered as `exception` with the
//! status code. Without a session, writes are answered at once
//! (`connection`, BadNotConnected).

pub mod client;
pub mod discover;
pub mod plan;
pub mod value;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config::{Access, DeadbandType, DeviceConfig, DriverOptions, OpcuaDevice};
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NotificationMessage,
    NumericRange, QualifiedName, ReadValueId, StatusChangeNotification, StatusCode, TimestampsToReturn,
    WriteValue,
};
use proto::Sample;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::burst_log::{BurstLog, LOG_EVERY};
use crate::pipeline::Pipeline;
use crate::sample::{self, now_ns, Deadband};
use crate::status::{link_event, LinkStatus};
use crate::write::{WriteQueue, WriteRequest, WriteResult, WriteStatus};
use crate::{DriverError, DriverHost, ErrorKind, OpcuaStat, PollError, PollReport};
use client::Connection;
use plan::{Group, Item, Plan};

/// What the subscriptions' callbacks hand to the driver task.
enum Notice {
    Data(Vec<(u32, DataValue)>),
    /// The server ended a subscription (e.g. `BadTimeout`).
    Status(StatusCode),
}

/// The callback of one subscription: whole notification messages, so one
/// message becomes one frame.
struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
    /// When the subscription last sent anything (data or keep-alive), in
    /// ms since `epoch`: a subscription the server dropped without a word
    /// goes quiet, and the session is replaced (see `Driver::session`).
    last_message: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

impl OnSubscriptionNotificationCore for Notifier {
    fn on_subscription_notification(&mut self, n: NotificationMessage, _items: MonitoredItemMap<'_>) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_message.store(ms, Ordering::Relaxed);
        let mut values = Vec::new();
        for obj in n.notification_data.into_iter().flatten() {
            if obj.inner_is::<DataChangeNotification>() {
                if let Some(dc) = obj.into_inner_as::<DataChangeNotification>() {
                    values.extend(
                        dc.monitored_items
                            .into_iter()
                            .flatten()
                            .map(|m| (m.client_handle, m.value)),
                    );
                }
            } else if obj.inner_is::<StatusChangeNotification>() {
                if let Some(sc) = obj.into_inner_as::<StatusChangeNotification>() {
                    let _ = self.tx.send(Notice::Status(sc.status));
                }
            }
        }
        if !values.is_empty() {
            let _ = self.tx.send(Notice::Data(values));
        }
    }
}

/// How a session ended.
enum End {
    Shutdown,
    /// The connection or the session is gone (the status code says why).
    Lost(StatusCode, String),
}

struct Driver<H: DriverHost> {
    device: Arc<DeviceConfig>,
    opts: OpcuaDevice,
    plan: Plan,
    host: Arc<H>,
    /// Per tag index: its item (array mode) when it is read.
    items: HashMap<u32, Item>,
    deadbands: Vec<Deadband>,
    status: Option<LinkStatus>,
    /// The reason published with `status`.
    reason: String,
    /// The write queue still has senders.
    writes_open: bool,
    /// Per tag read as array elements: how many `tag[i]` it last published.
    elements: HashMap<usize, usize>,
    /// Rate limit of the warning for values that do not convert to their
    /// tag's data type, per tag.
    refusals: HashMap<usize, BurstLog>,
}

/// Runs one OPC UA device until shutdown.
pub async fn run<H: DriverHost>(
    device: Arc<DeviceConfig>,
    host: H,
    mut shutdown: watch::Receiver<bool>,
    writes: WriteQueue,
) -> Result<(), DriverError> {
    let fail = |message: String| DriverError::Device {
        device: device.name.clone(),
        message,
    };
    let DriverOptions::Opcua(opts) = &device.driver else {
        return Err(fail("not an OPC UA device".into()));
    };
    let opts: OpcuaDevice = (**opts).clone();
    let plan = Plan::new(&device, &opts).map_err(fail)?;
    if opts.trust_server_certs {
        tracing::warn!(
            device = device.name,
            "trust_server_certs = true: unknown server certificates are trusted on first use (written to <pki_dir>/trusted), an impostor's too"
        );
    }
    let slowest = plan
        .subscriptions
        .iter()
        .map(|g| g.interval)
        .max()
        .unwrap_or_default();
    let client =
        client::build(&device.name, &device.endpoint, device.timeout, slowest, &opts).map_err(fail)?;
    let identity = client::identity(&opts).map_err(fail)?;
    let host = Arc::new(host);
    let items = plan
        .subscriptions
        .iter()
        .chain(&plan.polls)
        .flat_map(|g| &g.items)
        .map(|i| (i.tag as u32 + 1, i.clone()))
        .collect();
    let mut d = Driver {
        deadbands: vec![Deadband::default(); device.tags.len()],
        device: device.clone(),
        opts,
        plan,
        host: host.clone(),
        items,
        status: None,
        reason: String::new(),
        writes_open: true,
        elements: HashMap::new(),
        refusals: HashMap::new(),
    };
    let mut writes = writes.lock_owned().await;
    let mut pipeline = Pipeline::new(host);
    let mut failures = 0u32;
    let connect_opts = d.opts.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = {
            let connecting = client::connect(
                &client,
                &device.endpoint,
                device.timeout,
                &connect_opts,
                identity.clone(),
            );
            tokio::pin!(connecting);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break None,
                    // A write must not wait for a session that may take
                    // several timeouts to open, and then run late.
                    w = writes.recv(), if d.writes_open => d.refuse_write(w),
                    r = &mut connecting => break Some(r),
                }
            }
        };
        let Some(attempt) = attempt else { break };
        let reason = match attempt {
            Ok(conn) => {
                d.host.opcua(OpcuaStat::SessionAttempt { ok: true });
                match d.session(conn, &mut pipeline, &mut shutdown, &mut writes).await? {
                    End::Shutdown => {
                        d.host.opcua(OpcuaStat::SessionUp(false));
                        d.host.opcua(OpcuaStat::Items {
                            subscriptions: 0,
                            monitored_items: 0,
                        });
                        break;
                    }
                    End::Lost(code, why) => {
                        // A session that never got its subscriptions up
                        // backs off like a failed attempt.
                        if d.status == Some(LinkStatus::Online) {
                            failures = 0;
                        } else {
                            failures = failures.saturating_add(1);
                        }
                        d.lost(code, &why, &mut pipeline).await?;
                        why
                    }
                }
            }
            Err(e) => {
                d.host.opcua(OpcuaStat::SessionAttempt { ok: false });
                failures = failures.saturating_add(1);
                let status = if e.is_configuration() {
                    LinkStatus::Error
                } else {
                    LinkStatus::Offline
                };
                if d.status != Some(status) || d.reason != e.to_string() {
                    tracing::warn!(device = d.device.name, error = %e, "OPC UA session failed");
                } else {
                    tracing::debug!(device = d.device.name, error = %e, "OPC UA session failed again");
                }
                d.set_status(status, &e.to_string(), &mut pipeline).await?;
                e.to_string()
            }
        };
        // Paced retries: one attempt at a time, `retry_interval` doubling
        // to `max_retry_interval`. Writes are answered meanwhile.
        let delay = d.device.retry.delay(failures.max(1));
        tracing::debug!(
            device = d.device.name,
            ?delay,
            reason,
            "next OPC UA session attempt"
        );
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                w = writes.recv(), if d.writes_open => d.refuse_write(w),
                _ = tokio::time::sleep_until(until) => break,
            }
        }
    }
    pipeline.finish().await
}

impl<H: DriverHost> Driver<H> {
    /// Answers a write that arrives without a session.
    fn refuse_write(&mut self, w: Option<WriteRequest>) {
        match w {
            Some(w) => {
                let _ = w.reply.send(WriteResult::failed(
                    WriteStatus::Connection,
                    value::code(StatusCode::BadNotConnected),
                    format!("no session with {}", self.device.endpoint),
                ));
            }
            // No sender left: nobody can ask for writes any more.
            None => self.writes_open = false,
        }
    }

    /// A BAD sample the gateway makes itself (lost session, refused item,
    /// failed Read). It goes through the tag's deadband like any sample,
    /// so the deadband knows the tag went BAD and admits the next good
    /// value, whatever it is.
    ///
    /// A tag read as array elements that published elements before marks
    /// each `tag[i]` BAD instead (those are the samples its consumers see).
    fn failed(&mut self, tag: usize, code: StatusCode, ts: u64) -> Vec<Sample> {
        let mut out = Vec::new();
        if self.elements_bad(tag, 0, value::code(code), ts, &mut out) {
            return out;
        }
        let Some(t) = self.device.tags.get(tag) else {
            return out;
        };
        let s = sample::failed(t, value::code(code), ts);
        if let Some(db) = self.deadbands.get_mut(tag) {
            db.admit(t, &s);
        }
        out.push(s);
        out
    }

    /// BAD samples for `tag[from..]` of an array tag, up to the number of
    /// elements it last published; `false` when it published none.
    fn elements_bad(&self, tag: usize, from: usize, code: i32, ts: u64, out: &mut Vec<Sample>) -> bool {
        let (Some(t), Some(&had)) = (self.device.tags.get(tag), self.elements.get(&tag)) else {
            return false;
        };
        for i in from..had {
            let mut s = sample::failed(t, code, ts);
            s.tag = format!("{}[{i}]", t.name);
            out.push(s);
        }
        had > 0
    }

    /// Publishes a status change. An `Error` whose reason changed (a fixed
    /// trust list, then a wrong password) is published again.
    async fn set_status(
        &mut self,
        s: LinkStatus,
        reason: &str,
        pipeline: &mut Pipeline,
    ) -> Result<(), DriverError> {
        if self.status == Some(s) && (s != LinkStatus::Error || self.reason == reason) {
            return Ok(());
        }
        self.status = Some(s);
        self.reason = reason.to_string();
        match s {
            LinkStatus::Online => self.host.connection_changed(true),
            LinkStatus::Offline => self.host.connection_changed(false),
            LinkStatus::Error => self.host.connection_failed(reason),
        }
        self.host.opcua(OpcuaStat::SessionUp(s == LinkStatus::Online));
        tracing::info!(
            device = self.device.name,
            status = s.as_str(),
            reason,
            "device status changed"
        );
        pipeline
            .send_event(link_event(&self.device.name, s, reason, now_ns()))
            .await
    }

    /// After a lost session: Offline, and one BAD sample per read tag.
    async fn lost(
        &mut self,
        code: StatusCode,
        why: &str,
        pipeline: &mut Pipeline,
    ) -> Result<(), DriverError> {
        self.host.opcua(OpcuaStat::Items {
            subscriptions: 0,
            monitored_items: 0,
        });
        let code = if code.is_bad() {
            code
        } else {
            StatusCode::BadNotConnected
        };
        let ts = now_ns();
        let mut tags: Vec<usize> = self.items.values().map(|i| i.tag).collect();
        tags.sort_unstable();
        let samples: Vec<Sample> = tags.into_iter().flat_map(|t| self.failed(t, code, ts)).collect();
        self.set_status(LinkStatus::Offline, why, pipeline).await?;
        let report = PollReport {
            errors: vec![PollError {
                kind: ErrorKind::Connection,
                code: value::code(code),
            }],
            ..PollReport::default()
        };
        pipeline
            .finish_poll(self.host.as_ref(), &self.device.name, samples, report)
            .await
    }

    /// Runs one session: subscriptions, polls and writes until it ends.
    async fn session(
        &mut self,
        mut conn: Connection,
        pipeline: &mut Pipeline,
        shutdown: &mut watch::Receiver<bool>,
        writes: &mut tokio::sync::OwnedMutexGuard<mpsc::Receiver<WriteRequest>>,
    ) -> Result<End, DriverError> {
        let session = conn.session.clone();
        let timeout = self.device.timeout;
        // `nsu=` addresses: this session's namespace indexes.
        let mut namespaces: HashMap<String, u16> = HashMap::new();
        for uri in self.plan.namespace_uris() {
            match tokio::time::timeout(timeout, session.get_namespace_index(&uri)).await {
                Ok(Ok(i)) => {
                    namespaces.insert(uri, i);
                }
                Ok(Err(e)) => {
                    tracing::warn!(device = self.device.name, uri, error = %e, "namespace not on the server")
                }
                Err(_) => {
                    conn.close(timeout).await;
                    return Ok(End::Lost(
                        StatusCode::BadTimeout,
                        "namespace array read timed out".into(),
                    ));
                }
            }
        }
        let resolve = |u: &str| namespaces.get(u).copied();
        let node = |i: &Item| plan::node_id(&i.address, resolve);
        let (tx, mut notices) = mpsc::unbounded_channel::<Notice>();
        let mut refused: Vec<Sample> = Vec::new();
        let ts = now_ns();
        let mut monitored = 0usize;
        let subscriptions = self.plan.subscriptions.clone();
        // Per subscription: when it last sent anything, and how long it may
        // stay quiet.
        let epoch = std::time::Instant::now();
        let mut alive: Vec<(Arc<AtomicU64>, u64)> = Vec::new();
        for g in &subscriptions {
            if *shutdown.borrow() {
                conn.close(timeout).await;
                return Ok(End::Shutdown);
            }
            let last = Arc::new(AtomicU64::new(0));
            let notifier = Notifier {
                tx: tx.clone(),
                last_message: last.clone(),
                epoch,
            };
            match self
                .subscribe(&session, g, &node, notifier, &mut refused, ts)
                .await
            {
                Ok((n, keep_alive)) => {
                    monitored += n;
                    let quiet = keep_alive.saturating_mul(3).saturating_add(timeout);
                    last.store(
                        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    alive.push((last, u64::try_from(quiet.as_millis()).unwrap_or(u64::MAX)));
                }
                Err((code, why)) => {
                    conn.close(timeout).await;
                    return Ok(End::Lost(code, why));
                }
            }
        }
        drop(tx);
        self.host.opcua(OpcuaStat::Items {
            subscriptions: subscriptions.len(),
            monitored_items: monitored,
        });
        self.set_status(LinkStatus::Online, "", pipeline).await?;
        if !refused.is_empty() {
            self.host.opcua(OpcuaStat::BadValues(refused.len() as u64));
            let report = PollReport::default();
            pipeline
                .finish_poll(self.host.as_ref(), &self.device.name, refused, report)
                .await?;
        }
        // Poll groups: next deadline = previous + period (no drift).
        let polls = self.plan.polls.clone();
        let start = Instant::now();
        let mut next: Vec<Instant> = vec![start; polls.len()];
        // Poll-only devices have no subscription, so no notice sender.
        let mut notices_open = !subscriptions.is_empty();
        let mut liveness = tokio::time::interval(self.opts.keep_alive_interval);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let due = (0..polls.len()).min_by_key(|&i| next[i]);
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    conn.close(timeout).await;
                    break End::Shutdown;
                }
                code = conn.lost.recv() => {
                    let code = code.unwrap_or(StatusCode::BadConnectionClosed);
                    break End::Lost(code, format!("connection lost: {code}"));
                }
                n = notices.recv(), if notices_open => match n {
                    Some(Notice::Data(values)) => self.notification(values, pipeline).await?,
                    Some(Notice::Status(code)) => {
                        // The server dropped a subscription: start over, so
                        // every subscription exists again.
                        conn.close(timeout).await;
                        break End::Lost(code, format!("the server ended a subscription: {code}"));
                    }
                    None => notices_open = false,
                },
                _ = liveness.tick(), if !alive.is_empty() => {
                    let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if let Some((_, quiet)) = alive.iter().find(|(last, quiet)| now.saturating_sub(last.load(Ordering::Relaxed)) > *quiet) {
                        // Neither data nor a keep-alive for three keep-alive
                        // periods: the server dropped the subscription
                        // without telling (or publishing broke).
                        conn.close(timeout).await;
                        break End::Lost(
                            StatusCode::BadNoSubscription,
                            format!("a subscription sent nothing for {} ms", quiet),
                        );
                    }
                },
                w = writes.recv(), if self.writes_open => match w {
                    Some(w) => {
                        let r = self.write(&session, &w, &resolve).await;
                        let _ = w.reply.send(r);
                    }
                    None => self.writes_open = false,
                },
                _ = sleep_until(due.map(|i| next[i])) => {
                    let Some(i) = due else { continue };
                    let skipped = reschedule(&mut next[i], polls[i].interval);
                    if let Err((code, why)) = self.poll(&session, &polls[i], &node, skipped, pipeline).await? {
                        conn.close(timeout).await;
                        break End::Lost(code, why);
                    }
                }
            }
        };
        // Notifications already received were acknowledged to the server by
        // the library: publish them before the session is gone.
        while let Ok(n) = notices.try_recv() {
            if let Notice::Data(values) = n {
                self.notification(values, pipeline).await?;
            }
        }
        Ok(end)
    }

    /// Creates the subscription of `g` and its monitored items; returns how
    /// many items the server accepted and the keep-alive period asked for.
    /// Refused items add a BAD sample to `refused`. A failed service call
    /// fails the session.
    async fn subscribe(
        &mut self,
        session: &opcua::client::Session,
        g: &Group,
        node: &impl Fn(&Item) -> Option<NodeId>,
        notifier: Notifier,
        refused: &mut Vec<Sample>,
        ts: u64,
    ) -> Result<(usize, Duration), (StatusCode, String)> {
        let p = g.interval.max(Duration::from_millis(1));
        let ka = self.opts.keep_alive_interval;
        // The server sends a keep-alive at least every keep_alive_interval,
        // and keeps the subscription for at least 3 of them, or the
        // session timeout, whichever is longer.
        let ka_count = u32::try_from(ka.as_millis().div_ceil(p.as_millis()).max(1)).unwrap_or(u32::MAX);
        let life = u32::try_from(self.opts.session_timeout.as_millis().div_ceil(p.as_millis()))
            .unwrap_or(u32::MAX)
            .max(ka_count.saturating_mul(3));
        let id = tokio::time::timeout(
            self.device.timeout,
            // At most 10 000 notifications per Publish response.
            session.create_subscription(p, life, ka_count, 10_000, 0, true, notifier),
        )
        .await
        .map_err(|_| (StatusCode::BadTimeout, "CreateSubscription timed out".to_string()))?
        .map_err(|e| (e.status(), format!("CreateSubscription ({p:?}) failed: {e}")))?;
        // The keep-alive period the server granted (it may revise both).
        let keep_alive = session
            .subscription_state()
            .lock()
            .get(id)
            .map(|s| {
                s.publishing_interval()
                    .saturating_mul(s.max_keep_alive_count().max(1))
            })
            .unwrap_or(p.saturating_mul(ka_count))
            .max(p.saturating_mul(ka_count));
        let mut accepted = 0;
        for chunk in g.items.chunks(self.opts.max_items_per_request.max(1) as usize) {
            let mut requests = Vec::with_capacity(chunk.len());
            let mut sent = Vec::with_capacity(chunk.len());
            for it in chunk {
                let Some(tag) = self.device.tags.get(it.tag) else {
                    continue;
                };
                let Some(node_id) = node(it) else {
                    tracing::warn!(
                        device = self.device.name,
                        tag = tag.name,
                        "namespace URI unknown to the server"
                    );
                    refused.extend(self.failed(it.tag, StatusCode::BadNodeIdUnknown, ts));
                    continue;
                };
                let filter = match it.deadband {
                    (DeadbandType::None, _) => ExtensionObject::null(),
                    (kind, v) => ExtensionObject::from_message(DataChangeFilter {
                        trigger: DataChangeTrigger::StatusValue,
                        deadband_type: if kind == DeadbandType::Absolute { 1 } else { 2 },
                        deadband_value: v,
                    }),
                };
                requests.push(MonitoredItemCreateRequest {
                    item_to_monitor: read_value_id(node_id, AttributeId::Value),
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: it.tag as u32 + 1,
                        sampling_interval: it.sampling_interval.as_secs_f64() * 1000.0,
                        filter,
                        queue_size: it.queue_size,
                        discard_oldest: it.discard_oldest,
                    },
                });
                sent.push(it.tag);
            }
            if requests.is_empty() {
                continue;
            }
            let results = tokio::time::timeout(
                self.device.timeout,
                session.create_monitored_items(id, TimestampsToReturn::Both, requests),
            )
            .await
            .map_err(|_| {
                (
                    StatusCode::BadTimeout,
                    "CreateMonitoredItems timed out".to_string(),
                )
            })?
            .map_err(|e| (e.status(), format!("CreateMonitoredItems failed: {e}")))?;
            if results.len() != sent.len() {
                return Err((
                    StatusCode::BadUnexpectedError,
                    format!(
                        "CreateMonitoredItems answered {} results for {} items",
                        results.len(),
                        sent.len()
                    ),
                ));
            }
            for (t, r) in sent.iter().zip(&results) {
                let code = r.result.status_code;
                if code.is_bad() {
                    if let Some(tag) = self.device.tags.get(*t) {
                        tracing::warn!(device = self.device.name, tag = tag.name, address = tag.address, %code, "monitored item refused");
                        refused.extend(self.failed(*t, code, ts));
                    }
                } else {
                    accepted += 1;
                }
            }
        }
        Ok((accepted, keep_alive))
    }

    /// The samples of one value of tag index `tag` that pass its deadband
    /// (array elements always pass), appended to `out`; returns how many
    /// the deadband withheld.
    fn admit(
        &mut self,
        tag: usize,
        array_mode: config::ArrayMode,
        dv: DataValue,
        now: u64,
        out: &mut Vec<Sample>,
        errors: &mut Vec<PollError>,
    ) -> u32 {
        let Some(t) = self.device.tags.get(tag) else {
            return 0;
        };
        let ts = value::timestamp(&dv, self.opts.timestamp, now);
        let server_bad = dv.status.is_some_and(|s| s.is_bad());
        let mut samples = value::samples(t, dv, array_mode, ts);
        // A value the server sent as usable that does not fit the tag's
        // data type (BadTypeMismatch, BadOutOfRange): the gateway's own
        // refusal, counted (`kind="conversion"`) and logged once per burst.
        if !server_bad {
            if let Some(s) = samples
                .iter()
                .find(|s| s.quality == proto::Quality::Bad as i32 && s.error_code != 0)
            {
                errors.push(PollError {
                    kind: ErrorKind::Conversion,
                    code: s.error_code,
                });
                if let Some(failed) = self.refusals.entry(tag).or_default().note() {
                    let code = StatusCode::from(s.error_code as u32);
                    tracing::warn!(
                        device = self.device.name,
                        tag = t.name,
                        data_type = ?t.data_type,
                        code = %code,
                        failed,
                        "OPC UA value does not convert to the tag's data type; the sample is BAD (logged once per {LOG_EVERY:?} per tag)"
                    );
                }
            }
        }
        if array_mode == config::ArrayMode::Elements {
            let elements = samples.iter().filter(|s| s.tag != t.name).count();
            let mut gone = Vec::new();
            if elements == 0 {
                // The whole value is BAD: its elements are, with its code.
                let code = samples.first().map_or(0, |s| s.error_code);
                if self.elements_bad(tag, 0, code, ts, &mut gone) {
                    samples = gone;
                }
            } else {
                // Elements the array no longer has.
                let code = value::code(StatusCode::BadNoData);
                self.elements_bad(tag, elements, code, ts, &mut gone);
                samples.extend(gone);
                self.elements.insert(tag, elements);
            }
        }
        let mut withheld = 0;
        for s in samples {
            let pass = self
                .deadbands
                .get_mut(tag)
                .is_none_or(|db| s.tag != t.name || db.admit(t, &s));
            if pass {
                out.push(s);
            } else {
                withheld += 1;
            }
        }
        withheld
    }

    /// One notification message → one frame.
    async fn notification(
        &mut self,
        values: Vec<(u32, DataValue)>,
        pipeline: &mut Pipeline,
    ) -> Result<(), DriverError> {
        let t0 = std::time::Instant::now();
        let now = now_ns();
        self.host.opcua(OpcuaStat::Notifications(values.len() as u64));
        let mut samples = Vec::with_capacity(values.len());
        let mut suppressed = 0;
        let mut bad = 0u64;
        let mut errors = Vec::new();
        for (handle, dv) in values {
            let Some(item) = self.items.get(&handle) else {
                continue;
            };
            let (tag, array_mode) = (item.tag, item.array_mode);
            bad += u64::from(dv.status.is_some_and(|s| s.is_bad()));
            suppressed += self.admit(tag, array_mode, dv, now, &mut samples, &mut errors);
        }
        if bad > 0 {
            self.host.opcua(OpcuaStat::BadValues(bad));
        }
        let report = PollReport {
            duration: t0.elapsed(),
            suppressed,
            errors,
            ..PollReport::default()
        };
        pipeline
            .finish_poll(self.host.as_ref(), &self.device.name, samples, report)
            .await
    }

    /// One scan of a poll group: Read requests of at most
    /// `max_nodes_per_read` nodes, one frame. `Err` ends the session.
    async fn poll(
        &mut self,
        session: &opcua::client::Session,
        g: &Group,
        node: &impl Fn(&Item) -> Option<NodeId>,
        skipped_ticks: u32,
        pipeline: &mut Pipeline,
    ) -> Result<Result<(), (StatusCode, String)>, DriverError> {
        let t0 = Instant::now();
        let mut samples = Vec::with_capacity(g.items.len());
        let mut errors = Vec::new();
        let mut requests = 0u32;
        let mut suppressed = 0u32;
        let mut bad = 0u64;
        let mut end = None;
        // After a Read timed out, the rest of the scan fails fast with the
        // same code (a half-open connection must not cost chunks × timeout
        // per scan; the keep-alive replaces the session if it is dead).
        let mut timed_out = false;
        for chunk in g.items.chunks(self.opts.max_nodes_per_read.max(1) as usize) {
            if timed_out {
                let now = now_ns();
                for it in chunk {
                    samples.extend(self.failed(it.tag, StatusCode::BadTimeout, now));
                }
                continue;
            }
            let mut ids = Vec::with_capacity(chunk.len());
            let mut read = Vec::with_capacity(chunk.len());
            for it in chunk {
                match node(it) {
                    Some(n) => {
                        ids.push(read_value_id(n, AttributeId::Value));
                        read.push(it);
                    }
                    None => samples.extend(self.failed(it.tag, StatusCode::BadNodeIdUnknown, now_ns())),
                }
            }
            if ids.is_empty() {
                continue;
            }
            requests += 1;
            let started = std::time::Instant::now();
            let r = tokio::time::timeout(
                self.device.timeout,
                session.read(&ids, TimestampsToReturn::Both, 0.0),
            )
            .await;
            self.host.opcua(OpcuaStat::ReadLatency(started.elapsed()));
            let now = now_ns();
            let values = match r {
                Ok(Ok(v)) if v.len() == ids.len() => Ok(v),
                Ok(Ok(v)) => Err((
                    StatusCode::BadUnexpectedError,
                    ErrorKind::Protocol,
                    format!("Read answered {} values for {} nodes", v.len(), ids.len()),
                )),
                Ok(Err(e)) => Err((e.status(), ErrorKind::Connection, format!("Read failed: {e}"))),
                Err(_) => Err((
                    StatusCode::BadTimeout,
                    ErrorKind::Timeout,
                    "Read timed out".to_string(),
                )),
            };
            match values {
                Ok(values) => {
                    for (it, dv) in read.iter().zip(values) {
                        bad += u64::from(dv.status.is_some_and(|s| s.is_bad()));
                        suppressed += self.admit(it.tag, it.array_mode, dv, now, &mut samples, &mut errors);
                    }
                }
                Err((code, kind, why)) => {
                    errors.push(PollError {
                        kind,
                        code: value::code(code),
                    });
                    for it in &read {
                        samples.extend(self.failed(it.tag, code, now));
                    }
                    // A session the server no longer knows, or a dead
                    // connection, is replaced; anything else is this scan's.
                    timed_out = code == StatusCode::BadTimeout;
                    let name = code.sub_code().name();
                    if name.contains("Session")
                        || name.contains("Connection")
                        || name.contains("NotConnected")
                    {
                        end = Some((code, why));
                        break;
                    }
                }
            }
        }
        if bad > 0 {
            self.host.opcua(OpcuaStat::BadValues(bad));
        }
        let report = PollReport {
            duration: t0.elapsed(),
            requests,
            suppressed,
            skipped_ticks,
            errors,
            ..PollReport::default()
        };
        pipeline
            .finish_poll(self.host.as_ref(), &self.device.name, samples, report)
            .await?;
        Ok(end.map_or(Ok(()), Err))
    }

    async fn write(
        &self,
        session: &opcua::client::Session,
        w: &WriteRequest,
        resolve: &impl Fn(&str) -> Option<u16>,
    ) -> WriteResult {
        let rejected = |m: String| WriteResult::failed(WriteStatus::Rejected, 0, m);
        let Some(tag) = self.device.tag(&w.tag) else {
            return rejected(format!("device {:?} has no tag {:?}", self.device.name, w.tag));
        };
        if tag.access == Access::Read {
            return rejected(format!("tag {:?} is read-only (access = \"Read\")", tag.name));
        }
        if !tag.enabled {
            return rejected(format!("tag {:?} is disabled", tag.name));
        }
        if let Some(v) = sample::numeric(&w.value) {
            if tag.min_value.is_some_and(|lo| v < lo) || tag.max_value.is_some_and(|hi| v > hi) {
                return rejected(format!("{v} is outside the tag's range"));
            }
        }
        let address = match config::NodeAddress::parse(&tag.address) {
            Ok(a) => a,
            Err(m) => return rejected(m),
        };
        let Some(node_id) = plan::node_id(&address, resolve) else {
            return WriteResult::failed(
                WriteStatus::Exception,
                value::code(StatusCode::BadNodeIdUnknown),
                "namespace URI unknown to the server",
            );
        };
        // Written in the node's own type (an Int64 tag may read an Int32
        // node): its DataType attribute, read first; the tag's type when
        // the server does not say or it is not a built-in type.
        let node_type = tokio::time::timeout(
            self.device.timeout,
            session.read(
                &[read_value_id(node_id.clone(), AttributeId::DataType)],
                TimestampsToReturn::Neither,
                0.0,
            ),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|v| match v.into_iter().next()?.value? {
            opcua::types::Variant::NodeId(n) => discover::data_type(&n),
            _ => None,
        });
        let as_node;
        let target = match node_type {
            Some(dt) if dt != tag.data_type => {
                as_node = config::TagConfig {
                    data_type: dt,
                    ..tag.clone()
                };
                &as_node
            }
            _ => tag,
        };
        let variant = match value::variant_for_write(target, &w.value) {
            Ok(v) => v,
            Err(m) => return rejected(m),
        };
        let wv = WriteValue {
            node_id,
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            // Value only: many servers refuse written timestamps.
            value: DataValue {
                value: Some(variant),
                ..DataValue::default()
            },
        };
        match tokio::time::timeout(self.device.timeout, session.write(&[wv])).await {
            Err(_) => WriteResult::failed(
                WriteStatus::Timeout,
                value::code(StatusCode::BadTimeout),
                "no answer to Write within the device timeout",
            ),
            Ok(Err(e)) => {
                WriteResult::failed(WriteStatus::Connection, value::code(e.status()), e.to_string())
            }
            Ok(Ok(codes)) => match codes.first() {
                Some(c) if c.is_good() => WriteResult::ok(),
                Some(c) => WriteResult::failed(
                    WriteStatus::Exception,
                    value::code(*c),
                    format!("the server refused the write: {c}"),
                ),
                None => WriteResult::failed(
                    WriteStatus::Protocol,
                    value::code(StatusCode::BadUnexpectedError),
                    "Write answered no result",
                ),
            },
        }
    }
}

/// A Read of `attribute` of `node_id` (whole value, default encoding).
pub(crate) fn read_value_id(node_id: NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id,
        attribute_id: attribute as u32,
        index_range: NumericRange::None,
        data_encoding: QualifiedName::null(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Next deadline = previous + period; ticks already past are skipped and
/// returned (to be reported).
fn reschedule(next: &mut Instant, period: Duration) -> u32 {
    let now = Instant::now();
    *next += period;
    if *next > now {
        return 0;
    }
    let behind = now.duration_since(*next).as_nanos() / period.as_nanos().max(1);
    let skipped = u32::try_from(behind + 1).unwrap_or(u32::MAX);
    *next += period.saturating_mul(skipped);
    skipped
}
