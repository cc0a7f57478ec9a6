//! The gateway service: the driver of the gateway's cores. It owns the upstream connections to
//! region servers, the players' sessions and the tasks; the players' QUIC connections are the
//! plane's (`plane.rs`). The decisions are made by [`RouteTable`] (routes, hold, flip, replay)
//! and `SessionTable` (sessions, resume grace, crossings and their retries), both without I/O.
//! What stays here: checking a player's token, limits and frame sequence, the join's request and
//! retries while the route is in flux, and sending what the cores decide.
//!
//! # Data flow
//! A player connects (ALPN `baton-player/1`), says `Hello` with a token, and is joined to the region
//! its token (or its lingering session) names, at the owner the route table knows. Its inputs go
//! through [`RouteTable::handle_input`] to the owner's upstream connection (or are held during a
//! handoff's freeze). Updates come back on the upstream connection, are checked against the route
//! (only the owner at the current epoch is heard) and go to the player as datagrams through the
//! plane, where quinn-proto keeps only the newest few per connection (a stalled player gets the
//! latest state, not a backlog).
//!
//! # What runs where
//! The plane's thread: every player connection, and a welcomed player's frames (`Welcomed`).
//! On the runtime: one task per player session (Hello, join, welcome, then waiting for the end),
//! two tasks per upstream connection (reader, writer), and one timer task for the session table's
//! deadlines. Shared state: the session table behind one lock (never held across an await or a
//! send), the players' links (`links`), servers and the routes inside [`RouteTable`] in
//! [`DashMap`]s.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_net::public::PlayerTransport;
use baton_net::{ClusterIdentity, LinkSettings, TokenBucket};
use baton_wire::player::{
    ALPN_PLAYER, ClientFrame, CloseCode, Datagram, PLAYER_PROTOCOL_VERSION, ServerFrame, StateUpdate,
};
use baton_wire::upstream::{
    ALPN_UPSTREAM, GatewayMessage, ServerMessage, Transfer, UPSTREAM_VERSION, UpstreamReader, encode_batch,
};
use baton_wire::{Epoch, MAX_INPUT_PAYLOAD, PlayerId, PlayerInput, RegionId};
use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use crate::crossing::Delivery;
use crate::plane::{Command, ConnId, FrameHandler, NewPlayer, PlaneHandle, PlayerEvent};
use crate::route::{RouteAction, RouteConfig, RouteError, RouteEvent, RouteTable, ServerId};
use crate::sessions::{Bounced, Routed, SessionAction, SessionTable};
use crate::token::{Claims, TokenKey};

/// Limits that protect the gateway and other players from one client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most player connections at once.
    pub max_connections: usize,
    /// Inputs per second one player may send on average.
    pub inputs_per_second: u32,
    /// Inputs one player may send in a burst.
    pub input_burst: u32,
    /// A player whose inputs were dropped this many times for its rate is disconnected.
    pub flood_disconnect_after: u64,
    /// Time a new connection has to say `Hello`.
    pub hello_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            inputs_per_second: 60,
            input_burst: 120,
            flood_disconnect_after: 600,
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// Everything a gateway needs to start.
pub struct GatewayConfig {
    /// This gateway's name (unique among gateways; shown to region servers).
    pub name: String,
    /// Where players connect.
    pub listen: SocketAddr,
    /// The player-facing certificate chain and key (taken at start).
    pub tls: Option<(baton_net::Chain, baton_net::Key)>,
    /// This gateway's cluster identity (mutual TLS to region servers).
    pub identity: ClusterIdentity,
    /// Checks session and resume tokens.
    pub token_key: TokenKey,
    /// Per-player and per-gateway limits.
    pub limits: Limits,
    /// Player transport settings.
    pub transport: PlayerTransport,
    /// How long a disconnected player's session waits for a resume.
    pub resume_grace: Duration,
    /// Cluster link settings.
    pub link: LinkSettings,
}

/// Counters of what the gateway did; a snapshot is [`GatewayStats`]. The players' plane counts
/// connections and what it sends; the rest is counted here.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    refused_token: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    flood_disconnects: AtomicU64,
    inputs_forwarded: AtomicU64,
    inputs_dropped_rate: AtomicU64,
    inputs_dropped_unroutable: AtomicU64,
    inputs_bounced: AtomicU64,
    pub(crate) updates_datagram: AtomicU64,
    pub(crate) updates_reliable: AtomicU64,
    updates_stale: AtomicU64,
    pub(crate) neighbour_views: AtomicU64,
    crossings: AtomicU64,
    resumes: AtomicU64,
    handoff_flips: AtomicU64,
    resends: AtomicU64,
    inputs_asked_again: AtomicU64,
    unavailable: AtomicU64,
    stopped_sessions: AtomicU64,
}

/// A snapshot of the gateway's counters.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct GatewayStats {
    /// Players with a session (connected or waiting for a resume).
    pub sessions: u64,
    /// Region servers the gateway has an upstream to (connected, or being dialled): one
    /// unreachable for 10 s that no route names is forgotten unless the operator named it
    /// (`--server`, the control line `server`; see `run_upstream`). A gauge, like `sessions`.
    #[serde(default)]
    pub servers: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections refused at the connection limit.
    pub refused_full: u64,
    /// Connections refused for their token.
    pub refused_token: u64,
    /// Connections closed for malformed frames or protocol violations.
    pub protocol_errors: u64,
    /// Connections closed for input floods.
    pub flood_disconnects: u64,
    /// Inputs sent to region servers (replays included).
    pub inputs_forwarded: u64,
    /// Inputs dropped for exceeding a player's rate.
    pub inputs_dropped_rate: u64,
    /// Inputs dropped because their region has no route, holds too many during a handoff, or too
    /// many of the player's wait for its avatar to cross a border.
    pub inputs_dropped_unroutable: u64,
    /// Inputs a server sent back to route again.
    pub inputs_bounced: u64,
    /// Updates sent as datagrams.
    pub updates_datagram: u64,
    /// Updates sent on the reliable stream (too large for a datagram).
    pub updates_reliable: u64,
    /// Updates refused for a stale epoch or a wrong server.
    pub updates_stale: u64,
    /// Neighbour views sent to players near a border.
    pub neighbour_views: u64,
    /// Border crossings completed.
    pub crossings: u64,
    /// Sessions resumed.
    pub resumes: u64,
    /// Handoffs that flipped a route.
    pub handoff_flips: u64,
    /// Owner changes this gateway did not follow as a handoff (failovers): the region's players
    /// were asked to send again what is not durable.
    pub resends: u64,
    /// Players asked to send their inputs again because their region waited at a gap in them (an
    /// input lost on its way).
    pub inputs_asked_again: u64,
    /// Regions announced unavailable (lost their host, none took them over in the grace).
    pub unavailable: u64,
    /// Sessions ended because their region was stopped (the old way of restarting it).
    pub stopped_sessions: u64,
}

impl GatewayStats {
    /// Records the snapshot as Prometheus metrics: `baton_gateway_sessions` and
    /// `baton_gateway_servers` (gauges) and `baton_gateway_<counter>_total` for every other field,
    /// so the metric names follow the fields of this one struct and cannot drift from what
    /// `{"cmd":"stats"}` prints.
    pub fn record_metrics(&self) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else { return };
        for (name, value) in fields {
            let value = value.as_u64().unwrap_or(0);
            if name == "sessions" || name == "servers" {
                metrics::gauge!(format!("baton_gateway_{name}")).set(value as f64);
            } else {
                metrics::counter!(format!("baton_gateway_{name}_total")).absolute(value);
            }
        }
    }
}

