//! "Logged once per burst": bad input from a device (a malformed MQTT
//! message, a Modbus exception) can repeat on every message or poll, so
//! the drivers log it at most once per [`LOG_EVERY`] per source. The
//! first occurrence is logged at once; later lines carry the number of
//! occurrences since the previous line. Every occurrence is counted in
//! the metrics regardless.

use std::time::{Duration, Instant};

/// How often a burst of bad input is logged (the first at once).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The rate limit of one source of bad input (a device, a request).
#[derive(Debug, Default)]
pub struct BurstLog {
    last: Option<Instant>,
    since: u64,
}

impl BurstLog {
    /// Counts one occurrence. `Some(n)` when a line is due: `n` occurrences
    /// (this one included) since the previous line; `None` while the last
    /// line is less than [`LOG_EVERY`] old.
    pub fn note(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_and_the_rest_of_the_burst_is_counted() {
        let mut b = BurstLog::default();
        assert_eq!(b.note(), Some(1));
        assert_eq!(b.note(), None);
        assert_eq!(b.note(), None);
        // Once LOG_EVERY has passed, the next line counts the whole burst.
        b.last = Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(b.note(), Some(3));
        assert_eq!(b.note(), None);
    }
}
