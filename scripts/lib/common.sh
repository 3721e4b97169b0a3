# Shared by the project's scripts: environment defaults and idempotent installs.
# shellcheck shell=bash

# One persistent cargo target directory outside the checkout: bundled RocksDB
# takes ~20 minutes to compile cold on a 2-core machine, so every run (CI,
# developers, benchmarks) reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/gateway_rust/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$CARGO_TARGET_DIR"

log() { printf '==> %s\n' "$*" >&2; }

_apt_updated=""
# ensure_deb PACKAGE...: installs Debian packages that are missing.
ensure_deb() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root to install them)"
        return 1
    fi
    if [ -z "$_apt_updated" ]; then
        log "apt-get update"
        apt-get update -qq
        _apt_updated=1
    fi
    log "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Build prerequisites: libclang for RocksDB's bindgen, a C++ compiler, mount/umount for the disk-full test.
ensure_build_deps() {
    ensure_deb libclang-dev clang g++ make pkg-config util-linux
    command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain (rustup)"; return 1; }
}

# The Modbus peer of the integration tests (tests/peers/modbus_server.py):
# socat for RTU pty pairs, pymodbus and pyserial in pinned versions (the peer
# hooks pymodbus internals that change between releases).
MODBUS_PEER_PYMODBUS=3.9.2
MODBUS_PEER_PYSERIAL=3.5
ensure_modbus_peer() {
    command -v socat >/dev/null || ensure_deb socat || return 1
    command -v python3 >/dev/null || { log "python3 not found: the Modbus peer needs Python 3.10 or newer"; return 1; }
    python3 -c "import pymodbus, serial; assert (pymodbus.__version__, serial.__version__) == \
('$MODBUS_PEER_PYMODBUS', '$MODBUS_PEER_PYSERIAL')" 2>/dev/null && return 0
    log "installing pymodbus==$MODBUS_PEER_PYMODBUS pyserial==$MODBUS_PEER_PYSERIAL"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        "pymodbus==$MODBUS_PEER_PYMODBUS" "pyserial==$MODBUS_PEER_PYSERIAL"
}

# The InfluxDB sink's real servers: Debian's influxd 1.x and VictoriaMetrics
# (which accepts the InfluxDB v2 write API). The tests start private
# instances on free loopback ports; the packages' own services stay off.
ensure_influx_peers() {
    ensure_deb influxdb victoria-metrics
}

# The MQTT driver's and sink's tests: Mosquitto and its clients
# (mosquitto_pub/mosquitto_sub). The tests start private brokers on free
# loopback ports (they stop and restart them); the machine's own broker on
# 127.0.0.1:1883 is left alone.
ensure_mqtt_peers() {
    command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null \
        && command -v openssl >/dev/null && return 0
    # openssl makes the TLS test's CA and certificates.
    ensure_deb mosquitto mosquitto-clients openssl
}

# The OPC UA driver's tests: two independent server implementations, Python
# asyncua (tests/peers/opcua_server.py) and node-opcua
# (tests/peers/opcua_node_server.js), in pinned versions. node-opcua goes to
# ~/.cache/gateway_rust/node-opcua (outside the checkout; the tests find it
# there or at $GATEWAY_NODE_OPCUA).
OPCUA_PEER_ASYNCUA=1.1.8
OPCUA_PEER_NODE_OPCUA=2.160.0
OPCUA_NODE_DIR="${HOME}/.cache/gateway_rust/node-opcua"
ensure_opcua_peers() {
    command -v python3 >/dev/null || { log "python3 not found: the OPC UA peer needs Python 3.10 or newer"; return 1; }
    if ! python3 -c "import asyncua, importlib.metadata as m; assert m.version('asyncua') == '$OPCUA_PEER_ASYNCUA'" 2>/dev/null; then
        log "installing asyncua==$OPCUA_PEER_ASYNCUA"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            "asyncua==$OPCUA_PEER_ASYNCUA" || return 1
    fi
    command -v node >/dev/null || ensure_deb nodejs npm || return 1
    if ! [ -f "$OPCUA_NODE_DIR/node_modules/node-opcua-server/package.json" ] \
        || ! grep -q "\"version\": \"$OPCUA_PEER_NODE_OPCUA\"" "$OPCUA_NODE_DIR/node_modules/node-opcua-server/package.json"; then
        log "installing node-opcua-server@$OPCUA_PEER_NODE_OPCUA into $OPCUA_NODE_DIR"
        mkdir -p "$OPCUA_NODE_DIR"
        (cd "$OPCUA_NODE_DIR" && npm install --no-audit --no-fund --loglevel=error \
            "node-opcua-server@$OPCUA_PEER_NODE_OPCUA") || return 1
    fi
}

# The PostgreSQL store's tests: the machine's server on 127.0.0.1:5432 (trust
# auth; each test creates and drops its own database), and the server
# binaries (initdb, pg_ctl, run as the `postgres` user via runuser) for the
# outage tests' private clusters on free loopback ports. Sets
# PG_STARTED_BY_US=1 when it had to start the machine's server, so the
# caller can stop it again.
PG_STARTED_BY_US=""
ensure_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ensure_deb postgresql || return 1
    command -v runuser >/dev/null || ensure_deb util-linux || return 1
    pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && return 0
    log "PostgreSQL is not answering on 127.0.0.1:5432; starting the machine's server"
    service postgresql start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && { PG_STARTED_BY_US=1; return 0; }
        sleep 1
    done
    log "PostgreSQL did not start on 127.0.0.1:5432"
    return 1
}

# The Debian package tool (scripts/package.sh): cargo-deb, pinned, built once
# into ~/.cargo/bin; dpkg-dev for dpkg-shlibdeps ($auto dependencies) and
# systemd for `systemd-analyze verify` of the unit.
CARGO_DEB_VERSION=3.8.0
ensure_cargo_deb() {
    ensure_deb dpkg-dev systemd || return 1
    if cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
        return 0
    fi
    log "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --quiet --locked --version "$CARGO_DEB_VERSION" cargo-deb
}
