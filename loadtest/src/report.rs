//! What a run measured: `report.json`, a self-contained `report.html` with charts, a terminal
//! summary, and the SLO verdict. Definitions are the brief's: the update gap is the time between
//! two consecutive state updates a player receives; the round trip is from sending an input to the
//! first update that acknowledges it; an input is lost when it was sent and never acknowledged.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use baton_harness::players::PlayerOutcome;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::scenario::Scenario;

/// Percentiles of a distribution, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// One region move or border crossing, and what players in that region felt during it.
#[derive(Clone, Debug, Serialize)]
pub struct Handoff {
    /// The region that moved (for a crossing: the region the avatar left).
    pub region: u64,
    /// Where from (a host, or for a crossing the region `r<N>`).
    pub from: String,
    /// Where to.
    pub to: String,
    /// `migration`, `drain`, `rebalance`, `consolidate`, `failover` or `crossing`.
    pub kind: String,
    /// For a migration or drain: the freeze as the source measured it (in the restart baseline:
    /// the region's downtime, from the stop request to it running again). For a crossing: the
    /// avatar's transit as its player saw it, from the last update of the region it left to the
    /// first of the region it entered. None when not reported.
    pub freeze_ms: Option<f64>,
    /// Longest update gap a player of the region saw from the start of the move to a second
    /// after its end (for a crossing: the crossing player, within a second either side).
    pub max_player_gap_ms: f64,
    /// `committed` or `aborted` (crossings: `committed`).
    pub outcome: String,
    /// For a failover: from the lost owner's last sign of life to the coordinator judging it
    /// lost, as the coordinator measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detect_ms: Option<f64>,
    /// For a failover after a host the run killed: from the kill to the new owner's first update
    /// reaching the slowest of the region's players.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<f64>,
    /// For a failover: the ticks of play the region lost (the newest tick its players saw
    /// before, minus the tick of the checkpoint it was restored from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_ticks: Option<u64>,
    /// For a failover: whether the region's hot standby was promoted (else a checkpoint was
    /// restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<bool>,
    /// Seconds after the start of the run.
    pub at_s: f64,
}

/// A player who lost inputs or was disconnected.
#[derive(Clone, Debug, Serialize)]
pub struct PlayerLoss {
    /// The player.
    pub player: u64,
    /// The region it ended in.
    pub region: u64,
    /// Inputs it sent.
    pub sent: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Inputs its avatar counts as applied at the end.
    pub applied: u64,
    /// Failovers it lived through.
    pub recoveries: u64,
    /// Border crossings.
    pub crossings: u64,
    /// Why its connections ended.
    pub close_reasons: Vec<String>,
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds after the start.
    pub at_s: u64,
    /// Update gaps that ended in this second.
    pub update_gap_ms: Percentiles,
    /// Round trips that ended in this second.
    pub rtt_ms: Percentiles,
    /// Inputs acknowledged in this second.
    pub inputs_acked: u64,
}

/// One host's load at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct HostSample {
    /// Seconds after the start.
    pub at_s: f64,
    /// The host.
    pub host: String,
    /// CPU of its region servers, in cores.
    pub cpu_cores: f64,
    /// The cores it declares (`--capacity-cores`).
    pub capacity_cores: f64,
    /// Connected, not draining and not freed by the balancer.
    pub in_use: bool,
    /// Players in its regions.
    pub players: u64,
}

/// One thing the balancer did during the run.
#[derive(Clone, Debug, Serialize)]
pub struct BalancerDecision {
    /// Seconds after the start of the run.
    pub at_s: f64,
    /// `rebalance` or `consolidate` (a region moved), `free` or `use` (a host left or came back).
    pub kind: String,
    /// The region, for a move.
    pub region: Option<u64>,
    /// The region's host, or the host freed or taken back.
    pub from: String,
    /// The region's new host (empty for `free` and `use`).
    pub to: String,
    /// Why.
    pub reason: String,
    /// What came of it.
    pub outcome: String,
}

