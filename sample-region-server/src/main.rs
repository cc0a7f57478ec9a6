//! `sample-region-server`: runs the sample region.
//!
//! Until the gateway exists the region runs headless, with simulated players feeding inputs in
//! process, and reports what it measured.

use std::process::ExitCode;

use anyhow::Context;
use baton_sdk::RegionConfig;
use baton_sdk::scripts::ScriptConfig;
use clap::Parser;
use sample_region_server::{HeadlessOptions, WorldSpec, run_headless};

/// Run the sample Baton region: physics objects, scripted NPCs, growing plants and avatars.
///
/// Modes: `--headless` runs one region in this process with simulated players and reports what it
/// measured; `--serve` hosts regions and moves them between processes (controlled by JSON lines on
/// standard input, see the documentation of the `serve` module); `--dev-certs DIR --node NAME...`
/// creates a development cluster CA and node certificates.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    /// Settings file (TOML: each key is a long option without its dashes, `pool_size = 3` for
    /// `--pool-size 3`).
    /// BATON_SERVER_<OPTION> environment variables override it, options given here override both.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Run one region without a network, with simulated players inside the process.
    #[arg(long, conflicts_with_all = ["serve", "dev_certs"])]
    headless: bool,
    /// Host regions and hand them off to other processes (needs --name, --certs, and --authority or
    /// --coordinator).
    #[arg(long, conflicts_with = "dev_certs")]
    serve: bool,
    /// Create (or reuse) a development cluster CA in this folder and issue certificates for --node.
    #[arg(long, value_name = "DIR")]
    dev_certs: Option<std::path::PathBuf>,
    /// Node names to issue certificates for (with --dev-certs).
    #[arg(long = "node", value_name = "NAME")]
    nodes: Vec<String>,
    /// This instance's name (with --serve); its certificate is <certs>/<name>.pem.
    #[arg(long)]
    name: Option<String>,
    /// The cluster certificate to use, <certs>/<NAME>.pem (with --serve; default: --name). Processes
    /// a host agent starts share the host's certificate.
    #[arg(long, value_name = "NAME")]
    cert_name: Option<String>,
    /// Address to accept handoff links on (with --serve).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Folder with ca.pem and this node's certificate and key (with --serve).
    #[arg(long, value_name = "DIR")]
    certs: Option<std::path::PathBuf>,
    /// Folder of the shared file-backed ownership authority (with --serve).
    #[arg(long, value_name = "DIR")]
    authority: Option<std::path::PathBuf>,
    /// The coordinator whose region directory decides ownership (with --serve; instead of
    /// --authority).
    #[arg(long, value_name = "ADDR", conflicts_with = "authority")]
    coordinator: Option<std::net::SocketAddr>,
    /// Bulk bandwidth a handoff may use, in MB/s (with --serve).
    #[arg(long, default_value_t = 50)]
    bulk_mbps: u64,
    /// Fraction of churn entities that change per tick (with --serve; 0 to 1).
    #[arg(long, default_value_t = 0.0)]
    dirty: f64,
    /// Fault injection for tests (with --serve): hold a handoff's commit this many milliseconds
    /// after the digest check.
    #[arg(long, hide = true)]
    test_commit_delay_ms: Option<u64>,
    /// Regions per row of the world's grid (with --serve; with --world-regions, avatars cross
    /// borders between neighbouring regions).
    #[arg(long, default_value_t = 4)]
    world_columns: u64,
    /// Regions in the world, numbered 1..=N row by row (with --serve; 0: every region is alone and
    /// its edges are walls).
    #[arg(long, default_value_t = 0)]
    world_regions: u64,
    /// Folder of the checkpoint store (with --serve): owned regions are checkpointed there every
    /// --checkpoint-every-s seconds, and `{"cmd":"host","region":R,"checkpoint":true}` restores
    /// from it. Hosts that should restore each other's regions share one folder.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<std::path::PathBuf>,
    /// Seconds between two checkpoints of a region (with --checkpoint-dir; 0: only restore).
    #[arg(long, default_value_t = 10.0)]
    checkpoint_every_s: f64,
    /// Checkpoints kept per region (with --checkpoint-dir).
    #[arg(long, default_value_t = 3)]
    checkpoint_keep: usize,
    /// Serve Prometheus metrics over HTTP on this address (with --serve; any path).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Send players a state update every this many ticks (with --serve).
    #[arg(long, default_value_t = 1)]
    update_every: u32,
    /// Players this close to a border (metres) see the neighbour's objects near it (with --serve).
    #[arg(long, default_value_t = 24.0)]
    border_view: f32,
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
    /// Ticks per second.
    #[arg(long, default_value_t = 30)]
    tick_rate: u32,
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
    let name = cli.name.clone().context("--serve needs --name")?;
    let certs = cli.certs.clone().context("--serve needs --certs DIR (create one with --dev-certs DIR --node NAME)")?;
    let authority = match (&cli.authority, cli.coordinator) {
        (Some(folder), None) => sample_region_server::serve::AuthoritySource::Directory(folder.clone()),
        (None, Some(address)) => sample_region_server::serve::AuthoritySource::Coordinator(address),
        _ => anyhow::bail!("--serve needs --authority DIR (processes on one host) or --coordinator ADDR"),
    };
    if !(0.0..=1.0).contains(&cli.dirty) {
        anyhow::bail!("--dirty must be within 0..=1, got {}", cli.dirty);
    }
    if cli.world_columns == 0 {
        anyhow::bail!("--world-columns must be at least 1");
    }
    if cli.update_every == 0 {
        anyhow::bail!("--update-every must be at least 1");
    }
    if !(cli.border_view.is_finite() && cli.border_view >= 0.0) {
        anyhow::bail!("--border-view must be a distance of 0 or more metres, got {}", cli.border_view);
    }
    if cli.bulk_mbps == 0 {
        anyhow::bail!("--bulk-mbps must be at least 1");
    }
    if !(cli.checkpoint_every_s.is_finite() && cli.checkpoint_every_s >= 0.0) {
        anyhow::bail!("--checkpoint-every-s must be 0 or more seconds, got {}", cli.checkpoint_every_s);
    }
    if cli.checkpoint_keep == 0 {
        anyhow::bail!("--checkpoint-keep must be at least 1");
    }
    if let Some(address) = cli.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
        baton_sdk::events::describe();
    }
    let checkpoints = match &cli.checkpoint_dir {
        Some(directory) => Some(baton_runtime::CheckpointSettings {
            store: baton_runtime::checkpoint_store::CheckpointStore::open(directory, cli.checkpoint_keep)
                .with_context(|| format!("opening the checkpoint store {}", directory.display()))?,
            every_ticks: (cli.checkpoint_every_s * f64::from(cli.tick_rate)).round() as u64,
        }),
        None => None,
    };
    let churn_period = if cli.dirty > 0.0 { (1.0 / cli.dirty).round().max(1.0) as u64 } else { 0 };
    let bulk_bytes_per_second = cli.bulk_mbps * 1_000_000;
    let options = sample_region_server::serve::ServeOptions {
        cert_name: cli.cert_name.clone().unwrap_or_else(|| name.clone()),
        name,
        listen: cli.listen,
        certs,
        authority,
        config: RegionConfig { tick_rate_hz: cli.tick_rate, ..RegionConfig::default() },
        churn_period,
        bulk_bytes_per_second,
        // protocol.md §4: the freeze budget is what the paced link moves in 2 ms.
        source: baton_sdk::handoff::SourceConfig::for_link(bulk_bytes_per_second, std::time::Duration::from_millis(2)),
        test_commit_delay: cli.test_commit_delay_ms.map(std::time::Duration::from_millis),
        layout: (cli.world_regions > 0)
            .then_some(sample_region_server::Layout { columns: cli.world_columns, count: cli.world_regions }),
        players: baton_runtime::PlayerSettings {
            update_every_ticks: cli.update_every,
            border_every_ticks: 3,
            border_view_distance: cli.border_view,
        },
        checkpoints,
    };
    sample_region_server::serve::serve(options)
}

fn main() -> ExitCode {
    baton_config::main("sample-region-server", "BATON_SERVER", |cli: Cli| run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(directory) = &cli.dev_certs {
        if cli.nodes.is_empty() {
            anyhow::bail!("--dev-certs needs at least one --node NAME");
        }
        let ca = baton_net::DevCa::open_or_create(directory)
            .with_context(|| format!("creating the CA in {}", directory.display()))?;
        for node in &cli.nodes {
            ca.issue(node).with_context(|| format!("issuing a certificate for {node}"))?;
        }
        eprintln!("certificates for {} written to {}", cli.nodes.join(", "), directory.display());
        return Ok(());
    }
    if cli.serve {
        return serve(cli);
    }
    if !cli.headless {
        anyhow::bail!("choose a mode: --headless, --serve or --dev-certs (see --help)");
    }
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
