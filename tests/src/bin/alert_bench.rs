//! Alert engine benchmark: the real `gateway` binary with simulator devices
//! at a fixed sample rate, without alert rules (the baseline, same run) and
//! with threshold rules on every tag or expression rules, none of which
//! fires. Reports, per scenario: samples/s published, rule evaluations/s,
//! the engine's lag at the end of the window (frames it had not yet read),
//! CPU share of one core and peak RSS; and the CPU ratio against the
//! no-rule baseline.
//!
//! Usage: `alert_bench <gateway-binary>`; env `BENCH_SECS` (default 15),
//! `BENCH_DIR` (default /var/tmp/gateway-alert-bench). Run via
//! `scripts/bench.sh alerts`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{bench, proc_stats};

#[derive(Clone, Copy)]
enum Rules {
    None,
    /// One `GT` rule with a 5 s hold on every tag.
    PerTag,
    /// One expression rule over three tags per 10 tags.
    Expressions,
}

struct Scenario {
    name: &'static str,
    devices: usize,
    tags: usize,
    scan: &'static str,
    rules: Rules,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "100k samples/s, no rules (baseline)",
        devices: 10,
        tags: 1000,
        scan: "100ms",
        rules: Rules::None,
    },
    Scenario {
        name: "100k samples/s, 10 000 tag rules",
        devices: 10,
        tags: 1000,
        scan: "100ms",
        rules: Rules::PerTag,
    },
    Scenario {
        name: "100k samples/s, 1 000 expression rules",
        devices: 10,
        tags: 1000,
        scan: "100ms",
        rules: Rules::Expressions,
    },
];

fn write_config(dir: &Path, s: &Scenario, port: u16) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("devices"))?;
    let mut g = std::fs::File::create(dir.join("gateway.toml"))?;
    writeln!(
        g,
        "gateway_id = \"bench\"\ndata_dir = \"data\"\n[wal]\nmax_age = \"10m\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
         [alerts]\nstale_after = \"0s\"\n"
    )?;
    for d in 0..s.devices {
        let mut f = std::fs::File::create(dir.join(format!("devices/sim-{d}.toml")))?;
        writeln!(
            f,
            "name = \"sim-{d}\"\nprotocol = \"simulator\"\nendpoint = \"sim://{d}\"\nscan_interval = \"{}\"\n",
            s.scan
        )?;
        for t in 0..s.tags {
            // Sine between 0 and 100: the rules' thresholds are never reached.
            writeln!(
                f,
                "[[tags]]\nname = \"t{t}\"\naddress = \"sine\"\ndata_type = \"Double\"\nbase = 50.0\namplitude = 50.0\nperiod = \"10s\"\n"
            )?;
        }
        match s.rules {
            Rules::None => {}
            Rules::PerTag => {
                for t in 0..s.tags {
                    writeln!(
                        g,
                        "[[alert_rules]]\nname = \"r{d}-{t}\"\ndevice = \"sim-{d}\"\ntag = \"t{t}\"\nop = \"GT\"\n\
                         threshold_value = 1000.0\nlevel = \"WARNING\"\neval_interval = \"1s\"\neval_duration = \"5s\"\n"
                    )?;
                }
            }
            Rules::Expressions => {
                for t in (0..s.tags).step_by(10) {
                    writeln!(
                        g,
                        "[[alert_rules]]\nname = \"x{d}-{t}\"\ndevice = \"sim-{d}\"\n\
                         condition_expression = \"t{t} - t{} > 500 and abs(t{}) < 1000\"\nlevel = \"WARNING\"\neval_interval = \"1s\"\n",
                        t + 1,
                        t + 2
                    )?;
                }
            }
        }
    }
    Ok(dir.join("gateway.toml"))
}

struct Measured {
    samples_per_sec: f64,
    evaluations_per_sec: f64,
    lag_frames: f64,
    cpu_share: f64,
    peak_rss_mib: f64,
}

fn run_scenario(bin: &Path, base: &Path, s: &Scenario, secs: u64) -> Result<Measured> {
    let dir = base.join(format!("scenario-{}", s.name.len()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = write_config(&dir, s, port)?;
    let gw = bench::Running::start(bin, &cfg, port)?;
    let pid = gw.pid;
    let result = (|| {
        std::thread::sleep(Duration::from_secs(3)); // warm-up
        let (s0, e0, c0, t0) = (
            gw.metric("gateway_samples_published_total")?,
            gw.metric("gateway_alert_evaluations_total")?,
            proc_stats::cpu_ticks(pid)?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(secs));
        let (s1, e1, c1, dt) = (
            gw.metric("gateway_samples_published_total")?,
            gw.metric("gateway_alert_evaluations_total")?,
            proc_stats::cpu_ticks(pid)?,
            t0.elapsed().as_secs_f64(),
        );
        let lag = gw.metric("gateway_consumer_lag_frames")?;
        let fired = gw.metric("gateway_alerts_fired_total")?;
        anyhow::ensure!(
            fired == 0.0,
            "{}: {fired} alerts fired; the rules must stay quiet",
            s.name
        );
        let hz = proc_stats::ticks_per_sec();
        Ok(Measured {
            samples_per_sec: (s1 - s0) / dt,
            evaluations_per_sec: (e1 - e0) / dt,
            lag_frames: lag,
            cpu_share: (c1 - c0) as f64 / hz / dt,
            peak_rss_mib: proc_stats::memory_kib(pid, "VmHWM:")? as f64 / 1024.0,
        })
    })();
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("alert_bench")?;
    let secs: u64 = bench::knob("BENCH_SECS", 15);
    let base = bench::dir("/var/tmp/gateway-alert-bench");
    std::fs::create_dir_all(&base)?;
    println!("| scenario | samples/s | evaluations/s | engine lag at end (frames) | CPU (share of one core) | CPU / baseline | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut baseline_cpu = None;
    for s in SCENARIOS {
        let m = run_scenario(&bin, &base, s, secs)?;
        let base_cpu = *baseline_cpu.get_or_insert(m.cpu_share);
        println!(
            "| {} ({} × {} @ {}) | {:.0} | {:.0} | {:.0} | {:.1} % | {:.2} | {:.1} |",
            s.name,
            s.devices,
            s.tags,
            s.scan,
            m.samples_per_sec,
            m.evaluations_per_sec,
            m.lag_frames + 0.0,
            m.cpu_share * 100.0,
            m.cpu_share / base_cpu,
            m.peak_rss_mib
        );
    }
    Ok(())
}
