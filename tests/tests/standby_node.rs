//! Hot standbys between two production `RegionNode`s stepped on a virtual clock: the standby holds
//! the owner's world tick by tick (same digest), the owner's durable acknowledgements follow what
//! the standby holds, and a promotion takes the region over at the next epoch from exactly that
//! world, fenced by the authority's compare-and-swap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_sdk::RegionConfig;
use baton_sdk::handoff::{AuthorityError, InMemoryAuthority, Message, Ownership, OwnershipAuthority, SourceConfig};
use baton_sdk::node::{GatewayRequest, Gateways, HostEvent, NodeSettings, Output, PlayerSettings, RegionNode, Role};
use baton_sdk::wire::upstream::ServerMessage;
use baton_sdk::wire::{Epoch, PlayerId, RegionId};
use baton_sdk::world::WorldDigest;
use sample_region_server::{SampleLogic, WorldSpec, new_region, populate, scripted_input};

const REGION: RegionId = RegionId(4);
const PLAYER: PlayerId = PlayerId(77);

struct AllPlayers;

impl Gateways for AllPlayers {
    fn any(&self) -> bool {
        true
    }
    fn serves(&self, _player: PlayerId) -> bool {
        true
    }
}

fn settings(name: &str, start: Instant, source: SourceConfig) -> NodeSettings {
    NodeSettings {
        name: name.into(),
        address: SocketAddr::from(([127, 0, 0, 1], 9)),
        source,
        players: PlayerSettings::default(),
        checkpoint_every_ticks: 0,
        wall_clock: (start, 1_000_000),
    }
}

/// An owner and a standby joined by a lossless instant link, with an in-memory authority.
struct Pair {
    owner: RegionNode<SampleLogic>,
    standby: RegionNode<SampleLogic>,
    authority: InMemoryAuthority,
    now: Instant,
    interval: Duration,
    /// The owner is dead: it neither ticks nor answers.
    owner_dead: bool,
    /// Messages from the standby wait here instead of reaching the owner.
    hold_acks: bool,
    held_acks: VecDeque<Message>,
    to_standby: VecDeque<Message>,
    to_owner: VecDeque<Message>,
    /// The owner's last update's `(last_applied, durable)` for `PLAYER`.
    acknowledged: Option<(u64, u64)>,
    standby_events: Vec<HostEvent>,
    owner_events: Vec<HostEvent>,
    next_seq: u64,
    /// Archive bytes the owner sent the standby.
    sent_bytes: u64,
    /// Ticks of the checkpoints the owner asked to store (never answered unless a test does).
    stores: Vec<u64>,
    /// The authority refuses the standby's name as one it cannot keep.
    refuse_name: bool,
}

impl Pair {
    fn new(source: SourceConfig) -> Pair {
        Pair::with_checkpoints(source, 0)
    }