/// A connected player's connection: what its updates and reliable frames go out on (through the
/// players' plane). One per connection, never changed (a resume makes a new one); the player's
/// session itself is in the [`SessionTable`].
struct PlayerLink {
    /// The session generation of this connection.
    generation: u64,
    connection: ConnId,
    plane: PlaneHandle,
}

impl PlayerLink {
    fn send_reliable(&self, frame: ServerFrame) {
        self.plane.send(Command::Reliable { to: self.connection, frame });
    }

    fn close(&self, code: CloseCode, reason: &str) {
        self.plane.send(Command::Close { to: self.connection, code, reason: reason.to_owned() });
    }
}

/// A region's answer to a join, or to the arrival a join delivered.
#[derive(Debug)]
enum JoinAnswer {
    /// The player is in the region, with its last applied input.
    Joined(RegionId, u64),
    /// The avatar left the region asked (or the one an arrival was sent to) across a border:
    /// deliver it on.
    Moved(Transfer),
    /// The avatar a join delivered is in the region now (the session table says which): join it
    /// there.
    Arrived,
    /// Why the player could not join (or the delivered avatar could not arrive).
    Refused(String),
}

/// A join waiting for its answer.
#[derive(Debug)]
struct JoinWaiter {
    answer: oneshot::Sender<JoinAnswer>,
    /// The avatar the join delivered (its destination and its crossings), whose arrival or
    /// refusal is the answer; none: the answer to a `Join`.
    delivered: Option<(RegionId, u64)>,
}

struct Upstream {
    address: SocketAddr,
    outbound: UnboundedSender<GatewayMessage>,
    /// Named by the operator (`--server`, the control line `server`): never forgotten, as no
    /// route names it before it first connects.
    pinned: bool,
}

struct Inner {
    /// This gateway, for what must start an upstream from a plain `&Inner` (`send_upstream`).
    me: std::sync::Weak<Inner>,
    /// The runtime upstreams run on: one may be started from the players' plane, whose thread
    /// has its own runtime that must never carry them.
    runtime: tokio::runtime::Handle,
    config: GatewayConfig,
    /// Every player connection (see `plane`).
    plane: PlaneHandle,
    cluster: quinn::Endpoint,
    cluster_client: quinn::ClientConfig,
    routes: RouteTable,
    servers: DashMap<ServerId, Upstream>,
    server_ids: DashMap<SocketAddr, ServerId>,
    next_server: AtomicU32,
    /// Every player's session, resume grace and crossing (no I/O); one lock, never held across
    /// an await or a send.
    table: Mutex<SessionTable>,
    /// Wakes the timer task when the table may have an earlier deadline.
    timers: tokio::sync::Notify,
    /// Connected players' connections, one per player (the newest generation's): what updates and
    /// reliable frames go out on.
    links: DashMap<PlayerId, Arc<PlayerLink>>,
    joins: DashMap<PlayerId, JoinWaiter>,
    /// Per region, players whose avatars left it lately, and when: inputs they sent it just before
    /// may have been lost with it in a failover (it never bounced them), so they are asked to send
    /// again too.
    departures: DashMap<RegionId, Vec<(PlayerId, Instant)>>,
    /// Crossings sent to their destination and not yet durable there: not answered, or arrived
    /// but not yet in a checkpoint the destination stored (its updates' `durable` says when). A
    /// destination that dies before that is restored without the avatar, so a failover of it
    /// delivers them again to the new owner.
    crossings_sent: DashMap<PlayerId, Transfer>,
    /// Latest border view of (region, toward), as an encoded datagram.
    borders: DashMap<(RegionId, RegionId), Bytes>,
    counters: Arc<Counters>,
    shut_down: std::sync::atomic::AtomicBool,
}

/// A running gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// Unix time in seconds.
fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl Gateway {
    /// Binds the player endpoint and starts accepting players.
    pub fn start(mut config: GatewayConfig) -> Result<Gateway, baton_net::NetError> {
        let (chain, key) = config.tls.take().ok_or_else(|| baton_net::NetError::Tls("no certificate".into()))?;
        let server = baton_net::public::player_server_config(chain, key, ALPN_PLAYER, config.transport)?;
        let counters = Arc::new(Counters::default());
        let (plane, new_players) =
            crate::plane::start(config.listen, Arc::new(server), config.limits.max_connections, counters.clone())?;
        let cluster = baton_net::udp_endpoint(
            "0.0.0.0:0".parse().map_err(|_| baton_net::NetError::Tls("bind".into()))?,
            quinn::EndpointConfig::default(),
            None,
        )?;
        let cluster_client = baton_net::cluster_client_config(&config.identity, config.link, ALPN_UPSTREAM)?;
        let resume_grace = config.resume_grace;
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            runtime: tokio::runtime::Handle::current(),
            config,
            plane,
            cluster,
            cluster_client,
            routes: RouteTable::new(RouteConfig::default()),
            servers: DashMap::new(),
            server_ids: DashMap::new(),
            next_server: AtomicU32::new(1),
            table: Mutex::new(SessionTable::new(resume_grace)),
            timers: tokio::sync::Notify::new(),
            links: DashMap::new(),
            joins: DashMap::new(),
            departures: DashMap::new(),
            crossings_sent: DashMap::new(),
            borders: DashMap::new(),
            counters,
            shut_down: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(accept_loop(inner.clone(), new_players));
        tokio::spawn(run_timers(inner.clone()));
        Ok(Gateway { inner })
    }

    /// Where players connect.
    pub fn player_address(&self) -> Result<SocketAddr, std::io::Error> {
        Ok(self.inner.plane.local_address())
    }

    /// This gateway's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// Whether [`Gateway::shutdown`] was called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.inner.shut_down.load(Ordering::Relaxed)
    }

    /// Follows the route feed of the coordinator at `coordinator` (reconnecting while it is away):
    /// every route it pushes is applied with [`Gateway::assign`].
    pub fn follow_coordinator(&self, coordinator: SocketAddr) -> Result<(), baton_net::NetError> {
        let client = baton_net::cluster_client_config(
            &self.inner.config.identity,
            self.inner.config.link,
            baton_wire::control::ALPN_ROUTES,
        )?;
        tokio::spawn(crate::feed::follow(self.clone(), client, self.inner.cluster.clone(), coordinator));
        Ok(())
    }

    /// Connects to the region server at `address` (it announces the regions it owns).
    pub fn add_server(&self, address: SocketAddr) -> ServerId {
        upstream_for(&self.inner, address, true)
    }

    /// Applies a route change from the control plane (the coordinator): `region` is owned by the
    /// server at `owner` at `epoch`. Stale epochs are refused.
    pub fn assign(&self, region: RegionId, owner: SocketAddr, epoch: Epoch) -> Result<(), RouteError> {
        let server = server_for(&self.inner, owner);
        owner_known(&self.inner, region, server, epoch, OwnerNews::Owning)
    }

    /// `region` lost its host and none took it over yet: its players here are told why (they stay
    /// connected; a `Resend` follows when a new owner is routed).
    pub fn region_unavailable(&self, region: RegionId, reason: &str) {
        self.inner.counters.unavailable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%region, reason, "region unavailable");
        for player in players_in(&self.inner, region) {
            if let Some(link) = self.inner.links.get(&player) {
                link.send_reliable(ServerFrame::RegionUnavailable { region: region.0, reason: reason.to_owned() });
            }
        }
    }

    /// The owner and epoch the gateway routes `region` to.
    #[must_use]
    pub fn route(&self, region: RegionId) -> Option<(SocketAddr, Epoch)> {
        let (server, epoch) = self.inner.routes.owner(region)?;
        Some((self.inner.servers.get(&server)?.address, epoch))
    }

    /// A snapshot of the counters.
    #[must_use]
    pub fn stats(&self) -> GatewayStats {
        let counters = &self.inner.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        GatewayStats {
            sessions: table(&self.inner).len() as u64,
            servers: self.inner.servers.len() as u64,
            connections: load(&counters.connections),
            refused_full: load(&counters.refused_full),
            refused_token: load(&counters.refused_token),
            protocol_errors: load(&counters.protocol_errors),
            flood_disconnects: load(&counters.flood_disconnects),
            inputs_forwarded: load(&counters.inputs_forwarded),
            inputs_dropped_rate: load(&counters.inputs_dropped_rate),
            inputs_dropped_unroutable: load(&counters.inputs_dropped_unroutable),
            inputs_bounced: load(&counters.inputs_bounced),
            updates_datagram: load(&counters.updates_datagram),
            updates_reliable: load(&counters.updates_reliable),
            updates_stale: load(&counters.updates_stale),
            neighbour_views: load(&counters.neighbour_views),
            crossings: load(&counters.crossings),
            resumes: load(&counters.resumes),
            handoff_flips: load(&counters.handoff_flips),
            resends: load(&counters.resends),
            inputs_asked_again: load(&counters.inputs_asked_again),
            unavailable: load(&counters.unavailable),
            stopped_sessions: load(&counters.stopped_sessions),
        }
    }

    /// Closes every player connection and stops accepting.
    pub fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Relaxed);
        // The timer task sees the flag when it wakes.
        self.inner.timers.notify_one();
        self.inner.plane.send(Command::Shutdown);
        self.inner.cluster.close(0u32.into(), b"gateway shutting down");
    }
}

