//! `baton-demo`: Baton on this machine in one command.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_loadtest::{RunOptions, Scenario};
use clap::Parser;

/// mimalloc: thousands of simulated clients allocate and free small buffers per packet, where
/// glibc's allocator cost about a third of the generator's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Baton in one command: a coordinator, three host agents, a gateway and sample regions on
/// loopback, with hundreds of avatars playing while regions migrate, a host drains and avatars
/// cross borders; then the same again with each move done the old way (stop, start elsewhere,
/// players log in again), to compare.
///
/// Prints progress every second, then a summary and the paths of report.json and report.html.
/// Every process it started is stopped when it ends, also on Ctrl-C. Exits 1 when an SLO of the
/// scenario is violated.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes).
    /// BATON_DEMO_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The scenario: steady, migrate, crossing, hotspot, mixed, nightfall, bighost, or a TOML file.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Avatars (default: the scenario's).
    #[arg(long)]
    avatars: Option<usize>,
    /// Seconds of play (default: the scenario's).
    #[arg(long)]
    seconds: Option<u64>,
    /// Also run the scenario with each region move done the old way (stop the region, start it
    /// on the new host from its save, players log in again) and report both side by side:
    /// `restart`, or `none`. Scenarios that move no region have nothing to compare.
    #[arg(long, default_value = "restart", value_parser = ["restart", "none"])]
    baseline: String,
    /// Where the reports go.
    #[arg(long, default_value = "baton-demo-report")]
    out: PathBuf,
}

fn main() -> ExitCode {
    baton_config::main("baton-demo", "BATON_DEMO", |cli: Cli| -> anyhow::Result<()> {
        let path = std::path::Path::new(&cli.scenario);
        let scenario = if path.exists() { Scenario::load(path)? } else { Scenario::shipped(&cli.scenario)? };
        let options = RunOptions {
            avatars: cli.avatars,
            seconds: cli.seconds,
            quiet: false,
            baseline: cli.baseline == "restart",
        };
        if baton_loadtest::run_and_report(&scenario, &options, &cli.out)? {
            Ok(())
        } else {
            anyhow::bail!("an SLO was violated")
        }
    })
}
