//! The fast path of a batch: consecutive ops of one kind become one
//! statement over arrays (`UNNEST`), with exactly the effect of running
//! them one by one ([`super::writes::apply`], which remains the careful
//! path when the database rejects a row).
//!
//! Why it is equivalent: runs keep the batch's order between kinds (a
//! resolution never overtakes its alert's insert); within a run, the
//! statements of one kind commute except for repeated keys, which are
//! reduced first the way the row-by-row statements would resolve them —
//! the latest `last_seen`, the first acknowledgement, one resolution;
//! inserts of a repeated event id keep the first (`ON CONFLICT DO
//! NOTHING`). Device status changes keep their row-by-row statement: the
//! last one of a device must win, and they are rare.

use std::collections::HashMap;

use serde_json::Value as Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::writes::{apply, AlertChange, Op, Planned};

/// `$n` microseconds since the epoch as a `timestamptz`, for an array column `u.c`.
macro_rules! ts {
    ($c:literal) => {
        concat!("('epoch'::timestamptz + ", $c, " * INTERVAL '1 microsecond')")
    };
}

/// Which ops can share one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LastSeen,
    Status,
    Fired,
    Changed(AlertChange),
    Audit,
}

fn kind(op: &Op) -> Kind {
    match op {
        Op::LastSeen { .. } => Kind::LastSeen,
        Op::Status { .. } => Kind::Status,
        Op::AlertFired { .. } => Kind::Fired,
        Op::AlertChanged { change, .. } => Kind::Changed(*change),
        Op::Audit(_) => Kind::Audit,
    }
}

/// Runs every op of a batch, a run of one kind per statement. Returns the
/// rows changed.
pub async fn apply_all(
    conn: &mut PgConnection,
    gateway_id: &str,
    ops: &[Planned],
) -> Result<u64, sqlx::Error> {
    let mut changed = 0;
    let mut rest = ops;
    while let Some(first) = rest.first() {
        let k = kind(&first.op);
        let n = rest.iter().take_while(|p| kind(&p.op) == k).count();
        let (run, tail) = rest.split_at(n);
        rest = tail;
        let ops = run.iter().map(|p| &p.op);
        changed += match k {
            Kind::Status => {
                let mut c = 0;
                for op in ops {
                    c += apply(conn, gateway_id, op).await?;
                }
                c
            }
            Kind::LastSeen => last_seen(conn, ops).await?,
            Kind::Fired => fired(conn, ops).await?,
            Kind::Changed(change) => alert_changed(conn, change, ops).await?,
            Kind::Audit => audit(conn, gateway_id, ops).await?,
        };
    }
    Ok(changed)
}

