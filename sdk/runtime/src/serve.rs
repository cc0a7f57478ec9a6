//! A whole region server in one call: a game implements [`Game`] and calls [`main`] (or [`run`]).
//!
//! The server speaks the serve protocol (`baton_wire::serve`, protocol.md §11): commands as JSON
//! lines on standard input, events as JSON lines on standard output, logs on standard error. A host
//! agent starts it as a warm process and speaks that protocol for the coordinator; an operator can
//! type the same lines by hand. Everything else a Baton region server does comes with it: handoffs
//! in and out ([`Host`]), the gateways' upstream connections, the ownership authority (the
//! coordinator's directory, or a folder of the file-backed one), periodic checkpoints, stop and
//! restore, the once-a-second load reports, Prometheus metrics and settings from a file and the
//! environment (`baton_config`).
//!
//! What the game provides is only what Baton cannot know: how to build an empty region of it (its
//! [`RegionLogic`] with assets loaded), how to fill one from a `world` object, and, for tools and
//! tests that feed a region without a gateway, how a player joins and what a scripted input is.
//!
//! A game's binary that wraps its global allocator in `cap::Cap` and names it with
//! `baton_net::heap::count_with` (as `sample-region-server` does) reports its live heap too: a
//! `heap` event every second, which its agent shows operators with the host's processes.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_net::{ClusterIdentity, Congestion, LedbatConfig, LinkSettings};
use baton_sdk::handoff::{FileAuthority, OwnershipAuthority, SourceConfig, SourcePhase};
use baton_sdk::sessions::PlayerSession;
use baton_sdk::wire::serve::{
    GameObject, HandoffFigures, HandoffPhase, PlayerReport, SERVE_VERSION, ServerCommand, ServerEvent, parse_command,
    to_line,
};
use baton_sdk::wire::{Epoch, PlayerId, PlayerInput, RegionId};
use baton_sdk::{EntityId, Region, RegionError, RegionLogic, World};

use crate::checkpoint_store::CheckpointStore;
use crate::{CheckpointSettings, Host, HostConfig, HostError, HostEvent, PlayerSettings, RegionFactory};

/// An error a game's own code reports (its message reaches the operator in an `error` event).
pub type GameError = Box<dyn std::error::Error + Send + Sync>;

/// What a game tells Baton so that [`run`] can serve it.
pub trait Game: Send + Sync + 'static {
    /// The game's region logic.
    type Logic: RegionLogic + 'static;

    /// Builds an empty region with its assets loaded: a warm slot that a handoff or a checkpoint
    /// fills, or that [`Game::populate`] fills for a new region.
    fn new_region(&self, region: RegionId) -> Result<Region<Self::Logic>, RegionError>;

    /// Fills a new region from the `world` object of a `host` command (game-defined keys; an empty
    /// object asks for the game's default). Refuse keys you do not know.
    fn populate(&self, region: &mut Region<Self::Logic>, world: &GameObject) -> Result<(), GameError>;

    /// Adds `player` at `spawn` without a gateway (tools and tests). The default refuses: players
    /// of this game come through gateways only.
    fn join(&self, region: &mut Region<Self::Logic>, player: PlayerId, spawn: &GameObject) -> Result<(), GameError> {
        let _ = (region, spawn);
        Err(format!("this game takes {player} only through a gateway").into())
    }

    /// The input number `seq` of `player` when a tool feeds scripted inputs (a deterministic
    /// function, so a test can predict the world). None: this game has no scripted inputs.
    fn scripted_input(&self, player: PlayerId, seq: u64) -> Option<PlayerInput> {
        let _ = (player, seq);
        None
    }

    /// The game's own figures about one player for a `report` (default: none).
    fn player_report(&self, world: &World, avatar: EntityId) -> GameObject {
        let _ = (world, avatar);
        GameObject::new()
    }
}

