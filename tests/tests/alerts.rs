//! The alert engine end to end: the real `gateway` binary, a simulator
//! device whose value the test sets (device file + reload), the machine's
//! PostgreSQL (each test creates and drops its own database) and a local
//! HTTP receiver for webhooks, started and stopped by the test.
//!
//! Exactly-once is checked on the bus itself: the file sink archives every
//! frame (at-least-once, so lines are de-duplicated by seq), and each alert
//! event must appear under exactly one seq.

use tests::harness as common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pg::Db;
use common::{free_port, DemoDir, Gateway};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "alert-test-token";

fn tank(level: f64) -> (String, String) {
    (
        "tank".into(),
        format!(
            "name = \"tank\"\nprotocol = \"simulator\"\nendpoint = \"sim://tank\"\nscan_interval = \"200ms\"\n\n\
             [[tags]]\nname = \"level\"\naddress = \"constant\"\ndata_type = \"Double\"\nvalue = {level:?}\n"
        ),
    )
}

fn set_level(demo: &DemoDir, level: f64) {
    let (_, body) = tank(level);
    std::fs::write(demo.config().parent().unwrap().join("devices/tank.toml"), body).unwrap();
}

/// `[http] token` (continues the harness's `[http]` table), a file sink
/// archiving every frame, and `rules`.
fn gateway_extra(sinks: &str, rules: &str) -> String {
    format!(
        "token = \"{TOKEN}\"\n\n[sinks.archive]\ntype = \"file\"\npath = \"archive.jsonl\"\nbatch_size = 1\n\n{sinks}\n{rules}"
    )
}

const TANK_HIGH: &str = "\n[[alert_rules]]\nname = \"tank_high\"\ndevice = \"tank\"\ntag = \"level\"\nop = \"GT\"\n\
    threshold_value = 50.0\nlevel = \"CRITICAL\"\neval_interval = \"1s\"\neval_duration = \"4s\"\ncooldown_duration = \"0s\"\n";

fn pg_sink(url: &str) -> String {
    format!(
        "[sinks.pg]\ntype = \"postgres\"\nurl = \"{url}\"\nmax_retry_interval = \"1s\"\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n"
    )
}

/// The alert API and process control, on the harness's gateway.
trait AlertApi {
    fn api(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value);
    fn open_alerts(&self) -> Vec<Value>;
    fn rule_state(&self, rule: &str) -> String;
    fn kill9(self);
    fn stop(self);
}

