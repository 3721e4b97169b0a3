//! `gateway wal …`: inspect the frame bus. `stat`, `tail` and `cursors` open
//! it read-only (a RocksDB secondary instance), so they work while the
//! gateway runs; `set-cursor` needs the gateway stopped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use frame_bus::{WalReader, WalRecord};
use serde_json::json;

use crate::{Failure, WalCmd, WalTarget};

fn dir(t: &WalTarget) -> Result<PathBuf, Failure> {
    match (&t.config, &t.wal_dir) {
        (_, Some(d)) => Ok(d.clone()),
        (Some(c), None) => Ok(crate::load_config(c)?.gateway.data_dir.join("wal")),
        (None, None) => Err(Failure::Config("give --config or --wal-dir".into())),
    }
}

fn reader(t: &WalTarget) -> Result<WalReader, Failure> {
    let d = dir(t)?;
    WalReader::open(&d)
        .with_context(|| format!("opening the frame bus at {}", d.display()))
        .map_err(Failure::Runtime)
}

pub fn run(cmd: WalCmd) -> Result<(), Failure> {
    match cmd {
        WalCmd::Stat { target, json } => stat(&target, json),
        WalCmd::Cursors { target, json } => cursors(&target, json),
        WalCmd::Tail {
            target,
            from,
            lines,
            follow,
            json,
        } => tail(&target, from, lines, follow, json),
        WalCmd::SetCursor { target, name, seq } => set_cursor(&target, &name, seq),
        WalCmd::RemoveConsumer { target, name } => remove_consumer(&target, &name),
    }
}

fn stat(t: &WalTarget, as_json: bool) -> Result<(), Failure> {
    let r = reader(t)?;
    let head = r.head_seq().map_err(anyhow::Error::from)?;
    let oldest = r.oldest_seq().map_err(anyhow::Error::from)?;
    let cursors = r.cursors().map_err(anyhow::Error::from)?;
    let bytes = dir_size(r.path());
    if as_json {
        let cs: Vec<_> = cursors
            .iter()
            .map(|(n, c)| json!({"name": n, "cursor": c, "lag": head.saturating_sub(*c)}))
            .collect();
        println!(
            "{}",
            json!({"path": r.path(), "head_seq": head, "oldest_seq": oldest,
                   "stored_frames": (head + 1).saturating_sub(oldest), "disk_bytes": bytes, "consumers": cs})
        );
        return Ok(());
    }
    println!("path           {}", r.path().display());
    println!("head_seq       {head}");
    println!("oldest_seq     {oldest}");
    println!("stored_frames  {}", (head + 1).saturating_sub(oldest));
    println!("disk_bytes     {bytes}");
    for (n, c) in &cursors {
        println!(
            "consumer {n:<24} cursor {c:>12} lag {:>12}",
            head.saturating_sub(*c)
        );
    }
    Ok(())
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn cursors(t: &WalTarget, as_json: bool) -> Result<(), Failure> {
    let r = reader(t)?;
    let head = r.head_seq().map_err(anyhow::Error::from)?;
    for (n, c) in r.cursors().map_err(anyhow::Error::from)? {
        let lag = head.saturating_sub(c);
        if as_json {
            println!("{}", json!({"name": n, "cursor": c, "lag": lag}));
        } else {
            println!("{n:<24} cursor {c:>12} lag {lag:>12}");
        }
    }
    Ok(())
}

fn tail(t: &WalTarget, from: Option<u64>, lines: u64, follow: bool, as_json: bool) -> Result<(), Failure> {
    let r = reader(t)?;
    let head = r.head_seq().map_err(anyhow::Error::from)?;
    let oldest = r.oldest_seq().map_err(anyhow::Error::from)?;
    let mut next = from.unwrap_or_else(|| (head + 1).saturating_sub(lines).max(oldest));
    let stdout = std::io::stdout();
    loop {
        let batch = r.read(next, 1024).map_err(anyhow::Error::from)?;
        if batch.is_empty() {
            if !follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
            r.refresh().map_err(anyhow::Error::from)?;
            continue;
        }
        let mut out = stdout.lock();
        for rec in &batch {
            let (seq, line) = match rec {
                WalRecord::Frame(f) => (
                    f.sequence_id,
                    if as_json {
                        crate::frame_json::frame(f).to_string()
                    } else {
                        crate::frame_json::human(f)
                    },
                ),
                WalRecord::Corrupt { seq, error } => (
                    *seq,
                    if as_json {
                        json!({"seq": seq, "corrupt": error}).to_string()
                    } else {
                        format!("#{seq:<10} CORRUPT {error}")
                    },
                ),
            };
            next = seq + 1;
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
    }
}

fn set_cursor(t: &WalTarget, name: &str, seq: u64) -> Result<(), Failure> {
    let bus = open_exclusive(t)?;
    let set = bus.set_cursor(name, seq).map_err(anyhow::Error::from)?;
    bus.close();
    println!(
        "consumer {name}: cursor set to {set} (next read starts at {})",
        set + 1
    );
    Ok(())
}

fn remove_consumer(t: &WalTarget, name: &str) -> Result<(), Failure> {
    let bus = open_exclusive(t)?;
    let removed = bus.remove_consumer(name).map_err(anyhow::Error::from)?;
    bus.close();
    if !removed {
        return Err(Failure::Runtime(anyhow::anyhow!("no consumer named {name:?}")));
    }
    println!("consumer {name}: removed; retention no longer keeps frames for it");
    Ok(())
}

/// Opens the bus for writing (fails while the gateway holds it).
fn open_exclusive(t: &WalTarget) -> Result<frame_bus::FrameBus, Failure> {
    let d = dir(t)?;
    // Never create a bus on a mistyped path.
    if !d.join("CURRENT").is_file() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{}: no frame bus in this directory (no RocksDB CURRENT file)",
            d.display()
        )));
    }
    let bus = frame_bus::FrameBus::open(
        &d,
        frame_bus::BusConfig {
            // An operator tool must never delete anything.
            retention: frame_bus::RetentionConfig {
                max_age: None,
                max_bytes: None,
                interval: Duration::from_secs(24 * 3600),
            },
            ..frame_bus::BusConfig::default()
        },
    )
    .map_err(|e| {
        let msg = e.to_string();
        if msg.contains("lock") {
            anyhow::anyhow!(
                "the frame bus at {} is in use: stop the gateway first ({msg})",
                d.display()
            )
        } else {
            anyhow::anyhow!("opening the frame bus at {}: {msg}", d.display())
        }
    })?;
    Ok(bus)
}
