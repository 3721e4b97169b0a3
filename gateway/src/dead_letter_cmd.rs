//! `gateway dead-letter list|replay`: the lines a sink's server refused
//! (`<data_dir>/dead-letter/<sink>.jsonl`, one JSON record per line).
//!
//! `replay` sends each line again, one request per line, after the cause
//! was fixed (e.g. a field type conflict resolved by dropping a
//! measurement). Lines that go through are removed from the file; lines
//! still refused stay, with the new error. The file is rewritten through a
//! temporary file and a rename, so a crash leaves the old or the new one.
//! Run it while the gateway is stopped, or at least while the sink is not
//! dead-lettering, as the gateway appends to the same file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use config::SinkKind;

use crate::sinks::influx::{Outcome, Writer};
use crate::Failure;

#[derive(Subcommand)]
pub enum DeadLetterCmd {
    /// Count the set-aside lines of every sink, with the latest error.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send a sink's set-aside lines again; keep the ones still refused.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Sink name (`[sinks.NAME]`).
        #[arg(long)]
        sink: String,
    },
}

fn file(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("dead-letter").join(format!("{sink}.jsonl"))
}

fn records(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    };
    // A torn last line (crash mid-append) is skipped.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

pub fn run(cmd: DeadLetterCmd) -> Result<(), Failure> {
    match cmd {
        DeadLetterCmd::List { config } => {
            let c = crate::load_config(&config)?;
            for name in c.gateway.sinks.keys() {
                let path = file(&c.gateway.data_dir, name);
                let r = records(&path).map_err(Failure::Runtime)?;
                match r.last() {
                    None => println!("{name:<20} 0 lines"),
                    Some(last) => println!(
                        "{name:<20} {} lines in {}; latest {}: {}",
                        r.len(),
                        path.display(),
                        last["ts"].as_str().unwrap_or("?"),
                        last["error"].as_str().unwrap_or("?")
                    ),
                }
            }
            Ok(())
        }
        DeadLetterCmd::Replay { config, sink } => {
            let c = crate::load_config(&config)?;
            let Some(SinkKind::Influx(cfg)) = c.gateway.sinks.get(&sink).map(|s| &s.kind) else {
                return Err(Failure::Runtime(anyhow!(
                    "no InfluxDB sink named {sink:?} in {}",
                    config.display()
                )));
            };
            let path = file(&c.gateway.data_dir, &sink);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Runtime(e.into()))?;
            rt.block_on(replay(cfg, &path)).map_err(Failure::Runtime)
        }
    }
}

async fn replay(cfg: &config::InfluxSinkConfig, path: &Path) -> anyhow::Result<()> {
    let all = records(path)?;
    if all.is_empty() {
        println!("nothing to replay in {}", path.display());
        return Ok(());
    }
    let writer = Writer::new(cfg).map_err(|e| anyhow!("{e}"))?;
    let mut kept = Vec::new();
    let mut written = 0;
    for (i, mut r) in all.into_iter().enumerate() {
        let line = format!("{}\n", r["line"].as_str().unwrap_or_default());
        match writer.post(&line).await {
            Outcome::Written => written += 1,
            Outcome::Refused { message } => {
                r["error"] = message.into();
                kept.push(r);
            }
            Outcome::Retry { cause, .. } | Outcome::Misconfigured { message: cause, .. } => {
                // The server is not taking writes: keep this and the rest.
                kept.push(r);
                kept.extend(records(path)?.into_iter().skip(i + 1));
                rewrite(path, &kept)?;
                return Err(anyhow!("stopped after {written} lines: {cause}"));
            }
        }
    }
    rewrite(path, &kept)?;
    println!(
        "{written} lines written, {} still refused (kept in {})",
        kept.len(),
        path.display()
    );
    Ok(())
}

fn rewrite(path: &Path, records: &[serde_json::Value]) -> anyhow::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    for r in records {
        writeln!(f, "{r}")?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
