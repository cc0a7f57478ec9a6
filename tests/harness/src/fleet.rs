//! A whole Baton deployment on loopback: a coordinator, host agents with warm pools of sample
//! region servers, a gateway, players. Operated through the coordinator's admin API, as an operator
//! would. Used by the fleet tests (and later the demo and the load test).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_agent::AgentEvent;
use baton_client::ClientOptions;
use baton_gateway::token::TokenKey;
use baton_gateway::{GatewayEvent, GatewayStats};
use serde_json::{Value, json};

use crate::cluster::{
    CoordinatorProcess, GatewayProcess, agent_binary, coordinator_api, coordinator_binary, gateway_binary,
    issue_certificates, server_binary, spawn_coordinator_placed,
};
use crate::players::{Site, placed};

/// Settings of a [`Fleet`].
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Hosts (one agent each).
    pub hosts: usize,
    /// Warm processes each agent keeps.
    pub pool: usize,
    /// Most processes per host.
    pub capacity: usize,
    /// Regions of the world grid, and its width.
    pub world_regions: u64,
    /// Grid width.
    pub columns: u64,
    /// Tick rate of the regions.
    pub tick_rate: u32,
    /// Seconds between checkpoints of each region (into the fleet's shared checkpoint folder).
    pub checkpoint_every_s: f64,
    /// CPU cores each host declares (`--capacity-cores`), by host; hosts past the end declare
    /// the agent's default (the machine's cores).
    pub capacity_cores: Vec<f64>,
    /// More coordinator options (e.g. `--balancer on`).
    pub coordinator_args: Vec<String>,
}

/// The region-server command the fleet's agents run (the agent adds `--name` and `--listen`).
#[derive(Clone, Debug)]
pub struct ServerCommandLine {
    /// The binary (any game served by `baton_runtime::serve`).
    pub binary: PathBuf,
    /// Arguments before the fleet's own (`--coordinator`, `--certs`, `--cert-name`,
    /// `--checkpoint-dir`, `--checkpoint-every-s`, `--tick-rate`).
    pub args: Vec<String>,
    /// Environment variables of the agents, which their region servers inherit (e.g. a fault
    /// point, `baton_runtime::fault_point`).
    pub env: Vec<(String, String)>,
}

impl ServerCommandLine {
    /// The sample game, its world laid out as `spec` says.
    pub fn sample(spec: &FleetSpec) -> anyhow::Result<ServerCommandLine> {
        Ok(ServerCommandLine {
            binary: server_binary()?,
            args: vec![
                "--serve".into(),
                "--world-regions".into(),
                spec.world_regions.to_string(),
                "--world-columns".into(),
                spec.columns.to_string(),
            ],
            env: Vec::new(),
        })
    }
}

/// Where the processes of a [`Fleet`] run: each in a network namespace of a test bed, listening on
/// its address. Without one, everything runs here on loopback.
#[derive(Clone, Debug)]
pub struct FleetPlacement {
    /// The coordinator's.
    pub coordinator: Site,
    /// The gateways' (`g0`, then `g1` for [`Fleet::start_late_gateway`]).
    pub gateways: Vec<Site>,
    /// Per host (`h1` first): its agent and region servers.
    pub hosts: Vec<Site>,
}

impl FleetPlacement {
    fn gateway<'a>(placement: Option<&'a FleetPlacement>, name: &str) -> anyhow::Result<Option<&'a Site>> {
        let Some(placement) = placement else { return Ok(None) };
        let index: usize = name.trim_start_matches('g').parse().with_context(|| format!("gateway {name}"))?;
        placement.gateways.get(index).map(Some).with_context(|| format!("no site for gateway {name}"))
    }

    fn host(placement: Option<&FleetPlacement>, index: usize) -> anyhow::Result<Option<&Site>> {
        let Some(placement) = placement else { return Ok(None) };
        placement.hosts.get(index - 1).map(Some).with_context(|| format!("no site for host h{index}"))
    }
}

/// The address a process in `site` (or on loopback) listens on, with any port.
fn any_port(site: Option<&Site>) -> SocketAddr {
    SocketAddr::new(site.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |site| site.ip), 0)
}

