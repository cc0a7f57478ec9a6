//! The soak: the load test's `mixed` scenario (its avatars: wandering, patrolling across borders
//! and crowding a hotspot, with joins and leaves halfway; its regions, hosts and hot standbys) for
//! a long while across the test bed, with a fault of the matrix ([`crate::matrix`]) every
//! `fault_every_s`: a random cell of the matrix, struck as [`strike_cell`] says (a migration of a
//! random region to a random other host, the next border crossing, or a failover of a random
//! region to its hot standby), hit at the cell's phase by the cell's fault. A seed picks them
//! all, so a run can be repeated.
//!
//! At the end: every avatar's inputs applied once (nothing lost, nothing twice, nobody
//! disconnected); no process left behind (each host's namespace holds its agent and the region
//! servers it reports, and nothing at all once the deployment is stopped); and the memory and open
//! files of every long-running process (coordinator, agents, gateways, region servers) sampled
//! every 10 s, with their slope. A region server's memory follows the regions it hosts (it grows
//! when it takes one over or becomes a region's hot standby, shrinks when it hands one off), and a
//! gateway's its players, so the slope is fitted within each stretch of samples where the process
//! owned the same regions, was the standby of the same regions and carried the same players,
//! leaving out the first [`SETTLE`] of each, as a median of pairs that one stray sample does not
//! tilt ([`pooled_slope`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_harness::fleet::{AdminApi, Fleet, FleetPlacement, ServerCommandLine, metric_listed};
use baton_harness::players::{PlayerOutcome, run_player};
use baton_loadtest::Scenario;
use baton_runtime::fault_point::{FAULT_POINT_VARIABLE, FaultPhase, FaultPoint};
use serde::Serialize;
use serde_json::json;

use crate::matrix::{
    BULK_MBPS, Cell, CellReport, MOVING_DIRTY, count_players, strike, strike_crossing, strike_failover, wait_settled,
};
use crate::netns::{SiteSpec, Testbed};

/// Regions that churn (`CHURN` entities, 2% of them changing a tick, the servers' bulk cap at
/// 10 MB/s, as in the matrix): the others are small and quiet, and their handoffs freeze after the
/// snapshot without a delta round, so a fault at `rounds` is struck at these.
const CHURNING: [u64; 2] = [1, 7];

/// Half the matrix's moving region: 200 entities a tick are about 12 kB. On the loaded soak the
/// source measured its link at 2 MB/s and less (freeze budgets at their 4 kB floor), and the
/// matrix's 400 a tick (23 kB, over four such budgets) never converged; 12 kB fits four, and the
/// first round, a few ticks of changes while the snapshot streams, is still over a budget.
const CHURN: usize = 10_000;

/// Settings of a soak.
#[derive(Clone, Debug)]
pub struct Options {
    /// Minutes of play (after the scenario's ramp).
    pub minutes: f64,
    /// Seconds between faults.
    pub fault_every_s: u64,
    /// Picks the faults.
    pub seed: u64,
    /// Avatars (default: the scenario's).
    pub avatars: Option<usize>,
    /// The coordinator's `--idle-release-s` (`None`: its default).
    pub idle_release_s: Option<f64>,
}

impl Options {
    /// The full soak: 30 minutes, a fault a minute.
    #[must_use]
    pub fn full(seed: u64) -> Options {
        Options { minutes: 30.0, fault_every_s: 60, seed, avatars: None, idle_release_s: None }
    }

    /// The short form: 3 minutes, a fault every 30 s, 60 avatars.
    #[must_use]
    pub fn quick(seed: u64) -> Options {
        Options { minutes: 3.0, fault_every_s: 30, seed, avatars: Some(60), idle_release_s: None }
    }
}

/// One fault of the soak.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// Seconds since play started.
    pub at_s: f64,
    /// The region moved, failed over, or that the avatar left (a crossing; 0 when none was
    /// struck).
    pub region: u64,
    /// From which host to which: a handoff's source and target, a crossing's, or the lost
    /// owner's and its standby's.
    pub hosts: (String, String),
    /// The cell: phase, fault and what came of it (the players' figures are the soak's).
    pub cell: CellReport,
}

/// Memory and open files of one process over the soak.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessTrend {
    /// Its name (`coordinator`, `h1 agent`, `g0`, a region server's `h1-p2`).
    pub process: String,
    /// Its pid (a process started again is another trend).
    pub pid: u32,
    /// Samples after the warm-up.
    pub samples: usize,
    /// Minutes they span.
    pub minutes: f64,
    /// Minutes the slopes are fitted over: the stretches' spans (below), each begun by a new role
    /// without its first [`SETTLE`]. A process is judged only when they add up to at least
    /// [`JUDGED_MINUTES`].
    pub judged_minutes: f64,
    /// Resident memory at the first and the last of them, kB.
    pub rss_kb: (u64, u64),
    /// Every one of them: minutes since the soak began, resident memory in kB.
    pub rss_series: Vec<(f64, u64)>,
    /// Stretches of samples with the same regions owned and followed as a standby, the same
    /// number of child processes (an agent's open files follow the region servers it runs: a pipe
    /// each way and a process handle per child) and the same number of players (a gateway's).
    pub stretches: usize,
    /// When each stretch began, minutes since the soak began.
    pub stretch_starts: Vec<f64>,
    /// Slope of the resident memory within those stretches, kB per minute ([`pooled_slope`]).
    pub rss_kb_per_min: f64,
    /// Its live heap (what it allocated and has not freed, as it counts it) at the first and the
    /// last of them that have it, kB (`None` from a process that does not count its heap).
    pub heap_kb: Option<(u64, u64)>,
    /// Every one of them that has it: minutes since the soak began, live heap in kB. A sample
    /// lacks it when the process's metrics could not be read (its host cut off, say).
    pub heap_series: Vec<(f64, u64)>,
    /// Slope of the live heap within those stretches, kB per minute (of the samples that have
    /// it; `None` without two settled ones in the same stretch).
    pub heap_kb_per_min: Option<f64>,
    /// Entities in the worlds it held (the regions it owned and followed as a standby, as their
    /// owners last reported them) at the first and the last of them that have the count: what
    /// its heap holds for the game (`None` for a process that is not a region server, or when no
    /// sample had every count).
    pub entities: Option<(u64, u64)>,
    /// The players it carried (a gateway's) at the first and the last of them.
    pub sessions: Option<(u64, u64)>,
    /// What `flat` judged: `"heap"` (the live heap, when at least 90% of the samples have it) or
    /// `"rss"` (resident memory).
    pub judged_on: &'static str,
    /// Open files at the first and the last.
    pub fds: (u64, u64),
    /// Slope of the open files within those stretches, per minute.
    pub fds_per_min: f64,
    /// Whether both are flat: memory growing less than 10% of its mean per hour, open files fewer
    /// than 5 per hour (projected from the slopes). Memory is the live heap where it is counted:
    /// resident memory also moves with the allocator, which keeps what a burst freed and returns
    /// it on its own schedule (docs/testing.md). `None`: fewer than [`JUDGED_MINUTES`] of
    /// settled samples after its warm-up (a process started again late, killed early, or whose
    /// role changed every few minutes), too short for a slope that says anything per hour:
    /// reported, not judged.
    pub flat: Option<bool>,
}

