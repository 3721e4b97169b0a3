//! `gateway run`: opens the frame bus, starts HTTP, one supervised task per
//! device driver and per sink, then waits for signals.
//!
//! - `SIGTERM`/`SIGINT`: `/readyz` turns 503, drivers stop (each finishes the
//!   publish in flight), sinks get `shutdown_timeout` to finish their batch
//!   and acknowledge it, cursors are persisted, the bus is closed, exit 0.
//! - `SIGHUP`: the configuration is loaded again; devices whose config
//!   changed are restarted, removed ones stopped, new ones started, and
//!   the others keep running untouched; alert rules and `[alerts]` are
//!   replaced (rules keep their state by name). A configuration with errors is
//!   rejected as a whole (logged, `gateway_config_reloads_total{result="error"}`).
//!   `POST /api/v1/reload` does the same and answers with the outcome;
//!   either way the reload is recorded in the audit trail, and the new
//!   device set is published to the sinks (the PostgreSQL store syncs it)
//!   before any new device starts.
//! - Under systemd, `READY=1` is sent once everything started and
//!   `STOPPING=1` when shutdown begins.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use config::{Config, DeviceConfig};
use frame_bus::{BusConfig, FrameBus, RetentionConfig, SyncMode};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::audit::{self, Actor};
use crate::metrics::{DeviceLabel, Metrics, ResultLabel};
use crate::publisher::BusHost;
use crate::sinks::{self, SinkContext};
use crate::status::{lock, Status};
use crate::supervisor::{supervise, Backoff};

/// The bus configuration `[wal]` asks for.
pub fn bus_config(c: &config::WalConfig) -> BusConfig {
    BusConfig {
        sync: match c.sync {
            config::WalSync::Batch => SyncMode::Batch,
            config::WalSync::Always => SyncMode::Always,
            config::WalSync::None => SyncMode::None,
        },
        retention: RetentionConfig {
            max_age: (!c.max_age.is_zero()).then_some(c.max_age),
            max_bytes: c.max_bytes,
            ..RetentionConfig::default()
        },
        min_free_bytes: c.min_free_bytes.unwrap_or(0),
        ..BusConfig::default()
    }
}

/// A reload asked for over HTTP: the reply is the names of the devices
/// that were (re)started or stopped, or the configuration's errors.
pub struct ReloadRequest {
    pub actor: Actor,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<String>, Vec<String>>>,
}

struct RunningDevice {
    config: Arc<DeviceConfig>,
    /// Keeps the device's write queue open while it runs.
    _writes: Option<tokio::sync::mpsc::Sender<drivers::write::WriteRequest>>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    version: u64,
}

struct Runtime {
    config: Config,
    bus: FrameBus,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    backoff: Backoff,
    devices: BTreeMap<String, RunningDevice>,
    writers: Arc<crate::commands::Writers>,
    /// Device metadata the InfluxDB sinks tag points with.
    device_index: sinks::influx::DeviceIndex,
    /// The configuration the gateway runs (gateway.toml as of the start,
    /// devices as of the last reload), for the sinks that mirror it.
    running: watch::Sender<Arc<Config>>,
}

impl Runtime {
    fn start_device(&mut self, d: DeviceConfig, version: u64) {
        let name = d.name.clone();
        let state = self.status.device(&d, version);
        let label = DeviceLabel { device: name.clone() };
        let (stop, stop_rx) = watch::channel(false);
        let config = Arc::new(d);
        let (handle, writes) = if config.enabled {
            let (tx, queue) = drivers::write::write_queue();
            self.writers.insert(config.clone(), tx.clone());
            (self.spawn_driver(&config, state, label, stop_rx, queue), Some(tx))
        } else {
            info!(device = name, "device disabled; not polled");
            self.metrics.device_up.get_or_create(&label).set(0);
            (tokio::spawn(async {}), None)
        };
        self.devices.insert(
            name,
            RunningDevice {
                config,
                _writes: writes,
                stop,
                handle,
                version,
            },
        );
    }

