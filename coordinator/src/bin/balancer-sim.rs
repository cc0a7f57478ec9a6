//! `balancer-sim`: the balancer's policy (the coordinator's own code) over a simulated fleet, next
//! to the two placements it is meant to beat.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton_coordinator::balancer::{Balancer, HostState, Mode, RegionState, Settings, Snapshot, Step};
use clap::Parser;
use serde::Serialize;

/// Run the coordinator's balancer over a synthetic fleet for simulated hours and compare it, on the
/// same load trace, with static placement sized for the peak and with packed placement at creation
/// without live moves (Agones-style). Prints JSON on standard output and progress on standard error.
///
/// The model: hosts of 8 cores/32 GiB and (a third of them) 16 cores/64 GiB. Each region has a
/// peak player count (most small, a few large) following a day curve in one of two time zones (3 in
/// 4 regions in the first, the rest 8 hours later): players(t) = peak × (0.1 + 0.9 × sin²) over the
/// waking hours, plus sudden crowds (on average one per region every two days, ×3 players for 30 to
/// 90 minutes). A region costs 0.05 + 0.01 cores per player and 64 MiB + 2 KiB per entity (2,000 +
/// 40 per player). A move takes 1 s plus its state at 100 MB/s; until it lands the region loads its
/// source. A host taken back into use is billed from that moment and takes regions after
/// --boot-s. Overload: a region-second on a host whose load is above its capacity (its ticks run
/// late).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Hosts available.
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Regions.
    #[arg(long, default_value_t = 2000)]
    regions: usize,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Seconds per simulation step (one balancer round each).
    #[arg(long, default_value_t = 30)]
    step_s: u64,
    /// Seconds before a host taken back into use can take regions.
    #[arg(long, default_value_t = 120)]
    boot_s: u64,
    /// Seed of the trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;
/// Bytes a move sends per second.
const MOVE_BYTES_PER_S: f64 = 100e6;
/// Bytes of state per entity (the balancer's cost model uses the same figure).
const BYTES_PER_ENTITY: f64 = 2048.0;

#[derive(Clone, Debug)]
struct Host {
    cores: f64,
    memory: f64,
}

#[derive(Clone, Debug)]
struct Region {
    peak_players: f64,
    /// Hours added to the clock for its time zone.
    zone_h: f64,
    /// Crowds: (start s, end s).
    crowds: Vec<(f64, f64)>,
}

impl Region {
    fn players(&self, at_s: f64) -> f64 {
        let hour = (at_s / 3600.0 + self.zone_h).rem_euclid(24.0);
        // Awake 7:00-24:00, a peak at 15:30; a floor of 10% at night.
        let day =
            if (7.0..24.0).contains(&hour) { ((hour - 7.0) / 17.0 * std::f64::consts::PI).sin().powi(2) } else { 0.0 };
        let crowd = if self.crowds.iter().any(|(start, end)| (*start..*end).contains(&at_s)) { 3.0 } else { 1.0 };
        self.peak_players * (0.1 + 0.9 * day) * crowd
    }

    fn cores(&self, at_s: f64) -> f64 {
        (0.05 + 0.01 * self.players(at_s)).min(4.0)
    }

    fn entities(&self, at_s: f64) -> u64 {
        (2000.0 + 40.0 * self.players(at_s)) as u64
    }

    fn memory(&self, at_s: f64) -> f64 {
        64.0 * MIB + BYTES_PER_ENTITY * self.entities(at_s) as f64
    }
}

/// The fleet and the trace.
struct Model {
    hosts: Vec<Host>,
    regions: Vec<Region>,
    seconds: f64,
    step_s: u64,
    boot_s: u64,
}

