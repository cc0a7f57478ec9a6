//! The target side of a handoff: a pre-warmed instance that receives the region and takes it over.
//!
//! Invariant: the target never ticks the region unless its compare-and-swap at the authority won
//! (protocol.md §5); once it has asked for the swap it keeps the received state until it knows the
//! outcome, so a commit can never be lost to a target that gave up too early.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use baton_wire::{Epoch, PlayerInput, RegionId};

use super::authority::{AuthorityError, Ownership};
use super::message::{Message, PROTOCOL_VERSION};
use super::{AbortReason, Culprit, HandoffId, Phase, Timeouts};
use crate::codec::{self, DecodeLimits, Prepared};
use crate::world::{World, WorldDigest};

/// Why a receiving slot (a handoff's target, a standby) refuses a sender whose first message says
/// `version` and `schema` (protocol.md §2): another message set, other component types, or a
/// world that is not empty. `what` names the slot in the reason.
pub(crate) fn refusal(version: u16, schema: u64, world: &World, what: &str) -> Option<String> {
    if version != PROTOCOL_VERSION {
        Some(format!("protocol version {version} is not {PROTOCOL_VERSION}"))
    } else if schema != world.registry().schema_hash() {
        Some(format!(
            "component schema {schema:016x} differs from this build's {:016x}",
            world.registry().schema_hash()
        ))
    } else if world.entity_count() != 0 {
        Some(format!("the {what}'s world is not empty"))
    } else {
        None
    }
}

/// Settings of the target side.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// This instance's name at the authority.
    pub name: String,
    /// Limits on received archives.
    pub limits: DecodeLimits,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl TargetConfig {
    /// Defaults for an instance called `name`.
    #[must_use]
    pub fn new(name: &str) -> TargetConfig {
        TargetConfig { name: name.to_owned(), limits: DecodeLimits::default(), timeouts: Timeouts::default() }
    }
}

/// Where the target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetPhase {
    /// Pre-warmed, no handoff yet.
    Idle,
    /// Receiving the snapshot and delta rounds.
    Receiving,
    /// Frozen source: applying the final round.
    Verifying,
    /// Asked the authority for the region; waiting for the answer.
    Committing,
    /// Owns the region.
    Authoritative,
    /// This attempt failed; the received state must be discarded.
    Aborted,
}

/// What the target wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// Compare-and-swap at the authority; answer with [`HandoffTarget::handle_authority`].
    Authority {
        /// The ownership the region must be at (the source's).
        expected: Ownership,
        /// The ownership to take.
        next: Ownership,
    },
    /// The target owns the region: rebuild engine caches and run the next tick at `first_tick_at`.
    Authoritative {
        /// The new epoch.
        epoch: Epoch,
        /// The last tick the source ran; the target continues from it.
        tick: u64,
        /// When the first tick is due, on the source's schedule.
        first_tick_at: Instant,
    },
    /// Inputs the source forwarded: submit them to the region (duplicates are dropped there).
    Stragglers(Vec<PlayerInput>),
    /// The attempt failed: discard the received world and return to the pre-warmed state.
    Discard(AbortReason),
}

#[derive(Clone, Copy, Debug)]
struct PendingFreeze {
    round: u32,
    parts: u32,
    digest: u128,
    tick: u64,
    next_tick_in: Duration,
    received_at: Instant,
}

/// The target side of handoffs, one at a time.
#[derive(Debug)]
pub struct HandoffTarget {
    config: TargetConfig,
    phase: TargetPhase,
    handoff: Option<HandoffId>,
    region: RegionId,
    source: Ownership,
    outbox: VecDeque<Message>,
    actions: VecDeque<TargetAction>,
    last_heard: Instant,
    deadline: Option<Instant>,
    parts_applied: HashMap<u32, u32>,
    progress_due: bool,
    freeze: Option<PendingFreeze>,
    /// Archive bytes applied (reported to the source in `Progress`).
    applied_bytes: u64,
    /// Whether this attempt's `EnginesReady` went out.
    engines_ready: bool,
}