// ---------------------------------------------------------------------------------------------
// Players

async fn accept_loop(inner: Arc<Inner>, mut new_players: UnboundedReceiver<NewPlayer>) {
    while let Some(player) = new_players.recv().await {
        let inner = inner.clone();
        tokio::spawn(async move { serve_player(&inner, player).await });
    }
}

/// Why a player connection ended.
struct Closing {
    code: CloseCode,
    reason: String,
}

impl Closing {
    fn new(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing { code, reason: reason.into() }
    }
}

async fn serve_player(inner: &Arc<Inner>, player: NewPlayer) {
    let NewPlayer { id, remote: peer, mut events } = player;
    let result = player_session(inner, id, &mut events).await;
    let (code, reason) = match result {
        Err(closing) => {
            match closing.code {
                CloseCode::Protocol => inner.counters.protocol_errors.fetch_add(1, Ordering::Relaxed),
                CloseCode::Unauthorized | CloseCode::Version => {
                    inner.counters.refused_token.fetch_add(1, Ordering::Relaxed)
                }
                CloseCode::Flood => inner.counters.flood_disconnects.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            tracing::info!(%peer, code = ?closing.code, reason = closing.reason, "closing a player connection");
            (closing.code, closing.reason.chars().take(200).collect())
        }
        // The player's stream ended or its connection is gone: nothing is left to say on it.
        Ok(()) => (CloseCode::Normal, String::new()),
    };
    inner.plane.send(Command::Close { to: id, code, reason });
}

async fn read_frame(events: &mut UnboundedReceiver<PlayerEvent>) -> Result<Option<ClientFrame>, Closing> {
    match events.recv().await {
        Some(PlayerEvent::Frame(frame)) => Ok(Some(frame)),
        Some(PlayerEvent::Malformed(error)) => Err(Closing::new(CloseCode::Protocol, error)),
        Some(PlayerEvent::Refused(code, reason)) => Err(Closing::new(code, reason)),
        None => Ok(None),
    }
}

async fn player_session(
    inner: &Arc<Inner>,
    connection: ConnId,
    events: &mut UnboundedReceiver<PlayerEvent>,
) -> Result<(), Closing> {
    let limits = inner.config.limits;
    let hello = tokio::time::timeout(limits.hello_timeout, read_frame(events))
        .await
        .map_err(|_| Closing::new(CloseCode::Idle, "no Hello in time"))??;
    let Some(hello) = hello else {
        // The connection or its stream ended before a word: nothing to count.
        return Ok(());
    };
    let ClientFrame::Hello { version, token } = hello else {
        return Err(Closing::new(CloseCode::Protocol, "the first frame must be Hello"));
    };
    if version != PLAYER_PROTOCOL_VERSION {
        return Err(Closing::new(
            CloseCode::Version,
            format!("player protocol version {version} is not supported (want {PLAYER_PROTOCOL_VERSION})"),
        ));
    }
    let claims = inner
        .config
        .token_key
        .verify(&token, unix_seconds())
        .map_err(|error| Closing::new(CloseCode::Unauthorized, error.to_string()))?;
    let player = PlayerId(claims.player);

    // A player has one session: a new connection (a resume, here or from another gateway) takes
    // the previous one over, and the region it knows wins over the token's.
    let opened = table(inner).handle_connected(player, RegionId(claims.region));
    let link = Arc::new(PlayerLink { generation: opened.generation, connection, plane: inner.plane.clone() });
    // Two connections of one player may race from here: only the newer generation's link stays,
    // so the connection the session belongs to is always the one registered.
    let previous = match inner.links.entry(player) {
        dashmap::Entry::Occupied(occupied) if occupied.get().generation > opened.generation => {
            return Err(Closing::new(CloseCode::Replaced, "a newer connection of this player took the session over"));
        }
        dashmap::Entry::Occupied(mut occupied) => Some(occupied.insert(link.clone())),
        dashmap::Entry::Vacant(vacant) => {
            vacant.insert(link.clone());
            None
        }
    };
    if let Some(previous) = previous {
        previous.close(CloseCode::Replaced, "the session continues on a newer connection");
    }
    if opened.resumed {
        inner.counters.resumes.fetch_add(1, Ordering::Relaxed);
    }

    let joined = join(inner, player, opened.region).await;
    let (region, last_applied) = match joined {
        Ok(joined) => joined,
        Err(reason) => {
            table(inner).handle_join_failed(player, opened.generation);
            inner.links.remove_if(&player, |_, current| current.generation == opened.generation);
            return Err(Closing::new(CloseCode::Unavailable, reason));
        }
    };
    table(inner).handle_joined(player, opened.generation, region);
    link.send_reliable(ServerFrame::Welcome {
        player: player.0,
        region: region.0,
        last_applied,
        resume_token: resume_token(inner, player, region),
    });
    tracing::debug!(%player, %region, last_applied, "player session open");
    // The resume token expires a grace and a third after it was issued: a fresh one every third
    // of the grace, so a session of any length can be resumed (at another gateway too) for a
    // whole grace after this one dies.
    let refresher = tokio::spawn(refresh_resume_token(inner.clone(), player, link.clone()));

    // From here the player's frames are checked and forwarded on the plane's thread, as they
    // come off the connection (no hop through this task); this task waits for the end.
    let now = Instant::now();
    let welcomed = Welcomed {
        inner: inner.clone(),
        link: link.clone(),
        player,
        limits,
        bucket: TokenBucket::new(u64::from(limits.inputs_per_second), u64::from(limits.input_burst), now),
        // Inputs sent again (numbers already seen: after a failover the client sends every input
        // that is not durable) have a bucket of their own, as deep as what a client keeps, so a
        // whole window sent again at once is not dropped into a gap the region would wait at for
        // ever.
        resend_bucket: TokenBucket::new(u64::from(limits.inputs_per_second), kept_inputs_limit(), now),
        highest_seq: last_applied,
        dropped: 0,
    };
    inner.plane.send(Command::Serve { to: connection, handler: Box::new(welcomed) });
    let result = match events.recv().await {
        Some(PlayerEvent::Refused(code, reason)) => Err(Closing::new(code, reason)),
        Some(PlayerEvent::Malformed(error)) => Err(Closing::new(CloseCode::Protocol, error)),
        Some(PlayerEvent::Frame(_)) | None => Ok(()),
    };
    refresher.abort();
    // The connection is gone (or is being closed): the session waits for a resume until the grace
    // period ends (the table's timer), unless a newer connection took it over meanwhile.
    inner.links.remove_if(&player, |_, current| current.generation == opened.generation);
    table(inner).handle_disconnected(Instant::now(), player, opened.generation);
    inner.timers.notify_one();
    result
}

/// A welcomed player's frames, checked and forwarded on the plane's thread: pings answered,
/// inputs and skips checked against the limits (sequence, payload size, rate) and sent to the
/// player's region.
struct Welcomed {
    inner: Arc<Inner>,
    link: Arc<PlayerLink>,
    player: PlayerId,
    limits: Limits,
    bucket: TokenBucket,
    resend_bucket: TokenBucket,
    highest_seq: u64,
    dropped: u64,
}

impl Welcomed {
    /// Charges one frame to the player's rate (to the bucket of inputs sent again if `resend`);
    /// false when over it: the frame is dropped and counted, and with `flood`, past
    /// `flood_disconnect_after` such drops the session ends.
    fn charge(&mut self, resend: bool, flood: bool) -> Result<bool, (CloseCode, String)> {
        let now = Instant::now();
        let bucket = if resend { &mut self.resend_bucket } else { &mut self.bucket };
        if bucket.delay(now, 1).is_zero() {
            bucket.consume(now, 1);
            return Ok(true);
        }
        self.inner.counters.inputs_dropped_rate.fetch_add(1, Ordering::Relaxed);
        if flood {
            self.dropped += 1;
            if self.dropped >= self.limits.flood_disconnect_after {
                return Err((CloseCode::Flood, "far more inputs than the rate limit allows".into()));
            }
        }
        Ok(false)
    }
}

impl FrameHandler for Welcomed {
    fn handle(&mut self, frame: ClientFrame) -> Result<(), (CloseCode, String)> {
        match frame {
            ClientFrame::Hello { .. } => return Err((CloseCode::Protocol, "Hello sent twice".into())),
            ClientFrame::Ping { nonce } => {
                // Charged as an input: a client cannot flood the plane with pings either.
                if self.charge(false, true)? {
                    self.link.send_reliable(ServerFrame::Pong { nonce });
                }
            }
            ClientFrame::Input { seq, payload } => {
                if seq == 0 || seq > self.highest_seq + 1 {
                    return Err((
                        CloseCode::Protocol,
                        format!("input {seq} out of sequence (next is {})", self.highest_seq + 1),
                    ));
                }
                if payload.len() > MAX_INPUT_PAYLOAD {
                    return Err((
                        CloseCode::Protocol,
                        format!("input payload of {} bytes exceeds {MAX_INPUT_PAYLOAD}", payload.len()),
                    ));
                }
                // A dropped input still uses its number: the client's sequence goes on without
                // a protocol error, and the region waits for a gap only that client made.
                let resend = seq <= self.highest_seq;
                self.highest_seq = self.highest_seq.max(seq);
                // A dropped input sent again is counted but never ends the session: a client asked
                // again and again by a region waiting at a gap (every half second) may queue copies
                // of its kept inputs faster than their bucket refills, and a disconnect for that
                // only made it resume, reopen a gap and be asked again (the soak's collapse).
                if self.charge(resend, !resend)? {
                    forward_input(&self.inner, PlayerInput { player: self.player, seq, payload });
                }
            }
            ClientFrame::Skip { through } => {
                // A session resumed here after a failover starts from the restored state's
                // `last_applied`, below what the client dropped: the skip moves its numbering on.
                if through > MAX_SKIP_THROUGH {
                    return Err((CloseCode::Protocol, format!("skip through input {through} is implausible")));
                }
                self.highest_seq = self.highest_seq.max(through);
                // Charged as an input: a client cannot flood its region with skips either.
                if self.charge(false, false)? {
                    forward_skip(&self.inner, self.player, through);
                }
            }
        }
        Ok(())
    }
}

/// How long a player that left a region counts as having inputs in flight to it (see
/// `Inner::departures`).
const RECENT_DEPARTURE: Duration = Duration::from_secs(10);

/// How many inputs a client may send again at once: what `baton-client` keeps at most.
fn kept_inputs_limit() -> u64 {
    baton_wire::player::MAX_KEPT_INPUTS as u64
}

/// The session table. A panic elsewhere while the lock was held leaves at worst one event
/// unrecorded, so a poisoned lock is used as it is rather than stopping every player.
fn table(inner: &Inner) -> std::sync::MutexGuard<'_, SessionTable> {
    inner.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The one timer of the gateway's players: sleeps until the table's next deadline (or until told
/// there may be an earlier one), then carries out what is due: sessions whose resume grace ran
/// out leave their region; refused crossings are delivered again; inputs held after a bounce are
/// routed again.
async fn run_timers(inner: Arc<Inner>) {
    loop {
        let next = table(&inner).poll_timeout();
        let notified = inner.timers.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    () = notified => continue,
                }
            }
            None => notified.await,
        }
        if inner.shut_down.load(Ordering::Relaxed) {
            return;
        }
        let actions = table(&inner).handle_timeout(Instant::now());
        for action in actions {
            carry_out(&inner, action);
        }
    }
}

