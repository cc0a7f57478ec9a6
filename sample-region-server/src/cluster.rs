//! Drives a cluster of `sample-region-server --serve` processes on loopback: used by the
//! multi-process tests and by `handoff-bench`.
//!
//! The controller plays the parts that later issues build properly: it is the players (each
//! sends [`scripted_input`](crate::scripted_input)s at a fixed rate to the process that owns the
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
use serde_json::{Value, json};

use crate::expected_chain;

/// One server process.
pub struct ServerProcess {
    /// Its instance name.
    pub name: String,
    /// Where it accepts handoff links.
    pub address: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::Receiver<Value>,
    /// Every event received so far.
    pub log: Vec<Value>,
}

impl ServerProcess {
    /// Starts `binary --serve` and waits until it listens.
    pub fn spawn(
        binary: &Path,
        name: &str,
        certs: &Path,
        authority: &Path,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(binary);
        command
            .arg("--serve")
            .args(["--name", name])
            .arg("--certs")
            .arg(certs)
            .arg("--authority")
            .arg(authority)
            .args(extra);
        ServerProcess::spawn_command(name, command)
    }

    /// Starts `binary --serve` deciding ownership at the coordinator at `coordinator`.
    pub fn spawn_coordinated(
        binary: &Path,
        name: &str,
        certs: &Path,
        coordinator: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(binary);
        command
            .arg("--serve")
            .args(["--name", name])
            .arg("--certs")
            .arg(certs)
            .args(["--coordinator", &coordinator.to_string()])
            .args(extra);
        ServerProcess::spawn_command(name, command)
    }

