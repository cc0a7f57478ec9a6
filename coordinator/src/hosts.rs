//! The hosts of the cluster, as their agents report them, and the way to give them work.
//!
//! Each agent keeps one control connection (`baton_wire::control`). The coordinator knows, per
//! host, its processes (warm or serving, the regions each owns), its load and when it last spoke.
//! Events the processes report (a handoff's phases, ownership changes) are broadcast to whoever
//! drives a migration. Nothing here is persisted: hosts re-register after a coordinator restart
//! and report their processes again within one status interval.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_net::framed::{ReadEnd, read_frames, spawn_writer};
use baton_wire::RegionId;
use baton_wire::control::{AgentMessage, CONTROL_VERSION, CoordinatorMessage, HostLoad, ProcessInfo, RegionLoadReport};
use baton_wire::serve::{AsJson, ServerCommand, ServerEvent};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{broadcast, oneshot};

/// What happened to a region-server process, as its agent reported it.
#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    /// The process reported a serve-protocol event.
    Event(ServerEvent),
    /// The process exited on its own (its agent starts it again, empty).
    Exited {
        /// The regions it owned.
        regions: Vec<RegionId>,
    },
}

/// Something a region-server process reported through its agent, or its exit.
#[derive(Clone, Debug)]
pub struct ProcessEvent {
    /// The host.
    pub host: String,
    /// The process.
    pub process: String,
    /// What happened.
    pub happened: Happened,
}

impl ProcessEvent {
    /// The serve-protocol event, unless the process exited.
    #[must_use]
    pub fn event(&self) -> Option<&ServerEvent> {
        match &self.happened {
            Happened::Event(event) => Some(event),
            Happened::Exited { .. } => None,
        }
    }
}

/// What the coordinator knows of a host (the admin API shows it).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HostView {
    /// The host's name.
    pub name: String,
    /// Whether its agent is connected and reporting (a host declared dead is not).
    pub connected: bool,
    /// Whether it was declared dead: its agent did not report for longer than the limit, so its
    /// processes count as serving nothing (with failover on, its regions are restored elsewhere).
    /// It comes back when its agent reports again.
    pub dead: bool,
    /// Whether it is being drained (no new regions).
    pub draining: bool,
    /// Whether the balancer freed it (emptied, no warm pool: it may be switched off). A free host
    /// takes no migrations until the balancer takes it back into use.
    pub free: bool,
    /// Most processes it runs.
    pub capacity: u32,
    /// CPU cores its region servers may use, as its agent declared.
    pub capacity_cores: f64,
    /// Memory its region servers may use, in bytes, as its agent declared.
    pub capacity_memory: u64,
    /// Seconds since its agent last reported.
    pub last_seen_s: f64,
    /// CPU used by its region-server processes, in cores.
    pub cpu_cores: f64,
    /// Their resident memory, in bytes.
    pub memory_bytes: u64,
    /// Bytes its handoffs have sent since its agent started.
    pub migration_bytes: u64,
    /// What each region it serves costs.
    pub regions: Vec<RegionLoad>,
    /// Its processes.
    pub processes: Vec<ProcessView>,
}

/// What one region costs its host (its owner reports it once a second).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RegionLoad {
    /// The region.
    pub region: u64,
    /// Mean tick duration over the last second, in milliseconds.
    pub tick_ms: f64,
    /// Longest tick over the last second, in milliseconds.
    pub tick_ms_max: f64,
    /// A tick's budget (the tick interval), in milliseconds; 0 if the server did not say.
    pub tick_budget_ms: f64,
    /// Players in it.
    pub players: u64,
    /// Live entities (the size of its state).
    pub entities: u64,
}

impl RegionLoad {
    fn from_report(report: &RegionLoadReport) -> RegionLoad {
        RegionLoad {
            region: report.region.0,
            tick_ms: report.tick_ms,
            tick_ms_max: report.tick_ms_max,
            tick_budget_ms: report.tick_budget_ms,
            players: report.players,
            entities: report.entities,
        }
    }