/// The settings every region server takes (flatten them into the game's command line with
/// `#[command(flatten)]`).
#[derive(Clone, Debug, clap::Args)]
pub struct ServeSettings {
    /// Settings file (TOML: each key is a long option without its dashes, `tick_rate = 20` for
    /// `--tick-rate 20`). `<PREFIX>_<OPTION>` environment variables override it (the game names
    /// the prefix: `BATON_SERVER_TICK_RATE` for the sample), options given here override both.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This instance's name, unique in the cluster (a host agent gives it).
    #[arg(long)]
    pub name: Option<String>,
    /// The cluster certificate to use, <certs>/<NAME>.pem (default: --name). Processes a host agent
    /// starts share the host's certificate.
    #[arg(long, value_name = "NAME")]
    pub cert_name: Option<String>,
    /// Address to accept handoff links and gateways on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Folder with ca.pem and this node's certificate and key (`batonctl certs` makes them).
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Folder of a file-backed ownership authority shared by processes on one machine (instead of
    /// --coordinator).
    #[arg(long, value_name = "DIR")]
    pub authority: Option<PathBuf>,
    /// The coordinator whose region directory decides ownership.
    #[arg(long, value_name = "ADDR", conflicts_with = "authority")]
    pub coordinator: Option<SocketAddr>,
    /// Bulk bandwidth a handoff or standby feed may use at most, in MB/s (a fixed cap above the
    /// congestion controller).
    #[arg(long, default_value_t = 50)]
    pub bulk_mbps: u64,
    /// How the handoff links this server opens share a link with other traffic: `ledbat` backs off
    /// as soon as the round trip grows by more than --bulk-target-ms (down to 1 MB/s), so it takes
    /// mostly what other traffic leaves; `cubic` takes a fair share (on a link reserved for
    /// migrations it finishes soonest); `bbr` uses quinn's experimental BBR. Standby feeds always
    /// use cubic.
    #[arg(long, value_enum, default_value_t = BulkCongestion::Ledbat)]
    pub bulk_congestion: BulkCongestion,
    /// The queueing delay a `ledbat` bulk link may add to a link, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    pub bulk_target_ms: f64,
    /// Whether handoff and standby links compress the state they stream: `auto` compresses
    /// (LZ4) a message the --bulk-mbps cap would hold back when, by the ratio and speed measured
    /// so far, that saves more time on the link than it costs (at 50 MB/s it usually does, at
    /// 1000 it does not); `off` never does (hosts short of CPU).
    #[arg(long, value_enum, default_value_t = BulkCompression::Auto)]
    pub bulk_compression: BulkCompression,
    /// The freeze a handoff aims at for a region this server gives away, in milliseconds: the
    /// final delta round is what the link moves in this time (as measured during the handoff, at
    /// most what --bulk-mbps moves), or up to four times that once the rounds stop shrinking (so
    /// a freeze can take up to four times this). A region whose every tick changes more than four
    /// times that waits for a quieter moment, then its handoff gives up and says so with the
    /// rates; a longer freeze lets such a region move, and its players see a longer pause.
    #[arg(long, default_value_t = 2.0)]
    pub max_freeze_ms: f64,
    /// Ticks per second.
    #[arg(long, default_value_t = 30)]
    pub tick_rate: u32,
    /// Folder of the checkpoint store: owned regions are checkpointed there every
    /// --checkpoint-every-s seconds, and `{"cmd":"host","region":R,"from_checkpoint":true}`
    /// restores from it. Hosts that should restore each other's regions share one folder.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Seconds between two checkpoints of a region (with --checkpoint-dir). A region this
    /// server starts or restores also takes one at its first tick, so it can be failed over from
    /// its first moment. 0: no checkpoints, only restores.
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_every_s: f64,
    /// Checkpoints kept per region (with --checkpoint-dir).
    #[arg(long, default_value_t = 3)]
    pub checkpoint_keep: usize,
    /// Serve Prometheus metrics over HTTP on this address (any path; port 0 picks a free one,
    /// named in the `listening` event as `metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Send players a state update every this many ticks.
    #[arg(long, default_value_t = 1)]
    pub update_every: u32,
    /// Players this close to a border (metres) see the neighbour's objects near it.
    #[arg(long, default_value_t = 24.0)]
    pub border_view: f32,
}

/// The congestion controller of bulk links (see `--bulk-congestion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkCongestion {
    /// Delay-based, yields to other traffic (RFC 6817).
    Ledbat,
    /// quinn's default.
    Cubic,
    /// quinn's BBR.
    Bbr,
}

