//! `gateway`: the Gateway_Rust binary (wiring, sinks, alert engine, HTTP, CLI).
//!
//! This first cut carries the CLI skeleton and an inspection command for the
//! frame bus; the runtime (config, drivers, sinks) arrives with later issues.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Industrial edge gateway: field devices → durable frame bus → storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Frame bus (WAL) maintenance.
    Wal {
        #[command(subcommand)]
        command: WalCmd,
    },
}

#[derive(Subcommand)]
enum WalCmd {
    /// Open a bus directory and print its positions, consumers and counters.
    Stats {
        /// The bus directory (`<data_dir>/wal`).
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => {
            println!("gateway {} — see `gateway --help`", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some(Cmd::Wal {
            command: WalCmd::Stats { dir },
        }) => wal_stats(&dir),
    }
}

fn wal_stats(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.exists() {
        anyhow::bail!("{}: no such bus directory", dir.display());
    }
    // Inspection must never delete anything: no retention limits here.
    let config = frame_bus::BusConfig {
        retention: frame_bus::RetentionConfig {
            max_age: None,
            max_bytes: None,
            interval: std::time::Duration::from_secs(24 * 3600),
        },
        ..frame_bus::BusConfig::default()
    };
    let bus = frame_bus::FrameBus::open(dir, config)
        .with_context(|| format!("opening frame bus at {}", dir.display()))?;
    let s = bus.stats();
    println!("path          {}", dir.display());
    println!("head_seq      {}", s.head_seq);
    println!("oldest_seq    {}", s.oldest_seq);
    println!("stored_frames {}", s.stored_frames);
    println!("approx_bytes  {}", s.approx_bytes);
    println!("malformed_keys {}", s.malformed_keys_total);
    println!("corrupt_cursors {}", s.corrupt_cursors_total);
    for c in &s.consumers {
        println!(
            "consumer {:<24} cursor {:>12} lag {:>12}",
            c.name, c.persisted_cursor, c.lag
        );
    }
    bus.close();
    Ok(())
}
