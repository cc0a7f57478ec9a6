//! The source side of a handoff: the instance that owns the region and gives it away.
//!
//! Invariant: the source stops ticking at the freeze and starts again only after it won back
//! ownership at the authority (protocol.md §5); before the freeze it never stops. Inputs that reach
//! it while frozen are held, then forwarded to the new owner or handed back to its own region.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use baton_wire::{Epoch, PlayerInput, RegionId};
use rkyv::util::AlignedVec;

use super::authority::{AuthorityError, Ownership};
use super::message::{Message, PROTOCOL_VERSION};
use super::{AbortReason, Culprit, HandoffId, Phase, Timeouts};
use crate::codec::{self, ChunkConfig, SnapshotWriter};
use crate::physics::Body;
use crate::world::{ChangeSet, TrackerId, World};

/// Settings of the source side.
#[derive(Clone, Copy, Debug)]
pub struct SourceConfig {
    /// Snapshot chunk and delta part sizes.
    pub chunk: ChunkConfig,
    /// A round at most this large (bytes) is small enough to be the final one: the freeze budget,
    /// i.e. what the link's cap moves in the freeze time (default 100 kB: 2 ms at 50 MB/s). With
    /// `max_freeze` set, a measured delivery rate can lower it (never raise it).
    pub freeze_budget_bytes: usize,
    /// The time the final round may take to deliver. Once a delta round over
    /// `freeze_budget_bytes` was sent and reported applied, the freeze budget is what the measured
    /// rate (the round's bytes over the time from when its encoding began, at its tick boundary
    /// or on another thread, to hearing it applied) moves in this time, at least [`MIN_FREEZE_BUDGET`] and at most
    /// `freeze_budget_bytes`. `None` keeps `freeze_budget_bytes` for the whole handoff.
    pub max_freeze: Option<Duration>,
    /// After this many rounds that did not fit the budget, freeze anyway if the round is at most
    /// four budgets, else wait for a quieter moment (`quiet_wait`).
    pub max_rounds: u32,
    /// Rounds stop shrinking when this many in a row are not 10% smaller than the smallest so
    /// far; then the same decision is taken at once instead of after `max_rounds`.
    pub stall_rounds: u32,
    /// Once the rounds stopped shrinking (or ran out) above four budgets, or one tick's changes
    /// alone exceed four budgets, the source goes on sending rounds and freezes as soon as the
    /// usual rules allow; a round still over four budgets this long after that makes it abort
    /// with "did not converge" and the measured rates.
    pub quiet_wait: Duration,
    /// Most archive bytes sent and not yet applied by the target.
    pub window_bytes: usize,
    /// A region with at least this many physics bodies freezes only once the target said its
    /// engines are built from the received world (`EnginesReady`), or `engines_ready_wait` after
    /// the first round: otherwise the target might build them in the freeze (10,000 resting
    /// crates: 45 ms). For fewer bodies the source does not wait: the target uses its build if it
    /// came back by the commit, else builds them in the freeze (about 2 ms or less).
    pub engines_ready_bodies: usize,
    /// The longest the freeze waits for `EnginesReady`, from the first round; then the source freezes
    /// anyway and the target builds its engines in the freeze.
    pub engines_ready_wait: Duration,
    /// About the most change records a round reads at a tick boundary, about 100 ns each of the
    /// region's thread (the first read after a large region's snapshot can hold millions): a
    /// round with more to read reads the oldest, to the end of a stamp
    /// ([`World::changes_at_most`]), and the rest are read at the next boundaries (protocol.md §4).
    pub read_records: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            chunk: ChunkConfig::default(),
            freeze_budget_bytes: 100_000,
            max_freeze: Some(Duration::from_millis(2)),
            max_rounds: 20,
            stall_rounds: 3,
            quiet_wait: Duration::from_secs(10),
            window_bytes: 4 * 1024 * 1024,
            engines_ready_bodies: 500,
            engines_ready_wait: Duration::from_secs(2),
            read_records: 50_000,
            timeouts: Timeouts::default(),
        }
    }
}

/// The smallest freeze budget, however slow the link: one round of a few entities.
pub const MIN_FREEZE_BUDGET: usize = 4096;

impl SourceConfig {
    /// A configuration whose freeze budget is at most what `bytes_per_second` (the link's cap)
    /// moves in `freeze_time`, and less when the delivery rate measured during the handoff is.
    #[must_use]
    pub fn for_link(bytes_per_second: u64, freeze_time: Duration) -> SourceConfig {
        SourceConfig {
            freeze_budget_bytes: budget_for(bytes_per_second as f64, freeze_time),
            max_freeze: Some(freeze_time),
            ..SourceConfig::default()
        }
    }
}

/// Where the source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePhase {
    /// Waiting for the target to accept.
    Prepare,
    /// Streaming the snapshot while ticking.
    Snapshot,
    /// Streaming delta rounds while ticking.
    Rounds,
    /// Frozen: final delta sent, waiting for the target's commit.
    Frozen,
    /// Frozen: asking the authority who owns the region.
    Settling,
    /// The target owns the region; forwarding stragglers until the grace period ends.
    HandedOff,
    /// Done: the region can be freed.
    Retired,
    /// The handoff failed; the source owns the region (again).
    Aborted,
}

/// What the source wants its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceAction {
    /// Compare-and-swap at the authority; answer with [`HandoffSource::handle_authority`].
    Authority {
        /// The ownership the region must be at.
        expected: Ownership,
        /// The ownership to move it to.
        next: Ownership,
    },
    /// The source owns the region again, at `epoch`; tick again and submit `held` inputs.
    Resume {
        /// The (possibly new) epoch.
        epoch: Epoch,
        /// Inputs that arrived while frozen, in arrival order.
        held: Vec<PlayerInput>,
        /// Why the handoff failed.
        reason: AbortReason,
    },
    /// The target owns the region at `epoch`; never tick this region again.
    HandedOff {
        /// The target's epoch.
        epoch: Epoch,
        /// Inputs that could not be forwarded (link lost); route them to the new owner.
        undelivered: Vec<PlayerInput>,
    },
    /// The grace period ended: free the region.
    Retire,
    /// A third instance owns the region (not this handoff's target): never tick it again.
    Fenced {
        /// Who owns it.
        owner: String,
        /// At which epoch.
        epoch: Epoch,
    },
}

/// Counts and timings of one handoff, source side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Snapshot archive bytes.
    pub snapshot_bytes: u64,
    /// Snapshot chunks.
    pub snapshot_chunks: u32,
    /// Delta bytes before the freeze.
    pub delta_bytes: u64,
    /// Delta rounds before the freeze.
    pub rounds: u32,
    /// Of those, rounds that read only the oldest of the changes (`SourceConfig::read_records`).
    pub partial_rounds: u32,
    /// Bytes of the final delta.
    pub final_bytes: u64,
    /// The last measured delivery rate of a delta round (bytes per second: sent to applied).
    pub delivery_bytes_per_second: Option<u64>,
    /// Bytes of changes per tick in the last round: its bytes over the ticks it spans (an average:
    /// entities changed in several of those ticks count once).
    pub change_bytes_per_tick: Option<u64>,
    /// How long the source waited for a quieter moment (from when it said the rounds could not
    /// converge to the freeze or the abort).
    pub waited: Option<Duration>,
    /// How long the freeze waited for the target's `EnginesReady` after a round fitted the budget.
    pub engines_waited: Option<Duration>,
    /// From the end of the last tick to the target's commit arriving (source's view of the freeze).
    pub freeze: Option<Duration>,
    /// From start to the commit or abort.
    pub total: Option<Duration>,
}

/// What to move, and who moves it.
#[derive(Clone, Debug)]
pub struct HandoffPlan {
    /// This attempt's id (random).
    pub id: HandoffId,
    /// The region.
    pub region: RegionId,
    /// The source's current ownership epoch.
    pub epoch: Epoch,
    /// The source instance's name at the authority.
    pub name: String,
    /// The region's tick interval.
    pub tick_interval: Duration,
}

/// Values of a delta round (or of a piece of one) captured from the world, to be encoded away
/// from the region's thread ([`HandoffSource::poll_encode`]).
#[derive(Debug)]
pub struct EncodeJob {
    handoff: HandoffId,
    config: ChunkConfig,
    captured: codec::CapturedDelta,
}

impl EncodeJob {
    /// Encodes the captured values (on any thread); a panic while encoding is returned as an
    /// error, so the handoff aborts rather than waiting for a result that never comes.
    #[must_use]
    pub fn run(self) -> EncodedRound {
        let started = Instant::now();
        let round = self.captured.round();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.captured.encode(self.config)))
            .unwrap_or_else(|_| Err(codec::CodecError::Encode("the encoder panicked".to_owned())));
        EncodedRound { handoff: self.handoff, round, result, took: started.elapsed() }
    }
}

/// What an [`EncodeJob`] gave, for [`HandoffSource::handle_encoded`].
#[derive(Debug)]
pub struct EncodedRound {
    handoff: HandoffId,
    round: u32,
    result: Result<Vec<AlignedVec>, codec::CodecError>,
    /// How long the encoding took.
    pub took: Duration,
}

/// The source side of one handoff.
#[derive(Debug)]
pub struct HandoffSource {
    id: HandoffId,
    region: RegionId,
    epoch: Epoch,
    name: String,
    target: Option<String>,
    config: SourceConfig,
    phase: SourcePhase,
    started: Instant,
    deadline: Option<Instant>,
    tracker: Option<TrackerId>,
    writer: Option<SnapshotWriter>,
    outbox: VecDeque<Message>,
    actions: VecDeque<SourceAction>,
    sent_bytes: u64,
    applied_bytes: u64,
    last_heard: Instant,
    round: u32,
    smallest_round: usize,
    stalled_rounds: u32,
    tick_interval: Duration,
    /// Ticks since the changes of the next round began (tracker created, or the last round read).
    ticks_since_round: u32,
    /// The delta round in flight, if it is one to measure.
    round_in_flight: Option<RoundInFlight>,
    /// What the last read left unread, when it read the changes only in part.
    unread: Option<usize>,
    /// A round too big to encode at its tick boundary, captured piece by piece as it is polled.
    piecewise: Option<PiecewiseRound>,
    /// A round that cannot be the final one, captured whole at its tick boundary and being encoded
    /// elsewhere (protocol.md §4).
    deferred: Option<RoundRead>,
    /// The last round encoded elsewhere came out within four budgets (the estimate overshot): the
    /// next is encoded at its tick boundary, so it may be the final one.
    encode_next_inline: bool,
    /// Captured values waiting for the driver to take them to be encoded ([`HandoffSource::poll_encode`]).
    job: Option<EncodeJob>,
    /// A round read at the tick boundary just passed, being encoded a part per poll.
    boundary: Option<BoundaryRound>,
    /// Entities in the world when the snapshot began, for the bytes an entity takes.
    snapshot_entities: usize,
    delivery_rate: Option<f64>,
    waiting_since: Option<Instant>,
    /// Whether the freeze waits for the target's `EnginesReady` (the region has many bodies).
    needs_engines: bool,
    /// Whether the target said `EnginesReady`.
    engines_ready: bool,
    /// When the first round was read (the `engines_ready_wait` counts from there).
    first_round_at: Option<Instant>,
    /// When a round first fitted the budget but the target had not said `EnginesReady`.
    held_for_engines: Option<Instant>,
    /// Rounds that fitted the budget and were sent only because the target had not said
    /// `EnginesReady`.
    held_rounds: u32,
    frozen_at: Option<Instant>,
    held: Vec<PlayerInput>,
    link_lost: bool,
    abort_reason: Option<AbortReason>,
    stats: SourceStats,
}

impl HandoffSource {
    /// Starts a handoff (protocol.md §2).
    #[must_use]
    pub fn start(now: Instant, world: &World, plan: HandoffPlan, config: SourceConfig) -> HandoffSource {
        let HandoffPlan { id, region, epoch, name, tick_interval } = plan;
        let name = name.as_str();
        let mut source = HandoffSource {
            id,
            region,
            epoch,
            name: name.to_owned(),
            target: None,
            config,
            phase: SourcePhase::Prepare,
            started: now,
            deadline: Some(now + config.timeouts.prepare),
            tracker: None,
            writer: None,
            outbox: VecDeque::new(),
            actions: VecDeque::new(),
            sent_bytes: 0,
            applied_bytes: 0,
            last_heard: now,
            round: 0,
            smallest_round: usize::MAX,
            stalled_rounds: 0,
            tick_interval,
            ticks_since_round: 0,
            round_in_flight: None,
            piecewise: None,
            snapshot_entities: 0,
            delivery_rate: None,
            waiting_since: None,
            needs_engines: false,
            engines_ready: false,
            first_round_at: None,
            deferred: None,
            encode_next_inline: false,
            job: None,
            boundary: None,
            unread: None,
            held_for_engines: None,
            held_rounds: 0,
            frozen_at: None,
            held: Vec::new(),
            link_lost: false,
            abort_reason: None,
            stats: SourceStats::default(),
        };
        source.outbox.push_back(Message::Begin {
            handoff: id,
            version: PROTOCOL_VERSION,
            region: region.0,
            epoch: epoch.0,
            source: name.to_owned(),
            schema: world.registry().schema_hash(),
            tick_interval_us: tick_interval.as_micros() as u64,
            sizes: world.sizes(),
        });
        source
    }

