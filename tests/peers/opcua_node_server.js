#!/usr/bin/env node
// OPC-UA peer server for the gateway's integration tests, built on
// node-opcua-server 2.160 (a second implementation besides opcua_server.py).
//
// Usage:
//   NODE_PATH=<dir>/node_modules node opcua_node_server.js --port N --state FILE [--period 0.1]
//                                                          [--bench-items N]
//
// * listens on 127.0.0.1:N only; endpoint opc.tcp://127.0.0.1:N/gateway-test,
//   SecurityPolicy None only, anonymous login only;
// * prints exactly "READY <port>" on stdout once listening (diagnostics go to
//   stderr); SIGTERM or SIGINT stop it with exit code 0;
// * the state file (rewritten atomically: tmp + rename) holds
//   {"sessions_created": N, "sessions_active": M}: the server's
//   "create_session" events (every CreateSession, activated or not) and the
//   sessions created but not yet closed ("session_closed": CloseSession,
//   timeout or connection loss).
// The server certificate (unused with security None, but node-opcua always
// wants one) is created once in node-opcua's default PKI folder
// (~/.config/node-opcua-default-nodejs/PKI) and reused.
//
// Nodes (node-opcua's own namespace, index 1):
//   ns=1;s=Dynamic/Counter      UInt32, 1, 2, ... one step per period,
//                               sourceTimestamp = update time
//   ns=1;s=Types/Double         Double 3.141592653589793    \
//   ns=1;s=Types/Int32          Int32 -2000000000            | sourceTimestamp
//   ns=1;s=Types/String         String "héllo, wörld"        | 2026-01-02T03:04:05.123Z,
//   ns=1;s=Types/Boolean        Boolean true                 | serverTimestamp = read time
//   ns=1;s=Types/DoubleArray    Double[] [1.5, -2.25, 3.0]  /
//   ns=1;s=Control/Setpoint     Double 10.0, writable
//
// Benchmark items (--bench-items N, default 0: none): read-only Double variables
// ns=1;s=Bench/0 ... ns=1;s=Bench/<N-1> in the Objects folder "Bench" (the
// "Test" folder is unchanged).  Every --period seconds ALL of them get a new
// value, Bench/<i> = tick + i / 1e6 (tick = 1, 2, ...; 0 before the first
// update), sourceTimestamp = serverTimestamp = the time of that update
// (setValueFromSource in one synchronous pass).  The updates run on a fixed
// schedule (tick k due at start + k * period, re-armed with setTimeout; late
// ticks run at once, one after the other, unless the updater is more than
// max(1 s, period) behind, then the missed ticks are dropped); late or dropped
// ticks are reported on stderr (at most every 10 s).
// node-opcua SAMPLES a monitored item with a sampling interval > 0 (one shared
// setInterval per interval, which drifts later by the timer lateness, ~0.5 ms
// per tick here): with sampling interval = period a sample now and then sees
// two updates and one value is never reported (measured: 99.4 % of the
// changes at 0.1 s, 100 % over 20 s at 1 s).  Sampling interval 0 (event
// based: every setValueFromSource is reported) or period / 2 gets all.
"use strict";

const fs = require("fs");

// node-opcua prints its warnings with console.log: keep stdout for READY only.
console.log = (...args) => console.error(...args);

// node-opcua-server re-exports only its own classes; the types come from the
// packages it depends on (all installed with it).
const { OPCUAServer } = require("node-opcua-server");
const { DataType, Variant, VariantArrayType } = require("node-opcua-variant");
const { DataValue } = require("node-opcua-data-value");
const { StatusCodes } = require("node-opcua-status-code");
const { SecurityPolicy, MessageSecurityMode } = require("node-opcua-secure-channel");

function parseArgs(argv) {
    const args = { period: 0.1 };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i], value = argv[i + 1];
        if (!["--port", "--state", "--period", "--bench-items"].includes(key) || value === undefined) {
            console.error(
                `usage: opcua_node_server.js --port N --state FILE [--period SECONDS] [--bench-items N] (bad argument ${key})`,
            );
            process.exit(2);
        }
        args[key === "--bench-items" ? "benchItems" : key.slice(2)] = key === "--state" ? value : Number(value);
    }
    args.benchItems = args.benchItems ?? 0;
    if (!Number.isInteger(args.port) || !args.state || !(args.period > 0) || !(Number.isInteger(args.benchItems) && args.benchItems >= 0)) {
        console.error(
            "opcua_node_server.js: --port N and --state FILE are required, --period must be > 0, --bench-items an integer >= 0",
        );
        process.exit(2);
    }
    return args;
}

const FIXED_TS = new Date("2026-01-02T03:04:05.123Z");
const FIXED = [
    ["Types/Double", DataType.Double, 3.141592653589793],
    ["Types/Int32", DataType.Int32, -2000000000],
    ["Types/String", DataType.String, "héllo, wörld"],
    ["Types/Boolean", DataType.Boolean, true],
    ["Types/DoubleArray", DataType.Double, [1.5, -2.25, 3.0]],
];

