//! Automatic balancing, as a policy with no I/O: the hosts' and regions' load and the time go in;
//! planned moves (with their reasons and predicted effect), hosts to free and hosts to take back
//! into use come out. [`crate::balancing`] drives it like [`crate::migrations::Migrations`] drives a
//! [`crate::migrations::Migration`]; `balancer-sim` runs the same code over a simulated fleet.
//!
//! The measure of a host is its *pressure*: the larger of its CPU and memory use as a share of
//! what its agent declared. Three levels, lowest first, keep the policy from undoing its own work
//! (hysteresis, like the descheduler's two thresholds):
//! - `fill`: no move fills a host above it;
//! - `wake`: a free host is taken back into use when a host in use is above it and no other host
//!   in use has room for its smallest region, so the fleet grows *before* a host crosses `high`;
//! - `high`: a host above it is relieved (or one above `fill` whose regions' ticks run late).
//!
//! Relieving moves, per overloaded host, the region whose move brings the host back below its
//! threshold at the least cost (the bytes of its state), to the host with the most room after the
//! move; when no single move is enough, the move with the best relief per cost. A region too big
//! for its host therefore goes to a bigger one, the only kind it fits on.
//!
//! Consolidating empties the least loaded host when every one of its regions fits on the other
//! hosts in use at most `fill` full (first fit, biggest region first, fullest host first), then
//! frees it: its warm pool is released and an autoscaler may switch it off. It does not run while
//! a host lacks room (then the fleet needs hosts, not fewer) or within `settle_s` of a host coming
//! back into use, and it never empties a host that received a region or came back into use within
//! `settle_s`, so it does not undo a relief.
//!
//! A region with a hot standby never moves to its standby's host (relief or consolidation): owner
//! and standby on one host would be lost together.
//!
//! Guards: a region moves at most once per `cooldown_s`; after a move of it aborts it waits
//! `backoff_s`, doubled per abort in a row (at most 32 times); pinned regions never move; at most
//! `max_moves` balancer moves run at once, and the migrations' per-host limit holds; at least
//! `min_hosts` hosts stay in use; and a move's predicted gain must exceed its cost, both in core-seconds: the gain is the
//! pressure it removes over `horizon_s` (for consolidation: the freed host's cores over
//! `horizon_s`), the cost is the CPU spent encoding and sending the region's state
//! (`bytes_per_entity` × entities ÷ `move_bytes_per_core_s`) plus `move_overhead_core_s`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Whether the balancer acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// It does nothing (a plan can still be asked for).
    #[default]
    Off,
    /// It plans every round and records what it would do, and does nothing.
    DryRun,
    /// It moves regions, frees hosts and takes them back.
    On,
}

/// The balancer's settings (the admin API shows and changes them; [`Settings::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// A host above this share of its capacity (CPU or memory) is relieved.
    pub high: f64,
    /// A free host comes back into use when a host in use is above this share and no other host in
    /// use has room for any of its regions.
    pub wake: f64,
    /// Moves fill a host to at most this share.
    pub fill: f64,
    /// Seconds a region stays where a move put it.
    pub cooldown_s: f64,
    /// Seconds a region waits after a move of it aborted (doubled per abort in a row).
    pub backoff_s: f64,
    /// Seconds a host that received a region or came back into use is not emptied.
    pub settle_s: f64,
    /// Hosts that always stay in use.
    pub min_hosts: usize,
    /// Balancer moves running at once in the whole cluster.
    pub max_moves: usize,
    /// Seconds over which a move's gain is counted.
    pub horizon_s: f64,
    /// Seconds of load history for relief: the balancer sizes each region by its peak over them, so
    /// a region whose load swings is placed for its peak, not moved back and forth with the swing.
    pub peak_window_s: f64,
    /// Seconds of load history for consolidation: a host is emptied only if its regions fit on the
    /// others at their peak over this window (longer: consolidation is never urgent, and a load that
    /// comes and goes within it does not make hosts come and go).
    pub consolidate_window_s: f64,
    /// Bytes of state per entity, to estimate what a move sends.
    pub bytes_per_entity: f64,
    /// Bytes of state one core encodes and sends per second during a move.
    pub move_bytes_per_core_s: f64,
    /// Core-seconds every move costs besides its state (claiming and preparing a process).
    pub move_overhead_core_s: f64,
    /// Regions the balancer never moves.
    pub pinned: Vec<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            high: 0.8,
            wake: 0.7,
            fill: 0.6,
            cooldown_s: 120.0,
            backoff_s: 30.0,
            settle_s: 30.0,
            min_hosts: 1,
            max_moves: 4,
            horizon_s: 60.0,
            peak_window_s: 300.0,
            consolidate_window_s: 3600.0,
            bytes_per_entity: 200.0,
            move_bytes_per_core_s: 50e6,
            move_overhead_core_s: 0.5,
            pinned: Vec::new(),
        }
    }
}

