//! `standby-bench`: what a hot standby costs its region's owner. The sample region at a chosen size
//! (by default the seeds' process size: 10k physics objects, 500 scripted NPCs, 1,000 plants) with
//! players sending 20 inputs/s is ticked by the production `RegionNode` twice, with the same seed:
//! once alone and once feeding a standby node in the same process (messages handed over at once,
//! no sockets). Prints one JSON object: the owner's time per tick (the tick, its updates and, with
//! the standby, the round and the digest) as p50/p99/max in both runs, the same up to the tick's
//! updates being out (the standby's round waits for them), the bytes per second the feed sends,
//! and the standby's time to apply a round. Run it from a release build:
//! `cargo run --release -p baton-harness --bin standby-bench -- --ticks 600`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use baton_sdk::RegionConfig;
use baton_sdk::handoff::{Message, SourceConfig};
use baton_sdk::node::{GatewayRequest, Gateways, NodeSettings, Output, PlayerSettings, RegionNode, Role};
use baton_sdk::wire::{Epoch, PlayerId, RegionId};
use clap::Parser;
use sample_region_server::{WorldSpec, new_region, populate, scripted_input};
use serde_json::json;

/// Measure the owner's cost of feeding a hot standby.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Ticks to measure in each run (after 30 ticks of warm-up).
    #[arg(long, default_value_t = 600)]
    ticks: u32,
    /// Physics objects.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Scripted NPCs.
    #[arg(long, default_value_t = 500)]
    npcs: usize,
    /// Scripted plants.
    #[arg(long, default_value_t = 1_000)]
    plants: usize,
    /// Players, each sending 20 inputs/s.
    #[arg(long, default_value_t = 50)]
    players: u64,
}

const REGION: RegionId = RegionId(1);
const WARM_UP: u32 = 30;

struct AllPlayers;

impl Gateways for AllPlayers {
    fn any(&self) -> bool {
        true
    }
    fn serves(&self, _player: PlayerId) -> bool {
        true
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("standby-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(name: &str, start: Instant) -> NodeSettings {
    NodeSettings {
        name: name.into(),
        address: SocketAddr::from(([127, 0, 0, 1], 9)),
        source: SourceConfig::default(),
        players: PlayerSettings::default(),
        checkpoint_every_ticks: 0,
        wall_clock: (start, 0),
    }
}

/// One run's figures.
#[derive(Default)]
struct Run {
    owner_ms: Vec<f64>,
    updates_ms: Vec<f64>,
    apply_ms: Vec<f64>,
    feed_bytes: u64,
    held: Option<u64>,
}

fn percentile(values: &[f64], quantile: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * quantile).round() as usize]
}

fn summary(values: &[f64]) -> serde_json::Value {
    json!({
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": percentile(values, 1.0),
    })
}

