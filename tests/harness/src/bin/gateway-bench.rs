//! `gateway-bench`: how many avatars one gateway carries, and the latency it adds.
//!
//! Starts two region servers (one region each) and one gateway on loopback, connects `--avatars`
//! simulated players through the gateway (inputs of 256-512 bytes at `--input-rate`, a state update
//! of a few hundred bytes every tick), and in the same run a few probe players connected straight to
//! the region servers. Prints one JSON object: update gaps, input round trips through the gateway
//! and direct, their ratio, losses, the CPU of the gateway per update forwarded and of the load
//! generator per player-second, and after the run, in the same process, the floors to hold them
//! against (plain UDP, and QUIC without an async runtime). Run it from a release build:
//! `cargo build --release --bins && target/release/gateway-bench --avatars 2000`, or
//! `target/release/gateway-bench --find-capacity` to find the most avatars that meet the target.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_harness::players::{
    ClusterSpec, GatewayCluster, Generator, Movement, PlayerEnd, PlayerPlan, run_direct_probe,
};
use baton_harness::quic_floor::{self, QuicFloorPlan};
use baton_harness::udp_floor::{self, FloorPlan};
use clap::Parser;
use serde_json::json;

/// mimalloc: thousands of simulated clients allocate and free small buffers per packet, where
/// glibc's allocator cost about a third of the generator's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark one gateway: avatars carried, update gaps, added latency.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Players connected through the gateway.
    #[arg(long, default_value_t = 2000)]
    avatars: usize,
    /// Seconds every player plays once all are connected.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seconds over which players connect.
    #[arg(long, default_value_t = 10.0)]
    ramp: f64,
    /// Inputs per second per player.
    #[arg(long, default_value_t = 20)]
    input_rate: u32,
    /// Region tick rate (one state update per player per tick).
    #[arg(long, default_value_t = 20)]
    tick_rate: u32,
    /// Physics objects per region.
    #[arg(long, default_value_t = 200)]
    objects: usize,
    /// Probe players connected straight to the region servers.
    #[arg(long, default_value_t = 20)]
    probes: u64,
    /// Threads of the load generator (each a single-threaded runtime owning its players).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Seconds of each floor measured after the run (0: none): plain UDP at the datagram rate the
    /// run moved, and QUIC without an async runtime (`quic-floor`) for as many players, with one
    /// `sendmsg` per datagram and with `sendmmsg` batches.
    #[arg(long, default_value_t = 5.0)]
    floor_seconds: f64,
    /// Worker threads of the gateway.
    #[arg(long, default_value_t = 2)]
    gateway_threads: usize,
    /// Find the capacity instead of measuring one load (`--avatars` is then ignored): run with
    /// `--step` players, then `--step` more each time (a fresh cluster every run), until a run
    /// misses the target (p99
    /// update gap above 1.5 ticks, an input lost, a disconnect or a player that could not
    /// connect) or `--up-to` is passed. Prints each run's report, then the largest load that met
    /// the target.
    #[arg(long)]
    find_capacity: bool,
    /// With --find-capacity: players in the first run and added per run.
    #[arg(long, default_value_t = 250)]
    step: usize,
    /// With --find-capacity: the largest load tried.
    #[arg(long, default_value_t = 4000)]
    up_to: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn percentile(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64 / 1000.0
}

fn summary(mut values: Vec<u64>) -> serde_json::Value {
    values.sort_unstable();
    json!({
        "count": values.len(),
        "p50": percentile(&values, 0.50),
        "p99": percentile(&values, 0.99),
        "p999": percentile(&values, 0.999),
        "max": values.last().copied().unwrap_or(0) as f64 / 1000.0,
    })
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.avatars == 0 || cli.input_rate == 0 || cli.tick_rate == 0 || cli.client_threads == 0 {
        anyhow::bail!("--avatars, --input-rate, --tick-rate and --client-threads must be at least 1");
    }
    if !cli.find_capacity {
        println!("{}", measure(cli, cli.avatars)?);
        return Ok(());
    }
    if cli.step == 0 || cli.up_to < cli.step {
        anyhow::bail!("--find-capacity needs --step of at least 1 and --up-to of at least --step");
    }
    let mut carried: Option<(usize, serde_json::Value)> = None;
    let mut missed: Option<(usize, String)> = None;
    let mut avatars = cli.step;
    while avatars <= cli.up_to {
        eprintln!("-- {avatars} avatars");
        let report = measure(cli, avatars)?;
        println!("{report}");
        match missed_target(&report) {
            None => carried = Some((avatars, report)),
            Some(why) => {
                missed = Some((avatars, why));
                break;
            }
        }
        avatars += cli.step;
    }
    // The costs are those of the largest load within the target.
    let at = |field: &str| carried.as_ref().map(|(_, report)| report[field].clone());
    println!(
        "{}",
        json!({
            "avatars_within_target": carried.as_ref().map(|(avatars, _)| *avatars),
            "udp_floor_us": at("udp_floor_us"),
            "gateway_us_per_update": at("gateway_us_per_update"),
            "gateway_over_floor": at("gateway_over_floor"),
            "generator_us_per_avatar_s": at("generator_us_per_avatar_s"),
            "added_latency_ratio": at("rtt_ratio_p50"),
            "first_miss": missed.as_ref().map(|(avatars, why)| json!({"avatars": avatars, "why": why})),
            "target": "p99 update gap <= 1.5 ticks, no input lost, no disconnect, every player connected",
        })
    );
    Ok(())
}

