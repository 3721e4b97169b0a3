//! The faults. Each scenario builds a [`Topology`], runs the load, injects
//! its fault, drains, and turns the [`checker`](super::checker) counts and
//! its own checks into a [`Report`]. Peers missing from the machine make a
//! scenario panic (loudly, as a test); a machine that cannot host one
//! (no tmpfs) makes it [`Verdict::NotRun`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checker::{check, Observed, STREAM_DEVICE, STREAM_TAG};
use super::topology::{rss_kib, Setup, Topology, LIMIT};
use super::{Opts, Report, Verdict};
use crate::harness::{device_status, wal};

/// A scenario: its name (the table's first column) and its function.
pub type Scenario = (&'static str, fn(&Opts) -> Report);

/// Every scenario, in the order of `docs/reliability.md`.
pub fn all() -> Vec<Scenario> {
    vec![
        ("sigkill", sigkill),
        ("sigterm", sigterm),
        ("influx_down", influx_down),
        ("postgres_down", postgres_down),
        ("broker_restart", broker_restart),
        ("opcua_restart", opcua_restart),
        ("modbus_unplug", modbus_unplug),
        ("disk_full", disk_full),
        ("wal_corruption", wal_corruption),
        ("clock_jump", clock_jump),
        ("slow_sink", slow_sink),
    ]
}

/// How long a restarted peer (broker, OPC UA server) stays away.
const RESTART_PAUSE: Duration = Duration::from_secs(5);

/// The report of a drained topology: checker counts, plus the scenario's
/// own failures and notes.
fn report(
    name: &'static str,
    rounds: u32,
    t: &Topology,
    obs: &Observed,
    mut failures: Vec<String>,
    mut notes: Vec<String>,
) -> Report {
    let counts = check(obs);
    if let Verdict::Fail(why) = counts.verdict() {
        failures.insert(0, why);
    }
    if let Err(e) = self_test(obs, &counts) {
        failures.push(e);
    }
    notes.insert(
        0,
        format!(
            "stream: {} numbers confirmed by the broker; bus: {} frames archived",
            counts.stream_confirmed,
            obs.archive.len()
        ),
    );
    let verdict = if failures.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(failures.join("; "))
    };
    Report {
        scenario: name,
        rounds,
        counts,
        max_lag: t.max_lag,
        recovery: t.recovery,
        rss_peak_kib: t.rss_peak_kib,
        notes,
        verdict,
    }
}

/// The checker must be able to fail: on this scenario's own data, one
/// stored stream point is removed and another one stored again under a
/// shifted timestamp; the checker must count exactly one more lost, one
/// more duplicated and one unexpected point, and fail.
fn self_test(obs: &Observed, counts: &super::Counts) -> Result<(), String> {
    let stream = |p: &&super::checker::Point| p.device == STREAM_DEVICE && p.tag == STREAM_TAG;
    let mut points = obs.influx.iter().filter(stream);
    let (Some(gone), Some(twice)) = (points.next(), points.next()) else {
        return Err("checker self-test: fewer than two stream points stored".into());
    };
    let mut again = twice.clone();
    again.ts_ns += 1;
    let tampered = Observed {
        influx: obs
            .influx
            .iter()
            .filter(|p| *p != gone)
            .cloned()
            .chain(std::iter::once(again))
            .collect(),
        archive: obs.archive.clone(),
        ..obs.clone()
    };
    let c = check(&tampered);
    let caught = c.lost == counts.lost + 1
        && c.duplicated == counts.duplicated + 1
        && c.unexpected == counts.unexpected + 1
        && c.verdict() != Verdict::Pass;
    if caught {
        Ok(())
    } else {
        Err(format!(
            "checker self-test: a dropped and a duplicated point went unnoticed ({c:?})"
        ))
    }
}

/// The topology of scenario `name` with the gateway started and the load
/// run for `steady`; `Err` is the scenario's "not run" report.
fn started(name: &'static str, o: &Opts, setup: Setup) -> Result<Topology, Box<Report>> {
    let mut t = Topology::new(o, setup).map_err(|why| Box::new(Report::not_run(name, why)))?;
    t.start_gateway();
    t.run_for(o.steady);
    Ok(t)
}

