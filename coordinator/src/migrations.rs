//! Moving regions between hosts.
//!
//! One [`Migration`] state machine per move, in the handoff's no-I/O style: it takes what happened
//! (a claim's answer, a process event, the time) and says what to do (claim a warm process on the
//! target host, tell a process a serve-protocol command, release a process). The driver
//! ([`Migrations`]) does the I/O through [`Hosts`], persists every record in the directory's store,
//! limits concurrent migrations per host, and drains hosts.
//!
//! Phases: `claiming` (a warm process on the target host) → `preparing` (it pre-warms a slot for
//! the region) → `transferring` (the source hands off; the handoff protocol decides, at the
//! directory) → `cleaning_up` (the source retires its copy) → `committed`; or `aborted` with the
//! reason from any phase. A coordinator restarted with migrations in flight waits for the handoffs
//! to settle, then resolves each from the directory: committed if the target owns the region, else
//! aborted — never both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_wire::RegionId;
use baton_wire::authority::OwnershipAuthority;
use serde::{Deserialize, Serialize};

use crate::directory::Directory;
use crate::hosts::{ClaimResult, Happened, Hosts, ProcessEvent};
use baton_wire::serve::{ServerCommand, ServerEvent};

/// A migration's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reserving a warm process on the target host.
    Claiming,
    /// The target process pre-warms a slot for the region.
    Preparing,
    /// A failover's process restores the region from its newest checkpoint.
    Restoring,
    /// The handoff runs.
    Transferring,
    /// Committed; the source retires its copy.
    CleaningUp,
    /// Done: the target owns the region.
    Committed,
    /// Done: the source kept the region (or it never moved).
    Aborted,
}

impl Phase {
    /// Whether the migration is over.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Committed | Phase::Aborted)
    }
}

/// How long one phase took.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseTiming {
    /// The phase.
    pub phase: Phase,
    /// Milliseconds spent in it.
    pub ms: f64,
}

/// Everything known about one migration (persisted; the admin API shows it).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationRecord {
    /// Its id.
    pub id: u64,
    /// The region.
    pub region: u64,
    /// `migration` (asked for), `drain` (part of draining a host), `rebalance` (the balancer
    /// relieving a host), `consolidate` (the balancer emptying a host) or `failover` (the region's
    /// owner was lost; another process restored it from its newest checkpoint).
    pub kind: String,
    /// Why it was started, when the coordinator started it on its own (the balancer's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Source host and process.
    pub from_host: String,
    /// Source process.
    pub from_process: String,
    /// Target host.
    pub to_host: String,
    /// Target process, once claimed.
    pub to_process: Option<String>,
    /// Current phase.
    pub phase: Phase,
    /// Why it aborted.
    pub reason: Option<String>,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// Time spent in each phase so far.
    pub phases: Vec<PhaseTiming>,
    /// The source's freeze, as it reported it.
    pub freeze_ms: Option<f64>,
    /// The world digest the source reported at its freeze (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
    /// The world digest the target reported when it took the region over (hex): equal to
    /// `source_digest` for a handoff that committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<String>,
    /// A failover's cause and figures (kind `failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::failover::FailoverFigures>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Reserve a warm process on `host`.
    Claim {
        /// The host.
        host: String,
    },
    /// Send a serve-protocol command to a process.
    Run {
        /// The host.
        host: String,
        /// The process.
        process: String,
        /// The command.
        command: ServerCommand,
    },
    /// Stop a process.
    Release {
        /// The host.
        host: String,
        /// The process.
        process: String,
    },
}

/// How long the target of a handoff whose source died has to report its commit or its abort
/// (well over the cluster links' 3 s idle timeout).
pub const SOURCE_GONE_SETTLE: Duration = Duration::from_secs(10);

/// Time limits per phase.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Claiming a warm process.
    pub claim: Duration,
    /// Pre-warming the slot.
    pub prepare: Duration,
    /// The handoff (its own protocol times out within this).
    pub transfer: Duration,
    /// The source's retirement.
    pub cleanup: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            claim: Duration::from_secs(10),
            prepare: Duration::from_secs(30),
            transfer: Duration::from_secs(150),
            cleanup: Duration::from_secs(10),
        }
    }
}

