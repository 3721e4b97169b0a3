//! MQTT benchmark: messages/s through the gateway's MQTT driver
//! (Mosquitto → bus) and MQTT sink (bus → Mosquitto), QoS 0 and 1, against
//! Mosquitto's own clients on the same private broker in the same run.
//!
//! Southbound: `BENCH_MESSAGES` JSON messages (`{"v":…,"n":…}`) are queued
//! by the broker for a persistent session while its client is away; then
//! the client connects and the clock runs until it has them all.
//! - baseline: `mosquitto_sub -c -C N` (receives and discards);
//! - gateway: an MQTT device with one Double tag; done when every message
//!   is in the bus (QoS 1: and acknowledged).
//!
//! Northbound: the WAL holds `BENCH_MESSAGES / 50` frames of 50 samples;
//! the gateway starts with an MQTT sink (one message per sample) and the
//! clock runs until the sink's cursor reaches the head (every message
//! confirmed at QoS 1). Baseline: a bare rumqttc client (the library the
//! sink uses) publishing the same number of pre-built messages of the same
//! size with the same in-flight window (100), until all are confirmed.
//! `mosquitto_pub -l` was the intended baseline, but it loses messages in
//! bulk (34 467 of 100 000 delivered at QoS 1), so its rate is not one.
//!
//! The southbound backlog is published with the same bare client.
//!
//! Reported: messages/s, gateway CPU seconds per 100k messages and peak
//! RSS. Usage: `mqtt_bench <gateway-binary>`; env `BENCH_MESSAGES`
//! (default 100000), `BENCH_DIR`. Run via `scripts/bench.sh mqtt`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use frame_bus::{BusConfig, FrameBus};
use proto::{DataFrame, FrameType, Message, Sample, Value};
use tests::{bench, proc_stats};

const PER_FRAME: usize = 50;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(dir: &Path) -> Result<Broker> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n\
             queue_qos0_messages true\nuser root\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto must be installed (scripts/test.sh installs it)")?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(t0.elapsed() < Duration::from_secs(20), "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Broker { child, port })
}

