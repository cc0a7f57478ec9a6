//! One region's thread: the driver of its [`RegionNode`].
//!
//! The node (`baton_sdk::node`) holds every decision: ticks, inputs, gateway requests, the
//! region's side of a handoff. This loop only waits for the earliest of the node's next timeout
//! or a [`Command`], feeds it in with the time, and carries out what the node asks
//! ([`Output`]): handoff messages onto the QUIC link, compare-and-swaps at the authority (on a
//! blocking thread, answered through the same channel, so a slow authority never holds up the
//! thread), messages to gateways through the [`GatewayHub`], checkpoints to the store, events to
//! the host's operator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use baton_sdk::handoff::{
    AuthorityError, EncodeJob, EncodedRound, HandoffSource, Message, Ownership, OwnershipAuthority, TargetPhase,
};
use baton_sdk::node::{GatewayRequest, Gateways, Output, RegionNode};
use baton_sdk::physics::{BuiltEngine, EngineBuild};
use baton_sdk::wire::upstream::ServerMessage;
use baton_sdk::wire::{PlayerId, PlayerInput, RegionId};
use baton_sdk::{Region, RegionLogic};
use tokio::sync::mpsc::UnboundedSender;

use crate::fault_point::FaultPhase;
use crate::upstream::GatewayHub;
use crate::{HostEvent, IDLE_POLL};

/// A closure run on a region's thread between ticks.
pub type RegionQuery<L> = Box<dyn FnOnce(&mut Region<L>) + Send>;

/// Everything that can happen to a region's thread.
pub enum Command<L: RegionLogic> {
    /// A player input.
    Input(PlayerInput),
    /// A message from the handoff peer on link `link`.
    Peer {
        /// Which link it came on.
        link: u64,
        /// The message.
        message: Message,
        /// Its share of the link's budget of bytes read and not yet handled
        /// (`link::LINK_IN_FLIGHT_BYTES`), given back when the command is dropped.
        held: Option<tokio::sync::OwnedSemaphorePermit>,
        /// The archive of a `Chunk` or `Delta` of at least 64 KiB (`link::PREPARE_AT_LEAST`),
        /// prepared away from the region's thread (`codec::prepare`), on a handoff target's link.
        prepared: Option<baton_sdk::codec::Prepared>,
    },
    /// A handoff link to a source arrived: replies go to these senders (control, bulk).
    Attach(LinkHandle),
    /// Handoff link `link` broke.
    LinkLost {
        /// Which link.
        link: u64,
    },
    /// Start moving the region to `peer`.
    StartHandoff {
        /// The target host's address.
        peer: SocketAddr,
    },
    /// Start feeding a hot standby at `peer`.
    FeedStandby {
        /// The standby's address.
        peer: SocketAddr,
    },
    /// Promote the standby held here: the owner at `epoch` is lost.
    Promote {
        /// The lost owner's epoch.
        epoch: baton_sdk::wire::Epoch,
    },
    /// Run a closure on the region between ticks.
    Query(RegionQuery<L>),
    /// A gateway's join, leave or arrival.
    Gateway(GatewayRequest),
    /// The physics engine the node asked to build ([`Output::BuildEngine`]) is built.
    EngineBuilt(Box<BuiltEngine>),
    /// The delta round the node asked to encode ([`Output::EncodeRound`]) is encoded.
    Encoded(EncodedRound),
    /// The authority answered the node's last compare-and-swap.
    Authority(Result<(), AuthorityError>),
    /// Save the region to the checkpoint store and stop hosting it (a restart the old way).
    Stop,
    /// The checkpoint taken at `tick` was stored (or not), and who owns the region now, as the
    /// authority answered right after (`None`: it did not answer).
    CheckpointStored {
        /// The checkpoint's tick.
        tick: u64,
        /// Whether it is in the store.
        stored: bool,
        /// The region's owner now.
        owner: Option<Ownership>,
    },
    /// Stop the thread.
    Shutdown,
}

