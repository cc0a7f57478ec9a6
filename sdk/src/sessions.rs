//! Player sessions and their ordered input queues.
//!
//! Each player in a region has one avatar entity carrying a [`PlayerSession`] component: the
//! player's id, the sequence number of the last input the region applied, and the inputs received
//! but not applied yet. All of it is world state, so it migrates with the region: a handoff's final
//! delta carries exactly the inputs the source had not applied, and the target continues from the
//! source's `last_applied`.
//!
//! # Consistency
//! - Inputs of one player are applied in sequence order, each exactly once: an input whose `seq` is
//!   at or below `last_applied`, or already queued, is a duplicate and is dropped (this is what makes
//!   the gateway's replay after a handoff safe, invariant 2).
//! - An input that arrives ahead of a gap waits until the gap is filled; nothing is applied past a
//!   gap. The queue per player is bounded ([`MAX_PENDING_INPUTS`]), except that an input that
//!   continues the run from `last_applied + 1` (the gap's filler, or the next of a run of inputs
//!   sent again at once after a failover) is taken up to [`MAX_KEPT_INPUTS`], what a client may
//!   send again at once; so a full queue can still drain (see [`Sessions::submit`]).
//! - Inputs of different players are independent; within a tick, players are served in entity order.
//! - The one way past a gap: the client says it no longer has the inputs in it
//!   ([`Sessions::skip`]: they were acknowledged durable by state that was then lost). They are
//!   counted lost, and the next input after them is applied; no number is ever applied twice.
//! - A gap that stays is filled by asking: an input can be lost on its way (it reached a server
//!   that died or was cut off before passing it on), and the client keeps every input until it is
//!   durable. [`GapWatch`] says which players have waited at the same gap for
//!   [`GAP_RESEND_TICKS`] (and again after twice as long each time it stays); their clients are
//!   asked to send again what they keep and have not seen applied (the inputs already applied or
//!   queued are dropped as duplicates).

use std::collections::HashMap;

use baton_wire::player::MAX_KEPT_INPUTS;
use baton_wire::{InputSeq, MAX_INPUT_PAYLOAD, PlayerId, PlayerInput};

use crate::world::{EntityId, World, WorldError};

/// Most inputs one player may have waiting in a region behind a gap. Inputs that continue the run
/// from `last_applied + 1` are taken beyond it, up to [`MAX_KEPT_INPUTS`] in all (see
/// [`Sessions::submit`]).
pub const MAX_PENDING_INPUTS: usize = 256;

/// Ticks a player may wait at the same gap before its client is asked to send its inputs again:
/// half a second at 20 Hz. Inputs of one player travel in order on one stream, so a gap lasts
/// longer than a few ticks only when an input was lost on its way. While the same gap stays, each
/// further ask waits twice as long as the one before, up to [`GAP_RESEND_MAX_TICKS`]: a region
/// whose asks are not answered (the player's link is down, or its gateway drops what the client
/// sends again) does not add a full copy of the player's kept inputs every half second to a load
/// that is already too much.
pub const GAP_RESEND_TICKS: u64 = 10;

/// The longest wait between two asks at the same gap: 16 times [`GAP_RESEND_TICKS`], 8 s at
/// 20 Hz.
pub const GAP_RESEND_MAX_TICKS: u64 = 16 * GAP_RESEND_TICKS;

/// A player's presence in the region, on the player's avatar entity.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
#[component(name = "baton.player_session")]
pub struct PlayerSession {
    /// The player.
    pub player: u64,
    /// Sequence number of the last input applied (0: none yet).
    pub last_applied: InputSeq,
    /// Received, not yet applied, in increasing sequence order.
    pub pending: Vec<PendingInput>,
    /// Inputs that arrived again after being applied or queued (dropped; see [`InputOutcome`]).
    /// A gateway forwards each input once, so outside a resume or a failover (where a client
    /// sends what it keeps again) this stays 0.
    pub duplicates: u64,
    /// Inputs that arrived ahead of a gap (queued until the gap fills): out of order.
    pub early: u64,
    /// Borders the avatar has crossed since the player joined (carried across them): of two
    /// copies of one avatar, the one with more crossings is the live one.
    pub crossings: u64,
}

