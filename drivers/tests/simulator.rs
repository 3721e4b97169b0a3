//! The simulator driver end to end through the `DriverHost` contract:
//! generators, scaling, range quality, deadband, error bursts, scan rates,
//! shutdown. The host here records what it is given (it is the driver's
//! only peer; the bus side is tested in the gateway's end-to-end tests).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drivers::{DriverHost, ErrorKind, HostError, PollReport};
use proto::{value::Kind, DataFrame, EventFrame, Quality};
use tokio::sync::watch;

#[derive(Clone, Default)]
struct Recorder {
    frames: Arc<Mutex<Vec<DataFrame>>>,
    polls: Arc<Mutex<Vec<PollReport>>>,
    fail_publish: bool,
}

impl DriverHost for Recorder {
    async fn publish(&self, frame: DataFrame) -> Result<(), HostError> {
        if self.fail_publish {
            return Err(HostError {
                message: "bus closed".into(),
                transient: false,
            });
        }
        self.frames.lock().unwrap().push(frame);
        Ok(())
    }
    async fn publish_event(&self, _event: EventFrame) -> Result<(), HostError> {
        Ok(())
    }
    fn poll_finished(&self, report: &PollReport) {
        self.polls.lock().unwrap().push(report.clone());
    }
    fn connection_changed(&self, _up: bool) {}
}