impl Model {
    fn new(cli: &Cli) -> Model {
        let mut random = fastrand::Rng::with_seed(cli.seed);
        let hosts = (0..cli.hosts)
            .map(|index| {
                if index % 3 == 2 {
                    Host { cores: 16.0, memory: 64.0 * GIB }
                } else {
                    Host { cores: 8.0, memory: 32.0 * GIB }
                }
            })
            .collect();
        let seconds = cli.hours * 3600.0;
        let regions = (0..cli.regions)
            .map(|_| {
                // Most regions are small; one in ten is busy; one in a hundred is a city.
                let peak_players = match random.u32(0..100) {
                    0 => random.f64() * 150.0 + 150.0,
                    1..=10 => random.f64() * 60.0 + 40.0,
                    _ => random.f64() * 30.0 + 2.0,
                };
                let zone_h = if random.u32(0..4) < 3 { 0.0 } else { 8.0 };
                let mut crowds = Vec::new();
                let mut at = 0.0;
                loop {
                    // Exponential gaps, a mean of two days.
                    at += -(1.0 - random.f64()).ln() * 48.0 * 3600.0;
                    if at >= seconds {
                        break;
                    }
                    crowds.push((at, at + 1800.0 + random.f64() * 3600.0));
                }
                Region { peak_players, zone_h, crowds }
            })
            .collect();
        Model { hosts, regions, seconds, step_s: cli.step_s, boot_s: cli.boot_s }
    }

    fn steps(&self) -> u64 {
        (self.seconds / self.step_s as f64).ceil() as u64
    }

    /// Each region's peak cores over the trace (what static placement is sized for).
    fn peaks(&self) -> Vec<f64> {
        let mut peaks = vec![0.0f64; self.regions.len()];
        for step in 0..self.steps() {
            let at = (step * self.step_s) as f64;
            for (peak, region) in peaks.iter_mut().zip(&self.regions) {
                *peak = peak.max(region.cores(at));
            }
        }
        peaks
    }
}

/// A policy's figures.
#[derive(Clone, Debug, Default, Serialize)]
struct Figures {
    host_hours: f64,
    overload_pct: f64,
    moves_per_region_hour: f64,
    migration_gb: f64,
    most_hosts_in_use: usize,
    fewest_hosts_in_use: usize,
}

/// First-fit decreasing of `sizes` onto the hosts in order, each to at most `share` of its cores.
fn first_fit(model: &Model, sizes: &[f64], share: f64) -> Result<Vec<usize>, String> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].total_cmp(&sizes[a]));
    let mut used = vec![0.0f64; model.hosts.len()];
    let mut placement = vec![0usize; sizes.len()];
    for region in order {
        let host =
            (0..model.hosts.len())
                .find(|&host| used[host] + sizes[region] <= share * model.hosts[host].cores)
                .ok_or_else(|| format!("the fleet's {} hosts cannot hold the regions at {share}", model.hosts.len()))?;
        used[host] += sizes[region];
        placement[region] = host;
    }
    Ok(placement)
}

/// Runs a placement that never moves anything.
fn fixed(model: &Model, placement: &[usize]) -> Figures {
    let in_use: BTreeSet<usize> = placement.iter().copied().collect();
    let mut overloaded = 0.0;
    for step in 0..model.steps() {
        let at = (step * model.step_s) as f64;
        let mut load = vec![0.0f64; model.hosts.len()];
        for (region, host) in model.regions.iter().zip(placement) {
            load[*host] += region.cores(at);
        }
        overloaded += placement.iter().filter(|host| load[**host] > model.hosts[**host].cores).count() as f64
            * model.step_s as f64;
    }
    Figures {
        host_hours: in_use.len() as f64 * model.seconds / 3600.0,
        overload_pct: 100.0 * overloaded / (model.regions.len() as f64 * model.seconds),
        moves_per_region_hour: 0.0,
        migration_gb: 0.0,
        most_hosts_in_use: in_use.len(),
        fewest_hosts_in_use: in_use.len(),
    }
}

/// A move in flight: (region, target host, lands at step).
type InFlight = (usize, usize, u64);

