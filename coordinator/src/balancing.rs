//! The balancer's driver: every interval it reads the hosts' load reports and the migrations into
//! a [`Snapshot`], runs one [`Balancer::round`], and carries out what the round says: migrations
//! (kind `rebalance` or `consolidate`, the decision's reason as their cause), hosts freed or taken
//! back (the agent is told, the optional hook is run). It records every decision with its inputs
//! for the admin API, tells the policy how its migrations ended (back-off after aborts), and keeps
//! the balancer's metrics.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::balancer::{Balancer, HostState, Mode, Plan, RegionState, Settings, Snapshot, Step};
use crate::hosts::Hosts;
use crate::migrations::{Migrations, Phase};
use crate::standby::Standbys;

/// Metric: balancer migrations started, by kind (`rebalance`, `consolidate`).
pub const MOVES_TOTAL: &str = "baton_balancer_moves_total";
/// Metric: hosts in use (connected, not draining, not free).
pub const HOSTS_IN_USE: &str = "baton_balancer_hosts_in_use";
/// Metric: hosts the balancer freed.
pub const HOSTS_FREE: &str = "baton_balancer_hosts_free";
/// Metric: per host, the pressure the balancer plans with: the larger of CPU and memory over the
/// declared capacity, regions at their recent peaks, moves in flight counted on their targets
/// (set each round unless the balancer is off).
pub const HOST_LOAD: &str = "baton_host_load_ratio";
/// Metric: steps in the balancer's last plan.
pub const PLAN_STEPS: &str = "baton_balancer_plan_steps";

/// Describes the balancer's metrics (call once, after installing a recorder).
pub fn describe_metrics() {
    metrics::describe_counter!(MOVES_TOTAL, "Migrations the balancer started, by kind (rebalance, consolidate).");
    metrics::describe_gauge!(HOSTS_IN_USE, "Hosts in use: connected, not draining, not freed by the balancer.");
    metrics::describe_gauge!(HOSTS_FREE, "Hosts the balancer freed (empty, no warm pool; may be switched off).");
    metrics::describe_gauge!(
        HOST_LOAD,
        "Per host: its load over its declared capacity (the larger of CPU and memory)."
    );
    metrics::describe_gauge!(PLAN_STEPS, "Steps in the balancer's last plan (also in dry-run mode).");
}

/// Decisions kept for the admin API.
const KEPT_DECISIONS: usize = 1000;

/// One decision the balancer made (or, in dry-run mode, would have made).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// When, Unix milliseconds.
    pub at_unix_ms: u64,
    /// The mode it was made in.
    pub mode: Mode,
    /// What it was.
    pub step: Step,
    /// What came of it: the migration's id, a refusal, `dry run`.
    pub outcome: String,
    /// The migration it started, if any.
    pub migration: Option<u64>,
}

/// The balancer as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BalancerStatus {
    /// Whether it acts.
    pub mode: Mode,
    /// Its settings.
    pub settings: Settings,
    /// Seconds between rounds.
    pub interval_s: f64,
    /// Hosts in use (connected, not draining, not free).
    pub hosts_in_use: Vec<String>,
    /// Hosts it freed.
    pub free_hosts: Vec<String>,
    /// The host it is emptying, if any.
    pub emptying: Option<String>,
    /// Its decisions, newest last (at most the last 1,000).
    pub decisions: Vec<DecisionRecord>,
}

/// A change of the balancer (absent fields stay as they are).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BalancerUpdate {
    /// The new mode.
    pub mode: Option<Mode>,
    /// The new settings, whole (fields left out take their defaults).
    #[serde(default, deserialize_with = "settings_object")]
    pub settings: Option<Settings>,
}

/// Settings only from a JSON object (serde would also take an array of the fields in order).
fn settings_object<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Settings>, D::Error> {
    let object: Option<serde_json::Map<String, serde_json::Value>> = Option::deserialize(deserializer)?;
    object
        .map(|object| serde_json::from_value(serde_json::Value::Object(object)).map_err(serde::de::Error::custom))
        .transpose()
}

