//! A region: one world plus the engines that advance it, ticked at a fixed rate.
//!
//! # One tick, in order
//! 1. inputs: every player's next-in-sequence inputs, players in entity order ([`Sessions`]);
//! 2. scripts: timers due at this tick, in (due, entity, id) order ([`ScriptEngine`]);
//! 3. the game's own systems ([`RegionLogic::tick`]);
//! 4. physics: the game's edits applied, one step, moved bodies written back ([`PhysicsEngine`]);
//! 5. the tick counter advances.
//!
//! Everything that step reads or writes is world state or derived from it, and every step is
//! deterministic, so a region restored from archives continues as the original would have.
//!
//! # What it does not do
//! It owns no thread, socket or timer: [`TickSchedule`] says when ticks are due and a driver (the
//! sample server's loop, or the handoff driver) calls [`Region::tick`]. The game's [`RegionLogic`]
//! value must keep no state that matters outside the world (configuration and caches only), or that
//! state would not migrate.

use std::time::{Duration, Instant};

use baton_wire::{PlayerId, PlayerInput, RegionId};

use crate::component::{Registry, RegistryError};
use crate::events::{self, TickFacts};
use crate::physics::{Body, BuiltEngine, EngineBuild, PhysicsConfig, PhysicsEngine, PhysicsStepStats};
use crate::scripts::{Script, ScriptBindings, ScriptConfig, ScriptEngine, ScriptError};
use crate::sessions::{InputOutcome, PendingInput, PlayerSession, ReadyInput, SessionError, Sessions};
use crate::world::{EntityId, World, WorldError};

/// The game side of a region.
///
/// Under `baton-runtime` a region's logic lives on the region's thread and, once the region is
/// done there (handed off, stopped), is dropped with the region on the host's low-priority reaper
/// thread some time later (on the region's own thread when four regions wait there already), or
/// not at all should the process exit first: a `Drop` of the logic must not be what persists
/// anything.
pub trait RegionLogic: ScriptBindings + Send {
    /// Registers the game's component types (the SDK's own are registered already).
    fn register(&self, registry: &mut Registry) -> Result<(), RegistryError>;
    /// Loads script modules and other assets. Runs once per process, before any state arrives, so a
    /// pre-warmed handoff target has done it before the handoff starts.
    fn load_assets(&mut self, scripts: &mut ScriptEngine) -> Result<(), ScriptError>;
    /// Applies one player input to the world.
    fn apply_input(&mut self, world: &mut World, input: &ReadyInput);
    /// Runs the game's systems for one tick.
    fn tick(&mut self, world: &mut World);

    /// Creates the avatar of a player joining this region for the first time (a player who has a
    /// session here already keeps it). The default refuses: the game must say how avatars look.
    fn spawn_avatar(&mut self, world: &mut World, player: PlayerId) -> Result<EntityId, EntryError> {
        let _ = (world, player);
        Err(EntryError::NoAvatars)
    }

    /// Called once before the [`RegionLogic::player_view`]s of a tick, to build caches (e.g. a
    /// spatial index) they share.
    fn prepare_views(&mut self, world: &World) {
        let _ = world;
    }

    /// Writes the state update a player gets after a tick (its view of the world) into `out`;
    /// leaving `out` empty sends none.
    fn player_view(&self, world: &World, avatar: EntityId, out: &mut Vec<u8>) {
        let _ = (world, avatar, out);
    }

    /// Where the avatar stands relative to this region's borders: the neighbour it has crossed
    /// into, if any, and the neighbours whose border is within `view_distance`.
    fn avatar_location(&self, world: &World, region: RegionId, avatar: EntityId, view_distance: f32) -> AvatarLocation {
        let _ = (world, region, avatar, view_distance);
        AvatarLocation::default()
    }

    /// Adjusts an avatar that just arrived from `from` (e.g. into this region's coordinates).
    fn arrived(&mut self, world: &mut World, region: RegionId, avatar: EntityId, from: RegionId) {
        let _ = (world, region, avatar, from);
    }

    /// The regions that share a border with `region`.
    fn neighbours(&self, region: RegionId) -> Vec<RegionId> {
        let _ = region;
        Vec::new()
    }

    /// Writes the view of this region's objects within `view_distance` of its border with
    /// `toward` into `out` (sent to players of `toward` standing near that border).
    fn border_view(&self, world: &World, region: RegionId, toward: RegionId, view_distance: f32, out: &mut Vec<u8>) {
        let _ = (world, region, toward, view_distance, out);
    }
}

/// Where an avatar stands relative to its region's borders.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AvatarLocation {
    /// The neighbour the avatar has walked into.
    pub crossed_into: Option<RegionId>,
    /// Neighbours whose border is within the view distance.
    pub near: Vec<RegionId>,
}

