//! `RegionNode`: one region on one instance — its ticks, its players' requests and its side of a
//! handoff — as a state machine without I/O.
//!
//! Everything that can happen to the region comes in through a `handle_*` method with the time as
//! an argument (an input, a gateway's request, a handoff message, the link's loss, the authority's
//! answer, the passing of time); everything it wants done comes out of [`RegionNode::poll_output`]
//! ([`Output`]: messages for the peer, requests to the ownership authority, messages for gateways,
//! checkpoints to store, events for the operator); [`RegionNode::poll_timeout`] says when to call
//! [`RegionNode::handle_timeout`] next. It owns no socket, channel, thread or clock (it reads the
//! monotonic clock only to time its own work for reports, as the region times its ticks, never to
//! decide anything): the runtime's
//! region thread (`baton_runtime`'s `region_loop`) drives it with real time and real sockets, and
//! [`crate::handoff::testing`] drives two of them on a virtual clock over a simulated link, so the
//! in-process fault scenarios run exactly the code production runs.
//!
//! Invariants it keeps (see `docs/protocol.md`):
//! - It ticks only as the owner, never while a handoff has frozen it (§6), on a fixed grid that a
//!   target continues from the source's.
//! - Inputs and gateway requests reach the world only through the owner; what it cannot take goes
//!   back to the gateway ([`Output::Bounce`]) so it can be routed again (invariant 2).
//! - Joins, leaves and arrivals that reach a frozen region wait and are answered after the outcome
//!   (§9).
//! - Ownership changes only through the authority's compare-and-swap, asked for with
//!   [`Output::Authority`] and answered with [`RegionNode::handle_authority`].
//!
//! What it deliberately does not do: decide when to move (the coordinator does), pick the handoff's
//! id (randomness is the driver's), pace or encrypt the link, or store anything.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_wire::serve::{HandoffTicks, TickSamples};
use baton_wire::upstream::{ServerMessage, Transfer};
use baton_wire::{Epoch, PlayerId, PlayerInput, RegionId};

use crate::RegionError;
use crate::checkpoint::CheckpointInfo;
use crate::codec::Prepared;
use crate::handoff::{
    AuthorityError, EncodeJob, EncodedRound, FeedEvent, FollowerAction, FollowerPhase, HandoffPlan, HandoffSource,
    HandoffTarget, Message, Ownership, SourceAction, SourceConfig, SourcePhase, SourceStats, StandbyFeed,
    StandbyFollower, TargetAction, TargetConfig, TargetPhase,
};
use crate::physics::{BuiltEngine, EngineBuild};
use crate::region::{DEPARTED_KEEP, Emigrant, Immigration, Region, RegionLogic, TickReport, TickSchedule};
use crate::sessions::{GAP_RESEND_TICKS, GapWatch, PlayerSession, SessionError};
use crate::world::WorldDigest;

/// Identifies a gateway connection on the host.
pub type GatewayId = u64;

/// Builds a fresh, pre-warmed (empty) copy of the region, after a target discarded what it had
/// received.
pub type Rewarm<L> = Box<dyn FnMut(RegionId) -> Result<Region<L>, RegionError>>;

/// What players get from the region through the gateways.
#[derive(Clone, Copy, Debug)]
pub struct PlayerSettings {
    /// A state update goes to every player each this many ticks (1: every tick).
    pub update_every_ticks: u32,
    /// Border views and near-border player lists go out each this many ticks (0: never).
    pub border_every_ticks: u32,
    /// Players within this distance of a border see the neighbour's objects near it, in metres.
    pub border_view_distance: f32,
}

impl Default for PlayerSettings {
    fn default() -> Self {
        PlayerSettings { update_every_ticks: 1, border_every_ticks: 3, border_view_distance: 24.0 }
    }
}

/// A node's settings.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// This instance's name at the authority.
    pub name: String,
    /// This instance's cluster address (gateways are told to route to it when it takes over).
    pub address: SocketAddr,
    /// Settings of handoffs it starts.
    pub source: SourceConfig,
    /// What players get.
    pub players: PlayerSettings,
    /// A checkpoint every this many ticks while it owns the region and no handoff runs (0: never).
    pub checkpoint_every_ticks: u64,
    /// The wall clock at one instant, so events can carry Unix times that other processes compare
    /// (`(instant, microseconds since the Unix epoch)`); the node itself never reads a clock.
    pub wall_clock: (Instant, u64),
}

/// What the node does with the region when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It owns the region at `epoch` (created afresh or restored) and ticks it from `now`.
    Owner {
        /// The epoch the authority gave it.
        epoch: Epoch,
    },
    /// It is a pre-warmed slot waiting for a handoff.
    Target,
}

/// A gateway's request about a player.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayRequest {
    /// A gateway lets a player in (or back in).
    Join {
        /// The player.
        player: PlayerId,
        /// The gateway serving it.
        gateway: GatewayId,
    },
    /// A player left for good.
    Leave {
        /// The player.
        player: PlayerId,
    },
    /// A player left the game for good (its session ended): the avatar kept as departed, if any,
    /// goes (protocol.md §10).
    Forget {
        /// The player.
        player: PlayerId,
    },
    /// An avatar crossing the border into this region.
    Immigrate {
        /// The avatar.
        transfer: Transfer,
        /// The gateway serving its player.
        gateway: GatewayId,
    },
    /// The player's client no longer has its inputs up to `through` (protocol.md §9, `Skip`).
    Skip {
        /// The player.
        player: PlayerId,
        /// The last input it dropped.
        through: u64,
    },
}

/// What the node knows of the host's gateways when it ticks (the driver answers from its table).
pub trait Gateways {
    /// Whether any gateway is connected (no views are built otherwise).
    fn any(&self) -> bool;
    /// Whether a gateway serves `player` (an avatar may leave across a border only then).
    fn serves(&self, player: PlayerId) -> bool;
}

/// No gateways (tests, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoGateways;

impl Gateways for NoGateways {
    fn any(&self) -> bool {
        false
    }
    fn serves(&self, _player: PlayerId) -> bool {
        false
    }
}

