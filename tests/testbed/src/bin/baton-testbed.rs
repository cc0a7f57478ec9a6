//! `baton-testbed`: Baton's processes on hosts made of network namespaces, with real (shaped)
//! links between them. Needs root; every namespace and process it makes is removed when it ends,
//! also on Ctrl-C or SIGTERM, and whatever an earlier crashed run left is removed at its start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use baton_testbed::interference::{self, Mode, Options};
use baton_testbed::netns;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "baton-testbed",
    version,
    about = "Baton across hosts made of network namespaces on shaped links (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Moves a big region between two hosts on a limited link while the players of two other
    /// regions on the same link play; once without a move and once per way of sending the bulk
    /// state (LEDBAT under a cap: Baton's default; CUBIC under a fixed cap; BBR; CUBIC without a
    /// cap). Prints a table and writes the figures as JSON.
    Interference {
        /// The short form for CI: a 10 MB region, fewer players, the baseline and Baton's pacing
        /// against no pacing.
        #[arg(long)]
        quick: bool,
        /// The hosts' links, megabits per second each way.
        #[arg(long, default_value_t = 100)]
        mbit: u32,
        /// The links' queue, milliseconds at that rate (a deep switch buffer).
        #[arg(long, default_value_t = 300)]
        queue_ms: u32,
        /// State of the region that moves, megabytes (default 80; 10 with --quick).
        #[arg(long)]
        state_mb: Option<u64>,
        /// Share of its entities that change per tick.
        #[arg(long, default_value_t = 0.0005)]
        dirty: f64,
        /// Players in each of the two other regions (default 40; 10 with --quick).
        #[arg(long)]
        players: Option<u64>,
        /// LEDBAT's target queueing delay for the `paced` run, milliseconds (the servers'
        /// --bulk-target-ms).
        #[arg(long, default_value_t = 2.0)]
        target_ms: f64,
        /// Only these runs (baseline, paced, fixed, bbr, unpaced; default: all, or baseline,
        /// paced and unpaced with --quick).
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
        /// Where to write the figures.
        #[arg(long, default_value = "target/interference.json")]
        json: PathBuf,
    },
    /// Removes whatever a test bed left (namespaces named baton-tb-*, and every process in them).
    Clean,
}

fn main() -> ExitCode {
    if let Err(error) = netns::on_signals_clean_up() {
        eprintln!("baton-testbed: {error:#}");
        return ExitCode::FAILURE;
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("baton-testbed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(why) = netns::unavailable() {
        eprintln!("baton-testbed: skipped: {why}");
        return Ok(ExitCode::from(77));
    }
    match cli.command {
        Command::Clean => {
            netns::clean_up()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Interference { quick, mbit, queue_ms, state_mb, dirty, players, target_ms, modes, json } => {
            if mbit == 0 || queue_ms == 0 {
                anyhow::bail!("--mbit and --queue-ms must be at least 1");
            }
            if !(0.0..=1.0).contains(&dirty) {
                anyhow::bail!("--dirty is a share from 0 to 1, not {dirty}");
            }
            let base = if quick { Options::quick() } else { Options::full() };
            let options = Options {
                mbit,
                queue_ms,
                state_mb: state_mb.unwrap_or(base.state_mb),
                dirty,
                players: players.unwrap_or(base.players),
                target_ms,
                ..base
            };
            let modes: Vec<Mode> = if !modes.is_empty() {
                modes
                    .iter()
                    .map(|name| {
                        Mode::ALL
                            .into_iter()
                            .find(|mode| format!("{mode:?}").eq_ignore_ascii_case(name))
                            .with_context(|| format!("no run {name:?} (baseline, paced, fixed, bbr, unpaced)"))
                    })
                    .collect::<anyhow::Result<_>>()?
            } else if quick {
                vec![Mode::Baseline, Mode::Paced, Mode::Unpaced]
            } else {
                Mode::ALL.to_vec()
            };
            if !netns::netem_available() {
                eprintln!(
                    "baton-testbed: this kernel has no netem (no delay or loss); the test bed shapes links with tbf only"
                );
            }
            let mut reports = serde_json::Map::new();
            println!(
                "{:<9} {:>14} {:>14} {:>14} {:>10} {:>10} {:>10}  outcome",
                "mode", "other rtt p99", "other rtt p50", "other gap p99", "freeze", "state MB", "window s"
            );
            for mode in &modes {
                eprintln!("baton-testbed: interference: {mode:?} ...");
                let report = interference::run(*mode, &options).with_context(|| format!("the {mode:?} run"))?;
                println!(
                    "{:<9} {:>11.1} ms {:>11.1} ms {:>11.1} ms {:>10} {:>10.1} {:>10.1}  {}",
                    format!("{mode:?}").to_lowercase(),
                    report.other_rtt_p99_ms,
                    report.other_rtt_p50_ms,
                    report.other_gap_p99_ms,
                    report.freeze_ms_p99.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms")),
                    report.state_bytes as f64 / 1e6,
                    report.window_ms as f64 / 1000.0,
                    report.aborted.as_deref().unwrap_or(if report.committed { "committed" } else { "-" })
                );
                let key = serde_json::to_value(mode)?.as_str().unwrap_or("mode").to_owned();
                reports.insert(key, serde_json::to_value(&report)?);
            }
            // Whatever the figures, a move must keep every player and input.
            let broken: Vec<String> = reports
                .iter()
                .filter(|(_, report)| {
                    report["committed"] != true
                        || report["lost"] != 0
                        || report["disconnects"] != 0
                        || report["not_applied_once"] != 0
                })
                .map(|(mode, _)| mode.clone())
                .collect();
            if let Some(parent) = json.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&json, serde_json::to_string_pretty(&reports)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("baton-testbed: wrote {}", json.display());
            if !broken.is_empty() {
                eprintln!(
                    "baton-testbed: runs that did not commit, lost inputs or players, or applied an input twice: {}",
                    broken.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
