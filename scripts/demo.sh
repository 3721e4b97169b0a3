#!/usr/bin/env bash
# The demo: the gateway with three simulated devices and a local JSON Lines
# archive — no external service. Installs the build dependencies if missing
# (root on a fresh machine), builds in release mode into the shared target
# dir, and runs in the foreground until Ctrl-C (a clean stop).
#
# Then, from another shell:
#   curl -s localhost:9100/metrics | grep ^gateway_
#   curl -s localhost:9100/api/v1/status
#   $CARGO_TARGET_DIR/release/gateway wal tail --follow --config deploy/demo/gateway.toml
#
# Environment: GATEWAY_HTTP_LISTEN (default 127.0.0.1:9100),
# GATEWAY_DATA_DIR (default target/demo-data in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
exec cargo run --release --locked -p gateway -- run --config deploy/demo/gateway.toml "$@"
