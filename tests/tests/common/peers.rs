//! Real device peers for driver tests: the pymodbus server of
//! `tests/peers/modbus_server.py` (installed by `scripts/test.sh`, see
//! `ensure_modbus_peer`) on a loopback port or a `socat` pty pair. A
//! missing Python module or socat fails the test loudly.

#![allow(dead_code)]

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
