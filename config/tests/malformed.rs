//! Malformed configurations: every case builds a small valid tree
//! (`gateway.toml` + `devices/dev-a.toml` + `devices/dev-b.toml`), breaks
//! it, and checks that the error names the file, the exact line and
//! column, the key path and what is wrong.
//!
//! Line numbers are written by hand: the base files below carry their line
//! number in a comment on every line, and edits replace one line by one
//! line (or append lines after it), so the numbers stay easy to check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, ConfigError, ConfigErrors, DataType, SinkKind};

// ---------------------------------------------------------------- fixtures

const GATEWAY: &str = concat!(
    "gateway_id = \"test-gw\"\n",    // 1
    "data_dir = \"data\"\n",         // 2
    "\n",                            // 3
    "[wal]\n",                       // 4
    "max_age = \"1h\"\n",            // 5
    "max_bytes = \"1GiB\"\n",        // 6
    "\n",                            // 7
    "[http]\n",                      // 8
    "listen = \"127.0.0.1:9100\"\n", // 9
    "\n",                            // 10
    "[sinks.archive]\n",             // 11
    "type = \"file\"\n",             // 12
    "path = \"archive.jsonl\"\n",    // 13
    "\n",                            // 14
    "[[alert_rules]]\n",             // 15
    "name = \"hot\"\n",              // 16
    "device = \"dev-b\"\n",          // 17
    "tag = \"level\"\n",             // 18
    "op = \"GT\"\n",                 // 19
    "threshold_value = 90.0\n",      // 20
    "level = \"WARNING\"\n",         // 21
);

const DEV_A: &str = concat!(
    "name = \"dev-a\"\n",           // 1
    "protocol = \"simulator\"\n",   // 2
    "endpoint = \"sim://dev-a\"\n", // 3
    "scan_interval = \"1s\"\n",     // 4
    "\n",                           // 5
    "[[tags]]\n",                   // 6
    "name = \"temp\"\n",            // 7
    "address = \"sine\"\n",         // 8
    "data_type = \"Double\"\n",     // 9
    "scaling = 1.0\n",              // 10
    "min_value = 0.0\n",            // 11
    "max_value = 100.0\n",          // 12
    "\n",                           // 13
    "[[tags]]\n",                   // 14
    "name = \"count\"\n",           // 15
    "address = \"counter\"\n",      // 16
    "data_type = \"UInt32\"\n",     // 17
    "scan_rate = \"500ms\"\n",      // 18
);

const DEV_B: &str = concat!(
    "name = \"dev-b\"\n",           // 1
    "protocol = \"simulator\"\n",   // 2
    "endpoint = \"sim://dev-b\"\n", // 3
    "error_rate = 0.1\n",           // 4
    "\n",                           // 5
    "[[tags]]\n",                   // 6
    "name = \"level\"\n",           // 7
    "address = \"random_walk\"\n",  // 8
    "data_type = \"Float\"\n",      // 9
    "\n",                           // 10
    "[[tags]]\n",                   // 11
    "name = \"mode\"\n",            // 12
    "address = \"constant\"\n",     // 13
    "data_type = \"String\"\n",     // 14
    "value = \"AUTO\"\n",           // 15
    "\n",                           // 16
    "[[tags]]\n",                   // 17
    "name = \"running\"\n",         // 18
    "address = \"square\"\n",       // 19
    "data_type = \"Boolean\"\n",    // 20
    "duty = 0.5\n",                 // 21
);

const GW: &str = "gateway.toml";
const A: &str = "dev-a.toml";
const B: &str = "dev-b.toml";

// ---------------------------------------------------------------- helpers

/// A temporary configuration tree.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// An empty tree with an empty `devices/` directory.
    fn empty() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("devices")).expect("mkdir devices");
        Tree { dir }
    }

    /// The valid base tree.
    fn base() -> Tree {
        Tree::with(GATEWAY, DEV_A, DEV_B)
    }

    /// The base tree with these three files instead.
    fn with(gateway: &str, dev_a: &str, dev_b: &str) -> Tree {
        let t = Tree::empty();
        t.write(GW, gateway);
        t.write("devices/dev-a.toml", dev_a);
        t.write("devices/dev-b.toml", dev_b);
        t
    }

    fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join(rel)).unwrap();
    }

    fn gateway(&self) -> PathBuf {
        self.dir.path().join(GW)
    }

    fn load_env(&self, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        load_at(&self.gateway(), vars)
    }

    fn load(&self) -> Result<Config, ConfigErrors> {
        self.load_env(&[])
    }

    #[track_caller]
    fn ok(&self) -> Config {
        match self.load() {
            Ok(c) => c,
            Err(e) => panic!("expected the configuration to load, got:\n{e}"),
        }
    }

    #[track_caller]
    fn errors(&self) -> ConfigErrors {
        errors_of(self.load())
    }
}

/// `load_with_env` with a map-backed environment (the process env is never touched).
fn load_at(path: &Path, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    config::load_with_env(path, &|name| env.get(name).cloned())
}

#[track_caller]
fn errors_of(r: Result<Config, ConfigErrors>) -> ConfigErrors {
    match r {
        Ok(c) => panic!("expected configuration errors, but it loaded: {c:#?}"),
        Err(e) => {
            assert!(!e.is_empty(), "Err with no errors");
            e
        }
    }
}

/// `text` with the single occurrence of `old` replaced by `new`.
#[track_caller]
fn edit(text: &str, old: &str, new: &str) -> String {
    assert_eq!(
        text.matches(old).count(),
        1,
        "{old:?} must occur exactly once in the fixture"
    );
    text.replacen(old, new, 1)
}

