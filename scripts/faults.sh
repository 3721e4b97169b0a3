#!/usr/bin/env bash
# The fault suite (docs/reliability.md): every scenario of tests::faults
# against the real gateway and real peers, one results table.
#
#   scripts/faults.sh                 the documented run (50 SIGKILL rounds,
#                                     2-minute outages; ~35 min on 2 cores)
#   scripts/faults.sh --short         the CI form (what scripts/test.sh runs as
#                                     tests/tests/faults.rs)
#   scripts/faults.sh --only sigkill,disk_full --kill-rounds 100 --out /tmp/t.md
#
# Same release profile, target dir and package selection as the tests, so
# nothing is compiled twice. Needs root for the disk-full scenario (tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
ensure_modbus_peer
ensure_influx_peers
ensure_mqtt_peers
ensure_opcua_peers
ensure_postgres
cargo build --release --locked --workspace --all-targets
export GATEWAY_BIN="$CARGO_TARGET_DIR/release/gateway"
exec "$CARGO_TARGET_DIR/release/faults" "$@"
