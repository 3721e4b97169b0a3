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
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
what="${1:-bus}"
case "$what" in
    runtime)
        shift
        cargo build --release --locked --workspace --all-targets
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/gateway-runtime-bench}"
        "$CARGO_TARGET_DIR/release/runtime_bench" "$CARGO_TARGET_DIR/release/gateway" "$@"
        ;;
    modbus)
        shift
        cargo build --release --locked --workspace --all-targets
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/gateway-modbus-bench}"
        "$CARGO_TARGET_DIR/release/modbus_bench" "$CARGO_TARGET_DIR/release/gateway" "$@"
        ;;
    influx)
        shift
        ensure_influx_peers
        cargo build --release --locked --workspace --all-targets
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/gateway-influx-bench}"
        "$CARGO_TARGET_DIR/release/influx_bench" "$CARGO_TARGET_DIR/release/gateway" "$@"
        ;;
    postgres)
        shift
        ensure_postgres
        cargo build --release --locked --workspace --all-targets
        export BENCH_DIR="${BENCH_DIR:-/var/tmp/gateway-pg-bench}"
        "$CARGO_TARGET_DIR/release/pg_bench" "$CARGO_TARGET_DIR/release/gateway" "$@"
        ;;
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
