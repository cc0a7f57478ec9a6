//! Hot standbys: a second instance that holds a copy of the region as of a recent tick, so that a
//! failover can continue from there instead of from the newest checkpoint (protocol.md §14).
//!
//! Two machines without I/O, like the handoff's:
//! - [`StandbyFeed`], on the owner: streams the snapshot while the region ticks (as a handoff's
//!   source does), then after every tick one delta round of what changed and a `Mark` naming the
//!   tick and the world's digest. It never stops the region and never freezes it: when the
//!   standby falls behind (more than a window of bytes unapplied) it skips ticks, and the next
//!   round carries everything that changed meanwhile.
//! - [`StandbyFollower`], on the standby: applies a round only once all its parts and its `Mark`
//!   are in, checks the digest, and answers `Holds` with the tick. Its world is therefore always
//!   exactly the owner's at the tick it holds. It never ticks. When the coordinator promotes it,
//!   it takes the region over with the authority's compare-and-swap from the owner's epoch to the
//!   next, like a handoff's target; if the swap loses, it discards what it holds.
//!
//! What a `Holds` means for players is the owner's business (the node's durable acknowledgements):
//! every input applied up to that tick survives the owner's death.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use baton_wire::{Epoch, RegionId};
use rkyv::util::AlignedVec;

use super::HandoffId;
use super::authority::{AuthorityError, Ownership};
use super::message::{Message, PROTOCOL_VERSION};
use super::source::{HandoffPlan, SourceConfig};
use super::target::TargetConfig;
use crate::codec::{self, SnapshotWriter};
use crate::world::{TrackerId, World, WorldDigest};

/// Most bytes of rounds a follower buffers while it waits for their `Mark` (or the parts of one).
pub const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// Ticks without a word from the owner after which a standby suspects it (the owner sends a round
/// every tick), within [`MIN_SUSPECT_AFTER`] and [`MAX_SUSPECT_AFTER`].
pub const SUSPECT_AFTER_TICKS: u32 = 5;
/// The shortest silence a standby calls suspect.
pub const MIN_SUSPECT_AFTER: Duration = Duration::from_millis(150);
/// The longest.
pub const MAX_SUSPECT_AFTER: Duration = Duration::from_millis(500);

/// Where a feed is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedPhase {
    /// Waiting for the standby to accept.
    Prepare,
    /// Streaming the snapshot while the region ticks.
    Snapshot,
    /// Sending a round after every tick.
    Following,
    /// Over: the standby refused, went silent or the link broke; the region goes on without it.
    Ended,
}

/// What a feed reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// The standby holds the world as it was after `tick`.
    Held {
        /// The tick.
        tick: u64,
    },
    /// The feed is over (why, lower-case).
    Ended(String),
}

/// Counts of a feed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Snapshot archive bytes.
    pub snapshot_bytes: u64,
    /// Bytes of rounds sent after the snapshot.
    pub round_bytes: u64,
    /// Rounds sent.
    pub rounds: u32,
    /// Ticks after which no round was sent because the standby was behind.
    pub skipped_ticks: u64,
    /// The newest tick the standby said it holds.
    pub held_tick: Option<u64>,
}

/// The owner's side of a hot standby (see the module documentation).
#[derive(Debug)]
pub struct StandbyFeed {
    id: HandoffId,
    region: RegionId,
    config: SourceConfig,
    phase: FeedPhase,
    started: Instant,
    last_heard: Instant,
    tracker: Option<TrackerId>,
    writer: Option<SnapshotWriter>,
    outbox: VecDeque<Message>,
    events: VecDeque<FeedEvent>,
    sent_bytes: u64,
    applied_bytes: u64,
    round: u32,
    /// Marks sent and not yet held, oldest first: (round, tick).
    unheld: VecDeque<(u32, u64)>,
    stats: FeedStats,
}

