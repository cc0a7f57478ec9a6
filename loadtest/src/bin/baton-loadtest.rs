//! `baton-loadtest`: run a scenario against a whole Baton deployment on this machine.

use std::path::PathBuf;
use std::process::ExitCode;

use baton_loadtest::{RunOptions, Scenario};
use clap::Parser;

/// mimalloc: thousands of simulated clients allocate and free small buffers per packet, where
/// glibc's allocator cost about a third of the generator's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run simulated avatars through a Baton deployment on this machine and judge what they felt.
///
/// Starts a coordinator, host agents (each with a warm pool of sample region servers) and a
/// gateway on loopback, creates the scenario's regions, connects the avatars through the gateway,
/// performs the scenario's migrations and drains through the admin API at their times, and writes
/// report.json and report.html into --out. Exits 1 when an SLO is violated, 2 on bad input.
/// Every process it started is stopped when it ends, also on Ctrl-C.
#[derive(Debug, Parser)]
#[command(version, about, long_about, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes).
    /// BATON_LOADTEST_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A shipped scenario (steady, migrate, crossing, hotspot, mixed, nightfall, bighost; the last three run the balancer) or a path to a TOML file.
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Avatars (overrides the scenario).
    #[arg(long)]
    avatars: Option<usize>,
    /// Seconds of play after the ramp (overrides the scenario).
    #[arg(long)]
    seconds: Option<u64>,
    /// Also run the scenario with each region move done the old way (stop the region, start it
    /// on the new host from its save, players log in again) and report both side by side:
    /// `restart`, or `none`. Scenarios that move no region have nothing to compare.
    #[arg(long, default_value = "none", value_parser = ["restart", "none"])]
    baseline: String,
    /// Where report.json and report.html go.
    #[arg(long, default_value = "loadtest-report")]
    out: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    baton_config::main("baton-loadtest", "BATON_LOADTEST", |cli: Cli| -> anyhow::Result<()> {
        let scenario = load(&cli.scenario)?;
        let options = RunOptions {
            avatars: cli.avatars,
            seconds: cli.seconds,
            quiet: cli.quiet,
            baseline: cli.baseline == "restart",
        };
        if baton_loadtest::run_and_report(&scenario, &options, &cli.out)? {
            Ok(())
        } else {
            anyhow::bail!("an SLO was violated")
        }
    })
}

/// A shipped scenario by name, or a file.
fn load(name: &str) -> anyhow::Result<Scenario> {
    let path = std::path::Path::new(name);
    if path.extension().is_some_and(|extension| extension == "toml") || path.exists() {
        Scenario::load(path)
    } else {
        Scenario::shipped(name)
    }
}