    /// A pair whose owner takes a checkpoint every `every` ticks (0: never).
    fn with_checkpoints(source: SourceConfig, every: u64) -> Pair {
        let start = Instant::now();
        let mut region = new_region(REGION, RegionConfig::default()).unwrap();
        populate(&mut region, WorldSpec { objects: 40, npcs: 3, plants: 3, seed: 5, churn: 0 }).unwrap();
        let authority = InMemoryAuthority::new();
        authority.register(REGION, "owner").unwrap();
        let rewarm = || Box::new(|region| new_region(region, RegionConfig::default()));
        let owner_settings = NodeSettings { checkpoint_every_ticks: every, ..settings("owner", start, source) };
        let owner = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, owner_settings, rewarm(), start);
        let empty = new_region(REGION, RegionConfig::default()).unwrap();
        let standby = RegionNode::new(empty, Role::Target, settings("standby", start, source), rewarm(), start);
        let mut pair = Pair {
            owner,
            standby,
            authority,
            now: start,
            interval: RegionConfig::default().tick_interval(),
            owner_dead: false,
            hold_acks: false,
            held_acks: VecDeque::new(),
            to_standby: VecDeque::new(),
            to_owner: VecDeque::new(),
            acknowledged: None,
            standby_events: Vec::new(),
            owner_events: Vec::new(),
            next_seq: 1,
            sent_bytes: 0,
            stores: Vec::new(),
            refuse_name: false,
        };
        pair.owner.handle_gateway(start, GatewayRequest::Join { player: PLAYER, gateway: 1 });
        pair.settle();
        pair.owner.handle_start_standby(start, SocketAddr::from(([127, 0, 0, 1], 10)), 42);
        pair.settle();
        pair
    }

    /// Carries out both nodes' outputs until neither has anything to say.
    fn settle(&mut self) {
        loop {
            let mut quiet = true;
            while let Some(output) = self.owner.poll_output(self.now) {
                quiet = false;
                match output {
                    Output::ToStandby(message) if !self.owner_dead => {
                        self.sent_bytes += message.archive_bytes() as u64;
                        self.to_standby.push_back(message);
                    }
                    Output::ToPlayers(messages) => {
                        for (to, message) in messages {
                            if let ServerMessage::Update { last_applied, durable, .. } = message
                                && to == PLAYER
                            {
                                self.acknowledged = Some((last_applied, durable));
                            }
                        }
                    }
                    Output::Event(event) => self.owner_events.push(event),
                    Output::StoreCheckpoint { info, .. } => self.stores.push(info.tick),
                    _ => {}
                }
            }
            while let Some(message) = self.to_standby.pop_front() {
                quiet = false;
                self.standby.handle_peer_message(self.now, message);
            }
            while let Some(output) = self.standby.poll_output(self.now) {
                quiet = false;
                match output {
                    Output::ToPeer(message) if self.hold_acks => self.held_acks.push_back(message),
                    Output::ToPeer(message) => self.to_owner.push_back(message),
                    Output::Authority { expected, next, .. } => {
                        let result = if self.refuse_name {
                            Err(AuthorityError::BadOwner(next.owner.clone()))
                        } else {
                            self.authority.compare_and_swap(REGION, &expected, &next)
                        };
                        self.standby.handle_authority(self.now, result);
                    }
                    Output::Event(event) => self.standby_events.push(event),
                    _ => {}
                }
            }
            while let Some(message) = self.to_owner.pop_front() {
                quiet = false;
                if !self.owner_dead {
                    self.owner.handle_standby_message(self.now, message);
                }
            }
            if quiet {
                return;
            }
        }
    }

    /// One tick interval passes; the owner (if alive) ticks with `inputs` more of `PLAYER`'s.
    fn tick(&mut self, inputs: u64) {
        if !self.owner_dead {
            for _ in 0..inputs {
                self.owner.handle_input(self.now, scripted_input(PLAYER.0, self.next_seq));
                self.next_seq += 1;
            }
            // The snapshot streams in the time before the tick.
            self.settle();
            self.owner.handle_timeout(self.now, &AllPlayers);
        }
        self.standby.handle_timeout(self.now, &AllPlayers);
        self.settle();
        self.now += self.interval;
    }

    fn held(&self) -> Option<u64> {
        self.standby_events.iter().rev().find_map(|event| match event {
            HostEvent::StandbyHolding { tick, .. } => Some(*tick),
            _ => None,
        })
    }
}

fn digest(node: &mut RegionNode<SampleLogic>) -> WorldDigest {
    node.region_mut().world_mut().digest()
}

#[test]
fn the_standby_holds_the_owners_world_after_every_tick_and_durable_follows_it() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..20 {
        pair.tick(2);
        // Instant link: after each tick the standby holds exactly the owner's world.
        assert_eq!(digest(&mut pair.standby), digest(&mut pair.owner), "tick {}", pair.owner.region().world().tick());
        assert_eq!(pair.standby.region().world().tick(), pair.owner.region().world().tick());
    }
    assert!(pair.held().is_some(), "the standby reported what it holds: {:?}", pair.standby_events);
    // Updates go out before the round of their tick: durable trails applied by one tick at most.
    let (applied, durable) = pair.acknowledged.unwrap();
    assert_eq!(applied, 40);
    assert!(durable >= 38 && durable <= applied, "durable {durable} of {applied}");
    // The standby never ticks and takes no inputs.
    assert!(!pair.standby.ticks() && pair.standby.owned_epoch().is_none());
    // The owner's load reports (one per second of ticks) say what it sent the standby (its host
    // counts it as migration bytes): the snapshot and the rounds up to the last report.
    for _ in 0..20 {
        pair.tick(0);
    }
    let reported: u64 = pair
        .owner_events
        .iter()
        .filter_map(|event| match event {
            HostEvent::Load { standby_bytes, .. } => Some(*standby_bytes),
            _ => None,
        })
        .sum();
    assert!(reported > 0 && reported <= pair.sent_bytes, "reported {reported} of {} sent", pair.sent_bytes);
}

