#!/usr/bin/env bash
# Frame bus benchmark (bus vs raw RocksDB in the same run); prints Markdown
# tables for docs/benchmarks.md. Uses the release profile and target dir of
# the tests, so nothing is compiled twice. See frame-bus/benches/bus.rs for
# the BENCH_* knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
export BENCH_DIR="${BENCH_DIR:-/var/tmp/frame-bus-bench}"
cargo bench --locked --profile release -p frame-bus --bench bus "$@"
