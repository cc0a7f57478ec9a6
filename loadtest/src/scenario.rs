//! Scenario files (TOML, `loadtest/scenarios/*.toml`): the deployment, the avatars and how they
//! move, what the operator does when (through the coordinator's admin API), and the SLOs the run
//! is judged by.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (the report's `scenario`).
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Simulated avatars.
    pub avatars: usize,
    /// Seconds of play after the ramp.
    pub duration_s: u64,
    /// Seconds over which avatars connect.
    #[serde(default = "default_ramp")]
    pub ramp_s: u64,
    /// Inputs per second per avatar.
    #[serde(default = "default_rate")]
    pub inputs_per_second: u32,
    /// Input payload sizes in bytes, smallest and largest.
    #[serde(default = "default_payload")]
    pub payload_bytes: (usize, usize),
    /// Hosts (one agent each), named `h1`, `h2`, ...
    #[serde(default = "default_hosts")]
    pub hosts: usize,
    /// Regions of the world grid, numbered 1..=N row by row, placed round-robin on the hosts.
    #[serde(default = "default_regions")]
    pub regions: u64,
    /// Regions per row.
    #[serde(default = "default_columns")]
    pub columns: u64,
    /// Physics objects per region (plus a tenth as many scripted NPCs and plants).
    #[serde(default = "default_objects")]
    pub objects_per_region: usize,
    /// Seconds between two checkpoints of each region (what a failover restores, and so what
    /// makes players' inputs durable).
    #[serde(default = "default_checkpoint_every_s")]
    pub checkpoint_every_s: f64,
    /// Whether every region keeps a hot standby on another host (the coordinator's `--standby
    /// on`): a failover promotes it instead of restoring the newest checkpoint.
    #[serde(default)]
    pub standby: bool,
    /// The regions avatars start in, round-robin (empty: all regions).
    #[serde(default)]
    pub avatar_regions: Vec<u64>,
    /// The host of each region, in order (`["h1", "h1", "h2", ...]`); regions past the end (or
    /// all, when empty) are placed round-robin.
    #[serde(default)]
    pub placement: Vec<String>,
    /// CPU cores each host declares to the balancer (`--capacity-cores`), in order; hosts past the
    /// end declare the machine's cores. All hosts of a run share one machine: small declared
    /// capacities make its load matter.
    #[serde(default)]
    pub host_cores: Vec<f64>,
    /// The coordinator's balancer during the run (off when absent).
    #[serde(default)]
    pub balancer: Option<BalancerScenario>,
    /// Avatars leaving over a stretch of the run (night falls).
    #[serde(default)]
    pub leaving: Option<Leaving>,
    /// A crowd of new avatars arriving.
    #[serde(default)]
    pub crowd: Option<Crowd>,
    /// How avatars move (shares; they need not add up to 1).
    #[serde(default)]
    pub movement: MovementMix,
    /// Avatars leaving and new ones joining mid-run.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// What the operator does, and when.
    #[serde(default)]
    pub events: Vec<Event>,
    /// What the run must achieve.
    #[serde(default)]
    pub slo: Slo,
}

/// Shares of the movement patterns.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MovementMix {
    /// Random walk.
    #[serde(default)]
    pub random_walk: f64,
    /// Drift to a corner of the world.
    #[serde(default)]
    pub hotspot: f64,
    /// Walk back and forth across a border.
    #[serde(default)]
    pub border_patrol: f64,
}

impl Default for MovementMix {
    fn default() -> Self {
        MovementMix { random_walk: 1.0, hotspot: 0.0, border_patrol: 0.0 }
    }
}

/// The balancer during a run: set through the admin API once the regions exist.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerScenario {
    /// `off`, `dry-run` or `on`.
    pub mode: String,
    /// When to set it, seconds after the ramp began (0: before the avatars connect).
    #[serde(default)]
    pub at_s: f64,
    /// Its settings (the admin API's `settings` object; fields left out take their defaults).
    #[serde(default)]
    pub settings: Option<toml::Table>,
}

/// The first `fraction` of the avatars leave, one after another, between `from_s` and `to_s`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Leaving {
    /// Between 0 and 1.
    pub fraction: f64,
    /// When the first leaves, seconds after the ramp began.
    pub from_s: f64,
    /// When the last leaves.
    pub to_s: f64,
}

/// `avatars` new avatars join between `at_s` and `at_s + over_s` and play to the end (those due
/// after the end of a shortened run do not join).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crowd {
    /// How many.
    pub avatars: usize,
    /// When the first joins, seconds after the ramp began.
    pub at_s: f64,
    /// Seconds over which they join.
    #[serde(default)]
    pub over_s: f64,
    /// The regions they join, round-robin (empty: all regions).
    #[serde(default)]
    pub regions: Vec<u64>,
}

/// Join/leave churn: `fraction` of the avatars leave halfway through and as many new ones join.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Between 0 and 1.
    pub fraction: f64,
}