/// A standby never ticks, so nothing of its own reads its world's changes: what it keeps of them
/// must not grow with the rounds it follows (the warm region's physics engine registered a change
/// reader that only its ticks would read: the journal kept every change of every round).
#[test]
fn a_standby_keeps_no_more_of_its_worlds_changes_the_longer_it_follows() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..20 {
        pair.tick(2);
    }
    let early = pair.standby.region().world().journal_len();
    for _ in 0..400 {
        pair.tick(2);
    }
    let late = pair.standby.region().world().journal_len();
    assert_eq!(digest(&mut pair.standby), digest(&mut pair.owner));
    assert!(late <= early.max(64), "the standby's journal grew from {early} to {late} records in 400 rounds");
}

#[test]
fn durable_stops_advancing_when_the_standby_stops_acknowledging() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..5 {
        pair.tick(1);
    }
    let (_, durable_before) = pair.acknowledged.unwrap();
    pair.hold_acks = true;
    for _ in 0..5 {
        pair.tick(1);
    }
    let (applied, durable) = pair.acknowledged.unwrap();
    assert_eq!(applied, 10);
    assert!(durable <= durable_before + 1, "durable moved to {durable} without the standby's word");
    pair.hold_acks = false;
    let late = std::mem::take(&mut pair.held_acks);
    pair.to_owner.extend(late);
    pair.settle();
    pair.tick(1);
    let (applied, durable) = pair.acknowledged.unwrap();
    assert!(durable >= 9 && durable <= applied, "durable {durable} once the acknowledgements arrive");
}

#[test]
fn a_promoted_standby_continues_from_the_tick_it_holds_at_the_next_epoch() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..10 {
        pair.tick(3);
    }
    let held = pair.standby.region().world().tick();
    let held_digest = digest(&mut pair.standby);
    let (_, durable) = pair.acknowledged.unwrap();
    pair.owner_dead = true;
    // A promotion for another epoch, or of a node that holds nothing, is refused.
    pair.standby.handle_promote(pair.now, Epoch(7));
    pair.settle();
    assert!(
        matches!(pair.standby_events.last(), Some(HostEvent::PromoteRefused { reason, .. }) if reason.contains("epoch"))
    );
    pair.standby.handle_promote(pair.now, Epoch(1));
    pair.settle();
    assert!(
        pair.standby_events
            .iter()
            .any(|event| matches!(event, HostEvent::Promoted { epoch: Epoch(2), tick, .. } if *tick == held)),
        "{:?}",
        pair.standby_events
    );
    assert_eq!(pair.authority.current(REGION).unwrap(), Ownership { owner: "standby".into(), epoch: Epoch(2) });
    assert_eq!(pair.standby.owned_epoch(), Some(Epoch(2)));
    assert_eq!(digest(&mut pair.standby), held_digest, "the promoted world is the one held");
    // Every input the owner called durable is applied in the world it continues from.
    let last_applied = pair.standby.region().session_of(PLAYER).expect("the player's session came along").last_applied;
    assert!(last_applied >= durable, "applied {last_applied} < durable {durable}");
    // It ticks from the next tick, and takes the player's inputs.
    pair.standby.handle_input(pair.now, scripted_input(PLAYER.0, last_applied + 1));
    pair.standby.handle_timeout(pair.now, &AllPlayers);
    pair.settle();
    assert_eq!(pair.standby.region().world().tick(), held + 1);
    assert_eq!(pair.standby.region().session_of(PLAYER).unwrap().last_applied, last_applied + 1);
}