/// One migration's state machine. No I/O.
#[derive(Debug)]
pub struct Migration {
    record: MigrationRecord,
    /// When the source process exited while the handoff ran.
    source_gone: Option<Instant>,
    target_address: Option<SocketAddr>,
    phase_started: Instant,
    timeouts: Timeouts,
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Migration {
    /// Starts moving `region` from `(from_host, from_process)` to `to_host`.
    #[must_use]
    pub fn start(
        id: u64,
        kind: &str,
        region: u64,
        from: (String, String),
        to_host: String,
        timeouts: Timeouts,
        now: Instant,
    ) -> (Migration, Vec<Action>) {
        let record = MigrationRecord {
            id,
            region,
            kind: kind.to_owned(),
            cause: None,
            from_host: from.0,
            from_process: from.1,
            to_host: to_host.clone(),
            to_process: None,
            phase: Phase::Claiming,
            reason: None,
            started_unix_ms: unix_ms(),
            phases: Vec::new(),
            freeze_ms: None,
            source_digest: None,
            target_digest: None,
            failover: None,
        };
        (
            Migration { record, source_gone: None, target_address: None, phase_started: now, timeouts },
            vec![Action::Claim { host: to_host }],
        )
    }

    /// The record as it stands.
    #[must_use]
    pub fn record(&self) -> &MigrationRecord {
        &self.record
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.record.phases.push(PhaseTiming {
            phase: self.record.phase,
            ms: now.duration_since(self.phase_started).as_secs_f64() * 1000.0,
        });
        self.record.phase = phase;
        self.phase_started = now;
    }

    fn abort(&mut self, reason: String, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        // A claimed target that did not take the region goes away; its agent refills the pool.
        if let Some(process) = self.record.to_process.clone() {
            actions.push(Action::Release { host: self.record.to_host.clone(), process });
        }
        tracing::info!(id = self.record.id, region = %self.record.region, reason, "migration aborted");
        self.record.reason = Some(reason);
        self.enter(Phase::Aborted, now);
        actions
    }

    /// A claim's answer.
    pub fn handle_claimed(&mut self, result: ClaimResult, now: Instant) -> Vec<Action> {
        if self.record.phase != Phase::Claiming {
            return Vec::new();
        }
        match result {
            Ok((process, address)) => {
                self.record.to_process = Some(process.clone());
                self.target_address = Some(address);
                self.enter(Phase::Preparing, now);
                vec![Action::Run {
                    host: self.record.to_host.clone(),
                    process,
                    command: ServerCommand::Prepare { region: RegionId(self.record.region) },
                }]
            }
            Err(reason) => self.abort(format!("no warm process on {}: {reason}", self.record.to_host), now),
        }
    }

    /// An event from a process.
    pub fn handle_event(&mut self, event: &ProcessEvent, now: Instant) -> Vec<Action> {
        let region = RegionId(self.record.region);
        let is_target = self.record.to_process.as_deref() == Some(event.process.as_str());
        let is_source = event.process == self.record.from_process;
        let exited = matches!(event.happened, Happened::Exited { .. });
        // An error names the region of the command it answers; one that names no region (a line
        // the process could not read) still answers the command this migration sent it.
        let about_region = |event: &ServerEvent| event.region().is_none_or(|about| about == region);
        let Some(reported) = event.event().filter(|reported| about_region(reported)) else {
            return match self.record.phase {
                Phase::Preparing | Phase::Transferring if is_target && exited => {
                    self.abort("the target process exited".into(), now)
                }
                // The source died mid-handoff: the target either commits (it had everything) or
                // gives up when the link is gone; either says so.
                Phase::Transferring if is_source && exited => {
                    self.source_gone.get_or_insert(now);
                    Vec::new()
                }
                Phase::CleaningUp if is_source && exited => self.commit_cleaned_up(now),
                _ => Vec::new(),
            };
        };
        // The digests are kept whenever they come: the target's takeover may be reported after
        // the source's handoff moved the migration on.
        match reported {
            ServerEvent::Frozen { digest, .. } if is_source && !digest.is_empty() => {
                self.record.source_digest = Some(digest.clone());
            }
            ServerEvent::Authoritative { digest, .. } if is_target && !digest.is_empty() => {
                self.record.target_digest = Some(digest.clone());
            }
            _ => {}
        }
        match (self.record.phase, reported) {
            (Phase::Preparing, ServerEvent::Prepared { .. }) if is_target => {
                let Some(address) = self.target_address else { return Vec::new() };
                self.enter(Phase::Transferring, now);
                vec![Action::Run {
                    host: self.record.from_host.clone(),
                    process: self.record.from_process.clone(),
                    command: ServerCommand::Handoff { region, to: address },
                }]
            }
            (Phase::Preparing, ServerEvent::Error { error, .. }) if is_target => {
                self.abort(format!("the target refused to prepare: {error}"), now)
            }
            (Phase::Transferring, ServerEvent::Error { error, .. }) if is_source => {
                self.abort(format!("the source refused the handoff: {error}"), now)
            }
            // The target's commit won: the region moved even if the source never says so (it
            // died after the freeze); the source goes once it retires or is found gone.
            (Phase::Transferring, ServerEvent::Authoritative { .. }) if is_target => {
                if self.source_gone.is_some() {
                    return self.commit_cleaned_up(now);
                }
                self.enter(Phase::CleaningUp, now);
                Vec::new()
            }
            // The target gave up (its link to the source broke, say) and does not own the region.
            (Phase::Transferring, ServerEvent::Aborted { reason, owning: false, .. }) if is_target => {
                self.abort(format!("the target gave up: {reason}"), now)
            }
            (Phase::Transferring | Phase::CleaningUp, ServerEvent::HandedOff { figures, .. }) if is_source => {
                self.record.freeze_ms = figures.freeze_us.map(|us| us as f64 / 1000.0);
                if self.record.phase == Phase::Transferring {
                    self.enter(Phase::CleaningUp, now);
                }
                Vec::new()
            }
            (Phase::Transferring, ServerEvent::Aborted { reason, owning: true, .. }) if is_source => {
                self.abort(format!("the handoff aborted: {reason}"), now)
            }
            // The source lost the region before its handoff began (a failover took it while the
            // source waited for its checkpoint, protocol.md §14): nothing moves.
            (Phase::Transferring, ServerEvent::Aborted { reason, owning: false, .. }) if is_source => {
                self.abort(format!("the source lost the region: {reason}"), now)
            }
            (Phase::CleaningUp, ServerEvent::Retired { .. }) if is_source => self.commit_cleaned_up(now),
            _ => Vec::new(),
        }
    }

    /// The source retired (or its process went away): the migration is over.
    fn commit_cleaned_up(&mut self, now: Instant) -> Vec<Action> {
        self.enter(Phase::Committed, now);
        vec![Action::Release { host: self.record.from_host.clone(), process: self.record.from_process.clone() }]
    }

    /// The time passes; a phase over its limit ends the migration.
    pub fn handle_time(&mut self, now: Instant) -> Vec<Action> {
        // A source that died before the target decided: a target that had the link notices its
        // loss within the link's idle timeout and says so; one that never had it never will.
        if self.record.phase == Phase::Transferring
            && self.source_gone.is_some_and(|gone| now.duration_since(gone) >= SOURCE_GONE_SETTLE)
        {
            return self.abort("the source process died before the target committed".into(), now);
        }
        let limit = match self.record.phase {
            Phase::Claiming => self.timeouts.claim,
            Phase::Preparing | Phase::Restoring => self.timeouts.prepare,
            Phase::Transferring => self.timeouts.transfer,
            Phase::CleaningUp => self.timeouts.cleanup,
            Phase::Committed | Phase::Aborted => return Vec::new(),
        };
        if now.duration_since(self.phase_started) < limit {
            return Vec::new();
        }
        match self.record.phase {
            Phase::CleaningUp => {
                // Committed all the same; the source is stopped.
                self.enter(Phase::Committed, now);
                vec![Action::Release { host: self.record.from_host.clone(), process: self.record.from_process.clone() }]
            }
            Phase::Transferring => {
                // The handoff reported no outcome: the directory's answer is resolved later.
                self.record.reason = Some("no outcome reported in time".into());
                Vec::new()
            }
            phase => self.abort(format!("timed out in {phase:?}"), now),
        }
    }

    /// Asked to stop: possible before the handoff starts.
    pub fn handle_cancel(&mut self, now: Instant) -> Result<Vec<Action>, String> {
        match self.record.phase {
            Phase::Claiming | Phase::Preparing => Ok(self.abort("cancelled".into(), now)),
            phase => Err(format!("a migration cannot be cancelled in phase {phase:?}")),
        }
    }
}

/// Why a migration could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartError {
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done now (busy host, draining target, migration in flight).
    #[error("{0}")]
    Conflict(String),
}

