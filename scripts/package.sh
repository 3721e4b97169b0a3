#!/usr/bin/env bash
# The Debian package (cargo-deb): build it from the release binary and, with
# --check, inspect it the way an operator's dpkg would see it.
#
#   scripts/package.sh            build target/debian/gateway-rust_<v>_<arch>.deb
#   scripts/package.sh --check    build, then: dpkg-deb -c / -I, extract into a
#                                 scratch root (dpkg -x), check every file lands
#                                 where the unit and the docs expect it, the
#                                 binary runs, the default config passes
#                                 `gateway check`, the unit passes
#                                 `systemd-analyze verify` (scripts/test.sh runs this)
#
# Same release profile and target dir as the tests (nothing built twice); the
# packaged binary is stripped (the profile keeps line tables for test backtraces).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/common.sh
source scripts/lib/common.sh
ensure_build_deps
ensure_cargo_deb
cargo build --release --locked --workspace --all-targets
deb=$(cargo deb -p gateway --no-build --strip --output "$CARGO_TARGET_DIR/debian/" | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not report a package file (got: $deb)" >&2; exit 1; }
log "built $deb"
[ "${1:-}" = "--check" ] || exit 0

fail() { echo "package check: $*" >&2; exit 1; }
contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/gateway ./usr/lib/systemd/system/gateway.service \
    ./etc/gateway/gateway.toml ./etc/gateway/devices/example.toml ./etc/gateway/env \
    ./usr/share/doc/gateway-rust/examples/gateway.toml \
    ./usr/share/doc/gateway-rust/grafana/gateway-dashboard.json \
    ./usr/share/doc/gateway-rust/operations.md; do
    grep -q " $path\$" <<<"$contents" || fail "$path missing from the package:
$contents"
done
grep -qE -- "-rw------- (root/root|0/0) .* ./etc/gateway/env$" <<<"$contents" \
    || fail "/etc/gateway/env must be root-only (0600)"
conffiles=$(dpkg-deb -I "$deb" conffiles)
for f in /etc/gateway/gateway.toml /etc/gateway/devices/example.toml /etc/gateway/env; do
    grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
for script in postinst postrm; do
    dpkg-deb -I "$deb" "$script" | grep -q "systemctl\|deb-systemd" \
        || fail "$script lacks the systemd snippets"
done
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
"$root/usr/bin/gateway" --version >/dev/null || fail "the packaged binary does not run"
unit="$root/usr/lib/systemd/system/gateway.service"
exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
[ -x "$root$exec_start" ] || fail "ExecStart=$exec_start is not in the package"
grep -q '^data_dir = "/var/lib/gateway"' "$root/etc/gateway/gateway.toml" \
    || fail "the default config does not use the unit's StateDirectory"
grep -q '^StateDirectory=gateway' "$unit" || fail "the unit lost StateDirectory=gateway"
# The default configuration, as installed, with the data dir moved into the
# scratch root (the check does not write it).
sed "s#/var/lib/gateway#$root/var/lib/gateway#" "$root/etc/gateway/gateway.toml" >"$root/etc/gateway/check.toml"
"$root/usr/bin/gateway" check --config "$root/etc/gateway/check.toml" >/dev/null \
    || fail "the packaged default configuration does not pass gateway check"
if command -v systemd-analyze >/dev/null; then
    sed "s#^ExecStart=$exec_start#ExecStart=$root$exec_start#" "$unit" >"$root/gateway.service"
    out=$(systemd-analyze verify --man=no "$root/gateway.service" 2>&1) || fail "systemd-analyze: $out"
    [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
    log "unit verified with systemd-analyze"
else
    log "systemd-analyze not installed: the unit was not verified"
fi
# As root on a machine without the package: a real install, what the
# maintainer scripts did, then a purge (the system user stays, as policy says).
if [ "$(id -u)" -eq 0 ] && ! dpkg -s gateway-rust >/dev/null 2>&1; then
    dpkg -i "$deb" >/dev/null || fail "dpkg -i failed"
    trap 'dpkg --purge gateway-rust >/dev/null 2>&1 || true; rm -rf "$root"' EXIT
    id -nG gateway | grep -qw dialout || fail "user gateway is not in group dialout"
    [ "$(stat -c '%U:%G %a' /var/lib/gateway)" = "gateway:gateway 750" ] \
        || fail "/var/lib/gateway: $(stat -c '%U:%G %a' /var/lib/gateway)"
    [ "$(stat -c '%U:%G %a' /etc/gateway/env)" = "root:root 600" ] || fail "/etc/gateway/env permissions"
    [ -L /etc/systemd/system/multi-user.target.wants/gateway.service ] || fail "the unit was not enabled"
    /usr/bin/gateway check --config /etc/gateway/gateway.toml >/dev/null || fail "installed config fails check"
    dpkg --purge gateway-rust >/dev/null || fail "dpkg --purge failed"
    [ ! -e /var/lib/gateway ] && [ ! -e /etc/gateway ] || fail "purge left /var/lib/gateway or /etc/gateway"
    log "installed with dpkg -i, checked, purged"
fi
log "package OK: $(dpkg-deb -f "$deb" Package Version Architecture Depends | tr '\n' ' ')"