impl AlertApi for Gateway {
    fn api(&self, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = match method {
            "GET" => client.get(url),
            _ => client.post(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn open_alerts(&self) -> Vec<Value> {
        let (code, body) = self.api("GET", "/api/v1/alerts", None, Some(TOKEN));
        assert_eq!(code, 200, "{body}");
        body["alerts"].as_array().cloned().unwrap_or_default()
    }

    fn rule_state(&self, rule: &str) -> String {
        let (code, body) = self.api("GET", "/api/v1/alerts/rules", None, Some(TOKEN));
        assert_eq!(code, 200, "{body}");
        body["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == rule)
            .map(|r| r["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    fn stop(mut self) {
        self.signal(libc::SIGTERM);
        assert!(self.wait_exit(LIMIT).success(), "{}", self.log_text());
    }
}

/// Alert events in the archive: `(kind, alert id)` per distinct seq.
fn archived_alert_events(data: &Path) -> Vec<(String, String, u64)> {
    let text = std::fs::read_to_string(data.join("archive.jsonl")).unwrap_or_default();
    let mut by_seq: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("archive line");
        let kind = v["kind"].as_str().unwrap_or_default();
        if !kind.starts_with("ALERT_") {
            continue;
        }
        let id = if kind == "ALERT_FIRED" {
            v["event_id"].as_str().unwrap_or_default().to_string()
        } else {
            v["attributes"]["alert_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        by_seq.insert(v["seq"].as_u64().unwrap(), (kind.to_string(), id));
    }
    by_seq.into_iter().map(|(seq, (k, id))| (k, id, seq)).collect()
}

/// A rule fires after its hold and resolves; SIGKILL during the pending
/// period and during the active alert neither loses nor repeats anything:
/// one ALERT_FIRED and one ALERT_RESOLVED on the bus, one `alert_history`
/// row with the acknowledgement, and the operator actions in `audit_logs`.
#[test]
fn alert_survives_sigkill_while_pending_and_while_active() {
    let db = Db::create();
    let demo = DemoDir::with_gateway(&[tank(80.0)], &gateway_extra(&pg_sink(&db.url), TANK_HIGH));
    let mut g = Gateway::start(&demo, &[]);

    // Pending (the hold is 4 s): kill the process now.
    g.wait_until("rule pending", LIMIT, |g| g.rule_state("tank_high") == "pending");
    assert!(g.open_alerts().is_empty(), "not fired before its hold");
    g.kill9();

    // The restarted engine remembers the pending start and fires once.
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("alert fired", LIMIT, |g| g.open_alerts().len() == 1);
    let alert = g.open_alerts()[0].clone();
    let id = alert["id"].as_str().unwrap().to_string();
    assert_eq!(alert["rule"], "tank_high");
    assert_eq!(alert["level"], "CRITICAL");
    assert_eq!(alert["value"], 80.0);
    assert_eq!(g.metric_sum("gateway_alerts_active"), Some(1.0));

    // Acknowledge (who is required; a second ack conflicts; unknown id is 404).
    let (code, body) = g.api(
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({})),
        Some(TOKEN),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = g.api(
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"by": "ann"})),
        Some("wrong"),
    );
    assert_eq!(code, 401, "{body}");
    let (code, body) = g.api(
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"by": "ann"})),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["alert"]["acked_by"], "ann");
    let (code, body) = g.api(
        "POST",
        &format!("/api/v1/alerts/{id}/ack"),
        Some(json!({"by": "bob"})),
        Some(TOKEN),
    );
    assert_eq!(code, 409, "{body}");
    let (code, _) = g.api(
        "POST",
        "/api/v1/alerts/nope/ack",
        Some(json!({"by": "bob"})),
        Some(TOKEN),
    );
    assert_eq!(code, 404);
    g.wait_until("row acknowledged", LIMIT, |_| {
        db.count(
            "SELECT count(*) FROM alert_history WHERE status = 'ACKNOWLEDGED' AND acknowledged_by = 'ann'",
        ) == 1
    });

    // SIGKILL while active: after the restart it is the same open alert,
    // still acknowledged, and it is not fired again.
    g.kill9();
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("engine running", LIMIT, |g| g.rule_state("tank_high") == "active");
    std::thread::sleep(Duration::from_secs(6)); // more than the hold: a re-fire would show
    let open = g.open_alerts();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["id"], id.as_str());
    assert_eq!(open[0]["acked_by"], "ann");

    // The value drops: resolved after the hold.
    set_level(&demo, 10.0);
    let (code, body) = g.api("POST", "/api/v1/reload", None, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    g.wait_until("alert resolved", LIMIT, |g| g.open_alerts().is_empty());
    g.wait_until("row resolved", LIMIT, |_| {
        db.count("SELECT count(*) FROM alert_history WHERE status = 'RESOLVED'") == 1
    });
    assert_eq!(g.metric_sum("gateway_alerts_active"), Some(0.0));
    g.stop();

    // Exactly one FIRED and one RESOLVED (and one ACK) on the bus.
    let events = archived_alert_events(&demo.data());
    let kinds: Vec<&str> = events.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["ALERT_FIRED", "ALERT_ACKNOWLEDGED", "ALERT_RESOLVED"],
        "{events:?}"
    );
    assert!(events.iter().all(|(_, a, _)| *a == id), "{events:?}");

    // One alert_history row, complete.
    let rows = db.rows(
        "SELECT h.status::text AS status, h.level::text AS level, h.triggered_value, h.threshold_value, \
         h.acknowledged_by, h.resolved_at >= h.fired_at AS ordered, h.duration IS NOT NULL AS has_duration, \
         r.name AS rule, h.details->>'alert_kind' AS kind \
         FROM alert_history h JOIN alert_rules r ON r.id = h.rule_id",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["status"], "RESOLVED");
    assert_eq!(r["level"], "CRITICAL");
    assert_eq!(r["triggered_value"], 80.0);
    assert_eq!(r["threshold_value"], 50.0);
    assert_eq!(r["acknowledged_by"], "ann");
    assert_eq!(r["ordered"], true);
    assert_eq!(r["has_duration"], true);
    assert_eq!(r["rule"], "tank_high");
    assert_eq!(r["kind"], "threshold");
    // The acknowledgement is audited with who asked and from where.
    let audit = db.rows(
        "SELECT action, resource_name, actor, host(ip_address) AS ip, success FROM audit_logs \
         WHERE action = 'alert.acknowledge' ORDER BY created_at",
    );
    assert!(
        audit
            .iter()
            .any(|a| a["success"] == true && a["resource_name"] == id.as_str() && a["ip"] == "127.0.0.1"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a["success"] == false),
        "the refused second acknowledgement is audited too: {audit:?}"
    );
}