/// Something that happened to the region, for its operator (or a test).
///
/// This is the in-process form, with the runtime's own types (`SourceStats`, `PathBuf`, whole
/// inputs). Its wire form is `baton_wire::serve::ServerEvent` (`baton_runtime::serve::server_event`
/// converts), kept apart so the serve protocol stays versioned while this grows.
#[derive(Clone, Debug, PartialEq)]
pub enum HostEvent {
    /// A region is hosted here and owned by this instance.
    Owning {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A handoff this host started entered a new phase.
    Phase {
        /// The region.
        region: RegionId,
        /// The source's phase.
        phase: SourcePhase,
    },
    /// A pre-warmed slot waits for `region`.
    Prepared {
        /// The region.
        region: RegionId,
    },
    /// This host's copy of `region` froze after its last tick.
    Frozen {
        /// The region.
        region: RegionId,
        /// The last tick.
        tick: u64,
        /// When that tick started, in microseconds since the Unix epoch (wall clock; comparable
        /// between processes on one host).
        last_tick_at_us: u64,
        /// The world's digest at the freeze (the one the final delta's `Freeze` carries).
        digest: WorldDigest,
    },
    /// This host took `region` over in a handoff.
    Authoritative {
        /// The region.
        region: RegionId,
        /// The new epoch.
        epoch: Epoch,
        /// The world's digest when it took over (equal to the source's at the freeze: the target
        /// checks it before it commits).
        digest: WorldDigest,
    },
    /// The first tick this host ran after taking `region` over.
    FirstTick {
        /// The region.
        region: RegionId,
        /// Its number.
        tick: u64,
        /// When it started, microseconds since the Unix epoch.
        at_us: u64,
    },
    /// This host gave `region` away.
    HandedOff {
        /// The region.
        region: RegionId,
        /// The new owner's epoch.
        epoch: Epoch,
        /// What the handoff moved and how long it froze.
        stats: SourceStats,
        /// The region thread's ticks before the handoff started and during it.
        ticks: Box<HandoffTicks>,
    },
    /// A handoff of `region` failed; the side that reports it says what it does next.
    Aborted {
        /// The region.
        region: RegionId,
        /// Who, where and why.
        reason: String,
        /// Whether this host owns the region afterwards.
        owning: bool,
    },
    /// `region` is no longer held here (after handing off and the straggler grace period); its
    /// node is done with it.
    Retired {
        /// The region.
        region: RegionId,
    },
    /// Once a second of ticks, what owning `region` costs (host agents report it to the
    /// coordinator as the host's load).
    Load {
        /// The region.
        region: RegionId,
        /// Mean tick duration over the last second, in milliseconds.
        tick_ms_mean: f64,
        /// Longest tick in it.
        tick_ms_max: f64,
        /// The tick interval (a tick's budget), in milliseconds.
        tick_budget_ms: f64,
        /// Players with a session in the region.
        players: u64,
        /// Live entities.
        entities: u64,
        /// Bytes sent to the region's hot standby since the previous report.
        standby_bytes: u64,
    },
    /// A checkpoint of `region` was stored.
    Checkpointed {
        /// The region.
        region: RegionId,
        /// The tick it holds.
        tick: u64,
        /// The owner's epoch.
        epoch: Epoch,
        /// Its size in bytes.
        bytes: u64,
        /// Where it is.
        path: PathBuf,
    },
    /// Storing a checkpoint of `region` failed (the region goes on ticking).
    CheckpointFailed {
        /// The region.
        region: RegionId,
        /// Why.
        error: String,
    },
    /// `region` was saved to the checkpoint store and is no longer hosted here.
    Stopped {
        /// The region.
        region: RegionId,
        /// The epoch it had here (a restore takes it over at the next).
        epoch: Epoch,
        /// The tick the checkpoint holds.
        tick: u64,
        /// The checkpoint's size in bytes.
        bytes: u64,
        /// Where it is.
        path: PathBuf,
        /// Inputs received but not applied, which the checkpoint does not hold.
        inputs_discarded: u64,
    },
    /// A stop of `region` was refused; it goes on here.
    StopRefused {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// This host's standby copy of `region` holds the owner's world as of `tick` (reported at the
    /// first held tick, then at most once a second).
    StandbyHolding {
        /// The region.
        region: RegionId,
        /// The epoch of the owner it follows.
        owner_epoch: Epoch,
        /// The tick it holds.
        tick: u64,
        /// Archive bytes it received so far.
        bytes: u64,
    },
    /// This host's standby copy of `region` stopped following: `detached` when it keeps what it
    /// holds for a promotion (the owner went silent), else it was discarded.
    StandbyLost {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
        /// Whether it still holds a tick it could be promoted from.
        detached: bool,
    },
    /// The owner's feed of its standby ended; the region goes on without one.
    FeedEnded {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// This host's standby took `region` over from the owner that was lost.
    Promoted {
        /// The region.
        region: RegionId,
        /// The new epoch.
        epoch: Epoch,
        /// The tick it continues from (the owner's, as the standby held it).
        tick: u64,
    },
    /// This host's standby of `region` heard nothing from the owner for `silent_ms` (several
    /// ticks: the owner sends a round every tick). A witness for the coordinator's failure
    /// detection, not a verdict.
    OwnerSilent {
        /// The region.
        region: RegionId,
        /// The epoch of the owner it follows.
        owner_epoch: Epoch,
        /// How long nothing came, in milliseconds.
        silent_ms: u64,
    },
    /// This host's standby of `region` hears its owner again after `owner_silent`.
    OwnerHeard {
        /// The region.
        region: RegionId,
    },
    /// A promotion of the standby of `region` here was refused.
    PromoteRefused {
        /// The region.
        region: RegionId,
        /// Why.
        reason: String,
    },
    /// An input reached a host that does not own the region; route it to the owner.
    InputRefused {
        /// The region.
        region: RegionId,
        /// The input.
        input: PlayerInput,
    },
    /// `player`'s inputs up to `through` were acknowledged durable, and `lost` of them are not in
    /// the state the region was restored from.
    InputsLost {
        /// The region.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// How many.
        lost: u64,
        /// The last input its client dropped.
        through: u64,
    },
}

/// What the node wants done, in order.
#[derive(Debug)]
pub enum Output {
    /// Open a handoff link to the target at `peer`; the messages after this go on it.
    Connect {
        /// The target's cluster address.
        peer: SocketAddr,
    },
    /// Send a handoff message to the peer on the current link (the driver reports a failed send
    /// with [`RegionNode::handle_link_lost`]).
    ToPeer(Message),
    /// Open a link to the hot standby at `peer` (beside any handoff link); the messages of
    /// [`Output::ToStandby`] go on it.
    ConnectStandby {
        /// The standby's cluster address.
        peer: SocketAddr,
    },
    /// Send a message to the standby (a failed send is reported with
    /// [`RegionNode::handle_standby_link_lost`]).
    ToStandby(Message),
    /// Ask the ownership authority to swap `expected` for `next`; answer with
    /// [`RegionNode::handle_authority`]. Never done by the node itself, so a slow authority never
    /// blocks the thread that drives it.
    Authority {
        /// What the authority must hold now.
        expected: Ownership,
        /// What it holds afterwards.
        next: Ownership,
        /// Whether this is a target's commit (taking the region over) rather than a source
        /// settling a frozen handoff for itself.
        commit: bool,
    },
    /// The host owns the region at `epoch` from now on (the table gateways' joins and inputs are
    /// checked against); tell every gateway with `Owning` when `announce`.
    Owned {
        /// The epoch.
        epoch: Epoch,
        /// Whether to announce it (a handoff's own messages announce the other changes).
        announce: bool,
    },
    /// The host no longer owns the region.
    NotOwned,
    /// A message for one gateway.
    ToGateway {
        /// The gateway.
        gateway: GatewayId,
        /// The message.
        message: ServerMessage,
    },
    /// Each message to the gateway serving its player.
    ToPlayers(Vec<(PlayerId, ServerMessage)>),
    /// A message for every gateway.
    Broadcast(ServerMessage),
    /// A crossing of `player` sent again (its `Emigrated`) for the gateway serving the player. If
    /// no gateway serves it on this host (its gateway's connection was lost and is back, and its
    /// `Attach` has not come yet), the host says so ([`RegionNode::handle_crossing_unsent`]) so
    /// that the player's next input sends it again, instead of the crossing waiting out the
    /// resend interval while the gateway bounces the player's inputs back here.
    CrossingAgain {
        /// The player.
        player: PlayerId,
        /// The `Emigrated`.
        message: ServerMessage,
    },
    /// `gateway` serves `player` from now on.
    Attach {
        /// The player.
        player: PlayerId,
        /// The gateway.
        gateway: GatewayId,
        /// Whether it takes the player over from a gateway already serving it here (a join, a
        /// first arrival); otherwise it only serves a player no gateway serves here (an arrival
        /// delivered again, perhaps late, by a gateway the player has left).
        take_over: bool,
    },
    /// An input the node will not apply: back to the player's gateway to be routed again (to every
    /// gateway if the host does not know the player's).
    Bounce(ServerMessage, PlayerId),
    /// A tick ran (for statistics and tests).
    Ticked(TickReport),
    /// Store this checkpoint (encoded at a tick boundary); report how it went as
    /// [`HostEvent::Checkpointed`] or [`HostEvent::CheckpointFailed`].
    StoreCheckpoint {
        /// What it holds.
        info: CheckpointInfo,
        /// The checkpoint.
        bytes: Vec<u8>,
    },
    /// Build this physics engine away from the region's thread (it takes tens of milliseconds for
    /// a real region) and answer with [`RegionNode::handle_engine_built`]: a handoff target's
    /// engine, built from the received world while the rounds go on (protocol.md §4).
    BuildEngine(EngineBuild),
    /// Encode this delta round (or piece of one) away from the region's thread ([`EncodeJob::run`])
    /// and answer with [`RegionNode::handle_encoded`]: a handoff's rounds that cannot be the final
    /// one (protocol.md §4).
    EncodeRound(EncodeJob),
    /// Save this checkpoint and stop (the old way of moving a region); answer with
    /// [`RegionNode::handle_stop_saved`].
    SaveAndStop {
        /// What it holds.
        info: CheckpointInfo,
        /// The checkpoint.
        bytes: Vec<u8>,
    },
    /// Something for the operator.
    Event(HostEvent),
    /// The node is done with the region; its driver may end.
    Finished,
}

enum State {
    /// This instance owns the region and ticks it (unless a handoff froze it).
    Owner {
        epoch: Epoch,
        schedule: TickSchedule,
        handoff: Option<HandoffSource>,
        first_tick_pending: bool,
        /// Where the current handoff goes.
        peer: Option<SocketAddr>,
        /// The feed of the region's hot standby, if it has one.
        standby: Option<Box<StandbyFeed>>,
    },
    /// Saving the region before letting it go; inputs received meanwhile wait.
    Stopping { epoch: Epoch, schedule: TickSchedule, pending: Vec<PlayerInput> },
    /// Pre-warmed, receiving or waiting.
    Target { receiver: HandoffTarget },
    /// A hot standby: follows the owner, never ticks, until promoted or discarded.
    Standby { follower: StandbyFollower, reported: Option<(Instant, u64)> },
    /// Done; the last handoff stays readable.
    Finished { handoff: Option<HandoffSource> },
}

/// One region on one instance (see the module documentation).
pub struct RegionNode<L: RegionLogic> {
    region: Region<L>,
    settings: NodeSettings,
    rewarm: Rewarm<L>,
    state: State,
    /// After a takeover the receiver stays to take stragglers the old source forwards.
    late_receiver: Option<HandoffTarget>,
    /// A committed target's taking over of the received world (its sessions, timers and engines)
    /// still to do: done once the commit's outputs are out, so that `Committed` reaches the source
    /// without waiting for it (the source counts its freeze until then), and before any handler
    /// that touches the region does anything ([`RegionNode::finish_take_over`]).
    take_over_pending: bool,
    /// Gateway requests that wait while the region is frozen (protocol.md §9).
    deferred: Vec<GatewayRequest>,
    /// Tick durations since the last load report: (ticks, total, longest).
    load_window: (u32, Duration, Duration),
    /// The ticks of the current handoff and those before it, for [`HostEvent::HandedOff`].
    tick_log: TickLog,
    /// The last tick, while the handoff has not yet done its work at it.
    handoff_tick: Option<HandoffTick>,
    /// The tick whose boundary the handoff read its round at, until that round is decided: the
    /// freeze is reported then, if the round froze the region ([`RegionNode::report_freeze`]).
    boundary_tick: Option<HandoffTick>,
    /// The last tick, while what waits for its updates to go out (a checkpoint, a standby's
    /// round) is still to do ([`RegionNode::complete_tick`]).
    tick_pending: Option<u64>,
    /// Archive bytes sent to the standby since the last [`HostEvent::Load`].
    standby_bytes: u64,
    /// What survives the loss of this instance (durable acknowledgements, protocol.md §9).
    durability: Durability,
    /// Players waiting at a gap in their inputs, to ask for them again.
    gaps: GapWatch,
    /// Per player whose avatar left, the tick its crossing was last sent out again.
    departures_resent: HashMap<PlayerId, u64>,
    /// A handoff waiting for the checkpoint taken when it was asked for (the region has a hot
    /// standby, which the handoff lets go: see [`RegionNode::handle_start_handoff`]).
    handoff_waiting: Option<WaitingHandoff>,
    reported_phase: Option<SourcePhase>,
    /// When the last snapshot chunk was encoded, for [`chunk_allowed`].
    chunk_sent_at: ChunkClock,
    outputs: VecDeque<Output>,
}

/// A tick the handoff has yet to do its work at ([`RegionNode::complete_handoff_tick`]).
#[derive(Clone, Copy, Debug)]
struct HandoffTick {
    /// The handoff it belongs to.
    handoff: crate::handoff::HandoffId,
    /// When the tick ended.
    ended: Instant,
    /// When the next tick is due.
    next_due: Instant,
    /// Its number.
    tick: u64,
    /// When it started, microseconds since the Unix epoch.
    started_us: u64,
}

/// Ticks a region without a handoff keeps, to compare a handoff's ticks with (15 s at 20 Hz).
const TICKS_KEPT: usize = 300;

/// Most ticks of one handoff kept (the last ones; 60 s at 20 Hz), so what a long handoff reports
/// stays small.
const HANDOFF_TICKS_KEPT: usize = 1200;

/// One tick as the node timed it, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TickTime {
    busy: u32,
    late: u32,
    handoff: u32,
    after: u32,
}

/// The region thread's time at each tick: the last [`TICKS_KEPT`] ticks without a handoff, and
/// the last [`HANDOFF_TICKS_KEPT`] of the current handoff up to its freeze. A handoff that commits
/// reports both ([`HostEvent::HandedOff`]): what the ticks cost up to their updates, what the
/// handoff's work after each of them took, and what the rest of the work waiting for its updates
/// took (a checkpoint, a standby's round).
#[derive(Debug, Default)]
struct TickLog {
    before: VecDeque<TickTime>,
    during: VecDeque<TickTime>,
    /// Whether the last tick recorded was one of a handoff.
    last_in_handoff: bool,
}

impl TickLog {
    fn record(&mut self, in_handoff: bool, busy: Duration, late: Duration) {
        let entry = TickTime { busy: micros_u32(busy), late: micros_u32(late), handoff: 0, after: 0 };
        self.last_in_handoff = in_handoff;
        let (log, kept) =
            if in_handoff { (&mut self.during, HANDOFF_TICKS_KEPT) } else { (&mut self.before, TICKS_KEPT) };
        if log.len() == kept {
            log.pop_front();
        }
        log.push_back(entry);
    }

    /// The handoff's work after the last tick of the handoff took `took` (more).
    fn handoff_worked(&mut self, took: Duration) {
        if let Some(last) = self.during.back_mut() {
            last.handoff = last.handoff.saturating_add(micros_u32(took));
        }
    }

    /// What waited for the last tick's updates (a checkpoint, a standby's round) took `took`.
    fn after_tick_worked(&mut self, took: Duration) {
        let last = if self.last_in_handoff { self.during.back_mut() } else { self.before.back_mut() };
        if let Some(last) = last {
            last.after = micros_u32(took);
        }
    }

    /// A handoff starts: its ticks are counted from here.
    fn handoff_started(&mut self) {
        self.during.clear();
    }

    /// The handoff committed: (before, during), and the ticks from here on count as without one.
    fn take(&mut self) -> (TickSamples, TickSamples) {
        let samples = |entries: &mut dyn Iterator<Item = TickTime>, handoff: bool| {
            let mut samples = TickSamples::default();
            for entry in entries {
                samples.busy_us.push(entry.busy);
                samples.late_us.push(entry.late);
                samples.after_us.push(entry.after);
                if handoff {
                    samples.handoff_us.push(entry.handoff);
                }
            }
            samples
        };
        let before = samples(&mut self.before.iter().copied(), false);
        let during = samples(&mut self.during.drain(..), true);
        (before, during)
    }
}

fn micros_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// When a handoff's and a standby feed's last snapshot chunks were encoded.
#[derive(Clone, Copy, Debug, Default)]
struct ChunkClock {
    handoff: Option<Instant>,
    feed: Option<Instant>,
}

/// Once this long has passed since a snapshot's last chunk, the next is encoded even when a tick
/// is due (protocol.md §3): a region whose ticks all run late still streams, one chunk per interval
/// (or per pass of its loop, if a pass takes longer) while the flow-control window is open, instead
/// of going silent until its target gives up. Far below the target's silence timeout (3 s), and one
/// chunk (256 KiB by default, about a millisecond to encode) per interval costs such a region little.
pub const MIN_CHUNK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether a snapshot chunk may be encoded at `now` (protocol.md §3): in the time left before the
/// next tick is due (`next_due`), so streaming a large region does not push its ticks late; or
/// once [`MIN_CHUNK_INTERVAL`] has passed since the last one (`last`; none yet counts as passed).
fn chunk_allowed(now: Instant, next_due: Instant, last: Option<Instant>) -> bool {
    now < next_due || last.is_none_or(|at| now >= at + MIN_CHUNK_INTERVAL)
}

impl<L: RegionLogic> RegionNode<L> {
    /// A node for `region` in `role`, from `now`.
    pub fn new(region: Region<L>, role: Role, settings: NodeSettings, rewarm: Rewarm<L>, now: Instant) -> Self {
        let id = region.id();
        let interval = region.config().tick_interval();
        let mut outputs = VecDeque::new();
        let state = match role {
            Role::Owner { epoch } => {
                outputs.push_back(Output::Event(HostEvent::Owning { region: id, epoch }));
                outputs.push_back(Output::Owned { epoch, announce: true });
                State::Owner {
                    epoch,
                    schedule: TickSchedule::new(interval, now),
                    handoff: None,
                    first_tick_pending: false,
                    peer: None,
                    standby: None,
                }
            }
            Role::Target => State::Target { receiver: HandoffTarget::new(now, TargetConfig::new(&settings.name)) },
        };
        let mut node = RegionNode {
            region,
            settings,
            rewarm,
            state,
            late_receiver: None,
            take_over_pending: false,
            deferred: Vec::new(),
            departures_resent: HashMap::new(),
            handoff_waiting: None,
            load_window: (0, Duration::ZERO, Duration::ZERO),
            tick_log: TickLog::default(),
            handoff_tick: None,
            boundary_tick: None,
            tick_pending: None,
            standby_bytes: 0,
            reported_phase: None,
            chunk_sent_at: ChunkClock::default(),
            outputs,
            durability: Durability::default(),
            gaps: GapWatch::default(),
        };
        // An owner from the start holds either a fresh world or a restored checkpoint: what its
        // sessions applied was given to it (a new world has applied nothing), so nothing it
        // holds waits to be durable. Its first tick checkpoints the world (a new region is in no
        // store yet).
        if matches!(role, Role::Owner { .. }) {
            node.durability.confirmed = player_progress(node.region.world()).into_iter().collect();
            node.durability.initial = true;
        }
        node
    }

    /// A checkpoint taken at `tick` was stored (`stored`) or not, and the authority named `owner`
    /// right after (`None`: it did not answer). The inputs it holds are durable only if it was
    /// stored while this instance still owned the region at its epoch (a checkpoint of an owner
    /// that a failover replaced is older than the one the failover restored); the next updates
    /// say so. An owner at a newer epoch ends this one ([`RegionNode::handle_ownership_seen`]).
    pub fn handle_checkpoint_stored(&mut self, now: Instant, tick: u64, stored: bool, owner: Option<&Ownership>) {
        self.finish_pending();
        let still_ours = self
            .owned_epoch()
            .is_some_and(|epoch| owner.is_some_and(|owner| owner.epoch == epoch && owner.owner == self.settings.name));
        self.durability.handle_stored(tick, stored && still_ours);
        if let Some(owner) = owner {
            self.handle_ownership_seen(now, owner);
        }
        if let Some(waiting) = self.handoff_waiting.take_if(|waiting| waiting.tick == tick) {
            if stored && still_ours {
                self.start_handoff(now, waiting.peer, waiting.id);
            } else if self.owned_epoch().is_none() {
                // The region was lost meanwhile (a failover): that said so already
                // (`aborted`, not owning), which ends the migration.
            } else if !stored {
                self.refuse_handoff("the checkpoint before the move was not stored");
            } else {
                self.refuse_handoff("the authority did not confirm the owner after the checkpoint before the move");
            }
        }
    }

    /// The authority says who owns the region now (read after a checkpoint, so an owner cut off
    /// by a failover learns it lost the region). An owner at an older epoch stops serving it.
    pub fn handle_ownership_seen(&mut self, _now: Instant, current: &Ownership) {
        self.finish_pending();
        let id = self.region.id();
        let State::Owner { epoch, handoff, .. } = &self.state else { return };
        // A handoff in flight settles its own ownership (its commit is that newer epoch).
        if current.epoch <= *epoch || handoff.as_ref().is_some_and(|handoff| !handoff.is_finished()) {
            return;
        }
        tracing::warn!(region = %id, ours = %epoch, owner = current.owner, epoch = %current.epoch, "another instance took the region over; letting it go");
        for input in self.region.take_pending_inputs() {
            refuse_input(id, input, &mut self.outputs);
        }
        self.outputs.push_back(Output::NotOwned);
        self.outputs.push_back(Output::Event(HostEvent::Aborted {
            region: id,
            reason: format!("the region was taken over by {}@{} (a failover)", current.owner, current.epoch),
            owning: false,
        }));
        self.outputs.push_back(Output::Finished);
        self.state = State::Finished { handoff: None };
    }

    /// The region.
    #[must_use]
    pub fn region(&self) -> &Region<L> {
        &self.region
    }

    /// The region, to change between ticks (queries, tests).
    pub fn region_mut(&mut self) -> &mut Region<L> {
        self.finish_pending();
        &mut self.region
    }

    /// The region, taken out of a node that is done with it (its world, engines and scripts are
    /// most of what a node holds, and so of what freeing it costs).
    #[must_use]
    pub fn into_region(self) -> Region<L> {
        self.region
    }

    /// Settings for the handoffs this node starts from now on.
    pub fn set_source_config(&mut self, config: SourceConfig) {
        self.settings.source = config;
    }

    /// The epoch this node owns the region at, if it does.
    #[must_use]
    pub fn owned_epoch(&self) -> Option<Epoch> {
        match &self.state {
            State::Owner { epoch, handoff, .. }
                if handoff.as_ref().is_none_or(|handoff| !handoff_gave_away(handoff)) =>
            {
                Some(*epoch)
            }
            _ => None,
        }
    }

    /// Whether the node ticks the region now, by its own state alone.
    #[must_use]
    pub fn ticks(&self) -> bool {
        matches!(&self.state, State::Owner { handoff, .. } if handoff.as_ref().is_none_or(HandoffSource::allows_ticks))
    }

    /// Whether a handoff froze the region and its outcome is not known yet: it neither ticks nor
    /// answers gateways' requests (they wait, protocol.md §9). Once the region is handed off the
    /// outcome is known, and requests are answered at once ("the region moved").
    #[must_use]
    pub fn is_frozen(&self) -> bool {
        matches!(&self.state, State::Owner { handoff: Some(handoff), .. }
            if matches!(handoff.phase(), SourcePhase::Frozen | SourcePhase::Settling))
    }

    /// Whether the node is done with the region.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Finished { .. })
    }

    /// The handoff this node started last, as the source (kept after it ends).
    #[must_use]
    pub fn handoff(&self) -> Option<&HandoffSource> {
        match &self.state {
            State::Owner { handoff, .. } | State::Finished { handoff } => handoff.as_ref(),
            State::Stopping { .. } | State::Target { .. } | State::Standby { .. } => None,
        }
    }

    /// The hot standby's phase, while this node is one.
    #[must_use]
    pub fn standby_phase(&self) -> Option<FollowerPhase> {
        match &self.state {
            State::Standby { follower, .. } => Some(follower.phase()),
            _ => None,
        }
    }

    /// The receiving side's phase (`Authoritative` once it took the region over).
    #[must_use]
    pub fn target_phase(&self) -> TargetPhase {
        match (&self.state, &self.late_receiver) {
            (State::Target { receiver }, _) => receiver.phase(),
            (_, Some(receiver)) => receiver.phase(),
            _ => TargetPhase::Idle,
        }
    }

    /// When [`RegionNode::handle_timeout`] is due next (the next tick, a handoff's timeout, or
    /// right away while a snapshot is being streamed).
    #[must_use]
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut deadline: Option<Instant> = None;
        let mut earliest = |at: Instant| deadline = Some(deadline.map_or(at, |current| current.min(at)));
        match &self.state {
            State::Owner { schedule, handoff, standby, .. } => {
                if handoff.as_ref().is_none_or(HandoffSource::allows_ticks) {
                    earliest(schedule.next_due());
                }
                // A snapshot in progress continues right after a tick.
                if handoff.as_ref().is_some_and(|handoff| handoff.phase() == SourcePhase::Snapshot) {
                    earliest(now + Duration::from_millis(1));
                }
                if let Some(at) = handoff.as_ref().and_then(HandoffSource::poll_timeout) {
                    earliest(at);
                }
                if let Some(feed) = standby {
                    if feed.phase() == crate::handoff::FeedPhase::Snapshot {
                        earliest(now + Duration::from_millis(1));
                    }
                    if let Some(at) = feed.poll_timeout() {
                        earliest(at);
                    }
                }
            }
            State::Standby { follower, .. } => {
                if let Some(at) = follower.poll_timeout() {
                    earliest(at);
                }
            }
            State::Target { receiver } => {
                if let Some(at) = receiver.poll_timeout() {
                    earliest(at);
                }
            }
            State::Stopping { .. } | State::Finished { .. } => {}
        }
        deadline.map(|at| at.max(now))
    }