impl Settings {
    /// Checks that the levels are ordered and the numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        let levels = [("fill", self.fill), ("wake", self.wake), ("high", self.high)];
        for (name, value) in levels {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(format!("{name} must be a share above 0 and at most 1, not {value}"));
            }
        }
        if !(self.fill < self.wake && self.wake < self.high) {
            return Err(format!(
                "the levels must rise: fill ({}) < wake ({}) < high ({})",
                self.fill, self.wake, self.high
            ));
        }
        let durations = [
            ("cooldown_s", self.cooldown_s),
            ("backoff_s", self.backoff_s),
            ("settle_s", self.settle_s),
            ("horizon_s", self.horizon_s),
            ("peak_window_s", self.peak_window_s),
            ("consolidate_window_s", self.consolidate_window_s),
            ("bytes_per_entity", self.bytes_per_entity),
            ("move_overhead_core_s", self.move_overhead_core_s),
        ];
        for (name, value) in durations {
            if !(value.is_finite() && (0.0..=1e9).contains(&value)) {
                return Err(format!("{name} must be a number from 0 to 1e9, not {value}"));
            }
        }
        if !(self.move_bytes_per_core_s.is_finite() && self.move_bytes_per_core_s > 0.0) {
            return Err(format!("move_bytes_per_core_s must be above 0, not {}", self.move_bytes_per_core_s));
        }
        if self.max_moves == 0 {
            return Err("max_moves must be at least 1".into());
        }
        if self.min_hosts == 0 {
            return Err("min_hosts must be at least 1".into());
        }
        Ok(())
    }

    fn seconds(value: f64) -> Duration {
        Duration::from_secs_f64(value.clamp(0.0, 1e9))
    }
}

/// One region, as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionState {
    /// The region.
    pub region: u64,
    /// The cores its ticks use (mean tick time ÷ tick interval).
    pub cores: f64,
    /// Whether a tick of it overran its interval lately.
    pub late: bool,
    /// Players in it.
    pub players: u64,
    /// Live entities (the size of its state).
    pub entities: u64,
    /// The host of its hot standby, if it has one: never a move's target (the region and its
    /// standby would die together; the standby's own cost is in that host's measured use).
    pub standby: Option<String>,
}

/// One host, as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostState {
    /// The host.
    pub name: String,
    /// CPU cores its region servers may use.
    pub capacity_cores: f64,
    /// Memory its region servers may use, in bytes.
    pub capacity_memory: u64,
    /// CPU its region servers use, as measured (in cores; includes what ticks do not).
    pub used_cores: f64,
    /// Memory its region servers use, in bytes.
    pub used_memory: u64,
    /// Connected and not draining: it may take regions.
    pub available: bool,
    /// Being drained by an operator (never taken back into use by the balancer).
    pub draining: bool,
    /// Freed by the balancer (no warm pool; takes no regions until taken back). A free host may
    /// be disconnected (an autoscaler switched it off); taking it back runs the hook to switch it on.
    pub free: bool,
    /// Its regions.
    pub regions: Vec<RegionState>,
    /// Migrations running from or to it.
    pub migrations: usize,
}

/// What the balancer reads each round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every host.
    pub hosts: Vec<HostState>,
    /// Regions being migrated now (by anyone), and the host each goes to: the balancer counts its
    /// load on its target from the moment it starts (so it neither relieves its source again nor
    /// places it twice).
    pub moving: BTreeMap<u64, String>,
    /// Most migrations running at once that involve one host.
    pub per_host_limit: usize,
    /// Moves the balancer started that still run.
    pub in_flight: usize,
}

/// Why a region moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Relieving a host above its high watermark, or one whose regions tick late.
    Rebalance,
    /// Emptying a host so that it can be freed.
    Consolidate,
}

impl Kind {
    /// The migration kind it starts (`rebalance`, `consolidate`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rebalance => "rebalance",
            Kind::Consolidate => "consolidate",
        }
    }
}