impl StandbyFeed {
    /// Starts feeding a standby (the plan's id names this feed; its epoch is the owner's).
    #[must_use]
    pub fn start(now: Instant, world: &World, plan: &HandoffPlan, config: SourceConfig) -> StandbyFeed {
        let mut feed = StandbyFeed {
            id: plan.id,
            region: plan.region,
            config,
            phase: FeedPhase::Prepare,
            started: now,
            last_heard: now,
            tracker: None,
            writer: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            sent_bytes: 0,
            applied_bytes: 0,
            round: 0,
            unheld: VecDeque::new(),
            stats: FeedStats::default(),
        };
        feed.outbox.push_back(Message::Follow {
            handoff: plan.id,
            version: PROTOCOL_VERSION,
            region: plan.region.0,
            epoch: plan.epoch.0,
            source: plan.name.clone(),
            schema: world.registry().schema_hash(),
            tick_interval_us: plan.tick_interval.as_micros() as u64,
            sizes: world.sizes(),
        });
        feed
    }

    /// This feed's id.
    #[must_use]
    pub fn id(&self) -> HandoffId {
        self.id
    }

    /// The phase.
    #[must_use]
    pub fn phase(&self) -> FeedPhase {
        self.phase
    }

    /// Counts so far.
    #[must_use]
    pub fn stats(&self) -> FeedStats {
        self.stats
    }

    /// Whether the feed is over.
    #[must_use]
    pub fn is_ended(&self) -> bool {
        self.phase == FeedPhase::Ended
    }

    /// A message from the standby.
    pub fn handle_message(&mut self, now: Instant, world: &mut World, message: Message) {
        if message.handoff() != self.id || self.phase == FeedPhase::Ended {
            return;
        }
        self.last_heard = now;
        match (self.phase, message) {
            (FeedPhase::Prepare, Message::Ready { .. }) => {
                // As in a handoff (protocol.md §3): the tracker exists before the first chunk, so
                // every change under an already-sent chunk is in a later round.
                self.tracker = Some(world.create_tracker());
                self.writer = Some(SnapshotWriter::new(self.config.chunk));
                self.phase = FeedPhase::Snapshot;
            }
            (_, Message::Progress { applied_bytes, .. }) => {
                self.applied_bytes = self.applied_bytes.max(applied_bytes);
            }
            (FeedPhase::Following, Message::Holds { tick, applied_bytes, .. }) => {
                self.applied_bytes = self.applied_bytes.max(applied_bytes);
                // Only a tick this feed marked counts; a standby cannot hold a tick it was not sent.
                let mut known = false;
                while let Some(&(_, marked)) = self.unheld.front()
                    && marked <= tick
                {
                    known |= marked == tick;
                    self.unheld.pop_front();
                }
                if known && self.stats.held_tick.is_none_or(|held| held < tick) {
                    self.stats.held_tick = Some(tick);
                    self.events.push_back(FeedEvent::Held { tick });
                }
            }
            (_, Message::Abort { reason, .. }) => self.end(world, format!("the standby gave up: {reason}"), false),
            _ => {}
        }
    }