/// Does what the session table asked.
fn carry_out(inner: &Arc<Inner>, action: SessionAction) {
    match action {
        SessionAction::Leave { player, region } => {
            inner.crossings_sent.remove(&player);
            if let Some((server, epoch)) = inner.routes.owner(region) {
                send_upstream(inner, server, GatewayMessage::Leave { region, epoch, player });
            }
            // Every region forgets the avatar it kept as it left: a later session of the player
            // starts afresh (docs/protocol.md §10).
            let servers: Vec<ServerId> = inner.servers.iter().map(|entry| *entry.key()).collect();
            for server in servers {
                send_upstream(inner, server, GatewayMessage::Forget { player });
            }
        }
        SessionAction::Deliver { transfer, delivery } => deliver_transfer(inner, transfer, delivery),
        SessionAction::Route(input) => forward_input(inner, input),
    }
}

/// How often a session's resume token is renewed: every third of the resume grace.
fn refresh_every(grace: Duration) -> Duration {
    (grace / 3).max(Duration::from_secs(1))
}

/// Sends `player` a fresh resume token for its current region every third of the resume grace,
/// while `link` is its session's link.
async fn refresh_resume_token(inner: Arc<Inner>, player: PlayerId, link: Arc<PlayerLink>) {
    let every = refresh_every(inner.config.resume_grace);
    loop {
        tokio::time::sleep(every).await;
        let current = inner.links.get(&player).is_some_and(|current| current.generation == link.generation);
        // Sent under the table's lock: a crossing's arrival changes the region under it and sends
        // its own token after, so the client never keeps a token for the region it left.
        let table = table(&inner);
        match table.region_of(player) {
            Some(region) if current => {
                link.send_reliable(ServerFrame::ResumeToken { resume_token: resume_token(&inner, player, region) });
            }
            _ => return,
        }
    }
}