/// Something the operator does at `at_s` seconds after the ramp began.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When.
    pub at_s: f64,
    /// Move `region` to host `to`.
    #[serde(default)]
    pub migrate: Option<Migrate>,
    /// Drain this host.
    #[serde(default)]
    pub drain: Option<String>,
    /// Kill this host the way a machine dies: its agent and every region-server process of it,
    /// with SIGKILL (the coordinator fails its regions over).
    #[serde(default)]
    pub kill_host: Option<String>,
}

/// A migration asked for by a scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// The region.
    pub region: u64,
    /// The host.
    pub to: String,
}

/// Service-level objectives; a violated one makes the run fail.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Highest p99 update gap, milliseconds.
    #[serde(default = "default_gap_slo")]
    pub update_gap_p99_ms: f64,
    /// Highest p99 input round trip, milliseconds.
    #[serde(default = "default_rtt_slo")]
    pub rtt_p99_ms: f64,
    /// Most inputs lost.
    #[serde(default)]
    pub inputs_lost: u64,
    /// Most inputs applied twice.
    #[serde(default)]
    pub inputs_duplicated: u64,
    /// Most disconnects.
    #[serde(default)]
    pub disconnects: u64,
    /// Most milliseconds any player of a moved region may go without an update during its move
    /// (none: not judged).
    #[serde(default)]
    pub move_gap_ms: Option<f64>,
    /// Every operator event must end committed.
    #[serde(default = "yes")]
    pub migrations_commit: bool,
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            update_gap_p99_ms: default_gap_slo(),
            rtt_p99_ms: default_rtt_slo(),
            inputs_lost: 0,
            inputs_duplicated: 0,
            disconnects: 0,
            move_gap_ms: None,
            migrations_commit: true,
        }
    }
}

fn default_ramp() -> u64 {
    5
}
fn default_rate() -> u32 {
    20
}
fn default_payload() -> (usize, usize) {
    (256, 512)
}
fn default_hosts() -> usize {
    3
}
fn default_regions() -> u64 {
    12
}
fn default_columns() -> u64 {
    4
}
fn default_objects() -> usize {
    300
}
fn default_checkpoint_every_s() -> f64 {
    10.0
}
fn default_gap_slo() -> f64 {
    // 1.5 tick intervals at 20 Hz.
    75.0
}
fn default_rtt_slo() -> f64 {
    150.0
}
fn yes() -> bool {
    true
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        scenario.check().map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
        Ok(scenario)
    }

    /// The scenario shipped under this name (`loadtest/scenarios/<name>.toml`).
    pub fn shipped(name: &str) -> anyhow::Result<Scenario> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"));
        if !path.exists() {
            anyhow::bail!("no scenario {name:?}; shipped: {}", shipped_names().join(", "));
        }
        Scenario::load(&path)
    }

    /// Checks values no type can: ranges, hosts and regions that exist.
    pub fn check(&self) -> Result<(), String> {
        if self.avatars == 0 || self.duration_s == 0 {
            return Err("avatars and duration_s must be at least 1".into());
        }
        if self.hosts == 0 || self.regions == 0 || self.columns == 0 {
            return Err("hosts, regions and columns must be at least 1".into());
        }
        if self.inputs_per_second == 0 || self.inputs_per_second > 200 {
            return Err(format!("inputs_per_second must be within 1..=200, got {}", self.inputs_per_second));
        }
        let (smallest, largest) = self.payload_bytes;
        if smallest < 9 || largest < smallest || largest > baton_limits::MAX_PAYLOAD {
            return Err(format!(
                "payload_bytes must be [smallest, largest] with 9 <= smallest <= largest <= {}",
                baton_limits::MAX_PAYLOAD
            ));
        }
        let mix = &self.movement;
        if [mix.random_walk, mix.hotspot, mix.border_patrol].iter().any(|share| !share.is_finite() || *share < 0.0)
            || mix.random_walk + mix.hotspot + mix.border_patrol <= 0.0
        {
            return Err("movement shares must be 0 or more and not all 0".into());
        }
        if let Some(churn) = &self.churn
            && !(0.0..=1.0).contains(&churn.fraction)
        {
            return Err(format!("churn.fraction must be within 0..=1, got {}", churn.fraction));
        }
        let host_exists = |host: &str| {
            host.strip_prefix('h')
                .and_then(|index| index.parse::<usize>().ok())
                .is_some_and(|index| (1..=self.hosts).contains(&index))
        };
        if let Some(region) = self.avatar_regions.iter().find(|region| !(1..=self.regions).contains(*region)) {
            return Err(format!("avatar_regions names region {region}: no such region"));
        }
        if self.placement.len() as u64 > self.regions {
            return Err(format!("placement names {} hosts for {} regions", self.placement.len(), self.regions));
        }
        if let Some(host) = self.placement.iter().find(|host| !host_exists(host)) {
            return Err(format!("placement names {host}: no such host"));
        }
        if self.host_cores.len() > self.hosts
            || self.host_cores.iter().any(|cores| !(cores.is_finite() && *cores > 0.0))
        {
            return Err(format!("host_cores must be at most {} positive numbers", self.hosts));
        }
        if let Some(balancer) = &self.balancer
            && !["off", "dry-run", "on"].contains(&balancer.mode.as_str())
        {
            return Err(format!("balancer.mode must be off, dry-run or on, not {:?}", balancer.mode));
        }
        if let Some(balancer) = &self.balancer
            && !(balancer.at_s.is_finite() && balancer.at_s >= 0.0)
        {
            return Err("balancer.at_s must be 0 or more seconds".into());
        }
        if let Some(leaving) = &self.leaving
            && !((0.0..=1.0).contains(&leaving.fraction)
                && leaving.from_s.is_finite()
                && leaving.from_s >= 0.0
                && leaving.to_s.is_finite()
                && leaving.to_s >= leaving.from_s)
        {
            return Err("leaving needs 0 <= fraction <= 1 and 0 <= from_s <= to_s".into());
        }
        if let Some(crowd) = &self.crowd
            && !(crowd.at_s.is_finite() && crowd.at_s >= 0.0 && crowd.over_s.is_finite() && crowd.over_s >= 0.0)
        {
            return Err("crowd needs at_s and over_s of 0 or more".into());
        }
        if let Some(region) = self
            .crowd
            .iter()
            .flat_map(|crowd| crowd.regions.iter())
            .find(|region| !(1..=self.regions).contains(*region))
        {
            return Err(format!("crowd.regions names region {region}: no such region"));
        }
        if !(self.checkpoint_every_s.is_finite() && self.checkpoint_every_s > 0.0) {
            return Err(format!("checkpoint_every_s must be above 0, got {}", self.checkpoint_every_s));
        }
        for event in &self.events {
            match (&event.migrate, &event.drain, &event.kill_host) {
                (None, None, Some(host)) => {
                    if !host_exists(host) {
                        return Err(format!("event at {} s kills {host}: no such host", event.at_s));
                    }
                }
                (Some(migrate), None, None) => {
                    if !(1..=self.regions).contains(&migrate.region) || !host_exists(&migrate.to) {
                        return Err(format!(
                            "event at {} s moves region {} to {}: no such region or host",
                            event.at_s, migrate.region, migrate.to
                        ));
                    }
                }
                (None, Some(host), None) => {
                    if !host_exists(host) {
                        return Err(format!("event at {} s drains {host}: no such host", event.at_s));
                    }
                }
                _ => {
                    return Err(format!(
                        "event at {} s must have exactly one of migrate, drain or kill_host",
                        event.at_s
                    ));
                }
            }
            if !event.at_s.is_finite() || event.at_s < 0.0 {
                return Err("event times must be 0 or more seconds".into());
            }
        }
        Ok(())
    }
}

