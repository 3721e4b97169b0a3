#!/usr/bin/env python3
"""Check that every metric the Grafana dashboard queries exists.

    python3 deploy/grafana/check_metrics.py [DASHBOARD] SCRAPE [--strict] [-v]

SCRAPE is a `/metrics` exposition: a file, `-` for stdin, or an http(s) URL
such as http://127.0.0.1:9100/metrics. DASHBOARD (also `--dashboard FILE`)
defaults to gateway-dashboard.json next to this script.

What it does:

1. Loads the dashboard JSON and checks its structure (schemaVersion, uid,
   unique panel ids, every query on the `${datasource}` variable).
2. Extracts the metric names from every PromQL expression: panel targets
   (rows included, collapsed or not) and the query variables
   (`label_values(selector, label)`). Functions, aggregation operators,
   keywords, label matchers, `by (...)`/`on (...)` label lists, ranges,
   numbers, strings and Grafana variables are not metric names.
3. Checks each name against the scrape. A name counts as present when a
   sample carries it, or when a `# TYPE` line declares a family that
   exposes it: counter `X` -> `X_total`; histogram `X` -> `X_bucket`,
   `X_sum`, `X_count`; info `X` -> `X_info`; summary `X` -> `X`, `X_sum`,
   `X_count`; gauge `X` -> `X`. So `foo_seconds_bucket` is accepted only if
   `foo_seconds` is a histogram, and the bare histogram name is not.
4. Names absent from the scrape fail, unless listed in ALLOWLIST below
   (families prometheus-client leaves out of the exposition until their
   first sample, which the demo configuration never or not reliably
   produces). An allowlisted name must still be a family documented in
   gateway/src/metrics.rs, when that file is found next to this one, so a
   typo cannot hide behind the allowlist. `--strict` ignores the allowlist
   (for a scrape of a gateway that has every driver and sink running).

Exit status: 0 all present; 1 some missing (listed on stderr); 2 usage or
input error (unreadable scrape or dashboard, invalid dashboard JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARD = os.path.join(HERE, "gateway-dashboard.json")
DEFAULT_SOURCE = os.path.normpath(os.path.join(HERE, "..", "..", "gateway", "src", "metrics.rs"))

# Families the dashboard shows that a freshly started demo gateway
# (deploy/demo: three simulator devices, a file sink, alert rules) does not
# expose. prometheus-client writes no `# HELP`/`# TYPE` line for a labelled
# family until its first label set exists, so these are absent, not zero.
ALLOWLIST: dict[str, str] = {
    # Devices: need an event the demo produces late, randomly or never.
    "gateway_device_errors_total":
        "after the first failed request; demo press-7 fails at random (error_rate 0.02), often not in the first minute",
    "gateway_device_suppressed_samples_total":
        "after a deadband first suppresses a sample (demo boiler-1 water_temp, timing-dependent)",
    "gateway_device_requests_total":
        "counted by the Modbus driver only; the simulator sends no requests",
    "gateway_device_skipped_ticks_total":
        "after a poll overruns its period; simulator polls take microseconds",
    "gateway_device_writes_total":
        "after the first tag write (POST /api/v1/devices/{d}/tags/{t}/write)",
    # Supervision and configuration.
    "gateway_task_restarts_total":
        "after a driver or sink task fails and is restarted",
    "gateway_config_reloads_total":
        "after the first reload (SIGHUP or POST /api/v1/reload)",
    # Sinks: the demo's only enabled sink is the file sink.
    "gateway_sink_write_errors_total":
        "InfluxDB and PostgreSQL sinks, after the first failed write",
    "gateway_sink_up":
        "PostgreSQL, webhook and MQTT sinks only (disabled or absent in the demo)",
    "gateway_sink_write_duration_seconds_bucket":
        "InfluxDB and PostgreSQL sinks only",
    "gateway_sink_write_duration_seconds_sum":
        "InfluxDB and PostgreSQL sinks only",
    "gateway_sink_write_duration_seconds_count":
        "InfluxDB and PostgreSQL sinks only",
    "gateway_notifications_total":
        "webhook sink only (disabled in the demo)",
    # MQTT driver and sink: the demo has neither.
    "gateway_mqtt_messages_received_total": "MQTT devices only",
    "gateway_mqtt_messages_acked_total": "MQTT devices only",
    "gateway_mqtt_parse_errors_total": "MQTT devices only, after the first malformed message",
    "gateway_mqtt_messages_published_total": "MQTT sink only",
    "gateway_mqtt_publish_acks_total": "MQTT sink only",
    "gateway_mqtt_inflight_messages": "MQTT sink only",
    # OPC UA driver: the demo has no OPC UA device.
    "gateway_opcua_session_up": "OPC UA devices only",
    "gateway_opcua_session_attempts_total": "OPC UA devices only",
    "gateway_opcua_subscriptions": "OPC UA devices only",
    "gateway_opcua_monitored_items": "OPC UA devices only",
    "gateway_opcua_notifications_total": "OPC UA devices only (subscription mode)",
    "gateway_opcua_bad_values_total": "OPC UA devices only, after the first Bad value",
    "gateway_opcua_read_duration_seconds_bucket": "OPC UA devices in poll mode only",
    "gateway_opcua_read_duration_seconds_sum": "OPC UA devices in poll mode only",
    "gateway_opcua_read_duration_seconds_count": "OPC UA devices in poll mode only",
}

# ----------------------------------------------------------------- PromQL

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan", "start", "end",
}

TOKEN = re.compile(
    r"""
      (?P<num>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z0-9_]*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<ws>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _strip(expr: str) -> str:
    """Removes what cannot contain a metric name: strings, Grafana
    variables, label matchers, ranges, label lists of by/without/on/..."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"#[^\n]*", " ", expr)  # PromQL comments
    expr = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]", "0", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )
    return expr


def promql_metrics(expr: str) -> set[str]:
    """Metric names in one PromQL expression."""
    s = _strip(expr)
    toks = [(m.lastgroup, m.group()) for m in TOKEN.finditer(s) if m.lastgroup != "ws"]
    out = set()
    for i, (kind, text) in enumerate(toks):
        if kind != "ident":
            continue
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if nxt == "(":  # function or aggregation operator
            continue
        if text.lower() in KEYWORDS:
            continue
        out.add(text)
    return out


def _split_args(s: str) -> list[str]:
    """Top-level comma split of a function's argument text."""
    args, depth, cur, quote = [], 0, [], None
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    args.append("".join(cur))
    return [a.strip() for a in args]


