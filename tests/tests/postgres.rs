//! The PostgreSQL store end to end: the real `gateway` binary against the
//! machine's PostgreSQL (each test creates and drops its own database) or,
//! for the outage tests, a private cluster started and stopped by the test.
//! Alert events are put on the bus with the frame-bus library before the
//! gateway starts (the alert engine that produces them is a later issue);
//! device status, `last_seen`, the configuration and the audit log come
//! from the running gateway itself.

use tests::harness as common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::peers::ModbusServer;
use common::pg::{Cluster, Db};
use common::{gateway_bin, DemoDir, Gateway};
use proto::{EventKind, FrameType, Message};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

fn pg_sink(url: &str, extra: &str) -> String {
    format!(
        "\n[sinks.pg]\ntype = \"postgres\"\nurl = \"{url}\"\nmax_retry_interval = \"1s\"\n\
         connect_timeout = \"2s\"\ntimeout = \"5s\"\nlast_seen_interval = \"1s\"\n{extra}\n"
    )
}

fn simulator(name: &str, tags: &[&str]) -> (String, String) {
    let mut body = format!(
        "name = \"{name}\"\nprotocol = \"simulator\"\nendpoint = \"sim://{name}\"\nlocation = \"Hall 1\"\n\
         scan_interval = \"100ms\"\n"
    );
    for t in tags {
        body.push_str(&format!(
            "\n[[tags]]\nname = \"{t}\"\naddress = \"constant\"\ndata_type = \"Double\"\nvalue = 21.5\nunit = \"C\"\n"
        ));
    }
    (name.to_string(), body)
}

