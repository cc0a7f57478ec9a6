//! Baton's host agent.
//!
//! One per host. It registers the host with the coordinator (mutual TLS, control protocol in
//! `baton_wire::control`), keeps a pool of pre-warmed region-server processes (started from the
//! configured command, assets loaded, idle) so a handoff target is ready at once, refills the pool
//! when a process is claimed, restarts a process that crashed, reports the host's processes and
//! load every interval, relays the processes' events, and stops every child when it stops.
//!
//! A region-server process is any program that takes `--name NAME --listen ADDR`, prints the serve
//! protocol's events (`baton_wire::serve::ServerEvent`) as JSON lines with `listening` first, and
//! accepts its commands on standard input: any game served by `baton_runtime::serve`
//! (`sample-region-server --serve` is one; docs/protocol.md §11). Lines that are not serve-protocol
//! events are logged and dropped, never relayed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_net::framed::{ReadEnd, read_frames, spawn_writer};
use baton_net::{ClusterIdentity, LinkSettings};
use baton_wire::RegionId;
use baton_wire::control::{
    ALPN_CONTROL, AgentMessage, CONTROL_VERSION, CoordinatorMessage, HostLoad, ProcessInfo, RegionLoadReport,
};
use baton_wire::serve::{AsJson, ServerCommand, ServerEvent, parse_event, to_line};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Region-server processes the agent runs.
pub const PROCESSES: &str = "baton_agent_processes";
/// Of those, warm (idle, ready) ones.
pub const WARM_PROCESSES: &str = "baton_agent_warm_processes";
/// Processes restarted after they exited on their own.
pub const RESTARTS_TOTAL: &str = "baton_agent_process_restarts_total";
/// Claims of a warm process, by outcome (`granted`, `waited`, `refused`).
pub const CLAIMS_TOTAL: &str = "baton_agent_claims_total";
/// CPU used by the region-server processes, in cores.
pub const CPU_CORES: &str = "baton_agent_cpu_cores";
/// Resident memory of the region-server processes.
pub const MEMORY_BYTES: &str = "baton_agent_memory_bytes";

/// A line the agent prints on standard output (JSON, one object a line); its logs go to
/// standard error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AgentEvent {
    /// Metrics are served at `addr` (the port bound, also when asked for port 0).
    Metrics {
        /// The bound address.
        addr: SocketAddr,
    },
}

/// How long after a claim the agent waits before starting the claimed process's replacement (the
/// handoff to the claimed process runs meanwhile, on the same cores).
const REFILL_DELAY: Duration = Duration::from_secs(3);

/// The shortest time over which a process's CPU use is measured.
const CPU_WINDOW: Duration = Duration::from_secs(1);

/// Describes the agent's metrics (call once, after installing a recorder).
pub fn describe_metrics() {
    metrics::describe_gauge!(PROCESSES, "Region-server processes the agent runs.");
    metrics::describe_gauge!(WARM_PROCESSES, "Warm (idle, ready) region-server processes.");
    metrics::describe_counter!(RESTARTS_TOTAL, "Region-server processes restarted after they exited on their own.");
    metrics::describe_counter!(CLAIMS_TOTAL, "Claims of a warm process, by outcome.");
    metrics::describe_gauge!(CPU_CORES, metrics::Unit::Count, "CPU used by the region-server processes, in cores.");
    metrics::describe_gauge!(MEMORY_BYTES, metrics::Unit::Bytes, "Resident memory of the region-server processes.");
}

/// Settings of an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The host's name (unique in the cluster); also its certificate's name.
    pub host: String,
    /// The coordinator's control address.
    pub coordinator: SocketAddr,
    /// Warm (idle, ready) processes to keep.
    pub pool: usize,
    /// Most processes on this host.
    pub capacity: usize,
    /// CPU cores the region servers may use (the balancer's measure of the host).
    pub capacity_cores: f64,
    /// Memory the region servers may use, in bytes.
    pub capacity_memory: u64,
    /// The region-server command and its arguments (the agent adds `--name` and `--listen`).
    pub command: Vec<String>,
    /// The address the region servers listen on (a free port each): what the coordinator, other
    /// hosts and the gateways dial, so this host's address on the cluster network.
    pub server_ip: std::net::IpAddr,
    /// How often to report.
    pub status_interval: Duration,
}

struct Process {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    address: Option<SocketAddr>,
    warm: bool,
    regions: Vec<RegionId>,
    restarts: u32,
    last_cpu: Option<(Instant, u64)>,
    cpu_cores: f64,
    /// Per owned region: its last `load` event.
    region_load: BTreeMap<RegionId, RegionLoadReport>,
    /// Its last `heap` event's live heap, in bytes.
    heap_bytes: Option<u64>,
}