    /// Starts a process that speaks JSON lines (a region server or a gateway in `--control`
    /// mode) and waits until it reports `listening`.
    pub fn spawn_command(name: &str, mut command: Command) -> anyhow::Result<ServerProcess> {
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
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if sender.send(value).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("unparsable line from server: {line}"),
                }
            }
        });
        let mut process = ServerProcess {
            name: name.to_owned(),
            address: "0.0.0.0:0".parse()?,
            child,
            stdin,
            events,
            log: Vec::new(),
        };
        let listening = process.wait_for(0, Duration::from_secs(20), |event| event["event"] == "listening")?;
        process.address = listening.1["addr"].as_str().context("listening without addr")?.parse()?;
        Ok(process)
    }

    /// Sends one command.
    pub fn send(&mut self, command: &Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}").with_context(|| format!("writing to {}", self.name))?;
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
        predicate: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<(usize, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if let Some(position) = (since..self.log.len()).find(|index| predicate(&self.log[*index])) {
                return Ok((position, self.log[position].clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: timed out; last events: {:?}", self.name, self.log.iter().rev().take(5).collect::<Vec<_>>());
            }
            if let Ok(event) = self.events.recv_timeout(left.min(Duration::from_millis(20))) {
                self.log.push(event);
            }
        }
    }

    /// The operating system's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process used so far (user + system), from `/proc` (Linux); `None` elsewhere.
    #[must_use]
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
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
}

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
    pub coordinator: Option<ServerProcess>,
    coordinator_address: Option<SocketAddr>,
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
        let mut issue = Command::new(binary);
        issue.arg("--dev-certs").arg(&certs).args(["--node", "coordinator"]);
        for name in &names {
            issue.args(["--node", name]);
        }
        let status = issue.stderr(Stdio::null()).status().context("issuing certificates")?;
        if !status.success() {
            bail!("issuing certificates failed: {status}");
        }
        let mut coordinator = None;
        let mut coordinator_address = None;
        if let Some(coordinator_binary) = coordinator_binary {
            // A fixed port, so a restarted coordinator is found where the servers look for it.
            let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            let process = spawn_coordinator(coordinator_binary, &directory, port)?;
            coordinator_address = Some(port);
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
        })
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
        coordinator.send(&json!({"cmd": "regions"}))?;
        let (_, event) = coordinator.wait_for(mark, Duration::from_secs(10), |event| event["event"] == "regions")?;
        Ok(event["regions"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        (
                            row["region"].as_u64().unwrap_or(0),
                            row["owner"].as_str().unwrap_or_default().to_owned(),
                            row["epoch"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The region this cluster plays.
    #[must_use]
    pub fn region(&self) -> u64 {
        self.region
    }

    /// Hosts the region on process 0 with `players` avatars.
    pub fn host(&mut self, spec: &Value, players: u64) -> anyhow::Result<()> {
        let mut command = spec.clone();
        command["cmd"] = json!("host");
        command["region"] = json!(self.region);
        self.processes[0].send(&command)?;
        self.processes[0]
            .wait_for(0, Duration::from_secs(120), |event| event["event"] == "owning" || event["event"] == "error")?;
        let joins: Vec<Value> = (1..=players)
            .map(|id| json!({"id": id, "x": (id % 50) as f32 * 4.0 - 100.0, "z": (id / 50) as f32 * 4.0 - 100.0}))
            .collect();
        self.processes[0].send(&json!({"cmd": "join", "region": self.region, "players": joins}))?;
        for id in 1..=players {
            self.next_seq.insert(id, 1);
        }
        self.last_inputs = Instant::now();
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
                    inputs.push(json!([*player, *next]));
                    *next += 1;
                }
            }
            let owner = self.owner;
            self.processes[owner].send(&json!({"cmd": "inputs", "region": self.region, "inputs": inputs}))?;
        }
        self.resend_refused()
    }

    fn resend_refused(&mut self) -> anyhow::Result<()> {
        let mut refused = Vec::new();
        for process in &mut self.processes {
            process.drain();
            for event in process.log.iter_mut() {
                if event["event"] == "input_refused" {
                    refused.push(json!([event["player"], event["seq"]]));
                    event["event"] = json!("input_refused_resent");
                }
            }
        }
        if !refused.is_empty() {
            let owner = self.owner;
            self.processes[owner].send(&json!({"cmd": "inputs", "region": self.region, "inputs": refused}))?;
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
        let region = self.region;
        let target_mark = self.processes[to].log.len();
        self.processes[to].send(&json!({"cmd": "prepare", "region": region}))?;
        self.processes[to].wait_for(target_mark, Duration::from_secs(30), |event| event["event"] == "prepared")?;
        let source_mark = self.processes[from].log.len();
        let address = self.processes[to].address.to_string();
        self.processes[from].send(&json!({"cmd": "handoff", "region": region, "to": address}))?;
        let deadline = Instant::now() + timeout;
        let mut outcome = HandoffOutcome::default();
        loop {
            self.pump_inputs()?;
            let target_events = &self.processes[to].log[target_mark..];
            if !outcome.committed && target_events.iter().any(|event| event["event"] == "authoritative") {
                // The gateway flips the route as soon as the new owner says so.
                outcome.committed = true;
                self.owner = to;
            }
            let source_events = &self.processes[from].log[source_mark..];
            if let Some(aborted) =
                source_events.iter().find(|event| event["event"] == "aborted" && event["owning"] == true)
            {
                outcome.aborted = aborted["reason"].as_str().map(str::to_owned);
                return Ok(outcome);
            }
            let handed = source_events.iter().find(|event| event["event"] == "handed_off").cloned();
            let first_tick = target_events.iter().find(|event| event["event"] == "first_tick").cloned();
            let frozen = source_events.iter().rev().find(|event| event["event"] == "frozen").cloned();
            if let (Some(handed), Some(first_tick), Some(frozen)) = (handed, first_tick, frozen) {
                outcome.freeze_us = handed["freeze_us"].as_u64().unwrap_or(0);
                outcome.total_us = handed["total_us"].as_u64().unwrap_or(0);
                outcome.rounds = handed["rounds"].as_u64().unwrap_or(0);
                outcome.snapshot_bytes = handed["snapshot_bytes"].as_u64().unwrap_or(0);
                outcome.delta_bytes = handed["delta_bytes"].as_u64().unwrap_or(0);
                outcome.final_bytes = handed["final_bytes"].as_u64().unwrap_or(0);
                outcome.tick_gap_us = first_tick["at_us"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(frozen["last_tick_at_us"].as_u64().unwrap_or(0));
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
        let region = self.region;
        let target_mark = self.processes[to].log.len();
        self.processes[to].send(&json!({"cmd": "prepare", "region": region}))?;
        self.processes[to].wait_for(target_mark, Duration::from_secs(30), |event| event["event"] == "prepared")?;
        let from = self.owner;
        let mark = self.processes[from].log.len();
        let address = self.processes[to].address.to_string();
        self.processes[from].send(&json!({"cmd": "handoff", "region": region, "to": address}))?;
        Ok(mark)
    }

    /// Plays until the owner reports an event at or after `since` that satisfies `predicate`.
    pub fn play_until(
        &mut self,
        since: usize,
        timeout: Duration,
        predicate: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
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
    pub fn report(&mut self, index: usize, region: u64) -> anyhow::Result<Value> {
        let mark = self.processes[index].log.len();
        self.processes[index].send(&json!({"cmd": "report", "region": region}))?;
        let (_, report) = self.processes[index]
            .wait_for(mark, Duration::from_secs(10), |event| event["event"] == "report" && event["region"] == region)?;
        Ok(report)
    }

    /// Stops the players, lets everything drain, and checks every player's inputs at the owner:
    /// returns (inputs sent, lost, duplicated or out of order, region digest).
    pub fn settle_and_check(&mut self) -> anyhow::Result<(u64, u64, u64, String)> {
        // Let the stragglers and re-sent inputs arrive and be applied.
        for _ in 0..50 {
            self.resend_refused()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        let owner = self.owner;
        let mark = self.processes[owner].log.len();
        self.processes[owner].send(&json!({"cmd": "report", "region": self.region}))?;
        let (_, report) =
            self.processes[owner].wait_for(mark, Duration::from_secs(10), |event| event["event"] == "report")?;
        let mut sent_total = 0;
        let mut lost = 0;
        let mut duplicated = 0;
        let players = report["players"].as_array().cloned().unwrap_or_default();
        for (player, next) in &self.next_seq {
            let sent = next - 1;
            sent_total += sent;
            let Some(state) = players.iter().find(|state| state["id"].as_u64() == Some(*player)) else {
                lost += sent;
                continue;
            };
            let last_applied = state["last_applied"].as_u64().unwrap_or(0);
            let applied = state["applied"].as_u64().unwrap_or(0);
            lost += sent.saturating_sub(last_applied);
            duplicated += applied.saturating_sub(last_applied);
            // The hash chain proves each of 1..=last_applied was applied exactly once, in order.
            if state["chain"].as_u64() != Some(expected_chain(*player, 0, 1, last_applied)) {
                duplicated += 1;
            }
        }
        Ok((sent_total, lost, duplicated, report["digest"].as_str().unwrap_or_default().to_owned()))
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
) -> anyhow::Result<ServerProcess> {
    let token_file = directory.join("api.token");
    if !token_file.exists() {
        let token: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
        std::fs::write(&token_file, token)?;
    }
    let mut command = Command::new(binary);
    command
        .args(["--name", "coordinator", "--control", "--listen", &address.to_string()])
        .args(["--api-listen", &api.to_string()])
        .arg("--api-token-file")
        .arg(&token_file)
        .arg("--certs")
        .arg(directory.join("certs"))
        .arg("--data")
        .arg(directory.join("coordinator-data"));
    ServerProcess::spawn_command("coordinator", command)
}

fn spawn_coordinator(binary: &Path, directory: &Path, address: SocketAddr) -> anyhow::Result<ServerProcess> {
    spawn_coordinator_at(binary, directory, address, SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The `batonctl` binary next to the running executable (or `BATONCTL`).
pub fn batonctl_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("batonctl", "BATONCTL")
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
