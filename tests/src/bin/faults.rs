//! The fault suite runner: every scenario of `tests::faults` against the
//! real gateway and real peers, one results table.
//!
//! ```text
//! faults [--short] [--only NAME[,NAME…]] [--kill-rounds N] [--outage SECS] [--out FILE]
//! ```
//! Default is the documented run ([`Opts::full`]); `--short` is the CI
//! form. The table (markdown, with each scenario's notes) goes to stdout
//! and, with `--out`, to FILE. Exit status 1 if a scenario failed.
//! `scripts/faults.sh` builds and runs it with the peers it needs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::faults::{scenarios, Opts, Report, Verdict};

fn main() -> Result<()> {
    let mut opts = Opts::full();
    let mut only: Option<Vec<String>> = None;
    let mut out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{a} needs {what}"));
        match a.as_str() {
            "--short" => opts = Opts::short(),
            "--only" => only = Some(value("names")?.split(',').map(str::to_string).collect()),
            "--kill-rounds" => opts.kill_rounds = value("a number")?.parse()?,
            "--outage" => opts.outage = Duration::from_secs(value("seconds")?.parse()?),
            "--out" => out = Some(value("a file")?),
            "-h" | "--help" => {
                println!(
                    "faults [--short] [--only NAME[,NAME…]] [--kill-rounds N] [--outage SECS] [--out FILE]"
                );
                for (name, _) in scenarios::all() {
                    println!("  {name}");
                }
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    let chosen: Vec<_> = scenarios::all()
        .into_iter()
        .filter(|(n, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n)))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario matches {only:?} (see --help)");
    }
    eprintln!("fault suite: {} scenario(s), {opts:?}", chosen.len());
    let t0 = Instant::now();
    let mut reports: Vec<Report> = Vec::new();
    for (name, run) in chosen {
        eprintln!("== {name}");
        let started = Instant::now();
        let r = match std::panic::catch_unwind(|| run(&opts)) {
            Ok(r) => r,
            Err(p) => {
                let why = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                let mut r = Report::not_run(name, String::new());
                r.verdict = Verdict::Fail(format!("panicked: {}", why.lines().next().unwrap_or("")));
                r
            }
        };
        eprintln!("{r}(took {:.0} s)", started.elapsed().as_secs_f64());
        reports.push(r);
    }
    let mut table = format!("{}\n", Report::header());
    for r in &reports {
        table.push_str(&r.row());
        table.push('\n');
    }
    table.push('\n');
    for r in &reports {
        for n in &r.notes {
            table.push_str(&format!("- `{}`: {n}\n", r.scenario));
        }
    }
    table.push_str(&format!(
        "\nRun took {:.1} min ({opts:?}).\n",
        t0.elapsed().as_secs_f64() / 60.0
    ));
    println!("{table}");
    if let Some(path) = out {
        std::fs::write(&path, &table).with_context(|| format!("writing {path}"))?;
    }
    if reports.iter().any(|r| matches!(r.verdict, Verdict::Fail(_))) {
        std::process::exit(1);
    }
    Ok(())
}
