//! One region's thread: ticks, inputs, and the region's side of a handoff.
//!
//! The loop waits for the earliest of: the next tick, the handoff's next timeout, or a command,
//! then handles it, then drains what the handoff state machine wants done. Ticks follow a fixed
//! grid ([`TickSchedule`]); a target that takes over continues on the source's grid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use baton_sdk::handoff::{
    HandoffPlan, HandoffSource, HandoffTarget, Message, Ownership, OwnershipAuthority, SourceAction, SourceConfig,
    SourcePhase, TargetAction, TargetConfig,
};
use baton_sdk::sessions::SessionError;
use baton_sdk::wire::upstream::{ServerMessage, Transfer};
use baton_sdk::wire::{Epoch, PlayerId, PlayerInput, RegionId};
use baton_sdk::{Emigrant, Region, RegionLogic, TickSchedule};
use tokio::sync::mpsc::UnboundedSender;

use crate::upstream::{GatewayHub, GatewayId};
use crate::{HostEvent, IDLE_POLL, PlayerSettings, RegionFactory, unix_micros};

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
    /// Run a closure on the region between ticks.
    Query(RegionQuery<L>),
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
    /// An avatar crossing the border into this region.
    Immigrate {
        /// The avatar.
        transfer: Transfer,
        /// The gateway serving its player.
        gateway: GatewayId,
    },
    /// Save the region to the checkpoint store and stop hosting it (a restart the old way).
    Stop,
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

pub(crate) enum Role {
    Owner { epoch: Epoch },
    Target,
}

pub(crate) struct LoopContext<L: RegionLogic + 'static> {
    pub(crate) name: String,
    pub(crate) authority: Arc<dyn OwnershipAuthority>,
    pub(crate) source_config: SourceConfig,
    pub(crate) bulk_bytes_per_second: u64,
    pub(crate) bulk_burst_bytes: u64,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) events: UnboundedSender<HostEvent>,
    pub(crate) commands: mpsc::Sender<Command<L>>,
    pub(crate) factory: RegionFactory<L>,
    pub(crate) regions: Arc<Mutex<HashMap<RegionId, crate::Slot<L>>>>,
    pub(crate) generation: u64,
    pub(crate) test_commit_delay: Option<std::time::Duration>,
    pub(crate) hub: Arc<GatewayHub>,
    pub(crate) address: SocketAddr,
    pub(crate) players: PlayerSettings,
    pub(crate) checkpoints: Option<crate::CheckpointSettings>,
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
    },
    /// Pre-warmed, receiving or waiting.
    Target { receiver: HandoffTarget },
    /// Done; the thread ends.
    Finished,
}

/// Encodes a checkpoint on the region's thread (a snapshot costs about what one handoff chunk
/// round does) and stores it on a blocking thread, so the disk's fsync never delays a tick.
fn checkpoint<L: RegionLogic + 'static>(
    region: &mut Region<L>,
    epoch: Epoch,
    settings: &crate::CheckpointSettings,
    context: &LoopContext<L>,
) {
    let id = region.id();
    let (info, bytes) = match baton_sdk::checkpoint::encode(region, epoch) {
        Ok(encoded) => encoded,
        Err(error) => {
            let _ = context.events.send(HostEvent::CheckpointFailed { region: id, error: error.to_string() });
            return;
        }
    };
    let store = settings.store.clone();
    let events = context.events.clone();
    context.runtime.spawn_blocking(move || {
        let event = match store.save(&info, &bytes) {
            Ok(path) => HostEvent::Checkpointed { region: id, tick: info.tick, epoch, bytes: bytes.len() as u64, path },
            Err(error) => HostEvent::CheckpointFailed { region: id, error: format!("storing: {error}") },
        };
        let _ = events.send(event);
    });
}

