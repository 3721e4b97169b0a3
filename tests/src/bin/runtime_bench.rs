//! Runtime benchmark: the real `gateway` binary with simulator devices
//! publishing into the frame bus, at fixed rates and at saturation, against
//! a raw baseline measured in the same run: the frame bus alone, fed
//! pre-encoded frames of the same shape by the same number of tasks.
//!
//! For each scenario it reports sustained samples/s (from
//! `gateway_samples_published_total`), CPU share of one core (utime+stime
//! from `/proc/<pid>/stat` over the window) and peak RSS (`VmHWM`).
//!
//! Usage: `runtime_bench <gateway-binary>`; env `BENCH_SECS` (default 15),
//! `BENCH_DIR` (default /var/tmp/gateway-runtime-bench). Run via
//! `scripts/bench.sh runtime`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use frame_bus::{BusConfig, FrameBus};
use proto::{DataFrame, FrameType, Message, Sample, Value};
use tests::{bench, proc_stats};

struct Scenario {
    name: &'static str,
    devices: usize,
    tags: usize,
    scan: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "1k tags/s",
        devices: 10,
        tags: 10,
        scan: "100ms",
    },
    Scenario {
        name: "10k tags/s",
        devices: 10,
        tags: 100,
        scan: "100ms",
    },
    Scenario {
        name: "100k tags/s",
        devices: 10,
        tags: 1000,
        scan: "100ms",
    },
    Scenario {
        name: "saturation",
        devices: 4,
        tags: 1000,
        scan: "1ms",
    },
];

fn write_config(dir: &Path, s: &Scenario, port: u16) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("devices"))?;
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "gateway_id = \"bench\"\ndata_dir = \"data\"\n[wal]\nmax_age = \"10m\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )?;
    let generators = ["sine", "ramp", "random_walk", "counter"];
    for d in 0..s.devices {
        let mut f = std::fs::File::create(dir.join(format!("devices/sim-{d}.toml")))?;
        writeln!(
            f,
            "name = \"sim-{d}\"\nprotocol = \"simulator\"\nendpoint = \"sim://{d}\"\nscan_interval = \"{}\"\n",
            s.scan
        )?;
        for t in 0..s.tags {
            writeln!(
                f,
                "[[tags]]\nname = \"t{t}\"\naddress = \"{}\"\ndata_type = \"Double\"\nperiod = \"10s\"\n",
                generators[t % generators.len()]
            )?;
        }
    }
    Ok(dir.join("gateway.toml"))
}

struct Measured {
    samples_per_sec: f64,
    cpu_share: f64,
    peak_rss_mib: f64,
}

fn run_scenario(bin: &Path, base: &Path, s: &Scenario, secs: u64) -> Result<Measured> {
    let dir = base.join(s.name.replace([' ', '/'], "_"));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = write_config(&dir, s, port)?;
    let gw = bench::Running::start(bin, &cfg, port)?;
    let pid = gw.pid;
    let result = (|| {
        std::thread::sleep(Duration::from_secs(2)); // warm-up
        let (s0, c0, t0) = (
            bench::metric_sum(port, "gateway_samples_published_total")?,
            proc_stats::cpu_ticks(pid)?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(secs));
        let (s1, c1, dt) = (
            bench::metric_sum(port, "gateway_samples_published_total")?,
            proc_stats::cpu_ticks(pid)?,
            t0.elapsed().as_secs_f64(),
        );
        eprintln!("{}: {s0} -> {s1} samples in {dt:.2} s", s.name);
        let hz = proc_stats::ticks_per_sec();
        Ok(Measured {
            samples_per_sec: (s1 - s0) / dt,
            cpu_share: (c1 - c0) as f64 / hz / dt,
            peak_rss_mib: proc_stats::memory_kib(pid, "VmHWM:")? as f64 / 1024.0,
        })
    })();
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The frame bus alone: `tasks` publishers of pre-encoded 1000-sample frames.
fn raw_baseline(base: &Path, tasks: usize, secs: u64) -> Result<f64> {
    let dir = base.join("raw-baseline");
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rate = rt.block_on(async {
        let bus = FrameBus::open(&dir, BusConfig::default())?;
        let frame = DataFrame {
            device_id: "sim-0".into(),
            samples: (0..1000)
                .map(|t| Sample {
                    tag: format!("t{t}"),
                    value: Some(Value::float(t as f64 * 0.37)),
                    raw_value: None,
                    quality: 0,
                    source_ts_ns: 1_700_000_000_000_000_000,
                    error_code: 0,
                })
                .collect(),
        }
        .encode_to_vec();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (bus, frame) = (bus.clone(), frame.clone());
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    bus.publish(FrameType::Data, frame.clone()).await?;
                    n += 1000;
                }
                Ok::<u64, frame_bus::BusError>(n)
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await??;
        }
        bus.close();
        Ok::<f64, anyhow::Error>(total as f64 / secs as f64)
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rate)
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("runtime_bench")?;
    let secs: u64 = bench::knob("BENCH_SECS", 15);
    let base = bench::dir("/var/tmp/gateway-runtime-bench");
    std::fs::create_dir_all(&base)?;
    println!("| scenario | devices × tags @ scan | samples/s | CPU (share of one core) | peak RSS (MiB) |");
    println!("|---|---|---:|---:|---:|");
    let mut saturation = 0.0;
    for s in SCENARIOS {
        let m = run_scenario(&bin, &base, s, secs)?;
        println!(
            "| {} | {} × {} @ {} | {:.0} | {:.1} % | {:.1} |",
            s.name,
            s.devices,
            s.tags,
            s.scan,
            m.samples_per_sec,
            m.cpu_share * 100.0,
            m.peak_rss_mib
        );
        if s.name == "saturation" {
            saturation = m.samples_per_sec;
        }
    }
    let raw = raw_baseline(&base, 4, secs.min(10))?;
    println!();
    println!("raw baseline (frame bus alone, 4 publishers, 1000-sample frames): {raw:.0} samples/s");
    println!("gateway at saturation / raw baseline: {:.2}", saturation / raw);
    Ok(())
}