/// Finds the error with `key` in a file ending with `file` at `line`, and
/// checks its column, message fragment and source line.
#[track_caller]
fn expect<'a>(
    errs: &'a ConfigErrors,
    file: &str,
    key: &str,
    (line, column): (usize, usize),
    fragment: &str,
) -> &'a ConfigError {
    let candidates: Vec<&ConfigError> = errs
        .iter()
        .filter(|e| e.key == key && e.file.ends_with(file))
        .collect();
    assert!(
        !candidates.is_empty(),
        "no error with key `{key}` in {file}; got:\n{errs}"
    );
    let Some(e) = candidates.iter().find(|e| e.line == Some(line)) else {
        panic!("no error with key `{key}` in {file} at line {line}; got:\n{errs}");
    };
    assert_eq!(e.column, Some(column), "column of:\n{e}");
    assert!(
        e.message.contains(fragment),
        "message should contain {fragment:?}:\n{e}"
    );
    let src = e
        .source_line
        .as_deref()
        .unwrap_or_else(|| panic!("no source line in:\n{e}"));
    assert!(!src.contains('\n'), "source line is one line: {src:?}");
    e
}

/// Finds a whole-file error (no line) for a path ending with `file`.
#[track_caller]
fn expect_file<'a>(errs: &'a ConfigErrors, file: &str, fragment: &str) -> &'a ConfigError {
    let Some(e) = errs
        .iter()
        .find(|e| e.file.ends_with(file) && e.message.contains(fragment))
    else {
        panic!("no error for {file} containing {fragment:?}; got:\n{errs}");
    };
    assert_eq!((e.line, e.column), (None, None), "{e}");
    assert_eq!(e.key, "", "{e}");
    e
}

#[track_caller]
fn count(errs: &ConfigErrors, n: usize) {
    assert_eq!(errs.len(), n, "expected {n} error(s), got:\n{errs}");
}

// ---------------------------------------------------------------- positive cases

#[test]
fn base_tree_loads() {
    let c = Tree::base().ok();
    assert_eq!(c.gateway.gateway_id, "test-gw");
    let names: Vec<&str> = c.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["dev-a", "dev-b"]);
    assert_eq!(c.device("dev-a").unwrap().tags.len(), 2);
    assert_eq!(c.device("dev-b").unwrap().tags.len(), 3);
    assert_eq!(c.gateway.wal.max_bytes, Some(1 << 30));
    assert_eq!(c.gateway.wal.max_age, Duration::from_secs(3600));
    assert_eq!(c.gateway.alert_rules.len(), 1);
    assert!(matches!(c.gateway.sinks["archive"].kind, SinkKind::File(_)));
}

#[test]
fn demo_config_loads_with_defaults() {
    let path = manifest_dir().join("../deploy/demo/gateway.toml");
    let c = match config::load_with_env(&path, &|_| None) {
        Ok(c) => c,
        Err(e) => panic!("demo config must load:\n{e}"),
    };
    assert_eq!(c.gateway.gateway_id, "demo-gw");
    let tags: Vec<(&str, usize)> = c
        .devices
        .iter()
        .map(|d| (d.name.as_str(), d.tags.len()))
        .collect();
    assert_eq!(tags, [("boiler-1", 4), ("conveyor-1", 3), ("press-7", 2)]);
    // `${GATEWAY_HTTP_LISTEN:-127.0.0.1:9100}` with the variable unset.
    assert_eq!(c.gateway.http.listen.to_string(), "127.0.0.1:9100");
    assert!(
        c.gateway.data_dir.ends_with("target/demo-data"),
        "{:?}",
        c.gateway.data_dir
    );
    assert_eq!(c.gateway.alert_rules.len(), 3);
    assert_eq!(
        c.gateway.alert_rules[0].condition_expression.as_deref(),
        Some("burner_on and water_temp > 90")
    );
    assert!(matches!(c.gateway.sinks["alert-hook"].kind, SinkKind::Webhook(_)));
    assert_eq!(c.gateway.alerts.stale_after, Duration::from_secs(300));
    let boiler = c.device("boiler-1").unwrap();
    assert_eq!(boiler.tag("water_temp").unwrap().data_type, DataType::Double);
}

#[test]
fn env_default_applies_and_env_value_wins() {
    let dev = edit(DEV_A, "\"sim://dev-a\"", "\"${SIM_EP:-sim://fallback}\"");
    let gw = edit(GATEWAY, "\"127.0.0.1:9100\"", "\"${LISTEN:-127.0.0.1:9200}\"");
    let t = Tree::with(&gw, &dev, DEV_B);

    let c = t.ok();
    assert_eq!(c.device("dev-a").unwrap().endpoint, "sim://fallback");
    assert_eq!(c.gateway.http.listen.to_string(), "127.0.0.1:9200");

    let c = t
        .load_env(&[("SIM_EP", "sim://from-env"), ("LISTEN", "0.0.0.0:9300")])
        .expect("loads with env");
    assert_eq!(c.device("dev-a").unwrap().endpoint, "sim://from-env");
    assert_eq!(c.gateway.http.listen.to_string(), "0.0.0.0:9300");
}

#[test]
fn error_display_has_position_key_and_caret() {
    let t = Tree::with(GATEWAY, &edit(DEV_A, "scaling = 1.0", "scaling = 0.0"), DEV_B);
    let errs = t.errors();
    let e = expect(&errs, A, "tags[0].scaling", (10, 11), "must be > 0");
    let shown = e.to_string();
    let file = e.file.display().to_string();
    assert!(
        shown.starts_with(&format!("{file}:10:11: `tags[0].scaling`: must be > 0")),
        "{shown}"
    );
    assert!(
        shown.ends_with("\n    | scaling = 0.0\n    |           ^"),
        "{shown:?}"
    );
    assert!(errs.to_string().ends_with("\n1 configuration error"), "{errs}");
}

// ---------------------------------------------------------------- syntax and reading

#[test]
fn toml_syntax_error() {
    let t = Tree::with(
        GATEWAY,
        DEV_A,
        &edit(DEV_B, "data_type = \"Float\"", "data_type \"Float\""),
    );
    let errs = t.errors();
    expect(&errs, B, "", (9, 11), "TOML syntax error");
}

#[test]
fn toml_syntax_error_in_gateway() {
    let errs = Tree::with(&edit(GATEWAY, "[wal]", "[wal"), DEV_A, DEV_B).errors();
    expect(&errs, GW, "", (4, 5), "TOML syntax error");
}