/// Runs the region until it retires or is shut down.
pub(crate) fn run<L: RegionLogic + 'static>(
    mut region: Region<L>,
    role: Role,
    commands: mpsc::Receiver<Command<L>>,
    context: LoopContext<L>,
) {
    let id = region.id();
    let interval = region.config().tick_interval();
    let mut link: Option<LinkHandle> = None;
    // After a takeover the target keeps its receiver to accept stragglers from the old source.
    let mut late_receiver: Option<HandoffTarget> = None;
    let mut reported_phase: Option<SourcePhase> = None;
    let mut delayed_commit: Option<(Instant, Ownership, Ownership)> = None;
    // Gateway requests that change the world wait while the region is frozen (protocol.md §9).
    let mut deferred: Vec<Command<L>> = Vec::new();
    // Tick durations since the last load report: (ticks, total, longest).
    let mut load_window = (0u32, std::time::Duration::ZERO, std::time::Duration::ZERO);
    let ticks_per_report = region.config().tick_rate_hz.max(1);
    let mut state = match role {
        Role::Owner { epoch } => {
            let _ = context.events.send(HostEvent::Owning { region: id, epoch });
            context.hub.set_owned(id, epoch, true);
            State::Owner {
                epoch,
                schedule: TickSchedule::new(interval, Instant::now()),
                handoff: None,
                first_tick_pending: false,
                peer: None,
            }
        }
        Role::Target => {
            State::Target { receiver: HandoffTarget::new(Instant::now(), TargetConfig::new(&context.name)) }
        }
    };

    loop {
        let now = Instant::now();
        let mut deadline = next_deadline(&state, now);
        if let Some((due, _, _)) = &delayed_commit {
            deadline = deadline.min(*due);
        }
        let command = match commands.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let _handoff_span = match &state {
            State::Owner { epoch, handoff: Some(handoff), .. } if !handoff.is_finished() => Some(
                tracing::info_span!("handoff", region = %id, epoch = %epoch, handoff = handoff.id(), side = "source")
                    .entered(),
            ),
            State::Target { receiver } if receiver.phase() != baton_sdk::handoff::TargetPhase::Idle => {
                Some(tracing::info_span!("handoff", region = %id, side = "target").entered())
            }
            _ => None,
        };
        match command {
            Some(Command::Shutdown) => break,
            Some(Command::Input(input)) => route_input(&mut state, &mut region, input, &context),
            Some(command @ (Command::Join { .. } | Command::Leave { .. } | Command::Immigrate { .. })) => {
                if is_frozen(&state) {
                    deferred.push(command);
                } else {
                    serve_gateway_request(&state, &mut region, command, &context);
                }
            }
            Some(Command::Query(query)) => query(&mut region),
            Some(Command::Stop) => stop(&mut state, &mut region, &context),
            Some(Command::Attach(handle)) => link = Some(handle),
            Some(Command::StartHandoff { peer }) => {
                start_handoff(&mut state, &mut region, peer, &context, &mut link, now)
            }
            // Events of a link other than the current one (an earlier handoff's) are stale.
            Some(Command::LinkLost { link: lost }) if link.as_ref().is_some_and(|current| current.id == lost) => {
                link = None;
                match &mut state {
                    State::Owner { handoff: Some(handoff), .. } => handoff.handle_link_lost(now, region.world_mut()),
                    State::Target { receiver } => receiver.handle_link_lost(now),
                    _ => {}
                }
            }
            Some(Command::Peer { link: from, message }) if link.as_ref().is_some_and(|current| current.id == from) => {
                match &mut state {
                    State::Owner { handoff: Some(handoff), .. } => {
                        handoff.handle_message(now, region.world_mut(), message)
                    }
                    State::Owner { .. } => {
                        if let Some(receiver) = late_receiver.as_mut() {
                            receiver.handle_message(now, region.world_mut(), message);
                        }
                    }
                    State::Target { receiver } => receiver.handle_message(now, region.world_mut(), message),
                    State::Finished => {}
                }
            }
            Some(Command::Peer { .. } | Command::LinkLost { .. }) | None => {}
        }

        // Tick when due (protocol.md §6: never while frozen).
        if let State::Owner { schedule, handoff, first_tick_pending, epoch, .. } = &mut state
            && handoff.as_ref().is_none_or(HandoffSource::allows_ticks)
            && schedule.next_due() <= now
        {
            let started_us = unix_micros();
            let timing = schedule.start_tick(now);
            if timing.late_by > interval / 2 {
                region.note_late_tick();
                baton_sdk::events::tick_overrun(id, region.world().tick(), timing.late_by);
            }
            let report = region.tick();
            load_window = (load_window.0 + 1, load_window.1 + report.duration, load_window.2.max(report.duration));
            if load_window.0 >= ticks_per_report {
                let _ = context.events.send(HostEvent::Load {
                    region: id,
                    tick_ms_mean: load_window.1.as_secs_f64() * 1000.0 / f64::from(load_window.0),
                    tick_ms_max: load_window.2.as_secs_f64() * 1000.0,
                    players: region.sessions().len() as u64,
                    entities: region.world().entity_count() as u64,
                });
                load_window = (0, std::time::Duration::ZERO, std::time::Duration::ZERO);
            }
            if *first_tick_pending {
                *first_tick_pending = false;
                let _ = context.events.send(HostEvent::FirstTick { region: id, tick: report.tick, at_us: started_us });
            }
            after_tick(&mut region, *epoch, report.tick, &context);
            // A checkpoint is a snapshot at a tick boundary; during a handoff the snapshot being
            // streamed is the region's safety net instead, and a frozen source never gets here.
            if handoff.is_none()
                && let Some(settings) = &context.checkpoints
                && settings.every_ticks > 0
                && report.tick.is_multiple_of(settings.every_ticks)
            {
                checkpoint(&mut region, *epoch, settings, &context);
            }
            let next_due = schedule.next_due();
            if let Some(handoff) = handoff.as_mut() {
                handoff.handle_tick_completed(Instant::now(), region.world_mut(), next_due);
                if !handoff.allows_ticks() {
                    context.hub.broadcast(&ServerMessage::Frozen { region: id.0, epoch: epoch.0 });
                    let _ = context.events.send(HostEvent::Frozen {
                        region: id,
                        tick: report.tick,
                        last_tick_at_us: started_us,
                    });
                }
            }
        }

        // Timeouts.
        let now = Instant::now();
        match &mut state {
            State::Owner { handoff: Some(handoff), .. } if handoff.poll_timeout().is_some_and(|at| at <= now) => {
                handoff.handle_timeout(now, region.world_mut());
            }
            State::Target { receiver } if receiver.poll_timeout().is_some_and(|at| at <= now) => {
                receiver.handle_timeout(now)
            }
            _ => {}
        }

        // Fault injection (tests only): a held commit request goes out when its delay is over.
        if let Some((due, expected, next)) = delayed_commit.take() {
            match &mut state {
                State::Target { receiver } if Instant::now() >= due => {
                    let result = context.authority.compare_and_swap(id, &expected, &next);
                    receiver.handle_authority(Instant::now(), result);
                }
                State::Target { .. } => delayed_commit = Some((due, expected, next)),
                _ => {}
            }
        }

        pump(&mut state, &mut region, &context, &mut link, &mut late_receiver, &mut delayed_commit);
        if !deferred.is_empty() && !is_frozen(&state) {
            for command in std::mem::take(&mut deferred) {
                serve_gateway_request(&state, &mut region, command, &context);
            }
        }
        if let State::Owner { handoff: Some(handoff), .. } = &state
            && reported_phase != Some(handoff.phase())
        {
            reported_phase = Some(handoff.phase());
            let _ = context
                .events
                .send(HostEvent::Phase { region: id, phase: format!("{:?}", handoff.phase()).to_lowercase() });
        }
        if matches!(state, State::Finished) {
            break;
        }
    }
    for command in deferred {
        serve_gateway_request(&state, &mut region, command, &context);
    }
    if let Ok(mut regions) = context.regions.lock() {
        // Only remove our own entry: a new slot for the same region may have been prepared meanwhile.
        if regions.get(&id).is_some_and(|slot| slot.generation == context.generation) {
            regions.remove(&id);
        }
    }
}

