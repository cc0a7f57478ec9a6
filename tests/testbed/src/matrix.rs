//! The fault matrix: a handoff, a border crossing or a failover across the test bed, with one
//! fault injected at one phase of it, for each phase and each fault; per cell, whether the
//! invariants held.
//!
//! Each cell starts a fresh test bed and deployment: the coordinator (`co`), three hosts (`h1`,
//! `h2`, `h3`: an agent each with its warm region servers), two gateways (`g0`, `g1`) and the
//! players (`pl`), each in its own network namespace. Region 1 (20,000 entities, 2% of them
//! changing per tick, so its handoff streams a snapshot and at least one delta round) lives on
//! `h1` with four players; region 2 on `h3` with two. Every player plays through `g0` and resumes
//! its session at `g1` if `g0` dies. Region 1 migrates to `h2` with a fault point
//! (`baton_runtime::fault_point`) at the cell's phase: the first region thread that enters it
//! stops there, the fault is injected, and the thread goes on. Then the cell waits until the
//! region is served by one process again, plays on for a while, and checks:
//!
//! - `single_owner`: the directory names one owner of region 1, it is the one process that
//!   reports serving it, and once a cut link is back no other process claims it;
//! - `inputs_lost`, `inputs_duplicated`: of every player, inputs sent that were never applied, and
//!   inputs the avatar counted beyond those acknowledged (plus players whose avatar's input chain
//!   differs from the one they sent: an input applied out of order or twice); the only loss the
//!   design allows is that of inputs a hot standby acknowledged when it is lost with its owner,
//!   which the coordinator counts on the failover's record (`inputs_lost_counted`): a cell holds
//!   when the players lost exactly what was counted;
//! - `disconnects`: players whose connection ended (a player of the killed gateway who resumed at
//!   the other counts in `resumes`, not here);
//! - `digest_ok`: for a committed handoff, whether the target's world digest when it took over
//!   equals the source's at the freeze, as each reported (none when no handoff committed, or when
//!   a report is missing because its side, or the coordinator it went to, was killed or cut off);
//! - `serving_after_ms`: from the fault to the first update every player of region 1 received
//!   after it (none if one never received another).
//!
//! A crossing cell has the same deployment with region 1 on `h1` and its eastern neighbour,
//! region 2, on `h2`, and six players patrolling across their border (four from region 1, two from
//! region 2). The fault point is armed once every player is in play; the first region thread
//! that sends an avatar off (`emigrated`) or takes one in (`immigrated`) stops there. The fault
//! hits the region the avatar leaves (`source`) or the one it enters (`target`); the checks are
//! the same, for both regions and every player (no digest: nothing is handed off).
//!
//! A failover cell has region 1 on `h1` with a hot standby (on `h2` or `h3`) and four players,
//! region 2 on `h3` without one and two players. Once the standby holds 40 ticks more than when
//! it was first seen holding, region 1's owner is killed (SIGKILL); the coordinator promotes the
//! standby, whose region thread stops at `promoting` (it asked the authority for the region) or
//! `promoted` (the swap won). The lost owner's host is the source: `kill_source` kills the whole
//! host (its agent and the region servers it runs), `source_link_down_2s` cuts it off for 2 s;
//! the standby's host is the target. The checks are those of a handoff cell, without a digest.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_harness::fleet::{Fleet, FleetPlacement, FleetSpec, ServerCommandLine};
use baton_harness::players::{Movement, PlayerOutcome, PlayerPlan, Playing, patrol_player, unix_ms};
use baton_runtime::fault_point::{FAULT_POINT_VARIABLE, FaultPhase, FaultPoint};
use serde::Serialize;
use serde_json::{Value, json};

use crate::netns::{SiteSpec, Testbed};

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL to the source region server.
    KillSource,
    /// SIGKILL to the target region server.
    KillTarget,
    /// SIGKILL to the coordinator; it is started again (same address and data) a second later,
    /// as a supervisor would.
    KillCoordinator,
    /// SIGKILL to the players' gateway; they resume at the other.
    KillGateway,
    /// The source host's link down for two seconds.
    SourceLinkDown2s,
    /// The target host's link down until the region serves again elsewhere (then it comes back,
    /// to check that the cut-off host let go).
    TargetLinkDown,
    /// The target host's link down for two seconds (at a crossing: the host of the region the
    /// avatar entered, cut off while the avatar may turn back).
    TargetLinkDown2s,
}

impl Fault {
    /// Every fault, in the matrix's order.
    pub const ALL: [Fault; 7] = [
        Fault::KillSource,
        Fault::KillTarget,
        Fault::KillCoordinator,
        Fault::KillGateway,
        Fault::SourceLinkDown2s,
        Fault::TargetLinkDown,
        Fault::TargetLinkDown2s,
    ];

    /// Its name in the JSON and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillSource => "kill_source",
            Fault::KillTarget => "kill_target",
            Fault::KillCoordinator => "kill_coordinator",
            Fault::KillGateway => "kill_gateway",
            Fault::SourceLinkDown2s => "source_link_down_2s",
            Fault::TargetLinkDown => "target_link_down",
            Fault::TargetLinkDown2s => "target_link_down_2s",
        }
    }

    /// The host a fault cuts off for 2 s, of `hosts` (the source's and the target's); `None` for
    /// the other faults.
    #[must_use]
    pub fn cut_for_2s<'a>(self, hosts: (&'a str, &'a str)) -> Option<&'a str> {
        match self {
            Fault::SourceLinkDown2s => Some(hosts.0),
            Fault::TargetLinkDown2s => Some(hosts.1),
            _ => None,
        }
    }

    /// The fault named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|fault| fault.name() == name)
    }
}

/// One cell: a fault at a phase of an operation (a handoff, or a border crossing: the phase says
/// which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// Where in the handoff or the crossing.
    pub phase: FaultPhase,
    /// What goes wrong.
    pub fault: Fault,
}

impl Cell {
    /// Every cell: each fault at each phase of a handoff, then of a crossing.
    #[must_use]
    pub fn all() -> Vec<Cell> {
        FaultPhase::ALL
            .into_iter()
            .flat_map(|phase| Fault::ALL.into_iter().map(move |fault| Cell { phase, fault }))
            .collect()
    }

    /// Every cell of a handoff.
    #[must_use]
    pub fn handoffs() -> Vec<Cell> {
        Cell::all().into_iter().filter(|cell| cell.operation() == "handoff").collect()
    }

    /// The short form: each fault but the last once at a phase of a handoff, each at another
    /// phase; the gateway killed as an avatar leaves, and the host of the region an avatar enters
    /// cut off for 2 s as it arrives (the last fault); the standby killed while it is being
    /// promoted.
    #[must_use]
    pub fn quick() -> Vec<Cell> {
        Fault::ALL
            .into_iter()
            .zip(FaultPhase::HANDOFF)
            .map(|(fault, phase)| Cell { phase, fault })
            .chain([
                Cell { phase: FaultPhase::Emigrated, fault: Fault::KillGateway },
                Cell { phase: FaultPhase::Immigrated, fault: Fault::TargetLinkDown2s },
                Cell { phase: FaultPhase::Promoting, fault: Fault::KillTarget },
            ])
            .collect()
    }

