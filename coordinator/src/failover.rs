//! Failover: a region whose owner is lost is taken over by another process from its newest
//! checkpoint, without a person asking.
//!
//! Detection ([`judge`]): the owner the directory names is lost when its process exited (its agent
//! says so at once), when its host went silent for longer than `dead_after` (no status report:
//! the agent, the host or the link is gone), or when no host reports serving the region for
//! longer than `orphan_after` (what a coordinator that restarted sees of a host that died while
//! it was down). Regions stopped on purpose (`POST /v1/regions/{r}/stop`) are not lost.
//!
//! One [`Failover`] state machine per lost region, in the no-I/O style of `Migration`: claim a
//! warm process on the best host (`claiming`), have it restore the newest checkpoint taking over
//! only the lost owner's epoch (`restoring`: the directory's compare-and-swap to epoch + 1 fences
//! the old owner for good), and it is `committed` when the new process reports owning the
//! region. A host that fails is left for the next; a failover that cannot finish within `grace`
//! tells the region's players why (the route feed's `Unavailable`), and keeps trying until
//! `give_up`. Each failover is a record in the migration history, kind `failover`, with its
//! cause and timings ([`FailoverFigures`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_wire::authority::OwnershipAuthority;
use baton_wire::serve::{ServerCommand, ServerEvent};
use baton_wire::{Epoch, RegionId};
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::hosts::{ClaimResult, Happened, Hosts, OwnerState, ProcessEvent};
use crate::idle::{IDLE_RELEASED_TOTAL, IdleProcesses, Reported};
use crate::migrations::{MigrationRecord, Migrations, Phase, PhaseTiming};
use crate::routes::RouteNotices;
use crate::standby::Standbys;

/// Metric: failovers by outcome (`recovered`, `gave_up`, `superseded`).
pub const FAILOVERS_TOTAL: &str = "baton_failovers_total";
/// Metric: hosts declared dead.
pub const HOSTS_DEAD_TOTAL: &str = "baton_hosts_declared_dead_total";
/// Metric: player inputs acknowledged durable and then lost in a failover (standby lost too).
pub const FAILOVER_INPUTS_LOST_TOTAL: &str = "baton_failover_inputs_lost_total";

/// Describes the failover metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(FAILOVERS_TOTAL, "Failovers, by outcome: recovered, gave_up, superseded.");
    metrics::describe_counter!(HOSTS_DEAD_TOTAL, "Hosts declared dead (silent longer than the limit).");
    metrics::describe_counter!(
        FAILOVER_INPUTS_LOST_TOTAL,
        "Player inputs acknowledged durable, then lost with their region's owner and standby."
    );
}

/// When a region counts as lost and how long a failover tries.
#[derive(Clone, Copy, Debug)]
pub struct FailoverSettings {
    /// Whether lost regions are taken over at all.
    pub enabled: bool,
    /// A host whose agent has not reported for this long is dead.
    pub dead_after: Duration,
    /// A region's owner whose host's agent has not reported for this long, and from which its
    /// standby has heard nothing for several ticks, is lost (two witnesses, so sooner than
    /// `dead_after`; the host itself is declared dead only at `dead_after`).
    pub suspect_after: Duration,
    /// A region no host reports serving (with no word of why) is lost after this long.
    pub orphan_after: Duration,
    /// Players are told their region is unavailable when it is not back after this long.
    pub grace: Duration,
    /// Longest wait for a claimed warm process.
    pub claim: Duration,
    /// Longest wait for a restore to report owning the region.
    pub restore: Duration,
    /// A host that failed a take-over is not asked again before this.
    pub retry_after: Duration,
    /// A failover ends unfinished after this long (another starts if the region is still lost).
    pub give_up: Duration,
    /// A claimed process that owns, receives and follows nothing is released after this long
    /// (see [`crate::idle`]; watched whether failover is on or off); zero: never. 30 s by default.
    pub idle_release: Duration,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            enabled: true,
            dead_after: Duration::from_millis(800),
            suspect_after: Duration::from_millis(300),
            orphan_after: Duration::from_secs(3),
            grace: Duration::from_secs(10),
            claim: Duration::from_secs(5),
            restore: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
            give_up: Duration::from_secs(300),
            idle_release: crate::idle::DEFAULT_GRACE,
        }
    }
}

/// Why a region's owner counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Its process exited (crashed or was killed); its agent said so.
    ProcessExited,
    /// Its host's agent stopped reporting.
    HostSilent,
    /// No host reports serving it (a host lost while the coordinator was down, say).
    NotServed,
    /// Its host's agent stopped reporting and its standby stopped hearing from it, both for
    /// longer than `suspect_after`.
    OwnerSilent,
}

