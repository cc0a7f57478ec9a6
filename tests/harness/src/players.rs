//! A whole cluster on loopback with real players: region-server processes, gateway processes and
//! simulated players connected through the client library. Used by the gateway tests, the
//! gateway benchmark and the load test.
//!
//! Each simulated player sends inputs at a fixed rate and checks, from the state updates it gets,
//! that the region applied every input exactly once and in order: the sample's view carries the
//! avatar's input count and hash chain, which the player recomputes from what it sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baton_client::player::CloseCode;
use baton_client::{Client, ClientError, ClientOptions, Event};
use baton_gateway::GatewayStats;
use baton_gateway::token::{Claims, TokenKey};

use crate::cluster::{GatewayProcess, ServerProcess, gateway_binary, issue_certificates, server_binary};
use baton_wire::RegionId;
use baton_wire::serve::{GameObject, ServerCommand, ServerEvent};
use sample_region_server::{PlayerView, walk_payload};

/// Processes of a cluster with gateways; all are stopped when it is dropped.
pub struct GatewayCluster {
    /// Region servers (`s0`, `s1`, ...).
    pub servers: Vec<ServerProcess>,
    /// Gateways (`g0`, `g1`, ...).
    pub gateways: Vec<GatewayProcess>,
    /// Players' addresses of the gateways.
    pub gateway_addresses: Vec<SocketAddr>,
    /// The certificate players trust.
    pub trust: PathBuf,
    key: TokenKey,
    directory: PathBuf,
}

/// Settings of a [`GatewayCluster`].
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Region servers.
    pub servers: usize,
    /// Gateways.
    pub gateways: usize,
    /// Regions in the world grid (they cross borders), laid out `columns` wide.
    pub world_regions: u64,
    /// Grid width.
    pub columns: u64,
    /// Extra arguments for every server.
    pub server_args: Vec<String>,
    /// Extra arguments for every gateway.
    pub gateway_args: Vec<String>,
    /// Where each server and gateway runs; `None`: every process on loopback in this network
    /// namespace.
    pub placement: Option<Placement>,
}

/// Where the processes of a [`GatewayCluster`] run: each in a network namespace, listening on an
/// address of it (a test bed of several hosts on one machine).
#[derive(Clone, Debug)]
pub struct Placement {
    /// Per server, in order.
    pub servers: Vec<Site>,
    /// Per gateway, in order.
    pub gateways: Vec<Site>,
}

/// A network namespace and the address processes in it listen on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The namespace's name (`ip netns`).
    pub netns: String,
    /// Its address on the test bed's network.
    pub ip: std::net::IpAddr,
}

impl Site {
    /// A command that runs `program` in this namespace.
    #[must_use]
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// This namespace's address with port 0, for a process to listen on.
    #[must_use]
    pub fn listen(&self) -> String {
        SocketAddr::new(self.ip, 0).to_string()
    }
}

/// `program` in `site`, or here.
pub(crate) fn placed(program: &Path, site: Option<&Site>) -> Command {
    site.map_or_else(|| Command::new(program), |site| site.command(program))
}

