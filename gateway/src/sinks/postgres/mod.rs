//! `type = "postgres"`: the relational store of the seed's schema.
//!
//! What it keeps true, and from where:
//! - **Schema** ([`schema`]): embedded migrations, applied on start when
//!   `migrate = true` (or by `gateway db migrate`); a database migrated by
//!   a newer gateway is refused.
//! - **Configuration** ([`sync`]): devices, tags, driver configs, alert
//!   rules and the driver registry, upserted in one transaction on start,
//!   on reconnect and on every reload (before a new device's first frame).
//! - **Events** ([`writes`]): device status, `last_seen`, alert history and
//!   the audit log, from the frame bus.
//!
//! Delivery guarantee: the store is a bus consumer with its own cursor. A
//! batch of frames becomes one transaction; the cursor moves only after it
//! committed, and every statement is idempotent, so a crash or SIGKILL
//! between commit and ack replays frames without duplicating rows. While
//! the database is unreachable (or refuses the schema) the store retries
//! with backoff up to `max_retry_interval`, `/readyz` answers 503 naming
//! it, `gateway_sink_up` is 0 — and the drivers keep publishing: the WAL
//! holds the backlog, which is written in order once the database is back.
//! A statement the database rejects for its data (not for its
//! availability) is skipped alone — the rest of the batch commits — and
//! counted in `gateway_sink_dead_lettered_total` with its seq in the log.

mod bulk;
pub mod schema;
pub mod sync;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use config::{Config, PostgresSinkConfig, SslMode};
use proto::FrameEnvelope;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};
use tracing::{debug, info, warn};

use super::{SinkContext, SinkError};
use crate::metrics::{SinkCauseLabels, SinkLabel};
use crate::status::lock;
use crate::supervisor::wait_true;
use sync::Ids;
use writes::{Plan, Planner};

/// Connection options from the sink's configuration.
pub fn connect_options(cfg: &PostgresSinkConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let mut o: PgConnectOptions = cfg.url.parse()?;
    if let Some(mode) = cfg.sslmode {
        o = o.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
    }
    if let Some(ca) = &cfg.ssl_root_cert {
        o = o.ssl_root_cert(ca);
    }
    Ok(o.application_name("gateway_rust").disable_statement_logging())
}

/// A pool of at most two connections (one writer, one spare for the sync).
pub async fn connect(cfg: &PostgresSinkConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(cfg.connect_timeout)
        .connect_with(connect_options(cfg)?)
        .await
}

/// Why a step failed, and whether waiting helps.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Schema(#[from] schema::SchemaError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// The `cause` label of `gateway_sink_write_errors_total`.
    fn cause(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Schema(schema::SchemaError::Db(e)) => StoreError::db_cause(e),
            StoreError::Schema(_) => "schema",
            StoreError::Db(e) => StoreError::db_cause(e),
        }
    }

    fn db_cause(e: &sqlx::Error) -> &'static str {
        match e {
            sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("28")) => "unauthorized",
            e if transient(e) => "unreachable",
            _ => "rejected",
        }
    }
}

/// Errors that say "the database is not available", as opposed to "this
/// statement is wrong": retried with backoff, never skipped.
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08 connection, 53 resources, 57P0x shutdown / cannot connect
            // now, 58 system error, 28 authentication; and the setup errors
            // below: an operator can fix them while the WAL holds the frames,
            // whereas skipping would lose every row of the batch.
            // Classes 42 (syntax, undefined objects, privileges), 55 (object
            // state, e.g. lock timeouts), 0A (unsupported) and XX (internal)
            // are about the database or the statement, never one row's data:
            // skipping would drop the whole batch.
            ["08", "53", "57", "58", "28", "42", "55", "0A", "XX"]
                .iter()
                .any(|p| c.starts_with(p))
                || [
                    "40001", // serialization failure
                    "40P01", // deadlock
                    "3D000", // database missing (an operator may create it)
                    "25006", // read-only transaction (failed over to a standby)
                ]
                .contains(&c.as_ref())
        }),
        _ => false,
    }
}

async fn within<T, E: Into<StoreError>>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// Failure bookkeeping: backoff, `/readyz`, metrics, one warning per burst.
struct Health {
    ctx: SinkContext,
    label: SinkLabel,
    failures: u32,
    max: Duration,
    rng: fastrand::Rng,
}