impl HandoffTarget {
    /// A pre-warmed target waiting for a handoff.
    #[must_use]
    pub fn new(now: Instant, config: TargetConfig) -> HandoffTarget {
        HandoffTarget {
            config,
            phase: TargetPhase::Idle,
            handoff: None,
            region: RegionId(0),
            source: Ownership { owner: String::new(), epoch: Epoch(0) },
            outbox: VecDeque::new(),
            actions: VecDeque::new(),
            last_heard: now,
            deadline: None,
            parts_applied: HashMap::new(),
            progress_due: false,
            freeze: None,
            applied_bytes: 0,
            engines_ready: false,
        }
    }

    /// The phase.
    #[must_use]
    pub fn phase(&self) -> TargetPhase {
        self.phase
    }

    /// The attempt being received, if any.
    #[must_use]
    pub fn handoff(&self) -> Option<HandoffId> {
        self.handoff
    }

    /// The region being received or owned.
    #[must_use]
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// The driver's engines are built from the received world and follow it (a region's
    /// [`install_engine`](crate::Region::install_engine) said so): tells the source, once per
    /// attempt, that a freeze now costs only the final round (protocol.md §4). Ignored outside the
    /// rounds.
    pub fn handle_engines_ready(&mut self, _now: Instant) {
        if let Some(handoff) = self.handoff
            && self.phase == TargetPhase::Receiving
            && !self.engines_ready
        {
            self.engines_ready = true;
            self.outbox.push_back(Message::EnginesReady { handoff });
        }
    }

    /// A message from the source.
    pub fn handle_message(&mut self, now: Instant, world: &mut World, message: Message) {
        self.handle(now, world, message, None);
    }

    /// [`HandoffTarget::handle_message`] for a `Chunk` or `Delta` whose archive was prepared
    /// ([`codec::prepare`]) away from the region's thread, with a clone of `world`'s registry, so
    /// that only its values' insertion is left for this thread (any other message is handled as
    /// by `handle_message`). An archive the preparation refused, one over this target's limit or
    /// one whose component ids are not `world`'s is decoded again here from the message's bytes,
    /// so preparing never changes what is applied or refused.
    pub fn handle_prepared(&mut self, now: Instant, world: &mut World, message: Message, archive: Prepared) {
        self.handle(now, world, message, Some(archive));
    }

    /// [`HandoffTarget::handle_prepared`] when the archive was prepared, else
    /// [`HandoffTarget::handle_message`].
    pub(crate) fn handle(&mut self, now: Instant, world: &mut World, message: Message, prepared: Option<Prepared>) {
        self.last_heard = now;
        if let Message::Begin { handoff, version, region, epoch, source, schema, sizes, .. } = &message {
            if self.phase != TargetPhase::Idle && self.phase != TargetPhase::Aborted {
                self.outbox.push_back(Message::Abort {
                    handoff: *handoff,
                    reason: "the target is busy with another handoff".to_owned(),
                });
                return;
            }
            self.reset();
            self.handoff = Some(*handoff);
            self.region = RegionId(*region);
            self.source = Ownership { owner: source.clone(), epoch: Epoch(*epoch) };
            match refusal(*version, *schema, world, "target") {
                Some(reason) => self.abort(Culprit::Target, Phase::Prepare, reason),
                None => {
                    self.phase = TargetPhase::Receiving;
                    world.reserve(sizes);
                    self.outbox.push_back(Message::Ready { handoff: *handoff, target: self.config.name.clone() });
                }
            }
            return;
        }
        if Some(message.handoff()) != self.handoff {
            return;
        }
        match (self.phase, message) {
            (TargetPhase::Receiving | TargetPhase::Verifying, Message::Chunk { bytes, .. }) => {
                self.apply(world, &bytes, prepared, Phase::Snapshot);
            }
            (TargetPhase::Receiving | TargetPhase::Verifying, Message::Delta { round, bytes, .. }) => {
                // Not a match guard: the prepared archive moves into the apply.
                let applied = self.apply(world, &bytes, prepared, Phase::Rounds);
                if applied {
                    *self.parts_applied.entry(round).or_default() += 1;
                }
            }
            (TargetPhase::Receiving, Message::Freeze { round, parts, digest, tick, next_tick_in_us, .. }) => {
                self.freeze = Some(PendingFreeze {
                    round,
                    parts,
                    digest,
                    tick,
                    next_tick_in: Duration::from_micros(next_tick_in_us),
                    received_at: now,
                });
                self.phase = TargetPhase::Verifying;
            }
            (TargetPhase::Receiving | TargetPhase::Verifying, Message::Abort { reason, .. }) => {
                self.abort(Culprit::Source, Phase::Rounds, reason);
                // The source asked for it; no need to tell it back.
                self.outbox.clear();
            }
            (TargetPhase::Authoritative, Message::Stragglers { inputs, .. }) => {
                self.actions.push_back(TargetAction::Stragglers(inputs));
            }
            _ => {}
        }
        if self.phase == TargetPhase::Verifying {
            self.try_verify(world);
        }
    }