/// Why a run missed the target, if it did.
fn missed_target(report: &serde_json::Value) -> Option<String> {
    let count = |field: &str| report[field].as_u64().unwrap_or(u64::MAX);
    if report["update_gap_p99_within_1_5_ticks"] != true {
        return Some(format!("p99 update gap {} ms", report["update_gap_ms"]["p99"]));
    }
    for field in ["inputs_lost", "disconnects", "failed_to_connect"] {
        if count(field) != 0 {
            return Some(format!("{field}: {}", report[field]));
        }
    }
    None
}

/// One run with `avatars` players on a fresh cluster; its report.
fn measure(cli: &Cli, avatars: usize) -> anyhow::Result<serde_json::Value> {
    let spec = ClusterSpec {
        servers: 2,
        gateways: 1,
        world_regions: 2,
        columns: 2,
        server_args: vec!["--tick-rate".into(), cli.tick_rate.to_string()],
        gateway_args: vec![
            "--max-connections".into(),
            (avatars + 100).to_string(),
            "--threads".into(),
            cli.gateway_threads.to_string(),
        ],
        placement: None,
    };
    let mut cluster = GatewayCluster::start(&spec)?;
    cluster.host(0, 1, cli.objects)?;
    cluster.host(1, 2, cli.objects)?;
    let ramp = Duration::from_secs_f64(cli.ramp);
    let play = Duration::from_secs_f64(cli.seconds);
    let base = cluster.client_options(0);
    eprintln!("connecting {} players over {:.0} s, then {:.0} s of play", avatars, cli.ramp, cli.seconds);
    let players: Vec<(PlayerPlan, String)> = (0..avatars)
        .map(|index| {
            let player = index as u64 + 1;
            let region = 1 + player % 2;
            let start_after = ramp.mul_f64(index as f64 / avatars as f64);
            let plan = PlayerPlan {
                inputs_per_second: cli.input_rate,
                start_after,
                settle_for: Duration::from_secs(5),
                ..PlayerPlan::new(player, region, Movement::Wander, ramp + play - start_after)
            };
            (plan, cluster.token(player, region))
        })
        .collect();
    let generator = Generator::start(&base, players, cli.client_threads)?;
    // The probes run on a runtime of their own thread (the generator's CPU is this process's:
    // the probes' few players are in it).
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the probes' runtime")?;
    let identity = cluster.probe_identity()?;
    let server_addresses = [cluster.servers[0].address, cluster.servers[1].address];
    let probes: Vec<_> = (0..cli.probes)
        .map(|index| {
            let identity = identity.clone();
            let region = 1 + index % 2;
            let server = server_addresses[(region - 1) as usize];
            let rate = cli.input_rate;
            runtime.spawn(async move {
                tokio::time::sleep(ramp).await;
                run_direct_probe(identity, server, region, 1_000_000 + index, rate, play).await
            })
        })
        .collect();

    let probes = std::thread::spawn(move || -> anyhow::Result<Vec<u64>> {
        runtime.block_on(async move {
            let mut direct = Vec::new();
            for task in probes {
                direct.extend(task.await.context("probe task")??);
            }
            Ok(direct)
        })
    });

    std::thread::sleep(ramp);
    let before = Sample::take(&mut cluster)?;
    std::thread::sleep(play);
    let after = Sample::take(&mut cluster)?;
    let cost = Cost::between(&before, &after, avatars);

    let mut outcomes = Vec::new();
    let mut failures = 0u64;
    for end in generator.join()? {
        match end {
            PlayerEnd::Finished(outcome) => outcomes.push(*outcome),
            PlayerEnd::Failed(error) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("a player failed: {error:#}");
                }
            }
            PlayerEnd::Aborted => anyhow::bail!("a player was aborted"),
            PlayerEnd::Panicked(error) => anyhow::bail!("a player task panicked: {error}"),
        }
    }
    let direct = probes.join().map_err(|_| anyhow::anyhow!("the probes' thread panicked"))??;
    let stats = cluster.gateway_stats(0)?;
    drop(cluster);
    let floors = if cli.floor_seconds > 0.0 {
        // The rate the run moved between players and the gateway: each player's inputs in and
        // updates out (the upstream batches are left out: the floor is per datagram).
        let rate = (avatars as u64 * u64::from(cli.input_rate + cli.tick_rate) / 2).max(1000);
        let floor = udp_floor::measure(FloorPlan { rate, bytes: 400, sockets: 4, seconds: cli.floor_seconds })?;
        let quic = |batch_sends| {
            quic_floor::measure(QuicFloorPlan {
                connections: avatars,
                tick_hz: cli.tick_rate,
                inputs_per_second: cli.input_rate,
                update_bytes: 350,
                input_bytes: 384,
                seconds: cli.floor_seconds,
                batch_sends,
            })
        };
        Some((floor, quic(false)?, quic(true)?))
    } else {
        None
    };
    let (floor, quic, quic_batched) = match floors {
        Some((floor, quic, batched)) => (Some(floor), Some(quic), Some(batched)),
        None => (None, None, None),
    };

    let sent: u64 = outcomes.iter().map(|outcome| outcome.sent).sum();
    let acked: u64 = outcomes.iter().map(|outcome| outcome.acked).sum();
    let applied_once = outcomes.iter().filter(|outcome| outcome.chain_ok).count();
    let disconnects: u64 = outcomes.iter().map(|outcome| outcome.disconnects).sum();
    let gaps: Vec<u64> = outcomes.iter().flat_map(|outcome| outcome.gaps_us.iter().copied()).collect();
    let through: Vec<u64> = outcomes.iter().flat_map(|outcome| outcome.round_trips_us.iter().copied()).collect();
    let gap = summary(gaps);
    let through = summary(through);
    let direct = summary(direct);
    let tick_ms = 1000.0 / f64::from(cli.tick_rate);
    let ratio = |field: &str| {
        let straight = direct[field].as_f64().unwrap_or(0.0);
        if straight > 0.0 { through[field].as_f64().unwrap_or(0.0) / straight } else { 0.0 }
    };
    let report = json!({
        "avatars": avatars,
        "connected": outcomes.len(),
        "failed_to_connect": failures,
        "disconnects": disconnects,
        "inputs_sent": sent,
        "inputs_acked": acked,
        "inputs_lost": sent - acked,
        "players_with_every_input_applied_once_in_order": applied_once,
        "tick_ms": tick_ms,
        "update_gap_ms": gap,
        "update_gap_p99_within_1_5_ticks": gap["p99"].as_f64().unwrap_or(f64::MAX) <= 1.5 * tick_ms,
        "rtt_through_gateway_ms": through,
        "rtt_direct_ms": direct,
        "rtt_ratio_p50": ratio("p50"),
        "rtt_ratio_p99": ratio("p99"),
        "gateway_cpu_cores": cost.gateway_cores,
        "gateway_us_per_update": cost.gateway_us_per_update,
        "generator_cpu_cores": cost.generator_cores,
        "generator_us_per_avatar_s": cost.generator_us_per_avatar_s,
        "udp_floor": floor,
        "udp_floor_us": floor.map(|floor| floor.cpu_us_per_datagram),
        "gateway_over_floor": floor.map(|floor| cost.gateway_us_per_update / floor.cpu_us_per_datagram),
        "quic_floor": quic,
        "quic_floor_batched_sends": quic_batched,
        "gateway": stats,
    });
    Ok(report)
}

