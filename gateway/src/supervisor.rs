//! Supervision: every driver and sink runs in its own task; a task that
//! fails (returns `Err` or panics) is restarted after an exponential
//! backoff with ±25 % jitter, its failures counted in
//! `gateway_task_restarts_total`. Nothing a task does can take the process
//! down. A task that ran for longer than the maximum backoff before failing
//! starts again from the initial delay.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::metrics::{Metrics, TaskLabels};

/// Restart policy of the supervisor (`[supervisor]` in gateway.toml).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before restart number `n` (1-based), with jitter.
    pub fn delay(&self, n: u32, rng: &mut fastrand::Rng) -> Duration {
        let base = self
            .initial
            .checked_mul(2u32.saturating_pow(n.saturating_sub(1).min(20)))
            .unwrap_or(self.max)
            .min(self.max);
        base.mul_f64(0.75 + rng.f64() * 0.5)
    }
}

/// Runs `make()` until it returns `Ok` while `shutdown` is set (or the
/// shutdown flag is set), restarting it on failure. `on_restart` runs
/// before each restart (e.g. to update the status page).
pub fn supervise<F, Fut, E>(
    task: String,
    kind: &'static str,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    on_restart: impl Fn() + Send + 'static,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    tokio::spawn(async move {
        let mut rng = fastrand::Rng::new();
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            // A separate task, so a panic is caught as a JoinError here.
            let outcome = tokio::spawn(make()).await;
            let stopping = *shutdown.borrow();
            let reason = match outcome {
                Ok(Ok(())) if stopping => return,
                Ok(Ok(())) => "task ended on its own".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(j) if j.is_panic() => format!("task panicked: {}", panic_message(j)),
                Err(_) => "task was cancelled".to_string(),
            };
            if stopping {
                warn!(task, kind, reason, "task failed during shutdown; not restarted");
                return;
            }
            if started.elapsed() > backoff.max {
                failures = 0;
            }
            failures += 1;
            metrics
                .task_restarts
                .get_or_create(&TaskLabels {
                    task: task.clone(),
                    kind: kind.to_string(),
                })
                .inc();
            let delay = backoff.delay(failures, &mut rng);
            error!(task, kind, reason, failures, retry_in = ?delay, "task failed; restarting");
            on_restart();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_true(&mut shutdown) => {
                    info!(task, kind, "shutdown during restart backoff");
                    return;
                }
            }
        }
    })
}

fn panic_message(j: tokio::task::JoinError) -> String {
    let p = j.into_panic();
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_and_panicking_tasks_are_restarted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let bus = frame_bus::FrameBus::open(dir.path(), frame_bus::BusConfig::default()).unwrap();
        let metrics = Metrics::new(bus.clone());
        let (stop, stop_rx) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let restarts_seen = Arc::new(AtomicU32::new(0));
        let (s, r, rx) = (starts.clone(), restarts_seen.clone(), stop_rx.clone());
        let handle = supervise(
            "device:flaky".into(),
            "driver",
            Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
            },
            metrics.clone(),
            stop_rx,
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
            move || {
                let n = s.fetch_add(1, Ordering::SeqCst);
                let mut rx = rx.clone();
                async move {
                    match n {
                        0 | 1 => Err(format!("failure {n}")),
                        2 => panic!("driver bug"),
                        _ => {
                            wait_true(&mut rx).await;
                            Ok(())
                        }
                    }
                }
            },
        );
        while starts.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        assert_eq!(restarts_seen.load(Ordering::SeqCst), 3);
        let text = metrics.render();
        assert!(
            text.contains("gateway_task_restarts_total{task=\"device:flaky\",kind=\"driver\"} 3"),
            "{text}"
        );
        bus.close();
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 1..=10 {
            let d = b.delay(n, &mut rng).as_secs_f64();
            let base = (2f64.powi(n as i32 - 1)).min(30.0);
            assert!(d >= base * 0.75 && d <= base * 1.25, "n={n} d={d}");
        }
    }
}
