//! The numbered MQTT stream: message `n` is `{"n": n, "ts": ts_ms}`,
//! published at QoS 1 in chunks (one chunk every 100 ms, `rate / 10`
//! messages) by [`crate::mqtt_pub::publish_all`], which returns once the
//! broker confirmed every message of the chunk. A chunk that fails (the
//! broker restarting) is published again, the same numbers with the same
//! timestamps, until confirmed: a number is *published* once confirmed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timestamp of message `n` (ms): `base + n`, plus a jump where the
/// clock-jump scenario asks for one.
pub type Clock = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

pub struct Load {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    confirmed: Arc<Mutex<Vec<(u64, u64)>>>,
    next: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// A stream to `topic` on the broker at 127.0.0.1:`port`, paused:
    /// [`Load::pause`]`(false)` starts it.
    pub fn start(port: u16, topic: &str, rate: u32, clock: Clock) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(true));
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1));
        let failures = Arc::new(AtomicU64::new(0));
        let (s, p, c, nx, fl) = (
            stop.clone(),
            paused.clone(),
            confirmed.clone(),
            next.clone(),
            failures.clone(),
        );
        let topic = topic.to_string();
        let per_chunk = u64::from((rate / 10).max(1));
        let thread = std::thread::spawn(move || {
            let mut tick = Instant::now();
            while !s.load(Ordering::SeqCst) {
                tick += Duration::from_millis(100);
                if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                } else {
                    tick = Instant::now();
                }
                if p.load(Ordering::SeqCst) {
                    continue;
                }
                let from = nx.load(Ordering::SeqCst);
                let chunk: Vec<(u64, u64)> = (from..from + per_chunk).map(|n| (n, clock(n))).collect();
                let payloads: Vec<Vec<u8>> = chunk
                    .iter()
                    .map(|(n, ts)| format!("{{\"n\":{n},\"ts\":{ts}}}").into_bytes())
                    .collect();
                // Until confirmed (the broker may be restarting), or the
                // stream is stopped: unconfirmed numbers are not published.
                loop {
                    match crate::mqtt_pub::publish_all(port, &topic, 1, 20, payloads.clone()) {
                        Ok(_) => {
                            c.lock().unwrap().extend(chunk.iter().copied());
                            nx.store(from + per_chunk, Ordering::SeqCst);
                            break;
                        }
                        Err(_) => {
                            fl.fetch_add(1, Ordering::SeqCst);
                            if s.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(300));
                        }
                    }
                }
            }
        });
        Load {
            stop,
            paused,
            confirmed,
            next,
            failures,
            thread: Some(thread),
        }
    }

    /// Holds the stream (e.g. while the gateway drains), or resumes it.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Numbers confirmed so far.
    pub fn count(&self) -> u64 {
        self.next.load(Ordering::SeqCst) - 1
    }

    /// Chunks that failed and were published again.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Stops the stream; `(n, ts_ms)` of every confirmed message.
    pub fn finish(mut self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.confirmed.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