    /// This attempt's id.
    #[must_use]
    pub fn id(&self) -> HandoffId {
        self.id
    }

    /// The phase.
    #[must_use]
    pub fn phase(&self) -> SourcePhase {
        self.phase
    }

    /// Counts and timings so far.
    #[must_use]
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// Why it aborted, once it has.
    #[must_use]
    pub fn abort_reason(&self) -> Option<&AbortReason> {
        self.abort_reason.as_ref()
    }

    /// Whether the region may tick now. False while a round read at the last tick boundary is
    /// still being encoded ([`HandoffSource::encodes_at_boundary`]), and from the freeze until the
    /// source owns the region again.
    #[must_use]
    pub fn allows_ticks(&self) -> bool {
        self.boundary.is_none()
            && !matches!(
                self.phase,
                SourcePhase::Frozen | SourcePhase::Settling | SourcePhase::HandedOff | SourcePhase::Retired
            )
    }

    /// Whether a round read at the last tick boundary is being encoded, a part per
    /// [`HandoffSource::poll_message`], each part to be sent as soon as it is made (protocol.md
    /// §4). Until its last part is made the world must not change: the driver polls the parts
    /// out before it handles anything else, and whether the region froze is known after the last.
    #[must_use]
    pub fn encodes_at_boundary(&self) -> bool {
        self.boundary.is_some()
    }