/// What a failover measured (part of its history record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverFigures {
    /// Why the owner counted as lost.
    pub cause: Cause,
    /// The lost owner's epoch (the restore takes over exactly this one).
    pub lost_epoch: u64,
    /// From the owner's last sign of life, as the coordinator saw it, to the detection: how long
    /// its host had been silent (0 for an exit its agent reported).
    pub detect_ms: f64,
    /// From the detection to the new owner reporting it owns the region.
    pub recovery_ms: Option<f64>,
    /// The tick the new owner continued from: the restored checkpoint's, or the promoted
    /// standby's.
    pub restored_tick: Option<u64>,
    /// Whether the region's hot standby was promoted (else a checkpoint was restored).
    #[serde(default)]
    pub standby: bool,
    /// Hosts asked to take the region over.
    pub attempts: u32,
    /// Whether its players were told it was unavailable (it was not back within the grace).
    pub players_told: bool,
    /// Player inputs acknowledged durable that the state it came back from lacked (its standby
    /// was lost with it): counted as the players' clients say they no longer have them, after
    /// the failover ended.
    #[serde(default)]
    pub inputs_lost: u64,
}

/// What the coordinator knows of a region's owner right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerWatch {
    /// Where the owner stands.
    pub state: OwnerState,
    /// Whether its agent reported it exited while it owned the region (or its host was declared
    /// dead), and it has not owned a region since.
    pub exited: bool,
    /// How long no host has reported serving the region.
    pub unserved_for: Duration,
    /// For an owner still reported serving: how long both its host's agent and the region's
    /// standby have heard nothing from it (the shorter of the two), if both are silent.
    pub witnessed_silence: Option<Duration>,
}

/// Whether a region's owner is lost, and why. No I/O.
#[must_use]
pub fn judge(watch: OwnerWatch, settings: &FailoverSettings) -> Option<(Cause, Duration)> {
    match watch.state {
        OwnerState::Serving => match watch.witnessed_silence {
            Some(silence) if silence >= settings.suspect_after => Some((Cause::OwnerSilent, silence)),
            _ => None,
        },
        OwnerState::HostDead { silent_for } => Some((Cause::HostSilent, silent_for)),
        OwnerState::NotServing | OwnerState::Unknown if watch.exited => Some((Cause::ProcessExited, Duration::ZERO)),
        OwnerState::NotServing | OwnerState::Unknown if watch.unserved_for >= settings.orphan_after => {
            Some((Cause::NotServed, watch.unserved_for))
        }
        OwnerState::NotServing | OwnerState::Unknown => None,
    }
}

/// A region whose owner was judged lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The region.
    pub region: RegionId,
    /// The lost owner (a process name, as in the directory).
    pub owner: String,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its host, if known.
    pub host: Option<String>,
    /// Why it counts as lost.
    pub cause: Cause,
    /// How long it had been silent when judged lost.
    pub silent_for: Duration,
}

/// A migration's work on hosts (claim a warm process, run a command, release a process): a
/// failover does the same.
pub use crate::migrations::Action as HostAction;

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Work on a host, as a migration's.
    Host(HostAction),
    /// Tell the region's players (through the gateways) it is unavailable, and why.
    TellUnavailable {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
}

/// Where a failover stands between events.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// No host to ask right now.
    Waiting,
    /// A claim on `host` is out.
    Claiming { host: String },
    /// `process` on `host` is restoring the region.
    Restoring { host: String, process: String },
    /// Over (the record says how).
    Done,
}

/// One lost region's take-over. No I/O; time is passed in.
#[derive(Debug)]
pub struct Failover {
    record: MigrationRecord,
    lost: Lost,
    settings: FailoverSettings,
    step: Step,
    detected: Instant,
    phase_started: Instant,
    step_started: Instant,
    /// Hosts that failed a take-over, and when.
    failed_on: BTreeMap<String, Instant>,
    last_error: Option<String>,
    outcome: Option<Outcome>,
    /// The current attempt promotes the region's standby.
    promoting: bool,
}

/// How a failover ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new owner serves the region.
    Recovered,
    /// The region was served again without it (its owner came back, a person restored it).
    Superseded,
    /// It ran out of time.
    GaveUp,
}

impl Outcome {
    /// Its name in metrics.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Recovered => "recovered",
            Outcome::Superseded => "superseded",
            Outcome::GaveUp => "gave_up",
        }
    }
}

