//! Running a scenario: a whole deployment on loopback (`baton_harness::fleet`), avatars
//! through the gateway (`baton-client`), the operator's events through the admin API, a live
//! progress line every second, and what players felt gathered into a [`Report`].
//!
//! With the restart baseline, the scenario runs a second time on a fresh deployment with each
//! region move done the way it was done before handoffs ([`Mode::Restart`]): stop the region (its
//! host saves it), start it on the new host from the save, and its players log in again. A host
//! killed in the baseline is handled as before failover existed: the coordinator runs with
//! `--failover off`, and a prompt operator restores each of the host's regions from its newest
//! checkpoint on another host as soon as the host is declared dead; its players log in again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_gateway::{GatewayCommand, GatewayEvent};
use baton_harness::fleet::{AdminApi, Fleet, FleetSpec};
use baton_harness::players::{Generator, LiveStats, Movement, PlayerEnd, PlayerOutcome, PlayerPlan, unix_ms};
use serde_json::{Value, json};

use crate::report::{HostSample, Report, StandbyReport, build_report};
use crate::scenario::Scenario;

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides the scenario's avatar count.
    pub avatars: Option<usize>,
    /// Overrides its duration, in seconds.
    pub seconds: Option<u64>,
    /// No progress lines.
    pub quiet: bool,
    /// Also run the restart baseline (when the scenario moves regions) and report it alongside.
    pub baseline: bool,
}

/// How a run does the scenario's region moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// With Baton: migrations and drains through the coordinator; players stay connected.
    Baton,
    /// The old way: stop the region (its host saves it), start it on the new host from the save;
    /// its players are disconnected and log in again.
    Restart,
}

impl Mode {
    /// Its name in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Mode::Baton => "baton",
            Mode::Restart => "restart",
        }
    }
}

/// Runs `scenario`, then its restart baseline if asked for; returns early (with what was
/// measured so far) when `stop` is set.
pub fn run(scenario: &Scenario, options: &RunOptions, stop: &AtomicBool) -> anyhow::Result<Report> {
    let mut report = run_once(scenario, options, stop, Mode::Baton)?;
    let moves = scenario
        .events
        .iter()
        .any(|event| event.migrate.is_some() || event.drain.is_some() || event.kill_host.is_some());
    if options.baseline && !stop.load(Ordering::Relaxed) {
        if moves {
            if !options.quiet {
                eprintln!(
                    "\nnow the restart baseline: the same scenario on a fresh deployment, each move done the old way \
                     (stop the region, start it on the new host from its save, players log in again; a dead host's \
                     regions restored from their checkpoints by hand)"
                );
            }
            report.baseline = Some(Box::new(run_once(scenario, options, stop, Mode::Restart)?));
        } else if !options.quiet {
            eprintln!("the scenario moves no region: no restart baseline to compare with");
        }
    }
    Ok(report)
}

