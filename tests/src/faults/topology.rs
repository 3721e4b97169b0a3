//! The fault suite's topology: every peer, the gateway's configuration,
//! and the operations scenarios compose (kill, restart, drain, collect).
//!
//! Sources (`devices/`):
//! * `seq` — MQTT 3.1.1, QoS 1, persistent session, topic `load/seq`: the
//!   numbered stream of [`super::load`] (`n` UInt32, timestamp `/ts` ms);
//! * `plc` — Modbus TCP (pymodbus), every 100 ms: `u16` = 12345,
//!   `i32` = -123456789, `pi` = 3.14159 (float32);
//! * `ua` — OPC UA (asyncua), subscription sampled every 50 ms:
//!   `counter` (+1 every 100 ms) and `level` (= counter % 200).
//!
//! Alert rule `level_high`: `ua/level > 100` for 1 s — fires and resolves
//! once every 20 s. Sinks: `archive` (file, ground truth of the bus),
//! `influx` (influxd 1.x, `device_data`), `pg` (PostgreSQL: registry and
//! `alert_history`), `north` (MQTT, one message per frame, QoS 1) read by a
//! persistent subscriber.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checker::{Observed, Point};
use super::load::{Clock, Load};
use super::proxy::SlowProxy;
use super::Opts;
use crate::harness::mqtt::{Mosquitto, Subscriber};
use crate::harness::opcua::OpcuaServer;
use crate::harness::peers::{Influxd, ModbusServer};
use crate::harness::pg::{Cluster, Db};
use crate::harness::{archive_frames, device_status, DemoDir, Gateway, ARCHIVE_SINK};

/// Generous bound for anything the gateway must reach (not a measurement).
pub const LIMIT: Duration = Duration::from_secs(180);

/// What a scenario needs beyond the common topology.
#[derive(Default)]
pub struct Setup {
    /// PostgreSQL in a private cluster the scenario can stop.
    pub own_postgres: bool,
    /// The data directory on a tmpfs of this many bytes.
    pub tmpfs: Option<u64>,
    /// InfluxDB behind a [`SlowProxy`].
    pub slow_influx: bool,
    /// Timestamps of the stream (default `base + n` ms).
    pub clock: Option<Clock>,
    /// Lines for the `[wal]` table.
    pub wal: String,
    /// More `[[alert_rules]]`.
    pub rules: String,
}

pub struct Topology {
    // Dropped first: the gateway and the stream before their peers.
    pub gateway: Option<Gateway>,
    pub load: Option<Load>,
    pub opts: Opts,
    pub base_ms: u64,
    pub demo: DemoDir,
    pub north: Subscriber,
    pub opcua: OpcuaServer,
    pub modbus: Option<ModbusServer>,
    pub modbus_address: String,
    pub proxy: Option<SlowProxy>,
    pub influx: Influxd,
    pub db: Db,
    pub cluster: Option<Cluster>,
    pub broker: Mosquitto,
    mounted: Option<PathBuf>,
    /// Logs of every gateway process started, in order.
    pub logs: Vec<PathBuf>,
    pub max_lag: u64,
    pub rss_peak_kib: u64,
    pub recovery: Option<Duration>,
    /// Keep the stream paused across [`Topology::start_gateway`].
    pub hold: bool,
    pub tmp: tempfile::TempDir,
}

fn device(name: &str, head: &str, tags: &[(&str, &str, &str, &str)]) -> (String, String) {
    let mut s = format!("name = \"{name}\"\n{head}\n");
    for (tag, address, data_type, extra) in tags {
        s.push_str(&format!(
            "\n[[tags]]\nname = \"{tag}\"\naddress = \"{address}\"\ndata_type = \"{data_type}\"\n{extra}\n"
        ));
    }
    (name.to_string(), s)
}