/// Whether bulk links compress (see `--bulk-compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkCompression {
    /// When it pays at the cap.
    Auto,
    /// Never.
    Off,
}

/// Why a region server could not start (what goes wrong afterwards is reported as events).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is missing or out of range.
    #[error("{0}")]
    Settings(String),
    /// The certificates could not be read.
    #[error("loading certificates for {name} from {}: {source}", folder.display())]
    Certificates {
        /// The certificate's name.
        name: String,
        /// The folder.
        folder: PathBuf,
        /// Why.
        source: baton_net::NetError,
    },
    /// The checkpoint store or the file-backed authority could not be opened.
    #[error("opening {what} {}: {reason}", folder.display())]
    Storage {
        /// Which store.
        what: &'static str,
        /// Its folder.
        folder: PathBuf,
        /// Why.
        reason: String,
    },
    /// The network endpoint, the async runtime or the metrics listener could not start.
    #[error("starting {what}: {reason}")]
    Start {
        /// What.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Standard input failed.
    #[error("reading standard input: {0}")]
    Input(#[from] std::io::Error),
}

/// Parses the command line `C` (which flattens [`ServeSettings`]), sets up settings from a file and
/// the environment (`<prefix>_<OPTION>`) and logs, and runs `run`; the exit code says how it went.
/// A game's whole `main` can be `baton_runtime::serve::main("my-game", "MY_GAME", |cli: Cli| ...)`.
pub fn main<C: clap::Parser, E: std::fmt::Display>(
    name: &str,
    prefix: &str,
    run: impl FnOnce(C) -> Result<(), E>,
) -> std::process::ExitCode {
    baton_config::main(name, prefix, run)
}

/// How often a process that counts its heap (`baton_net::heap`) reports it (`ServerEvent::Heap`).
const HEAP_EVERY: Duration = Duration::from_secs(1);

/// Serves `game` until `quit` or the end of standard input.
pub fn run<G: Game>(game: G, settings: &ServeSettings) -> Result<(), ServeError> {
    let name = settings.name.clone().ok_or_else(|| ServeError::Settings("a region server needs --name".into()))?;
    let certs = settings.certs.clone().ok_or_else(|| {
        ServeError::Settings("a region server needs --certs DIR (create one with `batonctl certs`)".into())
    })?;
    check(settings)?;
    let metrics = settings
        .metrics_listen
        .map(baton_net::metrics::serve)
        .transpose()
        .map_err(|error| ServeError::Start { what: "the metrics listener", reason: error.to_string() })?;
    if metrics.is_some() {
        baton_sdk::events::describe();
    }
    let checkpoints = match &settings.checkpoint_dir {
        Some(folder) => Some(CheckpointSettings {
            store: CheckpointStore::open(folder, settings.checkpoint_keep).map_err(|error| ServeError::Storage {
                what: "the checkpoint store",
                folder: folder.clone(),
                reason: error.to_string(),
            })?,
            every_ticks: (settings.checkpoint_every_s * f64::from(settings.tick_rate)).round() as u64,
        }),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| ServeError::Start { what: "the async runtime", reason: error.to_string() })?;
    let cert_name = settings.cert_name.clone().unwrap_or_else(|| name.clone());
    let identity = ClusterIdentity::load(&certs, &cert_name).map_err(|source| ServeError::Certificates {
        name: cert_name.clone(),
        folder: certs.clone(),
        source,
    })?;
    let authority: Arc<dyn OwnershipAuthority> = match (&settings.authority, settings.coordinator) {
        (Some(folder), None) => Arc::new(FileAuthority::open(folder).map_err(|error| ServeError::Storage {
            what: "the ownership authority",
            folder: folder.clone(),
            reason: error.to_string(),
        })?),
        (None, Some(address)) => Arc::new(
            crate::remote_authority::RemoteAuthority::new(address, &identity, runtime.handle().clone())
                .map_err(|error| ServeError::Start { what: "the coordinator connection", reason: error.to_string() })?,
        ),
        _ => {
            return Err(ServeError::Settings(
                "a region server needs --coordinator ADDR, or --authority DIR for processes on one machine".into(),
            ));
        }
    };
    let game = Arc::new(game);
    let factory: RegionFactory<G::Logic> = {
        let game = game.clone();
        Arc::new(move |region| game.new_region(region))
    };
    let bulk_bytes_per_second = settings.bulk_mbps * 1_000_000;
    let fault_point = crate::fault_point::FaultPoint::from_env().map_err(ServeError::Settings)?;
    if let Some(point) = &fault_point {
        let phase = point.phase.map_or("armed", crate::fault_point::FaultPhase::name);
        tracing::warn!(phase, path = %point.path.display(), "a fault point is set (fault injection)");
    }
    let congestion = match settings.bulk_congestion {
        BulkCongestion::Cubic => Congestion::Cubic,
        BulkCongestion::Bbr => Congestion::Bbr,
        BulkCongestion::Ledbat => Congestion::Ledbat(LedbatConfig {
            target: Duration::from_secs_f64(settings.bulk_target_ms / 1000.0),
            ..LedbatConfig::default()
        }),
    };
    let host_config = HostConfig {
        name: name.clone(),
        bind: settings.listen,
        identity,
        authority,
        bulk_bytes_per_second,
        bulk_burst_bytes: 256 * 1024,
        bulk_compression: settings.bulk_compression == BulkCompression::Auto,
        // protocol.md §4: the freeze budget is what the paced link moves in --max-freeze-ms,
        // lowered when a measured round says the link delivers less.
        source: SourceConfig::for_link(bulk_bytes_per_second, Duration::from_secs_f64(settings.max_freeze_ms / 1000.0)),
        link: LinkSettings { dial_congestion: congestion, ..LinkSettings::default() },
        players: PlayerSettings {
            update_every_ticks: settings.update_every,
            border_every_ticks: 3,
            border_view_distance: settings.border_view,
        },
        checkpoints: checkpoints.clone(),
        fault_point,
    };
    let (host, mut host_events) = Host::start(host_config, factory.clone(), runtime.handle().clone())
        .map_err(|error| ServeError::Start { what: "the cluster endpoint", reason: error.to_string() })?;
    let out = Output::default();
    out.emit(&ServerEvent::Listening { name, addr: host.local_address(), version: SERVE_VERSION, metrics });

    let event_out = out.clone();
    runtime.spawn(async move {
        while let Some(event) = host_events.recv().await {
            event_out.emit(&server_event(event));
        }
    });
    if baton_net::heap::live_bytes().is_some() {
        let heap_out = out.clone();
        runtime.spawn(async move {
            let mut every = tokio::time::interval(HEAP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Some(live_bytes) = baton_net::heap::live_bytes() {
                    heap_out.emit(&ServerEvent::Heap { live_bytes });
                }
            }
        });
    }

    let server = Server { host: &host, game, factory, checkpoints, out: out.clone() };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let command = match parse_command(&line) {
            Ok(command) => command,
            Err(error) => {
                out.emit(&ServerEvent::Error { region: None, error: error.to_string() });
                continue;
            }
        };
        if command == ServerCommand::Quit {
            break;
        }
        let region = command_region(&command);
        if let Err(error) = server.execute(command) {
            out.emit(&ServerEvent::Error { region, error });
        }
    }
    host.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Checks the ranges clap cannot.
fn check(settings: &ServeSettings) -> Result<(), ServeError> {
    let problem = if settings.tick_rate == 0 || settings.tick_rate > 1000 {
        Some(format!("--tick-rate must be within 1..=1000, got {}", settings.tick_rate))
    } else if settings.update_every == 0 {
        Some("--update-every must be at least 1".to_owned())
    } else if !(settings.border_view.is_finite() && settings.border_view >= 0.0) {
        Some(format!("--border-view must be a distance of 0 or more metres, got {}", settings.border_view))
    } else if settings.bulk_mbps == 0 {
        Some("--bulk-mbps must be at least 1".to_owned())
    } else if !(settings.bulk_target_ms.is_finite() && (0.1..=100.0).contains(&settings.bulk_target_ms)) {
        Some(format!("--bulk-target-ms must be from 0.1 to 100 (RFC 6817's limit), got {}", settings.bulk_target_ms))
    } else if !(settings.max_freeze_ms.is_finite() && (0.1..=1000.0).contains(&settings.max_freeze_ms)) {
        Some(format!("--max-freeze-ms must be from 0.1 to 1000, got {}", settings.max_freeze_ms))
    } else if !(settings.checkpoint_every_s.is_finite() && settings.checkpoint_every_s >= 0.0) {
        Some(format!("--checkpoint-every-s must be 0 or more seconds, got {}", settings.checkpoint_every_s))
    } else if settings.checkpoint_keep == 0 {
        Some("--checkpoint-keep must be at least 1".to_owned())
    } else if let Some(Err(error)) = settings.name.as_deref().map(baton_sdk::handoff::check_owner_name) {
        // The name is what the ownership authority records as the owner of its regions.
        Some(format!("--name: {error}"))
    } else {
        None
    };
    problem.map_or(Ok(()), |problem| Err(ServeError::Settings(problem)))
}

/// Standard output, shared by the command loop and the host's events; one line per event.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<()>>);

impl Output {
    fn emit(&self, event: &ServerEvent) {
        // One writer at a time, so two events never interleave within a line.
        let _guard = self.0.lock();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", to_line(event));
        let _ = stdout.flush();
    }
}

/// The command loop's state.
struct Server<'a, G: Game> {
    host: &'a Host<G::Logic>,
    game: Arc<G>,
    factory: RegionFactory<G::Logic>,
    checkpoints: Option<CheckpointSettings>,
    out: Output,
}

