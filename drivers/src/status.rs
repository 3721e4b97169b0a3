//! Device health as drivers report it: Online after a poll the device
//! answered, Offline after `max_retries` consecutive polls it did not,
//! each change published once as a `DEVICE_STATUS_CHANGED` event.

use proto::{EventFrame, EventKind};

/// Tracks consecutive failed polls of one device.
#[derive(Debug, Default)]
pub struct Health {
    online: Option<bool>,
    failures: u32,
}

impl Health {
    /// Consecutive polls the device did not answer.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a poll; returns the new status when it changed
    /// (`Some(true)` = Online, `Some(false)` = Offline).
    pub fn record(&mut self, answered: bool, max_retries: u32) -> Option<bool> {
        if answered {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let next = if answered {
            true
        } else if self.failures >= max_retries.max(1) {
            false
        } else {
            return None;
        };
        if self.online == Some(next) {
            return None;
        }
        self.online = Some(next);
        Some(next)
    }
}

/// A device's link as session-based drivers (OPC UA) report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    Online,
    /// Unreachable, or the connection was lost.
    Offline,
    /// The device refuses the gateway's settings (security, identity):
    /// retrying alone will not fix it.
    Error,
}

impl LinkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Online => "Online",
            LinkStatus::Offline => "Offline",
            LinkStatus::Error => "Error",
        }
    }
}

/// The event announcing that `device` went Online or Offline.
pub fn status_event(device: &str, online: bool, reason: &str, ts_ns: u64) -> EventFrame {
    let status = if online {
        LinkStatus::Online
    } else {
        LinkStatus::Offline
    };
    link_event(device, status, reason, ts_ns)
}

/// The event announcing that `device` is now `status`.
pub fn link_event(device: &str, status: LinkStatus, reason: &str, ts_ns: u64) -> EventFrame {
    let status = status.as_str();
    EventFrame {
        event_id: format!("{device}:status:{ts_ns}"),
        kind: EventKind::DeviceStatusChanged as i32,
        device_id: device.to_string(),
        status: status.to_string(),
        message: if reason.is_empty() {
            format!("device {device} is {status}")
        } else {
            format!("device {device} is {status}: {reason}")
        },
        event_ts_ns: ts_ns,
        ..EventFrame::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_after_max_retries_online_on_first_success() {
        let mut h = Health::default();
        assert_eq!(h.record(true, 3), Some(true));
        assert_eq!(h.record(true, 3), None);
        assert_eq!(h.record(false, 3), None);
        assert_eq!(h.record(false, 3), None);
        assert_eq!(h.record(false, 3), Some(false));
        assert_eq!(h.record(false, 3), None);
        assert_eq!(h.failures(), 4);
        assert_eq!(h.record(true, 3), Some(true));
        assert_eq!(h.failures(), 0);
        // A device that never answered goes Offline without being Online first.
        let mut h = Health::default();
        assert_eq!(h.record(false, 0), Some(false));
    }
}