/// Where a region thread sends handoff messages.
#[derive(Clone, Debug)]
pub struct LinkHandle {
    /// Identifies the link, so events of an older link are not taken for the current one's.
    pub id: u64,
    /// Control messages (unpaced).
    pub control: UnboundedSender<Message>,
    /// Bulk messages (paced).
    pub bulk: UnboundedSender<Message>,
}

impl LinkHandle {
    fn send(&self, message: Message) -> bool {
        let channel = if message.is_bulk() { &self.bulk } else { &self.control };
        channel.send(message).is_ok()
    }
}

/// What the thread needs from its host.
pub(crate) struct LoopContext<L: RegionLogic + 'static> {
    pub(crate) authority: Arc<dyn OwnershipAuthority>,
    pub(crate) bulk: crate::link::BulkSettings,
    pub(crate) endpoint: quinn::Endpoint,
    /// How standby feeds connect (handoff links use the endpoint's default).
    pub(crate) feed_client: quinn::ClientConfig,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) events: UnboundedSender<HostEvent>,
    pub(crate) commands: mpsc::Sender<Command<L>>,
    pub(crate) regions: Arc<Mutex<HashMap<RegionId, crate::Slot<L>>>>,
    pub(crate) generation: u64,
    pub(crate) hub: Arc<GatewayHub>,
    pub(crate) checkpoints: Option<crate::CheckpointSettings>,
    pub(crate) fault_point: Option<crate::fault_point::FaultPoint>,
    pub(crate) reaper: crate::reaper::Reaper,
}

impl Gateways for GatewayHub {
    fn any(&self) -> bool {
        self.has_gateways()
    }

    fn serves(&self, player: PlayerId) -> bool {
        GatewayHub::serves(self, player)
    }
}

/// Runs the region's node until it is finished or the host shuts down.
pub(crate) fn run<L: RegionLogic + 'static>(
    mut node: RegionNode<L>,
    commands: mpsc::Receiver<Command<L>>,
    context: LoopContext<L>,
) {
    let id = node.region().id();
    // The handoff link (to a target, or from a source or owner) and the link to this owner's
    // hot standby, which can exist beside it.
    let mut links = Links::default();
    // Outputs from the node's construction (an owner announces itself).
    carry_out(&mut node, &context, &mut links);
    let mut watch = FaultWatch::default();
    'region: while !node.is_finished() {
        let now = Instant::now();
        let deadline = node.poll_timeout(now).map_or(now + IDLE_POLL, |at| at.min(now + IDLE_POLL));
        let command = match commands.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let _span = match node.handoff().filter(|handoff| !handoff.is_finished()) {
            Some(handoff) => {
                Some(tracing::info_span!("handoff", region = %id, handoff = handoff.id(), side = "source").entered())
            }
            None if !matches!(
                node.target_phase(),
                TargetPhase::Idle | TargetPhase::Authoritative | TargetPhase::Aborted
            ) =>
            {
                Some(tracing::info_span!("handoff", region = %id, side = "target").entered())
            }
            None => None,
        };
        // Everything already queued is handled before the tick, up to a bound: a region whose
        // ticks all run late still takes its inputs and its handoff peer's messages (a target's
        // `Progress` waiting behind players' inputs would keep the window closed). What each
        // command puts out is carried out before the next is handled, as with one command per
        // pass: a new link is in place before a stale event of the old one is judged.
        let mut command = command;
        let mut handled = 0;
        while let Some(next) = command {
            if matches!(next, Command::Shutdown) {
                break 'region;
            }
            if context.fault_point.is_some() {
                watch.note(&next);
            }
            apply(&mut node, next, &context, &mut links, now);
            let crossed = carry_out(&mut node, &context, &mut links);
            observe_fault_point(&node, &context, &mut watch, crossed);
            handled += 1;
            command =
                (handled < MAX_COMMANDS_PER_PASS && !node.is_finished()).then(|| commands.try_recv().ok()).flatten();
        }
        node.handle_timeout(Instant::now(), &*context.hub);
        let crossed = carry_out(&mut node, &context, &mut links);
        observe_fault_point(&node, &context, &mut watch, crossed);
    }
    node.handle_close(Instant::now());
    carry_out(&mut node, &context, &mut links);
    if let Ok(mut regions) = context.regions.lock() {
        // Only remove our own entry: a new slot for the same region may have been prepared meanwhile.
        if regions.get(&id).is_some_and(|slot| slot.generation == context.generation) {
            regions.remove(&id);
        }
    }
    // The region's world, engines and scripts are freed at the lowest priority, not at the
    // running regions' (crate::reaper). Everything the node had to say is said.
    context.reaper.drop_later(node.into_region());
}