#[test]
fn two_syntax_errors_in_one_file_are_both_reported() {
    let dev = edit(DEV_B, "error_rate = 0.1", "error_rate = 0.1.2");
    let dev = edit(&dev, "data_type = \"Boolean\"", "data_type \"Boolean\"");
    let t = Tree::with(GATEWAY, DEV_A, &dev);
    let errs = t.errors();
    // `0.1.2`: the float is fine up to the second `.`, which is where the error points.
    expect(&errs, B, "", (4, 17), "TOML syntax error");
    expect(&errs, B, "", (20, 11), "TOML syntax error");
}

#[test]
fn gateway_file_that_does_not_exist() {
    let t = Tree::base();
    let errs = errors_of(load_at(&t.dir.path().join("nope.toml"), &[]));
    expect_file(&errs, "nope.toml", "cannot read file");
    count(&errs, 1);
}

#[test]
fn device_file_with_invalid_utf8() {
    let t = Tree::base();
    t.write("devices/bad.toml", b"name = \"bad\"\nendpoint = \"sim://\xff\"\n");
    let errs = t.errors();
    expect(&errs, "bad.toml", "", (2, 19), "not valid UTF-8");
    count(&errs, 1);
}

#[test]
fn empty_devices_directory() {
    let t = Tree::base();
    t.remove("devices/dev-a.toml");
    t.remove("devices/dev-b.toml");
    t.write("devices/README.md", "not a device");
    let errs = t.errors();
    expect_file(&errs, "devices", "no device files");
}

#[test]
fn missing_devices_directory() {
    let gw = edit(
        GATEWAY,
        "data_dir = \"data\"\n",
        "data_dir = \"data\"\ndevices_dir = \"nowhere\"\n",
    );
    let t = Tree::with(&gw, DEV_A, DEV_B);
    let errs = t.errors();
    expect_file(&errs, "nowhere", "cannot read devices directory");
}

// ---------------------------------------------------------------- types and units

#[test]
fn string_for_a_float() {
    let t = Tree::with(GATEWAY, &edit(DEV_A, "scaling = 1.0", "scaling = \"1.0\""), DEV_B);
    let errs = t.errors();
    expect(&errs, A, "tags[0].scaling", (10, 11), "invalid type: string");
    count(&errs, 1);
}

#[test]
fn integer_for_a_bool_in_a_device() {
    let t = Tree::with(
        GATEWAY,
        &edit(DEV_A, "scan_interval = \"1s\"", "enabled = 1"),
        DEV_B,
    );
    let errs = t.errors();
    expect(&errs, A, "enabled", (4, 11), "invalid type: integer");
    count(&errs, 1);
}

#[test]
fn integer_for_a_bool_in_a_sink() {
    let gw = edit(
        GATEWAY,
        "path = \"archive.jsonl\"\n",
        "path = \"archive.jsonl\"\nenabled = 1\n",
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "sinks.archive.enabled",
        (14, 11),
        "invalid type: integer",
    );
    count(&errs, 1);
}

#[test]
fn bad_duration() {
    let t = Tree::with(
        GATEWAY,
        &edit(DEV_A, "scan_interval = \"1s\"", "scan_interval = \"fast\""),
        DEV_B,
    );
    let errs = t.errors();
    expect(&errs, A, "scan_interval", (4, 17), "invalid duration \"fast\"");
    count(&errs, 1);
}

#[test]
fn bad_duration_in_gateway() {
    let errs = Tree::with(&edit(GATEWAY, "\"1h\"", "\"fast\""), DEV_A, DEV_B).errors();
    expect(&errs, GW, "wal.max_age", (5, 11), "invalid duration \"fast\"");
    count(&errs, 1);
}

#[test]
fn bad_size() {
    let errs = Tree::with(&edit(GATEWAY, "\"1GiB\"", "\"lots\""), DEV_A, DEV_B).errors();
    expect(&errs, GW, "wal.max_bytes", (6, 13), "invalid size \"lots\"");
    count(&errs, 1);
}

#[test]
fn zero_wal_size() {
    let errs = Tree::with(&edit(GATEWAY, "\"1GiB\"", "0"), DEV_A, DEV_B).errors();
    expect(&errs, GW, "wal.max_bytes", (6, 13), "must be > 0");
    count(&errs, 1);
}

#[test]
fn negative_duration_integer() {
    let t = Tree::with(
        GATEWAY,
        &edit(DEV_A, "scan_rate = \"500ms\"", "scan_rate = -5"),
        DEV_B,
    );
    let errs = t.errors();
    expect(
        &errs,
        A,
        "tags[1].scan_rate",
        (18, 13),
        "cannot be negative, got -5",
    );
    count(&errs, 1);
}

#[test]
fn http_listen_not_an_address() {
    let errs = Tree::with(
        &edit(GATEWAY, "\"127.0.0.1:9100\"", "\"localhost\""),
        DEV_A,
        DEV_B,
    )
    .errors();
    expect(&errs, GW, "http.listen", (9, 10), "socket address");
    count(&errs, 1);
}

#[test]
fn supervisor_max_backoff_below_first_backoff() {
    let gw = GATEWAY.to_string()
        + concat!(
            "\n",                             // 22
            "[supervisor]\n",                 // 23
            "restart_backoff = \"5s\"\n",     // 24
            "max_restart_backoff = \"2s\"\n", // 25
        );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "supervisor.max_restart_backoff",
        (25, 23),
        "must be >= supervisor.restart_backoff",
    );
    count(&errs, 1);
}

// ---------------------------------------------------------------- unknown keys

#[test]
fn unknown_key_at_device_level() {
    let t = Tree::with(
        GATEWAY,
        &edit(DEV_A, "scan_interval = ", "scan_intervall = "),
        DEV_B,
    );
    let errs = t.errors();
    let e = expect(&errs, A, "scan_intervall", (4, 1), "unknown key `scan_intervall`");
    assert!(e.message.contains("did you mean `scan_interval`?"), "{e}");
    // The list names both the common keys and the simulator's.
    assert!(
        e.message.contains("endpoint") && e.message.contains("error_rate"),
        "{e}"
    );
    count(&errs, 1);
}