/// One planned move, with what it is based on and what it should do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// The region.
    pub region: u64,
    /// Its host now.
    pub from: String,
    /// Where it goes.
    pub to: String,
    /// Why, in short.
    pub kind: Kind,
    /// Why, in words, with the figures.
    pub reason: String,
    /// The cores the region uses.
    pub region_cores: f64,
    /// The source's pressure (share of its capacity) before the move.
    pub from_before: f64,
    /// The source's predicted pressure after it.
    pub from_after: f64,
    /// The target's pressure before the move.
    pub to_before: f64,
    /// The target's predicted pressure after it.
    pub to_after: f64,
    /// Predicted gain, in core-seconds.
    pub gain_core_s: f64,
    /// Predicted cost, in core-seconds.
    pub cost_core_s: f64,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Move a region.
    Move(Decision),
    /// Free an emptied host (release its warm pool; an autoscaler may switch it off).
    Free {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// Take a free host back into use.
    Use {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A host's load as the plan saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostPressure {
    /// The host.
    pub host: String,
    /// CPU used over capacity.
    pub cpu: f64,
    /// Memory used over capacity.
    pub memory: f64,
    /// In use (available and not free).
    pub in_use: bool,
    /// Free.
    pub free: bool,
}

/// What the balancer would do now, and why not more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Why something that looks needed is not planned (no room, limits, cost, cooldowns).
    pub notes: Vec<String>,
    /// Each host's pressure before the plan.
    pub hosts: Vec<HostPressure>,
    /// The host being emptied, if any.
    pub emptying: Option<String>,
}

/// The working model of one host while a plan is made.
#[derive(Clone, Debug)]
struct Model {
    name: String,
    capacity_cores: f64,
    capacity_memory: f64,
    cores: f64,
    memory: f64,
    in_use: bool,
    free: bool,
    draining: bool,
    slots: usize,
    /// (region, cores including the host's overhead, memory estimate, its state).
    regions: Vec<(f64, f64, RegionState)>,
    /// Cores at the consolidation window's peaks (with the overhead), in all.
    long_cores: f64,
    /// The same per region.
    long: HashMap<u64, f64>,
}

impl Model {
    /// A host's model; `peak` gives a region's peak cores (as [`attributed`]) over the relief
    /// window and over the consolidation window.
    fn new(host: &HostState, per_host_limit: usize, peak: impl Fn(u64) -> (f64, f64)) -> Model {
        let entities: u64 = host.regions.iter().map(|region| region.entities).sum();
        let count = host.regions.len().max(1) as f64;
        let memory = host.used_memory as f64;
        let now = attributed(host);
        let regions: Vec<(f64, f64, RegionState)> = host
            .regions
            .iter()
            .zip(&now)
            .map(|(region, current)| {
                let share = if entities > 0 { region.entities as f64 / entities as f64 } else { 1.0 / count };
                (peak(region.region).0.max(*current), memory * share, region.clone())
            })
            .collect();
        let cores = if regions.is_empty() { host.used_cores } else { regions.iter().map(|(cores, ..)| cores).sum() };
        let long: HashMap<u64, f64> = host
            .regions
            .iter()
            .zip(&now)
            .map(|(region, current)| (region.region, peak(region.region).1.max(*current)))
            .collect();
        let long_cores = if long.is_empty() { host.used_cores } else { long.values().sum() };
        Model {
            name: host.name.clone(),
            capacity_cores: host.capacity_cores.max(1e-9),
            capacity_memory: (host.capacity_memory as f64).max(1.0),
            cores,
            memory,
            in_use: host.available && !host.free,
            free: host.free,
            draining: host.draining,
            slots: per_host_limit.saturating_sub(host.migrations),
            regions,
            long_cores,
            long,
        }
    }

    /// A region's cores at its consolidation-window peak.
    fn long_of(&self, region: u64) -> f64 {
        self.long.get(&region).copied().unwrap_or(0.0)
    }

    fn pressure_with(&self, cores: f64, memory: f64) -> f64 {
        (cores / self.capacity_cores).max(memory / self.capacity_memory)
    }

    fn pressure(&self) -> f64 {
        self.pressure_with(self.cores, self.memory)
    }

    /// The pressure with each region at its consolidation-window peak.
    fn long_pressure(&self) -> f64 {
        self.pressure_with(self.long_cores, self.memory)
    }

    fn cpu(&self) -> f64 {
        self.cores / self.capacity_cores
    }
}

/// What each region of `host` costs it, in cores: its ticks, plus its share of what the host uses
/// beyond all ticks (sending updates, reading inputs, encoding), split by players (by ticks when
/// nobody plays).
fn attributed(host: &HostState) -> Vec<f64> {
    let ticks: f64 = host.regions.iter().map(|region| region.cores).sum();
    let rest = (host.used_cores - ticks).max(0.0);
    let players: u64 = host.regions.iter().map(|region| region.players).sum();
    let count = host.regions.len().max(1) as f64;
    host.regions
        .iter()
        .map(|region| {
            let share = if players > 0 {
                region.players as f64 / players as f64
            } else if ticks > 0.0 {
                region.cores / ticks
            } else {
                1.0 / count
            };
            region.cores + rest * share
        })
        .collect()
}