    /// The cores its ticks use: the share of each tick interval spent ticking (0 if the server
    /// reported no budget).
    #[must_use]
    pub fn tick_cores(&self) -> f64 {
        if self.tick_budget_ms > 0.0 { self.tick_ms / self.tick_budget_ms } else { 0.0 }
    }
}

/// A region-server process of a host.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ProcessView {
    /// Its instance name.
    pub name: String,
    /// Its cluster address.
    pub address: String,
    /// Idle in the warm pool.
    pub warm: bool,
    /// Regions it owns.
    pub regions: Vec<u64>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Its operating-system process id on its host.
    pub pid: u32,
    /// Its live heap in bytes (allocated, not yet freed), as it last reported it; absent from a
    /// process that does not count it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_bytes: Option<u64>,
}

struct HostEntry {
    capacity: u32,
    capacity_cores: f64,
    capacity_memory: u64,
    free: bool,
    processes: Vec<ProcessInfo>,
    load: HostLoad,
    last_seen: Instant,
    sender: Option<UnboundedSender<CoordinatorMessage>>,
    connection: u64,
    draining: bool,
    dead: bool,
    /// How long it had been silent when it was declared dead.
    silent_at_death: Duration,
}

/// Where a region's owner stands, as the hosts report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// A live host reports the owner serving the region.
    Serving,
    /// The owner's host was declared dead this long after its last report.
    HostDead {
        /// How long its agent had been silent.
        silent_for: Duration,
    },
    /// A live host has the owner process, which does not serve the region (it exited and was
    /// started again, or it let the region go).
    NotServing,
    /// No host reports the owner process.
    Unknown,
}

/// Why the coordinator could not give a host's agent work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    /// No agent ever registered this host.
    #[error("unknown host {0}")]
    UnknownHost(String),
    /// The host's agent is not connected now.
    #[error("host {0} is not connected")]
    NotConnected(String),
    /// The registry's lock was poisoned by a panic elsewhere.
    #[error("host registry unavailable")]
    Unavailable,
    /// The agent did not answer a claim within its time.
    #[error("host {0} did not answer the claim in time")]
    ClaimTimedOut(String),
    /// The agent had no warm process to give (its reason).
    #[error("{0}")]
    NoWarmProcess(String),
    /// The host serves regions (it cannot be freed).
    #[error("host {0} serves regions")]
    NotEmpty(String),
}

/// A claim's answer: the reserved process and its address, or why none is.
pub type ClaimResult = Result<(String, SocketAddr), HostsError>;

/// The registry of hosts.
pub struct Hosts {
    hosts: Mutex<HashMap<String, HostEntry>>,
    events: broadcast::Sender<ProcessEvent>,
    claims: Mutex<HashMap<u64, oneshot::Sender<ClaimResult>>>,
    next_id: AtomicU64,
    /// Claimed processes being given a region outside any migration, failover or standby (the
    /// admin API's `POST /v1/regions`), by name: in use though they own nothing yet.
    placing: Arc<Mutex<HashSet<String>>>,
}

/// A claimed process being given a region ([`Hosts::placing`]); it counts as in use until this is
/// dropped.
#[must_use = "the process counts as in use only while this lives"]
pub struct Placing {
    process: String,
    placing: Arc<Mutex<HashSet<String>>>,
}

impl Drop for Placing {
    fn drop(&mut self) {
        if let Ok(mut placing) = self.placing.lock() {
            placing.remove(&self.process);
        }
    }
}

impl Default for Hosts {
    fn default() -> Self {
        Hosts {
            hosts: Mutex::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            claims: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            placing: Arc::default(),
        }
    }
}

impl Hosts {
    /// Marks claimed `process` as in use while it is given a region outside any migration,
    /// failover or standby, until the returned guard is dropped (see [`crate::idle`]).
    pub fn placing(&self, process: &str) -> Placing {
        if let Ok(mut placing) = self.placing.lock() {
            placing.insert(process.to_owned());
        }
        Placing { process: process.to_owned(), placing: self.placing.clone() }
    }