impl Failover {
    /// Starts taking `lost` over: by promoting its hot standby `(host, process, tick held)` if it
    /// has one, else (or if that fails) by restoring the newest checkpoint on one of
    /// `candidates`, the hosts that could, best first.
    #[must_use]
    pub fn start(
        id: u64,
        lost: Lost,
        standby: Option<(String, String, u64)>,
        candidates: &[String],
        settings: FailoverSettings,
        now: Instant,
    ) -> (Failover, Vec<Action>) {
        let record = MigrationRecord {
            id,
            region: lost.region.0,
            kind: "failover".to_owned(),
            cause: Some(describe(&lost)),
            from_host: lost.host.clone().unwrap_or_default(),
            from_process: lost.owner.clone(),
            to_host: String::new(),
            to_process: None,
            phase: Phase::Claiming,
            reason: None,
            started_unix_ms: crate::migrations::unix_ms(),
            phases: Vec::new(),
            freeze_ms: None,
            source_digest: None,
            target_digest: None,
            failover: Some(FailoverFigures {
                cause: lost.cause,
                lost_epoch: lost.epoch.0,
                detect_ms: lost.silent_for.as_secs_f64() * 1000.0,
                recovery_ms: None,
                restored_tick: None,
                standby: false,
                attempts: 0,
                players_told: false,
                inputs_lost: 0,
            }),
        };
        let mut failover = Failover {
            record,
            lost,
            settings,
            step: Step::Waiting,
            detected: now,
            phase_started: now,
            step_started: now,
            failed_on: BTreeMap::new(),
            last_error: None,
            outcome: None,
            promoting: false,
        };
        let actions = match standby {
            Some((host, process, tick)) => failover.promote(host, process, tick, now),
            None => failover.try_next_host(candidates, now),
        };
        (failover, actions)
    }

    /// Promotes the standby `process` on `host`, which holds the owner's world after `tick`.
    fn promote(&mut self, host: String, process: String, tick: u64, now: Instant) -> Vec<Action> {
        self.enter(Phase::Restoring, now);
        self.promoting = true;
        let figures = self.figures();
        figures.attempts += 1;
        figures.restored_tick = Some(tick);
        self.record.to_host = host.clone();
        self.record.to_process = Some(process.clone());
        self.step = Step::Restoring { host: host.clone(), process: process.clone() };
        self.step_started = now;
        vec![Action::Host(HostAction::Run {
            host,
            process,
            command: ServerCommand::Promote { region: self.lost.region, epoch: self.lost.epoch },
        })]
    }

    /// The record as it stands.
    #[must_use]
    pub fn record(&self) -> &MigrationRecord {
        &self.record
    }

    /// The region.
    #[must_use]
    pub fn region(&self) -> RegionId {
        self.lost.region
    }