    /// `handoff`, `crossing` or `failover`.
    #[must_use]
    pub fn operation(self) -> &'static str {
        self.phase.operation()
    }
}

/// What one cell saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CellReport {
    /// `handoff`, `crossing` or `failover`.
    pub operation: String,
    /// The phase the fault hit (`baton_runtime::fault_point` names).
    pub phase: String,
    /// The fault.
    pub fault: String,
    /// How the operation ended: `committed` or `aborted` (the migration's or the failover's final
    /// phase), or `crossed` (a crossing), with `+failover` when the coordinator then restored a
    /// region elsewhere (again); `not_reached` when the operation never entered the phase; `error: ...` when
    /// the cell could not run.
    pub outcome: String,
    /// One owner of the region, which the directory and the processes agree on.
    pub single_owner: bool,
    /// Inputs sent that were never applied, of every player.
    pub inputs_lost: u64,
    /// Inputs the coordinator counted lost on the failover records that followed the fault
    /// (acknowledged as held by a hot standby that was then lost with its owner).
    pub inputs_lost_counted: u64,
    /// Inputs applied more often than acknowledged, plus players whose avatar's input chain
    /// differs from the one they sent.
    pub inputs_duplicated: u64,
    /// Players whose connection ended.
    pub disconnects: u64,
    /// Players of the killed gateway who resumed at the other.
    pub resumes: u64,
    /// For a committed handoff: the target's digest when it took over equals the source's at the
    /// freeze.
    pub digest_ok: Option<bool>,
    /// The digest the source reported at its freeze, and the one the target reported when it
    /// took over.
    pub digests: Option<(String, String)>,
    /// From the fault to the first update every player of the region received after it.
    pub serving_after_ms: Option<u64>,
    /// The process that stopped at the phase (`source` or `target`).
    pub held: String,
    /// Why the migration aborted, if it did.
    pub reason: Option<String>,
    /// Wall time of the cell, milliseconds.
    pub cell_ms: u64,
}

impl CellReport {
    /// The matrix table's columns: operation, phase, fault, outcome, ok (every invariant held),
    /// single owner, lost, counted lost, duplicated, disconnects, resumes, digest, serving after.
    #[must_use]
    pub fn columns(&self) -> [String; 13] {
        [
            self.operation.clone(),
            self.phase.clone(),
            self.fault.clone(),
            self.outcome.replace('|', "/"),
            if self.held_up() { "yes" } else { "NO" }.to_owned(),
            self.single_owner.to_string(),
            self.inputs_lost.to_string(),
            self.inputs_lost_counted.to_string(),
            self.inputs_duplicated.to_string(),
            self.disconnects.to_string(),
            self.resumes.to_string(),
            self.digest_ok.map_or("-".to_owned(), |ok| ok.to_string()),
            self.serving_after_ms.map_or("-".to_owned(), |ms| format!("{ms} ms")),
        ]
    }

    /// Whether every invariant held in this cell: the players lost exactly the inputs counted lost,
    /// which only a failover cell may (a standby lost with its owner); the other cells have no
    /// standbys and lose nothing. A phase never reached fails too: every
    /// handoff of the matrix's region, every crossing and every failover that promotes a standby
    /// has each of its phases, so a cell that missed its phase tested nothing.
    #[must_use]
    pub fn held_up(&self) -> bool {
        !self.outcome.starts_with("error")
            && self.outcome != "not_reached"
            && self.single_owner
            && self.inputs_lost == self.inputs_lost_counted
            && (self.operation == "failover" || self.inputs_lost_counted == 0)
            && self.inputs_duplicated == 0
            && self.disconnects == 0
            && self.digest_ok != Some(false)
            && self.serving_after_ms.is_some()
    }
}

const MOVING: u64 = 1;
const BYSTANDER: u64 = 2;
const MOVERS: u64 = 4;
const BYSTANDERS: u64 = 2;
/// A crossing cell's regions: region 1 and its eastern neighbour (the grid is two wide).
const WEST: u64 = 1;
const EAST: u64 = 2;
/// A crossing cell's players patrolling east from `WEST`, and west from `EAST`.
const EASTBOUND: u64 = 4;
const WESTBOUND: u64 = 2;

/// Runs one cell on a fresh test bed; `Err` only when the test bed itself could not be made.
pub fn run(cell: Cell) -> anyhow::Result<CellReport> {
    let clock = Instant::now();
    let sites = [("co", 1), ("h1", 11), ("h2", 12), ("h3", 13), ("g0", 21), ("g1", 22), ("pl", 30)]
        .map(|(name, host_byte)| SiteSpec { name: name.into(), host_byte });
    let testbed = Testbed::create(&sites)?;
    let mut report = CellReport {
        operation: cell.operation().into(),
        phase: cell.phase.name().into(),
        fault: cell.fault.name().into(),
        ..CellReport::default()
    };
    // The cell runs on a thread in the players' namespace (everything it opens, and the threads
    // it starts, are on the test bed's network); the main thread stays where it is, so that
    // cleaning the namespaces never takes this process for one of theirs.
    let ran = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                Testbed::enter(&testbed.site("pl")?.netns)?;
                run_in(&testbed, cell, &mut report)
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the cell's thread panicked")))
    });
    if let Err(error) = ran {
        report.outcome = format!("error: {error:#}");
    }
    drop(testbed);
    report.cell_ms = clock.elapsed().as_millis() as u64;
    Ok(report)
}