#[test]
fn unknown_key_in_a_tag_with_hint() {
    let t = Tree::with(GATEWAY, &edit(DEV_A, "scaling = 1.0", "scalng = 1.0"), DEV_B);
    let errs = t.errors();
    let e = expect(&errs, A, "tags[0].scalng", (10, 1), "unknown key `scalng`");
    assert!(e.message.contains("(did you mean `scaling`?)"), "{e}");
    count(&errs, 1);
}

#[test]
fn unknown_key_in_wal_section() {
    let errs = Tree::with(&edit(GATEWAY, "max_bytes =", "max_byte ="), DEV_A, DEV_B).errors();
    let e = expect(&errs, GW, "wal.max_byte", (6, 1), "unknown key `max_byte`");
    assert!(e.message.contains("did you mean `max_bytes`?"), "{e}");
    count(&errs, 1);
}

#[test]
fn unknown_key_in_http_section() {
    let gw = edit(
        GATEWAY,
        "listen = \"127.0.0.1:9100\"\n",
        "listen = \"127.0.0.1:9100\"\nport = 9100\n",
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = expect(&errs, GW, "http.port", (10, 1), "unknown key `port`");
    assert!(e.message.contains("expected one of: listen, token"), "{e}");
    count(&errs, 1);
}

#[test]
fn misspelt_top_level_table_suggests_sinks() {
    let gw = edit(GATEWAY, "[sinks.archive]\n", "[sink.archive]\n");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = expect(&errs, GW, "sink", (11, 2), "unknown key `sink`");
    assert!(e.message.contains("did you mean `sinks`?"), "{e}");
    assert!(
        e.message.contains("alert_rules") && e.message.contains("wal"),
        "{e}"
    );
}

// ---------------------------------------------------------------- devices

#[test]
fn duplicate_device_name_names_the_second_file() {
    let t = Tree::base();
    // dev-c.toml sorts after dev-a.toml and declares the same name.
    t.write("devices/dev-c.toml", DEV_A);
    let errs = t.errors();
    let e = expect(
        &errs,
        "dev-c.toml",
        "name",
        (1, 8),
        "duplicate device name \"dev-a\"",
    );
    assert!(e.message.contains("dev-a.toml"), "{e}");
    assert!(
        errs.iter().all(|e| !e.file.ends_with(A)),
        "the first definition is not an error:\n{errs}"
    );
    count(&errs, 1);
}

#[test]
fn blank_device_name() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"dev-a\"", "\"  \""), DEV_B).errors();
    expect(&errs, A, "name", (1, 8), "must not be empty or blank");
    count(&errs, 1);
}

#[test]
fn empty_endpoint() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"sim://dev-a\"", "\"\""), DEV_B).errors();
    expect(&errs, A, "endpoint", (3, 12), "must not be empty");
    count(&errs, 1);
}

#[test]
fn unknown_protocol() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"simulator\"", "\"modbus\""), DEV_B).errors();
    let e = expect(&errs, A, "protocol", (2, 12), "unknown variant `modbus`");
    assert!(e.message.contains("simulator"), "{e}");
    count(&errs, 1);
}

#[test]
fn error_rate_above_one() {
    let t = Tree::with(
        GATEWAY,
        DEV_A,
        &edit(DEV_B, "error_rate = 0.1", "error_rate = 1.5"),
    );
    let errs = t.errors();
    expect(
        &errs,
        B,
        "error_rate",
        (4, 14),
        "must be between 0 and 1, got 1.5",
    );
    count(&errs, 1);
}

#[test]
fn device_without_tags() {
    let dev = DEV_A.lines().take(4).collect::<Vec<_>>().join("\n") + "\n";
    let errs = Tree::with(GATEWAY, &dev, DEV_B).errors();
    expect(&errs, A, "tags", (1, 1), "at least one [[tags]] entry");
    count(&errs, 1);
}

#[test]
fn tags_that_are_not_an_array_of_tables() {
    let dev = edit(DEV_A, "scan_interval = \"1s\"", "tags = 5");
    let dev = dev.split("\n\n[[tags]]").next().unwrap().to_string() + "\n";
    let errs = Tree::with(GATEWAY, &dev, DEV_B).errors();
    expect(&errs, A, "tags", (4, 8), "must be an array of tables");
}

// ---------------------------------------------------------------- tags

#[test]
fn duplicate_tag_name() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"count\"", "\"temp\""), DEV_B).errors();
    let e = expect(&errs, A, "tags[1].name", (15, 8), "duplicate tag name \"temp\"");
    assert!(e.message.contains("tags[0]"), "{e}");
    count(&errs, 1);
}

#[test]
fn zero_scaling() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "scaling = 1.0", "scaling = 0.0"), DEV_B).errors();
    expect(&errs, A, "tags[0].scaling", (10, 11), "must be > 0");
    count(&errs, 1);
}

#[test]
fn negative_scaling() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "scaling = 1.0", "scaling = -2.5"), DEV_B).errors();
    expect(&errs, A, "tags[0].scaling", (10, 11), "got -2.5");
    count(&errs, 1);
}

#[test]
fn min_value_above_max_value() {
    let errs = Tree::with(
        GATEWAY,
        &edit(DEV_A, "min_value = 0.0", "min_value = 150.0"),
        DEV_B,
    )
    .errors();
    expect(
        &errs,
        A,
        "tags[0].min_value",
        (11, 13),
        "min_value 150 is greater than max_value 100",
    );
    count(&errs, 1);
}

#[test]
fn zero_scan_rate() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"500ms\"", "0"), DEV_B).errors();
    expect(&errs, A, "tags[1].scan_rate", (18, 13), "must be > 0");
    count(&errs, 1);
}

#[test]
fn zero_scan_rate_as_string() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"500ms\"", "\"0s\""), DEV_B).errors();
    expect(&errs, A, "tags[1].scan_rate", (18, 13), "must be > 0");
    count(&errs, 1);
}