/// Moves a region's consolidation-window figures from one host's model to another's.
fn hand_over(hosts: &mut [Model], from: usize, to: usize, region: u64) {
    let long = hosts[from].long.remove(&region).unwrap_or(0.0);
    hosts[from].long_cores -= long;
    hosts[to].long_cores += long;
    hosts[to].long.insert(region, long);
}

/// The balancer's memory between rounds and its settings.
#[derive(Debug)]
pub struct Balancer {
    mode: Mode,
    settings: Settings,
    last_moved: HashMap<u64, Instant>,
    /// Per region: aborts in a row, and until when it waits.
    backoff: HashMap<u64, (u32, Instant)>,
    emptying: Option<String>,
    /// Per host: when it last received a region or came back into use.
    touched: HashMap<String, Instant>,
    /// When a free host was last taken back into use.
    woken: Option<Instant>,
    /// Per region: its highest cost ([`attributed`]) per time bucket within the longer window,
    /// oldest first.
    history: HashMap<u64, VecDeque<(Instant, f64)>>,
}

/// What one round decided: the plan, and the steps to carry out (none unless the mode is `on`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    /// What the balancer would do.
    pub plan: Plan,
    /// What to do now.
    pub execute: Vec<Step>,
}

impl Balancer {
    /// A balancer in `mode` with `settings` (checked with [`Settings::validate`]).
    pub fn new(mode: Mode, settings: Settings) -> Result<Balancer, String> {
        settings.validate()?;
        Ok(Balancer {
            mode,
            settings,
            last_moved: HashMap::new(),
            backoff: HashMap::new(),
            emptying: None,
            touched: HashMap::new(),
            woken: None,
            history: HashMap::new(),
        })
    }

    /// Its mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Its settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The host being emptied, if any.
    #[must_use]
    pub fn emptying(&self) -> Option<&str> {
        self.emptying.as_deref()
    }

    /// Changes the mode.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Changes the settings (refused, and nothing changes, unless they validate).
    pub fn set_settings(&mut self, settings: Settings) -> Result<(), String> {
        settings.validate()?;
        self.settings = settings;
        Ok(())
    }

    /// One round: plans, and when the mode is `on`, remembers what it starts (cool-downs, the host
    /// being emptied) and returns the steps to carry out. Off: nothing; dry run: the plan only.
    pub fn round(&mut self, snapshot: &Snapshot, now: Instant) -> Round {
        self.observe(snapshot, now);
        match self.mode {
            Mode::Off => Round::default(),
            Mode::DryRun => Round { plan: self.plan(snapshot, now), execute: Vec::new() },
            Mode::On => {
                let plan = self.plan(snapshot, now);
                for step in &plan.steps {
                    match step {
                        Step::Move(decision) => {
                            self.last_moved.insert(decision.region, now);
                            self.touched.insert(decision.to.clone(), now);
                        }
                        Step::Use { host, .. } => {
                            self.touched.insert(host.clone(), now);
                            self.woken = Some(now);
                        }
                        Step::Free { .. } => {}
                    }
                }
                self.emptying.clone_from(&plan.emptying);
                let settle = Settings::seconds(self.settings.settle_s);
                self.touched.retain(|_, at| now.saturating_duration_since(*at) < settle);
                Round { execute: plan.steps.clone(), plan }
            }
        }
    }