/// A border crossing the thread carried out, for the fault point.
enum Crossing {
    /// An avatar was sent off to region `to`.
    Emigrated { to: u64 },
    /// `player`'s avatar was taken in.
    Immigrated { player: PlayerId },
}

/// What the fault point (test bed only) is told: the phase the thread was in, and where each
/// avatar being taken in comes from (the fault point's file names a crossing's other region).
#[derive(Default)]
struct FaultWatch {
    phase: Option<FaultPhase>,
    /// The region each immigration handled came from, by player, until it is answered (a
    /// refused one stays until the player's next: at most one entry per player).
    immigrating_from: HashMap<PlayerId, u64>,
}

impl FaultWatch {
    fn note<L: RegionLogic + 'static>(&mut self, command: &Command<L>) {
        if let Command::Gateway(GatewayRequest::Immigrate { transfer, .. }) = command {
            self.immigrating_from.insert(transfer.player, transfer.from.0);
        }
    }
}

/// Tells the fault point (test bed only) the phase the node entered and the crossing it carried
/// out, if any.
fn observe_fault_point<L: RegionLogic + 'static>(
    node: &RegionNode<L>,
    context: &LoopContext<L>,
    watch: &mut FaultWatch,
    crossed: Option<Crossing>,
) {
    let phase = &mut watch.phase;
    let Some(point) = &context.fault_point else { return };
    let region = node.region().id().0;
    let now_in = FaultPhase::of(
        node.handoff().map(HandoffSource::phase),
        node.target_phase(),
        node.standby_phase(),
        *phase,
        node.ticks(),
    );
    if now_in != *phase {
        *phase = now_in;
        if let Some(entered) = now_in {
            point.reached(entered, region);
        }
    }
    match crossed {
        Some(Crossing::Emigrated { to }) => {
            point.crossed(FaultPhase::Emigrated, region, Some(to));
        }
        Some(Crossing::Immigrated { player }) => {
            let from = watch.immigrating_from.remove(&player);
            point.crossed(FaultPhase::Immigrated, region, from);
        }
        None => {}
    }
}

/// Builds a handoff target's physics engine on a blocking thread, so the region's thread goes on
/// receiving; the engine comes back as [`Command::EngineBuilt`].
fn build_engine<L: RegionLogic + 'static>(context: &LoopContext<L>, build: EngineBuild) {
    let answer = context.commands.clone();
    context.runtime.spawn_blocking(move || {
        let _ = answer.send(Command::EngineBuilt(Box::new(build.run())));
    });
}

/// Encodes a handoff's delta round on a blocking thread, so the region's thread goes on ticking
/// (protocol.md §4); the parts come back as [`Command::Encoded`].
fn encode_round<L: RegionLogic + 'static>(context: &LoopContext<L>, job: EncodeJob) {
    let answer = context.commands.clone();
    context.runtime.spawn_blocking(move || {
        let _ = answer.send(Command::Encoded(job.run()));
    });
}

/// Most commands one pass of the region's loop handles before it lets a due tick run.
const MAX_COMMANDS_PER_PASS: usize = 256;