enum Happening {
    Line { process: String, line: String },
    Exited { process: String },
    FromCoordinator(CoordinatorMessage),
    CoordinatorLost,
}

/// Runs the agent until `stop` resolves; every child is stopped before it returns.
pub async fn run(
    config: AgentConfig,
    identity: ClusterIdentity,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.command.is_empty() {
        anyhow::bail!("the region-server command is empty");
    }
    if config.pool > config.capacity {
        anyhow::bail!("the warm pool ({}) cannot exceed the capacity ({})", config.pool, config.capacity);
    }
    if !(config.capacity_cores.is_finite() && config.capacity_cores > 0.0) {
        anyhow::bail!("the CPU capacity must be a positive number of cores, not {}", config.capacity_cores);
    }
    if config.capacity_memory == 0 {
        anyhow::bail!("the memory capacity must be above 0 bytes");
    }
    let client = baton_net::cluster_client_config(&identity, LinkSettings::default(), ALPN_CONTROL)?;
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    let (happenings, mut inbox) = unbounded_channel::<Happening>();
    let mut processes: BTreeMap<String, Process> = BTreeMap::new();
    let mut next_index = 0u32;
    let mut outbound: Option<UnboundedSender<AgentMessage>> = None;
    let mut reconnect_at = Instant::now();
    let mut status_timer = tokio::time::interval(config.status_interval);
    // Claims waiting for a warm process to finish starting.
    let mut waiting_claims: Vec<u64> = Vec::new();
    // Bytes the host's handoffs and standby feeds have sent so far (kept here: processes come and go).
    let mut migration_bytes = 0u64;
    // A free host (the coordinator's balancer emptied it) keeps no warm processes.
    let mut free = false;
    let mut refill_not_before = Instant::now();
    tokio::pin!(stop);

    loop {
        // Keep the pool full, within the capacity.
        // A claimed process is the target of a handoff that starts at once: its replacement starts
        // after the handoff's busiest moments (REFILL_DELAY), unless a claim is waiting for it.
        let pool = if free { 0 } else { config.pool };
        let refill = !waiting_claims.is_empty() || Instant::now() >= refill_not_before;
        while refill
            && processes.values().filter(|process| process.warm).count() < pool
            && processes.len() < config.capacity
        {
            next_index += 1;
            let name = format!("{}-p{next_index}", config.host);
            match spawn(&config, &name, &happenings) {
                Ok(process) => {
                    tracing::info!(name, "started a warm region-server process");
                    processes.insert(name, process);
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a region-server process");
                    break;
                }
            }
        }
        if outbound.is_none() && Instant::now() >= reconnect_at {
            match connect(&endpoint, client.clone(), &config, &happenings).await {
                Ok(sender) => {
                    tracing::info!(coordinator = %config.coordinator, "registered with the coordinator");
                    outbound = Some(sender);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the coordinator; retrying");
                    reconnect_at = Instant::now() + Duration::from_millis(500);
                }
            }
        }

        let happening = tokio::select! {
            () = &mut stop => break,
            _ = status_timer.tick() => {
                if let Some(sender) = &outbound {
                    let _ = sender.send(status(&mut processes, migration_bytes));
                }
                continue;
            }
            happening = inbox.recv() => happening,
        };
        let Some(happening) = happening else { break };
        match happening {
            Happening::Line { process, line } => {
                let event = match parse_event(&line) {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!(process, line, %error, "a process printed a line that is not a serve-protocol event");
                        continue;
                    }
                };
                if let Some(entry) = processes.get_mut(&process) {
                    track(entry, &event);
                }
                match &event {
                    ServerEvent::HandedOff { figures, .. } => migration_bytes += figures.total_bytes(),
                    // What feeding a hot standby sent: state leaving the host, as a handoff's.
                    ServerEvent::Load { standby_bytes, .. } => migration_bytes += standby_bytes,
                    _ => {}
                }
                if matches!(event, ServerEvent::Listening { .. }) {
                    while !waiting_claims.is_empty() {
                        let Some(reply) = claim(&mut processes, waiting_claims[0]) else { break };
                        waiting_claims.remove(0);
                        if let Some(sender) = &outbound {
                            let _ = sender.send(reply);
                        }
                    }
                }
                // Load figures and heaps travel in the status reports; every other event is
                // relayed as it happens (migrations and the route feed wait for them).
                if !matches!(event, ServerEvent::Load { .. } | ServerEvent::Heap { .. })
                    && let Some(sender) = &outbound
                {
                    let _ = sender.send(AgentMessage::Event { process, event: AsJson(event) });
                }
            }
            Happening::Exited { process } => {
                let Some(old) = processes.remove(&process) else { continue };
                tracing::warn!(process, regions = ?old.regions, "a region-server process exited; restarting it");
                if let Some(sender) = &outbound {
                    let _ = sender.send(AgentMessage::ProcessExited { process: process.clone(), regions: old.regions });
                }
                metrics::counter!(RESTARTS_TOTAL).increment(1);
                match spawn(&config, &process, &happenings) {
                    Ok(mut fresh) => {
                        fresh.restarts = old.restarts + 1;
                        processes.insert(process, fresh);
                    }
                    Err(error) => tracing::error!(%error, "cannot restart a region-server process"),
                }
            }
            Happening::FromCoordinator(CoordinatorMessage::Claim { request }) => {
                // A warm process that is ready goes at once; otherwise the claim waits for the
                // next one to finish starting (the coordinator gives up after its timeout).
                match claim(&mut processes, request) {
                    Some(reply) => {
                        refill_not_before = Instant::now() + REFILL_DELAY;
                        metrics::counter!(CLAIMS_TOTAL, "outcome" => "granted").increment(1);
                        if let Some(sender) = &outbound {
                            let _ = sender.send(reply);
                        }
                    }
                    None if processes.values().any(|process| process.warm) || processes.len() < config.capacity => {
                        metrics::counter!(CLAIMS_TOTAL, "outcome" => "waited").increment(1);
                        waiting_claims.push(request);
                    }
                    None => {
                        metrics::counter!(CLAIMS_TOTAL, "outcome" => "refused").increment(1);
                        if let Some(sender) = &outbound {
                            let reason = format!("all {} processes of this host are busy", config.capacity);
                            let _ = sender.send(AgentMessage::Claimed { request, process: None, reason });
                        }
                    }
                }
            }
            Happening::FromCoordinator(CoordinatorMessage::Free { free: now_free }) => {
                if now_free != free {
                    tracing::info!(
                        free = now_free,
                        "the coordinator marked this host {}",
                        if now_free { "free" } else { "in use" }
                    );
                }
                free = now_free;
                if free {
                    let warm: Vec<String> =
                        processes.iter().filter(|(_, process)| process.warm).map(|(name, _)| name.clone()).collect();
                    for name in warm {
                        handle_command(CoordinatorMessage::Release { process: name }, &mut processes).await;
                    }
                }
            }
            Happening::FromCoordinator(message) => {
                handle_command(message, &mut processes).await;
            }
            Happening::CoordinatorLost => {
                tracing::warn!("lost the coordinator; reconnecting");
                outbound = None;
                reconnect_at = Instant::now() + Duration::from_millis(200);
            }
        }
    }

    // Stop every child: ask politely, then kill what is left.
    for process in processes.values_mut() {
        send_command(process, &ServerCommand::Quit).await;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    for process in processes.values_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, process.child.wait()).await.is_err() {
            let _ = process.child.kill().await;
        }
    }
    endpoint.close(0u32.into(), b"agent stopping");
    Ok(())
}