    /// The next message to send, if any.
    pub fn poll_message(&mut self) -> Option<Message> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        if self.progress_due
            && let Some(handoff) = self.handoff
        {
            self.progress_due = false;
            return Some(Message::Progress { handoff, applied_bytes: self.applied_bytes });
        }
        None
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<TargetAction> {
        self.actions.pop_front()
    }

    /// When [`HandoffTarget::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = matches!(self.phase, TargetPhase::Receiving | TargetPhase::Verifying)
            .then(|| self.last_heard + self.config.timeouts.silence);
        match (self.deadline, silence) {
            (Some(deadline), Some(silence)) => Some(deadline.min(silence)),
            (deadline, silence) => deadline.or(silence),
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, TargetPhase::Receiving | TargetPhase::Verifying)
            && now >= self.last_heard + self.config.timeouts.silence
        {
            let phase = if self.phase == TargetPhase::Verifying { Phase::Freeze } else { Phase::Rounds };
            self.abort(Culprit::Link, phase, "the source went silent".to_owned());
            return;
        }
        if self.phase == TargetPhase::Committing && self.deadline.is_some_and(|deadline| now >= deadline) {
            // The authority's answer was unknown; ask again with the same swap.
            self.deadline = None;
            self.request_commit();
        }
    }

    /// The link to the source broke.
    pub fn handle_link_lost(&mut self, _now: Instant) {
        match self.phase {
            TargetPhase::Receiving => self.abort(Culprit::Link, Phase::Rounds, "link to the source lost".to_owned()),
            TargetPhase::Verifying => self.abort(Culprit::Link, Phase::Freeze, "link to the source lost".to_owned()),
            // protocol.md §5: after asking for the swap the target settles with the authority alone.
            _ => {}
        }
        self.outbox.clear();
    }

    /// The authority's answer to this target's compare-and-swap.
    pub fn handle_authority(&mut self, now: Instant, result: Result<(), AuthorityError>) {
        if self.phase != TargetPhase::Committing {
            return;
        }
        let next_epoch = self.source.epoch.next();
        match result {
            Ok(()) => self.commit(now, next_epoch),
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. })
                if actual_epoch == next_epoch && actual_owner == self.config.name =>
            {
                // Our earlier attempt went through although its answer was lost.
                self.commit(now, next_epoch);
            }
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. }) => {
                self.abort(
                    Culprit::Authority,
                    Phase::Commit,
                    format!("the authority refused the commit: the region is at {actual_owner}@{actual_epoch}"),
                );
            }
            Err(error @ AuthorityError::BadOwner(_)) => {
                // protocol.md §5: refused for good with nothing changed; the source still owns the
                // region.
                self.abort(Culprit::Authority, Phase::Commit, format!("the authority refused the commit: {error}"));
            }
            Err(error) => {
                // Unknown outcome: keep the state and ask again (never discard a possible commit).
                tracing::warn!(region = %self.region, %error, "commit outcome unknown; retrying");
                self.deadline = Some(now + self.config.timeouts.authority_retry);
            }
        }
    }

    fn reset(&mut self) {
        self.handoff = None;
        self.outbox.clear();
        self.actions.clear();
        self.parts_applied.clear();
        self.progress_due = false;
        self.freeze = None;
        self.deadline = None;
        self.applied_bytes = 0;
        self.engines_ready = false;
    }

    /// Applies `bytes`, or the archive prepared from them.
    fn apply(&mut self, world: &mut World, bytes: &[u8], prepared: Option<Prepared>, phase: Phase) -> bool {
        let decoded = match prepared {
            Some(Ok(archive))
                if bytes.len() <= self.config.limits.max_archive_bytes && archive.fits(world.registry()) =>
            {
                Ok(archive)
            }
            _ => codec::decode(world.registry(), bytes, self.config.limits),
        };
        match decoded.map(|archive| archive.apply(world)) {
            Ok(_) => {
                self.applied_bytes += bytes.len() as u64;
                self.progress_due = true;
                // Fold the digest as state arrives, so that the check at the freeze costs only the
                // final round.
                let _ = world.digest();
                true
            }
            Err(error) => {
                self.abort(Culprit::Source, phase, format!("a received archive is invalid: {error}"));
                false
            }
        }
    }

    fn try_verify(&mut self, world: &mut World) {
        let Some(freeze) = self.freeze else {
            return;
        };
        if self.parts_applied.get(&freeze.round).copied().unwrap_or(0) < freeze.parts {
            return;
        }
        let ours = world.digest();
        // protocol.md §4: the target's world must equal the source's at the freeze (invariant 4).
        if ours != WorldDigest(freeze.digest) {
            self.abort(
                Culprit::Target,
                Phase::Freeze,
                format!("digest mismatch: source {} target {ours}", WorldDigest(freeze.digest)),
            );
            return;
        }
        self.phase = TargetPhase::Committing;
        self.request_commit();
    }

    fn request_commit(&mut self) {
        let next = Ownership { owner: self.config.name.clone(), epoch: self.source.epoch.next() };
        self.actions.push_back(TargetAction::Authority { expected: self.source.clone(), next });
    }

    fn commit(&mut self, now: Instant, epoch: Epoch) {
        let Some(freeze) = self.freeze else {
            return;
        };
        self.phase = TargetPhase::Authoritative;
        self.deadline = None;
        if let Some(handoff) = self.handoff {
            self.outbox.push_back(Message::Committed { handoff, epoch: epoch.0 });
        }
        // protocol.md §6: the first tick keeps the source's schedule.
        let first_tick_at = (freeze.received_at + freeze.next_tick_in).max(now);
        self.actions.push_back(TargetAction::Authoritative { epoch, tick: freeze.tick, first_tick_at });
    }

    fn abort(&mut self, culprit: Culprit, phase: Phase, reason: String) {
        if let Some(handoff) = self.handoff {
            self.outbox.push_back(Message::Abort { handoff, reason: reason.clone() });
        }
        self.phase = TargetPhase::Aborted;
        self.deadline = None;
        self.freeze = None;
        let reason = AbortReason { culprit, phase, reason };
        crate::events::handoff_aborted(self.region, &reason);
        self.actions.push_back(TargetAction::Discard(reason));
    }
}