/// Saves the region and stops hosting it: the old way of moving a region (stop, save, start
/// elsewhere, players reconnect), kept for operators who want it and as the load test's baseline.
/// Refused during a handoff or without a checkpoint store; if the save fails the region goes on.
fn stop<L: RegionLogic + 'static>(state: &mut State, region: &mut Region<L>, context: &LoopContext<L>) {
    let id = region.id();
    let refuse = |reason: &str| {
        let _ = context.events.send(HostEvent::StopRefused { region: id, reason: reason.to_owned() });
    };
    let epoch = match state {
        State::Owner { handoff: Some(_), .. } => return refuse("a handoff of the region is in progress"),
        State::Owner { epoch, .. } => *epoch,
        State::Target { .. } | State::Finished => return refuse("this host does not own the region"),
    };
    let Some(settings) = &context.checkpoints else {
        return refuse("this host has no checkpoint store to save the region in");
    };
    // What was received but not applied is not saved: players continue at last_applied + 1.
    let pending = region.take_pending_inputs();
    let saved =
        baton_sdk::checkpoint::encode(region, epoch).map_err(|error| error.to_string()).and_then(|(info, bytes)| {
            let path = settings.store.save(&info, &bytes).map_err(|error| format!("storing: {error}"))?;
            Ok((info.tick, bytes.len() as u64, path))
        });
    match saved {
        Ok((tick, bytes, path)) => {
            context.hub.clear_owned(id);
            context.hub.broadcast(&ServerMessage::Stopped { region: id.0, epoch: epoch.0 });
            let _ = context.events.send(HostEvent::Stopped {
                region: id,
                epoch,
                tick,
                bytes,
                path,
                inputs_discarded: pending.len() as u64,
            });
            *state = State::Finished;
        }
        Err(error) => {
            for input in pending {
                let _ = region.submit_input(input);
            }
            refuse(&format!("saving the region failed: {error}"));
        }
    }
}