    /// The next message to send, if any. While the snapshot streams this encodes its next chunk
    /// when the window allows (the driver calls it only in the time before the next tick).
    pub fn poll_message(&mut self, world: &mut World) -> Option<Message> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        if self.phase != FeedPhase::Snapshot || self.in_flight() >= self.config.window_bytes as u64 {
            return None;
        }
        match self.writer.as_mut()?.next_chunk(world) {
            Ok(Some(chunk)) => {
                self.stats.snapshot_bytes += chunk.len() as u64;
                self.sent_bytes += chunk.len() as u64;
                Some(Message::Chunk { handoff: self.id, index: 0, bytes: chunk.to_vec() })
            }
            Ok(None) => None,
            Err(error) => {
                self.end(world, format!("encoding the snapshot: {error}"), true);
                self.outbox.pop_front()
            }
        }
    }

    /// The next thing that happened, if any.
    pub fn poll_event(&mut self) -> Option<FeedEvent> {
        self.events.pop_front()
    }

    /// When [`StandbyFeed::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            FeedPhase::Prepare => Some(self.started + self.config.timeouts.prepare),
            FeedPhase::Snapshot | FeedPhase::Following if self.awaits_reply() => {
                Some(self.last_heard + self.config.timeouts.silence)
            }
            _ => None,
        }
    }

    /// Time passed: a standby that does not accept in time, or stops answering while bytes or
    /// marks are unacknowledged, ends the feed.
    pub fn handle_timeout(&mut self, now: Instant, world: &mut World) {
        match self.phase {
            FeedPhase::Prepare if now >= self.started + self.config.timeouts.prepare => {
                self.end(world, "the standby did not accept in time".to_owned(), true);
            }
            FeedPhase::Snapshot | FeedPhase::Following
                if self.awaits_reply() && now >= self.last_heard + self.config.timeouts.silence =>
            {
                self.end(world, "the standby went silent".to_owned(), true);
            }
            _ => {}
        }
    }

    /// The link to the standby broke.
    pub fn handle_link_lost(&mut self, world: &mut World) {
        self.end(world, "link to the standby lost".to_owned(), false);
    }

    /// Ends the feed on the owner's request (a migration starts, the region stops).
    pub fn stop(&mut self, world: &mut World, reason: &str) {
        self.end(world, reason.to_owned(), true);
    }

    /// Called after every tick the region ran. Sends the round that brings the standby to this
    /// tick and returns the tick, or returns `None` when no round went out (the snapshot is still
    /// streaming, or the standby is more than a window behind: the next round carries this tick's
    /// changes too).
    pub fn handle_tick_completed(&mut self, world: &mut World) -> Option<u64> {
        if self.phase == FeedPhase::Snapshot && self.writer.as_ref().is_some_and(SnapshotWriter::is_done) {
            self.writer = None;
            self.phase = FeedPhase::Following;
        }
        if self.phase != FeedPhase::Following {
            return None;
        }
        if self.in_flight() >= self.config.window_bytes as u64 {
            self.stats.skipped_ticks += 1;
            return None;
        }
        let tracker = self.tracker?;
        let changes = world.changes(tracker);
        let round = self.round + 1;
        let parts = match codec::encode_delta(world, &changes, round, self.config.chunk) {
            Ok(parts) => parts,
            Err(error) => {
                self.end(world, format!("encoding round {round}: {error}"), true);
                return None;
            }
        };
        let bytes: usize = parts.iter().map(AlignedVec::len).sum();
        let tick = world.tick();
        let digest = world.digest();
        self.round = round;
        self.stats.rounds = round;
        self.stats.round_bytes += bytes as u64;
        self.sent_bytes += bytes as u64;
        let count = parts.len() as u32;
        for (part, bytes) in parts.into_iter().enumerate() {
            self.outbox.push_back(Message::Delta { handoff: self.id, round, part: part as u32, bytes: bytes.to_vec() });
        }
        self.outbox.push_back(Message::Mark { handoff: self.id, round, parts: count, tick, digest: digest.0 });
        self.unheld.push_back((round, tick));
        Some(tick)
    }

    fn in_flight(&self) -> u64 {
        self.sent_bytes.saturating_sub(self.applied_bytes)
    }

    fn awaits_reply(&self) -> bool {
        self.in_flight() > 0 || !self.unheld.is_empty()
    }

    fn end(&mut self, world: &mut World, reason: String, tell: bool) {
        if self.phase == FeedPhase::Ended {
            return;
        }
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.writer = None;
        self.outbox.clear();
        if tell {
            self.outbox.push_back(Message::Abort { handoff: self.id, reason: reason.clone() });
        }
        self.phase = FeedPhase::Ended;
        tracing::info!(region = %self.region, feed = self.id, reason, "the standby feed ended");
        self.events.push_back(FeedEvent::Ended(reason));
    }
}

/// Why a standby refuses a promotion.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    /// It does not follow an owner now (still starting, already promoting, or ended).
    #[error("the standby cannot be promoted while {0:?}")]
    NotFollowing(FollowerPhase),
    /// It follows the owner at another epoch.
    #[error("the standby follows epoch {follows}, not {asked}")]
    OtherEpoch {
        /// The epoch of the owner it follows.
        follows: Epoch,
        /// The epoch the promotion names.
        asked: Epoch,
    },
    /// It has not held a complete tick yet.
    #[error("the standby holds no complete tick yet")]
    NothingHeld,
}

