//! Drives a cluster of region-server processes (`sample-region-server --serve`, or any game served
//! by `baton_runtime::serve`) on loopback through the serve protocol's types: used by the
//! multi-process tests and by `handoff-bench`.
//!
//! The controller plays, in the simplest form a test needs, the parts a deployment has: it is the
//! players (each
//! sends [`scripted_input`](sample_region_server::scripted_input)s at a fixed rate to the process that owns the
//! region), the gateway (it switches to the new owner when it reports `authoritative`, and sends
//! again whatever an old owner refused), and the operator (it tells processes to prepare and to
//! hand off). Processes are killed when the controller is dropped, even when a test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_coordinator::console::{ConsoleCommand, ConsoleEvent};
use baton_gateway::{GatewayCommand, GatewayEvent, GatewayStats};
use baton_wire::serve::{GameObject, HandoffTicks, JoinRequest, ServerCommand, ServerEvent, to_game_object, to_line};
use baton_wire::{PlayerId, RegionId};
use sample_region_server::expected_chain;
use sample_region_server::game::{AvatarReport, Spawn, WorldRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A child process that prints JSON lines of type `E` (its events) and reads commands as JSON
/// lines; killed when dropped, also when a test fails.
pub struct Process<E> {
    /// Its instance name.
    pub name: String,
    /// The address it reported in its first event (handoff links and gateways for a region
    /// server; players for a gateway; the cluster endpoint for a coordinator).
    pub address: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<E>,
    /// Every event received so far.
    pub log: Vec<E>,
}

/// Which of a process's events it prints on a clock rather than in answer to something (a region
/// server's `load` and `heap` every second, `standby_holding` every second while it follows a
/// region): a timed-out wait leaves them out of the events it shows. `periodic` is false unless an
/// event type says otherwise (the coordinator's and the gateway's print nothing on a clock).
pub trait Periodic {
    /// Whether this event is one of those.
    fn periodic(&self) -> bool {
        false
    }
}

impl Periodic for ServerEvent {
    fn periodic(&self) -> bool {
        matches!(self, ServerEvent::Load { .. } | ServerEvent::Heap { .. } | ServerEvent::StandbyHolding { .. })
    }
}

impl Periodic for ConsoleEvent {}

impl Periodic for GatewayEvent {}

/// A region-server process (any game served by `baton_runtime::serve`).
pub type ServerProcess = Process<ServerEvent>;
/// A coordinator started with `--control`.
pub type CoordinatorProcess = Process<ConsoleEvent>;
/// A gateway started with `--control` (it prints `baton_gateway::GatewayEvent` lines).
pub type GatewayProcess = Process<GatewayEvent>;

impl ServerProcess {
    /// Starts `binary --serve` deciding ownership in the file-backed authority in `authority`,
    /// and waits until it listens.
    pub fn spawn(
        binary: &Path,
        name: &str,
        certs: &Path,
        authority: &Path,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        ServerProcess::spawn_served(
            binary,
            name,
            certs,
            [std::ffi::OsStr::new("--authority"), authority.as_os_str()],
            extra,
        )
    }

    /// Starts `binary --serve` deciding ownership at the coordinator at `coordinator`.
    pub fn spawn_coordinated(
        binary: &Path,
        name: &str,
        certs: &Path,
        coordinator: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let coordinator = coordinator.to_string();
        ServerProcess::spawn_served(
            binary,
            name,
            certs,
            [std::ffi::OsStr::new("--coordinator"), coordinator.as_ref()],
            extra,
        )
    }

    fn spawn_served(
        binary: &Path,
        name: &str,
        certs: &Path,
        authority: [&std::ffi::OsStr; 2],
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(binary);
        command.arg("--serve").args(["--name", name]).arg("--certs").arg(certs).args(authority).args(extra);
        ServerProcess::spawn_server(name, command)
    }

    /// Starts a region server from `command` and waits until it reports `listening`.
    pub fn spawn_server(name: &str, command: Command) -> anyhow::Result<ServerProcess> {
        Process::spawn_command(name, command, |event| match event {
            ServerEvent::Listening { addr, .. } => Some(*addr),
            _ => None,
        })
    }

    /// Sends one serve-protocol command.
    pub fn command(&mut self, command: &ServerCommand) -> anyhow::Result<()> {
        self.send(command)
    }

    /// Waits for the outcome of a command about `region` that succeeds with an event `done`
    /// accepts; an `error` about the region (or about no region) fails it.
    pub fn wait_outcome(
        &mut self,
        since: usize,
        timeout: Duration,
        region: RegionId,
        done: impl Fn(&ServerEvent) -> bool,
    ) -> anyhow::Result<ServerEvent> {
        let (_, event) = self.wait_for(since, timeout, |event| {
            done(event)
                || matches!(event, ServerEvent::Error { region: about, .. } if about.is_none_or(|about| about == region))
        })?;
        if let ServerEvent::Error { error, .. } = &event {
            bail!("{}: {error}", self.name);
        }
        Ok(event)
    }
}

impl CoordinatorProcess {
    /// Starts a coordinator from `command` and waits until it reports `listening`.
    pub fn spawn_coordinator_command(command: Command) -> anyhow::Result<CoordinatorProcess> {
        Process::spawn_command("coordinator", command, |event| match event {
            ConsoleEvent::Listening { addr, .. } => Some(*addr),
            _ => None,
        })
    }
}

impl GatewayProcess {
    /// Starts a gateway with `--control` from `command` and waits until it reports `listening`.
    pub fn spawn_gateway(name: &str, command: Command) -> anyhow::Result<GatewayProcess> {
        Process::spawn_command(name, command, |event: &GatewayEvent| match event {
            GatewayEvent::Listening { addr, .. } => Some(*addr),
            _ => None,
        })
    }

    /// The gateway's counters, from its `stats` control line.
    pub fn stats(&mut self) -> anyhow::Result<GatewayStats> {
        let mark = self.log.len();
        self.send(&GatewayCommand::Stats)?;
        let (_, event) =
            self.wait_for(mark, Duration::from_secs(10), |event| matches!(event, GatewayEvent::Stats { .. }))?;
        match event {
            GatewayEvent::Stats { stats } => Ok(stats),
            other => bail!("not a stats event: {other:?}"),
        }
    }
}

impl<E: DeserializeOwned + std::fmt::Debug + Periodic + Clone + Send + 'static> Process<E> {
    /// Starts a process that speaks JSON lines of `E` and waits for the first event from which
    /// `listening` reads an address.
    pub fn spawn_command(
        name: &str,
        mut command: Command,
        listening: impl Fn(&E) -> Option<SocketAddr>,
    ) -> anyhow::Result<Process<E>> {
        let binary = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, events) = mpsc::channel();
        let reader_name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<E>(&line) {
                    Ok(event) => {
                        if sender.send(event).is_err() {
                            break;
                        }
                    }
                    // A line of another shape is a protocol break a test should see in its log.
                    Err(error) => eprintln!("{reader_name}: unreadable line ({error}): {line}"),
                }
            }
        });
        let mut process = Process {
            name: name.to_owned(),
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            stdin,
            events,
            log: Vec::new(),
        };
        let (_, first) = process.wait_for(0, Duration::from_secs(20), |event| listening(event).is_some())?;
        process.address = listening(&first).context("listening without an address")?;
        Ok(process)
    }

    /// Sends one command as a JSON line.
    pub fn send<C: Serialize>(&mut self, command: &C) -> anyhow::Result<()> {
        writeln!(self.stdin, "{}", to_line(command)).with_context(|| format!("writing to {}", self.name))?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Moves received events into the log; returns how many arrived.
    pub fn drain(&mut self) -> usize {
        let before = self.log.len();
        while let Ok(event) = self.events.try_recv() {
            self.log.push(event);
        }
        self.log.len() - before
    }

    /// Waits for an event at or after log position `since` that satisfies `predicate`.
    pub fn wait_for(
        &mut self,
        since: usize,
        timeout: Duration,
        predicate: impl Fn(&E) -> bool,
    ) -> anyhow::Result<(usize, E)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(position) = (since..self.log.len()).find(|index| predicate(&self.log[*index])) {
                return Ok((position, self.log[position].clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: timed out; {}", self.name, last_events(&self.log, 5));
            }
            if let Ok(event) = self.events.recv_timeout(left.min(Duration::from_millis(20))) {
                self.log.push(event);
            }
        }
    }
}

