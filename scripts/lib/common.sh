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