/// SIGKILL at random moments under load, `kill_rounds` times; each new
/// process starts at once and must catch up.
pub fn sigkill(o: &Opts) -> Report {
    let mut t = match started("sigkill", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    for _ in 0..o.kill_rounds {
        t.run_for(Duration::from_millis(fastrand::u64(300..3000)));
        let at = Instant::now();
        t.kill_gateway();
        t.start_gateway();
        t.wait_caught_up(at);
    }
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    report("sigkill", o.kill_rounds, &t, &obs, Vec::new(), Vec::new())
}

/// Clean restarts (SIGTERM, exit 0) under load.
pub fn sigterm(o: &Opts) -> Report {
    let mut t = match started("sigterm", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    for _ in 0..o.term_rounds {
        t.run_for(Duration::from_millis(fastrand::u64(1000..3000)));
        let at = Instant::now();
        if let Err(e) = t.stop_gateway() {
            failures.push(e);
        }
        t.start_gateway();
        t.wait_caught_up(at);
    }
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    report("sigterm", o.term_rounds, &t, &obs, failures, Vec::new())
}

/// InfluxDB killed for `outage` under load, then back.
pub fn influx_down(o: &Opts) -> Report {
    let mut t = match started("influx_down", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    t.influx.stop();
    t.run_for(o.outage);
    let lag_at_end = t.sample();
    t.influx.restart();
    let at = Instant::now();
    t.wait_caught_up(at);
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    let mut failures = Vec::new();
    if lag_at_end == 0 {
        failures.push("no backlog built up while InfluxDB was down".into());
    }
    let notes = vec![format!(
        "backlog when InfluxDB came back: {lag_at_end} frames (all consumers)"
    )];
    report("influx_down", 1, &t, &obs, failures, notes)
}

/// The PostgreSQL server stopped for `outage` under load (alerts fire
/// meanwhile), then started again.
pub fn postgres_down(o: &Opts) -> Report {
    let mut t = match started(
        "postgres_down",
        o,
        Setup {
            own_postgres: true,
            ..Setup::default()
        },
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if let Some(c) = t.cluster.as_mut() {
        c.stop();
    }
    t.run_for(o.outage);
    if let Some(c) = t.cluster.as_mut() {
        c.start();
    }
    let at = Instant::now();
    t.wait_caught_up(at);
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    report("postgres_down", 1, &t, &obs, Vec::new(), Vec::new())
}

/// Mosquitto stopped for a few seconds and started again (it keeps its
/// sessions): the source, the northbound sink and the publisher reconnect.
pub fn broker_restart(o: &Opts) -> Report {
    let mut t = match started("broker_restart", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    for _ in 0..2 {
        t.broker.stop();
        t.run_for(RESTART_PAUSE);
        t.broker.restart();
        let at = Instant::now();
        t.wait_caught_up(at);
        t.run_for(o.steady);
    }
    let failures_before = t.load.as_ref().map_or(0, |l| l.failures());
    let obs = t.drain_and_collect(BTreeSet::new());
    let notes = vec![format!(
        "publisher chunks refused while the broker was away and published again: {failures_before}"
    )];
    report("broker_restart", 2, &t, &obs, Vec::new(), notes)
}

/// The OPC UA server killed (SIGKILL) and restarted.
pub fn opcua_restart(o: &Opts) -> Report {
    let mut t = match started("opcua_restart", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    for _ in 0..2 {
        t.opcua.kill();
        t.run_for(RESTART_PAUSE);
        t.opcua.restart();
        let at = Instant::now();
        if !wait_online(&mut t, "ua") {
            failures.push("the OPC UA device did not come back Online".into());
        }
        t.recovery = Some(t.recovery.map_or(at.elapsed(), |r| r.max(at.elapsed())));
        t.run_for(o.steady);
    }
    let obs = t.drain_and_collect(BTreeSet::new());
    let counters = samples_of(&obs, "ua", "counter");
    if counters == 0 {
        failures.push("no OPC UA sample on the bus".into());
    }
    let notes = vec![format!("OPC UA counter samples on the bus: {counters}")];
    report("opcua_restart", 2, &t, &obs, failures, notes)
}

/// The Modbus device unplugged (server stopped) for `outage`, then back.
pub fn modbus_unplug(o: &Opts) -> Report {
    let mut t = match started("modbus_unplug", o, Setup::default()) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    t.unplug_modbus();
    t.run_for(o.outage);
    let offline = device_status(t.gw(), "plc")["status"].clone();
    if offline == "Online" {
        failures.push("the unplugged Modbus device is still Online".into());
    }
    t.plug_modbus();
    let at = Instant::now();
    if !wait_online(&mut t, "plc") {
        failures.push("the Modbus device did not come back Online".into());
    }
    t.recovery = Some(at.elapsed());
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    let bad = bad_samples_of(&obs, "plc");
    if bad == 0 {
        failures.push("no BAD sample while the device was unplugged".into());
    }
    let notes = vec![format!(
        "status while unplugged: {offline}; BAD samples of the unplugged device: {bad}"
    )];
    report("modbus_unplug", 1, &t, &obs, failures, notes)
}

/// The data directory on a 512 MiB tmpfs, filled (all but 16 MiB) during
/// ingest for `outage / 2`, then freed. Policy: backpressure — the bus
/// refuses publishes below `min_free_bytes` (32 MiB here), the MQTT source
/// does not acknowledge what it could not store (the broker keeps it), the
/// pollers' refused samples are counted; nothing stored is lost.
pub fn disk_full(o: &Opts) -> Report {
    let mut t = match started(
        "disk_full",
        o,
        Setup {
            tmpfs: Some(512 << 20),
            wal: "min_free_bytes = \"32MiB\"".into(),
            ..Setup::default()
        },
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    let filler = t.demo.data().join("filler");
    let free = available(&t.demo.data());
    if let Err(e) = fill(&filler, free.saturating_sub(16 << 20)) {
        failures.push(format!("could not fill the disk: {e}"));
    }
    let full_for = o.outage / 2;
    let t0 = Instant::now();
    let mut healthy = true;
    while t0.elapsed() < full_for {
        t.sample();
        healthy &= t.gw().get("/healthz").is_some_and(|(s, _)| s == 200);
        std::thread::sleep(Duration::from_millis(250));
    }
    let rejections = t
        .gw()
        .metric_sum("gateway_wal_disk_full_rejections_total")
        .unwrap_or(0.0) as u64;
    let free_when_full = available(&t.demo.data());
    let _ = std::fs::remove_file(&filler);
    let at = Instant::now();
    t.wait_caught_up(at);
    if !healthy {
        failures.push("/healthz did not answer 200 while the disk was full".into());
    }
    if rejections == 0 {
        failures.push("the bus never refused a publish: the disk was not full".into());
    }
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    let notes = vec![format!(
        "free space while full: {:.1} MiB; publishes refused: {rejections}; the gateway answered /healthz throughout: {healthy}",
        free_when_full as f64 / 1048576.0
    )];
    report("disk_full", 1, &t, &obs, failures, notes)
}

/// Bytes flipped in the bus's SST files while the gateway is stopped
/// (InfluxDB was down, so the frames are still owed to it). The gateway
/// must start, report the corrupt frames with their seqs, and deliver the
/// rest. Samples of corrupt frames are destroyed, not lost by the gateway:
/// they are taken out of what InfluxDB must hold and counted.
pub fn wal_corruption(o: &Opts) -> Report {
    // InfluxDB is down from the start: every frame stays owed to it.
    let mut t = match Topology::new(o, Setup::default()) {
        Ok(t) => t,
        Err(why) => return Report::not_run("wal_corruption", why),
    };
    let mut failures = Vec::new();
    t.start_gateway();
    t.influx.stop();
    t.run_for(o.steady);
    // Hold the stream while the gateway is down: what the broker queues
    // meanwhile would be stored after the corruption, out of its reach.
    t.hold = true;
    if let Some(l) = &t.load {
        l.pause(true);
    }
    t.stop_gateway().unwrap_or_else(|e| panic!("{e}"));
    // A second open flushes the recovered RocksDB log into an SST file.
    t.start_gateway();
    t.stop_gateway().unwrap_or_else(|e| panic!("{e}"));
    t.hold = false;
    let wal_dir = t.demo.wal();
    let flipped = match corrupt_largest_sst(&wal_dir) {
        Ok(f) => f,
        Err(e) => {
            failures.push(e);
            Vec::new()
        }
    };
    let corrupt = corrupt_seqs(&wal_dir);
    if corrupt.is_empty() {
        failures.push(format!("flipping {flipped:?} made no frame unreadable"));
    }
    t.influx.restart();
    let at = Instant::now();
    t.start_gateway();
    t.wait_caught_up(at);
    let metric = t
        .gw()
        .metric_sum("gateway_wal_corrupt_frames_total")
        .unwrap_or(0.0) as u64;
    let mut obs = t.drain_and_collect(corrupt.clone());
    let log = t.log_text();
    let logged = corrupt.iter().next().is_some_and(|s| {
        log.lines()
            .any(|l| l.contains("corrupt") && l.contains(&s.to_string()))
    });
    if !logged {
        failures.push("no log line names the corrupt seqs".into());
    }
    if metric == 0 {
        failures.push("gateway_wal_corrupt_frames_total stayed 0".into());
    }
    // What the corruption destroyed is not owed to InfluxDB.
    let destroyed: Vec<u64> = obs
        .archive
        .iter()
        .filter(|f| f["seq"].as_u64().is_some_and(|s| corrupt.contains(&s)))
        .flat_map(|f| {
            let dev = f["device"].as_str().unwrap_or_default().to_string();
            f["samples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(move |_| dev == STREAM_DEVICE)
                .filter(|s| s["tag"] == STREAM_TAG)
                .filter_map(|s| s["value"].as_u64())
        })
        .collect();
    let destroyed_set: BTreeSet<u64> = destroyed.iter().copied().collect();
    let samples_destroyed: usize = obs
        .archive
        .iter()
        .filter(|f| f["seq"].as_u64().is_some_and(|s| corrupt.contains(&s)))
        .map(|f| f["samples"].as_array().map_or(0, Vec::len))
        .sum();
    obs.archive
        .retain(|f| !f["seq"].as_u64().is_some_and(|s| corrupt.contains(&s)));
    obs.stream.retain(|(n, _)| !destroyed_set.contains(n));
    let notes = vec![format!(
        "bytes flipped at {flipped:?}; {} frames reported corrupt (seqs {}..={}), metric {metric}; \
         {samples_destroyed} samples destroyed on disk, excluded from what InfluxDB must hold",
        corrupt.len(),
        corrupt.first().copied().unwrap_or(0),
        corrupt.last().copied().unwrap_or(0),
    )];
    report("wal_corruption", 1, &t, &obs, failures, notes)
}

/// Source timestamps that jump: the stream runs on time, then one hour
/// back, then a day ahead. Every sample must be stored under its own
/// timestamp; a rule on the stream (`n` above a threshold crossed while
/// the clock is back) fires exactly once.
pub fn clock_jump(o: &Opts) -> Report {
    let span = u64::from(o.rate) * o.steady.as_secs().max(1);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let clock = Arc::new(move |n: u64| {
        if n < span {
            base + n
        } else if n < 2 * span {
            base + n - 3_600_000
        } else {
            base + n + 86_400_000
        }
    });
    let threshold = span + span / 2;
    let rules = format!(
        "\n[[alert_rules]]\nname = \"n_high\"\ndevice = \"seq\"\ntag = \"n\"\nop = \"GT\"\n\
         threshold_value = {threshold}.0\nlevel = \"WARNING\"\neval_interval = \"1s\"\n\
         cooldown_duration = \"0s\"\n"
    );
    let mut t = match started(
        "clock_jump",
        o,
        Setup {
            clock: Some(clock),
            rules,
            ..Setup::default()
        },
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    let t0 = Instant::now();
    while t.load.as_ref().map_or(0, |l| l.count()) < 3 * span && t0.elapsed() < LIMIT {
        t.run_for(Duration::from_millis(500));
    }
    let obs = t.drain_and_collect(BTreeSet::new());
    let fired: Vec<&serde_json::Value> = obs
        .archive
        .iter()
        .filter(|f| f["kind"] == "ALERT_FIRED" && f["rule_id"].as_str().is_some_and(|r| r.contains("n_high")))
        .collect();
    if fired.len() != 1 {
        failures.push(format!("rule n_high fired {} times, expected once", fired.len()));
    }
    let notes = vec![format!(
        "{span} numbers on time, {span} one hour back, the rest a day ahead; n_high fired {} time(s)",
        fired.len()
    )];
    report("clock_jump", 1, &t, &obs, failures, notes)
}

/// InfluxDB behind a proxy that holds every request chunk 2 s for
/// `outage`: backpressure, lag, and memory that stays flat (the backlog is
/// on disk, in the WAL).
pub fn slow_sink(o: &Opts) -> Report {
    let mut t = match started(
        "slow_sink",
        o,
        Setup {
            slow_influx: true,
            ..Setup::default()
        },
    ) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut failures = Vec::new();
    if let Some(p) = &t.proxy {
        p.set_delay(Duration::from_secs(2));
    }
    let pid = t.gw().child.id();
    let t0 = Instant::now();
    let mut rss: Vec<(Duration, u64, u64)> = Vec::new();
    while t0.elapsed() < o.outage {
        let lag = t.sample();
        rss.push((t0.elapsed(), rss_kib(pid), lag));
        std::thread::sleep(Duration::from_millis(500));
    }
    if let Some(p) = &t.proxy {
        p.set_delay(Duration::ZERO);
    }
    let at = Instant::now();
    t.wait_caught_up(at);
    t.run_for(o.steady);
    let obs = t.drain_and_collect(BTreeSet::new());
    // Memory: the last quarter of the slow phase against its first quarter.
    let q = (rss.len() / 4).max(1);
    let early = rss.iter().take(q).map(|r| r.1).max().unwrap_or(0);
    let late = rss.iter().rev().take(q).map(|r| r.1).max().unwrap_or(0);
    let lag_early = rss.iter().take(q).map(|r| r.2).max().unwrap_or(0);
    let lag_late = rss.iter().rev().take(q).map(|r| r.2).max().unwrap_or(0);
    if lag_late <= lag_early {
        failures.push(format!(
            "no backpressure: lag {lag_early} → {lag_late} frames while the sink was slow"
        ));
    }
    // The backlog grows without bound; memory must not follow it.
    if late > early + 64 * 1024 {
        failures.push(format!(
            "RSS grew from {early} KiB to {late} KiB with the backlog"
        ));
    }
    let notes = vec![format!(
        "while slow: lag {lag_early} → {lag_late} frames, RSS {:.1} → {:.1} MiB",
        early as f64 / 1024.0,
        late as f64 / 1024.0
    )];
    report("slow_sink", 1, &t, &obs, failures, notes)
}

fn wait_online(t: &mut Topology, device: &str) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < LIMIT {
        t.sample();
        if device_status(t.gw(), device)["status"] == "Online" {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn samples_of(obs: &Observed, device: &str, tag: &str) -> usize {
    crate::harness::tag_samples(&obs.archive, device, tag).len()
}

fn bad_samples_of(obs: &Observed, device: &str) -> usize {
    obs.archive
        .iter()
        .filter(|f| f["type"] == "DATA" && f["device"] == device)
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["quality"] == "BAD")
        .count()
}

/// Free bytes of the filesystem holding `dir`.
fn available(dir: &Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs(3) with a valid C string and a zeroed out-struct.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

/// Writes `bytes` of zeros to `path` (stops quietly at ENOSPC).
fn fill(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if let Err(e) = f.write_all(&chunk[..n]) {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                break;
            }
            return Err(e);
        }
        left -= n as u64;
    }
    f.sync_all()
}

/// Flips one byte at 30 % of the largest SST file: a data block (the
/// index and footer are at the end); the frames of the other blocks must
/// be delivered. The offset flipped.
fn corrupt_largest_sst(wal_dir: &Path) -> Result<Vec<(PathBuf, u64)>, String> {
    let sst = std::fs::read_dir(wal_dir)
        .map_err(|e| format!("{}: {e}", wal_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .ok_or_else(|| format!("no SST file in {}", wal_dir.display()))?;
    let mut bytes = std::fs::read(&sst).map_err(|e| format!("{}: {e}", sst.display()))?;
    let len = bytes.len() as u64;
    let mut flipped = Vec::new();
    let at = len * 30 / 100;
    bytes[at as usize] ^= 0xFF;
    flipped.push((PathBuf::from(sst.file_name().unwrap_or_default()), at));
    std::fs::write(&sst, bytes).map_err(|e| format!("{}: {e}", sst.display()))?;
    Ok(flipped)
}

/// Seqs `gateway wal tail` reports corrupt.
fn corrupt_seqs(wal_dir: &Path) -> BTreeSet<u64> {
    let out = wal(wal_dir, &["tail", "--from", "0", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("corrupt").is_some())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}
