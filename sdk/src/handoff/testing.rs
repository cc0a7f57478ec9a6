//! A deterministic harness that moves a region between two in-process instances over a simulated
//! link, on a virtual clock, with faults — so a game can test its own region's handoff without
//! sockets. Baton's own protocol tests use it too.
//!
//! Both instances are the production [`RegionNode`]s the runtime drives; the harness plays every
//! other part: the link (latency, bandwidth, partition), the authority (which can be made
//! unavailable), a minimal gateway (inputs go to whichever side owns the region; during the freeze
//! the gateway holds them and replays them to the owner afterwards; bounced inputs are routed
//! again), and the drivers of both sides (carrying out each node's outputs).
//! It records every tick and every applied input, and [`HandoffPair::check_invariants`] verifies
//! single authority, exactly-once in-order inputs and tick continuity from that record.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_wire::serve::HandoffTicks;
use baton_wire::upstream::ServerMessage;
use baton_wire::{Epoch, PlayerId, PlayerInput, RegionId};

use super::authority::{AuthorityError, InMemoryAuthority, Ownership, OwnershipAuthority};
use super::message::Message;
use super::source::{EncodedRound, HandoffSource, SourceConfig, SourcePhase};
use super::target::TargetPhase;
use crate::RegionError;
use crate::node::{GatewayRequest, HostEvent, NoGateways, NodeSettings, Output, PlayerSettings, RegionNode, Role};
use crate::physics::BuiltEngine;
use crate::region::{Region, RegionLogic, TickSchedule};
use crate::world::WorldDigest;

/// Which instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The instance the region moves from.
    Source,
    /// The instance it moves to.
    Target,
}

/// The simulated link.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// One-way latency.
    pub latency: Duration,
    /// Bytes per second in each direction.
    pub bytes_per_second: u64,
    /// Drop everything, silently, in both directions.
    pub partitioned: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link { latency: Duration::from_micros(100), bytes_per_second: 50_000_000, partitioned: false }
    }
}

/// Something that happened, for assertions and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A side ran tick `tick` at `at` (offset from the start).
    Tick {
        /// Who ticked.
        side: Side,
        /// The tick number.
        tick: u64,
        /// When, from the harness's start.
        at: Duration,
    },
    /// The handoff committed at `epoch`.
    Committed(Epoch),
    /// The source resumed after an abort.
    Resumed(String),
    /// The target discarded its state.
    Discarded(String),
    /// A side answered a gateway's request (a join, an arrival) with `message`.
    ToGateway {
        /// Who answered.
        side: Side,
        /// The answer.
        message: ServerMessage,
    },
    /// The source handed the region off, with its ticks before and during the handoff.
    HandedOff(HandoffTicks),
}