impl<G: Game> Server<'_, G> {
    /// Carries out one command; an error is reported as an `error` event naming its region.
    fn execute(&self, command: ServerCommand) -> Result<(), String> {
        let failed = |error: HostError| error.to_string();
        match command {
            ServerCommand::Host { world, from_checkpoint: true, .. } if !world.is_empty() => {
                Err("give either a world or from_checkpoint, not both".to_owned())
            }
            ServerCommand::Host { region, from_checkpoint: true, take_over, .. } => self.restore(region, take_over),
            ServerCommand::Host { region, world, from_checkpoint: false, .. } => {
                let mut built = (self.factory)(region).map_err(|error| format!("creating the region: {error}"))?;
                self.game.populate(&mut built, &world).map_err(|error| format!("populating the region: {error}"))?;
                self.host.host_region(built).map_err(failed)
            }
            ServerCommand::Prepare { region } => self.host.prepare(region).map_err(failed),
            ServerCommand::Handoff { region, to } => self.host.start_handoff(region, to).map_err(failed),
            ServerCommand::FeedStandby { region, to } => self.host.feed_standby(region, to).map_err(failed),
            ServerCommand::Promote { region, epoch } => self.host.promote(region, epoch).map_err(failed),
            ServerCommand::Stop { region } => self.host.stop_region(region).map_err(failed),
            ServerCommand::Join { region, players } => {
                let game = self.game.clone();
                let out = self.out.clone();
                self.host
                    .query(
                        region,
                        Box::new(move |built| {
                            for request in players {
                                if let Err(error) = game.join(built, request.player, &request.spawn) {
                                    let error = format!("join {}: {error}", request.player);
                                    out.emit(&ServerEvent::Error { region: Some(region), error });
                                }
                            }
                        }),
                    )
                    .map_err(failed)
            }
            ServerCommand::Inputs { region, inputs } => {
                for (player, seq) in inputs {
                    let input = self
                        .game
                        .scripted_input(player, seq)
                        .ok_or_else(|| "this game has no scripted inputs".to_owned())?;
                    self.host.submit_input(region, input);
                }
                Ok(())
            }
            ServerCommand::Report { region } => {
                let game = self.game.clone();
                let out = self.out.clone();
                self.host.query(region, Box::new(move |built| out.emit(&report(&*game, region, built)))).map_err(failed)
            }
            ServerCommand::Quit => Ok(()),
        }
    }

    /// Restores `region` from the newest checkpoint in the store (protocol.md §12).
    fn restore(&self, region: RegionId, take_over: Option<Epoch>) -> Result<(), String> {
        let store = &self
            .checkpoints
            .as_ref()
            .ok_or_else(|| "this server has no checkpoint store (--checkpoint-dir)".to_owned())?
            .store;
        let folder = store.directory().display().to_string();
        let latest = || {
            store
                .latest(region)
                .map_err(|error| format!("reading the checkpoint store {folder}: {error}"))?
                .ok_or_else(|| format!("no checkpoint of region {region} in {folder}"))
        };
        let restore = |path: &std::path::Path| -> Result<_, String> {
            let shown = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|error| format!("reading {shown}: {error}"))?;
            let mut built = (self.factory)(region).map_err(|error| format!("creating the region: {error}"))?;
            let info = baton_sdk::checkpoint::restore(&mut built, &bytes)
                .map_err(|error| format!("restoring {shown}: {error}"))?;
            Ok((built, info, shown))
        };
        // The newest checkpoint is restored before the region is won: one that is missing,
        // damaged or of another schema is refused without taking the region over, so a failed
        // restore never leaves the directory naming an owner that serves nothing (at an epoch the
        // next failover would only raise again).
        let stored = latest()?;
        let (mut built, mut info, mut path) = restore(&stored.path)?;
        // A failover wins the region, then looks again: the owner it replaces, if still alive,
        // can confirm no later checkpoint as durable once it sees the newer epoch, so every input
        // players were told is durable is in the newest checkpoint as of now.
        let taken = match take_over {
            Some(_) => Some(self.host.take_ownership(region, take_over).map_err(|error| error.to_string())?),
            None => None,
        };
        let newest = latest()?;
        if newest.path != stored.path {
            (built, info, path) = restore(&newest.path)?;
        }
        match taken {
            Some(epoch) => {
                // Said before the region's thread starts, so it always comes before its `owning`
                // (which a failover ends at).
                self.out.emit(&ServerEvent::Restored { region, tick: info.tick, from_epoch: info.epoch, epoch, path });
                self.host.host_owned(built, epoch).map_err(|error| error.to_string())?;
            }
            None => {
                let epoch = self.host.restore_region(built, None).map_err(|error| error.to_string())?;
                self.out.emit(&ServerEvent::Restored { region, tick: info.tick, from_epoch: info.epoch, epoch, path });
            }
        }
        Ok(())
    }
}