/// An avatar that lost, duplicated or reordered an input, or was disconnected.
#[derive(Clone, Debug, Serialize)]
pub struct TroubledAvatar {
    /// Its figures.
    pub outcome: PlayerOutcome,
    /// Its border crossings: (Unix ms, from, to).
    pub crossings: Vec<(u64, u64, u64)>,
    /// The failovers it lived through: (Unix ms, region, tick seen before, first tick after).
    pub rollbacks: Vec<(u64, u64, u64, u64)>,
}

/// What a soak saw.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// Minutes of play.
    pub minutes: f64,
    /// The faults, in order.
    pub faults: Vec<FaultRecord>,
    /// Avatars that played.
    pub avatars: usize,
    /// Inputs they sent.
    pub inputs_sent: u64,
    /// As in the matrix: of every avatar.
    pub inputs_lost: u64,
    /// As in the matrix: what the coordinator's failover records of the soak counted lost.
    pub inputs_lost_counted: u64,
    /// As in the matrix.
    pub inputs_duplicated: u64,
    /// As in the matrix.
    pub disconnects: u64,
    /// Sessions resumed at another gateway.
    pub resumes: u64,
    /// Resumes refused for good (an expired token): each ended its player's session.
    pub resumes_refused_for_good: u64,
    /// Avatars that could not connect at all.
    pub failed_to_connect: usize,
    /// Why sessions ended or were resumed, with how often (the avatars' close reasons).
    pub close_reasons: std::collections::BTreeMap<String, u64>,
    /// What each avatar that lost, duplicated or reordered an input, or was disconnected, saw.
    pub troubled_avatars: Vec<TroubledAvatar>,
    /// Processes found where none should be (pid and namespace), at the end.
    pub leaked_processes: Vec<String>,
    /// Memory and open files per long-running process.
    pub processes: Vec<ProcessTrend>,
}

impl SoakReport {
    /// Whether the soak held: every fault's invariants, nothing lost but what the failovers
    /// counted lost (inputs a standby acknowledged, lost with its owner), nothing leaked, every
    /// process flat.
    #[must_use]
    pub fn held_up(&self) -> bool {
        self.faults.iter().all(|fault| fault.cell.single_owner || fault.cell.outcome == "not_reached")
            && self.faults.iter().all(|fault| fault.cell.digest_ok != Some(false))
            && self.inputs_lost == self.inputs_lost_counted
            && self.inputs_duplicated == 0
            && self.disconnects == 0
            && self.failed_to_connect == 0
            && self.leaked_processes.is_empty()
            && self.processes.iter().all(|process| process.flat != Some(false))
    }
}

/// Runs a soak on a fresh test bed.
pub fn run(options: &Options) -> anyhow::Result<SoakReport> {
    let sites = [("co", 1), ("h1", 11), ("h2", 12), ("h3", 13), ("g0", 21), ("g1", 22), ("pl", 30)]
        .map(|(name, host_byte)| SiteSpec { name: name.into(), host_byte });
    let testbed = Testbed::create(&sites)?;
    // As the matrix: the soak's own thread is in the players' namespace.
    let report = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                crate::netns::Testbed::enter(&testbed.site("pl")?.netns)?;
                run_in(&testbed, options)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the soak's thread panicked")))
    })?;
    drop(testbed);
    Ok(report)
}

fn run_in(testbed: &Testbed, options: &Options) -> anyhow::Result<SoakReport> {
    let mut scenario = Scenario::shipped("mixed")?;
    if let Some(avatars) = options.avatars {
        scenario.avatars = avatars;
    }
    scenario.duration_s = (options.minutes * 60.0).ceil() as u64;
    let mut spec = baton_loadtest::run::fleet_spec(&scenario);
    if let Some(seconds) = options.idle_release_s {
        spec.coordinator_args.extend(["--idle-release-s".into(), seconds.to_string()]);
    }
    let point =
        FaultPoint { phase: None, path: std::env::temp_dir().join(format!("baton-soak-fault-{}", std::process::id())) };
    let mut server = ServerCommandLine::sample(&spec)?;
    // As in the matrix: churn regions' handoffs stream delta rounds (see `CHURNING`).
    server.args.extend(["--dirty".into(), MOVING_DIRTY.into(), "--bulk-mbps".into(), BULK_MBPS.into()]);
    server.env.push((FAULT_POINT_VARIABLE.into(), format!("armed:{}", point.path.display())));
    let hosts: Vec<String> = (1..=scenario.hosts).map(|index| format!("h{index}")).collect();
    let placement = FleetPlacement {
        coordinator: testbed.site("co")?,
        gateways: vec![testbed.site("g0")?, testbed.site("g1")?],
        hosts: hosts.iter().map(|host| testbed.site(host)).collect::<anyhow::Result<_>>()?,
    };
    let mut fleet = Fleet::start_placed(&spec, server, Some(placement))?;
    let outcome = soak(testbed, &mut fleet, &scenario, &point, options);
    for path in [point.path.clone(), point.release_path(), point.phase_path()] {
        let _ = std::fs::remove_file(path);
    }
    let mut report = outcome?;
    // No process left behind: the deployment stops every one it started.
    drop(fleet);
    for host in ["co", "h1", "h2", "h3", "g0", "g1"] {
        let netns = testbed.site(host)?.netns;
        for pid in pids_in(&netns) {
            report.leaked_processes.push(format!("pid {pid} in {netns} after the deployment stopped"));
        }
    }
    Ok(report)
}