/// A token valid for a whole grace after the next refresh is due: whenever the connection is lost,
/// the newest token the client holds still covers the grace from then (a client notices a dead
/// gateway only after its idle timeout, and one issued a grace before expiry left it seconds).
fn resume_token(inner: &Inner, player: PlayerId, region: RegionId) -> String {
    let grace = inner.config.resume_grace;
    let expires_at = unix_seconds() + (grace + refresh_every(grace)).as_secs().max(1);
    inner.config.token_key.issue(&Claims { player: player.0, region: region.0, expires_at })
}

/// Joins `player` to `region` at its owner; retries while the route is in flux (a handoff).
async fn join(inner: &Arc<Inner>, player: PlayerId, region: RegionId) -> Result<(RegionId, u64), String> {
    let mut last_error = String::from("no route");
    // After a `JoinMoved`, the avatar to deliver instead of asking a region.
    let mut moved: Option<Transfer> = None;
    let mut pause = false;
    let mut attempts = 0u32;
    // Waiting for a crossing does not count as an attempt, but is bounded: a crossing is retried
    // and turned back until one side takes it (`crate::crossing`), seconds at worst.
    let crossing_deadline = Instant::now() + Duration::from_secs(30);
    while attempts < 25 {
        if std::mem::take(&mut pause) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A crossing of the player in flight at this gateway (a resume here while its avatar
        // crosses) delivers the avatar: the join waits for it, then asks the region it entered.
        if table(inner).in_transit(player) {
            moved = None;
            last_error = format!("player {player}'s avatar is crossing a border");
            if Instant::now() > crossing_deadline {
                break;
            }
            pause = true;
            continue;
        }
        attempts += 1;
        let asked = match &moved {
            Some(transfer) => transfer.to,
            None => table(inner).region_of(player).unwrap_or(region),
        };
        let route = inner.routes.owner(asked).filter(|_| moved.is_none() || inner.routes.held(asked) == 0);
        let Some((server, epoch)) = route else {
            last_error = format!("region {asked} has no route at this gateway (or is moving)");
            pause = true;
            continue;
        };
        let (answer, receiver) = oneshot::channel();
        let delivered = moved.as_ref().map(|transfer| (transfer.to, transfer.crossings));
        inner.joins.insert(player, JoinWaiter { answer, delivered });
        let message = match moved.take() {
            // The player's last crossing went out through a gateway that died before the avatar
            // arrived, or its token names a region it has left since: the avatar goes where it
            // was going, which takes it in or says it is there already (docs/protocol.md §10).
            Some(transfer) => GatewayMessage::Immigrate { epoch, transfer },
            None => GatewayMessage::Join { region: asked, epoch, player },
        };
        send_upstream(inner, server, message);
        match tokio::time::timeout(Duration::from_secs(3), receiver).await {
            Ok(Ok(JoinAnswer::Joined(region, last_applied))) => return Ok((region, last_applied)),
            Ok(Ok(JoinAnswer::Moved(transfer))) => {
                tracing::info!(%player, from = %transfer.from, to = %transfer.to, "the player's avatar left the region it resumes in; delivering it on");
                moved = Some(transfer);
            }
            // The session table says where the avatar is now: the next round joins it there.
            Ok(Ok(JoinAnswer::Arrived)) => {}
            Ok(Ok(JoinAnswer::Refused(reason))) => {
                last_error = format!("region {asked} refused the player: {reason}");
                pause = true;
            }
            Ok(Err(_)) | Err(_) => {
                last_error = format!("region {asked} did not answer the join");
                pause = true;
            }
        }
    }
    inner.joins.remove(&player);
    Err(last_error)
}

/// A player's input: to its region's route, or waiting while its avatar crosses a border.
fn forward_input(inner: &Inner, input: PlayerInput) {
    let routed = table(inner).handle_input(input);
    match routed {
        Routed::To(region, input) => route_input(inner, region, input),
        Routed::Waiting => {}
        Routed::NoSession(player) => {
            inner.counters.inputs_dropped_unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%player, "an input of a player without a session here");
        }
        Routed::TransitFull(player) => {
            inner.counters.inputs_dropped_unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%player, "an input dropped: too many wait for the player's avatar to arrive");
        }
    }
}

/// Largest input number a skip may name (far beyond any real session; keeps `+ 1` from overflowing).
const MAX_SKIP_THROUGH: u64 = u64::MAX / 2;

/// A player's client no longer has its inputs up to `through`: to its region's owner now. Not
/// held like an input (a skip changes no order); one that finds no owner is dropped, and the
/// client says it again while the region's updates still show the gap.
fn forward_skip(inner: &Inner, player: PlayerId, through: u64) {
    let region = table(inner).region_of(player);
    match region.and_then(|region| Some((region, inner.routes.owner(region)?))) {
        Some((region, (server, epoch))) => {
            send_upstream(inner, server, GatewayMessage::Skip { region, epoch, player, through });
        }
        None => tracing::debug!(%player, through, "a skip with no region to go to"),
    }
}

fn route_input(inner: &Inner, region: RegionId, input: PlayerInput) {
    let action = inner.routes.handle_input(region, input);
    match action {
        Ok(Some(action)) => run_actions(inner, vec![action]),
        Ok(None) => {}
        Err(error) => {
            inner.counters.inputs_dropped_unroutable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "input dropped");
        }
    }
}