/// Hands one command other than `Shutdown` (which ends the loop) to the node.
fn apply<L: RegionLogic + 'static>(
    node: &mut RegionNode<L>,
    command: Command<L>,
    context: &LoopContext<L>,
    links: &mut Links,
    now: Instant,
) {
    match command {
        Command::Input(input) => node.handle_input(now, input),
        Command::Gateway(request) => node.handle_gateway(now, request),
        Command::Query(query) => query(node.region_mut()),
        Command::Stop => node.handle_stop(now, context.checkpoints.is_some()),
        Command::Attach(handle) => links.peer = Some(handle),
        Command::StartHandoff { peer } => node.handle_start_handoff(now, peer, fastrand::u64(..)),
        Command::FeedStandby { peer } => node.handle_start_standby(now, peer, fastrand::u64(..)),
        Command::Promote { epoch } => node.handle_promote(now, epoch),
        Command::Authority(result) => node.handle_authority(now, result),
        Command::EngineBuilt(built) => node.handle_engine_built(now, *built),
        Command::Encoded(encoded) => node.handle_encoded(now, encoded),
        Command::CheckpointStored { tick, stored, owner } => {
            node.handle_checkpoint_stored(now, tick, stored, owner.as_ref());
        }
        // Events of a link other than the current ones (an earlier handoff's) are stale.
        Command::LinkLost { link: lost } if Links::is(&links.peer, lost) => {
            links.peer = None;
            node.handle_link_lost(now);
        }
        Command::Peer { link: from, message, prepared, .. } if Links::is(&links.peer, from) => match prepared {
            Some(archive) => node.handle_peer_prepared(now, message, archive),
            None => node.handle_peer_message(now, message),
        },
        Command::LinkLost { link: lost } if Links::is(&links.standby, lost) => {
            links.standby = None;
            node.handle_standby_link_lost(now);
        }
        Command::Peer { link: from, message, .. } if Links::is(&links.standby, from) => {
            node.handle_standby_message(now, message);
        }
        Command::Peer { .. } | Command::LinkLost { .. } | Command::Shutdown => {}
    }
}

/// A region thread's links.
#[derive(Default)]
struct Links {
    /// The handoff link.
    peer: Option<LinkHandle>,
    /// The link to this owner's hot standby.
    standby: Option<LinkHandle>,
}

impl Links {
    fn is(link: &Option<LinkHandle>, id: u64) -> bool {
        link.as_ref().is_some_and(|current| current.id == id)
    }
}