    /// A player input from a gateway (or forwarded by a handoff's source).
    pub fn handle_input(&mut self, _now: Instant, input: PlayerInput) {
        self.finish_pending();
        match &mut self.state {
            State::Owner { handoff, .. } => {
                let input = match handoff.as_mut() {
                    Some(handoff) => handoff.handle_input(input),
                    None => Some(input),
                };
                if let Some(input) = input {
                    self.submit_or_bounce(input);
                }
            }
            State::Stopping { pending, .. } => pending.push(input),
            State::Target { .. } | State::Standby { .. } | State::Finished { .. } => self.refuse_input(input),
        }
    }

    /// A join, leave or arrival from a gateway; one that reaches a frozen region waits for the
    /// handoff's outcome.
    pub fn handle_gateway(&mut self, _now: Instant, request: GatewayRequest) {
        self.finish_pending();
        if self.is_frozen() {
            self.deferred.push(request);
        } else {
            self.serve_gateway_request(request);
        }
    }

    /// Starts moving the region to the target at `peer` (`id` identifies this attempt).
    ///
    /// One copy moves at a time: the handoff ends the hot standby's feed, and the standby is made
    /// again on the new owner after the move. What players were told is durable because the
    /// standby holds it would then survive only in this instance and the target until the new
    /// owner stores its first checkpoint (invariant 7). So a region with a standby (and
    /// checkpoints on) first takes a checkpoint, here between two ticks; the standby's
    /// acknowledgements of later ticks confirm nothing more; and the handoff starts, ending the
    /// feed, only once the checkpoint is stored ([`RegionNode::handle_checkpoint_stored`]). A
    /// checkpoint that cannot be taken or stored aborts the handoff (the region stays here with
    /// its standby). Protocol.md §14.
    pub fn handle_start_handoff(&mut self, now: Instant, peer: SocketAddr, id: u64) {
        self.finish_pending();
        let region = self.region.id();
        let State::Owner { epoch, handoff, standby, .. } = &self.state else {
            tracing::warn!(%region, "cannot start a handoff of a region this host does not own");
            return;
        };
        if handoff.as_ref().is_some_and(|handoff| !handoff.is_finished()) || self.handoff_waiting.is_some() {
            tracing::warn!(%region, "a handoff of this region is already running");
            return;
        }
        let epoch = *epoch;
        if standby.as_ref().is_none_or(|feed| feed.is_ended()) || self.settings.checkpoint_every_ticks == 0 {
            self.start_handoff(now, peer, id);
            return;
        }
        let tick = self.region.world().tick();
        // A checkpoint of this tick is being stored already (taken right after the tick): it
        // holds every input applied, which is all a standby can hold; the handoff waits for it
        // (the answers of two checkpoints of one tick could not be told apart).
        if self.durability.is_taken(tick) {
            self.handoff_waiting = Some(WaitingHandoff { peer, id, tick, since: now });
            return;
        }
        match crate::checkpoint::encode(&mut self.region, epoch) {
            Ok((info, bytes)) => {
                tracing::info!(%region, tick = info.tick, "storing a checkpoint before the handoff lets the standby go");
                self.durability.taken(info.tick, player_progress(self.region.world()));
                self.handoff_waiting = Some(WaitingHandoff { peer, id, tick: info.tick, since: now });
                self.outputs.push_back(Output::StoreCheckpoint { info, bytes });
            }
            Err(error) => self.refuse_handoff(&format!("the checkpoint before the move failed: {error}")),
        }
    }

    /// Starts the handoff now: ends the standby's feed and begins streaming to `peer`.
    fn start_handoff(&mut self, now: Instant, peer: SocketAddr, id: u64) {
        let region = self.region.id();
        let State::Owner { epoch, handoff, peer: handoff_peer, standby, .. } = &mut self.state else {
            tracing::warn!(%region, "cannot start a handoff of a region this host does not own");
            return;
        };
        if let Some(feed) = standby.as_mut() {
            feed.stop(self.region.world_mut(), "the region is being moved to another host");
        }
        let plan = HandoffPlan {
            id,
            region,
            epoch: *epoch,
            name: self.settings.name.clone(),
            tick_interval: self.region.config().tick_interval(),
        };
        *handoff = Some(HandoffSource::start(now, self.region.world(), plan, self.settings.source));
        self.tick_log.handoff_started();
        *handoff_peer = Some(peer);
        self.reported_phase = None;
        self.outputs.push_back(Output::Broadcast(ServerMessage::HandoffStarted {
            region,
            epoch: *epoch,
            target: peer,
        }));
        self.outputs.push_back(Output::Connect { peer });
    }

    /// A handoff that cannot start: the region stays here (the coordinator ends the migration).
    fn refuse_handoff(&mut self, reason: &str) {
        let region = self.region.id();
        tracing::warn!(%region, reason, "not starting the handoff");
        self.outputs.push_back(Output::Event(HostEvent::Aborted {
            region,
            reason: reason.to_owned(),
            owning: self.owned_epoch().is_some(),
        }));
    }

    /// The engine [`Output::BuildEngine`] asked for is built: a target still receiving or verifying
    /// installs it, and while receiving also tells its source `EnginesReady` (protocol.md §4).
    /// Anywhere else it is stale and dropped.
    pub fn handle_engine_built(&mut self, now: Instant, built: BuiltEngine) {
        self.finish_pending();
        if let State::Target { receiver } = &mut self.state
            && matches!(receiver.phase(), TargetPhase::Receiving | TargetPhase::Verifying)
            && self.region.install_engine(built)
        {
            receiver.handle_engines_ready(now);
        }
    }

    /// The round [`Output::EncodeRound`] asked for is encoded: the handoff sends it (a stale one,
    /// of a handoff that ended meanwhile, is dropped).
    pub fn handle_encoded(&mut self, now: Instant, encoded: EncodedRound) {
        self.finish_pending();
        if let State::Owner { handoff: Some(handoff), .. } = &mut self.state {
            handoff.handle_encoded(now, self.region.world_mut(), encoded);
        }
    }

    /// A handoff message from the peer on the current link.
    pub fn handle_peer_message(&mut self, now: Instant, message: Message) {
        self.handle_peer(now, message, None);
    }

    /// [`RegionNode::handle_peer_message`] for a `Chunk` or `Delta` whose archive the driver
    /// prepared ([`crate::codec::prepare`], with a clone of this region's registry) away from the
    /// region's thread: a target then only inserts its values ([`HandoffTarget::handle_prepared`]).
    pub fn handle_peer_prepared(&mut self, now: Instant, message: Message, archive: Prepared) {
        self.handle_peer(now, message, Some(archive));
    }

    fn handle_peer(&mut self, now: Instant, message: Message, prepared: Option<Prepared>) {
        if matches!(message, Message::Abort { .. }) {
            // As for a lost link: a round being encoded at a tick boundary is dropped.
            self.finish_tick_work();
        } else {
            self.finish_pending();
        }
        let world = self.region.world_mut();
        match &mut self.state {
            State::Owner { handoff: Some(handoff), .. } => handoff.handle_message(now, world, message),
            State::Owner { .. } => {
                if let Some(receiver) = self.late_receiver.as_mut() {
                    receiver.handle(now, world, message, prepared);
                }
            }
            State::Target { receiver } => {
                if matches!(message, Message::Follow { .. })
                    && matches!(receiver.phase(), TargetPhase::Idle | TargetPhase::Aborted)
                {
                    let follower = StandbyFollower::new(now, TargetConfig::new(&self.settings.name), world, &message);
                    self.region.stand_by();
                    self.state = State::Standby { follower, reported: None };
                } else {
                    // protocol.md §4: a delta round of this attempt comes after its whole
                    // snapshot; from then on the engines follow the received world, so the commit
                    // does not wait for their build.
                    let follows =
                        matches!(message, Message::Delta { .. }) && Some(message.handoff()) == receiver.handoff();
                    receiver.handle(now, world, message, prepared);
                    if follows
                        && matches!(receiver.phase(), TargetPhase::Receiving | TargetPhase::Verifying)
                        && let Some(build) = self.region.follow_received()
                    {
                        self.outputs.push_back(Output::BuildEngine(build));
                    }
                }
            }
            State::Standby { follower, reported } => {
                follower.handle_message(now, world, message);
                // The coordinator learns that the standby holds the region, and how far, at the
                // first held tick and then once a second.
                if let Some(tick) = follower.held_tick()
                    && reported.is_none_or(|(at, held)| held != tick && now >= at + Duration::from_secs(1))
                {
                    *reported = Some((now, tick));
                    self.outputs.push_back(Output::Event(HostEvent::StandbyHolding {
                        region: follower.region(),
                        owner_epoch: follower.owner().epoch,
                        tick,
                        bytes: follower.applied_bytes(),
                    }));
                }
            }
            State::Stopping { .. } | State::Finished { .. } => {}
        }
        // A round the abort ended is not reported as a freeze.
        self.report_freeze();
    }

    /// Starts feeding a hot standby at `peer` (`id` identifies the feed). Refused while a
    /// handoff runs or a feed exists, or on an instance that does not own the region.
    pub fn handle_start_standby(&mut self, now: Instant, peer: SocketAddr, id: u64) {
        self.finish_pending();
        let region = self.region.id();
        let State::Owner { epoch, handoff, standby, .. } = &mut self.state else {
            tracing::warn!(%region, "cannot feed a standby of a region this host does not own");
            return;
        };
        let refusal = if handoff.as_ref().is_some_and(|handoff| !handoff.is_finished()) {
            Some("a handoff of the region is running")
        } else if standby.as_ref().is_some_and(|feed| !feed.is_ended()) {
            Some("the region has a standby already")
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!(%region, %peer, reason, "not starting a standby feed");
            self.outputs.push_back(Output::Event(HostEvent::FeedEnded { region, reason: reason.to_owned() }));
            return;
        }
        let plan = HandoffPlan {
            id,
            region,
            epoch: *epoch,
            name: self.settings.name.clone(),
            tick_interval: self.region.config().tick_interval(),
        };
        *standby = Some(Box::new(StandbyFeed::start(now, self.region.world(), &plan, self.settings.source)));
        self.outputs.push_back(Output::ConnectStandby { peer });
    }

    /// A message from the standby.
    pub fn handle_standby_message(&mut self, now: Instant, message: Message) {
        self.finish_pending();
        if let State::Owner { standby: Some(feed), .. } = &mut self.state {
            feed.handle_message(now, self.region.world_mut(), message);
        }
    }

    /// The link to the standby broke.
    pub fn handle_standby_link_lost(&mut self, _now: Instant) {
        self.finish_pending();
        if let State::Owner { standby: Some(feed), .. } = &mut self.state {
            feed.handle_link_lost(self.region.world_mut());
        }
    }

    /// The coordinator promotes this standby: the owner at `epoch` is lost. The promotion's
    /// compare-and-swap goes out as [`Output::Authority`]; a refusal is reported as
    /// [`HostEvent::PromoteRefused`].
    pub fn handle_promote(&mut self, _now: Instant, epoch: Epoch) {
        self.finish_pending();
        let region = self.region.id();
        let refused = match &mut self.state {
            State::Standby { follower, .. } => follower.promote(epoch).err().map(|error| error.to_string()),
            State::Owner { epoch: owned, .. } if owned.0 > epoch.0 => {
                // Promoted already (a repeated command): say so again.
                self.outputs.push_back(Output::Event(HostEvent::Owning { region, epoch: *owned }));
                None
            }
            _ => Some("this host holds no standby of the region".to_owned()),
        };
        if let Some(reason) = refused {
            tracing::warn!(%region, %epoch, reason, "promotion refused");
            self.outputs.push_back(Output::Event(HostEvent::PromoteRefused { region, reason }));
        }
    }

    /// The crossing of `player` sent again ([`Output::CrossingAgain`]) reached no gateway: the
    /// player's next input sends it again, whenever that comes.
    pub fn handle_crossing_unsent(&mut self, player: PlayerId) {
        self.departures_resent.remove(&player);
    }

    /// The current handoff link broke.
    pub fn handle_link_lost(&mut self, now: Instant) {
        // A round being encoded at a tick boundary is dropped, not finished: it could only go to
        // the lost link, and finishing it might freeze the region on it (protocol.md §4).
        self.finish_tick_work();
        match &mut self.state {
            State::Owner { handoff: Some(handoff), .. } => handoff.handle_link_lost(now, self.region.world_mut()),
            State::Target { receiver } => receiver.handle_link_lost(now),
            State::Standby { follower, .. } => follower.handle_link_lost(),
            _ => {}
        }
        self.report_freeze();
    }

    /// The authority's answer to the last [`Output::Authority`].
    pub fn handle_authority(&mut self, now: Instant, result: Result<(), AuthorityError>) {
        self.finish_pending();
        match &mut self.state {
            State::Owner { handoff: Some(handoff), .. } => handoff.handle_authority(now, result),
            State::Target { receiver } => receiver.handle_authority(now, result),
            State::Standby { follower, .. } => follower.handle_authority(now, result),
            _ => tracing::debug!(region = %self.region.id(), ?result, "an authority answer nobody waits for"),
        }
    }

    /// Save the region and stop hosting it (the old way of moving a region): refused during a
    /// handoff or when `can_store` is false (no checkpoint store). Outputs [`Output::SaveAndStop`].
    pub fn handle_stop(&mut self, _now: Instant, can_store: bool) {
        self.finish_pending();
        let id = self.region.id();
        let (epoch, schedule) = match &self.state {
            State::Owner { handoff: Some(handoff), .. } if !handoff.is_finished() => {
                return self.refuse_stop("a handoff of the region is in progress");
            }
            State::Owner { .. } if self.handoff_waiting.is_some() => {
                return self.refuse_stop("a handoff of the region is starting");
            }
            State::Owner { epoch, schedule, .. } => (*epoch, schedule.clone()),
            State::Stopping { .. } => return self.refuse_stop("the region is being stopped already"),
            State::Target { .. } | State::Standby { .. } | State::Finished { .. } => {
                return self.refuse_stop("this host does not own the region");
            }
        };
        if !can_store {
            return self.refuse_stop("this host has no checkpoint store to save the region in");
        }
        self.end_feed("the region is being stopped");
        // What was received but not applied is not saved: players continue at last_applied + 1.
        let pending = self.region.take_pending_inputs();
        match crate::checkpoint::encode(&mut self.region, epoch) {
            Ok((info, bytes)) => {
                self.state = State::Stopping { epoch, schedule, pending };
                self.outputs.push_back(Output::SaveAndStop { info, bytes });
            }
            Err(error) => {
                for input in pending {
                    let _ = self.region.submit_input(input);
                }
                tracing::warn!(region = %id, %error, "could not encode the region to stop it");
                self.refuse_stop(&format!("saving the region failed: {error}"));
            }
        }
    }

