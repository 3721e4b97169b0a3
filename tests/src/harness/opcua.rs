//! Real OPC UA servers for the driver tests: `tests/peers/opcua_server.py`
//! (Python asyncua) and `tests/peers/opcua_node_server.js` (node-opcua),
//! installed by `scripts/test.sh` (`ensure_opcua_peers`) and started on a
//! free loopback port. Each writes a JSON state file (sessions created,
//! writes served). A missing peer fails the test loudly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `ensure_opcua_peers` installs node-opcua.
pub fn node_modules() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_NODE_OPCUA") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or(PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/gateway_rust/node-opcua/node_modules")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Implementation {
    Asyncua,
    NodeOpcua,
}

/// A running test server; stopped on drop.
pub struct OpcuaServer {
    child: Option<Child>,
    pub kind: Implementation,
    pub port: u16,
    /// `opc.tcp://127.0.0.1:<port>/gateway-test/` (node-opcua: no final `/`)
    pub url: String,
    pub state: PathBuf,
    /// The asyncua server's certificate directory (`server_cert.der`).
    pub pki: PathBuf,
    args: Vec<String>,
}

impl OpcuaServer {
    /// The asyncua server with `extra` arguments (`--secure`, `--users a:b`, …).
    pub fn asyncua(dir: &Path, extra: &[&str]) -> OpcuaServer {
        Self::start(dir, Implementation::Asyncua, extra)
    }

    /// The node-opcua server.
    pub fn node(dir: &Path) -> OpcuaServer {
        Self::start(dir, Implementation::NodeOpcua, &[])
    }

    fn start(dir: &Path, kind: Implementation, extra: &[&str]) -> OpcuaServer {
        let port = super::free_port();
        let state = dir.join(format!("opcua-state-{port}.json"));
        let pki = dir.join(format!("opcua-server-pki-{port}"));
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--state".into(),
            state.display().to_string(),
        ];
        if kind == Implementation::Asyncua {
            args.extend(["--pki-dir".to_string(), pki.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = OpcuaServer {
            child: None,
            kind,
            port,
            // asyncua serves `/gateway-test/`, node-opcua `/gateway-test`.
            url: match kind {
                Implementation::Asyncua => format!("opc.tcp://127.0.0.1:{port}/gateway-test/"),
                Implementation::NodeOpcua => format!("opc.tcp://127.0.0.1:{port}/gateway-test"),
            },
            state,
            pki,
            args,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let repo = super::repo_dir();
        let mut cmd = match self.kind {
            Implementation::Asyncua => {
                let mut c = Command::new("python3");
                c.arg(repo.join("tests/peers/opcua_server.py"));
                c
            }
            Implementation::NodeOpcua => {
                let mut c = Command::new("node");
                c.arg(repo.join("tests/peers/opcua_node_server.js"))
                    .env("NODE_PATH", node_modules());
                c
            }
        };
        let mut child = cmd
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {:?} OPC UA peer: {e}", self.kind));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("READY") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "the {:?} OPC UA peer did not become READY ({status:?}); install it with \
                 `source scripts/lib/common.sh && ensure_opcua_peers` (scripts/test.sh does)",
                self.kind
            );
        }
        self.child = Some(child);
    }

    /// SIGKILL (a server crash or power cut) and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the server process (`SIGUSR1`: the asyncua peer
    /// drops every subscription without a word).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Starts the same server again (same port, certificate and options).
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.state);
        // The port was just released; a listener may linger briefly.
        let t0 = Instant::now();
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err()
            && t0.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn();
    }

    /// The state file (`{}` before the server wrote one).
    pub fn state(&self) -> serde_json::Value {
        std::fs::read_to_string(&self.state)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    pub fn sessions_created(&self) -> u64 {
        self.state()["sessions_created"].as_u64().unwrap_or(0)
    }

    pub fn writes(&self) -> Vec<serde_json::Value> {
        self.state()["writes"].as_array().cloned().unwrap_or_default()
    }

    /// The server certificate (DER) of the asyncua server.
    pub fn certificate(&self) -> Vec<u8> {
        std::fs::read(self.pki.join("server_cert.der")).expect("server certificate")
    }
}

impl Drop for OpcuaServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGTERM first: a clean exit; then make sure.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