fn next_deadline(state: &State, now: Instant) -> Instant {
    let mut deadline = now + IDLE_POLL;
    match state {
        State::Owner { schedule, handoff, .. } => {
            if handoff.as_ref().is_none_or(HandoffSource::allows_ticks) {
                deadline = deadline.min(schedule.next_due());
            }
            // A snapshot in progress continues right after a tick.
            if handoff.as_ref().is_some_and(|handoff| handoff.phase() == SourcePhase::Snapshot) {
                deadline = deadline.min(now + std::time::Duration::from_millis(1));
            }
            if let Some(at) = handoff.as_ref().and_then(HandoffSource::poll_timeout) {
                deadline = deadline.min(at);
            }
        }
        State::Target { receiver } => {
            if let Some(at) = receiver.poll_timeout() {
                deadline = deadline.min(at);
            }
        }
        State::Finished => {}
    }
    deadline.max(now)
}

fn route_input<L: RegionLogic + 'static>(
    state: &mut State,
    region: &mut Region<L>,
    input: PlayerInput,
    context: &LoopContext<L>,
) {
    match state {
        State::Owner { handoff, .. } => {
            let input = match handoff.as_mut() {
                Some(handoff) => handoff.handle_input(input),
                None => Some(input),
            };
            if let Some(input) = input {
                submit_or_bounce(region, input, context);
            }
        }
        State::Target { .. } | State::Finished => refuse_input(context, region.id(), input),
    }
}

/// Queues an input for the next tick; one for a player who is not in the region (its avatar
/// crossed a border, or has not arrived yet) goes back to its gateway to be routed again.
/// Invariant 2: a straggler forwarded by a handoff's source is queued, or bounced when its player
/// is not here, so it cannot vanish in a region that lost the player. What [`after_refusal`]
/// drops is counted (`baton_inputs_refused_total` by reason) and is never the input its player is
/// blocked on. Duplicates are dropped by the session (they were applied already).
fn submit_or_bounce<L: RegionLogic + 'static>(region: &mut Region<L>, input: PlayerInput, context: &LoopContext<L>) {
    match region.submit_input(input.clone()) {
        Ok(_) => {}
        Err(error) => match after_refusal(&error) {
            Refused::Bounce => refuse_input(context, region.id(), input),
            // Already counted and logged by the region's `input_refused` event.
            Refused::Drop => {}
        },
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
fn refuse_input<L: RegionLogic + 'static>(context: &LoopContext<L>, region: RegionId, input: PlayerInput) {
    let bounced = ServerMessage::Bounced {
        region: region.0,
        player: input.player.0,
        seq: input.seq,
        payload: input.payload.clone(),
    };
    // Invariant 2: a bounced input must reach the gateway that holds the player's session. This
    // host may not know it (the player was never attached here: a handoff target, or an avatar
    // that left before its gateway's Attach arrived); then every gateway gets it, and those
    // without the player's session drop it. Dropping it here would leave a gap in the player's
    // sequence that no later input could cross.
    if context.hub.to_players(vec![(input.player, bounced.clone())]) == 0 {
        tracing::debug!(%region, player = %input.player, seq = input.seq, "bouncing an input of a player not attached here to every gateway");
        context.hub.broadcast(&bounced);
    }
    let _ = context.events.send(HostEvent::InputRefused { region, input });
}

fn is_frozen(state: &State) -> bool {
    matches!(state, State::Owner { handoff: Some(handoff), .. } if !handoff.allows_ticks() && !handoff.is_finished())
}