/// What the regions' hot standbys cost their links: `GET /v1/standbys` once a second during play.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StandbyReport {
    /// Most standbys holding a tick at once.
    pub holding_max: usize,
    /// Samples taken (one per holding standby per second).
    pub samples: usize,
    /// Bytes per second a standby's feed sends (each holding standby's rate in each sample),
    /// median.
    pub bytes_per_second_p50: f64,
    /// The same, largest.
    pub bytes_per_second_max: f64,
}

impl StandbyReport {
    /// Adds one `GET /v1/standbys` answer.
    pub fn sample(&mut self, standbys: &Value, rates: &mut Vec<f64>) {
        let holding: Vec<f64> = standbys
            .as_array()
            .into_iter()
            .flatten()
            .filter(|standby| standby["state"] == "holding")
            .filter_map(|standby| standby["bytes_per_second"].as_f64())
            .collect();
        self.holding_max = self.holding_max.max(holding.len());
        rates.extend(holding);
    }

    /// Sums up the rates sampled.
    pub fn finish(&mut self, mut rates: Vec<f64>) {
        rates.sort_by(f64::total_cmp);
        self.samples = rates.len();
        self.bytes_per_second_p50 = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
        self.bytes_per_second_max = rates.last().copied().unwrap_or(0.0);
    }
}

/// What the balancer did and how the hosts fared.
#[derive(Clone, Debug, Serialize)]
pub struct BalancerReport {
    /// `off`, `dry-run` or `on` at the end of the run.
    pub mode: String,
    /// Its decisions in the run.
    pub decisions: Vec<BalancerDecision>,
    /// Hosts in use, per second.
    pub hosts_in_use: Vec<usize>,
    /// Per host, its CPU over its declared capacity, per second.
    pub host_load: std::collections::BTreeMap<String, Vec<f64>>,
}

/// The balancer's part of the report, from its status (`GET /v1/balancer`) and the host samples.
#[must_use]
pub fn balancer_report(status: &Value, started_unix_ms: u64, hosts: &[HostSample]) -> BalancerReport {
    let decisions = status["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|decision| decision["at_unix_ms"].as_u64().is_some_and(|at| at >= started_unix_ms))
        .map(|decision| {
            let step = &decision["step"];
            let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
            let is_move = step["step"] == "move";
            BalancerDecision {
                at_s: decision["at_unix_ms"].as_u64().unwrap_or(0).saturating_sub(started_unix_ms) as f64 / 1000.0,
                kind: if is_move { text(&step["kind"]) } else { text(&step["step"]) },
                region: step["region"].as_u64(),
                from: if is_move { text(&step["from"]) } else { text(&step["host"]) },
                to: text(&step["to"]),
                reason: text(&step["reason"]),
                outcome: text(&decision["outcome"]),
            }
        })
        .collect();
    let seconds = hosts.iter().map(|sample| sample.at_s.floor() as usize).max().map_or(0, |last| last + 1);
    // A late sampling pass can put two samples of a host in one second: count hosts, not samples.
    let mut in_use: Vec<std::collections::BTreeSet<&str>> = vec![std::collections::BTreeSet::new(); seconds];
    let mut host_load: std::collections::BTreeMap<String, Vec<f64>> = std::collections::BTreeMap::new();
    for sample in hosts {
        let second = sample.at_s.floor() as usize;
        if sample.in_use {
            in_use[second].insert(&sample.host);
        }
        let load = host_load.entry(sample.host.clone()).or_insert_with(|| vec![0.0; seconds]);
        if sample.capacity_cores > 0.0 {
            load[second] = sample.cpu_cores / sample.capacity_cores;
        }
    }
    let hosts_in_use = in_use.iter().map(std::collections::BTreeSet::len).collect();
    BalancerReport { mode: text_of(&status["mode"]), decisions, hosts_in_use, host_load }
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// How region moves were done: `baton` (migrations; players stay connected) or `restart`
    /// (the old way: stop, start elsewhere from the save, players log in again). For `restart`, a
    /// move's `freeze_ms` is the region's downtime, from the stop request to it running again.
    pub mode: String,
    /// Avatars that played (churn newcomers included).
    pub avatars: usize,
    /// Avatars that could not connect.
    pub failed_to_connect: usize,
    /// Ramp plus play, in seconds.
    pub duration_s: u64,
    /// Inputs sent.
    pub inputs_sent: u64,
    /// Inputs the region acknowledged as applied.
    pub inputs_acked: u64,
    /// Sent and never acknowledged.
    pub inputs_lost: u64,
    /// Applied more often than sent (the avatar's own count against the player's).
    pub inputs_duplicated: u64,
    /// Connections that closed or timed out.
    pub disconnects: u64,
    /// The players who lost inputs or were disconnected (the first 20), to find out why.
    pub players_with_losses: Vec<PlayerLoss>,
    /// Times players logged in again after their region was stopped (restart mode).
    pub relogins: u64,
    /// How long players who logged in again were offline, in milliseconds.
    pub offline_ms: Percentiles,
    /// Input round trips.
    pub rtt_ms: Percentiles,
    /// Update gaps.
    pub update_gap_ms: Percentiles,
    /// Moves and crossings.
    pub handoffs: Vec<Handoff>,
    /// Per second.
    pub seconds: Vec<Second>,
    /// Hosts' load over time.
    pub hosts: Vec<HostSample>,
    /// What the balancer did, when the scenario ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer: Option<BalancerReport>,
    /// What the hot standbys cost, when the scenario keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standbys: Option<StandbyReport>,
    /// The SLOs the run was judged by.
    pub slo: crate::scenario::Slo,
    /// Which SLOs were violated, in words.
    pub slo_violations: Vec<String>,
    /// Whether every SLO held.
    pub slo_ok: bool,
    /// The same scenario with every move done the old way, when run (its SLO verdict does not
    /// decide the run's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Box<Report>>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, three significant digits; samples above are clamped.
    match Histogram::new_with_bounds(1, 600_000_000, 3) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("the bounds are constants hdrhistogram accepts"),
    }
}

