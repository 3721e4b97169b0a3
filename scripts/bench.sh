#!/usr/bin/env bash
# Benchmarks; print Markdown tables for docs/benchmarks.md. Use the release
# profile, target dir and package selection (--workspace --all-targets) of
# the tests, so nothing is compiled twice (see docs/testing.md).
#
#   scripts/bench.sh [bus] [ARGS…]   frame bus vs raw RocksDB in the same run
#                                    (BENCH_* knobs: frame-bus/benches/bus.rs)
#   scripts/bench.sh runtime         the real gateway with simulator devices at
#                                    1k/10k/100k tags/s and at saturation, vs the
#                                    bus alone (BENCH_SECS, BENCH_DIR:
#                                    tests/src/bin/runtime_bench.rs)
#   scripts/bench.sh modbus          the real gateway polling 100 in-process
#                                    Modbus TCP servers (coalesced vs one request
#                                    per tag, 10k tags at 1 s) vs bare
#                                    tokio-modbus clients (tests/src/bin/modbus_bench.rs)
#   scripts/bench.sh influx          the InfluxDB sink draining a pre-filled WAL into
#                                    a local influxd vs a raw bulk writer
#                                    (tests/src/bin/influx_bench.rs)
#   scripts/bench.sh postgres        the PostgreSQL store draining a pre-filled WAL of
#                                    alert and audit events into the machine's
#                                    PostgreSQL vs a raw bulk writer
#                                    (tests/src/bin/pg_bench.rs)
#   scripts/bench.sh alerts          the real gateway at 100k samples/s without alert
#                                    rules (baseline) and with 10 000 tag rules or
#                                    1 000 expression rules (tests/src/bin/alert_bench.rs)
#   scripts/bench.sh mqtt            the MQTT driver (broker → bus) and sink (bus →
#                                    broker) at QoS 0 and 1 vs mosquitto_sub /
#                                    mosquitto_pub on the same private broker
#                                    (BENCH_MESSAGES: tests/src/bin/mqtt_bench.rs)
#   scripts/bench.sh opcua           the OPC UA driver: 10k items at 1 s and 1k items at
#                                    100 ms from an asyncua server into the bus vs a bare
#                                    async-opcua client (BENCH_SECS, BENCH_SCENARIOS,
#                                    BENCH_SERVER: tests/src/bin/opcua_bench.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
what="${1:-bus}"
# bench_bin NAME DEFAULT_DIR ARGS…: builds like the tests and runs
# tests/src/bin/NAME.rs against the release gateway binary.
bench_bin() {
    local name=$1 dir=$2
    shift 2
    cargo build --release --locked --workspace --all-targets
    export BENCH_DIR="${BENCH_DIR:-$dir}"
    "$CARGO_TARGET_DIR/release/$name" "$CARGO_TARGET_DIR/release/gateway" "$@"
}
case "$what" in
    runtime)  shift; bench_bin runtime_bench /var/tmp/gateway-runtime-bench "$@" ;;
    modbus)   shift; bench_bin modbus_bench /var/tmp/gateway-modbus-bench "$@" ;;
    influx)   shift; ensure_influx_peers; bench_bin influx_bench /var/tmp/gateway-influx-bench "$@" ;;
    postgres) shift; ensure_postgres; bench_bin pg_bench /var/tmp/gateway-pg-bench "$@" ;;
    alerts)   shift; bench_bin alert_bench /var/tmp/gateway-alert-bench "$@" ;;
    mqtt)     shift; ensure_mqtt_peers; bench_bin mqtt_bench /var/tmp/gateway-mqtt-bench "$@" ;;
    opcua)    shift; ensure_opcua_peers; bench_bin opcua_bench /var/tmp/gateway-opcua-bench "$@" ;;
    bus)
        [ $# -gt 0 ] && shift
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/frame-bus-bench}"
        cargo bench --locked --profile release -p frame-bus --bench bus "$@"
        ;;
    *)
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/frame-bus-bench}"
        cargo bench --locked --profile release -p frame-bus --bench bus "$@"
        ;;
esac