/// A player's state update produced after a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlayerUpdate {
    /// The player.
    pub player: PlayerId,
    /// Its last applied input.
    pub last_applied: u64,
    /// The game's view.
    pub payload: Vec<u8>,
}

/// An avatar leaving its region across a border, with everything needed to continue elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emigrant {
    /// The player.
    pub player: PlayerId,
    /// The neighbour it enters.
    pub to: RegionId,
    /// The last input applied here.
    pub last_applied: u64,
    /// Inputs received here and not applied, in order.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// The avatar entity without its session ([`crate::codec::encode_bundle`]).
    pub avatar: Vec<u8>,
    /// Borders the avatar has crossed, this one included ([`PlayerSession::crossings`]).
    pub crossings: u64,
}

/// How long a region keeps an avatar that left it across a border ([`DepartedAvatar`]): longer
/// than a gateway takes to notice it died plus the resume grace, the longest a player whose
/// crossing was lost with its gateway can take to come back.
pub const DEPARTED_KEEP: Duration = Duration::from_secs(120);

/// An avatar that left the region across a border, kept on an entity of its own for
/// [`DEPARTED_KEEP`] after it left. A crossing travels through the player's gateway; if that
/// gateway dies with the avatar on its way, this is the only copy left. So a `Join` of a player
/// who is not here but left from here is answered with it ([`Region::departed`]: the gateway
/// delivers it on), and a copy of the avatar arriving here with fewer crossings than this one is
/// stale: [`Region::immigrate`] answers with this one instead.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
#[component(name = "baton.departed_avatar")]
pub struct DepartedAvatar {
    /// The player.
    pub player: u64,
    /// The region it went to.
    pub to: u64,
    /// The last input applied here.
    pub last_applied: u64,
    /// Inputs received here and not applied, in order.
    pub pending: Vec<PendingInput>,
    /// The avatar entity without its session ([`crate::codec::encode_bundle`]).
    pub avatar: Vec<u8>,
    /// Borders the avatar had crossed, this one included.
    pub crossings: u64,
    /// The tick it left in.
    pub left_at_tick: u64,
}

impl DepartedAvatar {
    fn emigrant(&self) -> Emigrant {
        Emigrant {
            player: PlayerId(self.player),
            to: RegionId(self.to),
            last_applied: self.last_applied,
            pending: self.pending.iter().map(|input| (input.seq, input.payload.clone())).collect(),
            avatar: self.avatar.clone(),
            crossings: self.crossings,
        }
    }
}

/// What became of an avatar arriving across a border ([`Region::immigrate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Immigration {
    /// The avatar arrived now; the player's last applied input.
    Arrived(u64),
    /// The avatar had arrived before (this is the same crossing delivered again); the player's
    /// last applied input.
    Here(u64),
    /// The avatar arriving is a stale copy: the live one came here and left again; here it is
    /// as it left.
    MovedOn(Emigrant),
}

/// Settings of a region.
#[derive(Clone, Copy, Debug)]
pub struct RegionConfig {
    /// Ticks per second.
    pub tick_rate_hz: u32,
    /// Script limits.
    pub scripts: ScriptConfig,
    /// Physics settings (its timestep is set from the tick rate).
    pub physics: PhysicsConfig,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig { tick_rate_hz: 30, scripts: ScriptConfig::default(), physics: PhysicsConfig::default() }
    }
}

impl RegionConfig {
    /// The tick interval.
    #[must_use]
    pub fn tick_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.tick_rate_hz.max(1)))
    }
}