    /// How saving for a stop went: `Ok((tick, bytes, path))` lets the region go, an error keeps
    /// it here (the inputs that waited are queued again).
    pub fn handle_stop_saved(&mut self, _now: Instant, saved: Result<(u64, u64, PathBuf), String>) {
        self.finish_pending();
        let id = self.region.id();
        let State::Stopping { epoch, schedule, pending } =
            std::mem::replace(&mut self.state, State::Finished { handoff: None })
        else {
            return;
        };
        match saved {
            Ok((tick, bytes, path)) => {
                // Inputs that arrived while saving were never applied either.
                let discarded = self.region.take_pending_inputs().len() + pending.len();
                self.outputs.push_back(Output::NotOwned);
                self.outputs.push_back(Output::Broadcast(ServerMessage::Stopped { region: id, epoch }));
                self.outputs.push_back(Output::Event(HostEvent::Stopped {
                    region: id,
                    epoch,
                    tick,
                    bytes,
                    path,
                    inputs_discarded: discarded as u64,
                }));
                self.outputs.push_back(Output::Finished);
            }
            Err(error) => {
                self.state = State::Owner {
                    epoch,
                    schedule,
                    handoff: None,
                    first_tick_pending: false,
                    peer: None,
                    standby: None,
                };
                for input in pending {
                    self.submit_or_bounce(input);
                }
                self.refuse_stop(&format!("saving the region failed: {error}"));
            }
        }
    }

    /// The driver is going away: requests still waiting are answered (refused where the region
    /// is no longer here).
    pub fn handle_close(&mut self, _now: Instant) {
        self.finish_pending();
        for request in std::mem::take(&mut self.deferred) {
            self.serve_gateway_request(request);
        }
    }

    /// The time passes: runs the tick if it is due (never while frozen, protocol.md §6), then the
    /// handoff's timeouts. `gateways` says who serves which player (for views and crossings).
    ///
    /// A handoff's work at the tick (its delta round, or the freeze) is not done here but in the
    /// next [`RegionNode::poll_output`] once the tick's outputs are taken (protocol.md §4): until
    /// then [`RegionNode::is_frozen`] says what it was before the tick. A checkpoint due at the
    /// tick and a standby's round wait the same way, but a handler called before does them first
    /// ([`RegionNode::complete_tick`]).
    pub fn handle_timeout(&mut self, now: Instant, gateways: &dyn Gateways) {
        // A tick never starts before the work waiting for the previous one is done (a checkpoint,
        // a standby's round, the handoff's work, which may freeze the region), nor before a
        // committed target took the region over.
        self.finish_pending();
        self.complete_handoff_tick();
        self.finish_boundary_round();
        let id = self.region.id();
        let interval = self.region.config().tick_interval();
        let ticks_per_report = self.region.config().tick_rate_hz.max(1);
        if let State::Owner { schedule, handoff, first_tick_pending, epoch, standby, .. } = &mut self.state
            && handoff.as_ref().is_none_or(HandoffSource::allows_ticks)
            && schedule.next_due() <= now
        {
            let started_us = wall_micros(self.settings.wall_clock, now);
            // Measured, never decided on: what the tick costs the region thread up to putting out
            // its updates (a handoff's work at it comes after), for the handoff's figures.
            let began = Instant::now();
            // The handoff this tick belongs to, if one is going on.
            let in_handoff = handoff.as_ref().filter(|handoff| !handoff.is_finished()).map(HandoffSource::id);
            let timing = schedule.start_tick(now);
            if timing.late_by > interval / 2 {
                self.region.note_late_tick();
                crate::events::tick_overrun(id, self.region.world().tick(), timing.late_by);
            }
            let report = self.region.tick();
            let window = &mut self.load_window;
            *window = (window.0 + 1, window.1 + report.duration, window.2.max(report.duration));
            if window.0 >= ticks_per_report {
                self.outputs.push_back(Output::Event(HostEvent::Load {
                    region: id,
                    tick_ms_mean: window.1.as_secs_f64() * 1000.0 / f64::from(window.0),
                    tick_ms_max: window.2.as_secs_f64() * 1000.0,
                    tick_budget_ms: interval.as_secs_f64() * 1000.0,
                    players: self.region.sessions().len() as u64,
                    entities: self.region.world().entity_count() as u64,
                    standby_bytes: std::mem::take(&mut self.standby_bytes),
                }));
                *window = (0, Duration::ZERO, Duration::ZERO);
            }
            if *first_tick_pending {
                *first_tick_pending = false;
                self.outputs.push_back(Output::Event(HostEvent::FirstTick {
                    region: id,
                    tick: report.tick,
                    at_us: started_us,
                }));
            }
            let tick = report.tick;
            let feeding = standby.as_ref().is_some_and(|feed| !feed.is_ended());
            let durable = (self.settings.checkpoint_every_ticks > 0 || feeding).then_some(&self.durability.confirmed);
            let before = self.outputs.len();
            after_tick(&mut self.region, *epoch, tick, self.settings.players, durable, gateways, &mut self.outputs);
            // An input lost on its way (at a server that died after the gateway sent it there)
            // leaves its player waiting at a gap; the client keeps it, so it is asked for again.
            let stalled = self.region.sessions().stalled(self.region.world());
            let ask: Vec<(PlayerId, ServerMessage)> = self
                .gaps
                .observe(tick, &stalled)
                .into_iter()
                .map(|(player, from)| (player, ServerMessage::ResendInputs { region: id, player, from }))
                .collect();
            if !ask.is_empty() && gateways.any() {
                crate::events::inputs_asked_again(id, ask.len());
                self.outputs.push_back(Output::ToPlayers(ask));
            }
            if self.outputs.iter().skip(before).any(|output| {
                matches!(output, Output::ToPlayers(messages) if messages.iter().any(|(_, message)| matches!(message, ServerMessage::Emigrated { .. })))
            }) {
                self.durability.crossed = true;
            }
            // A checkpoint and a standby's round wait until the tick's updates are out (see
            // `complete_tick`).
            self.tick_pending = Some(tick);
            if let Some(handoff) = in_handoff {
                // The handoff's work at this tick (a delta round collected and encoded, or the
                // freeze) waits until the tick's updates are out (see `complete_handoff_tick`).
                // The tick ended `duration` after it started: the freeze (protocol.md §8) and the
                // target's first tick (§6) are timed from its end, not its start.
                self.handoff_tick = Some(HandoffTick {
                    handoff,
                    ended: now + report.duration,
                    next_due: schedule.next_due(),
                    tick,
                    started_us,
                });
            }
            self.tick_log.record(in_handoff.is_some(), began.elapsed(), timing.late_by);
            self.outputs.push_back(Output::Ticked(report));
        }
        match &mut self.state {
            // The handoff's timeouts wait for its work at the tick that just ran, as they did
            // when that work was part of the tick: the driver calls again at once.
            State::Owner { handoff: Some(handoff), .. }
                if self.handoff_tick.is_none() && handoff.poll_timeout().is_some_and(|at| at <= now) =>
            {
                handoff.handle_timeout(now, self.region.world_mut());
            }
            State::Target { receiver } if receiver.poll_timeout().is_some_and(|at| at <= now) => {
                receiver.handle_timeout(now);
            }
            State::Standby { follower, .. } if follower.poll_timeout().is_some_and(|at| at <= now) => {
                follower.handle_timeout(now);
            }
            _ => {}
        }
        if let State::Owner { standby: Some(feed), .. } = &mut self.state
            && feed.poll_timeout().is_some_and(|at| at <= now)
        {
            feed.handle_timeout(now, self.region.world_mut());
        }
        if self.handoff_waiting.take_if(|waiting| now >= waiting.since + CHECKPOINT_WAIT).is_some() {
            self.refuse_handoff(&format!(
                "the checkpoint before the move was not stored within {} s",
                CHECKPOINT_WAIT.as_secs()
            ));
        }
    }