/// Finished migrations the history keeps (in memory and in the directory); the oldest beyond
/// this are forgotten. Running ones are always kept.
pub const HISTORY_KEPT: usize = 1000;

/// The migration records: every running one and the last finished ones, forgotten in the order
/// they finished (a long migration that finishes late is as new as its end, whatever its id).
#[derive(Debug, Default)]
struct History {
    records: BTreeMap<u64, MigrationRecord>,
    /// Finished records' ids, in the order they finished (loaded ones by id, first).
    finished: std::collections::VecDeque<u64>,
}

impl History {
    /// Stores `record`; returns the ids of the finished records forgotten to keep `kept`.
    fn insert(&mut self, record: MigrationRecord, kept: usize) -> Vec<u64> {
        let was_final = self.records.get(&record.id).is_some_and(|old| old.phase.is_final());
        if record.phase.is_final() && !was_final {
            self.finished.push_back(record.id);
        }
        self.records.insert(record.id, record);
        let mut forgotten = Vec::new();
        while self.finished.len() > kept {
            if let Some(id) = self.finished.pop_front() {
                self.records.remove(&id);
                forgotten.push(id);
            }
        }
        forgotten
    }
}

/// All migrations: running ones, their drivers, and the history (the last [`HISTORY_KEPT`] to
/// finish).
pub struct Migrations {
    hosts: Arc<Hosts>,
    directory: Arc<Directory>,
    history: Mutex<History>,
    cancels: Mutex<BTreeMap<u64, tokio::sync::mpsc::UnboundedSender<()>>>,
    next_id: Mutex<u64>,
    per_host_limit: usize,
    timeouts: Timeouts,
}

impl Migrations {
    /// The migrations of a coordinator; records of earlier runs are loaded, and those that were in
    /// flight are resolved from the directory once their handoffs can have settled.
    pub fn open(
        hosts: Arc<Hosts>,
        directory: Arc<Directory>,
        per_host_limit: usize,
        timeouts: Timeouts,
    ) -> Result<Arc<Migrations>, String> {
        let loaded = directory.load_migrations().map_err(|error| error.to_string())?;
        let next = loaded.iter().map(|record| record.id).max().unwrap_or(0) + 1;
        let in_flight: Vec<u64> =
            loaded.iter().filter(|record| !record.phase.is_final()).map(|record| record.id).collect();
        let mut history = History::default();
        let mut forgotten = Vec::new();
        for record in loaded {
            forgotten.extend(history.insert(record, HISTORY_KEPT));
        }
        let migrations = Arc::new(Migrations {
            hosts,
            directory,
            history: Mutex::new(history),
            cancels: Mutex::new(BTreeMap::new()),
            next_id: Mutex::new(next),
            per_host_limit: per_host_limit.max(1),
            timeouts,
        });
        migrations.forget(&forgotten);
        if !in_flight.is_empty() {
            let resolver = migrations.clone();
            tokio::spawn(async move {
                // Commits and settling retry until the authority answers; give them time to.
                tokio::time::sleep(Duration::from_secs(5)).await;
                for id in in_flight {
                    resolver.resolve_from_directory(id);
                }
            });
        }
        Ok(migrations)
    }

    fn resolve_from_directory(&self, id: u64) {
        let Some(mut record) = self.get(id) else { return };
        if record.phase.is_final() {
            return;
        }
        let owner = self.directory.current(RegionId(record.region)).map(|ownership| ownership.owner);
        let committed = owner.as_ref().ok().is_some_and(|owner| Some(owner) == record.to_process.as_ref());
        record.phase = if committed { Phase::Committed } else { Phase::Aborted };
        record.reason = Some(format!(
            "resolved from the directory after a coordinator restart (owner: {})",
            owner.unwrap_or_else(|error| error.to_string())
        ));
        // Clean up what the lost driver would have: the loser's process goes away (a failover's
        // lost owner is gone already; its name may be a fresh process's now).
        if committed {
            if record.kind != "failover" {
                let _ = self.hosts.release(&record.from_host, &record.from_process);
            }
        } else if let Some(process) = &record.to_process {
            let _ = self.hosts.release(&record.to_host, process);
        }
        self.store(&record);
    }