#[cfg(test)]
mod tests {
    //! The target alone, fed messages by hand: what the whole-handoff tests cannot single out
    //! (a busy target, the source's abort, stragglers, the link's loss, timers called early).

    use super::*;
    use crate::codec::CodecError;
    use crate::component::Registry;
    use baton_wire::PlayerId;

    const HANDOFF: HandoffId = 7;

    fn begin(handoff: HandoffId, world: &World) -> Message {
        Message::Begin {
            handoff,
            version: PROTOCOL_VERSION,
            region: 3,
            epoch: 4,
            source: "source".into(),
            schema: world.registry().schema_hash(),
            tick_interval_us: 50_000,
            sizes: world.sizes(),
        }
    }

    /// A target receiving handoff 7 into an empty world.
    fn receiving() -> (HandoffTarget, World, Instant) {
        let now = Instant::now();
        let mut target = HandoffTarget::new(now, TargetConfig::new("target"));
        let mut world = World::new(Registry::new());
        let message = begin(HANDOFF, &world);
        target.handle_message(now, &mut world, message);
        assert_eq!(target.phase(), TargetPhase::Receiving);
        assert_eq!(target.region(), RegionId(3));
        assert_eq!(target.poll_message(), Some(Message::Ready { handoff: HANDOFF, target: "target".into() }));
        (target, world, now)
    }