    /// The supervised driver task of an enabled device.
    fn spawn_driver(
        &self,
        config: &Arc<DeviceConfig>,
        state: Arc<std::sync::Mutex<crate::status::DeviceState>>,
        label: DeviceLabel,
        stop_rx: watch::Receiver<bool>,
        writes: drivers::write::WriteQueue,
    ) -> JoinHandle<()> {
        let name = config.name.clone();
        let host = BusHost {
            bus: self.bus.clone(),
            metrics: self.metrics.clone(),
            state: state.clone(),
            label: label.clone(),
        };
        let cfg = config.clone();
        let rx = stop_rx.clone();
        let metrics = self.metrics.clone();
        let on_restart = move || {
            metrics.device_up.get_or_create(&label).set(0);
            let mut st = lock(&state);
            st.restarts += 1;
            st.status = crate::status::DeviceStatus::Error;
        };
        let handle = supervise(
            format!("device:{name}"),
            "driver",
            self.backoff.clone(),
            self.metrics.clone(),
            stop_rx,
            on_restart,
            move || drivers::run_device(cfg.clone(), host.clone(), rx.clone(), writes.clone()),
        );
        info!(
            device = name,
            protocol = config.protocol.as_str(),
            tags = config.tags.len(),
            "device started"
        );
        handle
    }

    async fn stop_device(&mut self, name: &str) {
        if let Some(d) = self.devices.remove(name) {
            self.writers.remove(name);
            let _ = d.stop.send(true);
            if let Err(e) = d.handle.await {
                warn!(device = name, error = %e, "device task ended abnormally");
            }
            self.metrics
                .device_up
                .get_or_create(&DeviceLabel {
                    device: name.to_string(),
                })
                .set(0);
        }
    }

    /// SIGHUP or `POST /api/v1/reload`: restart only what changed; the
    /// outcome goes to the audit trail.
    async fn reload(&mut self, actor: &Actor) -> Result<Vec<String>, Vec<String>> {
        let outcome = self.apply_reload().await;
        let path = self.config.path.display().to_string();
        let (result, details) = match &outcome {
            Ok(changed) => (Ok(()), vec![("changed".to_string(), changed.join(","))]),
            Err(errors) => (
                Err(format!(
                    "{} configuration error(s): {}",
                    errors.len(),
                    errors.join("; ")
                )),
                vec![],
            ),
        };
        audit::record(
            &self.bus,
            actor,
            audit::Action {
                action: "config.reload",
                resource_type: "config",
                resource: &path,
                outcome: result,
                details,
            },
        )
        .await;
        outcome
    }