impl Health {
    fn failed(&mut self, what: &str, e: &StoreError) {
        self.failures += 1;
        let m = &self.ctx.metrics;
        m.sink_write_errors
            .get_or_create(&SinkCauseLabels {
                sink: self.ctx.name.clone(),
                cause: e.cause().into(),
            })
            .inc();
        m.sink_retries.get_or_create(&self.label).inc();
        m.sink_failures.get_or_create(&self.label).inc();
        m.sink_up.get_or_create(&self.label).set(0);
        let why = format!("{what}: {e}");
        if self.failures == 1 {
            warn!(sink = self.ctx.name, error = %why, "PostgreSQL store cannot write; the WAL keeps the frames, retrying with backoff");
        } else {
            debug!(sink = self.ctx.name, failures = self.failures, error = %why, "PostgreSQL store still failing");
        }
        let mut st = lock(&self.ctx.state);
        st.last_error = Some(why.clone());
        st.unhealthy = Some(why);
    }

    fn ok(&mut self) {
        if self.failures > 0 {
            info!(
                sink = self.ctx.name,
                failures = self.failures,
                "PostgreSQL store writing again; catching up from its cursor"
            );
        }
        self.failures = 0;
        self.ctx.metrics.sink_up.get_or_create(&self.label).set(1);
        let mut st = lock(&self.ctx.state);
        st.last_error = None;
        st.unhealthy = None;
    }

