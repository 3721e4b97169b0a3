//! OPC UA benchmark: monitored items × update rate the gateway's OPC UA
//! driver sustains into the bus, against a bare async-opcua client (the
//! library the driver uses) on the same server in the same run.
//!
//! For each scenario (items, period) a test server (`BENCH_SERVER`:
//! `asyncua` = tests/peers/opcua_server.py, default: it reports every
//! change, so any shortfall is the client's; or `node` =
//! tests/peers/opcua_node_server.js, which samples and misses ~0.5 % of
//! 100 ms changes by itself) changes `items` Double variables every
//! `period` (`--bench-items`), so the offered load is items / period
//! values/s. Then, one after the other:
//! - baseline: a bare async-opcua client, one subscription at `period`,
//!   every item monitored (sampling = period, queue 10), counting data
//!   values received over `BENCH_SECS` after a warm-up;
//! - gateway: one OPC UA device with one Double tag per item, scan
//!   interval `period`, counting `gateway_opcua_notifications_total` and
//!   samples written to the bus over the same window, with the gateway's
//!   CPU time and peak RSS.
//!
//! Usage: `opcua_bench <gateway-binary>`; env `BENCH_SECS` (default 20),
//! `BENCH_SCENARIOS` (default `10000x1000,1000x100`: items x period in
//! ms), `BENCH_SERVER`, `BENCH_DIR`. Run via `scripts/bench.sh opcua`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken};
use opcua::types::{
    AttributeId, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    NodeId, NumericRange, QualifiedName, ReadValueId, TimestampsToReturn,
};
use tests::{bench, proc_stats};

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Server {
    child: Child,
    url: String,
    ns: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_modules() -> PathBuf {
    std::env::var_os("GATEWAY_NODE_OPCUA").map_or_else(
        || {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/gateway_rust/node-opcua/node_modules")
        },
        PathBuf::from,
    )
}

fn start_server(dir: &Path, kind: &str, items: usize, period: Duration) -> Result<Server> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let port = free_port()?;
    let state = dir.join(format!("state-{port}.json"));
    let period_s = format!("{}", period.as_secs_f64());
    let mut cmd = match kind {
        "asyncua" => {
            let mut c = Command::new("python3");
            c.arg(repo.join("tests/peers/opcua_server.py"))
                .arg("--pki-dir")
                .arg(dir.join("server-pki"));
            c
        }
        "node" => {
            let mut c = Command::new("node");
            c.arg(repo.join("tests/peers/opcua_node_server.js"))
                .env("NODE_PATH", node_modules());
            c
        }
        other => bail!("BENCH_SERVER={other}: expected node or asyncua"),
    };
    let mut child = cmd
        .args(["--port", &port.to_string(), "--period", &period_s])
        .args(["--bench-items", &items.to_string()])
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the OPC UA test server (scripts/bench.sh installs it)")?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("READY") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(180))
        .context("the OPC UA test server did not become READY")?;
    Ok(Server {
        child,
        url: format!("opc.tcp://127.0.0.1:{port}/gateway-test/"),
        ns: if kind == "node" { 1 } else { 2 },
    })
}

fn bench_node(ns: u16, i: usize) -> String {
    format!("ns={ns};s=Bench/{i}")
}