/// The region a command names, for the `error` event that may answer it.
fn command_region(command: &ServerCommand) -> Option<RegionId> {
    match command {
        ServerCommand::Host { region, .. }
        | ServerCommand::Prepare { region }
        | ServerCommand::Handoff { region, .. }
        | ServerCommand::FeedStandby { region, .. }
        | ServerCommand::Promote { region, .. }
        | ServerCommand::Stop { region }
        | ServerCommand::Join { region, .. }
        | ServerCommand::Inputs { region, .. }
        | ServerCommand::Report { region } => Some(*region),
        ServerCommand::Quit => None,
    }
}

/// A region's `report` event (runs on the region's thread, between ticks).
fn report<G: Game>(game: &G, region: RegionId, built: &mut Region<G::Logic>) -> ServerEvent {
    let tick = built.world().tick();
    let late_ticks = built.late_ticks();
    let digest = built.world_mut().digest().to_string();
    let world = built.world();
    let players = world
        .iter::<PlayerSession>()
        .map(|(entity, session)| PlayerReport {
            player: PlayerId(session.player),
            last_applied: session.last_applied,
            pending: session.pending.len() as u64,
            duplicates: session.duplicates,
            early: session.early,
            game: game.player_report(world, entity),
        })
        .collect();
    ServerEvent::Report { region, tick, late_ticks, digest, entities: world.entity_count() as u64, players }
}