/// Joins, leaves and arrivals from gateways, on an owner that is not frozen (or refused elsewhere).
fn serve_gateway_request<L: RegionLogic + 'static>(
    state: &State,
    region: &mut Region<L>,
    command: Command<L>,
    context: &LoopContext<L>,
) {
    let id = region.id();
    // The hub's record is the truth about ownership: set on taking a region, cleared on giving it.
    let epoch = match state {
        State::Owner { epoch, .. } if context.hub.owned_epoch(id) == Some(*epoch) => Some(*epoch),
        _ => None,
    };
    let hub = &context.hub;
    match (command, epoch) {
        (Command::Join { player, gateway }, Some(epoch)) => match region.join_player(player) {
            Ok(last_applied) => {
                hub.attach(player, gateway);
                hub.to_gateway(
                    gateway,
                    ServerMessage::Joined { region: id.0, epoch: epoch.0, player: player.0, last_applied },
                );
            }
            Err(reason) => {
                hub.to_gateway(gateway, ServerMessage::JoinRefused { region: id.0, player: player.0, reason })
            }
        },
        (Command::Join { player, gateway }, None) => hub.to_gateway(
            gateway,
            ServerMessage::JoinRefused { region: id.0, player: player.0, reason: "the region moved".into() },
        ),
        (Command::Leave { player }, Some(_)) => {
            region.remove_player(player);
        }
        (Command::Leave { player }, None) => {
            tracing::warn!(region = %id, %player, "a leave arrived while the region moved away; the avatar stays");
        }
        (Command::Immigrate { transfer, gateway }, Some(epoch)) => {
            let emigrant = Emigrant {
                player: PlayerId(transfer.player),
                to: id,
                last_applied: transfer.last_applied,
                pending: transfer.pending.clone(),
                avatar: transfer.avatar.clone(),
            };
            match region.immigrate(RegionId(transfer.from), &emigrant) {
                Ok(last_applied) => {
                    hub.attach(emigrant.player, gateway);
                    hub.to_gateway(
                        gateway,
                        ServerMessage::Arrived { region: id.0, epoch: epoch.0, player: transfer.player, last_applied },
                    );
                }
                Err(reason) => hub.to_gateway(gateway, ServerMessage::ImmigrationRefused { transfer, reason }),
            }
        }
        (Command::Immigrate { transfer, gateway }, None) => {
            hub.to_gateway(gateway, ServerMessage::ImmigrationRefused { transfer, reason: "the region moved".into() })
        }
        _ => {}
    }
}

/// What players get after each tick: their updates, border views, and avatars leaving.
fn after_tick<L: RegionLogic + 'static>(region: &mut Region<L>, epoch: Epoch, tick: u64, context: &LoopContext<L>) {
    let hub = &context.hub;
    if !hub.has_gateways() {
        return;
    }
    let id = region.id();
    let settings = context.players;
    // This tick's views are taken before the crossing avatars leave: a player whose avatar
    // crosses now still gets this tick's view from here, its last, so its update gap spans only
    // the wait for the new region's next tick instead of a whole tick more.
    let updates: Vec<(PlayerId, ServerMessage)> = if tick.is_multiple_of(u64::from(settings.update_every_ticks.max(1)))
    {
        region
            .player_updates()
            .into_iter()
            .map(|update| {
                let message = ServerMessage::Update {
                    region: id.0,
                    epoch: epoch.0,
                    player: update.player.0,
                    tick,
                    last_applied: update.last_applied,
                    payload: update.payload,
                };
                (update.player, message)
            })
            .collect()
    } else {
        Vec::new()
    };
    // The updates go first: the gateway admits a region's updates for a player until the new
    // region says the avatar arrived, and the last view should not trail the emigration.
    hub.to_players(updates);
    for emigrant in region.take_emigrants(|player| hub.serves(player)) {
        let transfer = Transfer {
            player: emigrant.player.0,
            from: id.0,
            to: emigrant.to.0,
            last_applied: emigrant.last_applied,
            pending: emigrant.pending,
            avatar: emigrant.avatar,
        };
        hub.to_players(vec![(emigrant.player, ServerMessage::Emigrated { epoch: epoch.0, transfer })]);
    }
    if settings.border_every_ticks > 0 && tick.is_multiple_of(u64::from(settings.border_every_ticks)) {
        let distance = settings.border_view_distance;
        for (toward, payload) in region.border_views(distance) {
            if !payload.is_empty() {
                hub.broadcast(&ServerMessage::Border { region: id.0, epoch: epoch.0, toward: toward.0, tick, payload });
            }
        }
        for (toward, players) in region.players_near_borders(distance) {
            let players = players.into_iter().map(|player| player.0).collect();
            hub.broadcast(&ServerMessage::NearBorder { region: id.0, toward: toward.0, players });
        }
    }
}