fn percentiles(histogram: &Histogram<u64>) -> Percentiles {
    let ms = |micros: u64| micros as f64 / 1000.0;
    Percentiles {
        count: histogram.len(),
        p50: ms(histogram.value_at_quantile(0.50)),
        p99: ms(histogram.value_at_quantile(0.99)),
        p999: ms(histogram.value_at_quantile(0.999)),
        max: ms(histogram.max()),
    }
}

/// The region `outcome`'s avatar was in at `unix_ms`.
fn region_at(outcome: &PlayerOutcome, unix_ms: u64) -> u64 {
    let mut region = outcome.crossing_log.first().map_or(outcome.region, |(_, from, _)| *from);
    for (at, _, to) in &outcome.crossing_log {
        if *at <= unix_ms {
            region = *to;
        }
    }
    region
}

/// What the players of `region` felt of its failover: from the kill (if the run caused it) to the
/// first update after it reaching the slowest of them, and how many ticks of play the region
/// lost: the newest tick one of them saw before (reported between `from_ms` and `to_ms`) minus
/// the tick it was restored from (the record's; else the tick before the restored region's first
/// update the player saw, for a restore the coordinator did not record).
fn failover_felt(
    outcomes: &[PlayerOutcome],
    region: u64,
    killed: Option<u64>,
    restored_tick: Option<u64>,
    (from_ms, to_ms): (u64, u64),
) -> (Option<f64>, Option<u64>) {
    let recovery = killed.and_then(|killed| {
        outcomes
            .iter()
            .filter(|outcome| region_at(outcome, killed) == region)
            .filter_map(|outcome| outcome.gap_ends_unix_ms.iter().find(|end| **end > killed))
            .map(|end| (end - killed) as f64)
            .reduce(f64::max)
    });
    let rollback = outcomes
        .iter()
        .flat_map(|outcome| outcome.rollbacks.iter())
        .filter(|(at, rolled, _, _)| *rolled == region && (from_ms..=to_ms).contains(at))
        .map(|(_, _, seen, first_after)| seen.saturating_sub(restored_tick.unwrap_or(first_after.saturating_sub(1))))
        .max();
    (recovery, rollback)
}