/// An input waiting to be applied.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PendingInput {
    /// Its sequence number.
    pub seq: InputSeq,
    /// Game-defined bytes.
    pub payload: Vec<u8>,
}

/// What happened to a submitted input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputOutcome {
    /// Queued for application.
    Queued,
    /// Queued, but behind a gap: an earlier input has not arrived yet.
    Early,
    /// Already applied or already queued; dropped.
    Duplicate,
}

/// Errors from joining, leaving or submitting inputs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The player has no session in this region.
    #[error("player {0} has no session in this region")]
    UnknownPlayer(PlayerId),
    /// The player already has a session here.
    #[error("player {0} already has a session in this region")]
    AlreadyJoined(PlayerId),
    /// The input's payload is over the size limit.
    #[error("input payload of {0} bytes exceeds {MAX_INPUT_PAYLOAD} bytes")]
    PayloadTooLarge(usize),
    /// The input's sequence number is 0 (sequences start at 1).
    #[error("input sequence 0 is invalid (sequences start at 1)")]
    ZeroSequence,
    /// Too many inputs are waiting for this player behind a gap (the input that fills the gap is
    /// never refused for this).
    #[error("player {0} has {MAX_PENDING_INPUTS} inputs waiting; input dropped")]
    QueueFull(PlayerId),
    /// The world refused the change.
    #[error(transparent)]
    World(#[from] WorldError),
}

/// Index from players to their avatar entities, rebuilt from the world when a region is restored.
#[derive(Debug, Default)]
pub struct Sessions {
    avatars: HashMap<PlayerId, EntityId>,
}

impl Sessions {
    /// Builds the index from the [`PlayerSession`] components in `world`.
    #[must_use]
    pub fn from_world(world: &World) -> Sessions {
        let avatars =
            world.iter::<PlayerSession>().map(|(entity, session)| (PlayerId(session.player), entity)).collect();
        Sessions { avatars }
    }

    /// Adds `player` with `avatar` (an existing entity) to the region.
    pub fn join(&mut self, world: &mut World, player: PlayerId, avatar: EntityId) -> Result<(), SessionError> {
        self.join_at(world, player, avatar, 0, 0)
    }

    /// Adds `player` whose inputs up to `last_applied` were applied elsewhere, after `crossings`
    /// border crossings (a player crossing in from a neighbouring region keeps its sequence
    /// numbers and its count of crossings).
    pub fn join_at(
        &mut self,
        world: &mut World,
        player: PlayerId,
        avatar: EntityId,
        last_applied: InputSeq,
        crossings: u64,
    ) -> Result<(), SessionError> {
        if self.avatars.contains_key(&player) {
            return Err(SessionError::AlreadyJoined(player));
        }
        world.insert(
            avatar,
            PlayerSession { player: player.0, last_applied, pending: Vec::new(), duplicates: 0, early: 0, crossings },
        )?;
        self.avatars.insert(player, avatar);
        Ok(())
    }

    /// Removes `player`'s session (the avatar entity stays; the game decides its fate).
    pub fn leave(&mut self, world: &mut World, player: PlayerId) -> Option<(EntityId, PlayerSession)> {
        let avatar = self.avatars.remove(&player)?;
        let session = world.remove::<PlayerSession>(avatar)?;
        Some((avatar, session))
    }

    /// The avatar of `player`.
    #[must_use]
    pub fn avatar_of(&self, player: PlayerId) -> Option<EntityId> {
        self.avatars.get(&player).copied()
    }

    /// Number of players in the region.
    #[must_use]
    pub fn len(&self) -> usize {
        self.avatars.len()
    }