/// Runs the balancer from `placement` (hosts without a region start free).
fn balanced(model: &Model, placement: &[usize], progress: bool) -> Result<Figures, String> {
    let settings =
        Settings { bytes_per_entity: BYTES_PER_ENTITY, move_bytes_per_core_s: MOVE_BYTES_PER_S, ..Settings::default() };
    let mut balancer = Balancer::new(Mode::On, settings)?;
    let mut placement = placement.to_vec();
    let mut free: Vec<bool> = (0..model.hosts.len()).map(|host| !placement.contains(&host)).collect();
    // Hosts taken back: available from this step.
    let mut booting: Vec<Option<u64>> = vec![None; model.hosts.len()];
    let mut flying: Vec<InFlight> = Vec::new();
    let start = Instant::now();
    let mut figures = Figures { fewest_hosts_in_use: usize::MAX, ..Figures::default() };
    let (mut overloaded, mut moves, mut bytes) = (0.0, 0u64, 0.0);
    let steps = model.steps();
    for step in 0..steps {
        let at = (step * model.step_s) as f64;
        for (region, target, lands) in std::mem::take(&mut flying) {
            if lands <= step {
                placement[region] = target;
            } else {
                flying.push((region, target, lands));
            }
        }
        let mut load = vec![0.0f64; model.hosts.len()];
        let mut memory = vec![0.0f64; model.hosts.len()];
        for (index, region) in model.regions.iter().enumerate() {
            load[placement[index]] += region.cores(at);
            memory[placement[index]] += region.memory(at);
        }
        overloaded += placement.iter().filter(|host| load[**host] > model.hosts[**host].cores).count() as f64
            * model.step_s as f64;
        let in_use = free.iter().filter(|free| !**free).count();
        figures.host_hours += in_use as f64 * model.step_s as f64 / 3600.0;
        figures.most_hosts_in_use = figures.most_hosts_in_use.max(in_use);
        figures.fewest_hosts_in_use = figures.fewest_hosts_in_use.min(in_use);

        let mut hosts: Vec<HostState> = model
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| HostState {
                name: format!("h{index:03}"),
                capacity_cores: host.cores,
                capacity_memory: host.memory as u64,
                used_cores: load[index],
                used_memory: memory[index] as u64,
                // A freed host is switched off; one taken back takes regions once it has booted.
                available: !free[index] && booting[index].is_none_or(|ready| ready <= step),
                draining: false,
                free: free[index],
                regions: Vec::new(),
                migrations: 0,
            })
            .collect();
        for (index, region) in model.regions.iter().enumerate() {
            let host = placement[index];
            hosts[host].regions.push(RegionState {
                region: index as u64,
                cores: region.cores(at),
                late: load[host] > model.hosts[host].cores,
                players: region.players(at) as u64,
                entities: region.entities(at),
                standby: None,
            });
        }
        for (region, target, _) in &flying {
            hosts[placement[*region]].migrations += 1;
            hosts[*target].migrations += 1;
        }
        let snapshot = Snapshot {
            hosts,
            moving: flying.iter().map(|(region, target, _)| (*region as u64, format!("h{target:03}"))).collect(),
            per_host_limit: 2,
            in_flight: flying.len(),
        };
        let now = start + Duration::from_secs(step * model.step_s);
        let round = balancer.round(&snapshot, now);
        for executed in round.execute {
            match executed {
                Step::Move(decision) => {
                    let region = decision.region as usize;
                    let target = host_index(&decision.to)?;
                    let state = model.regions[region].entities(at) as f64 * BYTES_PER_ENTITY;
                    let seconds = 1.0 + state / MOVE_BYTES_PER_S;
                    flying.push((region, target, step + (seconds / model.step_s as f64).ceil() as u64));
                    moves += 1;
                    bytes += state;
                    // The policy hears back when the move lands (they do not abort here).
                    balancer.handle_outcome(decision.region, true, now);
                }
                Step::Free { host, .. } => {
                    let index = host_index(&host)?;
                    if placement.contains(&index) || flying.iter().any(|(_, target, _)| *target == index) {
                        return Err(format!("the policy freed {host}, which still has regions"));
                    }
                    free[index] = true;
                }
                Step::Use { host, .. } => {
                    let index = host_index(&host)?;
                    free[index] = false;
                    booting[index] = Some(step + model.boot_s.div_ceil(model.step_s));
                }
            }
        }
        if progress && step % (steps / 24).max(1) == 0 {
            eprintln!(
                "baton: hour {:>5.1} of {:.0}: {in_use} hosts in use, {moves} moves so far",
                at / 3600.0,
                model.seconds / 3600.0
            );
        }
    }
    let region_hours = model.regions.len() as f64 * model.seconds / 3600.0;
    figures.overload_pct = 100.0 * overloaded / (model.regions.len() as f64 * model.seconds);
    figures.moves_per_region_hour = moves as f64 / region_hours;
    figures.migration_gb = bytes / 1e9;
    Ok(figures)
}

