//! Interference: what moving a big region across a link does to the players of the other regions
//! that share it (invariant 6), for each way of sending the bulk state.
//!
//! Two hosts (`h1`, `h2`) on links limited to `--mbit` each way, the gateway (`gw`) and the players
//! (`pl`) on links of their own. `h1` runs one region server with the big region (only churn
//! entities, `--state-mb` of them) and two small regions with players; `h2` runs the target. The
//! big region moves from `h1` to `h2` while the players play: its snapshot leaves `h1` on the same
//! link as the other regions' updates. Each run starts a fresh test bed and cluster; the runs
//! differ only in how the source sends:
//!
//! - `baseline`: no move (the same window of play);
//! - `paced`: Baton's default, LEDBAT under the `--bulk-mbps` cap;
//! - `fixed`: quinn's CUBIC under a cap of 80% of the link (the fixed pacer alone);
//! - `bbr`: quinn's BBR under the default cap;
//! - `unpaced`: CUBIC without a cap.
//!
//! Per run: the other regions' players' input round trip and update gap p99 over the move's
//! window (from the handoff's start to its commit), the freeze, the bytes moved, and of every
//! player (the moving region's too) disconnects, lost inputs and inputs not applied exactly once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_client::ClientOptions;
use baton_harness::cluster::{CHURN_BYTES_PER_ENTITY, world_object};
use baton_harness::players::{
    ClusterSpec, GatewayCluster, Movement, Placement, PlayerOutcome, PlayerPlan, run_player, unix_ms,
};
use baton_wire::serve::ServerEvent;
use sample_region_server::game::WorldRequest;
use serde::Serialize;

use crate::netns::{SiteSpec, Testbed};

/// How one run sends the bulk state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No move.
    Baseline,
    /// LEDBAT under the default cap.
    Paced,
    /// CUBIC under a cap of 80% of the link.
    Fixed,
    /// BBR under the default cap.
    Bbr,
    /// CUBIC, no cap.
    Unpaced,
}

impl Mode {
    /// Every mode, in the order they run.
    pub const ALL: [Mode; 5] = [Mode::Baseline, Mode::Paced, Mode::Fixed, Mode::Bbr, Mode::Unpaced];

    fn server_args(self, options: &Options) -> Vec<String> {
        let (congestion, mbps) = match self {
            Mode::Baseline | Mode::Paced => {
                return vec![
                    "--bulk-congestion".into(),
                    "ledbat".into(),
                    "--bulk-mbps".into(),
                    "50".into(),
                    "--bulk-target-ms".into(),
                    options.target_ms.to_string(),
                ];
            }
            Mode::Fixed => ("cubic", (u64::from(options.mbit) / 10).max(1)),
            Mode::Bbr => ("bbr", 50),
            Mode::Unpaced => ("cubic", 100_000),
        };
        vec!["--bulk-congestion".into(), congestion.into(), "--bulk-mbps".into(), mbps.to_string()]
    }
}

/// Settings of the interference runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The hosts' link speed, megabits per second.
    pub mbit: u32,
    /// The links' queue, in milliseconds at that speed.
    pub queue_ms: u32,
    /// State of the region that moves, in megabytes.
    pub state_mb: u64,
    /// Share of its entities that change per tick.
    pub dirty: f64,
    /// Players in each of the two other regions.
    pub players: u64,
    /// Players in the region that moves.
    pub movers: u64,
    /// Seconds of play before the move.
    pub warmup_s: u64,
    /// The baseline's window, seconds.
    pub window_s: u64,
    /// Tick rate of the regions.
    pub tick_rate: u32,
    /// LEDBAT's target queueing delay (`--bulk-target-ms` of the servers), milliseconds.
    pub target_ms: f64,
}

impl Options {
    /// The full run: an 80 MB region on 100 Mbit links, 40 players in each other region.
    #[must_use]
    pub fn full() -> Options {
        Options {
            mbit: 100,
            queue_ms: 300,
            state_mb: 80,
            dirty: 0.0005,
            players: 40,
            movers: 10,
            warmup_s: 4,
            window_s: 8,
            tick_rate: 20,
            target_ms: 2.0,
        }
    }