    /// Records the failure and waits before the next attempt; `true`
    /// when shutdown came first.
    async fn retry(&mut self, what: &str, e: &StoreError) -> bool {
        self.failed(what, e);
        let base = Duration::from_millis(250)
            .checked_mul(2u32.saturating_pow(self.failures.saturating_sub(1).min(16)))
            .unwrap_or(self.max)
            .min(self.max);
        let delay = base.mul_f64(0.75 + self.rng.f64() * 0.5);
        let mut shutdown = self.ctx.shutdown.clone();
        tokio::select! {
            _ = wait_true(&mut shutdown) => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }
}

/// A usable database: schema checked, configuration synced, ids loaded.
struct Store {
    pool: PgPool,
    ids: Ids,
    gateway_id: String,
}

async fn open(cfg: &PostgresSinkConfig, name: &str, config: &Config) -> Result<Store, StoreError> {
    let pool = within(cfg.connect_timeout.saturating_mul(2), connect(cfg)).await?;
    let applied = within(
        cfg.timeout.max(Duration::from_secs(60)),
        schema::prepare(&pool, cfg.migrate),
    )
    .await?;
    if !applied.is_empty() {
        info!(sink = name, versions = ?applied, "PostgreSQL migrations applied");
    }
    let ids = resync(cfg, name, &pool, config).await?;
    Ok(Store {
        pool,
        ids,
        gateway_id: config.gateway.gateway_id.clone(),
    })
}

async fn resync(
    cfg: &PostgresSinkConfig,
    name: &str,
    pool: &PgPool,
    config: &Config,
) -> Result<Ids, StoreError> {
    if cfg.sync_config {
        let r = within(cfg.timeout, sync::sync(pool, config)).await?;
        info!(
            sink = name,
            devices = r.devices,
            tags = r.tags,
            rules = r.rules,
            disabled = r.disabled,
            "configuration synced to PostgreSQL"
        );
    }
    within(cfg.timeout, Ids::load(pool, &config.gateway.gateway_id)).await
}

/// Writes a plan in one transaction, a run of one kind of op per
/// statement ([`bulk`]). When the database rejects it for its data, the
/// plan is written again op by op, each under a savepoint, and only the
/// ops that fail again are skipped; an availability error fails the
/// whole batch.
async fn write(
    pool: &PgPool,
    gateway_id: &str,
    plan: &Plan,
    timeout: Duration,
) -> Result<(u64, Vec<(u64, sqlx::Error)>), StoreError> {
    let bulk = within(timeout, async {
        let mut tx = pool.begin().await?;
        let changed = bulk::apply_all(&mut tx, gateway_id, &plan.ops).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(changed)
    })
    .await;
    match bulk {
        Ok(changed) => return Ok((changed, Vec::new())),
        Err(StoreError::Db(e)) if !transient(&e) => {
            warn!(error = %e, ops = plan.ops.len(), "PostgreSQL rejected a batch statement; writing the batch op by op to find the row");
        }
        Err(e) => return Err(e),
    }
    // Careful pass: one savepoint per statement, three round trips per op,
    // so it gets a deadline of its own that grows with the batch.
    let ops = u32::try_from(plan.ops.len()).unwrap_or(u32::MAX);
    let careful = timeout.saturating_add(Duration::from_millis(20).saturating_mul(ops));
    within(careful, async {
        let mut tx = pool.begin().await?;
        let mut changed = 0;
        let mut rejected = Vec::new();
        for p in &plan.ops {
            let mut sp = sqlx::Connection::begin(&mut *tx).await?;
            match writes::apply(&mut sp, gateway_id, &p.op).await {
                Ok(n) => {
                    sp.commit().await?;
                    changed += n;
                }
                Err(e) if transient(&e) => return Err(e),
                Err(e) => {
                    sp.rollback().await?;
                    rejected.push((p.seq, e));
                }
            }
        }
        tx.commit().await?;
        Ok((changed, rejected))
    })
    .await
}

/// Runs the store until shutdown.
pub async fn run(ctx: SinkContext, cfg: PostgresSinkConfig) -> Result<(), SinkError> {
    let label = SinkLabel {
        sink: ctx.name.clone(),
    };
    // Subscribe first: the cursor exists (and the WAL keeps frames for it)
    // even while the database is unreachable.
    let mut sub = ctx.bus.subscribe(&ctx.name, None)?;
    connect_options(&cfg).map_err(|e| SinkError::Setup(format!("sinks.{}.url: {e}", ctx.name)))?;
    let mut config_rx = ctx.config.clone();
    let mut shutdown = ctx.shutdown.clone();
    let mut health = Health {
        ctx: ctx.clone(),
        label: label.clone(),
        failures: 0,
        max: cfg.max_retry_interval,
        rng: fastrand::Rng::new(),
    };
    ctx.metrics.sink_up.get_or_create(&label).set(0);
    let mut planner = Planner::new(cfg.last_seen_interval);
    let mut store: Option<Store> = None;
    // A batch that could not be written yet (kept, in order, for the retry).
    let mut held: Option<Vec<FrameEnvelope>> = None;
    // Log rejected/skipped frames once per burst.
    let mut quiet_until = tokio::time::Instant::now();
    info!(sink = ctx.name, from = sub.position(), "PostgreSQL store started");
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let Some(st) = store.as_mut() else {
            let config: Arc<Config> = config_rx.borrow_and_update().clone();
            let opened = tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => return Ok(()),
                r = open(&cfg, &ctx.name, &config) => r,
            };
            match opened {
                Ok(s) => {
                    store = Some(s);
                    health.ok();
                }
                Err(e) => {
                    if health.retry("connecting", &e).await {
                        return Ok(());
                    }
                }
            }
            continue;
        };
        let frames = match held.take() {
            Some(f) => f,
            None => tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => return Ok(()),
                r = sub.recv_batch(cfg.batch_frames) => r?,
            },
        };
        let Some(last) = frames.last().map(|f| f.sequence_id) else {
            continue;
        };
        // A reload is published before the frames that follow it (a new
        // device's first, the reload's own AUDIT event, which every reload
        // writes): sync it first, so their rows exist.
        if config_rx.has_changed().unwrap_or(false) {
            let config = config_rx.borrow_and_update().clone();
            match resync(&cfg, &ctx.name, &st.pool, &config).await {
                Ok(ids) => st.ids = ids,
                Err(e) => {
                    (held, store) = (Some(frames), None);
                    if health.retry("syncing the configuration", &e).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        let plan = planner.plan(&frames, &st.ids);
        if !plan.ops.is_empty() {
            let started = std::time::Instant::now();
            match write(&st.pool, &st.gateway_id, &plan, cfg.timeout).await {
                Ok((changed, rejected)) => {
                    ctx.metrics
                        .sink_write_duration
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                    if !rejected.is_empty() {
                        ctx.metrics
                            .sink_dead_lettered
                            .get_or_create(&label)
                            .inc_by(rejected.len() as u64);
                        ctx.metrics
                            .sink_write_errors
                            .get_or_create(&SinkCauseLabels {
                                sink: ctx.name.clone(),
                                cause: "rejected".into(),
                            })
                            .inc_by(rejected.len() as u64);
                        for (seq, e) in &rejected {
                            warn!(sink = ctx.name, seq, error = %e, "PostgreSQL rejected a row; skipped (the frame stays readable with `gateway wal tail --from {seq}` until the WAL drops it)");
                        }
                    }
                    ctx.metrics.sink_written.get_or_create(&label).inc_by(changed);
                    lock(&ctx.state).written += changed;
                    planner.committed(&plan);
                    health.ok();
                }
                Err(e) => {
                    (held, store) = (Some(frames), None);
                    if health.retry("writing", &e).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        // Counted once, when the batch is done (not on every retry).
        let now = tokio::time::Instant::now();
        if !plan.skipped.is_empty() {
            ctx.metrics
                .sink_write_errors
                .get_or_create(&SinkCauseLabels {
                    sink: ctx.name.clone(),
                    cause: "unmatched".into(),
                })
                .inc_by(plan.skipped.len() as u64);
            if now >= quiet_until {
                let s = &plan.skipped[0];
                warn!(sink = ctx.name, seq = s.seq, reason = s.reason, count = plan.skipped.len(), "frames with nothing to store (counted in gateway_sink_write_errors_total{{cause=\"unmatched\"}}); further ones logged at most every 10 s");
                quiet_until = now + Duration::from_secs(10);
            }
        }
        sub.ack(last)?;
    }
}
