//! [`BusHost`]: what a driver publishes through. It encodes each poll's
//! `DataFrame`, appends it to the frame bus (returning once the bus has it
//! with the configured durability), and keeps the device's status, last
//! values and metrics current.

use std::sync::{Arc, Mutex};

use drivers::{DriverHost, HostError, PollReport};
use frame_bus::FrameBus;
use proto::{DataFrame, EventFrame, FrameType, Message};

use crate::metrics::{DeviceErrorLabels, DeviceLabel, DeviceResultLabels, Metrics};
use crate::status::{lock, DeviceState, DeviceStatus, TagValue};

#[derive(Clone)]
pub struct BusHost {
    pub bus: FrameBus,
    pub metrics: Arc<Metrics>,
    pub state: Arc<Mutex<DeviceState>>,
    pub label: DeviceLabel,
}

impl DriverHost for BusHost {
    async fn publish(&self, frame: DataFrame) -> Result<(), HostError> {
        let n = frame.samples.len() as u64;
        let bytes = frame.encode_to_vec();
        match self.bus.publish(FrameType::Data, bytes).await {
            Ok(_) => {
                self.metrics
                    .samples_published
                    .get_or_create(&self.label)
                    .inc_by(n);
                let mut st = lock(&self.state);
                for s in frame.samples {
                    let v = TagValue {
                        value: s.value,
                        quality: s.quality,
                        ts_ns: s.source_ts_ns,
                    };
                    match st.tags.get_mut(&s.tag) {
                        Some(slot) => *slot = v,
                        None => {
                            st.tags.insert(s.tag, v);
                        }
                    }
                }
                Ok(())
            }
            Err(e) => Err(HostError {
                transient: e.is_transient(),
                message: e.to_string(),
            }),
        }
    }

    async fn publish_event(&self, event: EventFrame) -> Result<(), HostError> {
        self.bus
            .publish(FrameType::Event, event.encode_to_vec())
            .await
            .map(|_| ())
            .map_err(|e| HostError {
                transient: e.is_transient(),
                message: e.to_string(),
            })
    }

    fn poll_finished(&self, r: &PollReport) {
        let m = &self.metrics;
        m.device_polls.get_or_create(&self.label).inc();
        m.poll_duration
            .get_or_create(&self.label)
            .observe(r.duration.as_secs_f64());
        if r.requests > 0 {
            m.device_requests
                .get_or_create(&self.label)
                .inc_by(r.requests.into());
        }
        if r.skipped_ticks > 0 {
            m.skipped_ticks
                .get_or_create(&self.label)
                .inc_by(r.skipped_ticks.into());
        }
        if r.suppressed > 0 {
            m.suppressed_samples
                .get_or_create(&self.label)
                .inc_by(r.suppressed.into());
        }
        for e in &r.errors {
            m.device_errors
                .get_or_create(&DeviceErrorLabels {
                    device: self.label.device.clone(),
                    kind: e.kind.as_str().to_string(),
                    code: e.code,
                })
                .inc();
        }
        let mut st = lock(&self.state);
        st.polls += 1;
        st.last_poll_ns = crate::now_ns();
        match r.errors.first() {
            None => {
                st.status = DeviceStatus::Online;
                st.last_error = None;
            }
            Some(e) => {
                st.errors += 1;
                // Offline stays Offline until the driver says it is back. A
                // protocol exception or a value that does not convert is an
                // answer: the device stays Online (the tag is BAD,
                // `last_error` says why).
                let answered = r.errors.iter().all(|e| {
                    matches!(
                        e.kind,
                        drivers::ErrorKind::Exception | drivers::ErrorKind::Conversion
                    )
                });
                if st.status != DeviceStatus::Offline {
                    st.status = if answered {
                        DeviceStatus::Online
                    } else {
                        DeviceStatus::Error
                    };
                }
                st.last_error = Some(if e.code != 0 {
                    format!("{} error (code {})", e.kind.as_str(), e.code)
                } else {
                    format!("{} error", e.kind.as_str())
                });
            }
        }
    }

    fn messages_received(&self, n: u64) {
        self.metrics.mqtt_received.get_or_create(&self.label).inc_by(n);
    }

    fn messages_acked(&self, n: u64) {
        self.metrics.mqtt_acked.get_or_create(&self.label).inc_by(n);
    }

    fn payload_rejected(&self, reason: &'static str) {
        self.metrics
            .mqtt_parse_errors
            .get_or_create(&crate::metrics::DeviceReasonLabels {
                device: self.label.device.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    fn connection_failed(&self, reason: &str) {
        self.metrics.device_up.get_or_create(&self.label).set(0);
        let mut st = lock(&self.state);
        st.status = DeviceStatus::Error;
        st.last_error = Some(reason.to_string());
    }

    fn opcua(&self, stat: drivers::OpcuaStat) {
        use drivers::OpcuaStat as S;
        let m = &self.metrics;
        let l = &self.label;
        match stat {
            S::SessionUp(up) => {
                m.opcua_session_up.get_or_create(l).set(i64::from(up));
            }
            S::SessionAttempt { ok } => {
                m.opcua_session_attempts
                    .get_or_create(&DeviceResultLabels {
                        device: l.device.clone(),
                        result: if ok { "ok" } else { "failed" }.to_string(),
                    })
                    .inc();
            }
            S::Items {
                subscriptions,
                monitored_items,
            } => {
                m.opcua_subscriptions.get_or_create(l).set(subscriptions as i64);
                m.opcua_monitored_items
                    .get_or_create(l)
                    .set(monitored_items as i64);
            }
            S::Notifications(n) => {
                m.opcua_notifications.get_or_create(l).inc_by(n);
            }
            S::BadValues(n) => {
                m.opcua_bad_values.get_or_create(l).inc_by(n);
            }
            S::ReadLatency(d) => m.opcua_read_duration.get_or_create(l).observe(d.as_secs_f64()),
        }
    }

    fn connection_changed(&self, up: bool) {
        self.metrics
            .device_up
            .get_or_create(&self.label)
            .set(i64::from(up));
        lock(&self.state).status = if up {
            DeviceStatus::Online
        } else {
            DeviceStatus::Offline
        };
    }
}