/// Two instances of a region and everything between them.
pub struct HandoffPair<L: RegionLogic> {
    start: Instant,
    now: Instant,
    region: RegionId,
    /// The source instance: the production [`RegionNode`] that owns the region at first.
    pub source: RegionNode<L>,
    /// The target instance: a pre-warmed production [`RegionNode`].
    pub target: RegionNode<L>,
    /// The ownership authority.
    pub authority: InMemoryAuthority,
    /// When true, every authority call answers "unavailable".
    pub authority_down: bool,
    /// How long the authority takes to answer (0: at once); answers arrive as events on the
    /// virtual clock, as they come back through the region's channel in production.
    pub authority_latency: Duration,
    /// When true, the gateway does not hold inputs during the freeze: they reach the frozen
    /// source, as inputs in flight do before the gateway hears of the freeze, and the source
    /// must hold them and forward them to the new owner (or apply them if it resumes).
    pub inputs_reach_frozen_source: bool,
    /// How many inputs reached the frozen source that way.
    pub inputs_to_frozen_source: u64,
    /// How long a target's engine build takes (0: it is built at once); the engine comes back to
    /// the node as an event on the virtual clock, as it does from the runtime's blocking thread.
    pub engine_build_time: Duration,
    /// Engine builds delivered so far, and the virtual time of the last.
    pub engines_built: (u64, Option<Duration>),
    /// How long a delta round sent away from the region's thread to be encoded takes to come back
    /// (0: at once), on the virtual clock, as it does from the runtime's blocking thread. The job
    /// runs at once; the time it reports having taken is its real one, so the source counts this
    /// delay as a wait for a free thread, not as encoding.
    pub encode_time: Duration,
    /// Rounds (or pieces) encoded away from the region's thread and delivered so far.
    pub rounds_encoded: u64,
    encodes: VecDeque<(Instant, Side, EncodedRound)>,
    authority_answers: VecDeque<(Instant, Side, Result<(), AuthorityError>)>,
    engine_builds: VecDeque<(Instant, Side, BuiltEngine)>,
    /// The link.
    pub link: Link,
    to_target: VecDeque<(Instant, Message)>,
    to_source: VecDeque<(Instant, Message)>,
    link_free: [Instant; 2],
    source_crashed: bool,
    target_crashed: bool,
    inputs: Box<dyn FnMut(u64) -> Vec<PlayerInput>>,
    input_clock: TickSchedule,
    input_round: u64,
    held_at_gateway: Vec<PlayerInput>,
    fenced: bool,
    sent: BTreeMap<PlayerId, u64>,
    applied: BTreeMap<PlayerId, Vec<u64>>,
    /// Everything that happened, in order.
    pub records: Vec<Record>,
    freeze_digest: Option<WorldDigest>,
    commit_digest: Option<WorldDigest>,
    next_handoff_id: u64,
}

/// The source's name at the authority.
const SOURCE: &str = "source";
/// The target's name at the authority.
const TARGET: &str = "target";

fn settings(name: &str, port: u16, start: Instant) -> NodeSettings {
    NodeSettings {
        name: name.to_owned(),
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        source: SourceConfig::default(),
        players: PlayerSettings::default(),
        checkpoint_every_ticks: 0,
        wall_clock: (start, 0),
    }
}