fn run_actions(inner: &Inner, actions: Vec<RouteAction>) {
    for action in actions {
        match action {
            RouteAction::Resend { region } => {
                // After the Attach (owner_known sends it first), so what the players send again
                // reaches an owner that knows they are served here.
                inner.counters.resends.fetch_add(1, Ordering::Relaxed);
                let mut players = players_in(inner, region);
                if let Some(departed) = inner.departures.get(&region) {
                    let now = Instant::now();
                    players.extend(
                        departed
                            .iter()
                            .filter(|(_, at)| now.duration_since(*at) < RECENT_DEPARTURE)
                            .map(|(player, _)| *player),
                    );
                }
                players.sort_unstable();
                players.dedup();
                // Crossings its lost owner never answered, or took in but had not stored, go to
                // the new one.
                deliver_unanswered(inner, region);
                for player in players {
                    if let Some(link) = inner.links.get(&player) {
                        link.send_reliable(ServerFrame::Resend { region: region.0 });
                    }
                }
            }
            RouteAction::Forward { region, server, epoch, input } => {
                inner.counters.inputs_forwarded.fetch_add(1, Ordering::Relaxed);
                send_upstream(
                    inner,
                    server,
                    GatewayMessage::Input {
                        region,
                        epoch,
                        player: input.player,
                        seq: input.seq,
                        payload: input.payload,
                    },
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream

/// The id of the server at `address`, with an upstream to it (started if there is none: a new
/// server, or one forgotten and named again). An address keeps its id for good (a few bytes);
/// only a forgotten server's upstream goes.
fn server_for(inner: &Arc<Inner>, address: SocketAddr) -> ServerId {
    upstream_for(inner, address, false)
}

/// [`server_for`], and with `pin` the server is never forgotten (the operator named it).
fn upstream_for(inner: &Arc<Inner>, address: SocketAddr, pin: bool) -> ServerId {
    let id = match inner.server_ids.get(&address) {
        Some(id) => *id,
        None => *inner
            .server_ids
            .entry(address)
            .or_insert_with(|| ServerId(inner.next_server.fetch_add(1, Ordering::Relaxed))),
    };
    match inner.servers.entry(id) {
        dashmap::Entry::Vacant(vacant) => {
            let (outbound, receiver) = unbounded_channel();
            vacant.insert(Upstream { address, outbound, pinned: pin });
            inner.runtime.spawn(run_upstream(inner.clone(), id, address, receiver));
        }
        dashmap::Entry::Occupied(mut occupied) => occupied.get_mut().pinned |= pin,
    }
    id
}

fn send_upstream(inner: &Inner, server: ServerId, message: GatewayMessage) {
    if let Some(upstream) = inner.servers.get(&server) {
        let _ = upstream.outbound.send(message);
        return;
    }
    // A server forgotten as something named it again (a route flipped to it just then): its
    // upstream comes back. Rare, so its address is looked up the long way.
    let address = inner.server_ids.iter().find(|entry| *entry.value() == server).map(|entry| *entry.key());
    if let (Some(address), Some(inner)) = (address, inner.me.upgrade()) {
        server_for(&inner, address);
        if let Some(upstream) = inner.servers.get(&server) {
            let _ = upstream.outbound.send(message);
        }
    }
}

/// Forgets server `id`'s upstream unless a route names it or the operator named it; true when it
/// was forgotten. Anything sent to it afterwards starts a fresh one (`send_upstream`), so a route
/// that names it after all, just as it goes, is still served.
fn forget_server(inner: &Inner, id: ServerId) -> bool {
    if inner.routes.references(id) {
        return false;
    }
    inner.servers.remove_if(&id, |_, upstream| !upstream.pinned).is_some()
}

/// Empties `outbound`; returns how many messages it held.
fn drain(outbound: &mut UnboundedReceiver<GatewayMessage>) -> usize {
    std::iter::from_fn(|| outbound.try_recv().ok()).count()
}

/// After this long unreachable, a region server no route names is forgotten (one the operator
/// named is retried only every [`QUIET_RETRY`], without warnings).
const FORGET_AFTER: Duration = Duration::from_secs(10);
/// See [`FORGET_AFTER`].
const QUIET_RETRY: Duration = Duration::from_secs(10);

async fn run_upstream(
    inner: Arc<Inner>,
    id: ServerId,
    address: SocketAddr,
    mut outbound: UnboundedReceiver<GatewayMessage>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let connection = match baton_net::connect_with(&inner.cluster, inner.cluster_client.clone(), address).await {
            Ok(connection) => connection,
            Err(error) => {
                // A server that was stopped (its regions moved away, its process released or
                // killed) is forgotten once no route names it: a gateway that kept every server
                // it ever knew (a task, a queue and a handshake every few seconds each) grew for
                // as long as the cluster churned (agents' region servers bind port 0, so each
                // process is a new address). A route that names the address again gets a fresh
                // upstream. What waits for it is dropped; it could never be delivered anyway and
                // what matters is carried otherwise: a new owner asks for lost inputs again,
                // crossings are delivered again to whoever owns their region, a client says a
                // `Skip` again. (A `Leave` in it is lost: the new owner keeps that avatar,
                // protocol.md §10.)
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= FORGET_AFTER && !inner.routes.references(id) {
                    let pinned = inner.servers.get(&id).is_some_and(|upstream| upstream.pinned);
                    if pinned {
                        // One the operator named: what waits for it is dropped, and it is
                        // tried again now and then, quietly.
                        let dropped = drain(&mut outbound);
                        tracing::debug!(%address, %error, dropped, "an unreachable region server no route names");
                        tokio::time::sleep(QUIET_RETRY).await;
                        continue;
                    }
                    if forget_server(&inner, id) {
                        let dropped = drain(&mut outbound);
                        tracing::info!(%address, %error, dropped, "forgot a gone region server no route names");
                        return;
                    }
                    // A route named it just now: dialled again as any other.
                }
                tracing::warn!(%address, %error, "cannot reach a region server; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        unreachable_since = None;
        backoff = Duration::from_millis(50);
        let Ok((mut send, recv)) = connection.open_bi().await else { continue };
        tracing::info!(%address, server = id.0, "connected to a region server");
        let reader = tokio::spawn(read_upstream(inner.clone(), id, recv));
        let mut buffer = Vec::with_capacity(64 * 1024);
        let hello = GatewayMessage::Hello { version: UPSTREAM_VERSION, gateway: inner.config.name.clone() };
        let mut pending = Some(hello);
        loop {
            buffer.clear();
            let first = match pending.take() {
                Some(message) => message,
                None => {
                    tokio::select! {
                        message = outbound.recv() => match message {
                            Some(message) => message,
                            None => return,
                        },
                        _ = connection.closed() => break,
                    }
                }
            };
            for error in encode_batch(first, || outbound.try_recv().ok(), &mut buffer, 60 * 1024) {
                tracing::error!(%error, "dropping an upstream message that cannot be encoded");
            }
            if send.write_all(&buffer).await.is_err() {
                break;
            }
        }
        reader.abort();
        tracing::warn!(%address, "lost the region server connection; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}

async fn read_upstream(inner: Arc<Inner>, server: ServerId, mut recv: quinn::RecvStream) {
    let mut reader = UpstreamReader::default();
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => reader.feed(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
        loop {
            match reader.next_message::<ServerMessage>() {
                Ok(Some(message)) => handle_server(&inner, server, message),
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(server = server.0, %error, "malformed frame from a region server");
                    return;
                }
            }
        }
    }
}

fn route_event(inner: &Inner, event: RouteEvent) -> Result<(), RouteError> {
    let actions = inner.routes.handle_event(event)?;
    run_actions(inner, actions);
    Ok(())
}

/// How the gateway heard that a server owns a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnerNews {
    /// The server said so when it connected (`Welcome`) or when it took the region (`Owning`), or
    /// the coordinator's route feed did.
    Owning,
    /// A handoff committed (`Committed`, from the target or the source).
    Commit,
}

/// protocol.md §10: `server` owns `region` at `epoch`. Every way of hearing it (`Welcome`,
/// `Owning`, `Committed` from either side of a handoff, the coordinator's feed) comes here, so one
/// place decides: the first news with a newer epoch flips the route; whichever news it was, if the
/// route now names this owner at this epoch, the owner is told whose players' updates come here
/// (`Attach` is idempotent: a server that turned an earlier one away because it did not own the
/// region yet now takes it), and only then are the held inputs replayed, in order. News with a
/// stale epoch changes nothing and is answered with the route table's error.
fn owner_known(
    inner: &Inner,
    region: RegionId,
    server: ServerId,
    epoch: Epoch,
    news: OwnerNews,
) -> Result<(), RouteError> {
    let event = match news {
        OwnerNews::Owning => RouteEvent::Assign { region, server, epoch },
        OwnerNews::Commit => RouteEvent::Committed { region, server, epoch },
    };
    let flipped = inner.routes.handle_event(event);
    if flipped.is_ok() && news == OwnerNews::Commit {
        inner.counters.handoff_flips.fetch_add(1, Ordering::Relaxed);
    }
    if inner.routes.owner(region) == Some((server, epoch)) {
        let players = players_in(inner, region);
        if !players.is_empty() {
            send_upstream(inner, server, GatewayMessage::Attach { region, epoch, players });
        }
    }
    let actions = flipped?;
    // A flip without `Resend` is a handoff's commit (or a region's first route, with nothing sent
    // to it yet). A crossing its source took after the freeze waits there for the outcome, and
    // dies with a source killed before it answers: the new owner gets the crossings still waiting
    // for their answer (a failover's `Resend` delivers them all). Protocol.md §10.
    let failover = actions.iter().any(|action| matches!(action, RouteAction::Resend { .. }));
    run_actions(inner, actions);
    if !failover {
        deliver_still_unanswered(inner, region);
    }
    Ok(())
}

/// protocol.md §10: delivers again the crossings into `region` that were sent and may not have
/// been answered or stored (the owner that got them was lost). An owner that took the avatar in
/// already answers `Arrived` again.
fn deliver_unanswered(inner: &Inner, region: RegionId) {
    deliver_again(inner, region, |_| true);
}

/// protocol.md §10: delivers again the crossings into `region` still waiting for their answer
/// (`Arrived` or a refusal) to the region's owner, after the connection they went on broke (the
/// `Immigrate`, or its answer, may have been lost with it) or after a handoff's commit (a source
/// that took it while frozen and died before the outcome never answers it). Crossings answered
/// already, and those of players whose avatar crosses on to elsewhere by now, are left alone:
/// delivered again, they would only be answered again (an `Arrived` of an earlier crossing than
/// the latest ends nothing: it carries its crossings count).
fn deliver_still_unanswered(inner: &Inner, region: RegionId) {
    deliver_again(inner, region, |sent| table(inner).delivering(sent.player) == Some(sent.crossings));
}

fn deliver_again(inner: &Inner, region: RegionId, wanted: impl Fn(&Transfer) -> bool) {
    let again: Vec<Transfer> =
        inner.crossings_sent.iter().filter(|sent| sent.to == region).map(|sent| sent.value().clone()).collect();
    for transfer in again.into_iter().filter(|transfer| wanted(transfer)) {
        deliver_transfer(inner, transfer, Delivery::Onward);
    }
}

fn players_in(inner: &Inner, region: RegionId) -> Vec<PlayerId> {
    table(inner).players_in(region)
}

fn handle_server(inner: &Arc<Inner>, server: ServerId, message: ServerMessage) {
    match message {
        ServerMessage::Welcome { server: name, regions } => {
            tracing::info!(server = server.0, name, regions = regions.len(), "region server introduced itself");
            // After a reconnect the server knows none of our players: `owner_known` tells it again.
            // Crossings into its regions that went out on the broken connection (the `Immigrate`
            // or its `Arrived` lost with it) go again: nothing else would answer them. (A server
            // that becomes a region's owner by this `Welcome` gets the unanswered crossings with
            // the route's flip.)
            for (region, epoch) in regions {
                let reconnected = inner.routes.owner(region) == Some((server, epoch));
                let _ = owner_known(inner, region, server, epoch, OwnerNews::Owning);
                if reconnected {
                    deliver_still_unanswered(inner, region);
                }
            }
        }
        ServerMessage::Owning { region, epoch } => {
            let _ = owner_known(inner, region, server, epoch, OwnerNews::Owning);
        }
        ServerMessage::HandoffStarted { region, epoch, target } => {
            let target = server_for(inner, target);
            if let Err(error) = route_event(inner, RouteEvent::HandoffStarted { region, epoch, target }) {
                tracing::debug!(%error, "handoff start ignored");
            }
        }
        ServerMessage::Frozen { region, epoch } => {
            if let Err(error) = route_event(inner, RouteEvent::Frozen { region, epoch }) {
                tracing::debug!(%error, "freeze ignored");
            }
        }
        ServerMessage::Committed { region, epoch, owner } => {
            let owner = server_for(inner, owner);
            // The route may have flipped already (the coordinator's feed, or the other side's
            // report): then only the Attach is repeated.
            if let Err(error) = owner_known(inner, region, owner, epoch, OwnerNews::Commit) {
                tracing::debug!(%error, "commit already known");
            }
        }
        ServerMessage::Aborted { region, epoch } => {
            if let Err(error) = route_event(inner, RouteEvent::Aborted { region, epoch }) {
                tracing::debug!(%error, "abort ignored");
            }
        }
        ServerMessage::Joined { region, player, last_applied, .. } => {
            answer_join(inner, player, None, JoinAnswer::Joined(region, last_applied));
        }
        ServerMessage::JoinMoved { player, transfer, .. } => {
            answer_join(inner, player, None, JoinAnswer::Moved(transfer));
        }
        ServerMessage::JoinRefused { player, reason, .. } => {
            answer_join(inner, player, None, JoinAnswer::Refused(reason));
        }
        ServerMessage::Detached { player } => {
            table(inner).handle_detached(player);
            // Another gateway carries the player now, and its crossings.
            inner.crossings_sent.remove(&player);
            if let Some((_, link)) = inner.links.remove(&player) {
                link.close(CloseCode::Replaced, "the session continues on another gateway");
            }
        }
        ServerMessage::Update { region, epoch, player, tick, last_applied, durable, payload } => {
            let admitted =
                inner.routes.admits_update(region, server, epoch) && table(inner).handle_update(player, region);
            if !admitted {
                inner.counters.updates_stale.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // A player between connections (waiting for a resume) misses this update; the next one
            // after it is back carries the newest state anyway.
            // The avatar is in a checkpoint of the region it crossed into: a failover of it would
            // find it there.
            inner.crossings_sent.remove_if(&player, |_, sent| sent.to == region && durable >= sent.last_applied);
            if let Some(link) = inner.links.get(&player).map(|link| link.clone()) {
                send_update(inner, &link, StateUpdate { region: region.0, tick, last_applied, durable, payload });
            }
        }
        ServerMessage::Border { region, epoch, toward, tick, payload } => {
            let admitted = inner.routes.admits_update(region, server, epoch);
            if admitted && let Ok(bytes) = (Datagram::Neighbour { region: region.0, tick, payload }).encode() {
                inner.borders.insert((region, toward), Bytes::from(bytes));
            }
        }
        ServerMessage::NearBorder { region, toward, players } => {
            let Some(view) = inner.borders.get(&(toward, region)).map(|view| view.clone()) else {
                return;
            };
            // Sent only where it fits in a datagram (the plane checks and counts).
            for player in players {
                if let Some(link) = inner.links.get(&player) {
                    inner.plane.send(Command::Neighbour { to: link.connection, datagram: view.clone() });
                }
            }
        }
        ServerMessage::ResendInputs { region, player, from } => {
            // Only for the region the player is in (a stale copy elsewhere must not make the
            // client send everything again and again); what it sends again that the region has
            // applied or queued is dropped there by its number (protocol.md §9).
            if table(inner).region_of(player) != Some(region) {
                return;
            }
            if let Some(link) = inner.links.get(&player) {
                inner.counters.inputs_asked_again.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%player, %region, from, "the region waits for an input of the player; asking for its inputs again");
                link.send_reliable(ServerFrame::ResendInputs { region: region.0 });
            }
        }
        // The region's owner saved it and let it go: its players' sessions end (they reconnect
        // once it runs again, elsewhere). Only the owner the gateway routes by can say so.
        ServerMessage::Stopped { region, epoch } => {
            if !inner.routes.admits_update(region, server, epoch) {
                tracing::debug!(%region, %epoch, "a stop from a server that does not own the region; ignored");
                return;
            }
            let players = table(inner).handle_stopped(region);
            for player in &players {
                inner.crossings_sent.remove(player);
            }
            tracing::info!(%region, %epoch, players = players.len(), "region stopped; ending its sessions");
            let reason = format!("region {region} was stopped for a restart; reconnect to play on");
            inner.counters.stopped_sessions.fetch_add(players.len() as u64, Ordering::Relaxed);
            for player in players {
                if let Some((_, link)) = inner.links.remove(&player) {
                    link.close(CloseCode::Unavailable, &reason);
                }
            }
        }
        ServerMessage::Bounced { region, player, seq, payload } => {
            inner.counters.inputs_bounced.fetch_add(1, Ordering::Relaxed);
            let from_its_owner = inner.routes.owner(region).is_some_and(|(owner, _)| owner == server);
            let input = PlayerInput { player, seq, payload };
            let bounced = table(inner).handle_bounced(Instant::now(), region, input, from_its_owner);
            match bounced {
                // Routed again like a new input (it waits if the avatar is crossing); a player
                // without a session here has nobody to route it for.
                Bounced::Route(input) => forward_input(inner, input),
                Bounced::Later => inner.timers.notify_one(),
                Bounced::Held => {}
                Bounced::EndSession => {
                    inner.counters.inputs_dropped_unroutable.fetch_add(1, Ordering::Relaxed);
                    // Nothing the player sends can be applied: say so instead of bouncing for ever.
                    tracing::warn!(%player, %region, "the player's region keeps refusing its inputs; ending the session");
                    if let Some(link) = inner.links.get(&player) {
                        link.close(
                            CloseCode::Unavailable,
                            &format!(
                                "region {region} does not have this player's avatar (lost in a failover?); log in again"
                            ),
                        );
                    }
                }
                Bounced::Dropped => {
                    inner.counters.inputs_dropped_unroutable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        ServerMessage::Emigrated { epoch, transfer } => {
            let from = transfer.from;
            if inner.routes.owner(from).is_some_and(|(_, current)| current > epoch) {
                // An owner a failover replaced: its copy of the avatar is stale, the player's is
                // with the region's new owner.
                tracing::warn!(%from, %epoch, player = %transfer.player, "an emigration from a replaced owner; dropped");
                return;
            }
            let player = transfer.player;
            let crossings = transfer.crossings;
            let (action, known) = {
                let mut table = table(inner);
                // Not newer than the latest crossing heard: one sent again (its region does so for
                // inputs that still reach it, protocol.md §10) or a stale copy's, both common.
                let known = table.last_crossing(player).is_some_and(|last| crossings <= last);
                (table.handle_emigrated(transfer), known)
            };
            let Some(action) = action else {
                if known {
                    tracing::debug!(%from, %player, crossings, "an emigration no newer than the latest crossing; dropped");
                } else {
                    // Newer than any crossing heard, from a region the player is not in: a crossing
                    // of the player was missed (protocol.md §10). Not expected; said loudly.
                    tracing::warn!(%from, %epoch, %player, crossings, "an emigration from a region the player is not in, newer than its latest crossing; dropped");
                }
                return;
            };
            let now = Instant::now();
            let mut departed = inner.departures.entry(from).or_default();
            departed.retain(|(gone, at)| *gone != player && now.duration_since(*at) < RECENT_DEPARTURE);
            departed.push((player, now));
            drop(departed);
            if !inner.routes.admits_update(from, server, epoch) {
                tracing::warn!(%from, "an emigration from a server that does not own the region; delivering anyway");
            }
            carry_out(inner, action);
        }
        ServerMessage::Arrived { region, player, crossings, .. } => {
            // The arrival of an avatar a join delivered (after `JoinMoved`): the player is in
            // `region` (and a crossing this gateway carried, if any, is over); the join asks there.
            if inner.joins.get(&player).is_some_and(|waiter| waiter.delivered == Some((region, crossings))) {
                let waiting = table(inner).handle_arrived(player, region, crossings);
                for input in waiting.unwrap_or_default() {
                    route_input(inner, region, input);
                }
                answer_join(inner, player, Some(region), JoinAnswer::Arrived);
                return;
            }
            let waiting = table(inner).handle_arrived(player, region, crossings);
            // No session here, an arrival repeated (a crossing delivered twice), or the late
            // answer to an earlier crossing than the latest.
            let Some(waiting) = waiting else { return };
            inner.counters.crossings.fetch_add(1, Ordering::Relaxed);
            for input in waiting {
                route_input(inner, region, input);
            }
            if let Some(link) = inner.links.get(&player) {
                link.send_reliable(ServerFrame::RegionChanged {
                    region: region.0,
                    resume_token: resume_token(inner, player, region),
                });
            }
        }
        ServerMessage::ImmigrationRefused { transfer, reason, onward } => {
            let player = transfer.player;
            let for_join = inner
                .joins
                .get(&player)
                .is_some_and(|waiter| waiter.delivered == Some((transfer.to, transfer.crossings)));
            if for_join {
                let answer = onward.clone().map_or_else(|| JoinAnswer::Refused(reason.clone()), JoinAnswer::Moved);
                answer_join(inner, player, Some(transfer.to), answer);
                // The same avatar may be on a crossing this gateway carries: that goes on below.
                if !table(inner).in_transit(player) {
                    return;
                }
            }
            // Only this crossing's entry: a newer crossing of the player may be out already.
            inner
                .crossings_sent
                .remove_if(&player, |_, sent| sent.to == transfer.to && sent.crossings == transfer.crossings);
            if let Some(onward) = onward {
                // The crossing carried a stale copy: the avatar had come to `transfer.to` and left
                // again; it goes on as it left (that crossing was lost with its gateway, or arrives
                // again, which its destination answers).
                tracing::info!(%player, to = %transfer.to, onward = %onward.to, "a crossing of a stale copy; delivering the avatar as it left instead");
                if let Some(action) = table(inner).handle_moved_on(&transfer, onward) {
                    carry_out(inner, action);
                }
                return;
            }
            // The refusal counts with the crossing's earlier failures, so one that is refused
            // every time still goes back after `SEND_BACK_AFTER` of them (docs/protocol.md §10).
            let to = transfer.to;
            if table(inner).handle_immigration_refused(Instant::now(), transfer) {
                tracing::info!(%player, %to, reason, "a crossing was refused; retrying");
                inner.timers.notify_one();
            } else {
                tracing::debug!(%player, %to, reason, "a late refusal of a crossing that is over; ignored");
            }
        }
    }
}

/// Hands `answer` to the player's waiting join, if it waits for it: the answer to a `Join`
/// (`delivered` none), or to the delivery of an avatar to `delivered`.
fn answer_join(inner: &Inner, player: PlayerId, delivered: Option<RegionId>, answer: JoinAnswer) {
    let waited = inner
        .joins
        .remove_if(&player, |_, waiter| waiter.delivered.map(|(to, _)| to) == delivered)
        .map(|(_, waiter)| waiter);
    if let Some(waiter) = waited {
        let _ = waiter.answer.send(answer);
    }
}

/// Sends a crossing avatar to the owner of its destination, or turns it back when the session
/// table says so. Nothing is dropped: the avatar and its pending inputs travel together, and an
/// avatar that cannot be sent now is tried again by the table's timer.
fn deliver_transfer(inner: &Inner, mut transfer: Transfer, delivery: Delivery) {
    if delivery == Delivery::Back {
        tracing::warn!(player = %transfer.player, to = %transfer.to, "a crossing keeps failing; sending the avatar back");
        std::mem::swap(&mut transfer.from, &mut transfer.to);
    }
    let to = transfer.to;
    let route = (inner.routes.held(to) == 0).then(|| inner.routes.owner(to)).flatten();
    match route {
        Some((server, epoch)) => {
            // The newest crossing of the player is the one to deliver again if need be.
            inner
                .crossings_sent
                .entry(transfer.player)
                .and_modify(|sent| {
                    if transfer.crossings >= sent.crossings {
                        *sent = transfer.clone();
                    }
                })
                .or_insert_with(|| transfer.clone());
            send_upstream(inner, server, GatewayMessage::Immigrate { epoch, transfer });
        }
        None => {
            table(inner).handle_unroutable(Instant::now(), transfer);
            inner.timers.notify_one();
        }
    }
}

/// Sends a state update: a datagram (quinn-proto drops the oldest queued when the connection's
/// small buffer is full: latest wins), or on the reliable stream when it does not fit in one or
/// the peer takes no datagrams. The plane decides and counts.
fn send_update(inner: &Inner, link: &PlayerLink, update: StateUpdate) {
    inner.plane.send(Command::Update { to: link.connection, update });
}