fn start_handoff<L: RegionLogic + 'static>(
    state: &mut State,
    region: &mut Region<L>,
    peer: SocketAddr,
    context: &LoopContext<L>,
    link: &mut Option<LinkHandle>,
    now: Instant,
) {
    let State::Owner { epoch, handoff, peer: handoff_peer, .. } = state else {
        tracing::warn!(region = %region.id(), "cannot start a handoff of a region this host does not own");
        return;
    };
    if handoff.as_ref().is_some_and(|handoff| !handoff.is_finished()) {
        tracing::warn!(region = %region.id(), "a handoff of this region is already running");
        return;
    }
    let plan = HandoffPlan {
        id: fastrand::u64(..),
        region: region.id(),
        epoch: *epoch,
        name: context.name.clone(),
        tick_interval: region.config().tick_interval(),
    };
    *handoff = Some(HandoffSource::start(now, region.world(), plan, context.source_config));
    *handoff_peer = Some(peer);
    context.hub.broadcast(&ServerMessage::HandoffStarted { region: region.id().0, epoch: epoch.0, target: peer });
    let handle = crate::link::connect(
        &context.runtime,
        context.endpoint.clone(),
        peer,
        context.commands.clone(),
        context.bulk_bytes_per_second,
        context.bulk_burst_bytes,
    );
    *link = Some(handle);
}

