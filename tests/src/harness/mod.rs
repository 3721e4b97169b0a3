//! Harness for tests that run the real `gateway` binary: copies the demo
//! configuration into a temp dir, starts the gateway on a free loopback
//! port, talks HTTP to it, signals it and inspects its WAL with the CLI.
//!
//! The binary is `$GATEWAY_BIN`, or `gateway` next to the test executable's
//! `deps/` directory (cargo builds it for `cargo test --workspace`). A missing
//! binary fails the test loudly.

pub mod mqtt;
pub mod opcua;
pub mod peers;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A test runs from `target/<profile>/deps/`, a helper binary (the fault
    // runner) from `target/<profile>/`: the gateway is in the latter.
    let bin = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("gateway"))
        .find(|b| b.is_file())
        .unwrap_or_else(|| PathBuf::from("target/<profile>/gateway"));
    assert!(
        bin.is_file(),
        "gateway binary not found at {} (build it with `cargo build --release --workspace --all-targets` or set GATEWAY_BIN)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A temp copy of `deploy/demo` whose data dir lives inside it.
pub struct DemoDir {
    pub dir: tempfile::TempDir,
}

impl Default for DemoDir {
    fn default() -> DemoDir {
        DemoDir::new()
    }
}

impl DemoDir {
    /// A temp copy of `deploy/demo`.
    pub fn new() -> DemoDir {
        let src = manifest_dir().join("../deploy/demo");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("devices")).unwrap();
        std::fs::copy(src.join("gateway.toml"), dir.path().join("gateway.toml")).unwrap();
        for e in std::fs::read_dir(src.join("devices")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join("devices").join(e.file_name())).unwrap();
        }
        DemoDir { dir }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn wal(&self) -> PathBuf {
        self.data().join("wal")
    }
}

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    http: reqwest::blocking::Client,
}

impl Gateway {
    /// Starts `gateway run` and waits until `/readyz` answers 200.
    pub fn start(demo: &DemoDir, extra_env: &[(&str, &str)]) -> Gateway {
        let mut g = Self::spawn(demo, extra_env);
        g.wait_until("ready", Duration::from_secs(60), |g| {
            g.get("/readyz").map(|(s, _)| s == 200).unwrap_or(false)
        });
        g
    }

