//! Real device peers for driver tests: the pymodbus server of
//! `tests/peers/modbus_server.py` (installed by `scripts/test.sh`, see
//! `ensure_modbus_peer`) on a loopback port or a `socat` pty pair. A
//! missing Python module or socat fails the test loudly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `modbus_server.py`; stopped on drop.
pub struct ModbusServer {
    child: Child,
    /// `host:port` (TCP) or the device path (RTU).
    pub address: String,
    /// JSON lines the server printed for each write it served.
    writes: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Connections the server accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Seconds the server waits before each answer (`--delay-file`).
    pub delay_file: PathBuf,
}

impl ModbusServer {
    /// A Modbus TCP server on a free loopback port.
    pub fn tcp(dir: &Path) -> ModbusServer {
        let address = format!("127.0.0.1:{}", super::free_port());
        Self::start(dir, &["--tcp", &address], address.clone())
    }

    /// A Modbus TCP server on `address` (`host:port`), e.g. the address of
    /// a server that was stopped: the same device plugged in again.
    pub fn tcp_at(dir: &Path, address: &str) -> ModbusServer {
        Self::start(dir, &["--tcp", address], address.to_string())
    }

    /// RTU framing over TCP on a free loopback port (a serial device server).
    pub fn rtu_over_tcp(dir: &Path) -> ModbusServer {
        let address = format!("127.0.0.1:{}", super::free_port());
        Self::start(dir, &["--rtu-over-tcp", &address], address.clone())
    }

    /// An RTU server on serial device `tty`.
    pub fn rtu(dir: &Path, tty: &Path, baud: u32) -> ModbusServer {
        let tty_s = tty.display().to_string();
        Self::start(
            dir,
            &["--rtu", &tty_s, "--baud", &baud.to_string()],
            tty_s.clone(),
        )
    }

    fn start(dir: &Path, args: &[&str], address: String) -> ModbusServer {
        let script = super::repo_dir().join("tests/peers/modbus_server.py");
        let delay_file = dir.join(format!("delay-{}", super::free_port()));
        std::fs::write(&delay_file, "0").unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .args(args)
            .arg("--delay-file")
            .arg(&delay_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed to run the pymodbus peer");
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (w, c) = (writes.clone(), connections.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == "READY" {
                    let _ = ready_tx.send(());
                } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["connected"] == true {
                        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        w.lock().unwrap().push(v);
                    }
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "pymodbus peer did not become READY ({status:?}); install it with \
                 `source scripts/lib/common.sh && ensure_modbus_peer` (scripts/test.sh does)"
            );
        }
        ModbusServer {
            child,
            address,
            writes,
            connections,
            delay_file,
        }
    }