impl Topology {
    /// Starts every peer and writes the gateway's configuration (the
    /// gateway itself is started by [`Topology::start_gateway`]).
    /// `Err` (a reason for "not run") when the machine cannot host the
    /// scenario, e.g. no tmpfs mount.
    pub fn new(opts: &Opts, setup: Setup) -> Result<Topology, String> {
        let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let broker = Mosquitto::start(tmp.path());
        let influx = Influxd::start(tmp.path());
        influx.query("", "CREATE DATABASE gw");
        let proxy = setup
            .slow_influx
            .then(|| SlowProxy::start(influx.url.trim_start_matches("http://").trim_end_matches('/')));
        let influx_url = match &proxy {
            Some(p) => format!("http://127.0.0.1:{}", p.port),
            None => influx.url.clone(),
        };
        let mut cluster = setup.own_postgres.then(Cluster::init);
        let db = match cluster.as_mut() {
            Some(c) => {
                c.start();
                Db::create_on(&c.admin_url())
            }
            None => Db::create(),
        };
        let modbus = ModbusServer::tcp(tmp.path());
        let modbus_address = modbus.address.clone();
        let opcua = OpcuaServer::asyncua(tmp.path(), &[]);
        let north = Subscriber::start(broker.port, "fault-north", "gateway/test-gw/#");
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let devices = vec![
            device(
                "seq",
                &format!(
                    "protocol = \"mqtt\"\nendpoint = \"{}\"\ntopic = \"load/seq\"\nqos = 1\n\
                     timestamp_pointer = \"/ts\"\ntimestamp_format = \"epoch_ms\"",
                    broker.url()
                ),
                &[("n", "/n", "UInt32", "")],
            ),
            device(
                "plc",
                &format!(
                    "protocol = \"modbus-tcp\"\nendpoint = \"{modbus_address}\"\nscan_interval = \"100ms\""
                ),
                &[
                    ("u16", "40001", "uint16", ""),
                    ("i32", "40003", "int32", ""),
                    ("pi", "40013", "float32", ""),
                ],
            ),
            device(
                "ua",
                &format!(
                    "protocol = \"opcua\"\nendpoint = \"{}\"\nmode = \"subscription\"\nscan_interval = \"200ms\"\n\
                     timeout = \"2s\"\nretry_interval = \"200ms\"\nmax_retry_interval = \"1s\"",
                    opcua.url
                ),
                &[
                    ("counter", "ns=2;s=Dynamic/Counter", "UInt32", "sampling_interval = \"50ms\""),
                    ("level", "ns=2;s=Analog/Level", "Double", "sampling_interval = \"50ms\""),
                ],
            ),
        ];
        let gateway = format!(
            "\n[wal]\n{wal}\n{ARCHIVE_SINK}\n\
             [sinks.influx]\ntype = \"influxdb\"\nurl = \"{influx_url}\"\napi = \"v1\"\ndatabase = \"gw\"\n\
             batch_lines = 1000\nflush_interval = \"100ms\"\nmax_retry_interval = \"1s\"\n\n\
             [sinks.pg]\ntype = \"postgres\"\nurl = \"{pg}\"\nmax_retry_interval = \"1s\"\n\
             connect_timeout = \"2s\"\ntimeout = \"5s\"\n\n\
             [sinks.north]\ntype = \"mqtt\"\nurl = \"{broker}\"\nqos = 1\nmode = \"frame\"\n\
             max_retry_interval = \"1s\"\n\n\
             [[alert_rules]]\nname = \"level_high\"\ndevice = \"ua\"\ntag = \"level\"\nop = \"GT\"\n\
             threshold_value = 100.0\nlevel = \"CRITICAL\"\neval_interval = \"1s\"\neval_duration = \"1s\"\n\
             cooldown_duration = \"0s\"\n{rules}",
            wal = setup.wal,
            pg = db.url,
            broker = broker.url(),
            rules = setup.rules,
        );
        let demo = DemoDir::with_gateway(&devices, &gateway);
        let mut mounted = None;
        if let Some(bytes) = setup.tmpfs {
            let data = demo.data();
            std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "gateway-faults"])
                .arg(&data)
                .output()
                .map_err(|e| format!("mount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            mounted = Some(data);
        }
        let clock: Clock = setup.clock.unwrap_or_else(|| Arc::new(move |n| base_ms + n));
        // Paused until the gateway's first start created its persistent
        // session: the broker keeps nothing for a session that does not exist.
        let load = Load::start(broker.port, "load/seq", opts.rate, clock);
        Ok(Topology {
            gateway: None,
            load: Some(load),
            opts: opts.clone(),
            base_ms,
            demo,
            north,
            opcua,
            modbus: Some(modbus),
            modbus_address,
            proxy,
            influx,
            db,
            cluster,
            broker,
            mounted,
            logs: Vec::new(),
            max_lag: 0,
            rss_peak_kib: 0,
            recovery: None,
            hold: false,
            tmp,
        })
    }

