//! PostgreSQL store benchmark: events/s from a pre-filled WAL into the
//! machine's PostgreSQL, against a raw bulk writer in the same run.
//!
//! 1. Two fresh databases are created and migrated (`gateway db migrate`).
//! 2. The WAL is filled with `BENCH_EVENTS` ALERT_FIRED events, then an
//!    ALERT_RESOLVED for half of them and as many AUDIT events, through
//!    the frame bus API.
//! 3. The gateway starts with the store (default `batch_frames` = 1000)
//!    and one disabled device; the clock runs from the process start until
//!    the store's cursor reaches the head (`gateway_consumer_lag_frames`
//!    = 0). Reported: events/s and the gateway's CPU seconds.
//! 4. The raw writer stores the same rows in the other database the
//!    fastest way we know: 1000 rows per statement (`UNNEST` of arrays),
//!    one transaction per 1000 events, in the WAL's order.
//!
//! Usage: `pg_bench <gateway-binary>`; env `BENCH_EVENTS` (default 20000),
//! `BENCH_DIR` (default /var/tmp/gateway-pg-bench), `PG_TEST_ADMIN_URL`
//! (default postgres://postgres@127.0.0.1:5432/postgres). Run via
//! `scripts/bench.sh postgres`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use frame_bus::{BusConfig, FrameBus};
use proto::{EventFrame, EventKind, FrameType, Message};
use sqlx::{Connection, PgConnection};
use tests::{bench, proc_stats};

const T0_NS: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
const CHUNK: usize = 1000;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The events of the run, in WAL order.
fn events(n: usize) -> Vec<EventFrame> {
    let mut out = Vec::with_capacity(2 * n);
    let base = |kind: EventKind, id: String, i: usize| {
        tests::alert_event(
            kind,
            id,
            T0_NS + i as u64 * 1_000_000,
            80.0 + (i % 100) as f64,
            &[],
        )
    };
    for i in 0..n {
        let mut e = base(EventKind::AlertFired, format!("alert-{i}"), i);
        e.attributes.insert("threshold_value".into(), "80".into());
        out.push(e);
    }
    for i in 0..n / 2 {
        let mut e = base(EventKind::AlertResolved, format!("resolved-{i}"), n + i);
        e.attributes.insert("alert_id".into(), format!("alert-{i}"));
        out.push(e);
    }
    for i in 0..n / 2 {
        let mut e = base(EventKind::Audit, format!("audit-{i}"), n + n / 2 + i);
        e.status = "ok".into();
        for (k, v) in [
            ("action", "config.reload"),
            ("resource_type", "config"),
            ("resource", "/etc/gateway/gateway.toml"),
            ("actor", "http"),
            ("client_ip", "127.0.0.1"),
        ] {
            e.attributes.insert(k.into(), v.into());
        }
        out.push(e);
    }
    out
}

async fn admin(url: &str, sql: &str) -> Result<()> {
    let mut c = PgConnection::connect(url)
        .await
        .context("PostgreSQL at PG_TEST_ADMIN_URL")?;
    sqlx::raw_sql(sql).execute(&mut c).await?;
    Ok(())
}

fn write_config(dir: &Path, db_url: &str, port: u16) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir.join("devices"))?;
    std::fs::write(
        dir.join("devices/press.toml"),
        "name = \"press\"\nprotocol = \"simulator\"\nendpoint = \"sim://press\"\nenabled = false\n\
         [[tags]]\nname = \"temp\"\naddress = \"constant\"\ndata_type = \"Double\"\nvalue = 1.0\n",
    )?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"bench\"\ndata_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.pg]\ntype = \"postgres\"\nurl = \"{db_url}\"\n\
             [[alert_rules]]\nname = \"press-hot\"\ndevice = \"press\"\ntag = \"temp\"\nop = \"GT\"\n\
             threshold_value = 80.0\nlevel = \"CRITICAL\"\n"
        ),
    )?;
    Ok(config)
}