/// Runs `scenario` once, doing its moves the `mode` way.
pub fn run_once(scenario: &Scenario, options: &RunOptions, stop: &AtomicBool, mode: Mode) -> anyhow::Result<Report> {
    let mut scenario = scenario.clone();
    if let Some(avatars) = options.avatars {
        scenario.avatars = avatars;
    }
    if let Some(seconds) = options.seconds {
        scenario.duration_s = seconds;
    }
    scenario.check().map_err(anyhow::Error::msg)?;
    let say = |line: String| {
        if !options.quiet {
            eprintln!("{line}");
        }
    };

    say(format!(
        "starting a coordinator, {} host agents and a gateway; {} regions of {} objects",
        scenario.hosts, scenario.regions, scenario.objects_per_region
    ));
    let mut spec = fleet_spec(&scenario);
    spec.coordinator_args = match mode {
        // The old way has no failover: a person restores what a dead host served.
        Mode::Restart if scenario.events.iter().any(|event| event.kill_host.is_some()) => {
            vec!["--failover".into(), "off".into()]
        }
        Mode::Restart => Vec::new(),
        Mode::Baton => spec.coordinator_args,
    };
    let mut fleet = Fleet::start(&spec)?;
    fleet.wait_hosts_ready(scenario.hosts, 1, Duration::from_secs(120))?;
    for region in 1..=scenario.regions {
        let host = scenario
            .placement
            .get(region as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("h{}", (region - 1) % scenario.hosts as u64 + 1));
        let objects = scenario.objects_per_region;
        fleet
            .ok(
                "POST",
                "/v1/regions",
                Some(json!({"region": region, "host": host,
                            "world": {"objects": objects, "npcs": objects / 10, "plants": objects / 10, "seed": region}})),
            )
            .with_context(|| format!("creating region {region}"))?;
    }

    // The balancer: set once its time comes (at once if that is before the avatars connect).
    let mut balancer_pending = scenario.balancer.clone();
    let set_balancer = |fleet: &Fleet, balancer: &crate::scenario::BalancerScenario| -> anyhow::Result<()> {
        let mut update = json!({ "mode": balancer.mode });
        if let Some(settings) = &balancer.settings {
            update["settings"] = serde_json::to_value(settings)?;
        }
        fleet.ok("PUT", "/v1/balancer", Some(update)).context("setting the balancer")?;
        Ok(())
    };
    if let Some(balancer) = balancer_pending.take_if(|balancer| balancer.at_s <= 0.0) {
        set_balancer(&fleet, &balancer)?;
        say(format!("the coordinator's balancer is {}", balancer.mode));
    }
    let base = fleet.client_options();
    let mut plans = player_plans(&scenario);
    let live = Arc::new(LiveStats::default());
    let login = (mode == Mode::Restart).then(|| fleet.login());
    for plan in &mut plans {
        plan.relogin.clone_from(&login);
        plan.live = Some(live.clone());
    }
    let avatars = plans.len();
    let players: Vec<(PlayerPlan, String)> = plans
        .into_iter()
        .map(|plan| {
            let token = fleet.token(plan.player, plan.region);
            (plan, token)
        })
        .collect();
    let started_unix_ms = unix_ms();
    let started = Instant::now();
    // Two threads of players, sharing a socket per 50 (a real client has one each): the
    // generator's own cost stays low on a machine it shares with the whole cluster.
    let generator = Generator::start(&base, players, 2)?;
    say(format!("{avatars} avatars connect over {} s, then play for {} s", scenario.ramp_s, scenario.duration_s));

    // The operator's events, the live display and the hosts' load, once per second.
    let mut events: Vec<_> = scenario.events.clone();
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut events = events.into_iter().peekable();
    // Restart-baseline moves run on their own threads (each takes seconds) and record themselves.
    let restarts: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let mut restart_threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut host_samples: Vec<HostSample> = Vec::new();
    // When hosts were killed (Unix milliseconds).
    let mut kills: Vec<u64> = Vec::new();
    let mut last_stats: Option<Value> = None;
    let mut standbys = (mode == Mode::Baton && scenario.standby).then(StandbyReport::default);
    let mut standby_rates: Vec<f64> = Vec::new();
    let play_ends = Duration::from_secs(scenario.ramp_s + scenario.duration_s);
    let mut next_second = Duration::from_secs(1);
    while started.elapsed() < play_ends && !stop.load(Ordering::Relaxed) {
        if let Some(balancer) = balancer_pending.take_if(|balancer| started.elapsed().as_secs_f64() >= balancer.at_s) {
            set_balancer(&fleet, &balancer)?;
            say(format!("t={:.0}s: the coordinator's balancer is {}", balancer.at_s, balancer.mode));
        }
        while let Some(event) = events.next_if(|event| started.elapsed().as_secs_f64() >= event.at_s) {
            if let Some(host) = &event.kill_host {
                let index: usize = host.trim_start_matches('h').parse().unwrap_or(0);
                // The regions the host serves, for the baseline's operator to restore.
                let served = if mode == Mode::Restart { regions_on(&fleet, host) } else { Vec::new() };
                match fleet.kill_host(index) {
                    Ok(pids) => {
                        let killed = unix_ms();
                        kills.push(killed);
                        say(format!("t={:.0}s: killed {host} (SIGKILL to processes {pids:?})", event.at_s));
                        if mode == Mode::Restart {
                            let others: Vec<String> = (1..=scenario.hosts)
                                .map(|index| format!("h{index}"))
                                .filter(|other| other != host && !kills_of(&scenario, event.at_s).contains(other))
                                .collect();
                            say(format!(
                                "t={:.0}s: once {host} is declared dead, regions {served:?} are restored from their checkpoints by hand",
                                event.at_s
                            ));
                            let (admin, records, host) = (fleet.admin(), restarts.clone(), host.clone());
                            restart_threads.push(std::thread::spawn(move || {
                                for record in restore_by_hand(&admin, &host, &served, &others, killed) {
                                    if let Ok(mut records) = records.lock() {
                                        records.push(record);
                                    }
                                }
                            }));
                        }
                    }
                    Err(error) => say(format!("t={:.0}s: killing {host} failed: {error:#}", event.at_s)),
                }
                continue;
            }
            if mode == Mode::Restart {
                let moves = restart_moves(&fleet, &event, scenario.hosts);
                if moves.is_empty() {
                    say(format!("t={:.0}s: nothing to move", event.at_s));
                }
                for (region, from, to, _) in &moves {
                    say(format!(
                        "t={:.0}s: restarting region {region}: stopping it on {from}, then starting it on {to}",
                        event.at_s
                    ));
                }
                let (admin, records) = (fleet.admin(), restarts.clone());
                restart_threads.push(std::thread::spawn(move || {
                    for (region, from, to, kind) in moves {
                        let record = restart(&admin, region, &from, &to, kind);
                        if let Ok(mut records) = records.lock() {
                            records.push(record);
                        }
                    }
                }));
                continue;
            }
            if let Some(migrate) = &event.migrate {
                match fleet.call(
                    "POST",
                    "/v1/migrations",
                    Some(json!({"region": migrate.region, "to_host": migrate.to})),
                ) {
                    Ok((202, _)) => {
                        say(format!("t={:.0}s: moving region {} to {}", event.at_s, migrate.region, migrate.to))
                    }
                    Ok((status, body)) => say(format!("t={:.0}s: the move was refused: {status} {body}", event.at_s)),
                    Err(error) => say(format!("t={:.0}s: the move failed: {error:#}", event.at_s)),
                }
            }
            if let Some(host) = &event.drain {
                match fleet.call("POST", &format!("/v1/hosts/{host}/drain"), None) {
                    Ok((202, body)) => {
                        say(format!("t={:.0}s: draining {host}: regions {}", event.at_s, body["regions"]))
                    }
                    Ok((status, body)) => say(format!("t={:.0}s: the drain was refused: {status} {body}", event.at_s)),
                    Err(error) => say(format!("t={:.0}s: the drain failed: {error:#}", event.at_s)),
                }
            }
        }
        if started.elapsed() >= next_second {
            next_second += Duration::from_secs(1);
            if let (Some(report), Ok(answer)) = (standbys.as_mut(), fleet.ok("GET", "/v1/standbys", None)) {
                report.sample(&answer, &mut standby_rates);
            }
            if let Ok(hosts) = fleet.ok("GET", "/v1/hosts", None) {
                let at_s = started.elapsed().as_secs_f64();
                for host in hosts.as_array().into_iter().flatten() {
                    host_samples.push(HostSample {
                        at_s,
                        host: host["name"].as_str().unwrap_or_default().to_owned(),
                        cpu_cores: host["cpu_cores"].as_f64().unwrap_or(0.0),
                        capacity_cores: host["capacity_cores"].as_f64().unwrap_or(0.0),
                        in_use: host["connected"] == true && host["draining"] != true && host["free"] != true,
                        players: host["regions"]
                            .as_array()
                            .map(|loads| loads.iter().filter_map(|load| load["players"].as_u64()).sum())
                            .unwrap_or(0),
                    });
                }
            }
            let stats = gateway_stats(&mut fleet);
            if let (Some(now), false) = (&stats, options.quiet) {
                let rate = |field: &str| {
                    let before = last_stats.as_ref().and_then(|old| old[field].as_u64()).unwrap_or(0);
                    now[field].as_u64().unwrap_or(0).saturating_sub(before)
                };
                // The last second's gaps and round trips, as the players saw them.
                let (gaps, round_trips) = (live.gaps.take(), live.round_trips.take());
                eprintln!(
                    "t={:>3.0}s  sessions {:>5}  inputs/s {:>6}  updates/s {:>6}  gap p50/p99/max {:>3}/{:>3}/{:>4} ms  rtt p99 {:>3} ms  crossings {:>4}  handoff flips {:>3}",
                    started.elapsed().as_secs_f64(),
                    now["sessions"],
                    rate("inputs_forwarded"),
                    rate("updates_datagram") + rate("updates_reliable"),
                    gaps.p50_ms,
                    gaps.p99_ms,
                    gaps.max_ms,
                    round_trips.p99_ms,
                    now["crossings"],
                    now["handoff_flips"],
                );
            }
            last_stats = stats.or(last_stats);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    if let Some(balancer) = balancer_pending {
        say(format!("the balancer was to be set at {} s, after the end of play: it never was", balancer.at_s));
    }
    let skipped = events.count();
    if skipped > 0 {
        say(format!("{skipped} operator events fall after the end of play and were not performed"));
    }
    say("play is over; waiting for the last acknowledgements".to_owned());
    if stop.load(Ordering::Relaxed) {
        generator.abort();
    }
    let mut outcomes: Vec<PlayerOutcome> = Vec::new();
    let mut failed_to_connect = 0;
    for end in generator.join_unless(stop)? {
        match end {
            PlayerEnd::Finished(outcome) => outcomes.push(*outcome),
            PlayerEnd::Failed(_) => failed_to_connect += 1,
            PlayerEnd::Aborted => {}
            PlayerEnd::Panicked(error) => anyhow::bail!("a player task panicked: {error}"),
        }
    }
    for thread in restart_threads {
        let _ = thread.join();
    }
    if mode == Mode::Restart {
        let records = restarts.lock().map(|records| records.clone()).unwrap_or_default();
        let mut report =
            build_report(&scenario, started_unix_ms, &outcomes, failed_to_connect, &records, host_samples, &kills);
        report.mode = mode.name().to_owned();
        return Ok(report);
    }
    // Drains start migrations of their own: every migration the run caused is in the history.
    let deadline = Instant::now() + Duration::from_secs(60);
    let migrations = loop {
        let migrations = fleet.ok("GET", "/v1/migrations", None)?;
        let running = migrations.as_array().is_some_and(|records| {
            records.iter().any(|record| !matches!(record["phase"].as_str(), Some("committed" | "aborted")))
        });
        if !running || Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            break migrations;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let migrations = migrations.as_array().cloned().unwrap_or_default();
    let balancer = match &scenario.balancer {
        Some(_) => Some(fleet.ok("GET", "/v1/balancer", None)?),
        None => None,
    };
    let mut report =
        build_report(&scenario, started_unix_ms, &outcomes, failed_to_connect, &migrations, host_samples, &kills);
    report.balancer = balancer.map(|status| crate::report::balancer_report(&status, started_unix_ms, &report.hosts));
    report.standbys = standbys.map(|mut standbys| {
        standbys.finish(standby_rates);
        standbys
    });
    Ok(report)
}

/// The moves one scenario event asks for, the old way: (region, from host, to host, kind). A
/// drain moves each of the host's regions to the other hosts in turn.
fn restart_moves(
    fleet: &Fleet,
    event: &crate::scenario::Event,
    hosts: usize,
) -> Vec<(u64, String, String, &'static str)> {
    let Ok(regions) = fleet.ok("GET", "/v1/regions", None) else { return Vec::new() };
    let host_of = |region: u64| -> Option<String> {
        regions.as_array()?.iter().find(|row| row["region"] == region)?["host"].as_str().map(str::to_owned)
    };
    if let Some(migrate) = &event.migrate {
        return match host_of(migrate.region) {
            Some(from) if from != migrate.to => vec![(migrate.region, from, migrate.to.clone(), "migration")],
            _ => Vec::new(),
        };
    }
    let Some(drained) = &event.drain else { return Vec::new() };
    let others: Vec<String> = (1..=hosts).map(|index| format!("h{index}")).filter(|host| host != drained).collect();
    regions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["host"].as_str() == Some(drained.as_str()))
        .filter_map(|row| row["region"].as_u64())
        .enumerate()
        .filter_map(|(index, region)| {
            let to = others.get(index % others.len().max(1))?;
            Some((region, drained.clone(), to.clone(), "drain"))
        })
        .collect()
}

/// Moves `region` the old way and records it in the shape of a migration record: stop it (its
/// host saves it; its players are disconnected), then start it on `to` from the save. The
/// region's downtime, from the stop request to the restored region owning again, is the record's
/// `freeze_ms`.
fn restart(admin: &AdminApi, region: u64, from: &str, to: &str, kind: &str) -> Value {
    let started_unix_ms = unix_ms();
    let started = Instant::now();
    let stopped = admin.ok("POST", &format!("/v1/regions/{region}/stop"), None);
    let stop_ms = started.elapsed().as_secs_f64() * 1000.0;
    let restored = stopped.as_ref().map_err(|error| format!("stopping: {error:#}")).and_then(|_| {
        admin
            .ok("POST", "/v1/regions", Some(json!({"region": region, "host": to, "from_checkpoint": true})))
            .map_err(|error| format!("starting it again: {error:#}"))
    });
    let down_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (phase, reason) = match &restored {
        Ok(_) => ("committed", Value::Null),
        Err(reason) => ("aborted", json!(reason)),
    };
    json!({
        "region": region,
        "from_host": from,
        "to_host": to,
        "kind": kind,
        "phase": phase,
        "reason": reason,
        "started_unix_ms": started_unix_ms,
        "phases": [{"phase": "stop", "ms": stop_ms}, {"phase": "start", "ms": down_ms - stop_ms}],
        "freeze_ms": down_ms,
    })
}

/// The regions `host` serves now, as the directory says.
fn regions_on(fleet: &Fleet, host: &str) -> Vec<u64> {
    let Ok(regions) = fleet.ok("GET", "/v1/regions", None) else { return Vec::new() };
    regions
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["host"].as_str() == Some(host))
        .filter_map(|row| row["region"].as_u64())
        .collect()
}

/// The hosts the scenario kills at or before `at_s`.
fn kills_of(scenario: &Scenario, at_s: f64) -> Vec<String> {
    scenario.events.iter().filter(|event| event.at_s <= at_s).filter_map(|event| event.kill_host.clone()).collect()
}

/// The old way of surviving a dead host: once the coordinator declares `host` dead (killed at
/// `killed`, Unix ms), a person restores each region it served from its newest checkpoint on the
/// other hosts in turn. One record per region in the shape of a failover's (`kind` `failover`,
/// `detect_ms` the wait for the host to be declared dead).
fn restore_by_hand(admin: &AdminApi, host: &str, regions: &[u64], others: &[String], killed: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = admin.ok("GET", "/v1/hosts", None).ok().is_some_and(|hosts| {
            hosts.as_array().into_iter().flatten().any(|view| view["name"] == host && view["dead"] == true)
        });
        if dead || Instant::now() >= deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let detect_ms = unix_ms().saturating_sub(killed) as f64;
    regions
        .iter()
        .enumerate()
        .map(|(index, &region)| {
            let to = others.get(index % others.len().max(1)).cloned().unwrap_or_default();
            // The person restores one region after another: the later ones wait.
            let queued_ms = (unix_ms().saturating_sub(killed) as f64 - detect_ms).max(0.0);
            let began = Instant::now();
            let restored = if !dead {
                Err(format!("{host} was never declared dead"))
            } else if to.is_empty() {
                Err("no host is left to restore it on".to_owned())
            } else {
                admin
                    .ok("POST", "/v1/regions", Some(json!({"region": region, "host": to, "from_checkpoint": true})))
                    .map_err(|error| format!("restoring it: {error:#}"))
            };
            let restore_ms = began.elapsed().as_secs_f64() * 1000.0;
            let (phase, reason) = match &restored {
                Ok(_) => ("committed", Value::Null),
                Err(reason) => ("aborted", json!(reason)),
            };
            json!({
                "region": region,
                "from_host": host,
                "to_host": to,
                "kind": "failover",
                "phase": phase,
                "reason": reason,
                "started_unix_ms": killed,
                "phases": [
                    {"phase": "detect", "ms": detect_ms},
                    {"phase": "queued", "ms": queued_ms},
                    {"phase": "restore", "ms": restore_ms},
                ],
                "freeze_ms": null,
                "failover": {"detect_ms": detect_ms, "standby": false},
            })
        })
        .collect()
}

/// The gateway's counters (its `stats` control line).
fn gateway_stats(fleet: &mut Fleet) -> Option<Value> {
    let gateway = &mut fleet.gateway;
    gateway.drain();
    let before = gateway.log.len();
    gateway.send(&GatewayCommand::Stats).ok()?;
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        gateway.drain();
        let stats = gateway.log[before..].iter().rev().find_map(|event| match event {
            GatewayEvent::Stats { stats } => Some(stats),
            _ => None,
        });
        if let Some(stats) = stats {
            return serde_json::to_value(stats).ok();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The deployment `scenario` runs on (Baton's way: hot standbys when the scenario has them).
#[must_use]
pub fn fleet_spec(scenario: &Scenario) -> FleetSpec {
    FleetSpec {
        hosts: scenario.hosts,
        pool: 2,
        capacity: scenario.regions as usize + 4,
        world_regions: scenario.regions,
        columns: scenario.columns,
        tick_rate: 20,
        checkpoint_every_s: scenario.checkpoint_every_s,
        capacity_cores: scenario.host_cores.clone(),
        coordinator_args: if scenario.standby { vec!["--standby".into(), "on".into()] } else { Vec::new() },
    }
}

/// Every avatar's plan: movement by the scenario's shares, regions round-robin, a ramp, churn.
#[must_use]
pub fn player_plans(scenario: &Scenario) -> Vec<PlayerPlan> {
    let ramp = Duration::from_secs(scenario.ramp_s);
    let play = Duration::from_secs(scenario.duration_s);
    let mix = &scenario.movement;
    let total = mix.random_walk + mix.hotspot + mix.border_patrol;
    let leaving =
        scenario.churn.as_ref().map_or(0, |churn| (churn.fraction * scenario.avatars as f64).round() as usize);
    let halfway = ramp + play / 2;
    let crowd = scenario.crowd.as_ref().map_or(0, |crowd| crowd.avatars);
    let mut plans = Vec::with_capacity(scenario.avatars + leaving + crowd);
    let mut patrols = 0;
    // Night falls: the first `fraction` of the avatars leave one after another.
    let nightfall = scenario.leaving.as_ref().map(|leaving| {
        let count = (leaving.fraction * scenario.avatars as f64).round() as usize;
        (count, leaving.from_s, leaving.to_s)
    });
    for index in 0..scenario.avatars + leaving {
        let mut player = index as u64 + 1;
        let region = if scenario.avatar_regions.is_empty() {
            (index as u64 % scenario.regions) + 1
        } else {
            scenario.avatar_regions[index % scenario.avatar_regions.len()]
        };
        let share = (index % scenario.avatars) as f64 / scenario.avatars as f64 * total;
        let movement = if share < mix.random_walk {
            Movement::Wander
        } else if share < mix.random_walk + mix.hotspot {
            let corner = [[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]][index % 4];
            Movement::Hotspot { corner }
        } else {
            // Patrol towards the neighbour in the same row (west from the last column).
            let column = (region - 1) % scenario.columns;
            let east = column + 1 < scenario.columns && region < scenario.regions;
            // The sample places avatars by player id: these ids stand near the border they patrol.
            player = baton_harness::players::patrol_player(east, patrols);
            patrols += 1;
            Movement::Patrol { heading: if east { 1.0 } else { -1.0 } }
        };
        let (start_after, play_for) = if index >= scenario.avatars {
            // Newcomers join halfway through and play to the end.
            (halfway, play / 2)
        } else {
            let start_after = ramp.mul_f64(index as f64 / scenario.avatars as f64);
            // The first `leaving` avatars leave halfway through.
            let mut end = if index < leaving { halfway } else { ramp + play };
            if let Some((count, from_s, to_s)) = nightfall
                && index < count
            {
                let at = from_s + (to_s - from_s) * index as f64 / count.max(1) as f64;
                end = end.min(Duration::from_secs_f64(at));
            }
            (start_after, end.saturating_sub(start_after))
        };
        plans.push(PlayerPlan {
            inputs_per_second: scenario.inputs_per_second,
            start_after,
            settle_for: Duration::from_secs(10),
            payload_bytes: scenario.payload_bytes,
            ..PlayerPlan::new(player, region, movement, play_for)
        });
    }
    // A crowd arrives: new avatars, wandering, spread over the regions, playing to the end.
    if let Some(arriving) = &scenario.crowd {
        for index in 0..arriving.avatars {
            let player = (scenario.avatars + leaving + index) as u64 + 1;
            let region = if arriving.regions.is_empty() {
                (index as u64 % scenario.regions) + 1
            } else {
                arriving.regions[index % arriving.regions.len()]
            };
            let start_after = Duration::from_secs_f64(
                arriving.at_s + arriving.over_s * index as f64 / arriving.avatars.max(1) as f64,
            );
            if start_after >= ramp + play {
                continue;
            }
            plans.push(PlayerPlan {
                inputs_per_second: scenario.inputs_per_second,
                start_after,
                settle_for: Duration::from_secs(10),
                payload_bytes: scenario.payload_bytes,
                ..PlayerPlan::new(player, region, Movement::Wander, (ramp + play).saturating_sub(start_after))
            });
        }
    }
    plans
}
