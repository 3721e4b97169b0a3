//! Prometheus metrics (`/metrics`, OpenMetrics text, prefix `gateway_`).
//!
//! Families owned by the gateway (devices, sinks, supervision) are live
//! `prometheus-client` metrics; the frame bus's counters and positions are
//! read from `FrameBus::stats()` at scrape time by [`BusCollector`], so
//! there is one source of truth and nothing to keep in sync.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `gateway_frames_published_total` | counter | |
//! | `gateway_samples_published_total` | counter | device |
//! | `gateway_wal_head_seq`, `gateway_wal_oldest_seq`, `gateway_wal_stored_frames` | gauge | |
//! | `gateway_wal_size_bytes` | gauge | |
//! | `gateway_wal_bytes_published_total`, `gateway_wal_batches_total`, `gateway_wal_fsyncs_total` | counter | |
//! | `gateway_wal_publish_errors_total`, `gateway_wal_disk_full_rejections_total` | counter | |
//! | `gateway_wal_corrupt_frames_total` | counter | |
//! | `gateway_wal_dropped_frames_total` | counter | reason = max_age, max_bytes |
//! | `gateway_wal_deleted_frames_total` | counter | (acknowledged by every consumer) |
//! | `gateway_wal_publish_duration_seconds` | histogram | |
//! | `gateway_consumer_cursor_seq`, `gateway_consumer_lag_frames` | gauge | consumer |
//! | `gateway_consumer_skipped_frames_total` | counter | consumer (dropped by retention before read) |
//! | `gateway_device_up` | gauge | device |
//! | `gateway_device_polls_total` | counter | device |
//! | `gateway_device_errors_total` | counter | device, kind = timeout, connection, protocol, exception, conversion, device, bus; code (the driver's error code: Modbus exception code, or -1 timeout, -2 connection, -3 malformed; 0 when none) |
//! | `gateway_device_requests_total` | counter | device (requests sent, busy retries included) |
//! | `gateway_device_skipped_ticks_total` | counter | device (scheduled polls skipped after an overrun) |
//! | `gateway_device_suppressed_samples_total` | counter | device (withheld by deadband) |
//! | `gateway_device_writes_total` | counter | device, result = ok, rejected, exception, timeout, connection, protocol, unsupported |
//! | `gateway_device_poll_duration_seconds` | histogram | device |
//! | `gateway_task_restarts_total` | counter | task, kind = driver, sink |
//! | `gateway_sink_frames_written_total`, `gateway_sink_retries_total`, `gateway_sink_failures_total`, `gateway_sink_dead_lettered_total` | counter | sink (the InfluxDB sink counts points written) |
//! | `gateway_sink_write_errors_total` | counter | sink, cause = network, timeout, throttled, server, unauthorized, refused (InfluxDB); unreachable, timeout, schema, unauthorized, rejected, unmatched (PostgreSQL) |
//! | `gateway_sink_up` | gauge | sink (PostgreSQL store, webhook and MQTT sinks: 1 while it can write, 0 while it retries) |
//! | `gateway_sink_write_duration_seconds` | histogram | sink (one write request of the InfluxDB sink, one batch transaction of the PostgreSQL store) |
//! | `gateway_config_reloads_total` | counter | result = ok, error |
//! | `gateway_alert_evaluations_total` | counter | (rule conditions evaluated, on samples and on ticks) |
//! | `gateway_alert_eval_errors_total` | counter | (expressions that failed at run time, e.g. a type error in a branch the load-time check did not reach, or a NaN result) |
//! | `gateway_alerts_active` | gauge | level (open alerts: fired, not resolved or suppressed) |
//! | `gateway_alerts_fired_total`, `gateway_alerts_resolved_total` | counter | level |
//! | `gateway_notifications_total` | counter | sink, result = sent, failed, rejected (webhook requests) |
//! | `gateway_mqtt_messages_received_total` | counter | device (MQTT driver: messages received, malformed ones included) |
//! | `gateway_mqtt_messages_acked_total` | counter | device (acknowledged to the broker after their frame reached the bus) |
//! | `gateway_mqtt_parse_errors_total` | counter | device, reason = too_large, empty, not_utf8, not_json, missing_pointer, null, wrong_type, out_of_range, bad_timestamp, unmatched |
//! | `gateway_mqtt_messages_published_total` | counter | sink (MQTT sink: messages handed to the broker connection) |
//! | `gateway_mqtt_publish_acks_total` | counter | sink (PUBACK received) |
//! | `gateway_mqtt_inflight_messages` | gauge | sink (published, not yet confirmed) |
//! | `gateway_opcua_session_up` | gauge | device (OPC UA: 1 while the session and its subscriptions exist) |
//! | `gateway_opcua_session_attempts_total` | counter | device, result = ok, failed (each session attempt; more than one `ok` means reconnects) |
//! | `gateway_opcua_subscriptions`, `gateway_opcua_monitored_items` | gauge | device (created on the server in the current session; 0 without one) |
//! | `gateway_opcua_notifications_total` | counter | device (data change notifications received) |
//! | `gateway_opcua_bad_values_total` | counter | device (values with a Bad status, refused monitored items included) |
//! | `gateway_opcua_read_duration_seconds` | histogram | device (one Read request of poll mode) |
//! | `gateway_build_info` | info | version |