#[test]
fn a_promotion_that_loses_the_swap_discards_and_the_slot_is_warm_again() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..5 {
        pair.tick(1);
    }
    pair.owner_dead = true;
    // A checkpoint restore got there first.
    let owner = Ownership { owner: "owner".into(), epoch: Epoch(1) };
    pair.authority.compare_and_swap(REGION, &owner, &Ownership { owner: "elsewhere".into(), epoch: Epoch(2) }).unwrap();
    pair.standby.handle_promote(pair.now, Epoch(1));
    pair.settle();
    assert!(
        pair.standby_events.iter().any(|event| matches!(event, HostEvent::StandbyLost { detached: false, reason, .. } if reason.contains("elsewhere@e2"))),
        "{:?}",
        pair.standby_events
    );
    assert!(pair.standby.owned_epoch().is_none() && !pair.standby.ticks());
    assert_eq!(pair.standby.region().world().entity_count(), 0, "what it held is discarded");
    assert_eq!(pair.authority.current(REGION).unwrap().owner, "elsewhere");
}

#[test]
fn a_promotion_refused_for_the_standbys_name_discards_rather_than_asking_again() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..5 {
        pair.tick(1);
    }
    pair.owner_dead = true;
    pair.refuse_name = true;
    pair.standby.handle_promote(pair.now, Epoch(1));
    pair.settle();
    assert!(
        pair.standby_events
            .iter()
            .any(|event| matches!(event, HostEvent::StandbyLost { reason, .. } if reason.contains("owner name"))),
        "{:?}",
        pair.standby_events
    );
    assert!(pair.standby.owned_epoch().is_none() && !pair.standby.ticks());
    assert_eq!(pair.authority.current(REGION).unwrap(), Ownership { owner: "owner".into(), epoch: Epoch(1) });
}

#[test]
fn a_silent_owner_detaches_the_standby_which_keeps_what_it_holds() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..5 {
        pair.tick(1);
    }
    let held = pair.standby.region().world().tick();
    pair.owner_dead = true;
    // Five ticks of silence make the standby a witness (the owner sends a round every tick)...
    for _ in 0..4 {
        pair.tick(0);
    }
    assert!(!pair.standby_events.iter().any(|event| matches!(event, HostEvent::OwnerSilent { .. })));
    for _ in 0..3 {
        pair.tick(0);
    }
    assert!(
        pair.standby_events.iter().any(|event| matches!(event, HostEvent::OwnerSilent { owner_epoch: Epoch(1), silent_ms, .. } if *silent_ms >= 150)),
        "{:?}",
        pair.standby_events
    );
    // ... and it detaches only after the handoff's silence timeout (3 s): 90 ticks at 30 Hz.
    for _ in 0..73 {
        pair.tick(0);
    }
    assert!(!pair.standby_events.iter().any(|event| matches!(event, HostEvent::StandbyLost { .. })));
    for _ in 0..20 {
        pair.tick(0);
    }
    assert!(
        pair.standby_events.iter().any(|event| matches!(event, HostEvent::StandbyLost { detached: true, .. })),
        "{:?}",
        pair.standby_events
    );
    assert_eq!(pair.standby.region().world().tick(), held);
    pair.standby.handle_promote(pair.now, Epoch(1));
    pair.settle();
    assert_eq!(pair.standby.owned_epoch(), Some(Epoch(2)), "a detached standby can still be promoted");
}

#[test]
fn a_standby_that_suspected_its_owner_says_so_when_it_hears_it_again() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..3 {
        pair.tick(1);
    }
    // The owner is alive but its rounds do not arrive for a while (a stalled host).
    pair.owner_dead = true;
    for _ in 0..8 {
        pair.tick(0);
    }
    assert!(pair.standby_events.iter().any(|event| matches!(event, HostEvent::OwnerSilent { .. })));
    pair.owner_dead = false;
    pair.tick(1);
    assert!(
        matches!(
            pair.standby_events
                .iter()
                .rev()
                .find(|event| matches!(event, HostEvent::OwnerSilent { .. } | HostEvent::OwnerHeard { .. })),
            Some(HostEvent::OwnerHeard { .. })
        ),
        "{:?}",
        pair.standby_events
    );
}