fn run_in(testbed: &Testbed, cell: Cell, report: &mut CellReport) -> anyhow::Result<()> {
    let spec = FleetSpec {
        hosts: 3,
        pool: 1,
        capacity: 4,
        world_regions: 4,
        columns: 2,
        tick_rate: 20,
        checkpoint_every_s: 0.5,
        capacity_cores: Vec::new(),
        // Hot standbys only where the cell's operation is their failover: elsewhere the regions
        // fail over from checkpoints, as they did before standbys existed.
        coordinator_args: if cell.operation() == "failover" {
            vec!["--standby".into(), "on".into()]
        } else {
            Vec::new()
        },
    };
    let mut server = ServerCommandLine::sample(&spec)?;
    server.args.extend(["--dirty".into(), MOVING_DIRTY.into(), "--bulk-mbps".into(), BULK_MBPS.into()]);
    let point = std::env::temp_dir().join(format!("baton-fault-{}-{}", std::process::id(), unique_suffix()));
    // A handoff's phases come only with the migration the cell starts; crossings start as soon as
    // players patrol, so that point is armed (by file) once every player is in play.
    let fault_point = FaultPoint { phase: (!cell.phase.is_crossing()).then_some(cell.phase), path: point.clone() };
    let named = fault_point.phase.map_or("armed", FaultPhase::name);
    server.env.push((FAULT_POINT_VARIABLE.into(), format!("{named}:{}", point.display())));
    let placement = FleetPlacement {
        coordinator: testbed.site("co")?,
        gateways: vec![testbed.site("g0")?, testbed.site("g1")?],
        hosts: vec![testbed.site("h1")?, testbed.site("h2")?, testbed.site("h3")?],
    };
    let mut fleet = Fleet::start_placed(&spec, server, Some(placement))?;
    let outcome = match cell.operation() {
        "crossing" => run_crossing(testbed, &mut fleet, cell, &fault_point, report),
        "failover" => run_failover(testbed, &mut fleet, cell, &fault_point, report),
        _ => run_fleet(testbed, &mut fleet, cell, &fault_point, report),
    };
    for path in [point.clone(), fault_point.release_path(), fault_point.phase_path()] {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Churn entities of the region a handoff cell moves, the fraction of them that changes a tick
/// (`--dirty`), and the bulk cap of the cells' region servers (`--bulk-mbps`). 400 entities a
/// tick are 23 kB: over the 20 kB freeze budget the 10 MB/s cap gives (2 ms of it), so the first
/// round is never the final one and the rounds phase is always reached; and about half of the
/// four budgets a final round may take once the source measured a debug build's delivery rate on
/// the test bed (5.1 MB/s: budgets of 10 kB), so the handoff converges. With 4% (46 kB a tick)
/// and the default 50 MB/s cap (100 kB budgets), one tick was over the four measured budgets
/// whenever the rate fell under 5.75 MB/s, and the cell's handoff gave up ("did not converge")
/// before its fault; at 2% alone the first round sometimes fit the 100 kB budget and the source
/// froze without a round.
const MOVING_CHURN: usize = 20_000;
pub(crate) const MOVING_DIRTY: &str = "0.02";
pub(crate) const BULK_MBPS: &str = "10";

fn unique_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

fn run_fleet(
    testbed: &Testbed,
    fleet: &mut Fleet,
    cell: Cell,
    point: &FaultPoint,
    report: &mut CellReport,
) -> anyhow::Result<()> {
    let (_g1, g1_address) = ready(fleet)?;
    let moving = json!({"churn": MOVING_CHURN, "objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": MOVING, "host": "h1", "world": moving})))?;
    let small = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": BYSTANDER, "host": "h3", "world": small})))?;
    let playing = start_wandering(testbed, fleet, g1_address)?;
    let strike = strike(testbed, fleet, point, MOVING, ("h1", "h2"), cell.fault)?;
    finish_cell(fleet, playing, &strike, report, |player| player <= MOVERS)
}

/// Waits for the three hosts and their warm processes, then starts the second gateway (`g1`,
/// where players resume if `g0` dies): its process, kept while the cell runs, and its address.
fn ready(fleet: &Fleet) -> anyhow::Result<(baton_harness::cluster::GatewayProcess, std::net::SocketAddr)> {
    fleet.wait_hosts_ready(3, 1, Duration::from_secs(60))?;
    fleet.start_late_gateway()
}

/// Starts `MOVERS` players wandering in `MOVING` and `BYSTANDERS` in `BYSTANDER`, through `g0`,
/// resuming at `g1` (`g1_address`).
fn start_wandering(testbed: &Testbed, fleet: &Fleet, g1_address: std::net::SocketAddr) -> anyhow::Result<Playing> {
    let plans = (1..=MOVERS)
        .map(|player| (player, MOVING))
        .chain((1..=BYSTANDERS).map(|index| (100 + index, BYSTANDER)))
        .map(|(player, region)| {
            let plan = PlayerPlan {
                settle_for: Duration::from_secs(30),
                resume_at: vec![g1_address],
                ..PlayerPlan::new(player, region, Movement::Wander, Duration::from_secs(300))
            };
            (plan, fleet.token(player, region))
        })
        .collect();
    start_playing(testbed, fleet, plans)
}

/// A failover cell (see the module documentation).
fn run_failover(
    testbed: &Testbed,
    fleet: &mut Fleet,
    cell: Cell,
    point: &FaultPoint,
    report: &mut CellReport,
) -> anyhow::Result<()> {
    let (_g1, g1_address) = ready(fleet)?;
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    let body = json!({"region": MOVING, "host": "h1", "world": world, "standby": true});
    fleet.ok("POST", "/v1/regions", Some(body))?;
    let body = json!({"region": BYSTANDER, "host": "h3", "world": world, "standby": false});
    fleet.ok("POST", "/v1/regions", Some(body))?;
    let playing = start_wandering(testbed, fleet, g1_address)?;
    // The players' inputs are acknowledged as held by the standby for a while (40 ticks) before
    // the owner dies.
    let (standby_host, standby_process, first) = holding_standby(fleet, MOVING, 0, Duration::from_secs(60))?;
    holding_standby(fleet, MOVING, first + 40, Duration::from_secs(30))?;
    let strike = strike_failover(testbed, fleet, point, MOVING, cell.fault, (&standby_host, &standby_process))?;
    finish_cell(fleet, playing, &strike, report, |player| player <= MOVERS)
}

