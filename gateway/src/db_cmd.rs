//! `gateway db migrate|status`: the PostgreSQL store's schema, by hand.
//!
//! The database is the one of a `type = "postgres"` sink in gateway.toml
//! (`--sink NAME` when there are several). `migrate` applies the pending
//! embedded migrations (a no-op when there are none) and refuses a
//! database migrated by a newer gateway; `status` lists every version and
//! whether it is applied. Exit 0 on success, 1 on failure.

use anyhow::{anyhow, Context};
use clap::Subcommand;
use config::SinkKind;
use std::path::PathBuf;

use crate::sinks::postgres::{self, schema};
use crate::Failure;

#[derive(Subcommand)]
pub enum DbCmd {
    /// Apply pending migrations.
    Migrate {
        /// Path to gateway.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// The postgres sink whose database to migrate (needed when there are several).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Known and applied schema versions.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        sink: Option<String>,
    },
}

fn sink_config(path: &std::path::Path, sink: Option<&str>) -> Result<config::PostgresSinkConfig, Failure> {
    let c = crate::load_config(path)?;
    let pg: Vec<(&String, &config::PostgresSinkConfig)> = c
        .gateway
        .sinks
        .iter()
        .filter_map(|(n, s)| match &s.kind {
            SinkKind::Postgres(p) => Some((n, p.as_ref())),
            _ => None,
        })
        .filter(|(n, _)| sink.is_none_or(|want| want == n.as_str()))
        .collect();
    match pg.as_slice() {
        [(_, p)] => Ok((*p).clone()),
        [] => Err(Failure::Runtime(anyhow!(
            "{} has no postgres sink{}",
            path.display(),
            sink.map(|s| format!(" named {s:?}")).unwrap_or_default()
        ))),
        many => Err(Failure::Runtime(anyhow!(
            "{} has several postgres sinks ({}); choose one with --sink",
            path.display(),
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub fn run(cmd: DbCmd) -> Result<(), Failure> {
    let (cfg, migrate) = match &cmd {
        DbCmd::Migrate { config, sink } => (sink_config(config, sink.as_deref())?, true),
        DbCmd::Status { config, sink } => (sink_config(config, sink.as_deref())?, false),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(async move {
        let pool = postgres::connect(&cfg)
            .await
            .context("connecting to PostgreSQL")?;
        if migrate {
            let applied = schema::prepare(&pool, true).await?;
            if applied.is_empty() {
                println!("schema is up to date (version {})", schema::known_version());
            } else {
                println!(
                    "applied migrations {applied:?}; schema is at version {}",
                    schema::known_version()
                );
            }
        } else {
            let done = schema::applied(&pool).await?;
            let known = schema::migrations();
            for m in &known {
                let state = match done.iter().find(|a| a.version == m.version) {
                    Some(a) if !a.success => "FAILED",
                    Some(a) if a.checksum != *m.checksum => "MODIFIED",
                    Some(_) => "applied",
                    None => "pending",
                };
                println!("{:>4}  {:<8}  {}", m.version, state, m.description);
            }
            for a in done
                .iter()
                .filter(|a| known.iter().all(|m| m.version != a.version))
            {
                println!(
                    "{:>4}  {:<8}  {} (unknown to this gateway: newer)",
                    a.version, "applied", a.description
                );
            }
        }
        pool.close().await;
        Ok::<_, anyhow::Error>(())
    })
    .map_err(Failure::Runtime)
}