/// Builds the report from the players' outcomes and the coordinator's migration history.
#[must_use]
pub fn build_report(
    scenario: &Scenario,
    started_unix_ms: u64,
    outcomes: &[PlayerOutcome],
    failed_to_connect: usize,
    migrations: &[Value],
    hosts: Vec<HostSample>,
    kills: &[u64],
) -> Report {
    let mut rtt = histogram();
    let mut gaps = histogram();
    let duration_s = scenario.ramp_s + scenario.duration_s;
    let buckets = duration_s as usize + 30;
    let mut second_gaps: Vec<Histogram<u64>> = (0..buckets).map(|_| histogram()).collect();
    let mut second_rtts: Vec<Histogram<u64>> = (0..buckets).map(|_| histogram()).collect();
    let bucket = |unix_ms: u64| (unix_ms.saturating_sub(started_unix_ms) / 1000) as usize;
    for outcome in outcomes {
        for (value, at) in outcome.round_trips_us.iter().zip(&outcome.round_trip_ends_unix_ms) {
            rtt.saturating_record(*value);
            if let Some(histogram) = second_rtts.get_mut(bucket(*at)) {
                histogram.saturating_record(*value);
            }
        }
        for (value, at) in outcome.gaps_us.iter().zip(&outcome.gap_ends_unix_ms) {
            gaps.saturating_record(*value);
            if let Some(histogram) = second_gaps.get_mut(bucket(*at)) {
                histogram.saturating_record(*value);
            }
        }
    }
    let seconds: Vec<Second> = (0..buckets)
        .filter(|index| second_gaps[*index].len() + second_rtts[*index].len() > 0)
        .map(|index| Second {
            at_s: index as u64,
            update_gap_ms: percentiles(&second_gaps[index]),
            rtt_ms: percentiles(&second_rtts[index]),
            inputs_acked: second_rtts[index].len(),
        })
        .collect();

    // The longest gap players of `region` saw between two moments.
    let worst_gap = |region: Option<u64>, player: Option<u64>, from_ms: u64, to_ms: u64| -> f64 {
        outcomes
            .iter()
            .filter(|outcome| player.is_none_or(|player| outcome.player == player))
            .flat_map(|outcome| {
                outcome.gaps_us.iter().zip(&outcome.gap_ends_unix_ms).filter(move |(gap, end)| {
                    let began = end.saturating_sub(**gap / 1000);
                    **end >= from_ms
                        && began <= to_ms
                        && region.is_none_or(|region| region_at(outcome, **end) == region)
                })
            })
            .map(|(gap, _)| *gap as f64 / 1000.0)
            .fold(0.0, f64::max)
    };
    let mut handoffs: Vec<Handoff> = migrations
        .iter()
        .map(|record| {
            let region = record["region"].as_u64().unwrap_or(0);
            let begun = record["started_unix_ms"].as_u64().unwrap_or(started_unix_ms);
            let took: f64 = record["phases"]
                .as_array()
                .map(|phases| phases.iter().filter_map(|timing| timing["ms"].as_f64()).sum())
                .unwrap_or(0.0);
            let kind = record["kind"].as_str().unwrap_or("migration").to_owned();
            let failover = (kind == "failover").then(|| {
                // The kill that caused it: the last one before the coordinator noticed.
                let killed = kills.iter().copied().filter(|at| *at <= begun).max();
                let restored = record["failover"]["restored_tick"].as_u64();
                failover_felt(outcomes, region, killed, restored, (begun, begun + took as u64 + 5000))
            });
            let (recovery_ms, rollback_ticks) = failover.unwrap_or_default();
            Handoff {
                region,
                from: record["from_host"].as_str().unwrap_or_default().to_owned(),
                to: record["to_host"].as_str().unwrap_or_default().to_owned(),
                freeze_ms: record["freeze_ms"].as_f64(),
                max_player_gap_ms: worst_gap(
                    Some(region),
                    None,
                    begun.saturating_sub(if kind == "failover" { 2000 } else { 0 }),
                    begun + took as u64 + 1000,
                ),
                outcome: record["phase"].as_str().unwrap_or_default().to_owned(),
                at_s: begun.saturating_sub(started_unix_ms) as f64 / 1000.0,
                detect_ms: record["failover"]["detect_ms"].as_f64(),
                standby: record["failover"]["standby"].as_bool(),
                recovery_ms,
                rollback_ticks,
                kind,
            }
        })
        .collect();
    for outcome in outcomes {
        for (at, from, to) in &outcome.crossing_log {
            // The first update from the new region after the player heard of the crossing.
            let transit = outcome
                .region_switch_log
                .iter()
                .find(|(switched, _)| *switched + 50 >= *at && *switched <= at + 2000)
                .map(|(_, gap_us)| *gap_us as f64 / 1000.0);
            handoffs.push(Handoff {
                region: *from,
                from: format!("r{from}"),
                to: format!("r{to}"),
                kind: "crossing".into(),
                freeze_ms: transit,
                max_player_gap_ms: worst_gap(None, Some(outcome.player), at.saturating_sub(1000), at + 1000),
                outcome: "committed".into(),
                at_s: at.saturating_sub(started_unix_ms) as f64 / 1000.0,
                detect_ms: None,
                recovery_ms: None,
                rollback_ticks: None,
                standby: None,
            });
        }
    }
    handoffs.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));

    let inputs_sent: u64 = outcomes.iter().map(|outcome| outcome.sent).sum();
    let inputs_acked: u64 =
        outcomes.iter().map(|outcome| outcome.acked.saturating_sub(outcome.acked_before).min(outcome.sent)).sum();
    let inputs_duplicated: u64 = outcomes
        .iter()
        .map(|outcome| {
            outcome.applied.saturating_sub((outcome.acked_before + outcome.sent).saturating_sub(outcome.lost))
        })
        .sum();
    let disconnects: u64 = outcomes.iter().map(|outcome| outcome.disconnects).sum();
    let mut offline = histogram();
    for (from, to) in outcomes.iter().flat_map(|outcome| &outcome.offline_log) {
        offline.saturating_record(to.saturating_sub(*from) * 1000);
    }
    let mut report = Report {
        scenario: scenario.name.clone(),
        mode: "baton".into(),
        avatars: outcomes.len(),
        failed_to_connect,
        duration_s,
        inputs_sent,
        inputs_acked,
        inputs_lost: inputs_sent - inputs_acked,
        inputs_duplicated,
        disconnects,
        players_with_losses: outcomes
            .iter()
            .filter(|outcome| outcome.disconnects > 0 || outcome.acked < outcome.acked_before + outcome.sent)
            .take(20)
            .map(|outcome| PlayerLoss {
                player: outcome.player,
                region: outcome.region,
                sent: outcome.sent,
                acked: outcome.acked.saturating_sub(outcome.acked_before),
                applied: outcome.applied,
                recoveries: outcome.recoveries,
                crossings: outcome.crossings,
                close_reasons: outcome.close_reasons.clone(),
            })
            .collect(),
        relogins: outcomes.iter().map(|outcome| outcome.relogins).sum(),
        offline_ms: percentiles(&offline),
        rtt_ms: percentiles(&rtt),
        update_gap_ms: percentiles(&gaps),
        handoffs,
        seconds,
        hosts,
        balancer: None,
        standbys: None,
        slo: scenario.slo.clone(),
        slo_violations: Vec::new(),
        slo_ok: false,
        baseline: None,
    };
    report.judge();
    report
}