/// Waits until `region`'s hot standby holds tick `at_least` or later: `(host, process, tick)`.
fn holding_standby(
    fleet: &Fleet,
    region: u64,
    at_least: u64,
    within: Duration,
) -> anyhow::Result<(String, String, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let standbys = fleet.ok("GET", "/v1/standbys", None)?;
        let holding = standbys.as_array().into_iter().flatten().find_map(|standby| {
            let tick = standby["tick"].as_u64()?;
            (standby["region"] == region && standby["state"] == "holding" && tick >= at_least).then(|| {
                let name = |key: &str| standby[key].as_str().unwrap_or_default().to_owned();
                (name("host"), name("process"), tick)
            })
        });
        if let Some(holding) = holding {
            return Ok(holding);
        }
        if Instant::now() > deadline {
            bail!("region {region}'s standby held no tick from {at_least} on within {within:?}: {standbys}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the owner of `region` so that the coordinator promotes its standby (`standby`: host
/// and process); injects `fault` when the standby's region thread stops at `point`; heals what
/// the fault heals (not a host killed whole: `kill_source` kills the owner's host, which the
/// caller starts again if it wants it back); waits until the failover, and whatever failover it
/// led to, is over and one process serves the region. `not_reached` when no promotion reached the
/// phase, or another region's did first.
pub(crate) fn strike_failover(
    testbed: &Testbed,
    fleet: &mut Fleet,
    point: &FaultPoint,
    region: u64,
    fault: Fault,
    (standby_host, standby_process): (&str, &str),
) -> anyhow::Result<Strike> {
    let mut strike = Strike { regions: vec![region], ..Strike::default() };
    let (owner_process, owner_host) = owner_of(fleet, region)?;
    let standby_pid = process_pid(fleet, standby_process)?;
    let last_record = last_record_id(fleet)?;
    strike.records_after = last_record;
    kill(process_pid(fleet, &owner_process)?.context("the owner's pid")?)?;
    let Some(held) = wait_held(point, Duration::from_secs(60)) else {
        strike.outcome = "not_reached".into();
        return Ok(strike);
    };
    if held.region != region {
        // Another region's promotion (of an earlier fault) reached the phase first.
        std::fs::write(point.release_path(), b"").context("releasing the fault point")?;
        strike.outcome = "not_reached".into();
        strike.reason = Some(format!("region {}'s promotion reached {} first", held.region, held.phase));
        return Ok(strike);
    }
    strike.held = "target".into();
    strike.fault_at = Some(unix_ms());
    if fault == Fault::KillSource {
        // The lost owner's host dies whole: its agent and the region servers it still runs.
        let index = owner_host.trim_start_matches('h').parse().context("the owner's host's number")?;
        fleet.kill_host(index)?;
        std::fs::write(point.release_path(), b"").context("releasing the fault point")?;
    } else {
        inject(testbed, fleet, point, fault, (None, standby_pid), (&owner_host, standby_host))?;
    }
    let first = wait_record(fleet, region, last_record, Duration::from_secs(60))?;
    let record = wait_final(fleet, first, Duration::from_secs(90))?;
    strike.reason = record["reason"].as_str().map(str::to_owned);
    if matches!(fault, Fault::KillTarget | Fault::TargetLinkDown) {
        // The standby is lost too (dead, or cut off for good): the region is restored elsewhere
        // from a checkpoint, by this failover or the next.
        let moved_on = wait_owner_other_than(fleet, region, standby_process, Duration::from_secs(120));
        if fault == Fault::TargetLinkDown {
            testbed.set_link(standby_host, true)?;
            wait_host_back(fleet, standby_host)?;
        }
        moved_on.with_context(|| format!("region {region} after its standby {standby_process} was lost"))?;
    }
    wait_cut_host_back(fleet, fault, (&owner_host, standby_host))?;
    let settled = wait_settled(fleet, region, Duration::from_secs(90));
    let again = failovers_after(&records_of(fleet)?, &[region], Some(first)).next().is_some();
    strike.outcome =
        format!("{}{}", record["phase"].as_str().unwrap_or("unknown"), if again { "+failover" } else { "" });
    strike.single_owner = settled.is_ok() && wait_settled(fleet, region, Duration::from_secs(30)).is_ok();
    if let Err(error) = settled {
        strike.reason.get_or_insert_with(String::new).push_str(&format!(" (not settled: {error:#})"));
    }
    Ok(strike)
}

/// The fault point's file once a region thread stopped there.
fn wait_held(point: &FaultPoint, within: Duration) -> Option<Held> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(held) = held_at(&point.path) {
            return Some(held);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The id of the first failover of `region` recorded after record `last_record`.
fn wait_record(fleet: &Fleet, region: u64, last_record: Option<u64>, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let found = records_of(fleet).ok().and_then(|records| {
            failovers_after(&records, &[region], last_record).filter_map(|record| record["id"].as_u64()).min()
        });
        if let Some(id) = found {
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("no failover of region {region} was recorded in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `region` is settled on an owner other than `process`.
fn wait_owner_other_than(fleet: &Fleet, region: u64, process: &str, within: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        match settled_owner(fleet, region) {
            Ok(owner) if owner != process => return Ok(owner),
            Ok(owner) if Instant::now() > deadline => bail!("region {region} is still owned by {owner}"),
            Err(error) if Instant::now() > deadline => return Err(error),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts the cell's players on the players' site; returns once every one is in play.
fn start_playing(testbed: &Testbed, fleet: &Fleet, plans: Vec<(PlayerPlan, String)>) -> anyhow::Result<Playing> {
    let mut options = fleet.client_options();
    options.bind = std::net::SocketAddr::new(testbed.site("pl")?.ip, 0);
    let playing = Playing::start(&options, plans);
    if let Err(error) = playing.wait_in_play(Duration::from_secs(30)) {
        let why = playing.finish().err().map(|why| format!(": {why:#}")).unwrap_or_default();
        bail!("{error}{why}");
    }
    Ok(playing)
}

/// Records what `strike` did, plays on a while (so every player's inputs in flight land), stops
/// the players and counts what they saw; `counted` says whose wait for an update after the fault
/// is the region's `serving_after_ms`.
fn finish_cell(
    fleet: &Fleet,
    playing: Playing,
    strike: &Strike,
    report: &mut CellReport,
    counted: impl Fn(u64) -> bool,
) -> anyhow::Result<()> {
    report.outcome = strike.outcome.clone();
    let Some(fault_at) = strike.fault_at else {
        let outcomes = playing.finish()?;
        count_players(&outcomes, report);
        return Ok(());
    };
    report.held = strike.held.clone();
    report.reason = strike.reason.clone();
    report.digest_ok = strike.digest_ok;
    report.digests = strike.digests.clone();
    report.single_owner = strike.single_owner;
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = playing.finish()?;
    count_players(&outcomes, report);
    report.serving_after_ms = serving_after(&outcomes, fault_at, counted);
    // The clients' `Skip`s reach the coordinator's records a moment after the players stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        report.inputs_lost_counted = counted_lost(&records_of(fleet)?, &strike.regions, strike.records_after);
        if report.inputs_lost_counted >= report.inputs_lost || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// What the failover records of `regions` after record `after` counted as lost.
pub(crate) fn counted_lost(records: &[Value], regions: &[u64], after: Option<u64>) -> u64 {
    failovers_after(records, regions, after).filter_map(|record| record["failover"]["inputs_lost"].as_u64()).sum()
}

/// The failover records of `regions` after record `after` (all of them for `None`).
fn failovers_after<'a>(
    records: &'a [Value],
    regions: &'a [u64],
    after: Option<u64>,
) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().filter(move |record| {
        record["kind"] == "failover"
            && record["id"].as_u64() > after
            && regions.iter().any(|region| record["region"] == *region)
    })
}

/// A crossing cell: players patrol across the border of `WEST` (on `h1`) and `EAST` (on `h2`);
/// the fault hits at the first crossing after every player is in play.
fn run_crossing(
    testbed: &Testbed,
    fleet: &mut Fleet,
    cell: Cell,
    point: &FaultPoint,
    report: &mut CellReport,
) -> anyhow::Result<()> {
    let (_g1, g1_address) = ready(fleet)?;
    let world = json!({"objects": 40, "npcs": 4, "plants": 4});
    fleet.ok("POST", "/v1/regions", Some(json!({"region": WEST, "host": "h1", "world": world})))?;
    fleet.ok("POST", "/v1/regions", Some(json!({"region": EAST, "host": "h2", "world": world})))?;
    let patrols = (0..EASTBOUND)
        .map(|index| (patrol_player(true, index), WEST, 1.0))
        .chain((0..WESTBOUND).map(|index| (patrol_player(false, index), EAST, -1.0)));
    let plans = patrols
        .map(|(player, region, heading)| {
            let plan = PlayerPlan {
                settle_for: Duration::from_secs(30),
                resume_at: vec![g1_address],
                ..PlayerPlan::new(player, region, Movement::Patrol { heading }, Duration::from_secs(300))
            };
            (plan, fleet.token(player, region))
        })
        .collect();
    let playing = start_playing(testbed, fleet, plans)?;
    std::fs::write(point.phase_path(), format!("{}\n", cell.phase.name())).context("arming the fault point")?;
    let strike = strike_crossing(testbed, fleet, point, cell.fault, Some((WEST, EAST)), Duration::from_secs(60))?;
    finish_cell(fleet, playing, &strike, report, |_| true)
}

/// Injects `fault` when a region thread stops at the armed crossing point (the region an avatar
/// left, at `emigrated`; the one it entered, at `immigrated`) within `within`; heals what the
/// fault heals; waits until whatever failover it led to is over and one process serves each of
/// the two regions. The crossing's other region is the one the fault point's file names, or else
/// the other of `pair`.
pub(crate) fn strike_crossing(
    testbed: &Testbed,
    fleet: &mut Fleet,
    point: &FaultPoint,
    fault: Fault,
    pair: Option<(u64, u64)>,
    within: Duration,
) -> anyhow::Result<Strike> {
    let mut strike = Strike::default();
    let Some(held) = wait_held(point, within) else {
        strike.outcome = "not_reached".into();
        return Ok(strike);
    };
    let held_region = held.region;
    let other = held.peer.or_else(|| pair.map(|(one, two)| if held_region == one { two } else { one }));
    let Some(other) = other else {
        std::fs::write(point.release_path(), b"").context("releasing the fault point")?;
        bail!("region {held_region} stopped at {} without naming the crossing's other region", held.phase);
    };
    strike.regions = vec![held_region, other];
    let (source, target) = if held.phase == FaultPhase::Emigrated.name() {
        strike.held = "source".into();
        (held_region, other)
    } else {
        strike.held = "target".into();
        (other, held_region)
    };
    let (source_process, source_host) = owner_of(fleet, source)?;
    let (target_process, target_host) = owner_of(fleet, target)?;
    strike.hosts = (source_host.clone(), target_host.clone());
    let last_record = last_record_id(fleet)?;
    strike.records_after = last_record;
    strike.fault_at = Some(unix_ms());
    let pids = (process_pid(fleet, &source_process)?, process_pid(fleet, &target_process)?);
    inject(testbed, fleet, point, fault, pids, (&source_host, &target_host))?;
    if matches!(fault, Fault::KillSource | Fault::KillTarget) {
        // A killed owner's region fails over (its agent starts the process again, empty).
        let killed = if fault == Fault::KillSource { source } else { target };
        wait_until_failed_over(fleet, killed, last_record, Duration::from_secs(90))
            .with_context(|| format!("region {killed} after its owner was killed"))?;
    }
    if fault == Fault::TargetLinkDown {
        // The target's host is cut off for good: its region fails over; then the host comes
        // back, and whatever it thought it owned it must let go.
        let failed_over = wait_until_failed_over(fleet, target, last_record, Duration::from_secs(90));
        testbed.set_link(&target_host, true)?;
        failed_over.with_context(|| format!("region {target} after {target_host} was cut off"))?;
        wait_host_back(fleet, &target_host)?;
    }
    wait_cut_host_back(fleet, fault, (&source_host, &target_host))?;
    let settled: anyhow::Result<Vec<String>> =
        [source, target].iter().map(|region| wait_settled(fleet, *region, Duration::from_secs(90))).collect();
    let failed_over = failovers_after(&records_of(fleet)?, &[source, target], last_record).next().is_some();
    strike.outcome = format!("crossed{}", if failed_over { "+failover" } else { "" });
    strike.single_owner = settled.is_ok()
        && [source, target].iter().all(|region| wait_settled(fleet, *region, Duration::from_secs(30)).is_ok());
    if let Err(error) = settled {
        strike.reason = Some(format!("not settled: {error:#}"));
    }
    Ok(strike)
}

/// The process that owns `region` (the directory's word) and the host it runs on.
fn owner_of(fleet: &Fleet, region: u64) -> anyhow::Result<(String, String)> {
    let owner = wait_settled(fleet, region, Duration::from_secs(10))?;
    let hosts = fleet.ok("GET", "/v1/hosts", None)?;
    let host = hosts
        .as_array()
        .into_iter()
        .flatten()
        .find(|host| {
            host["processes"]
                .as_array()
                .is_some_and(|processes| processes.iter().any(|process| process["name"] == owner))
        })
        .and_then(|host| host["name"].as_str().map(str::to_owned))
        .with_context(|| format!("no host runs {owner}"))?;
    Ok((owner, host))
}

/// The id of the newest migration or failover record, if any.
fn last_record_id(fleet: &Fleet) -> anyhow::Result<Option<u64>> {
    Ok(records_of(fleet)?.iter().filter_map(|record| record["id"].as_u64()).max())
}

/// Waits until a failover of `region` recorded after record `last_record` is over.
fn wait_until_failed_over(
    fleet: &Fleet,
    region: u64,
    last_record: Option<u64>,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let over = records_of(fleet).is_ok_and(|records| {
            failovers_after(&records, &[region], last_record)
                .any(|record| matches!(record["phase"].as_str(), Some("committed" | "aborted")))
        });
        if over {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no failover of region {region} ended in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one fault during one migration did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Strike {
    /// When the fault was injected (Unix ms); none: the migration never entered the phase.
    pub(crate) fault_at: Option<u64>,
    /// `source` or `target`: who stopped at the fault point.
    pub(crate) held: String,
    /// As [`CellReport::outcome`].
    pub(crate) outcome: String,
    /// Why the migration aborted, and why the region did not settle, if so.
    pub(crate) reason: Option<String>,
    /// As [`CellReport::digest_ok`].
    pub(crate) digest_ok: Option<bool>,
    /// As [`CellReport::digests`].
    pub(crate) digests: Option<(String, String)>,
    /// As [`CellReport::single_owner`].
    pub(crate) single_owner: bool,
    /// The regions the operation involved: their failover records after `records_after` say
    /// what was counted lost.
    pub(crate) regions: Vec<u64>,
    /// The newest migration or failover record before the fault.
    pub(crate) records_after: Option<u64>,
    /// A crossing's source and target hosts, once it was held.
    pub(crate) hosts: (String, String),
}

/// Migrates `region` from `hosts.0` to `hosts.1` with `point` armed (by the caller) and injects
/// `fault` when a region thread stops at it; heals what a fault heals (the coordinator started
/// again, a link back up); waits until the migration and whatever failover it led to are over and
/// one process serves the region.
pub(crate) fn strike(
    testbed: &Testbed,
    fleet: &mut Fleet,
    point: &FaultPoint,
    region: u64,
    (from_host, to_host): (&str, &str),
    fault: Fault,
) -> anyhow::Result<Strike> {
    let mut strike = Strike { regions: vec![region], records_after: last_record_id(fleet)?, ..Strike::default() };
    let migration = fleet.ok("POST", "/v1/migrations", Some(json!({"region": region, "to_host": to_host})))?;
    let id = migration["id"].as_u64().context("the migration's id")?;
    // Wait for the fault point (or for the migration to end without reaching it).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polls = 0u64;
    let held_pid = loop {
        if let Some(held) = held_at(&point.path) {
            break Some(held.pid);
        }
        // The file every millisecond; the coordinator (sharing the machine with the handoff)
        // only every 100.
        polls += 1;
        if Instant::now() > deadline
            || (polls.is_multiple_of(100)
                && fleet.ok("GET", &format!("/v1/migrations/{id}"), None)?["phase"]
                    .as_str()
                    .is_some_and(|phase| matches!(phase, "committed" | "aborted")))
        {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let Some(held_pid) = held_pid else {
        strike.outcome = "not_reached".into();
        // Why the migration ended before the phase (a refused claim, say), for the report.
        strike.reason = fleet.ok("GET", &format!("/v1/migrations/{id}"), None)?["reason"].as_str().map(str::to_owned);
        return Ok(strike);
    };
    let record = fleet.ok("GET", &format!("/v1/migrations/{id}"), None)?;
    let source = process_pid(fleet, record["from_process"].as_str().unwrap_or_default())?;
    let target = process_pid(fleet, record["to_process"].as_str().unwrap_or_default())?;
    strike.held = if Some(held_pid) == source { "source" } else { "target" }.into();
    strike.fault_at = Some(unix_ms());
    inject(testbed, fleet, point, fault, (source, target), (from_host, to_host))?;
    // The migration ends, and so does whatever failover it led to; then one process serves the
    // region again.
    let record = wait_final(fleet, id, Duration::from_secs(90))?;
    strike.reason = record["reason"].as_str().map(str::to_owned);
    wait_cut_host_back(fleet, fault, (from_host, to_host))?;
    let settled = wait_settled(fleet, region, Duration::from_secs(90));
    let failed_over = failovers_after(&records_of(fleet)?, &[region], Some(id)).next().is_some();
    strike.outcome =
        format!("{}{}", record["phase"].as_str().unwrap_or("unknown"), if failed_over { "+failover" } else { "" });
    if record["phase"] == "committed" {
        let digest = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
        let (source, target) = (digest("source_digest"), digest("target_digest"));
        // A side killed or cut off may never have got its report out, and a coordinator killed
        // loses what was reported to it: then the digests cannot be compared. Any other missing
        // report is a failure.
        let lost_reports = fault == Fault::KillCoordinator;
        let source_silenced = lost_reports || matches!(fault, Fault::KillSource | Fault::SourceLinkDown2s);
        let target_silenced =
            lost_reports || matches!(fault, Fault::KillTarget | Fault::TargetLinkDown | Fault::TargetLinkDown2s);
        strike.digest_ok = match (source.is_empty(), target.is_empty()) {
            (false, false) => Some(source == target),
            (true, _) if source_silenced => None,
            (_, true) if target_silenced => None,
            _ => Some(false),
        };
        strike.digests = Some((source, target));
    }
    if fault == Fault::TargetLinkDown {
        // The cut-off host comes back: whatever it thought it owned, it must let go.
        testbed.set_link(to_host, true)?;
        wait_host_back(fleet, to_host)?;
    }
    strike.single_owner = settled.is_ok() && wait_settled(fleet, region, Duration::from_secs(30)).is_ok();
    if let Err(error) = settled {
        strike.reason.get_or_insert_with(String::new).push_str(&format!(" (not settled: {error:#})"));
    }
    Ok(strike)
}

/// Injects `fault` (`pids` and `hosts`: the source's and the target's), lets the thread held at
/// `point` go on, and heals what heals by itself: the coordinator is started again a second
/// later, a link cut for 2 s comes back. A target's link cut for good stays down (the caller
/// brings it back).
fn inject(
    testbed: &Testbed,
    fleet: &mut Fleet,
    point: &FaultPoint,
    fault: Fault,
    pids: (Option<u32>, Option<u32>),
    hosts: (&str, &str),
) -> anyhow::Result<()> {
    let mut heal: Option<(Instant, &str)> = None;
    match fault {
        Fault::KillSource => kill(pids.0.context("the source's pid")?)?,
        Fault::KillTarget => kill(pids.1.context("the target's pid")?)?,
        Fault::KillCoordinator => fleet.kill_coordinator(),
        Fault::KillGateway => fleet.gateway.kill(),
        Fault::SourceLinkDown2s | Fault::TargetLinkDown2s => {
            let host = fault.cut_for_2s(hosts).context("a 2 s cut names its host")?;
            testbed.set_link(host, false)?;
            heal = Some((Instant::now() + Duration::from_secs(2), host));
        }
        Fault::TargetLinkDown => testbed.set_link(hosts.1, false)?,
    }
    std::fs::write(point.release_path(), b"").context("releasing the fault point")?;
    if fault == Fault::KillCoordinator {
        std::thread::sleep(Duration::from_secs(1));
        fleet.restart_coordinator()?;
    }
    if let Some((at, host)) = heal {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        testbed.set_link(host, true)?;
    }
    Ok(())
}

/// After a link cut for 2 s (`hosts`: the source's and the target's): waits until every host is
/// connected again, the cut-off one included, so that the owner checks that follow see what it
/// claims once it is back (a host cut off for longer than the coordinator waits is declared dead
/// and its regions fail over; it must let go of them when it returns).
fn wait_cut_host_back(fleet: &Fleet, fault: Fault, hosts: (&str, &str)) -> anyhow::Result<()> {
    match fault.cut_for_2s(hosts) {
        Some(host) => wait_host_back(fleet, host),
        None => Ok(()),
    }
}

/// Waits until every host is connected again, `host` (whose link came back up) included.
fn wait_host_back(fleet: &Fleet, host: &str) -> anyhow::Result<()> {
    let count = fleet.ok("GET", "/v1/hosts", None)?.as_array().map_or(0, Vec::len);
    fleet
        .wait_hosts_ready(count, 0, Duration::from_secs(60))
        .with_context(|| format!("{host} back after its link came up"))?;
    Ok(())
}

/// What the fault point's file says once a region thread stopped there.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    /// The process of the thread.
    pid: u32,
    /// Its region.
    region: u64,
    /// The phase it stopped at.
    phase: String,
    /// At a crossing, the other region, when the thread knew it.
    peer: Option<u64>,
}

/// The fault point's file, once a region thread stopped there (a whole line written).
fn held_at(path: &Path) -> Option<Held> {
    parse_held(&std::fs::read_to_string(path).ok()?)
}

fn parse_held(text: &str) -> Option<Held> {
    if !text.ends_with('\n') {
        return None;
    }
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let region = words.next()?.parse().ok()?;
    let phase = words.next()?.to_owned();
    let peer = words.next().map(str::parse).transpose().ok()?;
    Some(Held { pid, region, phase, peer })
}

fn kill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    Ok(())
}

/// The pid of region-server process `name`, as its host reports.
fn process_pid(fleet: &Fleet, name: &str) -> anyhow::Result<Option<u32>> {
    let hosts = fleet.ok("GET", "/v1/hosts", None)?;
    Ok(hosts
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
        .find(|process| process["name"] == name)
        .and_then(|process| process["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok()))
}

pub(crate) fn records_of(fleet: &Fleet) -> anyhow::Result<Vec<Value>> {
    Ok(fleet.ok("GET", "/v1/migrations", None)?.as_array().cloned().unwrap_or_default())
}

/// Waits until migration `id` is over; returns its record. The coordinator may be down for a
/// moment (a cell that killed it): its API answering again is part of the wait.
fn wait_final(fleet: &Fleet, id: u64, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(record) = fleet.ok("GET", &format!("/v1/migrations/{id}"), None)
            && matches!(record["phase"].as_str(), Some("committed" | "aborted"))
        {
            return Ok(record);
        }
        if Instant::now() > deadline {
            bail!("migration {id} did not end in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no migration or failover of the region is running, the directory names its owner
/// and exactly that process (and no other) reports serving it.
pub(crate) fn wait_settled(fleet: &Fleet, region: u64, within: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let seen = settled_owner(fleet, region);
        match seen {
            Ok(owner) => return Ok(owner),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn settled_owner(fleet: &Fleet, region: u64) -> anyhow::Result<String> {
    let running = records_of(fleet)?
        .into_iter()
        .filter(|record| record["region"] == region)
        .any(|record| !matches!(record["phase"].as_str(), Some("committed" | "aborted")));
    if running {
        bail!("a migration or failover of region {region} is running");
    }
    let regions = fleet.ok("GET", "/v1/regions", None)?;
    let owner = regions
        .as_array()
        .into_iter()
        .flatten()
        .find(|view| view["region"] == region)
        .and_then(|view| view["owner"].as_str().map(str::to_owned))
        .context("no owner in the directory")?;
    let hosts = fleet.ok("GET", "/v1/hosts", None)?;
    let serving: Vec<String> = hosts
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|host| host["processes"].as_array().cloned().unwrap_or_default())
        .filter(|process| process["regions"].as_array().is_some_and(|regions| regions.contains(&json!(region))))
        .filter_map(|process| process["name"].as_str().map(str::to_owned))
        .collect();
    if serving != [owner.clone()] {
        bail!("the directory names {owner}, processes serving region {region}: {serving:?}");
    }
    Ok(owner)
}

pub(crate) fn count_players(outcomes: &[PlayerOutcome], report: &mut CellReport) {
    for outcome in outcomes {
        report.inputs_lost += outcome.sent.saturating_sub(outcome.acked.saturating_sub(outcome.acked_before));
        // Acknowledged but never applied to the avatar (skipped past at the region): lost too.
        if outcome.acked_before == 0 {
            report.inputs_lost += outcome.acked.saturating_sub(outcome.applied);
        }
        report.inputs_duplicated += outcome.applied.saturating_sub(outcome.acked);
        // An avatar that skipped inputs (lost, and counted above) has a chain that differs from
        // the player's by design; only one that applied every input it acknowledged is checked.
        if !outcome.chain_ok && outcome.applied == outcome.acked {
            report.inputs_duplicated += 1;
        }
        report.disconnects += outcome.disconnects;
        report.resumes += outcome.resumes;
    }
}

/// From `fault_at` (Unix ms) to the first update after it, for the player (of those `counted`)
/// who waited longest; none if one of them never got another.
fn serving_after(outcomes: &[PlayerOutcome], fault_at: u64, counted: impl Fn(u64) -> bool) -> Option<u64> {
    outcomes
        .iter()
        .filter(|outcome| counted(outcome.player))
        .map(|outcome| outcome.gap_ends_unix_ms.iter().find(|at| **at >= fault_at).map(|at| at - fault_at))
        .try_fold(0, |longest, waited| waited.map(|waited| longest.max(waited)))
}

/// Writes the matrix as a Markdown table (docs/fault-matrix.md), from its JSON.
pub fn markdown(reports: &[CellReport], command: &str) -> String {
    let mut text = String::from(
        "# Fault matrix\n\nGenerated by `baton-testbed matrix` from `target/fault-matrix.json`; do not edit by hand.\n\n",
    );
    text.push_str(&format!("Command: `{command}`\n\n"));
    text.push_str(
        "One cell per fault at each phase of a handoff, of a border crossing and of a failover that promotes a hot standby \
         across the test bed (docs/testing.md says how a cell runs and what each column means). `ok` is every invariant held \
         (`NO`: one broke); `counted` is what the coordinator counted lost on its failover records (inputs a standby \
         acknowledged, lost with its owner): a failover cell holds when the players lost exactly that, the others when they \
         lost nothing.\n\n",
    );
    let held = reports.iter().filter(|report| report.held_up()).count();
    text.push_str(&format!("{held} of {} cells held every invariant.\n\n", reports.len()));
    text.push_str(
        "| operation | phase | fault | outcome | ok | single owner | lost | counted | duplicated | disconnects | resumes | digest | serving after |\n",
    );
    text.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for report in reports {
        text.push_str(&format!("| {} |\n", report.columns().join(" | ")));
    }
    text
}

/// Where the matrix's JSON goes by default.
#[must_use]
pub fn default_json() -> PathBuf {
    PathBuf::from("target/fault-matrix.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_matrix_has_each_fault_at_each_phase_and_the_quick_one_each_fault_once() {
        let all = Cell::all();
        assert_eq!(all.len(), FaultPhase::ALL.len() * Fault::ALL.len());
        for phase in FaultPhase::ALL {
            for fault in Fault::ALL {
                assert!(all.contains(&Cell { phase, fault }));
            }
        }
        assert_eq!(Cell::handoffs().len(), FaultPhase::HANDOFF.len() * Fault::ALL.len());
        assert!(Cell::handoffs().iter().all(|cell| cell.operation() == "handoff"));
        let quick = Cell::quick();
        let of =
            |operation: &str| quick.iter().filter(|cell| cell.operation() == operation).copied().collect::<Vec<_>>();
        let (handoffs, crossings, failovers) = (of("handoff"), of("crossing"), of("failover"));
        assert_eq!(handoffs.len() + crossings.len() + failovers.len(), quick.len());
        assert_eq!(failovers, [Cell { phase: FaultPhase::Promoting, fault: Fault::KillTarget }]);
        // A handoff has six phases: the last fault hits a crossing instead.
        assert_eq!(handoffs.iter().map(|cell| cell.fault).collect::<Vec<_>>(), Fault::ALL[..FaultPhase::HANDOFF.len()]);
        assert!(crossings.contains(&Cell { phase: FaultPhase::Immigrated, fault: Fault::TargetLinkDown2s }));
        assert!(
            Fault::ALL.iter().all(|fault| quick.iter().any(|cell| cell.fault == *fault)),
            "each fault at least once"
        );
        let cut: Vec<Option<&str>> = Fault::ALL.iter().map(|fault| fault.cut_for_2s(("h1", "h2"))).collect();
        assert_eq!(cut, [None, None, None, None, Some("h1"), None, Some("h2")], "only the 2 s cuts, each its host");
        let phases: std::collections::BTreeSet<&str> = handoffs.iter().map(|cell| cell.phase.name()).collect();
        assert_eq!(phases.len(), handoffs.len(), "each at another phase");
        assert_eq!(crossings.len(), FaultPhase::CROSSING.len(), "each phase of a crossing once");
        assert!(crossings.iter().all(|cell| cell.phase.is_crossing()));
        assert_eq!(
            Cell::all().iter().filter(|cell| cell.operation() == "failover").count(),
            FaultPhase::FAILOVER.len() * Fault::ALL.len()
        );
        for fault in Fault::ALL {
            assert_eq!(Fault::parse(fault.name()), Some(fault));
        }
    }

    #[test]
    fn the_fault_point_s_file_names_the_thread_and_at_a_crossing_the_other_region() {
        let held = |pid, region, phase: &str, peer| Held { pid, region, phase: phase.into(), peer };
        assert_eq!(parse_held("12 3 rounds\n"), Some(held(12, 3, "rounds", None)));
        assert_eq!(parse_held("12 3 emigrated 4\n"), Some(held(12, 3, "emigrated", Some(4))));
        assert_eq!(parse_held("12 3 emigrated 4"), None, "a line still being written");
        assert_eq!(parse_held("12 3 emigrated x\n"), None);
        assert_eq!(parse_held("12 3\n"), None);
    }

    #[test]
    fn a_cell_holds_up_only_when_every_invariant_held() {
        let good = CellReport {
            outcome: "committed".into(),
            single_owner: true,
            serving_after_ms: Some(40),
            digest_ok: Some(true),
            ..CellReport::default()
        };
        assert!(good.held_up());
        let broken = [
            CellReport { outcome: "not_reached".into(), ..good.clone() },
            CellReport { outcome: "error: no test bed".into(), ..good.clone() },
            CellReport { single_owner: false, ..good.clone() },
            CellReport { inputs_lost: 1, ..good.clone() },
            CellReport { inputs_lost: 3, inputs_lost_counted: 2, ..good.clone() },
            CellReport { inputs_lost: 2, inputs_lost_counted: 3, ..good.clone() },
            CellReport { inputs_duplicated: 1, ..good.clone() },
            CellReport { disconnects: 1, ..good.clone() },
            CellReport { digest_ok: Some(false), ..good.clone() },
            CellReport { serving_after_ms: None, ..good.clone() },
        ];
        for report in broken {
            assert!(!report.held_up(), "{report:?}");
        }
        // A loss the coordinator counted (a standby lost with its owner) is the one the design
        // allows, in a failover's cell; the other cells have no standby to lose.
        let counted = CellReport { inputs_lost: 7, inputs_lost_counted: 7, ..good };
        assert!(!counted.held_up());
        assert!(CellReport { operation: "failover".into(), ..counted }.held_up());
    }

    #[test]
    fn the_loss_counted_is_that_of_the_cells_regions_failovers_after_the_fault() {
        let record = |id: u64, kind: &str, region: u64, lost: u64| json!({"id": id, "kind": kind, "region": region, "failover": {"inputs_lost": lost}});
        let records = [
            record(1, "failover", 1, 100),
            record(2, "migration", 1, 0),
            record(3, "failover", 1, 5),
            record(4, "failover", 2, 7),
            record(5, "failover", 3, 11),
        ];
        assert_eq!(counted_lost(&records, &[1], Some(2)), 5, "before the fault, or another region: not counted");
        assert_eq!(counted_lost(&records, &[1, 2], Some(2)), 12);
        assert_eq!(counted_lost(&records, &[1], None), 105);
    }

    #[test]
    fn serving_again_is_the_longest_wait_of_the_moving_regions_players() {
        let player = |player, ends: &[u64]| PlayerOutcome {
            player,
            gap_ends_unix_ms: ends.to_vec(),
            ..PlayerOutcome::default()
        };
        let outcomes = [player(1, &[900, 1_050, 1_100]), player(2, &[990, 1_300]), player(101, &[5_000])];
        let movers = |player| player <= MOVERS;
        assert_eq!(serving_after(&outcomes, 1_000, movers), Some(300), "a bystander's wait does not count");
        assert_eq!(serving_after(&outcomes, 1_000, |_| true), Some(4_000));
        let silent = [player(1, &[1_050]), player(2, &[990])];
        assert_eq!(serving_after(&silent, 1_000, movers), None);
    }

    #[test]
    fn players_count_what_was_lost_applied_twice_or_out_of_order() {
        let mut report = CellReport::default();
        let outcomes = [
            PlayerOutcome { sent: 10, acked: 10, applied: 10, chain_ok: true, ..PlayerOutcome::default() },
            PlayerOutcome {
                sent: 10,
                acked: 8,
                applied: 8,
                chain_ok: true,
                disconnects: 1,
                ..PlayerOutcome::default()
            },
            PlayerOutcome { sent: 10, acked: 10, applied: 11, chain_ok: false, resumes: 1, ..PlayerOutcome::default() },
            PlayerOutcome { sent: 10, acked: 10, applied: 10, chain_ok: false, ..PlayerOutcome::default() },
            PlayerOutcome { sent: 10, acked: 10, applied: 7, chain_ok: false, ..PlayerOutcome::default() },
        ];
        count_players(&outcomes, &mut report);
        assert_eq!(report.inputs_lost, 2 + 3, "two never acknowledged, three acknowledged but never applied");
        assert_eq!(report.inputs_duplicated, 2, "one applied twice, one chain out of order (the other skipped)");
        assert_eq!(report.disconnects, 1);
        assert_eq!(report.resumes, 1);
    }
}