    /// Whether no player is in the region.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.avatars.is_empty()
    }

    /// Queues an input for its player.
    ///
    /// A player whose queue holds [`MAX_PENDING_INPUTS`] inputs gets [`SessionError::QueueFull`]
    /// for any further input except one that continues the run of inputs from `last_applied + 1`
    /// (the next number after the last one queued in sequence): the first of those fills the gap
    /// every waiting input is blocked on, so refusing it would block the player for good (a
    /// resuming client resends its inputs from `last_applied + 1` on, into the same full queue),
    /// and after a failover a client sends every input it keeps again at once, in sequence, up to
    /// [`MAX_KEPT_INPUTS`], all of which the next [`take_ready`](Sessions::take_ready) applies.
    /// Those are taken while the queue holds fewer than `MAX_KEPT_INPUTS`; nothing else passes
    /// the bound.
    pub fn submit(&self, world: &mut World, input: PlayerInput) -> Result<InputOutcome, SessionError> {
        if input.payload.len() > MAX_INPUT_PAYLOAD {
            return Err(SessionError::PayloadTooLarge(input.payload.len()));
        }
        if input.seq == 0 {
            return Err(SessionError::ZeroSequence);
        }
        let avatar = self.avatar_of(input.player).ok_or(SessionError::UnknownPlayer(input.player))?;
        let mut session = world.get_mut::<PlayerSession>(avatar).ok_or(SessionError::UnknownPlayer(input.player))?;
        // Invariant 2: an input already applied or already waiting is dropped, never applied twice.
        if input.seq <= session.last_applied {
            session.duplicates += 1;
            return Ok(InputOutcome::Duplicate);
        }
        let position = match session.pending.binary_search_by_key(&input.seq, |pending| pending.seq) {
            Ok(_) => {
                session.duplicates += 1;
                return Ok(InputOutcome::Duplicate);
            }
            Err(position) => position,
        };
        // The run from `last_applied + 1` is checked before the bound: it is what lets a full
        // queue drain.
        let in_run = input.seq == session.last_applied + 1 + queued_run(&session.pending, session.last_applied);
        let bound = if in_run { MAX_KEPT_INPUTS } else { MAX_PENDING_INPUTS };
        if session.pending.len() >= bound {
            return Err(SessionError::QueueFull(input.player));
        }
        session.pending.insert(position, PendingInput { seq: input.seq, payload: input.payload });
        if in_run {
            Ok(InputOutcome::Queued)
        } else {
            session.early += 1;
            Ok(InputOutcome::Early)
        }
    }

    /// `player`'s client no longer has its inputs up to `through` (protocol.md §9, `Skip`): the
    /// region, restored from older state, will never receive those it has not applied. They are
    /// lost: `last_applied` moves to `through` (inputs of the gap that were waiting go with it, as
    /// the rest of the gap cannot be applied before them), and the next input applied is
    /// `through + 1`. Returns how many were lost (0 when the region already applied `through`).
    pub fn skip(&self, world: &mut World, player: PlayerId, through: InputSeq) -> Result<u64, SessionError> {
        let avatar = self.avatar_of(player).ok_or(SessionError::UnknownPlayer(player))?;
        let mut session = world.get_mut::<PlayerSession>(avatar).ok_or(SessionError::UnknownPlayer(player))?;
        if through <= session.last_applied {
            return Ok(0);
        }
        let lost = through - session.last_applied;
        session.last_applied = through;
        session.pending.retain(|pending| pending.seq > through);
        Ok(lost)
    }

    /// The players whose next input has not arrived while later ones wait (a gap), each with the
    /// number it waits for (`last_applied + 1`), in entity order. Called after
    /// [`take_ready`](Sessions::take_ready): a waiting input then always sits behind a gap.
    #[must_use]
    pub fn stalled(&self, world: &World) -> Vec<(PlayerId, InputSeq)> {
        world
            .iter::<PlayerSession>()
            .filter(|(_, session)| session.pending.first().is_some_and(|first| first.seq > session.last_applied + 1))
            .map(|(_, session)| (PlayerId(session.player), session.last_applied + 1))
            .collect()
    }

    /// Takes every input received but not applied yet out of the queues, in entity then
    /// sequence order. For a region being stopped the old way (saved, then started again elsewhere
    /// while its players reconnect): what was not applied at the save is not in it, and each
    /// player's next input is `last_applied + 1`. Submitting the inputs again puts them back.
    pub fn take_pending(&self, world: &mut World) -> Vec<PlayerInput> {
        let mut taken = Vec::new();
        world.for_each_mut::<PlayerSession>(|_, mut session| {
            if !session.pending.is_empty() {
                let player = PlayerId(session.player);
                taken.extend(session.pending.drain(..).map(|pending| PlayerInput {
                    player,
                    seq: pending.seq,
                    payload: pending.payload,
                }));
            }
        });
        taken
    }

    /// Takes, for every player in entity order, the inputs that are next in sequence (stopping at a
    /// gap), and marks them applied. The caller applies them in the returned order within the tick.
    pub fn take_ready(&self, world: &mut World) -> Vec<ReadyInput> {
        let mut ready = Vec::new();
        world.for_each_mut::<PlayerSession>(|avatar, mut session| {
            let next_in_order = session
                .pending
                .iter()
                .enumerate()
                .take_while(|(index, pending)| pending.seq == session.last_applied + 1 + *index as u64)
                .count();
            if next_in_order == 0 {
                return;
            }
            let player = PlayerId(session.player);
            let taken: Vec<PendingInput> = session.pending.drain(..next_in_order).collect();
            if let Some(last) = taken.last() {
                session.last_applied = last.seq;
            }
            ready.extend(taken.into_iter().map(|pending| ReadyInput {
                player,
                avatar,
                seq: pending.seq,
                payload: pending.payload,
            }));
        });
        ready
    }
}

