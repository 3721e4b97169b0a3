//! Modbus benchmark: the real `gateway` binary polling a farm of fast
//! in-process Modbus TCP servers (tokio-modbus, one listener per device,
//! 1000 holding registers each), against a raw baseline measured in the
//! same run: bare tokio-modbus clients reading the same registers with no
//! decoding and no bus.
//!
//! Scenarios: 100 devices × 1000 uint16 tags with coalescing (8 reads of
//! ≤ 125 registers per poll) and with `one_request_per_tag`, at a scan
//! rate above what the machine sustains (saturation), and 10 devices ×
//! 1000 tags at 1 s (the CPU cost of a typical plant). Reports tags/s
//! into the bus (`gateway_samples_published_total`), requests per poll,
//! the gateway's CPU (share of one core) and peak RSS.
//!
//! Usage: `modbus_bench <gateway-binary>`; env `BENCH_SECS` (default 15),
//! `BENCH_DIR` (default /var/tmp/gateway-modbus-bench). Run via
//! `scripts/bench.sh modbus`.

use std::future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::{bench, proc_stats};
use tokio_modbus::prelude::*;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};

const REGISTERS: u16 = 1000;

/// Answers FC3 for addresses 0..1000 with `address` as the value.
struct Registers;

impl tokio_modbus::server::Service for Registers {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        future::ready(match req {
            Request::ReadHoldingRegisters(a, n) if u32::from(a) + u32::from(n) <= u32::from(REGISTERS) => {
                Ok(Response::ReadHoldingRegisters((a..a + n).collect()))
            }
            Request::ReadHoldingRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Starts `n` servers on one worker thread; returns their addresses.
fn device_farm(n: usize) -> Result<Vec<SocketAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let service = Arc::new(Registers);
            let mut addrs = Vec::new();
            for _ in 0..n {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addrs.push(listener.local_addr().expect("addr"));
                let service = service.clone();
                tokio::spawn(async move {
                    let server = Server::new(listener);
                    let new_service = move |_| Ok(Some(service.clone()));
                    let on_connected = move |stream, addr| {
                        let new_service = new_service.clone();
                        async move { accept_tcp_connection(stream, addr, new_service) }
                    };
                    let _ = server.serve(&on_connected, |_| {}).await;
                });
            }
            tx.send(addrs).expect("send addrs");
            future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .context("device farm did not start")
}

struct Scenario {
    name: &'static str,
    devices: usize,
    scan: &'static str,
    one_request_per_tag: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "coalesced, 1M tags/s offered",
        devices: 100,
        scan: "100ms",
        one_request_per_tag: false,
    },
    Scenario {
        name: "coalesced, saturation",
        devices: 100,
        scan: "10ms",
        one_request_per_tag: false,
    },
    Scenario {
        name: "one request per tag, saturation",
        devices: 100,
        scan: "100ms",
        one_request_per_tag: true,
    },
    Scenario {
        name: "10k tags @ 1 s",
        devices: 10,
        scan: "1s",
        one_request_per_tag: false,
    },
];

fn write_config(dir: &Path, s: &Scenario, farm: &[SocketAddr], port: u16) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("devices"))?;
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "gateway_id = \"bench\"\ndata_dir = \"data\"\n[wal]\nmax_age = \"10m\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )?;
    for (d, addr) in farm.iter().take(s.devices).enumerate() {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("devices/plc-{d}.toml")))?);
        writeln!(
            f,
            "name = \"plc-{d}\"\nprotocol = \"modbus-tcp\"\nendpoint = \"{addr}\"\nscan_interval = \"{}\"\n\
             timeout = \"5s\"\none_request_per_tag = {}\n",
            s.scan, s.one_request_per_tag
        )?;
        for t in 0..REGISTERS {
            writeln!(
                f,
                "[[tags]]\nname = \"r{t}\"\ntable = \"holding\"\naddress = {t}\ndata_type = \"uint16\"\n"
            )?;
        }
    }
    Ok(dir.join("gateway.toml"))
}

