//! End-to-end and crash tests of Gateway_Rust.
//!
//! Tests here start real processes (the `gateway` binary, helper binaries in
//! `src/bin/`) and real peers, and kill them with SIGKILL where the point is
//! durability. Helper binaries:
//!
//! * `wal_crash_child` — publishes to a frame bus as fast as it can and
//!   reports every acknowledged seq on stdout, so a parent can SIGKILL it at a
//!   random moment and check that every reported seq survived.
//!
//! Shared wire format of `wal_crash_child`'s stdout (one line per event):
//! `P <seq> <publisher> <counter>` for an acknowledged publish,
//! `A <seq>` for a consumer acknowledgement, `READY` once the bus is open.
//!
//! * `runtime_bench`, `modbus_bench`, `influx_bench`, `pg_bench` —
//!   benchmarks of the real binary; they read the gateway's CPU time and
//!   memory with [`proc_stats`] and its metrics and knobs with [`bench`].
//!
//! [`alert_event`] builds the alert events that tests and benchmarks put on
//! the bus before the gateway starts (as the alert engine will publish them).

pub mod faults;
pub mod harness;

/// An alert event of rule `press-hot` on `press`/`temp` (CRITICAL), as the
/// alert engine publishes it: `id` is the event id, `attributes` e.g.
/// `threshold_value` or `alert_id` (see `EventKind` in frame.proto).
pub fn alert_event(
    kind: proto::EventKind,
    id: String,
    ts_ns: u64,
    value: f64,
    attributes: &[(&str, String)],
) -> proto::EventFrame {
    proto::EventFrame {
        event_id: id,
        kind: kind as i32,
        device_id: "press".into(),
        tag: "temp".into(),
        rule_id: "press-hot".into(),
        level: proto::AlertLevel::Critical as i32,
        message: "temp above 80".into(),
        value: Some(proto::Value::float(value)),
        event_ts_ns: ts_ns,
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..proto::EventFrame::default()
    }
}

/// Payload of publisher `p`'s `n`-th frame, as written by `wal_crash_child`.
pub fn crash_payload(publisher: u64, counter: u64) -> Vec<u8> {
    let mut v = format!("p{publisher}-n{counter}|").into_bytes();
    v.resize(96, (publisher * 7 + counter) as u8);
    v
}

/// CPU time and memory of a process, from `/proc` (Linux), for benchmarks.
pub mod proc_stats {
    use anyhow::{Context, Result};

    /// utime + stime of `pid`, in clock ticks (`sysconf(_SC_CLK_TCK)` per second).
    pub fn cpu_ticks(pid: u32) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the ")" of the command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').context("stat format")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
    }

    /// Clock ticks per second.
    pub fn ticks_per_sec() -> f64 {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
    }

    /// A `/proc/<pid>/status` memory field in KiB: `"VmHWM:"` (peak RSS) or `"VmRSS:"` (now).
    pub fn memory_kib(pid: u32, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
        Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
    }
}

/// What every benchmark binary needs: its arguments and knobs, and the
/// gateway's Prometheus metrics.
pub mod bench {
    use std::path::PathBuf;

    use anyhow::{Context, Result};

    /// The gateway binary given as the first argument.
    pub fn gateway_arg(bench: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(
            std::env::args()
                .nth(1)
                .with_context(|| format!("usage: {bench} <gateway-binary>"))?,
        ))
    }

    /// An integer knob from the environment, or its default.
    pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    /// `BENCH_DIR`, or `default`.
    pub fn dir(default: &str) -> PathBuf {
        PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| default.into()))
    }

    /// A `gateway run` started by a benchmark; SIGTERMed and reaped on drop.
    pub struct Running {
        child: std::process::Child,
        pub pid: u32,
        pub port: u16,
    }

    impl Running {
        /// Starts `bin run --config config` and waits until `/metrics`
        /// on `port` answers.
        pub fn start(bin: &std::path::Path, config: &std::path::Path, port: u16) -> Result<Running> {
            let child = std::process::Command::new(bin)
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let running = Running {
                pid: child.id(),
                child,
                port,
            };
            let t0 = std::time::Instant::now();
            while metric_sum(port, "gateway_build_info").is_err() {
                anyhow::ensure!(
                    t0.elapsed() < std::time::Duration::from_secs(60),
                    "gateway did not come up"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(running)
        }

        pub fn metric(&self, name: &str) -> Result<f64> {
            metric_sum(self.port, name)
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = self.child.wait();
        }
    }

    /// Sum of every sample of metric `name` scraped from the gateway on `port`.
    pub fn metric_sum(port: u16, name: &str) -> Result<f64> {
        let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))?.text()?;
        Ok(body
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum())
    }
}

/// A reliable bulk MQTT publisher for tests and benchmarks. `mosquitto_pub
/// -l` is not one: fed 100 000 lines at QoS 1 it delivered 34 467 of them
/// (Mosquitto 2.0.11 clients; 78 160 in chunks of 5 000), so a test using
/// it would blame the gateway for the client's losses.
pub mod mqtt_pub {
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context, Result};
    use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

    /// Publishes every payload to `topic` on the broker at 127.0.0.1:`port`
    /// with at most `inflight` unconfirmed, and returns once the broker
    /// confirmed all of them (QoS 1: PUBACK, QoS 2: PUBCOMP; QoS 0: once
    /// written and the connection closed cleanly). Returns the elapsed time.
    pub fn publish_all(
        port: u16,
        topic: &str,
        qos: u8,
        inflight: u16,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Duration> {
        let mut o = MqttOptions::new(format!("bulk-pub-{}", fastrand::u64(..)), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight.max(1))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(o, 1024);
        let q = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let n = payloads.len();
        let t0 = Instant::now();
        let topic = topic.to_string();
        let feeder = std::thread::spawn(move || -> Result<Client> {
            for p in payloads {
                client
                    .publish(topic.clone(), q, false, p)
                    .context("queueing a publish")?;
            }
            Ok(client)
        });
        let mut done = 0usize;
        let mut connected = false;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                Ok(Event::Incoming(Packet::PubAck(_))) | Ok(Event::Incoming(Packet::PubComp(_)))
                    if qos > 0 =>
                {
                    done += 1
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == 0 => done += 1,
                Ok(_) => {}
                Err(e) => bail!("publisher connection (connected: {connected}, {done}/{n} confirmed): {e}"),
            }
            if done >= n {
                break;
            }
        }
        let client = feeder.join().map_err(|_| anyhow::anyhow!("feeder panicked"))??;
        client.disconnect().context("disconnect")?;
        // Drive the connection until the DISCONNECT is written.
        for ev in conn.iter() {
            match ev {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(t0.elapsed())
    }
}