use std::sync::Arc;

use frame_bus::FrameBus;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceErrorLabels {
    pub device: String,
    pub kind: String,
    pub code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceResultLabels {
    pub device: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkCauseLabels {
    pub sink: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    pub level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabels {
    pub sink: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceReasonLabels {
    pub device: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn poll_histogram() -> Histogram {
    // 100 µs … ~26 s
    Histogram::new(exponential_buckets(0.000_1, 4.0, 10))
}

/// The gateway's live metric families.
pub struct Metrics {
    registry: Registry,
    pub samples_published: Family<DeviceLabel, Counter>,
    pub device_up: Family<DeviceLabel, Gauge>,
    pub device_polls: Family<DeviceLabel, Counter>,
    pub device_errors: Family<DeviceErrorLabels, Counter>,
    pub poll_duration: HistogramFamily<DeviceLabel>,
    pub device_requests: Family<DeviceLabel, Counter>,
    pub skipped_ticks: Family<DeviceLabel, Counter>,
    pub suppressed_samples: Family<DeviceLabel, Counter>,
    pub device_writes: Family<DeviceResultLabels, Counter>,
    pub task_restarts: Family<TaskLabels, Counter>,
    pub sink_written: Family<SinkLabel, Counter>,
    pub sink_retries: Family<SinkLabel, Counter>,
    pub sink_failures: Family<SinkLabel, Counter>,
    pub sink_dead_lettered: Family<SinkLabel, Counter>,
    pub sink_write_errors: Family<SinkCauseLabels, Counter>,
    pub sink_up: Family<SinkLabel, Gauge>,
    pub sink_write_duration: HistogramFamily<SinkLabel>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub alert_evaluations: Counter,
    pub alert_eval_errors: Counter,
    pub alerts_active: Family<LevelLabel, Gauge>,
    pub alerts_fired: Family<LevelLabel, Counter>,
    pub alerts_resolved: Family<LevelLabel, Counter>,
    pub notifications: Family<SinkResultLabels, Counter>,
    pub mqtt_received: Family<DeviceLabel, Counter>,
    pub mqtt_acked: Family<DeviceLabel, Counter>,
    pub mqtt_parse_errors: Family<DeviceReasonLabels, Counter>,
    pub mqtt_published: Family<SinkLabel, Counter>,
    pub mqtt_publish_acks: Family<SinkLabel, Counter>,
    pub mqtt_inflight: Family<SinkLabel, Gauge>,
    pub opcua_session_up: Family<DeviceLabel, Gauge>,
    pub opcua_session_attempts: Family<DeviceResultLabels, Counter>,
    pub opcua_subscriptions: Family<DeviceLabel, Gauge>,
    pub opcua_monitored_items: Family<DeviceLabel, Gauge>,
    pub opcua_notifications: Family<DeviceLabel, Counter>,
    pub opcua_bad_values: Family<DeviceLabel, Counter>,
    pub opcua_read_duration: HistogramFamily<DeviceLabel>,
}

impl Metrics {
    pub fn new(bus: FrameBus) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("gateway");
        let samples_published = Family::<DeviceLabel, Counter>::default();
        let device_up = Family::<DeviceLabel, Gauge>::default();
        let device_polls = Family::<DeviceLabel, Counter>::default();
        let device_errors = Family::<DeviceErrorLabels, Counter>::default();
        let poll_duration: HistogramFamily<DeviceLabel> = Family::new_with_constructor(poll_histogram);
        let device_requests = Family::<DeviceLabel, Counter>::default();
        let skipped_ticks = Family::<DeviceLabel, Counter>::default();
        let suppressed_samples = Family::<DeviceLabel, Counter>::default();
        let device_writes = Family::<DeviceResultLabels, Counter>::default();
        let task_restarts = Family::<TaskLabels, Counter>::default();
        let sink_written = Family::<SinkLabel, Counter>::default();
        let sink_retries = Family::<SinkLabel, Counter>::default();
        let sink_failures = Family::<SinkLabel, Counter>::default();
        let sink_dead_lettered = Family::<SinkLabel, Counter>::default();
        let sink_write_errors = Family::<SinkCauseLabels, Counter>::default();
        let sink_up = Family::<SinkLabel, Gauge>::default();
        let sink_write_duration: HistogramFamily<SinkLabel> = Family::new_with_constructor(poll_histogram);
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let alert_evaluations = Counter::default();
        let alert_eval_errors = Counter::default();
        let alerts_active = Family::<LevelLabel, Gauge>::default();
        let alerts_fired = Family::<LevelLabel, Counter>::default();
        let alerts_resolved = Family::<LevelLabel, Counter>::default();
        let notifications = Family::<SinkResultLabels, Counter>::default();
        let mqtt_received = Family::<DeviceLabel, Counter>::default();
        let mqtt_acked = Family::<DeviceLabel, Counter>::default();
        let mqtt_parse_errors = Family::<DeviceReasonLabels, Counter>::default();
        let mqtt_published = Family::<SinkLabel, Counter>::default();
        let mqtt_publish_acks = Family::<SinkLabel, Counter>::default();
        let mqtt_inflight = Family::<SinkLabel, Gauge>::default();
        let opcua_session_up = Family::<DeviceLabel, Gauge>::default();
        let opcua_session_attempts = Family::<DeviceResultLabels, Counter>::default();
        let opcua_subscriptions = Family::<DeviceLabel, Gauge>::default();
        let opcua_monitored_items = Family::<DeviceLabel, Gauge>::default();
        let opcua_notifications = Family::<DeviceLabel, Counter>::default();
        let opcua_bad_values = Family::<DeviceLabel, Counter>::default();
        let opcua_read_duration: HistogramFamily<DeviceLabel> = Family::new_with_constructor(poll_histogram);
        for level in ["INFO", "WARNING", "CRITICAL", "FATAL"] {
            let l = LevelLabel { level: level.into() };
            let _ = alerts_active.get_or_create(&l);
            let _ = alerts_fired.get_or_create(&l);
            let _ = alerts_resolved.get_or_create(&l);
        }
        let r = &mut registry;
        r.register(
            "mqtt_messages_received",
            "MQTT driver: messages received by device (malformed ones included)",
            mqtt_received.clone(),
        );
        r.register(
            "mqtt_messages_acked",
            "MQTT driver: messages acknowledged to the broker after their frame reached the bus",
            mqtt_acked.clone(),
        );
        r.register(
            "mqtt_parse_errors",
            "MQTT driver: malformed messages (or tag values in them) counted, acknowledged and skipped, by reason",
            mqtt_parse_errors.clone(),
        );
        r.register(
            "mqtt_messages_published",
            "MQTT sink: messages handed to the broker connection",
            mqtt_published.clone(),
        );
        r.register(
            "mqtt_publish_acks",
            "MQTT sink: QoS 1 messages confirmed by the broker (PUBACK)",
            mqtt_publish_acks.clone(),
        );
        r.register(
            "mqtt_inflight_messages",
            "MQTT sink: messages published and not yet confirmed",
            mqtt_inflight.clone(),
        );
        r.register(
            "opcua_session_up",
            "OPC UA driver: 1 while the session and all its subscriptions exist",
            opcua_session_up.clone(),
        );
        r.register(
            "opcua_session_attempts",
            "OPC UA driver: session attempts by result (ok, failed)",
            opcua_session_attempts.clone(),
        );
        r.register(
            "opcua_subscriptions",
            "OPC UA driver: subscriptions created in the current session",
            opcua_subscriptions.clone(),
        );
        r.register(
            "opcua_monitored_items",
            "OPC UA driver: monitored items the server accepted in the current session",
            opcua_monitored_items.clone(),
        );
        r.register(
            "opcua_notifications",
            "OPC UA driver: data change notifications received",
            opcua_notifications.clone(),
        );
        r.register(
            "opcua_bad_values",
            "OPC UA driver: values with a Bad status code (refused monitored items included)",
            opcua_bad_values.clone(),
        );
        r.register(
            "opcua_read_duration_seconds",
            "OPC UA driver: round trip of one Read request (poll mode)",
            opcua_read_duration.clone(),
        );
        r.register(
            "alert_evaluations",
            "Alert rule conditions evaluated (on samples and on ticks)",
            alert_evaluations.clone(),
        );
        r.register(
            "alert_eval_errors",
            "Alert expressions that failed at run time or gave NaN (no evidence: the rule does not move for that sample)",
            alert_eval_errors.clone(),
        );
        r.register(
            "alerts_active",
            "Open alerts (fired, not yet resolved or suppressed) by level",
            alerts_active.clone(),
        );
        r.register("alerts_fired", "Alerts fired by level", alerts_fired.clone());
        r.register(
            "alerts_resolved",
            "Alerts resolved by level",
            alerts_resolved.clone(),
        );
        r.register(
            "notifications",
            "Webhook notification requests by sink and result (sent; failed = will be retried; rejected = 4xx, skipped)",
            notifications.clone(),
        );
        r.register(
            "samples_published",
            "Samples appended to the frame bus, by device",
            samples_published.clone(),
        );
        r.register(
            "device_up",
            "1 while the device answers polls, else 0",
            device_up.clone(),
        );
        r.register(
            "device_polls",
            "Poll cycles finished, by device",
            device_polls.clone(),
        );
        r.register(
            "device_errors",
            "Failed requests by device, kind (timeout, connection, protocol, exception, device, bus) and code",
            device_errors.clone(),
        );
        r.register(
            "device_requests",
            "Requests sent to the device (busy retries included)",
            device_requests.clone(),
        );
        r.register(
            "device_skipped_ticks",
            "Scheduled polls skipped because the previous poll overran its period",
            skipped_ticks.clone(),
        );
        r.register(
            "device_suppressed_samples",
            "Samples withheld by their tag's deadband",
            suppressed_samples.clone(),
        );
        r.register(
            "device_writes",
            "Tag writes by device and result",
            device_writes.clone(),
        );
        r.register(
            "device_poll_duration_seconds",
            "Time one poll cycle took talking to the device",
            poll_duration.clone(),
        );
        r.register(
            "task_restarts",
            "Driver and sink tasks restarted by the supervisor after a failure",
            task_restarts.clone(),
        );
        r.register(
            "sink_frames_written",
            "Frames a sink wrote downstream and acknowledged",
            sink_written.clone(),
        );
        r.register(
            "sink_retries",
            "Sink write attempts retried",
            sink_retries.clone(),
        );
        r.register(
            "sink_failures",
            "Sink write attempts that failed",
            sink_failures.clone(),
        );
        r.register(
            "sink_dead_lettered",
            "Frames a sink could never write and set aside",
            sink_dead_lettered.clone(),
        );
        r.register(
            "sink_write_errors",
            "Failed sink write requests by cause",
            sink_write_errors.clone(),
        );
        r.register(
            "sink_up",
            "1 while the sink can reach its database, 0 while it retries (PostgreSQL store)",
            sink_up.clone(),
        );
        r.register(
            "sink_write_duration_seconds",
            "Time one sink write request took, answer included",
            sink_write_duration.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or POST /api/v1/reload) by result",
            config_reloads.clone(),
        );
        r.register(
            "build",
            "Build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        r.register_collector(Box::new(BusCollector { bus }));
        Arc::new(Metrics {
            registry,
            samples_published,
            device_up,
            device_polls,
            device_errors,
            poll_duration,
            device_requests,
            skipped_ticks,
            suppressed_samples,
            device_writes,
            task_restarts,
            sink_written,
            sink_retries,
            sink_failures,
            sink_dead_lettered,
            sink_write_errors,
            sink_up,
            sink_write_duration,
            config_reloads,
            alert_evaluations,
            alert_eval_errors,
            alerts_active,
            alerts_fired,
            alerts_resolved,
            notifications,
            mqtt_received,
            mqtt_acked,
            mqtt_parse_errors,
            mqtt_published,
            mqtt_publish_acks,
            mqtt_inflight,
            opcua_session_up,
            opcua_session_attempts,
            opcua_subscriptions,
            opcua_monitored_items,
            opcua_notifications,
            opcua_bad_values,
            opcua_read_duration,
        })
    }

    /// The whole exposition in OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Reads the bus's stats at scrape time.
#[derive(Debug)]
struct BusCollector {
    bus: FrameBus,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One family with a sample per consumer (`consumer` label).
fn per_consumer(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    consumers: &[frame_bus::ConsumerStats],
    value: impl Fn(&frame_bus::ConsumerStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for c in consumers {
        let labels = [("consumer", c.name.as_str())];
        let v = value(c);
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(m.encode_family(&labels)?)?,
            _ => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m.encode_family(&labels)?)?,
        }
    }
    Ok(())
}

impl prometheus_client::collector::Collector for BusCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.bus.stats();
        counter(
            &mut e,
            "frames_published",
            "Frames appended to the frame bus",
            s.frames_published_total,
        )?;
        gauge(
            &mut e,
            "wal_head_seq",
            "Last sequence number assigned by the frame bus",
            s.head_seq,
        )?;
        gauge(
            &mut e,
            "wal_oldest_seq",
            "Oldest sequence number still stored",
            s.oldest_seq,
        )?;
        gauge(
            &mut e,
            "wal_stored_frames",
            "Frames stored in the WAL",
            s.stored_frames,
        )?;
        gauge(
            &mut e,
            "wal_size_bytes",
            "Approximate size of the stored frames on disk",
            s.approx_bytes,
        )?;
        counter(
            &mut e,
            "wal_bytes_published",
            "Payload bytes appended",
            s.bytes_published_total,
        )?;
        counter(
            &mut e,
            "wal_batches",
            "Group-commit batches written",
            s.batches_written_total,
        )?;
        counter(&mut e, "wal_fsyncs", "fsyncs of the WAL", s.fsyncs_total)?;
        counter(
            &mut e,
            "wal_publish_errors",
            "Publish calls that failed",
            s.publish_errors_total,
        )?;
        counter(
            &mut e,
            "wal_disk_full_rejections",
            "Publishes refused because the disk is (nearly) full",
            s.disk_full_rejections_total,
        )?;
        counter(
            &mut e,
            "wal_corrupt_frames",
            "Records that failed their CRC or decoding and were skipped",
            s.corrupt_frames_total + s.malformed_keys_total,
        )?;
        counter(
            &mut e,
            "wal_deleted_frames",
            "Frames deleted after every consumer acknowledged them",
            s.frames_deleted_acked_total,
        )?;
        {
            let mut m = e.encode_descriptor(
                "wal_dropped_frames",
                "Frames dropped by retention before every consumer acknowledged them",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [
                ("max_age", s.frames_dropped_age_total),
                ("max_bytes", s.frames_dropped_size_total),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "wal_publish_duration_seconds",
                "Time from publish call to durable commit",
                None,
                MetricType::Histogram,
            )?;
            let h = &s.publish_latency;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum_seconds,
                h.count,
                &h.buckets,
                None,
            )?;
        }
        let consumers = &s.consumers;
        per_consumer(
            &mut e,
            "consumer_cursor_seq",
            "Last sequence number the consumer acknowledged",
            MetricType::Gauge,
            consumers,
            |c| c.cursor,
        )?;
        per_consumer(
            &mut e,
            "consumer_lag_frames",
            "Frames published but not yet acknowledged by the consumer",
            MetricType::Gauge,
            consumers,
            |c| c.lag,
        )?;
        per_consumer(
            &mut e,
            "consumer_skipped_frames",
            "Frames retention dropped before the consumer read them",
            MetricType::Counter,
            consumers,
            |c| c.skipped_dropped,
        )?;
        Ok(())
    }
}