#[test]
fn unknown_data_type() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"Double\"", "\"Decimal\""), DEV_B).errors();
    expect(
        &errs,
        A,
        "tags[0].data_type",
        (9, 13),
        "unknown variant `Decimal`",
    );
    count(&errs, 1);
}

#[test]
fn unknown_simulator_generator() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"sine\"", "\"sawtooth\""), DEV_B).errors();
    let e = expect(
        &errs,
        A,
        "tags[0].address",
        (8, 11),
        "unknown simulator generator \"sawtooth\"",
    );
    assert!(e.message.contains("random_walk"), "{e}");
    count(&errs, 1);
}

#[test]
fn generator_that_cannot_produce_the_data_type() {
    let errs = Tree::with(GATEWAY, &edit(DEV_A, "\"Double\"", "\"Boolean\""), DEV_B).errors();
    expect(&errs, A, "tags[0].data_type", (9, 13), "cannot produce Boolean");
    count(&errs, 1);
}

#[test]
fn constant_without_value() {
    let errs = Tree::with(
        GATEWAY,
        DEV_A,
        &edit(DEV_B, "value = \"AUTO\"", "unit = \"mode\""),
    )
    .errors();
    expect(
        &errs,
        B,
        "tags[1].value",
        (11, 1),
        "the constant generator needs `value`",
    );
    count(&errs, 1);
}

#[test]
fn constant_value_does_not_fit_data_type() {
    let errs = Tree::with(GATEWAY, DEV_A, &edit(DEV_B, "\"AUTO\"", "3")).errors();
    expect(
        &errs,
        B,
        "tags[1].value",
        (15, 9),
        "does not fit data_type String",
    );
    count(&errs, 1);
}

#[test]
fn square_duty_out_of_range() {
    let errs = Tree::with(GATEWAY, DEV_A, &edit(DEV_B, "duty = 0.5", "duty = 1.5")).errors();
    expect(
        &errs,
        B,
        "tags[2].duty",
        (21, 8),
        "between 0 and 1 (exclusive), got 1.5",
    );
    count(&errs, 1);
}

// ---------------------------------------------------------------- env

#[test]
fn missing_env_var() {
    let t = Tree::with(
        GATEWAY,
        &edit(DEV_A, "\"sim://dev-a\"", "\"${SIM_ENDPOINT}\""),
        DEV_B,
    );
    let errs = t.errors();
    let e = expect(&errs, A, "endpoint", (3, 12), "`SIM_ENDPOINT` is not set");
    assert!(e.message.contains("${SIM_ENDPOINT:-default}"), "{e}");
    count(&errs, 1);
    // The same tree loads once the variable is set.
    let c = t
        .load_env(&[("SIM_ENDPOINT", "sim://x")])
        .expect("loads with the variable set");
    assert_eq!(c.device("dev-a").unwrap().endpoint, "sim://x");
}

// ---------------------------------------------------------------- sinks

#[test]
fn unknown_sink_type() {
    let errs = Tree::with(&edit(GATEWAY, "\"file\"", "\"kafka\""), DEV_A, DEV_B).errors();
    let e = expect(
        &errs,
        GW,
        "sinks.archive.type",
        (12, 8),
        "unknown sink type \"kafka\"",
    );
    assert!(e.message.contains("supports: file"), "{e}");
    count(&errs, 1);
}

#[test]
fn sink_missing_path() {
    let gw = edit(GATEWAY, "path = \"archive.jsonl\"", "max_file_size = \"1MiB\"");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "sinks.archive", (11, 1), "missing required key `path`");
    count(&errs, 1);
}

/// The archive sink replaced by a postgres sink with `keys` (lines 11…).
fn pg_gateway(keys: &str) -> String {
    edit(
        GATEWAY,
        "[sinks.archive]\ntype = \"file\"\npath = \"archive.jsonl\"\n",
        &format!("[sinks.pg]\ntype = \"postgres\"\n{keys}"),
    )
}

#[test]
fn postgres_sink_loads_with_defaults_and_secret_from_env() {
    let t = Tree::with(
        &pg_gateway("url = \"postgres://gw:${PG_PASSWORD}@127.0.0.1/gateway_rust\"\nsslmode = \"require\"\n"),
        DEV_A,
        DEV_B,
    );
    let c = t.load_env(&[("PG_PASSWORD", "s3cret")]).expect("loads");
    let SinkKind::Postgres(p) = &c.gateway.sinks["pg"].kind else {
        panic!("not a postgres sink")
    };
    assert_eq!(p.url, "postgres://gw:s3cret@127.0.0.1/gateway_rust");
    assert_eq!(p.sslmode, Some(config::SslMode::Require));
    assert!(p.migrate && p.sync_config);
    assert_eq!(p.batch_frames, 1000);
    assert_eq!(p.last_seen_interval, Duration::from_secs(30));
    // Without the variable: an error naming it, not a half-built URL.
    let errs = t.errors();
    expect(&errs, GW, "sinks.pg.url", (13, 7), "PG_PASSWORD");
}

#[test]
fn postgres_sink_bad_url_is_reported_without_its_password() {
    let gw = pg_gateway("url = \"mysql://gw:hunter2@db/x\"\n");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = expect(&errs, GW, "sinks.pg.url", (13, 7), "is not a postgres:// URL");
    // The message redacts it (the quoted source line is the file's own text).
    assert!(!e.message.contains("hunter2"), "{e}");
    assert!(e.message.contains("gw:***@db"), "{e}");
    count(&errs, 1);
}

#[test]
fn postgres_sink_bad_values() {
    let gw = pg_gateway(
        "url = \"postgres://127.0.0.1/x\"\nbatch_frames = 0\nsslmode = \"maybe\"\ntimeout = \"0s\"\n",
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "sinks.pg.sslmode", (15, 11), "unknown variant `maybe`");
    // sslmode fails deserialisation, so the other checks of this sink wait for it.
    let gw = pg_gateway("url = \"postgres://127.0.0.1/x\"\nbatch_frames = 0\ntimeout = \"0s\"\n");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "sinks.pg.batch_frames", (14, 16), "must be > 0");
    expect(&errs, GW, "sinks.pg.timeout", (15, 11), "positive duration");
    count(&errs, 2);
}

