//! Crash-test child: publishes frames in `batch` mode from several tasks and
//! reports each acknowledged seq on stdout (see the `tests` crate docs). It
//! also runs a consumer that acknowledges what it reads. It never exits by
//! itself; the parent kills it with SIGKILL.
//!
//! Usage: `wal_crash_child <bus dir> <publishers>`

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use frame_bus::{BusConfig, FrameBus, SyncMode};
use proto::FrameType;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("missing bus dir")?;
    let publishers: u64 = args.next().unwrap_or_else(|| "4".into()).parse()?;
    let bus = FrameBus::open(
        &dir,
        BusConfig {
            sync: SyncMode::Batch,
            cursor_flush_interval: std::time::Duration::from_millis(5),
            ..BusConfig::default()
        },
    )?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    {
        let mut o = out.lock().unwrap();
        writeln!(o, "READY")?;
        o.flush()?;
    }
    let mut sub = bus.subscribe("crash-consumer", None)?;
    let o = out.clone();
    tokio::spawn(async move {
        while let Ok(batch) = sub.recv_batch(256).await {
            let Some(last) = batch.last() else { continue };
            // Reported *before* the ack, so the parent's bound is never below
            // a cursor the writer may already have persisted.
            {
                let mut o = o.lock().unwrap();
                let _ = writeln!(o, "A {}", last.sequence_id);
                let _ = o.flush();
            }
            if sub.ack(last.sequence_id).is_err() {
                break;
            }
        }
    });
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let bus = bus.clone();
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                n += 1;
                let seq = bus
                    .publish(FrameType::Data, tests::crash_payload(p, n))
                    .await
                    .expect("publish");
                // The seq is reported only after publish returned (fsynced).
                let mut o = out.lock().unwrap();
                writeln!(o, "P {seq} {p} {n}").expect("stdout");
                o.flush().expect("stdout");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
