//! `baton-testbed`: Baton's processes on hosts made of network namespaces, with real (shaped)
//! links between them. Needs root; every namespace and process it makes is removed when it ends,
//! also on Ctrl-C or SIGTERM, and whatever an earlier crashed run left is removed at its start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use baton_runtime::fault_point::FaultPhase;
use baton_testbed::interference::{self, Mode, Options};
use baton_testbed::matrix::{self, Cell, CellReport, Fault};
use baton_testbed::netns;
use baton_testbed::soak;
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
    /// Injects each fault (kill -9 of the source, the target, the coordinator or the players'
    /// gateway; the source host's link down for 2 s; the target host's link down, for good or for
    /// 2 s) at each phase of
    /// a handoff (prepare, snapshot, rounds, frozen, committing, handed_off), of a border
    /// crossing (emigrated, immigrated) and of a failover that promotes a hot standby (promoting,
    /// promoted), one fresh test bed and deployment per cell, and checks per cell: one owner, no
    /// input lost (beyond what a failover counted lost by design) or applied twice, no player
    /// disconnected, equal digests where the handoff committed, the regions serving again.
    /// Writes the cells as JSON (and with --markdown as a table); fails if a cell broke an
    /// invariant.
    Matrix {
        /// The short form for CI: each fault once, all but the last each at another phase of a
        /// handoff, one cell at each phase of a crossing (the gateway killed as an avatar leaves,
        /// the entered region's host cut off for 2 s as it arrives), and the standby killed while
        /// it is being promoted.
        #[arg(long)]
        quick: bool,
        /// Only these cells, as phase:fault (e.g. frozen:kill_source,rounds:target_link_down).
        #[arg(long, value_delimiter = ',')]
        cells: Vec<String>,
        /// Start no cell after this many seconds (the cells not run are listed); 0: no limit.
        #[arg(long, default_value_t = 0)]
        time_box_s: u64,
        /// Where to write the cells.
        #[arg(long, default_value = "target/fault-matrix.json")]
        json: PathBuf,
        /// Also write the table (docs/fault-matrix.md) here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// The load test's `mixed` scenario across the test bed for a long while (30 minutes), with a
    /// fault of the matrix every minute (a random region migrated to a random host, hit at a random
    /// phase by a random fault; the seed repeats a run). Checks that nothing was lost, no process
    /// was left behind, and that every long-running process's memory and open files stayed flat
    /// (their slopes are reported; memory is judged on the live heap the processes count, resident
    /// memory is reported beside it). Writes the report as JSON; fails if it did not hold.
    Soak {
        /// The short form: 3 minutes, a fault every 30 s, 60 avatars.
        #[arg(long)]
        quick: bool,
        /// Minutes of play (default 30; 3 with --quick).
        #[arg(long)]
        minutes: Option<f64>,
        /// Seconds between faults (default 60; 30 with --quick).
        #[arg(long)]
        fault_every_s: Option<u64>,
        /// Picks the faults: the same seed repeats a run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Avatars (default: the scenario's 300; 60 with --quick).
        #[arg(long)]
        avatars: Option<usize>,
        /// The coordinator's --idle-release-s: seconds after which a claimed region-server process
        /// that owns, receives and follows nothing is given back to its host (0: never; default:
        /// the coordinator's, 30).
        #[arg(long)]
        idle_release_s: Option<f64>,
        /// Where to write the report.
        #[arg(long, default_value = "target/soak.json")]
        json: PathBuf,
    },
    /// Removes whatever a test bed left (namespaces named baton-tb-*, and every process in them); refuses while a live run holds the test bed (it removes its own when it ends).
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
            let Some(_lock) = netns::MachineLock::try_now()? else {
                anyhow::bail!(
                    "a test bed is in use on this machine ({}); stop that run (it removes its own)",
                    netns::MachineLock::holder()
                );
            };
            netns::clean_up()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak { quick, minutes, fault_every_s, seed, avatars, idle_release_s, json } => {
            let base = if quick { soak::Options::quick(seed) } else { soak::Options::full(seed) };
            let options = soak::Options {
                minutes: minutes.unwrap_or(base.minutes),
                fault_every_s: fault_every_s.unwrap_or(base.fault_every_s),
                seed,
                avatars: avatars.or(base.avatars),
                idle_release_s,
            };
            if !options.minutes.is_finite() || options.minutes <= 0.0 || options.fault_every_s < 10 {
                anyhow::bail!("--minutes must be above 0 and --fault-every-s at least 10");
            }
            let report = soak::run(&options)?;
            print_soak(&report);
            if let Some(parent) = json.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", json.display()))?;
            eprintln!("baton-testbed: wrote {}", json.display());
            Ok(if report.held_up() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Matrix { quick, cells, time_box_s, json, markdown } => {
            let cells: Vec<Cell> = if !cells.is_empty() {
                cells.iter().map(|text| parse_cell(text)).collect::<anyhow::Result<_>>()?
            } else if quick {
                Cell::quick()
            } else {
                Cell::all()
            };
            run_matrix(&cells, time_box_s, &json, markdown.as_deref())
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

fn parse_cell(text: &str) -> anyhow::Result<Cell> {
    let (phase, fault) = text.split_once(':').with_context(|| format!("a cell is phase:fault, not {text:?}"))?;
    let phase = FaultPhase::parse(phase).with_context(|| {
        let names: Vec<&str> = FaultPhase::ALL.iter().map(|phase| phase.name()).collect();
        format!("no phase {phase:?} ({})", names.join(", "))
    })?;
    let fault = Fault::parse(fault).with_context(|| {
        let names: Vec<&str> = Fault::ALL.iter().map(|fault| fault.name()).collect();
        format!("no fault {fault:?} ({})", names.join(", "))
    })?;
    Ok(Cell { phase, fault })
}

fn run_matrix(
    cells: &[Cell],
    time_box_s: u64,
    json: &std::path::Path,
    markdown: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut reports: Vec<CellReport> = Vec::new();
    let mut skipped = Vec::new();
    println!(
        "{:<9} {:<11} {:<20} {:<26} {:>4} {:>6} {:>5} {:>7} {:>5} {:>5} {:>7} {:>7} {:>9}",
        "operation",
        "phase",
        "fault",
        "outcome",
        "ok",
        "owner",
        "lost",
        "counted",
        "dup",
        "disc",
        "resumed",
        "digest",
        "serving"
    );
    for (index, cell) in cells.iter().enumerate() {
        if time_box_s > 0 && started.elapsed().as_secs() >= time_box_s {
            skipped.push(format!("{}:{}", cell.phase.name(), cell.fault.name()));
            continue;
        }
        eprintln!(
            "baton-testbed: matrix: cell {}/{}: {} at {} ...",
            index + 1,
            cells.len(),
            cell.fault.name(),
            cell.phase.name()
        );
        let report = matrix::run(*cell)?;
        let [
            operation,
            phase,
            fault,
            outcome,
            ok,
            owner,
            lost,
            counted,
            duplicated,
            disconnects,
            resumes,
            digest,
            serving,
        ] = report.columns();
        println!(
            "{operation:<9} {phase:<11} {fault:<20} {:<26} {ok:>4} {owner:>6} {lost:>5} {counted:>7} {duplicated:>5} {disconnects:>5} {resumes:>7} {digest:>7} {serving:>9}",
            outcome.chars().take(26).collect::<String>(),
        );
        if report.outcome.starts_with("error") || report.reason.is_some() {
            eprintln!(
                "baton-testbed: matrix: {} {}: {}",
                report.phase,
                report.fault,
                report.reason.as_deref().unwrap_or(&report.outcome)
            );
        }
        reports.push(report);
    }
    if let Some(parent) = json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(json, serde_json::to_string_pretty(&reports)?)
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("baton-testbed: wrote {}", json.display());
    if let Some(path) = markdown {
        let command: Vec<String> = std::env::args().collect();
        std::fs::write(path, matrix::markdown(&reports, &command.join(" ")))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("baton-testbed: wrote {}", path.display());
    }
    if !skipped.is_empty() {
        eprintln!("baton-testbed: matrix: not run (time box of {time_box_s} s): {}", skipped.join(", "));
    }
    let broken: Vec<String> = reports
        .iter()
        .filter(|report| !report.held_up())
        .map(|report| format!("{}:{}", report.phase, report.fault))
        .collect();
    if !broken.is_empty() {
        eprintln!("baton-testbed: matrix: cells that broke an invariant: {}", broken.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_soak(report: &soak::SoakReport) {
    println!("seed {}, {} min, {} avatars", report.seed, report.minutes, report.avatars);
    println!(
        "{:>7} {:>6} {:<9} {:<11} {:<20} {:<24} {:>6} {:>6}",
        "t", "region", "hosts", "phase", "fault", "outcome", "owner", "digest"
    );
    for fault in &report.faults {
        println!(
            "{:>6.0}s {:>6} {:<9} {:<11} {:<20} {:<24} {:>6} {:>6}",
            fault.at_s,
            fault.region,
            format!("{}>{}", fault.hosts.0, fault.hosts.1),
            fault.cell.phase,
            fault.cell.fault,
            fault.cell.outcome.chars().take(24).collect::<String>(),
            if fault.cell.outcome == "not_reached" { "-".to_owned() } else { fault.cell.single_owner.to_string() },
            fault.cell.digest_ok.map_or("-".to_owned(), |ok| ok.to_string()),
        );
    }
    println!(
        "inputs sent {}, lost {} (counted lost by failovers {}), applied twice or out of order {}; disconnects {}, resumes {} (refused for good {}), failed to connect {}",
        report.inputs_sent,
        report.inputs_lost,
        report.inputs_lost_counted,
        report.inputs_duplicated,
        report.disconnects,
        report.resumes,
        report.resumes_refused_for_good,
        report.failed_to_connect
    );
    println!(
        "leaked processes: {}",
        if report.leaked_processes.is_empty() { "none".to_owned() } else { report.leaked_processes.join("; ") }
    );
    println!(
        "{:<14} {:>7} {:>8} {:>7} {:>21} {:>10} {:>21} {:>10} {:>15} {:>9} {:>9} {:>10}",
        "process",
        "pid",
        "minutes",
        "judged",
        "rss kB first/last",
        "kB/min",
        "heap kB first/last",
        "kB/min",
        "entities",
        "fds",
        "fds/min",
        "flat"
    );
    for process in &report.processes {
        println!(
            "{:<14} {:>7} {:>8.1} {:>7.1} {:>21} {:>10.1} {:>21} {:>10} {:>15} {:>9} {:>9.3} {:>10}",
            process.process,
            process.pid,
            process.minutes,
            process.judged_minutes,
            format!("{}/{}", process.rss_kb.0, process.rss_kb.1),
            process.rss_kb_per_min,
            process.heap_kb.map_or("-".to_owned(), |(first, last)| format!("{first}/{last}")),
            process.heap_kb_per_min.map_or("-".to_owned(), |slope| format!("{slope:.1}")),
            process.entities.map_or("-".to_owned(), |(first, last)| format!("{first}/{last}")),
            format!("{}/{}", process.fds.0, process.fds.1),
            process.fds_per_min,
            process.flat.map_or(unjudged(process).to_owned(), |flat| format!(
                "{} ({})",
                if flat { "yes" } else { "NO" },
                process.judged_on
            ))
        );
    }
    println!("held up: {}", report.held_up());
}

/// Why a process's trend was not judged: `short` (it lived under the judged span after its
/// warm-up) or `unsettled` (it lived long enough, but its stretches were too short to leave that
/// span of settled samples).
fn unjudged(process: &baton_testbed::soak::ProcessTrend) -> &'static str {
    if process.minutes >= baton_testbed::soak::JUDGED_MINUTES { "unsettled" } else { "short" }
}