    async fn apply_reload(&mut self) -> Result<Vec<String>, Vec<String>> {
        let new = match config::load(&self.config.path) {
            Ok(c) => c,
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .get_or_create(&ResultLabel {
                        result: "error".into(),
                    })
                    .inc();
                for e in errors.iter() {
                    error!("{e}");
                }
                error!(
                    errors = errors.len(),
                    "reload rejected: configuration has errors; still running the previous one"
                );
                return Err(errors.iter().map(|e| e.to_string()).collect());
            }
        };
        let mut rest_old = self.config.gateway.clone();
        rest_old.alert_rules = new.gateway.alert_rules.clone();
        rest_old.alerts = new.gateway.alerts.clone();
        if new.gateway != rest_old {
            warn!("gateway.toml changed; [wal], [http], [sinks] and [supervisor] apply on the next restart (devices and alert rules are reloaded now)");
        }
        // Mirrors (the PostgreSQL store) and the alert engine see the new
        // devices and rules before any frame of a new device can reach the bus.
        let mut running = self.config.clone();
        running.devices = new.devices.clone();
        running.gateway.alert_rules = new.gateway.alert_rules.clone();
        running.gateway.alerts = new.gateway.alerts.clone();
        self.running.send_replace(Arc::new(running));
        let old_names: Vec<String> = self.devices.keys().cloned().collect();
        let mut restarted = Vec::new();
        for name in &old_names {
            match new.device(name) {
                None => {
                    self.stop_device(name).await;
                    self.status.remove_device(name);
                    info!(device = name, "device removed");
                    restarted.push(name.clone());
                }
                Some(d) if *d != *self.devices[name].config => {
                    let version = self.devices[name].version + 1;
                    self.stop_device(name).await;
                    self.start_device(d.clone(), version);
                    restarted.push(name.clone());
                }
                Some(_) => {}
            }
        }
        for d in &new.devices {
            if !self.devices.contains_key(&d.name) {
                self.start_device(d.clone(), 1);
                restarted.push(d.name.clone());
            }
        }
        info!(changed = ?restarted, "configuration reloaded");
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabel { result: "ok".into() })
            .inc();
        self.device_index.update(&new.devices);
        self.config.devices = new.devices;
        self.config.gateway.alert_rules = new.gateway.alert_rules;
        self.config.gateway.alerts = new.gateway.alerts;
        Ok(restarted)
    }
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(&[state]) {
            warn!(error = %e, "sd_notify failed");
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let g = config.gateway.clone();
    std::fs::create_dir_all(&g.data_dir)
        .with_context(|| format!("creating data_dir {}", g.data_dir.display()))?;
    let wal_dir = g.data_dir.join("wal");
    let bus = FrameBus::open(&wal_dir, bus_config(&g.wal))
        .with_context(|| format!("opening the frame bus at {}", wal_dir.display()))?;
    let metrics = Metrics::new(bus.clone());
    let status = Arc::new(Status::default());
    status.started_ns.store(crate::now_ns(), Ordering::Relaxed);

    // Signals first, so a SIGTERM during start-up is not lost.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;

    let listener = tokio::net::TcpListener::bind(g.http.listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", g.http.listen))?;
    if !g.http.listen.ip().is_loopback() && g.http.token.is_none() {
        warn!(listen = %g.http.listen, "HTTP listens beyond loopback without [http] token: /api is open to the network");
    }
    let writers = Arc::new(crate::commands::Writers::default());
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let (alerts_handle, alert_requests) = crate::alerts::Handle::new();
    let app = crate::http::router(crate::http::AppState {
        alerts: alerts_handle,
        reload: reload_tx,
        writers: writers.clone(),
        gateway_id: g.gateway_id.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        token: g.http.token.as_deref().map(Arc::from),
    });
    let (http_stop, mut http_stop_rx) = watch::channel(false);
    let http = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { crate::supervisor::wait_true(&mut http_stop_rx).await })
            .await;
        if let Err(e) = r {
            error!(error = %e, "HTTP server failed");
        }
    });
    info!(listen = %g.http.listen, "HTTP listening: /metrics /healthz /readyz /api/v1/status");

    let backoff = Backoff {
        initial: g.supervisor.restart_backoff,
        max: g.supervisor.max_restart_backoff,
    };
    let (sink_stop, sink_stop_rx) = watch::channel(false);
    let (running, running_rx) = watch::channel(Arc::new(config.clone()));
    let mut sink_tasks = Vec::new();
    let device_index = sinks::influx::DeviceIndex::new(&config.devices);
    for (name, sink) in &g.sinks {
        if !sink.enabled {
            info!(sink = name, "sink disabled");
            continue;
        }
        let ctx = SinkContext {
            name: name.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            state: status.sink(name, sink.kind.type_name()),
            shutdown: sink_stop_rx.clone(),
            config: running_rx.clone(),
        };
        let label = crate::metrics::SinkLabel { sink: name.clone() };
        // Every sink family exists from the start, at 0.
        for family in [
            &metrics.sink_written,
            &metrics.sink_retries,
            &metrics.sink_failures,
            &metrics.sink_dead_lettered,
        ] {
            let _ = family.get_or_create(&label);
        }
        let state = ctx.state.clone();
        let m = metrics.clone();
        let on_restart = move || {
            m.sink_retries.get_or_create(&label).inc();
            // Keep the failure's own message; only fill in when there is none.
            lock(&state)
                .last_error
                .get_or_insert_with(|| "restarting after a failure".into());
        };
        let (kind, dir, index) = (sink.kind.clone(), g.data_dir.clone(), device_index.clone());
        let handle = supervise(
            format!("sink:{name}"),
            "sink",
            backoff.clone(),
            metrics.clone(),
            sink_stop_rx.clone(),
            on_restart,
            move || sinks::run(ctx.clone(), kind.clone(), dir.clone(), index.clone()),
        );
        info!(sink = name, kind = sink.kind.type_name(), "sink started");
        sink_tasks.push(handle);
    }

    // The alert engine: a bus consumer like the sinks, stopped with them.
    let alert_task = {
        let ctx = crate::alerts::EngineContext {
            gateway_id: g.gateway_id.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            config: running_rx.clone(),
            shutdown: sink_stop_rx.clone(),
            requests: alert_requests,
        };
        supervise(
            "alerts".to_string(),
            "alerts",
            backoff.clone(),
            metrics.clone(),
            sink_stop_rx.clone(),
            || {},
            move || crate::alerts::run(ctx.clone()),
        )
    };

    for c in bus.stats().consumers {
        if c.name != crate::alerts::CONSUMER && !g.sinks.get(&c.name).is_some_and(|s| s.enabled) {
            warn!(
                consumer = c.name,
                lag = c.lag,
                "the WAL keeps frames for a consumer that is no configured, enabled sink; \
                 remove it with `gateway wal remove-consumer` (gateway stopped) or frames are kept until max_age/max_bytes"
            );
        }
    }
    let mut rt = Runtime {
        config: config.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        backoff,
        devices: BTreeMap::new(),
        writers,
        device_index,
        running,
    };
    for d in config.devices.clone() {
        rt.start_device(d, 1);
    }
    status.ready.store(true, Ordering::Release);
    notify(sd_notify::NotifyState::Ready);
    info!(
        gateway_id = g.gateway_id,
        devices = rt.devices.len(),
        sinks = sink_tasks.len(),
        head_seq = bus.head_seq(),
        "gateway running"
    );
    sink_tasks.push(alert_task);

    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                info!("SIGHUP: reloading device configuration");
                notify(sd_notify::NotifyState::Reloading);
                let _ = rt.reload(&Actor::new("sighup")).await;
                notify(sd_notify::NotifyState::Ready);
            }
            Some(req) = reload_rx.recv() => {
                info!(client = ?req.actor.client_ip, "reload requested over HTTP");
                notify(sd_notify::NotifyState::Reloading);
                let outcome = rt.reload(&req.actor).await;
                let _ = req.reply.send(outcome);
                notify(sd_notify::NotifyState::Ready);
            }
        }
    }

    // Shutdown: not ready → drivers → sinks (bounded) → cursors → bus.
    // A reload asked for from now on is refused (503), not left waiting.
    reload_rx.close();
    status.ready.store(false, Ordering::Release);
    notify(sd_notify::NotifyState::Stopping);
    let names: Vec<String> = rt.devices.keys().cloned().collect();
    for d in rt.devices.values() {
        let _ = d.stop.send(true);
    }
    for name in names {
        rt.stop_device(&name).await;
    }
    info!(head_seq = bus.head_seq(), "drivers stopped");
    let _ = sink_stop.send(true);
    let timeout = g.supervisor.shutdown_timeout;
    let all = futures_join(sink_tasks);
    if tokio::time::timeout(timeout, all).await.is_err() {
        warn!(?timeout, "sinks did not finish within shutdown_timeout; their unacknowledged frames replay on the next start");
    }
    if let Err(e) = bus.flush_cursors().await {
        error!(error = %e, "persisting cursors failed");
    }
    let _ = http_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    let stats = bus.stats();
    bus.close();
    info!(
        head_seq = stats.head_seq,
        cursors = ?stats.consumers.iter().map(|c| (c.name.as_str(), c.cursor)).collect::<Vec<_>>(),
        "gateway stopped cleanly"
    );
    Ok(())
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}
