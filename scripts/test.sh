#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a developer's: installs what is
# missing (apt-get; root), starts the real peers the tests need on loopback,
# runs rustfmt, clippy (-D warnings) and every test in the release profile,
# and stops what it started. `.ci/run` calls exactly this script.
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/gateway_rust/target),
# GATEWAY_CRASH_ROUNDS (SIGKILL rounds of the WAL crash test, default 20),
# TEST_THREADS (cargo test threads, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh

ensure_build_deps

# Peers started by this run are stopped on exit, whatever the outcome.
STARTED=()
cleanup() {
    for stop in "${STARTED[@]:-}"; do
        [ -n "$stop" ] && eval "$stop" || true
    done
}
trap cleanup EXIT

# Real peers. The Modbus tests start their own pymodbus servers and socat pty
# pairs on loopback (tests/src/harness/peers.rs); this installs them.
ensure_modbus_peer
# The InfluxDB sink tests start private influxd / VictoriaMetrics instances.
ensure_influx_peers
log "MQTT peers (Mosquitto, mosquitto_pub)"
ensure_mqtt_peers
# The OPC UA tests start private asyncua and node-opcua servers on loopback.
log "OPC UA peers (asyncua, node-opcua)"
ensure_opcua_peers
# The PostgreSQL store tests use the machine's server (a database each) and
# start private clusters for the outage tests.
ensure_postgres
[ -n "$PG_STARTED_BY_US" ] && STARTED+=("service postgresql stop >/dev/null 2>&1")

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (release profile, shared with the tests)"
cargo clippy --workspace --all-targets --release --locked -- -D warnings

# The Debian package: built from the release binary (which this also
# builds for the tests), its contents, conffiles, maintainer scripts and
# unit checked in a scratch root (scripts/package.sh).
log "Debian package (cargo-deb)"
scripts/package.sh --check

log "cargo test (release profile)"
results="$(mktemp)"
STARTED+=("rm -f '$results'")
set +e
cargo test --workspace --release --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$results"
exit "$status"