/// The processes of a deployment; all are stopped when it is dropped.
pub struct Fleet {
    /// The coordinator (None while killed).
    pub coordinator: Option<CoordinatorProcess>,
    coordinator_address: SocketAddr,
    api_address: SocketAddr,
    /// The admin API's base URL.
    pub api: String,
    admin: AdminApi,
    agents: Vec<Child>,
    /// The gateway.
    pub gateway: GatewayProcess,
    /// Its players' address.
    pub gateway_address: SocketAddr,
    /// Where each agent serves its metrics (host `h1` first).
    pub agent_metrics: Vec<SocketAddr>,
    /// Where the gateway serves its metrics.
    pub gateway_metrics: SocketAddr,
    trust: PathBuf,
    key: TokenKey,
    directory: PathBuf,
    spec: FleetSpec,
    server: ServerCommandLine,
    placement: Option<FleetPlacement>,
}

/// A client of the admin API with the deployment's token (cheap to clone, usable from any thread).
#[derive(Clone)]
pub struct AdminApi {
    base: String,
    token: String,
    http: ureq::Agent,
}

impl AdminApi {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`) with bearer `token`.
    #[must_use]
    pub fn new(base: &str, token: &str) -> AdminApi {
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(150)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        AdminApi { base: base.trim_end_matches('/').to_owned(), token: token.trim().to_owned(), http }
    }

    /// Calls the API with the token; returns the status and the JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        self.call_with(method, path, body, Some(&self.token))
    }

    /// Calls the API with `token` (or none).
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let authorization = token.map(|token| format!("Bearer {token}"));
        let response = match method {
            "GET" => {
                let mut request = self.http.get(&url);
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                request.call()
            }
            _ => {
                let mut request = if method == "PUT" { self.http.put(&url) } else { self.http.post(&url) };
                if let Some(value) = &authorization {
                    request = request.header("Authorization", value);
                }
                match body {
                    Some(Value::String(raw)) => request.header("Content-Type", "application/json").send(raw.as_bytes()),
                    Some(body) => request.send_json(body),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = response.with_context(|| format!("calling {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The coordinator's metrics page.
    #[must_use]
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base)
    }

    /// The unlabelled sample `name` on the Prometheus page at `url` (0 when it is absent), within
    /// 2 s (a process cut off from the network does not hold the caller).
    pub fn metric_at(&self, url: &str, name: &str) -> anyhow::Result<f64> {
        metric_value(&self.metrics_page(url)?, name)
    }

    /// The Prometheus page at `url`, within 2 s (for reading several samples of one scrape with
    /// [`metric_value`]).
    pub fn metrics_page(&self, url: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(url)
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()
            .with_context(|| format!("scraping {url}"))?
            .body_mut()
            .read_to_string()?)
    }

    /// Calls the API and fails unless it answers 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }
}

impl Fleet {
    /// Starts the coordinator, the agents (whose pools start the region servers) and a gateway.
    pub fn start(spec: &FleetSpec) -> anyhow::Result<Fleet> {
        Fleet::start_with(spec, ServerCommandLine::sample(spec)?)
    }

    /// Starts a deployment whose agents run `server` as their region servers.
    pub fn start_with(spec: &FleetSpec, server: ServerCommandLine) -> anyhow::Result<Fleet> {
        Fleet::start_placed(spec, server, None)
    }

    /// Starts a deployment whose processes run where `placement` says (a test bed's network
    /// namespaces), or on loopback.
    pub fn start_placed(
        spec: &FleetSpec,
        server: ServerCommandLine,
        placement: Option<FleetPlacement>,
    ) -> anyhow::Result<Fleet> {
        let directory = std::env::temp_dir().join(format!("baton-fleet-{}-{}", std::process::id(), fastrand::u64(..)));
        let certs = directory.join("certs");
        let hosts: Vec<String> = (1..=spec.hosts).map(|index| format!("h{index}")).collect();
        let mut nodes = vec!["coordinator".to_owned(), "g0".to_owned(), "g1".to_owned()];
        nodes.extend(hosts.iter().cloned());
        issue_certificates(&certs, &nodes)?;
        // The coordinator binds ports of its own and says which (a restart binds the same again).
        let site = placement.as_ref().map(|placement| &placement.coordinator);
        let coordinator = spawn_coordinator_placed(
            &coordinator_binary()?,
            site,
            &directory,
            any_port(site),
            any_port(site),
            &spec.coordinator_args,
        )?;
        let coordinator_address = coordinator.address;
        let api_address = coordinator_api(&coordinator)?;
        let token = std::fs::read_to_string(directory.join("api.token"))?;
        let (agents, agent_metrics) = spawn_agents(spec, &server, placement.as_ref(), &directory, coordinator_address)?;
        let key_text: String = (0..48).map(|_| fastrand::alphanumeric()).collect();
        std::fs::write(directory.join("token.key"), &key_text)?;
        let key = TokenKey::new(key_text.as_bytes()).map_err(anyhow::Error::msg)?;
        let (gateway, gateway_address, gateway_metrics) =
            start_gateway(&directory, "g0", FleetPlacement::gateway(placement.as_ref(), "g0")?, coordinator_address)?;
        let api = format!("http://{api_address}");
        Ok(Fleet {
            coordinator: Some(coordinator),
            coordinator_address,
            api_address,
            admin: AdminApi::new(&api, &token),
            api,
            agents,
            agent_metrics,
            gateway_metrics,
            gateway,
            gateway_address,
            trust: directory.join("tls").join("gateway.pem"),
            key,
            directory,
            spec: spec.clone(),
            server,
            placement,
        })
    }

    /// Calls the admin API with the token; returns the status and the JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<(u16, Value)> {
        self.admin.call(method, path, body)
    }

    /// Calls the admin API with `token` (or none).
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        self.admin.call_with(method, path, body, token)
    }

    /// Calls the API and fails unless it answers 2xx.
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.admin.ok(method, path, body)
    }

    /// A client of the admin API for other threads.
    #[must_use]
    pub fn admin(&self) -> AdminApi {
        self.admin.clone()
    }

    /// Waits until every host's agent is connected with `warm` ready processes.
    pub fn wait_hosts_ready(&self, hosts: usize, warm: usize, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.ok("GET", "/v1/hosts", None)?;
            let ready = views
                .as_array()
                .map(|hosts| {
                    hosts
                        .iter()
                        .filter(|host| host["connected"] == true)
                        .filter(|host| {
                            host["processes"]
                                .as_array()
                                .map(|processes| {
                                    processes
                                        .iter()
                                        .filter(|process| process["warm"] == true && process["address"] != "0.0.0.0:0")
                                        .count()
                                })
                                .unwrap_or(0)
                                >= warm
                        })
                        .count()
                })
                .unwrap_or(0);
            if ready >= hosts {
                return Ok(views);
            }
            if Instant::now() > deadline {
                bail!("hosts not ready in time: {views}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts another gateway (`g1`) following the coordinator's route feed; returns it and its
    /// players' address. It learns every route from the feed alone (no `--server`).
    pub fn start_late_gateway(&self) -> anyhow::Result<(GatewayProcess, SocketAddr)> {
        let (gateway, address, _) = self.start_late_gateway_with_metrics()?;
        Ok((gateway, address))
    }

    /// [`Fleet::start_late_gateway`], also returning where it serves its metrics.
    pub fn start_late_gateway_with_metrics(&self) -> anyhow::Result<(GatewayProcess, SocketAddr, SocketAddr)> {
        let site = FleetPlacement::gateway(self.placement.as_ref(), "g1")?;
        start_gateway(&self.directory, "g1", site, self.coordinator_address)
    }

    /// Starts gateway `g0` again (after it was killed) with the same players' address.
    pub fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let site = FleetPlacement::gateway(self.placement.as_ref(), "g0")?;
        let (gateway, address, metrics) =
            start_gateway_at(&self.directory, "g0", site, Some(self.gateway_address), self.coordinator_address)?;
        self.gateway = gateway;
        self.gateway_address = address;
        self.gateway_metrics = metrics;
        Ok(())
    }

    /// Starts a migration and waits for its end; returns the final record.
    pub fn migrate(&self, region: u64, to: &str, timeout: Duration) -> anyhow::Result<Value> {
        let record = self.ok("POST", "/v1/migrations", Some(json!({"region": region, "to_host": to})))?;
        self.wait_migration(record["id"].as_u64().unwrap_or(0), timeout)
    }

    /// Waits until migration `id` commits or aborts.
    pub fn wait_migration(&self, id: u64, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.ok("GET", &format!("/v1/migrations/{id}"), None)?;
            if matches!(record["phase"].as_str(), Some("committed" | "aborted")) {
                return Ok(record);
            }
            if Instant::now() > deadline {
                bail!("migration {id} did not finish: {record}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every process of the deployment (agents with their region servers, the gateway, the
    /// coordinator), keeping its data: the directory, the migration history and the checkpoints.
    pub fn stop_everything(&mut self) {
        stop_agents(&mut self.agents);
        self.gateway.kill();
        self.kill_coordinator();
    }

    /// Starts the whole deployment again after [`Fleet::stop_everything`], with the same addresses
    /// and data. Regions come back only when asked to (`from_checkpoint`).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.restart_coordinator()?;
        (self.agents, self.agent_metrics) =
            spawn_agents(&self.spec, &self.server, self.placement.as_ref(), &self.directory, self.coordinator_address)?;
        let site = FleetPlacement::gateway(self.placement.as_ref(), "g0")?;
        let (gateway, address, metrics) = start_gateway(&self.directory, "g0", site, self.coordinator_address)?;
        self.gateway = gateway;
        self.gateway_address = address;
        self.gateway_metrics = metrics;
        Ok(())
    }

    /// Kills host `h{index}` the way a machine dies: its agent and every region-server process
    /// it reports, each with SIGKILL at once. Returns the process ids killed.
    pub fn kill_host(&mut self, index: usize) -> anyhow::Result<Vec<u32>> {
        self.signal_host(index, "-KILL")
    }

    /// Starts host `h{index}`'s agent again if it is dead (after [`Fleet::kill_host`]), as a
    /// machine that comes back does: the same host name and placement, an empty warm pool to
    /// fill. Returns whether it was dead.
    pub fn revive_host(&mut self, index: usize) -> anyhow::Result<bool> {
        let slot = index
            .checked_sub(1)
            .filter(|slot| *slot < self.agents.len())
            .with_context(|| format!("no host h{index}"))?;
        if self.agents[slot].try_wait()?.is_none() {
            return Ok(false);
        }
        let (agent, metrics) = spawn_agent(
            index,
            &self.spec,
            &self.server,
            self.placement.as_ref(),
            &self.directory,
            self.coordinator_address,
        )?;
        self.agents[slot] = agent;
        self.agent_metrics[slot] = metrics;
        Ok(true)
    }

    /// Sends `signal` (`-STOP` freezes a host as a hang or partition does, `-CONT` thaws it) to
    /// host `h{index}`'s agent and every region-server process it reports, at once. Returns the
    /// process ids.
    pub fn signal_host(&mut self, index: usize, signal: &str) -> anyhow::Result<Vec<u32>> {
        let name = format!("h{index}");
        let hosts = self.ok("GET", "/v1/hosts", None)?;
        let host = hosts
            .as_array()
            .and_then(|hosts| hosts.iter().find(|host| host["name"] == name.as_str()))
            .with_context(|| format!("no host {name}: {hosts}"))?;
        let agent = self.agents.get(index - 1).with_context(|| format!("no agent for {name}"))?;
        let mut pids = vec![agent.id()];
        pids.extend(
            host["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|process| process["pid"].as_u64())
                .filter_map(|pid| u32::try_from(pid).ok())
                .filter(|pid| *pid > 0),
        );
        let arguments: Vec<String> = pids.iter().map(u32::to_string).collect();
        let all = Command::new("kill").arg(signal).args(&arguments).stderr(std::process::Stdio::null()).status()?;
        // A region server its host last reported may have exited since (a crashed one the agent
        // has not started again yet): the others got the signal; the agent must have.
        if !all.success() && !Command::new("kill").args(["-0", &arguments[0]]).status()?.success() {
            bail!("kill {signal} {} (the agent of {name}) failed", arguments[0]);
        }
        Ok(pids)
    }

    /// The process id of host `h{index}`'s agent.
    #[must_use]
    pub fn agent_pid(&self, index: usize) -> Option<u32> {
        self.agents.get(index.checked_sub(1)?).map(Child::id)
    }

    /// The value of the counter or gauge `name` (without labels) that host `h{index}`'s agent
    /// serves on its metrics page; 0 when the agent has not recorded it yet.
    pub fn agent_metric(&self, index: usize, name: &str) -> anyhow::Result<f64> {
        let address = index
            .checked_sub(1)
            .and_then(|index| self.agent_metrics.get(index))
            .with_context(|| format!("no agent h{index}"))?;
        metric_value(&self.admin.metrics_page(&format!("http://{address}/metrics"))?, name)
    }

    /// Kills the coordinator with SIGKILL.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut coordinator) = self.coordinator.take() {
            coordinator.kill();
        }
    }

    /// Waits until the hosts' load reports (once a second) count `players` in all regions; panics
    /// after `within`.
    pub fn wait_for_players(&self, players: u64, within: Duration) {
        crate::wait_until(within, &format!("{players} players in the hosts' reports"), || {
            let hosts = self.ok("GET", "/v1/hosts", None).map_err(|error| error.to_string())?;
            let reported: u64 = hosts
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|host| host["regions"].as_array().cloned().unwrap_or_default())
                .filter_map(|load| load["players"].as_u64())
                .sum();
            if reported == players { Ok(()) } else { Err(format!("{reported} reported: {hosts}")) }
        });
    }

    /// The counters of the fleet's gateway (g0), as its `stats` command prints them.
    pub fn gateway_stats(&mut self) -> anyhow::Result<GatewayStats> {
        self.gateway.stats()
    }

    /// Starts the coordinator again with the same addresses and data.
    pub fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        // The coordinator comes back on its old ports, which were free while it was down: a test
        // running beside this one may have held one of them for a moment (a port picked by binding
        // port 0), so a start that fails is tried again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let started = spawn_coordinator_placed(
                &coordinator_binary()?,
                self.placement.as_ref().map(|placement| &placement.coordinator),
                &self.directory,
                self.coordinator_address,
                self.api_address,
                &self.spec.coordinator_args,
            );
            match started {
                Ok(coordinator) => {
                    self.coordinator = Some(coordinator);
                    return Ok(());
                }
                Err(error) if attempts < 3 => {
                    eprintln!("restarting the coordinator (attempt {attempts}): {error:#}; trying again");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                Err(error) => return Err(error.context(format!("restarting the coordinator, {attempts} attempts"))),
            }
        }
    }

    /// The fleet's login service: tokens for players who log in again (see
    /// [`PlayerPlan::relogin`](crate::players::PlayerPlan::relogin)).
    #[must_use]
    pub fn login(&self) -> crate::players::Login {
        let key = self.key.clone();
        crate::players::Login(std::sync::Arc::new(move |player, region| {
            crate::players::hour_token(&key, player, region)
        }))
    }

    /// A session token for `player` entering at `region`.
    #[must_use]
    pub fn token(&self, player: u64, region: u64) -> String {
        crate::players::hour_token(&self.key, player, region)
    }

    /// Options for players of the gateway.
    #[must_use]
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions::new(self.gateway_address, &self.trust)
    }

    /// The folder of this deployment.
    #[must_use]
    pub fn directory(&self) -> &Path {
        &self.directory
    }
}

/// Starts one agent per host, each keeping a pool of sample region servers that share the
/// fleet's checkpoint folder.
fn spawn_agents(
    spec: &FleetSpec,
    server: &ServerCommandLine,
    placement: Option<&FleetPlacement>,
    directory: &Path,
    coordinator: SocketAddr,
) -> anyhow::Result<(Vec<Child>, Vec<SocketAddr>)> {
    let mut agents = Vec::new();
    let mut metrics = Vec::new();
    for index in 1..=spec.hosts {
        match spawn_agent(index, spec, server, placement, directory, coordinator) {
            Ok((agent, address)) => {
                agents.push(agent);
                metrics.push(address);
            }
            Err(error) => {
                // The agents started so far (and their region servers) go with the failure.
                stop_agents(&mut agents);
                return Err(error);
            }
        }
    }
    Ok((agents, metrics))
}

/// Starts host `h{index}`'s agent: the process and the address of its metrics page.
fn spawn_agent(
    index: usize,
    spec: &FleetSpec,
    server: &ServerCommandLine,
    placement: Option<&FleetPlacement>,
    directory: &Path,
    coordinator: SocketAddr,
) -> anyhow::Result<(Child, SocketAddr)> {
    let certs = directory.join("certs");
    let host = format!("h{index}");
    let site = FleetPlacement::host(placement, index)?;
    let mut command = placed(&agent_binary()?, site);
    if let Some(site) = site {
        command.args(["--server-ip", &site.ip.to_string()]);
    }
    let mut child = command
        .envs(server.env.iter().map(|(name, value)| (name, value)))
        .args(["--host", &host, "--coordinator", &coordinator.to_string()])
        .args(["--metrics-listen", &any_port(site).to_string()])
        .arg("--certs")
        .arg(&certs)
        .args(["--pool", &spec.pool.to_string(), "--capacity", &spec.capacity.to_string()])
        .args(
            spec.capacity_cores
                .get(index - 1)
                .map(|cores| vec!["--capacity-cores".to_owned(), cores.to_string()])
                .unwrap_or_default(),
        )
        .args(["--status-interval-ms", "200", "--"])
        .arg(&server.binary)
        .args(&server.args)
        .args(["--cert-name", &host, "--coordinator", &coordinator.to_string()])
        .arg("--certs")
        .arg(&certs)
        .arg("--checkpoint-dir")
        .arg(directory.join("checkpoints"))
        .args(["--checkpoint-every-s", &spec.checkpoint_every_s.to_string()])
        .args(["--tick-rate", &spec.tick_rate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting an agent")?;
    let address = child.stdout.take().context("no stdout").and_then(|stdout| agent_metrics_address(&host, stdout));
    match address {
        Ok(address) => Ok((child, address)),
        Err(error) => {
            stop_agents(&mut vec![child]);
            Err(error)
        }
    }
}

/// Reads the metrics address an agent started with `--metrics-listen 127.0.0.1:0` prints, and
/// keeps reading its standard output so it never writes into a closed pipe.
fn agent_metrics_address(host: &str, stdout: std::process::ChildStdout) -> anyhow::Result<SocketAddr> {
    use std::io::BufRead;
    let (sender, address) = std::sync::mpsc::channel();
    let host = host.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<AgentEvent>(&line) {
                Ok(AgentEvent::Metrics { addr }) => {
                    let _ = sender.send(addr);
                }
                Err(_) => eprintln!("agent {host}: {line}"),
            }
        }
    });
    address.recv_timeout(Duration::from_secs(20)).context("the agent did not say where it serves metrics")
}

/// Stops agents with SIGTERM (they stop their processes), killing what does not stop in time.
fn stop_agents(agents: &mut Vec<Child>) {
    for agent in agents.iter() {
        let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for mut agent in agents.drain(..) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = agent.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = agent.kill();
        let _ = agent.wait();
    }
}

/// Starts a gateway named `name` (certificate issued by [`Fleet::start`]) that follows the
/// coordinator's route feed; returns it, its players' address and its metrics address.
fn start_gateway(
    directory: &Path,
    name: &str,
    site: Option<&Site>,
    coordinator: SocketAddr,
) -> anyhow::Result<(GatewayProcess, SocketAddr, SocketAddr)> {
    start_gateway_at(directory, name, site, None, coordinator)
}

/// Starts gateway `name`, its players' end at `listen` (or any port of its site).
fn start_gateway_at(
    directory: &Path,
    name: &str,
    site: Option<&Site>,
    listen: Option<SocketAddr>,
    coordinator: SocketAddr,
) -> anyhow::Result<(GatewayProcess, SocketAddr, SocketAddr)> {
    let mut command = placed(&gateway_binary()?, site);
    let listen = listen.unwrap_or_else(|| any_port(site)).to_string();
    command
        .args(["--name", name, "--listen", &listen, "--control"])
        .args(["--metrics-listen", &any_port(site).to_string()])
        .args(["--coordinator", &coordinator.to_string()])
        .arg("--certs")
        .arg(directory.join("certs"))
        .arg("--dev-tls")
        .arg(directory.join("tls"))
        .arg("--token-key-file")
        .arg(directory.join("token.key"));
    let gateway = GatewayProcess::spawn_gateway(name, command)?;
    let address = gateway.address;
    let metrics = gateway
        .log
        .iter()
        .find_map(|event| match event {
            GatewayEvent::Listening { metrics, .. } => *metrics,
            _ => None,
        })
        .context("the gateway did not say where it serves metrics")?;
    Ok((gateway, address, metrics))
}

impl Drop for Fleet {
    fn drop(&mut self) {
        stop_agents(&mut self.agents);
        self.coordinator = None;
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text page (0 when it is absent: a
/// counter not incremented yet is not listed).
pub fn metric_value(page: &str, name: &str) -> anyhow::Result<f64> {
    metric_listed(page, name).unwrap_or(Ok(0.0))
}

/// The value of the unlabelled sample `name` in a Prometheus text page, `None` when the page does
/// not list it (a process that does not have it, rather than one that has not counted yet).
pub fn metric_listed(page: &str, name: &str) -> Option<anyhow::Result<f64>> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|value| value.trim().parse().with_context(|| format!("{name}: {value}")))
}