/// Where a follower is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowerPhase {
    /// Receiving the snapshot and rounds; holds a tick once the first round is applied.
    Following,
    /// The feed stopped (the owner went silent or its link broke): keeps what it holds, for a
    /// promotion, until the coordinator decides.
    Detached,
    /// Asked the authority for the region.
    Promoting,
    /// Owns the region.
    Promoted,
    /// Over: what it received must be discarded.
    Ended,
}

/// What a follower wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerAction {
    /// Compare-and-swap at the authority; answer with [`StandbyFollower::handle_authority`].
    Authority {
        /// The owner's ownership.
        expected: Ownership,
        /// This instance's.
        next: Ownership,
    },
    /// The standby owns the region at `epoch`, holding the world after `tick`: rebuild engine
    /// caches and tick.
    Promoted {
        /// The new epoch.
        epoch: Epoch,
        /// The tick it continues from.
        tick: u64,
    },
    /// The feed stopped; what is held is kept for a promotion.
    Detached(String),
    /// Nothing came from the owner for `silent_for`, several ticks' worth (it sends a round every
    /// tick): a witness, for the coordinator, that the owner or its link may be gone.
    OwnerSilent {
        /// How long nothing came.
        silent_for: Duration,
    },
    /// The owner was heard again after an [`FollowerAction::OwnerSilent`].
    OwnerHeard,
    /// Discard the received world and return to the pre-warmed state.
    Discard(String),
}

#[derive(Debug)]
struct PendingMark {
    round: u32,
    parts: u32,
    tick: u64,
    digest: u128,
}

/// The standby's side (see the module documentation).
#[derive(Debug)]
pub struct StandbyFollower {
    config: TargetConfig,
    phase: FollowerPhase,
    feed: HandoffId,
    region: RegionId,
    owner: Ownership,
    last_heard: Instant,
    retry_at: Option<Instant>,
    outbox: VecDeque<Message>,
    actions: VecDeque<FollowerAction>,
    /// Parts received and not applied, with their round, in arrival order.
    parts: VecDeque<(u32, Vec<u8>)>,
    buffered_bytes: usize,
    marks: VecDeque<PendingMark>,
    applied_bytes: u64,
    progress_due: bool,
    held: Option<u64>,
    /// After this long without a message the owner is suspected ([`FollowerAction::OwnerSilent`]).
    suspect_after: Duration,
    suspected: bool,
}

impl StandbyFollower {
    /// Starts following from the owner's `Follow` message (anything else is refused); `world` is
    /// the pre-warmed slot's, which must be empty and of the same schema.
    #[must_use]
    pub fn new(now: Instant, config: TargetConfig, world: &mut World, follow: &Message) -> StandbyFollower {
        let mut follower = StandbyFollower {
            config,
            phase: FollowerPhase::Following,
            feed: follow.handoff(),
            region: RegionId(0),
            owner: Ownership { owner: String::new(), epoch: Epoch(0) },
            last_heard: now,
            retry_at: None,
            outbox: VecDeque::new(),
            actions: VecDeque::new(),
            parts: VecDeque::new(),
            buffered_bytes: 0,
            marks: VecDeque::new(),
            applied_bytes: 0,
            progress_due: false,
            held: None,
            suspect_after: MIN_SUSPECT_AFTER,
            suspected: false,
        };
        let Message::Follow { version, region, epoch, source, schema, tick_interval_us, sizes, .. } = follow else {
            follower.end("the first message of a feed must be Follow".to_owned());
            return follower;
        };
        follower.region = RegionId(*region);
        follower.owner = Ownership { owner: source.clone(), epoch: Epoch(*epoch) };
        follower.suspect_after = (Duration::from_micros(*tick_interval_us) * SUSPECT_AFTER_TICKS)
            .clamp(MIN_SUSPECT_AFTER, MAX_SUSPECT_AFTER);
        match super::target::refusal(*version, *schema, world, "standby") {
            Some(reason) => follower.end(reason),
            None => {
                world.reserve(sizes);
                follower
                    .outbox
                    .push_back(Message::Ready { handoff: follower.feed, target: follower.config.name.clone() });
            }
        }
        follower
    }

    /// The phase.
    #[must_use]
    pub fn phase(&self) -> FollowerPhase {
        self.phase
    }

    /// The region followed.
    #[must_use]
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The owner followed.
    #[must_use]
    pub fn owner(&self) -> &Ownership {
        &self.owner
    }