impl GatewayCluster {
    /// Starts everything: certificates, servers, gateways connected to every server.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<GatewayCluster> {
        let server = server_binary()?;
        let gateway = gateway_binary()?;
        let directory =
            std::env::temp_dir().join(format!("baton-gateway-cluster-{}-{}", std::process::id(), fastrand::u64(..)));
        let certs = directory.join("certs");
        let server_names: Vec<String> = (0..spec.servers).map(|index| format!("s{index}")).collect();
        let gateway_names: Vec<String> = (0..spec.gateways).map(|index| format!("g{index}")).collect();
        let nodes: Vec<String> =
            server_names.iter().chain(&gateway_names).cloned().chain(["probe".to_owned()]).collect();
        issue_certificates(&certs, &nodes)?;
        let key_file = directory.join("token.key");
        let key_text: String = (0..48).map(|_| fastrand::alphanumeric()).collect();
        std::fs::write(&key_file, &key_text)?;
        let key = TokenKey::new(key_text.as_bytes()).map_err(anyhow::Error::msg)?;
        let authority = directory.join("authority");
        let world = [
            "--world-regions".to_owned(),
            spec.world_regions.to_string(),
            "--world-columns".to_owned(),
            spec.columns.to_string(),
        ];
        let site = |sites: fn(&Placement) -> &Vec<Site>, index: usize| -> anyhow::Result<Option<&Site>> {
            spec.placement
                .as_ref()
                .map(|placement| sites(placement).get(index).context("the placement names fewer sites than processes"))
                .transpose()
        };
        let mut servers = Vec::new();
        for (index, name) in server_names.iter().enumerate() {
            let site = site(|placement| &placement.servers, index)?;
            let mut command = placed(&server, site);
            command
                .arg("--serve")
                .args(["--name", name])
                .arg("--certs")
                .arg(&certs)
                .arg("--authority")
                .arg(&authority)
                .args(&world)
                .args(&spec.server_args);
            if let Some(site) = site {
                command.args(["--listen", &site.listen()]);
            }
            servers.push(ServerProcess::spawn_server(name, command)?);
        }
        let dev_tls = directory.join("tls");
        let mut gateways = Vec::new();
        let mut gateway_addresses = Vec::new();
        for (index, name) in gateway_names.iter().enumerate() {
            let site = site(|placement| &placement.gateways, index)?;
            let listen = site.map_or_else(|| "127.0.0.1:0".to_owned(), Site::listen);
            let mut command = placed(&gateway, site);
            command
                .args(["--name", name, "--listen", &listen, "--control"])
                .arg("--certs")
                .arg(&certs)
                .arg("--dev-tls")
                .arg(&dev_tls)
                .arg("--token-key-file")
                .arg(&key_file)
                .args(&spec.gateway_args);
            for server in &servers {
                command.args(["--server", &server.address.to_string()]);
            }
            let process = GatewayProcess::spawn_gateway(name, command)?;
            gateway_addresses.push(process.address);
            gateways.push(process);
        }
        Ok(GatewayCluster { servers, gateways, gateway_addresses, trust: dev_tls.join("gateway.pem"), key, directory })
    }

    /// Hosts `region` on server `server` with `objects` physics objects (and a few NPCs).
    pub fn host(&mut self, server: usize, region: u64, objects: usize) -> anyhow::Result<()> {
        let npcs = objects / 10;
        self.host_world(server, region, crate::cluster::sample_world(objects, npcs, npcs, 0, region))
    }

    /// Hosts `region` on server `server`, filled from `world` (the sample's `world` object).
    pub fn host_world(&mut self, server: usize, region: u64, world: GameObject) -> anyhow::Result<()> {
        let region = RegionId(region);
        let mark = self.servers[server].log.len();
        self.servers[server].command(&ServerCommand::Host {
            region,
            world,
            from_checkpoint: false,
            take_over: None,
        })?;
        self.servers[server]
            .wait_outcome(
                mark,
                Duration::from_secs(120),
                region,
                |event| matches!(event, ServerEvent::Owning { region: owned, .. } if *owned == region),
            )
            .with_context(|| format!("hosting region {region}"))?;
        Ok(())
    }

    /// Moves `region` from server `from` to server `to`; returns the source's final event
    /// (`handed_off` or `aborted`).
    pub fn handoff(&mut self, region: u64, from: usize, to: usize) -> anyhow::Result<ServerEvent> {
        let region = RegionId(region);
        let target_mark = self.servers[to].log.len();
        self.servers[to].command(&ServerCommand::Prepare { region })?;
        self.servers[to].wait_outcome(
            target_mark,
            Duration::from_secs(30),
            region,
            |event| matches!(event, ServerEvent::Prepared { region: prepared } if *prepared == region),
        )?;
        let source_mark = self.servers[from].log.len();
        let address = self.servers[to].address;
        self.servers[from].command(&ServerCommand::Handoff { region, to: address })?;
        self.servers[from].wait_outcome(source_mark, Duration::from_secs(60), region, |event| {
            matches!(event, ServerEvent::HandedOff { region: about, .. } | ServerEvent::Aborted { region: about, .. }
                if *about == region)
        })
    }

    /// A session token for `player` entering at `region`, valid for an hour.
    #[must_use]
    pub fn token(&self, player: u64, region: u64) -> String {
        hour_token(&self.key, player, region)
    }

    /// A token signed with the cluster's key (tests make bad ones with it).
    #[must_use]
    pub fn token_with(&self, claims: &Claims) -> String {
        self.key.issue(claims)
    }

    /// Checks a token with the cluster's key at `now_unix` (seconds), as a gateway does.
    pub fn verify_token(&self, token: &str, now_unix: u64) -> Result<Claims, baton_wire::token::TokenError> {
        self.key.verify(token, now_unix)
    }

    /// Client options for gateway `index`.
    #[must_use]
    pub fn client_options(&self, index: usize) -> ClientOptions {
        ClientOptions::new(self.gateway_addresses[index], &self.trust)
    }

    /// The counters of gateway `index`.
    pub fn gateway_stats(&mut self, index: usize) -> anyhow::Result<GatewayStats> {
        self.gateways[index].stats()
    }

    /// The folder holding certificates and keys.
    #[must_use]
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The cluster identity of the `probe` node (for clients that talk to a server directly).
    pub fn probe_identity(&self) -> anyhow::Result<baton_net::ClusterIdentity> {
        Ok(baton_net::ClusterIdentity::load(&self.directory.join("certs"), "probe")?)
    }
}