    /// Whether it is over.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    fn figures(&mut self) -> &mut FailoverFigures {
        // Set at the start; a record without them would be a bug, and fresh figures the fallback.
        let fresh = FailoverFigures {
            cause: self.lost.cause,
            lost_epoch: self.lost.epoch.0,
            detect_ms: 0.0,
            recovery_ms: None,
            restored_tick: None,
            standby: false,
            attempts: 0,
            players_told: false,
            inputs_lost: 0,
        };
        self.record.failover.get_or_insert(fresh)
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        if phase == self.record.phase {
            return;
        }
        self.record.phases.push(PhaseTiming {
            phase: self.record.phase,
            ms: now.duration_since(self.phase_started).as_secs_f64() * 1000.0,
        });
        self.record.phase = phase;
        self.phase_started = now;
    }

    /// Claims a process on the best host that has not failed lately, or waits for one.
    fn try_next_host(&mut self, candidates: &[String], now: Instant) -> Vec<Action> {
        let retry_after = self.settings.retry_after;
        self.failed_on.retain(|_, at| now.duration_since(*at) < retry_after);
        let Some(host) = candidates.iter().find(|host| !self.failed_on.contains_key(*host)).cloned() else {
            self.step = Step::Waiting;
            self.step_started = now;
            return Vec::new();
        };
        self.enter(Phase::Claiming, now);
        self.figures().attempts += 1;
        self.record.to_host = host.clone();
        self.record.to_process = None;
        self.step = Step::Claiming { host: host.clone() };
        self.step_started = now;
        vec![Action::Host(HostAction::Claim { host })]
    }

    /// The current attempt failed: its process (if any) goes, and the next host is asked.
    fn attempt_failed(&mut self, reason: String, candidates: &[String], now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let host = match std::mem::replace(&mut self.step, Step::Waiting) {
            Step::Claiming { host } => host,
            Step::Restoring { host, process } => {
                actions.push(Action::Host(HostAction::Release { host: host.clone(), process }));
                host
            }
            Step::Waiting | Step::Done => return actions,
        };
        tracing::warn!(region = %self.lost.region, host, reason, promoting = self.promoting, "a failover attempt failed");
        // The failed attempt's tick (a standby's, or a restore's that then failed) is not the one
        // the region will continue from.
        self.promoting = false;
        self.figures().restored_tick = None;
        self.last_error = Some(format!("{host}: {reason}"));
        self.failed_on.insert(host, now);
        actions.extend(self.try_next_host(candidates, now));
        actions
    }

    fn finish(&mut self, phase: Phase, reason: Option<String>, now: Instant) {
        self.record.reason = reason;
        self.enter(phase, now);
        self.step = Step::Done;
    }

    /// The answer to the claim on `host`.
    pub fn handle_claimed(
        &mut self,
        host: &str,
        result: ClaimResult,
        candidates: &[String],
        now: Instant,
    ) -> Vec<Action> {
        let Step::Claiming { host: claiming } = &self.step else {
            return late_claim(host, result);
        };
        if claiming != host {
            return late_claim(host, result);
        }
        let host = host.to_owned();
        match result {
            Ok((process, _)) => {
                self.record.to_process = Some(process.clone());
                self.enter(Phase::Restoring, now);
                self.step = Step::Restoring { host: host.clone(), process: process.clone() };
                self.step_started = now;
                vec![Action::Host(HostAction::Run {
                    host,
                    process,
                    command: ServerCommand::Host {
                        region: self.lost.region,
                        world: baton_wire::serve::GameObject::new(),
                        from_checkpoint: true,
                        take_over: Some(self.lost.epoch),
                    },
                })]
            }
            Err(error) => self.attempt_failed(format!("no warm process: {error}"), candidates, now),
        }
    }

    /// An event from a process.
    pub fn handle_event(&mut self, event: &ProcessEvent, candidates: &[String], now: Instant) -> Vec<Action> {
        let Step::Restoring { host, process } = &self.step else { return Vec::new() };
        if event.host != *host || event.process != *process {
            return Vec::new();
        }
        let region = self.lost.region;
        match &event.happened {
            Happened::Exited { .. } => self.attempt_failed("the process exited".into(), candidates, now),
            Happened::Event(ServerEvent::Restored { region: restored, tick, .. }) if *restored == region => {
                self.figures().restored_tick = Some(*tick);
                Vec::new()
            }
            Happened::Event(ServerEvent::Promoted { region: promoted, tick, .. }) if *promoted == region => {
                self.figures().restored_tick = Some(*tick);
                Vec::new()
            }
            Happened::Event(ServerEvent::PromoteRefused { region: refused, reason }) if *refused == region => {
                let reason = format!("the standby refused the promotion: {reason}");
                self.attempt_failed(reason, candidates, now)
            }
            Happened::Event(ServerEvent::StandbyLost { region: lost, reason, detached: false }) if *lost == region => {
                let reason = format!("the standby's promotion failed: {reason}");
                self.attempt_failed(reason, candidates, now)
            }
            Happened::Event(ServerEvent::Owning { region: owned, .. }) if *owned == region => self.handle_serving(now),
            Happened::Event(ServerEvent::Error { region: about, error })
                if about.is_none_or(|about| about == region) =>
            {
                let error = error.clone();
                self.attempt_failed(format!("the restore failed: {error}"), candidates, now)
            }
            Happened::Event(_) => Vec::new(),
        }
    }

    /// The hosts report the process restoring the region serving it (its `owning` event may have
    /// been missed): the failover is done.
    pub fn handle_serving(&mut self, now: Instant) -> Vec<Action> {
        if matches!(self.step, Step::Restoring { .. }) {
            let recovery_ms = now.duration_since(self.detected).as_secs_f64() * 1000.0;
            let promoting = self.promoting;
            self.figures().recovery_ms.get_or_insert(recovery_ms);
            self.figures().standby = promoting;
            self.finish(Phase::Committed, None, now);
            self.outcome = Some(Outcome::Recovered);
        }
        Vec::new()
    }

    /// The process restoring the region, if one is.
    #[must_use]
    pub fn restoring(&self) -> Option<&str> {
        match &self.step {
            Step::Restoring { process, .. } => Some(process),
            _ => None,
        }
    }

    /// How it ended, once it has.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The time passes. `still_lost` says whether the region is still lost as first judged (same
    /// owner and epoch in the directory, nobody serving it); `candidates` are the hosts that
    /// could take it now, best first.
    pub fn handle_time(&mut self, now: Instant, still_lost: bool, candidates: &[String]) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.step == Step::Done {
            return actions;
        }
        // Someone else brought the region back (a person restored it, a handoff it was in the
        // middle of committed): this failover has nothing left to do. A restore of its own that
        // is under way reports its outcome first.
        if !still_lost && !matches!(self.step, Step::Restoring { .. }) {
            self.finish(Phase::Aborted, Some("the region was served again without this failover".into()), now);
            self.outcome = Some(Outcome::Superseded);
            return actions;
        }
        let elapsed = now.duration_since(self.detected);
        if elapsed >= self.settings.grace && !self.figures().players_told {
            self.figures().players_told = true;
            let reason = format!(
                "region {} lost its host ({}) and no other host could take it over in {:.0} s{}; still trying",
                self.lost.region,
                describe(&self.lost),
                self.settings.grace.as_secs_f64(),
                self.last_error.as_ref().map(|error| format!(" (last: {error})")).unwrap_or_default()
            );
            actions.push(Action::TellUnavailable { region: self.lost.region, reason });
        }
        if elapsed >= self.settings.give_up {
            if let Step::Restoring { host, process } = std::mem::replace(&mut self.step, Step::Waiting) {
                actions.push(Action::Host(HostAction::Release { host, process }));
            }
            let reason = format!(
                "gave up after {:.0} s{}",
                elapsed.as_secs_f64(),
                self.last_error.as_ref().map(|error| format!(" (last: {error})")).unwrap_or_default()
            );
            self.finish(Phase::Aborted, Some(reason), now);
            self.outcome = Some(Outcome::GaveUp);
            return actions;
        }
        let waited = now.duration_since(self.step_started);
        match &self.step {
            Step::Waiting => actions.extend(self.try_next_host(candidates, now)),
            Step::Claiming { .. } if waited >= self.settings.claim => {
                actions.extend(self.attempt_failed("the claim was not answered in time".into(), candidates, now));
            }
            Step::Restoring { .. } if waited >= self.settings.restore => {
                actions.extend(self.attempt_failed("the restore did not finish in time".into(), candidates, now));
            }
            _ => {}
        }
        actions
    }
}

