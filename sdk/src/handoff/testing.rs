//! A deterministic harness that moves a region between two in-process instances over a simulated
//! link, on a virtual clock, with faults — so a game can test its own region's handoff without
//! sockets. Baton's own protocol tests use it too.
//!
//! The harness plays every other part: the link (latency, bandwidth, partition), the authority
//! (which can be made unavailable), a minimal gateway (inputs go to whichever side owns the region,
//! and to the frozen source during the freeze, which holds them), and the drivers of both sides.
//! It records every tick and every applied input, and [`HandoffPair::check_invariants`] verifies
//! single authority, exactly-once in-order inputs and tick continuity from that record.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use baton_wire::{Epoch, PlayerId, PlayerInput, RegionId};

use super::authority::{AuthorityError, InMemoryAuthority, Ownership, OwnershipAuthority};
use super::message::Message;
use super::source::{HandoffPlan, HandoffSource, SourceAction, SourceConfig, SourcePhase};
use super::target::{HandoffTarget, TargetAction, TargetConfig, TargetPhase};
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
}

/// Two instances of a region and everything between them.
pub struct HandoffPair<L: RegionLogic> {
    start: Instant,
    now: Instant,
    /// The source instance's region.
    pub source: Region<L>,
    /// The target instance's region (pre-warmed: assets loaded, empty world).
    pub target: Region<L>,
    new_target: Box<dyn FnMut() -> Region<L>>,
    /// The ownership authority.
    pub authority: InMemoryAuthority,
    /// When true, every authority call answers "unavailable".
    pub authority_down: bool,
    /// The link.
    pub link: Link,
    source_name: String,
    target_name: String,
    handoff: Option<HandoffSource>,
    receiver: HandoffTarget,
    source_config: SourceConfig,
    source_schedule: TickSchedule,
    target_schedule: Option<TickSchedule>,
    source_ticking: bool,
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
    next_handoff_id: u64,
}