    /// The newest tick whose world this standby holds (`None` until the first round is applied).
    #[must_use]
    pub fn held_tick(&self) -> Option<u64> {
        self.held
    }

    /// Archive bytes applied so far.
    #[must_use]
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    /// A message from the owner.
    pub fn handle_message(&mut self, now: Instant, world: &mut World, message: Message) {
        if message.handoff() != self.feed || self.phase != FollowerPhase::Following {
            return;
        }
        self.last_heard = now;
        if std::mem::take(&mut self.suspected) {
            self.actions.push_back(FollowerAction::OwnerHeard);
        }
        match message {
            // Chunks come before round 1's parts on the (ordered) bulk stream, so they are all
            // applied before any round is.
            Message::Chunk { bytes, .. } if self.held.is_none() => {
                match codec::apply(world, &bytes, self.config.limits) {
                    Ok(_) => {
                        self.applied_bytes += bytes.len() as u64;
                        self.progress_due = true;
                    }
                    Err(error) => self.end(format!("a received snapshot chunk is invalid: {error}")),
                }
            }
            Message::Delta { round, bytes, .. } => {
                self.buffered_bytes += bytes.len();
                self.parts.push_back((round, bytes));
            }
            Message::Mark { round, parts, tick, digest, .. } => {
                self.marks.push_back(PendingMark { round, parts, tick, digest });
            }
            Message::Abort { reason, .. } => {
                self.phase = FollowerPhase::Ended;
                self.actions.push_back(FollowerAction::Discard(format!("the owner ended the feed: {reason}")));
                return;
            }
            _ => {}
        }
        if self.buffered_bytes > MAX_BUFFERED_BYTES {
            self.end(format!("more than {MAX_BUFFERED_BYTES} bytes of rounds wait for their marks"));
            return;
        }
        self.apply_complete_rounds(world);
    }

    /// The next message to send, if any.
    pub fn poll_message(&mut self) -> Option<Message> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        if self.progress_due && self.phase == FollowerPhase::Following {
            self.progress_due = false;
            return Some(Message::Progress { handoff: self.feed, applied_bytes: self.applied_bytes });
        }
        None
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<FollowerAction> {
        self.actions.pop_front()
    }

