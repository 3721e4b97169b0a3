//! `type = "influxdb"`: samples and events from the bus as InfluxDB line
//! protocol, through the v1 (`/write`) or v2 (`/api/v2/write`) write API.
//!
//! # Guarantees
//! - The cursor is acknowledged only after the server confirmed every line
//!   of the batch (2xx), or a line it refused was set aside in the
//!   dead-letter file (fsynced first). A crash or restart replays the
//!   unacknowledged frames; since every point's timestamp is the sample's
//!   source time, a replayed point overwrites itself: **exactly once in
//!   storage**.
//! - Network errors, timeouts, 5xx and 429 are retried with exponential
//!   backoff and jitter (honouring `Retry-After`, up to 5 minutes);
//!   401/403/404 need an operator: the sink is marked unhealthy (`/readyz`
//!   503) and retries every `max_retry_interval`; the sink
//!   never skips data because the server is down — frames wait in the WAL.
//! - 400 (bad data) and 413 (too large) split the batch in halves until
//!   the offending lines are alone; a single refused line goes to
//!   `<data_dir>/dead-letter/<sink>.jsonl` and the rest flows. A bad point
//!   never stops the sink.
//!
//! # Mapping
//! A sample becomes one point of `measurement` (default `device_data`)
//! with tags `device_id`, `device_name`, `tag_name`, `protocol`,
//! `location`, `unit` (+ the sink's static `tags`) and fields `value`
//! (every number, as a float), `value_int` / `value_uint` (integers,
//! exact), `value_bool`, `value_str`, the same for `raw_value`, `quality`
//! and `error_code`. InfluxDB fixes a field's type per measurement, so one
//! typed `value` field could not hold a float for one tag and a boolean
//! for another; the float `value` is what dashboards query. An event
//! becomes a point of `event_measurement` (default `alert_events`).

pub mod line;

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use config::{DeviceConfig, InfluxApi, InfluxSinkConfig, UnsignedAs};
use proto::{value::Kind, FrameEnvelope, FrameType, Value};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{SinkContext, SinkError};
use crate::metrics::{SinkCauseLabels, SinkLabel};
use crate::status::lock;
use crate::supervisor::wait_true;
use line::{FieldValue, Unsigned};

/// What the sink knows about a device to tag its points.
#[derive(Debug, Clone, Default)]
pub struct DeviceMeta {
    pub protocol: &'static str,
    pub location: String,
    pub units: HashMap<String, String>,
}

/// Devices by name, shared by the InfluxDB sinks and kept current by the
/// runtime on every reload ([`DeviceIndex::update`]).
#[derive(Clone, Default)]
pub struct DeviceIndex(Arc<std::sync::RwLock<HashMap<String, DeviceMeta>>>);

impl DeviceIndex {
    pub fn new(devices: &[DeviceConfig]) -> DeviceIndex {
        let index = DeviceIndex::default();
        index.update(devices);
        index
    }