impl Drop for GatewayCluster {
    fn drop(&mut self) {
        self.gateways.clear();
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Milliseconds since the Unix epoch (comparable between processes on one machine).
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// A session token signed with `key` for `player` entering at `region`, valid for an hour.
#[must_use]
pub fn hour_token(key: &TokenKey, player: u64, region: u64) -> String {
    key.issue(&Claims { player, region, expires_at: unix_seconds() + 3600 })
}

/// How a simulated player moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Movement {
    /// A random walk that changes direction every couple of seconds.
    Wander,
    /// Walks along x towards the other region, and back after each crossing.
    Patrol {
        /// Direction at the start: +1 east, -1 west.
        heading: f32,
    },
    /// Drifts towards one corner of the world (crossing regions on the way, and piling up in the
    /// corner region), with a little jitter: the hotspot of the Cluster 2010 experiment.
    Hotspot {
        /// The corner: x and z, each +1 or -1.
        corner: [f32; 2],
    },
}

/// What one simulated player should do.
#[derive(Clone, Debug)]
pub struct PlayerPlan {
    /// The player.
    pub player: u64,
    /// The region to enter.
    pub region: u64,
    /// How it moves.
    pub movement: Movement,
    /// Inputs per second.
    pub inputs_per_second: u32,
    /// Connect after this long (a ramp-up spreads connection handshakes).
    pub start_after: Duration,
    /// Stop sending inputs after this long (or sooner, when `stop` is set).
    pub play_for: Duration,
    /// Stop sending inputs once this is set: a test ends play when what it waits for has
    /// happened (then `play_for` is only a bound that turns a hang into a failure).
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Counted up once, when the region first says one of the player's inputs is durable (so the
    /// player's avatar is in a checkpoint or a standby too): a test waits for all its players to
    /// be in play before it kills anything.
    pub in_play: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Then wait at most this long for every input to be acknowledged.
    pub settle_for: Duration,
    /// Input payload sizes, in bytes (at least 9; each input draws one in this range).
    pub payload_bytes: (usize, usize),
    /// Log in again when the session ends because the player's region was stopped (close code
    /// `Unavailable`), the way players come back after a region restart: a new token for the
    /// region the avatar was in, tried every [`RELOGIN_EVERY`] until the region takes the player
    /// again. Inputs the region had not applied when it stopped are lost. Without it, the end of
    /// the session ends the player. With it, a player whose region came back on another server
    /// after its host died (`Event::Recovered`) also logs in again, as a client of a server that
    /// died does (here the gateway kept the connection; the old way has no gateway), and the
    /// inputs the restored region lacks are lost.
    pub relogin: Option<Login>,
    /// Where the player also records its update gaps and input round trips as they happen, for
    /// a live progress display (the outcome has them all at the end either way).
    pub live: Option<std::sync::Arc<LiveStats>>,
    /// Where to resume the session when the connection to the gateway is lost (the gateway
    /// died: no close from it), as a client with a list of gateways does: each tried in turn,
    /// one every [`RESUME_EVERY`], until one takes the session back. Empty: a lost connection
    /// ends the player.
    pub resume_at: Vec<SocketAddr>,
}

/// Update gaps and round trips of many players, recorded as they happen and read (and reset)
/// once a second by a progress display: 1 ms buckets up to [`LiveHistogram::CEILING_MS`], lock-free,
/// so thousands of players can record without contending.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Update gaps.
    pub gaps: LiveHistogram,
    /// Input round trips (sent to first acknowledging update).
    pub round_trips: LiveHistogram,
}

/// See [`LiveStats`].
#[derive(Debug)]
pub struct LiveHistogram {
    buckets: Vec<std::sync::atomic::AtomicU64>,
}

/// What a [`LiveHistogram`] held since it was last taken.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LiveSummary {
    /// Values recorded.
    pub count: u64,
    /// Median, ms (to the bucket's upper edge).
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Largest, ms ([`LiveHistogram::CEILING_MS`] stands for that or more).
    pub max_ms: u64,
}

impl Default for LiveHistogram {
    fn default() -> Self {
        LiveHistogram {
            buckets: (0..=LiveHistogram::CEILING_MS).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        }
    }
}

impl LiveHistogram {
    /// The last bucket: values at or above this many milliseconds.
    pub const CEILING_MS: u64 = 5_000;