fn violations(report: &Report) -> Vec<String> {
    let slo = &report.slo;
    let mut found = Vec::new();
    if report.update_gap_ms.p99 > slo.update_gap_p99_ms {
        found.push(format!("update gap p99 {:.1} ms > {:.1} ms", report.update_gap_ms.p99, slo.update_gap_p99_ms));
    }
    if report.rtt_ms.p99 > slo.rtt_p99_ms {
        found.push(format!("round trip p99 {:.1} ms > {:.1} ms", report.rtt_ms.p99, slo.rtt_p99_ms));
    }
    if report.inputs_lost > slo.inputs_lost {
        found.push(format!("{} inputs lost > {}", report.inputs_lost, slo.inputs_lost));
    }
    if report.inputs_duplicated > slo.inputs_duplicated {
        found.push(format!("{} inputs applied twice > {}", report.inputs_duplicated, slo.inputs_duplicated));
    }
    if report.disconnects > slo.disconnects {
        found.push(format!("{} disconnects > {}", report.disconnects, slo.disconnects));
    }
    if report.failed_to_connect > 0 {
        found.push(format!("{} avatars could not connect", report.failed_to_connect));
    }
    if let Some(limit) = slo.move_gap_ms {
        for handoff in report.moves().filter(|handoff| handoff.max_player_gap_ms > limit) {
            found.push(format!(
                "moving region {} ({}): a player went {:.0} ms without an update > {limit:.0} ms",
                handoff.region, handoff.kind, handoff.max_player_gap_ms
            ));
        }
    }
    if slo.migrations_commit {
        for handoff in
            report.handoffs.iter().filter(|handoff| handoff.kind != "crossing" && handoff.outcome != "committed")
        {
            found.push(format!(
                "moving region {} from {} to {}: {}",
                handoff.region, handoff.from, handoff.to, handoff.outcome
            ));
        }
    }
    found
}