fn device(body: &str) -> Arc<config::DeviceConfig> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("devices/d.toml"),
        format!("name = \"d\"\nprotocol = \"simulator\"\nendpoint = \"sim://d\"\n{body}"),
    )
    .unwrap();
    let c =
        config::load_with_env(&dir.path().join("gateway.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(c.devices.into_iter().next().unwrap())
}

async fn run_for(
    d: Arc<config::DeviceConfig>,
    host: Recorder,
    t: Duration,
) -> Result<(), drivers::DriverError> {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(drivers::run_device(d, host, rx, drivers::write::write_queue().1));
    tokio::time::sleep(t).await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("driver stops promptly on shutdown")
        .unwrap()
}

fn values(frames: &[DataFrame], tag: &str) -> Vec<(Option<Kind>, Option<Kind>, i32)> {
    frames
        .iter()
        .flat_map(|f| f.samples.iter())
        .filter(|s| s.tag == tag)
        .map(|s| {
            (
                s.value.as_ref().and_then(|v| v.kind.clone()),
                s.raw_value.as_ref().and_then(|v| v.kind.clone()),
                s.quality,
            )
        })
        .collect()
}

#[tokio::test]
async fn generators_scaling_and_quality() {
    let d = device(
        r#"scan_interval = "10ms"
seed = 5
[[tags]]
name = "counter"
address = "counter"
data_type = "UInt32"
base = 10
step = 2
[[tags]]
name = "scaled"
address = "constant"
data_type = "Int16"
value = 1200
scaling = 0.1
offset = 5.0
max_value = 100.0
[[tags]]
name = "flag"
address = "square"
data_type = "Boolean"
period = "40ms"
[[tags]]
name = "wave"
address = "sine"
data_type = "Double"
base = 50.0
amplitude = 10.0
period = "100ms"
[[tags]]
name = "walk"
address = "random_walk"
data_type = "Double"
step = 5.0
min_value = -1.0
max_value = 1.0
"#,
    );
    let host = Recorder::default();
    run_for(d, host.clone(), Duration::from_millis(300))
        .await
        .unwrap();
    let frames = host.frames.lock().unwrap().clone();
    assert!(frames.len() >= 5, "polled at 10 ms for 300 ms: {}", frames.len());
    assert!(frames.iter().all(|f| f.device_id == "d" && f.samples.len() == 5));

    // Counter: integers, base 10, step 2, no scaling → no raw_value.
    let c = values(&frames, "counter");
    let ints: Vec<u64> = c
        .iter()
        .map(|(v, raw, q)| {
            assert!(raw.is_none());
            assert_eq!(*q, Quality::Good as i32);
            match v {
                Some(Kind::UintValue(u)) => *u,
                other => panic!("counter value {other:?}"),
            }
        })
        .collect();
    assert_eq!(ints[..3], [10, 12, 14]);

    // Scaled constant: 1200 * 0.1 + 5 = 125 > max 100 → UNCERTAIN, raw kept.
    for (v, raw, q) in values(&frames, "scaled") {
        assert_eq!(v, Some(Kind::FloatValue(125.0)));
        assert_eq!(raw, Some(Kind::IntValue(1200)));
        assert_eq!(q, Quality::Uncertain as i32);
    }
    // Square: booleans, both states seen over several periods.
    let flags: Vec<bool> = values(&frames, "flag")
        .into_iter()
        .map(|(v, ..)| matches!(v, Some(Kind::BoolValue(true))))
        .collect();
    assert!(flags.contains(&true) && flags.contains(&false), "{flags:?}");
    // Sine within base ± amplitude; random walk clamped to its range.
    for (v, ..) in values(&frames, "wave") {
        let Some(Kind::FloatValue(f)) = v else { panic!() };
        assert!((40.0..=60.0).contains(&f), "{f}");
    }
    for (v, ..) in values(&frames, "walk") {
        let Some(Kind::FloatValue(f)) = v else { panic!() };
        assert!((-1.0..=1.0).contains(&f), "{f}");
    }
    let polls = host.polls.lock().unwrap();
    assert!(polls.iter().all(|p| p.error().is_none() && p.samples == 5));
}

#[tokio::test]
async fn deadband_suppresses_small_moves_and_scan_rates_group_tags() {
    let d = device(
        r#"scan_interval = "10ms"
[[tags]]
name = "flat"
address = "constant"
data_type = "Double"
value = 1.5
deadband = 0.1
[[tags]]
name = "slow"
address = "counter"
data_type = "Int64"
scan_rate = "100ms"
"#,
    );
    let host = Recorder::default();
    run_for(d, host.clone(), Duration::from_millis(350))
        .await
        .unwrap();
    let frames = host.frames.lock().unwrap().clone();
    // The constant passes the deadband once; later polls publish nothing for it.
    assert_eq!(values(&frames, "flat").len(), 1);
    // The 100 ms group polled ~4 times in 350 ms, in frames of its own.
    let slow = values(&frames, "slow").len();
    assert!((2..=5).contains(&slow), "slow polled {slow} times");
    assert!(frames.iter().all(|f| f.samples.len() == 1));
    // The 10 ms group kept polling (empty polls are reported, not published).
    assert!(host.polls.lock().unwrap().len() > 10);
}

#[tokio::test]
async fn error_bursts_give_bad_samples_and_device_errors() {
    let d = device(
        r#"scan_interval = "10ms"
error_rate = 1.0
error_burst = 2
[[tags]]
name = "t"
address = "sine"
data_type = "Float"
"#,
    );
    let host = Recorder::default();
    run_for(d, host.clone(), Duration::from_millis(150))
        .await
        .unwrap();
    let frames = host.frames.lock().unwrap().clone();
    assert!(!frames.is_empty());
    for s in frames.iter().flat_map(|f| &f.samples) {
        assert_eq!(s.quality, Quality::Bad as i32);
        assert_eq!(s.error_code, drivers::simulator::SIMULATED_FAULT);
        assert!(s.value.is_none());
    }
    assert!(host
        .polls
        .lock()
        .unwrap()
        .iter()
        .all(|p| p.error() == Some(ErrorKind::Device)));
}

#[tokio::test]
async fn a_refused_publish_ends_the_driver_with_an_error() {
    let d = device(
        "scan_interval = \"10ms\"\n[[tags]]\nname = \"t\"\naddress = \"ramp\"\ndata_type = \"Double\"\n",
    );
    let host = Recorder {
        fail_publish: true,
        ..Recorder::default()
    };
    let (_stop, rx) = watch::channel(false);
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        drivers::run_device(d, host.clone(), rx, drivers::write::write_queue().1),
    )
    .await
    .expect("returns");
    assert!(matches!(r, Err(drivers::DriverError::Publish(_))), "{r:?}");
    // The poll whose frame could not be handed to the bus reports it.
    assert_eq!(
        host.polls.lock().unwrap().last().unwrap().error(),
        Some(ErrorKind::Bus)
    );
}