/// What came of carrying out one step.
enum Outcome {
    /// A migration started.
    Started {
        /// Its id.
        id: u64,
        /// The region.
        region: u64,
    },
    /// The migrations refused the move.
    Refused {
        /// The region.
        region: u64,
        /// Why.
        error: String,
    },
    /// A host was freed or taken back, or that failed: in words.
    Done(String),
}

/// Why the balancer could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The settings do not hold (nothing changed).
    #[error("{0}")]
    Invalid(String),
    /// The balancer's state is unavailable (a panic poisoned its lock).
    #[error("the balancer is unavailable")]
    Unavailable,
}

struct Inner {
    balancer: Balancer,
    decisions: VecDeque<DecisionRecord>,
    /// Migrations the balancer started and that may still run: id → region.
    started: HashMap<u64, u64>,
    /// The last dry-run plan's steps, so a dry run records a decision when it changes only.
    last_dry_run: Vec<Step>,
}

/// The balancer and what it needs to act.
pub struct Balancing {
    hosts: Arc<Hosts>,
    migrations: Arc<Migrations>,
    inner: Mutex<Inner>,
    interval: Duration,
    hook: Option<PathBuf>,
    standbys: Option<Arc<Standbys>>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// What the balancer sees of the cluster now.
#[must_use]
pub fn snapshot(
    hosts: &Hosts,
    migrations: &Migrations,
    started: &HashMap<u64, u64>,
    standbys: Option<&Standbys>,
) -> Snapshot {
    let running = migrations.running();
    // Where each region's standby is (claimed: a claim still out has no host yet).
    let standby_hosts: HashMap<u64, String> = standbys
        .map(Standbys::views)
        .unwrap_or_default()
        .into_iter()
        .filter(|view| !view.host.is_empty())
        .map(|view| (view.region, view.host))
        .collect();
    let views = hosts.views();
    let hosts = views
        .iter()
        .map(|view| {
            let loads: HashMap<u64, &crate::hosts::RegionLoad> =
                view.regions.iter().map(|load| (load.region, load)).collect();
            // The processes' lists say what the host owns; the load reports (once a second) say
            // what it costs. A region that just arrived has no report yet: it counts as idle.
            let regions = view
                .processes
                .iter()
                .flat_map(|process| process.regions.iter())
                .map(|&region| match loads.get(&region) {
                    Some(load) => RegionState {
                        region,
                        cores: load.tick_cores(),
                        late: load.tick_budget_ms > 0.0 && load.tick_ms_max > load.tick_budget_ms,
                        players: load.players,
                        entities: load.entities,
                        standby: standby_hosts.get(&region).cloned(),
                    },
                    None => RegionState {
                        region,
                        cores: 0.0,
                        late: false,
                        players: 0,
                        entities: 0,
                        standby: standby_hosts.get(&region).cloned(),
                    },
                })
                .collect();
            HostState {
                name: view.name.clone(),
                capacity_cores: view.capacity_cores,
                capacity_memory: view.capacity_memory,
                used_cores: view.cpu_cores,
                used_memory: view.memory_bytes,
                available: view.connected && !view.draining,
                draining: view.draining,
                free: view.free,
                regions,
                migrations: running
                    .iter()
                    .filter(|record| record.from_host == view.name || record.to_host == view.name)
                    .count(),
            }
        })
        .collect();
    Snapshot {
        hosts,
        moving: running.iter().map(|record| (record.region, record.to_host.clone())).collect::<BTreeMap<u64, String>>(),
        per_host_limit: migrations.per_host_limit(),
        in_flight: running.iter().filter(|record| started.contains_key(&record.id)).count(),
    }
}

impl Balancing {
    /// The balancer of a coordinator; [`Balancing::run`] drives it.
    pub fn new(
        hosts: Arc<Hosts>,
        migrations: Arc<Migrations>,
        mode: Mode,
        settings: Settings,
        interval: Duration,
        hook: Option<PathBuf>,
        standbys: Option<Arc<Standbys>>,
    ) -> Result<Arc<Balancing>, String> {
        if interval.is_zero() {
            return Err("the balancer's interval must be above 0".into());
        }
        Ok(Arc::new(Balancing {
            hosts,
            migrations,
            inner: Mutex::new(Inner {
                balancer: Balancer::new(mode, settings)?,
                decisions: VecDeque::new(),
                started: HashMap::new(),
                last_dry_run: Vec::new(),
            }),
            interval,
            hook,
            standbys,
        }))
    }