    /// The processes being given a region now ([`Hosts::placing`]).
    #[must_use]
    pub fn placing_now(&self) -> Vec<String> {
        self.placing.lock().map(|placing| placing.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every host, by name.
    #[must_use]
    pub fn views(&self) -> Vec<HostView> {
        let Ok(hosts) = self.hosts.lock() else { return Vec::new() };
        let mut views: Vec<HostView> = hosts
            .iter()
            .map(|(name, entry)| HostView {
                name: name.clone(),
                connected: entry.sender.is_some() && !entry.dead,
                dead: entry.dead,
                draining: entry.draining,
                free: entry.free,
                capacity: entry.capacity,
                capacity_cores: entry.capacity_cores,
                capacity_memory: entry.capacity_memory,
                last_seen_s: entry.last_seen.elapsed().as_secs_f64(),
                cpu_cores: entry.load.cpu_cores,
                memory_bytes: entry.load.memory_bytes,
                migration_bytes: entry.load.migration_bytes,
                regions: entry.load.regions.iter().map(RegionLoad::from_report).collect(),
                processes: entry
                    .processes
                    .iter()
                    .map(|process| ProcessView {
                        name: process.name.clone(),
                        address: process.address.to_string(),
                        warm: process.warm,
                        regions: process.regions.iter().map(|region| region.0).collect(),
                        restarts: process.restarts,
                        pid: process.pid,
                        heap_bytes: process.heap_bytes,
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Declares dead every host whose agent has not reported for longer than `silent_after`: its
    /// processes count as serving nothing from now on, and each is announced as exited. Returns
    /// the hosts declared dead now, with how long each had been silent. A dead host comes back
    /// when its agent reports again.
    pub fn declare_dead(&self, silent_after: Duration) -> Vec<(String, Duration)> {
        let mut dead = Vec::new();
        let mut exits = Vec::new();
        {
            let Ok(mut hosts) = self.hosts.lock() else { return Vec::new() };
            for (name, entry) in hosts.iter_mut() {
                let silent_for = entry.last_seen.elapsed();
                if !entry.dead && silent_for > silent_after {
                    entry.dead = true;
                    entry.silent_at_death = silent_for;
                    for process in &mut entry.processes {
                        exits.push(ProcessEvent {
                            host: name.clone(),
                            process: process.name.clone(),
                            happened: Happened::Exited { regions: std::mem::take(&mut process.regions) },
                        });
                        process.warm = false;
                    }
                    entry.load.regions.clear();
                    dead.push((name.clone(), silent_for));
                }
            }
        }
        // Whoever follows the processes (a migration whose source or target was there) learns
        // they are gone as if each had exited.
        for exit in exits {
            let _ = self.events.send(exit);
        }
        dead
    }

    /// How long `host`'s agent has not reported, unless it is declared dead (a disconnected agent
    /// counts as silent since its last report).
    #[must_use]
    pub fn silence(&self, host: &str) -> Option<Duration> {
        let hosts = self.hosts.lock().ok()?;
        let entry = hosts.get(host)?;
        (!entry.dead).then(|| entry.last_seen.elapsed())
    }

    /// Where the owner `process` of `region` stands, and its host if one reports the process.
    #[must_use]
    pub fn owner_state(&self, process: &str, region: RegionId) -> (OwnerState, Option<String>) {
        let Ok(hosts) = self.hosts.lock() else { return (OwnerState::Unknown, None) };
        for (name, entry) in hosts.iter() {
            let Some(info) = entry.processes.iter().find(|info| info.name == process) else { continue };
            let state = if entry.dead {
                OwnerState::HostDead { silent_for: entry.silent_at_death }
            } else if info.regions.contains(&region) {
                OwnerState::Serving
            } else {
                OwnerState::NotServing
            };
            return (state, Some(name.clone()));
        }
        (OwnerState::Unknown, None)
    }

    /// Whether `host` is known.
    #[must_use]
    pub fn exists(&self, host: &str) -> bool {
        self.hosts.lock().is_ok_and(|hosts| hosts.contains_key(host))
    }

    /// Marks `host` as draining (or not).
    pub fn set_draining(&self, host: &str, draining: bool) -> bool {
        self.hosts
            .lock()
            .ok()
            .and_then(|mut hosts| hosts.get_mut(host).map(|entry| entry.draining = draining))
            .is_some()
    }

    /// Marks `host` free (emptied by the balancer: its agent keeps no warm processes) or in use.
    /// Its agent is told now if it is connected, and again whenever it registers (a host switched
    /// off while free learns it is back in use when it comes back). A host that serves regions is
    /// not freed.
    pub fn set_free(&self, host: &str, free: bool) -> Result<(), HostsError> {
        let mut hosts = self.hosts.lock().map_err(|_| HostsError::Unavailable)?;
        let entry = hosts.get_mut(host).ok_or_else(|| HostsError::UnknownHost(host.to_owned()))?;
        if free && entry.processes.iter().any(|process| !process.regions.is_empty()) {
            return Err(HostsError::NotEmpty(host.to_owned()));
        }
        entry.free = free;
        if let Some(sender) = &entry.sender {
            let _ = sender.send(CoordinatorMessage::Free { free });
        }
        Ok(())
    }

    /// Whether `host` is free.
    #[must_use]
    pub fn is_free(&self, host: &str) -> bool {
        self.hosts.lock().ok().is_some_and(|hosts| hosts.get(host).is_some_and(|entry| entry.free))
    }

    /// Whether `host` is draining.
    #[must_use]
    pub fn is_draining(&self, host: &str) -> bool {
        self.hosts.lock().ok().is_some_and(|hosts| hosts.get(host).is_some_and(|entry| entry.draining))
    }

    /// Where `region` is served, as reported: `(host, process, address)`.
    #[must_use]
    pub fn locate(&self, region: RegionId) -> Option<(String, String, SocketAddr)> {
        let hosts = self.hosts.lock().ok()?;
        hosts.iter().find_map(|(host, entry)| {
            entry
                .processes
                .iter()
                .find(|process| process.regions.contains(&region))
                .map(|process| (host.clone(), process.name.clone(), process.address))
        })
    }

    /// The cluster address of the process named `process` if it reports serving `region`.
    #[must_use]
    pub fn serving_address(&self, process: &str, region: RegionId) -> Option<SocketAddr> {
        let hosts = self.hosts.lock().ok()?;
        hosts
            .values()
            .flat_map(|entry| entry.processes.iter())
            .find(|info| info.name == process && info.regions.contains(&region) && !info.address.ip().is_unspecified())
            .map(|info| info.address)
    }

    /// The regions `process` of `host` serves, as far as the coordinator knows (`None`: no such
    /// process).
    #[must_use]
    pub fn regions_of(&self, host: &str, process: &str) -> Option<Vec<RegionId>> {
        let hosts = self.hosts.lock().ok()?;
        hosts.get(host)?.processes.iter().find(|info| info.name == process).map(|info| info.regions.clone())
    }

    /// What `region` costs, as its host last reported.
    #[must_use]
    pub fn region_load(&self, region: RegionId) -> Option<RegionLoad> {
        let hosts = self.hosts.lock().ok()?;
        hosts
            .values()
            .flat_map(|entry| entry.load.regions.iter())
            .find(|report| report.region == region)
            .map(RegionLoad::from_report)
    }

    /// The regions served on `host`.
    #[must_use]
    pub fn regions_on(&self, host: &str) -> Vec<RegionId> {
        let Ok(hosts) = self.hosts.lock() else { return Vec::new() };
        hosts
            .get(host)
            .map(|entry| entry.processes.iter().flat_map(|process| process.regions.clone()).collect())
            .unwrap_or_default()
    }

    /// Receives every process event from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }

    /// Reserves a warm process on `host`; its agent starts a replacement.
    pub async fn claim(&self, host: &str, timeout: Duration) -> ClaimResult {
        let request = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut claims) = self.claims.lock() {
            claims.insert(request, sender);
        }
        if let Err(error) = self.send(host, CoordinatorMessage::Claim { request }) {
            // Nothing will ever answer it.
            self.forget_claim(request);
            return Err(error);
        }
        let answer = tokio::time::timeout(timeout, receiver).await;
        self.forget_claim(request);
        match answer {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(HostsError::ClaimTimedOut(host.to_owned())),
        }
    }

    fn forget_claim(&self, request: u64) {
        if let Ok(mut claims) = self.claims.lock() {
            claims.remove(&request);
        }
    }

    /// Sends a serve-protocol command to a process of `host`.
    pub fn run(&self, host: &str, process: &str, command: ServerCommand) -> Result<(), HostsError> {
        self.send(host, CoordinatorMessage::Run { process: process.to_owned(), command: AsJson(command) })
    }

    /// Stops a process of `host`.
    pub fn release(&self, host: &str, process: &str) -> Result<(), HostsError> {
        self.send(host, CoordinatorMessage::Release { process: process.to_owned() })
    }

    fn send(&self, host: &str, message: CoordinatorMessage) -> Result<(), HostsError> {
        let hosts = self.hosts.lock().map_err(|_| HostsError::Unavailable)?;
        let entry = hosts.get(host).ok_or_else(|| HostsError::UnknownHost(host.to_owned()))?;
        let sender = entry.sender.as_ref().ok_or_else(|| HostsError::NotConnected(host.to_owned()))?;
        sender.send(message).map_err(|_| HostsError::NotConnected(host.to_owned()))
    }

    /// Records what a process did and tells whoever follows the processes.
    fn happened(&self, host: &str, process: String, happened: Happened) {
        if let Ok(mut hosts) = self.hosts.lock()
            && let Some(entry) = hosts.get_mut(host)
        {
            entry.last_seen = Instant::now();
            apply_event(entry, &process, &happened);
        }
        let _ = self.events.send(ProcessEvent { host: host.to_owned(), process, happened });
    }

    fn handle(&self, host: &str, message: AgentMessage) {
        if let Ok(mut hosts) = self.hosts.lock()
            && let Some(entry) = hosts.get_mut(host)
            && entry.dead
        {
            entry.dead = false;
            tracing::warn!(host, "a host declared dead reports again");
        }
        match message {
            AgentMessage::Hello { .. } => {}
            AgentMessage::Status { processes, load } => {
                if let Ok(mut hosts) = self.hosts.lock()
                    && let Some(entry) = hosts.get_mut(host)
                {
                    entry.processes = processes;
                    entry.load = load;
                    entry.last_seen = Instant::now();
                }
            }
            AgentMessage::Event { process, event: AsJson(event) } => {
                self.happened(host, process, Happened::Event(event));
            }
            AgentMessage::ProcessExited { process, regions } => {
                self.happened(host, process, Happened::Exited { regions });
            }
            AgentMessage::Claimed { request, process, reason } => {
                if let Some((name, address)) = &process
                    && let Ok(mut hosts) = self.hosts.lock()
                    && let Some(entry) = hosts.get_mut(host)
                {
                    ensure_process(entry, name, *address, false);
                }
                let waiting = self.claims.lock().ok().and_then(|mut claims| claims.remove(&request));
                if let Some(waiting) = waiting {
                    let _ = waiting.send(process.ok_or(HostsError::NoWarmProcess(reason)));
                }
            }
        }
    }
}

/// Keeps the registry's view of a host's processes current between status reports.
fn apply_event(entry: &mut HostEntry, process: &str, happened: &Happened) {
    if let Happened::Event(ServerEvent::Listening { addr, .. }) = happened {
        ensure_process(entry, process, *addr, true);
    }
    let Some(info) = entry.processes.iter_mut().find(|info| info.name == process) else { return };
    match happened {
        Happened::Exited { .. } => info.regions.clear(),
        Happened::Event(event) => match event.ownership_change() {
            Some((region, true)) => {
                if !info.regions.contains(&region) {
                    info.regions.push(region);
                }
                info.warm = false;
            }
            Some((region, false)) => info.regions.retain(|owned| *owned != region),
            None => {}
        },
    }
}

/// Adds a process the last status report did not list yet (it started since).
fn ensure_process(entry: &mut HostEntry, process: &str, address: SocketAddr, warm: bool) {
    match entry.processes.iter_mut().find(|info| info.name == process) {
        Some(info) => {
            info.address = address;
            info.warm = warm;
        }
        None => entry.processes.push(ProcessInfo {
            name: process.to_owned(),
            address,
            warm,
            regions: Vec::new(),
            restarts: 0,
            pid: 0,
            heap_bytes: None,
        }),
    }
}

/// Serves one agent's control connection until it closes or misbehaves.
pub(crate) async fn serve_agent(connection: quinn::Connection, hosts: std::sync::Arc<Hosts>) {
    let peer = connection.remote_address();
    let Ok((send, mut recv)) = connection.accept_bi().await else { return };
    let sender = spawn_writer::<CoordinatorMessage>(send);
    let mut host: Option<(String, u64)> = None;
    let end = read_frames::<AgentMessage>(&mut recv, |message| {
        match (&host, message) {
            (None, AgentMessage::Hello { capacity_cores, capacity_memory, .. })
                if !(capacity_cores.is_finite() && capacity_cores > 0.0) || capacity_memory == 0 =>
            {
                tracing::warn!(%peer, capacity_cores, capacity_memory, "an agent declared no usable capacity");
                false
            }
            (
                None,
                AgentMessage::Hello { version: CONTROL_VERSION, host: name, capacity, capacity_cores, capacity_memory },
            ) => {
                let id = hosts.next_id.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut registry) = hosts.hosts.lock() {
                    let entry = registry.entry(name.clone()).or_insert_with(|| HostEntry {
                        capacity,
                        capacity_cores,
                        capacity_memory,
                        free: false,
                        processes: Vec::new(),
                        load: HostLoad::default(),
                        last_seen: Instant::now(),
                        sender: None,
                        connection: id,
                        draining: false,
                        dead: false,
                        silent_at_death: Duration::ZERO,
                    });
                    entry.capacity = capacity;
                    entry.capacity_cores = capacity_cores;
                    entry.capacity_memory = capacity_memory;
                    entry.sender = Some(sender.clone());
                    // Whether the balancer freed it, at every registration: a free host stays free
                    // across reconnections and agent restarts, and one taken back while away (or by
                    // a coordinator that restarted and so sees every host in use) refills its pool.
                    let _ = sender.send(CoordinatorMessage::Free { free: entry.free });
                    entry.connection = id;
                    entry.last_seen = Instant::now();
                    entry.dead = false;
                }
                tracing::info!(%peer, host = name, "host agent registered");
                host = Some((name, id));
                true
            }
            // The first message must be a hello of this version, with a capacity that makes sense.
            (None, _) => false,
            (Some((name, _)), message) => {
                hosts.handle(name, message);
                true
            }
        }
    })
    .await;
    match end {
        ReadEnd::Malformed(error) => {
            tracing::warn!(%peer, %error, "malformed frame from an agent");
            connection.close(1u32.into(), b"malformed frame");
        }
        ReadEnd::Stopped => {
            let reason = format!(
                "the first message must be Hello of control version {CONTROL_VERSION}, with capacity_cores above 0 and capacity_memory above 0"
            );
            connection.close(1u32.into(), reason.as_bytes());
        }
        ReadEnd::Closed => {}
    }
    if let Some((name, id)) = host
        && let Ok(mut registry) = hosts.hosts.lock()
        && let Some(entry) = registry.get_mut(&name)
        && entry.connection == id
    {
        entry.sender = None;
        tracing::warn!(host = name, "host agent disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_that_cannot_be_sent_leaves_nothing_waiting() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let hosts = Hosts::default();
        for _ in 0..3 {
            let result = runtime.block_on(hosts.claim("nowhere", Duration::from_secs(60)));
            assert!(matches!(result, Err(HostsError::UnknownHost(ref host)) if host == "nowhere"), "{result:?}");
        }
        assert_eq!(hosts.claims.lock().unwrap().len(), 0, "claims left waiting for an answer");
    }
}
