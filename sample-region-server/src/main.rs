//! `sample-region-server`: runs the sample region.
//!
//! `--serve` makes it a Baton region server (`baton_runtime::serve` with [`SampleGame`]);
//! `--headless` runs one region in this process with simulated players and reports what it
//! measured.

use std::process::ExitCode;

use anyhow::Context;
use baton_runtime::serve::ServeSettings;
use baton_sdk::RegionConfig;
use baton_sdk::scripts::ScriptConfig;
use clap::Parser;
use sample_region_server::game::SampleGame;
use sample_region_server::{HeadlessOptions, WorldSpec, run_headless};

/// Run the sample Baton region: physics objects, scripted NPCs, growing plants and avatars.
///
/// Modes: `--headless` runs one region in this process with simulated players and reports what it
/// measured; `--serve` hosts regions and moves them between processes (controlled by the serve
/// protocol's JSON lines on standard input, docs/protocol.md §11). `batonctl certs` makes the
/// certificates a served region needs.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    /// Run one region without a network, with simulated players inside the process.
    #[arg(long, conflicts_with = "serve")]
    headless: bool,
    /// Host regions and hand them off to other processes (needs --name, --certs, and --coordinator
    /// or --authority).
    #[arg(long)]
    serve: bool,
    /// Fraction of churn entities that change per tick (with --serve; 0 to 1).
    #[arg(long, default_value_t = 0.0)]
    dirty: f64,
    /// Regions per row of the world's grid (with --serve; with --world-regions, avatars cross
    /// borders between neighbouring regions).
    #[arg(long, default_value_t = 4)]
    world_columns: u64,
    /// Regions in the world, numbered 1..=N row by row (with --serve; 0: every region is alone and
    /// its edges are walls).
    #[arg(long, default_value_t = 0)]
    world_regions: u64,
    /// Region-server settings (with --serve; --tick-rate also with --headless).
    #[command(flatten)]
    server: ServeSettings,
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
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&cli.dirty) {
        anyhow::bail!("--dirty must be within 0..=1, got {}", cli.dirty);
    }
    if cli.world_columns == 0 {
        anyhow::bail!("--world-columns must be at least 1");
    }
    let game = SampleGame {
        config: RegionConfig { tick_rate_hz: cli.server.tick_rate, ..RegionConfig::default() },
        churn_period: if cli.dirty > 0.0 { (1.0 / cli.dirty).round().max(1.0) as u64 } else { 0 },
        layout: (cli.world_regions > 0)
            .then_some(sample_region_server::Layout { columns: cli.world_columns, count: cli.world_regions }),
    };
    Ok(baton_runtime::serve::run(game, &cli.server)?)
}

fn main() -> ExitCode {
    baton_config::main("sample-region-server", "BATON_SERVER", |cli: Cli| run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.serve {
        return serve(cli);
    }
    if !cli.headless {
        anyhow::bail!("choose a mode: --headless or --serve (see --help)");
    }
    if !(cli.seconds.is_finite() && cli.seconds >= 0.0) {
        anyhow::bail!("--seconds must be a non-negative number, got {}", cli.seconds);
    }
    if cli.server.tick_rate == 0 || cli.server.tick_rate > 1000 {
        anyhow::bail!("--tick-rate must be within 1..=1000, got {}", cli.server.tick_rate);
    }
    if cli.input_rate > cli.server.tick_rate * 4 {
        anyhow::bail!("--input-rate {} is over 4 inputs per tick at {} Hz", cli.input_rate, cli.server.tick_rate);
    }
    let config = RegionConfig {
        tick_rate_hz: cli.server.tick_rate,
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
            cli.seconds, cli.objects, cli.npcs, cli.plants, cli.avatars, cli.server.tick_rate
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