#[test]
fn a_standby_that_falls_behind_is_caught_up_by_one_round_of_everything_it_missed() {
    // A window of one byte: after each round the owner waits for the standby's word.
    let source = SourceConfig { window_bytes: 1, ..SourceConfig::default() };
    let mut pair = Pair::new(source);
    for _ in 0..4 {
        pair.tick(1);
    }
    pair.hold_acks = true;
    for _ in 0..6 {
        pair.tick(1);
    }
    let behind = pair.standby.region().world().tick();
    assert!(behind < pair.owner.region().world().tick(), "the standby is behind");
    pair.hold_acks = false;
    let late = std::mem::take(&mut pair.held_acks);
    pair.to_owner.extend(late);
    pair.settle();
    pair.tick(1);
    assert_eq!(digest(&mut pair.standby), digest(&mut pair.owner), "one round carried every skipped tick");
}

#[test]
fn a_migration_ends_the_feed_and_the_standby_lets_go() {
    let mut pair = Pair::new(SourceConfig::default());
    for _ in 0..3 {
        pair.tick(1);
    }
    pair.owner.handle_start_handoff(pair.now, SocketAddr::from(([127, 0, 0, 1], 11)), 9);
    pair.settle();
    assert!(
        pair.owner_events
            .iter()
            .any(|event| matches!(event, HostEvent::FeedEnded { reason, .. } if reason.contains("moved"))),
        "{:?}",
        pair.owner_events
    );
    assert!(
        pair.standby_events.iter().any(|event| matches!(event, HostEvent::StandbyLost { detached: false, .. })),
        "{:?}",
        pair.standby_events
    );
    assert_eq!(pair.standby.region().world().entity_count(), 0);
}

/// protocol.md §14: a handoff lets the standby go, so the owner first stores a checkpoint; until it
/// is stored, what the standby acknowledges past the checkpoint's tick is not durable (the
/// checkpoint is what will survive the standby), and the handoff and the end of the feed wait.
#[test]
fn an_owner_handing_off_counts_no_standby_acknowledgement_past_its_checkpoint_until_it_is_stored() {
    let mut pair = Pair::with_checkpoints(SourceConfig::default(), 10_000);
    for _ in 0..5 {
        pair.tick(1);
    }
    let (applied_before, durable_before) = pair.acknowledged.unwrap();
    assert!(durable_before + 1 >= applied_before, "durable follows the standby: {durable_before} of {applied_before}");
    let stores_before = pair.stores.len();
    pair.owner.handle_start_handoff(pair.now, SocketAddr::from(([127, 0, 0, 1], 11)), 9);
    pair.settle();
    assert_eq!(pair.stores.len(), stores_before + 1, "a checkpoint first: {:?}", pair.stores);
    let checkpoint = *pair.stores.last().unwrap();
    assert_eq!(checkpoint, pair.owner.region().world().tick(), "taken between ticks, at the current one");
    assert!(pair.owner.handoff().is_none(), "the handoff waits for the checkpoint");
    // The standby goes on holding every tick, but durable stops at what the checkpoint holds.
    for _ in 0..5 {
        pair.tick(1);
    }
    let (applied, durable) = pair.acknowledged.unwrap();
    assert_eq!(applied, applied_before + 5);
    assert!(durable <= applied_before, "durable {durable} moved past the checkpoint ({applied_before} applied)");
    assert_eq!(pair.standby.region().world().tick(), pair.owner.region().world().tick(), "the feed runs on");
    // Stored: the handoff starts and ends the feed.
    let ours = Ownership { owner: "owner".into(), epoch: Epoch(1) };
    pair.owner.handle_checkpoint_stored(pair.now, checkpoint, true, Some(&ours));
    pair.settle();
    assert!(pair.owner.handoff().is_some(), "the handoff started once the checkpoint was stored");
    assert!(
        pair.owner_events.iter().any(|event| matches!(event, HostEvent::FeedEnded { .. })),
        "{:?}",
        pair.owner_events
    );
    pair.tick(0);
    let (_, durable) = pair.acknowledged.unwrap();
    assert_eq!(durable, applied_before, "what the stored checkpoint holds is durable");
}