impl Report {
    /// Judges the measurements against `slo` (again): fills `slo_violations` and `slo_ok`.
    pub fn judge(&mut self) {
        self.slo_violations = violations(self);
        self.slo_ok = self.slo_violations.is_empty();
    }

    /// Writes `report.json` and `report.html` into `folder`; returns their paths.
    pub fn write(&self, folder: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(folder).map_err(|error| anyhow::anyhow!("creating {}: {error}", folder.display()))?;
        let json = folder.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        let html = folder.join("report.html");
        std::fs::write(&html, crate::chart::html(self)?)?;
        Ok((json, html))
    }

    /// A few readable lines for the terminal.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let moves = self.moves().count();
        let crossings = self.handoffs.len() - moves;
        let _ = writeln!(out, "scenario {}: {} avatars for {} s", self.scenario, self.avatars, self.duration_s);
        let _ = writeln!(
            out,
            "  inputs: {} sent, {} acknowledged, {} lost, {} applied twice; disconnects: {}",
            self.inputs_sent, self.inputs_acked, self.inputs_lost, self.inputs_duplicated, self.disconnects
        );
        let line = |name: &str, value: &Percentiles| {
            format!(
                "  {name}: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms",
                value.p50, value.p99, value.p999, value.max
            )
        };
        let _ = writeln!(out, "{}", line("update gap", &self.update_gap_ms));
        let _ = writeln!(out, "{}", line("round trip", &self.rtt_ms));
        let transit = median_and_max(
            self.handoffs.iter().filter(|handoff| handoff.kind == "crossing").filter_map(|handoff| handoff.freeze_ms),
        )
        .map_or(String::new(), |(median, max)| format!(" (avatar in transit: median {median:.0} ms, max {max:.0} ms)"));
        let _ = writeln!(out, "  region moves: {moves}, border crossings: {crossings}{transit}");
        for handoff in self.moves() {
            let _ = writeln!(
                out,
                "    t={:>5.1}s {:<9} region {:>3} {} -> {}: {}, freeze {}, worst player gap {:.0} ms{}",
                handoff.at_s,
                handoff.kind,
                handoff.region,
                handoff.from,
                handoff.to,
                handoff.outcome,
                handoff.freeze_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
                handoff.max_player_gap_ms,
                match handoff.kind.as_str() {
                    "failover" => format!(
                        ", detected in {}, players back after {}, rolled back {} ticks{}",
                        handoff.detect_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
                        handoff.recovery_ms.map_or("-".into(), |ms| format!("{ms:.0} ms")),
                        handoff.rollback_ticks.map_or("-".into(), |ticks| ticks.to_string()),
                        if handoff.standby == Some(true) { " (standby promoted)" } else { " (checkpoint restored)" }
                    ),
                    _ => String::new(),
                }
            );
        }
        if let Some(standbys) = &self.standbys {
            let _ = writeln!(
                out,
                "  hot standbys: up to {} holding; each feed {:.0} kB/s median, {:.0} kB/s max ({} samples)",
                standbys.holding_max,
                standbys.bytes_per_second_p50 / 1000.0,
                standbys.bytes_per_second_max / 1000.0,
                standbys.samples
            );
        }
        if let Some(balancer) = &self.balancer {
            let in_use = |at: usize| balancer.hosts_in_use.get(at).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "  balancer ({}): {} decisions; hosts in use: {} at the start, {} at the end, {} to {} on the way",
                balancer.mode,
                balancer.decisions.len(),
                in_use(1),
                in_use(balancer.hosts_in_use.len().saturating_sub(2)),
                balancer.hosts_in_use.iter().skip(1).min().copied().unwrap_or(0),
                balancer.hosts_in_use.iter().max().copied().unwrap_or(0),
            );
            for decision in &balancer.decisions {
                let _ = writeln!(
                    out,
                    "    t={:>5.1}s {:<11} {} {}{}: {}",
                    decision.at_s,
                    decision.kind,
                    decision.region.map_or(String::new(), |region| format!("region {region}")),
                    decision.from,
                    if decision.to.is_empty() { String::new() } else { format!(" -> {}", decision.to) },
                    decision.reason
                );
            }
        }
        if self.slo_ok {
            let _ = writeln!(out, "  SLO: met");
        } else {
            let _ = writeln!(out, "  SLO: VIOLATED: {}", self.slo_violations.join("; "));
        }
        if let Some(baseline) = &self.baseline {
            let _ = writeln!(out, "\nBaton against the restart baseline (the same scenario, each move the old way):");
            let _ = writeln!(out, "  {:<44} {:>12} {:>12}", "", "Baton", "restart");
            for (name, baton, restart) in comparison(self, baseline) {
                let _ = writeln!(out, "  {name:<44} {baton:>12} {restart:>12}");
            }
        }
        out
    }

    /// The region moves (not border crossings).
    pub fn moves(&self) -> impl Iterator<Item = &Handoff> {
        self.handoffs.iter().filter(|handoff| handoff.kind != "crossing")
    }
}