/// What the gateway and the load generator had used, and the gateway had forwarded, at one moment.
struct Sample {
    at: Instant,
    gateway_cpu_s: f64,
    generator_cpu_s: f64,
    updates: u64,
}

impl Sample {
    fn take(cluster: &mut GatewayCluster) -> anyhow::Result<Sample> {
        let gateway_cpu = cluster.gateways[0].cpu_time().context("reading the gateway's CPU time")?;
        let stats = cluster.gateway_stats(0)?;
        Ok(Sample {
            at: Instant::now(),
            gateway_cpu_s: gateway_cpu.as_secs_f64(),
            // This process is the load generator (and the probes, whose few players are not
            // separated out).
            generator_cpu_s: udp_floor::process_cpu_seconds()?,
            updates: stats.updates_datagram + stats.updates_reliable,
        })
    }
}

/// The CPU cost of one measured window.
struct Cost {
    gateway_cores: f64,
    gateway_us_per_update: f64,
    generator_cores: f64,
    generator_us_per_avatar_s: f64,
}

impl Cost {
    fn between(before: &Sample, after: &Sample, avatars: usize) -> Cost {
        let seconds = (after.at - before.at).as_secs_f64();
        let gateway = after.gateway_cpu_s - before.gateway_cpu_s;
        let generator = after.generator_cpu_s - before.generator_cpu_s;
        let updates = after.updates.saturating_sub(before.updates).max(1);
        Cost {
            gateway_cores: gateway / seconds,
            gateway_us_per_update: gateway * 1e6 / updates as f64,
            generator_cores: generator / seconds,
            generator_us_per_avatar_s: generator * 1e6 / (avatars as f64 * seconds),
        }
    }
}