    /// Records one value.
    pub fn record(&self, value: Duration) {
        let bucket = (value.as_micros().div_ceil(1000) as u64).min(LiveHistogram::CEILING_MS) as usize;
        self.buckets[bucket].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// What was recorded since the last call, and starts over.
    pub fn take(&self) -> LiveSummary {
        let counts: Vec<u64> =
            self.buckets.iter().map(|bucket| bucket.swap(0, std::sync::atomic::Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LiveSummary::default();
        }
        let at = |quantile: f64| {
            let rank = ((count as f64 * quantile).ceil() as u64).max(1);
            let mut seen = 0;
            counts
                .iter()
                .position(|bucket| {
                    seen += bucket;
                    seen >= rank
                })
                .unwrap_or(0) as u64
        };
        let max_ms = counts.iter().rposition(|bucket| *bucket > 0).unwrap_or(0) as u64;
        LiveSummary { count, p50_ms: at(0.50), p99_ms: at(0.99), max_ms }
    }
}

/// Pause between a player's attempts to resume its session at another gateway.
pub const RESUME_EVERY: Duration = Duration::from_millis(200);

/// Pause between a stopped player's attempts to log in again.
pub const RELOGIN_EVERY: Duration = Duration::from_millis(250);

/// Issues session tokens (player, region) as a game's login service does.
#[derive(Clone)]
pub struct Login(pub std::sync::Arc<dyn Fn(u64, u64) -> String + Send + Sync>);

impl std::fmt::Debug for Login {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Login")
    }
}

impl PlayerPlan {
    /// A plan with the usual load: 20 inputs/s of 256-512 B, starting at once, playing for
    /// `play_for` and waiting up to 10 s for the last acknowledgements.
    #[must_use]
    pub fn new(player: u64, region: u64, movement: Movement, play_for: Duration) -> PlayerPlan {
        PlayerPlan {
            player,
            region,
            movement,
            inputs_per_second: 20,
            start_after: Duration::ZERO,
            play_for,
            stop: None,
            in_play: None,
            settle_for: Duration::from_secs(10),
            payload_bytes: (256, 512),
            relogin: None,
            live: None,
            resume_at: Vec::new(),
        }
    }
}

/// What one simulated player saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PlayerOutcome {
    /// The player.
    pub player: u64,
    /// Inputs sent.
    pub sent: u64,
    /// Inputs the region had applied for this player before this session (a player whose avatar
    /// lives on, e.g. in a restored checkpoint); 0 for a new player.
    pub acked_before: u64,
    /// Inputs the region acknowledged (last_applied at the end, counting `acked_before`).
    pub acked: u64,
    /// Inputs the avatar counted as applied (the view's count).
    pub applied: u64,
    /// Whether the avatar's input chain equals the chain of what was sent (for a player with
    /// `acked_before` > 0, whose earlier inputs this run did not see: whether the avatar counted
    /// exactly `acked_before` + `sent` inputs).
    pub chain_ok: bool,
    /// Connections lost or closed by the gateway.
    pub disconnects: u64,
    /// Inputs sent that the region never applied because the session ended (a stopped region);
    /// the player's next inputs reused their numbers.
    pub lost: u64,
    /// Times the player logged in again after its region was stopped.
    pub relogins: u64,
    /// Times the player resumed its session at another gateway after its connection was lost
    /// (counted here, not in `disconnects`).
    pub resumes: u64,
    /// Resumes refused in a way no other attempt can change (an expired token, another protocol):
    /// the player stopped trying, and its session counts as a disconnect.
    pub resumes_refused_for_good: u64,
    /// Failovers of its region it lived through (the gateway asked for its kept inputs again).
    pub recoveries: u64,
    /// Times its region asked for its inputs again because one was lost on its way.
    pub inputs_asked_again: u64,
    /// What the gateway said when its region was unavailable (lost its host, none took it over).
    pub unavailable_notices: Vec<String>,
    /// After each failover, the newest tick of the region seen before it and the tick of the
    /// restored region's first update: (milliseconds since the Unix epoch of that update, region,
    /// tick seen before, first tick after).
    #[serde(skip)]
    pub rollbacks: Vec<(u64, u64, u64, u64)>,
    /// Why, for each.
    pub close_reasons: Vec<String>,
    /// State updates received.
    pub updates: u64,
    /// Of those, updates whose payload is not a view of the avatar (the server had no avatar for
    /// the player).
    pub updates_without_view: u64,
    /// Longest time between two updates, in milliseconds.
    pub max_gap_ms: f64,
    /// Border crossings seen.
    pub crossings: u64,
    /// Neighbour views received.
    pub neighbour_views: u64,
    /// The region at the end.
    pub region: u64,
    /// Round trips from sending an input to an update acknowledging it, in microseconds.
    #[serde(skip)]
    pub round_trips_us: Vec<u64>,
    /// Gaps between updates, in microseconds.
    #[serde(skip)]
    pub gaps_us: Vec<u64>,
    /// When each gap in `gaps_us` ended, in milliseconds since the Unix epoch.
    #[serde(skip)]
    pub gap_ends_unix_ms: Vec<u64>,
    /// When each round trip in `round_trips_us` ended, in milliseconds since the Unix epoch.
    #[serde(skip)]
    pub round_trip_ends_unix_ms: Vec<u64>,
    /// Border crossings: (milliseconds since the Unix epoch, from, to).
    #[serde(skip)]
    pub crossing_log: Vec<(u64, u64, u64)>,
    /// Updates that came from another region than the one before (a border crossing): (when, in
    /// milliseconds since the Unix epoch; the time since the previous region's last update, in
    /// microseconds).
    #[serde(skip)]
    pub region_switch_log: Vec<(u64, u64)>,
    /// Times offline after a stop: (session ended, back in), milliseconds since the Unix epoch.
    #[serde(skip)]
    pub offline_log: Vec<(u64, u64)>,
}

/// How one simulated player of a [`Generator`] ended.
#[derive(Debug)]
pub enum PlayerEnd {
    /// It played its plan to the end.
    Finished(Box<PlayerOutcome>),
    /// It failed (could not connect, or its session broke in a way it does not recover from).
    Failed(anyhow::Error),
    /// [`Generator::abort`] stopped it.
    Aborted,
    /// Its task panicked (a bug in the harness or the client library).
    Panicked(String),
}

/// The load generator: simulated players spread over `threads` OS threads, each running a
/// single-threaded tokio runtime that owns its players and their sockets.
///
/// A player's client, its connection's driver and the socket it shares with 49 other players all
/// live on one thread, so waking one another is a local queue operation: no futex, no work
/// stealing, no cache lines moving between cores, which a work-stealing runtime pays on most
/// packets (docs/benchmarks.md, "Where each datagram's microseconds go").
pub struct Generator {
    shards: Vec<std::thread::JoinHandle<Vec<(usize, PlayerEnd)>>>,
    abort: tokio::sync::watch::Sender<bool>,
    count: usize,
}

impl Generator {
    /// Players a socket is shared by (a real client has one each; sharing keeps the generator's
    /// own cost down on a machine it shares with the cluster).
    pub const PLAYERS_PER_SOCKET: usize = 50;