async fn last_seen<'a>(
    conn: &mut PgConnection,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<u64, sqlx::Error> {
    let mut latest: HashMap<Uuid, i64> = HashMap::new();
    for op in ops {
        if let Op::LastSeen { device, at_us } = op {
            let e = latest.entry(*device).or_insert(*at_us);
            *e = (*e).max(*at_us);
        }
    }
    let (ids, at): (Vec<Uuid>, Vec<i64>) = latest.into_iter().unzip();
    Ok(sqlx::query(concat!(
        "UPDATE devices d SET last_seen = ",
        ts!("u.at"),
        " FROM UNNEST($1::uuid[], $2::int8[]) AS u(id, at) ",
        "WHERE d.id = u.id AND (d.last_seen IS NULL OR d.last_seen < ",
        ts!("u.at"),
        ")"
    ))
    .bind(&ids)
    .bind(&at)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

async fn fired<'a>(conn: &mut PgConnection, ops: impl Iterator<Item = &'a Op>) -> Result<u64, sqlx::Error> {
    let mut event_id = Vec::new();
    let mut rule = Vec::new();
    let mut device: Vec<Option<Uuid>> = Vec::new();
    let mut tag: Vec<Option<Uuid>> = Vec::new();
    let mut at = Vec::new();
    let mut value: Vec<Option<f64>> = Vec::new();
    let mut threshold: Vec<Option<f64>> = Vec::new();
    let mut level = Vec::new();
    let mut message = Vec::new();
    let mut details: Vec<Json> = Vec::new();
    for op in ops {
        if let Op::AlertFired {
            event_id: e,
            rule: r,
            device: d,
            tag: t,
            at_us,
            value: v,
            threshold: th,
            level: l,
            message: m,
            details: de,
        } = op
        {
            event_id.push(e.clone());
            rule.push(*r);
            device.push(*d);
            tag.push(*t);
            at.push(*at_us);
            value.push(*v);
            threshold.push(*th);
            level.push(l.to_string());
            message.push(m.clone());
            details.push(de.clone());
        }
    }
    // ORDER BY the position keeps the first of a repeated event id, as
    // row-by-row inserts would.
    Ok(sqlx::query(concat!(
        "INSERT INTO alert_history (event_id, rule_id, device_id, tag_id, fired_at, triggered_value, ",
        "threshold_value, level, status, message, details) ",
        "SELECT DISTINCT ON (u.event_id) u.event_id, u.rule_id, d.id, t.id, ",
        ts!("u.at"),
        ", u.value, u.threshold, u.level::alert_level, 'ACTIVE', u.message, u.details ",
        "FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int8[], $6::float8[], $7::float8[], ",
        "$8::text[], $9::text[], $10::jsonb[]) WITH ORDINALITY ",
        "AS u(event_id, rule_id, device_id, tag_id, at, value, threshold, level, message, details, n) ",
        "LEFT JOIN devices d ON d.id = u.device_id LEFT JOIN tags t ON t.id = u.tag_id ",
        "ORDER BY u.event_id, u.n ",
        "ON CONFLICT (event_id) DO NOTHING"
    ))
    .bind(&event_id)
    .bind(&rule)
    .bind(&device)
    .bind(&tag)
    .bind(&at)
    .bind(&value)
    .bind(&threshold)
    .bind(&level)
    .bind(&message)
    .bind(&details)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

async fn alert_changed<'a>(
    conn: &mut PgConnection,
    change: AlertChange,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<u64, sqlx::Error> {
    // The first change of an alert is the one that applies: the guards of
    // the row-by-row statements make every later one a no-op.
    let mut seen = std::collections::HashSet::new();
    let mut alert = Vec::new();
    let mut at = Vec::new();
    let mut by: Vec<Option<String>> = Vec::new();
    for op in ops {
        if let Op::AlertChanged {
            alert_id,
            at_us,
            by: b,
            ..
        } = op
        {
            if seen.insert(alert_id.as_str()) {
                alert.push(alert_id.clone());
                at.push(*at_us);
                by.push(b.clone());
            }
        }
    }
    let q = match change {
        AlertChange::Resolved => sqlx::query(concat!(
            "UPDATE alert_history h SET status = 'RESOLVED', resolved_at = GREATEST(",
            ts!("u.at"),
            ", h.fired_at), duration = GREATEST(",
            ts!("u.at"),
            ", h.fired_at) - h.fired_at ",
            "FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(alert, at, by) ",
            "WHERE h.event_id = u.alert AND h.status <> 'RESOLVED'"
        )),
        AlertChange::Acknowledged => sqlx::query(concat!(
            "UPDATE alert_history h SET acknowledged_at = GREATEST(",
            ts!("u.at"),
            ", h.fired_at), acknowledged_by = u.by, ",
            "status = CASE WHEN h.status = 'ACTIVE' THEN 'ACKNOWLEDGED'::alert_status ELSE h.status END ",
            "FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(alert, at, by) ",
            "WHERE h.event_id = u.alert AND h.acknowledged_at IS NULL"
        )),
        AlertChange::Suppressed => sqlx::query(
            "UPDATE alert_history h SET status = 'SUPPRESSED' \
             FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS u(alert, at, by) \
             WHERE h.event_id = u.alert AND h.status IN ('ACTIVE', 'ACKNOWLEDGED')",
        ),
    };
    Ok(q.bind(&alert)
        .bind(&at)
        .bind(&by)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

async fn audit<'a>(
    conn: &mut PgConnection,
    gateway_id: &str,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<u64, sqlx::Error> {
    let mut event_id = Vec::new();
    let mut action = Vec::new();
    let mut resource_type: Vec<Option<String>> = Vec::new();
    let mut resource_id: Vec<Option<Uuid>> = Vec::new();
    let mut resource_name: Vec<Option<String>> = Vec::new();
    let mut details: Vec<Json> = Vec::new();
    let mut ip: Vec<Option<String>> = Vec::new();
    let mut user_agent: Vec<Option<String>> = Vec::new();
    let mut actor: Vec<Option<String>> = Vec::new();
    let mut success = Vec::new();
    let mut error: Vec<Option<String>> = Vec::new();
    let mut at = Vec::new();
    for op in ops {
        if let Op::Audit(a) = op {
            event_id.push(a.event_id.clone());
            action.push(a.action.clone());
            resource_type.push(a.resource_type.clone());
            resource_id.push(a.resource_id);
            resource_name.push(a.resource_name.clone());
            details.push(a.details.clone());
            ip.push(
                a.client_ip
                    .clone()
                    .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
            );
            user_agent.push(a.user_agent.clone());
            actor.push(a.actor.clone());
            success.push(a.success);
            error.push(a.error_message.clone());
            at.push(a.at_us);
        }
    }
    Ok(sqlx::query(concat!(
        "INSERT INTO audit_logs (event_id, gateway_id, action, resource_type, resource_id, resource_name, ",
        "details, ip_address, user_agent, actor, success, error_message, created_at) ",
        "SELECT u.event_id, $1, u.action, u.resource_type, u.resource_id, u.resource_name, u.details, ",
        "u.ip::inet, u.user_agent, u.actor, u.success, u.error, ",
        ts!("u.at"),
        " FROM UNNEST($2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::jsonb[], $8::text[], ",
        "$9::text[], $10::text[], $11::bool[], $12::text[], $13::int8[]) ",
        "AS u(event_id, action, resource_type, resource_id, resource_name, details, ip, user_agent, actor, ",
        "success, error, at) ",
        "ON CONFLICT (event_id) DO NOTHING"
    ))
    .bind(gateway_id)
    .bind(&event_id)
    .bind(&action)
    .bind(&resource_type)
    .bind(&resource_id)
    .bind(&resource_name)
    .bind(&details)
    .bind(&ip)
    .bind(&user_agent)
    .bind(&actor)
    .bind(&success)
    .bind(&error)
    .bind(&at)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
