//! InfluxDB sink benchmark: points/s from a pre-filled WAL into a private
//! local `influxd` 1.x, against a raw bulk writer in the same run
//! (pre-built 5000-line gzip batches POSTed to the same server with two
//! requests in flight, like the sink's default `concurrency = 2`).
//!
//! 1. The WAL is filled with `BENCH_FRAMES` frames of 1000 samples (floats,
//!    like a Modbus poll) through the frame bus API, then closed.
//! 2. The gateway starts with an InfluxDB sink (v1 API, gzip, 5000 lines)
//!    and one disabled device; the clock runs until the sink's cursor
//!    reaches the head (`gateway_consumer_lag_frames` = 0). Reported:
//!    points/s and the gateway's CPU seconds per 100k points.
//! 3. The raw writer sends the same number of points, encoded before the
//!    clock starts, to another database.
//!
//! Usage: `influx_bench <gateway-binary>`; env `BENCH_FRAMES` (default 300),
//! `BENCH_DIR` (default /var/tmp/gateway-influx-bench). Run via
//! `scripts/bench.sh influx`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use frame_bus::{BusConfig, FrameBus};
use proto::{DataFrame, FrameType, Message, Sample, Value};
use tests::{bench, proc_stats};

const SAMPLES: usize = 1000;
const BATCH: usize = 5000;
/// Requests in flight, for both writers (the sink's default).
const CONCURRENCY: usize = 2;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_influxd(dir: &Path) -> Result<(Child, String)> {
    let (port, rpc) = (free_port()?, free_port()?);
    let root = dir.join("influxd");
    std::fs::create_dir_all(&root)?;
    let conf = root.join("influxd.conf");
    std::fs::write(
        &conf,
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\ndir = \"{r}/meta\"\n\
             [data]\ndir = \"{r}/data\"\nwal-dir = \"{r}/wal\"\nquery-log-enabled = false\n\
             [http]\nbind-address = \"127.0.0.1:{port}\"\nlog-enabled = false\n[monitor]\nstore-enabled = false\n",
            r = root.display()
        ),
    )?;
    let child = Command::new("influxd")
        .arg("-config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("influxd (Debian package influxdb) must be installed")?;
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while !reqwest::blocking::get(format!("{url}/ping")).is_ok_and(|r| r.status().is_success()) {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("influxd did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((child, url))
}

fn query(url: &str, q: &str) -> Result<serde_json::Value> {
    Ok(reqwest::blocking::Client::new()
        .post(format!("{url}/query"))
        .form(&[("q", q)])
        .send()?
        .json()?)
}

fn frame(i: usize, ts0: u64) -> DataFrame {
    DataFrame {
        device_id: format!("plc-{}", i % 10),
        samples: (0..SAMPLES)
            .map(|t| Sample {
                tag: format!("r{t}"),
                value: Some(Value::float((i * SAMPLES + t) as f64 * 0.25)),
                raw_value: None,
                quality: 0,
                source_ts_ns: ts0 + i as u64 * 1_000_000,
                error_code: 0,
            })
            .collect(),
    }
}

/// Gateway: drains `frames` pre-filled frames; (points/s, CPU s per 100k points).
fn gateway_run(bin: &Path, dir: &Path, url: &str, frames: usize, ts0: u64) -> Result<(f64, f64)> {
    let data = dir.join("gw");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join("devices"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bus = FrameBus::open(data.join("data/wal"), BusConfig::default())?;
        for i in 0..frames {
            bus.publish(FrameType::Data, frame(i, ts0).encode_to_vec())
                .await?;
        }
        bus.close();
        Ok::<(), anyhow::Error>(())
    })?;
    let port = free_port()?;
    std::fs::write(
        data.join("gateway.toml"),
        format!(
            "gateway_id = \"bench\"\ndata_dir = \"data\"\n[wal]\nmax_age = \"0s\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [sinks.influx]\ntype = \"influxdb\"\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"gw\"\nbatch_lines = {BATCH}\n"
        ),
    )?;
    std::fs::write(
        data.join("devices/idle.toml"),
        "name = \"idle\"\nprotocol = \"simulator\"\nendpoint = \"sim://idle\"\nenabled = false\n\
         [[tags]]\nname = \"t\"\naddress = \"sine\"\ndata_type = \"Double\"\n",
    )?;
    let gw = bench::Running::start(bin, &data.join("gateway.toml"), port)?;
    let pid = gw.pid;
    let result = (|| {
        // The clock starts once the gateway answers (RocksDB open and
        // start-up excluded); points written before that are subtracted.
        let w0 = gw.metric("gateway_sink_frames_written_total")?;
        let t0 = Instant::now();
        let c0 = proc_stats::cpu_ticks(pid)?;
        loop {
            let written = gw.metric("gateway_sink_frames_written_total").unwrap_or(0.0);
            if written >= (frames * SAMPLES) as f64 {
                break;
            }
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("sink did not drain the WAL: {written} points written");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let dt = t0.elapsed().as_secs_f64();
        let cpu = (proc_stats::cpu_ticks(pid)? - c0) as f64 / proc_stats::ticks_per_sec();
        let points = (frames * SAMPLES) as f64 - w0;
        Ok((points / dt, cpu / points * 100_000.0))
    })();
    drop(gw);
    result
}

/// Raw writer: the same points as gzip batches of 5000 lines, encoded first.
fn raw_writer(url: &str, frames: usize, ts0: u64) -> Result<f64> {
    let mut bodies = Vec::new();
    let mut text = String::new();
    let mut lines = 0;
    let flush = |text: &mut String, bodies: &mut Vec<Vec<u8>>| -> Result<()> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes())?;
        bodies.push(enc.finish()?);
        text.clear();
        Ok(())
    };
    for i in 0..frames {
        let f = frame(i, ts0);
        for s in &f.samples {
            let v = s.value.as_ref().and_then(|v| match v.kind {
                Some(proto::value::Kind::FloatValue(x)) => Some(x),
                _ => None,
            });
            text.push_str(&format!(
                "device_data,device_id={d},device_name={d},tag_name={t},protocol=modbus-tcp value={v},quality=0i,error_code=0i {ts}\n",
                d = f.device_id,
                t = s.tag,
                v = v.unwrap_or(0.0),
                ts = s.source_ts_ns
            ));
            lines += 1;
            if lines % BATCH == 0 {
                flush(&mut text, &mut bodies)?;
            }
        }
    }
    if !text.is_empty() {
        flush(&mut text, &mut bodies)?;
    }
    // As many requests in flight as the sink's default `concurrency` (2).
    let t0 = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..CONCURRENCY)
            .map(|k| {
                let mine: Vec<&Vec<u8>> = bodies.iter().skip(k).step_by(CONCURRENCY).collect();
                scope.spawn(move || -> Result<()> {
                    let client = reqwest::blocking::Client::new();
                    for b in mine {
                        let r = client
                            .post(format!("{url}/write?db=raw&precision=ns"))
                            .header("content-encoding", "gzip")
                            .body(b.clone())
                            .send()?;
                        if !r.status().is_success() {
                            bail!("raw write failed: {}", r.text()?);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(lines as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("influx_bench")?;
    let frames: usize = bench::knob("BENCH_FRAMES", 300);
    let base = bench::dir("/var/tmp/gateway-influx-bench");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let (mut influxd, url) = start_influxd(&base)?;
    let result = (|| {
        query(&url, "CREATE DATABASE gw")?;
        query(&url, "CREATE DATABASE raw")?;
        // Distinct, recent timestamps per run (1 ms apart per frame).
        let ts0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            - frames as u64 * 1_000_000;
        let raw = raw_writer(&url, frames, ts0)?;
        let (gw, cpu) = gateway_run(&bin, &base, &url, frames, ts0)?;
        println!("| writer | points | points/s | gateway CPU s per 100k points |");
        println!("|---|---:|---:|---:|");
        println!(
            "| raw bulk writer (pre-built 5000-line gzip batches) | {} | {raw:.0} | — |",
            frames * SAMPLES
        );
        println!(
            "| gateway InfluxDB sink (WAL → line protocol → gzip → POST) | {} | {gw:.0} | {cpu:.2} |",
            frames * SAMPLES
        );
        println!();
        println!("gateway / raw writer: {:.2}", gw / raw);
        Ok(())
    })();
    let _ = influxd.kill();
    let _ = influxd.wait();
    result
}