    /// Runs a round every interval, forever (spawn it).
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.round(Instant::now());
        }
    }

    /// One round: outcomes of earlier moves, a plan, and (mode `on`) its steps carried out.
    pub fn round(&self, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let finished: Vec<(u64, u64, bool)> = inner
            .started
            .iter()
            .filter_map(|(&id, &region)| match self.migrations.get(id) {
                Some(record) => record.phase.is_final().then_some((id, region, record.phase == Phase::Committed)),
                // Forgotten by the history already (it keeps the last finished ones): an outcome
                // not known, taken as not committed.
                None => Some((id, region, false)),
            })
            .collect();
        for (id, region, committed) in finished {
            inner.started.remove(&id);
            inner.balancer.handle_outcome(region, committed, now);
        }
        let snapshot = snapshot(&self.hosts, &self.migrations, &inner.started, self.standbys.as_deref());
        let round = inner.balancer.round(&snapshot, now);
        let mode = inner.balancer.mode();
        metrics::gauge!(PLAN_STEPS).set(round.plan.steps.len() as f64);
        for host in &round.plan.hosts {
            metrics::gauge!(HOST_LOAD, "host" => host.host.clone()).set(host.cpu.max(host.memory));
        }
        if mode == Mode::DryRun && round.plan.steps != inner.last_dry_run {
            inner.last_dry_run.clone_from(&round.plan.steps);
            for step in &round.plan.steps {
                record(&mut inner.decisions, mode, step.clone(), "dry run: not carried out".into(), None);
            }
        }
        // The steps are carried out without the balancer's lock (starting a migration writes the
        // directory's store); what came of them is recorded after.
        drop(inner);
        let outcomes: Vec<(Step, Outcome)> = round
            .execute
            .into_iter()
            .map(|step| {
                let outcome = self.carry_out(&step);
                (step, outcome)
            })
            .collect();
        let Ok(mut inner) = self.inner.lock() else { return };
        for (step, outcome) in outcomes {
            let (text, migration) = match outcome {
                Outcome::Started { id, region } => {
                    inner.started.insert(id, region);
                    (format!("migration {id} started"), Some(id))
                }
                Outcome::Refused { region, error } => {
                    inner.balancer.handle_refused(region, now);
                    (format!("refused: {error}"), None)
                }
                Outcome::Done(text) => (text, None),
            };
            record(&mut inner.decisions, mode, step, text, migration);
        }
        drop(inner);
        let views = self.hosts.views();
        metrics::gauge!(HOSTS_IN_USE)
            .set(views.iter().filter(|view| view.connected && !view.draining && !view.free).count() as f64);
        metrics::gauge!(HOSTS_FREE).set(views.iter().filter(|view| view.free).count() as f64);
    }

    fn carry_out(&self, step: &Step) -> Outcome {
        match step {
            Step::Move(decision) => {
                match self.migrations.start_because(
                    decision.region,
                    &decision.to,
                    decision.kind.as_str(),
                    &decision.reason,
                ) {
                    Ok(record) => {
                        tracing::info!(
                            id = record.id,
                            region = decision.region,
                            from = decision.from,
                            to = decision.to,
                            kind = decision.kind.as_str(),
                            reason = decision.reason,
                            "the balancer started a migration"
                        );
                        metrics::counter!(MOVES_TOTAL, "kind" => decision.kind.as_str()).increment(1);
                        Outcome::Started { id: record.id, region: decision.region }
                    }
                    Err(error) => {
                        tracing::warn!(region = decision.region, to = decision.to, %error, "a balancer move was refused");
                        Outcome::Refused { region: decision.region, error: error.to_string() }
                    }
                }
            }
            Step::Free { host, reason } | Step::Use { host, reason } => {
                let free = matches!(step, Step::Free { .. });
                match self.hosts.set_free(host, free) {
                    Ok(()) => {
                        tracing::info!(
                            host,
                            reason,
                            "the balancer marked a host {}",
                            if free { "free" } else { "in use" }
                        );
                        self.run_hook(if free { "free" } else { "use" }, host);
                        Outcome::Done(format!("host {}", if free { "freed" } else { "back in use" }))
                    }
                    Err(error) => Outcome::Done(format!("failed: {error}")),
                }
            }
        }
    }

    /// Runs the operator's hook (`HOOK free HOST` or `HOOK use HOST`) in the background, so an
    /// autoscaler can switch a freed host off or make sure one taken back is on.
    fn run_hook(&self, what: &'static str, host: &str) {
        let Some(hook) = self.hook.clone() else { return };
        let host = host.to_owned();
        tokio::spawn(async move {
            let child = tokio::process::Command::new(&hook).args([what, &host]).kill_on_drop(true).status();
            match tokio::time::timeout(Duration::from_secs(60), child).await {
                Ok(Ok(status)) if status.success() => tracing::info!(hook = %hook.display(), what, host, "hook ran"),
                Ok(Ok(status)) => tracing::warn!(hook = %hook.display(), what, host, %status, "the hook failed"),
                Ok(Err(error)) => {
                    tracing::warn!(hook = %hook.display(), what, host, %error, "the hook could not start")
                }
                Err(_) => tracing::warn!(hook = %hook.display(), what, host, "the hook ran over 60 s and was killed"),
            }
        });
    }

    /// The balancer's mode, settings, hosts and decisions.
    #[must_use]
    pub fn status(&self) -> Option<BalancerStatus> {
        let inner = self.inner.lock().ok()?;
        let views = self.hosts.views();
        Some(BalancerStatus {
            mode: inner.balancer.mode(),
            settings: inner.balancer.settings().clone(),
            interval_s: self.interval.as_secs_f64(),
            hosts_in_use: views
                .iter()
                .filter(|view| view.connected && !view.draining && !view.free)
                .map(|view| view.name.clone())
                .collect(),
            free_hosts: views.iter().filter(|view| view.free).map(|view| view.name.clone()).collect(),
            emptying: inner.balancer.emptying().map(str::to_owned),
            decisions: inner.decisions.iter().cloned().collect(),
        })
    }

    /// What the balancer would do now, whatever its mode (changes nothing).
    #[must_use]
    pub fn plan(&self) -> Option<Plan> {
        let inner = self.inner.lock().ok()?;
        let snapshot = snapshot(&self.hosts, &self.migrations, &inner.started, self.standbys.as_deref());
        Some(inner.balancer.plan(&snapshot, Instant::now()))
    }

    /// Changes the mode and/or the settings (all or nothing).
    pub fn update(&self, update: BalancerUpdate) -> Result<BalancerStatus, UpdateError> {
        {
            let mut inner = self.inner.lock().map_err(|_| UpdateError::Unavailable)?;
            if let Some(settings) = update.settings {
                inner.balancer.set_settings(settings).map_err(UpdateError::Invalid)?;
            }
            if let Some(mode) = update.mode {
                if mode != inner.balancer.mode() {
                    tracing::info!(?mode, "balancer mode changed");
                }
                inner.balancer.set_mode(mode);
                inner.last_dry_run.clear();
            }
        }
        self.status().ok_or(UpdateError::Unavailable)
    }
}

fn record(decisions: &mut VecDeque<DecisionRecord>, mode: Mode, step: Step, outcome: String, migration: Option<u64>) {
    if decisions.len() == KEPT_DECISIONS {
        decisions.pop_front();
    }
    decisions.push_back(DecisionRecord { at_unix_ms: unix_ms(), mode, step, outcome, migration });
}