fn host_index(name: &str) -> Result<usize, String> {
    name.strip_prefix('h').and_then(|index| index.parse().ok()).ok_or_else(|| format!("no host {name}"))
}

#[derive(Serialize)]
struct Output {
    hosts: usize,
    regions: usize,
    hours: f64,
    step_s: u64,
    seed: u64,
    policies: Policies,
    goal: Goal,
}

#[derive(Serialize)]
struct Policies {
    #[serde(rename = "static")]
    fixed: Figures,
    packed: Figures,
    baton: Figures,
}

#[derive(Serialize)]
struct Goal {
    host_hours_saved_vs_static_pct: f64,
    met: bool,
}

fn simulate(cli: &Cli, progress: bool) -> Result<Output, String> {
    let model = Model::new(cli);
    // Static: every region placed for its own peak, hosts at most 80% full.
    let peaks = model.peaks();
    let sized_for_peak = first_fit(&model, &peaks, Settings::default().high)?;
    let fixed_figures = fixed(&model, &sized_for_peak);
    // Packed at creation (the start of the trace, at night in the first time zone), never moved.
    let now: Vec<f64> = model.regions.iter().map(|region| region.cores(0.0)).collect();
    let packed_placement = first_fit(&model, &now, Settings::default().high)?;
    let packed = fixed(&model, &packed_placement);
    // Baton: from the static placement, the balancer packs and spreads as the load changes.
    let baton = balanced(&model, &sized_for_peak, progress)?;
    let saved = 100.0 * (1.0 - baton.host_hours / fixed_figures.host_hours);
    let met = saved >= 40.0 && baton.overload_pct <= 0.1 && baton.moves_per_region_hour <= 2.0;
    Ok(Output {
        hosts: cli.hosts,
        regions: cli.regions,
        hours: cli.hours,
        step_s: cli.step_s,
        seed: cli.seed,
        policies: Policies { fixed: fixed_figures, packed, baton },
        goal: Goal { host_hours_saved_vs_static_pct: saved, met },
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.hosts == 0 || cli.regions == 0 || cli.step_s == 0 || !(cli.hours.is_finite() && cli.hours > 0.0) {
        eprintln!("balancer-sim: --hosts, --regions, --step-s and --hours must be above 0");
        return ExitCode::from(2);
    }
    match simulate(&cli, true) {
        Ok(output) => {
            println!("{}", serde_json::to_string_pretty(&output).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("balancer-sim: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_small_fleet_saves_hosts_without_overload_or_churn() {
        let cli = Cli { hosts: 30, regions: 200, hours: 24.0, step_s: 60, boot_s: 120, seed: 7 };
        let output = simulate(&cli, false).unwrap();
        let (fixed, packed, baton) = (&output.policies.fixed, &output.policies.packed, &output.policies.baton);
        // Packing at night without moves overloads hosts by day; static never frees one.
        assert!(packed.overload_pct > baton.overload_pct, "{:?} vs {:?}", packed, baton);
        assert!(baton.host_hours < fixed.host_hours, "{:?} vs {:?}", baton, fixed);
        assert!(baton.moves_per_region_hour <= 2.0, "{baton:?}");
        assert!(baton.fewest_hosts_in_use < baton.most_hosts_in_use, "hosts came and went: {baton:?}");
    }
}