    /// The freeze of an empty world whose final round has `parts` parts.
    fn freeze(world: &mut World, parts: u32) -> Message {
        Message::Freeze { handoff: HANDOFF, round: 1, parts, digest: world.digest().0, tick: 90, next_tick_in_us: 0 }
    }

    fn discarded(target: &mut HandoffTarget) -> Option<AbortReason> {
        std::iter::from_fn(|| target.poll_action()).find_map(|action| match action {
            TargetAction::Discard(reason) => Some(reason),
            _ => None,
        })
    }

    /// A source world of three entities and the delta round (one part) that spawns them.
    fn spawning_round() -> (World, Vec<u8>) {
        let mut source = World::new(Registry::new());
        let tracker = source.create_tracker();
        for _ in 0..3 {
            source.spawn();
        }
        let changes = source.changes(tracker);
        let mut parts = codec::encode_delta(&source, &changes, 1, codec::ChunkConfig::default()).unwrap();
        assert_eq!(parts.len(), 1);
        (source, parts.remove(0).to_vec())
    }

    #[test]
    fn an_archive_prepared_away_is_applied_as_its_bytes_would_be_and_anything_else_is_decoded_again() {
        let (mut target, mut world, now) = receiving();
        let (mut source, bytes) = spawning_round();
        let archive = codec::prepare(world.registry(), &bytes, DecodeLimits::default());
        let delta = Message::Delta { handoff: HANDOFF, round: 1, part: 0, bytes: bytes.clone() };
        target.handle_prepared(now, &mut world, delta.clone(), archive);
        assert_eq!(world.entity_count(), 3);
        assert_eq!(
            target.poll_message(),
            Some(Message::Progress { handoff: HANDOFF, applied_bytes: bytes.len() as u64 })
        );
        target.handle_message(now, &mut world, freeze(&mut source, 1));
        assert_eq!(
            target.phase(),
            TargetPhase::Committing,
            "the part counts towards the final round and the digests agree"
        );

        // The prepared archive is what is applied, not its bytes decoded again (here it was made
        // from another round, of five entities).
        let (mut used, mut world, now) = receiving();
        let mut five = World::new(Registry::new());
        let tracker = five.create_tracker();
        for _ in 0..5 {
            five.spawn();
        }
        let changes = five.changes(tracker);
        let other = codec::encode_delta(&five, &changes, 1, codec::ChunkConfig::default()).unwrap().remove(0);
        let archive = codec::prepare(world.registry(), &other, DecodeLimits::default());
        used.handle_prepared(now, &mut world, delta.clone(), archive);
        assert_eq!(world.entity_count(), 5);

        // What the preparation refused is decoded again: good bytes apply, bad ones abort with
        // this target's own reason.
        let (mut again, mut world, now) = receiving();
        again.handle_prepared(now, &mut world, delta.clone(), Err(CodecError::Invalid("made up".into())));
        assert_eq!((again.phase(), world.entity_count()), (TargetPhase::Receiving, 3));
        let (mut refused, mut world, now) = receiving();
        let bad = Message::Delta { handoff: HANDOFF, round: 1, part: 0, bytes: vec![1; 8] };
        refused.handle_prepared(now, &mut world, bad, Err(CodecError::Invalid("made up".into())));
        assert_eq!(refused.phase(), TargetPhase::Aborted);
        let reason = discarded(&mut refused).unwrap();
        assert_eq!(
            (reason.culprit, reason.phase, reason.reason.as_str()),
            (
                Culprit::Source,
                Phase::Rounds,
                "a received archive is invalid: archive truncated: shorter than the header"
            )
        );
        assert_eq!(world.entity_count(), 0);

        // An archive over this target's own limit is refused, whatever the preparation said.
        let now = Instant::now();
        let limits = DecodeLimits { max_archive_bytes: bytes.len() - 1 };
        let mut strict = HandoffTarget::new(now, TargetConfig { limits, ..TargetConfig::new("target") });
        let mut world = World::new(Registry::new());
        strict.handle_message(now, &mut world, begin(HANDOFF, &World::new(Registry::new())));
        let archive = codec::prepare(world.registry(), &bytes, DecodeLimits::default());
        strict.handle_prepared(now, &mut world, delta, archive);
        assert_eq!(strict.phase(), TargetPhase::Aborted);
        assert_eq!(world.entity_count(), 0);
    }