fn run_once(cli: &Cli, with_standby: bool) -> anyhow::Result<Run> {
    let start = Instant::now();
    let config = RegionConfig::default();
    let interval = config.tick_interval();
    let mut region = new_region(REGION, config).context("creating the region")?;
    let spec = WorldSpec { objects: cli.objects, npcs: cli.npcs, plants: cli.plants, seed: 7, churn: 0 };
    populate(&mut region, spec)?;
    let rewarm = || Box::new(|region| new_region(region, RegionConfig::default()));
    let mut owner = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, settings("owner", start), rewarm(), start);
    let empty = new_region(REGION, config).context("creating the standby's slot")?;
    let mut standby = RegionNode::new(empty, Role::Target, settings("standby", start), rewarm(), start);
    for player in 1..=cli.players {
        owner.handle_gateway(start, GatewayRequest::Join { player: PlayerId(player), gateway: 1 });
    }
    if with_standby {
        owner.handle_start_standby(start, SocketAddr::from(([127, 0, 0, 1], 10)), 1);
    }
    let mut run = Run::default();
    let mut seq = 0;
    let mut now = start;
    // Inputs arrive at 20/s per player: one per player on two ticks of three at 30 Hz.
    let inputs_per_tick = |tick: u32| if tick % 3 == 2 { 0 } else { 1 };
    for tick in 0..cli.ticks + WARM_UP {
        if inputs_per_tick(tick) == 1 {
            seq += 1;
            for player in 1..=cli.players {
                owner.handle_input(now, scripted_input(player, seq));
            }
        }
        let began = Instant::now();
        owner.handle_timeout(now, &AllPlayers);
        let mut to_standby: Vec<Message> = Vec::new();
        let mut updates_ms = None;
        while let Some(output) = owner.poll_output(now) {
            match output {
                Output::ToStandby(message) => to_standby.push(message),
                // The tick's updates are queued before it: here they are all out.
                Output::Ticked(_) => updates_ms = Some(began.elapsed().as_secs_f64() * 1000.0),
                _ => {}
            }
        }
        let owner_ms = began.elapsed().as_secs_f64() * 1000.0;
        let began = Instant::now();
        let mut bytes = 0u64;
        let mut to_owner = Vec::new();
        for message in to_standby {
            bytes += message.archive_bytes() as u64;
            standby.handle_peer_message(now, message);
            while let Some(output) = standby.poll_output(now) {
                if let Output::ToPeer(message) = output {
                    to_owner.push(message);
                }
            }
        }
        let apply_ms = began.elapsed().as_secs_f64() * 1000.0;
        for message in to_owner {
            if let Message::Holds { tick, .. } = &message {
                run.held = Some(*tick);
            }
            owner.handle_standby_message(now, message);
        }
        // The snapshot streams between ticks, as the runtime lets it.
        while let Some(output) = owner.poll_output(now) {
            if let Output::ToStandby(message) = output {
                bytes += message.archive_bytes() as u64;
                standby.handle_peer_message(now, message);
                while let Some(output) = standby.poll_output(now) {
                    if let Output::ToPeer(message) = output {
                        owner.handle_standby_message(now, message);
                    }
                }
            }
        }
        if tick >= WARM_UP {
            run.owner_ms.push(owner_ms);
            run.updates_ms.push(updates_ms.context("a tick ran without its Ticked output")?);
            run.apply_ms.push(apply_ms);
            run.feed_bytes += bytes;
        }
        now += interval;
    }
    if with_standby {
        let held = run.held.context("the standby never held a tick")?;
        let owner_tick = owner.region().world().tick();
        if owner_tick.saturating_sub(held) > 2 {
            anyhow::bail!("the standby holds tick {held}, the owner is at {owner_tick}");
        }
        let (ours, theirs) = (owner.region_mut().world_mut().digest(), standby.region_mut().world_mut().digest());
        if owner_tick == held && ours != theirs {
            anyhow::bail!("the standby's world differs from the owner's at tick {held}");
        }
    }
    Ok(run)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.ticks == 0 {
        anyhow::bail!("--ticks must be at least 1");
    }
    let alone = run_once(cli, false)?;
    let fed = run_once(cli, true)?;
    let seconds = f64::from(cli.ticks) * RegionConfig::default().tick_interval().as_secs_f64();
    let rise_of = |fed: &[f64], alone: &[f64]| percentile(fed, 0.99) / percentile(alone, 0.99).max(f64::EPSILON) - 1.0;
    let rise = rise_of(&fed.owner_ms, &alone.owner_ms);
    let updates_rise = rise_of(&fed.updates_ms, &alone.updates_ms);
    let report = json!({
        "ticks": cli.ticks,
        "tick_rate_hz": RegionConfig::default().tick_rate_hz,
        "world": { "objects": cli.objects, "npcs": cli.npcs, "plants": cli.plants, "players": cli.players },
        "owner_tick_ms_alone": summary(&alone.owner_ms),
        "owner_tick_ms_with_standby": summary(&fed.owner_ms),
        "owner_tick_p99_rise": rise,
        "owner_to_updates_ms_alone": summary(&alone.updates_ms),
        "owner_to_updates_ms_with_standby": summary(&fed.updates_ms),
        "owner_to_updates_p99_rise": updates_rise,
        "standby_apply_ms": summary(&fed.apply_ms),
        "feed_bytes_per_second": fed.feed_bytes as f64 / seconds,
        "held_tick": fed.held,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
