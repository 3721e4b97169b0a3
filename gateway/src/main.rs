//! `gateway`: the Gateway_Rust binary — wiring, sinks, HTTP, CLI.
//!
//! Commands: `run`, `check`, `wal stat|tail|cursors|set-cursor|remove-consumer`,
//! `dead-letter list|replay`, `db migrate|status`, `discover opcua`.
//! Exit codes: 0 success, 2 configuration (or usage) error, 1 runtime failure.

mod alerts;
mod audit;
mod check;
mod commands;
mod db_cmd;
mod dead_letter_cmd;
mod discover_cmd;
mod frame_json;
mod http;
mod metrics;
mod publisher;
mod runtime;
mod sinks;
mod status;
mod supervisor;
mod wal_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Industrial edge gateway: field devices → durable frame bus → storage"
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (SIGTERM/SIGINT: clean stop; SIGHUP: reload device files).
    Run {
        /// Path to gateway.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration and print a summary; exit 2 on errors.
    Check {
        /// Path to gateway.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Also print each Modbus device's read requests per scan group.
        #[arg(long)]
        plan: bool,
    },
    /// The PostgreSQL store's schema: apply migrations, or show their state.
    Db {
        #[command(subcommand)]
        command: db_cmd::DbCmd,
    },
    /// Lines a sink's server refused: list them, or send them again.
    DeadLetter {
        #[command(subcommand)]
        command: dead_letter_cmd::DeadLetterCmd,
    },
    /// Find what a device offers (OPC UA: browse variables into a device file).
    Discover {
        #[command(subcommand)]
        command: discover_cmd::DiscoverCmd,
    },
    /// Inspect or adjust the frame bus (works while the gateway runs, except set-cursor).
    Wal {
        #[command(subcommand)]
        command: WalCmd,
    },
}

/// Which bus directory to open.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct WalTarget {
    /// Path to gateway.toml (the bus is `<data_dir>/wal`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The bus directory itself.
    #[arg(long)]
    wal_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum WalCmd {
    /// Positions, size and consumer cursors.
    #[command(alias = "stats")]
    Stat {
        #[command(flatten)]
        target: WalTarget,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print frames, decoded, one per line.
    Tail {
        #[command(flatten)]
        target: WalTarget,
        /// First seq to print (default: the last `--lines` frames).
        #[arg(long)]
        from: Option<u64>,
        /// How many of the newest frames to print when `--from` is not given.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: u64,
        /// Keep printing new frames as the gateway publishes them.
        #[arg(long, short)]
        follow: bool,
        /// JSON Lines instead of the human format.
        #[arg(long)]
        json: bool,
    },
    /// Consumer cursors and their lag.
    Cursors {
        #[command(flatten)]
        target: WalTarget,
        #[arg(long)]
        json: bool,
    },
    /// Move a consumer's cursor (the gateway must be stopped): its next read starts at SEQ + 1.
    SetCursor {
        #[command(flatten)]
        target: WalTarget,
        /// Consumer (sink) name.
        name: String,
        /// Last seq to treat as acknowledged (0 = replay everything retained).
        seq: u64,
    },
    /// Delete a consumer's cursor (a removed sink), so retention stops keeping frames for it
    /// (the gateway must be stopped).
    RemoveConsumer {
        #[command(flatten)]
        target: WalTarget,
        /// Consumer (sink) name.
        name: String,
    },
}

/// Failures sorted by exit code.
pub enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: the journal and log files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

/// Loads the configuration, printing every error.
pub fn load_config(path: &std::path::Path) -> Result<config::Config, Failure> {
    config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

/// The one-shot commands (`check`, `wal`, `discover`, …) behave like other
/// Unix tools when their output pipe closes (`gateway check | head -1`):
/// SIGPIPE ends them quietly. Rust ignores SIGPIPE, so `println!` would
/// panic on EPIPE instead. `run` keeps it ignored: a peer closing a socket
/// must be an error to handle, not the end of the gateway.
fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Run { .. }) {
        default_sigpipe();
    }
    init_logging(cli.log_format);
    let result = match cli.command {
        Cmd::Run { config } => load_config(&config).and_then(|c| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("gateway")
                .build()
                .map_err(|e| Failure::Runtime(e.into()))?;
            rt.block_on(runtime::run(c)).map_err(Failure::Runtime)
        }),
        Cmd::Check { config, plan } => check::run(&config, plan),
        Cmd::Wal { command } => wal_cmd::run(command),
        Cmd::DeadLetter { command } => dead_letter_cmd::run(command),
        Cmd::Db { command } => db_cmd::run(command),
        Cmd::Discover { command } => discover_cmd::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