fn soak(
    testbed: &Testbed,
    fleet: &mut Fleet,
    scenario: &Scenario,
    point: &FaultPoint,
    options: &Options,
) -> anyhow::Result<SoakReport> {
    fleet.wait_hosts_ready(scenario.hosts, 1, Duration::from_secs(120))?;
    for region in 1..=scenario.regions {
        let host = format!("h{}", (region - 1) % scenario.hosts as u64 + 1);
        let objects = scenario.objects_per_region;
        let churn = if CHURNING.contains(&region) { CHURN } else { 0 };
        let world =
            json!({"objects": objects, "npcs": objects / 10, "plants": objects / 10, "seed": region, "churn": churn});
        fleet
            .ok("POST", "/v1/regions", Some(json!({"region": region, "host": host, "world": world})))
            .with_context(|| format!("creating region {region}"))?;
    }
    let (mut g1, g1_address, g1_metrics) = fleet.start_late_gateway_with_metrics()?;
    let g0_address = fleet.gateway_address;
    let mut client = fleet.client_options();
    client.bind = SocketAddr::new(testbed.site("pl")?.ip, 0);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let plans = baton_loadtest::run::player_plans(scenario);
    let avatars = plans.len();
    let endpoints: Vec<_> = {
        let _guard = runtime.enter();
        (0..plans.len().div_ceil(50)).map(|_| client.shared_endpoint()).collect::<Result<_, _>>()?
    };
    let tasks: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(index, mut plan)| {
            plan.resume_at = vec![g1_address, g0_address];
            let mut options = client.clone();
            options.endpoint = Some(endpoints[index / 50].clone());
            runtime.spawn(run_player(options, fleet.token(plan.player, plan.region), plan))
        })
        .collect();
    eprintln!(
        "baton-testbed: soak: {avatars} avatars in {} regions on {} hosts for {} min, a fault every {} s (seed {})",
        scenario.regions, scenario.hosts, options.minutes, options.fault_every_s, options.seed
    );

    // Memory and open files, every 10 s, on a thread of its own.
    let watched: Arc<Mutex<Vec<Watched>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let (watched, samples, stop, admin) = (watched.clone(), samples.clone(), stop.clone(), fleet.admin());
        std::thread::spawn(move || sample_every(Duration::from_secs(10), started, &watched, &admin, &samples, &stop))
    };
    let mut rng = Rng(options.seed.max(1));
    let cells = Cell::all();
    let mut faults = Vec::new();
    let play_ends = Duration::from_secs(scenario.ramp_s + scenario.duration_s);
    // The first fault once every avatar is in.
    let mut next_fault = Duration::from_secs(scenario.ramp_s + options.fault_every_s.min(30));
    while started.elapsed() < play_ends {
        set_watched(&watched, fleet, (&g1, g1_metrics));
        if started.elapsed() < next_fault {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        next_fault += Duration::from_secs(options.fault_every_s);
        if started.elapsed() + Duration::from_secs(45) > play_ends {
            // Too late for a fault to settle before play ends.
            continue;
        }
        let cell = cells[rng.below(cells.len())];
        let mut region = 1 + rng.below(scenario.regions as usize) as u64;
        if cell.phase == FaultPhase::Rounds {
            // Only a churning region's handoff is sure to stream delta rounds.
            region = CHURNING[region as usize % CHURNING.len()];
        }
        let pick = rng.below(usize::MAX);
        let at_s = started.elapsed().as_secs_f64();
        let Some(fault) = strike_cell(testbed, fleet, point, cell, region, pick, scenario.hosts)? else {
            continue;
        };
        if !fault.cell.outcome.starts_with("error") && fault.cell.outcome != "not_reached" && !fault.cell.single_owner {
            eprintln!("baton-testbed: soak: region {} did not settle: {:?}", fault.region, fault.cell.reason);
        }
        eprintln!("baton-testbed: soak: t={:.0}s: {}", started.elapsed().as_secs_f64(), fault.cell.outcome);
        faults.push(FaultRecord { at_s, ..fault });
    }
    // Every long-running process as it is at the end, for the leak check.
    let leaked = leftover_processes(testbed, fleet, scenario.hosts)?;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    eprintln!("baton-testbed: soak: play is over; waiting for the last acknowledgements");
    let mut outcomes: Vec<PlayerOutcome> = Vec::new();
    let mut failed_to_connect = 0;
    for task in tasks {
        match runtime.block_on(task) {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(_)) => failed_to_connect += 1,
            Err(error) => anyhow::bail!("a player task panicked: {error}"),
        }
    }
    g1.kill();
    let mut totals = CellReport::default();
    count_players(&outcomes, &mut totals);
    let regions: Vec<u64> = (1..=scenario.regions).collect();
    let counted = crate::matrix::counted_lost(&crate::matrix::records_of(fleet)?, &regions, None);
    let mut close_reasons = std::collections::BTreeMap::new();
    for reason in outcomes.iter().flat_map(|outcome| &outcome.close_reasons) {
        *close_reasons.entry(reason.clone()).or_insert(0) += 1;
    }
    let samples = samples.lock().map(|samples| samples.clone()).unwrap_or_default();
    Ok(SoakReport {
        seed: options.seed,
        minutes: options.minutes,
        faults,
        avatars,
        inputs_sent: outcomes.iter().map(|outcome| outcome.sent).sum(),
        inputs_lost: totals.inputs_lost,
        inputs_lost_counted: counted,
        inputs_duplicated: totals.inputs_duplicated,
        disconnects: totals.disconnects,
        resumes: totals.resumes,
        resumes_refused_for_good: outcomes.iter().map(|outcome| outcome.resumes_refused_for_good).sum(),
        failed_to_connect,
        close_reasons,
        troubled_avatars: outcomes
            .iter()
            .filter(|outcome| {
                !outcome.chain_ok
                    || outcome.disconnects > 0
                    || outcome.applied != outcome.acked
                    || outcome.sent > outcome.acked.saturating_sub(outcome.acked_before)
            })
            .map(|outcome| TroubledAvatar {
                crossings: outcome.crossing_log.clone(),
                rollbacks: outcome.rollbacks.clone(),
                outcome: outcome.clone(),
            })
            .collect(),
        leaked_processes: leaked,
        processes: trends(&samples, Duration::from_secs(120)),
    })
}

/// Strikes one fault of the matrix, `cell`:
/// - a handoff's: `region` migrates to the `pick`-th (modulo their number) of the other hosts
///   (not the one holding its standby, which the coordinator refuses as a target), hit at the
///   cell's phase;
/// - a crossing's: the next avatar to cross any border (at the cell's phase) is hit, its two
///   regions being the cell's source and target;
/// - a failover's: `region`'s owner is killed, and its hot standby hit while it is promoted (a
///   `kill_source` kills the owner's host whole; it is started again afterwards, whatever came
///   of the strike).
///
/// `None` when the cell cannot be struck now (the region is moving, or has no standby holding).
fn strike_cell(
    testbed: &Testbed,
    fleet: &mut Fleet,
    point: &FaultPoint,
    cell: Cell,
    region: u64,
    pick: usize,
    host_count: usize,
) -> anyhow::Result<Option<FaultRecord>> {
    let skip = |why: &str| {
        eprintln!("baton-testbed: soak: {} at {} skipped: {why}", cell.fault.name(), cell.phase.name());
        Ok(None)
    };
    let (region, hosts, struck) = match cell.operation() {
        "crossing" => {
            announce(cell, "the next crossing");
            arm(point, cell)?;
            let struck = strike_crossing(testbed, fleet, point, cell.fault, None, Duration::from_secs(30));
            // The crossing's source region (the held one at `emigrated`, the other at `immigrated`).
            let (region, hosts) = match &struck {
                Ok(strike) if strike.regions.len() == 2 => {
                    let source = if strike.held == "source" { strike.regions[0] } else { strike.regions[1] };
                    (source, strike.hosts.clone())
                }
                _ => (0, Default::default()),
            };
            (region, hosts, struck)
        }
        "failover" => {
            let Some(from) = region_host(fleet, region) else { return skip(&format!("region {region} is moving")) };
            let Some((standby_host, standby_process)) = holding_standby(fleet, region) else {
                return skip(&format!("region {region} has no standby holding it"));
            };
            announce(cell, &format!("region {region} on {from}, its standby on {standby_host}"));
            arm(point, cell)?;
            let struck = strike_failover(testbed, fleet, point, region, cell.fault, (&standby_host, &standby_process));
            (region, (from, standby_host), struck)
        }
        _ => {
            let Some(from) = region_host(fleet, region) else { return skip(&format!("region {region} is moving")) };
            let standby = standby_host(fleet, region);
            let candidates: Vec<String> = (1..=host_count)
                .map(|index| format!("h{index}"))
                .filter(|host| *host != from && Some(host) != standby.as_ref())
                .collect();
            if candidates.is_empty() {
                return skip(&format!("region {region} has no host to move to"));
            }
            let to = candidates[pick % candidates.len()].clone();
            announce(cell, &format!("region {region} {from} -> {to}"));
            arm(point, cell)?;
            let struck = strike(testbed, fleet, point, region, (&from, &to), cell.fault);
            (region, (from, to), struck)
        }
    };
    disarm(point);
    let mut record = CellReport {
        operation: cell.operation().into(),
        phase: cell.phase.name().into(),
        fault: cell.fault.name().into(),
        ..CellReport::default()
    };
    let mut injected = false;
    match struck {
        Ok(struck) => {
            injected = struck.fault_at.is_some();
            record.outcome = struck.outcome;
            record.held = struck.held;
            record.reason = struck.reason;
            record.digest_ok = struck.digest_ok;
            record.digests = struck.digests;
            record.single_owner = struck.single_owner;
        }
        Err(error) => record.outcome = format!("error: {error:#}"),
    }
    if cell.fault == crate::matrix::Fault::KillGateway && injected {
        // The players resumed at g1; g0 comes back for the next gateway fault and for those
        // who resume again.
        fleet.restart_gateway().context("starting g0 again")?;
    }
    // A host killed whole comes back, as a repaired machine does, whatever came of the strike.
    for index in 1..=host_count {
        let revived = fleet.revive_host(index).and_then(|revived| {
            if revived {
                fleet.wait_hosts_ready(host_count, 1, Duration::from_secs(60))?;
            }
            Ok(revived)
        });
        match revived {
            Ok(true) => eprintln!("baton-testbed: soak: h{index} started again"),
            Ok(false) => {}
            Err(error) => record.outcome = format!("error: starting h{index} again: {error:#}"),
        }
    }
    Ok(Some(FaultRecord { at_s: 0.0, region, hosts, cell: record }))
}