/// Why a player could not enter a region (joining, or arriving across a border). The gateway
/// passes the message on to the player's client as the reason.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The game does not create avatars ([`RegionLogic::spawn_avatar`] is not implemented).
    #[error("this region does not take players")]
    NoAvatars,
    /// The game refused the player.
    #[error("the game refused the player: {0}")]
    Refused(String),
    /// The avatar's entity could not be created.
    #[error("creating the avatar: {0}")]
    World(#[from] WorldError),
    /// The player's session could not be opened.
    #[error("opening the session: {0}")]
    Session(#[from] SessionError),
    /// A crossing avatar's archive does not decode.
    #[error("the avatar of player {player} is invalid: {error}")]
    InvalidAvatar {
        /// The player.
        player: PlayerId,
        /// What is wrong with it.
        error: crate::codec::CodecError,
    },
}

/// Errors from setting a region up.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// A component type could not be registered.
    #[error("registering component types: {0}")]
    Registry(#[from] RegistryError),
    /// Assets (script modules) failed to load.
    #[error("loading assets: {0}")]
    Assets(#[from] ScriptError),
    /// The configuration is unusable.
    #[error("invalid region configuration: {0}")]
    Config(String),
}

/// What one tick did.
#[derive(Clone, Debug, Default)]
pub struct TickReport {
    /// The tick number completed.
    pub tick: u64,
    /// Inputs applied, in order.
    pub applied: Vec<(PlayerId, u64)>,
    /// Script calls made.
    pub script_calls: u64,
    /// Scripts stopped this tick.
    pub script_faults: u64,
    /// Physics counts.
    pub physics: PhysicsStepStats,
    /// Time the tick took.
    pub duration: Duration,
}

/// A running region.
pub struct Region<L: RegionLogic> {
    id: RegionId,
    config: RegionConfig,
    world: World,
    sessions: Sessions,
    scripts: ScriptEngine,
    physics: PhysicsEngine,
    logic: L,
    late_ticks: u64,
}

/// The registry of the SDK's own components plus the game's.
pub fn region_registry(logic: &dyn RegionLogic) -> Result<Registry, RegistryError> {
    let mut registry = Registry::new();
    registry.register::<PlayerSession>()?;
    registry.register::<DepartedAvatar>()?;
    registry.register::<Script>()?;
    registry.register::<Body>()?;
    logic.register(&mut registry)?;
    Ok(registry)
}

impl<L: RegionLogic> Region<L> {
    /// A region with an empty world; assets are loaded now.
    pub fn new(id: RegionId, mut logic: L, config: RegionConfig) -> Result<Region<L>, RegionError> {
        if config.tick_rate_hz == 0 || config.tick_rate_hz > 1000 {
            return Err(RegionError::Config(format!("tick rate {} Hz is outside 1..=1000", config.tick_rate_hz)));
        }
        let registry = region_registry(&logic)?;
        let mut scripts = ScriptEngine::new(config.scripts);
        logic.load_assets(&mut scripts)?;
        let mut physics_config = config.physics;
        physics_config.timestep = config.tick_interval().as_secs_f32();
        let mut world = World::new(registry);
        let mut physics = PhysicsEngine::new(physics_config);
        physics.rebuild(&mut world);
        Ok(Region { id, config, world, sessions: Sessions::default(), scripts, physics, logic, late_ticks: 0 })
    }

    /// The region's id.
    #[must_use]
    pub fn id(&self) -> RegionId {
        self.id
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &RegionConfig {
        &self.config
    }

    /// The world.
    #[must_use]
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The world, for the game to populate or edit between ticks.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// The game logic.
    pub fn logic_mut(&mut self) -> &mut L {
        &mut self.logic
    }

    /// Players in the region.
    #[must_use]
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Records that a tick started more than half an interval late (the driver knows; the region
    /// keeps the count for reports).
    pub fn note_late_tick(&mut self) {
        self.late_ticks += 1;
    }

    /// Ticks this instance started more than half an interval late.
    #[must_use]
    pub fn late_ticks(&self) -> u64 {
        self.late_ticks
    }

    /// The physics engine (for counts).
    #[must_use]
    pub fn physics(&self) -> &PhysicsEngine {
        &self.physics
    }

    /// Attaches a script to an entity and runs its `init`.
    pub fn attach_script(&mut self, entity: EntityId, module: &str, seed: u64) -> Result<(), ScriptError> {
        self.scripts.attach(&mut self.world, &mut self.logic, entity, module, seed)
    }

    /// Adds a player whose avatar is `avatar`.
    pub fn join(&mut self, player: PlayerId, avatar: EntityId) -> Result<(), SessionError> {
        self.sessions.join(&mut self.world, player, avatar)
    }

    /// Removes a player; returns the avatar and the session state.
    pub fn leave(&mut self, player: PlayerId) -> Option<(EntityId, PlayerSession)> {
        self.sessions.leave(&mut self.world, player)
    }

    /// Lets `player` in: a player with a session here keeps it, anyone else gets a new avatar from
    /// [`RegionLogic::spawn_avatar`]. Returns the last input applied for the player.
    pub fn join_player(&mut self, player: PlayerId) -> Result<u64, EntryError> {
        if let Some(session) = self.session_of(player) {
            return Ok(session.last_applied);
        }
        let avatar = self.logic.spawn_avatar(&mut self.world, player)?;
        self.sessions.join(&mut self.world, player, avatar)?;
        Ok(0)
    }

    /// Removes `player` and despawns its avatar.
    pub fn remove_player(&mut self, player: PlayerId) -> bool {
        match self.sessions.leave(&mut self.world, player) {
            Some((avatar, _)) => {
                self.world.despawn(avatar);
                true
            }
            None => false,
        }
    }

    /// The session of `player`, if it is here.
    #[must_use]
    pub fn session_of(&self, player: PlayerId) -> Option<&PlayerSession> {
        let avatar = self.sessions.avatar_of(player)?;
        self.world.get::<PlayerSession>(avatar)
    }

    /// Every player's state update ([`RegionLogic::player_view`]), in entity order.
    #[must_use]
    pub fn player_updates(&mut self) -> Vec<PlayerUpdate> {
        self.logic.prepare_views(&self.world);
        let mut updates = Vec::new();
        for (avatar, session) in self.world.iter::<PlayerSession>() {
            let mut payload = Vec::new();
            self.logic.player_view(&self.world, avatar, &mut payload);
            if !payload.is_empty() {
                updates.push(PlayerUpdate {
                    player: PlayerId(session.player),
                    last_applied: session.last_applied,
                    payload,
                });
            }
        }
        updates
    }

    /// Players within `view_distance` of each neighbour's border: `(neighbour, players)` for
    /// every neighbour.
    #[must_use]
    pub fn players_near_borders(&self, view_distance: f32) -> Vec<(RegionId, Vec<PlayerId>)> {
        let mut near: Vec<(RegionId, Vec<PlayerId>)> =
            self.logic.neighbours(self.id).into_iter().map(|neighbour| (neighbour, Vec::new())).collect();
        for (avatar, session) in self.world.iter::<PlayerSession>() {
            for neighbour in self.logic.avatar_location(&self.world, self.id, avatar, view_distance).near {
                if let Some((_, players)) = near.iter_mut().find(|(region, _)| *region == neighbour) {
                    players.push(PlayerId(session.player));
                }
            }
        }
        near
    }

    /// The view of objects near the border with each neighbour: `(neighbour, view)`.
    #[must_use]
    pub fn border_views(&self, view_distance: f32) -> Vec<(RegionId, Vec<u8>)> {
        self.logic
            .neighbours(self.id)
            .into_iter()
            .map(|neighbour| {
                let mut view = Vec::new();
                self.logic.border_view(&self.world, self.id, neighbour, view_distance, &mut view);
                (neighbour, view)
            })
            .collect()
    }

    /// Takes every avatar that has crossed a border out of the region (session, pending inputs and
    /// entity) and returns them to be delivered to their new regions.
    /// Only players for whom `may_leave` is true are taken (e.g. those a gateway can re-route).
    pub fn take_emigrants(&mut self, may_leave: impl Fn(PlayerId) -> bool) -> Vec<Emigrant> {
        let crossing: Vec<(EntityId, PlayerId, RegionId)> = self
            .world
            .iter::<PlayerSession>()
            .filter_map(|(avatar, session)| {
                if !may_leave(PlayerId(session.player)) {
                    return None;
                }
                let to = self.logic.avatar_location(&self.world, self.id, avatar, 0.0).crossed_into?;
                (to != self.id).then_some((avatar, PlayerId(session.player), to))
            })
            .collect();
        let session_id = self.world.registry().id_of::<PlayerSession>();
        let mut emigrants = Vec::with_capacity(crossing.len());
        for (avatar, player, to) in crossing {
            let exclude: Vec<_> = session_id.into_iter().collect();
            let bundle = match crate::codec::encode_bundle(&self.world, avatar, &exclude) {
                Ok(bundle) => bundle,
                Err(error) => {
                    tracing::error!(region = %self.id, %player, %error, "cannot encode a crossing avatar; it stays");
                    continue;
                }
            };
            let Some((_, session)) = self.sessions.leave(&mut self.world, player) else { continue };
            self.world.despawn(avatar);
            events::border_crossed(self.id, to, player);
            let emigrant = Emigrant {
                player,
                to,
                last_applied: session.last_applied,
                pending: session.pending.into_iter().map(|input| (input.seq, input.payload)).collect(),
                avatar: bundle.to_vec(),
                crossings: session.crossings + 1,
            };
            self.keep_departed(&emigrant);
            emigrants.push(emigrant);
        }
        emigrants
    }

    /// Takes in an avatar that crossed from `from`: validates and spawns its entity, opens its
    /// session where `from` left it and queues its pending inputs.
    ///
    /// Of two copies of one avatar, the one with more crossings is the live one: an arrival with
    /// no more crossings than the player's session here was delivered before (it is here); one
    /// with more replaces the session's avatar (a copy restored from state taken before the
    /// avatar left, after a failover); and one with fewer crossings than the avatar had when it
    /// last left here ([`DepartedAvatar`]) is stale: the answer is [`Immigration::MovedOn`] with
    /// the avatar as it left.
    pub fn immigrate(&mut self, from: RegionId, emigrant: &Emigrant) -> Result<Immigration, EntryError> {
        if let Some((entity, departed)) = self.departed_entry(emigrant.player) {
            if departed.crossings > emigrant.crossings {
                return Ok(Immigration::MovedOn(departed.emigrant()));
            }
            // It comes back (or a crossing turned back arrives where it started).
            self.world.despawn(entity);
        }
        if let Some(session) = self.session_of(emigrant.player) {
            if session.crossings >= emigrant.crossings {
                return Ok(Immigration::Here(session.last_applied));
            }
            self.remove_player(emigrant.player);
        }
        let avatar =
            crate::codec::apply_bundle(&mut self.world, &emigrant.avatar, crate::codec::DecodeLimits::default())
                .map_err(|error| EntryError::InvalidAvatar { player: emigrant.player, error })?;
        if let Err(error) =
            self.sessions.join_at(&mut self.world, emigrant.player, avatar, emigrant.last_applied, emigrant.crossings)
        {
            self.world.despawn(avatar);
            return Err(error.into());
        }
        for (seq, payload) in &emigrant.pending {
            let _ = self
                .sessions
                .submit(&mut self.world, PlayerInput { player: emigrant.player, seq: *seq, payload: payload.clone() });
        }
        self.logic.arrived(&mut self.world, self.id, avatar, from);
        Ok(Immigration::Arrived(emigrant.last_applied))
    }

    /// The avatar of `player` as it last left this region across a border, if the player has no
    /// session here and it left less than [`DEPARTED_KEEP`] ago.
    #[must_use]
    pub fn departed(&self, player: PlayerId) -> Option<Emigrant> {
        if self.sessions.avatar_of(player).is_some() {
            return None;
        }
        self.departed_entry(player).map(|(_, departed)| departed.emigrant())
    }

    fn departed_entry(&self, player: PlayerId) -> Option<(EntityId, &DepartedAvatar)> {
        self.world.iter::<DepartedAvatar>().find(|(_, departed)| departed.player == player.0)
    }

    /// Keeps `emigrant` as the player's one [`DepartedAvatar`].
    fn keep_departed(&mut self, emigrant: &Emigrant) {
        if let Some((entity, _)) = self.departed_entry(emigrant.player) {
            self.world.despawn(entity);
        }
        let departed = DepartedAvatar {
            player: emigrant.player.0,
            to: emigrant.to.0,
            last_applied: emigrant.last_applied,
            pending: emigrant
                .pending
                .iter()
                .map(|(seq, payload)| PendingInput { seq: *seq, payload: payload.clone() })
                .collect(),
            avatar: emigrant.avatar.clone(),
            crossings: emigrant.crossings,
            left_at_tick: self.world.tick(),
        };
        let entity = self.world.spawn();
        if let Err(error) = self.world.insert(entity, departed) {
            self.world.despawn(entity);
            tracing::error!(region = %self.id, player = %emigrant.player, %error, "cannot keep a departed avatar");
        }
    }

    /// Forgets the avatar `player` left with, if kept: the player left the game for good, and a
    /// later session of it must not find it.
    pub fn forget_departed_of(&mut self, player: PlayerId) {
        if let Some((entity, _)) = self.departed_entry(player) {
            self.world.despawn(entity);
        }
    }

    /// Forgets the avatars that left more than [`DEPARTED_KEEP`] ago.
    pub fn forget_departed(&mut self) {
        let keep_ticks = DEPARTED_KEEP.as_secs() * u64::from(self.config.tick_rate_hz);
        let now = self.world.tick();
        let expired: Vec<EntityId> = self
            .world
            .iter::<DepartedAvatar>()
            .filter(|(_, departed)| departed.left_at_tick + keep_ticks <= now)
            .map(|(entity, _)| entity)
            .collect();
        for entity in expired {
            self.world.despawn(entity);
        }
    }

    /// Queues a player's input for the next tick.
    pub fn submit_input(&mut self, input: PlayerInput) -> Result<InputOutcome, SessionError> {
        let player = input.player;
        let outcome = self.sessions.submit(&mut self.world, input);
        match &outcome {
            Ok(InputOutcome::Duplicate) => events::input_refused(self.id, player, "duplicate"),
            Err(error) => events::input_refused(self.id, player, refusal_reason(error)),
            Ok(InputOutcome::Queued | InputOutcome::Early) => {}
        }
        outcome
    }

    /// `player`'s client no longer has its inputs up to `through` (see
    /// [`Sessions::skip`](crate::sessions::Sessions::skip)): how many of them this region lacked,
    /// now counted lost.
    pub fn skip_inputs(&mut self, player: PlayerId, through: u64) -> Result<u64, SessionError> {
        let lost = self.sessions.skip(&mut self.world, player, through)?;
        if lost > 0 {
            events::inputs_lost(self.id, player, lost, through);
        }
        Ok(lost)
    }

    /// Takes every player input received but not applied yet out of the queues (see
    /// [`Sessions::take_pending`](crate::sessions::Sessions::take_pending)).
    pub fn take_pending_inputs(&mut self) -> Vec<PlayerInput> {
        self.sessions.take_pending(&mut self.world)
    }

    /// Rebuilds every engine cache from the world. Call after the world was replaced or restored
    /// from archives, before the first tick.
    pub fn rebuild_caches(&mut self) {
        self.read_sessions_and_timers();
        self.physics.rebuild(&mut self.world);
    }

    /// The sessions index and the script schedule, read from the world.
    fn read_sessions_and_timers(&mut self) {
        self.sessions = Sessions::from_world(&self.world);
        self.scripts.rebuild(&self.world);
    }

    /// The region becomes a hot standby: its world follows an owner's and it never ticks until it
    /// is promoted, which rebuilds the engine caches ([`Region::rebuild_caches`]). Its engines stop
    /// reading the world's changes meanwhile (nothing would read them, and the journal would keep
    /// them all).
    pub fn stand_by(&mut self) {
        self.physics.stop_tracking(&mut self.world);
    }

    /// Keeps the engines of a region whose world is being received (a handoff target, after the
    /// snapshot) in step with it, so that taking the region over costs only the last changes. The
    /// first call returns the physics engine's build, for the driver to run away from this thread
    /// and hand to [`Region::install_engine`]; later ones bring the installed engine up to the
    /// world (see [`PhysicsEngine::start_following`]).
    pub fn follow_received(&mut self) -> Option<EngineBuild> {
        if self.physics.is_following() {
            self.physics.follow(&mut self.world);
            None
        } else {
            Some(self.physics.start_following(&mut self.world))
        }
    }

    /// Installs the physics engine built for [`Region::follow_received`] and brings it up to the
    /// world. Returns whether it was installed (a stale build is dropped), i.e. whether a take-over
    /// now costs only the changes since.
    pub fn install_engine(&mut self, built: BuiltEngine) -> bool {
        self.physics.install(&mut self.world, built)
    }

    /// Makes the engine caches current for a received world the region now owns: the physics
    /// engine that followed it takes the last changes (or is built now, if it did not follow), the
    /// sessions and script timers are read from the world. Call before the first tick.
    pub fn take_over_received(&mut self) {
        self.read_sessions_and_timers();
        self.physics.finish_following(&mut self.world);
    }

    /// Runs one tick.
    pub fn tick(&mut self) -> TickReport {
        let started = Instant::now();
        let _span = tracing::trace_span!("region_tick", region = %self.id, tick = self.world.tick() + 1).entered();
        let ready = self.sessions.take_ready(&mut self.world);
        for input in &ready {
            self.logic.apply_input(&mut self.world, input);
        }
        let script_stats = self.scripts.run_due(&mut self.world, &mut self.logic);
        self.logic.tick(&mut self.world);
        let physics = self.physics.step(&mut self.world);
        let tick = self.world.tick() + 1;
        self.world.set_tick(tick);
        self.world.end_tick_housekeeping();
        let duration = started.elapsed();
        events::tick_completed(&TickFacts {
            region: self.id,
            tick,
            duration,
            entities: self.world.entity_count(),
            inputs_applied: ready.len() as u64,
            script_calls: script_stats.calls,
            awake_bodies: physics.awake,
        });
        TickReport {
            tick,
            applied: ready.iter().map(|input| (input.player, input.seq)).collect(),
            script_calls: script_stats.calls,
            script_faults: script_stats.faults,
            physics,
            duration,
        }
    }
}

fn refusal_reason(error: &SessionError) -> &'static str {
    match error {
        SessionError::UnknownPlayer(_) => "unknown_player",
        SessionError::AlreadyJoined(_) => "already_joined",
        SessionError::PayloadTooLarge(_) => "payload_too_large",
        SessionError::ZeroSequence => "zero_sequence",
        SessionError::QueueFull(_) => "queue_full",
        SessionError::World(_) => "world",
    }
}

/// When ticks are due, for a driver that sleeps between them.
///
/// Ticks are scheduled on a fixed grid (`start + n * interval`), so a late tick does not push the
/// following ones back; a tick more than a whole interval late is reported, and the grid skips
/// ahead rather than running a burst of catch-up ticks.
#[derive(Clone, Debug)]
pub struct TickSchedule {
    interval: Duration,
    next_due: Instant,
}

/// How a tick's start related to its due time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickTiming {
    /// How late the tick started.
    pub late_by: Duration,
    /// Ticks skipped because the loop fell more than an interval behind.
    pub skipped: u64,
}

impl TickSchedule {
    /// A schedule whose first tick is due at `start`.
    #[must_use]
    pub fn new(interval: Duration, start: Instant) -> TickSchedule {
        TickSchedule { interval, next_due: start }
    }

    /// When the next tick is due.
    #[must_use]
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Records that a tick starts at `now` and moves the schedule to the following one.
    pub fn start_tick(&mut self, now: Instant) -> TickTiming {
        let late_by = now.saturating_duration_since(self.next_due);
        let mut skipped = 0;
        self.next_due += self.interval;
        while self.next_due + self.interval <= now {
            self.next_due += self.interval;
            skipped += 1;
        }
        TickTiming { late_by, skipped }
    }
}

/// A tiny game whose avatars cross into the region their `Heading` names (tests of crossings).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_logic {
    use super::*;

    /// Where a test avatar walks: into the region numbered `into` (0: it stays).
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.heading")]
    pub(crate) struct Heading {
        into: u64,
    }

    /// Avatars that cross into the region their `Heading` names.
    pub(crate) struct Walkers;

    impl ScriptBindings for Walkers {
        fn read(&self, _world: &World, _entity: EntityId, _slots: &mut [f32; crate::scripts::PROPERTY_SLOTS]) {}
        fn write(&mut self, _world: &mut World, _entity: EntityId, _slot: usize, _value: f32) {}
    }

    impl RegionLogic for Walkers {
        fn register(&self, registry: &mut Registry) -> Result<(), RegistryError> {
            registry.register::<Heading>().map(|_| ())
        }
        fn load_assets(&mut self, _scripts: &mut ScriptEngine) -> Result<(), ScriptError> {
            Ok(())
        }
        fn apply_input(&mut self, _world: &mut World, _input: &ReadyInput) {}
        fn tick(&mut self, _world: &mut World) {}
        fn spawn_avatar(&mut self, world: &mut World, _player: PlayerId) -> Result<EntityId, EntryError> {
            let avatar = world.spawn();
            world.insert(avatar, Heading { into: 0 })?;
            Ok(avatar)
        }
        fn avatar_location(&self, world: &World, region: RegionId, avatar: EntityId, _view: f32) -> AvatarLocation {
            let crossed_into = world
                .get::<Heading>(avatar)
                .filter(|heading| heading.into != 0 && heading.into != region.0)
                .map(|heading| RegionId(heading.into));
            AvatarLocation { crossed_into, near: Vec::new() }
        }
        fn arrived(&mut self, world: &mut World, _region: RegionId, avatar: EntityId, _from: RegionId) {
            if let Some(mut heading) = world.get_mut::<Heading>(avatar) {
                heading.into = 0;
            }
        }
    }

    pub(crate) const A: RegionId = RegionId(1);
    pub(crate) const B: RegionId = RegionId(2);
    pub(crate) const PLAYER: PlayerId = PlayerId(7);

    pub(crate) fn region(id: RegionId) -> Region<Walkers> {
        let config = RegionConfig { tick_rate_hz: 1, ..RegionConfig::default() };
        Region::new(id, Walkers, config).unwrap()
    }

    /// Adds `count` entities that stay where they are (to give a region's snapshot some size).
    pub(crate) fn crowd(region: &mut Region<Walkers>, count: usize) {
        for _ in 0..count {
            let entity = region.world_mut().spawn();
            region.world_mut().insert(entity, Heading { into: 0 }).unwrap();
        }
    }

    /// The player's avatar walks from `region` into `into`; returns it as it left.
    pub(crate) fn walk(region: &mut Region<Walkers>, into: RegionId) -> Emigrant {
        let avatar = region.sessions().avatar_of(PLAYER).unwrap();
        region.world_mut().get_mut::<Heading>(avatar).unwrap().into = into.0;
        let mut leaving = region.take_emigrants(|_| true);
        assert_eq!(leaving.len(), 1);
        leaving.remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::test_logic::{A, B, PLAYER, Walkers, region, walk};
    use super::*;

    #[test]
    fn schedule_keeps_a_fixed_grid_and_skips_when_far_behind() {
        let start = Instant::now();
        let interval = Duration::from_millis(10);
        let mut schedule = TickSchedule::new(interval, start);
        let timing = schedule.start_tick(start + Duration::from_millis(3));
        assert_eq!(timing, TickTiming { late_by: Duration::from_millis(3), skipped: 0 });
        assert_eq!(schedule.next_due(), start + interval);
        // 35 ms late: the slots at 20 and 30 ms are skipped rather than run as a burst; the slot at
        // 40 ms is still the latest one due, so it runs next.
        let timing = schedule.start_tick(start + Duration::from_millis(45));
        assert_eq!(timing.late_by, Duration::from_millis(35));
        assert_eq!(timing.skipped, 2);
        assert_eq!(schedule.next_due(), start + Duration::from_millis(40));
    }

    fn sessions(region: &Region<Walkers>) -> Vec<PlayerSession> {
        region.world().iter::<PlayerSession>().map(|(_, session)| session.clone()).collect()
    }

    #[test]
    fn an_avatar_whose_crossing_was_lost_is_kept_where_it_left_and_taken_in_once() {
        let (mut a, mut b) = (region(A), region(B));
        assert_eq!(a.join_player(PLAYER).unwrap(), 0);
        a.submit_input(PlayerInput { player: PLAYER, seq: 1, payload: vec![1] }).unwrap();
        a.tick();
        let left = walk(&mut a, B);
        assert_eq!((left.crossings, left.last_applied), (1, 1));
        assert!(a.session_of(PLAYER).is_none());
        // The crossing never reached `B` (its gateway died): `A` still has the avatar to hand out.
        assert_eq!(a.departed(PLAYER), Some(left.clone()));
        assert_eq!(b.immigrate(A, &left).unwrap(), Immigration::Arrived(1));
        let avatar = b.sessions().avatar_of(PLAYER).unwrap();
        let entities = b.world().entity_count();
        // Delivered again (the crossing's gateway did deliver it before it died): the same avatar.
        assert_eq!(b.immigrate(A, &left).unwrap(), Immigration::Here(1));
        assert_eq!(b.sessions().avatar_of(PLAYER), Some(avatar), "not replaced");
        assert_eq!(b.world().entity_count(), entities);
        assert_eq!(sessions(&b).len(), 1);
        assert_eq!(sessions(&b)[0].crossings, 1);
        assert_eq!(b.departed(PLAYER), None, "the avatar is here");
    }

    #[test]
    fn a_stale_copy_of_an_avatar_that_left_again_is_answered_with_the_avatar_as_it_left() {
        let (mut a, mut b) = (region(A), region(B));
        a.join_player(PLAYER).unwrap();
        let first = walk(&mut a, B);
        b.immigrate(A, &first).unwrap();
        // Back towards `A`, and this crossing is lost: `A` only has the older departure.
        let second = walk(&mut b, A);
        assert_eq!(second.crossings, 2);
        assert_eq!(a.departed(PLAYER), Some(first.clone()), "what a join at A hands out");
        assert_eq!(b.immigrate(A, &first).unwrap(), Immigration::MovedOn(second.clone()));
        assert!(sessions(&b).is_empty(), "the stale copy was not taken in");
        assert_eq!(a.immigrate(B, &second).unwrap(), Immigration::Arrived(0));
        assert_eq!(a.departed(PLAYER), None);
        assert_eq!(a.world().iter::<DepartedAvatar>().count(), 0, "the older departure is forgotten");
        assert_eq!(sessions(&a)[0].crossings, 2);
    }

    #[test]
    fn an_avatar_with_more_crossings_replaces_an_older_copy_of_it() {
        let (mut a, mut b) = (region(A), region(B));
        a.join_player(PLAYER).unwrap();
        a.submit_input(PlayerInput { player: PLAYER, seq: 1, payload: vec![1] }).unwrap();
        a.tick();
        let left = walk(&mut a, B);
        // `B` holds an older copy (a fresh avatar, or state restored from before the avatar left).
        b.join_player(PLAYER).unwrap();
        assert_eq!(b.immigrate(A, &left).unwrap(), Immigration::Arrived(1));
        assert_eq!(sessions(&b).len(), 1);
        assert_eq!((sessions(&b)[0].crossings, sessions(&b)[0].last_applied), (1, 1));
        // A copy with fewer crossings than the session is not taken in.
        let avatar = b.sessions().avatar_of(PLAYER).unwrap();
        let older = Emigrant { crossings: 0, ..left };
        assert_eq!(b.immigrate(A, &older).unwrap(), Immigration::Here(1));
        assert_eq!(b.sessions().avatar_of(PLAYER), Some(avatar), "not replaced");
        assert_eq!(sessions(&b).len(), 1);
        assert_eq!(sessions(&b)[0].crossings, 1);
    }

    #[test]
    fn a_departed_avatar_is_kept_for_the_keep_time_then_forgotten() {
        let mut a = region(A);
        a.join_player(PLAYER).unwrap();
        walk(&mut a, B);
        let keep_ticks = DEPARTED_KEEP.as_secs();
        for _ in 0..keep_ticks - 1 {
            a.tick();
            a.forget_departed();
        }
        assert!(a.departed(PLAYER).is_some());
        a.tick();
        a.forget_departed();
        assert_eq!(a.departed(PLAYER), None);
        assert_eq!(a.world().iter::<DepartedAvatar>().count(), 0);
    }

    #[test]
    fn a_player_who_left_the_game_is_forgotten() {
        let mut a = region(A);
        a.join_player(PLAYER).unwrap();
        walk(&mut a, B);
        a.forget_departed_of(PlayerId(99));
        assert!(a.departed(PLAYER).is_some(), "another player's");
        a.forget_departed_of(PLAYER);
        assert_eq!(a.departed(PLAYER), None);
        assert_eq!(a.world().iter::<DepartedAvatar>().count(), 0);
    }

    #[test]
    fn a_player_leaving_again_keeps_one_departed_avatar() {
        let (mut a, mut b) = (region(A), region(B));
        a.join_player(PLAYER).unwrap();
        let first = walk(&mut a, B);
        b.immigrate(A, &first).unwrap();
        let back = walk(&mut b, A);
        a.immigrate(B, &back).unwrap();
        let again = walk(&mut a, B);
        assert_eq!(again.crossings, 3);
        assert_eq!(a.world().iter::<DepartedAvatar>().count(), 1);
        assert_eq!(a.departed(PLAYER), Some(again));
    }
}
