//! `sample-region-server`: the sample game as a Baton region server (`baton_runtime::serve` with
//! [`SampleGame`]). The in-process headless run is the harness's `headless` binary.

use std::process::ExitCode;

use baton_runtime::serve::ServeSettings;
use baton_sdk::RegionConfig;
use clap::Parser;
use sample_region_server::game::SampleGame;

/// Counts the live heap (`baton_net::heap`) over the system allocator.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Serve the sample Baton region (physics objects, scripted NPCs, growing plants and avatars) as a
/// region server: it hosts regions and moves them between processes, controlled by the serve
/// protocol's JSON lines on standard input (docs/protocol.md §11). A host agent starts it as its
/// warm pool; `batonctl certs` makes the certificates it needs.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    /// Serve regions (the only mode; agents and tools pass it).
    #[arg(long)]
    serve: bool,
    /// Fraction of churn entities that change per tick (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    dirty: f64,
    /// Regions per row of the world's grid (with --world-regions, avatars cross borders between
    /// neighbouring regions).
    #[arg(long, default_value_t = 4)]
    world_columns: u64,
    /// Regions in the world, numbered 1..=N row by row (0: every region is alone and its edges are
    /// walls).
    #[arg(long, default_value_t = 0)]
    world_regions: u64,
    /// Region-server settings.
    #[command(flatten)]
    server: ServeSettings,
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    if !cli.serve {
        anyhow::bail!("give --serve to serve regions (see --help); the headless run is the harness's `headless`");
    }
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
    baton_net::heap::count_with(|| ALLOCATOR.allocated());
    baton_config::main("sample-region-server", "BATON_SERVER", |cli: Cli| serve(&cli))
}
