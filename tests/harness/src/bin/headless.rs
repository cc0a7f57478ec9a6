//! `headless`: one sample region in this process, without a network, with simulated players; it
//! reports tick times, inputs applied and the world's digest (the same options give the same
//! digest on any machine).

use std::process::ExitCode;

use anyhow::Context;
use baton_harness::headless::{HeadlessOptions, run_headless};
use baton_sdk::RegionConfig;
use baton_sdk::scripts::ScriptConfig;
use clap::Parser;
use sample_region_server::WorldSpec;

/// Run one sample Baton region (physics objects, scripted NPCs, growing plants and avatars) in this
/// process with simulated players, and report what it measured.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes). BATON_HEADLESS_<OPTION>
    /// environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Physics objects (crates and balls) to scatter over the region.
    #[arg(long, default_value_t = 2000)]
    objects: usize,
    /// Simulated players, each with an avatar.
    #[arg(long, default_value_t = 50)]
    avatars: usize,
    /// Scripted NPCs (half wander, half graze).
    #[arg(long, default_value_t = 500)]
    npcs: usize,
    /// Scripted plants.
    #[arg(long, default_value_t = 1000)]
    plants: usize,
    /// Inputs per second each simulated player sends (payloads of 256-512 bytes).
    #[arg(long, default_value_t = 20)]
    input_rate: u32,
    /// Seed of the world and of the simulated players.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fuel each script may spend per tick.
    #[arg(long, default_value_t = ScriptConfig::default().fuel_per_tick)]
    script_fuel: u64,
    /// Memory cap per script, in KiB.
    #[arg(long, default_value_t = 64)]
    script_memory_kib: usize,
    /// Run ticks back to back instead of holding the tick rate (for profiling).
    #[arg(long)]
    unpaced: bool,
    /// Print one JSON object instead of a readable summary.
    #[arg(long)]
    json: bool,
    /// Ticks per second.
    #[arg(long, default_value_t = 30)]
    tick_rate: u32,
}

fn main() -> ExitCode {
    baton_config::main("headless", "BATON_HEADLESS", |cli: Cli| run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if !(cli.seconds.is_finite() && cli.seconds >= 0.0) {
        anyhow::bail!("--seconds must be a non-negative number, got {}", cli.seconds);
    }
    if cli.tick_rate == 0 || cli.tick_rate > 1000 {
        anyhow::bail!("--tick-rate must be within 1..=1000, got {}", cli.tick_rate);
    }
    if cli.input_rate > cli.tick_rate * 4 {
        anyhow::bail!("--input-rate {} is over 4 inputs per tick at {} Hz", cli.input_rate, cli.tick_rate);
    }
    let config = RegionConfig {
        tick_rate_hz: cli.tick_rate,
        scripts: ScriptConfig {
            fuel_per_tick: cli.script_fuel,
            memory_limit_bytes: cli.script_memory_kib * 1024,
            ..ScriptConfig::default()
        },
        ..RegionConfig::default()
    };
    let options = HeadlessOptions {
        seconds: cli.seconds,
        spec: WorldSpec { objects: cli.objects, npcs: cli.npcs, plants: cli.plants, seed: cli.seed, churn: 0 },
        avatars: cli.avatars,
        inputs_per_second: cli.input_rate,
        config,
        paced: !cli.unpaced,
        progress: !cli.json,
    };
    if !cli.json {
        eprintln!(
            "running the sample region for {} s: {} objects, {} NPCs, {} plants, {} avatars at {} Hz",
            cli.seconds, cli.objects, cli.npcs, cli.plants, cli.avatars, cli.tick_rate
        );
    }
    let summary = run_headless(options).context("running the region")?;
    if cli.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("ticks           {}", summary.ticks);
        println!("entities        {} ({} scripts, {} bodies)", summary.entities, summary.scripts, summary.bodies);
        println!(
            "tick ms         p50 {:.3}  p99 {:.3}  max {:.3}",
            summary.tick_ms.p50, summary.tick_ms.p99, summary.tick_ms.max
        );
        println!("inputs          {} sent, {} applied", summary.inputs_sent, summary.inputs_applied);
        println!("late ticks      {}", summary.late_ticks);
        println!("awake bodies    max {}", summary.awake_bodies_max);
        println!("digest          {}", summary.digest);
    }
    Ok(())
}
