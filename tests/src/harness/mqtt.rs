//! MQTT peers: a private Mosquitto on a free loopback port (persistence
//! on, so it can be stopped and started mid-stream with its sessions and
//! queued messages), `mosquitto_pub` for publishing, and a subscriber
//! thread (rumqttc, persistent session, QoS 1) that records every message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    pub log: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, "")
    }

    /// A broker whose listener has `listener_conf` (e.g. TLS settings).
    pub fn start_with(dir: &Path, listener_conf: &str) -> Mosquitto {
        let port = super::free_port();
        let root = dir.join(format!("mosquitto-{port}"));
        std::fs::create_dir_all(&root).unwrap();
        let conf = root.join("mosquitto.conf");
        let log = root.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener_conf}allow_anonymous true\npersistence true\n\
                 persistence_location {r}/\nautosave_interval 1\nmax_queued_messages 0\n\
                 max_inflight_messages 20\nuser root\nlog_dest file {l}\n",
                r = root.display(),
                l = log.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
            log,
        };
        m.restart();
        m
    }

    /// Stops the broker the way a service manager does (SIGTERM: it saves
    /// its sessions and queued messages).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (Debian packages mosquitto, mosquitto-clients; scripts/test.sh installs them)");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A handle that only publishes to a broker another handle runs.
    pub fn client_only(port: u16) -> Mosquitto {
        Mosquitto {
            child: None,
            port,
            conf: PathBuf::new(),
            log: PathBuf::new(),
        }
    }

    /// The last `n` lines of the broker's log (for failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Publishes each line as one message and waits until the broker
    /// confirmed them all; false when the broker was not reachable. (A
    /// rumqttc client: `mosquitto_pub -l` loses messages in bulk, see
    /// `tests::mqtt_pub`.)
    pub fn publish_lines(&self, topic: &str, qos: u8, lines: &[String]) -> bool {
        let payloads = lines.iter().map(|l| l.clone().into_bytes()).collect();
        crate::mqtt_pub::publish_all(self.port, topic, qos, 100, payloads).is_ok()
    }

    /// Publishes one message with exactly these bytes (`mosquitto_pub -s`).
    pub fn publish(&self, topic: &str, qos: u8, payload: &[u8]) {
        self.publish_with(&[], topic, qos, payload)
    }

    /// [`Mosquitto::publish`] with more `mosquitto_pub` arguments (TLS).
    pub fn publish_with(&self, args: &[&str], topic: &str, qos: u8, payload: &[u8]) {
        let mut c = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                topic,
                "-q",
                &qos.to_string(),
                "-s",
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto_pub (package mosquitto-clients)");
        c.stdin.take().unwrap().write_all(payload).unwrap();
        assert!(c.wait().unwrap().success(), "mosquitto_pub failed");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every message a subscriber received: (topic, payload).
pub type Inbox = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A QoS 1 subscriber on a persistent session that reconnects by itself
/// (across broker restarts) and records every message, in arrival order.
pub struct Subscriber {
    pub inbox: Inbox,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
        // Frame-mode messages of a backlog carry hundreds of samples:
        // rumqttc's default 10 KiB limit would refuse them and reconnect
        // for ever (its session redelivers the same message).
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 1024);
        let inbox: Inbox = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (i2, s2, f) = (inbox.clone(), stop.clone(), filter.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for ev in conn.iter() {
                if s2.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client.subscribe(f.clone(), rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        i2.lock().unwrap().push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the test subscriber did not get its SUBACK");
        Subscriber {
            inbox,
            stop,
            thread: Some(thread),
        }
    }

    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.inbox.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // The thread ends at its next event (a keep-alive at the latest).
        if let Some(t) = self.thread.take() {
            drop(t);
        }
    }
}