    #[test]
    fn a_busy_target_refuses_a_second_handoff_and_keeps_the_first() {
        let (mut target, mut world, now) = receiving();
        let message = begin(8, &world);
        target.handle_message(now, &mut world, message);
        assert_eq!(
            target.poll_message(),
            Some(Message::Abort { handoff: 8, reason: "the target is busy with another handoff".into() })
        );
        assert_eq!(target.phase(), TargetPhase::Receiving);
        assert_eq!(discarded(&mut target), None);
    }

    #[test]
    fn engines_ready_goes_to_the_source_once_per_attempt_and_only_while_receiving() {
        let mut idle = HandoffTarget::new(Instant::now(), TargetConfig::new("target"));
        idle.handle_engines_ready(Instant::now());
        assert_eq!(idle.poll_message(), None, "no attempt yet");

        let (mut target, mut world, now) = receiving();
        target.handle_engines_ready(now);
        target.handle_engines_ready(now);
        assert_eq!(target.poll_message(), Some(Message::EnginesReady { handoff: HANDOFF }));
        assert_eq!(target.poll_message(), None, "once per attempt");

        // A new attempt after an abort says it again; a frozen source needs it no more.
        target.handle_message(now, &mut world, Message::Abort { handoff: HANDOFF, reason: "operator".into() });
        let message = begin(HANDOFF + 1, &world);
        target.handle_message(now, &mut world, message);
        target.poll_message();
        target.handle_engines_ready(now);
        assert_eq!(target.poll_message(), Some(Message::EnginesReady { handoff: HANDOFF + 1 }));
        let (mut frozen, mut world, now) = receiving();
        frozen.handle_message(
            now,
            &mut world,
            Message::Freeze { handoff: HANDOFF, round: 1, parts: 1, digest: 0, tick: 9, next_tick_in_us: 0 },
        );
        frozen.handle_engines_ready(now);
        assert_eq!(frozen.poll_message(), None);
    }

    #[test]
    fn the_source_s_abort_discards_without_an_answer() {
        let (mut target, mut world, now) = receiving();
        target.handle_message(now, &mut world, Message::Abort { handoff: HANDOFF, reason: "did not converge".into() });
        assert_eq!(target.phase(), TargetPhase::Aborted);
        let reason = discarded(&mut target).unwrap();
        assert_eq!(
            (reason.culprit, reason.phase, reason.reason.as_str()),
            (Culprit::Source, Phase::Rounds, "did not converge")
        );
        assert_eq!(target.poll_message(), None, "the source asked for it; nothing goes back");
    }