fn announce(cell: Cell, what: &str) {
    eprintln!("baton-testbed: soak: {what}: {} at {}", cell.fault.name(), cell.phase.name());
}

/// `region`'s hot standby, if one holds it now: its host and process.
fn holding_standby(fleet: &Fleet, region: u64) -> Option<(String, String)> {
    let standbys = fleet.ok("GET", "/v1/standbys", None).ok()?;
    standbys.as_array()?.iter().find_map(|standby| {
        let name = |key: &str| standby[key].as_str().filter(|name| !name.is_empty()).map(str::to_owned);
        (standby["region"] == region && standby["state"] == "holding")
            .then(|| Some((name("host")?, name("process")?)))?
    })
}

/// Arms the fault point for `cell`'s phase (the next region thread entering it stops there).
fn arm(point: &FaultPoint, cell: Cell) -> anyhow::Result<()> {
    disarm(point);
    std::fs::write(point.phase_path(), format!("{}\n", cell.phase.name())).context("arming the fault point")
}

/// Disarms the fault point and lets go of any thread it holds.
fn disarm(point: &FaultPoint) {
    let _ = std::fs::remove_file(point.phase_path());
    let _ = std::fs::write(point.release_path(), b"");
    let _ = std::fs::remove_file(&point.path);
    let _ = std::fs::remove_file(point.release_path());
}

/// The host of `region`'s hot standby, if it has one.
fn standby_host(fleet: &Fleet, region: u64) -> Option<String> {
    let standbys = fleet.ok("GET", "/v1/standbys", None).ok()?;
    standbys
        .as_array()?
        .iter()
        .find(|standby| standby["region"] == region)
        .and_then(|standby| standby["host"].as_str())
        .filter(|host| !host.is_empty())
        .map(str::to_owned)
}

/// The host serving `region`, once nothing moves it.
fn region_host(fleet: &Fleet, region: u64) -> Option<String> {
    wait_settled(fleet, region, Duration::from_secs(30)).ok()?;
    let regions = fleet.ok("GET", "/v1/regions", None).ok()?;
    regions.as_array()?.iter().find(|view| view["region"] == region)?["host"].as_str().map(str::to_owned)
}

/// A process the sampler follows besides the region servers: its name, its current pid and its
/// metrics page (where its live heap is read).
type Watched = (String, u32, String);

/// The processes the sampler follows besides the region servers: the coordinator, the agents and
/// the gateways.
fn set_watched(
    watched: &Mutex<Vec<Watched>>,
    fleet: &Fleet,
    (g1, g1_metrics): (&baton_harness::cluster::GatewayProcess, SocketAddr),
) {
    let mut now = Vec::new();
    if let Some(coordinator) = &fleet.coordinator {
        now.push(("coordinator".to_owned(), coordinator.pid(), fleet.admin().metrics_url()));
    }
    for index in 1.. {
        let (Some(pid), Some(metrics)) = (fleet.agent_pid(index), fleet.agent_metrics.get(index - 1)) else { break };
        now.push((format!("h{index} agent"), pid, format!("http://{metrics}/metrics")));
    }
    now.push(("g0".to_owned(), fleet.gateway.pid(), format!("http://{}/metrics", fleet.gateway_metrics)));
    now.push(("g1".to_owned(), g1.pid(), format!("http://{g1_metrics}/metrics")));
    if let Ok(mut watched) = watched.lock() {
        *watched = now;
    }
}

#[derive(Clone, Debug, Default)]
struct Sample {
    at_min: f64,
    process: String,
    pid: u32,
    rss_kb: u64,
    /// Its live heap in kB, as it counts it (`None`: not read).
    heap_kb: Option<u64>,
    fds: u64,
    /// The regions it owned, in order (none for a process that is not a region server).
    regions: Vec<u64>,
    /// The regions it was named the hot standby of (preparing for, being fed, holding or keeping
    /// their state), in order.
    standby_of: Vec<u64>,
    /// Entities in the worlds of those regions (see [`held_entities`]; `None` for a process that
    /// is not a region server, or when a region's count is not known).
    entities: Option<u64>,
    /// Its child processes (an agent's region servers).
    children: u64,
    /// The players connected to it (a gateway's; `None` for other processes).
    sessions: Option<u64>,
}

impl Sample {
    /// Whether `other` does the same work as this one: the same regions owned and followed, the
    /// same players (a gateway's).
    fn same_role(&self, other: &Sample) -> bool {
        self.regions == other.regions && self.standby_of == other.standby_of && self.sessions == other.sessions
    }
}