impl<L: RegionLogic + 'static> HandoffPair<L> {
    /// A pair: `source` is a populated, running region; `new_target` makes pre-warmed (empty)
    /// regions of the same game; `inputs(round)` gives the players' inputs sent at each 1/30 s.
    pub fn new(
        region: RegionId,
        source: Region<L>,
        mut new_target: Box<dyn FnMut() -> Region<L>>,
        inputs: Box<dyn FnMut(u64) -> Vec<PlayerInput>>,
    ) -> HandoffPair<L> {
        let start = Instant::now();
        let authority = InMemoryAuthority::new();
        let _ = authority.register(region, SOURCE);
        let interval = source.config().tick_interval();
        let target = new_target();
        let source = RegionNode::new(
            source,
            Role::Owner { epoch: Epoch(1) },
            settings(SOURCE, 1, start),
            // The source never discards the region it owns.
            Box::new(|region| Err(RegionError::Config(format!("the source of {region} is never re-warmed")))),
            start,
        );
        let target = RegionNode::new(
            target,
            Role::Target,
            settings(TARGET, 2, start),
            Box::new(move |_| Ok(new_target())),
            start,
        );
        let mut pair = HandoffPair {
            start,
            now: start,
            region,
            source,
            target,
            authority,
            authority_down: false,
            authority_latency: Duration::ZERO,
            engine_build_time: Duration::ZERO,
            engines_built: (0, None),
            authority_answers: VecDeque::new(),
            engine_builds: VecDeque::new(),
            encode_time: Duration::ZERO,
            rounds_encoded: 0,
            encodes: VecDeque::new(),
            link: Link::default(),
            to_target: VecDeque::new(),
            to_source: VecDeque::new(),
            link_free: [start; 2],
            source_crashed: false,
            target_crashed: false,
            inputs,
            input_clock: TickSchedule::new(interval, start + interval / 2),
            input_round: 0,
            held_at_gateway: Vec::new(),
            inputs_reach_frozen_source: false,
            inputs_to_frozen_source: 0,
            fenced: false,
            sent: BTreeMap::new(),
            applied: BTreeMap::new(),
            records: Vec::new(),
            freeze_digest: None,
            commit_digest: None,
            next_handoff_id: 1,
        };
        pair.pump();
        pair
    }

    /// The virtual time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Settings for the next handoff's source side.
    pub fn set_source_config(&mut self, config: SourceConfig) {
        self.source.set_source_config(config);
    }

    /// The source's handoff state, once started.
    #[must_use]
    pub fn source_phase(&self) -> Option<SourcePhase> {
        self.source.handoff().map(HandoffSource::phase)
    }

    /// The target's handoff state.
    #[must_use]
    pub fn target_phase(&self) -> TargetPhase {
        self.target.target_phase()
    }

    /// The current handoff's source side.
    #[must_use]
    pub fn handoff(&self) -> Option<&HandoffSource> {
        self.source.handoff()
    }

    /// Which side runs the region's ticks now (the target if both do; see
    /// [`HandoffPair::check_invariants`], which fails when both do).
    #[must_use]
    pub fn ticking(&self) -> Option<Side> {
        if self.target_ticks() {
            Some(Side::Target)
        } else if self.source_ticks() {
            Some(Side::Source)
        } else {
            None
        }
    }

    /// Whether the source instance runs ticks, by its own state alone.
    fn source_ticks(&self) -> bool {
        !self.source_crashed && self.source.ticks()
    }

    /// Whether the target instance runs ticks, by its own state alone.
    fn target_ticks(&self) -> bool {
        !self.target_crashed && self.target.ticks()
    }

    /// Starts moving the region from the source to the target.
    pub fn start_handoff(&mut self) {
        let id = self.next_handoff_id;
        self.next_handoff_id += 1;
        let peer = SocketAddr::from(([127, 0, 0, 1], 2));
        self.source.handle_start_handoff(self.now, peer, id);
        self.pump();
    }

    /// The target process dies (the source hears of the link's loss at once).
    pub fn crash_target(&mut self) {
        self.target_crashed = true;
        self.to_target.clear();
        self.to_source.clear();
        self.source.handle_link_lost(self.now);
        self.pump();
    }

    /// The source process dies (the target hears of the link's loss at once). Until
    /// failover exists, a region whose source dies before the commit is down: nobody may tick it.
    pub fn crash_source(&mut self) {
        self.source_crashed = true;
        self.to_target.clear();
        self.to_source.clear();
        self.held_at_gateway.clear();
        self.target.handle_link_lost(self.now);
        self.pump();
    }

    /// A third instance takes the region at the authority (an operator's forced move, a failover
    /// by a coordinator that thought the owner dead): both sides must then stay off it. The
    /// gateway routes the region's players to the new owner from now on, and both instances read
    /// the new owner from the authority (as the runtime does after each checkpoint): a handoff in
    /// flight learns it from its own commit's failed swap, an owner outside one lets the region go.
    pub fn steal_ownership(&mut self) {
        if let Ok(current) = self.authority.current(self.region) {
            let next = Ownership { owner: "intruder".to_owned(), epoch: current.epoch.next() };
            if self.authority.compare_and_swap(self.region, &current, &next).is_ok() {
                self.fenced = true;
                let now = self.now;
                if !self.source_crashed {
                    self.source.handle_ownership_seen(now, &next);
                }
                if !self.target_crashed {
                    self.target.handle_ownership_seen(now, &next);
                }
                self.pump();
            }
        }
    }

    /// Drops everything on the link from now on (no loss is reported; timeouts must notice).
    pub fn partition(&mut self) {
        self.link.partitioned = true;
        self.to_target.clear();
        self.to_source.clear();
    }

    /// Corrupts the target's world so the digest check at the freeze fails.
    pub fn corrupt_target(&mut self) {
        let world = self.target.region_mut().world_mut();
        let entity = world.spawn();
        let _ = entity;
    }

    /// A gateway's request (a join, a leave, an arrival) reaches `side` now; its answer is
    /// recorded as [`Record::ToGateway`].
    pub fn gateway_request(&mut self, side: Side, request: GatewayRequest) {
        let now = self.now;
        self.node(side).handle_gateway(now, request);
        self.pump();
    }

    /// Advances to the next event and processes it. Returns false when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        let mut next: Vec<Instant> = vec![self.input_clock.next_due()];
        if !self.source_crashed {
            next.extend(self.source.poll_timeout(now));
        }
        if !self.target_crashed {
            next.extend(self.target.poll_timeout(now));
        }
        next.extend(self.to_target.front().map(|(at, _)| *at));
        next.extend(self.to_source.front().map(|(at, _)| *at));
        next.extend(self.authority_answers.front().map(|(at, _, _)| *at));
        next.extend(self.engine_builds.front().map(|(at, _, _)| *at));
        next.extend(self.encodes.front().map(|(at, _, _)| *at));
        let Some(at) = next.into_iter().min() else {
            return false;
        };
        self.now = self.now.max(at);
        self.process_due();
        self.pump();
        true
    }

    /// Steps until `until` of virtual time has passed since the start.
    pub fn drive_until(&mut self, until: Duration) {
        let deadline = self.start + until;
        let mut steps = 0u64;
        while self.now < deadline {
            steps += 1;
            assert!(steps < 10_000_000, "livelock: {steps} steps without reaching {until:?}");
            if !self.step() {
                break;
            }
        }
    }

    /// Steps until `condition` holds or `limit` of virtual time passes; returns whether it held.
    pub fn drive_while(&mut self, limit: Duration, mut condition: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if condition(self) {
                return true;
            }
            if !self.step() {
                break;
            }
        }
        condition(self)
    }

    fn process_due(&mut self) {
        let now = self.now;
        // Players send inputs at a fixed rate whoever owns the region.
        while self.input_clock.next_due() <= now {
            self.input_clock.start_tick(self.input_clock.next_due());
            let inputs = (self.inputs)(self.input_round);
            self.input_round += 1;
            for input in inputs {
                *self.sent.entry(input.player).or_default() = input.seq;
                self.route_input(input);
            }
        }
        while self.to_target.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, message)) = self.to_target.pop_front()
                && !self.target_crashed
            {
                self.target.handle_peer_message(now, message);
            }
        }
        while self.authority_answers.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, side, result)) = self.authority_answers.pop_front() {
                let crashed = match side {
                    Side::Source => self.source_crashed,
                    Side::Target => self.target_crashed,
                };
                if !crashed {
                    self.node(side).handle_authority(now, result);
                }
            }
        }
        while self.engine_builds.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, side, built)) = self.engine_builds.pop_front() {
                self.deliver_engine(side, built);
            }
        }
        while self.encodes.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, side, encoded)) = self.encodes.pop_front() {
                self.deliver_encoded(side, encoded);
            }
        }
        while self.to_source.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, message)) = self.to_source.pop_front()
                && !self.source_crashed
            {
                self.source.handle_peer_message(now, message);
            }
        }
        if !self.source_crashed {
            self.source.handle_timeout(now, &NoGateways);
        }
        if !self.target_crashed {
            self.target.handle_timeout(now, &NoGateways);
        }
    }

    fn record_tick(&mut self, side: Side, tick: u64, applied: &[(PlayerId, u64)]) {
        self.records.push(Record::Tick { side, tick, at: self.now - self.start });
        for (player, seq) in applied {
            self.applied.entry(*player).or_default().push(*seq);
        }
    }

    /// Where the harness's gateway sends an input now: the owner; nobody while the source is
    /// frozen (the gateway holds it) or when the region left the pair.
    fn destination(&self) -> Option<Side> {
        if self.fenced {
            return None;
        }
        if self.target.target_phase() == TargetPhase::Authoritative && !self.target.is_finished() {
            return (!self.target_crashed).then_some(Side::Target);
        }
        if self.source_crashed || self.fenced || self.source.is_finished() || self.source.is_frozen() {
            return None;
        }
        Some(Side::Source)
    }

    fn route_input(&mut self, input: PlayerInput) {
        // The harness's gateway: the owner gets inputs; while the source is frozen the gateway
        // holds them and replays them, in order, to whoever owns the region afterwards.
        match self.destination() {
            Some(Side::Target) => self.target.handle_input(self.now, input),
            Some(Side::Source) => self.source.handle_input(self.now, input),
            None if self.source.is_frozen() && !self.source_crashed => {
                if self.inputs_reach_frozen_source {
                    self.inputs_to_frozen_source += 1;
                    self.source.handle_input(self.now, input);
                } else {
                    self.held_at_gateway.push(input);
                }
            }
            None => {}
        }
    }

    fn send(&mut self, to: Side, message: Message) {
        if self.link.partitioned || self.source_crashed || self.target_crashed {
            return;
        }
        let direction = usize::from(to == Side::Source);
        let size = message.archive_bytes() as u64 + 64;
        let transmit = Duration::from_secs_f64(size as f64 / self.link.bytes_per_second.max(1) as f64);
        let departs = self.link_free[direction].max(self.now) + transmit;
        self.link_free[direction] = departs;
        let arrives = departs + self.link.latency;
        match to {
            Side::Target => self.to_target.push_back((arrives, message)),
            Side::Source => self.to_source.push_back((arrives, message)),
        }
    }

    /// Carries out what both nodes ask, as the runtime's drivers do, until both are quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            for side in [Side::Source, Side::Target] {
                let crashed = match side {
                    Side::Source => self.source_crashed,
                    Side::Target => self.target_crashed,
                };
                if crashed {
                    continue;
                }
                let output = match side {
                    Side::Source => self.source.poll_output(self.now),
                    Side::Target => self.target.poll_output(self.now),
                };
                if let Some(output) = output {
                    busy = true;
                    self.carry_out(side, output);
                }
            }
            if !busy {
                break;
            }
        }
        // The source freezes once its tick's outputs are out (protocol.md §4), in the loop above.
        if !self.source_crashed && self.freeze_digest.is_none() && self.source_phase() == Some(SourcePhase::Frozen) {
            self.freeze_digest = Some(self.source.region_mut().world_mut().digest());
        }
    }

    /// Hands a built engine to `side`'s node, unless that side crashed meanwhile.
    fn deliver_engine(&mut self, side: Side, built: BuiltEngine) {
        let crashed = match side {
            Side::Source => self.source_crashed,
            Side::Target => self.target_crashed,
        };
        if !crashed {
            self.engines_built = (self.engines_built.0 + 1, Some(self.now - self.start));
            let now = self.now;
            self.node(side).handle_engine_built(now, built);
        }
    }

    /// Rounds (or pieces) out being encoded away from the region's thread now.
    #[must_use]
    pub fn encodes_out(&self) -> usize {
        self.encodes.len()
    }

    /// Hands an encoded round to `side`'s node, unless that side crashed meanwhile.
    fn deliver_encoded(&mut self, side: Side, encoded: EncodedRound) {
        let crashed = match side {
            Side::Source => self.source_crashed,
            Side::Target => self.target_crashed,
        };
        if !crashed {
            self.rounds_encoded += 1;
            let now = self.now;
            self.node(side).handle_encoded(now, encoded);
        }
    }

    fn node(&mut self, side: Side) -> &mut RegionNode<L> {
        match side {
            Side::Source => &mut self.source,
            Side::Target => &mut self.target,
        }
    }

    fn carry_out(&mut self, side: Side, output: Output) {
        let now = self.now;
        let other = match side {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        };
        match output {
            Output::ToPeer(message) => self.send(other, message),
            Output::Authority { expected, next, .. } => {
                // The swap happens when it is asked; the answer travels back for
                // `authority_latency` (a slow answer must not be taken for a failed swap).
                let result = if self.authority_down {
                    Err(AuthorityError::Unavailable("the authority is down (harness)".to_owned()))
                } else {
                    self.authority.compare_and_swap(self.region, &expected, &next)
                };
                if self.authority_latency.is_zero() {
                    self.node(side).handle_authority(now, result);
                } else {
                    self.authority_answers.push_back((now + self.authority_latency, side, result));
                }
            }
            // Built here, delivered after `engine_build_time` of virtual time: the clock never
            // races a real thread.
            Output::BuildEngine(build) => {
                let built = build.run();
                if self.engine_build_time.is_zero() {
                    self.deliver_engine(side, built);
                } else {
                    self.engine_builds.push_back((now + self.engine_build_time, side, built));
                }
            }
            // Encoded here, delivered after `encode_time` of virtual time, as engines are.
            Output::EncodeRound(job) => {
                let encoded = job.run();
                if self.encode_time.is_zero() {
                    self.deliver_encoded(side, encoded);
                } else {
                    self.encodes.push_back((now + self.encode_time, side, encoded));
                }
            }
            Output::Ticked(report) => self.record_tick(side, report.tick, &report.applied),
            Output::Bounce(ServerMessage::Bounced { player, seq, payload, .. }, _) => {
                // The gateway routes a bounced input again, unless that would hand it straight
                // back to the side that refused it.
                let input = PlayerInput { player, seq, payload };
                if self.destination() != Some(side) {
                    self.route_input(input);
                }
            }
            Output::Event(HostEvent::Aborted { reason, owning: true, .. }) => {
                self.records.push(Record::Resumed(reason));
                // A later attempt freezes again; its commit is compared with that freeze.
                self.freeze_digest = None;
                for input in std::mem::take(&mut self.held_at_gateway) {
                    self.route_input(input);
                }
            }
            Output::Event(HostEvent::Aborted { reason, owning: false, .. }) => match side {
                Side::Target => self.records.push(Record::Discarded(reason)),
                Side::Source => self.fenced = true,
            },
            Output::Event(HostEvent::Authoritative { epoch, .. }) => {
                self.records.push(Record::Committed(epoch));
                // Same state: what the target took over, before its first tick.
                self.commit_digest = Some(self.target.region_mut().world_mut().digest());
                for input in std::mem::take(&mut self.held_at_gateway) {
                    self.route_input(input);
                }
            }
            Output::ToGateway { message, .. } => self.records.push(Record::ToGateway { side, message }),
            Output::Event(HostEvent::HandedOff { ticks, .. }) => self.records.push(Record::HandedOff(*ticks)),
            // This harness runs two instances and no standby; standbys have their own tests.
            Output::Connect { .. }
            | Output::ConnectStandby { .. }
            | Output::ToStandby(_)
            | Output::Owned { .. }
            | Output::NotOwned
            | Output::ToPlayers(_)
            | Output::CrossingAgain { .. }
            | Output::Broadcast(_)
            | Output::Attach { .. }
            | Output::Bounce(..)
            | Output::StoreCheckpoint { .. }
            | Output::SaveAndStop { .. }
            | Output::Event(_)
            | Output::Finished => {}
        }
    }

    /// Checks the brief's invariants over everything recorded, after the run settled:
    /// - single authority: every tick number was run by exactly one side, and the region's owner
    ///   at the authority is the side that ticks now;
    /// - no input lost or applied twice: per player, the applied sequence numbers are exactly
    ///   `1..=n`, in order, and at most 4 sent inputs are not applied yet (in flight);
    /// - same state: the target's world at the commit equals the source's at the freeze (the
    ///   protocol checks the digest; this re-checks it from outside, with digests taken by the
    ///   harness);
    /// - tick continuity: tick numbers go up by one with no gap.
    ///
    /// Returns the number of ticks that started more than 1.5 tick intervals after the previous.
    pub fn check_invariants(&self) -> u64 {
        let mut last_tick: Option<(u64, Duration)> = None;
        let interval = self.source.region().config().tick_interval();
        let mut missed = 0;
        for record in &self.records {
            if let Record::Tick { side, tick, at } = record {
                if let Some((previous, previous_at)) = last_tick {
                    assert_eq!(
                        *tick,
                        previous + 1,
                        "tick {tick} on the {side:?} after tick {previous}: two owners or a gap"
                    );
                    assert!(*at >= previous_at, "ticks recorded out of order");
                    if *at > previous_at + interval * 3 / 2 {
                        missed += 1;
                    }
                }
                last_tick = Some((*tick, *at));
            }
        }
        assert!(!(self.source_ticks() && self.target_ticks()), "both instances tick the region: split brain");
        // Same state (invariant 4), from outside the protocol: a target that took the region over
        // holds exactly the world the source froze.
        if let Some(committed) = self.commit_digest {
            assert_eq!(Some(committed), self.freeze_digest, "the target took over a world other than the frozen one");
        }
        let owner = self.authority.current(self.region).ok();
        match self.ticking() {
            Some(Side::Source) => {
                assert_eq!(owner.map(|owner| owner.owner), Some(SOURCE.to_owned()), "the source ticks but does not own")
            }
            Some(Side::Target) => {
                assert_eq!(owner.map(|owner| owner.owner), Some(TARGET.to_owned()), "the target ticks but does not own")
            }
            None => {}
        }
        for (player, applied) in &self.applied {
            let expected: Vec<u64> = (1..=applied.len() as u64).collect();
            assert_eq!(applied, &expected, "inputs of {player} applied out of order or twice");
            let sent = self.sent.get(player).copied().unwrap_or(0);
            assert!(sent >= applied.len() as u64, "{player} had more inputs applied than sent");
            // A region taken by an instance outside the pair gets its inputs elsewhere; one whose
            // owner died (the source before a commit, the target after it) gets them nowhere: the
            // harness has no failover (the coordinator's; tests/tests/failover.rs).
            let region_lost = (self.source_crashed && self.commit_digest.is_none())
                || (self.target_crashed && self.commit_digest.is_some());
            if !self.fenced && !region_lost {
                assert!(sent - (applied.len() as u64) <= 4, "{player}: {sent} sent but only {} applied", applied.len());
            }
        }
        missed
    }

    /// Inputs that reached the region's current holder twice (dropped there) and inputs that
    /// reached it ahead of a gap, over all players, as its [`PlayerSession`]s count them. The
    /// holder is the side that ticks, else the target if it committed, else the source.
    ///
    /// [`PlayerSession`]: crate::sessions::PlayerSession
    #[must_use]
    pub fn arrivals(&self) -> (u64, u64) {
        let holder = match self.ticking() {
            Some(Side::Target) => &self.target,
            Some(Side::Source) => &self.source,
            None if self.commit_digest.is_some() => &self.target,
            None => &self.source,
        };
        holder
            .region()
            .world()
            .iter::<crate::sessions::PlayerSession>()
            .fold((0, 0), |(duplicates, early), (_, session)| (duplicates + session.duplicates, early + session.early))
    }

    /// Inputs sent and applied, over all players.
    #[must_use]
    pub fn input_counts(&self) -> (u64, u64) {
        (self.sent.values().sum(), self.applied.values().map(|applied| applied.len() as u64).sum())
    }

    /// The source's digest at the freeze, if it froze.
    #[must_use]
    pub fn freeze_digest(&self) -> Option<WorldDigest> {
        self.freeze_digest
    }

    /// The target's digest when it took the region over (before its first tick), if it did.
    #[must_use]
    pub fn commit_digest(&self) -> Option<WorldDigest> {
        self.commit_digest
    }

    /// The target's name at the authority.
    #[must_use]
    pub fn target_name(&self) -> &str {
        TARGET
    }

    /// The source's name at the authority.
    #[must_use]
    pub fn source_name(&self) -> &str {
        SOURCE
    }
}