    /// Starts the gateway and waits until it is ready and the stream's
    /// device is online (subscribed), then lets the stream run.
    pub fn start_gateway(&mut self) -> Duration {
        let t0 = Instant::now();
        let mut g = Gateway::start(&self.demo, &[]);
        self.logs.push(g.log.clone());
        g.wait_until("the stream's device online", LIMIT, |g| {
            device_status(g, "seq")["status"] == "Online"
        });
        self.gateway = Some(g);
        if let Some(l) = &self.load {
            l.pause(self.hold);
        }
        t0.elapsed()
    }

    pub fn gw(&mut self) -> &mut Gateway {
        self.gateway.as_mut().expect("the gateway is running")
    }

    /// Samples lag and RSS (kept as maxima).
    pub fn sample(&mut self) -> u64 {
        let Some(g) = self.gateway.as_ref() else {
            return 0;
        };
        let lag = g.metric_sum("gateway_consumer_lag_frames").unwrap_or(0.0) as u64;
        let rss = hwm_kib(g.child.id());
        self.max_lag = self.max_lag.max(lag);
        self.rss_peak_kib = self.rss_peak_kib.max(rss);
        lag
    }

    /// Runs for `d`, sampling every 250 ms.
    pub fn run_for(&mut self, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            self.sample();
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill_gateway(&mut self) {
        self.sample();
        if let Some(mut g) = self.gateway.take() {
            g.signal(libc::SIGKILL);
            g.wait_exit(LIMIT);
        }
    }

    /// SIGTERM; the exit must be clean (status 0).
    pub fn stop_gateway(&mut self) -> Result<(), String> {
        self.sample();
        if let Some(mut g) = self.gateway.take() {
            g.signal(libc::SIGTERM);
            let st = g.wait_exit(LIMIT);
            if !st.success() {
                return Err(format!("clean stop exited with {st}"));
            }
        }
        Ok(())
    }

    /// Waits until the gateway has caught up — it ingested every stream
    /// number confirmed before this call (the broker's backlog) and the
    /// consumers' total lag is back under half a second of load —
    /// sampling; the time since `since` (also kept as the recovery maximum).
    pub fn wait_caught_up(&mut self, since: Instant) -> Duration {
        let t0 = since;
        let bound = u64::from(self.opts.rate / 2 + 200);
        let target = self.load.as_ref().map_or(0, Load::count);
        loop {
            let lag = self.sample();
            let ingested = self.gateway.as_ref().map_or(0, |g| {
                device_status(g, "seq")["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["name"] == "n")
                    .and_then(|t| t["value"].as_u64())
                    .unwrap_or(0)
            });
            if lag <= bound && ingested >= target && self.gateway.is_some() {
                break;
            }
            if t0.elapsed() > 3 * LIMIT {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let d = t0.elapsed();
        self.recovery = Some(self.recovery.map_or(d, |r| r.max(d)));
        d
    }

    /// Ends the stream, lets the gateway store everything, stops its
    /// sources (SIGHUP with every device disabled), waits for lag 0, stops
    /// it cleanly and collects what every destination holds.
    pub fn drain_and_collect(&mut self, corrupt_seqs: std::collections::BTreeSet<u64>) -> Observed {
        let stream = self.load.take().map(Load::finish).unwrap_or_default();
        let last = stream.iter().map(|&(n, _)| n).max().unwrap_or(0);
        if self.gateway.is_none() {
            self.start_gateway();
        }
        let limit = 3 * LIMIT;
        self.gw().wait_until("the stream's last number", limit, |g| {
            device_status(g, "seq")["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["name"] == "n" && t["value"] == serde_json::json!(last))
        });
        for (name, _) in ["seq", "plc", "ua"].iter().map(|n| (n, ())) {
            let path = self.demo.dir.path().join(format!("devices/{name}.toml"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let _ = std::fs::write(&path, text.replacen('\n', "\nenabled = false\n", 1));
            }
        }
        let g = self.gw();
        g.signal(libc::SIGHUP);
        g.wait_until("devices stopped", limit, |g| {
            g.metric_sum("gateway_device_up") == Some(0.0)
        });
        g.wait_until("every sink caught up", limit, |g| {
            g.metric_sum("gateway_consumer_lag_frames") == Some(0.0)
        });
        let retention_dropped = g.metric_sum("gateway_wal_dropped_frames_total").unwrap_or(0.0) as u64;
        self.stop_gateway().unwrap_or_else(|e| panic!("{e}"));
        self.collect(stream, retention_dropped, corrupt_seqs)
    }

    fn collect(
        &self,
        stream: Vec<(u64, u64)>,
        retention_dropped: u64,
        corrupt_seqs: std::collections::BTreeSet<u64>,
    ) -> Observed {
        let archive = archive_frames(&self.demo.data());
        let influx = self
            .influx
            .rows(
                "gw",
                "SELECT quality, value_uint FROM device_data GROUP BY device_name, tag_name",
            )
            .into_iter()
            .map(|r| Point {
                device: r["device_name"].as_str().unwrap_or_default().to_string(),
                tag: r["tag_name"].as_str().unwrap_or_default().to_string(),
                ts_ns: r["time"].as_u64().unwrap_or(0),
                uint: r["value_uint"].as_u64(),
            })
            .collect();
        // The broker confirmed every northbound message to the gateway;
        // delivering them to the subscriber (20 in flight at a time) can
        // trail behind, more so after a broker restart: wait until every
        // DATA frame arrived or nothing new came for 5 s.
        let data_frames: std::collections::HashSet<u64> = archive
            .iter()
            .filter(|f| f["type"] == "DATA")
            .filter_map(|f| f["seq"].as_u64())
            .collect();
        let north_data = |msgs: Vec<(String, Vec<u8>)>| -> Vec<u64> {
            msgs.into_iter()
                .filter_map(|(_, payload)| serde_json::from_slice::<Value>(&payload).ok())
                .filter(|v| v.get("samples").is_some())
                .filter_map(|v| v["seq"].as_u64())
                .collect()
        };
        let (mut seen, mut since) = (0usize, Instant::now());
        let north_seqs = loop {
            let got = north_data(self.north.messages());
            let distinct: std::collections::HashSet<u64> = got.iter().copied().collect();
            if data_frames.is_subset(&distinct) || since.elapsed() > Duration::from_secs(5) {
                break got;
            }
            if got.len() != seen {
                (seen, since) = (got.len(), Instant::now());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let pg_alert_ids = self
            .db
            .rows("SELECT event_id::text AS id FROM alert_history")
            .into_iter()
            .filter_map(|r| r["id"].as_str().map(str::to_lowercase))
            .collect();
        let mut archive = archive;
        for f in archive.iter_mut() {
            if let Some(id) = f["event_id"].as_str().map(str::to_lowercase) {
                f["event_id"] = Value::String(id);
            }
        }
        Observed {
            archive,
            stream,
            influx,
            north_seqs,
            pg_alert_ids,
            retention_dropped,
            corrupt_seqs,
        }
    }

    /// Every gateway log so far, concatenated.
    pub fn log_text(&self) -> String {
        self.logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Unplugs the Modbus device (server stopped).
    pub fn unplug_modbus(&mut self) {
        self.modbus = None;
    }

    /// Plugs it in again on the same address.
    pub fn plug_modbus(&mut self) {
        let t0 = Instant::now();
        while std::net::TcpListener::bind(&self.modbus_address).is_err()
            && t0.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.modbus = Some(ModbusServer::tcp_at(self.tmp.path(), &self.modbus_address));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.child.kill();
            let _ = g.child.wait();
        }
        if let Some(dir) = self.mounted.take() {
            let _ = std::process::Command::new("umount").arg("-l").arg(&dir).status();
        }
        // FAULTS_KEEP=1 keeps the peers' and the gateway's directories
        // (logs, WAL, archive) for a post-mortem.
        if std::env::var_os("FAULTS_KEEP").is_some() {
            self.tmp.disable_cleanup(true);
            self.demo.dir.disable_cleanup(true);
            eprintln!(
                "kept {} (peers) and {} (gateway)",
                self.tmp.path().display(),
                self.demo.dir.path().display()
            );
        }
    }
}

/// Peak resident set size (VmHWM) of process `pid`, KiB (0 if gone).
pub fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Current resident set size (VmRSS) of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