/// The names of the shipped scenarios.
#[must_use]
pub fn shipped_names() -> Vec<String> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.path().file_stem().and_then(|stem| stem.to_str()).map(str::to_owned))
        .collect();
    names.sort();
    names
}

mod baton_limits {
    /// Largest input payload the player protocol carries.
    pub const MAX_PAYLOAD: usize = baton_wire::MAX_INPUT_PAYLOAD;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_shipped_scenario_loads() {
        let names = shipped_names();
        for required in ["steady", "migrate", "crossing", "hotspot", "mixed", "nightfall", "bighost"] {
            assert!(names.iter().any(|name| name == required), "{required} is not shipped: {names:?}");
        }
        for name in names {
            Scenario::shipped(&name).unwrap();
        }
    }

    #[test]
    fn bad_scenarios_are_refused_clearly() {
        let parse = |text: &str| {
            toml::from_str::<Scenario>(text)
                .map_err(|error| error.to_string())
                .and_then(|scenario| scenario.check().map(|()| scenario))
        };
        let base = "name = \"x\"\navatars = 10\nduration_s = 5\n";
        assert!(parse(base).is_ok());
        assert!(parse(&format!("{base}avatarz = 3\n")).unwrap_err().contains("avatarz"));
        assert!(
            parse(&format!("{base}[[events]]\nat_s = 1\nmigrate = {{ region = 99, to = \"h1\" }}\n"))
                .unwrap_err()
                .contains("no such region")
        );
        assert!(parse(&format!("{base}[[events]]\nat_s = 1\ndrain = \"h9\"\n")).unwrap_err().contains("no such host"));
        assert!(parse(&format!("{base}[[events]]\nat_s = 1\n")).unwrap_err().contains("exactly one"));
        assert!(parse(&format!("{base}payload_bytes = [4, 2]\n")).unwrap_err().contains("payload_bytes"));
        assert!(parse(&format!("{base}[movement]\nrandom_walk = 0\n")).unwrap_err().contains("movement"));
        assert!(parse(&format!("{base}placement = [\"h7\"]\n")).unwrap_err().contains("h7"));
        assert!(parse(&format!("{base}host_cores = [0.5, -1]\n")).unwrap_err().contains("host_cores"));
        assert!(parse(&format!("{base}[balancer]\nmode = \"always\"\n")).unwrap_err().contains("balancer.mode"));
        assert!(
            parse(&format!("{base}[leaving]\nfraction = 0.5\nfrom_s = 9\nto_s = 3\n")).unwrap_err().contains("leaving")
        );
        assert!(parse(&format!("{base}[balancer]\nmode = \"on\"\nsettings = {{ high = 0.9 }}\n")).is_ok());
    }
}