fn lines_file(dir: &Path, n: usize, pad: usize) -> Result<PathBuf> {
    let path = dir.join(format!("lines-{n}-{pad}.txt"));
    let mut s = String::with_capacity(n * (pad + 32));
    for i in 0..n {
        s.push_str(&format!(
            "{{\"v\":{}.5,\"n\":{i},\"p\":\"{}\"}}\n",
            i % 1000,
            "x".repeat(pad)
        ));
    }
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Publishes the file's lines, one message each, and waits until the
/// broker confirmed them all: seconds.
fn publish_file(port: u16, topic: &str, qos: u8, file: &Path) -> Result<f64> {
    let payloads: Vec<Vec<u8>> = std::fs::read_to_string(file)?
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    Ok(tests::mqtt_pub::publish_all(port, topic, qos, 100, payloads)?.as_secs_f64())
}

fn sub_args(port: u16, id: &str, qos: u8) -> Vec<String> {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        "-i",
        id,
        "-q",
        &qos.to_string(),
        "-t",
        "bench/south",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `mosquitto_sub` draining `n` queued messages: messages/s.
fn baseline_south(dir: &Path, port: u16, qos: u8, n: usize) -> Result<f64> {
    let id = format!("base-sub-q{qos}");
    // Create the persistent session, then queue the messages for it.
    let st = Command::new("mosquitto_sub")
        .args(sub_args(port, &id, qos))
        .arg("-E")
        .status()?;
    ensure!(st.success(), "mosquitto_sub -E failed");
    publish_file(port, "bench/south", qos, &lines_file(dir, n, 0)?)?;
    let t0 = Instant::now();
    let st = Command::new("mosquitto_sub")
        .args(sub_args(port, &id, qos))
        .args(["-C", &n.to_string()])
        .stdout(Stdio::null())
        .status()?;
    ensure!(st.success(), "mosquitto_sub failed");
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn write_gateway(dir: &Path, port: u16, broker: u16, qos: u8, device: bool, sink: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("devices"))?;
    let mut g = format!(
        "gateway_id = \"bench\"\ndata_dir = \"data\"\n[wal]\nmax_age = \"0s\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    if sink {
        g.push_str(&format!(
            "[sinks.north]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{broker}\"\nqos = {qos}\nmax_inflight = 100\n"
        ));
    }
    std::fs::write(dir.join("gateway.toml"), g)?;
    let d = if device {
        format!(
            "name = \"south\"\nprotocol = \"mqtt\"\nendpoint = \"mqtt://127.0.0.1:{broker}\"\nclient_id = \"bench-south-q{qos}\"\n\
             qos = {qos}\ntopic = \"bench/south\"\n[[tags]]\nname = \"v\"\naddress = \"/v\"\ndata_type = \"Double\"\n"
        )
    } else {
        "name = \"idle\"\nprotocol = \"simulator\"\nendpoint = \"sim://idle\"\nenabled = false\n\
         [[tags]]\nname = \"t\"\naddress = \"sine\"\ndata_type = \"Double\"\n"
            .to_string()
    };
    std::fs::write(dir.join("devices/dev.toml"), d)?;
    Ok(dir.join("gateway.toml"))
}

struct Run {
    rate: f64,
    cpu_per_100k: f64,
    rss_mib: f64,
}

fn measure(gw: &bench::Running, n: usize, done: impl Fn(&bench::Running) -> Result<bool>) -> Result<Run> {
    let t0 = Instant::now();
    let c0 = proc_stats::cpu_ticks(gw.pid)?;
    while !done(gw)? {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("not done after 600 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let dt = t0.elapsed().as_secs_f64();
    let cpu = (proc_stats::cpu_ticks(gw.pid)? - c0) as f64 / proc_stats::ticks_per_sec();
    Ok(Run {
        rate: n as f64 / dt,
        cpu_per_100k: cpu / n as f64 * 100_000.0,
        rss_mib: proc_stats::memory_kib(gw.pid, "VmHWM")? as f64 / 1024.0,
    })
}

fn gateway_south(bin: &Path, dir: &Path, broker: u16, qos: u8, n: usize) -> Result<Run> {
    let dir = dir.join(format!("south-q{qos}"));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port()?;
    let config = write_gateway(&dir, port, broker, qos, true, false)?;
    {
        // First start: the persistent session and its subscription.
        let gw = bench::Running::start(bin, &config, port)?;
        let t0 = Instant::now();
        while gw.metric("gateway_device_up")? < 1.0 {
            ensure!(t0.elapsed() < Duration::from_secs(30), "device did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    publish_file(broker, "bench/south", qos, &lines_file(dir.as_path(), n, 0)?)?;
    let gw = bench::Running::start(bin, &config, port)?;
    measure(&gw, n, |gw| {
        Ok(if qos > 0 {
            gw.metric("gateway_mqtt_messages_acked_total")? >= n as f64
        } else {
            gw.metric("gateway_samples_published_total")? >= n as f64
        })
    })
}

fn gateway_north(bin: &Path, dir: &Path, broker: u16, qos: u8, n: usize) -> Result<Run> {
    let dir = dir.join(format!("north-q{qos}"));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port()?;
    let config = write_gateway(&dir, port, broker, qos, false, true)?;
    let frames = n / PER_FRAME;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bus = FrameBus::open(dir.join("data/wal"), BusConfig::default())?;
        let ts0 = 1_790_000_000_000_000_000u64;
        for i in 0..frames {
            let f = DataFrame {
                device_id: "line".into(),
                samples: (0..PER_FRAME)
                    .map(|t| Sample {
                        tag: format!("t{t}"),
                        value: Some(Value::float(i as f64 + 0.5)),
                        quality: proto::Quality::Good as i32,
                        source_ts_ns: ts0 + i as u64 * 1_000_000,
                        ..Sample::default()
                    })
                    .collect(),
            };
            bus.publish(FrameType::Data, f.encode_to_vec()).await?;
        }
        bus.close();
        Ok::<(), anyhow::Error>(())
    })?;
    let gw = bench::Running::start(bin, &config, port)?;
    measure(&gw, frames * PER_FRAME, |gw| {
        Ok(
            gw.metric("gateway_mqtt_messages_published_total")? >= (frames * PER_FRAME) as f64
                && gw.metric("gateway_consumer_lag_frames")? == 0.0
                && gw.metric("gateway_mqtt_inflight_messages")? == 0.0,
        )
    })
}

fn main() -> Result<()> {
    let bin = bench::gateway_arg("mqtt_bench")?;
    let n: usize = bench::knob("BENCH_MESSAGES", 100_000);
    let base = bench::dir("/var/tmp/gateway-mqtt-bench");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let broker = start_broker(&base)?;
    // A sample message of the sink is ~190 bytes: the baseline publishes
    // lines of the same size.
    let north_lines = lines_file(&base, n, 150)?;
    println!("| direction | QoS | baseline client msg/s | gateway msg/s | gateway / baseline | gateway CPU s per 100k | gateway peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for qos in [0u8, 1] {
        let base_rate = baseline_south(&base, broker.port, qos, n)?;
        let g = gateway_south(&bin, &base, broker.port, qos, n)?;
        println!(
            "| southbound (broker → bus) | {qos} | {base_rate:.0} (mosquitto_sub) | {:.0} | {:.2} | {:.2} | {:.0} |",
            g.rate,
            g.rate / base_rate,
            g.cpu_per_100k,
            g.rss_mib
        );
        let t = publish_file(broker.port, "bench/north", qos, &north_lines)?;
        let base_rate = n as f64 / t;
        let g = gateway_north(&bin, &base, broker.port, qos, n)?;
        println!(
            "| northbound (bus → broker) | {qos} | {base_rate:.0} (bare rumqttc publisher) | {:.0} | {:.2} | {:.2} | {:.0} |",
            g.rate,
            g.rate / base_rate,
            g.cpu_per_100k,
            g.rss_mib
        );
    }
    Ok(())
}