/// Does what the node asks, until it asks nothing more. Returns a border crossing it carried
/// out, if any (for the fault point): an avatar sent off, or one taken in.
fn carry_out<L: RegionLogic + 'static>(
    node: &mut RegionNode<L>,
    context: &LoopContext<L>,
    links: &mut Links,
) -> Option<Crossing> {
    let id = node.region().id();
    let mut crossed = None;
    let hub = &context.hub;
    let connect = |peer, client: Option<&quinn::ClientConfig>| {
        crate::link::connect(
            &context.runtime,
            context.endpoint.clone(),
            client.cloned(),
            peer,
            context.commands.clone(),
            context.bulk,
        )
    };
    while let Some(output) = node.poll_output(Instant::now()) {
        match output {
            Output::Connect { peer } => links.peer = Some(connect(peer, None)),
            Output::ToPeer(message) => {
                if !links.peer.as_ref().is_some_and(|link| link.send(message)) {
                    node.handle_link_lost(Instant::now());
                }
            }
            Output::ConnectStandby { peer } => links.standby = Some(connect(peer, Some(&context.feed_client))),
            Output::ToStandby(message) => {
                if !links.standby.as_ref().is_some_and(|link| link.send(message)) {
                    node.handle_standby_link_lost(Instant::now());
                }
            }
            Output::Authority { expected, next, .. } => ask_authority(context, id, expected, next),
            Output::Owned { epoch, announce } => hub.set_owned(id, epoch, announce),
            Output::NotOwned => hub.clear_owned(id),
            Output::ToGateway { gateway, message } => {
                if let ServerMessage::Arrived { player, .. } = message {
                    crossed = Some(Crossing::Immigrated { player });
                }
                hub.to_gateway(gateway, message);
            }
            Output::ToPlayers(messages) => {
                // Only the test bed's fault point looks: no scan of every tick's updates otherwise.
                let emigrated = context.fault_point.is_some().then(|| {
                    messages.iter().find_map(|(_, message)| match message {
                        ServerMessage::Emigrated { transfer, .. } => Some(transfer.to.0),
                        _ => None,
                    })
                });
                if let Some(to) = emigrated.flatten() {
                    crossed = Some(Crossing::Emigrated { to });
                }
                hub.to_players(messages);
            }
            Output::CrossingAgain { player, message } => {
                if hub.to_players(vec![(player, message)]) == 0 {
                    node.handle_crossing_unsent(player);
                }
            }
            Output::Broadcast(message) => hub.broadcast(&message),
            Output::Attach { player, gateway, take_over } => hub.attach(player, gateway, take_over),
            Output::Bounce(bounced, player) => {
                // Invariant 2: a bounced input must reach the gateway that holds the player's
                // session. This host may not know it (the player was never attached here: a
                // handoff target, or an avatar that left before its gateway's Attach arrived);
                // then every gateway gets it, and those without the player's session drop it.
                // Dropping it here would leave a gap in the player's sequence that no later input
                // could cross.
                if hub.to_players(vec![(player, bounced.clone())]) == 0 {
                    tracing::debug!(region = %id, %player, "bouncing an input of a player not attached here to every gateway");
                    hub.broadcast(&bounced);
                }
            }
            Output::BuildEngine(build) => build_engine(context, build),
            Output::EncodeRound(job) => encode_round(context, job),
            Output::Ticked(_) => {}
            Output::StoreCheckpoint { info, bytes } => {
                // Encoded on the region's thread at a tick boundary; stored on a blocking thread,
                // so the disk's fsync never delays a tick.
                if let Some(settings) = &context.checkpoints {
                    let store = settings.store.clone();
                    let events = context.events.clone();
                    let answer = context.commands.clone();
                    let authority = context.authority.clone();
                    context.runtime.spawn_blocking(move || {
                        let saved = store.save(&info, &bytes);
                        // Asked after every checkpoint: an owner cut off from the cluster while a
                        // failover replaced it learns here that it lost the region.
                        let owner = authority.current(info.region).ok();
                        let _ =
                            answer.send(Command::CheckpointStored { tick: info.tick, stored: saved.is_ok(), owner });
                        let event = match saved {
                            Ok(path) => HostEvent::Checkpointed {
                                region: info.region,
                                tick: info.tick,
                                epoch: info.epoch,
                                bytes: bytes.len() as u64,
                                path,
                            },
                            Err(error) => {
                                HostEvent::CheckpointFailed { region: info.region, error: format!("storing: {error}") }
                            }
                        };
                        let _ = events.send(event);
                    });
                }
            }
            Output::SaveAndStop { info, bytes } => {
                // The region is going away: saving it on this thread delays nothing.
                let saved = match &context.checkpoints {
                    Some(settings) => settings
                        .store
                        .save(&info, &bytes)
                        .map(|path| (info.tick, bytes.len() as u64, path))
                        .map_err(|error| format!("storing: {error}")),
                    None => Err("no checkpoint store".to_owned()),
                };
                node.handle_stop_saved(Instant::now(), saved);
            }
            Output::Event(event) => {
                let _ = context.events.send(event);
            }
            Output::Finished => {}
        }
    }
    crossed
}

/// Asks the authority on a blocking thread; the answer comes back as [`Command::Authority`].
fn ask_authority<L: RegionLogic + 'static>(
    context: &LoopContext<L>,
    region: RegionId,
    expected: Ownership,
    next: Ownership,
) {
    let authority = context.authority.clone();
    let answer = context.commands.clone();
    context.runtime.spawn_blocking(move || {
        let asked = Instant::now();
        let result = authority.compare_and_swap(region, &expected, &next);
        baton_sdk::events::authority_swap(asked.elapsed(), &result);
        let _ = answer.send(Command::Authority(result));
    });
}