fn sample_every(
    every: Duration,
    started: Instant,
    watched: &Mutex<Vec<Watched>>,
    admin: &AdminApi,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
) {
    let mut next = started;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next += every;
        let watched_now = watched.lock().map(|watched| watched.clone()).unwrap_or_default();
        // Their live heaps, from their metrics pages (none from a process that is down or cut off).
        // What /proc says is filled in below.
        let seen = |process: String, pid: u32, heap_kb: Option<u64>, regions: Vec<u64>, standby_of: Vec<u64>| Sample {
            at_min: 0.0,
            process,
            pid,
            rss_kb: 0,
            heap_kb,
            fds: 0,
            regions,
            standby_of,
            entities: None,
            children: 0,
            sessions: None,
        };
        let mut processes: Vec<Sample> = watched_now
            .into_iter()
            .map(|(name, pid, metrics)| {
                let page = admin.metrics_page(&metrics).ok();
                let read = |metric: &str| page.as_deref().and_then(|page| metric_listed(page, metric)?.ok());
                let heap = read(baton_net::heap::LIVE_BYTES_GAUGE).filter(|bytes| *bytes > 0.0);
                // Only a gateway's page lists it (and then always, 0 without players).
                let sessions = read(SESSIONS_GAUGE).map(|sessions| sessions as u64);
                Sample { sessions, ..seen(name, pid, heap.map(|bytes| bytes as u64 / 1024), Vec::new(), Vec::new()) }
            })
            .collect();
        // Which process follows which region as its standby.
        let mut standbys: Vec<(String, u64)> = Vec::new();
        if let Ok(views) = admin.ok("GET", "/v1/standbys", None) {
            for view in views.as_array().into_iter().flatten() {
                // Every state in which a process has been named: preparing its slot, being fed the
                // snapshot, holding the region's state, detached (keeping it for a promotion).
                let holds = matches!(view["state"].as_str(), Some("preparing" | "feeding" | "holding" | "detached"));
                if let (true, Some(process), Some(region)) = (holds, view["process"].as_str(), view["region"].as_u64())
                {
                    standbys.push((process.to_owned(), region));
                }
            }
        }
        // Region servers, as their hosts report them (none while the coordinator is down).
        if let Ok(hosts) = admin.ok("GET", "/v1/hosts", None) {
            // Each region's entities, as its owner's host last reported them.
            let counts: HashMap<u64, u64> = hosts
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|host| host["regions"].as_array().cloned().unwrap_or_default())
                .filter_map(|load| Some((load["region"].as_u64()?, load["entities"].as_u64()?)))
                .collect();
            for process in hosts
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
            {
                if let (Some(name), Some(pid)) = (process["name"].as_str(), process["pid"].as_u64()) {
                    let mut regions: Vec<u64> = process["regions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|region| region.as_u64())
                        .collect();
                    regions.sort_unstable();
                    let mut standby_of: Vec<u64> =
                        standbys.iter().filter(|(process, _)| process == name).map(|(_, region)| *region).collect();
                    standby_of.sort_unstable();
                    let heap_kb = process["heap_bytes"].as_u64().map(|bytes| bytes / 1024);
                    let entities = held_entities(&regions, &standby_of, &counts);
                    processes
                        .push(Sample { entities, ..seen(name.to_owned(), pid as u32, heap_kb, regions, standby_of) });
                }
            }
        }
        let at_min = started.elapsed().as_secs_f64() / 60.0;
        let taken: Vec<Sample> = processes
            .into_iter()
            .filter_map(|sample| {
                let (rss_kb, fds, children) = usage(sample.pid)?;
                Some(Sample { at_min, rss_kb, fds, children, ..sample })
            })
            .collect();
        if let Ok(mut samples) = samples.lock() {
            samples.extend(taken);
        }
    }
}

/// Entities in the worlds a region server holds: the regions it owns and those it follows as a
/// standby (a standby holds a copy of its region's world), each as `counts` has it (the owner's
/// last report). `None` when a region's count is not known (its owner has not reported it yet,
/// or it is moving).
fn held_entities(regions: &[u64], standby_of: &[u64], counts: &HashMap<u64, u64>) -> Option<u64> {
    regions.iter().chain(standby_of).map(|region| counts.get(region).copied()).sum()
}

/// Resident memory (kB), open files and child processes of process `pid`, from `/proc`.
fn usage(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map_or(0, |children| children.split_whitespace().count() as u64);
    Some((rss_kb, fds, children))
}

/// The least span of settled samples after its warm-up a process's trend is judged on.
pub const JUDGED_MINUTES: f64 = 10.0;

/// How long after a stretch begun by a new role (regions owned or followed, a gateway's players;
/// not a child process started or gone) its samples are left out of the slopes. A role's memory lands
/// over a few samples: a region taken over arrives in snapshot chunks and rounds, and a region
/// server's heap, as its agent reports it, is up to a second (its heap events) and a status report
/// older than the regions it is reported with. The soak samples every 10 s. A standby's stretch
/// begins when it is named (preparing, then fed its snapshot), so what lands after the first 30 s
/// of a longer snapshot is in the fit; a role reported late, at the end of a stretch, is left to
/// the median ([`pooled_slope`]).
pub const SETTLE: Duration = Duration::from_secs(30);

/// The gauge of a gateway's players (`GatewayStats::record_metrics` names it).
const SESSIONS_GAUGE: &str = "baton_gateway_sessions";

/// Per process (name and pid), the trend of its samples after `warmup` of its own life.
fn trends(samples: &[Sample], warmup: Duration) -> Vec<ProcessTrend> {
    let mut keys: Vec<(String, u32)> = samples.iter().map(|sample| (sample.process.clone(), sample.pid)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|(process, pid)| {
            let own: Vec<&Sample> =
                samples.iter().filter(|sample| sample.process == process && sample.pid == pid).collect();
            let first = own.first()?.at_min;
            // A gateway's players as last read: a scrape that failed (its metrics cut off) does not
            // end a stretch.
            let mut players = None;
            let kept: Vec<Sample> = own
                .into_iter()
                .filter(|sample| sample.at_min >= first + warmup.as_secs_f64() / 60.0)
                .map(|sample| {
                    players = sample.sessions.or(players);
                    Sample { sessions: players, ..sample.clone() }
                })
                .collect();
            // A trend needs a few minutes of samples.
            if kept.len() < 12 {
                return None;
            }
            let minutes = kept.last()?.at_min - kept.first()?.at_min;
            let stretches: Vec<&[Sample]> = kept.chunk_by(|a, b| a.same_role(b) && a.children == b.children).collect();
            // A stretch begun by a new role (regions, standbys, players) settles first; one begun
            // only by a child process started or gone (an agent's) does not: nothing streams in.
            let settle = SETTLE.as_secs_f64() / 60.0;
            let settled: Vec<&[Sample]> = stretches
                .iter()
                .enumerate()
                .map(|(index, stretch)| {
                    let new_role =
                        index > 0 && !stretches[index - 1][stretches[index - 1].len() - 1].same_role(&stretch[0]);
                    if !new_role {
                        return *stretch;
                    }
                    let from = stretch[0].at_min + settle;
                    &stretch[stretch.partition_point(|sample| sample.at_min < from)..]
                })
                .filter(|stretch| !stretch.is_empty())
                .collect();
            let judged_minutes: f64 =
                settled.iter().map(|stretch| stretch[stretch.len() - 1].at_min - stretch[0].at_min).sum();
            let points = |value: fn(&Sample) -> Option<u64>| -> Vec<Vec<(f64, f64)>> {
                settled
                    .iter()
                    .map(|stretch| {
                        stretch.iter().filter_map(|sample| Some((sample.at_min, value(sample)? as f64))).collect()
                    })
                    .collect()
            };
            let rss_kb_per_min = pooled_slope(&points(|sample| Some(sample.rss_kb))).unwrap_or(0.0);
            let fds_per_min = pooled_slope(&points(|sample| Some(sample.fds))).unwrap_or(0.0);
            let heap_series: Vec<(f64, u64)> =
                kept.iter().filter_map(|sample| Some((sample.at_min, sample.heap_kb?))).collect();
            let heap_kb_per_min = pooled_slope(&points(|sample| sample.heap_kb));
            let (judged_on, judged_per_min, judged): (_, _, Vec<u64>) = match heap_kb_per_min {
                Some(slope) if heap_series.len() * 10 >= kept.len() * 9 => {
                    ("heap", slope, heap_series.iter().map(|(_, kb)| *kb).collect())
                }
                _ => ("rss", rss_kb_per_min, kept.iter().map(|sample| sample.rss_kb).collect()),
            };
            let mean = judged.iter().sum::<u64>() as f64 / judged.len() as f64;
            let flat = (judged_minutes >= JUDGED_MINUTES)
                .then_some(judged_per_min * 60.0 <= mean * 0.10 && fds_per_min * 60.0 < 5.0);
            Some(ProcessTrend {
                process,
                pid,
                samples: kept.len(),
                minutes,
                judged_minutes,
                stretches: stretches.len(),
                stretch_starts: stretches.iter().map(|stretch| stretch[0].at_min).collect(),
                rss_kb: (kept.first()?.rss_kb, kept.last()?.rss_kb),
                rss_series: kept.iter().map(|sample| (sample.at_min, sample.rss_kb)).collect(),
                rss_kb_per_min,
                heap_kb: heap_series.first().zip(heap_series.last()).map(|(first, last)| (first.1, last.1)),
                entities: kept
                    .iter()
                    .find_map(|sample| sample.entities)
                    .zip(kept.iter().rev().find_map(|sample| sample.entities)),
                sessions: kept
                    .iter()
                    .find_map(|sample| sample.sessions)
                    .zip(kept.iter().rev().find_map(|sample| sample.sessions)),
                heap_series,
                heap_kb_per_min,
                judged_on,
                fds: (kept.first()?.fds, kept.last()?.fds),
                fds_per_min,
                flat,
            })
        })
        .collect()
}