fn pump<L: RegionLogic + 'static>(
    state: &mut State,
    region: &mut Region<L>,
    context: &LoopContext<L>,
    link: &mut Option<LinkHandle>,
    late_receiver: &mut Option<HandoffTarget>,
    delayed_commit: &mut Option<(Instant, Ownership, Ownership)>,
) {
    let id = region.id();
    loop {
        let mut busy = false;
        let mut next_state = None;
        match state {
            State::Owner { epoch, schedule, handoff: Some(handoff), peer, .. } => {
                // Snapshot chunks are encoded only in the time left before the next tick is due, so
                // streaming a large region never pushes its ticks late; the next pass continues.
                let encoding_allowed = handoff.phase() != SourcePhase::Snapshot || Instant::now() < schedule.next_due();
                let message = if encoding_allowed { handoff.poll_message(region.world_mut()) } else { None };
                if let Some(message) = message {
                    busy = true;
                    if !link.as_ref().is_some_and(|link| link.send(message)) {
                        handoff.handle_link_lost(Instant::now(), region.world_mut());
                    }
                }
                if let Some(action) = handoff.poll_action() {
                    busy = true;
                    match action {
                        SourceAction::Authority { expected, next } => {
                            let result = context.authority.compare_and_swap(id, &expected, &next);
                            handoff.handle_authority(Instant::now(), result);
                        }
                        SourceAction::Resume { epoch: resumed, held, reason } => {
                            *epoch = resumed;
                            // Continue on the same grid from the next slot.
                            *schedule = TickSchedule::new(
                                region.config().tick_interval(),
                                schedule.next_due().max(Instant::now()),
                            );
                            for input in held {
                                submit_or_bounce(region, input, context);
                            }
                            context.hub.set_owned(id, resumed, false);
                            context.hub.broadcast(&ServerMessage::Aborted { region: id.0, epoch: resumed.0 });
                            let _ = context.events.send(HostEvent::Aborted {
                                region: id,
                                reason: reason.to_string(),
                                owning: true,
                            });
                        }
                        SourceAction::HandedOff { epoch: new_epoch, undelivered } => {
                            context.hub.clear_owned(id);
                            if let Some(owner) = *peer {
                                context.hub.broadcast(&ServerMessage::Committed {
                                    region: id.0,
                                    epoch: new_epoch.0,
                                    owner,
                                });
                            }
                            let _ = context.events.send(HostEvent::HandedOff {
                                region: id,
                                epoch: new_epoch,
                                stats: handoff.stats(),
                            });
                            for input in undelivered {
                                refuse_input(context, id, input);
                            }
                        }
                        SourceAction::Retire => {
                            for input in handoff.take_undelivered() {
                                refuse_input(context, id, input);
                            }
                            let _ = context.events.send(HostEvent::Retired { region: id });
                            next_state = Some(State::Finished);
                        }
                        SourceAction::Fenced { owner, epoch: fenced_at } => {
                            context.hub.clear_owned(id);
                            let reason = format!("the region was taken by {owner}@{fenced_at}");
                            let _ = context.events.send(HostEvent::Aborted { region: id, reason, owning: false });
                            next_state = Some(State::Finished);
                        }
                    }
                }
            }
            State::Target { receiver } => {
                if let Some(message) = receiver.poll_message() {
                    busy = true;
                    if let Some(link) = link.as_ref() {
                        link.send(message);
                    }
                }
                if let Some(action) = receiver.poll_action() {
                    busy = true;
                    match action {
                        TargetAction::Authority { expected, next } => match context.test_commit_delay {
                            Some(delay) => *delayed_commit = Some((Instant::now() + delay, expected, next)),
                            None => {
                                let result = context.authority.compare_and_swap(id, &expected, &next);
                                receiver.handle_authority(Instant::now(), result);
                            }
                        },
                        TargetAction::Authoritative { epoch, first_tick_at, .. } => {
                            region.rebuild_caches();
                            context.hub.set_owned(id, epoch, false);
                            context.hub.broadcast(&ServerMessage::Committed {
                                region: id.0,
                                epoch: epoch.0,
                                owner: context.address,
                            });
                            let _ = context.events.send(HostEvent::Authoritative { region: id, epoch });
                            let schedule = TickSchedule::new(region.config().tick_interval(), first_tick_at);
                            // Keep answering the source (Committed, then stragglers) after the switch.
                            let mut finished_receiver =
                                HandoffTarget::new(Instant::now(), TargetConfig::new(&context.name));
                            std::mem::swap(&mut finished_receiver, receiver);
                            while let Some(message) = finished_receiver.poll_message() {
                                if let Some(link) = link.as_ref() {
                                    link.send(message);
                                }
                            }
                            *late_receiver = Some(finished_receiver);
                            next_state = Some(State::Owner {
                                epoch,
                                schedule,
                                handoff: None,
                                first_tick_pending: true,
                                peer: None,
                            });
                        }
                        TargetAction::Stragglers(inputs) => {
                            for input in inputs {
                                submit_or_bounce(region, input, context);
                            }
                        }
                        TargetAction::Discard(reason) => {
                            match (context.factory)(id) {
                                Ok(fresh) => *region = fresh,
                                Err(error) => tracing::error!(region = %id, %error, "could not re-warm the region"),
                            }
                            let _ = context.events.send(HostEvent::Aborted {
                                region: id,
                                reason: reason.to_string(),
                                owning: false,
                            });
                        }
                    }
                }
            }
            State::Owner { handoff: None, .. } => {
                if let Some(receiver) = late_receiver.as_mut() {
                    while let Some(action) = receiver.poll_action() {
                        busy = true;
                        if let TargetAction::Stragglers(inputs) = action {
                            for input in inputs {
                                submit_or_bounce(region, input, context);
                            }
                        }
                    }
                    while let Some(message) = receiver.poll_message() {
                        if let Some(link) = link.as_ref() {
                            link.send(message);
                        }
                    }
                }
            }
            State::Finished => {}
        }
        if let Some(next) = next_state {
            *state = next;
            busy = true;
        }
        if !busy {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_sdk::sessions::SessionError;
    use baton_sdk::wire::PlayerId;

    use super::{Refused, after_refusal};

    #[test]
    fn only_inputs_of_players_elsewhere_are_bounced() {
        let player = PlayerId(1);
        let cases = [
            (SessionError::UnknownPlayer(player), Refused::Bounce),
            // Bouncing would send it straight back here, again and again while the gap lasts.
            (SessionError::QueueFull(player), Refused::Drop),
            (SessionError::PayloadTooLarge(usize::MAX), Refused::Drop),
            (SessionError::ZeroSequence, Refused::Drop),
            (SessionError::AlreadyJoined(player), Refused::Drop),
        ];
        for (error, expected) in cases {
            assert_eq!(after_refusal(&error), expected, "{error}");
        }
    }
}