    /// The next thing to do, if any; once the outputs queued before are taken, this is where the
    /// work waiting for the last tick is done (a checkpoint, a standby's round, the handoff's
    /// work: see [`RegionNode::handle_timeout`]). `now` bounds
    /// the snapshot work done in this call: chunks are
    /// encoded in the time left before the next tick is due, so streaming a large region does not
    /// push its ticks late, and once [`MIN_CHUNK_INTERVAL`] has passed since the last one even when
    /// a tick is due (see [`chunk_allowed`]).
    pub fn poll_output(&mut self, now: Instant) -> Option<Output> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            if !self.drive(now) {
                return None;
            }
        }
    }

    /// What waits for the last tick's updates to go out (the output queue was drained before
    /// [`RegionNode::drive`] runs, and every handler does it first should it be called before):
    /// a checkpoint when one is due (protocol.md §12), and a standby's round (§14). Done here rather
    /// than in the tick so that encoding them delays no player's updates; the next tick waits for
    /// it. True when there was a tick to complete.
    fn complete_tick(&mut self) -> bool {
        let Some(tick) = self.tick_pending.take() else {
            return false;
        };
        let id = self.region.id();
        let State::Owner { epoch, handoff, standby, .. } = &mut self.state else {
            return true;
        };
        let began = Instant::now();
        // A checkpoint is a snapshot at a tick boundary; during a handoff the snapshot being
        // streamed is the region's safety net instead, and a frozen source never gets here.
        // A crossing is checkpointed at once even with a standby holding the region: if the
        // standby dies with the owner, the restored region must agree with its neighbour about
        // where the avatar is.
        let every = self.settings.checkpoint_every_ticks;
        if handoff.as_ref().is_none_or(HandoffSource::is_finished) && self.durability.due(tick, every) {
            match crate::checkpoint::encode(&mut self.region, *epoch) {
                Ok((info, bytes)) => {
                    self.durability.taken(info.tick, player_progress(self.region.world()));
                    self.outputs.push_back(Output::StoreCheckpoint { info, bytes });
                }
                Err(error) => self
                    .outputs
                    .push_back(Output::Event(HostEvent::CheckpointFailed { region: id, error: error.to_string() })),
            }
        }
        if let Some(feed) = standby.as_mut()
            && let Some(marked) = feed.handle_tick_completed(self.region.world_mut())
        {
            self.durability.marked(marked, player_progress(self.region.world()));
        }
        self.tick_log.after_tick_worked(began.elapsed());
        true
    }

    /// What a handler does before anything else: the work still waiting for the last tick's
    /// outputs to be taken ([`RegionNode::complete_tick`], [`RegionNode::finish_take_over`]),
    /// and the rest of a round being encoded at a tick boundary, which must be read from the world
    /// as it was there ([`RegionNode::finish_boundary_round`]).
    fn finish_pending(&mut self) {
        self.finish_tick_work();
        self.finish_boundary_round();
    }

    /// [`RegionNode::complete_tick`] and [`RegionNode::finish_take_over`]; true when there was
    /// some.
    fn finish_tick_work(&mut self) -> bool {
        let ticked = self.complete_tick();
        let took_over = self.finish_take_over();
        ticked || took_over
    }

    /// The next part of a round the handoff is encoding at a tick boundary, made now (protocol.md
    /// §4), or what the handoff sends once that round is decided; `None` when it encodes none.
    /// Timed as the handoff's work at that tick.
    fn poll_boundary_part(&mut self) -> Option<Message> {
        let State::Owner { handoff: Some(handoff), .. } = &mut self.state else {
            return None;
        };
        if !handoff.encodes_at_boundary() {
            return None;
        }
        let began = Instant::now();
        let message = handoff.poll_message(self.region.world_mut());
        self.tick_log.handoff_worked(began.elapsed());
        self.report_freeze();
        message
    }

    /// Makes every part still to make of a round being encoded at a tick boundary, queued to
    /// be sent.
    fn finish_boundary_round(&mut self) {
        while let Some(message) = self.poll_boundary_part() {
            self.outputs.push_back(Output::ToPeer(message));
        }
    }

    /// Once the round read at the last tick boundary is decided: if it froze the region, tells
    /// the players and the host (protocol.md §4, §8).
    fn report_freeze(&mut self) {
        let id = self.region.id();
        let State::Owner { epoch, handoff: Some(handoff), .. } = &mut self.state else {
            self.boundary_tick = None;
            return;
        };
        if handoff.encodes_at_boundary() {
            return;
        }
        let Some(ended) = self.boundary_tick.take() else {
            return;
        };
        if !handoff.allows_ticks() {
            self.outputs.push_back(Output::Broadcast(ServerMessage::Frozen { region: id, epoch: *epoch }));
            let digest = self.region.world_mut().digest();
            self.outputs.push_back(Output::Event(HostEvent::Frozen {
                region: id,
                tick: ended.tick,
                last_tick_at_us: ended.started_us,
                digest,
            }));
        }
    }

    /// The handoff's work at the last tick, once that tick's updates are out (the output queue was
    /// drained before [`RegionNode::drive`] runs): its delta round is read, to be encoded part by
    /// part as [`RegionNode::drive`] polls ([`RegionNode::poll_boundary_part`]) or captured to be
    /// encoded elsewhere (protocol.md §4). Done here rather than in the tick so that encoding a
    /// round delays no player's updates; the next tick waits for it. Nothing for a tick of an
    /// earlier handoff. True when there was a tick to complete.
    fn complete_handoff_tick(&mut self) -> bool {
        let Some(ended) = self.handoff_tick.take() else {
            return false;
        };
        let State::Owner { handoff: Some(handoff), .. } = &mut self.state else {
            return true;
        };
        if handoff.id() != ended.handoff {
            return true;
        }
        // Timed for the report only, as the tick is.
        let began = Instant::now();
        handoff.handle_tick_completed(ended.ended, self.region.world_mut(), ended.next_due);
        self.tick_log.handoff_worked(began.elapsed());
        self.boundary_tick = Some(ended);
        self.report_freeze();
        true
    }

    /// Takes over the received world after a commit, if that is still to do (protocol.md §6);
    /// true when it was. [`RegionNode::drive`] does it once the commit's outputs are taken; the
    /// handlers that touch the region do it first should they be called before.
    fn finish_take_over(&mut self) -> bool {
        if !std::mem::take(&mut self.take_over_pending) {
            return false;
        }
        self.region.take_over_received();
        true
    }

    /// Moves what the handoff state machines want done into the output queue; false when quiet.
    fn drive(&mut self, now: Instant) -> bool {
        let id = self.region.id();
        if self.finish_tick_work() {
            return true;
        }
        let mut busy = self.complete_handoff_tick();
        // A round read at the tick boundary: its parts go out one by one as they are made, before
        // anything else is done (protocol.md §4).
        if let Some(message) = self.poll_boundary_part() {
            self.outputs.push_back(Output::ToPeer(message));
            return true;
        }
        let mut next_state = None;
        if let State::Owner { schedule, standby: Some(feed), .. } = &mut self.state {
            // The snapshot is encoded in the time left before the next tick, as a handoff's.
            let snapshot = feed.phase() == crate::handoff::FeedPhase::Snapshot;
            let encoding_allowed = !snapshot || chunk_allowed(now, schedule.next_due(), self.chunk_sent_at.feed);
            let message = if encoding_allowed { feed.poll_message(self.region.world_mut()) } else { None };
            let idle = message.is_none();
            if let Some(message) = message {
                busy = true;
                if snapshot {
                    self.chunk_sent_at.feed = Some(now);
                }
                self.standby_bytes += message.archive_bytes() as u64;
                self.outputs.push_back(Output::ToStandby(message));
            }
            while let Some(event) = feed.poll_event() {
                busy = true;
                match event {
                    // Not past the checkpoint a waiting handoff took: the standby lets go
                    // of what it holds once that checkpoint is stored.
                    FeedEvent::Held { tick } => {
                        if self.handoff_waiting.is_none_or(|waiting| tick <= waiting.tick) {
                            self.durability.handle_held(tick);
                        }
                    }
                    FeedEvent::Ended(reason) => {
                        self.outputs.push_back(Output::Event(HostEvent::FeedEnded { region: id, reason }));
                    }
                }
            }
            if idle && feed.is_ended() {
                if let State::Owner { standby, .. } = &mut self.state {
                    *standby = None;
                }
                busy = true;
            }
        }
        match &mut self.state {
            State::Owner { epoch, schedule, handoff: Some(handoff), peer, .. } => {
                // Snapshot chunks and the pieces of an oversized round alike (protocol.md §3, §4).
                let encodes = handoff.encodes_on_poll();
                let encoding_allowed = !encodes || chunk_allowed(now, schedule.next_due(), self.chunk_sent_at.handoff);
                let message = if encoding_allowed { handoff.poll_message(self.region.world_mut()) } else { None };
                let job = handoff.poll_encode();
                // A chunk encoded, or a piece captured, under the chunk rule (protocol.md §3, §4).
                if encodes && (message.is_some() || job.is_some()) {
                    self.chunk_sent_at.handoff = Some(now);
                }
                if let Some(message) = message {
                    busy = true;
                    self.outputs.push_back(Output::ToPeer(message));
                }
                if let Some(job) = job {
                    busy = true;
                    self.outputs.push_back(Output::EncodeRound(job));
                }
                if let Some(action) = handoff.poll_action() {
                    busy = true;
                    match action {
                        SourceAction::Authority { expected, next } => {
                            self.outputs.push_back(Output::Authority { expected, next, commit: false });
                        }
                        SourceAction::Resume { epoch: resumed, held, reason } => {
                            *epoch = resumed;
                            // Continue on the same grid from the next slot.
                            *schedule =
                                TickSchedule::new(self.region.config().tick_interval(), schedule.next_due().max(now));
                            for input in held {
                                submit_or_bounce(&mut self.region, input, &mut self.outputs);
                            }
                            self.outputs.push_back(Output::Owned { epoch: resumed, announce: false });
                            self.outputs
                                .push_back(Output::Broadcast(ServerMessage::Aborted { region: id, epoch: resumed }));
                            self.outputs.push_back(Output::Event(HostEvent::Aborted {
                                region: id,
                                reason: reason.to_string(),
                                owning: true,
                            }));
                        }
                        SourceAction::HandedOff { epoch: new_epoch, undelivered } => {
                            self.outputs.push_back(Output::NotOwned);
                            if let Some(owner) = *peer {
                                self.outputs.push_back(Output::Broadcast(ServerMessage::Committed {
                                    region: id,
                                    epoch: new_epoch,
                                    owner,
                                }));
                            }
                            let (before, during) = self.tick_log.take();
                            self.outputs.push_back(Output::Event(HostEvent::HandedOff {
                                region: id,
                                epoch: new_epoch,
                                stats: handoff.stats(),
                                ticks: Box::new(HandoffTicks { before, during }),
                            }));
                            for input in undelivered {
                                refuse_input(id, input, &mut self.outputs);
                            }
                        }
                        SourceAction::Retire => {
                            for input in handoff.take_undelivered() {
                                refuse_input(id, input, &mut self.outputs);
                            }
                            self.outputs.push_back(Output::Event(HostEvent::Retired { region: id }));
                            self.outputs.push_back(Output::Finished);
                            next_state = Some(State::Finished { handoff: None });
                        }
                        SourceAction::Fenced { owner, epoch: fenced_at } => {
                            self.outputs.push_back(Output::NotOwned);
                            let reason = format!("the region was taken by {owner}@{fenced_at}");
                            self.outputs.push_back(Output::Event(HostEvent::Aborted {
                                region: id,
                                reason,
                                owning: false,
                            }));
                            self.outputs.push_back(Output::Finished);
                            next_state = Some(State::Finished { handoff: None });
                        }
                    }
                }
            }
            State::Target { receiver } => {
                if let Some(message) = receiver.poll_message() {
                    busy = true;
                    self.outputs.push_back(Output::ToPeer(message));
                }
                if let Some(action) = receiver.poll_action() {
                    busy = true;
                    match action {
                        TargetAction::Authority { expected, next } => {
                            self.outputs.push_back(Output::Authority { expected, next, commit: true });
                        }
                        TargetAction::Authoritative { epoch, first_tick_at, .. } => {
                            let digest = self.region.world_mut().digest();
                            self.take_over_pending = true;
                            self.outputs.push_back(Output::Owned { epoch, announce: false });
                            self.outputs.push_back(Output::Broadcast(ServerMessage::Committed {
                                region: id,
                                epoch,
                                owner: self.settings.address,
                            }));
                            self.outputs.push_back(Output::Event(HostEvent::Authoritative {
                                region: id,
                                epoch,
                                digest,
                            }));
                            let schedule = TickSchedule::new(self.region.config().tick_interval(), first_tick_at);
                            // Keep answering the source (Committed, then stragglers) after the switch.
                            let mut finished = HandoffTarget::new(now, TargetConfig::new(&self.settings.name));
                            std::mem::swap(&mut finished, receiver);
                            while let Some(message) = finished.poll_message() {
                                self.outputs.push_back(Output::ToPeer(message));
                            }
                            self.late_receiver = Some(finished);
                            next_state = Some(State::Owner {
                                epoch,
                                schedule,
                                handoff: None,
                                first_tick_pending: true,
                                peer: None,
                                standby: None,
                            });
                        }
                        TargetAction::Stragglers(inputs) => {
                            for input in inputs {
                                submit_or_bounce(&mut self.region, input, &mut self.outputs);
                            }
                        }
                        TargetAction::Discard(reason) => {
                            match (self.rewarm)(id) {
                                Ok(fresh) => self.region = fresh,
                                Err(error) => tracing::error!(region = %id, %error, "could not re-warm the region"),
                            }
                            self.outputs.push_back(Output::Event(HostEvent::Aborted {
                                region: id,
                                reason: reason.to_string(),
                                owning: false,
                            }));
                        }
                    }
                }
            }
            State::Standby { follower, .. } => {
                if let Some(message) = follower.poll_message() {
                    busy = true;
                    self.outputs.push_back(Output::ToPeer(message));
                }
                if let Some(action) = follower.poll_action() {
                    busy = true;
                    match action {
                        FollowerAction::Authority { expected, next } => {
                            self.outputs.push_back(Output::Authority { expected, next, commit: true });
                        }
                        FollowerAction::Promoted { epoch, tick } => {
                            self.region.rebuild_caches();
                            self.outputs.push_back(Output::Owned { epoch, announce: true });
                            // `promoted` first: the coordinator's failover ends at `owning`.
                            self.outputs.push_back(Output::Event(HostEvent::Promoted { region: id, epoch, tick }));
                            self.outputs.push_back(Output::Event(HostEvent::Owning { region: id, epoch }));
                            // What it holds is what the lost owner's standby acknowledged; it
                            // is checkpointed after its first tick (when checkpoints are on),
                            // since no standby follows it yet.
                            self.durability.confirmed = player_progress(self.region.world()).into_iter().collect();
                            self.durability.crossed = true;
                            next_state = Some(State::Owner {
                                epoch,
                                schedule: TickSchedule::new(self.region.config().tick_interval(), now),
                                handoff: None,
                                first_tick_pending: true,
                                peer: None,
                                standby: None,
                            });
                        }
                        FollowerAction::OwnerSilent { silent_for } => {
                            self.outputs.push_back(Output::Event(HostEvent::OwnerSilent {
                                region: id,
                                owner_epoch: follower.owner().epoch,
                                silent_ms: silent_for.as_millis() as u64,
                            }));
                        }
                        FollowerAction::OwnerHeard => {
                            self.outputs.push_back(Output::Event(HostEvent::OwnerHeard { region: id }));
                        }
                        FollowerAction::Detached(reason) => {
                            self.outputs.push_back(Output::Event(HostEvent::StandbyLost {
                                region: id,
                                reason,
                                detached: true,
                            }));
                        }
                        FollowerAction::Discard(reason) => {
                            match (self.rewarm)(id) {
                                Ok(fresh) => self.region = fresh,
                                Err(error) => tracing::error!(region = %id, %error, "could not re-warm the region"),
                            }
                            self.outputs.push_back(Output::Event(HostEvent::StandbyLost {
                                region: id,
                                reason,
                                detached: false,
                            }));
                            next_state = Some(State::Target {
                                receiver: HandoffTarget::new(now, TargetConfig::new(&self.settings.name)),
                            });
                        }
                    }
                }
            }
            State::Owner { handoff: None, .. } => {
                if let Some(receiver) = self.late_receiver.as_mut() {
                    while let Some(action) = receiver.poll_action() {
                        busy = true;
                        if let TargetAction::Stragglers(inputs) = action {
                            for input in inputs {
                                submit_or_bounce(&mut self.region, input, &mut self.outputs);
                            }
                        }
                    }
                    while let Some(message) = receiver.poll_message() {
                        busy = true;
                        self.outputs.push_back(Output::ToPeer(message));
                    }
                }
            }
            State::Stopping { .. } | State::Finished { .. } => {}
        }
        if let Some(next) = next_state {
            // A finished source keeps its handoff readable (its statistics, its outcome).
            let next = match (next, std::mem::replace(&mut self.state, State::Finished { handoff: None })) {
                (State::Finished { .. }, State::Owner { handoff, .. }) => State::Finished { handoff },
                (next, _) => next,
            };
            self.state = next;
            busy = true;
        }
        if let State::Owner { handoff: Some(handoff), .. } = &self.state
            && self.reported_phase != Some(handoff.phase())
        {
            self.reported_phase = Some(handoff.phase());
            self.outputs.push_back(Output::Event(HostEvent::Phase { region: id, phase: handoff.phase() }));
            busy = true;
        }
        if !self.deferred.is_empty() && !self.is_frozen() {
            for request in std::mem::take(&mut self.deferred) {
                self.serve_gateway_request(request);
            }
            busy = true;
        }
        busy
    }

    /// Ends the standby feed, if any, telling the standby.
    fn end_feed(&mut self, reason: &str) {
        let id = self.region.id();
        if let State::Owner { standby, .. } = &mut self.state
            && let Some(mut feed) = standby.take()
        {
            feed.stop(self.region.world_mut(), reason);
            while let Some(message) = feed.poll_message(self.region.world_mut()) {
                self.outputs.push_back(Output::ToStandby(message));
            }
            self.outputs.push_back(Output::Event(HostEvent::FeedEnded { region: id, reason: reason.to_owned() }));
        }
    }

    fn refuse_stop(&mut self, reason: &str) {
        let region = self.region.id();
        self.outputs.push_back(Output::Event(HostEvent::StopRefused { region, reason: reason.to_owned() }));
    }

    fn submit_or_bounce(&mut self, input: PlayerInput) {
        let tick = self.region.world().tick();
        let due = self.departures_resent.get(&input.player).is_none_or(|at| *at + GAP_RESEND_TICKS <= tick);
        if due
            && let Some(epoch) = self.owned_epoch()
            && let Some(moved) = self.region.departed(input.player)
        {
            if self.departures_resent.len() >= 1024 {
                let keep = DEPARTED_KEEP.as_secs() * u64::from(self.region.config().tick_rate_hz);
                self.departures_resent.retain(|_, at| *at + keep > tick);
            }
            self.departures_resent.insert(input.player, tick);
            // The player's gateway routes it here, but its avatar left across a border: that
            // crossing never reached the gateway (it was lost with this region's previous owner,
            // whose standby holds the departure, or with a gateway). It goes out again, to the
            // player's gateway only, ahead of the input bounced back, at most once every
            // `GAP_RESEND_TICKS` per player (inputs in flight during any crossing come here too;
            // the gateway delivers one crossing once; protocol.md §10).
            let transfer = transfer_from(self.region.id(), moved);
            tracing::debug!(region = %transfer.from, to = %transfer.to, player = %input.player, "an input of a player whose avatar left; sending its crossing again");
            self.outputs.push_back(Output::CrossingAgain {
                player: input.player,
                message: ServerMessage::Emigrated { epoch, transfer },
            });
        }
        submit_or_bounce(&mut self.region, input, &mut self.outputs);
    }

    fn refuse_input(&mut self, input: PlayerInput) {
        refuse_input(self.region.id(), input, &mut self.outputs);
    }

    /// Joins, leaves and arrivals, on an owner that is not frozen (or refused elsewhere).
    fn serve_gateway_request(&mut self, request: GatewayRequest) {
        let id = self.region.id();
        let epoch = self.owned_epoch();
        let out = &mut self.outputs;
        match (request, epoch) {
            (GatewayRequest::Join { player, gateway }, Some(epoch)) => {
                if let Some(moved) = self.region.departed(player) {
                    // The player left across a border; its crossing may have been lost with the
                    // gateway that carried it: the gateway delivers the avatar on.
                    out.push_back(Output::ToGateway {
                        gateway,
                        message: ServerMessage::JoinMoved { region: id, player, transfer: transfer_from(id, moved) },
                    });
                    return;
                }
                let rejoin = self.region.sessions().avatar_of(player).is_some();
                match self.region.join_player(player) {
                    Ok(last_applied) => {
                        // A new avatar is checkpointed early (a second after the last checkpoint
                        // at most, so a crowd logging in does not checkpoint every tick): a host
                        // that dies before the next regular checkpoint must not take it along.
                        self.durability.joined |= !rejoin;
                        out.push_back(Output::Attach { player, gateway, take_over: true });
                        out.push_back(Output::ToGateway {
                            gateway,
                            message: ServerMessage::Joined { region: id, epoch, player, last_applied },
                        });
                    }
                    Err(error) => out.push_back(Output::ToGateway {
                        gateway,
                        message: ServerMessage::JoinRefused { region: id, player, reason: error.to_string() },
                    }),
                }
            }
            (GatewayRequest::Join { player, gateway }, None) => out.push_back(Output::ToGateway {
                gateway,
                message: ServerMessage::JoinRefused { region: id, player, reason: "the region moved".into() },
            }),
            (GatewayRequest::Leave { player }, Some(_)) => {
                self.region.remove_player(player);
            }
            (GatewayRequest::Leave { player }, None) => {
                tracing::warn!(region = %id, %player, "a leave arrived while the region moved away; the avatar stays");
            }
            (GatewayRequest::Forget { player }, Some(_)) => self.region.forget_departed_of(player),
            (GatewayRequest::Forget { .. }, None) => {}
            (GatewayRequest::Immigrate { transfer, gateway }, Some(epoch)) => {
                let emigrant = Emigrant {
                    player: transfer.player,
                    to: id,
                    last_applied: transfer.last_applied,
                    pending: transfer.pending.clone(),
                    avatar: transfer.avatar.clone(),
                    crossings: transfer.crossings,
                };
                match self.region.immigrate(transfer.from, &emigrant) {
                    Ok(arrival @ (Immigration::Arrived(last_applied) | Immigration::Here(last_applied))) => {
                        let first = matches!(arrival, Immigration::Arrived(_));
                        self.durability.crossed |= first;
                        out.push_back(Output::Attach { player: emigrant.player, gateway, take_over: first });
                        out.push_back(Output::ToGateway {
                            gateway,
                            message: ServerMessage::Arrived {
                                region: id,
                                epoch,
                                player: transfer.player,
                                last_applied,
                                crossings: transfer.crossings,
                            },
                        });
                    }
                    Ok(Immigration::MovedOn(onward)) => out.push_back(Output::ToGateway {
                        gateway,
                        message: ServerMessage::ImmigrationRefused {
                            transfer,
                            reason: "a stale copy: the avatar came here and left again".into(),
                            onward: Some(transfer_from(id, onward)),
                        },
                    }),
                    Err(error) => out.push_back(Output::ToGateway {
                        gateway,
                        message: ServerMessage::ImmigrationRefused {
                            transfer,
                            reason: error.to_string(),
                            onward: None,
                        },
                    }),
                }
            }
            (GatewayRequest::Immigrate { transfer, gateway }, None) => out.push_back(Output::ToGateway {
                gateway,
                message: ServerMessage::ImmigrationRefused {
                    transfer,
                    reason: "the region moved".into(),
                    onward: None,
                },
            }),
            (GatewayRequest::Skip { player, through }, Some(_)) => match self.region.skip_inputs(player, through) {
                Ok(0) => {}
                Ok(lost) => {
                    out.push_back(Output::Event(HostEvent::InputsLost { region: id, player, lost, through }));
                }
                Err(error) => tracing::debug!(region = %id, %player, %error, "a skip for a player not here"),
            },
            // Its client says it again while the new owner's updates show the gap.
            (GatewayRequest::Skip { .. }, None) => {}
        }
    }
}