    /// Replaces the index with `devices` (SIGHUP).
    pub fn update(&self, devices: &[DeviceConfig]) {
        let map = devices
            .iter()
            .map(|d| {
                let units = d
                    .tags
                    .iter()
                    .filter_map(|t| Some((t.name.clone(), t.unit.clone()?)))
                    .collect();
                let meta = DeviceMeta {
                    protocol: d.protocol.as_str(),
                    location: d.location.clone().unwrap_or_default(),
                    units,
                };
                (d.name.clone(), meta)
            })
            .collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, DeviceMeta>> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lines of one batch: `text[ends[i-1]..ends[i]]` is line `i`, so any run
/// of lines is one contiguous slice (splitting costs no copy).
#[derive(Default)]
struct Batch {
    text: String,
    ends: Vec<usize>,
    first_seq: u64,
    last_seq: u64,
    frames: usize,
    skipped_fields: u64,
    skipped_points: u64,
}

impl Batch {
    fn lines(&self) -> usize {
        self.ends.len()
    }
    fn slice(&self, a: usize, b: usize) -> &str {
        let start = if a == 0 { 0 } else { self.ends[a - 1] };
        &self.text[start..self.ends[b - 1]]
    }
}

fn numeric(k: &Kind) -> Option<f64> {
    match *k {
        Kind::IntValue(i) => Some(i as f64),
        Kind::UintValue(u) => Some(u as f64),
        Kind::FloatValue(f) => Some(f),
        _ => None,
    }
}

/// The fields of a typed value under `name` (`value` or `raw_value`).
fn value_fields<'a>(
    name: &'static str,
    v: &'a Value,
    hex: &'a mut String,
    out: &mut Vec<(&'static str, FieldValue<'a>)>,
) {
    let Some(k) = v.kind.as_ref() else { return };
    let (int_key, uint_key, bool_key, str_key) = if name == "value" {
        ("value_int", "value_uint", "value_bool", "value_str")
    } else {
        (
            "raw_value_int",
            "raw_value_uint",
            "raw_value_bool",
            "raw_value_str",
        )
    };
    if let Some(f) = numeric(k) {
        out.push((name, FieldValue::Float(f)));
    }
    match k {
        Kind::IntValue(i) => out.push((int_key, FieldValue::Int(*i))),
        Kind::UintValue(u) => out.push((uint_key, FieldValue::UInt(*u))),
        Kind::BoolValue(b) => out.push((bool_key, FieldValue::Bool(*b))),
        Kind::StringValue(s) => out.push((str_key, FieldValue::Str(s))),
        Kind::BytesValue(b) => {
            *hex = b.iter().map(|x| format!("{x:02x}")).collect();
            out.push((str_key, FieldValue::Str(hex)));
        }
        Kind::FloatValue(_) => {}
    }
}

struct Encoder {
    cfg: InfluxSinkConfig,
    index: DeviceIndex,
    unsigned: Unsigned,
}

impl Encoder {
    /// The key written for built-in tag `k` (renamed by `tag_keys`).
    fn key<'a>(&'a self, k: &'a str) -> &'a str {
        self.cfg.tag_keys.get(k).map_or(k, String::as_str)
    }

    /// Appends the points of one frame; undecodable payloads are counted
    /// by the bus reader already and skipped here.
    fn frame(&self, f: &FrameEnvelope, b: &mut Batch) {
        if b.first_seq == 0 {
            b.first_seq = f.sequence_id;
        }
        b.last_seq = f.sequence_id;
        b.frames += 1;
        let static_tags: Vec<(&str, &str)> = self
            .cfg
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match FrameType::try_from(f.frame_type) {
            Ok(FrameType::Data) => {
                let Ok(d) = f.data_frame() else { return };
                let index = self.index.read();
                let meta = index.get(&d.device_id);
                for s in &d.samples {
                    let unit = meta.and_then(|m| m.units.get(&s.tag)).map_or("", String::as_str);
                    let mut tags = vec![
                        (self.key("device_id"), d.device_id.as_str()),
                        (self.key("device_name"), d.device_id.as_str()),
                        (self.key("tag_name"), s.tag.as_str()),
                        (self.key("protocol"), meta.map_or("", |m| m.protocol)),
                        (self.key("location"), meta.map_or("", |m| m.location.as_str())),
                        (self.key("unit"), unit),
                    ];
                    tags.extend(static_tags.iter().copied());
                    let (mut h1, mut h2) = (String::new(), String::new());
                    let mut fields = Vec::with_capacity(6);
                    if let Some(v) = &s.value {
                        value_fields("value", v, &mut h1, &mut fields);
                    }
                    if let Some(v) = &s.raw_value {
                        value_fields("raw_value", v, &mut h2, &mut fields);
                    }
                    fields.push(("quality", FieldValue::Int(s.quality.into())));
                    fields.push(("error_code", FieldValue::Int(s.error_code.into())));
                    let ts = if s.source_ts_ns == 0 {
                        f.timestamp_ns
                    } else {
                        s.source_ts_ns
                    };
                    self.push(b, &self.cfg.measurement, &tags, &fields, ts);
                }
            }
            Ok(FrameType::Event) => {
                let Ok(e) = f.event_frame() else { return };
                let kind = proto::EventKind::try_from(e.kind).map_or("UNKNOWN", |k| k.as_str_name());
                let level = proto::AlertLevel::try_from(e.level).map_or("", |l| l.as_str_name());
                let level = if e.level == 0 { "" } else { level };
                let mut tags = vec![
                    (self.key("event_type"), kind),
                    (self.key("device_id"), e.device_id.as_str()),
                    (self.key("tag_name"), e.tag.as_str()),
                    (self.key("rule_id"), e.rule_id.as_str()),
                    (self.key("level"), level),
                    (self.key("status"), e.status.as_str()),
                ];
                tags.extend(static_tags.iter().copied());
                let mut hex = String::new();
                let mut fields = vec![
                    ("event_id", FieldValue::Str(&e.event_id)),
                    ("message", FieldValue::Str(&e.message)),
                ];
                if let Some(v) = &e.value {
                    value_fields("value", v, &mut hex, &mut fields);
                }
                let ts = if e.event_ts_ns == 0 {
                    f.timestamp_ns
                } else {
                    e.event_ts_ns
                };
                self.push(b, &self.cfg.event_measurement, &tags, &fields, ts);
            }
            // Commands are the audit trail, not measurements.
            _ => {}
        }
    }