    /// Every running migration and the last [`HISTORY_KEPT`] to finish, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<MigrationRecord> {
        self.history.lock().map(|history| history.records.values().cloned().collect()).unwrap_or_default()
    }

    /// The migrations running (not finished), oldest first.
    #[must_use]
    pub fn running(&self) -> Vec<MigrationRecord> {
        self.history
            .lock()
            .map(|history| history.records.values().filter(|record| !record.phase.is_final()).cloned().collect())
            .unwrap_or_default()
    }

    /// One migration.
    #[must_use]
    pub fn get(&self, id: u64) -> Option<MigrationRecord> {
        self.history.lock().ok().and_then(|history| history.records.get(&id).cloned())
    }

    /// A fresh record id (failovers share the history).
    pub fn allocate_id(&self) -> Option<u64> {
        let mut next = self.next_id.lock().ok()?;
        let id = *next;
        *next += 1;
        Some(id)
    }

    /// Persists a record driven elsewhere (a failover's) in the history.
    pub fn keep(&self, record: &MigrationRecord) {
        self.store(record);
    }

    fn store(&self, record: &MigrationRecord) {
        if let Err(error) = self.directory.save_migration(record) {
            tracing::error!(id = record.id, %error, "could not persist a migration record");
        }
        let forgotten = match self.history.lock() {
            Ok(mut history) => history.insert(record.clone(), HISTORY_KEPT),
            Err(_) => Vec::new(),
        };
        self.forget(&forgotten);
    }

    fn forget(&self, ids: &[u64]) {
        if !ids.is_empty()
            && let Err(error) = self.directory.forget_migrations(ids)
        {
            tracing::warn!(records = ids.len(), %error, "could not forget the oldest migration records");
        }
    }

    fn active_on(&self, host: &str) -> usize {
        self.running().iter().filter(|record| record.from_host == host || record.to_host == host).count()
    }

    /// Most migrations running at once that involve one host.
    #[must_use]
    pub fn per_host_limit(&self) -> usize {
        self.per_host_limit
    }

    /// Starts moving `region` to `to_host`, recording why the coordinator decided to.
    pub fn start_because(
        self: &Arc<Self>,
        region: u64,
        to_host: &str,
        kind: &str,
        cause: &str,
    ) -> Result<MigrationRecord, StartError> {
        self.start_with(region, to_host, kind, Some(cause.to_owned()))
    }

    /// Starts moving `region` to `to_host`.
    pub fn start(self: &Arc<Self>, region: u64, to_host: &str, kind: &str) -> Result<MigrationRecord, StartError> {
        self.start_with(region, to_host, kind, None)
    }

    fn start_with(
        self: &Arc<Self>,
        region: u64,
        to_host: &str,
        kind: &str,
        cause: Option<String>,
    ) -> Result<MigrationRecord, StartError> {
        let (from_host, from_process, _) = self
            .hosts
            .locate(RegionId(region))
            .ok_or_else(|| StartError::NotFound(format!("region {region} is not served by any registered host")))?;
        if !self.hosts.exists(to_host) {
            return Err(StartError::NotFound(format!("unknown host {to_host}")));
        }
        if from_host == to_host {
            return Err(StartError::Conflict(format!("region {region} is on {to_host} already")));
        }
        if self.hosts.is_draining(to_host) {
            return Err(StartError::Conflict(format!("host {to_host} is draining")));
        }
        if self.hosts.is_free(to_host) {
            return Err(StartError::Conflict(format!(
                "host {to_host} is free (the balancer emptied it; it takes regions again once the balancer \
                 takes it back into use)"
            )));
        }
        if self.running().iter().any(|record| record.region == region) {
            return Err(StartError::Conflict(format!("region {region} is being migrated already")));
        }
        for host in [&from_host, &to_host.to_owned()] {
            if self.active_on(host) >= self.per_host_limit {
                return Err(StartError::Conflict(format!(
                    "host {host} has {} migrations running (the limit)",
                    self.per_host_limit
                )));
            }
        }
        let Some(id) = self.allocate_id() else {
            return Err(StartError::Conflict("migration ids unavailable".into()));
        };
        let (mut machine, actions) = Migration::start(
            id,
            kind,
            region,
            (from_host, from_process),
            to_host.to_owned(),
            self.timeouts,
            Instant::now(),
        );
        machine.record.cause = cause;
        let record = machine.record().clone();
        self.store(&record);
        let (cancel, cancelled) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut cancels) = self.cancels.lock() {
            cancels.insert(id, cancel);
        }
        tokio::spawn(drive(self.clone(), machine, actions, cancelled));
        Ok(record)
    }

    /// Asks a migration to stop (only before its handoff starts).
    pub fn cancel(&self, id: u64) -> Result<(), StartError> {
        let record = self.get(id).ok_or_else(|| StartError::NotFound(format!("no migration {id}")))?;
        if record.phase.is_final() {
            return Err(StartError::Conflict(format!("migration {id} is over ({:?})", record.phase)));
        }
        if record.kind == "failover" {
            return Err(StartError::Conflict(format!("migration {id} is a failover; failovers are not cancelled")));
        }
        if !matches!(record.phase, Phase::Claiming | Phase::Preparing) {
            return Err(StartError::Conflict(format!(
                "migration {id} cannot be cancelled in phase {:?}",
                record.phase
            )));
        }
        let sender = self.cancels.lock().ok().and_then(|cancels| cancels.get(&id).cloned());
        sender.map(|sender| sender.send(())).transpose().map_err(|_| StartError::Conflict("already over".into()))?;
        Ok(())
    }

    /// Drains `host`: no new regions go there, and each of its regions moves to the least loaded
    /// other host, a few at a time (the per-host limit). Returns the regions to move.
    pub fn drain(self: &Arc<Self>, host: &str) -> Result<Vec<u64>, StartError> {
        if !self.hosts.set_draining(host, true) {
            return Err(StartError::NotFound(format!("unknown host {host}")));
        }
        let regions = self.hosts.regions_on(host).into_iter().map(|region| region.0).collect();
        let migrations = self.clone();
        let draining = host.to_owned();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                let left = migrations.hosts.regions_on(&draining);
                if left.is_empty() {
                    tracing::info!(host = draining, "drained");
                    return;
                }
                for region in left {
                    if let Some(target) = migrations.least_loaded_except(&draining) {
                        match migrations.start(region.0, &target, "drain") {
                            Ok(record) => {
                                tracing::info!(id = record.id, %region, to = target, "drain migration started")
                            }
                            Err(error) => tracing::debug!(%region, %error, "drain migration waits"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            tracing::error!(host = draining, "draining did not finish in 10 minutes");
        });
        Ok(regions)
    }

    fn least_loaded_except(&self, host: &str) -> Option<String> {
        self.hosts
            .views()
            .into_iter()
            .filter(|view| view.name != host && view.connected && !view.draining && !view.free)
            .filter(|view| view.processes.iter().any(|process| process.warm))
            .min_by(|a, b| {
                let load =
                    |view: &crate::hosts::HostView| view.processes.iter().map(|p| p.regions.len()).sum::<usize>();
                load(a).cmp(&load(b)).then(a.cpu_cores.total_cmp(&b.cpu_cores))
            })
            .map(|view| view.name)
    }
}

async fn drive(
    migrations: Arc<Migrations>,
    mut machine: Migration,
    actions: Vec<Action>,
    mut cancelled: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let mut events = migrations.hosts.subscribe();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let (claims, mut claimed) = tokio::sync::mpsc::unbounded_channel();
    let mut pending = actions;
    loop {
        for action in std::mem::take(&mut pending) {
            perform(&migrations, action, &claims);
        }
        migrations.store(machine.record());
        if machine.record().phase.is_final() {
            break;
        }
        let now = Instant::now();
        pending = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => machine.handle_event(&event, Instant::now()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a migration driver missed process events");
                    Vec::new()
                }
                Err(_) => break,
            },
            Some(result) = claimed.recv() => machine.handle_claimed(result, Instant::now()),
            Some(()) = cancelled.recv() => machine.handle_cancel(Instant::now()).unwrap_or_default(),
            _ = ticker.tick() => machine.handle_time(now),
        };
    }
    if let Ok(mut cancels) = migrations.cancels.lock() {
        cancels.remove(&machine.record().id);
    }
}