    /// Whether the handoff is over (retired or aborted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, SourcePhase::Retired | SourcePhase::Aborted)
    }

    /// Offers a player input to the region. Returns it back if the region should take it now;
    /// keeps it (held, or forwarded to the new owner) while the region is frozen or handed off.
    pub fn handle_input(&mut self, input: PlayerInput) -> Option<PlayerInput> {
        match self.phase {
            SourcePhase::Frozen | SourcePhase::Settling => {
                // protocol.md §5: inputs that reach a frozen source are held, never applied here.
                self.held.push(input);
                None
            }
            SourcePhase::HandedOff if !self.link_lost => {
                self.outbox.push_back(Message::Stragglers { handoff: self.id, inputs: vec![input] });
                None
            }
            SourcePhase::HandedOff | SourcePhase::Retired => {
                self.held.push(input);
                None
            }
            _ => Some(input),
        }
    }

    /// Inputs held and not forwarded (for a driver whose link to the target is gone).
    pub fn take_undelivered(&mut self) -> Vec<PlayerInput> {
        std::mem::take(&mut self.held)
    }

    /// A message from the target.
    pub fn handle_message(&mut self, now: Instant, world: &mut World, message: Message) {
        if message.handoff() != self.id {
            return;
        }
        self.last_heard = now;
        match (self.phase, message) {
            (SourcePhase::Prepare, Message::Ready { target, .. }) => {
                self.target = Some(target);
                // protocol.md §3: the tracker exists before the first chunk, so every change under
                // an already-sent chunk is in a later delta.
                self.tracker = Some(world.create_tracker());
                self.snapshot_entities = world.entity_count();
                self.needs_engines = world.count::<Body>() >= self.config.engines_ready_bodies;
                self.writer = Some(SnapshotWriter::new(self.config.chunk));
                self.phase = SourcePhase::Snapshot;
                self.deadline = Some(self.started + self.config.timeouts.transfer);
            }
            (_, Message::Progress { applied_bytes, .. }) => {
                self.applied_bytes = self.applied_bytes.max(applied_bytes);
                self.measure_delivery(now);
            }
            (_, Message::EnginesReady { .. }) => self.engines_ready = true,
            (SourcePhase::Frozen | SourcePhase::Settling, Message::Committed { epoch, .. })
                if Epoch(epoch) == self.epoch.next() =>
            {
                self.handed_off(now, Epoch(epoch));
            }
            (SourcePhase::Prepare | SourcePhase::Snapshot | SourcePhase::Rounds, Message::Abort { reason, .. }) => {
                let phase = self.protocol_phase();
                self.abort_before_freeze(world, AbortReason { culprit: Culprit::Target, phase, reason });
            }
            (SourcePhase::Frozen, Message::Abort { reason, .. }) => {
                self.settle(now, AbortReason { culprit: Culprit::Target, phase: Phase::Freeze, reason });
            }
            _ => {}
        }
    }

    /// The next message to send, if any. In the snapshot phase this encodes the next chunk from the
    /// world as it is now, when the window allows.
    pub fn poll_message(&mut self, world: &mut World) -> Option<Message> {
        if let Some(message) = self.outbox.pop_front() {
            return Some(message);
        }
        if self.boundary.is_some() {
            // Not held by the window: the round was read with nothing in flight, and a part of
            // it must go as soon as it is made.
            self.encode_boundary_part(world);
            return self.outbox.pop_front();
        }
        if self.in_flight() >= self.config.window_bytes as u64 {
            return None;
        }
        if self.phase == SourcePhase::Rounds && self.piecewise.as_ref().is_some_and(|round| !round.encoding) {
            self.capture_next_piece(world);
            return self.outbox.pop_front();
        }
        if self.phase != SourcePhase::Snapshot {
            return None;
        }
        let writer = self.writer.as_mut()?;
        match writer.next_chunk(world) {
            Ok(Some(chunk)) => {
                let index = self.stats.snapshot_chunks;
                self.stats.snapshot_chunks += 1;
                self.stats.snapshot_bytes += chunk.len() as u64;
                self.sent_bytes += chunk.len() as u64;
                Some(Message::Chunk { handoff: self.id, index, bytes: chunk.to_vec() })
            }
            Ok(None) => None,
            Err(error) => {
                let reason = AbortReason {
                    culprit: Culprit::Source,
                    phase: Phase::Snapshot,
                    reason: format!("encoding the snapshot: {error}"),
                };
                self.abort_before_freeze(world, reason);
                self.outbox.pop_front()
            }
        }
    }

    /// Whether the next [`HandoffSource::poll_message`] may work on world state (encode a snapshot
    /// chunk, or capture a piece of a piecewise round) rather than only hand over what is queued:
    /// the driver bounds that work by the time left before the next tick (protocol.md §3, §4).
    #[must_use]
    pub fn encodes_on_poll(&self) -> bool {
        self.outbox.is_empty()
            && (self.phase == SourcePhase::Snapshot
                || (self.phase == SourcePhase::Rounds && self.piecewise.as_ref().is_some_and(|round| !round.encoding)))
    }

    /// Values captured from the world to be encoded away from the region's thread (protocol.md
    /// §4): the driver runs the job ([`EncodeJob::run`]) on another thread and hands back what it
    /// gives with [`HandoffSource::handle_encoded`]. At most one job is out at a time.
    pub fn poll_encode(&mut self) -> Option<EncodeJob> {
        self.job.take()
    }

    /// An [`EncodeJob`] is done: its parts are queued to be sent (a whole round's then decided as
    /// a round read at its tick boundary would be, except that it is never the final one), or the
    /// handoff aborts if it could not be encoded. Stale results (another attempt's, or one that
    /// arrives after this attempt ended) are dropped.
    pub fn handle_encoded(&mut self, now: Instant, world: &mut World, encoded: EncodedRound) {
        if encoded.handoff != self.id || self.phase != SourcePhase::Rounds {
            return;
        }
        let parts = match encoded.result {
            Ok(parts) => parts,
            Err(error) => {
                self.abort_encoding(world, encoded.round, &error);
                return;
            }
        };
        if let Some(read) = self.deferred.take_if(|read| read.round == encoded.round) {
            let bytes: usize = parts.iter().map(AlignedVec::len).sum();
            // protocol.md §4: the estimate overshot; the next round may be the final one.
            self.encode_next_inline = bytes <= self.freeze_budget().saturating_mul(4);
            // Measured from when its encoding began, as a final round's is from its tick boundary
            // (its wait for a free thread is not the link's).
            let began = now.checked_sub(encoded.took).unwrap_or(read.at).max(read.at);
            self.conclude_round(
                now,
                world,
                RoundRead { encoded_at: began, ..read },
                bytes,
                RoundParts::Encoded(parts),
                None,
            );
            return;
        }
        let Some(mut piecewise) =
            self.piecewise.take_if(|piecewise| piecewise.encoding && piecewise.round == encoded.round)
        else {
            return;
        };
        piecewise.encoding = false;
        piecewise.bytes += parts.iter().map(AlignedVec::len).sum::<usize>();
        piecewise.parts = self.send_parts(piecewise.round, piecewise.parts, parts);
        if piecewise.pieces.is_empty() {
            // Not measured: its time is mostly the ticks between its pieces, which the final
            // round, encoded at once, does not wait for.
            self.round_sent(piecewise.round, piecewise.bytes);
        } else {
            self.piecewise = Some(piecewise);
        }
    }

    /// The next thing the driver must do, if any.
    pub fn poll_action(&mut self) -> Option<SourceAction> {
        self.actions.pop_front()
    }

    /// When [`HandoffSource::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = match self.phase {
            SourcePhase::Prepare | SourcePhase::Snapshot | SourcePhase::Rounds | SourcePhase::Frozen
                if self.awaits_reply() =>
            {
                Some(self.last_heard + self.config.timeouts.silence)
            }
            _ => None,
        };
        match (self.deadline, silence) {
            (Some(deadline), Some(silence)) => Some(deadline.min(silence)),
            (deadline, silence) => deadline.or(silence),
        }
    }

    fn awaits_reply(&self) -> bool {
        self.phase == SourcePhase::Prepare || self.phase == SourcePhase::Frozen || self.in_flight() > 0
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant, world: &mut World) {
        let silent = self.awaits_reply() && now >= self.last_heard + self.config.timeouts.silence;
        let expired = self.deadline.is_some_and(|deadline| now >= deadline);
        if !silent && !expired {
            return;
        }
        let phase = self.protocol_phase();
        match self.phase {
            SourcePhase::Prepare | SourcePhase::Snapshot | SourcePhase::Rounds => {
                let (culprit, reason) = if silent {
                    (Culprit::Link, "the target went silent".to_owned())
                } else if self.phase == SourcePhase::Prepare {
                    (Culprit::Target, "the target did not accept in time".to_owned())
                } else {
                    (Culprit::Link, "the transfer did not finish in time".to_owned())
                };
                self.abort_before_freeze(world, AbortReason { culprit, phase, reason });
            }
            SourcePhase::Frozen => {
                let reason = if silent {
                    "the target went silent after the freeze"
                } else {
                    "the target did not commit in time"
                };
                self.settle(
                    now,
                    AbortReason { culprit: Culprit::Target, phase: Phase::Freeze, reason: reason.to_owned() },
                );
            }
            SourcePhase::Settling => {
                // The authority was unavailable; ask again.
                self.deadline = None;
                self.request_reclaim();
            }
            SourcePhase::HandedOff => {
                self.deadline = None;
                self.phase = SourcePhase::Retired;
                self.actions.push_back(SourceAction::Retire);
            }
            SourcePhase::Retired | SourcePhase::Aborted => self.deadline = None,
        }
    }

    /// The link to the target broke (connection closed or reset).
    pub fn handle_link_lost(&mut self, now: Instant, world: &mut World) {
        self.link_lost = true;
        let phase = self.protocol_phase();
        match self.phase {
            SourcePhase::Prepare | SourcePhase::Snapshot | SourcePhase::Rounds => {
                self.abort_before_freeze(
                    world,
                    AbortReason { culprit: Culprit::Link, phase, reason: "link to the target lost".to_owned() },
                );
            }
            SourcePhase::Frozen => {
                self.settle(
                    now,
                    AbortReason {
                        culprit: Culprit::Link,
                        phase: Phase::Freeze,
                        reason: "link to the target lost after the freeze".to_owned(),
                    },
                );
            }
            _ => {}
        }
    }

    /// Called after every tick the region ran, at the tick boundary; `next_tick_due` is when the
    /// next tick is scheduled. Delta rounds are read here (protocol.md §4): one that may be the
    /// final round is then encoded a part per [`HandoffSource::poll_message`], and the freeze, if
    /// it fits, follows its last part, timed from `now`.
    pub fn handle_tick_completed(&mut self, now: Instant, world: &mut World, next_tick_due: Instant) {
        if self.tracker.is_some() {
            self.ticks_since_round += 1;
        }
        if self.phase == SourcePhase::Snapshot
            && self.writer.as_ref().is_some_and(SnapshotWriter::is_done)
            && self.in_flight() == 0
        {
            self.phase = SourcePhase::Rounds;
        }
        if self.phase != SourcePhase::Rounds
            || self.in_flight() > 0
            || self.piecewise.is_some()
            || self.deferred.is_some()
            || self.boundary.is_some()
        {
            return;
        }
        let Some(tracker) = self.tracker else {
            return;
        };
        // protocol.md §4: at most so many records at a boundary (the first read after a large
        // region's snapshot holds hundreds of thousands: tens of milliseconds of the region's
        // thread); the rest are read at the next boundaries.
        let (changes, unread) = world.changes_at_most(tracker, self.config.read_records);
        // After a read in part the next read holds the rest of what was left besides the ticks
        // since: how many ticks of changes that is, is not known.
        let ticks = if self.unread.is_some() { 0 } else { self.ticks_since_round };
        let read = RoundRead { round: self.round + 1, at: now, encoded_at: now, ticks, unread };
        self.ticks_since_round = 0;
        let budget = self.freeze_budget();
        // protocol.md §4: a round estimated over four budgets cannot be the final one, so it need
        // not be encoded here: its values are captured and encoded away from the region's thread,
        // whole, or piece by piece between ticks when it is far over (a 67 MB round encoded
        // whole, twice, at a tick boundary held the region thread for seconds).
        let estimate = self.estimated_bytes(&changes);
        let inline = !read.partial() && std::mem::take(&mut self.encode_next_inline);
        let over_four = estimate > budget.saturating_mul(4) || read.partial();
        if over_four && estimate > PIECEWISE_ROUND_CHUNKS.saturating_mul(self.config.chunk.max_chunk_bytes) {
            self.conclude_round(now, world, read, estimate, RoundParts::Estimated, None);
            if self.phase == SourcePhase::Rounds {
                let pieces = estimate.div_ceil(self.config.chunk.target_chunk_bytes.max(1));
                self.piecewise = Some(PiecewiseRound {
                    round: read.round,
                    pieces: codec::split_round(&changes, pieces).into(),
                    encoding: false,
                    parts: 0,
                    bytes: 0,
                });
            }
            return;
        }
        if over_four && !inline {
            match codec::capture_delta(world, changes, read.round) {
                Ok(captured) => {
                    self.job = Some(EncodeJob { handoff: self.id, config: self.config.chunk, captured });
                    self.deferred = Some(read);
                }
                Err(error) => self.abort_encoding(world, read.round, &error),
            }
            return;
        }
        // protocol.md §4: encoded here, a part per poll, each sent as soon as it is made, so the
        // target applies the first while the next is encoded; the round is decided on its encoded
        // size once the last is made.
        let encoder = codec::DeltaEncoder::new(world, changes, read.round, self.config.chunk);
        self.boundary = Some(BoundaryRound { encoder, read, next_tick_due, bytes: 0 });
    }

    /// Makes and queues the next part of the round read at the tick boundary; after its last,
    /// decides the round (protocol.md §4) as at that boundary.
    fn encode_boundary_part(&mut self, world: &mut World) {
        let Some(mut boundary) = self.boundary.take() else {
            return;
        };
        let round = boundary.read.round;
        match boundary.encoder.next_part(world) {
            Ok(Some(part)) => {
                boundary.bytes += part.len();
                self.send_parts(round, boundary.encoder.parts() - 1, vec![part]);
            }
            Ok(None) => {}
            Err(error) => return self.abort_encoding(world, round, &error),
        }
        if !boundary.encoder.is_done() {
            self.boundary = Some(boundary);
            return;
        }
        let BoundaryRound { encoder, read, next_tick_due, bytes } = boundary;
        let parts = RoundParts::Sent(encoder.parts());
        self.conclude_round(read.at, world, read, bytes, parts, Some(next_tick_due));
    }

    fn abort_encoding(&mut self, world: &mut World, round: u32, error: &codec::CodecError) {
        let reason = AbortReason {
            culprit: Culprit::Source,
            phase: Phase::Rounds,
            reason: format!("encoding delta round {round}: {error}"),
        };
        self.abort_before_freeze(world, reason);
    }

    /// Decides what becomes of round `read` of `bytes` (protocol.md §4): `parts` are its archives
    /// (or an estimate, sent piece by piece); `next_tick_due` when it was read at the tick
    /// boundary just passed and nothing changed since, so it may be the final round (`None`:
    /// encoded elsewhere since, sent as an ordinary round whatever its size).
    fn conclude_round(
        &mut self,
        now: Instant,
        world: &mut World,
        read: RoundRead,
        bytes: usize,
        parts: RoundParts,
        next_tick_due: Option<Instant>,
    ) {
        let round = read.round;
        let first_round_at = *self.first_round_at.get_or_insert(read.at);
        let unread = std::mem::take(&mut self.unread);
        if read.partial() {
            return self.conclude_partial(now, world, read, bytes, parts, unread);
        }
        let budget = self.freeze_budget();
        // Unknown after a read in part (`RoundRead::ticks` is 0).
        let per_tick = (read.ticks > 0).then(|| bytes / read.ticks as usize);
        if let Some(per_tick) = per_tick {
            self.stats.change_bytes_per_tick = Some(per_tick as u64);
        }
        // protocol.md §4: a round within the budget that waits only for the target's engines
        // counts neither as a round that did not shrink nor towards the round limit, so the wait
        // does not loosen the rule the freeze is then taken by.
        let prepared = !self.needs_engines || self.engines_ready;
        if !prepared && bytes <= budget && next_tick_due.is_some() {
            self.held_rounds += 1;
        } else if bytes.saturating_mul(10) < self.smallest_round.saturating_mul(9) {
            self.smallest_round = bytes;
            self.stalled_rounds = 0;
        } else {
            self.stalled_rounds += 1;
        }
        let out_of_rounds = round.saturating_sub(self.held_rounds + self.stats.partial_rounds) > self.config.max_rounds
            || self.stalled_rounds >= self.config.stall_rounds;
        let within_four = bytes <= budget.saturating_mul(4);
        // protocol.md §4: rounds that stopped shrinking above four budgets, or a tick whose changes
        // alone exceed them, cannot converge now: say so, and wait for a quieter moment.
        if self.waiting_since.is_none()
            && !within_four
            && (out_of_rounds || per_tick.is_some_and(|per_tick| per_tick > budget.saturating_mul(4)))
        {
            self.waiting_since = Some(now);
            crate::events::handoff_waiting(
                self.region,
                round,
                bytes,
                budget,
                per_tick.unwrap_or_default(),
                self.delivery_rate.map(|rate| rate as u64),
            );
        }
        // protocol.md §4: freeze once a round fits the budget, or is within four budgets when the
        // rounds stopped shrinking or ran out; give up when waiting took too long.
        let fits = bytes <= budget || (out_of_rounds && within_four);
        // protocol.md §4: a region with many bodies also waits for the target's engines, which
        // the target builds from the received world while the rounds go on, so that they are not
        // built in the freeze; a round that fits is then sent as an ordinary one.
        let freeze_now =
            fits && next_tick_due.is_some() && (prepared || now >= first_round_at + self.config.engines_ready_wait);
        if fits && !prepared {
            self.held_for_engines.get_or_insert(now);
            if freeze_now {
                crate::events::handoff_freezes_unready(self.region, now - first_round_at);
            }
        }
        let estimated = matches!(parts, RoundParts::Estimated);
        match (parts, next_tick_due) {
            (RoundParts::Sent(parts), Some(next_tick_due)) if freeze_now => {
                self.stats.waited = self.waiting_since.map(|since| now - since);
                self.stats.engines_waited = self.held_for_engines.map(|since| now - since);
                self.freeze(now, world, round, parts, bytes, next_tick_due);
            }
            _ if !within_four && self.waiting_since.is_some_and(|since| now >= since + self.config.quiet_wait) => {
                let waited = self.waiting_since.map(|since| now - since).unwrap_or_default();
                self.stats.waited = Some(waited);
                let reason = AbortReason {
                    culprit: Culprit::Link,
                    phase: Phase::Rounds,
                    reason: format!(
                        "did not converge: {}; no quieter moment came in {:.1} s",
                        self.rates(round, bytes, budget, estimated),
                        waited.as_secs_f64()
                    ),
                };
                self.abort_before_freeze(world, reason);
            }
            (parts, _) => self.send_ordinary(read, bytes, parts),
        }
    }

    /// Round `read`, of changes read only in part (protocol.md §4): not a round of what the region
    /// changes, so it neither shrinks nor stalls the rounds, nor counts towards their limit. But
    /// reads that leave no fewer records unread than the one before cannot catch up: as for rounds
    /// that stop shrinking, the source says so, and gives up after the quiet wait. `before` is
    /// what the previous read left unread, if it was read in part too.
    fn conclude_partial(
        &mut self,
        now: Instant,
        world: &mut World,
        read: RoundRead,
        bytes: usize,
        parts: RoundParts,
        before: Option<usize>,
    ) {
        self.stats.partial_rounds += 1;
        let left = read.unread;
        self.unread = Some(left);
        if self.waiting_since.is_none() && before.is_some_and(|before| left >= before) {
            self.waiting_since = Some(now);
            crate::events::handoff_waiting(
                self.region,
                read.round,
                bytes,
                self.freeze_budget(),
                0,
                self.delivery_rate.map(|rate| rate as u64),
            );
        }
        if let Some(since) = self.waiting_since.filter(|since| now >= *since + self.config.quiet_wait) {
            self.stats.waited = Some(now - since);
            let reason = AbortReason {
                culprit: Culprit::Link,
                phase: Phase::Rounds,
                reason: format!(
                    "did not converge: round {} read {bytes} bytes of changes and left {left} change records \
                     unread, no fewer than the read before; no quieter moment came in {:.1} s",
                    read.round,
                    (now - since).as_secs_f64()
                ),
            };
            return self.abort_before_freeze(world, reason);
        }
        self.send_ordinary(read, bytes, parts);
    }

    /// Round `read` of `bytes` is an ordinary one: its parts are sent, or it is sent piece by
    /// piece (an estimate).
    fn send_ordinary(&mut self, read: RoundRead, bytes: usize, parts: RoundParts) {
        let round = read.round;
        self.round = round;
        self.stats.rounds = round;
        match parts {
            RoundParts::Estimated => return,
            RoundParts::Encoded(parts) => {
                self.send_parts(round, 0, parts);
            }
            RoundParts::Sent(_) => {}
        }
        self.round_sent(round, bytes);
        // Only a round over the configured budget is measured. A small round's time is mostly the
        // round trip, so it reads the link low; if small rounds were measured, that low budget
        // would make more small rounds, read low again, and spiral down to the floor.
        if bytes > self.config.freeze_budget_bytes {
            self.round_in_flight =
                Some(RoundInFlight { encoded_at: read.encoded_at, bytes: bytes as u64, sent_through: self.sent_bytes });
        }
    }

    /// Round `round` (`bytes`) is wholly sent.
    fn round_sent(&mut self, round: u32, bytes: usize) {
        crate::events::handoff_round(self.region, round, bytes);
        self.stats.delta_bytes += bytes as u64;
    }

    /// Captures the next piece of a piecewise round from the world as it is now, to be encoded
    /// elsewhere: values changed since the round was read go out newer, and go again in the next
    /// round, as under a snapshot.
    fn capture_next_piece(&mut self, world: &mut World) {
        let Some(mut piecewise) = self.piecewise.take() else {
            return;
        };
        let Some(mut piece) = piecewise.pieces.pop_front() else {
            return;
        };
        codec::retain_present(world, &mut piece);
        match codec::capture_delta(world, piece, piecewise.round) {
            Ok(captured) => {
                self.job = Some(EncodeJob { handoff: self.id, config: self.config.chunk, captured });
                piecewise.encoding = true;
                self.piecewise = Some(piecewise);
            }
            Err(error) => self.abort_encoding(world, piecewise.round, &error),
        }
    }

    /// What a round of `changes` would take, from the snapshot's bytes per entity (each record
    /// counted as a whole entity: usually over, under when the changed entities are bigger than
    /// the average).
    fn estimated_bytes(&self, changes: &ChangeSet) -> usize {
        let per_entity = self.stats.snapshot_bytes as usize / self.snapshot_entities.max(1);
        let records = changes.spawned.len() + changes.despawned.len() + changes.set.len() + changes.removed.len();
        records.saturating_mul(per_entity)
    }

    /// The freeze budget now: what the measured delivery rate moves in `max_freeze` when that is
    /// less than the configured budget (which is what the link's cap moves), else the configured.
    fn freeze_budget(&self) -> usize {
        match (self.config.max_freeze, self.delivery_rate) {
            (Some(freeze), Some(rate)) => budget_for(rate, freeze).min(self.config.freeze_budget_bytes),
            _ => self.config.freeze_budget_bytes,
        }
    }

    /// A round in flight that is now wholly applied gives a delivery rate.
    fn measure_delivery(&mut self, now: Instant) {
        let Some(round) = self.round_in_flight else {
            return;
        };
        if self.applied_bytes < round.sent_through {
            return;
        }
        self.round_in_flight = None;
        let elapsed = now.saturating_duration_since(round.encoded_at).as_secs_f64();
        if elapsed > 0.0 {
            let rate = round.bytes as f64 / elapsed;
            self.delivery_rate = Some(rate);
            self.stats.delivery_bytes_per_second = Some(rate as u64);
        }
    }

    /// What an operator needs to judge a handoff that cannot converge now.
    fn rates(&self, round: u32, bytes: usize, budget: usize, estimated: bool) -> String {
        let per_tick = self.stats.change_bytes_per_tick.unwrap_or_default() as f64;
        let change_rate = per_tick / self.tick_interval.as_secs_f64().max(f64::EPSILON);
        let mut text = format!(
            "round {round} holds {}{bytes} bytes, over four freeze budgets of {budget}; \
             the region changes {:.0} kB a tick ({})",
            if estimated { "about " } else { "" },
            per_tick / 1e3,
            rate_text(change_rate)
        );
        if let Some(rate) = self.delivery_rate {
            text.push_str(&format!(
                ", the link delivers {}: a final round of one tick would take {:.1} ms",
                rate_text(rate),
                per_tick / rate * 1e3
            ));
        }
        text
    }

    /// Abandons the handoff (operator or coordinator request). Before the freeze this is immediate;
    /// after it, ownership is settled at the authority first.
    pub fn cancel(&mut self, now: Instant, world: &mut World, reason: &str) {
        let phase = self.protocol_phase();
        let reason = AbortReason { culprit: Culprit::Source, phase, reason: reason.to_owned() };
        match self.phase {
            SourcePhase::Prepare | SourcePhase::Snapshot | SourcePhase::Rounds => {
                self.abort_before_freeze(world, reason)
            }
            SourcePhase::Frozen => {
                self.outbox.push_back(Message::Abort { handoff: self.id, reason: reason.reason.clone() });
                self.settle(now, reason);
            }
            _ => {}
        }
    }

    /// The authority's answer to the compare-and-swap this source asked for.
    pub fn handle_authority(&mut self, now: Instant, result: Result<(), AuthorityError>) {
        if self.phase != SourcePhase::Settling {
            return;
        }
        match result {
            Ok(()) => {
                // protocol.md §5: the source won epoch + 1 for itself; the target can no longer commit.
                self.epoch = self.epoch.next();
                self.phase = SourcePhase::Aborted;
                self.deadline = None;
                self.stats.total = Some(now - self.started);
                let reason = self.abort_reason.clone().unwrap_or(AbortReason {
                    culprit: Culprit::Target,
                    phase: Phase::Commit,
                    reason: "aborted".to_owned(),
                });
                crate::events::handoff_aborted(self.region, &reason);
                self.actions.push_back(SourceAction::Resume {
                    epoch: self.epoch,
                    held: std::mem::take(&mut self.held),
                    reason,
                });
            }
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. })
                if actual_epoch == self.epoch.next() && self.target.as_deref() == Some(actual_owner.as_str()) =>
            {
                // The target's commit won; its report was lost on the way.
                self.handed_off(now, actual_epoch);
            }
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. })
                if actual_epoch == self.epoch.next() && actual_owner == self.name =>
            {
                // Our own earlier attempt went through although its answer was lost.
                self.handle_authority(now, Ok(()));
            }
            Err(AuthorityError::Conflict { actual_epoch, actual_owner, .. }) => {
                // Someone else owns the region: this instance is fenced off for good (invariant 1).
                let reason = AbortReason {
                    culprit: Culprit::Authority,
                    phase: Phase::Commit,
                    reason: format!("the region was taken by {actual_owner}@{actual_epoch}"),
                };
                crate::events::handoff_aborted(self.region, &reason);
                self.abort_reason = Some(reason);
                self.phase = SourcePhase::Retired;
                self.deadline = None;
                self.stats.total = Some(now - self.started);
                self.actions.push_back(SourceAction::Fenced { owner: actual_owner, epoch: actual_epoch });
            }
            Err(_) => {
                // Unknown outcome: stay frozen and ask again (protocol.md §5, availability yields to safety).
                self.deadline = Some(now + self.config.timeouts.authority_retry);
            }
        }
    }

    fn in_flight(&self) -> u64 {
        self.sent_bytes.saturating_sub(self.applied_bytes)
    }

    fn protocol_phase(&self) -> Phase {
        match self.phase {
            SourcePhase::Prepare => Phase::Prepare,
            SourcePhase::Snapshot => Phase::Snapshot,
            SourcePhase::Rounds => Phase::Rounds,
            SourcePhase::Frozen => Phase::Freeze,
            _ => Phase::Commit,
        }
    }

    /// Queues `parts` of `round`, numbered from `first`; returns the number after the last.
    fn send_parts(&mut self, round: u32, first: u32, parts: Vec<AlignedVec>) -> u32 {
        let mut part = first;
        for bytes in parts {
            self.sent_bytes += bytes.len() as u64;
            self.outbox.push_back(Message::Delta { handoff: self.id, round, part, bytes: bytes.to_vec() });
            part += 1;
        }
        part
    }

    /// Freezes the region with round `round` as the final one, its `parts` (of `bytes`) sent.
    fn freeze(
        &mut self,
        now: Instant,
        world: &mut World,
        round: u32,
        parts: u32,
        bytes: usize,
        next_tick_due: Instant,
    ) {
        self.stats.final_bytes = bytes as u64;
        let digest = world.digest();
        self.outbox.push_back(Message::Freeze {
            handoff: self.id,
            round,
            parts,
            digest: digest.0,
            tick: world.tick(),
            next_tick_in_us: next_tick_due.saturating_duration_since(now).as_micros() as u64,
        });
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.writer = None;
        self.phase = SourcePhase::Frozen;
        self.frozen_at = Some(now);
        self.last_heard = now;
        self.deadline = Some(now + self.config.timeouts.commit);
        crate::events::handoff_frozen(self.region, self.epoch, round, self.stats.final_bytes);
    }

    fn handed_off(&mut self, now: Instant, epoch: Epoch) {
        self.phase = SourcePhase::HandedOff;
        self.stats.freeze = self.frozen_at.map(|frozen| now - frozen);
        self.stats.total = Some(now - self.started);
        self.deadline = Some(now + self.config.timeouts.straggler_grace);
        let undelivered = if self.link_lost {
            std::mem::take(&mut self.held)
        } else {
            if !self.held.is_empty() {
                self.outbox.push_back(Message::Stragglers { handoff: self.id, inputs: std::mem::take(&mut self.held) });
            }
            Vec::new()
        };
        crate::events::handoff_committed(self.region, epoch, &self.stats);
        self.actions.push_back(SourceAction::HandedOff { epoch, undelivered });
    }

    /// After the freeze, only the authority can say who owns the region (protocol.md §5).
    fn settle(&mut self, now: Instant, reason: AbortReason) {
        if self.abort_reason.is_none() {
            self.abort_reason = Some(reason);
        }
        self.phase = SourcePhase::Settling;
        self.deadline = None;
        let _ = now;
        self.request_reclaim();
    }

    fn request_reclaim(&mut self) {
        let expected = Ownership { owner: self.name.clone(), epoch: self.epoch };
        let next = Ownership { owner: self.name.clone(), epoch: self.epoch.next() };
        self.actions.push_back(SourceAction::Authority { expected, next });
    }

    fn abort_before_freeze(&mut self, world: &mut World, reason: AbortReason) {
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.piecewise = None;
        self.boundary = None;
        self.deferred = None;
        self.job = None;
        self.writer = None;
        self.outbox.clear();
        if !self.link_lost {
            self.outbox.push_back(Message::Abort { handoff: self.id, reason: reason.reason.clone() });
        }
        self.phase = SourcePhase::Aborted;
        self.deadline = None;
        crate::events::handoff_aborted(self.region, &reason);
        self.abort_reason = Some(reason.clone());
        self.actions.push_back(SourceAction::Resume {
            epoch: self.epoch,
            held: std::mem::take(&mut self.held),
            reason,
        });
    }
}