/// The side-by-side rows of a run and its restart baseline: (what, Baton, restart).
#[must_use]
pub fn comparison(baton: &Report, restart: &Report) -> Vec<(String, String, String)> {
    let ms = |value: f64| format!("{value:.1}");
    let frozen = |report: &Report| -> String {
        median_and_max(report.moves().filter_map(|handoff| handoff.freeze_ms))
            .map_or("-".into(), |(median, max)| format!("{median:.0} / {max:.0}"))
    };
    let worst = |report: &Report| ms(report.moves().map(|handoff| handoff.max_player_gap_ms).fold(0.0, f64::max));
    let count = |report: &Report| report.moves().count().to_string();
    vec![
        ("region moves".into(), count(baton), count(restart)),
        ("region frozen / down per move, median / max ms".into(), frozen(baton), frozen(restart)),
        ("worst update gap in a move's players, ms".into(), worst(baton), worst(restart)),
        ("update gap p99, ms".into(), ms(baton.update_gap_ms.p99), ms(restart.update_gap_ms.p99)),
        ("update gap p99.9, ms".into(), ms(baton.update_gap_ms.p999), ms(restart.update_gap_ms.p999)),
        ("update gap max, ms".into(), ms(baton.update_gap_ms.max), ms(restart.update_gap_ms.max)),
        ("round trip p99, ms".into(), ms(baton.rtt_ms.p99), ms(restart.rtt_ms.p99)),
        ("disconnects".into(), baton.disconnects.to_string(), restart.disconnects.to_string()),
        ("players logging in again".into(), baton.relogins.to_string(), restart.relogins.to_string()),
        ("offline per log-in-again, p50 / max ms".into(), offline(baton), offline(restart)),
        ("inputs lost".into(), baton.inputs_lost.to_string(), restart.inputs_lost.to_string()),
        ("inputs applied twice".into(), baton.inputs_duplicated.to_string(), restart.inputs_duplicated.to_string()),
        ("SLO".into(), verdict(baton), verdict(restart)),
    ]
}

/// The median and the largest of `values`, if there are any.
fn median_and_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    Some((*values.get(values.len() / 2)?, *values.last()?))
}

fn offline(report: &Report) -> String {
    if report.offline_ms.count == 0 {
        "-".into()
    } else {
        format!("{:.0} / {:.0}", report.offline_ms.p50, report.offline_ms.max)
    }
}

fn verdict(report: &Report) -> String {
    if report.slo_ok { "met".into() } else { "violated".into() }
}