    /// The short form for CI and tests: a 10 MB region, 10 players in each other region.
    #[must_use]
    pub fn quick() -> Options {
        Options { state_mb: 10, players: 10, movers: 4, window_s: 3, ..Options::full() }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// How the bulk state went.
    pub mode: Mode,
    /// Other regions' players: input to acknowledging update, p99, milliseconds.
    pub other_rtt_p99_ms: f64,
    /// The same, p50.
    pub other_rtt_p50_ms: f64,
    /// Other regions' players: gap between updates, p99, milliseconds.
    pub other_gap_p99_ms: f64,
    /// Round trips and gaps the percentiles are over.
    pub samples: usize,
    /// The move's freeze (none for the baseline or an aborted move); one move per run, so this
    /// "p99" is that move's freeze (the name is the figure's across runs).
    pub freeze_ms_p99: Option<f64>,
    /// Bytes the move sent (snapshot, rounds and final delta).
    pub state_bytes: u64,
    /// Bytes of the final delta, sent frozen (what the freeze moved over the link).
    pub final_bytes: u64,
    /// Delta rounds before the freeze.
    pub rounds: u32,
    /// The delivery rate the source last measured, bytes per second (it sets the final round's
    /// budget).
    pub delivery_bytes_per_second: Option<u64>,
    /// From the move's start to its commit, milliseconds (the baseline: its window).
    pub window_ms: u64,
    /// Whether the move committed (true for the baseline).
    pub committed: bool,
    /// Why it aborted, if it did.
    pub aborted: Option<String>,
    /// Players' disconnects, of every region (0 expected).
    pub disconnects: u64,
    /// Inputs sent that were never applied, of every player.
    pub lost: u64,
    /// Players whose avatar did not apply each of their inputs exactly once, in order.
    pub not_applied_once: u64,
}

/// One run of `mode` on a fresh test bed.
pub fn run(mode: Mode, options: &Options) -> anyhow::Result<RunReport> {
    let sites = [("h1", 1), ("h2", 2), ("gw", 10), ("pl", 20)]
        .map(|(name, host_byte)| SiteSpec { name: name.into(), host_byte });
    let testbed = Testbed::create(&sites)?;
    testbed.limit("h1", options.mbit, options.queue_ms)?;
    testbed.limit("h2", options.mbit, options.queue_ms)?;
    let mut server_args =
        vec!["--tick-rate".to_owned(), options.tick_rate.to_string(), "--dirty".to_owned(), options.dirty.to_string()];
    server_args.extend(mode.server_args(options));
    let spec = ClusterSpec {
        servers: 2,
        gateways: 1,
        world_regions: 4,
        columns: 2,
        server_args,
        gateway_args: Vec::new(),
        placement: Some(Placement {
            servers: vec![testbed.site("h1")?, testbed.site("h2")?],
            gateways: vec![testbed.site("gw")?],
        }),
    };
    let mut cluster = GatewayCluster::start(&spec).context("starting the cluster in the test bed")?;
    let entities = (options.state_mb * 1_000_000 / CHURN_BYTES_PER_ENTITY) as usize;
    let big = WorldRequest { churn: entities, seed: Some(BIG), ..WorldRequest::default() };
    cluster.host_world(0, BIG, world_object(big)).context("hosting the region that moves")?;
    for region in OTHERS {
        cluster.host(0, region, 300)?;
    }
    let players_site = testbed.site("pl")?;
    let netns = players_site.netns.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            if let Err(error) = Testbed::enter(&netns) {
                eprintln!("players' thread: {error:#}");
                std::process::abort();
            }
        })
        .build()?;
    let mut options_for_players = cluster.client_options(0);
    options_for_players.bind = SocketAddr::new(players_site.ip, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let regions = OTHERS.iter().flat_map(|region| (0..options.players).map(move |index| (*region, index)));
    let movers = (0..options.movers).map(|index| (BIG, index));
    for (number, (region, _)) in regions.chain(movers).enumerate() {
        let player = 1 + number as u64;
        let mut plan = PlayerPlan::new(player, region, Movement::Wander, Duration::from_secs(600));
        plan.stop = Some(stop.clone());
        plan.start_after = Duration::from_millis(10 * number as u64);
        let client: ClientOptions = options_for_players.clone();
        handles.push((region, runtime.spawn(run_player(client, cluster.token(player, region), plan))));
    }
    std::thread::sleep(Duration::from_secs(options.warmup_s));
    let started = unix_ms();
    let clock = Instant::now();
    let (committed, aborted, figures) = if mode == Mode::Baseline {
        std::thread::sleep(Duration::from_secs(options.window_s));
        (true, None, None)
    } else {
        match cluster.handoff(BIG, 0, 1)? {
            ServerEvent::HandedOff { figures, .. } => (true, None, Some(figures)),
            ServerEvent::Aborted { reason, .. } => (false, Some(reason), None),
            other => bail!("the handoff ended with {other:?}"),
        }
    };
    let ended = unix_ms();
    let window_ms = clock.elapsed().as_millis() as u64;
    stop.store(true, Ordering::Relaxed);
    let mut round_trips = Vec::new();
    let mut gaps = Vec::new();
    let (mut disconnects, mut lost, mut not_once) = (0, 0, 0);
    for (region, handle) in handles {
        let outcome: PlayerOutcome = runtime.block_on(handle).context("a player task")?.context("a player")?;
        // Every player counts for what was lost; the moving region's only not for the others'
        // figures.
        disconnects += outcome.disconnects;
        lost += outcome.sent.saturating_sub(outcome.acked.saturating_sub(outcome.acked_before));
        if !outcome.chain_ok {
            not_once += 1;
        }
        if region == BIG {
            continue;
        }
        let within = |at: &u64| (started..=ended).contains(at);
        round_trips.extend(
            outcome
                .round_trips_us
                .iter()
                .zip(&outcome.round_trip_ends_unix_ms)
                .filter(|(_, at)| within(at))
                .map(|(us, _)| *us),
        );
        gaps.extend(
            outcome.gaps_us.iter().zip(&outcome.gap_ends_unix_ms).filter(|(_, at)| within(at)).map(|(us, _)| *us),
        );
    }
    drop(cluster);
    drop(testbed);
    Ok(RunReport {
        mode,
        other_rtt_p99_ms: percentile(&mut round_trips, 0.99),
        other_rtt_p50_ms: percentile(&mut round_trips, 0.5),
        other_gap_p99_ms: percentile(&mut gaps, 0.99),
        samples: round_trips.len() + gaps.len(),
        freeze_ms_p99: figures.as_ref().and_then(|figures| figures.freeze_us).map(|us| us as f64 / 1000.0),
        state_bytes: figures.as_ref().map_or(0, |figures| figures.total_bytes()),
        final_bytes: figures.as_ref().map_or(0, |figures| figures.final_bytes),
        rounds: figures.as_ref().map_or(0, |figures| figures.rounds),
        delivery_bytes_per_second: figures.as_ref().and_then(|figures| figures.delivery_bytes_per_second),
        window_ms,
        committed,
        aborted,
        disconnects,
        lost,
        not_applied_once: not_once,
    })
}

const BIG: u64 = 1;
const OTHERS: [u64; 2] = [2, 3];

fn percentile(values: &mut [u64], quantile: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * quantile).round() as usize;
    values[index.min(values.len() - 1)] as f64 / 1000.0
}
