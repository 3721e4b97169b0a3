//! Fuzzes configuration loading (`config`): arbitrary bytes, taken as UTF-8
//! TOML (other inputs are skipped), go through `config::load_from_str` —
//! the same parsing, `${ENV}` substitution, deserialization and checks as
//! `config::load` of files — in three ways:
//! - as the `gateway.toml`, next to two fixed, valid device files;
//! - as a device file, under a fixed, valid `gateway.toml` whose alert
//!   rules name device `boiler-1` (so a mutated `boiler-1` file reaches the
//!   rule and expression checks) next to a fixed `conveyor-1`;
//! - when the input holds a NUL byte (never valid TOML): the part before
//!   the first NUL as the `gateway.toml` and the part after it as its only
//!   device file, so the fuzzer can change both sides of a cross-check.
//!
//! Checks that loading never panics and that every error, and the error
//! list, renders (`Display`: file:line:column and the caret line are
//! computed from byte offsets into the text) without a panic.
//!
//! The environment is fixed: a variable is set (to `<name>-value`) when its
//! name has an even number of characters, so both `${VAR}` and
//! `${VAR:-default}` take either branch.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const GATEWAY_PATH: &str = "/etc/gateway-rust/gateway.toml";
const DEVICE_PATH: &str = "/etc/gateway-rust/devices/fuzz.toml";
const BOILER_PATH: &str = "/etc/gateway-rust/devices/boiler-1.toml";
const CONVEYOR_PATH: &str = "/etc/gateway-rust/devices/conveyor-1.toml";

/// A valid `gateway.toml` with rules on both fixed devices.
const GATEWAY: &str = r#"
gateway_id = "fuzz-gw"
data_dir = "${GATEWAY_DATA_DIR:-/var/lib/gateway-rust}"
devices_dir = "devices"

[wal]
sync = "batch"
max_age = "24h"
max_bytes = "1GiB"

[http]
listen = "127.0.0.1:9100"

[sinks.archive]
type = "file"
path = "archive.jsonl"
max_file_size = "64MiB"

[[alert_rules]]
name = "boiler-burner-hot"
device = "boiler-1"
condition_expression = "burner_on and water_temp > 90"
level = "CRITICAL"
eval_interval = "1s"
eval_duration = "5s"

[[alert_rules]]
name = "boiler-overtemp"
device = "boiler-1"
tag = "water_temp"
op = "GT"
threshold_value = 95.0
level = "WARNING"
eval_interval = "1s"
cooldown_duration = "5m"

[[alert_rules]]
name = "line-speed-band"
device = "conveyor-1"
tag = "belt_speed"
op = "NOT_BETWEEN"
threshold_low = 0.2
threshold_high = 1.8
level = "INFO"
"#;

/// A valid device file with the tags the rules above read.
const BOILER: &str = r#"
name = "boiler-1"
protocol = "simulator"
endpoint = "sim://boiler-1"
scan_interval = "1s"
seed = 1

[[tags]]
name = "water_temp"
address = "sine"
data_type = "Double"
base = 80.0
amplitude = 20.0
period = "2m"
min_value = 0.0
max_value = 98.0
deadband = 0.05

[[tags]]
name = "burner_on"
address = "square"
data_type = "Boolean"
period = "30s"
duty = 0.4
"#;

/// A second valid device (name uniqueness, the rule on `belt_speed`).
const CONVEYOR: &str = r#"
name = "conveyor-1"
protocol = "simulator"
endpoint = "sim://conveyor-1"
scan_interval = "250ms"

[[tags]]
name = "belt_speed"
address = "ramp"
data_type = "Double"
base = 0.0
amplitude = 2.0
period = "20s"
"#;

fn env(name: &str) -> Option<String> {
    (name.chars().count() % 2 == 0).then(|| format!("{name}-value"))
}

/// Loads one combination and renders whatever comes out.
fn load(gateway: &str, devices: &[(&Path, &str)]) {
    match config::load_from_str(Path::new(GATEWAY_PATH), gateway, devices, &env) {
        Ok(cfg) => {
            let _ = cfg.device("boiler-1");
        }
        Err(errors) => {
            for e in errors.iter() {
                let _ = e.to_string();
            }
            let _ = errors.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.split_once('\0') {
        Some((gateway, device)) => load(gateway, &[(Path::new(DEVICE_PATH), device)]),
        None => {
            load(
                text,
                &[
                    (Path::new(BOILER_PATH), BOILER),
                    (Path::new(CONVEYOR_PATH), CONVEYOR),
                ],
            );
            load(
                GATEWAY,
                &[
                    (Path::new(DEVICE_PATH), text),
                    (Path::new(CONVEYOR_PATH), CONVEYOR),
                ],
            );
        }
    }
});