/// Data values per second a bare async-opcua client receives, and its CPU
/// (% of a core: this process does nothing else meanwhile).
async fn baseline(
    server: &Server,
    items: usize,
    period: Duration,
    secs: u64,
    dir: &Path,
) -> Result<(f64, f64)> {
    let mut client = ClientBuilder::new()
        .application_name("opcua-bench")
        .application_uri("urn:gateway-rust:bench")
        .pki_dir(dir.join("bench-pki"))
        .create_sample_keypair(true)
        .session_retry_limit(0)
        .request_timeout(Duration::from_secs(30))
        .client()
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let (session, event_loop) = client
        .connect_to_matching_endpoint(
            (
                server.url.as_str(),
                "http://opcfoundation.org/UA/SecurityPolicy#None",
                MessageSecurityMode::None,
            ),
            IdentityToken::Anonymous,
        )
        .await?;
    let handle = event_loop.spawn();
    ensure!(
        session.wait_for_connection().await,
        "baseline client did not connect"
    );
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let sub = session
        .create_subscription(
            period,
            600,
            30,
            0,
            0,
            true,
            DataChangeCallback::new(move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .await?;
    for chunk in (0..items).collect::<Vec<_>>().chunks(1000) {
        let reqs: Vec<MonitoredItemCreateRequest> = chunk
            .iter()
            .map(|i| MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId {
                    node_id: bench_node(server.ns, *i).parse::<NodeId>().unwrap_or_default(),
                    attribute_id: AttributeId::Value as u32,
                    index_range: NumericRange::None,
                    data_encoding: QualifiedName::null(),
                },
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: 0,
                    sampling_interval: period.as_secs_f64() * 1000.0,
                    filter: Default::default(),
                    queue_size: 10,
                    discard_oldest: true,
                },
            })
            .collect();
        let r = session
            .create_monitored_items(sub, TimestampsToReturn::Both, reqs)
            .await?;
        ensure!(
            r.iter().all(|x| x.result.status_code.is_good()),
            "the server refused bench items"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c0 = count.load(Ordering::Relaxed);
    let cpu0 = proc_stats::cpu_ticks(std::process::id())?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let el = t0.elapsed().as_secs_f64();
    let rate = (count.load(Ordering::Relaxed) - c0) as f64 / el;
    let cpu =
        (proc_stats::cpu_ticks(std::process::id())? - cpu0) as f64 / proc_stats::ticks_per_sec() / el * 100.0;
    let _ = session.disconnect().await;
    handle.abort();
    Ok((rate, cpu))
}

struct GatewayRun {
    notifications_per_s: f64,
    samples_per_s: f64,
    cpu_pct: f64,
    rss_mib: f64,
}

fn gateway(
    bin: &Path,
    dir: &Path,
    server: &Server,
    items: usize,
    period: Duration,
    secs: u64,
) -> Result<GatewayRun> {
    let run = dir.join(format!("gw-{items}-{}", period.as_millis()));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("devices"))?;
    let port = free_port()?;
    std::fs::write(
        run.join("gateway.toml"),
        format!(
            "gateway_id = \"bench\"\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            run.join("data").display()
        ),
    )?;
    let mut dev = format!(
        "name = \"bench\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\nscan_interval = \"{}ms\"\ntimeout = \"30s\"\n",
        server.url,
        period.as_millis()
    );
    for i in 0..items {
        dev.push_str(&format!(
            "\n[[tags]]\nname = \"b{i}\"\naddress = \"{}\"\ndata_type = \"Double\"\n",
            bench_node(server.ns, i)
        ));
    }
    std::fs::write(run.join("devices/bench.toml"), dev)?;
    let gw = bench::Running::start(bin, &run.join("gateway.toml"), port)?;
    let t0 = Instant::now();
    while gw.metric("gateway_opcua_monitored_items")? < items as f64 {
        ensure!(
            t0.elapsed() < Duration::from_secs(180),
            "the gateway did not monitor every item"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let (n0, s0, c0) = (
        gw.metric("gateway_opcua_notifications_total")?,
        gw.metric("gateway_samples_published_total")?,
        proc_stats::cpu_ticks(gw.pid)?,
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let el = t0.elapsed().as_secs_f64();
    let (n1, s1, c1) = (
        gw.metric("gateway_opcua_notifications_total")?,
        gw.metric("gateway_samples_published_total")?,
        proc_stats::cpu_ticks(gw.pid)?,
    );
    let rss = proc_stats::memory_kib(gw.pid, "VmHWM:")? as f64 / 1024.0;
    Ok(GatewayRun {
        notifications_per_s: (n1 - n0) / el,
        samples_per_s: (s1 - s0) / el,
        cpu_pct: (c1 - c0) as f64 / proc_stats::ticks_per_sec() / el * 100.0,
        rss_mib: rss,
    })
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("opcua_bench")?;
    let dir = bench::dir("/var/tmp/gateway-opcua-bench");
    std::fs::create_dir_all(&dir)?;
    let secs: u64 = bench::knob("BENCH_SECS", 20);
    let kind = std::env::var("BENCH_SERVER").unwrap_or_else(|_| "asyncua".into());
    let scenarios = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "10000x1000,1000x100".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("server: {kind}, window {secs} s after a 3 s warm-up\n");
    println!("| items | period | offered values/s | baseline values/s | gateway values/s | ratio | samples to bus/s | baseline CPU | gateway CPU | gateway peak RSS |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in scenarios.split(',') {
        let (items, ms) = s.split_once('x').context("BENCH_SCENARIOS: items x period_ms")?;
        let items: usize = items.parse()?;
        let period = Duration::from_millis(ms.parse()?);
        let server = start_server(&dir, &kind, items, period)?;
        let (base, base_cpu) = rt.block_on(baseline(&server, items, period, secs, &dir))?;
        let g = gateway(&bin, &dir, &server, items, period, secs)?;
        let offered = items as f64 / period.as_secs_f64();
        println!(
            "| {items} | {} ms | {offered:.0} | {base:.0} | {:.0} | {:.2} | {:.0} | {base_cpu:.1} % | {:.1} % | {:.0} MiB |",
            period.as_millis(),
            g.notifications_per_s,
            g.notifications_per_s / base.max(1.0),
            g.samples_per_s,
            g.cpu_pct,
            g.rss_mib
        );
        drop(server);
    }
    Ok(())
}