fn spawn(config: &AgentConfig, name: &str, happenings: &UnboundedSender<Happening>) -> anyhow::Result<Process> {
    let mut command = tokio::process::Command::new(&config.command[0]);
    command
        .args(&config.command[1..])
        .args(["--name", name, "--listen", &SocketAddr::new(config.server_ip, 0).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|error| anyhow::anyhow!("starting {}: {error}", config.command[0]))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let sender = happenings.clone();
    let process = name.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(Happening::Line { process: process.clone(), line }).is_err() {
                return;
            }
        }
        let _ = sender.send(Happening::Exited { process });
    });
    Ok(Process {
        child,
        stdin,
        address: None,
        warm: true,
        regions: Vec::new(),
        restarts: 0,
        last_cpu: None,
        cpu_cores: 0.0,
        region_load: BTreeMap::new(),
        heap_bytes: None,
    })
}

/// Follows a process's events: its address, and the regions it owns.
fn track(process: &mut Process, event: &ServerEvent) {
    match event {
        ServerEvent::Listening { addr, .. } => process.address = Some(*addr),
        ServerEvent::Heap { live_bytes } => process.heap_bytes = Some(*live_bytes),
        ServerEvent::Load { region, tick_ms, tick_ms_max, tick_budget_ms, players, entities, .. } => {
            process.region_load.insert(
                *region,
                RegionLoadReport {
                    region: *region,
                    tick_ms: *tick_ms,
                    tick_ms_max: *tick_ms_max,
                    tick_budget_ms: *tick_budget_ms,
                    players: *players,
                    entities: *entities,
                },
            );
        }
        _ => {}
    }
    match event.ownership_change() {
        Some((region, true)) => {
            if !process.regions.contains(&region) {
                process.regions.push(region);
            }
            process.warm = false;
        }
        Some((region, false)) => {
            process.regions.retain(|owned| *owned != region);
            process.region_load.remove(&region);
        }
        None => {}
    }
}