    fn push(
        &self,
        b: &mut Batch,
        m: &str,
        tags: &[(&str, &str)],
        fields: &[(&str, FieldValue<'_>)],
        ts: u64,
    ) {
        let k = line::point(&mut b.text, m, tags, fields, ts, self.unsigned);
        b.skipped_fields += u64::from(k.non_finite_fields);
        if k.point {
            b.skipped_points += 1;
        } else {
            b.ends.push(b.text.len());
        }
    }
}

/// How one write request ended.
pub(crate) enum Outcome {
    Written,
    /// Retry the same request later (`cause` for logs and metrics).
    Retry {
        /// Metric label: network, timeout, throttled, server.
        kind: &'static str,
        cause: String,
        after: Option<Duration>,
    },
    /// The server refused the content (400) or its size (413).
    Refused {
        message: String,
    },
    /// 401/403 (credentials) or 404 (no such database/bucket): needs an
    /// operator; retried at the slowest pace, the sink is unhealthy.
    Misconfigured {
        /// Metric label: unauthorized, not_found.
        kind: &'static str,
        message: String,
    },
}

/// One server's write endpoint (shared with `gateway dead-letter replay`).
pub(crate) struct Writer {
    client: reqwest::Client,
    url: String,
    cfg: InfluxSinkConfig,
}

impl Writer {
    pub(crate) fn new(cfg: &InfluxSinkConfig) -> Result<Writer, SinkError> {
        let base = cfg.url.trim_end_matches('/');
        let mut url = match cfg.api {
            InfluxApi::V1 => format!("{base}/write?precision=ns"),
            InfluxApi::V2 => format!("{base}/api/v2/write?precision=ns"),
        };
        let mut q = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                url.push_str(&format!("&{k}={}", urlencode(v)));
            }
        };
        match cfg.api {
            InfluxApi::V1 => {
                q("db", &cfg.database);
                q("rp", &cfg.retention_policy);
            }
            InfluxApi::V2 => {
                q("org", &cfg.org);
                q("bucket", &cfg.bucket);
            }
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| SinkError::Setup(format!("HTTP client: {e}")))?;
        Ok(Writer {
            client,
            url,
            cfg: cfg.clone(),
        })
    }