/// A round estimated over this many of the largest chunks (and over four freeze budgets) is
/// encoded piece by piece between ticks (protocol.md §4).
const PIECEWISE_ROUND_CHUNKS: usize = 2;

/// A round too big to encode at its tick boundary: its changes in entity ranges of about a chunk
/// each, captured one per poll and encoded elsewhere, one at a time.
#[derive(Debug)]
struct PiecewiseRound {
    round: u32,
    pieces: VecDeque<ChangeSet>,
    /// A piece is out being encoded.
    encoding: bool,
    /// Parts sent so far.
    parts: u32,
    /// Bytes sent so far.
    bytes: usize,
}

/// A round as it was read at its tick boundary.
#[derive(Clone, Copy, Debug)]
struct RoundRead {
    round: u32,
    /// The tick boundary it was read at.
    at: Instant,
    /// When its encoding began: `at` for a round encoded there, later for one encoded elsewhere
    /// (its wait for a free thread is not the link's); a measured round is measured from here.
    encoded_at: Instant,
    /// Ticks whose changes it holds.
    ticks: u32,
    /// Change records the read left unread (`SourceConfig::read_records`).
    unread: usize,
}

impl RoundRead {
    /// Only the oldest of the changes were read: never the final round, and not a round that
    /// shrank or stalled.
    fn partial(&self) -> bool {
        self.unread > 0
    }
}

/// A round read at a tick boundary while its parts are made (protocol.md §4).
#[derive(Debug)]
struct BoundaryRound {
    encoder: codec::DeltaEncoder,
    read: RoundRead,
    /// When the tick after the boundary is due.
    next_tick_due: Instant,
    /// Bytes of the parts made so far.
    bytes: usize,
}

/// A round's archives as [`HandoffSource::conclude_round`] gets them.
enum RoundParts {
    /// Encoded, to send.
    Encoded(Vec<AlignedVec>),
    /// This many, already sent as they were made.
    Sent(u32),
    /// Not encoded yet: an estimate, the round to be sent piece by piece.
    Estimated,
}

/// A delta round sent and measured once it is wholly applied.
#[derive(Clone, Copy, Debug)]
struct RoundInFlight {
    /// When its encoding began (the tick boundary it was read at, unless it was encoded
    /// elsewhere): its encoding is part of what is measured, as the final round's is part of the
    /// freeze.
    encoded_at: Instant,
    /// Its bytes.
    bytes: u64,
    /// The count of bytes sent that its last part brings the total to.
    sent_through: u64,
}

/// A rate for people: MB/s from 1 MB/s up, kB/s below.
fn rate_text(bytes_per_second: f64) -> String {
    if bytes_per_second >= 1e6 {
        format!("{:.1} MB/s", bytes_per_second / 1e6)
    } else {
        format!("{:.1} kB/s", bytes_per_second / 1e3)
    }
}

/// What `bytes_per_second` moves in `time`, at least [`MIN_FREEZE_BUDGET`].
fn budget_for(bytes_per_second: f64, time: Duration) -> usize {
    ((bytes_per_second * time.as_secs_f64()) as usize).max(MIN_FREEZE_BUDGET)
}

#[cfg(test)]
mod tests {
    //! The source alone, fed messages by hand, for what the whole-handoff tests reach only by a
    //! slower path.

    use super::*;
    use crate::component::Registry;

    fn started(world: &World) -> HandoffSource {
        started_with(world, Instant::now(), SourceConfig::default())
    }