/// The serve-protocol event for a host event.
#[must_use]
pub fn server_event(event: HostEvent) -> ServerEvent {
    match event {
        HostEvent::Owning { region, epoch } => ServerEvent::Owning { region, epoch },
        HostEvent::Prepared { region } => ServerEvent::Prepared { region },
        HostEvent::Phase { region, phase } => ServerEvent::Phase { region, phase: handoff_phase(phase) },
        HostEvent::Frozen { region, tick, last_tick_at_us, digest } => {
            ServerEvent::Frozen { region, tick, last_tick_at_us, digest: digest.to_string() }
        }
        HostEvent::Authoritative { region, epoch, digest } => {
            ServerEvent::Authoritative { region, epoch, digest: digest.to_string() }
        }
        HostEvent::FirstTick { region, tick, at_us } => ServerEvent::FirstTick { region, tick, at_us },
        HostEvent::HandedOff { region, epoch, stats, ticks } => ServerEvent::HandedOff {
            region,
            epoch,
            figures: HandoffFigures {
                freeze_us: stats.freeze.map(|freeze| freeze.as_micros() as u64),
                total_us: stats.total.map(|total| total.as_micros() as u64),
                rounds: stats.rounds,
                snapshot_bytes: stats.snapshot_bytes,
                delta_bytes: stats.delta_bytes,
                final_bytes: stats.final_bytes,
                delivery_bytes_per_second: stats.delivery_bytes_per_second,
                change_bytes_per_tick: stats.change_bytes_per_tick,
                waited_us: stats.waited.map(|waited| waited.as_micros() as u64),
                engines_waited_us: stats.engines_waited.map(|waited| waited.as_micros() as u64),
                ticks,
            },
        },
        HostEvent::Aborted { region, reason, owning } => ServerEvent::Aborted { region, reason, owning },
        HostEvent::Retired { region } => ServerEvent::Retired { region },
        HostEvent::Checkpointed { region, tick, epoch, bytes, path } => {
            ServerEvent::Checkpointed { region, tick, epoch, bytes, path: path.display().to_string() }
        }
        HostEvent::Load { region, tick_ms_mean, tick_ms_max, tick_budget_ms, players, entities, standby_bytes } => {
            ServerEvent::Load {
                region,
                tick_ms: tick_ms_mean,
                tick_ms_max,
                tick_budget_ms,
                players,
                entities,
                standby_bytes,
            }
        }
        HostEvent::Stopped { region, epoch, tick, bytes, path, inputs_discarded } => {
            ServerEvent::Stopped { region, epoch, tick, bytes, path: path.display().to_string(), inputs_discarded }
        }
        HostEvent::StopRefused { region, reason } => ServerEvent::StopRefused { region, reason },
        HostEvent::CheckpointFailed { region, error } => ServerEvent::CheckpointFailed { region, error },
        HostEvent::StandbyHolding { region, owner_epoch, tick, bytes } => {
            ServerEvent::StandbyHolding { region, owner_epoch, tick, bytes }
        }
        HostEvent::StandbyLost { region, reason, detached } => ServerEvent::StandbyLost { region, reason, detached },
        HostEvent::FeedEnded { region, reason } => ServerEvent::FeedEnded { region, reason },
        HostEvent::Promoted { region, epoch, tick } => ServerEvent::Promoted { region, epoch, tick },
        HostEvent::PromoteRefused { region, reason } => ServerEvent::PromoteRefused { region, reason },
        HostEvent::OwnerSilent { region, owner_epoch, silent_ms } => {
            ServerEvent::OwnerSilent { region, owner_epoch, silent_ms }
        }
        HostEvent::OwnerHeard { region } => ServerEvent::OwnerHeard { region },
        HostEvent::InputRefused { region, input } => {
            ServerEvent::InputRefused { region, player: input.player, seq: input.seq }
        }
        HostEvent::InputsLost { region, player, lost, through } => {
            ServerEvent::InputsLost { region, player, lost, through }
        }
    }
}

/// The serve protocol's name for a source's phase.
fn handoff_phase(phase: SourcePhase) -> HandoffPhase {
    match phase {
        SourcePhase::Prepare => HandoffPhase::Prepare,
        SourcePhase::Snapshot => HandoffPhase::Snapshot,
        SourcePhase::Rounds => HandoffPhase::Rounds,
        SourcePhase::Frozen => HandoffPhase::Frozen,
        SourcePhase::Settling => HandoffPhase::Settling,
        SourcePhase::HandedOff => HandoffPhase::HandedOff,
        SourcePhase::Retired => HandoffPhase::Retired,
        SourcePhase::Aborted => HandoffPhase::Aborted,
    }
}