/// Whether a source handed the region off (it owns it no more, although it still holds it).
fn handoff_gave_away(handoff: &HandoffSource) -> bool {
    matches!(handoff.phase(), SourcePhase::HandedOff | SourcePhase::Retired)
}

/// Microseconds since the Unix epoch at `now`, from the settings' anchor.
fn wall_micros(anchor: (Instant, u64), now: Instant) -> u64 {
    let (at, micros) = anchor;
    if now >= at {
        micros.saturating_add(now.duration_since(at).as_micros() as u64)
    } else {
        micros.saturating_sub(at.duration_since(now).as_micros() as u64)
    }
}

/// Queues an input for the next tick; one for a player who is not in the region (its avatar
/// crossed a border, or has not arrived yet) goes back to its gateway to be routed again.
/// Invariant 2: a straggler forwarded by a handoff's source is queued, or bounced when its player
/// is not here, so it cannot vanish in a region that lost the player. What [`after_refusal`]
/// drops is counted (`baton_inputs_refused_total` by reason) and is never the input its player is
/// blocked on. Duplicates are dropped by the session (they were applied already).
fn submit_or_bounce<L: RegionLogic>(region: &mut Region<L>, input: PlayerInput, outputs: &mut VecDeque<Output>) {
    // Checked before submitting, so the input is handed on whole rather than copied in case the
    // session refuses it.
    if region.session_of(input.player).is_none() {
        return refuse_input(region.id(), input, outputs);
    }
    if let Err(error) = region.submit_input(input) {
        match after_refusal(&error) {
            // The session vanished between the check and the submit: impossible on one thread.
            Refused::Bounce => {
                tracing::warn!(region = %region.id(), %error, "an input refused by a session that was there")
            }
            // Already counted and logged by the region's `input_refused` event.
            Refused::Drop => {}
        }
    }
}

/// What an owner does with an input its region's sessions refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// Send it back to the player's gateway to be routed again (`Bounced`).
    Bounce,
    /// Drop it.
    Drop,
}

/// Decides between bouncing and dropping a refused input.
fn after_refusal(error: &SessionError) -> Refused {
    match error {
        // The avatar is elsewhere (it crossed a border or has not arrived yet): the gateway routes
        // the input to wherever the player is now.
        SessionError::UnknownPlayer(_) => Refused::Bounce,
        // A full queue is not bounced. The gateway would route the input straight back to this
        // owner, which refuses it again for as long as the gap lasts, so every such input would
        // circle between gateway and server at network speed; a client that leaves a gap (the
        // gateway's rate limit drops an input but keeps its number) would add one to the circle
        // for every input it sends until it disconnects. The input the player is blocked on is
        // never refused for a full queue (`Sessions::submit`), and a resuming client resends
        // everything after `last_applied`, so dropping here loses nothing the player cannot
        // send again.
        SessionError::QueueFull(_) => Refused::Drop,
        // Invalid anywhere (the gateway checks size and sequence before forwarding), or a bug of
        // this region: routing it again cannot help.
        SessionError::PayloadTooLarge(_)
        | SessionError::ZeroSequence
        | SessionError::AlreadyJoined(_)
        | SessionError::World(_) => Refused::Drop,
    }
}

/// An input this instance will not apply: reported, and sent back to its gateway to route again.
fn refuse_input(region: RegionId, input: PlayerInput, outputs: &mut VecDeque<Output>) {
    let bounced =
        ServerMessage::Bounced { region, player: input.player, seq: input.seq, payload: input.payload.clone() };
    outputs.push_back(Output::Bounce(bounced, input.player));
    outputs.push_back(Output::Event(HostEvent::InputRefused { region, input }));
}

/// Each player's last applied input in `world`.
fn player_progress(world: &crate::World) -> Vec<(PlayerId, u64)> {
    world.iter::<PlayerSession>().map(|(_, session)| (PlayerId(session.player), session.last_applied)).collect()
}

/// A handoff asked for while a hot standby held the region: it starts once the checkpoint taken
/// at `tick` is stored.
#[derive(Clone, Copy, Debug)]
struct WaitingHandoff {
    peer: SocketAddr,
    id: u64,
    tick: u64,
    /// When the handoff was asked for: it is refused after [`CHECKPOINT_WAIT`].
    since: Instant,
}

/// The longest a handoff waits for the checkpoint taken before it (protocol.md §14): a store that
/// never answers would otherwise keep the region from moving or stopping for good. Checked at
/// each tick (`handle_timeout`), so the refusal comes at the first tick past it.
pub const CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

/// Which of the players' inputs are held in state that survives the loss of this instance: those
/// in the newest checkpoint the store confirmed, or in the newest round the hot standby says it
/// holds, whichever is newer.
#[derive(Debug, Default)]
struct Durability {
    /// Checkpoints taken and not confirmed yet: their tick and each player's last applied input.
    taken: VecDeque<(u64, Vec<(PlayerId, u64)>)>,
    /// Per player, the last input in the newest stored checkpoint.
    confirmed: HashMap<PlayerId, u64>,
    /// An avatar arrived or left since the last checkpoint: the next one is taken early, so a
    /// failover finds the avatar where its player is (and not also where it was).
    crossed: bool,
    /// The tick of the last checkpoint taken.
    last_taken: u64,
    /// Rounds sent to the hot standby and not held yet: their tick and each player's last
    /// applied input.
    marked: VecDeque<(u64, Vec<(PlayerId, u64)>)>,
    /// The tick `confirmed` is from.
    confirmed_tick: Option<u64>,
    /// A new player joined since the last checkpoint: one is taken at most
    /// [`Durability::JOIN_GAP_TICKS`] after the last.
    joined: bool,
    /// No checkpoint was taken since this node became the owner of a world it was given (a new
    /// region, a restore): the first tick takes one, so once it is stored the region has a
    /// checkpoint to fail over from before the first regular one is due (a failed store is not
    /// retried early).
    initial: bool,
}

impl Durability {
    /// Checkpoints being stored at once, at most (stores run side by side; an answer confirms
    /// its own tick and forgets older ones still waiting, which then confirm nothing).
    const MAX_TAKEN: usize = 8;

    /// Ticks between a crossing's early checkpoint and the previous one, at least.
    const MIN_EARLY_GAP_TICKS: u64 = 1;

    /// Ticks between a join's early checkpoint and the previous one, at least.
    const JOIN_GAP_TICKS: u64 = 20;

    /// Whether a checkpoint is due after `tick`, taking one every `every` ticks (0: never), at the
    /// first tick of a node that was given its world (`initial`), and early after a crossing or
    /// (at most one a second) a new player's join, unless one is still being stored (so a region
    /// where avatars cross all the time stores one after another, not one per tick).
    fn due(&self, tick: u64, every: u64) -> bool {
        let early_after = |gap: u64| self.taken.is_empty() && tick >= self.last_taken + gap.min(every);
        every > 0
            && (self.initial
                || tick.is_multiple_of(every)
                || (self.crossed && early_after(Self::MIN_EARLY_GAP_TICKS))
                || (self.joined && early_after(Self::JOIN_GAP_TICKS)))
    }

    /// Whether a checkpoint taken at `tick` is still being stored.
    fn is_taken(&self, tick: u64) -> bool {
        self.taken.iter().any(|(taken_at, _)| *taken_at == tick)
    }

    fn taken(&mut self, tick: u64, progress: Vec<(PlayerId, u64)>) {
        self.crossed = false;
        self.joined = false;
        self.initial = false;
        self.last_taken = tick;
        if self.taken.len() == Self::MAX_TAKEN {
            self.taken.pop_front();
        }
        self.taken.push_back((tick, progress));
    }

    fn handle_stored(&mut self, tick: u64, stored: bool) {
        while let Some((taken_at, _)) = self.taken.front()
            && *taken_at < tick
        {
            self.taken.pop_front();
        }
        if self.taken.front().is_some_and(|(taken_at, _)| *taken_at == tick)
            && let Some((_, progress)) = self.taken.pop_front()
            && stored
        {
            self.confirm(tick, progress);
        }
    }

    /// Rounds ahead of the standby's acknowledgements, at most (about 13 s at 20 Hz; the feed
    /// skips ticks while more than its window of bytes is unapplied, so rounds are fewer when
    /// the standby lags). A `Holds` for a round no longer here confirms nothing; the next one
    /// within the window does.
    const MAX_MARKED: usize = 256;

    /// A round bringing the standby to `tick` went out, with each player's progress at `tick`.
    fn marked(&mut self, tick: u64, progress: Vec<(PlayerId, u64)>) {
        if self.marked.len() == Self::MAX_MARKED {
            self.marked.pop_front();
        }
        self.marked.push_back((tick, progress));
    }

    /// The standby holds the world after `tick`.
    fn handle_held(&mut self, tick: u64) {
        while let Some((marked_at, _)) = self.marked.front()
            && *marked_at < tick
        {
            self.marked.pop_front();
        }
        if self.marked.front().is_some_and(|(marked_at, _)| *marked_at == tick)
            && let Some((_, progress)) = self.marked.pop_front()
        {
            self.confirm(tick, progress);
        }
    }

    /// A copy of the world after `tick` survives this instance; an older one confirms nothing new.
    fn confirm(&mut self, tick: u64, progress: Vec<(PlayerId, u64)>) {
        if self.confirmed_tick.is_none_or(|confirmed| confirmed < tick) {
            self.confirmed = progress.into_iter().collect();
            self.confirmed_tick = Some(tick);
        }
    }
}

/// What players get after each tick: their updates (with what is durable: `durable` per player,
/// or, without checkpoints, everything applied), border views, and avatars leaving (kept as
/// departed for a while, and forgotten here once that is over).
fn after_tick<L: RegionLogic>(
    region: &mut Region<L>,
    epoch: Epoch,
    tick: u64,
    settings: PlayerSettings,
    durable: Option<&HashMap<PlayerId, u64>>,
    gateways: &dyn Gateways,
    outputs: &mut VecDeque<Output>,
) {
    region.forget_departed();
    if !gateways.any() {
        return;
    }
    let id = region.id();
    // This tick's views are taken before the crossing avatars leave: a player whose avatar
    // crosses now still gets this tick's view from here, its last, so its update gap spans only
    // the wait for the new region's next tick instead of a whole tick more.
    if tick.is_multiple_of(u64::from(settings.update_every_ticks.max(1))) {
        let updates: Vec<(PlayerId, ServerMessage)> = region
            .player_updates()
            .into_iter()
            .map(|update| {
                let message = ServerMessage::Update {
                    region: id,
                    epoch,
                    player: update.player,
                    tick,
                    last_applied: update.last_applied,
                    // Without checkpoints nothing survives this instance, so keeping inputs could
                    // not bring anything back: what is applied is as durable as it gets.
                    durable: durable.map_or(update.last_applied, |durable| {
                        durable.get(&update.player).copied().unwrap_or(0).min(update.last_applied)
                    }),
                    payload: update.payload,
                };
                (update.player, message)
            })
            .collect();
        // The updates go first: the gateway admits a region's updates for a player until the new
        // region says the avatar arrived, and the last view should not trail the emigration.
        if !updates.is_empty() {
            outputs.push_back(Output::ToPlayers(updates));
        }
    }
    for emigrant in region.take_emigrants(|player| gateways.serves(player)) {
        let player = emigrant.player;
        let transfer = transfer_from(id, emigrant);
        outputs.push_back(Output::ToPlayers(vec![(player, ServerMessage::Emigrated { epoch, transfer })]));
    }
    if settings.border_every_ticks > 0 && tick.is_multiple_of(u64::from(settings.border_every_ticks)) {
        let distance = settings.border_view_distance;
        for (toward, payload) in region.border_views(distance) {
            if !payload.is_empty() {
                outputs.push_back(Output::Broadcast(ServerMessage::Border {
                    region: id,
                    epoch,
                    toward,
                    tick,
                    payload,
                }));
            }
        }
        for (toward, players) in region.players_near_borders(distance) {
            outputs.push_back(Output::Broadcast(ServerMessage::NearBorder { region: id, toward, players }));
        }
    }
}