fn perform(migrations: &Arc<Migrations>, action: Action, claims: &tokio::sync::mpsc::UnboundedSender<ClaimResult>) {
    match action {
        Action::Claim { host } => {
            let migrations = migrations.clone();
            let claims = claims.clone();
            tokio::spawn(async move {
                let result = migrations.hosts.claim(&host, migrations.timeouts.claim).await;
                let _ = claims.send(result);
            });
        }
        Action::Run { host, process, command } => {
            if let Err(error) = migrations.hosts.run(&host, &process, command) {
                tracing::warn!(host, process, %error, "could not send a command");
            }
        }
        Action::Release { host, process } => {
            if let Err(error) = migrations.hosts.release(&host, &process) {
                tracing::warn!(host, process, %error, "could not release a process");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::HostsError;

    fn event(process: &str, event: ServerEvent) -> ProcessEvent {
        ProcessEvent { host: String::new(), process: process.to_owned(), happened: Happened::Event(event) }
    }

    fn prepared(region: u64) -> ServerEvent {
        ServerEvent::Prepared { region: RegionId(region) }
    }

    #[test]
    fn the_history_forgets_the_first_finished_migrations_and_keeps_running_ones() {
        // The API's description of the history names this number.
        assert_eq!(HISTORY_KEPT, 1000);
        let now = Instant::now();
        let record = |id: u64, phase: Phase| {
            let (machine, _) = Migration::start(
                id,
                "migration",
                7,
                ("h1".into(), "h1-p1".into()),
                "h2".into(),
                Timeouts::default(),
                now,
            );
            MigrationRecord { phase, ..machine.record().clone() }
        };
        let mut history = History::default();
        let kept = 2;
        let mut forgotten = Vec::new();
        // 1 runs a long time; 2, 3 and 4 start after it and finish first.
        for (id, phase) in [
            (1, Phase::Transferring),
            (2, Phase::Claiming),
            (2, Phase::Committed),
            (3, Phase::Aborted),
            (4, Phase::Committed),
        ] {
            forgotten.extend(history.insert(record(id, phase), kept));
        }
        assert_eq!(forgotten, vec![2], "the first to finish is forgotten first");
        // 1 finishes last: the newest finished, kept; 3 goes. Stored again finished, nothing moves.
        assert_eq!(history.insert(record(1, Phase::Aborted), kept), vec![3]);
        assert_eq!(history.insert(record(1, Phase::Aborted), kept), Vec::<u64>::new());
        assert_eq!(history.records.keys().copied().collect::<Vec<_>>(), vec![1, 4]);
        // Running ones are never counted or forgotten.
        assert_eq!(history.insert(record(5, Phase::Preparing), kept), Vec::<u64>::new());
        assert_eq!(history.insert(record(6, Phase::Committed), kept), vec![4]);
        assert_eq!(history.records.keys().copied().collect::<Vec<_>>(), vec![1, 5, 6]);
    }

    fn started() -> (Migration, Instant) {
        let now = Instant::now();
        let (machine, actions) =
            Migration::start(1, "migration", 7, ("h1".into(), "h1-p1".into()), "h2".into(), Timeouts::default(), now);
        assert_eq!(actions, vec![Action::Claim { host: "h2".into() }]);
        (machine, now)
    }

    #[test]
    fn a_migration_walks_its_phases_and_times_them() {
        let (mut machine, now) = started();
        let target: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let actions = machine.handle_claimed(Ok(("h2-p3".into(), target)), now);
        assert!(matches!(&actions[..], [Action::Run { process, .. }] if process == "h2-p3"));
        // Events of other processes or regions change nothing.
        assert!(machine.handle_event(&event("h2-p9", prepared(7)), now).is_empty());
        assert!(machine.handle_event(&event("h2-p3", prepared(8)), now).is_empty());
        let actions = machine.handle_event(&event("h2-p3", prepared(7)), now);
        assert_eq!(
            actions,
            vec![Action::Run {
                host: "h1".into(),
                process: "h1-p1".into(),
                command: ServerCommand::Handoff { region: RegionId(7), to: target },
            }]
        );
        assert_eq!(machine.record().phase, Phase::Transferring);
        assert!(machine.handle_cancel(now).is_err(), "no cancel once the handoff runs");
        machine.handle_event(
            &event(
                "h1-p1",
                ServerEvent::HandedOff {
                    region: RegionId(7),
                    epoch: baton_wire::Epoch(2),
                    figures: baton_wire::serve::HandoffFigures { freeze_us: Some(2500), ..Default::default() },
                },
            ),
            now,
        );
        assert_eq!(machine.record().phase, Phase::CleaningUp);
        let actions = machine.handle_event(&event("h1-p1", ServerEvent::Retired { region: RegionId(7) }), now);
        assert_eq!(actions, vec![Action::Release { host: "h1".into(), process: "h1-p1".into() }]);
        assert_eq!(machine.record().phase, Phase::Committed);
        assert_eq!(machine.record().freeze_ms, Some(2.5));
        let phases: Vec<Phase> = machine.record().phases.iter().map(|timing| timing.phase).collect();
        assert_eq!(phases, vec![Phase::Claiming, Phase::Preparing, Phase::Transferring, Phase::CleaningUp]);
    }

    fn exited(process: &str) -> ProcessEvent {
        ProcessEvent {
            host: String::new(),
            process: process.to_owned(),
            happened: Happened::Exited { regions: Vec::new() },
        }
    }

    /// A migration whose handoff runs (source h1-p1, target h2-p3).
    fn transferring() -> (Migration, Instant) {
        let (mut machine, now) = started();
        machine.handle_claimed(Ok(("h2-p3".into(), "127.0.0.1:9000".parse().unwrap())), now);
        machine.handle_event(&event("h2-p3", prepared(7)), now);
        assert_eq!(machine.record().phase, Phase::Transferring);
        (machine, now)
    }

    #[test]
    fn a_source_that_dies_mid_handoff_ends_as_the_target_decides() {
        // The target had everything and committed: the migration is done, the dead source goes.
        let (mut machine, now) = transferring();
        assert!(machine.handle_event(&exited("h1-p1"), now).is_empty(), "the target decides");
        assert_eq!(machine.record().phase, Phase::Transferring);
        let won = ServerEvent::Authoritative { region: RegionId(7), epoch: baton_wire::Epoch(2), digest: "ab".into() };
        let actions = machine.handle_event(&event("h2-p3", won), now);
        assert_eq!(actions, vec![Action::Release { host: "h1".into(), process: "h1-p1".into() }]);
        assert_eq!(machine.record().phase, Phase::Committed);
        // The target gave up instead: aborted, and the target goes (a failover takes the region).
        let (mut machine, now) = transferring();
        machine.handle_event(&exited("h1-p1"), now);
        let gave_up = ServerEvent::Aborted { region: RegionId(7), owning: false, reason: "link lost".into() };
        let actions = machine.handle_event(&event("h2-p3", gave_up), now);
        assert_eq!(actions, vec![Action::Release { host: "h2".into(), process: "h2-p3".into() }]);
        assert_eq!(machine.record().phase, Phase::Aborted);
        // The target never had a link (the source died before connecting): it says nothing, and
        // the migration ends after the settling time.
        let (mut machine, now) = transferring();
        machine.handle_event(&exited("h1-p1"), now);
        assert!(machine.handle_time(now + SOURCE_GONE_SETTLE - Duration::from_millis(1)).is_empty());
        let actions = machine.handle_time(now + SOURCE_GONE_SETTLE);
        assert_eq!(actions, vec![Action::Release { host: "h2".into(), process: "h2-p3".into() }]);
        assert_eq!(machine.record().phase, Phase::Aborted);
    }

    #[test]
    fn a_source_that_loses_the_region_before_its_handoff_began_ends_the_migration() {
        // Waiting for its checkpoint (protocol.md §14), the source saw a failover take the region.
        let (mut machine, now) = transferring();
        let lost = ServerEvent::Aborted { region: RegionId(7), owning: false, reason: "taken over".into() };
        let actions = machine.handle_event(&event("h1-p1", lost), now);
        assert_eq!(actions, vec![Action::Release { host: "h2".into(), process: "h2-p3".into() }]);
        assert_eq!(machine.record().phase, Phase::Aborted);
        assert!(machine.record().reason.as_deref().is_some_and(|reason| reason.contains("lost the region")));
    }

    #[test]
    fn the_target_s_commit_may_come_before_the_source_s_report() {
        let (mut machine, now) = transferring();
        let won = ServerEvent::Authoritative { region: RegionId(7), epoch: baton_wire::Epoch(2), digest: "ab".into() };
        assert!(machine.handle_event(&event("h2-p3", won), now).is_empty());
        assert_eq!(machine.record().phase, Phase::CleaningUp);
        let handed_off = ServerEvent::HandedOff {
            region: RegionId(7),
            epoch: baton_wire::Epoch(2),
            figures: baton_wire::serve::HandoffFigures { freeze_us: Some(3100), ..Default::default() },
        };
        machine.handle_event(&event("h1-p1", handed_off), now);
        assert_eq!(machine.record().freeze_ms, Some(3.1));
        let phases: Vec<Phase> = machine.record().phases.iter().map(|timing| timing.phase).collect();
        assert_eq!(phases, vec![Phase::Claiming, Phase::Preparing, Phase::Transferring], "cleaning up entered once");
        let actions = machine.handle_event(&event("h1-p1", ServerEvent::Retired { region: RegionId(7) }), now);
        assert_eq!(actions, vec![Action::Release { host: "h1".into(), process: "h1-p1".into() }]);
        assert_eq!(machine.record().phase, Phase::Committed);
    }

    #[test]
    fn the_digests_at_the_freeze_and_the_takeover_are_kept_whichever_comes_first() {
        let frozen = |process: &str, digest: &str| {
            event(
                process,
                ServerEvent::Frozen { region: RegionId(7), tick: 9, last_tick_at_us: 1, digest: digest.into() },
            )
        };
        let won = |digest: &str| {
            let reported =
                ServerEvent::Authoritative { region: RegionId(7), epoch: baton_wire::Epoch(2), digest: digest.into() };
            event("h2-p3", reported)
        };
        let handed_off = ServerEvent::HandedOff {
            region: RegionId(7),
            epoch: baton_wire::Epoch(2),
            figures: baton_wire::serve::HandoffFigures::default(),
        };
        // The source's report moves the migration on before the target's takeover is heard.
        let (mut machine, now) = transferring();
        machine.handle_event(&frozen("h1-p1", "aa"), now);
        machine.handle_event(&event("h1-p1", handed_off), now);
        assert_eq!(machine.record().phase, Phase::CleaningUp);
        machine.handle_event(&won("aa"), now);
        assert_eq!(machine.record().source_digest.as_deref(), Some("aa"));
        assert_eq!(machine.record().target_digest.as_deref(), Some("aa"));
        // Only the source's freeze and the target's takeover count, and an empty digest (an older
        // server) is none.
        let (mut machine, now) = transferring();
        machine.handle_event(&frozen("h2-p3", "bb"), now);
        machine.handle_event(&frozen("h1-p1", ""), now);
        assert_eq!(machine.record().source_digest, None);
        machine.handle_event(&event("h1-p1", won("cc").event().cloned().unwrap()), now);
        assert_eq!(machine.record().target_digest, None, "the source's takeover is not the target's");
        machine.handle_event(&won(""), now);
        assert_eq!(machine.record().target_digest, None);
        machine.handle_event(&won("dd"), now);
        assert_eq!(machine.record().target_digest.as_deref(), Some("dd"));
    }

    #[test]
    fn failures_abort_and_release_the_claimed_target() {
        let (mut machine, now) = started();
        assert_eq!(
            machine.handle_claimed(Err(HostsError::NoWarmProcess("none ready".into())), now),
            Vec::new(),
            "nothing was claimed, nothing to release"
        );
        assert_eq!(machine.record().phase, Phase::Aborted);

        let (mut machine, now) = started();
        machine.handle_claimed(Ok(("h2-p3".into(), "127.0.0.1:9000".parse().unwrap())), now);
        machine.handle_event(&event("h2-p3", prepared(7)), now);
        let actions = machine.handle_event(
            &event("h1-p1", ServerEvent::Aborted { region: RegionId(7), owning: true, reason: "x".into() }),
            now,
        );
        assert_eq!(actions, vec![Action::Release { host: "h2".into(), process: "h2-p3".into() }]);
        assert_eq!(machine.record().phase, Phase::Aborted);

        let (mut machine, now) = started();
        machine.handle_claimed(Ok(("h2-p3".into(), "127.0.0.1:9000".parse().unwrap())), now);
        assert!(machine.handle_time(now + Duration::from_secs(29)).is_empty());
        let actions = machine.handle_time(now + Duration::from_secs(31));
        assert_eq!(actions, vec![Action::Release { host: "h2".into(), process: "h2-p3".into() }]);
        assert_eq!(machine.record().phase, Phase::Aborted);

        let (mut machine, now) = started();
        assert!(machine.handle_cancel(now).is_ok());
        assert_eq!(machine.record().reason.as_deref(), Some("cancelled"));
    }

    #[test]
    fn only_committed_and_aborted_are_final() {
        for phase in [Phase::Claiming, Phase::Preparing, Phase::Restoring, Phase::Transferring, Phase::CleaningUp] {
            assert!(!phase.is_final(), "{phase:?}");
        }
        assert!(Phase::Committed.is_final());
        assert!(Phase::Aborted.is_final());
    }

    #[test]
    fn a_record_says_when_it_started_and_how_long_each_phase_took() {
        let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let before = wall();
        let (mut machine, now) = started();
        assert!(machine.record().started_unix_ms >= before && machine.record().started_unix_ms <= wall());
        machine
            .handle_claimed(Ok(("h2-p3".into(), "127.0.0.1:9000".parse().unwrap())), now + Duration::from_millis(250));
        machine.handle_event(&event("h2-p3", prepared(7)), now + Duration::from_millis(1250));
        let phases: Vec<(Phase, f64)> =
            machine.record().phases.iter().map(|timing| (timing.phase, timing.ms)).collect();
        assert_eq!(phases, vec![(Phase::Claiming, 250.0), (Phase::Preparing, 1000.0)]);
    }

    fn error(region: u64) -> ServerEvent {
        ServerEvent::Error { region: Some(RegionId(region)), error: "refused".into() }
    }

    fn handed_off() -> ServerEvent {
        ServerEvent::HandedOff {
            region: RegionId(7),
            epoch: baton_wire::Epoch(2),
            figures: baton_wire::serve::HandoffFigures { freeze_us: Some(1000), ..Default::default() },
        }
    }

    /// A migration in `phase` (source h1-p1, target h2-p3).
    fn in_phase(phase: Phase) -> (Migration, Instant) {
        let (mut machine, now) = started();
        if phase == Phase::Claiming {
            return (machine, now);
        }
        machine.handle_claimed(Ok(("h2-p3".into(), "127.0.0.1:9000".parse().unwrap())), now);
        if phase != Phase::Preparing {
            machine.handle_event(&event("h2-p3", prepared(7)), now);
        }
        if phase == Phase::CleaningUp {
            machine.handle_event(&event("h1-p1", handed_off()), now);
        }
        assert_eq!(machine.record().phase, phase);
        (machine, now)
    }

    /// Every event is acted on only when it comes from the process it is expected from: the same
    /// event from the other side of the handoff, or from a third process, changes nothing.
    #[test]
    fn each_event_counts_only_from_the_side_that_sends_it() {
        let won = ServerEvent::Authoritative { region: RegionId(7), epoch: baton_wire::Epoch(2), digest: "ab".into() };
        let gave_up = ServerEvent::Aborted { region: RegionId(7), owning: false, reason: "link lost".into() };
        let kept = ServerEvent::Aborted { region: RegionId(7), owning: true, reason: "did not converge".into() };
        let retired = ServerEvent::Retired { region: RegionId(7) };
        // (phase, what happened, the process it counts from, the phase it leads to)
        let cases: Vec<(Phase, Happened, &str, Phase)> = vec![
            (Phase::Preparing, Happened::Event(prepared(7)), "h2-p3", Phase::Transferring),
            (Phase::Preparing, Happened::Event(error(7)), "h2-p3", Phase::Aborted),
            (Phase::Preparing, Happened::Exited { regions: Vec::new() }, "h2-p3", Phase::Aborted),
            (Phase::Transferring, Happened::Event(error(7)), "h1-p1", Phase::Aborted),
            (Phase::Transferring, Happened::Event(won), "h2-p3", Phase::CleaningUp),
            (Phase::Transferring, Happened::Event(handed_off()), "h1-p1", Phase::CleaningUp),
            (Phase::Transferring, Happened::Event(kept), "h1-p1", Phase::Aborted),
            (Phase::Transferring, Happened::Exited { regions: Vec::new() }, "h2-p3", Phase::Aborted),
            (Phase::CleaningUp, Happened::Event(retired), "h1-p1", Phase::Committed),
            (Phase::CleaningUp, Happened::Exited { regions: Vec::new() }, "h1-p1", Phase::Committed),
        ];
        for (phase, happened, from, leads_to) in cases {
            for process in ["h1-p1", "h2-p3", "h3-p1"] {
                let (mut machine, now) = in_phase(phase);
                let event = ProcessEvent { host: String::new(), process: process.into(), happened: happened.clone() };
                machine.handle_event(&event, now);
                let expected = if process == from { leads_to } else { phase };
                assert_eq!(machine.record().phase, expected, "{happened:?} from {process} in {phase:?}");
            }
        }
        // A region lost (`owning: false`) counts from either side: the target gave up, or the
        // source lost the region before its handoff began (protocol.md §14).
        for (process, leads_to) in
            [("h1-p1", Phase::Aborted), ("h2-p3", Phase::Aborted), ("h3-p1", Phase::Transferring)]
        {
            let (mut machine, now) = in_phase(Phase::Transferring);
            let event = ProcessEvent {
                host: String::new(),
                process: process.into(),
                happened: Happened::Event(gave_up.clone()),
            };
            machine.handle_event(&event, now);
            assert_eq!(machine.record().phase, leads_to, "a lost region from {process}");
        }
    }

    /// The source's exit mid-handoff waits for the target's word; a third process's exit does not
    /// start that wait, and the target's exit does not retire the source.
    #[test]
    fn only_the_source_s_exit_waits_for_the_target_s_word() {
        let (mut machine, now) = in_phase(Phase::Transferring);
        machine.handle_event(&exited("h3-p1"), now);
        assert_eq!(machine.record().phase, Phase::Transferring);
        let won = ServerEvent::Authoritative { region: RegionId(7), epoch: baton_wire::Epoch(2), digest: "ab".into() };
        machine.handle_event(&event("h2-p3", won), now);
        assert_eq!(machine.record().phase, Phase::CleaningUp, "the source is still there to retire");
        let (mut machine, now) = in_phase(Phase::CleaningUp);
        machine.handle_event(&exited("h2-p3"), now);
        assert_eq!(machine.record().phase, Phase::CleaningUp, "the target's exit does not retire the source");
    }

    #[test]
    fn a_phase_ends_exactly_at_its_limit() {
        let limits = Timeouts::default();
        for (phase, limit, after) in [
            (Phase::Claiming, limits.claim, Phase::Aborted),
            (Phase::Preparing, limits.prepare, Phase::Aborted),
            (Phase::CleaningUp, limits.cleanup, Phase::Committed),
        ] {
            let (mut machine, now) = in_phase(phase);
            machine.handle_time(now + limit - Duration::from_millis(1));
            assert_eq!(machine.record().phase, phase);
            machine.handle_time(now + limit);
            assert_eq!(machine.record().phase, after, "{phase:?} at its limit");
        }
        let (mut machine, now) = in_phase(Phase::Transferring);
        machine.handle_time(now + limits.transfer);
        assert_eq!(machine.record().phase, Phase::Transferring, "resolved from the directory later");
        assert_eq!(machine.record().reason.as_deref(), Some("no outcome reported in time"));
    }
}