#[test]
fn values_longer_than_the_seeds_columns() {
    let unit = "m".repeat(51);
    let a = edit(
        DEV_A,
        "address = \"sine\"\n",
        &format!("address = \"sine\"\nunit = \"{unit}\"\n"),
    );
    let errs = Tree::with(GATEWAY, &a, DEV_B).errors();
    expect(
        &errs,
        "devices/dev-a.toml",
        "tags[0].unit",
        (9, 8),
        "at most 50 (seed column tags.unit VARCHAR(50))",
    );
    count(&errs, 1);
    // 50 characters (not bytes): fine.
    let a = edit(
        DEV_A,
        "address = \"sine\"\n",
        &format!("address = \"sine\"\nunit = \"{}\"\n", "°".repeat(50)),
    );
    Tree::with(GATEWAY, &a, DEV_B).ok();
}

#[test]
fn non_finite_range_and_overlong_gateway_id() {
    let a = edit(DEV_A, "min_value = 0.0", "min_value = nan");
    let errs = Tree::with(GATEWAY, &a, DEV_B).errors();
    expect(
        &errs,
        "devices/dev-a.toml",
        "tags[0].min_value",
        (11, 13),
        "must be a finite number",
    );
    count(&errs, 1);
    let gw = edit(
        GATEWAY,
        "gateway_id = \"test-gw\"",
        &format!("gateway_id = \"{}\"", "g".repeat(201)),
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "gateway_id", (1, 14), "at most 200");
    count(&errs, 1);
}

// ---------------------------------------------------------------- alert rules

#[test]
fn alert_rule_with_unknown_device() {
    let errs = Tree::with(&edit(GATEWAY, "\"dev-b\"", "\"dev-c\""), DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "alert_rules[0].device",
        (17, 10),
        "no device named \"dev-c\"",
    );
    count(&errs, 1);
}

#[test]
fn alert_rule_with_unknown_tag_and_hint() {
    let errs = Tree::with(&edit(GATEWAY, "\"level\"", "\"levl\""), DEV_A, DEV_B).errors();
    let e = expect(
        &errs,
        GW,
        "alert_rules[0].tag",
        (18, 7),
        "device \"dev-b\" has no tag named \"levl\"",
    );
    assert!(e.message.contains("(did you mean \"level\"?)"), "{e}");
    count(&errs, 1);
}

#[test]
fn between_without_threshold_high() {
    let gw = edit(GATEWAY, "op = \"GT\"", "op = \"BETWEEN\"");
    let gw = edit(&gw, "threshold_value = 90.0", "threshold_low = 1.0");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "alert_rules[0]",
        (15, 1),
        "needs both threshold_low and threshold_high",
    );
    count(&errs, 1);
}

#[test]
fn between_with_low_above_high() {
    let gw = edit(GATEWAY, "op = \"GT\"", "op = \"BETWEEN\"");
    let gw = edit(
        &gw,
        "threshold_value = 90.0\n",
        "threshold_low = 5.0\nthreshold_high = 1.0\n",
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "alert_rules[0].threshold_low",
        (20, 17),
        "threshold_low 5 is greater than threshold_high 1",
    );
    count(&errs, 1);
}

#[test]
fn gt_without_threshold_value() {
    let gw = edit(
        GATEWAY,
        "threshold_value = 90.0",
        "description = \"no threshold\"",
    );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "alert_rules[0]", (15, 1), "GT needs threshold_value");
    count(&errs, 1);
}

#[test]
fn unknown_alert_op() {
    let errs = Tree::with(&edit(GATEWAY, "\"GT\"", "\"GREATER\""), DEV_A, DEV_B).errors();
    let e = expect(
        &errs,
        GW,
        "alert_rules[0].op",
        (19, 6),
        "unknown variant `GREATER`",
    );
    assert!(e.message.contains("NOT_BETWEEN"), "{e}");
    count(&errs, 1);
}

#[test]
fn duplicate_rule_names() {
    let gw = GATEWAY.to_string()
        + concat!(
            "\n",                      // 22
            "[[alert_rules]]\n",       // 23
            "name = \"hot\"\n",        // 24
            "device = \"dev-a\"\n",    // 25
            "op = \"LT\"\n",           // 26
            "threshold_value = 0.0\n", // 27
            "level = \"INFO\"\n",      // 28
            "tag = \"temp\"\n",        // 29
        );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = expect(
        &errs,
        GW,
        "alert_rules[1].name",
        (24, 8),
        "duplicate rule name \"hot\"",
    );
    assert!(e.message.contains("alert_rules[0]"), "{e}");
    count(&errs, 1);
}

#[test]
fn threshold_errors_in_the_second_rule_point_at_it() {
    let gw = GATEWAY.to_string()
        + concat!(
            "\n",                     // 22
            "[[alert_rules]]\n",      // 23
            "name = \"cold\"\n",      // 24
            "device = \"dev-a\"\n",   // 25
            "op = \"NOT_BETWEEN\"\n", // 26
            "level = \"INFO\"\n",     // 27
            "tag = \"temp\"\n",       // 28
        );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "alert_rules[1]",
        (23, 1),
        "NOT_BETWEEN needs both threshold_low and threshold_high",
    );
    count(&errs, 1);
}

// ---------------------------------------------------------------- all errors in one run

#[test]
fn errors_in_two_tags_of_one_device_are_both_reported() {
    let dev = edit(DEV_A, "scaling = 1.0", "scaling = 0.0");
    let dev = edit(&dev, "\"500ms\"", "0");
    let errs = Tree::with(GATEWAY, &dev, DEV_B).errors();
    expect(&errs, A, "tags[0].scaling", (10, 11), "must be > 0");
    expect(&errs, A, "tags[1].scan_rate", (18, 13), "must be > 0");
    count(&errs, 2);
}