/// The wire form of an avatar leaving `from`.
fn transfer_from(from: RegionId, emigrant: Emigrant) -> Transfer {
    Transfer {
        player: emigrant.player,
        from,
        to: emigrant.to,
        last_applied: emigrant.last_applied,
        pending: emigrant.pending,
        avatar: emigrant.avatar,
        crossings: emigrant.crossings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inputs_of_players_elsewhere_are_bounced() {
        // Pins today's rule: bouncing a full queue's input would circle it between gateway and
        // server (see `after_refusal`); everything else that cannot apply anywhere is dropped.
        assert_eq!(after_refusal(&SessionError::UnknownPlayer(PlayerId(1))), Refused::Bounce);
        assert_eq!(after_refusal(&SessionError::QueueFull(PlayerId(1))), Refused::Drop);
        assert_eq!(after_refusal(&SessionError::ZeroSequence), Refused::Drop);
        assert_eq!(after_refusal(&SessionError::PayloadTooLarge(4096)), Refused::Drop);
        assert_eq!(after_refusal(&SessionError::AlreadyJoined(PlayerId(1))), Refused::Drop);
    }

    #[test]
    fn an_input_for_a_player_whose_avatar_left_sends_its_crossing_out_again_then_bounces() {
        use crate::region::test_logic::{self, B, PLAYER};
        let start = Instant::now();
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        let left = test_logic::walk(&mut region, B);
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings(start, 0), rewarm, start);
        while node.poll_output(start).is_some() {}
        node.handle_input(start, PlayerInput { player: PLAYER, seq: 1, payload: vec![1] });
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        let again = Transfer {
            player: PLAYER,
            from: test_logic::A,
            to: B,
            last_applied: left.last_applied,
            pending: left.pending.clone(),
            avatar: left.avatar.clone(),
            crossings: 1,
        };
        let crossing_again = |outputs: &[Output], seq: u64| {
            matches!(outputs, [
                Output::CrossingAgain { player: PLAYER, message: ServerMessage::Emigrated { epoch: Epoch(3), transfer } },
                Output::Bounce(ServerMessage::Bounced { seq: bounced, .. }, PLAYER),
                Output::Event(HostEvent::InputRefused { .. }),
            ] if *transfer == again && *bounced == seq)
        };
        assert!(crossing_again(&outputs, 1), "{outputs:?}");
        // The next input soon after: only bounced (the crossing went out again just now).
        node.handle_input(start, PlayerInput { player: PLAYER, seq: 2, payload: vec![1] });
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        assert!(matches!(&outputs[..], [Output::Bounce(..), Output::Event(_)]), "{outputs:?}");
        // Unless the crossing sent again reached no gateway: then the next input sends it again.
        node.handle_crossing_unsent(PLAYER);
        node.handle_input(start, PlayerInput { player: PLAYER, seq: 3, payload: vec![1] });
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        assert!(crossing_again(&outputs, 3), "{outputs:?}");
        node.handle_input(start, PlayerInput { player: PLAYER, seq: 4, payload: vec![1] });
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        assert!(matches!(&outputs[..], [Output::Bounce(..), Output::Event(_)]), "{outputs:?}");
        // A player who never was here is only bounced.
        node.handle_input(start, PlayerInput { player: PlayerId(99), seq: 1, payload: vec![1] });
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        assert!(matches!(&outputs[..], [Output::Bounce(..), Output::Event(_)]), "{outputs:?}");
    }

    /// A node named `here`, checkpointing every `every` ticks.
    fn settings(start: Instant, every: u64) -> NodeSettings {
        NodeSettings {
            name: "here".into(),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            source: crate::handoff::SourceConfig::default(),
            players: PlayerSettings::default(),
            checkpoint_every_ticks: every,
            wall_clock: (start, 1_000_000),
        }
    }

    /// An owner of region A at epoch 3 with one player, checkpoints on; its outputs so far drained.
    fn owner_with_checkpoints(start: Instant) -> RegionNode<crate::region::test_logic::Walkers> {
        use crate::region::test_logic::{self, PLAYER};
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings(start, 100), rewarm, start);
        while node.poll_output(start).is_some() {}
        node
    }

    /// What the node puts out now: its store requests' ticks, whether it announced a handoff, and
    /// the reasons of its aborts and of its feed's end.
    fn outputs_of(
        node: &mut RegionNode<crate::region::test_logic::Walkers>,
        now: Instant,
    ) -> (Vec<u64>, bool, Vec<String>, Vec<String>) {
        let (mut stores, mut started, mut aborts, mut ended) = (Vec::new(), false, Vec::new(), Vec::new());
        while let Some(output) = node.poll_output(now) {
            match output {
                Output::StoreCheckpoint { info, .. } => stores.push(info.tick),
                Output::Broadcast(ServerMessage::HandoffStarted { .. }) => started = true,
                Output::Event(HostEvent::Aborted { reason, owning: true, .. }) => aborts.push(reason),
                Output::Event(HostEvent::FeedEnded { reason, .. }) => ended.push(reason),
                _ => {}
            }
        }
        (stores, started, aborts, ended)
    }

    #[test]
    fn a_tick_s_updates_go_out_before_its_checkpoint_is_encoded_and_a_handler_encodes_it_first() {
        use crate::region::test_logic::{self, PLAYER};
        let start = Instant::now();
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        let interval = region.config().tick_interval();
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings(start, 1), rewarm, start);
        while node.poll_output(start).is_some() {}
        let is_store = |output: &Output| matches!(output, Output::StoreCheckpoint { .. });
        let is_ticked = |output: &Output| matches!(output, Output::Ticked(_));

        let due = start + interval;
        node.handle_timeout(due, &NoGateways);
        assert!(node.outputs.iter().any(is_ticked), "the tick ran");
        assert!(!node.outputs.iter().any(is_store), "the checkpoint waits for the tick's outputs to be taken");
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(due)).collect();
        let ticked = outputs.iter().position(is_ticked).expect("the tick's outputs");
        let stored = outputs.iter().position(is_store).expect("the checkpoint, once they were taken");
        assert!(ticked < stored, "{outputs:?}");

        // A handler called before the outputs are taken encodes it first, as the tick did before.
        let due = due + interval;
        node.handle_timeout(due, &NoGateways);
        node.handle_input(due, PlayerInput { player: PLAYER, seq: 1, payload: vec![1] });
        assert!(node.tick_pending.is_none());
        assert!(node.outputs.iter().any(is_store));
        let stores = std::iter::from_fn(|| node.poll_output(due)).filter(is_store).count();
        assert_eq!(stores, 1, "one checkpoint of the tick");

        // Checkpointing every 100 ticks, a tick with none due stores none.
        let mut node = owner_with_checkpoints(start);
        let mut due = start;
        for _ in 0..2 {
            due += interval;
            node.handle_timeout(due, &NoGateways);
            while node.poll_output(due).is_some() {}
        }
        due += interval;
        node.handle_timeout(due, &NoGateways);
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(due)).collect();
        assert!(outputs.iter().any(is_ticked) && !outputs.iter().any(is_store), "{outputs:?}");
    }

    #[test]
    fn a_region_with_a_standby_stores_a_checkpoint_before_its_handoff_lets_the_standby_go() {
        let start = Instant::now();
        let standby = std::net::SocketAddr::from(([127, 0, 0, 1], 10));
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], 11));
        let ours = Ownership { owner: "here".into(), epoch: Epoch(3) };

        // Without a standby the handoff starts at once.
        let mut node = owner_with_checkpoints(start);
        node.handle_start_handoff(start, target, 1);
        let (stores, started, _, _) = outputs_of(&mut node, start);
        assert_eq!((stores, started), (Vec::new(), true));

        // With one, a checkpoint first; the handoff starts (ending the feed) once it is stored.
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        let _ = outputs_of(&mut node, start);
        node.handle_start_handoff(start, target, 2);
        let (stores, started, aborts, ended) = outputs_of(&mut node, start);
        assert_eq!((stores.len(), started, aborts.len(), ended.len()), (1, false, 0, 0), "waiting for the store");
        assert!(node.handoff().is_none());
        // Asked again meanwhile: still one handoff, one checkpoint.
        node.handle_start_handoff(start, target, 3);
        assert_eq!(outputs_of(&mut node, start).0, Vec::<u64>::new());
        // Another checkpoint's report does not start it.
        node.handle_checkpoint_stored(start, stores[0] + 1, true, Some(&ours));
        assert!(!outputs_of(&mut node, start).1);
        node.handle_checkpoint_stored(start, stores[0], true, Some(&ours));
        let (_, started, aborts, ended) = outputs_of(&mut node, start);
        assert!(started && aborts.is_empty(), "{aborts:?}");
        assert_eq!(ended.len(), 1, "the handoff ends the standby's feed");
        assert!(node.handoff().is_some());

        // A checkpoint that was not stored: no handoff, the standby stays.
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        let _ = outputs_of(&mut node, start);
        node.handle_start_handoff(start, target, 2);
        let stores = outputs_of(&mut node, start).0;
        node.handle_checkpoint_stored(start, stores[0], false, Some(&ours));
        let (_, started, aborts, ended) = outputs_of(&mut node, start);
        assert!(!started && ended.is_empty(), "{ended:?}");
        assert_eq!(aborts, vec!["the checkpoint before the move was not stored".to_owned()]);
        assert!(node.handoff().is_none());
        // The next request tries again.
        node.handle_start_handoff(start, target, 3);
        assert_eq!(outputs_of(&mut node, start).0.len(), 1);
    }

    #[test]
    fn a_handoff_whose_checkpoint_is_never_stored_is_refused_after_the_wait() {
        let start = Instant::now();
        let standby = std::net::SocketAddr::from(([127, 0, 0, 1], 10));
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], 11));
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        let _ = outputs_of(&mut node, start);
        node.handle_start_handoff(start, target, 2);
        let stores = outputs_of(&mut node, start).0;
        assert_eq!(stores.len(), 1);
        let almost = start + CHECKPOINT_WAIT - Duration::from_millis(1);
        node.handle_timeout(almost, &NoGateways);
        let (_, started, aborts, _) = outputs_of(&mut node, almost);
        assert!(!started && aborts.is_empty(), "{aborts:?}");
        let over = start + CHECKPOINT_WAIT;
        node.handle_timeout(over, &NoGateways);
        let (_, started, aborts, _) = outputs_of(&mut node, over);
        assert!(!started);
        assert_eq!(aborts, vec!["the checkpoint before the move was not stored within 30 s".to_owned()]);
        // The store's late answer starts nothing.
        let ours = Ownership { owner: "here".into(), epoch: Epoch(3) };
        node.handle_checkpoint_stored(over, stores[0], true, Some(&ours));
        assert!(!outputs_of(&mut node, over).1, "a late answer started the handoff");
        assert!(node.handoff_waiting.is_none() && node.handoff().is_none());
        // The next request is taken (the standby, which never answered, is gone: it starts at once).
        node.handle_start_handoff(over, target, 3);
        assert!(outputs_of(&mut node, over).1);
    }

    #[test]
    fn a_handoff_waits_for_the_checkpoint_of_its_tick_being_stored_and_blocks_a_stop_meanwhile() {
        let start = Instant::now();
        let standby = std::net::SocketAddr::from(([127, 0, 0, 1], 10));
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], 11));
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        // The first tick checkpoints the region (it was given its world); that store is running.
        let later = start + Duration::from_secs(2);
        node.handle_timeout(later, &NoGateways);
        let stores = outputs_of(&mut node, later).0;
        assert_eq!(stores, vec![node.region.world().tick()]);
        // The handoff asked for at that tick waits for that checkpoint instead of taking another.
        node.handle_start_handoff(later, target, 2);
        let (more, started, _, _) = outputs_of(&mut node, later);
        assert_eq!((more, started), (Vec::new(), false));
        // A stop meanwhile is refused.
        node.handle_stop(later, true);
        let refused = std::iter::from_fn(|| node.poll_output(later))
            .any(|output| matches!(output, Output::Event(HostEvent::StopRefused { .. })));
        assert!(refused, "a stop while the handoff waits");
        // The store's answer without the authority's word: refused, saying so.
        node.handle_checkpoint_stored(later, stores[0], true, None);
        let (_, started, aborts, _) = outputs_of(&mut node, later);
        assert!(!started);
        assert!(aborts[0].contains("authority"), "{aborts:?}");

        // Asked for after the tick but before its outputs were taken: the tick's checkpoint is
        // taken first, and the handoff waits for it rather than taking a second one.
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        let _ = outputs_of(&mut node, start);
        node.handle_timeout(later, &NoGateways);
        node.handle_start_handoff(later, target, 2);
        let (stores, started, aborts, ended) = outputs_of(&mut node, later);
        assert_eq!(stores, vec![node.region.world().tick()], "one checkpoint, of the tick");
        assert!(!started && aborts.is_empty() && ended.is_empty(), "{aborts:?} {ended:?}");
        assert!(node.handoff().is_none());
        node.handle_checkpoint_stored(
            later,
            stores[0],
            true,
            Some(&Ownership { owner: "here".into(), epoch: Epoch(3) }),
        );
        assert!(outputs_of(&mut node, later).1, "the handoff starts once it is stored");

        // A failover takes the region while the handoff waits: no second abort, no handoff.
        let mut node = owner_with_checkpoints(start);
        node.handle_start_standby(start, standby, 1);
        let _ = outputs_of(&mut node, start);
        node.handle_start_handoff(start, target, 2);
        let stores = outputs_of(&mut node, start).0;
        node.handle_checkpoint_stored(
            start,
            stores[0],
            true,
            Some(&Ownership { owner: "else".into(), epoch: Epoch(4) }),
        );
        let lost: Vec<Output> = std::iter::from_fn(|| node.poll_output(start)).collect();
        let aborts = lost.iter().filter(|output| matches!(output, Output::Event(HostEvent::Aborted { .. }))).count();
        assert_eq!(aborts, 1, "{lost:?}");
        assert!(node.handoff().is_none() && node.owned_epoch().is_none());
    }

    #[test]
    fn a_snapshot_streams_a_chunk_every_interval_while_every_tick_runs_late() {
        streams_while_ticks_run_late(false);
    }

    #[test]
    fn a_standby_feed_streams_a_chunk_every_interval_while_every_tick_runs_late() {
        streams_while_ticks_run_late(true);
    }

    /// A handoff's (or, with `standby`, a standby feed's) snapshot: as many chunks as the window
    /// takes before the next tick is due, then exactly one per [`MIN_CHUNK_INTERVAL`] while every
    /// tick runs late.
    fn streams_while_ticks_run_late(standby: bool) {
        use crate::region::test_logic::{self, PLAYER};
        let start = Instant::now();
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        test_logic::crowd(&mut region, 20_000);
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let mut settings = settings(start, 0);
        settings.source.chunk = crate::codec::ChunkConfig { target_chunk_bytes: 4000, max_chunk_bytes: 5000 };
        settings.source.window_bytes = 40_000;
        let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings, rewarm, start);
        // The first tick: the next is due a second later (the region ticks at 1 Hz).
        node.handle_timeout(start, &NoGateways);
        while node.poll_output(start).is_some() {}
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 11));
        if standby {
            node.handle_start_standby(start, peer, 1);
        } else {
            node.handle_start_handoff(start, peer, 1);
        }
        let handoff = std::iter::from_fn(|| node.poll_output(start))
            .find_map(|output| match output {
                Output::ToPeer(Message::Begin { handoff, .. }) | Output::ToStandby(Message::Follow { handoff, .. }) => {
                    Some(handoff)
                }
                _ => None,
            })
            .expect("the stream begins");
        let reply = |node: &mut RegionNode<test_logic::Walkers>, now: Instant, message: Message| {
            if standby {
                node.handle_standby_message(now, message);
            } else {
                node.handle_peer_message(now, message);
            }
        };
        reply(&mut node, start, Message::Ready { handoff, target: "there".into() });
        // Chunks put out at `now`, each acknowledged as applied so the window stays open.
        let mut sent_bytes = 0u64;
        let mut chunks_at = |node: &mut RegionNode<test_logic::Walkers>, now: Instant| {
            let mut chunks = 0;
            while let Some(output) = node.poll_output(now) {
                if let Output::ToPeer(Message::Chunk { bytes, .. }) | Output::ToStandby(Message::Chunk { bytes, .. }) =
                    output
                {
                    chunks += 1;
                    sent_bytes += bytes.len() as u64;
                }
            }
            reply(node, now, Message::Progress { handoff, applied_bytes: sent_bytes });
            chunks
        };
        // Before the next tick is due, chunks go out as fast as they are encoded, up to the window.
        let before_due = chunks_at(&mut node, start + Duration::from_millis(10));
        assert!(before_due >= 8, "{before_due} chunks before the tick was due");
        // From the due time on, ticks run late (none runs here): one chunk at once (none went
        // out for longer than the interval), then one per interval and none in between.
        let due = start + Duration::from_secs(1);
        let mut sent = Vec::new();
        for step in 0..100u32 {
            let now = due + Duration::from_millis(10) * step;
            let chunks = chunks_at(&mut node, now);
            assert!(chunks <= 1, "{chunks} chunks at once at {step}");
            if chunks == 1 {
                sent.push(step);
            }
        }
        assert_eq!(sent, vec![0, 10, 20, 30, 40, 50, 60, 70, 80, 90], "chunks sent at these 10 ms steps");
        if !standby {
            assert_eq!(node.handoff().map(HandoffSource::phase), Some(SourcePhase::Snapshot), "still streaming");
        }
    }

    /// An owner of region A (1 Hz, one player) whose handoff streamed its snapshot, wholly
    /// applied, at `start`; its next tick is due a second later.
    fn owner_past_its_snapshot(start: Instant) -> RegionNode<crate::region::test_logic::Walkers> {
        owner_past_its_snapshot_with(start, crate::handoff::SourceConfig::default())
    }

    /// [`owner_past_its_snapshot`], its handoff's source configured by `source`.
    fn owner_past_its_snapshot_with(
        start: Instant,
        source: crate::handoff::SourceConfig,
    ) -> RegionNode<crate::region::test_logic::Walkers> {
        use crate::region::test_logic::{self, PLAYER};
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let settings = NodeSettings { source, ..settings(start, 0) };
        let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings, rewarm, start);
        node.handle_timeout(start, &NoGateways);
        while node.poll_output(start).is_some() {}
        node.handle_start_handoff(start, std::net::SocketAddr::from(([127, 0, 0, 1], 11)), 1);
        let handoff = std::iter::from_fn(|| node.poll_output(start))
            .find_map(|output| match output {
                Output::ToPeer(Message::Begin { handoff, .. }) => Some(handoff),
                _ => None,
            })
            .expect("the handoff begins");
        node.handle_peer_message(start, Message::Ready { handoff, target: "there".into() });
        let snapshot: u64 = std::iter::from_fn(|| node.poll_output(start))
            .map(|output| match output {
                Output::ToPeer(Message::Chunk { bytes, .. }) => bytes.len() as u64,
                _ => 0,
            })
            .sum();
        node.handle_peer_message(start, Message::Progress { handoff, applied_bytes: snapshot });
        while node.poll_output(start).is_some() {}
        node
    }

    #[test]
    fn a_handoff_works_at_a_tick_only_once_the_tick_s_outputs_are_out() {
        use crate::region::test_logic;
        let start = Instant::now();
        let mut node = owner_past_its_snapshot(start);
        // The next tick: the region changed by nothing since, so its round is the final one. It is
        // collected and the region frozen only after the tick's outputs were taken.
        let due = start + Duration::from_secs(1);
        node.handle_timeout(due, &NoGateways);
        let source = |node: &RegionNode<test_logic::Walkers>| node.handoff().expect("a handoff").allows_ticks();
        assert!(source(&node), "nothing of the handoff's work is done in the tick");
        let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output(due)).collect();
        let ticked = outputs.iter().position(|output| matches!(output, Output::Ticked(_)));
        let frozen =
            outputs.iter().position(|output| matches!(output, Output::Broadcast(ServerMessage::Frozen { .. })));
        assert!(ticked.is_some() && frozen > ticked, "the tick's outputs come first: {outputs:?}");
        assert!(!source(&node), "frozen once the outputs were taken");
    }

    /// An owner past its snapshot whose next round, of 200 new entities, fits the freeze budget
    /// in parts of a few hundred bytes.
    fn owner_with_a_round_of_many_parts(start: Instant) -> RegionNode<crate::region::test_logic::Walkers> {
        let chunk = crate::codec::ChunkConfig { target_chunk_bytes: 512, max_chunk_bytes: 1024 };
        let source = crate::handoff::SourceConfig { chunk, ..crate::handoff::SourceConfig::default() };
        let mut node = owner_past_its_snapshot_with(start, source);
        crate::region::test_logic::crowd(node.region_mut(), 200);
        node
    }

    /// [`owner_with_a_round_of_many_parts`] after its next tick, its outputs taken up to the round's
    /// first part; when that tick was due.
    fn at_the_first_part_of_a_round(
        start: Instant,
    ) -> (RegionNode<crate::region::test_logic::Walkers>, Instant, Vec<Output>) {
        let mut node = owner_with_a_round_of_many_parts(start);
        let due = start + Duration::from_secs(1);
        node.handle_timeout(due, &NoGateways);
        let mut outputs: Vec<Output> = Vec::new();
        while delta_parts(&outputs).is_empty() {
            outputs.push(node.poll_output(due).expect("the round's first part"));
        }
        (node, due, outputs)
    }

    /// The delta parts among `outputs`: (round, part).
    fn delta_parts(outputs: &[Output]) -> Vec<(u32, u32)> {
        outputs
            .iter()
            .filter_map(|output| match output {
                Output::ToPeer(Message::Delta { round, part, .. }) => Some((*round, *part)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_round_read_at_a_tick_boundary_goes_out_a_part_per_poll_and_the_freeze_is_told_once_its_last_is_made() {
        let start = Instant::now();
        let mut node = owner_with_a_round_of_many_parts(start);
        let due = start + Duration::from_secs(1);
        node.handle_timeout(due, &NoGateways);
        let mut outputs = Vec::new();
        // Each part is handed over as soon as it is made: the next is not made yet.
        while let Some(output) = node.poll_output(due) {
            if matches!(output, Output::ToPeer(Message::Delta { .. })) && delta_parts(&outputs).is_empty() {
                let handoff = node.handoff().expect("a handoff");
                assert!(handoff.encodes_at_boundary(), "parts still to make after the first");
                assert!(!handoff.allows_ticks() && !node.ticks(), "nothing ticks until the round is decided");
                assert_eq!(handoff.phase(), SourcePhase::Rounds, "not frozen before its last part");
            }
            outputs.push(output);
        }
        let parts = delta_parts(&outputs);
        assert!(parts.len() >= 4, "many parts: {parts:?}");
        assert_eq!(parts, (0..parts.len() as u32).map(|part| (1, part)).collect::<Vec<_>>());
        let last_part = outputs.iter().rposition(|output| matches!(output, Output::ToPeer(Message::Delta { .. })));
        let frozen =
            outputs.iter().position(|output| matches!(output, Output::Broadcast(ServerMessage::Frozen { .. })));
        let freeze = outputs.iter().position(|output| matches!(output, Output::ToPeer(Message::Freeze { .. })));
        assert!(frozen.is_some() && freeze > last_part && frozen < freeze, "{outputs:?}");
        assert!(matches!(
            &outputs[freeze.unwrap_or_default()],
            Output::ToPeer(Message::Freeze { round: 1, parts, .. }) if *parts as usize == delta_parts(&outputs).len()
        ));
        assert_eq!(node.handoff().expect("a handoff").phase(), SourcePhase::Frozen);
    }

    #[test]
    fn a_handler_called_while_a_round_is_encoded_at_its_boundary_makes_its_remaining_parts_first() {
        use crate::region::test_logic::PLAYER;
        let (mut node, due, mut outputs) = at_the_first_part_of_a_round(Instant::now());
        assert!(node.handoff().expect("a handoff").encodes_at_boundary());
        // An input before the driver polled the other parts: they are made from the world as it
        // was at the boundary before the input is taken (held: the region froze).
        node.handle_input(due, PlayerInput { player: PLAYER, seq: 1, payload: vec![1] });
        assert!(!node.handoff().expect("a handoff").encodes_at_boundary());
        assert_eq!(node.handoff().expect("a handoff").phase(), SourcePhase::Frozen);
        outputs.extend(std::iter::from_fn(|| node.poll_output(due)));
        let parts = delta_parts(&outputs);
        assert!(parts.len() >= 4, "many parts: {parts:?}");
        assert_eq!(parts, (0..parts.len() as u32).map(|part| (1, part)).collect::<Vec<_>>());
        let digest = node.region_mut().world_mut().digest();
        assert!(outputs.iter().any(|output| matches!(
            output,
            Output::ToPeer(Message::Freeze { parts: count, digest: sent, .. })
                if *count as usize == parts.len() && WorldDigest(*sent) == digest
        )));
    }

    #[test]
    fn a_link_lost_while_a_round_is_encoded_at_its_boundary_drops_the_round_and_never_freezes() {
        let (mut node, due, mut outputs) = at_the_first_part_of_a_round(Instant::now());
        node.handle_link_lost(due);
        outputs.extend(std::iter::from_fn(|| node.poll_output(due)));
        assert_eq!(delta_parts(&outputs), vec![(1, 0)], "no part made after the loss");
        assert!(
            !outputs.iter().any(|output| matches!(
                output,
                Output::Broadcast(ServerMessage::Frozen { .. }) | Output::ToPeer(Message::Freeze { .. })
            )),
            "{outputs:?}"
        );
        let handoff = node.handoff().expect("a handoff");
        assert!(!handoff.encodes_at_boundary() && handoff.abort_reason().is_some());
        assert!(node.ticks(), "the source ticks on, owning the region");
    }

    #[test]
    fn a_tick_due_before_the_handoff_worked_at_the_last_one_waits_for_that_work() {
        let start = Instant::now();
        let mut node = owner_past_its_snapshot(start);
        let tick = node.region().world().tick();
        // Two ticks fall due with no outputs taken in between: the first tick's round freezes the
        // region before the second could run.
        node.handle_timeout(start + Duration::from_secs(1), &NoGateways);
        node.handle_timeout(start + Duration::from_secs(2), &NoGateways);
        assert_eq!(node.region().world().tick(), tick + 1, "one tick ran");
        assert!(!node.handoff().expect("a handoff").allows_ticks());
    }

    /// A source of region A (1 Hz, one player) and its target, the handoff piped between them
    /// until the target applied and checked the final round and asked the authority for the swap
    /// (its answer not given yet); the time then.
    fn target_asking_the_authority(
        start: Instant,
    ) -> (RegionNode<crate::region::test_logic::Walkers>, RegionNode<crate::region::test_logic::Walkers>, Instant) {
        piped_until_the_authority_is_asked(start, false)
    }

    /// [`target_asking_the_authority`], with every archive the target receives `prepared` (as a
    /// region server's link prepares them) or handed over raw.
    fn piped_until_the_authority_is_asked(
        start: Instant,
        prepared: bool,
    ) -> (RegionNode<crate::region::test_logic::Walkers>, RegionNode<crate::region::test_logic::Walkers>, Instant) {
        use crate::region::test_logic::{self, PLAYER};
        let rewarm = || -> Rewarm<test_logic::Walkers> { Box::new(|id| Ok(test_logic::region(id))) };
        let mut region = test_logic::region(test_logic::A);
        region.join_player(PLAYER).unwrap();
        let mut source = RegionNode::new(region, Role::Owner { epoch: Epoch(3) }, settings(start, 0), rewarm(), start);
        let mut target =
            RegionNode::new(test_logic::region(test_logic::A), Role::Target, settings(start, 0), rewarm(), start);
        source.handle_timeout(start, &NoGateways);
        source.handle_start_handoff(start, std::net::SocketAddr::from(([127, 0, 0, 1], 11)), 1);
        let mut now = start;
        for _ in 0..10 {
            loop {
                let mut moved = false;
                while let Some(output) = source.poll_output(now) {
                    if let Output::ToPeer(message) = output {
                        match &message {
                            Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } if prepared => {
                                let registry = target.region().world().registry().clone();
                                let archive =
                                    crate::codec::prepare(&registry, bytes, crate::codec::DecodeLimits::default());
                                target.handle_peer_prepared(now, message, archive);
                            }
                            _ => target.handle_peer_message(now, message),
                        }
                        moved = true;
                    }
                }
                while let Some(output) = target.poll_output(now) {
                    match output {
                        Output::ToPeer(message) => {
                            source.handle_peer_message(now, message);
                            moved = true;
                        }
                        Output::Authority { commit: true, .. } => return (source, target, now),
                        _ => {}
                    }
                }
                if !moved {
                    break;
                }
            }
            now += Duration::from_secs(1);
            source.handle_timeout(now, &NoGateways);
            target.handle_timeout(now, &NoGateways);
        }
        panic!("the target never asked the authority");
    }

    #[test]
    fn a_target_takes_archives_prepared_away_as_raw_ones_and_decodes_again_what_their_preparation_refused() {
        use crate::region::test_logic;
        let start = Instant::now();
        let (source, target, _) = piped_until_the_authority_is_asked(start, true);
        assert_eq!(target.target_phase(), TargetPhase::Committing, "the digests agreed");
        assert_eq!(target.region().world().entity_count(), source.region().world().entity_count());

        // A preparation that failed is decoded again from the bytes: these are empty, and abort
        // the attempt with the region's own reason.
        let rewarm: Rewarm<test_logic::Walkers> = Box::new(|id| Ok(test_logic::region(id)));
        let mut fresh =
            RegionNode::new(test_logic::region(test_logic::A), Role::Target, settings(start, 0), rewarm, start);
        let world = fresh.region().world();
        let begin = Message::Begin {
            handoff: 9,
            version: crate::handoff::message::PROTOCOL_VERSION,
            region: test_logic::A.0,
            epoch: 3,
            source: "source".into(),
            schema: world.registry().schema_hash(),
            tick_interval_us: 1_000_000,
            sizes: world.sizes(),
        };
        fresh.handle_peer_message(start, begin);
        assert_eq!(fresh.target_phase(), TargetPhase::Receiving);
        let delta = Message::Delta { handoff: 9, round: 1, part: 0, bytes: Vec::new() };
        fresh.handle_peer_prepared(start, delta, Err(crate::codec::CodecError::Invalid("made up".into())));
        assert_eq!(fresh.target_phase(), TargetPhase::Aborted);
        let aborted = std::iter::from_fn(|| fresh.poll_output(start)).find_map(|output| match output {
            Output::ToPeer(Message::Abort { reason, .. }) => Some(reason),
            _ => None,
        });
        assert_eq!(
            aborted.as_deref(),
            Some("a received archive is invalid: archive truncated: shorter than the header")
        );
    }

    #[test]
    fn a_committed_target_sends_committed_before_it_takes_the_region_over() {
        use crate::region::test_logic::PLAYER;
        let start = Instant::now();
        let (_source, mut target, now) = target_asking_the_authority(start);
        assert!(target.region().session_of(PLAYER).is_none(), "the pre-warmed region knows nobody yet");
        target.handle_authority(now, Ok(()));
        // protocol.md §6: the source's freeze ends when `Committed` reaches it; reading the
        // sessions and bringing the engines up to the final round comes after it is out.
        let first = target.poll_output(now);
        assert!(matches!(first, Some(Output::ToPeer(Message::Committed { .. }))), "{first:?}");
        assert!(target.region().session_of(PLAYER).is_none(), "not taken over before Committed is out");
        let rest: Vec<Output> = std::iter::from_fn(|| target.poll_output(now)).collect();
        assert!(rest.iter().any(|output| matches!(output, Output::Owned { .. })), "{rest:?}");
        assert!(target.region().session_of(PLAYER).is_some(), "taken over once the outputs were taken");
    }

    #[test]
    fn a_committed_target_takes_the_region_over_before_it_handles_anything_else() {
        use crate::region::test_logic::PLAYER;
        type Call = fn(&mut RegionNode<crate::region::test_logic::Walkers>, Instant);
        let calls: [(&str, Call); 3] = [
            ("an input", |node, now| node.handle_input(now, PlayerInput { player: PLAYER, seq: 1, payload: vec![1] })),
            ("a join of someone else", |node, now| {
                node.handle_gateway(now, GatewayRequest::Join { player: PlayerId(99), gateway: 1 });
            }),
            ("the first tick", |node, now| node.handle_timeout(now + Duration::from_secs(1), &NoGateways)),
        ];
        for (what, call) in calls {
            let start = Instant::now();
            let (_source, mut target, now) = target_asking_the_authority(start);
            target.handle_authority(now, Ok(()));
            let first = target.poll_output(now);
            assert!(matches!(first, Some(Output::ToPeer(Message::Committed { .. }))), "{first:?}");
            // Handled before the driver took the rest of the commit's outputs: the region is
            // taken over first, so the player is known.
            call(&mut target, now);
            assert!(target.region().session_of(PLAYER).is_some(), "{what}: not taken over first");
            let outputs: Vec<Output> = std::iter::from_fn(|| target.poll_output(now)).collect();
            assert!(!outputs.iter().any(|output| matches!(output, Output::Bounce(..))), "{what}: {outputs:?}");
        }
    }

    #[test]
    fn the_tick_log_keeps_the_last_ticks_without_a_handoff_and_those_of_one() {
        let mut log = TickLog::default();
        for tick in 0..(TICKS_KEPT as u64 + 5) {
            log.record(false, Duration::from_micros(tick), Duration::from_micros(1));
        }
        log.after_tick_worked(Duration::from_micros(40));
        log.handoff_worked(Duration::from_millis(1));
        log.handoff_started();
        log.record(true, Duration::from_millis(3), Duration::from_micros(7));
        log.handoff_worked(Duration::from_micros(250));
        log.after_tick_worked(Duration::from_micros(60));
        log.record(true, Duration::from_secs(5000), Duration::ZERO);
        let (before, during) = log.take();
        assert_eq!(before.busy_us.len(), TICKS_KEPT);
        assert_eq!(before.busy_us.first(), Some(&5), "the oldest went");
        assert_eq!(before.late_us.len(), TICKS_KEPT);
        assert!(before.handoff_us.is_empty(), "no handoff's work before one");
        assert_eq!(before.after_us.len(), TICKS_KEPT);
        assert_eq!(before.after_us[TICKS_KEPT - 2..], [0, 40], "the checkpoint or standby round after the last tick");
        assert_eq!(during.busy_us, vec![3000, u32::MAX], "a tick too long for u32 µs is counted as the longest");
        assert_eq!(during.late_us, vec![7, 0]);
        assert_eq!(during.handoff_us, vec![250, 0], "the work after each tick of the handoff");
        assert_eq!(during.after_us, vec![60, 0], "the rest of the work after each tick of the handoff");
        assert_eq!(log.take().1, TickSamples::default(), "the handoff's ticks are taken once");
        for tick in 0..(HANDOFF_TICKS_KEPT as u64 + 2) {
            log.record(true, Duration::from_micros(tick), Duration::ZERO);
        }
        let during = log.take().1;
        assert_eq!(during.busy_us.len(), HANDOFF_TICKS_KEPT);
        assert_eq!(during.busy_us.first(), Some(&2), "a long handoff keeps its last ticks");
        // An aborted handoff's ticks are not the next one's.
        log.record(true, Duration::from_millis(1), Duration::ZERO);
        log.handoff_started();
        assert_eq!(log.take().1, TickSamples::default());
    }

    #[test]
    fn wall_times_follow_the_anchor_both_ways() {
        let at = Instant::now();
        assert_eq!(wall_micros((at, 1_000_000), at + Duration::from_millis(3)), 1_003_000);
        assert_eq!(wall_micros((at + Duration::from_millis(3), 1_000_000), at), 997_000);
    }
}