/// An answer to a claim the failover gave up on: a process it got goes back.
fn late_claim(host: &str, result: ClaimResult) -> Vec<Action> {
    match result {
        Ok((process, _)) => vec![Action::Host(HostAction::Release { host: host.to_owned(), process })],
        Err(_) => Vec::new(),
    }
}

fn describe(lost: &Lost) -> String {
    let host = lost.host.as_deref().unwrap_or("an unknown host");
    match lost.cause {
        Cause::ProcessExited => format!("{} on {host} exited", lost.owner),
        Cause::HostSilent => format!("{host} silent for {} ms", lost.silent_for.as_millis()),
        Cause::OwnerSilent => {
            format!("{host} and the standby heard nothing from {} for {} ms", lost.owner, lost.silent_for.as_millis())
        }
        Cause::NotServed => {
            format!("no host serves it ({} at {} for {} ms)", lost.owner, lost.epoch, lost.silent_for.as_millis())
        }
    }
}

/// The failovers of a coordinator: watches the directory against what hosts report, starts a
/// [`Failover`] for each lost region and drives it.
pub struct Failovers {
    hosts: Arc<Hosts>,
    directory: Arc<Directory>,
    migrations: Arc<Migrations>,
    notices: Arc<RouteNotices>,
    /// The regions' hot standbys, promoted first.
    standbys: Option<Arc<Standbys>>,
    settings: FailoverSettings,
    state: Mutex<WatchState>,
    /// Claimed processes with nothing to do.
    idle: Mutex<IdleProcesses>,
    started: Instant,
}

/// After a coordinator with standbys starts, how long before claimed processes with nothing to do
/// are judged: a standby's first hold may take a minute (`StandbySettings::first_hold`), and a standby being
/// fed is adopted only from its report of a hold.
pub const IDLE_STARTUP_WAIT: Duration = Duration::from_secs(90);

/// After a coordinator starts, how much longer than `orphan_after` a region's absence waits before
/// it is judged lost (agents reconnect after the cluster link's 3 s idle timeout, then report).
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct WatchState {
    /// Regions with a failover running.
    running: BTreeMap<u64, u64>,
    /// Regions whose last failover ended unfinished, and when.
    gave_up: HashMap<u64, Instant>,
    /// Processes reported exited (or on a host declared dead), with the regions they owned then;
    /// forgotten once the process (restarted under the same name) owns a region again, or once
    /// the directory names it owner of no region (a warm process, or a failover replaced it).
    exited: HashMap<String, Vec<RegionId>>,
    /// Regions no host reports serving, since when.
    unserved: HashMap<u64, Instant>,
}

impl Failovers {
    /// Starts watching (every 100 ms) and taking lost regions over.
    pub fn start(
        hosts: Arc<Hosts>,
        directory: Arc<Directory>,
        migrations: Arc<Migrations>,
        notices: Arc<RouteNotices>,
        standbys: Option<Arc<Standbys>>,
        settings: FailoverSettings,
    ) -> Arc<Failovers> {
        let failovers = Arc::new(Failovers {
            hosts,
            directory,
            migrations,
            notices,
            standbys,
            settings,
            state: Mutex::new(WatchState::default()),
            idle: Mutex::new(IdleProcesses::new(settings.idle_release)),
            started: Instant::now(),
        });
        let watcher = failovers.clone();
        tokio::spawn(async move { watcher.watch().await });
        failovers
    }