    #[test]
    fn stragglers_reach_the_region_once_the_target_owns_it() {
        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 0);
        target.handle_message(now, &mut world, message);
        assert_eq!(target.phase(), TargetPhase::Committing);
        let expected = Ownership { owner: "source".into(), epoch: Epoch(4) };
        let next = Ownership { owner: "target".into(), epoch: Epoch(5) };
        assert_eq!(target.poll_action(), Some(TargetAction::Authority { expected, next }));
        target.handle_authority(now, Ok(()));
        assert_eq!(target.phase(), TargetPhase::Authoritative);
        assert!(matches!(target.poll_action(), Some(TargetAction::Authoritative { epoch: Epoch(5), tick: 90, .. })));
        let input = PlayerInput { player: PlayerId(1), seq: 12, payload: vec![1] };
        target.handle_message(now, &mut world, Message::Stragglers { handoff: HANDOFF, inputs: vec![input.clone()] });
        assert_eq!(target.poll_action(), Some(TargetAction::Stragglers(vec![input])));
    }

    #[test]
    fn the_link_s_loss_aborts_a_transfer_in_the_phase_it_was_in_and_not_a_commit() {
        let (mut target, _world, now) = receiving();
        target.handle_link_lost(now);
        let reason = discarded(&mut target).unwrap();
        assert_eq!((reason.culprit, reason.phase), (Culprit::Link, Phase::Rounds));
        assert_eq!(reason.reason, "link to the source lost");

        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 1);
        target.handle_message(now, &mut world, message);
        assert_eq!(target.phase(), TargetPhase::Verifying, "one part of the final round to come");
        target.handle_link_lost(now);
        assert_eq!(discarded(&mut target).unwrap().phase, Phase::Freeze);

        // Once the swap is asked for, the target settles with the authority alone.
        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 0);
        target.handle_message(now, &mut world, message);
        target.handle_link_lost(now);
        assert_eq!(target.phase(), TargetPhase::Committing);
        assert_eq!(discarded(&mut target), None);
    }

    #[test]
    fn silence_aborts_only_once_it_lasted_and_names_the_phase() {
        let silence = Timeouts::default().silence;
        let (mut target, _world, now) = receiving();
        // A driver may call the timer early (another timer fired): nothing happens.
        target.handle_timeout(now + Duration::from_millis(1));
        target.handle_timeout(now + silence - Duration::from_millis(1));
        assert_eq!(target.phase(), TargetPhase::Receiving);
        assert_eq!(target.poll_timeout(), Some(now + silence));
        target.handle_timeout(now + silence);
        let reason = discarded(&mut target).unwrap();
        assert_eq!(
            (reason.culprit, reason.phase, reason.reason.as_str()),
            (Culprit::Link, Phase::Rounds, "the source went silent")
        );

        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 1);
        target.handle_message(now, &mut world, message);
        target.handle_timeout(now + silence);
        assert_eq!(discarded(&mut target).unwrap().phase, Phase::Freeze);
    }

    #[test]
    fn a_committing_target_asks_again_only_when_its_retry_is_due() {
        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 0);
        target.handle_message(now, &mut world, message);
        assert!(matches!(target.poll_action(), Some(TargetAction::Authority { .. })));
        // No answer yet, no retry due: early or late timer calls ask nothing (silence does not
        // apply once the swap is asked for).
        target.handle_timeout(now + Timeouts::default().silence * 2);
        assert_eq!(target.poll_action(), None);
        assert_eq!(target.phase(), TargetPhase::Committing);
        // An unknown outcome: asked again at the retry time, not before.
        target.handle_authority(now, Err(AuthorityError::Unavailable("down".into())));
        let retry = now + Timeouts::default().authority_retry;
        assert_eq!(target.poll_timeout(), Some(retry));
        target.handle_timeout(retry - Duration::from_millis(1));
        assert_eq!(target.poll_action(), None);
        target.handle_timeout(retry);
        assert!(matches!(target.poll_action(), Some(TargetAction::Authority { .. })));
    }

    #[test]
    fn a_swap_that_went_through_unheard_still_commits_and_another_owner_aborts() {
        for (owner, epoch, commits) in [("target", 5, true), ("intruder", 5, false), ("target", 6, false)] {
            let (mut target, mut world, now) = receiving();
            let message = freeze(&mut world, 0);
            target.handle_message(now, &mut world, message);
            let _ = target.poll_action();
            let conflict = AuthorityError::Conflict {
                region: RegionId(3),
                expected_epoch: Epoch(4),
                actual_epoch: Epoch(epoch),
                actual_owner: owner.into(),
            };
            target.handle_authority(now, Err(conflict));
            if commits {
                assert_eq!(target.phase(), TargetPhase::Authoritative, "{owner}@{epoch}");
            } else {
                let reason = discarded(&mut target).unwrap();
                assert_eq!((reason.culprit, reason.phase), (Culprit::Authority, Phase::Commit), "{owner}@{epoch}");
            }
        }
    }

    #[test]
    fn a_target_whose_name_the_authority_cannot_keep_aborts_rather_than_asking_again() {
        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 0);
        target.handle_message(now, &mut world, message);
        let _ = target.poll_action();
        target.handle_authority(now, Err(AuthorityError::BadOwner("two\nlines".into())));
        let reason = discarded(&mut target).unwrap();
        assert_eq!((reason.culprit, reason.phase), (Culprit::Authority, Phase::Commit));
        assert!(reason.reason.contains("owner name"), "{}", reason.reason);
        target.handle_timeout(now + Timeouts::default().authority_retry * 2);
        assert!(!matches!(target.poll_action(), Some(TargetAction::Authority { .. })), "asked again");
    }

    #[test]
    fn the_first_tick_keeps_the_source_s_schedule() {
        let (mut target, mut world, now) = receiving();
        let digest = world.digest().0;
        let message =
            Message::Freeze { handoff: HANDOFF, round: 1, parts: 0, digest, tick: 90, next_tick_in_us: 20_000 };
        target.handle_message(now, &mut world, message);
        let _ = target.poll_action();
        target.handle_authority(now + Duration::from_millis(5), Ok(()));
        let first_tick_at = now + Duration::from_millis(20);
        assert_eq!(
            target.poll_action(),
            Some(TargetAction::Authoritative { epoch: Epoch(5), tick: 90, first_tick_at })
        );
        assert_eq!(target.poll_message(), Some(Message::Committed { handoff: HANDOFF, epoch: 5 }));
    }

    #[test]
    fn a_new_handoff_after_an_aborted_one_starts_clean() {
        let (mut target, mut world, now) = receiving();
        let message = freeze(&mut world, 1);
        target.handle_message(now, &mut world, message);
        // The source went silent: the abort for it is queued but never sent (the link is gone).
        target.handle_timeout(now + Timeouts::default().silence);
        assert_eq!(target.phase(), TargetPhase::Aborted);
        let later = now + Timeouts::default().silence;
        let message = begin(8, &world);
        target.handle_message(later, &mut world, message);
        assert_eq!(target.phase(), TargetPhase::Receiving);
        assert_eq!(target.poll_message(), Some(Message::Ready { handoff: 8, target: "target".into() }));
        assert_eq!(target.poll_message(), None, "nothing of the first handoff is sent");
        assert_eq!(target.poll_action(), None, "nor done");
        // The new handoff's silence counts from its own first message, not the old one's last.
        target.handle_timeout(later + Duration::from_millis(1));
        assert_eq!(target.phase(), TargetPhase::Receiving);
    }
}