#[test]
fn deserialization_errors_in_two_tags_are_both_reported() {
    let dev = edit(DEV_A, "scaling = 1.0", "scalng = 1.0");
    let dev = edit(&dev, "\"UInt32\"", "\"Decimal\"");
    let errs = Tree::with(GATEWAY, &dev, DEV_B).errors();
    expect(&errs, A, "tags[0].scalng", (10, 1), "did you mean `scaling`?");
    expect(
        &errs,
        A,
        "tags[1].data_type",
        (17, 13),
        "unknown variant `Decimal`",
    );
    count(&errs, 2);
}

#[test]
fn errors_in_two_device_files_and_the_gateway_are_all_reported() {
    let dev_a = edit(DEV_A, "scaling = 1.0", "scaling = 0.0");
    let dev_b = edit(DEV_B, "error_rate = 0.1", "error_rate = 2.0");
    let gw = edit(GATEWAY, "\"1GiB\"", "0");
    let errs = Tree::with(&gw, &dev_a, &dev_b).errors();
    expect(&errs, A, "tags[0].scaling", (10, 11), "must be > 0");
    expect(&errs, B, "error_rate", (4, 14), "got 2");
    expect(&errs, GW, "wal.max_bytes", (6, 13), "must be > 0");
    count(&errs, 3);
}

#[test]
fn syntax_error_in_one_device_does_not_hide_another_devices_errors() {
    let dev_a = edit(DEV_A, "min_value = 0.0", "min_value = = 0.0");
    let dev_b = edit(DEV_B, "duty = 0.5", "duty = 0.0");
    let errs = Tree::with(GATEWAY, &dev_a, &dev_b).errors();
    expect(&errs, A, "", (11, 13), "TOML syntax error");
    expect(&errs, B, "tags[2].duty", (21, 8), "got 0");
}

/// This package's directory, read when the test runs (cargo sets it), not
/// baked in at compile time: the target dir is shared between checkouts, so a
/// test binary built in another clone must still find this clone's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

// ---------------------------------------------------------------- modbus

const PLC: &str = concat!(
    "name = \"plc\"\n",               // 1
    "protocol = \"modbus-tcp\"\n",    // 2
    "endpoint = \"127.0.0.1:502\"\n", // 3
    "unit_id = 1\n",                  // 4
    "\n",                             // 5
    "[[tags]]\n",                     // 6
    "name = \"temp\"\n",              // 7
    "address = \"40001\"\n",          // 8
    "data_type = \"float32\"\n",      // 9
    "byte_order = \"CDAB\"\n",        // 10
    "\n",                             // 11
    "[[tags]]\n",                     // 12
    "name = \"running\"\n",           // 13
    "table = \"coil\"\n",             // 14
    "address = 0\n",                  // 15
    "data_type = \"bool\"\n",         // 16
    "access = \"ReadWrite\"\n",       // 17
);

const P: &str = "devices/plc.toml";

fn with_plc(plc: &str) -> Tree {
    let t = Tree::base();
    t.write(P, plc);
    t
}

#[test]
fn modbus_device_loads_with_resolved_options() {
    let c = with_plc(PLC).ok();
    let d = c.device("plc").unwrap();
    let config::DriverOptions::Modbus(m) = &d.driver else {
        panic!("not modbus: {d:?}")
    };
    assert_eq!(
        (m.unit_id, m.max_registers_per_request, m.busy_retries),
        (1, 125, 3)
    );
    let config::TagOptions::Modbus(o) = &d.tags[1].driver else {
        panic!()
    };
    let p = config::modbus::resolve(m, &d.tags[1], o).unwrap();
    assert_eq!((p.table, p.address, p.count), (config::Table::Coil, 0, 1));
    // `address = 0` (an integer) is kept as text.
    assert_eq!(d.tags[1].address, "0");
}

#[test]
fn modbus_bad_modicon_address() {
    let errs = with_plc(&edit(PLC, "\"40001\"", "\"50001\"")).errors();
    expect(&errs, P, "tags[0].address", (8, 11), "table digit 5");
    count(&errs, 1);
}

#[test]
fn modbus_string_without_length_and_typo_in_a_modbus_key() {
    let plc = edit(PLC, "\"float32\"", "\"string\"");
    let plc = edit(&plc, "byte_order = \"CDAB\"", "byte_ordr = \"BA\"");
    let errs = with_plc(&plc).errors();
    let e = expect(&errs, P, "tags[0].byte_ordr", (10, 1), "unknown key");
    assert!(e.message.contains("did you mean `byte_order`"), "{e}");
    count(&errs, 1);
    let errs = with_plc(&edit(PLC, "\"float32\"", "\"string\"")).errors();
    expect(&errs, P, "tags[0].data_type", (9, 13), "needs `length`");
    count(&errs, 1);
}

#[test]
fn modbus_serial_key_on_a_tcp_device_and_limits() {
    let plc = edit(
        PLC,
        "unit_id = 1\n",
        "unit_id = 1\nbaud_rate = 9600\nmax_registers_per_request = 200\n",
    );
    let errs = with_plc(&plc).errors();
    expect(&errs, P, "baud_rate", (5, 13), "serial-line key");
    expect(&errs, P, "max_registers_per_request", (6, 29), "1..=125");
    count(&errs, 2);
}

#[test]
fn modbus_read_only_table_cannot_be_written() {
    let errs = with_plc(&edit(PLC, "table = \"coil\"", "table = \"discrete_input\"")).errors();
    expect(&errs, P, "tags[1].access", (17, 10), "read-only table");
    count(&errs, 1);
}