    #[test]
    fn the_freeze_budget_is_what_the_link_moves_in_the_freeze_time() {
        assert_eq!(SourceConfig::for_link(50_000_000, Duration::from_millis(2)).freeze_budget_bytes, 100_000);
        assert_eq!(SourceConfig::for_link(1_000_000, Duration::from_millis(2)).freeze_budget_bytes, 4096, "a floor");
        assert_eq!(SourceConfig::for_link(50_000_000, Duration::from_millis(2)).max_rounds, 20);
        let measured = SourceConfig::for_link(50_000_000, Duration::from_millis(5));
        assert_eq!((measured.freeze_budget_bytes, measured.max_freeze), (250_000, Some(Duration::from_millis(5))));
    }

    #[test]
    fn a_target_that_refuses_in_the_prepare_ends_the_handoff_and_the_region_resumes() {
        let mut world = World::new(Registry::new());
        let mut source = started(&world);
        assert_eq!(source.id(), 41);
        assert!(!source.is_finished());
        assert!(matches!(source.poll_message(&mut world), Some(Message::Begin { handoff: 41, .. })));
        // An abort of another handoff is not this one's.
        source.handle_message(Instant::now(), &mut world, Message::Abort { handoff: 40, reason: "x".into() });
        assert_eq!(source.phase(), SourcePhase::Prepare);
        let refused = Message::Abort { handoff: 41, reason: "the target's world is not empty".into() };
        source.handle_message(Instant::now(), &mut world, refused);
        assert!(source.is_finished());
        let reason = source.abort_reason().cloned().unwrap();
        assert_eq!((reason.culprit, reason.phase), (Culprit::Target, Phase::Prepare));
        assert!(matches!(source.poll_action(), Some(SourceAction::Resume { epoch: Epoch(4), .. })));
    }

    /// One entity's payload: 1,000 bytes, so a round's size follows the number of entities changed.
    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.blob")]
    struct Blob(Vec<u8>);

    const BLOB_BYTES: usize = 1000;
    /// Five entities' worth: a round of 1 entity fits, 9 are within four budgets, 30 are not.
    const BUDGET: usize = 5000;

    fn config() -> SourceConfig {
        SourceConfig {
            chunk: ChunkConfig { target_chunk_bytes: 8000, max_chunk_bytes: 9000 },
            freeze_budget_bytes: BUDGET,
            max_freeze: None,
            max_rounds: 20,
            stall_rounds: 3,
            quiet_wait: Duration::from_secs(1),
            window_bytes: 4 * 1024 * 1024,
            engines_ready_bodies: 3,
            engines_ready_wait: Duration::from_secs(2),
            read_records: 50_000,
            timeouts: Timeouts {
                prepare: Duration::from_secs(5),
                transfer: Duration::from_secs(120),
                commit: Duration::from_secs(10),
                authority_retry: Duration::from_millis(50),
                straggler_grace: Duration::from_secs(2),
                silence: Duration::from_secs(3),
            },
        }
    }

    fn input(seq: u64) -> PlayerInput {
        PlayerInput { player: baton_wire::PlayerId(9), seq, payload: vec![1] }
    }

    /// A source handing off a world of 40 blobs, with a clock the test moves, fed by hand.
    struct Run {
        source: HandoffSource,
        world: World,
        now: Instant,
        entities: Vec<crate::world::EntityId>,
        /// Bulk bytes (chunks and delta parts) the source sent.
        sent: u64,
        changed: u8,
        /// Messages polled out at a tick boundary, not drained yet.
        polled: Vec<Message>,
    }

    impl Run {
        /// Started; the target has not answered yet.
        fn prepare(config: SourceConfig) -> Run {
            Run::prepare_with_bodies(config, 0)
        }

        /// Started, with `bodies` physics bodies besides the 40 blobs.
        fn prepare_with_bodies(config: SourceConfig, bodies: usize) -> Run {
            let mut registry = Registry::new();
            registry.register::<Blob>().unwrap();
            registry.register::<Body>().unwrap();
            let mut world = World::new(registry);
            let entities: Vec<_> = (0..40)
                .map(|_| {
                    let entity = world.spawn();
                    world.insert(entity, Blob(vec![0; BLOB_BYTES])).unwrap();
                    entity
                })
                .collect();
            for index in 0..bodies {
                let entity = world.spawn();
                let shape = crate::physics::Shape::Ball { radius: 0.5 };
                let body = Body::new(crate::physics::BodyKind::Dynamic, shape, [index as f32, 0.5, 0.0]);
                world.insert(entity, body).unwrap();
            }
            let now = Instant::now();
            let mut source = started_with(&world, now, config);
            assert!(matches!(source.poll_message(&mut world), Some(Message::Begin { .. })));
            Run { source, world, now, entities, sent: 0, changed: 0, polled: Vec::new() }
        }

        /// The target accepted; the snapshot is not sent yet.
        fn snapshot(config: SourceConfig) -> Run {
            let mut run = Run::prepare(config);
            run.receive(Message::Ready { handoff: 41, target: "target".into() });
            assert_eq!(run.source.phase(), SourcePhase::Snapshot);
            run
        }

        /// The whole snapshot sent and applied: the next tick starts the delta rounds.
        fn rounds(config: SourceConfig) -> Run {
            let mut run = Run::snapshot(config);
            run.drain();
            run.acknowledge();
            run
        }

        /// Frozen after a first round of one entity.
        fn frozen() -> Run {
            Run::frozen_with(config())
        }

        fn frozen_with(config: SourceConfig) -> Run {
            let mut run = Run::rounds(config);
            run.change(1);
            run.tick();
            run.drain();
            assert_eq!(run.source.phase(), SourcePhase::Frozen);
            run
        }

        /// Committed by the target at epoch 5.
        fn handed_off() -> Run {
            let mut run = Run::frozen();
            run.receive(Message::Committed { handoff: 41, epoch: 5 });
            assert_eq!(
                run.source.poll_action(),
                Some(SourceAction::HandedOff { epoch: Epoch(5), undelivered: Vec::new() })
            );
            run
        }

        fn receive(&mut self, message: Message) {
            self.source.handle_message(self.now, &mut self.world, message);
        }

        /// The snapshot sent, applied to a target's world (returned) and acknowledged.
        fn snapshot_applied(config: SourceConfig) -> (Run, World) {
            let mut run = Run::snapshot(config);
            let mut target = World::new(run.world.registry().as_ref().clone());
            let snapshot = run.drain();
            apply_bulk(&mut target, &snapshot);
            run.acknowledge();
            (run, target)
        }

        /// Every message the source has to send now, running the encoding jobs it hands out on
        /// the way as a driver would (at once); counts the bulk bytes among them.
        fn drain(&mut self) -> Vec<Message> {
            let mut messages = std::mem::take(&mut self.polled);
            loop {
                messages.extend(std::iter::from_fn(|| self.source.poll_message(&mut self.world)));
                let Some(job) = self.source.poll_encode() else {
                    break;
                };
                self.source.handle_encoded(self.now, &mut self.world, job.run());
            }
            for message in &messages {
                if let Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } = message {
                    self.sent += bytes.len() as u64;
                }
            }
            messages
        }

        /// The target reports everything sent so far applied.
        fn acknowledge(&mut self) {
            self.receive(Message::Progress { handoff: 41, applied_bytes: self.sent });
        }

        /// Changes the first `count` entities, as a tick would.
        fn change(&mut self, count: usize) {
            self.change_range(0..count);
        }

        /// Changes the entities at positions `range`.
        fn change_range(&mut self, range: std::ops::Range<usize>) {
            self.changed += 1;
            for entity in &self.entities[range] {
                self.world.insert(*entity, Blob(vec![self.changed; BLOB_BYTES])).unwrap();
            }
        }

        /// The tick that ends now + 50 ms, its round not polled out.
        fn tick_unpolled(&mut self) {
            self.now += Duration::from_millis(50);
            let next_tick_due = self.now + Duration::from_millis(50);
            self.source.handle_tick_completed(self.now, &mut self.world, next_tick_due);
        }

        fn tick(&mut self) {
            self.tick_unpolled();
            // As a driver does: a round read at the boundary is polled out, part by part, before
            // anything else.
            while self.source.encodes_at_boundary() {
                let message = self.source.poll_message(&mut self.world).expect("a part or the outcome");
                self.polled.push(message);
            }
        }

        /// A tick changing `count` entities, its round sent and applied; the round's messages.
        fn round(&mut self, count: usize) -> Vec<Message> {
            self.change(count);
            self.tick();
            let messages = self.drain();
            self.acknowledge();
            messages
        }

        /// A tick changing `count` entities, its round sent, then reported applied `elapsed` later;
        /// the round's bulk bytes.
        fn round_delivered_in(&mut self, count: usize, elapsed: Duration) -> u64 {
            self.change(count);
            self.tick();
            let bytes = delta_bytes(&self.drain());
            self.now += elapsed;
            self.acknowledge();
            bytes
        }

        fn after(&mut self, elapsed: Duration) {
            self.now += elapsed;
            self.source.handle_timeout(self.now, &mut self.world);
        }

        fn actions(&mut self) -> Vec<SourceAction> {
            std::iter::from_fn(|| self.source.poll_action()).collect()
        }

        fn resumed(&mut self) -> (Epoch, Vec<PlayerInput>, AbortReason) {
            match self.actions().as_slice() {
                [SourceAction::Resume { epoch, held, reason }] => (*epoch, held.clone(), reason.clone()),
                other => panic!("expected one resume, got {other:?}"),
            }
        }

        fn authority_asked(&mut self) {
            let reclaim = SourceAction::Authority {
                expected: Ownership { owner: "source".into(), epoch: Epoch(4) },
                next: Ownership { owner: "source".into(), epoch: Epoch(5) },
            };
            assert_eq!(self.actions(), vec![reclaim]);
            assert_eq!(self.source.phase(), SourcePhase::Settling);
        }