    /// Remembers each region's load for the peak window (in every mode: a dry run or a switch to
    /// `on` sees the same peaks).
    fn observe(&mut self, snapshot: &Snapshot, now: Instant) {
        let window = Settings::seconds(self.settings.peak_window_s.max(self.settings.consolidate_window_s));
        let bucket = self.bucket();
        let mut seen = BTreeSet::new();
        let costs = snapshot.hosts.iter().flat_map(|host| host.regions.iter().zip(attributed(host)));
        for (region, cores) in costs {
            seen.insert(region.region);
            let samples = self.history.entry(region.region).or_default();
            match samples.back_mut() {
                Some((start, highest)) if now.saturating_duration_since(*start) < bucket => {
                    *highest = highest.max(cores);
                }
                _ => samples.push_back((now, cores)),
            }
            while samples.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > window + bucket) {
                samples.pop_front();
            }
        }
        // A region missing from one report (between its source letting go and its target
        // reporting it) keeps its history until that ages out.
        self.history.retain(|region, samples| {
            seen.contains(region) || samples.back().is_some_and(|(at, _)| now.saturating_duration_since(*at) <= window)
        });
    }

    /// The history's time bucket: a tenth of the shorter window, from 100 ms to 10 s (so a day of
    /// history of thousands of regions stays small).
    fn bucket(&self) -> Duration {
        Settings::seconds(self.settings.peak_window_s.min(self.settings.consolidate_window_s) / 10.0)
            .clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// A region's peak cost ([`attributed`]) over the last `window` (0 when never seen).
    fn peak(&self, region: u64, window: Duration, now: Instant) -> f64 {
        let reach = window + self.bucket();
        self.history.get(&region).map_or(0.0, |samples| {
            samples
                .iter()
                .filter(|(at, _)| now.saturating_duration_since(*at) <= reach)
                .map(|(_, cores)| *cores)
                .fold(0.0, f64::max)
        })
    }

    /// A move the balancer planned could not start (the migrations refused it): it did not happen,
    /// so no cool-down, but the region backs off like after an abort.
    pub fn handle_refused(&mut self, region: u64, now: Instant) {
        self.last_moved.remove(&region);
        self.handle_outcome(region, false, now);
    }

    /// A move the balancer started ended: an abort makes the region wait before the balancer tries
    /// it again.
    pub fn handle_outcome(&mut self, region: u64, committed: bool, now: Instant) {
        if committed {
            self.backoff.remove(&region);
            return;
        }
        let aborts = self.backoff.get(&region).map_or(0, |(aborts, _)| *aborts) + 1;
        let factor = f64::from(1u32 << (aborts - 1).min(5));
        let until = now + Settings::seconds(self.settings.backoff_s * factor);
        self.backoff.insert(region, (aborts, until));
    }

    fn movable(&self, region: &RegionState, snapshot: &Snapshot, now: Instant) -> Result<(), String> {
        if self.settings.pinned.contains(&region.region) {
            return Err("pinned".into());
        }
        if snapshot.moving.contains_key(&region.region) {
            return Err("being migrated".into());
        }
        if let Some(moved) = self.last_moved.get(&region.region) {
            let until = *moved + Settings::seconds(self.settings.cooldown_s);
            if now < until {
                return Err(format!("cooling down for {:.0} s more", (until - now).as_secs_f64()));
            }
        }
        if let Some((aborts, until)) = self.backoff.get(&region.region)
            && now < *until
        {
            return Err(format!(
                "backing off {:.0} s more after {aborts} aborted move(s)",
                (*until - now).as_secs_f64()
            ));
        }
        Ok(())
    }

    fn cost(&self, region: &RegionState) -> f64 {
        region.entities as f64 * self.settings.bytes_per_entity / self.settings.move_bytes_per_core_s
            + self.settings.move_overhead_core_s
    }

    /// What the balancer would do now (changes nothing).
    #[must_use]
    pub fn plan(&self, snapshot: &Snapshot, now: Instant) -> Plan {
        let settings = &self.settings;
        let mut hosts: Vec<Model> = snapshot
            .hosts
            .iter()
            .map(|host| {
                Model::new(host, snapshot.per_host_limit.max(1), |region| {
                    (
                        self.peak(region, Settings::seconds(settings.peak_window_s), now),
                        self.peak(region, Settings::seconds(settings.consolidate_window_s), now),
                    )
                })
            })
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        // A region on its way counts on its target from the moment it starts.
        for (region, to) in &snapshot.moving {
            let Some(from) =
                hosts.iter().position(|host| host.regions.iter().any(|(_, _, state)| state.region == *region))
            else {
                continue;
            };
            let Some(to) = hosts.iter().position(|host| &host.name == to) else { continue };
            if from == to {
                continue;
            }
            let Some(position) = hosts[from].regions.iter().position(|(_, _, state)| state.region == *region) else {
                continue;
            };
            let (cores, memory, state) = hosts[from].regions.remove(position);
            hand_over(&mut hosts, from, to, *region);
            hosts[from].cores -= cores;
            hosts[from].memory -= memory;
            hosts[to].cores += cores;
            hosts[to].memory += memory;
            hosts[to].regions.push((cores, memory, state));
        }
        let mut plan = Plan {
            hosts: hosts
                .iter()
                .map(|host| HostPressure {
                    host: host.name.clone(),
                    cpu: host.cpu(),
                    memory: host.memory / host.capacity_memory,
                    in_use: host.in_use,
                    free: host.free,
                })
                .collect(),
            // Kept from the last round so that relief sends nothing to it; `consolidate` decides
            // whether it goes on (it drops a host no longer in use or now pinned).
            emptying: self.emptying.clone(),
            ..Plan::default()
        };
        let mut budget = settings.max_moves.saturating_sub(snapshot.in_flight);
        let mut crowded: Vec<usize> = Vec::new();
        self.relieve(snapshot, now, &mut hosts, &mut plan, &mut budget, &mut crowded);
        let woke = self.wake(&hosts, &crowded, &mut plan);
        if !woke && crowded.is_empty() {
            self.consolidate(snapshot, now, &mut hosts, &mut plan, budget);
        } else {
            plan.emptying = None;
        }
        plan
    }

    /// Relief for every host in use above `high`, or above `fill` with late ticks.
    fn relieve(
        &self,
        snapshot: &Snapshot,
        now: Instant,
        hosts: &mut [Model],
        plan: &mut Plan,
        budget: &mut usize,
        crowded: &mut Vec<usize>,
    ) {
        let settings = &self.settings;
        let mut order: Vec<usize> = (0..hosts.len()).filter(|&index| hosts[index].in_use).collect();
        order.sort_by(|&a, &b| hosts[b].pressure().total_cmp(&hosts[a].pressure()));
        for index in order {
            let host = &hosts[index];
            let pressure = host.pressure();
            let late = host.regions.iter().any(|(_, _, region)| region.late);
            let (threshold, why) = if pressure > settings.high {
                (
                    settings.high,
                    format!(
                        "{} is at {:.0}% of its capacity (high watermark {:.0}%)",
                        host.name,
                        pressure * 100.0,
                        settings.high * 100.0
                    ),
                )
            } else if late && pressure > settings.fill {
                (settings.fill, format!("{} is at {:.0}% and its regions' ticks run late", host.name, pressure * 100.0))
            } else {
                continue;
            };
            if *budget == 0 {
                plan.notes.push(format!(
                    "{why}; no move planned: the limit of {} balancer moves at once is reached",
                    settings.max_moves
                ));
                continue;
            }
            if host.slots == 0 {
                plan.notes.push(format!("{why}; no move planned: it has as many migrations as the per-host limit"));
                continue;
            }
            // (fixes, key, region index, target index, gain, cost, pressure after at the source)
            let mut best: Option<(bool, f64, usize, usize, f64, f64, f64)> = None;
            let mut held = Vec::new();
            // Whether some region would fit somewhere if migrations were not at their limits.
            let mut room = false;
            for (position, (cores, memory, region)) in host.regions.iter().enumerate() {
                if let Err(why_not) = self.movable(region, snapshot, now) {
                    held.push(format!("{} {why_not}", region.region));
                    continue;
                }
                let after = host.pressure_with(host.cores - cores, host.memory - memory);
                let gain = (pressure - after.max(threshold)).max(0.0) * host.capacity_cores * settings.horizon_s;
                let cost = self.cost(region);
                let fixes = after <= threshold;
                // Fixing at the least cost; else the most relief per cost.
                let key = if fixes { cost } else { -gain / cost.max(1e-9) };
                let fitting: Vec<(usize, f64)> = hosts
                    .iter()
                    .enumerate()
                    .filter(|(other, target)| {
                        *other != index
                            && target.in_use
                            && plan.emptying.as_deref() != Some(&target.name)
                            && region.standby.as_ref() != Some(&target.name)
                    })
                    .map(|(other, target)| (other, target.pressure_with(target.cores + cores, target.memory + memory)))
                    .filter(|(_, after)| *after <= settings.fill)
                    .collect();
                room |= !fitting.is_empty();
                let target = fitting
                    .into_iter()
                    .filter(|(other, _)| hosts[*other].slots > 0)
                    .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                let Some((target, _)) = target else { continue };
                let better = match &best {
                    None => true,
                    Some((best_fixes, best_key, ..)) => (fixes, -key) > (*best_fixes, -*best_key),
                };
                if better {
                    best = Some((fixes, key, position, target, gain, cost, after));
                }
            }
            let Some((_, _, position, target, gain, cost, after)) = best else {
                let all_held = held.len() == hosts[index].regions.len();
                let held = if held.is_empty() { String::new() } else { format!(" (held: {})", held.join(", ")) };
                if room {
                    plan.notes.push(format!("{why}; the hosts with room have as many migrations as they may{held}"));
                } else if !all_held {
                    plan.notes.push(format!("{why}; no host in use has room for any of its regions{held}"));
                    crowded.push(index);
                } else {
                    plan.notes.push(format!("{why}; none of its regions may move now{held}"));
                }
                continue;
            };
            if gain <= cost {
                plan.notes.push(format!(
                    "{why}; the best move gains {gain:.1} core-s, not more than its cost {cost:.1} core-s"
                ));
                continue;
            }
            let (cores, memory, region) = hosts[index].regions.remove(position);
            hand_over(hosts, index, target, region.region);
            let to_before = hosts[target].pressure();
            hosts[target].cores += cores;
            hosts[target].memory += memory;
            hosts[target].slots -= 1;
            hosts[target].regions.push((cores, memory, region.clone()));
            let source = &mut hosts[index];
            source.cores -= cores;
            source.memory -= memory;
            source.slots -= 1;
            *budget -= 1;
            plan.steps.push(Step::Move(Decision {
                region: region.region,
                from: hosts[index].name.clone(),
                to: hosts[target].name.clone(),
                kind: Kind::Rebalance,
                reason: format!(
                    "{why}: region {} ({cores:.2} cores) moves to the host with the most room",
                    region.region
                ),
                region_cores: cores,
                from_before: pressure,
                from_after: after,
                to_before,
                to_after: hosts[target].pressure(),
                gain_core_s: gain,
                cost_core_s: cost,
            }));
        }
    }

    /// A host in use above `level` with no room elsewhere (hosts in use other than `without`) for
    /// its smallest region, if any: above `wake`, the fleet is about to need another host.
    fn needing_room(&self, hosts: &[Model], without: Option<usize>, level: f64) -> Option<usize> {
        let fill = self.settings.fill;
        let no_room = |index: usize| {
            let host = &hosts[index];
            let smallest = host.regions.iter().min_by(|a, b| a.0.total_cmp(&b.0));
            smallest.is_some_and(|(cores, memory, _)| {
                !hosts.iter().enumerate().any(|(other, target)| {
                    other != index
                        && Some(other) != without
                        && target.in_use
                        && target.pressure_with(target.cores + cores, target.memory + memory) <= fill
                })
            })
        };
        (0..hosts.len()).find(|&index| {
            Some(index) != without && hosts[index].in_use && hosts[index].pressure() > level && no_room(index)
        })
    }

    /// Takes a free host back when a host in use needs room nobody in use has, or is above `wake`
    /// with no room elsewhere for its smallest region. Returns whether it did.
    fn wake(&self, hosts: &[Model], crowded: &[usize], plan: &mut Plan) -> bool {
        let settings = &self.settings;
        let needing = crowded.first().copied().or_else(|| self.needing_room(hosts, None, settings.wake));
        let Some(needing) = needing else { return false };
        let spare = hosts
            .iter()
            .filter(|host| host.free && !host.draining)
            .max_by(|a, b| a.capacity_cores.total_cmp(&b.capacity_cores).then(b.name.cmp(&a.name)));
        match spare {
            Some(spare) => {
                plan.steps.push(Step::Use {
                    host: spare.name.clone(),
                    reason: format!(
                        "{} is at {:.0}% and no host in use has room for its regions",
                        hosts[needing].name,
                        hosts[needing].pressure() * 100.0
                    ),
                });
                true
            }
            None => {
                if hosts[needing].pressure() > settings.wake {
                    plan.notes.push(format!(
                        "{} is at {:.0}% with no room elsewhere and no free host to take back: the fleet needs another host",
                        hosts[needing].name,
                        hosts[needing].pressure() * 100.0
                    ));
                }
                false
            }
        }
    }

    /// Empties the least loaded host when the others can take its regions; frees it once empty.
    fn consolidate(&self, snapshot: &Snapshot, now: Instant, hosts: &mut [Model], plan: &mut Plan, budget: usize) {
        let settings = &self.settings;
        // The fleet just grew because it lacked room: no shrinking it for a while.
        if self.woken.is_some_and(|at| now.saturating_duration_since(at) < Settings::seconds(settings.settle_s)) {
            plan.emptying = None;
            return;
        }
        let in_use = hosts.iter().filter(|host| host.in_use).count();
        if in_use <= settings.min_hosts {
            plan.emptying = None;
            return;
        }
        let pinned = |host: &Model| host.regions.iter().any(|(_, _, region)| settings.pinned.contains(&region.region));
        let settle = Settings::seconds(settings.settle_s);
        let touched = |host: &Model| {
            self.touched.get(&host.name).is_some_and(|at| now.saturating_duration_since(*at) < settle)
                || plan.steps.iter().any(
                    |step| matches!(step, Step::Move(decision) if decision.to == host.name || decision.from == host.name),
                )
        };
        let busy = |host: &Model| snapshot.hosts.iter().any(|state| state.name == host.name && state.migrations > 0);
        let carried_over = plan
            .emptying
            .as_ref()
            .and_then(|name| hosts.iter().position(|host| &host.name == name))
            .filter(|&index| hosts[index].in_use && !pinned(&hosts[index]));
        let candidate = carried_over.or_else(|| {
            (0..hosts.len())
                .filter(|&index| {
                    let host = &hosts[index];
                    host.in_use && !pinned(host) && !touched(host) && !busy(host)
                })
                .min_by(|&a, &b| hosts[a].long_pressure().total_cmp(&hosts[b].long_pressure()).then(a.cmp(&b)))
        });
        let Some(candidate) = candidate else {
            plan.emptying = None;
            return;
        };
        let name = hosts[candidate].name.clone();
        // Never empty a host the fleet may soon need: another host above `fill` would have no room
        // without it (`fill`, not `wake`: a host taken back stays until the load is well below
        // what brought it back).
        if let Some(needing) = self.needing_room(hosts, Some(candidate), settings.fill) {
            plan.notes.push(format!(
                "{name} stays in use: {} is at {:.0}% and would have no room elsewhere",
                hosts[needing].name,
                hosts[needing].pressure() * 100.0
            ));
            plan.emptying = None;
            return;
        }
        if hosts[candidate].regions.is_empty() {
            plan.emptying = None;
            if busy(&hosts[candidate]) {
                return;
            }
            plan.steps.push(Step::Free {
                host: name,
                reason: format!("empty, and {} other host(s) in use carry the load", in_use - 1),
            });
            return;
        }
        // First fit, biggest region first, onto the fullest host in use that stays within `fill`,
        // all sized by their peaks over the consolidation window.
        let mut regions = hosts[candidate].regions.clone();
        let long = |region: &RegionState| hosts[candidate].long_of(region.region);
        regions.sort_by(|a, b| long(&b.2).total_cmp(&long(&a.2)).then(a.2.region.cmp(&b.2.region)));
        let mut trial: Vec<(f64, f64)> = hosts.iter().map(|host| (host.long_cores, host.memory)).collect();
        let mut placement = Vec::new();
        for (cores, memory, region) in &regions {
            let peak = long(region);
            let mut targets: Vec<usize> = (0..hosts.len())
                .filter(|&index| {
                    index != candidate && hosts[index].in_use && region.standby.as_ref() != Some(&hosts[index].name)
                })
                .collect();
            targets.sort_by(|&a, &b| {
                let pa = hosts[a].pressure_with(trial[a].0, trial[a].1);
                let pb = hosts[b].pressure_with(trial[b].0, trial[b].1);
                pb.total_cmp(&pa).then(a.cmp(&b))
            });
            let fit = targets.into_iter().find(|&index| {
                hosts[index].pressure_with(trial[index].0 + peak, trial[index].1 + memory) <= settings.fill
            });
            let Some(target) = fit else {
                if carried_over.is_some() {
                    plan.notes
                        .push(format!("stopped emptying {name}: region {} no longer fits elsewhere", region.region));
                }
                plan.emptying = None;
                return;
            };
            trial[target].0 += peak;
            trial[target].1 += memory;
            placement.push((target, *cores, *memory, region.clone()));
        }
        let gain = hosts[candidate].capacity_cores * settings.horizon_s;
        let cost: f64 = regions.iter().map(|(_, _, region)| self.cost(region)).sum();
        if gain <= cost {
            plan.notes.push(format!(
                "{name} could be emptied, but moving its regions costs {cost:.1} core-s, more than the {gain:.1} core-s gained"
            ));
            plan.emptying = None;
            return;
        }
        plan.emptying = Some(name.clone());
        let before = hosts[candidate].pressure();
        let mut budget = budget;
        for (target, cores, memory, region) in placement {
            if budget == 0 || hosts[candidate].slots == 0 || hosts[target].slots == 0 {
                break;
            }
            if let Err(why_not) = self.movable(&region, snapshot, now) {
                plan.notes.push(format!("emptying {name}: region {} waits ({why_not})", region.region));
                continue;
            }
            let to_before = hosts[target].pressure();
            hosts[target].cores += cores;
            hosts[target].memory += memory;
            hosts[target].slots -= 1;
            let source = &mut hosts[candidate];
            source.cores -= cores;
            source.memory -= memory;
            source.slots -= 1;
            source.regions.retain(|(_, _, kept)| kept.region != region.region);
            hand_over(hosts, candidate, target, region.region);
            budget -= 1;
            plan.steps.push(Step::Move(Decision {
                region: region.region,
                from: name.clone(),
                to: hosts[target].name.clone(),
                kind: Kind::Consolidate,
                reason: format!(
                    "emptying {name} ({:.0}%, {}): the other hosts in use can take its regions within {:.0}%",
                    before * 100.0,
                    if carried_over.is_some() { "being emptied" } else { "the least loaded host" },
                    settings.fill * 100.0
                ),
                region_cores: cores,
                from_before: before,
                from_after: hosts[candidate].pressure(),
                to_before,
                to_after: hosts[target].pressure(),
                gain_core_s: gain,
                cost_core_s: self.cost(&region),
            }));
        }
    }
}

#[cfg(test)]
mod tests;