    pub(crate) async fn post(&self, body: &str) -> Outcome {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "text/plain; charset=utf-8");
        req = match self.cfg.api {
            InfluxApi::V1 => match &self.cfg.username {
                Some(u) => req.basic_auth(u, self.cfg.password.as_deref()),
                None => req,
            },
            InfluxApi::V2 => match &self.cfg.token {
                Some(t) => req.header("authorization", format!("Token {t}")),
                None => req,
            },
        };
        req = if self.cfg.gzip {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(body.as_bytes());
            match enc.finish() {
                Ok(gz) => req.header("content-encoding", "gzip").body(gz),
                Err(_) => req.body(body.to_string()),
            }
        } else {
            req.body(body.to_string())
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Outcome::Retry {
                    kind: "timeout",
                    cause: "timeout".into(),
                    after: None,
                }
            }
            Err(e) => {
                return Outcome::Retry {
                    kind: "network",
                    cause: format!("network: {e}"),
                    after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if (200..300).contains(&status) {
            return Outcome::Written;
        }
        let text = resp.text().await.unwrap_or_default();
        let message = format!("HTTP {status}: {}", text.trim());
        match status {
            400 | 413 | 422 => Outcome::Refused { message },
            401 | 403 => Outcome::Misconfigured {
                kind: "unauthorized",
                message,
            },
            404 => Outcome::Misconfigured {
                kind: "not_found",
                message,
            },
            429 => Outcome::Retry {
                kind: "throttled",
                cause: format!("throttled: {message}"),
                after,
            },
            _ => Outcome::Retry {
                kind: "server",
                cause: message,
                after,
            },
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Set-aside lines, one JSON object each, fsynced before the cursor moves.
struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    fn append(&self, sink: &str, b: &Batch, line: &str, error: &str) -> Result<(), SinkError> {
        let io = |source| SinkError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        let record = serde_json::json!({
            "ts": crate::status::rfc3339(crate::now_ns()),
            "sink": sink,
            "first_seq": b.first_seq,
            "last_seq": b.last_seq,
            "error": error,
            "line": line.trim_end_matches('\n'),
        });
        writeln!(f, "{record}").map_err(io)?;
        f.sync_data().map_err(io)
    }
}

/// A batch being written by its own task.
struct InFlight {
    last_seq: u64,
    lines: u64,
    task: tokio::task::JoinHandle<Result<bool, SinkError>>,
}

/// Everything a write task needs, shared.
struct Shared {
    ctx: SinkContext,
    writer: Writer,
    dead: DeadLetter,
    label: SinkLabel,
    batch_lines: usize,
    batch_bytes: usize,
}

/// Writes a whole batch in requests of at most `batch_lines` lines and
/// `batch_bytes` bytes (at least one line each). `Ok(false)`: shutdown.
async fn write_batch(sh: Arc<Shared>, batch: Batch) -> Result<bool, SinkError> {
    let mut shutdown = sh.ctx.shutdown.clone();
    let n = batch.lines();
    let mut a = 0;
    while a < n {
        let start = if a == 0 { 0 } else { batch.ends[a - 1] };
        let mut b = a + 1;
        while b < n && b - a < sh.batch_lines && batch.ends[b] - start <= sh.batch_bytes {
            b += 1;
        }
        if !write_range(&sh, &batch, a, b, &mut shutdown).await? {
            return Ok(false);
        }
        a = b;
    }
    Ok(true)
}

type TaskResult = Result<Result<bool, SinkError>, tokio::task::JoinError>;

/// The oldest write's result (pending forever when none is in flight).
async fn front_task(inflight: &mut VecDeque<InFlight>) -> TaskResult {
    match inflight.front_mut() {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// Acknowledges a finished write. `Ok(false)`: it stopped for shutdown
/// (nothing more may be acknowledged).
fn finish(
    f: Option<InFlight>,
    done: TaskResult,
    sub: &frame_bus::Subscription,
    sh: &Shared,
) -> Result<bool, SinkError> {
    let Some(f) = f else { return Ok(true) };
    match done {
        Ok(Ok(true)) => {
            // In order: every batch before this one was acknowledged already.
            sub.ack(f.last_seq)?;
            sh.ctx
                .metrics
                .sink_written
                .get_or_create(&sh.label)
                .inc_by(f.lines);
            let mut st = lock(&sh.ctx.state);
            st.written += f.lines;
            st.last_error = None;
            Ok(true)
        }
        Ok(Ok(false)) => Ok(false),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(SinkError::Setup(format!("write task failed: {e}"))),
    }
}

/// Waits for every write in flight, acknowledging in order.
async fn settle_all(
    inflight: &mut VecDeque<InFlight>,
    sub: &frame_bus::Subscription,
    sh: &Shared,
) -> Result<bool, SinkError> {
    while !inflight.is_empty() {
        let done = front_task(inflight).await;
        if !finish(inflight.pop_front(), done, sub, sh)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Runs the sink until shutdown: batches are encoded here and written by
/// up to `concurrency` tasks; their frames are acknowledged in order.
pub async fn run(
    ctx: SinkContext,
    cfg: InfluxSinkConfig,
    index: DeviceIndex,
    data_dir: PathBuf,
) -> Result<(), SinkError> {
    let mut shutdown = ctx.shutdown.clone();
    let mut sub = ctx.bus.subscribe(&ctx.name, None)?;
    let sh = Arc::new(Shared {
        writer: Writer::new(&cfg)?,
        dead: DeadLetter {
            path: data_dir.join("dead-letter").join(format!("{}.jsonl", ctx.name)),
        },
        label: SinkLabel {
            sink: ctx.name.clone(),
        },
        batch_lines: cfg.batch_lines.max(1),
        batch_bytes: usize::try_from(cfg.batch_bytes).unwrap_or(usize::MAX),
        ctx: ctx.clone(),
    });
    let encoder = Encoder {
        unsigned: match (cfg.unsigned, cfg.api) {
            (Some(UnsignedAs::Native), _) | (None, InfluxApi::V2) => Unsigned::Native,
            (Some(UnsignedAs::Integer), _) | (None, InfluxApi::V1) => Unsigned::AsInteger,
        },
        cfg: cfg.clone(),
        index,
    };
    info!(
        sink = ctx.name,
        url = sh.writer.url,
        from = sub.position(),
        concurrency = cfg.concurrency,
        "influxdb sink started"
    );
    const FRAMES: usize = 256;
    let concurrency = cfg.concurrency.max(1);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    loop {
        while inflight.len() >= concurrency {
            let done = front_task(&mut inflight).await;
            if !finish(inflight.pop_front(), done, &sub, &sh)? {
                return Ok(());
            }
        }
        let first = tokio::select! {
            biased;
            // Writes in flight give up on shutdown after their current
            // request; what they finished is acknowledged in order.
            _ = wait_true(&mut shutdown) => {
                settle_all(&mut inflight, &sub, &sh).await?;
                return Ok(());
            }
            done = front_task(&mut inflight), if !inflight.is_empty() => {
                if !finish(inflight.pop_front(), done, &sub, &sh)? {
                    return Ok(());
                }
                continue;
            }
            r = sub.recv_batch(1) => r?,
        };
        let mut batch = Batch::default();
        for f in &first {
            encoder.frame(f, &mut batch);
        }
        // Fill up to batch_lines / batch_bytes, waiting at most
        // flush_interval. On shutdown the batch in hand is still written.
        let deadline = Instant::now() + cfg.flush_interval;
        let mut stopping = false;
        while batch.lines() < sh.batch_lines && batch.text.len() < sh.batch_bytes {
            // Read about as many frames as fill the batch, so batches stay
            // near batch_lines and `concurrency` has several to spread.
            let per_frame = (batch.lines() / batch.frames.max(1)).max(1);
            let want = ((sh.batch_lines - batch.lines()) / per_frame).clamp(1, FRAMES);
            let more = sub.try_recv_batch(want)?;
            if !more.is_empty() {
                more.iter().for_each(|f| encoder.frame(f, &mut batch));
                continue;
            }
            tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => {
                    stopping = true;
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => break,
                r = sub.recv_batch(want) => r?.iter().for_each(|f| encoder.frame(f, &mut batch)),
            }
        }
        if batch.skipped_fields + batch.skipped_points > 0 {
            warn!(
                sink = ctx.name,
                fields = batch.skipped_fields,
                points = batch.skipped_points,
                "NaN/Inf values cannot be written to InfluxDB; left out"
            );
        }
        inflight.push_back(InFlight {
            last_seq: batch.last_seq,
            lines: batch.lines() as u64,
            task: tokio::spawn(write_batch(sh.clone(), batch)),
        });
        if stopping {
            settle_all(&mut inflight, &sub, &sh).await?;
            return Ok(());
        }
    }
}

/// Writes lines `a..b` of `batch`, splitting refused requests down to
/// single lines (dead-lettered). `Ok(false)`: shutdown came first.
async fn write_range(
    sh: &Shared,
    batch: &Batch,
    a: usize,
    b: usize,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<bool, SinkError> {
    let (ctx, writer, dead, label) = (&sh.ctx, &sh.writer, &sh.dead, &sh.label);
    let mut todo = vec![(a, b)];
    while let Some((a, b)) = todo.pop() {
        let mut attempt = 0u32;
        loop {
            let t0 = Instant::now();
            let outcome = writer.post(batch.slice(a, b)).await;
            ctx.metrics
                .sink_write_duration
                .get_or_create(label)
                .observe(t0.elapsed().as_secs_f64());
            let error_kind = match &outcome {
                Outcome::Written => None,
                Outcome::Retry { kind, .. } => Some(*kind),
                Outcome::Refused { .. } => Some("refused"),
                Outcome::Misconfigured { kind, .. } => Some(*kind),
            };
            if let Some(cause) = error_kind {
                ctx.metrics
                    .sink_write_errors
                    .get_or_create(&SinkCauseLabels {
                        sink: ctx.name.clone(),
                        cause: cause.to_string(),
                    })
                    .inc();
            }
            let (cause, after, slow) = match outcome {
                Outcome::Written => {
                    lock(&ctx.state).unhealthy = None;
                    break;
                }
                Outcome::Refused { message } if b - a > 1 => {
                    let m = a + (b - a) / 2;
                    todo.push((m, b));
                    todo.push((a, m));
                    tracing::debug!(
                        sink = ctx.name,
                        lines = b - a,
                        message,
                        "batch refused; splitting"
                    );
                    break;
                }
                Outcome::Refused { message } => {
                    let line = batch.slice(a, b);
                    warn!(
                        sink = ctx.name,
                        error = message,
                        line = line.trim_end(),
                        "line refused by the server; dead-lettered"
                    );
                    tokio::task::block_in_place(|| dead.append(&ctx.name, batch, line, &message))?;
                    ctx.metrics.sink_dead_lettered.get_or_create(label).inc();
                    break;
                }
                Outcome::Retry { cause, after, .. } => (cause, after, false),
                Outcome::Misconfigured { kind, message } => {
                    let why = if kind == "unauthorized" {
                        "credentials refused"
                    } else {
                        "database or bucket not found"
                    };
                    lock(&ctx.state).unhealthy = Some(format!("{why}: {message}"));
                    (message, None, true)
                }
            };
            attempt += 1;
            ctx.metrics.sink_retries.get_or_create(label).inc();
            ctx.metrics.sink_failures.get_or_create(label).inc();
            if attempt == 1 || attempt.is_power_of_two() {
                warn!(sink = ctx.name, attempt, cause, "write failed; retrying");
            }
            lock(&ctx.state).last_error = Some(cause);
            let max = writer.cfg.max_retry_interval;
            let backoff = if slow {
                max
            } else {
                let base = Duration::from_millis(100).saturating_mul(2u32.saturating_pow(attempt.min(16)));
                // ±25 % jitter so many gateways do not retry in step.
                base.min(max).mul_f64(0.75 + fastrand::f64() * 0.5)
            };
            // The server's Retry-After wins over our backoff, up to 5 minutes.
            let wait = after.map_or(backoff, |a| a.min(Duration::from_secs(300)));
            tokio::select! {
                biased;
                _ = wait_true(shutdown) => return Ok(false),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(index: DeviceIndex) -> Encoder {
        let cfg: InfluxSinkConfig =
            toml::from_str("url = \"http://x\"\nbucket = \"b\"\n[tags]\ngateway_id = \"gw 1\"").unwrap();
        Encoder {
            cfg,
            index,
            unsigned: Unsigned::Native,
        }
    }

    #[test]
    fn samples_map_to_device_data_points() {
        let mut meta = DeviceMeta {
            protocol: "modbus-tcp",
            location: "Hall 3".into(),
            ..DeviceMeta::default()
        };
        meta.units.insert("temp".into(), "°C".into());
        let index = DeviceIndex::default();
        index.0.write().unwrap().insert("boiler-1".to_string(), meta);
        let frame = proto::DataFrame {
            device_id: "boiler-1".into(),
            samples: vec![
                proto::Sample {
                    tag: "temp".into(),
                    value: Some(Value::float(71.5)),
                    raw_value: Some(Value::uint(715)),
                    quality: 0,
                    source_ts_ns: 42,
                    error_code: 0,
                },
                proto::Sample {
                    tag: "on".into(),
                    value: Some(Value::bool(true)),
                    raw_value: None,
                    quality: 0,
                    source_ts_ns: 43,
                    error_code: 0,
                },
                proto::Sample {
                    tag: "gone".into(),
                    value: None,
                    raw_value: None,
                    quality: 1,
                    source_ts_ns: 44,
                    error_code: -1,
                },
            ],
        };
        let env = FrameEnvelope::new(7, 1000, FrameType::Data, proto::Message::encode_to_vec(&frame));
        let mut b = Batch::default();
        encoder(index).frame(&env, &mut b);
        assert_eq!(b.lines(), 3);
        assert_eq!((b.first_seq, b.last_seq), (7, 7));
        assert_eq!(
            b.text,
            "device_data,device_id=boiler-1,device_name=boiler-1,tag_name=temp,protocol=modbus-tcp,location=Hall\\ 3,unit=°C,gateway_id=gw\\ 1 value=71.5,raw_value=715,raw_value_uint=715u,quality=0i,error_code=0i 42\n\
             device_data,device_id=boiler-1,device_name=boiler-1,tag_name=on,protocol=modbus-tcp,location=Hall\\ 3,gateway_id=gw\\ 1 value_bool=true,quality=0i,error_code=0i 43\n\
             device_data,device_id=boiler-1,device_name=boiler-1,tag_name=gone,protocol=modbus-tcp,location=Hall\\ 3,gateway_id=gw\\ 1 quality=1i,error_code=-1i 44\n"
        );
        assert_eq!(
            b.slice(1, 2),
            b.text.lines().nth(1).map(|l| format!("{l}\n")).unwrap()
        );
    }

    #[test]
    fn built_in_tag_keys_can_be_renamed() {
        let cfg: InfluxSinkConfig =
            toml::from_str("url = \"http://x\"\nbucket = \"b\"\nmeasurement = \"plant\"\n[tag_keys]\ndevice_id = \"machine\"\ntag_name = \"signal\"")
                .unwrap();
        let e = Encoder {
            cfg,
            index: DeviceIndex::default(),
            unsigned: Unsigned::Native,
        };
        let frame = proto::DataFrame {
            device_id: "press-7".into(),
            samples: vec![proto::Sample {
                tag: "force".into(),
                value: Some(Value::float(1.5)),
                raw_value: None,
                quality: 0,
                source_ts_ns: 9,
                error_code: 0,
            }],
        };
        let env = FrameEnvelope::new(1, 1, FrameType::Data, proto::Message::encode_to_vec(&frame));
        let mut b = Batch::default();
        e.frame(&env, &mut b);
        assert_eq!(
            b.text,
            "plant,machine=press-7,device_name=press-7,signal=force value=1.5,quality=0i,error_code=0i 9\n"
        );
    }

    #[test]
    fn url_encoding_of_names() {
        assert_eq!(urlencode("my db/ä"), "my%20db%2F%C3%A4");
    }
}
