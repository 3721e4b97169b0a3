//! SIGKILL crash test of the frame bus (`batch` durability mode).
//!
//! A child process publishes from 4 tasks and reports every acknowledged seq
//! through a pipe; the parent kills it with SIGKILL at a random moment, then
//! reopens the bus and checks: every reported seq is stored with a valid CRC
//! and the payload the child published under it; the stored seqs are
//! 1..=head without a gap; the consumer's persisted cursor never exceeds what
//! it acknowledged, and it resumes there; a new publish gets head + 1.
//!
//! SIGKILL keeps the kernel page cache, so this proves the WAL write path and
//! recovery, not the fsync itself (a power cut needs a fault-injecting block
//! device; see docs/testing.md).
//!
//! Rounds: `GATEWAY_CRASH_ROUNDS` (default 20); seed: `GATEWAY_CRASH_SEED`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use frame_bus::{BusConfig, FrameBus, RetentionConfig, StartFrom};

fn no_retention() -> RetentionConfig {
    RetentionConfig {
        max_age: None,
        max_bytes: None,
        interval: Duration::from_secs(3600),
    }
}
use proto::FrameType;

struct RoundLog {
    published: HashMap<u64, (u64, u64)>,
    max_ack: u64,
}

fn run_child_and_kill(dir: &std::path::Path, kill_after: Duration) -> RoundLog {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wal_crash_child"))
        .arg(dir)
        .arg("4")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    // Wait for READY (bounded), then let it run for `kill_after`.
    let first = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("child became ready");
    assert_eq!(first, "READY");
    let deadline = Instant::now() + kill_after;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("child exited before the kill"),
        }
    }
    child.kill().expect("SIGKILL child"); // std's kill() is SIGKILL on Unix
    let status = child.wait().expect("reap child");
    assert!(!status.success());
    reader.join().expect("reader thread");
    // Lines already written before the kill are still in the pipe: take them all.
    lines.extend(rx.try_iter());
    let mut log = RoundLog {
        published: HashMap::new(),
        max_ack: 0,
    };
    for l in lines {
        let parts: Vec<&str> = l.split(' ').collect();
        match parts.as_slice() {
            ["P", seq, p, n] => {
                let (Ok(seq), Ok(p), Ok(n)) = (seq.parse(), p.parse(), n.parse()) else {
                    continue; // a line torn by the kill
                };
                log.published.insert(seq, (p, n));
            }
            ["A", seq] => {
                if let Ok(s) = seq.parse::<u64>() {
                    log.max_ack = log.max_ack.max(s);
                }
            }
            _ => {}
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_batch_publishing_loses_no_acknowledged_frame() {
    let rounds: u32 = std::env::var("GATEWAY_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("GATEWAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test: {rounds} rounds, seed {seed} (GATEWAY_CRASH_SEED to replay)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut total_reported = 0usize;
    let mut prev_ack_bound = 0u64;
    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.u64(20..600));
        let log = run_child_and_kill(dir.path(), kill_after);
        total_reported += log.published.len();
        // Publishers of earlier rounds restarted their counters; key by seq.
        for (seq, v) in &log.published {
            assert!(
                all.insert(*seq, *v).is_none(),
                "round {round}: seq {seq} acknowledged twice"
            );
        }
        // No retention in the checker: it must see every frame the child stored.
        let bus = FrameBus::open(
            dir.path(),
            BusConfig {
                retention: no_retention(),
                ..BusConfig::default()
            },
        )
        .expect("reopen after SIGKILL");
        let head = bus.head_seq();
        let max_reported = log.published.keys().max().copied().unwrap_or(0);
        assert!(
            head >= max_reported,
            "round {round}: head {head} < acknowledged {max_reported}"
        );

        // The consumer's cursor is never ahead of what it acknowledged and
        // resumes right after it.
        let cursor = bus
            .stats()
            .consumers
            .iter()
            .find(|c| c.name == "crash-consumer")
            .map(|c| c.persisted_cursor)
            .unwrap_or(0);
        assert!(
            cursor <= log.max_ack.max(prev_ack_bound),
            "round {round}: cursor {cursor} beyond acks"
        );
        prev_ack_bound = prev_ack_bound.max(log.max_ack);
        let resume = bus.subscribe("crash-consumer", None).unwrap();
        assert_eq!(resume.position(), cursor + 1);
        drop(resume);

        // Every stored frame 1..=head is there, intact, and every
        // acknowledged one carries what the child published under its seq.
        let mut sub = bus.subscribe("verify", Some(StartFrom::Earliest)).unwrap();
        let mut expect = 1;
        while expect <= head {
            let batch = tokio::time::timeout(Duration::from_secs(60), sub.recv_batch(4096))
                .await
                .unwrap_or_else(|_| panic!("round {round}: frame {expect} never delivered"))
                .unwrap();
            for f in batch {
                assert_eq!(
                    f.sequence_id, expect,
                    "round {round}: gap before {}",
                    f.sequence_id
                );
                if let Some((p, n)) = all.get(&f.sequence_id) {
                    assert_eq!(
                        f.data,
                        tests::crash_payload(*p, *n),
                        "round {round}: seq {expect}"
                    );
                }
                expect += 1;
            }
        }
        assert_eq!(bus.stats().corrupt_frames_total, 0, "round {round}");
        drop(sub);
        bus.remove_consumer("verify").unwrap();
        // Sequence continues after the last stored frame.
        let seq = bus.publish(FrameType::Heartbeat, vec![]).await.unwrap();
        assert_eq!(seq, head + 1, "round {round}");
        bus.close();
        drop(bus);
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} acknowledged this round, head {head}, cursor {cursor}",
            log.published.len()
        );
    }
    assert!(total_reported > 0, "the child acknowledged frames");
}