/// Writes one serve-protocol command to a process's standard input.
async fn send_command(process: &mut Process, command: &ServerCommand) -> bool {
    let mut line = to_line(command).into_bytes();
    line.push(b'\n');
    let written = process.stdin.write_all(&line).await.is_ok();
    written && process.stdin.flush().await.is_ok()
}

/// Reserves a warm process that is ready, if there is one.
fn claim(processes: &mut BTreeMap<String, Process>, request: u64) -> Option<AgentMessage> {
    let (name, process) = processes.iter_mut().find(|(_, process)| process.warm && process.address.is_some())?;
    process.warm = false;
    Some(AgentMessage::Claimed {
        request,
        process: process.address.map(|address| (name.clone(), address)),
        reason: String::new(),
    })
}

async fn handle_command(message: CoordinatorMessage, processes: &mut BTreeMap<String, Process>) {
    match message {
        // Handled by the loop, which knows the pool and the waiting claims.
        CoordinatorMessage::Claim { .. } | CoordinatorMessage::Free { .. } => {}
        CoordinatorMessage::Run { process, command: AsJson(command) } => match processes.get_mut(&process) {
            Some(entry) => {
                if !send_command(entry, &command).await {
                    tracing::warn!(process, "could not pass a command to a process");
                }
            }
            None => tracing::warn!(process, "a command for a process this host does not run"),
        },
        CoordinatorMessage::Release { process } => {
            if let Some(mut entry) = processes.remove(&process) {
                send_command(&mut entry, &ServerCommand::Quit).await;
                tokio::spawn(async move {
                    if tokio::time::timeout(Duration::from_secs(2), entry.child.wait()).await.is_err() {
                        let _ = entry.child.kill().await;
                    }
                });
            }
        }
    }
}

fn status(processes: &mut BTreeMap<String, Process>, migration_bytes: u64) -> AgentMessage {
    let mut load = HostLoad { migration_bytes, ..HostLoad::default() };
    let infos = processes
        .iter_mut()
        .map(|(name, process)| {
            if let Some(pid) = process.child.id() {
                let now = Instant::now();
                // CPU time counts in 10 ms clock ticks: measured over at least a second, so a short
                // status interval does not make the figure jump by whole ticks.
                if let Some(ticks) = cpu_ticks(pid) {
                    match process.last_cpu {
                        Some((at, before)) if now.duration_since(at) >= CPU_WINDOW => {
                            let seconds = now.duration_since(at).as_secs_f64();
                            process.cpu_cores = ticks.saturating_sub(before) as f64 / 100.0 / seconds;
                            process.last_cpu = Some((now, ticks));
                        }
                        Some(_) => {}
                        None => process.last_cpu = Some((now, ticks)),
                    }
                }
                load.memory_bytes += resident_bytes(pid).unwrap_or(0);
            }
            load.cpu_cores += process.cpu_cores;
            load.regions.extend(process.region_load.values().cloned());
            ProcessInfo {
                name: name.clone(),
                address: process.address.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                warm: process.warm,
                regions: process.regions.clone(),
                restarts: process.restarts,
                pid: process.child.id().unwrap_or(0),
                heap_bytes: process.heap_bytes,
            }
        })
        .collect::<Vec<ProcessInfo>>();
    metrics::gauge!(PROCESSES).set(infos.len() as f64);
    metrics::gauge!(WARM_PROCESSES).set(infos.iter().filter(|info| info.warm).count() as f64);
    metrics::gauge!(CPU_CORES).set(load.cpu_cores);
    metrics::gauge!(MEMORY_BYTES).set(load.memory_bytes as f64);
    AgentMessage::Status { processes: infos, load }
}

/// User + system CPU time of a process in clock ticks (100 per second), from `/proc`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process in bytes, from `/proc`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    Some(statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * 4096)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    client: quinn::ClientConfig,
    config: &AgentConfig,
    happenings: &UnboundedSender<Happening>,
) -> anyhow::Result<UnboundedSender<AgentMessage>> {
    let connection = baton_net::connect_with(endpoint, client, config.coordinator).await?;
    let (send, mut recv) = connection.open_bi().await?;
    let sender = spawn_writer::<AgentMessage>(send);
    let _ = sender.send(AgentMessage::Hello {
        version: CONTROL_VERSION,
        host: config.host.clone(),
        capacity: u32::try_from(config.capacity).unwrap_or(u32::MAX),
        capacity_cores: config.capacity_cores,
        capacity_memory: config.capacity_memory,
    });
    let happenings = happenings.clone();
    tokio::spawn(async move {
        let relay = |message| happenings.send(Happening::FromCoordinator(message)).is_ok();
        if let ReadEnd::Malformed(error) = read_frames::<CoordinatorMessage>(&mut recv, relay).await {
            tracing::error!(%error, "malformed frame from the coordinator");
        }
        let _ = happenings.send(Happening::CoordinatorLost);
    });
    Ok(sender)
}