impl<L: RegionLogic> HandoffPair<L> {
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
        let _ = authority.register(region, "source");
        let interval = source.config().tick_interval();
        let target = new_target();
        HandoffPair {
            start,
            now: start,
            source,
            target,
            new_target,
            authority,
            authority_down: false,
            link: Link::default(),
            source_name: "source".to_owned(),
            target_name: "target".to_owned(),
            handoff: None,
            receiver: HandoffTarget::new(start, TargetConfig::new("target")),
            source_config: SourceConfig::default(),
            source_schedule: TickSchedule::new(interval, start),
            target_schedule: None,
            source_ticking: true,
            to_target: VecDeque::new(),
            to_source: VecDeque::new(),
            link_free: [start; 2],
            source_crashed: false,
            target_crashed: false,
            inputs,
            input_clock: TickSchedule::new(interval, start + interval / 2),
            input_round: 0,
            held_at_gateway: Vec::new(),
            fenced: false,
            sent: BTreeMap::new(),
            applied: BTreeMap::new(),
            records: Vec::new(),
            freeze_digest: None,
            next_handoff_id: 1,
        }
    }

    /// The virtual time since the start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Settings for the next handoff's source side.
    pub fn set_source_config(&mut self, config: SourceConfig) {
        self.source_config = config;
    }

    /// The source's handoff state, once started.
    #[must_use]
    pub fn source_phase(&self) -> Option<SourcePhase> {
        self.handoff.as_ref().map(HandoffSource::phase)
    }

    /// The target's handoff state.
    #[must_use]
    pub fn target_phase(&self) -> TargetPhase {
        self.receiver.phase()
    }

    /// The current handoff's source side.
    #[must_use]
    pub fn handoff(&self) -> Option<&HandoffSource> {
        self.handoff.as_ref()
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
        self.source_ticking && !self.source_crashed && self.handoff.as_ref().is_none_or(HandoffSource::allows_ticks)
    }

    /// Whether the target instance runs ticks, by its own state alone.
    fn target_ticks(&self) -> bool {
        self.target_schedule.is_some() && !self.target_crashed
    }

    /// Starts moving the region from the source to the target.
    pub fn start_handoff(&mut self) {
        let epoch = self.authority.current(self.source.id()).map(|ownership| ownership.epoch).unwrap_or(Epoch(1));
        let id = self.next_handoff_id;
        self.next_handoff_id += 1;
        let interval = self.source.config().tick_interval();
        let plan = HandoffPlan {
            id,
            region: self.source.id(),
            epoch,
            name: self.source_name.clone(),
            tick_interval: interval,
        };
        self.handoff = Some(HandoffSource::start(self.now, self.source.world(), plan, self.source_config));
        self.pump();
    }

    /// The target process dies (its link to the source reports the loss after `latency`).
    pub fn crash_target(&mut self) {
        self.target_crashed = true;
        self.to_target.clear();
        self.to_source.clear();
        if let Some(handoff) = self.handoff.as_mut() {
            handoff.handle_link_lost(self.now, self.source.world_mut());
        }
        self.pump();
    }

    /// A third instance takes the region at the authority (an operator's forced move, a buggy
    /// coordinator): both sides of the handoff must then stay off it.
    pub fn steal_ownership(&mut self) {
        if let Ok(current) = self.authority.current(self.source.id()) {
            let next = Ownership { owner: "intruder".to_owned(), epoch: current.epoch.next() };
            let _ = self.authority.compare_and_swap(self.source.id(), &current, &next);
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
        let world = self.target.world_mut();
        let entity = world.spawn();
        let _ = entity;
    }

    /// Advances to the next event and processes it. Returns false when nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let mut next: Vec<Instant> = vec![self.input_clock.next_due()];
        if self.source_ticks() {
            next.push(self.source_schedule.next_due());
        }
        if let Some(schedule) = &self.target_schedule
            && self.target_ticks()
        {
            next.push(schedule.next_due());
        }
        next.extend(self.to_target.front().map(|(at, _)| *at));
        next.extend(self.to_source.front().map(|(at, _)| *at));
        if let Some(handoff) = &self.handoff
            && !self.source_crashed
        {
            next.extend(handoff.poll_timeout());
        }
        if !self.target_crashed {
            next.extend(self.receiver.poll_timeout());
        }
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
                self.receiver.handle_message(now, self.target.world_mut(), message);
            }
        }
        while self.to_source.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, message)) = self.to_source.pop_front()
                && !self.source_crashed
                && let Some(handoff) = self.handoff.as_mut()
            {
                handoff.handle_message(now, self.source.world_mut(), message);
            }
        }
        if let Some(handoff) = self.handoff.as_mut()
            && !self.source_crashed
            && handoff.poll_timeout().is_some_and(|at| at <= now)
        {
            handoff.handle_timeout(now, self.source.world_mut());
        }
        if !self.target_crashed && self.receiver.poll_timeout().is_some_and(|at| at <= now) {
            self.receiver.handle_timeout(now);
        }
        if self.source_ticks() && self.source_schedule.next_due() <= now {
            self.source_schedule.start_tick(now);
            let report = self.source.tick();
            self.record_tick(Side::Source, report.tick, &report.applied);
            let next_due = self.source_schedule.next_due();
            if let Some(handoff) = self.handoff.as_mut() {
                handoff.handle_tick_completed(now, self.source.world_mut(), next_due);
                if handoff.phase() == SourcePhase::Frozen && self.freeze_digest.is_none() {
                    self.freeze_digest = Some(self.source.world_mut().digest());
                }
            }
        }
        let target_ticks = self.target_ticks();
        if let Some(schedule) = self.target_schedule.as_mut()
            && target_ticks
            && schedule.next_due() <= now
        {
            schedule.start_tick(now);
            let report = self.target.tick();
            self.record_tick(Side::Target, report.tick, &report.applied);
        }
    }

    fn record_tick(&mut self, side: Side, tick: u64, applied: &[(PlayerId, u64)]) {
        self.records.push(Record::Tick { side, tick, at: self.now - self.start });
        for (player, seq) in applied {
            self.applied.entry(*player).or_default().push(*seq);
        }
    }

    fn route_input(&mut self, input: PlayerInput) {
        // The harness's gateway: the owner gets inputs; while the source is frozen the gateway
        // holds them and replays them, in order, to whoever owns the region afterwards.
        if self.target_schedule.is_some() {
            if !self.target_crashed {
                let _ = self.target.submit_input(input);
            }
            return;
        }
        if self.source_crashed || self.fenced {
            return;
        }
        if self.handoff.as_ref().is_some_and(|handoff| !handoff.allows_ticks()) {
            self.held_at_gateway.push(input);
            return;
        }
        let input = match self.handoff.as_mut() {
            Some(handoff) => handoff.handle_input(input),
            None => Some(input),
        };
        if let Some(input) = input {
            let _ = self.source.submit_input(input);
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

    /// Drains messages and actions of both sides until both are quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            if !self.source_crashed
                && let Some(handoff) = self.handoff.as_mut()
            {
                if let Some(message) = handoff.poll_message(self.source.world_mut()) {
                    self.send(Side::Target, message);
                    busy = true;
                }
                if let Some(action) = self.handoff.as_mut().and_then(HandoffSource::poll_action) {
                    self.source_action(action);
                    busy = true;
                }
            }
            if !self.target_crashed {
                if let Some(message) = self.receiver.poll_message() {
                    self.send(Side::Source, message);
                    busy = true;
                }
                if let Some(action) = self.receiver.poll_action() {
                    self.target_action(action);
                    busy = true;
                }
            }
            if !busy {
                break;
            }
        }
    }

    fn authority_cas(&self, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
        if self.authority_down {
            return Err(AuthorityError::Unavailable("the authority is down (harness)".to_owned()));
        }
        self.authority.compare_and_swap(self.source.id(), expected, next)
    }

    fn source_action(&mut self, action: SourceAction) {
        match action {
            SourceAction::Authority { expected, next } => {
                let result = self.authority_cas(&expected, &next);
                if let Some(handoff) = self.handoff.as_mut() {
                    handoff.handle_authority(self.now, result);
                }
            }
            SourceAction::Resume { held, reason, .. } => {
                self.records.push(Record::Resumed(reason.to_string()));
                // The source ticks again on its own schedule, from the next slot.
                self.source_schedule = TickSchedule::new(
                    self.source.config().tick_interval(),
                    self.source_schedule.next_due().max(self.now),
                );
                for input in held.into_iter().chain(std::mem::take(&mut self.held_at_gateway)) {
                    let _ = self.source.submit_input(input);
                }
            }
            SourceAction::HandedOff { undelivered, .. } => {
                self.source_ticking = false;
                for input in undelivered {
                    let _ = self.target.submit_input(input);
                }
            }
            SourceAction::Retire => {}
            SourceAction::Fenced { .. } => {
                self.source_ticking = false;
                self.fenced = true;
            }
        }
    }

    fn target_action(&mut self, action: TargetAction) {
        match action {
            TargetAction::Authority { expected, next } => {
                let result = self.authority_cas(&expected, &next);
                self.receiver.handle_authority(self.now, result);
            }
            TargetAction::Authoritative { epoch, first_tick_at, .. } => {
                self.records.push(Record::Committed(epoch));
                self.target.rebuild_caches();
                self.target_schedule = Some(TickSchedule::new(self.target.config().tick_interval(), first_tick_at));
                for input in std::mem::take(&mut self.held_at_gateway) {
                    let _ = self.target.submit_input(input);
                }
            }
            TargetAction::Stragglers(inputs) => {
                for input in inputs {
                    let _ = self.target.submit_input(input);
                }
            }
            TargetAction::Discard(reason) => {
                self.records.push(Record::Discarded(reason.to_string()));
                self.target = (self.new_target)();
            }
        }
    }

    /// Checks the brief's invariants over everything recorded, after the run settled:
    /// - single authority: every tick number was run by exactly one side, and the region's owner
    ///   at the authority is the side that ticks now;
    /// - no input lost or applied twice: per player, the applied sequence numbers are exactly
    ///   `1..=n`, in order, and at most 4 sent inputs are not applied yet (in flight);
    /// - same state: the target's world at the commit equalled the source's at the freeze (the
    ///   protocol checks the digest; this re-checks it from outside);
    /// - tick continuity: tick numbers go up by one with no gap.
    ///
    /// Returns the number of ticks that started more than 1.5 tick intervals after the previous.
    pub fn check_invariants(&self) -> u64 {
        let mut last_tick: Option<(u64, Duration)> = None;
        let interval = self.source.config().tick_interval();
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
        let owner = self.authority.current(self.source.id()).ok();
        match self.ticking() {
            Some(Side::Source) => assert_eq!(
                owner.map(|owner| owner.owner),
                Some(self.source_name.clone()),
                "the source ticks but does not own"
            ),
            Some(Side::Target) => assert_eq!(
                owner.map(|owner| owner.owner),
                Some(self.target_name.clone()),
                "the target ticks but does not own"
            ),
            None => {}
        }
        for (player, applied) in &self.applied {
            let expected: Vec<u64> = (1..=applied.len() as u64).collect();
            assert_eq!(applied, &expected, "inputs of {player} applied out of order or twice");
            let sent = self.sent.get(player).copied().unwrap_or(0);
            assert!(sent >= applied.len() as u64, "{player} had more inputs applied than sent");
            // A region taken by an instance outside the pair gets its inputs elsewhere.
            if !self.fenced {
                assert!(sent - (applied.len() as u64) <= 4, "{player}: {sent} sent but only {} applied", applied.len());
            }
        }
        missed
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

    /// The target's name at the authority.
    #[must_use]
    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// The source's name at the authority.
    #[must_use]
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}