    async fn watch(self: Arc<Self>) {
        let mut events = self.hosts.subscribe();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.check(Instant::now()),
                event = events.recv() => match event {
                    Ok(event) => self.note(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                },
            }
        }
    }

    /// Remembers exits (the process is restarted under the same name, so its exit is the word).
    fn note(self: &Arc<Self>, event: &ProcessEvent) {
        let Ok(mut state) = self.state.lock() else { return };
        match &event.happened {
            Happened::Exited { regions } => {
                state.exited.insert(event.process.clone(), regions.clone());
                drop(state);
                // Judged at once rather than at the next tick: every millisecond is the players'.
                self.check(Instant::now());
            }
            Happened::Event(event_) if event_.ownership_change().is_some_and(|(_, owns)| owns) => {
                state.exited.remove(&event.process);
            }
            Happened::Event(ServerEvent::InputsLost { region, lost, .. }) => {
                drop(state);
                self.count_lost_inputs(*region, *lost);
            }
            Happened::Event(_) => {}
        }
    }

    /// A new owner's players said they no longer have inputs it lacks: the loss goes on the
    /// region's latest failover record. (A failover is done once the new owner owns the region,
    /// before any update of it reaches a player, so no running failover stores over this.)
    fn count_lost_inputs(&self, region: RegionId, lost: u64) {
        metrics::counter!(FAILOVER_INPUTS_LOST_TOTAL).increment(lost);
        let latest = self
            .migrations
            .list()
            .into_iter()
            .filter(|record| record.region == region.0 && record.failover.is_some())
            .max_by_key(|record| record.id);
        match latest {
            Some(mut record) => {
                if let Some(figures) = record.failover.as_mut() {
                    figures.inputs_lost = figures.inputs_lost.saturating_add(lost);
                }
                tracing::warn!(%region, lost, record = record.id, "player inputs acknowledged durable were lost");
                self.migrations.keep(&record);
            }
            None => tracing::warn!(%region, lost, "player inputs were lost outside any failover"),
        }
    }

    /// The hosts that could take a region over now, best first: connected, alive, in use, with a
    /// warm process; the most spare CPU first; `avoid` (the lost host) only as a last resort.
    fn candidates(&self, avoid: Option<&str>) -> Vec<String> {
        let mut views: Vec<_> = self
            .hosts
            .views()
            .into_iter()
            .filter(|view| view.connected && !view.draining && !view.free)
            .filter(|view| view.processes.iter().any(|process| process.warm))
            .collect();
        views.sort_by(|a, b| {
            let spare = |view: &crate::hosts::HostView| view.capacity_cores - view.cpu_cores;
            (Some(a.name.as_str()) == avoid).cmp(&(Some(b.name.as_str()) == avoid)).then(spare(b).total_cmp(&spare(a)))
        });
        views.into_iter().map(|view| view.name).collect()
    }

    /// Gives back claimed processes that own, receive and follow nothing (see [`crate::idle`]).
    fn release_idle(&self, now: Instant) {
        if self.settings.idle_release.is_zero() {
            return;
        }
        // After a start with standbys on, a standby the owner still feeds is in no table until
        // its first `standby_holding` report (its snapshot may take the first hold's minute):
        // none is judged before then.
        if self.standbys.is_some() && now.duration_since(self.started) < IDLE_STARTUP_WAIT {
            return;
        }
        let Ok(regions) = self.directory.list() else { return };
        let running = self.migrations.running();
        let standbys = self.standbys.as_ref().map(|standbys| standbys.views()).unwrap_or_default();
        let mut in_use: HashSet<&str> = regions.iter().map(|(_, ownership)| ownership.owner.as_str()).collect();
        for record in &running {
            in_use.insert(record.from_process.as_str());
            in_use.extend(record.to_process.as_deref());
        }
        in_use.extend(standbys.iter().filter_map(|view| view.process.as_deref()));
        let placing = self.hosts.placing_now();
        in_use.extend(placing.iter().map(String::as_str));
        let views = self.hosts.views();
        let reported = views.iter().filter(|view| view.connected).flat_map(|view| {
            view.processes.iter().map(|process| Reported {
                host: &view.name,
                process: &process.name,
                warm: process.warm,
                owns: !process.regions.is_empty(),
            })
        });
        let release = match self.idle.lock() {
            Ok(mut idle) => idle.check(now, reported, &in_use),
            Err(_) => return,
        };
        for (host, process) in release {
            metrics::counter!(IDLE_RELEASED_TOTAL).increment(1);
            match self.hosts.release(&host, &process) {
                Ok(()) => tracing::info!(
                    host,
                    process,
                    "released a claimed process that owned, received and followed nothing"
                ),
                Err(error) => tracing::warn!(host, process, %error, "could not release an idle claimed process"),
            }
        }
    }

    /// One look at the cluster: hosts silent too long are declared dead, idle claimed processes
    /// are given back, lost regions get a failover.
    fn check(self: &Arc<Self>, now: Instant) {
        for (host, silent_for) in self.hosts.declare_dead(self.settings.dead_after) {
            metrics::counter!(HOSTS_DEAD_TOTAL).increment(1);
            tracing::warn!(host, silent_ms = silent_for.as_millis() as u64, "host declared dead");
        }
        self.release_idle(now);
        if !self.settings.enabled {
            return;
        }
        let Ok(regions) = self.directory.list() else { return };
        // A store that cannot say which regions were stopped on purpose cannot tell lost from
        // stopped: nothing is judged until it can.
        let Ok(stopped) = self.directory.stopped() else { return };
        // A migration settles its region itself (its source dying included).
        let migrating: Vec<u64> = self
            .migrations
            .running()
            .into_iter()
            .filter(|record| record.kind != "failover")
            .map(|record| record.region)
            .collect();
        // Right after a start, hosts are still coming back (their agents reconnect once the
        // cluster link's idle timeout noticed the old coordinator was gone): only an exit or a
        // dead host says a region is lost then, not its absence.
        let settled = now.duration_since(self.started) >= self.settings.orphan_after + STARTUP_GRACE;
        let mut starts = Vec::new();
        {
            let Ok(mut state) = self.state.lock() else { return };
            let retry_after = self.settings.retry_after;
            state.gave_up.retain(|_, at| now.duration_since(*at) < retry_after);
            // An exit matters while the process still owns a region in the directory (until the
            // failover replaced it); a warm process's exit, or one the failover dealt with, is
            // forgotten, so the map holds no more than the owners.
            let owners: std::collections::HashSet<&str> =
                regions.iter().map(|(_, ownership)| ownership.owner.as_str()).collect();
            state.exited.retain(|process, _| owners.contains(process.as_str()));
            for (region, ownership) in &regions {
                let (region, ownership) = (*region, ownership);
                if stopped.contains(&region) {
                    state.unserved.remove(&region.0);
                    continue;
                }
                let (owner_state, host) = self.hosts.owner_state(&ownership.owner, region);
                let witnessed_silence = match (&host, &self.standbys) {
                    (Some(host), Some(standbys)) if owner_state == OwnerState::Serving => self
                        .hosts
                        .silence(host)
                        .zip(standbys.owner_silent(region, ownership.epoch))
                        .map(|(agent, standby)| agent.min(standby)),
                    _ => None,
                };
                if owner_state == OwnerState::Serving
                    && witnessed_silence.is_none_or(|silence| silence < self.settings.suspect_after)
                {
                    state.unserved.remove(&region.0);
                    // It came back (a host that was only slow): its exit is history.
                    state.exited.remove(&ownership.owner);
                    continue;
                }
                let since = *state.unserved.entry(region.0).or_insert(now);
                if state.running.contains_key(&region.0)
                    || state.gave_up.contains_key(&region.0)
                    || migrating.contains(&region.0)
                {
                    continue;
                }
                let watch = OwnerWatch {
                    state: owner_state,
                    exited: state.exited.get(&ownership.owner).is_some_and(|regions| regions.contains(&region)),
                    unserved_for: now.duration_since(since),
                    witnessed_silence,
                };
                if let Some((cause, silent_for)) = judge(watch, &self.settings)
                    && (settled || cause != Cause::NotServed)
                {
                    starts.push(Lost {
                        region,
                        owner: ownership.owner.clone(),
                        epoch: ownership.epoch,
                        host,
                        cause,
                        silent_for,
                    });
                }
            }
        }
        for lost in starts {
            self.begin(lost, now);
        }
    }

    fn begin(self: &Arc<Self>, lost: Lost, now: Instant) {
        let Some(id) = self.migrations.allocate_id() else { return };
        if let Ok(mut state) = self.state.lock() {
            state.running.insert(lost.region.0, id);
        }
        tracing::warn!(region = %lost.region, owner = lost.owner, epoch = %lost.epoch, cause = ?lost.cause, "region lost; failing over");
        let candidates = self.candidates(lost.host.as_deref());
        // The standby is promoted only if its own host is alive (both lost: the checkpoint path).
        let alive =
            |host: &str| self.hosts.views().iter().any(|view| view.name == host && view.connected && !view.dead);
        let standby = match self.standbys.as_ref().and_then(|standbys| standbys.take(lost.region, lost.epoch)) {
            Some((host, process, tick)) if alive(&host) => Some((host, process, tick)),
            // Taken from the table, so handed back to its host (if it comes back) here.
            Some((host, process, _)) => {
                tracing::info!(region = %lost.region, host, "the standby is not promoted: its host is down");
                let _ = self.hosts.release(&host, &process);
                None
            }
            None => None,
        };
        let (machine, actions) = Failover::start(id, lost, standby, &candidates, self.settings, now);
        self.migrations.keep(machine.record());
        tokio::spawn(self.clone().drive(machine, actions));
    }

    /// Whether `region` is still lost as `lost` was judged: the directory names the same owner at
    /// the same epoch, and no host serves it.
    fn still_lost(&self, region: RegionId, owner: &str, epoch: Epoch) -> bool {
        let same = self.directory.current(region).is_ok_and(|now| now.owner == owner && now.epoch == epoch);
        same && self.hosts.owner_state(owner, region).0 != OwnerState::Serving
    }

    async fn drive(self: Arc<Self>, mut machine: Failover, actions: Vec<Action>) {
        let mut events = self.hosts.subscribe();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        let (claims, mut claimed) = tokio::sync::mpsc::unbounded_channel();
        let (owner, epoch, lost_host) = (machine.lost.owner.clone(), machine.lost.epoch, machine.lost.host.clone());
        let region = machine.region();
        let mut pending = actions;
        loop {
            for action in std::mem::take(&mut pending) {
                self.perform(action, &claims);
            }
            self.migrations.keep(machine.record());
            if machine.is_done() {
                break;
            }
            let candidates = || self.candidates(lost_host.as_deref());
            pending = tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => machine.handle_event(&event, &candidates(), Instant::now()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                    Err(_) => break,
                },
                Some((host, result)) = claimed.recv() => {
                    machine.handle_claimed(&host, result, &candidates(), Instant::now())
                }
                _ = ticker.tick() => {
                    let serving = machine
                        .restoring()
                        .is_some_and(|process| self.hosts.owner_state(process, region).0 == OwnerState::Serving);
                    if serving {
                        machine.handle_serving(Instant::now())
                    } else {
                        let still_lost = self.still_lost(region, &owner, epoch);
                        machine.handle_time(Instant::now(), still_lost, &candidates())
                    }
                }
            };
        }
        let record = machine.record().clone();
        let outcome = machine.outcome().unwrap_or(Outcome::GaveUp);
        metrics::counter!(FAILOVERS_TOTAL, "outcome" => outcome.name()).increment(1);
        // A claim still out gets its answer after the failover ended: the process goes back.
        let hosts = self.hosts.clone();
        let settle = self.settings.claim + Duration::from_secs(1);
        tokio::spawn(async move {
            while let Ok(Some((host, result))) = tokio::time::timeout(settle, claimed.recv()).await {
                if let Ok((process, _)) = result {
                    let _ = hosts.release(&host, &process);
                }
            }
        });
        match record.phase {
            Phase::Committed => tracing::info!(
                region = %region,
                to = record.to_process.as_deref().unwrap_or_default(),
                recovery_ms = record.failover.as_ref().and_then(|figures| figures.recovery_ms).unwrap_or_default(),
                "failover recovered the region"
            ),
            _ => {
                tracing::warn!(region = %region, reason = record.reason.as_deref().unwrap_or_default(), "failover ended")
            }
        }
        self.notices.clear(region);
        if let Ok(mut state) = self.state.lock() {
            state.running.remove(&region.0);
            if record.phase != Phase::Committed {
                state.gave_up.insert(region.0, Instant::now());
            }
        }
    }

    fn perform(&self, action: Action, claims: &tokio::sync::mpsc::UnboundedSender<(String, ClaimResult)>) {
        match action {
            Action::Host(HostAction::Claim { host }) => {
                let hosts = self.hosts.clone();
                let claims = claims.clone();
                let timeout = self.settings.claim;
                tokio::spawn(async move {
                    let result = hosts.claim(&host, timeout).await;
                    let _ = claims.send((host, result));
                });
            }
            Action::Host(HostAction::Run { host, process, command }) => {
                if let Err(error) = self.hosts.run(&host, &process, command) {
                    tracing::warn!(host, process, %error, "could not send a failover command");
                }
            }
            Action::Host(HostAction::Release { host, process }) => {
                let _ = self.hosts.release(&host, &process);
            }
            Action::TellUnavailable { region, reason } => {
                tracing::error!(%region, reason, "telling the region's players it is unavailable");
                self.notices.unavailable(region, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests;