def variable_metrics(q: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query."""
    q = q.strip()
    m = re.fullmatch(r"(label_values|query_result|metrics|label_names)\s*\((.*)\)", q, re.DOTALL)
    if not m:
        return promql_metrics(q)
    fn, inner = m.groups()
    if fn == "label_values":
        args = _split_args(inner)
        return promql_metrics(args[0]) if len(args) >= 2 else set()
    if fn == "query_result":
        return promql_metrics(inner)
    return set()  # metrics(regex), label_names(): no fixed metric


# ----------------------------------------------------------------- dashboard


def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def dashboard_queries(dash: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """(where, PromQL) pairs, and structural problems."""
    problems = []
    queries = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r}: expected an int >= 36")
    for key in ("uid", "title", "panels", "templating"):
        if not dash.get(key):
            problems.append(f"missing {key!r}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no datasource variable 'datasource' of type prometheus")
    ids = {}
    for p in walk_panels(dash.get("panels")):
        pid = p.get("id")
        title = p.get("title", "?")
        if pid in ids:
            problems.append(f"panel id {pid} used by {ids[pid]!r} and {title!r}")
        ids[pid] = title
        if "gridPos" not in p:
            problems.append(f"panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r}: no targets")
        for t in targets:
            where = f"panel {title!r} {t.get('refId', '?')}"
            if not t.get("expr"):
                problems.append(f"{where}: empty expr")
                continue
            dsref = t.get("datasource") or p.get("datasource") or {}
            if dsref.get("uid") != "${datasource}":
                problems.append(f"{where}: datasource is {dsref!r}, not ${{datasource}}")
            queries.append((where, t["expr"]))
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        queries.append((f"variable {name!r}", q or v.get("definition", "")))
    return queries, problems


# ----------------------------------------------------------------- exposition

SUFFIXES = {
    "counter": ("_total", "_created", ""),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
    "untyped": ("",),
}


def exposed_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                fam, typ = parts[2], parts[3].lower()
                for suf in SUFFIXES.get(typ, ("",)):
                    names.add(fam + suf)
            continue
        m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
        if m:
            names.add(m.group())
    return names


def documented_names(path: str) -> set[str] | None:
    """Families in the module doc table of gateway/src/metrics.rs, with the
    names they expose (histograms expanded), or None without the file."""
    try:
        src = open(path, encoding="utf-8").read()
    except OSError:
        return None
    names = set()
    for line in src.splitlines():
        if not line.startswith("//! | `gateway_"):
            continue
        cells = [c.strip() for c in line[3:].strip().strip("|").split("|")]
        fams = re.findall(r"`(gateway_[a-zA-Z0-9_]+)`", cells[0])
        typ = cells[1] if len(cells) > 1 else ""
        for f in fams:
            names.add(f)
            if typ == "histogram":
                names.update(f + s for s in ("_bucket", "_sum", "_count"))
    return names


def read_scrape(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read()
    if re.match(r"https?://", arg):
        req = urllib.request.Request(
            arg, headers={"Accept": "application/openmetrics-text, text/plain"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode("utf-8")
    with open(arg, encoding="utf-8") as f:
        return f.read()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s [-h] [--strict] [-v] [--source FILE] [DASHBOARD] SCRAPE",
    )
    ap.add_argument("files", nargs="+", metavar="[DASHBOARD] SCRAPE",
                    help="dashboard JSON (optional) and /metrics text: file, '-' (stdin) or http(s) URL")
    ap.add_argument("--dashboard", default=None, help=f"default: {DEFAULT_DASHBOARD}")
    ap.add_argument("--source", default=DEFAULT_SOURCE,
                    help="gateway/src/metrics.rs, to vet allowlisted names (skipped if absent)")
    ap.add_argument("--strict", action="store_true", help="ignore the allowlist")
    ap.add_argument("--allow", default=None, metavar="NAME[,NAME…]",
                    help="use only these allowlist entries (a scrape of a richer gateway "
                         "needs fewer excuses; tests/tests/deploy.rs)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every metric checked")
    a = ap.parse_args()
    if len(a.files) > 2 or (len(a.files) == 2 and a.dashboard):
        ap.error("expected [DASHBOARD] SCRAPE, with the dashboard given once")
    a.scrape = a.files[-1]
    a.dashboard = a.files[0] if len(a.files) == 2 else (a.dashboard or DEFAULT_DASHBOARD)

    try:
        with open(a.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        print(f"dashboard {a.dashboard}: {e}", file=sys.stderr)
        return 2
    try:
        text = read_scrape(a.scrape)
    except Exception as e:  # noqa: BLE001 - any fetch error is an input error
        print(f"scrape {a.scrape}: {e}", file=sys.stderr)
        return 2

    queries, problems = dashboard_queries(dash)
    if problems:
        for p in problems:
            print(f"dashboard: {p}", file=sys.stderr)
        return 2

    used: dict[str, list[str]] = {}
    for where, q in queries:
        for name in promql_metrics(q) if not where.startswith("variable") else variable_metrics(q):
            used.setdefault(name, []).append(where)
    if not used:
        print("dashboard: no metric names found", file=sys.stderr)
        return 2

    allow = None
    if a.allow is not None:
        allow = {n for n in a.allow.split(",") if n}
        unknown = sorted(allow - set(ALLOWLIST))
        if unknown:
            print(f"--allow: not in the allowlist: {', '.join(unknown)}", file=sys.stderr)
            return 2
    exposed = exposed_names(text)
    if not exposed:
        print(f"scrape {a.scrape}: no metrics in it", file=sys.stderr)
        return 2
    documented = documented_names(a.source)

    missing, allowed = [], []
    for name in sorted(used):
        if name in exposed:
            if a.verbose:
                print(f"ok       {name}")
            continue
        reason = None if a.strict or (allow is not None and name not in allow) else ALLOWLIST.get(name)
        if reason and (documented is None or name in documented):
            allowed.append((name, reason))
            if a.verbose:
                print(f"allowed  {name}: {reason}")
            continue
        if reason:
            reason = "allowlisted but not a family documented in " + a.source
        missing.append((name, reason or "not in the scrape", used[name][0]))

    stale = sorted(set(ALLOWLIST) - set(used))
    for name in stale:
        print(f"note: allowlisted {name} is not used by the dashboard", file=sys.stderr)
    present = len(used) - len(missing) - len(allowed)
    print(f"{len(used)} metric names in {len(queries)} queries: {present} in the scrape, "
          f"{len(allowed)} allowlisted, {len(missing)} missing")
    if missing:
        for name, why, where in missing:
            print(f"MISSING {name} ({why}; first used by {where})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