    /// Starts `gateway run` and waits until `/healthz` answers (the
    /// process serves HTTP; a sink may still be failing).
    pub fn spawn(demo: &DemoDir, extra_env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let log = demo.dir.path().join(format!("gateway-{port}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(gateway_bin());
        cmd.args(["run", "--config"])
            .arg(demo.config())
            .env("GATEWAY_DATA_DIR", demo.data())
            .env("GATEWAY_HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gateway");
        let mut g = Gateway {
            child,
            port,
            log,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        g.wait_until("HTTP", Duration::from_secs(60), |g| g.get("/healthz").is_some());
        g
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `cond` every 100 ms; panics with the gateway's log after `limit`.
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut(&mut Gateway) -> bool) {
        let t0 = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gateway exited ({status}) while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            if t0.elapsed() > limit {
                panic!("gave up waiting for {what} after {limit:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_with(path, None)
    }

    pub fn get_with(&self, path: &str, bearer: Option<&str>) -> Option<(u16, String)> {
        let mut req = self.http.get(format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().ok()?))
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/api/v1/status").expect("status reachable");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Sum of every sample of metric `name` (all label sets).
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        let mut found = None;
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            if metric == name {
                *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
            }
        }
        found
    }

    /// Metric `name` with these labels, scraped from the gateway now (see
    /// [`metric_in`]); `None` when no series matches.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (code, body) = self.get("/metrics")?;
        assert_eq!(code, 200, "{body}");
        metric_in(&body, name, labels)
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill failed");
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("gateway did not exit within {limit:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Metric `name` in a `/metrics` text, summed over the series whose labels
/// include every `(label, value)` pair given (all its series when none is);
/// `None` when no series matches. For several values of one scrape;
/// [`Gateway::metric`] scrapes itself.
pub fn metric_in(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for (n, have, v) in body.lines().filter_map(parse_series) {
        if n == name
            && labels
                .iter()
                .all(|(k, want)| have.iter().any(|(hk, hv)| hk == k && hv == want))
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// One Prometheus series: name, labels, value.
type Series = (String, Vec<(String, String)>, f64);

/// `name{a="x",b="y"} 1` → `("name", [("a", "x"), ("b", "y")], 1.0)`;
/// `None` for comments and lines that do not parse.
fn parse_series(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(['{', ' '])?;
    let name = line[..end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=')?;
            let key = r[..eq].trim().to_string();
            let inner = r[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = inner.char_indices();
            let consumed = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, n) = chars.next()?;
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                    '"' => break i + 1,
                    c => value.push(c),
                }
            };
            labels.push((key, value));
            r = &inner[consumed..];
        }
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some((name, labels, value))
}

/// The `/api/v1/status` entry of device `name`; `Value::Null` when the
/// status does not list it (yet), so a wait can poll it.
pub fn device_status(g: &Gateway, name: &str) -> serde_json::Value {
    g.status()["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Runs `gateway wal …` against a bus directory.
pub fn wal(dir: &Path, args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .arg("wal")
        .args(args)
        .arg("--wal-dir")
        .arg(dir)
        .output()
        .expect("run gateway wal")
}

/// Every frame in the WAL as JSON (via `gateway wal tail --json`).
pub fn wal_frames(dir: &Path) -> Vec<serde_json::Value> {
    let out = wal(dir, &["tail", "--from", "0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Persisted cursors `name → seq` (via `gateway wal cursors --json`).
pub fn wal_cursors(dir: &Path) -> std::collections::HashMap<String, u64> {
    let out = wal(dir, &["cursors", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["name"].as_str().unwrap().to_string(),
                v["cursor"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `[sinks.archive]`: a file sink keeping every frame as a JSON line in
/// `<data_dir>/archive.jsonl`, the ground truth of what reached the bus
/// (the WAL deletes what every consumer acknowledged). Rotation is set far
/// beyond what a test writes: a rotated-away `archive.jsonl.1` would hide
/// the oldest frames (a 100 000-message MQTT test once passed 64 MiB).
pub const ARCHIVE_SINK: &str =
    "\n[sinks.archive]\ntype = \"file\"\npath = \"archive.jsonl\"\nmax_file_size = \"4GiB\"\n";

/// Every frame of the file sink's archive in `data` (see [`ARCHIVE_SINK`]),
/// the rotated file `archive.jsonl.1` first if there is one.
pub fn archive_frames(data: &Path) -> Vec<serde_json::Value> {
    ["archive.jsonl.1", "archive.jsonl"]
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(data.join(f))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).expect("archive line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `seq`s of the file sink's JSON Lines archive.
pub fn archive_seqs(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("archive line is JSON");
            v["seq"].as_u64().expect("seq")
        })
        .collect()
}

/// This package's directory, read when the test runs (cargo sets it), not
/// baked in at compile time: the target dir is shared between checkouts, so a
/// test binary built in another clone must still find this clone's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

impl DemoDir {
    /// A config dir with `gateway.toml` (data dir and listen address from
    /// the harness's environment, no sink) and the given device files.
    pub fn with_devices(devices: &[(String, String)]) -> DemoDir {
        Self::with_gateway(devices, "")
    }

    /// [`DemoDir::with_devices`] with `extra` appended to `gateway.toml`
    /// (sinks, more sections).
    pub fn with_gateway(devices: &[(String, String)], extra: &str) -> DemoDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("devices")).unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            "gateway_id = \"test-gw\"\n\
             data_dir = \"${GATEWAY_DATA_DIR}\"\n\
             [http]\nlisten = \"${GATEWAY_HTTP_LISTEN}\"\n"
                .to_string()
                + extra,
        )
        .unwrap();
        for (name, body) in devices {
            std::fs::write(dir.path().join("devices").join(format!("{name}.toml")), body).unwrap();
        }
        DemoDir { dir }
    }
}

impl Gateway {
    /// POSTs a JSON body; `(status, parsed body)`.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!("http://127.0.0.1:{}{path}", self.port))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("POST");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }
}

/// The latest sample of every tag of `device` in `frames` (`tag → sample`).
pub fn latest_samples(
    frames: &[serde_json::Value],
    device: &str,
) -> std::collections::HashMap<String, serde_json::Value> {
    let mut out = std::collections::HashMap::new();
    for f in frames
        .iter()
        .filter(|f| f["type"] == "DATA" && f["device"] == device)
    {
        for s in f["samples"].as_array().into_iter().flatten() {
            out.insert(s["tag"].as_str().unwrap_or_default().to_string(), s.clone());
        }
    }
    out
}

/// Every sample of `tag` of `device` in `frames`, in their order (WAL or
/// archive order).
pub fn tag_samples(frames: &[serde_json::Value], device: &str, tag: &str) -> Vec<serde_json::Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "DATA" && f["device"] == device)
        .flat_map(|f| f["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["tag"] == tag)
        .collect()
}

/// A device file `(name, text)` for [`DemoDir::with_devices`]: `name`,
/// then `head` (protocol, endpoint, …), then one `[[tags]]` table per entry
/// of `tags` (see [`tag_entry`]).
pub fn device_file(name: &str, head: &str, tags: &[impl AsRef<str>]) -> (String, String) {
    let mut s = format!("name = \"{name}\"\n{head}\n");
    for t in tags {
        s.push_str("\n[[tags]]\n");
        s.push_str(t.as_ref());
        s.push('\n');
    }
    (name.to_string(), s)
}

/// The body of one `[[tags]]` table: `name`, `address`, `data_type`, then
/// `extra` (more keys, one per line) unless it is empty.
pub fn tag_entry(name: &str, address: &str, data_type: &str, extra: &str) -> String {
    let mut s = format!("name = \"{name}\"\naddress = \"{address}\"\ndata_type = \"{data_type}\"");
    if !extra.is_empty() {
        s.push('\n');
        s.push_str(extra);
    }
    s
}

pub fn repo_dir() -> PathBuf {
    manifest_dir().join("..")
}