    /// Starts `players` (each a plan and its token) against the gateway `base` names (its
    /// `endpoint` is ignored: each thread makes its own sockets). Player `i` runs on thread
    /// `i % threads`, so a ramp spreads over all of them.
    pub fn start(
        base: &ClientOptions,
        players: Vec<(PlayerPlan, String)>,
        threads: usize,
    ) -> anyhow::Result<Generator> {
        anyhow::ensure!(threads >= 1, "the load generator needs at least one thread");
        let count = players.len();
        let mut per_thread: Vec<Vec<(usize, PlayerPlan, String)>> = (0..threads).map(|_| Vec::new()).collect();
        for (index, (plan, token)) in players.into_iter().enumerate() {
            per_thread[index % threads].push((index, plan, token));
        }
        let (abort, aborted) = tokio::sync::watch::channel(false);
        let mut shards = Vec::with_capacity(threads);
        for (shard, players) in per_thread.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a load generator thread's runtime")?;
            let endpoints: Vec<quinn::Endpoint> = {
                let _guard = runtime.enter();
                (0..players.len().div_ceil(Self::PLAYERS_PER_SOCKET))
                    .map(|_| base.shared_endpoint())
                    .collect::<Result<_, _>>()?
            };
            let base = base.clone();
            let mut aborted = aborted.clone();
            let thread = std::thread::Builder::new()
                .name(format!("players-{shard}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let tasks: Vec<(usize, tokio::task::JoinHandle<_>)> = players
                            .into_iter()
                            .enumerate()
                            .map(|(slot, (index, plan, token))| {
                                let mut options = base.clone();
                                options.endpoint = Some(endpoints[slot / Self::PLAYERS_PER_SOCKET].clone());
                                (index, tokio::spawn(run_player(options, token, plan)))
                            })
                            .collect();
                        let mut ends = Vec::with_capacity(tasks.len());
                        for (index, mut task) in tasks {
                            let joined = tokio::select! {
                                joined = &mut task => joined,
                                _ = aborted.wait_for(|aborted| *aborted) => {
                                    task.abort();
                                    task.await
                                }
                            };
                            ends.push((
                                index,
                                match joined {
                                    Ok(Ok(outcome)) => PlayerEnd::Finished(Box::new(outcome)),
                                    Ok(Err(error)) => PlayerEnd::Failed(error),
                                    Err(error) if error.is_cancelled() => PlayerEnd::Aborted,
                                    Err(error) => PlayerEnd::Panicked(error.to_string()),
                                },
                            ));
                        }
                        ends
                    })
                })
                .context("starting a load generator thread")?;
            shards.push(thread);
        }
        Ok(Generator { shards, abort, count })
    }

    /// Stops every player that has not ended yet (their ends are [`PlayerEnd::Aborted`]).
    pub fn abort(&self) {
        self.abort.send_replace(true);
    }

    /// Waits for every player to end; their ends in the order they were given.
    pub fn join(self) -> anyhow::Result<Vec<PlayerEnd>> {
        self.join_unless(&std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Generator::join`], aborting the players still playing as soon as `stop` is set (an
    /// operator's Ctrl-C).
    pub fn join_unless(mut self, stop: &std::sync::atomic::AtomicBool) -> anyhow::Result<Vec<PlayerEnd>> {
        while !self.shards.iter().all(std::thread::JoinHandle::is_finished) {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                self.abort();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut ends: Vec<Option<PlayerEnd>> = (0..self.count).map(|_| None).collect();
        for shard in std::mem::take(&mut self.shards) {
            let shard_ends = shard.join().map_err(|_| anyhow::anyhow!("a load generator thread panicked"))?;
            for (index, end) in shard_ends {
                ends[index] = Some(end);
            }
        }
        ends.into_iter()
            .enumerate()
            .map(|(index, end)| end.with_context(|| format!("player {index} of the load generator never ended")))
            .collect()
    }
}

impl Drop for Generator {
    /// Dropped without [`Generator::join`] (a failed run), the players stop all the same.
    fn drop(&mut self) {
        self.abort();
    }
}

/// Players playing on a thread of their own (one tokio worker) until [`Playing::finish`].
pub struct Playing {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    in_play: std::sync::Arc<std::sync::atomic::AtomicU64>,
    count: u64,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Vec<PlayerOutcome>>>>,
}

impl Playing {
    /// Runs `plans` (each with its token) at the gateway `options` names until
    /// [`Playing::finish`]; each plan's `stop` and `in_play` are the group's, and its `play_for`
    /// only bounds a hang (5 minutes).
    #[must_use]
    pub fn start(options: &ClientOptions, plans: Vec<(PlayerPlan, String)>) -> Playing {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let in_play = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = plans.len() as u64;
        let plans: Vec<(PlayerPlan, String)> = plans
            .into_iter()
            .map(|(plan, token)| {
                let plan = PlayerPlan {
                    stop: Some(stop.clone()),
                    in_play: Some(in_play.clone()),
                    play_for: Duration::from_secs(300),
                    ..plan
                };
                (plan, token)
            })
            .collect();
        let options = options.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            runtime.block_on(async move {
                let tasks: Vec<_> = plans
                    .into_iter()
                    .map(|(plan, token)| tokio::spawn(run_player(options.clone(), token, plan)))
                    .collect();
                let mut outcomes = Vec::new();
                for task in tasks {
                    outcomes.push(task.await.context("a player task")??);
                }
                Ok(outcomes)
            })
        });
        Playing { stop, in_play, count, thread: Some(thread) }
    }

    /// Players who had an input acknowledged as durable so far.
    #[must_use]
    pub fn in_play(&self) -> u64 {
        self.in_play.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until every player had an input acknowledged as durable; fails after `within` (or
    /// when the players ended: one failed to connect).
    pub fn wait_in_play(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.in_play() < self.count {
            if self.thread.as_ref().is_none_or(std::thread::JoinHandle::is_finished) {
                anyhow::bail!("the players ended before all were in play");
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} of {} players in play after {within:?}", self.in_play(), self.count);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the players; returns what each saw once its last inputs were acknowledged (or its
    /// `settle_for` ran out). Dropped without it (a failed test), they stop all the same.
    pub fn finish(mut self) -> anyhow::Result<Vec<PlayerOutcome>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(thread) = self.thread.take() else { anyhow::bail!("the players were finished already") };
        thread.join().map_err(|_| anyhow::anyhow!("the players' thread panicked"))?
    }
}

impl Drop for Playing {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs one simulated player to the end of its plan.
pub async fn run_player(options: ClientOptions, token: String, plan: PlayerPlan) -> anyhow::Result<PlayerOutcome> {
    tokio::time::sleep(plan.start_after).await;
    let mut client =
        Client::connect(&options, &token).await.with_context(|| format!("player {} connecting", plan.player))?;
    let acked_before = client.acked();
    let mut outcome =
        PlayerOutcome { player: plan.player, region: client.region(), acked_before, ..PlayerOutcome::default() };
    let mut rng = fastrand::Rng::with_seed(plan.player);
    // The input chain after the newest input sent, and after the newest one acknowledged.
    let mut chain = 0u64;
    let mut acked_chain = 0u64;
    let mut heading = match plan.movement {
        Movement::Patrol { heading } => [heading, 0.0],
        Movement::Wander | Movement::Hotspot { .. } => [0.0, 0.0],
    };
    let start_region = client.region();
    let mut current_region = start_region;
    let mut turn_at = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.inputs_per_second.max(1)));
    let started = Instant::now();
    let mut next_input = started;
    let mut last_update: Option<Instant> = None;
    let mut last_update_region: Option<u64> = None;
    // Inputs not acknowledged yet: (seq, when sent, the chain after it).
    let mut sent_at: std::collections::VecDeque<(u64, Instant, u64)> = std::collections::VecDeque::new();
    let mut view: Option<PlayerView> = None;
    // The newest tick seen, and after a failover the tick seen before it (a rollback to measure).
    let mut newest_tick = 0u64;
    let mut recovered_from: Option<u64> = None;
    let mut done_sending = false;
    let mut counted_in_play = false;
    let mut settle_deadline = started + plan.play_for + plan.settle_for;
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(next_input));
    tokio::pin!(timer);
    loop {
        let now = Instant::now();
        if !done_sending && now >= started + plan.play_for {
            done_sending = true;
        }
        if !done_sending && plan.stop.as_ref().is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed)) {
            done_sending = true;
            settle_deadline = now + plan.settle_for;
        }
        if done_sending
            && (view.as_ref().is_some_and(|view| {
                view.inputs_applied + outcome.lost >= acked_before + outcome.sent
                    && client.acked() + outcome.lost >= acked_before + outcome.sent
            }) || now >= settle_deadline)
        {
            break;
        }
        let mut ended: Option<(Option<CloseCode>, String)> = None;
        if !done_sending && now >= next_input {
            next_input += period;
            match plan.movement {
                Movement::Wander if now >= turn_at => {
                    let angle = rng.f32() * std::f32::consts::TAU;
                    heading = if rng.u8(..5) == 0 { [0.0, 0.0] } else { [angle.cos(), angle.sin()] };
                    turn_at = now + Duration::from_millis(1500 + rng.u64(..1000));
                }
                Movement::Hotspot { corner } if now >= turn_at => {
                    let jitter = (rng.f32() - 0.5) * 0.6;
                    let (sin, cos) = jitter.sin_cos();
                    let [x, z] =
                        [corner[0] * std::f32::consts::FRAC_1_SQRT_2, corner[1] * std::f32::consts::FRAC_1_SQRT_2];
                    heading = [x * cos - z * sin, x * sin + z * cos];
                    turn_at = now + Duration::from_millis(1000 + rng.u64(..1000));
                }
                Movement::Patrol { heading: initial } if now >= turn_at => {
                    // Head for the other region; once there, come back.
                    let direction = if client.region() == start_region { initial } else { -initial };
                    if direction != heading[0] {
                        heading = [direction, 0.0];
                        turn_at = now + Duration::from_millis(1500);
                    }
                }
                _ => {}
            }
            let (smallest, largest) = plan.payload_bytes;
            let payload = walk_payload(heading, rng.usize(smallest.max(9)..=largest.max(smallest).max(9)), &mut rng);
            let seq = client.next_seq();
            let next_chain = chain_step(chain, seq, &payload);
            let sent = client.send_input(payload).await;
            // An input the connection failed under is still sent if the client numbered and kept
            // it: a resume sends it again.
            if sent.is_ok() || client.next_seq() > seq {
                chain = next_chain;
                outcome.sent += 1;
                sent_at.push_back((seq, Instant::now(), chain));
            }
            if let Err(error) = sent {
                ended = Some((None, error.to_string()));
            }
        }
        if ended.is_none() {
            // One timer for the whole session, moved only when the wake-up time changes (a new
            // timer per event cost the generator a timer-wheel insert and removal per update).
            let wake_at = if done_sending { Instant::now() + Duration::from_millis(20) } else { next_input };
            if timer.deadline() != tokio::time::Instant::from_std(wake_at) {
                timer.as_mut().reset(tokio::time::Instant::from_std(wake_at));
            }
            let event = tokio::select! {
                event = client.next_event() => match event {
                    Some(event) => Some(event),
                    None => {
                        ended = Some((None, "events ended".into()));
                        None
                    }
                },
                () = &mut timer => None,
            };
            match event {
                Some(Event::Update(update)) => {
                    let now = Instant::now();
                    let now_unix_ms = unix_ms();
                    if let Some(previous) = last_update {
                        let gap = now.duration_since(previous);
                        if let Some(live) = &plan.live {
                            live.gaps.record(gap);
                        }
                        outcome.gaps_us.push(gap.as_micros() as u64);
                        outcome.gap_ends_unix_ms.push(now_unix_ms);
                        outcome.max_gap_ms = outcome.max_gap_ms.max(gap.as_secs_f64() * 1000.0);
                        if last_update_region.is_some_and(|region| region != update.region) {
                            outcome.region_switch_log.push((now_unix_ms, gap.as_micros() as u64));
                        }
                    }
                    if let Some(before) = recovered_from.take() {
                        outcome.rollbacks.push((now_unix_ms, update.region, before, update.tick));
                    }
                    newest_tick = if last_update_region == Some(update.region) {
                        newest_tick.max(update.tick)
                    } else {
                        update.tick
                    };
                    last_update = Some(now);
                    last_update_region = Some(update.region);
                    outcome.updates += 1;
                    while sent_at.front().is_some_and(|(seq, _, _)| *seq <= update.last_applied) {
                        if let Some((_, at, chain_after)) = sent_at.pop_front() {
                            if let Some(live) = &plan.live {
                                live.round_trips.record(now.duration_since(at));
                            }
                            outcome.round_trips_us.push(now.duration_since(at).as_micros() as u64);
                            outcome.round_trip_ends_unix_ms.push(now_unix_ms);
                            acked_chain = chain_after;
                        }
                    }
                    if update.durable > 0
                        && let Some(in_play) = plan.in_play.as_ref().filter(|_| !counted_in_play)
                    {
                        in_play.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        counted_in_play = true;
                    }
                    match PlayerView::parse(&update.payload) {
                        Some(parsed) => view = Some(parsed),
                        None => {
                            outcome.updates_without_view += 1;
                        }
                    }
                }
                Some(Event::Neighbour { .. }) => outcome.neighbour_views += 1,
                Some(Event::RegionChanged { region }) => {
                    outcome.crossings += 1;
                    outcome.crossing_log.push((unix_ms(), current_region, region));
                    current_region = region;
                }
                Some(Event::Recovered { region }) => {
                    outcome.recoveries += 1;
                    if last_update_region == Some(region) {
                        recovered_from = Some(newest_tick);
                    }
                    if plan.relogin.is_some() {
                        let reason = format!("region {region} came back on another server; logging in again");
                        ended = Some((Some(CloseCode::Unavailable), reason));
                    }
                }
                Some(Event::RegionUnavailable { reason, .. }) => outcome.unavailable_notices.push(reason),
                Some(Event::InputsAskedAgain { .. }) => outcome.inputs_asked_again += 1,
                Some(Event::Pong { .. }) | None => {}
                Some(Event::Closed { code, reason }) => ended = Some((code, reason)),
            }
        }
        let Some((code, reason)) = ended else { continue };
        outcome.close_reasons.push(reason);
        if code.is_none() && !plan.resume_at.is_empty() {
            // The gateway is gone: resume at another; the client sends again what the region has
            // not applied, with the same numbers.
            let mut gateways = plan.resume_at.iter().cycle();
            let mut refused = String::new();
            let resumed = loop {
                if let Some(gateway) = gateways.next() {
                    match client.resume(*gateway).await {
                        Ok(()) => break true,
                        // A token the gateways refuse (expired: the player was away longer than
                        // the grace) or a protocol they do not speak is refused at every gateway
                        // every time: asking again only costs them handshakes.
                        Err(
                            error @ ClientError::Refused {
                                code: Some(CloseCode::Unauthorized | CloseCode::Version | CloseCode::Protocol),
                                ..
                            },
                        ) => {
                            outcome.resumes_refused_for_good += 1;
                            refused = format!("resuming at {gateway}: {error}");
                            break false;
                        }
                        Err(error) => refused = format!("resuming at {gateway}: {error}"),
                    }
                }
                if Instant::now() >= settle_deadline {
                    break false;
                }
                tokio::time::sleep(RESUME_EVERY).await;
            };
            if resumed {
                outcome.resumes += 1;
                continue;
            }
            outcome.close_reasons.push(refused);
        }
        outcome.disconnects += 1;
        let Some(login) = plan.relogin.as_ref().filter(|_| code == Some(CloseCode::Unavailable)) else { break };
        // The region was stopped (or its server died): log in again until it is back (the old way
        // of moving a region).
        let region = client.region();
        let last_sent = client.next_seq().saturating_sub(1);
        client.close();
        let offline_since = unix_ms();
        let back = loop {
            if Instant::now() >= settle_deadline {
                break None;
            }
            tokio::time::sleep(RELOGIN_EVERY).await;
            if let Ok(again) = Client::connect(&options, &(login.0)(plan.player, region)).await {
                break Some(again);
            }
        };
        let Some(again) = back else { break };
        client = again;
        outcome.relogins += 1;
        outcome.offline_log.push((offline_since, unix_ms()));
        // What the region applied before it stopped is in its save (a dead server's region: in
        // its newest checkpoint); the rest is gone, and the player's numbering continues after
        // what was applied.
        let applied = client.acked();
        outcome.lost += last_sent.saturating_sub(applied);
        if let Some(position) = sent_at.iter().position(|(seq, _, _)| *seq > applied) {
            sent_at.truncate(position);
        }
        chain = sent_at.back().map_or(acked_chain, |(_, _, chain_after)| *chain_after);
        next_input = Instant::now().max(next_input);
    }
    outcome.acked = client.acked();
    outcome.region = client.region();
    if let Some(view) = view {
        outcome.applied = view.inputs_applied;
        let expected = (acked_before + outcome.sent).saturating_sub(outcome.lost);
        outcome.chain_ok = if acked_before == 0 {
            view.input_chain == chain && view.inputs_applied == expected
        } else {
            view.inputs_applied == expected
        };
    }
    client.close();
    Ok(outcome)
}

/// One step of the sample avatar's input chain (as `SampleLogic::apply_input` computes it).
#[must_use]
pub fn chain_step(chain: u64, seq: u64, payload: &[u8]) -> u64 {
    let mut chained = Vec::with_capacity(16 + payload.len());
    chained.extend_from_slice(&chain.to_le_bytes());
    chained.extend_from_slice(&seq.to_le_bytes());
    chained.extend_from_slice(payload);
    xxhash_rust::xxh3::xxh3_64(&chained)
}

/// A player id whose avatar spawns `distance` metres from region centre towards `east` (true) or
/// west, near the border it will patrol (the sample spawns player `p` on a ring: angle `p % 360`
/// degrees, radius `20 + p / 360 % 80` metres). `index` picks among nearby spawn points.
#[must_use]
pub fn patrol_player(east: bool, index: u64) -> u64 {
    let ring = 79 - (index / 3) % 20;
    let angle = if east { index % 3 } else { 180 + index % 3 };
    // Past 60 players, the same rings and angles again: ids 28,800 apart fall on the same spot.
    360 * ring + angle + 28_800 * (index / 60)
}

/// A player connected straight to a region server, without a gateway: it speaks the upstream
/// protocol itself (as a gateway would for it). The baseline of the gateway's added latency.
/// Returns the input-to-acknowledgement round trips, in microseconds.
pub async fn run_direct_probe(
    identity: baton_net::ClusterIdentity,
    server: SocketAddr,
    region: u64,
    player: u64,
    inputs_per_second: u32,
    play_for: Duration,
) -> anyhow::Result<Vec<u64>> {
    use baton_wire::upstream::{
        ALPN_UPSTREAM, GatewayMessage, ServerMessage, UPSTREAM_VERSION, UpstreamReader, encode_into,
    };
    let (region, player) = (RegionId(region), baton_wire::PlayerId(player));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let config = baton_net::cluster_client_config(&identity, baton_net::LinkSettings::default(), ALPN_UPSTREAM)?;
    let connection = baton_net::connect_with(&endpoint, config, server).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut out = Vec::new();
    encode_into(&GatewayMessage::Hello { version: UPSTREAM_VERSION, gateway: format!("probe-{player}") }, &mut out)?;
    send.write_all(&out).await?;
    let mut reader = UpstreamReader::default();
    let next = async |recv: &mut quinn::RecvStream, reader: &mut UpstreamReader| -> anyhow::Result<ServerMessage> {
        loop {
            if let Some(message) = reader.next_message::<ServerMessage>()? {
                return Ok(message);
            }
            let chunk = recv.read_chunk(64 * 1024, true).await?.context("server closed the stream")?;
            reader.feed(&chunk.bytes);
        }
    };
    let epoch = loop {
        if let ServerMessage::Welcome { regions, .. } = next(&mut recv, &mut reader).await? {
            break regions
                .iter()
                .find(|(owned, _)| *owned == region)
                .map(|(_, epoch)| *epoch)
                .context("region not on that server")?;
        }
    };
    out.clear();
    encode_into(&GatewayMessage::Join { region, epoch, player }, &mut out)?;
    send.write_all(&out).await?;
    let mut last_applied = loop {
        match next(&mut recv, &mut reader).await? {
            ServerMessage::Joined { player: joined, last_applied, .. } if joined == player => break last_applied,
            ServerMessage::JoinRefused { reason, .. } => bail!("join refused: {reason}"),
            _ => {}
        }
    };
    let mut rng = fastrand::Rng::with_seed(player.0);
    let period = Duration::from_secs_f64(1.0 / f64::from(inputs_per_second.max(1)));
    // Start at a random phase of the tick grid, as real players (and the gateway's players) do.
    tokio::time::sleep(period.mul_f64(rng.f64())).await;
    let started = Instant::now();
    let mut next_input = started;
    let mut seq = last_applied;
    let mut sent_at = std::collections::VecDeque::new();
    let mut round_trips = Vec::new();
    while started.elapsed() < play_for {
        if Instant::now() >= next_input {
            next_input += period;
            seq += 1;
            let payload = walk_payload([0.0, 0.0], 256 + rng.usize(..=256), &mut rng);
            out.clear();
            encode_into(&GatewayMessage::Input { region, epoch, player, seq, payload }, &mut out)?;
            send.write_all(&out).await?;
            sent_at.push_back((seq, Instant::now()));
        }
        let wait = next_input.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(wait, next(&mut recv, &mut reader)).await else { continue };
        if let ServerMessage::Update { player: updated, last_applied: applied, .. } = message?
            && updated == player
            && applied > last_applied
        {
            last_applied = applied;
            let now = Instant::now();
            while sent_at.front().is_some_and(|(sent, _)| *sent <= applied) {
                if let Some((_, at)) = sent_at.pop_front() {
                    round_trips.push(now.duration_since(at).as_micros() as u64);
                }
            }
        }
    }
    out.clear();
    encode_into(&GatewayMessage::Leave { region, epoch, player }, &mut out)?;
    let _ = send.write_all(&out).await;
    connection.close(0u32.into(), b"done");
    Ok(round_trips)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{LiveHistogram, LiveSummary};

    #[test]
    fn a_live_histogram_reports_the_last_window_and_starts_over() {
        let histogram = LiveHistogram::default();
        assert_eq!(histogram.take(), LiveSummary::default());
        // 98 gaps of one tick, one of 120 ms, one far beyond the ceiling.
        for _ in 0..98 {
            histogram.record(Duration::from_micros(49_600));
        }
        histogram.record(Duration::from_millis(120));
        histogram.record(Duration::from_secs(60));
        let summary = histogram.take();
        assert_eq!(summary, LiveSummary { count: 100, p50_ms: 50, p99_ms: 120, max_ms: LiveHistogram::CEILING_MS });
        assert_eq!(histogram.take().count, 0, "taking starts a new window");
        histogram.record(Duration::ZERO);
        assert_eq!(histogram.take(), LiveSummary { count: 1, p50_ms: 0, p99_ms: 0, max_ms: 0 });
    }
}