        fn conflict(&mut self, owner: &str, epoch: u64) {
            let error = AuthorityError::Conflict {
                region: RegionId(3),
                expected_epoch: Epoch(4),
                actual_epoch: Epoch(epoch),
                actual_owner: owner.into(),
            };
            self.source.handle_authority(self.now, Err(error));
        }
    }

    fn started_with(world: &World, now: Instant, config: SourceConfig) -> HandoffSource {
        let plan = HandoffPlan {
            id: 41,
            region: RegionId(3),
            epoch: Epoch(4),
            name: "source".into(),
            tick_interval: Duration::from_millis(50),
        };
        HandoffSource::start(now, world, plan, config)
    }

    /// Applies the snapshot chunks and delta parts among `messages` to `target`.
    fn apply_bulk(target: &mut World, messages: &[Message]) {
        for message in messages {
            if let Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } = message {
                codec::apply(target, bytes, codec::DecodeLimits::default()).unwrap();
            }
        }
    }

    /// The rounds of the delta parts among `messages`, each once.
    fn delta_rounds(messages: &[Message]) -> Vec<u32> {
        let mut rounds: Vec<u32> = messages
            .iter()
            .filter_map(|message| match message {
                Message::Delta { round, .. } => Some(*round),
                _ => None,
            })
            .collect();
        rounds.dedup();
        rounds
    }

    fn delta_bytes(messages: &[Message]) -> u64 {
        messages
            .iter()
            .map(|message| match message {
                Message::Delta { bytes, .. } => bytes.len() as u64,
                _ => 0,
            })
            .sum()
    }

    fn abort(culprit: Culprit, phase: Phase, reason: &str) -> AbortReason {
        AbortReason { culprit, phase, reason: reason.to_owned() }
    }

    #[test]
    fn the_snapshot_waits_for_the_window_and_the_rounds_wait_for_the_whole_snapshot() {
        let mut run = Run::snapshot(SourceConfig { window_bytes: 1, ..config() });
        let Some(Message::Chunk { index: 0, bytes, .. }) = run.source.poll_message(&mut run.world) else {
            panic!("the first chunk");
        };
        run.sent += bytes.len() as u64;
        assert_eq!(run.source.poll_message(&mut run.world), None, "the window is full");
        // A tick while the snapshot is incomplete starts no round.
        run.change(40);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Snapshot);
        run.acknowledge();
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Snapshot, "chunks are still to come");
        let mut chunks = 1;
        while let Some(message) = run.source.poll_message(&mut run.world) {
            let Message::Chunk { index, bytes, .. } = message else { panic!("a chunk: {message:?}") };
            assert_eq!(index, chunks);
            chunks += 1;
            run.sent += bytes.len() as u64;
            assert_eq!(run.source.poll_message(&mut run.world), None, "one chunk at a time");
            run.acknowledge();
        }
        assert!(chunks >= 4, "40 kB in chunks of 8 kB: {chunks}");
        assert_eq!(run.source.stats().snapshot_chunks, chunks);
        assert_eq!(run.source.stats().snapshot_bytes, run.sent);
    }

    /// A source about to read its first round, whose world also holds `bodies` physics bodies
    /// (`config()` waits for `EnginesReady` from three).
    fn rounds_with_bodies(bodies: usize) -> Run {
        let mut run = Run::prepare_with_bodies(config(), bodies);
        run.receive(Message::Ready { handoff: 41, target: "target".into() });
        run.drain();
        run.acknowledge();
        run
    }

    #[test]
    fn a_region_with_many_bodies_freezes_only_once_the_target_s_engines_are_ready() {
        let mut run = rounds_with_bodies(3);
        // Rounds that fit the budget go out as ordinary ones while the target builds its engines.
        for round in 1..=3 {
            let messages = run.round(1);
            assert_eq!(delta_rounds(&messages), vec![round], "round {round} is an ordinary one");
            assert!(!messages.iter().any(|message| matches!(message, Message::Freeze { .. })));
            assert_eq!(run.source.phase(), SourcePhase::Rounds);
        }
        run.receive(Message::EnginesReady { handoff: 41 });
        let messages = run.round(1);
        assert!(matches!(messages.last(), Some(Message::Freeze { round: 4, .. })), "{messages:?}");
        // Held from the first fitting round (three ticks of 50 ms before the one that froze).
        assert_eq!(run.source.stats().engines_waited, Some(Duration::from_millis(150)));
    }

    #[test]
    fn rounds_held_for_the_target_s_engines_do_not_count_as_rounds_that_stopped_shrinking() {
        let mut run = rounds_with_bodies(3);
        // More held rounds than `stall_rounds` (3) and a round limit of 3.
        run.source.config.max_rounds = 3;
        for _ in 0..6 {
            run.round(1);
        }
        run.receive(Message::EnginesReady { handoff: 41 });
        // Nine entities: over the budget, within four. Rounds that stalled or ran out would freeze
        // on it; these did not.
        let messages = run.round(9);
        assert!(!messages.iter().any(|message| matches!(message, Message::Freeze { .. })), "{messages:?}");
        let messages = run.round(1);
        assert!(matches!(messages.last(), Some(Message::Freeze { round: 8, .. })), "{messages:?}");
    }

    #[test]
    fn a_target_that_never_says_its_engines_are_ready_is_frozen_after_the_wait() {
        let mut run = rounds_with_bodies(3);
        // 2 s of rounds from the first: 40 ticks of 50 ms.
        for _ in 0..40 {
            run.round(1);
            assert_eq!(run.source.phase(), SourcePhase::Rounds);
        }
        run.round(1);
        assert_eq!(run.source.phase(), SourcePhase::Frozen, "the freeze waits at most `engines_ready_wait`");
        assert_eq!(run.source.stats().engines_waited, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_region_with_few_bodies_freezes_without_waiting_for_the_target() {
        let mut run = rounds_with_bodies(2);
        let messages = run.round(1);
        assert!(matches!(messages.last(), Some(Message::Freeze { round: 1, .. })), "{messages:?}");
        assert_eq!(run.source.stats().engines_waited, None);
    }

    #[test]
    fn the_last_chunk_must_be_applied_before_the_first_round() {
        let mut run = Run::snapshot(config());
        run.drain();
        run.change(1);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Snapshot, "the snapshot is not applied yet");
        assert_eq!(run.drain(), Vec::new());
        run.acknowledge();
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen, "a round of one entity fits the budget");
    }

    #[test]
    fn a_round_within_the_budget_is_the_final_one() {
        let mut run = Run::rounds(config());
        run.change(1);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert!(!run.source.allows_ticks());
        let messages = run.drain();
        let digest = run.world.digest().0;
        let tick = run.world.tick();
        assert_eq!(delta_rounds(&messages), vec![1]);
        assert_eq!(
            messages.last(),
            Some(&Message::Freeze { handoff: 41, round: 1, parts: 1, digest, tick, next_tick_in_us: 50_000 })
        );
        let stats = run.source.stats();
        assert_eq!((stats.rounds, stats.delta_bytes), (0, 0));
        assert_eq!(stats.final_bytes, delta_bytes(&messages));
        assert!(stats.final_bytes > BLOB_BYTES as u64 && stats.final_bytes <= BUDGET as u64);
    }

    /// Parts of about two entities.
    fn small_chunks() -> SourceConfig {
        SourceConfig { chunk: ChunkConfig { target_chunk_bytes: 1500, max_chunk_bytes: 3000 }, ..config() }
    }

    /// Polls out the parts of the round read at the boundary for as long as the source says it
    /// is encoding one (so more than one part back means they were made a poll at a time),
    /// checking that the region may not tick and the round is not decided meanwhile.
    fn poll_boundary_parts(run: &mut Run) -> Vec<Message> {
        let mut parts = Vec::new();
        while run.source.encodes_at_boundary() {
            assert!(!run.source.allows_ticks(), "the world must not change until the last part");
            assert_eq!(run.source.phase(), SourcePhase::Rounds, "decided only after the last part");
            parts.push(run.source.poll_message(&mut run.world).expect("a part"));
        }
        parts
    }

    #[test]
    fn a_round_read_at_its_boundary_goes_a_part_per_poll_and_freezes_after_its_last_when_it_fits() {
        let (mut run, mut target) = Run::snapshot_applied(small_chunks());
        run.change(4);
        run.tick_unpolled();
        let parts = poll_boundary_parts(&mut run);
        assert!(parts.len() >= 2, "a part per poll: {parts:?}");
        assert_eq!(delta_rounds(&parts), vec![1], "all parts of round 1");
        assert_eq!(run.source.phase(), SourcePhase::Frozen, "4 kB fit the 5 kB budget");
        assert!(!run.source.allows_ticks());
        let rest = run.drain();
        apply_bulk(&mut target, &parts);
        let digest = run.world.digest().0;
        assert_eq!(target.digest().0, digest, "the parts hold the world as at the boundary");
        let tick = run.world.tick();
        let count = parts.len() as u32;
        assert_eq!(
            rest,
            vec![Message::Freeze { handoff: 41, round: 1, parts: count, digest, tick, next_tick_in_us: 50_000 }]
        );
        let stats = run.source.stats();
        assert_eq!((stats.rounds, stats.delta_bytes, stats.final_bytes), (0, 0, delta_bytes(&parts)));
    }

    #[test]
    fn a_round_read_at_its_boundary_that_does_not_fit_is_an_ordinary_round_once_its_parts_are_out() {
        let mut run = Run::rounds(small_chunks());
        run.change(9);
        run.tick_unpolled();
        let parts = poll_boundary_parts(&mut run);
        assert!(parts.len() >= 2, "a part per poll: {parts:?}");
        assert_eq!(run.source.phase(), SourcePhase::Rounds, "9 kB are over the 5 kB budget");
        assert!(run.source.allows_ticks());
        assert_eq!(run.drain(), Vec::new(), "no freeze");
        let stats = run.source.stats();
        assert_eq!((stats.rounds, stats.delta_bytes, stats.final_bytes), (1, delta_bytes(&parts), 0));
    }

    #[test]
    fn a_round_with_more_records_than_it_may_read_reads_the_oldest_and_is_never_the_final_one() {
        let (mut run, mut target) = Run::snapshot_applied(SourceConfig { read_records: 2, ..config() });
        // Three closed stamps of one changed entity each; a round reads two records at most.
        for entity in 0..3 {
            run.change_range(entity..entity + 1);
            run.world.digest();
        }
        run.tick();
        let first = run.drain();
        assert_eq!(delta_rounds(&first), vec![1]);
        assert!(delta_bytes(&first) < BUDGET as u64, "two entities fit the budget");
        assert_eq!(run.source.phase(), SourcePhase::Rounds, "but more changes wait: not the final round");
        assert!(!first.iter().any(|message| matches!(message, Message::Freeze { .. })));
        apply_bulk(&mut target, &first);
        run.acknowledge();
        // The rest: one record, read whole, the final round.
        run.tick();
        let last = run.drain();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert_eq!(delta_rounds(&last), vec![2]);
        apply_bulk(&mut target, &last);
        assert_eq!(target.digest(), run.world.digest(), "the two rounds hold all the changes");
        assert_eq!((run.source.stats().rounds, run.source.stats().partial_rounds), (1, 1));
    }

    #[test]
    fn reads_in_part_that_never_catch_up_wait_for_a_quieter_moment_then_give_up() {
        let mut run = Run::rounds(SourceConfig { read_records: 2, ..config() });
        // Four closed stamps a tick, two records read a tick: what is left unread only grows.
        let mut ticks = 0;
        while run.source.abort_reason().is_none() && ticks < 100 {
            for entity in 0..4 {
                run.change_range(entity..entity + 1);
                run.world.digest();
            }
            run.tick();
            run.drain();
            run.acknowledge();
            ticks += 1;
        }
        let (_, _, reason) = run.resumed();
        assert!(reason.reason.contains("did not converge") && reason.reason.contains("unread"), "{reason}");
        // The wait (1 s, 20 ticks) began at the second read, which left more unread than the first.
        assert_eq!(ticks, 22);
        let stats = run.source.stats();
        assert_eq!((stats.partial_rounds, stats.waited), (22, Some(Duration::from_secs(1))), "the last one gave up");
    }

    #[test]
    fn a_round_is_sent_only_once_the_previous_one_is_applied() {
        let mut run = Run::rounds(config());
        run.change(30);
        run.tick();
        let first = run.drain();
        assert_eq!(delta_rounds(&first).first(), Some(&1));
        // Ten entities change while round 1 is in flight, ten others at the tick that follows.
        run.change_range(0..10);
        run.tick();
        assert_eq!(run.drain(), Vec::new(), "round 1 is still in flight");
        run.acknowledge();
        run.change_range(30..40);
        run.tick();
        let second = run.drain();
        assert_eq!(delta_rounds(&second), vec![2]);
        let bytes = delta_bytes(&second);
        assert!((20 * BLOB_BYTES as u64..25 * BLOB_BYTES as u64).contains(&bytes), "both ticks' 20 entities: {bytes}");
    }

    #[test]
    fn rounds_that_stop_shrinking_within_four_budgets_freeze_when_they_stall() {
        let mut run = Run::rounds(config());
        let mut sent = 0;
        for round in 1..=3 {
            let messages = run.round(9);
            assert_eq!(delta_rounds(&messages), vec![round], "round {round} is not final");
            let bytes = delta_bytes(&messages);
            assert!(bytes > BUDGET as u64 && bytes <= 4 * BUDGET as u64, "{bytes}");
            sent += bytes;
        }
        assert_eq!(run.source.stats().rounds, 3);
        assert_eq!(run.source.stats().delta_bytes, sent);
        // The third round in a row that is not 10% smaller than the first: freeze now.
        run.change(9);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert!(matches!(run.drain().last(), Some(Message::Freeze { round: 4, .. })));
    }

    #[test]
    fn rounds_that_cannot_converge_wait_for_a_quieter_moment_then_abort_with_the_rates() {
        let mut run = Run::rounds(config());
        // One tick of 30 entities is over four budgets: the wait starts at round 1, not when the
        // rounds stall (round 4), and ends a second (20 ticks) later.
        for round in 1..=20 {
            assert_eq!(delta_rounds(&run.round(30)), vec![round], "round {round} is sent");
        }
        run.change(30);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Aborted);
        assert!(run.source.allows_ticks());
        let reason = run.source.abort_reason().cloned().unwrap();
        assert_eq!((reason.culprit, reason.phase), (Culprit::Link, Phase::Rounds));
        // 30 entities are over two chunks: the round is piecewise, its size an estimate.
        assert!(reason.reason.starts_with("did not converge: round 21 holds about"), "{reason}");
        assert!(reason.reason.contains("over four freeze budgets of 5000"), "{reason}");
        assert!(reason.reason.contains("kB a tick"), "{reason}");
        assert!(reason.reason.ends_with("no quieter moment came in 1.0 s"), "{reason}");
        assert_eq!(run.source.stats().waited, Some(Duration::from_secs(1)));
        assert!(matches!(run.drain().as_slice(), [Message::Abort { handoff: 41, .. }]));
        assert_eq!(run.resumed().0, Epoch(4));
    }

    #[test]
    fn rounds_that_stall_above_four_budgets_wait_for_a_quieter_moment() {
        let mut run = Run::rounds(config());
        run.change(9);
        run.tick();
        assert_eq!(delta_rounds(&run.drain()), vec![1]);
        // Each tick changes 9 other entities (within four budgets), but each round spans three
        // ticks, as the one before it is applied only then: 27 entities, over four budgets, and
        // not smaller than round 1.
        for round in 2..=4 {
            run.change_range(9..18);
            run.tick();
            run.change_range(18..27);
            run.tick();
            run.acknowledge();
            run.change_range(27..36);
            run.tick();
            assert_eq!(delta_rounds(&run.drain()), vec![round], "round {round} is sent");
        }
        // Round 4 was the third in a row not smaller than the smallest: the rounds stalled there,
        // and the source waits for a quieter moment instead of giving up. It comes one tick later.
        run.acknowledge();
        run.change(9);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert_eq!(run.source.stats().waited, Some(Duration::from_millis(50)));
    }

    #[test]
    fn shrinking_rounds_stop_at_the_round_limit() {
        let limited = SourceConfig { max_rounds: 3, stall_rounds: 100, ..config() };
        // Each round at least 10% smaller than the last, none within the budget.
        let mut run = Run::rounds(limited);
        for (round, count) in [(1, 18), (2, 16), (3, 14)] {
            assert_eq!(delta_rounds(&run.round(count)), vec![round]);
        }
        run.change(12);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen, "round 4 is past the limit and within four budgets");
        assert_eq!(run.source.stats().waited, None);
        // A limit of 2 and no quiet wait: round 3 is past the limit and, unlike rounds 1 and 2, over
        // four budgets.
        let mut run = Run::rounds(SourceConfig { max_rounds: 2, quiet_wait: Duration::ZERO, ..limited });
        run.round(18);
        run.round(16);
        run.change(22);
        run.tick();
        let reason = run.source.abort_reason().cloned().unwrap();
        assert!(reason.reason.starts_with("did not converge: round 3 holds"), "{reason}");
    }

    #[test]
    fn a_quieter_moment_ends_the_wait_once_the_rounds_fit() {
        let mut run = Run::rounds(config());
        run.round(30);
        // Waiting since round 1; rounds that shrink go on as usual: 9 entities do not fit one
        // budget, and rounds have not stalled.
        assert_eq!(delta_rounds(&run.round(9)), vec![2]);
        run.change(1);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert_eq!(run.source.stats().waited, Some(Duration::from_millis(100)));
    }

    #[test]
    fn the_budget_follows_a_measured_delivery_rate_below_the_configured_budget() {
        // Configured: 9000 bytes. Round 1 (10 entities) is over it, so it is sent and measured.
        let measured =
            SourceConfig { freeze_budget_bytes: 9000, max_freeze: Some(Duration::from_millis(10)), ..config() };
        // Reported applied at the instant it was sent, it tells nothing: 6 entities fit 9000.
        let mut run = Run::rounds(measured);
        run.round_delivered_in(10, Duration::ZERO);
        assert_eq!(run.source.stats().delivery_bytes_per_second, None);
        run.change(6);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        // A round partly applied is not measured yet.
        let mut run = Run::rounds(measured);
        run.change(10);
        run.tick();
        run.drain();
        run.now += Duration::from_millis(20);
        run.receive(Message::Progress { handoff: 41, applied_bytes: run.sent - 1 });
        assert_eq!(run.source.stats().delivery_bytes_per_second, None);
        // Delivered in 20 ms: about 0.5 MB/s, 5 kB in 10 ms. 6 entities no longer fit; 4 do.
        let mut run = Run::rounds(measured);
        let first = run.round_delivered_in(10, Duration::from_millis(20));
        assert_eq!(run.source.stats().delivery_bytes_per_second, Some(first * 50));
        run.change(6);
        run.tick();
        assert_eq!(delta_rounds(&run.drain()), vec![2], "6 entities are over the measured budget");
        run.acknowledge();
        run.change(4);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen, "4 entities fit the measured budget");
        // The same without `max_freeze`: the configured budget stays.
        let mut run = Run::rounds(SourceConfig { max_freeze: None, ..measured });
        run.round_delivered_in(10, Duration::from_millis(20));
        run.change(6);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        // A fast link does not raise the budget over the configured one: 10 entities delivered in
        // 1 ms would move 100 kB in 10 ms, but 10 entities stay over 9000.
        let mut run = Run::rounds(measured);
        run.round_delivered_in(10, Duration::from_millis(1));
        run.change(10);
        run.tick();
        assert_eq!(delta_rounds(&run.drain()), vec![2]);
    }

    #[test]
    fn a_slow_link_shrinks_the_budget_to_its_floor_and_the_reason_names_the_rates() {
        let slow = SourceConfig { max_freeze: Some(Duration::from_millis(10)), quiet_wait: Duration::ZERO, ..config() };
        let mut run = Run::rounds(slow);
        // 10 entities delivered in a second: about 10 kB/s, 100 bytes in 10 ms, so the floor.
        let first = run.round_delivered_in(10, Duration::from_secs(1));
        assert_eq!(run.source.stats().delivery_bytes_per_second, Some(first));
        // A tick of 30 entities is over four budgets of the floor, and there is no quiet wait.
        run.change(30);
        run.tick();
        let reason = run.source.abort_reason().cloned().expect("aborted at once (no quiet wait)");
        let per_tick = run.source.stats().change_bytes_per_tick.unwrap();
        assert!(reason.reason.starts_with("did not converge: round 2 holds"), "{reason}");
        assert!(reason.reason.contains(&format!("over four freeze budgets of {MIN_FREEZE_BUDGET}")), "{reason}");
        let change =
            format!("the region changes {:.0} kB a tick ({:.1} kB/s)", per_tick as f64 / 1e3, per_tick as f64 / 50.0);
        assert!(reason.reason.contains(&change), "{reason} lacks {change}");
        assert!(reason.reason.contains(&format!("the link delivers {:.1} kB/s", first as f64 / 1e3)), "{reason}");
        let one_tick = format!("a final round of one tick would take {:.1} ms", per_tick as f64 / first as f64 * 1e3);
        assert!(reason.reason.contains(&one_tick), "{reason} lacks {one_tick}");
    }

    #[test]
    fn a_round_far_over_the_budget_is_encoded_piece_by_piece_as_the_world_goes_on() {
        let (mut run, mut target) = Run::snapshot_applied(config());
        // All 40 entities change: about 41 kB, over four budgets (20 kB) and two chunks (18 kB). At
        // the tick nothing is encoded; a poll captures one piece of about a chunk (8 kB), which
        // goes out to be encoded elsewhere, one at a time.
        run.change(40);
        run.tick();
        assert!(run.source.encodes_on_poll());
        assert!(run.source.poll_message(&mut run.world).is_none(), "captured, not encoded here");
        let job = run.source.poll_encode().expect("the first piece, to encode");
        assert!(!run.source.encodes_on_poll() && run.source.poll_message(&mut run.world).is_none());
        assert!(run.source.poll_encode().is_none(), "one piece out at a time");
        // The world goes on while it is encoded: the piece holds the values it captured.
        run.change_range(0..1);
        run.tick();
        let encoded = job.run();
        run.source.handle_encoded(run.now, &mut run.world, encoded);
        let Some(first @ Message::Delta { round: 1, part: 0, .. }) = run.source.poll_message(&mut run.world) else {
            panic!("the first piece");
        };
        assert!(delta_bytes(std::slice::from_ref(&first)) < 9000, "one piece, not the round");
        run.sent += delta_bytes(std::slice::from_ref(&first));
        apply_bulk(&mut target, std::slice::from_ref(&first));
        let Message::Delta { bytes, .. } = &first else { unreachable!() };
        let decoded = codec::decode(run.world.registry(), bytes, codec::DecodeLimits::default()).unwrap();
        let mut piece = World::new(run.world.registry().as_ref().clone());
        decoded.apply(&mut piece);
        assert_eq!(piece.get::<Blob>(run.entities[0]), Some(&Blob(vec![1; BLOB_BYTES])), "as captured");
        assert_eq!(run.world.get::<Blob>(run.entities[0]), Some(&Blob(vec![2; BLOB_BYTES])), "changed since");
        // Ticks go on meanwhile: the last entity is despawned, one in a later piece changes again.
        run.world.despawn(run.entities[39]);
        run.change_range(30..31);
        run.tick();
        assert_eq!(run.source.stats().rounds, 1, "no second round while the first is being encoded");
        let rest = run.drain();
        assert!(delta_rounds(&rest) == vec![1] && rest.len() >= 4, "the other pieces: {}", rest.len());
        assert!(!run.source.encodes_on_poll());
        let parts: Vec<u32> = rest
            .iter()
            .filter_map(|message| match message {
                Message::Delta { part, .. } => Some(*part),
                _ => None,
            })
            .collect();
        assert_eq!(parts, (1..=parts.len() as u32).collect::<Vec<_>>(), "parts numbered across the round");
        apply_bulk(&mut target, &rest);
        run.now += Duration::from_millis(10);
        run.acknowledge();
        assert_eq!(run.source.stats().delivery_bytes_per_second, None, "a piecewise round is not measured");
        // The next round carries what changed since round 1 was read; it fits and is the final one,
        // and the target then holds the source's world.
        run.change(1);
        run.tick();
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        let last = run.drain();
        apply_bulk(&mut target, &last);
        let Some(Message::Freeze { digest, round: 2, .. }) = last.last() else { panic!("the freeze: {last:?}") };
        assert_eq!(target.digest().0, *digest);
        assert!(run.source.stats().delta_bytes > 40 * BLOB_BYTES as u64);
    }

    /// Chunks big enough that rounds over four budgets (20 kB) stay under two chunks.
    fn big_chunks() -> SourceConfig {
        SourceConfig { chunk: ChunkConfig { target_chunk_bytes: 32_000, max_chunk_bytes: 64_000 }, ..config() }
    }

    #[test]
    fn a_round_that_cannot_be_the_final_one_is_encoded_away_from_the_tick_and_sent_as_an_ordinary_one() {
        let (mut run, mut target) = Run::snapshot_applied(big_chunks());
        // 30 entities, about 30 kB: over four budgets, under two chunks. The tick only captures it.
        run.change(30);
        run.tick();
        assert!(run.source.poll_message(&mut run.world).is_none() && !run.source.encodes_on_poll());
        let job = run.source.poll_encode().expect("the round, to encode");
        assert_eq!(run.source.stats().rounds, 0, "decided once encoded");
        // Ticks go on; no round is read while it is out.
        run.change_range(0..1);
        run.tick();
        assert!(run.source.poll_encode().is_none());
        // Another attempt's result is not this one's.
        let stale = EncodedRound { handoff: 40, round: 1, result: Ok(Vec::new()), took: Duration::ZERO };
        run.source.handle_encoded(run.now, &mut run.world, stale);
        assert!(run.source.poll_message(&mut run.world).is_none());
        run.source.handle_encoded(run.now, &mut run.world, job.run());
        let first = run.drain();
        assert_eq!(delta_rounds(&first), vec![1]);
        assert!(delta_bytes(&first) > 4 * BUDGET as u64 && run.source.stats().rounds == 1);
        assert!(!first.iter().any(|message| matches!(message, Message::Freeze { .. })));
        apply_bulk(&mut target, &first);
        run.now += Duration::from_millis(20);
        run.acknowledge();
        // Measured from when its encoding began (here at the next tick, 50 ms after the read),
        // not from the read: its wait for a free thread is not the link's.
        let rate = run.source.stats().delivery_bytes_per_second.expect("measured") as f64;
        let bytes = delta_bytes(&first) as f64;
        assert!(rate <= bytes / 0.020 && rate > bytes / 0.030, "{rate} for {bytes} bytes applied 20 ms after");
        // The next round (what changed since round 1 was read) fits: the final one.
        run.change(1);
        run.tick();
        let last = run.drain();
        apply_bulk(&mut target, &last);
        let Some(Message::Freeze { digest, round: 2, .. }) = last.last() else { panic!("the freeze: {last:?}") };
        assert_eq!(target.digest().0, *digest);
    }

    #[test]
    fn a_round_encoded_away_that_fits_is_not_the_final_one_and_the_next_is_encoded_at_its_tick() {
        let mut run = Run::rounds(big_chunks());
        // 30 small values: estimated from the snapshot's thousand bytes an entity (30 kB), about
        // 1 kB once encoded.
        let small = |run: &mut Run| {
            run.changed += 1;
            for entity in run.entities[..30].iter().copied() {
                run.world.insert(entity, Blob(vec![run.changed; 10])).unwrap();
            }
        };
        small(&mut run);
        run.tick();
        let round = run.drain();
        assert!(delta_bytes(&round) <= BUDGET as u64, "it fits: {}", delta_bytes(&round));
        assert!(!round.iter().any(|message| matches!(message, Message::Freeze { .. })), "read two ticks ago");
        run.acknowledge();
        small(&mut run);
        run.tick();
        assert!(run.source.poll_encode().is_none(), "encoded at its tick");
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert!(matches!(run.drain().last(), Some(Message::Freeze { round: 2, .. })));
    }

    #[test]
    fn a_round_or_piece_that_could_not_be_encoded_elsewhere_ends_the_handoff() {
        let failed = |round| EncodedRound {
            handoff: 41,
            round,
            result: Err(codec::CodecError::Encode("the encoder panicked".into())),
            took: Duration::ZERO,
        };
        let expected =
            abort(Culprit::Source, Phase::Rounds, "encoding delta round 1: encoding failed: the encoder panicked");
        // A whole round.
        let mut run = Run::rounds(big_chunks());
        run.change(30);
        run.tick();
        drop(run.source.poll_encode().expect("the round, to encode"));
        run.source.handle_encoded(run.now, &mut run.world, failed(1));
        assert_eq!(run.resumed().2, expected);
        assert!(run.source.poll_encode().is_none());
        assert!(matches!(run.drain().as_slice(), [Message::Abort { .. }]), "the target is told");
        // A piece of a piecewise round.
        let mut run = Run::rounds(config());
        run.change(40);
        run.tick();
        assert!(run.source.poll_message(&mut run.world).is_none());
        drop(run.source.poll_encode().expect("the first piece, to encode"));
        run.source.handle_encoded(run.now, &mut run.world, failed(1));
        assert_eq!(run.resumed().2, expected);
    }

    #[test]
    fn a_round_encoded_after_the_attempt_ended_is_dropped() {
        let mut run = Run::rounds(big_chunks());
        run.change(30);
        run.tick();
        let job = run.source.poll_encode().expect("the round, to encode");
        run.source.cancel(run.now, &mut run.world, "the operator changed their mind");
        assert_eq!(run.source.phase(), SourcePhase::Aborted);
        let before = run.drain();
        run.source.handle_encoded(run.now, &mut run.world, job.run());
        assert!(run.drain().is_empty(), "nothing after the abort: {before:?}");
        assert_eq!((run.source.stats().rounds, run.source.stats().delta_bytes), (0, 0));
    }

    #[test]
    fn silence_counts_only_while_a_reply_is_due() {
        // Prepare: the target must answer (silence, 3 s, comes before the prepare limit, 5 s).
        let mut run = Run::prepare(config());
        let start = run.now;
        assert_eq!(run.source.poll_timeout(), Some(start + Duration::from_secs(3)));
        run.after(Duration::from_secs(1));
        assert_eq!(run.source.phase(), SourcePhase::Prepare, "a timer called early changes nothing");
        assert_eq!(run.actions(), Vec::new());
        // Rounds with everything applied: nothing is due from the target, only the transfer limit.
        let mut run = Run::rounds(config());
        let start = run.source.started;
        run.round(9);
        assert_eq!(run.source.poll_timeout(), Some(start + Duration::from_secs(120)));
        run.after(Duration::from_secs(10));
        assert_eq!(run.source.phase(), SourcePhase::Rounds, "a quiet target with nothing to apply is not silent");
        // A round in flight: silence counts from the last message.
        run.change(9);
        run.tick();
        run.drain();
        let heard = run.now;
        run.receive(Message::Progress { handoff: 41, applied_bytes: 0 });
        assert_eq!(run.source.poll_timeout(), Some(heard + Duration::from_secs(3)));
        run.after(Duration::from_secs(3));
        let reason = run.source.abort_reason().cloned().unwrap();
        assert_eq!(reason, abort(Culprit::Link, Phase::Rounds, "the target went silent"));
    }

    #[test]
    fn a_frozen_source_waits_for_a_reply_even_with_everything_applied() {
        let mut run = Run::frozen();
        run.after(Duration::from_secs(1));
        run.acknowledge();
        let heard = run.now;
        assert_eq!(run.source.poll_timeout(), Some(heard + Duration::from_secs(3)), "silence before the commit limit");
        run.after(Duration::from_secs(3));
        run.authority_asked();
        assert_eq!(
            run.source.abort_reason().cloned().unwrap(),
            abort(Culprit::Target, Phase::Freeze, "the target went silent after the freeze")
        );
    }

    #[test]
    fn limits_name_who_missed_them() {
        let slow =
            SourceConfig { timeouts: Timeouts { silence: Duration::from_secs(60), ..config().timeouts }, ..config() };
        let mut run = Run::prepare(slow);
        run.after(Duration::from_secs(5));
        let reason = run.resumed().2;
        assert_eq!(reason, abort(Culprit::Target, Phase::Prepare, "the target did not accept in time"));
        let mut run = Run::rounds(slow);
        run.round(30);
        run.after(Duration::from_secs(120));
        let reason = run.resumed().2;
        assert_eq!(reason, abort(Culprit::Link, Phase::Rounds, "the transfer did not finish in time"));
        let mut run = Run::frozen_with(slow);
        run.after(Duration::from_secs(10));
        run.authority_asked();
        assert_eq!(
            run.source.abort_reason().cloned().unwrap(),
            abort(Culprit::Target, Phase::Freeze, "the target did not commit in time")
        );
    }

    #[test]
    fn a_lost_link_before_the_freeze_resumes_the_region_at_once_and_names_the_phase() {
        for rounds in [false, true] {
            let mut run = Run::snapshot(config());
            if rounds {
                run.drain();
                run.acknowledge();
                run.round(30);
            }
            run.source.handle_link_lost(run.now, &mut run.world);
            assert_eq!(run.source.phase(), SourcePhase::Aborted);
            assert_eq!(run.drain(), Vec::new(), "nothing is sent on a lost link");
            let (epoch, _, reason) = run.resumed();
            assert_eq!(epoch, Epoch(4));
            let phase = if rounds { Phase::Rounds } else { Phase::Snapshot };
            assert_eq!(reason, AbortReason { culprit: Culprit::Link, phase, reason: "link to the target lost".into() });
        }
    }

    #[test]
    fn a_lost_link_after_the_freeze_asks_the_authority_and_keeps_the_inputs() {
        let mut run = Run::frozen();
        run.source.handle_link_lost(run.now, &mut run.world);
        run.authority_asked();
        let reason = run.source.abort_reason().cloned().unwrap();
        assert_eq!((reason.culprit, reason.phase), (Culprit::Link, Phase::Freeze));
        assert_eq!(run.source.handle_input(input(1)), None);
        // The target's commit won before the link broke: the inputs go to the driver to route.
        run.conflict("target", 5);
        assert_eq!(run.actions(), vec![SourceAction::HandedOff { epoch: Epoch(5), undelivered: vec![input(1)] }]);
        assert_eq!(run.drain(), Vec::new());
        // Later inputs too.
        assert_eq!(run.source.handle_input(input(2)), None);
        assert_eq!(run.source.take_undelivered(), vec![input(2)]);
        assert_eq!(run.source.take_undelivered(), Vec::new());
    }

    #[test]
    fn the_commit_of_another_epoch_is_not_this_handoffs() {
        let mut run = Run::frozen();
        run.receive(Message::Committed { handoff: 41, epoch: 9 });
        assert_eq!(run.source.phase(), SourcePhase::Frozen);
        assert_eq!(run.actions(), Vec::new());
    }

    #[test]
    fn inputs_after_the_commit_go_to_the_new_owner_until_the_grace_ends() {
        let mut run = Run::frozen();
        let frozen_at = run.now;
        assert_eq!(run.source.handle_input(input(1)), None, "held while frozen");
        run.after(Duration::from_millis(3));
        run.receive(Message::Committed { handoff: 41, epoch: 5 });
        assert_eq!(run.actions(), vec![SourceAction::HandedOff { epoch: Epoch(5), undelivered: Vec::new() }]);
        assert_eq!(run.source.stats().freeze, Some(run.now - frozen_at));
        assert_eq!(run.drain(), vec![Message::Stragglers { handoff: 41, inputs: vec![input(1)] }]);
        assert_eq!(run.source.handle_input(input(2)), None);
        assert_eq!(run.drain(), vec![Message::Stragglers { handoff: 41, inputs: vec![input(2)] }]);
        assert_eq!(run.source.take_undelivered(), Vec::new());
        // The grace period.
        let committed = run.now;
        assert_eq!(run.source.poll_timeout(), Some(committed + Duration::from_secs(2)));
        run.after(Duration::from_secs(1));
        assert_eq!(run.source.phase(), SourcePhase::HandedOff);
        run.after(Duration::from_secs(1));
        assert_eq!(run.actions(), vec![SourceAction::Retire]);
        assert!(run.source.is_finished());
        assert_eq!(run.source.handle_input(input(3)), None);
        assert_eq!(run.drain(), Vec::new(), "the link is not used after the grace");
        assert_eq!(run.source.take_undelivered(), vec![input(3)]);
    }

    #[test]
    fn a_commit_without_held_inputs_sends_no_stragglers() {
        let mut run = Run::handed_off();
        assert_eq!(run.drain(), Vec::new());
        run.source.handle_link_lost(run.now, &mut run.world);
        assert_eq!(run.source.phase(), SourcePhase::HandedOff, "the region is the target's all the same");
        assert_eq!(run.source.handle_input(input(1)), None);
        assert_eq!(run.drain(), Vec::new());
        assert_eq!(run.source.take_undelivered(), vec![input(1)]);
    }

    #[test]
    fn a_cancel_before_the_freeze_tells_the_target_and_resumes_at_once() {
        let mut run = Run::rounds(config());
        run.round(30);
        run.source.cancel(run.now, &mut run.world, "drain cancelled");
        assert_eq!(run.drain(), vec![Message::Abort { handoff: 41, reason: "drain cancelled".into() }]);
        let reason = run.resumed().2;
        assert_eq!(reason, abort(Culprit::Source, Phase::Rounds, "drain cancelled"));
        // A finished handoff ignores a cancel.
        run.source.cancel(run.now, &mut run.world, "again");
        assert_eq!((run.drain(), run.actions()), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_cancel_after_the_freeze_tells_the_target_and_asks_the_authority() {
        let mut run = Run::frozen();
        run.source.cancel(run.now, &mut run.world, "operator");
        assert_eq!(run.drain(), vec![Message::Abort { handoff: 41, reason: "operator".into() }]);
        run.authority_asked();
        let reason = run.source.abort_reason().cloned().unwrap();
        assert_eq!(reason, abort(Culprit::Source, Phase::Freeze, "operator"));
        assert_eq!(run.source.handle_input(input(1)), None);
        run.source.handle_authority(run.now, Ok(()));
        let (epoch, held, resumed) = run.resumed();
        assert_eq!((epoch, held, resumed), (Epoch(5), vec![input(1)], reason));
    }

    #[test]
    fn a_reclaim_that_conflicts_is_read_by_who_holds_the_region() {
        // A third instance: fenced for good.
        let mut run = Run::frozen();
        run.after(Duration::from_secs(10));
        run.authority_asked();
        run.conflict("third", 5);
        assert_eq!(run.actions(), vec![SourceAction::Fenced { owner: "third".into(), epoch: Epoch(5) }]);
        assert_eq!(run.source.phase(), SourcePhase::Retired);
        assert_eq!(run.source.abort_reason().unwrap().culprit, Culprit::Authority);
        // Ourselves at the next epoch: an earlier reclaim went through.
        let mut run = Run::frozen();
        run.after(Duration::from_secs(10));
        run.authority_asked();
        run.conflict("source", 5);
        assert_eq!(run.resumed().0, Epoch(5));
        // The target at the next epoch: its commit won and its report was lost.
        let mut run = Run::frozen();
        run.after(Duration::from_secs(10));
        run.authority_asked();
        run.conflict("target", 5);
        assert_eq!(run.actions(), vec![SourceAction::HandedOff { epoch: Epoch(5), undelivered: Vec::new() }]);
    }

    #[test]
    fn an_unavailable_authority_is_asked_again_after_the_retry_interval() {
        let mut run = Run::frozen();
        run.after(Duration::from_secs(10));
        run.authority_asked();
        run.source.handle_authority(run.now, Err(AuthorityError::Unavailable("down".into())));
        assert_eq!(run.source.poll_timeout(), Some(run.now + Duration::from_millis(50)));
        assert_eq!(run.actions(), Vec::new());
        run.after(Duration::from_millis(50));
        run.authority_asked();
        // An answer while not settling (a late duplicate) changes nothing.
        let mut run = Run::rounds(config());
        run.round(30);
        run.source.handle_authority(run.now, Ok(()));
        assert_eq!(run.source.phase(), SourcePhase::Rounds);
        assert_eq!(run.actions(), Vec::new());
    }
}