/// Suppressing a rule closes its open alert as SUPPRESSED and mutes it;
/// unsuppressing lets it fire again. Both are audited.
#[test]
fn suppression_is_recorded_and_lifted() {
    let db = Db::create();
    let rule = "\n[[alert_rules]]\nname = \"tank_any\"\ndevice = \"tank\"\ntag = \"level\"\nop = \"GTE\"\n\
        threshold_value = 0.0\nlevel = \"WARNING\"\neval_interval = \"1s\"\ncooldown_duration = \"0s\"\n";
    let demo = DemoDir::with_gateway(&[tank(5.0)], &gateway_extra(&pg_sink(&db.url), rule));
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("alert fired", LIMIT, |g| g.open_alerts().len() == 1);
    let first = g.open_alerts()[0]["id"].as_str().unwrap().to_string();

    let (code, body) = g.api(
        "POST",
        "/api/v1/alerts/rules/tank_any/suppress",
        Some(json!({"by": "ann", "duration": "1h", "reason": "sensor swap"})),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["closed_alerts"][0]["id"], first.as_str());
    let (code, _) = g.api(
        "POST",
        "/api/v1/alerts/rules/nope/suppress",
        Some(json!({"by": "ann"})),
        Some(TOKEN),
    );
    assert_eq!(code, 404);
    assert_eq!(g.rule_state("tank_any"), "suppressed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(g.open_alerts().is_empty(), "muted while suppressed");
    g.wait_until("row suppressed", LIMIT, |_| {
        db.count("SELECT count(*) FROM alert_history WHERE status = 'SUPPRESSED'") == 1
    });

    // Suppression survives a restart.
    g.stop();
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("engine running", LIMIT, |g| {
        g.rule_state("tank_any") == "suppressed"
    });

    let (code, body) = g.api(
        "POST",
        "/api/v1/alerts/rules/tank_any/unsuppress",
        Some(json!({"by": "ann"})),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["was_suppressed"], true);
    g.wait_until("fires again", LIMIT, |g| g.open_alerts().len() == 1);
    assert_ne!(g.open_alerts()[0]["id"], first.as_str(), "a new alert");
    g.wait_until("audit rows", LIMIT, |_| {
        db.count(
            "SELECT count(*) FROM audit_logs WHERE success AND action IN ('alert_rule.suppress', 'alert_rule.unsuppress') \
             AND resource_name = 'tank_any'",
        ) == 2
    });
    let details = db.rows("SELECT details FROM audit_logs WHERE action = 'alert_rule.suppress' AND success");
    assert_eq!(details[0]["details"]["reason"], "sensor swap", "{details:?}");
    g.stop();
}

/// A minimal HTTP receiver: records every POST body and its
/// `Idempotency-Key`, answers 200. Stops when dropped.
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        if let Some(req) = read_request(&stream) {
                            g.lock().unwrap().push(req);
                        }
                        let mut w = &stream;
                        let _ =
                            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<(String, Value)> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(stream: &std::net::TcpStream) -> Option<(String, Value)> {
    let mut r = BufReader::new(stream);
    let mut len = 0usize;
    let mut key = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().ok()?,
                "idempotency-key" => key = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((key, serde_json::from_slice(&body).ok()?))
}

/// Webhook delivery to a receiver that is down when the alert fires: the
/// event waits in the WAL, retries back off, and everything arrives in
/// order once the receiver is up; events below `min_level` are not sent.
#[test]
fn webhook_delivers_after_receiver_downtime() {
    let port = free_port();
    let hook = format!(
        "[sinks.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/alerts\"\nmin_level = \"WARNING\"\n\
         timeout = \"2s\"\nmax_retry_interval = \"500ms\"\nheaders = {{ X-Plant = \"line-3\" }}\n"
    );
    let rules = format!(
        "{}\n[[alert_rules]]\nname = \"tank_info\"\ndevice = \"tank\"\ntag = \"level\"\nop = \"GT\"\n\
         threshold_value = 0.0\nlevel = \"INFO\"\neval_interval = \"1s\"\n",
        TANK_HIGH.replace("eval_duration = \"4s\"", "eval_duration = \"1s\"")
    );
    // Without `[http] token`: the alert API refuses (403), the engine runs anyway.
    let extra = gateway_extra(&hook, &rules).replacen(&format!("token = \"{TOKEN}\"\n"), "", 1);
    let demo = DemoDir::with_gateway(&[tank(80.0)], &extra);
    let mut g = Gateway::start(&demo, &[]);
    let (code, body) = g.api("GET", "/api/v1/alerts", None, None);
    assert_eq!(code, 403, "{body}");

    // The receiver is down: the fired event is retried.
    g.wait_until("delivery failing", LIMIT, |g| {
        g.get("/metrics")
            .is_some_and(|(_, m)| m.contains("gateway_notifications_total{sink=\"hook\",result=\"failed\"}"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let receiver = Receiver::start(port);
    g.wait_until("fired delivered", LIMIT, |_| !receiver.events().is_empty());

    // Resolve while the receiver is down again, then bring it back.
    let before = receiver.events();
    drop(receiver);
    set_level(&demo, -5.0);
    g.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(4));
    let receiver = Receiver::start(port);
    g.wait_until("resolved delivered", LIMIT, |_| {
        receiver.events().iter().any(|(_, b)| b["event"] == "resolved")
    });
    g.stop();

    let all: Vec<(String, Value)> = before.into_iter().chain(receiver.events()).collect();
    // Only the CRITICAL rule's events: tank_info is INFO, below min_level.
    assert!(all.iter().all(|(_, b)| b["rule"] == "tank_high"), "{all:?}");
    // In order, each at least once (a retry may repeat one), keyed by event id.
    let order: Vec<&str> = all.iter().map(|(_, b)| b["event"].as_str().unwrap()).collect();
    assert_eq!(order.first(), Some(&"fired"), "{order:?}");
    assert_eq!(order.last(), Some(&"resolved"), "{order:?}");
    for (key, b) in &all {
        assert_eq!(
            key,
            b["event_id"].as_str().unwrap(),
            "Idempotency-Key is the event id"
        );
    }
    let resolved = &all.last().unwrap().1;
    assert_eq!(resolved["level"], "CRITICAL");
    assert_eq!(resolved["device"], "tank");
    assert_eq!(resolved["tag"], "level");
    assert_eq!(resolved["gateway_id"], "test-gw");
    assert_eq!(resolved["attributes"]["reason"], "condition_cleared");
    let ids: BTreeSet<&str> = all.iter().map(|(_, b)| b["alert_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one alert: {all:?}");
    // tank_info fired and resolved on the bus all the same (other sinks see it).
    let on_bus = archived_alert_events(&demo.data());
    assert_eq!(
        on_bus.iter().filter(|(k, _, _)| k == "ALERT_FIRED").count(),
        2,
        "{on_bus:?}"
    );
}

/// Without rules the engine is no consumer (the WAL keeps its history for
/// `wal tail`); a rule added by a reload starts it, and fires.
#[test]
fn rules_added_by_a_reload_start_the_engine() {
    let demo = DemoDir::with_gateway(&[tank(80.0)], &format!("token = \"{TOKEN}\"\n"));
    let mut g = Gateway::start(&demo, &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !common::wal_cursors(&demo.wal()).contains_key("alerts"),
        "no rules: no consumer"
    );
    assert!(g.open_alerts().is_empty());
    let gw = demo.config();
    let text = std::fs::read_to_string(&gw).unwrap();
    std::fs::write(
        &gw,
        text + TANK_HIGH
            .replace("eval_duration = \"4s\"", "eval_duration = \"1s\"")
            .as_str(),
    )
    .unwrap();
    let (code, body) = g.api("POST", "/api/v1/reload", None, Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    g.wait_until("fired after the reload", LIMIT, |g| g.open_alerts().len() == 1);
    g.stop();
    assert!(common::wal_cursors(&demo.wal()).contains_key("alerts"));
}
