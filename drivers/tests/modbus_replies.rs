//! The Modbus driver against a device that answers wrongly: too few or too
//! many registers, the wrong function code, garbage bytes, silence. Every
//! bad answer must become a BAD sample with a negative error code for the
//! request that got it — never a panic, never a wrong value — and the
//! other requests of the poll must still be read. The "device" is a raw
//! TCP listener writing hand-made MBAP frames, so the driver sees exactly
//! the bytes a broken device would send.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drivers::{DriverHost, HostError, PollReport};
use proto::{value::Kind, DataFrame, EventFrame, Quality};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Default)]
struct Recorder {
    frames: Arc<Mutex<Vec<DataFrame>>>,
    events: Arc<Mutex<Vec<EventFrame>>>,
}

impl DriverHost for Recorder {
    async fn publish(&self, frame: DataFrame) -> Result<(), HostError> {
        self.frames.lock().unwrap().push(frame);
        Ok(())
    }
    async fn publish_event(&self, event: EventFrame) -> Result<(), HostError> {
        self.events.lock().unwrap().push(event);
        Ok(())
    }
    fn poll_finished(&self, _report: &PollReport) {}
    fn connection_changed(&self, _up: bool) {}
}

/// The answer to a read of holding registers at `address` (`count` asked).
fn answer(tid: [u8; 2], unit: u8, address: u16, count: u16) -> Vec<u8> {
    let regs = |n: u16| -> Vec<u8> { (0..n).flat_map(|i| (address + i).to_be_bytes()).collect() };
    let pdu: Vec<u8> = match address {
        // Short: one register fewer than asked.
        0 => [vec![3, ((count - 1) * 2) as u8], regs(count - 1)].concat(),
        // Oversized: one register more.
        10 => [vec![3, ((count + 1) * 2) as u8], regs(count + 1)].concat(),
        // Wrong function code (an FC4 answer to FC3).
        20 => [vec![4, (count * 2) as u8], regs(count)].concat(),
        // Byte count says 200 bytes, frame carries 2.
        30 => vec![3, 200, 0, 1],
        // Garbage instead of a frame.
        40 => return vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0xff],
        // Silence: no answer at all.
        50 => return Vec::new(),
        _ => [vec![3, (count * 2) as u8], regs(count)].concat(),
    };
    let len = (pdu.len() + 1) as u16;
    [
        tid.to_vec(),
        vec![0, 0],
        len.to_be_bytes().to_vec(),
        vec![unit],
        pdu,
    ]
    .concat()
}

async fn broken_device() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = [0u8; 7];
                while s.read_exact(&mut head).await.is_ok() {
                    let len = u16::from_be_bytes([head[4], head[5]]) as usize;
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if s.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let address = u16::from_be_bytes([pdu[1], pdu[2]]);
                    let count = u16::from_be_bytes([pdu[3], pdu[4]]);
                    let out = answer([head[0], head[1]], head[6], address, count);
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn device(endpoint: &str) -> Arc<config::DeviceConfig> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
    let mut body = format!(
        "name = \"broken\"\nprotocol = \"modbus-tcp\"\nendpoint = \"{endpoint}\"\n\
         scan_interval = \"100ms\"\ntimeout = \"300ms\"\nmax_retries = 100\nretry_interval = \"10ms\"\n"
    );
    for a in [0, 10, 20, 25, 30, 40, 50] {
        body.push_str(&format!(
            "[[tags]]\nname = \"r{a}\"\ntable = \"holding\"\naddress = {a}\ndata_type = \"uint32\"\n"
        ));
    }
    std::fs::write(dir.path().join("devices/broken.toml"), body).unwrap();
    let c =
        config::load_with_env(&dir.path().join("gateway.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(c.devices.into_iter().next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_replies_are_bad_samples_not_panics() {
    let endpoint = broken_device().await;
    let host = Recorder::default();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(drivers::run_device(
        device(&endpoint),
        host.clone(),
        rx,
        drivers::write::write_queue().1,
    ));
    // A few polls, each with at least one timeout.
    let t0 = std::time::Instant::now();
    while host.frames.lock().unwrap().len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no frames");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("driver stops promptly")
        .expect("driver task did not panic");
    assert!(r.is_ok(), "driver ended with {r:?}");

    let frames = host.frames.lock().unwrap().clone();
    // 7 tags apart from each other (max_gap 0): 7 requests per poll.
    for f in &frames {
        assert_eq!(f.samples.len(), 7, "every tag has a sample in every poll");
        for s in &f.samples {
            let bad = s.quality == Quality::Bad as i32;
            match s.tag.as_str() {
                "r25" => {
                    // A well-formed answer after three malformed ones still reads.
                    assert!(!bad, "{s:?}");
                    assert_eq!(
                        s.value.as_ref().and_then(|v| v.kind.clone()),
                        Some(Kind::UintValue(25 << 16 | 26))
                    );
                }
                "r0" | "r10" | "r20" => {
                    assert_eq!((bad, s.error_code), (true, drivers::modbus::MALFORMED), "{s:?}");
                    assert!(s.value.is_none(), "no value from a bad reply: {s:?}");
                }
                // A lying byte count, garbage and silence: malformed, a
                // dropped connection or a timeout (then the rest of the
                // poll fails fast) — BAD with a negative code either way.
                _ => {
                    assert!(bad && s.error_code < 0, "{s:?}");
                    assert!(s.value.is_none(), "no value from a bad reply: {s:?}");
                }
            }
        }
    }
    // The device answered (badly), so it never went Offline.
    let events = host.events.lock().unwrap();
    assert!(events.iter().all(|e| e.status == "Online"), "{events:?}");
}