/// The slope of `points` as one stretch ([`pooled_slope`]; 0 for fewer than two distinct x).
#[cfg(test)]
fn slope(points: &[(f64, f64)]) -> f64 {
    pooled_slope(&[points.to_vec()]).unwrap_or(0.0)
}

/// The slope shared by `stretches`, each with a level of its own: the line's height may jump
/// between stretches (a region taken over or handed off), its slope is one. It is the median of
/// the slopes between every two points of the same stretch (the Theil-Sen estimator, pooled over
/// the stretches; `None` without two distinct x in any stretch): a steady growth gives every pair
/// its slope, while one sample of a burst, or of a role reported late, is in about 1/n of a
/// stretch's pairs, where it would tilt a least-squares line by its whole height.
fn pooled_slope(stretches: &[Vec<(f64, f64)>]) -> Option<f64> {
    let mut slopes: Vec<f64> = Vec::new();
    for points in stretches {
        for (index, (x0, y0)) in points.iter().enumerate() {
            for (x1, y1) in &points[index + 1..] {
                if x1 != x0 {
                    slopes.push((y1 - y0) / (x1 - x0));
                }
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let middle = slopes.len() / 2;
    Some(if slopes.len() % 2 == 1 { slopes[middle] } else { (slopes[middle - 1] + slopes[middle]) / 2.0 })
}

/// Processes where none should be: in a host's namespace, besides its agent and the region
/// servers the agent reports.
fn leftover_processes(testbed: &Testbed, fleet: &Fleet, hosts: usize) -> anyhow::Result<Vec<String>> {
    let views = fleet.ok("GET", "/v1/hosts", None)?;
    let mut leaked = Vec::new();
    for index in 1..=hosts {
        let name = format!("h{index}");
        let netns = testbed.site(&name)?.netns;
        let mut expected: Vec<u32> = fleet.agent_pid(index).into_iter().collect();
        expected.extend(
            views
                .as_array()
                .into_iter()
                .flatten()
                .filter(|host| host["name"] == name.as_str())
                .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
                .filter_map(|process| process["pid"].as_u64())
                .map(|pid| pid as u32),
        );
        for pid in pids_in(&netns) {
            if !expected.contains(&pid) {
                leaked.push(format!("pid {pid} in {netns}: neither its agent nor a region server it reports"));
            }
        }
    }
    Ok(leaked)
}

/// The processes in network namespace `netns`.
fn pids_in(netns: &str) -> Vec<u32> {
    std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|pid| pid.parse().ok()).collect()
        })
        .unwrap_or_default()
}