impl<E> Process<E> {
    /// The operating system's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process used so far (user + system), from `/proc` (Linux); `None` elsewhere.
    #[must_use]
    pub fn cpu_time(&self) -> Option<Duration> {
        let seconds = crate::udp_floor::stat_cpu_seconds(&format!("/proc/{}/stat", self.child.id())).ok()?;
        Some(Duration::from_secs_f64(seconds))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl<E> Drop for Process<E> {
    fn drop(&mut self) {
        // Region servers, gateways and coordinators all stop on this line.
        let _ = writeln!(self.stdin, "{}", to_line(&ServerCommand::Quit));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// What one handoff did, as the controller saw it.
#[derive(Clone, Debug, Default)]
pub struct HandoffOutcome {
    /// Whether it committed.
    pub committed: bool,
    /// The abort reason, if it aborted.
    pub aborted: Option<String>,
    /// Source's view of the freeze, microseconds.
    pub freeze_us: u64,
    /// Start to commit, microseconds.
    pub total_us: u64,
    /// Delta rounds.
    pub rounds: u64,
    /// Snapshot bytes.
    pub snapshot_bytes: u64,
    /// Delta bytes before the freeze.
    pub delta_bytes: u64,
    /// Final delta bytes.
    pub final_bytes: u64,
    /// From the source's last tick start to the target's first tick start, microseconds.
    pub tick_gap_us: u64,
    /// The delivery rate the source last measured, bytes per second (0: none measured).
    pub delivery_bytes_per_second: u64,
    /// How long the source waited for a quieter moment, microseconds.
    pub waited_us: u64,
    /// How long the freeze waited for the target's engines, microseconds.
    pub engines_waited_us: u64,
    /// Bytes of changes per tick in the source's last round.
    pub change_bytes_per_tick: u64,
    /// The source's ticks before and during the handoff.
    pub ticks: HandoffTicks,
}

/// Bytes of snapshot per churn entity of the sample at a million or so (measured: a
/// 1,000,000-entity region's snapshot is 67.6 MB; at 10,000 entities 65.6 bytes each).
pub const CHURN_BYTES_PER_ENTITY: u64 = 67;

/// A cluster of server processes with one region and scripted players.
pub struct Cluster {
    /// The processes.
    pub processes: Vec<ServerProcess>,
    /// Index of the process that owns the region.
    pub owner: usize,
    region: u64,
    /// Next sequence number per player.
    next_seq: BTreeMap<u64, u64>,
    directory: PathBuf,
    last_inputs: Instant,
    inputs_per_second: u32,
    /// Tick interval of the region.
    pub tick_interval: Duration,
    /// The coordinator, when ownership is decided there ([`Cluster::start_coordinated`]).
    pub coordinator: Option<CoordinatorProcess>,
    coordinator_address: Option<SocketAddr>,
    /// Per process, how much of its log was searched for refused inputs already.
    refused_seen: Vec<usize>,
}

/// The authority's lock of a region, held by a test ([`Cluster::hold_authority`]); released when
/// dropped (the lock file is closed).
pub struct AuthorityHold {
    _lock: std::fs::File,
}

/// A region's report, as a process answered [`ServerCommand::Report`].
#[derive(Clone, Debug, PartialEq)]
pub struct RegionReport {
    /// The tick.
    pub tick: u64,
    /// Ticks that started late.
    pub late_ticks: u64,
    /// The world digest (hex).
    pub digest: String,
    /// Live entities.
    pub entities: u64,
    /// Per player, what the region holds of them.
    pub players: Vec<PlayerState>,
}

/// One player as a region reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlayerState {
    /// The player.
    pub player: PlayerId,
    /// The highest input sequence applied.
    pub last_applied: u64,
    /// Inputs received and waiting.
    pub pending: u64,
    /// Inputs that arrived again after being applied or queued (dropped by the region).
    pub duplicates: u64,
    /// Inputs that arrived ahead of a gap.
    pub early: u64,
    /// The sample's own figures for the avatar.
    pub avatar: AvatarReport,
}

/// What [`Cluster::settle_and_check`] found once every input sent was applied or given up on.
#[derive(Clone, Debug)]
pub struct Settled {
    /// Inputs the players sent.
    pub sent: u64,
    /// Inputs sent but not applied by the owner.
    pub lost: u64,
    /// Inputs applied more than once or out of order (by the sample's own count and hash chain).
    pub applied_twice: u64,
    /// Inputs that reached the owner again after it had them (dropped there, so harmless to the
    /// game, but a sign of a gateway or handoff path that sends one input twice).
    pub arrived_twice: u64,
    /// The owner's world digest (hex).
    pub digest: String,
}

impl Cluster {
    /// Starts `count` processes named `node-0..` with certificates in a fresh folder, sharing a
    /// file-backed authority.
    pub fn start(binary: &Path, count: usize, extra: &[String]) -> anyhow::Result<Cluster> {
        Cluster::start_inner(binary, None, count, extra)
    }

    /// Starts a coordinator (`coordinator_binary`, its directory in the cluster's folder) and
    /// `count` processes that decide ownership there.
    pub fn start_coordinated(
        binary: &Path,
        coordinator_binary: &Path,
        count: usize,
        extra: &[String],
    ) -> anyhow::Result<Cluster> {
        Cluster::start_inner(binary, Some(coordinator_binary), count, extra)
    }

    fn start_inner(
        binary: &Path,
        coordinator_binary: Option<&Path>,
        count: usize,
        extra: &[String],
    ) -> anyhow::Result<Cluster> {
        let directory =
            std::env::temp_dir().join(format!("baton-cluster-{}-{}", std::process::id(), fastrand::u64(..)));
        let certs = directory.join("certs");
        let names: Vec<String> = (0..count).map(|index| format!("node-{index}")).collect();
        let mut nodes = vec!["coordinator".to_owned()];
        nodes.extend(names.iter().cloned());
        issue_certificates(&certs, &nodes)?;
        let mut coordinator = None;
        let mut coordinator_address = None;
        if let Some(coordinator_binary) = coordinator_binary {
            // The coordinator binds a port of its own and says which; a restarted one binds the
            // same again, so the servers find it where they look for it.
            let process = spawn_coordinator(coordinator_binary, &directory, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            coordinator_address = Some(process.address);
            coordinator = Some(process);
        }
        let authority = directory.join("authority");
        let mut processes = Vec::new();
        for name in &names {
            processes.push(match coordinator_address {
                Some(address) => ServerProcess::spawn_coordinated(binary, name, &certs, address, extra)?,
                None => ServerProcess::spawn(binary, name, &certs, &authority, extra)?,
            });
        }
        Ok(Cluster {
            processes,
            owner: 0,
            region: 1,
            next_seq: BTreeMap::new(),
            directory,
            last_inputs: Instant::now(),
            inputs_per_second: 20,
            tick_interval: Duration::from_secs_f64(1.0 / 30.0),
            coordinator,
            coordinator_address,
            refused_seen: vec![0; count],
        })
    }

    /// Freezes the coordinator with SIGSTOP: it neither answers nor closes its connections (a
    /// hung machine), until [`Cluster::kill_coordinator`].
    pub fn pause_coordinator(&mut self) -> anyhow::Result<()> {
        let coordinator = self.coordinator.as_ref().context("no coordinator running")?;
        let status = Command::new("kill").args(["-STOP", &coordinator.pid().to_string()]).status()?;
        if !status.success() {
            bail!("could not pause the coordinator: {status}");
        }
        Ok(())
    }

    /// Holds the file-backed authority's lock of `region` until the guard is dropped, so every
    /// compare-and-swap of the region waits (a slow authority, from outside the processes: no
    /// fault knob in the servers); one that waits longer than `FileAuthority::LOCK_WAIT` (4 s)
    /// answers "unavailable".
    pub fn hold_authority(&self, region: u64) -> anyhow::Result<AuthorityHold> {
        let authority = baton_wire::authority::FileAuthority::open(self.directory.join("authority"))
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        let path = authority.lock_path(baton_wire::RegionId(region));
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        lock.try_lock().map_err(|error| anyhow::anyhow!("taking {}: {error}", path.display()))?;
        Ok(AuthorityHold { _lock: lock })
    }

    /// Kills the coordinator with SIGKILL (as a crash would).
    pub fn kill_coordinator(&mut self) {
        if let Some(mut coordinator) = self.coordinator.take() {
            coordinator.kill();
        }
    }

    /// Starts the coordinator again on the same address and data (after [`Cluster::kill_coordinator`]).
    pub fn restart_coordinator(&mut self, coordinator_binary: &Path) -> anyhow::Result<()> {
        let address = self.coordinator_address.context("this cluster has no coordinator")?;
        self.coordinator = Some(spawn_coordinator(coordinator_binary, &self.directory, address)?);
        Ok(())
    }

    /// The coordinator's directory: `(region, owner, epoch)` rows.
    pub fn directory_rows(&mut self) -> anyhow::Result<Vec<(u64, String, u64)>> {
        let coordinator = self.coordinator.as_mut().context("no coordinator running")?;
        let mark = coordinator.log.len();
        coordinator.send(&ConsoleCommand::Regions)?;
        let (_, event) = coordinator
            .wait_for(mark, Duration::from_secs(10), |event| matches!(event, ConsoleEvent::Regions { .. }))?;
        let ConsoleEvent::Regions { regions } = event else { bail!("not a regions answer: {event:?}") };
        Ok(regions.into_iter().map(|row| (row.region, row.owner, row.epoch)).collect())
    }

    /// The region this cluster plays.
    #[must_use]
    pub fn region(&self) -> u64 {
        self.region
    }

    /// Hosts the region on process 0, its world made from `world` (the game's keys), with
    /// `players` avatars.
    pub fn host(&mut self, world: &GameObject, players: u64) -> anyhow::Result<()> {
        let region = RegionId(self.region);
        let mark = self.processes[0].log.len();
        self.processes[0].command(&ServerCommand::Host {
            region,
            world: world.clone(),
            from_checkpoint: false,
            take_over: None,
        })?;
        self.processes[0].wait_outcome(
            mark,
            Duration::from_secs(120),
            region,
            |event| matches!(event, ServerEvent::Owning { region: owned, .. } if *owned == region),
        )?;
        let joins = (1..=players)
            .map(|id| JoinRequest {
                player: PlayerId(id),
                spawn: spawn_object(Spawn { x: (id % 50) as f32 * 4.0 - 100.0, z: (id / 50) as f32 * 4.0 - 100.0 }),
            })
            .collect();
        self.processes[0].command(&ServerCommand::Join { region, players: joins })?;
        for id in 1..=players {
            self.next_seq.insert(id, 1);
        }
        self.last_inputs = Instant::now();
        Ok(())
    }

    /// Hosts another region (no players) on process `index` and waits until it owns it.
    pub fn host_other(&mut self, index: usize, region: u64, world: &GameObject) -> anyhow::Result<()> {
        let region = RegionId(region);
        let process = &mut self.processes[index];
        let mark = process.log.len();
        process.command(&ServerCommand::Host {
            region,
            world: world.clone(),
            from_checkpoint: false,
            take_over: None,
        })?;
        process.wait_outcome(
            mark,
            Duration::from_secs(120),
            region,
            |event| matches!(event, ServerEvent::Owning { region: owned, .. } if *owned == region),
        )?;
        Ok(())
    }

    /// Sends the inputs due since the last call to the owner, and re-sends refused ones.
    pub fn pump_inputs(&mut self) -> anyhow::Result<()> {
        let elapsed = self.last_inputs.elapsed();
        let due = (elapsed.as_secs_f64() * f64::from(self.inputs_per_second)) as u64;
        if due > 0 {
            self.last_inputs += Duration::from_secs_f64(due as f64 / f64::from(self.inputs_per_second));
            let mut inputs = Vec::new();
            for (player, next) in &mut self.next_seq {
                for _ in 0..due {
                    inputs.push((PlayerId(*player), *next));
                    *next += 1;
                }
            }
            let owner = self.owner;
            self.processes[owner].command(&ServerCommand::Inputs { region: RegionId(self.region), inputs })?;
        }
        self.resend_refused()
    }

    /// Inputs the players have sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.next_seq.values().map(|next| next - 1).sum()
    }

    /// Per player, the sequence number of the last input sent.
    #[must_use]
    pub fn last_sent(&self) -> BTreeMap<PlayerId, u64> {
        self.next_seq.iter().map(|(player, next)| (PlayerId(*player), next - 1)).collect()
    }

    /// Sends every input a process refused since the last call to the current owner (the part
    /// of a gateway that routes a bounced input again).
    fn resend_refused(&mut self) -> anyhow::Result<()> {
        let mut refused = Vec::new();
        for (process, seen) in self.processes.iter_mut().zip(self.refused_seen.iter_mut()) {
            process.drain();
            for event in &process.log[*seen..] {
                if let ServerEvent::InputRefused { player, seq, .. } = event {
                    refused.push((*player, *seq));
                }
            }
            *seen = process.log.len();
        }
        if !refused.is_empty() {
            let owner = self.owner;
            self.processes[owner].command(&ServerCommand::Inputs { region: RegionId(self.region), inputs: refused })?;
        }
        Ok(())
    }

    /// Keeps the players playing for `duration`.
    pub fn play(&mut self, duration: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.pump_inputs()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Moves the region from its owner to process `to`, with the players playing throughout.
    pub fn handoff(&mut self, to: usize, timeout: Duration) -> anyhow::Result<HandoffOutcome> {
        let from = self.owner;
        let target_mark = self.processes[to].log.len();
        let source_mark = self.begin_handoff(to)?;
        let deadline = Instant::now() + timeout;
        let mut outcome = HandoffOutcome::default();
        loop {
            self.pump_inputs()?;
            let target_events = &self.processes[to].log[target_mark..];
            if !outcome.committed
                && target_events.iter().any(|event| matches!(event, ServerEvent::Authoritative { .. }))
            {
                // The gateway flips the route as soon as the new owner says so.
                outcome.committed = true;
                self.owner = to;
            }
            let source_events = &self.processes[from].log[source_mark..];
            if let Some(reason) = source_events.iter().find_map(|event| match event {
                ServerEvent::Aborted { reason, owning: true, .. } => Some(reason.clone()),
                _ => None,
            }) {
                outcome.aborted = Some(reason);
                return Ok(outcome);
            }
            let handed = source_events.iter().find_map(|event| match event {
                ServerEvent::HandedOff { figures, .. } => Some(figures.clone()),
                _ => None,
            });
            let first_tick_at = target_events.iter().find_map(|event| match event {
                ServerEvent::FirstTick { at_us, .. } => Some(*at_us),
                _ => None,
            });
            let last_tick_at = source_events.iter().rev().find_map(|event| match event {
                ServerEvent::Frozen { last_tick_at_us, .. } => Some(*last_tick_at_us),
                _ => None,
            });
            if let (Some(figures), Some(first_tick_at), Some(last_tick_at)) = (handed, first_tick_at, last_tick_at) {
                outcome.freeze_us = figures.freeze_us.unwrap_or(0);
                outcome.total_us = figures.total_us.unwrap_or(0);
                outcome.rounds = u64::from(figures.rounds);
                outcome.snapshot_bytes = figures.snapshot_bytes;
                outcome.delta_bytes = figures.delta_bytes;
                outcome.final_bytes = figures.final_bytes;
                outcome.delivery_bytes_per_second = figures.delivery_bytes_per_second.unwrap_or(0);
                outcome.waited_us = figures.waited_us.unwrap_or(0);
                outcome.engines_waited_us = figures.engines_waited_us.unwrap_or(0);
                outcome.change_bytes_per_tick = figures.change_bytes_per_tick.unwrap_or(0);
                outcome.tick_gap_us = first_tick_at.saturating_sub(last_tick_at);
                outcome.ticks = (*figures.ticks).clone();
                return Ok(outcome);
            }
            if Instant::now() > deadline {
                bail!(
                    "handoff {from} -> {to} did not finish: source {:?} target {:?}",
                    source_events.iter().rev().take(3).collect::<Vec<_>>(),
                    target_events.iter().rev().take(3).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Prepares process `to` and tells the owner to start moving the region there, without waiting.
    /// Returns the owner's log position at the start.
    pub fn begin_handoff(&mut self, to: usize) -> anyhow::Result<usize> {
        let region = RegionId(self.region);
        let target_mark = self.processes[to].log.len();
        self.processes[to].command(&ServerCommand::Prepare { region })?;
        self.processes[to].wait_outcome(
            target_mark,
            Duration::from_secs(30),
            region,
            |event| matches!(event, ServerEvent::Prepared { region: prepared } if *prepared == region),
        )?;
        let from = self.owner;
        let mark = self.processes[from].log.len();
        let address = self.processes[to].address;
        self.processes[from].command(&ServerCommand::Handoff { region, to: address })?;
        Ok(mark)
    }

    /// Plays until the owner reports an event at or after `since` that satisfies `predicate`.
    pub fn play_until(
        &mut self,
        since: usize,
        timeout: Duration,
        predicate: impl Fn(&ServerEvent) -> bool,
    ) -> anyhow::Result<ServerEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump_inputs()?;
            let owner = self.owner;
            if let Ok((_, event)) = self.processes[owner].wait_for(since, Duration::from_millis(5), &predicate) {
                return Ok(event);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting on {}", self.processes[owner].name);
            }
        }
    }

    /// Asks process `index` for a report of `region` (its tick, late ticks, digest, players).
    pub fn report(&mut self, index: usize, region: u64) -> anyhow::Result<RegionReport> {
        let region = RegionId(region);
        let process = &mut self.processes[index];
        let mark = process.log.len();
        process.command(&ServerCommand::Report { region })?;
        let event = process.wait_outcome(
            mark,
            Duration::from_secs(10),
            region,
            |event| matches!(event, ServerEvent::Report { region: about, .. } if *about == region),
        )?;
        let ServerEvent::Report { tick, late_ticks, digest, entities, players, .. } = event else {
            bail!("not a report: {event:?}");
        };
        let players = players
            .into_iter()
            .map(|player| PlayerState {
                player: player.player,
                last_applied: player.last_applied,
                pending: player.pending,
                duplicates: player.duplicates,
                early: player.early,
                avatar: AvatarReport::from_game(&player.game),
            })
            .collect();
        Ok(RegionReport { tick, late_ticks, digest, entities, players })
    }

    /// Stops the players, waits until the owner has applied every input sent (re-sending any a
    /// process refused, as a gateway does) or 30 s pass, and checks every player's inputs there.
    pub fn settle_and_check(&mut self) -> anyhow::Result<Settled> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let report = loop {
            self.resend_refused()?;
            let report = self.report(self.owner, self.region)?;
            let settled = self.next_seq.iter().all(|(player, next)| {
                report.players.iter().any(|state| {
                    state.player == PlayerId(*player) && state.last_applied == next - 1 && state.pending == 0
                })
            });
            if settled || Instant::now() > deadline {
                break report;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut settled = Settled { sent: 0, lost: 0, applied_twice: 0, arrived_twice: 0, digest: report.digest };
        for (player, next) in &self.next_seq {
            let sent = next - 1;
            settled.sent += sent;
            let Some(state) = report.players.iter().find(|state| state.player == PlayerId(*player)) else {
                settled.lost += sent;
                continue;
            };
            settled.lost += sent.saturating_sub(state.last_applied);
            settled.applied_twice += state.avatar.applied.saturating_sub(state.last_applied);
            settled.arrived_twice += state.duplicates;
            // The hash chain proves each of 1..=last_applied was applied exactly once, in order.
            if state.avatar.chain != expected_chain(*player, 0, 1, state.last_applied) {
                settled.applied_twice += 1;
            }
        }
        Ok(settled)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.processes.clear();
        self.coordinator = None;
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Starts `baton-coordinator` for a test cluster in `directory` (certificates in `certs/`, data in
/// `coordinator-data/`, the API token in `api.token`, made if missing), its cluster endpoint on
/// `address` and its admin API on `api` (port 0: any).
pub fn spawn_coordinator_at(
    binary: &Path,
    directory: &Path,
    address: SocketAddr,
    api: SocketAddr,
    extra: &[String],
) -> anyhow::Result<CoordinatorProcess> {
    spawn_coordinator_placed(binary, None, directory, address, api, extra)
}

/// [`spawn_coordinator_at`], in `site`'s network namespace (or here).
pub fn spawn_coordinator_placed(
    binary: &Path,
    site: Option<&crate::players::Site>,
    directory: &Path,
    address: SocketAddr,
    api: SocketAddr,
    extra: &[String],
) -> anyhow::Result<CoordinatorProcess> {
    let token_file = directory.join("api.token");
    if !token_file.exists() {
        let token: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
        std::fs::write(&token_file, token)?;
    }
    let mut command = crate::players::placed(binary, site);
    command
        .args(["--name", "coordinator", "--control", "--listen", &address.to_string()])
        .args(["--api-listen", &api.to_string()])
        .arg("--api-token-file")
        .arg(&token_file)
        .arg("--certs")
        .arg(directory.join("certs"))
        .arg("--data")
        .arg(directory.join("coordinator-data"))
        .args(extra);
    CoordinatorProcess::spawn_coordinator_command(command)
}

/// Makes (or reuses) a development cluster CA in `certs` and issues a certificate for each of
/// `nodes`, with `batonctl certs`.
pub fn issue_certificates(certs: &Path, nodes: &[String]) -> anyhow::Result<()> {
    let mut issue = Command::new(batonctl_binary()?);
    issue.arg("certs").arg(certs);
    for node in nodes {
        issue.args(["--node", node]);
    }
    let status = issue.stderr(Stdio::null()).status().context("issuing certificates")?;
    if !status.success() {
        bail!("issuing certificates in {} failed: {status}", certs.display());
    }
    Ok(())
}

/// The `world` object of a sample region made as `request` says.
#[must_use]
pub fn world_object(request: WorldRequest) -> GameObject {
    to_game_object(&request)
}

/// The `world` object of a sample region with these counts.
#[must_use]
pub fn sample_world(objects: usize, npcs: usize, plants: usize, churn: usize, seed: u64) -> GameObject {
    world_object(WorldRequest { objects, npcs, plants, churn, seed: Some(seed) })
}

/// The `spawn` object of a sample avatar standing at `spawn`.
#[must_use]
pub fn spawn_object(spawn: Spawn) -> GameObject {
    to_game_object(&spawn)
}

/// The admin API address a coordinator said it listens on (its first line).
pub fn coordinator_api(coordinator: &CoordinatorProcess) -> anyhow::Result<SocketAddr> {
    coordinator
        .log
        .iter()
        .find_map(|event| match event {
            ConsoleEvent::Listening { api, .. } => Some(*api),
            _ => None,
        })
        .context("the coordinator did not say where its API listens")
}

fn spawn_coordinator(binary: &Path, directory: &Path, address: SocketAddr) -> anyhow::Result<CoordinatorProcess> {
    spawn_coordinator_at(binary, directory, address, SocketAddr::from(([127, 0, 0, 1], 0)), &[])
}

/// The `batonctl` binary next to the running executable (or `BATONCTL`).
pub fn batonctl_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("batonctl", "BATONCTL")
}

/// The `tally-region` example game (`sdk/runtime/examples/`, built by `cargo test` and
/// `cargo build --examples`) next to the running executable (or `BATON_TALLY_REGION`).
pub fn tally_region_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("examples/tally-region", "BATON_TALLY_REGION")
}

/// The `baton-agent` binary next to the running executable (or `BATON_AGENT`).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("baton-agent", "BATON_AGENT")
}

/// The `baton-coordinator` binary next to the running executable (or `BATON_COORDINATOR`).
pub fn coordinator_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("baton-coordinator", "BATON_COORDINATOR")
}

/// The `sample-region-server` binary next to the running executable (tests and benchmarks), or
/// `BATON_SAMPLE_SERVER` when set.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("sample-region-server", "BATON_SAMPLE_SERVER")
}

/// The `baton-gateway` binary next to the running executable (or `BATON_GATEWAY`).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("baton-gateway", "BATON_GATEWAY")
}

fn sibling_binary(name: &str, variable: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Ok(PathBuf::from(path));
    }
    let executable = std::env::current_exe()?;
    let mut directory = executable.parent().context("executable without a folder")?.to_path_buf();
    // Test binaries live in target/<profile>/deps.
    if directory.ends_with("deps") {
        directory.pop();
    }
    let candidate = directory.join(name);
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!("{} not found; build it first (cargo build --bins) or set {variable}", candidate.display())
    }
}

/// What a timed-out wait shows: the last `count` events that are not periodic, newest first, and
/// how many periodic ones were left out (those after the oldest shown, or in the whole log when
/// fewer than `count` were found).
fn last_events<E: Periodic + std::fmt::Debug>(log: &[E], count: usize) -> String {
    let mut shown = Vec::new();
    let mut periodic = 0usize;
    for event in log.iter().rev() {
        if shown.len() == count {
            break;
        }
        if event.periodic() {
            periodic += 1;
        } else {
            shown.push(event);
        }
    }
    format!("last events, newest first: {shown:?} ({periodic} periodic ones left out)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_wait_shows_the_events_that_are_not_periodic() {
        let heap = ServerEvent::Heap { live_bytes: 1 };
        let error = |message: &str| ServerEvent::Error { region: None, error: message.to_owned() };
        let log =
            vec![error("oldest"), heap.clone(), error("second"), heap.clone(), heap.clone(), error("third"), heap];
        let shown = last_events(&log, 2);
        assert!(!shown.contains("oldest") && !shown.contains("Heap"), "{shown}");
        let (third, second) = (shown.find("third").unwrap(), shown.find("second").unwrap());
        assert!(third < second, "newest first: {shown}");
        assert!(shown.ends_with("(3 periodic ones left out)"), "{shown}");
        // Fewer than asked for: every periodic event of the log is left out and counted.
        let heap = ServerEvent::Heap { live_bytes: 2 };
        let shown = last_events(&[heap.clone(), error("only"), heap], 5);
        assert!(shown.contains("only") && shown.ends_with("(2 periodic ones left out)"), "{shown}");
        assert!(last_events::<ServerEvent>(&[], 5).ends_with("[] (0 periodic ones left out)"));
    }
}