    /// When [`StandbyFollower::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            FollowerPhase::Following if !self.suspected => Some(self.last_heard + self.suspect_after),
            FollowerPhase::Following => Some(self.last_heard + self.config.timeouts.silence),
            FollowerPhase::Promoting => self.retry_at,
            _ => None,
        }
    }

    /// Time passed: an owner silent for the silence timeout detaches the standby (the owner sends
    /// a mark every tick, so silence means it or the link is gone); an unknown promotion outcome
    /// is asked again.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            FollowerPhase::Following if now >= self.last_heard + self.config.timeouts.silence => {
                self.detach("the owner went silent");
            }
            FollowerPhase::Following if !self.suspected && now >= self.last_heard + self.suspect_after => {
                self.suspected = true;
                self.actions.push_back(FollowerAction::OwnerSilent { silent_for: now - self.last_heard });
            }
            FollowerPhase::Promoting if self.retry_at.is_some_and(|at| now >= at) => {
                self.retry_at = None;
                self.request_promotion();
            }
            _ => {}
        }
    }

    /// The link to the owner broke.
    pub fn handle_link_lost(&mut self) {
        if self.phase == FollowerPhase::Following {
            self.detach("link to the owner lost");
        }
    }

    /// The coordinator promotes this standby: the owner at `epoch` is lost. Refused (with the
    /// reason) unless it follows that owner at that epoch and holds a tick.
    pub fn promote(&mut self, epoch: Epoch) -> Result<(), PromoteError> {
        if !matches!(self.phase, FollowerPhase::Following | FollowerPhase::Detached) {
            return Err(PromoteError::NotFollowing(self.phase));
        }
        if self.owner.epoch != epoch {
            return Err(PromoteError::OtherEpoch { follows: self.owner.epoch, asked: epoch });
        }
        let Some(tick) = self.held else {
            return Err(PromoteError::NothingHeld);
        };
        // Rounds received but not complete are dropped: the world stays exactly as at `tick`.
        self.parts.clear();
        self.marks.clear();
        self.buffered_bytes = 0;
        self.outbox.clear();
        self.phase = FollowerPhase::Promoting;
        tracing::info!(region = %self.region, tick, owner = self.owner.owner, %epoch, "promoting the standby");
        self.request_promotion();
        Ok(())
    }

    /// The authority's answer to the promotion's compare-and-swap.
    pub fn handle_authority(&mut self, now: Instant, result: Result<(), AuthorityError>) {
        if self.phase != FollowerPhase::Promoting {
            return;
        }
        let next = self.owner.epoch.next();
        match result {
            Ok(()) => self.promoted(next),
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. })
                if actual_epoch == next && actual_owner == self.config.name =>
            {
                // An earlier attempt went through although its answer was lost.
                self.promoted(next);
            }
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. }) => {
                self.phase = FollowerPhase::Ended;
                self.actions.push_back(FollowerAction::Discard(format!(
                    "the promotion lost: the region is at {actual_owner}@{actual_epoch}"
                )));
            }
            Err(error @ AuthorityError::BadOwner(_)) => {
                // Refused for good with nothing changed (protocol.md §5): asking again cannot win.
                self.phase = FollowerPhase::Ended;
                self.actions.push_back(FollowerAction::Discard(format!("the promotion was refused: {error}")));
            }
            Err(error) => {
                // Unknown outcome: keep the state and ask again (never discard a possible win).
                tracing::warn!(region = %self.region, %error, "promotion outcome unknown; retrying");
                self.retry_at = Some(now + self.config.timeouts.authority_retry);
            }
        }
    }

    fn promoted(&mut self, epoch: Epoch) {
        self.phase = FollowerPhase::Promoted;
        self.retry_at = None;
        let tick = self.held.unwrap_or(0);
        self.actions.push_back(FollowerAction::Promoted { epoch, tick });
    }

    fn request_promotion(&mut self) {
        let next = Ownership { owner: self.config.name.clone(), epoch: self.owner.epoch.next() };
        self.actions.push_back(FollowerAction::Authority { expected: self.owner.clone(), next });
    }

    /// Applies every round whose mark and parts are all in, in order, checking each digest.
    fn apply_complete_rounds(&mut self, world: &mut World) {
        while let Some(mark) = self.marks.front() {
            let received = self.parts.iter().take_while(|(round, _)| *round == mark.round).count();
            if (received as u32) < mark.parts {
                return;
            }
            let Some(mark) = self.marks.pop_front() else { return };
            for _ in 0..mark.parts {
                let Some((_, bytes)) = self.parts.pop_front() else { return };
                self.buffered_bytes -= bytes.len();
                if let Err(error) = codec::apply(world, &bytes, self.config.limits) {
                    self.end(format!("a received round is invalid: {error}"));
                    return;
                }
                self.applied_bytes += bytes.len() as u64;
            }
            // Invariant 4 for standbys: what is held equals the owner's world at the mark's tick.
            let ours = world.digest();
            if ours != WorldDigest(mark.digest) || world.tick() != mark.tick {
                self.end(format!(
                    "digest mismatch at tick {}: owner {} standby {ours} (standby tick {})",
                    mark.tick,
                    WorldDigest(mark.digest),
                    world.tick()
                ));
                return;
            }
            self.held = Some(mark.tick);
            self.progress_due = false;
            self.outbox.push_back(Message::Holds {
                handoff: self.feed,
                tick: mark.tick,
                applied_bytes: self.applied_bytes,
            });
        }
    }

    fn detach(&mut self, reason: &str) {
        self.phase = FollowerPhase::Detached;
        self.parts.clear();
        self.marks.clear();
        self.buffered_bytes = 0;
        self.outbox.clear();
        self.actions.push_back(FollowerAction::Detached(reason.to_owned()));
    }

    fn end(&mut self, reason: String) {
        self.outbox.clear();
        self.outbox.push_back(Message::Abort { handoff: self.feed, reason: reason.clone() });
        self.phase = FollowerPhase::Ended;
        self.actions.push_back(FollowerAction::Discard(reason));
    }
}