// The benchmark items: create them, then update all of them every period.
function startBench(addressSpace, ns, count, period) {
    const folder = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Bench", nodeId: "s=Bench" });
    // "Frugal" skips installing each child as a JavaScript property of the
    // folder, which walks all children on every add (10 000 nodes: ~40 s
    // instead of ~1 s).  Nothing visible over OPC UA depends on it.
    const frugal = addressSpace.isFrugal;
    addressSpace.isFrugal = true;
    const nodes = [];
    for (let i = 0; i < count; i++) {
        const id = `Bench/${i}`;
        nodes.push(ns.addVariable({
            componentOf: folder, browseName: id, nodeId: `s=${id}`, dataType: DataType.Double,
            accessLevel: "CurrentRead", userAccessLevel: "CurrentRead",
        }));
    }
    addressSpace.isFrugal = frugal;
    const update = (tick) => {
        const now = new Date();
        for (let i = 0; i < count; i++) {
            nodes[i].setValueFromSource(new Variant({ dataType: DataType.Double, value: tick + i / 1e6 }), StatusCodes.Good, now);
        }
    };
    update(0);

    const periodMs = period * 1000;
    const maxBehind = Math.max(1000, periodMs);
    let tick = 0, nextDue = Date.now(), timer = null;
    let late = 0, dropped = 0, worst = 0, reported = Date.now();
    const run = () => {
        tick += 1;
        const started = Date.now();
        update(tick);
        const finished = Date.now();
        worst = Math.max(worst, finished - started);
        if (started - nextDue > periodMs) late += 1;
        if (finished - nextDue > maxBehind) { // too far behind: skip the missed ticks
            const missed = Math.floor((finished - nextDue) / periodMs);
            dropped += missed;
            nextDue += missed * periodMs;
        }
        if ((late || dropped) && finished - reported >= 10000) {
            console.error(`opcua_node_server.js: bench, last ${((finished - reported) / 1000).toFixed(0)} s: ${late} ticks started `
                + `more than one period late, ${dropped} ticks dropped (over ${maxBehind / 1000} s behind), `
                + `longest update pass ${(worst / 1000).toFixed(3)} s`);
            late = dropped = 0;
            reported = finished;
        }
        if (finished - reported >= 10000) {
            worst = 0;
            reported = finished;
        }
        nextDue += periodMs;
        timer = setTimeout(run, Math.max(0, nextDue - Date.now()));
    };
    nextDue += periodMs;
    timer = setTimeout(run, Math.max(0, nextDue - Date.now()));
    return { stop: () => clearTimeout(timer) };
}

async function main() {
    const args = parseArgs(process.argv.slice(2));
    const state = { sessions_created: 0, sessions_active: 0 };
    const saveState = () => {
        const tmp = `${args.state}.tmp${process.pid}`;
        fs.writeFileSync(tmp, JSON.stringify(state));
        fs.renameSync(tmp, args.state);
    };
    saveState();

    const server = new OPCUAServer({
        port: args.port,
        host: "127.0.0.1", // bind address
        hostname: "127.0.0.1", // host in the endpoint URLs
        resourcePath: "/gateway-test",
        securityPolicies: [SecurityPolicy.None],
        securityModes: [MessageSecurityMode.None],
        allowAnonymous: true,
        serverInfo: { applicationUri: "urn:gateway-rust:test-node-server" },
    });
    await server.initialize();

    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.getOwnNamespace(); // index 1
    const folder = ns.addFolder(addressSpace.rootFolder.objects, { browseName: "Test" });
    const add = (id, dataType, extra) =>
        ns.addVariable({ componentOf: folder, browseName: id, nodeId: `s=${id}`, dataType, ...extra });

    for (const [id, dataType, value] of FIXED) {
        const arrayType = Array.isArray(value) ? VariantArrayType.Array : VariantArrayType.Scalar;
        const variant = new Variant({ dataType, arrayType, value });
        add(id, dataType, {
            valueRank: Array.isArray(value) ? 1 : -1,
            minimumSamplingInterval: 100, // node-opcua warns about a getter without one
            // A getter, so that serverTimestamp is the time of the read.
            value: {
                timestamped_get: () =>
                    new DataValue({ value: variant, statusCode: StatusCodes.Good, sourceTimestamp: FIXED_TS, serverTimestamp: new Date() }),
            },
        });
    }
    const setpoint = add("Control/Setpoint", DataType.Double, {
        accessLevel: "CurrentRead | CurrentWrite",
        userAccessLevel: "CurrentRead | CurrentWrite",
    });
    // Set after creation: an initial `value` in addVariable leaves the
    // serverTimestamp unset, which reads back as DateTime max (year 9999).
    setpoint.setValueFromSource(new Variant({ dataType: DataType.Double, value: 10.0 }), StatusCodes.Good, new Date());

    const counterNode = add("Dynamic/Counter", DataType.UInt32, {});
    let counter = 1;
    const update = () => counterNode.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: counter }), StatusCodes.Good, new Date());
    update();
    const timer = setInterval(() => {
        counter = (counter + 1) >>> 0;
        update();
    }, args.period * 1000);

    const bench = args.benchItems > 0 ? startBench(addressSpace, ns, args.benchItems, args.period) : null;

    server.on("create_session", () => {
        state.sessions_created += 1;
        state.sessions_active += 1;
        saveState();
    });
    server.on("session_closed", () => {
        state.sessions_active -= 1;
        saveState();
    });

    await server.start();
    process.stdout.write(`READY ${args.port}\n`);

    let stopping = false;
    const stop = async () => {
        if (stopping) return;
        stopping = true;
        clearInterval(timer);
        if (bench) bench.stop();
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    console.error("opcua_node_server.js:", err);
    process.exit(1);
});