/// How many of `pending` continue the run from `last_applied + 1` without a gap. Their numbers are
/// distinct, sorted and above `last_applied`, so `pending[i].seq >= last_applied + 1 + i`, with
/// equality exactly on that prefix: a binary search finds its end.
fn queued_run(pending: &[PendingInput], last_applied: InputSeq) -> u64 {
    let (mut low, mut high) = (0usize, pending.len());
    while low < high {
        let middle = low + (high - low) / 2;
        if pending[middle].seq == last_applied + 1 + middle as u64 {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low as u64
}

/// An input due for application this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyInput {
    /// The player.
    pub player: PlayerId,
    /// The player's avatar.
    pub avatar: EntityId,
    /// The input's sequence number.
    pub seq: InputSeq,
    /// Game-defined bytes.
    pub payload: Vec<u8>,
}

/// Which players waited at the same gap long enough for their clients to be asked to send their
/// inputs again (see the module's consistency notes). No I/O: fed the players waiting at a gap
/// after each tick, it answers whom to ask.
#[derive(Debug, Default)]
pub struct GapWatch {
    /// Per player waiting at a gap: the number it waits for, and the tick the next ask is due.
    waiting: HashMap<PlayerId, Waiting>,
}

impl GapWatch {
    /// After tick `tick`, the players waiting at a gap ([`Sessions::stalled`]); returns those to
    /// ask for their inputs again, from the number they wait for: once they waited
    /// [`GAP_RESEND_TICKS`] at the same gap, then after twice as long each time while it stays
    /// (10, 20, 40 ... ticks, at most [`GAP_RESEND_MAX_TICKS`]). A player no longer waiting, or
    /// waiting at another gap, starts over.
    pub fn observe(&mut self, tick: u64, stalled: &[(PlayerId, InputSeq)]) -> Vec<(PlayerId, InputSeq)> {
        let mut ask = Vec::new();
        let mut waiting = HashMap::with_capacity(stalled.len());
        for &(player, missing) in stalled {
            let mut entry = match self.waiting.get(&player) {
                Some(entry) if entry.missing == missing => *entry,
                _ => Waiting { missing, due: tick + GAP_RESEND_TICKS, interval: GAP_RESEND_TICKS },
            };
            if tick >= entry.due {
                ask.push((player, missing));
                entry.interval = (entry.interval * 2).min(GAP_RESEND_MAX_TICKS);
                entry.due = tick + entry.interval;
            }
            waiting.insert(player, entry);
        }
        self.waiting = waiting;
        ask
    }
}

/// One player waiting at a gap.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    /// The input it waits for.
    missing: InputSeq,
    /// When it is asked for (again).
    due: u64,
    /// Ticks from this ask to the next.
    interval: u64,
}