/// A small seeded generator (xorshift64*): the same seed picks the same faults.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_slope_and_flat_samples_are_flat() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 7.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 7.0), (1.0, 9.0)]), 0.0);
    }

    #[test]
    fn a_process_that_grows_is_not_flat_and_the_warm_up_is_left_out() {
        let sample = |at_min: f64, rss_kb: u64, fds: u64| Sample {
            at_min,
            process: "g0".into(),
            pid: 9,
            rss_kb,
            fds,
            ..Sample::default()
        };
        // Growing 10 kB a minute on 10 MB: 6% an hour, flat; the first 2 minutes are left out.
        let steady: Vec<Sample> =
            (0..40).map(|index| sample(f64::from(index) * 0.5, 10_000 + index as u64 * 5, 30)).collect();
        let trend = &trends(&steady, Duration::from_secs(120))[0];
        assert_eq!(trend.samples, 36);
        assert!((trend.rss_kb_per_min - 10.0).abs() < 1e-6, "{trend:?}");
        assert_eq!(trend.flat, Some(true), "{trend:?}");
        // 1 MB a minute on 10 MB, or one more open file every two minutes: not flat.
        let leaking: Vec<Sample> =
            (0..40).map(|index| sample(f64::from(index) * 0.5, 10_000 + index as u64 * 500, 30)).collect();
        assert_eq!(trends(&leaking, Duration::from_secs(120))[0].flat, Some(false));
        let files: Vec<Sample> =
            (0..40).map(|index| sample(f64::from(index) * 0.5, 10_000, 30 + index as u64 / 4)).collect();
        assert_eq!(trends(&files, Duration::from_secs(120))[0].flat, Some(false));
        // Open files that follow the child processes (an agent's) are not a trend; within the same
        // children they are.
        let following: Vec<Sample> = (0..40u32)
            .map(|index| {
                let children = u64::from(index / 8);
                Sample { children, ..sample(f64::from(index) * 0.5, 10_000, 30 + children * 3) }
            })
            .collect();
        assert_eq!(trends(&following, Duration::from_secs(120))[0].flat, Some(true));
        // Too short to say anything; long enough for a slope, too short to judge it.
        assert!(trends(&steady[..10], Duration::ZERO).is_empty());
        let short = &trends(&leaking[..24], Duration::from_secs(120))[0];
        assert!(short.judged_minutes < JUDGED_MINUTES && short.rss_kb_per_min > 900.0, "{short:?}");
        assert_eq!(short.flat, None, "{short:?}");
    }

    #[test]
    fn a_region_server_holds_the_entities_of_the_regions_it_owns_and_follows() {
        let counts: HashMap<u64, u64> = [(1, 300), (2, 369), (7, 20_000)].into_iter().collect();
        assert_eq!(held_entities(&[1, 2], &[7], &counts), Some(20_669));
        assert_eq!(held_entities(&[], &[7], &counts), Some(20_000));
        assert_eq!(held_entities(&[], &[], &counts), Some(0), "a warm process holds none");
        assert_eq!(held_entities(&[1, 3], &[], &counts), None, "region 3's count is not known");
        // The trend reports the first and the last known count of the samples it keeps.
        let sample = |index: u32, entities: Option<u64>| Sample {
            at_min: f64::from(index) * 0.5,
            process: "h1-p1".into(),
            pid: 9,
            rss_kb: 10_000,
            heap_kb: Some(9_000),
            fds: 30,
            regions: vec![1],
            entities,
            ..Sample::default()
        };
        let samples: Vec<Sample> =
            (0..40).map(|index| sample(index, (index % 10 != 0).then_some(300 + u64::from(index)))).collect();
        assert_eq!(trends(&samples, Duration::ZERO)[0].entities, Some((301, 339)));
        let unknown: Vec<Sample> = (0..40).map(|index| sample(index, None)).collect();
        assert_eq!(trends(&unknown, Duration::ZERO)[0].entities, None);
    }

    #[test]
    fn each_process_and_each_of_its_lives_is_a_trend_of_its_own() {
        let sample = |process: &str, pid: u32, index: u32, rss_kb: u64| Sample {
            at_min: f64::from(index) * 0.5,
            process: process.into(),
            pid,
            rss_kb,
            fds: 30,
            ..Sample::default()
        };
        let mut samples = Vec::new();
        for index in 0..40 {
            samples.push(sample("g0", 9, index, 10_000));
            samples.push(sample("g1", 9, index, 10_000 + u64::from(index) * 500));
            samples.push(sample("g0", 11, index, 10_000 + u64::from(index) * 500));
        }
        let trends = trends(&samples, Duration::ZERO);
        let verdicts: Vec<(&str, u32, Option<bool>)> =
            trends.iter().map(|trend| (trend.process.as_str(), trend.pid, trend.flat)).collect();
        assert_eq!(verdicts, [("g0", 9, Some(true)), ("g0", 11, Some(false)), ("g1", 9, Some(false))]);
        assert!(trends.iter().all(|trend| trend.samples == 40));
    }

    #[test]
    fn memory_is_judged_on_the_live_heap_where_nine_samples_in_ten_have_it() {
        let sample = |index: u32, rss_kb: u64, heap_kb: Option<u64>| Sample {
            at_min: f64::from(index) * 0.5,
            process: "g0".into(),
            pid: 9,
            rss_kb,
            heap_kb,
            fds: 30,
            ..Sample::default()
        };
        // Resident memory stepping up after bursts (the allocator keeping what they freed), 20% an
        // hour, over a level heap: flat, judged on the heap; the resident slope still reported.
        let settling: Vec<Sample> = (0..40)
            .map(|index| sample(index, 40_000 + u64::from(index) * 70, Some(30_000 + u64::from(index % 3))))
            .collect();
        let trend = &trends(&settling, Duration::ZERO)[0];
        assert_eq!((trend.judged_on, trend.flat), ("heap", Some(true)), "{trend:?}");
        assert!((trend.rss_kb_per_min - 140.0).abs() < 1e-6, "{trend:?}");
        assert_eq!(trend.heap_kb, Some((30_000, 30_000)), "{trend:?}");
        assert_eq!(trend.heap_series.len(), 40);
        // A heap that grows 10 kB a minute on 10 MB is judged as resident memory would be (6% an
        // hour: flat), one that grows 500 kB a minute is not, whatever resident memory does.
        let slow: Vec<Sample> =
            (0..40).map(|index| sample(index, 50_000, Some(10_000 + u64::from(index) * 5))).collect();
        let slow = &trends(&slow, Duration::ZERO)[0];
        assert!(slow.heap_kb_per_min.is_some_and(|slope| (slope - 10.0).abs() < 1e-6), "{slow:?}");
        assert_eq!(slow.flat, Some(true), "{slow:?}");
        let leaking: Vec<Sample> =
            (0..40).map(|index| sample(index, 50_000, Some(10_000 + u64::from(index) * 250))).collect();
        assert_eq!(trends(&leaking, Duration::ZERO)[0].flat, Some(false));
        // Samples without the heap (metrics unreadable while the host was cut off): judged on the
        // others while they are at least 90%, else on resident memory.
        let mut gap = settling.clone();
        for sample in &mut gap[20..24] {
            sample.heap_kb = None;
        }
        let trend = &trends(&gap, Duration::ZERO)[0];
        assert_eq!((trend.judged_on, trend.flat, trend.heap_series.len()), ("heap", Some(true), 36), "{trend:?}");
        gap[24].heap_kb = None;
        let trend = &trends(&gap, Duration::ZERO)[0];
        assert_eq!((trend.judged_on, trend.flat), ("rss", Some(false)), "{trend:?}");
        assert!(trend.heap_kb_per_min.is_some(), "still reported: {trend:?}");
    }

    #[test]
    fn a_region_servers_memory_is_judged_within_stretches_of_the_same_regions() {
        // A region server flat while it hosts region 1 (20 MB), that takes region 2 over (+30 MB),
        // hands region 1 off (-15 MB) and becomes region 3's standby (+10 MB): the jumps are not
        // a trend.
        let sample = |index: u32, rss_kb: u64, regions: Vec<u64>, standby_of: Vec<u64>| Sample {
            at_min: f64::from(index) / 6.0,
            process: "h1-p2".into(),
            pid: 7,
            rss_kb,
            fds: 40,
            regions,
            standby_of,
            children: 4,
            ..Sample::default()
        };
        let mut samples: Vec<Sample> = (0..30).map(|index| sample(index, 20_000, vec![1], vec![])).collect();
        samples.extend((30..60).map(|index| sample(index, 50_000, vec![1, 2], vec![])));
        samples.extend((60..90).map(|index| sample(index, 35_000, vec![2], vec![])));
        samples.extend((90..120).map(|index| sample(index, 45_000, vec![2], vec![3])));
        let trend = &trends(&samples, Duration::ZERO)[0];
        assert_eq!(trend.stretches, 4);
        assert_eq!(trend.rss_kb_per_min, 0.0, "{trend:?}");
        assert_eq!(trend.flat, Some(true), "{trend:?}");
        // Fitted across the jumps as one line, the same samples climb 25 MB in 20 minutes.
        let points: Vec<(f64, f64)> = samples.iter().map(|sample| (sample.at_min, sample.rss_kb as f64)).collect();
        assert!(slope(&points) > 1_000.0);
        // Growth within each stretch is still growth: 1 MB a minute in each.
        let leaking: Vec<Sample> = samples
            .iter()
            .map(|sample| Sample { rss_kb: sample.rss_kb + (sample.at_min * 1_000.0) as u64 % 5_000, ..sample.clone() })
            .collect();
        let trend = &trends(&leaking, Duration::ZERO)[0];
        assert!(trend.rss_kb_per_min > 900.0 && trend.flat == Some(false), "{trend:?}");
    }

    #[test]
    fn the_slope_is_the_median_of_the_pairs_so_one_sample_does_not_tilt_it() {
        // Pairs' slopes 1, 2, 4/3, 3, 3/2 and 0: the median of an even count is the mean of the
        // middle two.
        let median = slope(&[(0.0, 0.0), (1.0, 1.0), (2.0, 4.0), (3.0, 4.0)]);
        assert!((median - (4.0 / 3.0 + 1.5) / 2.0).abs() < 1e-9, "{median}");
        assert!((slope(&[(0.0, 0.0), (1.0, 1.0), (2.0, 4.0)]) - 2.0).abs() < 1e-9);
        // Level at 9.6 MB but for one burst at the end: a least-squares line would climb.
        let mut burst: Vec<(f64, f64)> = (0..30).map(|index| (f64::from(index) / 6.0, 9_600.0)).collect();
        burst[29].1 = 10_200.0;
        assert_eq!(slope(&burst), 0.0);
        // Pairs are taken within a stretch only: two level stretches at different heights are flat.
        assert_eq!(pooled_slope(&[vec![(0.0, 5.0), (1.0, 5.0)], vec![(2.0, 9.0), (3.0, 9.0)]]), Some(0.0));
        assert_eq!(pooled_slope(&[vec![(1.0, 7.0)], vec![(2.0, 9.0)]]), None, "no pair within a stretch");
    }

    /// h1-p27 of a 30-minute soak (2026-12-07), in shape: 6.5 MB with nothing to do, the hot
    /// standby of region 4 from 14.5 minutes (its snapshot lands over two samples, 8.8 then 9.6
    /// MB, with one-sample bursts of half a megabyte), let go at 19.7 minutes but reported as the
    /// standby one sample longer, back to 6.5 MB. `grow` kB a minute is added throughout.
    fn standby_for_a_while(grow: f64) -> Vec<Sample> {
        (0..130u32)
            .map(|index| {
                let at_min = 8.5 + f64::from(index) / 6.0;
                let standby = (14.5..19.9).contains(&at_min);
                let heap = match at_min {
                    at if !(14.5..19.75).contains(&at) => 6_500.0,
                    at if at < 14.65 => 8_800.0,
                    _ if index % 7 == 3 => 10_100.0,
                    _ => 9_600.0,
                } + f64::from(index * 37 % 100)
                    + grow * at_min;
                Sample {
                    at_min,
                    process: "h1-p27".into(),
                    pid: 3641,
                    rss_kb: heap as u64 + 5_000,
                    heap_kb: Some(heap as u64),
                    fds: 13,
                    standby_of: if standby { vec![4] } else { Vec::new() },
                    entities: Some(if standby { 398 } else { 0 }),
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn a_role_whose_memory_lands_over_a_few_samples_is_not_a_trend() {
        let trend = &trends(&standby_for_a_while(0.0), Duration::from_secs(120))[0];
        assert_eq!(trend.stretches, 3, "{trend:?}");
        assert!(trend.judged_minutes >= JUDGED_MINUTES, "{trend:?}");
        assert_eq!((trend.judged_on, trend.flat), ("heap", Some(true)), "{trend:?}");
        assert!(trend.heap_kb_per_min.is_some_and(|slope| slope.abs() < 5.0), "{trend:?}");
        // The stretches begin where the role changed, as reported.
        assert_eq!(trend.stretch_starts.len(), 3);
        assert!((trend.stretch_starts[1] - 14.5).abs() < 0.2 && (trend.stretch_starts[2] - 19.9).abs() < 0.2);
        // The same process growing 100 kB a minute all along (15% an hour on its 8 MB) is not flat.
        let leaking = &trends(&standby_for_a_while(100.0), Duration::from_secs(120))[0];
        assert_eq!(leaking.flat, Some(false), "{leaking:?}");
        assert!(leaking.heap_kb_per_min.is_some_and(|slope| (slope - 100.0).abs() < 10.0), "{leaking:?}");
    }

    #[test]
    fn a_gateways_players_make_its_stretches() {
        // 100 players, then 230 after a gateway kill sent the other gateway's players here: the
        // heap steps up with them and is level after; growth at either count is still growth.
        let gateway = |grow: f64| -> Vec<Sample> {
            (0..120u32)
                .map(|index| {
                    let at_min = f64::from(index) / 6.0;
                    let sessions = if at_min < 10.0 { 100 } else { 230 };
                    let heap = if sessions == 100 { 6_700.0 } else { 8_000.0 } + grow * at_min;
                    Sample {
                        at_min,
                        process: "g0".into(),
                        pid: 3518,
                        rss_kb: 13_000,
                        heap_kb: Some(heap as u64),
                        fds: 23,
                        sessions: Some(sessions),
                        ..Sample::default()
                    }
                })
                .collect()
        };
        let trend = &trends(&gateway(0.0), Duration::ZERO)[0];
        assert_eq!((trend.stretches, trend.flat, trend.sessions), (2, Some(true), Some((100, 230))), "{trend:?}");
        assert_eq!(trend.heap_kb_per_min, Some(0.0), "{trend:?}");
        // A scrape that failed (no count read) continues the stretch it fell in.
        let mut unread = gateway(0.0);
        for sample in &mut unread[30..33] {
            sample.sessions = None;
        }
        assert_eq!(trends(&unread, Duration::ZERO)[0].stretches, 2);
        assert_eq!(trends(&gateway(200.0), Duration::ZERO)[0].flat, Some(false));
    }

    #[test]
    fn the_first_30_s_of_a_new_roles_stretch_are_left_out_of_its_slope() {
        // Ten roles of a minute each, their memory landing over the first three samples of each
        // (10 s apart) and level after: flat once those are left out, climbing if they were not.
        let samples: Vec<Sample> = (0..60u32)
            .map(|index| Sample {
                at_min: f64::from(index) / 6.0,
                process: "h3-p4".into(),
                pid: 12,
                heap_kb: Some(6_000 + u64::from((index % 6).min(3)) * 1_000),
                regions: vec![u64::from(index / 6)],
                ..Sample::default()
            })
            .collect();
        let trend = &trends(&samples, Duration::ZERO)[0];
        assert_eq!(trend.stretches, 10);
        assert_eq!(trend.heap_kb_per_min, Some(0.0), "{trend:?}");
        // The first stretch (the start of the samples, not a new role) keeps its landing too.
        assert!((trend.judged_minutes - (5.0 + 9.0 * 2.0) / 6.0).abs() < 1e-9, "{trend:?}");
    }

    #[test]
    fn a_child_process_started_or_gone_ends_a_stretch_without_settling() {
        // An agent whose region servers come and go every 40 s: its open files follow them, and
        // every sample counts (nothing of a role streams into an agent).
        let samples: Vec<Sample> = (0..120u32)
            .map(|index| Sample {
                at_min: f64::from(index) / 6.0,
                process: "h1 agent".into(),
                pid: 30,
                heap_kb: Some(3_200),
                fds: 30 + u64::from(index / 4 % 3) * 3,
                children: u64::from(index / 4 % 3),
                ..Sample::default()
            })
            .collect();
        let trend = &trends(&samples, Duration::ZERO)[0];
        assert_eq!(trend.stretches, 30);
        assert!((trend.judged_minutes - 30.0 * 3.0 / 6.0).abs() < 1e-9, "{trend:?}");
        assert_eq!((trend.fds_per_min, trend.flat), (0.0, Some(true)), "{trend:?}");
    }

    #[test]
    fn a_process_whose_role_changes_every_few_samples_is_not_judged() {
        // 20 minutes of samples, but a region taken or let go every 40 s: each stretch leaves one
        // settled sample, no span to fit.
        let samples: Vec<Sample> = (0..120u32)
            .map(|index| Sample {
                at_min: f64::from(index) / 6.0,
                process: "h2-p3".into(),
                pid: 40,
                rss_kb: 10_000 + u64::from(index) * 100,
                heap_kb: Some(8_000 + u64::from(index) * 100),
                fds: 13,
                regions: vec![u64::from(index / 4 % 2)],
                ..Sample::default()
            })
            .collect();
        let trend = &trends(&samples, Duration::ZERO)[0];
        // Only the first stretch (not a new role) keeps its four samples.
        assert!(trend.minutes > 19.0 && (trend.judged_minutes - 0.5).abs() < 1e-9, "{trend:?}");
        assert_eq!(trend.flat, None, "{trend:?}");
    }

    #[test]
    fn a_seed_picks_the_same_faults() {
        let picks = |seed| {
            let mut rng = Rng(seed);
            (0..20).map(|_| rng.below(36)).collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        assert!(picks(7).iter().all(|pick| *pick < 36));
    }
}