fn migrate(gateway: &Path, config: &Path) -> Result<()> {
    let out = std::process::Command::new(gateway)
        .args(["db", "migrate", "--config"])
        .arg(config)
        .output()?;
    ensure!(
        out.status.success(),
        "db migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The raw writer: the same rows, 1000 per statement, one transaction per chunk.
async fn raw(url: &str, all: &[EventFrame]) -> Result<Duration> {
    let mut c = PgConnection::connect(url).await?;
    sqlx::raw_sql(
        "INSERT INTO devices (gateway_id, name, protocol, endpoint) VALUES ('raw', 'press', 'Simulator', 'sim://press');
         INSERT INTO alert_rules (gateway_id, name, condition_expression, op, threshold_value, level, device_id)
           SELECT 'raw', 'press-hot', 'temp GT 80', 'GT', 80, 'CRITICAL', id FROM devices;",
    )
    .execute(&mut c)
    .await?;
    let rule: uuid::Uuid = sqlx::query_scalar("SELECT id FROM alert_rules")
        .fetch_one(&mut c)
        .await?;
    let started = Instant::now();
    for chunk in all.chunks(CHUNK) {
        let mut tx = c.begin().await?;
        let of = |k: EventKind| chunk.iter().filter(move |e| e.kind == k as i32);
        let us = |e: &EventFrame| (e.event_ts_ns / 1000) as i64;
        let fired: Vec<&EventFrame> = of(EventKind::AlertFired).collect();
        if !fired.is_empty() {
            sqlx::query(
                "INSERT INTO alert_history (event_id, rule_id, fired_at, triggered_value, threshold_value, level, message, details) \
                 SELECT u.e, $1, 'epoch'::timestamptz + u.t * INTERVAL '1 microsecond', u.v, 80, 'CRITICAL', 'temp above 80', '{}' \
                 FROM UNNEST($2::text[], $3::int8[], $4::float8[]) AS u(e, t, v) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(rule)
            .bind(fired.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
            .bind(fired.iter().map(|e| us(e)).collect::<Vec<_>>())
            .bind(fired.iter().map(|_| 95.5f64).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let resolved: Vec<&EventFrame> = of(EventKind::AlertResolved).collect();
        if !resolved.is_empty() {
            sqlx::query(
                "UPDATE alert_history h SET status = 'RESOLVED', \
                   resolved_at = GREATEST('epoch'::timestamptz + u.t * INTERVAL '1 microsecond', h.fired_at), \
                   duration = GREATEST('epoch'::timestamptz + u.t * INTERVAL '1 microsecond', h.fired_at) - h.fired_at \
                 FROM UNNEST($1::text[], $2::int8[]) AS u(e, t) WHERE h.event_id = u.e AND h.status <> 'RESOLVED'",
            )
            .bind(resolved.iter().map(|e| e.attributes["alert_id"].clone()).collect::<Vec<_>>())
            .bind(resolved.iter().map(|e| us(e)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let audits: Vec<&EventFrame> = of(EventKind::Audit).collect();
        if !audits.is_empty() {
            sqlx::query(
                "INSERT INTO audit_logs (event_id, gateway_id, action, resource_type, resource_name, details, ip_address, \
                   actor, success, created_at) \
                 SELECT u.e, 'raw', 'config.reload', 'config', '/etc/gateway/gateway.toml', '{}', '127.0.0.1', 'http', true, \
                   'epoch'::timestamptz + u.t * INTERVAL '1 microsecond' \
                 FROM UNNEST($1::text[], $2::int8[]) AS u(e, t) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(audits.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
            .bind(audits.iter().map(|e| us(e)).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    let took = started.elapsed();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alert_history WHERE status = 'RESOLVED'")
        .fetch_one(&mut c)
        .await?;
    ensure!(
        n as usize
            == all
                .iter()
                .filter(|e| e.kind == EventKind::AlertResolved as i32)
                .count()
    );
    Ok(took)
}

fn main() -> Result<()> {
    let gateway = bench::gateway_arg("pg_bench")?;
    let n: usize = bench::knob("BENCH_EVENTS", 20_000);
    let dir = bench::dir("/var/tmp/gateway-pg-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let admin_url = std::env::var("PG_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b)
        .to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (store_db, raw_db) = ("gw_bench_store", "gw_bench_raw");
    for db in [store_db, raw_db] {
        rt.block_on(admin(
            &admin_url,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        ))?;
        rt.block_on(admin(&admin_url, &format!("CREATE DATABASE {db}")))?;
    }
    let all = events(n);

    // The store.
    let port = free_port()?;
    let config = write_config(&dir.join("store"), &format!("{base}/{store_db}"), port)?;
    migrate(&gateway, &config)?;
    let bus = FrameBus::open(dir.join("store/data/wal"), BusConfig::default())?;
    let frames: Vec<(FrameType, Vec<u8>)> = all
        .iter()
        .map(|e| (FrameType::Event, e.encode_to_vec()))
        .collect();
    rt.block_on(bus.publish_batch(frames))?;
    bus.close();
    drop(bus);
    let started = Instant::now();
    let g = bench::Running::start(&gateway, &config, port)?;
    loop {
        let lag = g.metric("gateway_consumer_lag_frames")?;
        let up = g.metric("gateway_sink_up")?;
        if lag == 0.0 && up == 1.0 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the store did not catch up (lag {lag})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let store_took = started.elapsed();
    let cpu = proc_stats::cpu_ticks(g.pid)? as f64 / proc_stats::ticks_per_sec();
    let rss = proc_stats::memory_kib(g.pid, "VmHWM:")?;
    drop(g);

    // The raw writer (same rows, other database).
    let raw_config = write_config(&dir.join("raw"), &format!("{base}/{raw_db}"), free_port()?)?;
    migrate(&gateway, &raw_config)?;
    let raw_took = rt.block_on(raw(&format!("{base}/{raw_db}"), &all))?;

    for db in [store_db, raw_db] {
        rt.block_on(admin(
            &admin_url,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        ))?;
    }
    let events = all.len() as f64;
    let (s, r) = (events / store_took.as_secs_f64(), events / raw_took.as_secs_f64());
    println!("| writer | events | seconds | events/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| PostgreSQL store (gateway process, start included; CPU {cpu:.2} s, peak RSS {} MiB) | {events} | {:.2} | {s:.0} | {:.2} |",
        rss / 1024,
        store_took.as_secs_f64(),
        s / r
    );
    println!(
        "| raw bulk writer (1000 rows per statement) | {events} | {:.2} | {r:.0} | 1.00 |",
        raw_took.as_secs_f64()
    );
    Ok(())
}