/// `gateway ARGS --config CONFIG` with the environment the harness's
/// gateway.toml refers to.
fn cli(args: &[&str], config: &Path) -> Output {
    let dir = config.parent().unwrap();
    std::process::Command::new(gateway_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("GATEWAY_DATA_DIR", dir.join("data"))
        .env("GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .expect("run gateway")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of one metric line, e.g. `gateway_sink_up{sink="pg"}`.
fn metric(g: &Gateway, key: &str) -> Option<f64> {
    let (_, body) = g.get("/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

fn names(db: &Db, sql: &str) -> Vec<String> {
    db.rows(sql)
        .into_iter()
        .map(|r| {
            r.as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn migrations_create_the_seed_schema_are_idempotent_and_refuse_a_newer_one() {
    let db = Db::create();
    let demo = DemoDir::with_gateway(&[simulator("press", &["temp"])], &pg_sink(&db.url, ""));
    let out = cli(&["db", "migrate"], &demo.config());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("applied migrations [1, 2]"), "{}", text(&out));

    // Every enum with every value of the seed, in the seed's order (the
    // protocol kinds the seed lacks come after its own).
    let mut enums: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in db.rows(
        "SELECT t.typname, e.enumlabel FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid \
         ORDER BY t.typname, e.enumsortorder",
    ) {
        enums
            .entry(r["typname"].as_str().unwrap().into())
            .or_default()
            .push(r["enumlabel"].as_str().unwrap().into());
    }
    let expected: &[(&str, &[&str])] = &[
        (
            "protocol_kind",
            &[
                "ModbusTcp",
                "ModbusRtu",
                "OpcUa",
                "Mqtt",
                "Custom",
                "ModbusRtuOverTcp",
                "Simulator",
            ],
        ),
        (
            "device_status",
            &["Online", "Offline", "Error", "Maintenance", "Unknown"],
        ),
        (
            "tag_data_type",
            &[
                "Boolean",
                "Int8",
                "UInt8",
                "Int16",
                "UInt16",
                "Int32",
                "UInt32",
                "Int64",
                "UInt64",
                "Float",
                "Double",
                "String",
                "DateTime",
                "ByteArray",
            ],
        ),
        ("tag_access", &["Read", "Write", "ReadWrite"]),
        (
            "compare_op",
            &["GT", "LT", "GTE", "LTE", "EQ", "NE", "BETWEEN", "NOT_BETWEEN"],
        ),
        ("alert_level", &["INFO", "WARNING", "CRITICAL", "FATAL"]),
        (
            "alert_status",
            &["ACTIVE", "ACKNOWLEDGED", "RESOLVED", "SUPPRESSED"],
        ),
        (
            "driver_status",
            &["LOADED", "RUNNING", "STOPPED", "ERROR", "UNLOADED"],
        ),
        ("user_role", &["ADMIN", "OPERATOR", "VIEWER", "MAINTENANCE"]),
        ("user_status", &["ACTIVE", "INACTIVE", "LOCKED", "EXPIRED"]),
    ];
    for (name, values) in expected {
        assert_eq!(
            enums.get(*name).map(Vec::as_slice),
            Some(
                values
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            "enum {name}"
        );
    }

    // Every table with every column of the seed.
    let columns: &[(&str, &[&str])] = &[
        (
            "devices",
            &[
                "id",
                "name",
                "description",
                "protocol",
                "location",
                "endpoint",
                "config",
                "enabled",
                "status",
                "last_seen",
                "created_at",
                "updated_at",
                "created_by",
                "updated_by",
            ],
        ),
        (
            "tags",
            &[
                "id",
                "device_id",
                "name",
                "description",
                "address",
                "data_type",
                "access_type",
                "unit",
                "scaling",
                "tag_offset",
                "min_value",
                "max_value",
                "deadband",
                "scan_rate",
                "enabled",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "alert_rules",
            &[
                "id",
                "name",
                "description",
                "device_id",
                "tag_id",
                "condition_expression",
                "op",
                "threshold_value",
                "threshold_high",
                "threshold_low",
                "level",
                "eval_interval",
                "eval_duration",
                "cooldown_duration",
                "enabled",
                "created_at",
                "updated_at",
                "created_by",
            ],
        ),
        (
            "alert_history",
            &[
                "id",
                "rule_id",
                "device_id",
                "tag_id",
                "fired_at",
                "resolved_at",
                "acknowledged_at",
                "acknowledged_by",
                "triggered_value",
                "threshold_value",
                "level",
                "status",
                "message",
                "details",
                "duration",
            ],
        ),
        (
            "driver_registry",
            &[
                "protocol",
                "name",
                "version",
                "description",
                "file_path",
                "file_hash",
                "api_version",
                "metadata",
                "capabilities",
                "status",
                "loaded_at",
                "error_message",
            ],
        ),
        (
            "driver_configs",
            &[
                "id",
                "name",
                "description",
                "protocol",
                "connection_type",
                "enabled",
                "config",
                "scan_interval",
                "timeout",
                "max_concurrent",
                "batch_size",
                "max_retries",
                "retry_interval",
                "exponential_backoff",
                "max_retry_interval",
                "log_level",
                "enable_request_log",
                "enable_response_log",
                "max_log_size",
                "enable_ssl",
                "verify_certificate",
                "client_cert_path",
                "client_key_path",
                "ca_cert_path",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "users",
            &[
                "id",
                "username",
                "email",
                "password_hash",
                "salt",
                "full_name",
                "role",
                "status",
                "last_login",
                "failed_login_attempts",
                "locked_until",
                "password_expires_at",
                "must_change_password",
                "created_at",
                "updated_at",
                "created_by",
            ],
        ),
        (
            "user_sessions",
            &[
                "id",
                "user_id",
                "token_hash",
                "refresh_token_hash",
                "ip_address",
                "user_agent",
                "created_at",
                "expires_at",
                "last_activity",
                "is_active",
            ],
        ),
        (
            "audit_logs",
            &[
                "id",
                "user_id",
                "action",
                "resource_type",
                "resource_id",
                "details",
                "ip_address",
                "user_agent",
                "success",
                "error_message",
                "created_at",
            ],
        ),
    ];
    for (table, cols) in columns {
        let have = names(
            &db,
            &format!("SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"),
        );
        for c in *cols {
            assert!(have.iter().any(|h| h == c), "{table}.{c} missing; have {have:?}");
        }
    }
    // The seed's defaults that matter to operators.
    let d = db.rows(
        "SELECT table_name::text AS t, column_name::text AS c, column_default::text AS d FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_default IS NOT NULL",
    );
    let default = |t: &str, c: &str| {
        d.iter()
            .find(|r| r["t"] == t && r["c"] == c)
            .map(|r| r["d"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(default("devices", "status").contains("Unknown"));
    assert!(default("alert_rules", "cooldown_duration").contains("00:05:00"));
    assert!(default("driver_configs", "max_retry_interval").contains("30000"));
    assert!(default("users", "role").contains("VIEWER"));

    let constraints = names(&db, "SELECT conname::text FROM pg_constraint");
    for c in [
        "devices_name_not_empty",
        "devices_endpoint_not_empty",
        "tags_device_name_unique",
        "tags_name_not_empty",
        "tags_address_not_empty",
        "tags_scaling_positive",
        "tags_scan_rate_positive",
        "tags_min_max_order",
        "alert_rules_name_not_empty",
        "alert_rules_threshold_check",
        "alert_history_resolved_after_fired",
        "alert_history_ack_after_fired",
        "driver_registry_name_not_empty",
        "driver_registry_version_not_empty",
        "driver_configs_name_not_empty",
        "driver_configs_scan_interval_positive",
        "driver_configs_timeout_positive",
        "driver_configs_max_concurrent_positive",
        "driver_configs_batch_size_positive",
        "users_username_not_empty",
        "users_email_format",
        "users_failed_attempts_non_negative",
        "user_sessions_expires_after_created",
        "audit_logs_action_not_empty",
        // Added by migration 2.
        "devices_gateway_name_unique",
        "alert_rules_gateway_name_unique",
        "driver_configs_gateway_name_unique",
        "driver_registry_pkey",
        "alert_history_event_id_unique",
        "audit_logs_event_id_unique",
    ] {
        assert!(constraints.iter().any(|h| h == c), "constraint {c} missing");
    }
    let indexes = names(
        &db,
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'",
    );
    for i in [
        "idx_devices_protocol",
        "idx_devices_status",
        "idx_devices_enabled",
        "idx_devices_created_at",
        "idx_devices_location",
        "idx_devices_config_gin",
        "idx_tags_device_id",
        "idx_tags_data_type",
        "idx_tags_enabled",
        "idx_tags_address",
        "idx_tags_scan_rate",
        "idx_alert_rules_device_tag",
        "idx_alert_rules_enabled",
        "idx_alert_rules_level",
        "idx_alert_history_rule_id",
        "idx_alert_history_fired_at",
        "idx_alert_history_status",
        "idx_alert_history_level",
        "idx_alert_history_device_time",
        "idx_driver_configs_protocol",
        "idx_driver_configs_enabled",
        "idx_driver_configs_connection_type",
        "idx_users_username",
        "idx_users_email",
        "idx_users_role",
        "idx_users_status",
        "idx_user_sessions_user_id",
        "idx_user_sessions_token",
        "idx_user_sessions_active",
        "idx_audit_logs_user_action",
        "idx_audit_logs_created_at",
        "idx_audit_logs_resource",
    ] {
        assert!(indexes.iter().any(|h| h == i), "index {i} missing");
    }
    let triggers = names(&db, "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal");
    for t in ["devices", "tags", "alert_rules", "driver_configs", "users"] {
        let name = format!("update_{t}_updated_at");
        assert!(triggers.contains(&name), "trigger {name} missing");
    }
    let functions = names(&db, "SELECT proname::text FROM pg_proc");
    for f in [
        "update_updated_at_column",
        "update_device_status",
        "auto_resolve_expired_alerts",
    ] {
        assert!(functions.iter().any(|h| h == f), "function {f} missing");
    }
    let views = names(
        &db,
        "SELECT viewname::text FROM pg_views WHERE schemaname = 'public'",
    );
    for v in ["device_overview", "alert_statistics"] {
        assert!(views.iter().any(|h| h == v), "view {v} missing");
    }

    // Twice is a no-op.
    let out = cli(&["db", "migrate"], &demo.config());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(db.count("SELECT count(*) AS n FROM _sqlx_migrations"), 2);
    let out = cli(&["db", "status"], &demo.config());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches("applied").count(), 2, "{}", text(&out));

    // A newer gateway migrated this database: refused by the CLI and by
    // the running store (not ready, saying why), while collection goes on.
    db.exec(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .unwrap();
    let out = cli(&["db", "migrate"], &demo.config());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("newer than this gateway knows"),
        "{}",
        text(&out)
    );
    let demo2 = DemoDir::with_gateway(&[simulator("press", &["temp"])], &pg_sink(&db.url, ""));
    let mut g = Gateway::spawn(&demo2, &[]);
    g.wait_until("readyz to name the schema", LIMIT, |g| {
        g.get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("newer than this gateway knows"))
    });
    assert_eq!(metric(&g, "gateway_sink_up{sink=\"pg\"}"), Some(0.0));
    assert_eq!(
        db.count("SELECT count(*) AS n FROM devices"),
        0,
        "nothing written to a refused database"
    );
    let published = g.metric_sum("gateway_frames_published_total").unwrap_or(0.0);
    g.wait_until("frames still published", LIMIT, |g| {
        g.metric_sum("gateway_frames_published_total").unwrap_or(0.0) > published + 5.0
    });
}

#[test]
fn the_seeds_constraints_functions_and_views_hold() {
    let db = Db::create();
    let demo = DemoDir::with_gateway(&[simulator("press", &["temp"])], &pg_sink(&db.url, ""));
    let out = cli(&["db", "migrate"], &demo.config());
    assert!(out.status.success(), "{}", text(&out));

    // Each rejection next to the same statement made valid, so the test
    // fails if a constraint rejects everything.
    db.exec("INSERT INTO devices (name, protocol, endpoint) VALUES ('press', 'ModbusTcp', '10.0.0.5:502')")
        .unwrap();
    let e = db
        .exec("INSERT INTO devices (name, protocol, endpoint) VALUES ('   ', 'ModbusTcp', '10.0.0.5:502')")
        .unwrap_err();
    assert!(e.contains("devices_name_not_empty"), "{e}");

    let tag = |name: &str, scaling: &str| {
        db.exec(&format!(
            "INSERT INTO tags (device_id, name, address, data_type, scaling) \
             SELECT id, '{name}', '40001', 'UInt16', {scaling} FROM devices WHERE name = 'press'"
        ))
    };
    for bad in ["0", "-1.5"] {
        let e = tag("bad", bad).unwrap_err();
        assert!(e.contains("tags_scaling_positive"), "{e}");
    }
    assert_eq!(tag("t1", "0.1"), Ok(1));
    assert_eq!(tag("t2", "1"), Ok(1));
    assert_eq!(tag("t3", "1"), Ok(1));

    let rule = |name: &str, thresholds: &str| {
        db.exec(&format!(
            "INSERT INTO alert_rules (name, condition_expression, op, level{}) VALUES ('{name}', 'x', 'BETWEEN', 'WARNING'{})",
            if thresholds.is_empty() { "" } else { ", threshold_low, threshold_high" },
            if thresholds.is_empty() { String::new() } else { format!(", {thresholds}") }
        ))
    };
    let e = rule("no-thresholds", "").unwrap_err();
    assert!(e.contains("alert_rules_threshold_check"), "{e}");
    assert_eq!(rule("band", "10, 20"), Ok(1));
    let e = db
        .exec("INSERT INTO alert_rules (name, condition_expression, op, level) VALUES ('gt', 'x', 'GT', 'INFO')")
        .unwrap_err();
    assert!(
        e.contains("alert_rules_threshold_check"),
        "GT needs threshold_value: {e}"
    );

    // update_device_status: sets status and last_seen; unknown ids raise.
    db.exec(
        "SELECT update_device_status(id, 'Online', '2026-01-01T00:00:00Z') FROM devices WHERE name = 'press'",
    )
    .unwrap();
    let d = &db.rows("SELECT status::text, last_seen::text FROM devices WHERE name = 'press'")[0];
    assert_eq!(d["status"], "Online");
    assert!(d["last_seen"].as_str().unwrap().starts_with("2026-01-01"), "{d}");
    let e = db
        .exec("SELECT update_device_status(gen_random_uuid(), 'Offline')")
        .unwrap_err();
    assert!(e.contains("not found"), "{e}");

    // Two active alerts on a device with three tags: the view counts 3 and
    // 2 (the seed's view reported 6 and 6; fixed by migration 2).
    for age in ["1 hour", "25 hours"] {
        db.exec(&format!(
            "INSERT INTO alert_history (rule_id, device_id, level, message, fired_at) \
             SELECT r.id, d.id, 'WARNING', 'band', NOW() - INTERVAL '{age}' FROM alert_rules r, devices d \
             WHERE r.name = 'band' AND d.name = 'press'"
        ))
        .unwrap();
    }
    let o = &db.rows(
        "SELECT tag_count, enabled_tag_count, active_alert_count FROM device_overview WHERE name = 'press'",
    )[0];
    assert_eq!(
        o,
        &json!({"tag_count": 3, "enabled_tag_count": 3, "active_alert_count": 2})
    );
    let e = db
        .exec("UPDATE alert_history SET resolved_at = fired_at - INTERVAL '1 second'")
        .unwrap_err();
    assert!(e.contains("alert_history_resolved_after_fired"), "{e}");

    // auto_resolve_expired_alerts resolves the one older than 24 h.
    assert_eq!(db.count("SELECT auto_resolve_expired_alerts() AS n"), 1);
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM alert_history WHERE status = 'RESOLVED' AND duration IS NOT NULL"
        ),
        1
    );
    let stats =
        db.rows("SELECT level::text, alert_count, active_count, resolved_count FROM alert_statistics");
    assert_eq!(
        stats,
        vec![json!({"level": "WARNING", "alert_count": 1, "active_count": 1, "resolved_count": 0})]
    );

    // updated_at follows updates (trigger), created_at does not.
    db.exec("UPDATE devices SET description = 'hydraulic press' WHERE name = 'press'")
        .unwrap();
    assert_eq!(
        db.count("SELECT count(*) AS n FROM devices WHERE updated_at > created_at"),
        1
    );
}

fn device_file(demo: &DemoDir, name: &str) -> std::path::PathBuf {
    demo.dir.path().join("devices").join(format!("{name}.toml"))
}

#[test]
fn config_sync_follows_reloads_disables_what_was_removed_and_keeps_history() {
    let db = Db::create();
    let rules = "\n[[alert_rules]]\nname = \"press-hot\"\ndevice = \"press\"\ntag = \"temp\"\nop = \"GT\"\n\
                 threshold_value = 80.0\nlevel = \"WARNING\"\neval_duration = \"10s\"\n";
    let demo = DemoDir::with_gateway(
        &[
            simulator("press", &["temp", "pressure", "old_tag"]),
            simulator("oven", &["t"]),
            simulator("steady", &["a", "b"]),
        ],
        &(pg_sink(&db.url, "") + rules),
    );
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("the configuration in PostgreSQL", LIMIT, |_| {
        db.try_rows("SELECT 1 FROM tags").is_ok_and(|r| r.len() == 6)
    });
    let devices = db.rows(
        "SELECT name, protocol::text, endpoint, location, enabled, gateway_id, config->'options' ? 'seed' AS has_options \
         FROM devices ORDER BY name",
    );
    assert_eq!(
        devices,
        vec![
            json!({"name": "oven", "protocol": "Simulator", "endpoint": "sim://oven", "location": "Hall 1", "enabled": true, "gateway_id": "test-gw", "has_options": true}),
            json!({"name": "press", "protocol": "Simulator", "endpoint": "sim://press", "location": "Hall 1", "enabled": true, "gateway_id": "test-gw", "has_options": true}),
            json!({"name": "steady", "protocol": "Simulator", "endpoint": "sim://steady", "location": "Hall 1", "enabled": true, "gateway_id": "test-gw", "has_options": true}),
        ]
    );
    let rule = &db.rows(
        "SELECT r.name, r.op::text, r.threshold_value, r.level::text, extract(epoch FROM r.eval_duration)::int AS hold, \
           extract(epoch FROM r.cooldown_duration)::int AS cooldown, d.name AS device, t.name AS tag, r.condition_expression \
         FROM alert_rules r JOIN devices d ON d.id = r.device_id JOIN tags t ON t.id = r.tag_id",
    )[0];
    assert_eq!(
        rule,
        &json!({"name": "press-hot", "op": "GT", "threshold_value": 80, "level": "WARNING", "hold": 10,
                "cooldown": 300, "device": "press", "tag": "temp", "condition_expression": "temp GT 80"})
    );
    let registry =
        db.rows("SELECT protocol::text, status::text FROM driver_registry ORDER BY protocol::text");
    assert_eq!(
        registry,
        vec![
            json!({"protocol": "ModbusRtu", "status": "LOADED"}),
            json!({"protocol": "ModbusRtuOverTcp", "status": "LOADED"}),
            json!({"protocol": "ModbusTcp", "status": "LOADED"}),
            json!({"protocol": "Mqtt", "status": "LOADED"}),
            json!({"protocol": "OpcUa", "status": "LOADED"}),
            json!({"protocol": "Simulator", "status": "RUNNING"}),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM driver_configs WHERE enabled AND scan_interval = 100 AND connection_type = 'internal' AND device_id IS NOT NULL"),
        3
    );
    // History that must survive the removal of its device.
    db.exec(
        "INSERT INTO alert_history (rule_id, device_id, level, message) SELECT r.id, d.id, 'INFO', 'old news' \
         FROM alert_rules r, devices d WHERE d.name = 'oven'",
    )
    .unwrap();
    // (devices.updated_at moves with status and last_seen — the seed's
    // trigger — so the untouched rows are checked on tags and driver_configs.)
    let steady_sql = "SELECT (SELECT max(t.updated_at) FROM tags t JOIN devices d ON d.id = t.device_id \
                        WHERE d.name = 'steady')::text AS tags, \
                      (SELECT updated_at FROM driver_configs WHERE name = 'steady')::text AS driver_config";
    let steady_updated = db.rows(steady_sql)[0].clone();

    // press: a tag changed, one removed, one added; oven removed; mill added.
    let (_, press) = simulator("press", &["temp", "pressure", "new_tag"]);
    std::fs::write(
        device_file(&demo, "press"),
        press.replacen("unit = \"C\"", "unit = \"K\"", 1),
    )
    .unwrap();
    std::fs::remove_file(device_file(&demo, "oven")).unwrap();
    let (_, mill) = simulator("mill", &["rpm"]);
    std::fs::write(device_file(&demo, "mill"), &mill).unwrap();
    let (code, body) = g.post_json("/api/v1/reload", &json!({}));
    assert_eq!(code, 200, "{body}");
    let mut changed: Vec<String> = serde_json::from_value(body["changed"].clone()).unwrap();
    changed.sort();
    assert_eq!(changed, ["mill", "oven", "press"]);
    g.wait_until("mill in PostgreSQL", LIMIT, |_| {
        db.count(
            "SELECT count(*) AS n FROM tags t JOIN devices d ON d.id = t.device_id WHERE d.name = 'mill'",
        ) == 1
    });
    let tags = db.rows(
        "SELECT d.name AS device, t.name AS tag, t.unit, t.enabled, d.enabled AS device_enabled \
         FROM tags t JOIN devices d ON d.id = t.device_id ORDER BY 1, 2",
    );
    let expect = |d: &str, t: &str, unit: &str, en: bool, den: bool| json!({"device": d, "tag": t, "unit": unit, "enabled": en, "device_enabled": den});
    assert_eq!(
        tags,
        vec![
            expect("mill", "rpm", "C", true, true),
            expect("oven", "t", "C", false, false),
            expect("press", "new_tag", "C", true, true),
            expect("press", "old_tag", "C", false, true),
            expect("press", "pressure", "C", true, true),
            expect("press", "temp", "K", true, true),
            expect("steady", "a", "C", true, true),
            expect("steady", "b", "C", true, true),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM driver_configs WHERE name = 'oven' AND NOT enabled"),
        1
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM alert_history h JOIN devices d ON d.id = h.device_id WHERE d.name = 'oven'"),
        1,
        "history keeps its device"
    );
    assert_eq!(
        db.rows(steady_sql)[0],
        steady_updated,
        "an unchanged device's rows are not rewritten"
    );

    // A broken file: rejected (422), audited as a failure, nothing changes.
    std::fs::write(device_file(&demo, "mill"), "name = \"mill\"\nprotocol = \n").unwrap();
    let (code, body) = g.post_json("/api/v1/reload", &json!({}));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["errors"][0].as_str().unwrap().contains("mill.toml"),
        "{body}"
    );
    // SIGHUP after the fix: audited with its own actor.
    std::fs::write(device_file(&demo, "mill"), &mill).unwrap();
    g.signal(libc::SIGHUP);
    g.wait_until("three audited reloads", LIMIT, |_| {
        db.count("SELECT count(*) AS n FROM audit_logs WHERE action = 'config.reload'") == 3
    });
    let audit = db.rows(
        "SELECT actor, success, host(ip_address) AS ip, resource_type, gateway_id, error_message IS NOT NULL AS has_error \
         FROM audit_logs WHERE action = 'config.reload' ORDER BY created_at",
    );
    assert_eq!(
        audit,
        vec![
            json!({"actor": "http", "success": true, "ip": "127.0.0.1", "resource_type": "config", "gateway_id": "test-gw", "has_error": false}),
            json!({"actor": "http", "success": false, "ip": "127.0.0.1", "resource_type": "config", "gateway_id": "test-gw", "has_error": true}),
            json!({"actor": "sighup", "success": true, "ip": null, "resource_type": "config", "gateway_id": "test-gw", "has_error": false}),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM devices WHERE name = 'mill' AND enabled"),
        1
    );
}

const ALERTS: usize = 300;

/// Puts alert events on the bus of `wal` (gateway stopped), as the alert
/// engine will: ALERT_FIRED for `alert-0..300`, resolved for the first
/// half, acknowledged for 150..200 and, after their resolution, for
/// 0..20. A consumer `hold` that never acknowledges keeps them all in
/// the WAL for the replay check.
fn inject_alerts(wal: &Path) -> u64 {
    let bus = frame_bus::FrameBus::open(wal, frame_bus::BusConfig::default()).expect("open bus");
    bus.set_cursor("hold", 0).expect("hold cursor");
    let t0: u64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
    let event = |kind: EventKind, id: String, ts: u64, attrs: Vec<(&str, String)>| {
        let e = tests::alert_event(kind, id, ts, 95.5, &attrs);
        (FrameType::Event, e.encode_to_vec())
    };
    let mut frames = Vec::new();
    for i in 0..ALERTS {
        let ts = t0 + i as u64 * 1_000_000_000;
        frames.push(event(
            EventKind::AlertFired,
            format!("alert-{i}"),
            ts,
            vec![("threshold_value", "80".into()), ("zone", "A".into())],
        ));
    }
    for i in 0..ALERTS {
        let ts = t0 + (ALERTS + i) as u64 * 1_000_000_000;
        let id = vec![("alert_id", format!("alert-{i}"))];
        if i < ALERTS / 2 {
            frames.push(event(EventKind::AlertResolved, format!("resolved-{i}"), ts, id));
        } else if i < ALERTS / 2 + 50 {
            let mut a = id;
            a.push(("by", format!("operator-{i}")));
            frames.push(event(EventKind::AlertAcknowledged, format!("ack-{i}"), ts, a));
        }
    }
    for i in 0..20 {
        let ts = t0 + (3 * ALERTS + i) as u64 * 1_000_000_000;
        frames.push(event(
            EventKind::AlertAcknowledged,
            format!("late-ack-{i}"),
            ts,
            vec![("alert_id", format!("alert-{i}")), ("by", "night-shift".into())],
        ));
    }
    // Repeats a producer could send after a crash of its own: they must
    // change nothing (first insert, first resolution, first ack win).
    let late = t0 + 4 * ALERTS as u64 * 1_000_000_000;
    frames.push(event(
        EventKind::AlertFired,
        "alert-7".into(),
        late,
        vec![("threshold_value", "1".into())],
    ));
    frames.push(event(
        EventKind::AlertResolved,
        "resolved-7-again".into(),
        late,
        vec![("alert_id", "alert-7".into())],
    ));
    frames.push(event(
        EventKind::AlertAcknowledged,
        "ack-160-again".into(),
        late,
        vec![("alert_id", "alert-160".into()), ("by", "someone-else".into())],
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = frames.len() as u64;
    rt.block_on(bus.publish_batch(frames)).expect("publish");
    bus.close();
    n
}

fn history_snapshot(db: &Db) -> Vec<Value> {
    db.rows(
        "SELECT event_id, status::text, fired_at::text, resolved_at::text, acknowledged_at::text, acknowledged_by, \
           duration::text, triggered_value, threshold_value, level::text, details \
         FROM alert_history ORDER BY event_id",
    )
}

#[test]
fn status_alert_history_and_audit_through_the_gateway_survive_sigkill_and_replay() {
    let db = Db::create();
    let tmp = tempfile::tempdir().unwrap();
    let server = ModbusServer::tcp(tmp.path());
    let plc = (
        "plc".to_string(),
        format!(
            "name = \"plc\"\nprotocol = \"modbus-tcp\"\nendpoint = \"{}\"\nscan_interval = \"100ms\"\ntimeout = \"300ms\"\n\
             max_retries = 2\nretry_interval = \"200ms\"\nmax_retry_interval = \"400ms\"\n\n\
             [[tags]]\nname = \"setpoint\"\naddress = \"40061\"\ndata_type = \"uint16\"\naccess = \"ReadWrite\"\n",
            server.address
        ),
    );
    let rules = "\n[[alert_rules]]\nname = \"press-hot\"\ndevice = \"press\"\ntag = \"temp\"\nop = \"GT\"\n\
                 threshold_value = 80.0\nlevel = \"CRITICAL\"\n";
    let demo = DemoDir::with_gateway(
        &[simulator("press", &["temp"]), plc],
        &(pg_sink(&db.url, "batch_frames = 1") + rules),
    );
    std::fs::create_dir_all(demo.data()).unwrap();
    let injected = inject_alerts(&demo.wal());

    // SIGKILL while the backlog is being written, one frame per transaction.
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("the first alert rows", LIMIT, |_| {
        db.try_rows("SELECT 1 FROM alert_history")
            .is_ok_and(|r| !r.is_empty())
    });
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit(LIMIT);
    let written_before_kill = db.count("SELECT count(*) AS n FROM alert_history");
    eprintln!("{written_before_kill} of {ALERTS} alert rows written before SIGKILL");

    // The rest in batches of up to 1000 frames: one statement per run of
    // one kind (the bulk path), repeats within a statement included.
    let toml = std::fs::read_to_string(demo.config()).unwrap();
    assert!(toml.contains("batch_frames = 1\n"));
    std::fs::write(
        demo.config(),
        toml.replace("batch_frames = 1\n", "batch_frames = 1000\n"),
    )
    .unwrap();
    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("every alert event stored", LIMIT, |g| {
        metric(g, "gateway_consumer_cursor_seq{consumer=\"pg\"}").is_some_and(|c| c >= injected as f64)
    });
    let counts = &db.rows(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, \
           count(*) FILTER (WHERE status = 'RESOLVED') AS resolved, \
           count(*) FILTER (WHERE status = 'ACKNOWLEDGED') AS acked, \
           count(*) FILTER (WHERE status = 'ACTIVE') AS active, \
           count(*) FILTER (WHERE acknowledged_at IS NOT NULL AND status = 'RESOLVED') AS resolved_then_acked \
         FROM alert_history",
    )[0];
    assert_eq!(
        counts,
        &json!({"n": ALERTS, "ids": ALERTS, "resolved": ALERTS / 2, "acked": 50, "active": ALERTS / 2 - 50, "resolved_then_acked": 20})
    );
    let a = &db.rows(
        "SELECT h.fired_at::text, h.resolved_at::text, h.duration::text, h.triggered_value, h.threshold_value, \
           h.level::text, h.message, h.details, r.name AS rule, d.name AS device, t.name AS tag \
         FROM alert_history h JOIN alert_rules r ON r.id = h.rule_id JOIN devices d ON d.id = h.device_id \
         JOIN tags t ON t.id = h.tag_id WHERE h.event_id = 'alert-1'",
    )[0];
    assert_eq!(
        a,
        &json!({"fired_at": "2026-01-01 00:00:01+00", "resolved_at": "2026-01-01 00:05:01+00", "duration": "00:05:00",
                "triggered_value": 95.5, "threshold_value": 80, "level": "CRITICAL", "message": "temp above 80",
                "details": {"zone": "A", "value": 95.5}, "rule": "press-hot", "device": "press", "tag": "temp"})
    );
    let seven = &db
        .rows("SELECT resolved_at::text, threshold_value FROM alert_history WHERE event_id = 'alert-7'")[0];
    assert_eq!(
        seven,
        &json!({"resolved_at": "2026-01-01 00:05:07+00", "threshold_value": 80})
    );
    let ack = &db.rows("SELECT status::text, acknowledged_by, acknowledged_at::text FROM alert_history WHERE event_id = 'alert-160'")[0];
    assert_eq!(
        ack,
        &json!({"status": "ACKNOWLEDGED", "acknowledged_by": "operator-160", "acknowledged_at": "2026-01-01 00:07:40+00"})
    );

    assert!(
        !g.log_text().contains("op by op"),
        "the bulk statements were rejected:\n{}",
        g.log_text()
    );

    // Device status from the real driver: Online, Offline when the PLC
    // stops answering, Online again; last_seen only moves while it answers.
    let status =
        |db: &Db| db.rows("SELECT status::text FROM devices WHERE name = 'plc'")[0]["status"].clone();
    g.wait_until("plc Online", LIMIT, |_| status(&db) == "Online");
    server.set_delay(1.0);
    g.wait_until("plc Offline", LIMIT, |_| status(&db) == "Offline");
    let seen_offline = db.rows("SELECT last_seen::text FROM devices WHERE name = 'plc'")[0].clone();
    assert!(seen_offline["last_seen"].is_string(), "{seen_offline}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        db.rows("SELECT last_seen::text FROM devices WHERE name = 'plc'")[0],
        seen_offline
    );
    server.set_delay(0.0);
    g.wait_until("plc Online again", LIMIT, |_| status(&db) == "Online");

    // Tag writes are audited with their outcome.
    let (code, body) = g.post_json("/api/v1/devices/plc/tags/setpoint/write", &json!({"value": 7}));
    assert_eq!(code, 200, "{body}");
    let (code, body) = g.post_json("/api/v1/devices/press/tags/temp/write", &json!({"value": 1.0}));
    assert_eq!(code, 409, "the simulator refuses writes: {body}");
    g.wait_until("two audited writes", LIMIT, |_| {
        db.count("SELECT count(*) AS n FROM audit_logs WHERE action = 'tag.write'") == 2
    });
    let writes = db.rows(
        "SELECT a.resource_name, a.success, host(a.ip_address) AS ip, a.actor, a.details->>'status' AS status, \
           a.error_message IS NOT NULL AS has_error, t.name AS tag \
         FROM audit_logs a LEFT JOIN tags t ON t.id = a.resource_id WHERE a.action = 'tag.write' ORDER BY a.created_at",
    );
    assert_eq!(
        writes,
        vec![
            json!({"resource_name": "plc/setpoint", "success": true, "ip": "127.0.0.1", "actor": "http", "status": "ok", "has_error": false, "tag": "setpoint"}),
            json!({"resource_name": "press/temp", "success": false, "ip": "127.0.0.1", "actor": "http", "status": "unsupported", "has_error": true, "tag": "temp"}),
        ]
    );

    // Replay everything the WAL holds: nothing changes.
    let before = history_snapshot(&db);
    let audits = db.count("SELECT count(*) AS n FROM audit_logs");
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(LIMIT).success());
    let out = common::wal(&demo.wal(), &["set-cursor", "pg", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut g = Gateway::start(&demo, &[]);
    let head = metric(&g, "gateway_wal_head_seq").unwrap();
    g.wait_until("the replay to finish", LIMIT, |g| {
        metric(g, "gateway_consumer_cursor_seq{consumer=\"pg\"}").is_some_and(|c| c >= head)
    });
    assert_eq!(
        history_snapshot(&db),
        before,
        "a replay must not change alert history"
    );
    assert_eq!(
        db.count("SELECT count(*) AS n FROM audit_logs"),
        audits,
        "a replay must not duplicate audit rows"
    );
    assert_eq!(
        metric(&g, "gateway_sink_dead_lettered_total{sink=\"pg\"}"),
        Some(0.0)
    );
    assert!(!g.log_text().contains("op by op"), "{}", g.log_text());
}

#[test]
fn a_database_outage_is_buffered_in_the_wal_and_caught_up_in_order() {
    let mut cluster = Cluster::init();
    cluster.start();
    let db = Db::create_on(&cluster.admin_url());
    let demo = DemoDir::with_gateway(&[simulator("press", &["temp"])], &pg_sink(&db.url, ""));
    let mut g = Gateway::start(&demo, &[]);
    let last_seen = |db: &Db| -> Option<f64> {
        db.try_rows("SELECT extract(epoch FROM last_seen)::float8 AS s FROM devices WHERE name = 'press'")
            .ok()?
            .first()?["s"]
            .as_f64()
    };
    g.wait_until("press seen", LIMIT, |_| last_seen(&db).is_some());
    g.wait_until("sink up", LIMIT, |g| {
        metric(g, "gateway_sink_up{sink=\"pg\"}") == Some(1.0)
    });

    // Outage while running.
    cluster.stop();
    let stopped_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut expected = Vec::new();
    let (code, body) = g.post_json("/api/v1/reload", &json!({}));
    assert_eq!(code, 200, "{body}");
    expected.push("config.reload".to_string());
    for _ in 0..3 {
        let (code, body) = g.post_json("/api/v1/devices/press/tags/temp/write", &json!({"value": 1.0}));
        assert_eq!(code, 409, "{body}");
        expected.push(body["command_id"].as_str().unwrap().to_string());
    }
    let (code, _) = g.post_json("/api/v1/reload", &json!({}));
    assert_eq!(code, 200);
    expected.push("config.reload".to_string());
    g.wait_until("readyz to report the store", LIMIT, |g| {
        g.get("/readyz")
            .is_some_and(|(c, b)| c == 503 && b.contains("sink pg"))
    });
    assert_eq!(metric(&g, "gateway_sink_up{sink=\"pg\"}"), Some(0.0));
    let published = g.metric_sum("gateway_frames_published_total").unwrap();
    g.wait_until("collection to go on", LIMIT, |g| {
        g.metric_sum("gateway_frames_published_total").unwrap() > published + 10.0
    });
    assert!(metric(&g, "gateway_consumer_lag_frames{consumer=\"pg\"}").unwrap() > 0.0);

    cluster.start();
    g.wait_until("ready again", LIMIT, |g| {
        g.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    g.wait_until("the audit backlog", LIMIT, |_| {
        db.count("SELECT count(*) AS n FROM audit_logs") == expected.len() as i64
    });
    let got: Vec<String> = db
        .rows("SELECT action, details->>'command_id' AS cmd FROM audit_logs ORDER BY created_at, id")
        .into_iter()
        .map(|r| {
            r["cmd"]
                .as_str()
                .map_or_else(|| r["action"].as_str().unwrap().to_string(), str::to_string)
        })
        .collect();
    assert_eq!(got, expected, "rows arrive in the order the actions happened");
    g.wait_until("last_seen to move past the outage", LIMIT, |_| {
        last_seen(&db).is_some_and(|s| s > stopped_at)
    });
    assert!(g.metric_sum("gateway_sink_write_errors_total").unwrap() > 0.0);

    // Down at start: the gateway starts, collects, reports the store, and
    // catches up when the database appears.
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(LIMIT).success());
    cluster.stop();
    let mut g = Gateway::spawn(&demo, &[]);
    g.wait_until("readyz to report the store", LIMIT, |g| {
        g.get("/readyz")
            .is_some_and(|(c, b)| c == 503 && b.contains("sink pg"))
    });
    let (code, _) = g.post_json("/api/v1/reload", &json!({}));
    assert_eq!(code, 200);
    let published = g.metric_sum("gateway_frames_published_total").unwrap();
    g.wait_until("collection without the database", LIMIT, |g| {
        g.metric_sum("gateway_frames_published_total").unwrap() > published + 10.0
    });
    cluster.start();
    g.wait_until("ready", LIMIT, |g| {
        g.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    g.wait_until("the reload made while down", LIMIT, |_| {
        db.count("SELECT count(*) AS n FROM audit_logs") == expected.len() as i64 + 1
    });
}

#[test]
fn tls_sslmode_and_root_certificate_are_honoured() {
    let mut cluster = Cluster::init();
    let ca = cluster.require_tls();
    cluster.start();
    let db = Db::create_on(&cluster.admin_url());
    // The server accepts TLS only: `sslmode = "disable"` is refused, the
    // store says so and keeps the frames.
    let plain = DemoDir::with_gateway(
        &[simulator("press", &["temp"])],
        &pg_sink(&db.url, "sslmode = \"disable\""),
    );
    let mut g = Gateway::spawn(&plain, &[]);
    g.wait_until("readyz to report the refusal", LIMIT, |g| {
        g.get("/readyz")
            .is_some_and(|(c, b)| c == 503 && b.contains("no encryption"))
    });
    g.wait_until("the cause", LIMIT, |g| {
        metric(
            g,
            "gateway_sink_write_errors_total{sink=\"pg\",cause=\"unauthorized\"}",
        )
        .is_some_and(|n| n >= 1.0)
    });
    drop(g);
    // verify-full against the test's CA: connected over TLS, rows written.
    let tls = DemoDir::with_gateway(
        &[simulator("press", &["temp"])],
        &pg_sink(
            &db.url,
            &format!("sslmode = \"verify-full\"\nssl_root_cert = \"{}\"", ca.display()),
        ),
    );
    let mut g = Gateway::start(&tls, &[]);
    g.wait_until("press in the database", LIMIT, |_| {
        db.try_rows("SELECT 1 FROM devices WHERE name = 'press' AND last_seen IS NOT NULL")
            .is_ok_and(|r| r.len() == 1)
    });
    let ssl = db.rows(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'gateway_rust'",
    );
    assert!(!ssl.is_empty() && ssl.iter().all(|r| r["ssl"] == true), "{ssl:?}");
}

#[test]
fn a_row_the_database_rejects_is_skipped_alone_and_counted() {
    let db = Db::create();
    let demo = DemoDir::with_gateway(&[simulator("press", &["temp"])], &pg_sink(&db.url, ""));
    std::fs::create_dir_all(demo.data()).unwrap();
    // Three audit events; PostgreSQL text cannot hold a NUL byte, so the
    // second is refused for its data (SQLSTATE 22021), not for availability.
    let bus = frame_bus::FrameBus::open(demo.wal(), frame_bus::BusConfig::default()).unwrap();
    let frames: Vec<(FrameType, Vec<u8>)> = ["first", "bad\0action", "third"]
        .iter()
        .enumerate()
        .map(|(i, action)| {
            let e = proto::EventFrame {
                event_id: format!("audit-{i}"),
                kind: EventKind::Audit as i32,
                status: "ok".into(),
                event_ts_ns: 1_767_225_600_000_000_000 + i as u64,
                attributes: [("action".to_string(), action.to_string())].into_iter().collect(),
                ..proto::EventFrame::default()
            };
            (FrameType::Event, e.encode_to_vec())
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bus.publish_batch(frames)).unwrap();
    bus.close();
    drop(bus);

    let mut g = Gateway::start(&demo, &[]);
    g.wait_until("the three frames acknowledged", LIMIT, |g| {
        metric(g, "gateway_consumer_cursor_seq{consumer=\"pg\"}").is_some_and(|c| c >= 3.0)
    });
    assert_eq!(
        names(&db, "SELECT action::text FROM audit_logs ORDER BY created_at"),
        ["first", "third"]
    );
    assert_eq!(
        metric(&g, "gateway_sink_dead_lettered_total{sink=\"pg\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &g,
            "gateway_sink_write_errors_total{sink=\"pg\",cause=\"rejected\"}"
        ),
        Some(1.0)
    );
    let log = g.log_text();
    assert!(log.contains("op by op"), "{log}");
    assert!(log.contains("rejected a row") && log.contains("seq=2"), "{log}");
    assert_eq!(
        metric(&g, "gateway_sink_up{sink=\"pg\"}"),
        Some(1.0),
        "a rejected row is not an outage"
    );
}