#[test]
fn modbus_devices_sharing_a_port_must_agree_on_its_settings() {
    let rtu = |name: &str, unit: u8, baud: u32| {
        format!(
            "name = \"{name}\"\nprotocol = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\nbaud_rate = {baud}\nunit_id = {unit}\n\n\
             [[tags]]\nname = \"v\"\naddress = \"40001\"\ndata_type = \"uint16\"\n"
        )
    };
    let t = Tree::base();
    t.write("devices/m1.toml", rtu("m1", 1, 9600));
    t.write("devices/m2.toml", rtu("m2", 2, 19200));
    let errs = t.errors();
    let e = expect(
        &errs,
        "devices/m2.toml",
        "port",
        (3, 8),
        "shared with device \"m1\"",
    );
    assert!(e.message.contains("9600 baud"), "{e}");
    count(&errs, 1);
    // Same settings: fine, and the port is the endpoint.
    t.write("devices/m2.toml", rtu("m2", 2, 9600));
    let c = t.ok();
    assert_eq!(c.device("m2").unwrap().endpoint, "/dev/ttyUSB0");
    // Two files for one slave of the line.
    t.write("devices/m2.toml", rtu("m2", 1, 9600));
    let errs = t.errors();
    expect(
        &errs,
        "devices/m2.toml",
        "unit_id",
        (5, 11),
        "unit id 1 on /dev/ttyUSB0 is already device \"m1\"",
    );
    count(&errs, 1);
    // A serial device without `port`.
    t.write(
        "devices/m2.toml",
        rtu("m2", 2, 9600).replace("port = ", "endpoint = "),
    );
    let errs = t.errors();
    expect(
        &errs,
        "devices/m2.toml",
        "endpoint",
        (3, 12),
        "addressed by `port",
    );
}

// ---------------------------------------------------------------- alert expressions and webhooks

/// A rule on dev-a (tags `temp`, `count`) with `line` as its last line (29).
fn expression_rule(line: &str) -> String {
    GATEWAY.to_string()
        + concat!(
            "\n",                       // 22
            "[[alert_rules]]\n",        // 23
            "name = \"delta\"\n",       // 24
            "device = \"dev-a\"\n",     // 25
            "level = \"INFO\"\n",       // 26
            "eval_interval = \"5s\"\n", // 27
            "stale_after = \"0s\"\n",   // 28
        )
        + line
        + "\n"
}

#[test]
fn an_unknown_name_in_an_expression_points_at_that_character_of_the_file() {
    let gw = expression_rule(r#"condition_expression = "temp - temperature > 5 and count > 1""#);
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    // `"` is column 24, the expression starts at 25, `temperature` 7 bytes later.
    let e = expect(
        &errs,
        GW,
        "alert_rules[1].condition_expression",
        (29, 32),
        "`temperature` is not a numeric or boolean tag of this device",
    );
    assert!(e.to_string().contains("^"), "{e}");
    count(&errs, 1);
}

#[test]
fn a_syntax_error_in_an_expression_points_into_it() {
    let gw = expression_rule(r#"condition_expression = "(temp > 5 and count""#);
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = errs
        .iter()
        .find(|e| e.key == "alert_rules[1].condition_expression")
        .unwrap_or_else(|| panic!("{errs}"));
    assert_eq!(e.line, Some(29), "{e}");
    assert!(e.column.is_some_and(|c| c > 24), "inside the expression: {e}");
    count(&errs, 1);
}

#[test]
fn an_escaped_expression_is_located_in_the_message() {
    // An escape in the TOML string: the file column cannot be exact, so the
    // message shows the expression with a caret.
    let gw = expression_rule(r#"condition_expression = "temp > 5 \u0061nd nope""#);
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    let e = expect(
        &errs,
        GW,
        "alert_rules[1].condition_expression",
        (29, 24),
        "`nope`",
    );
    assert!(e.message.contains("at character 14 of the expression"), "{e}");
}

#[test]
fn a_tag_rule_needs_op_and_an_expression_rule_without_op_takes_no_threshold() {
    let gw = expression_rule("tag = \"temp\"");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "alert_rules[1]", (23, 1), "`op` is required");
    count(&errs, 1);
    let gw = expression_rule("condition_expression = \"temp > 5\"\nthreshold_value = 3.0");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "alert_rules[1]", (23, 1), "thresholds need an `op`");
    count(&errs, 1);
    // An expression that reads no tag would never be evaluated.
    let gw = expression_rule("condition_expression = \"1 > 0\"");
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(
        &errs,
        GW,
        "alert_rules[1].condition_expression",
        (29, 24),
        "reads no tag",
    );
    count(&errs, 1);
    // A valid expression rule loads, with NE 0 as its comparison.
    let gw = expression_rule("condition_expression = \"temp - count > 5 and not (count == 3)\"");
    let c = Tree::with(&gw, DEV_A, DEV_B).load().unwrap();
    let r = &c.gateway.alert_rules[1];
    assert_eq!(r.effective_op(), config::CompareOp::Ne);
    assert_eq!(r.effective_threshold(), Some(0.0));
    assert_eq!(r.stale_after, Some(Duration::ZERO));
}

#[test]
fn webhook_sinks_are_checked() {
    let gw = GATEWAY.to_string()
        + concat!(
            "\n",                                   // 22
            "[sinks.hook]\n",                       // 23
            "type = \"webhook\"\n",                 // 24
            "url = \"https://example.com/x\"\n",    // 25
            "min_level = \"CRITICAL\"\n",           // 26
            "events = []\n",                        // 27
            "headers = { \"Bad Name\" = \"x\" }\n", // 28
        );
    let errs = Tree::with(&gw, DEV_A, DEV_B).errors();
    expect(&errs, GW, "sinks.hook.url", (25, 7), "https is not supported");
    expect(&errs, GW, "sinks.hook.events", (27, 10), "at least one");
    expect(
        &errs,
        GW,
        "sinks.hook.headers.Bad Name",
        (28, 11),
        "is not a valid HTTP header name",
    );
    count(&errs, 3);
    let gw = GATEWAY.to_string()
        + "\n[sinks.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\nmin_level = \"CRITICAL\"\nheaders = { Authorization = \"Bearer t\" }\n\n[alerts]\nstale_after = \"1m\"\n";
    let c = Tree::with(&gw, DEV_A, DEV_B).load().unwrap();
    let SinkKind::Webhook(w) = &c.gateway.sinks["hook"].kind else {
        panic!("not a webhook")
    };
    assert_eq!(w.min_level, config::AlertLevel::Critical);
    assert_eq!(w.events.len(), 4);
    assert_eq!(c.gateway.alerts.stale_after, Duration::from_secs(60));
}