struct Measured {
    tags_per_sec: f64,
    requests_per_poll: f64,
    cpu_share: f64,
    peak_rss_mib: f64,
    rss_mib: f64,
}

fn run_scenario(bin: &Path, base: &Path, s: &Scenario, farm: &[SocketAddr], secs: u64) -> Result<Measured> {
    let dir = base.join(s.name.replace([' ', '/', ',', '@'], "_"));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = write_config(&dir, s, farm, port)?;
    let gw = bench::Running::start(bin, &cfg, port)?;
    let pid = gw.pid;
    let result = (|| {
        std::thread::sleep(Duration::from_secs(3)); // warm-up
        let snap = || -> Result<(f64, f64, f64, u64)> {
            Ok((
                bench::metric_sum(port, "gateway_samples_published_total")?,
                bench::metric_sum(port, "gateway_device_requests_total")?,
                bench::metric_sum(port, "gateway_device_polls_total")?,
                proc_stats::cpu_ticks(pid)?,
            ))
        };
        let (s0, r0, p0, c0) = snap()?;
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let (s1, r1, p1, c1) = snap()?;
        let dt = t0.elapsed().as_secs_f64();
        let errors = bench::metric_sum(port, "gateway_device_errors_total")?;
        if errors > 0.0 {
            bail!("{errors} device errors during the run");
        }
        let hz = proc_stats::ticks_per_sec();
        Ok(Measured {
            tags_per_sec: (s1 - s0) / dt,
            requests_per_poll: (r1 - r0) / (p1 - p0).max(1.0),
            cpu_share: (c1 - c0) as f64 / hz / dt,
            peak_rss_mib: proc_stats::memory_kib(pid, "VmHWM:")? as f64 / 1024.0,
            rss_mib: proc_stats::memory_kib(pid, "VmRSS:")? as f64 / 1024.0,
        })
    })();
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Bare clients: one connection per device, reading all 1000 registers
/// in 125-register requests in a loop, values discarded.
fn raw_baseline(farm: &[SocketAddr], secs: u64) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for addr in farm {
            let addr = *addr;
            handles.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let mut ctx = tokio_modbus::client::tcp::attach(stream);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for a in (0..REGISTERS).step_by(125) {
                        let words = ctx.read_holding_registers(a, 125).await??;
                        n += words.len() as u64;
                    }
                }
                Ok::<u64, anyhow::Error>(n)
            }));
        }
        let mut total = 0;
        for h in handles {
            total += h.await??;
        }
        Ok(total as f64 / secs as f64)
    })
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("modbus_bench")?;
    let secs: u64 = bench::knob("BENCH_SECS", 15);
    let base = bench::dir("/var/tmp/gateway-modbus-bench");
    std::fs::create_dir_all(&base)?;
    let farm = device_farm(100)?;
    println!("| scenario | devices × tags @ scan | tags/s into the bus | requests/poll | gateway CPU (share of one core) | RSS at end / peak (MiB) |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for s in SCENARIOS {
        let m = run_scenario(&bin, &base, s, &farm, secs)?;
        println!(
            "| {} | {} × {} @ {} | {:.0} | {:.1} | {:.1} % | {:.1} / {:.1} |",
            s.name,
            s.devices,
            REGISTERS,
            s.scan,
            m.tags_per_sec,
            m.requests_per_poll,
            m.cpu_share * 100.0,
            m.rss_mib,
            m.peak_rss_mib
        );
        results.push(m);
    }
    let raw = raw_baseline(&farm, secs.min(10))?;
    println!();
    println!(
        "raw baseline (bare tokio-modbus clients, 100 connections, 125-register reads): {raw:.0} registers/s"
    );
    let (offered, saturated, per_tag) = (&results[0], &results[1], &results[2]);
    println!(
        "gateway coalesced at saturation / raw baseline: {:.2}; coalesced / one-per-tag: {:.1}× the tags/s with {:.0}× fewer requests",
        saturated.tags_per_sec / raw,
        saturated.tags_per_sec / per_tag.tags_per_sec.max(1.0),
        per_tag.requests_per_poll / offered.requests_per_poll.max(1.0)
    );
    Ok(())
}