    /// Makes every answer wait `secs` (0 = answer at once).
    pub fn set_delay(&self, secs: f64) {
        std::fs::write(&self.delay_file, secs.to_string()).unwrap();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn writes(&self) -> Vec<serde_json::Value> {
        self.writes.lock().unwrap().clone()
    }

    /// Waits until the server printed a write matching `pred`.
    pub fn wait_write(
        &self,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if let Some(w) = self.writes().into_iter().find(|w| pred(w)) {
                return w;
            }
            assert!(t0.elapsed() < limit, "no matching write; got {:?}", self.writes());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `socat` pty pair: a virtual serial line with two ends.
pub struct PtyPair {
    child: Child,
    pub a: PathBuf,
    pub b: PathBuf,
}

impl PtyPair {
    pub fn new(dir: &Path) -> PtyPair {
        let (a, b) = (dir.join("ttyA"), dir.join("ttyB"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (scripts/test.sh installs it)");
        let t0 = Instant::now();
        while !(a.exists() && b.exists()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "socat did not create the pty pair"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PtyPair { child, a, b }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `influxd` 1.x (Debian's `influxdb` package) on free loopback
/// ports with its data in `dir`; stopped on drop.
pub struct Influxd {
    child: Child,
    pub url: String,
    conf: PathBuf,
    log: PathBuf,
}

impl Influxd {
    pub fn start(dir: &Path) -> Influxd {
        let port = super::free_port();
        let rpc = super::free_port();
        let root = dir.join(format!("influxd-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        let conf = root.join("influxd.conf");
        std::fs::write(
            &conf,
            format!(
                "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n\
                 [meta]\ndir = \"{r}/meta\"\n[data]\ndir = \"{r}/data\"\nwal-dir = \"{r}/wal\"\nquery-log-enabled = false\n\
                 [http]\nbind-address = \"127.0.0.1:{port}\"\nlog-enabled = false\n\
                 [monitor]\nstore-enabled = false\n",
                r = root.display()
            ),
        )
        .unwrap();
        let log = root.join("influxd.log");
        let url = format!("http://127.0.0.1:{port}");
        let child = Self::spawn(&conf, &log, &url);
        Influxd {
            child,
            url,
            conf,
            log,
        }
    }

    fn spawn(conf: &Path, log: &Path, url: &str) -> Child {
        let child = Command::new("influxd")
            .arg("-config")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .expect("influxd must be installed (Debian package `influxdb`; scripts/test.sh installs it)");
        let client = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        while !client
            .get(format!("{url}/ping"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(t0.elapsed() < Duration::from_secs(30), "influxd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    /// Kills the server (an outage); `restart` brings it back with its data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.conf, &self.log, &self.url);
    }

    /// Runs an InfluxQL statement; the JSON answer.
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/query", self.url))
            .form(&[("db", db), ("q", q), ("epoch", "ns")])
            .send()
            .expect("query");
        let text = resp.text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// The rows of the first series of a query (`columns` → values).
    pub fn rows(&self, db: &str, q: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let v = self.query(db, q);
        let Some(series) = v["results"][0]["series"].as_array() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in series {
            let cols: Vec<String> = s["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            for row in s["values"].as_array().unwrap() {
                let mut m = serde_json::Map::new();
                for (c, v) in cols.iter().zip(row.as_array().unwrap()) {
                    m.insert(c.clone(), v.clone());
                }
                if let Some(tags) = s["tags"].as_object() {
                    for (k, v) in tags {
                        m.insert(k.clone(), v.clone());
                    }
                }
                out.push(m);
            }
        }
        out
    }

    /// Writes raw line protocol (to prepare a conflict).
    pub fn write(&self, db: &str, lines: &str) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/write?db={db}&precision=ns", self.url))
            .body(lines.to_string())
            .send()
            .expect("write");
        assert!(r.status().is_success(), "{:?}", r.text());
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private VictoriaMetrics (Debian's `victoria-metrics`), which accepts
/// the InfluxDB v2 write API; stopped on drop.
pub struct VictoriaMetrics {
    child: Child,
    pub url: String,
}

impl VictoriaMetrics {
    pub fn start(dir: &Path) -> VictoriaMetrics {
        Self::start_with_auth(dir, None)
    }

    /// With HTTP Basic auth on every endpoint (`-httpAuth.*`).
    pub fn start_with_auth(dir: &Path, auth: Option<(&str, &str)>) -> VictoriaMetrics {
        let port = super::free_port();
        let data = dir.join(format!("vm-{port}"));
        let mut cmd = Command::new("victoria-metrics");
        cmd.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg("-search.latencyOffset=0s")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((u, p)) = auth {
            cmd.arg(format!("-httpAuth.username={u}"))
                .arg(format!("-httpAuth.password={p}"));
        }
        let child = cmd
            .spawn()
            .expect("victoria-metrics must be installed (Debian package; scripts/test.sh installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::new();
        let t0 = Instant::now();
        while !{
            let mut req = client.get(format!("{url}/health"));
            if let Some((u, p)) = auth {
                req = req.basic_auth(u, Some(p));
            }
            req.send().is_ok_and(|r| r.status().is_success())
        } {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "victoria-metrics did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        VictoriaMetrics { child, url }
    }

    /// Every stored sample of series matching `selector`, via `/api/v1/export`
    /// (one JSON object per series: `metric`, `values`, `timestamps` in ms).
    pub fn export(&self, selector: &str) -> Vec<serde_json::Value> {
        let client = reqwest::blocking::Client::new();
        // Make recently written rows searchable.
        let _ = client.get(format!("{}/internal/force_flush", self.url)).send();
        let text = client
            .get(format!("{}/api/v1/export", self.url))
            .query(&[("match[]", selector)])
            .send()
            .expect("export")
            .text()
            .unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
