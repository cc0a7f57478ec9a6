//! `RegionNode` stepped by hand and through the two-node harness: what it answers gateways while a
//! handoff freezes it, what it does with inputs it does not own, and how a stop goes — the paths
//! the runtime's region thread now only carries out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_harness::headless::SimulatedPlayers;
use baton_sdk::RegionConfig;
use baton_sdk::handoff::testing::{HandoffPair, Record, Side};
use baton_sdk::handoff::{SourceConfig, SourcePhase, TargetPhase};
use baton_sdk::node::{GatewayRequest, HostEvent, NodeSettings, Output, PlayerSettings, RegionNode, Role};
use baton_sdk::wire::upstream::ServerMessage;
use baton_sdk::wire::{Epoch, PlayerId, PlayerInput, RegionId};
use sample_region_server::{SampleLogic, WorldSpec, new_region, populate};

const REGION: RegionId = RegionId(1);
const NEWCOMER: PlayerId = PlayerId(500);

fn settings(start: Instant) -> NodeSettings {
    NodeSettings {
        name: "here".into(),
        address: SocketAddr::from(([127, 0, 0, 1], 9)),
        source: SourceConfig::default(),
        players: PlayerSettings::default(),
        checkpoint_every_ticks: 0,
        wall_clock: (start, 1_000_000),
    }
}

fn node(role: Role) -> (RegionNode<SampleLogic>, Instant) {
    let start = Instant::now();
    let mut region = new_region(REGION, RegionConfig::default()).unwrap();
    if matches!(role, Role::Owner { .. }) {
        populate(&mut region, WorldSpec { objects: 20, npcs: 2, plants: 2, seed: 1, churn: 0 }).unwrap();
    }
    let rewarm = Box::new(|region| new_region(region, RegionConfig::default()));
    (RegionNode::new(region, role, settings(start), rewarm, start), start)
}

fn outputs(node: &mut RegionNode<SampleLogic>, now: Instant) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output(now)).collect()
}

fn ticked(outputs: &[Output]) -> usize {
    outputs.iter().filter(|output| matches!(output, Output::Ticked(_))).count()
}

#[test]
fn after_an_aborted_handoff_the_region_checkpoints_and_can_stop_again() {
    let start = Instant::now();
    let mut region = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 20, npcs: 2, plants: 2, seed: 1, churn: 0 }).unwrap();
    let rewarm = Box::new(|region| new_region(region, RegionConfig::default()));
    let every_tick = NodeSettings { checkpoint_every_ticks: 1, ..settings(start) };
    let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, every_tick, rewarm, start);
    outputs(&mut node, start);
    node.handle_start_handoff(start, SocketAddr::from(([127, 0, 0, 1], 10)), 1);
    outputs(&mut node, start);
    // No checkpoint while the handoff runs: its snapshot is the safety net.
    node.handle_timeout(start, &baton_sdk::node::NoGateways);
    assert!(outputs(&mut node, start).iter().all(|output| !matches!(output, Output::StoreCheckpoint { .. })));
    // The link dies before the freeze: the source keeps the region.
    node.handle_link_lost(start);
    let aborted = outputs(&mut node, start);
    assert!(aborted.iter().any(|output| matches!(output, Output::Event(HostEvent::Aborted { owning: true, .. }))));
    let later = start + RegionConfig::default().tick_interval() * 3;
    node.handle_timeout(later, &baton_sdk::node::NoGateways);
    assert!(
        outputs(&mut node, later).iter().any(|output| matches!(output, Output::StoreCheckpoint { .. })),
        "checkpoints resume once the handoff is over"
    );
    node.handle_stop(later, true);
    assert!(matches!(&outputs(&mut node, later)[..], [Output::SaveAndStop { .. }]), "a stop is possible again");
}

#[test]
fn an_owner_announces_itself_and_ticks_on_its_grid() {
    let (mut node, start) = node(Role::Owner { epoch: Epoch(3) });
    let first = outputs(&mut node, start);
    assert!(matches!(first[0], Output::Event(HostEvent::Owning { region: REGION, epoch: Epoch(3) })));
    assert!(matches!(first[1], Output::Owned { epoch: Epoch(3), announce: true }));
    let interval = RegionConfig::default().tick_interval();
    // Nothing runs before the tick is due; at the due time exactly one tick runs.
    assert_eq!(node.poll_timeout(start), Some(start));
    node.handle_timeout(start, &baton_sdk::node::NoGateways);
    assert_eq!(ticked(&outputs(&mut node, start)), 1);
    node.handle_timeout(start + interval / 2, &baton_sdk::node::NoGateways);
    assert_eq!(ticked(&outputs(&mut node, start + interval / 2)), 0);
    assert_eq!(node.poll_timeout(start + interval / 2), Some(start + interval));
    // The grid goes on from the start, whatever time the driver comes back at within a slot.
    for slot in 1..=5u32 {
        let late = start + interval * slot + interval / 4;
        node.handle_timeout(late, &baton_sdk::node::NoGateways);
        assert_eq!(ticked(&outputs(&mut node, late)), 1, "slot {slot}");
        assert_eq!(node.poll_timeout(late), Some(start + interval * (slot + 1)));
    }
    assert_eq!(node.region().world().tick(), 6);
}

#[test]
fn an_input_for_a_region_it_does_not_own_goes_back_to_the_gateway() {
    let (mut node, start) = node(Role::Target);
    let input = PlayerInput { player: PlayerId(7), seq: 1, payload: vec![1] };
    node.handle_input(start, input.clone());
    let outputs = outputs(&mut node, start);
    assert!(
        matches!(
            &outputs[0],
            Output::Bounce(ServerMessage::Bounced { region: REGION, player: PlayerId(7), seq: 1, .. }, PlayerId(7))
        ),
        "{outputs:?}"
    );
    assert!(matches!(&outputs[1], Output::Event(HostEvent::InputRefused { input: refused, .. }) if *refused == input));
}

#[test]
fn a_stop_saves_then_lets_go_and_a_failed_save_keeps_the_region() {
    let (mut node, start) = node(Role::Owner { epoch: Epoch(2) });
    outputs(&mut node, start);
    // Without a store there is nothing to save into.
    node.handle_stop(start, false);
    assert!(matches!(&outputs(&mut node, start)[..], [Output::Event(HostEvent::StopRefused { .. })]));
    // A failed save leaves the region owned and ticking.
    node.handle_stop(start, true);
    assert!(matches!(&outputs(&mut node, start)[..], [Output::SaveAndStop { .. }]));
    assert!(!node.ticks(), "no tick while the region is being saved");
    node.handle_stop_saved(start, Err("disk full".into()));
    assert!(
        matches!(&outputs(&mut node, start)[..], [Output::Event(HostEvent::StopRefused { reason, .. })] if reason.contains("disk full"))
    );
    assert!(node.ticks() && node.owned_epoch() == Some(Epoch(2)));
    // A save that works ends the region here, and tells gateways it stopped at its epoch.
    node.handle_stop(start, true);
    let Some(Output::SaveAndStop { info, .. }) = node.poll_output(start) else { panic!("no save") };
    assert_eq!(info.epoch, Epoch(2));
    node.handle_stop_saved(start, Ok((info.tick, 100, "/tmp/r1".into())));
    let outputs = outputs(&mut node, start);
    assert!(matches!(outputs[0], Output::NotOwned));
    assert!(matches!(outputs[1], Output::Broadcast(ServerMessage::Stopped { region: REGION, epoch: Epoch(2) })));
    assert!(matches!(&outputs[2], Output::Event(HostEvent::Stopped { epoch: Epoch(2), .. })));
    assert!(matches!(outputs[3], Output::Finished));
    assert!(node.is_finished());
    // A stop during a handoff is refused.
    let (mut busy, start) = self::node(Role::Owner { epoch: Epoch(1) });
    busy.handle_start_handoff(start, SocketAddr::from(([127, 0, 0, 1], 10)), 1);
    self::outputs(&mut busy, start);
    busy.handle_stop(start, true);
    assert!(self::outputs(&mut busy, start).iter().any(
        |output| matches!(output, Output::Event(HostEvent::StopRefused { reason, .. }) if reason.contains("handoff"))
    ));
}

fn pair() -> HandoffPair<SampleLogic> {
    let mut source = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut source, WorldSpec { objects: 300, npcs: 40, plants: 40, seed: 3, churn: 0 }).unwrap();
    let mut players = SimulatedPlayers::join(&mut source, 10, 1, 20, 3).unwrap();
    let mut pair = HandoffPair::new(
        REGION,
        source,
        Box::new(|| new_region(REGION, RegionConfig::default()).unwrap()),
        Box::new(move |round| players.inputs_for_tick(round)),
    );
    pair.link.bytes_per_second = 4_000_000;
    pair.link.latency = Duration::from_millis(2);
    pair
}

fn answers(pair: &HandoffPair<SampleLogic>) -> Vec<(Side, ServerMessage)> {
    pair.records
        .iter()
        .filter_map(|record| match record {
            Record::ToGateway { side, message } => Some((*side, message.clone())),
            _ => None,
        })
        .collect()
}

/// A pair whose source froze with a newcomer's join waiting on it, unanswered.
fn frozen_with_a_join() -> HandoffPair<SampleLogic> {
    let mut pair = pair();
    pair.drive_until(Duration::from_millis(500));
    pair.start_handoff();
    let frozen = pair.drive_while(Duration::from_secs(10), |pair| pair.source_phase() == Some(SourcePhase::Frozen));
    assert!(frozen, "the source never froze");
    pair.gateway_request(Side::Source, GatewayRequest::Join { player: NEWCOMER, gateway: 4 });
    assert!(answers(&pair).is_empty(), "a frozen region answers nobody: {:?}", answers(&pair));
    pair
}

/// protocol.md §9: a join that reaches a frozen source waits and is answered after the outcome;
/// after a commit the source has nothing to offer but "the region moved".
#[test]
fn a_join_that_reaches_a_frozen_source_is_answered_after_the_commit() {
    let mut pair = frozen_with_a_join();
    let committed = pair.drive_while(Duration::from_secs(5), |pair| pair.target_phase() == TargetPhase::Authoritative);
    assert!(committed);
    pair.drive_until(pair.elapsed() + Duration::from_millis(200));
    assert!(
        matches!(&answers(&pair)[..], [(Side::Source, ServerMessage::JoinRefused { player: NEWCOMER, reason, .. })] if reason == "the region moved"),
        "{:?}",
        answers(&pair)
    );
    // The new owner lets the player in, as the gateway's retry would find.
    pair.gateway_request(Side::Target, GatewayRequest::Join { player: NEWCOMER, gateway: 4 });
    assert!(
        matches!(
            answers(&pair).last(),
            Some((Side::Target, ServerMessage::Joined { player: NEWCOMER, epoch: Epoch(2), .. }))
        ),
        "{:?}",
        answers(&pair)
    );
    pair.check_invariants();
}

/// The same join, when the handoff aborts instead: the source resumes and lets the player in.
#[test]
fn a_join_that_reaches_a_frozen_source_is_answered_by_the_source_after_an_abort() {
    let mut pair = frozen_with_a_join();
    pair.crash_target();
    let resumed = pair.drive_while(Duration::from_secs(10), |pair| pair.ticking() == Some(Side::Source));
    assert!(resumed, "the source did not resume");
    pair.drive_until(pair.elapsed() + Duration::from_millis(100));
    assert!(
        matches!(
            &answers(&pair)[..],
            [(Side::Source, ServerMessage::Joined { player: NEWCOMER, last_applied: 0, .. })]
        ),
        "{:?}",
        answers(&pair)
    );
    pair.check_invariants();
}

/// Gateways that serve every player (so the node sends views).
struct AllPlayers;

impl baton_sdk::node::Gateways for AllPlayers {
    fn any(&self) -> bool {
        true
    }
    fn serves(&self, _player: PlayerId) -> bool {
        true
    }
}

/// `(last_applied, durable)` of the player's update in `outputs`.
fn acknowledged(outputs: &[Output], player: PlayerId) -> Option<(u64, u64)> {
    outputs.iter().find_map(|output| match output {
        Output::ToPlayers(messages) => messages.iter().find_map(|(to, message)| match message {
            ServerMessage::Update { last_applied, durable, .. } if *to == player => Some((*last_applied, *durable)),
            _ => None,
        }),
        _ => None,
    })
}

/// Runs one tick at `at` with `inputs` of `player` submitted first; returns its outputs.
fn tick_with(
    node: &mut RegionNode<SampleLogic>,
    at: Instant,
    player: PlayerId,
    inputs: std::ops::RangeInclusive<u64>,
) -> Vec<Output> {
    for seq in inputs {
        node.handle_input(at, sample_region_server::scripted_input(player.0, seq));
    }
    node.handle_timeout(at, &AllPlayers);
    outputs(node, at)
}

/// The ticks at which `ticks` ticks from `start` took a checkpoint (each stored at once), a join
/// of `player` arriving before the tick at each index of `joins`.
fn checkpoints_taken(
    node: &mut RegionNode<SampleLogic>,
    start: Instant,
    ticks: u32,
    joins: &[(u32, PlayerId)],
) -> Vec<u64> {
    let interval = RegionConfig::default().tick_interval();
    let ours = baton_sdk::handoff::Ownership { owner: "here".into(), epoch: Epoch(1) };
    let mut taken = Vec::new();
    for index in 0..ticks {
        let at = start + interval * index;
        for (_, player) in joins.iter().filter(|(before, _)| *before == index) {
            node.handle_gateway(at, GatewayRequest::Join { player: *player, gateway: 1 });
        }
        node.handle_timeout(at, &AllPlayers);
        let stored: Vec<u64> = outputs(node, at)
            .iter()
            .filter_map(|output| match output {
                Output::StoreCheckpoint { info, .. } => Some(info.tick),
                _ => None,
            })
            .collect();
        for tick in stored {
            node.handle_checkpoint_stored(at, tick, true, Some(&ours));
            taken.push(tick);
        }
    }
    taken
}

#[test]
fn a_new_owner_checkpoints_at_its_first_tick_and_after_a_new_player_joins() {
    let start = Instant::now();
    let mut region = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 4, npcs: 0, plants: 0, seed: 1, churn: 0 }).unwrap();
    let rewarm = Box::new(|region| new_region(region, RegionConfig::default()));
    let rarely = NodeSettings { checkpoint_every_ticks: 100, ..settings(start) };
    let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, rarely, rewarm, start);
    outputs(&mut node, start);
    // Tick 1 (the world it was given is in no store), then, for the newcomer who joined before
    // tick 6, tick 21: a second after the last (a crowd logging in does not checkpoint every
    // tick); the same player joining again (a resume) is no new avatar: nothing more.
    let joins = [(5, NEWCOMER), (25, NEWCOMER)];
    assert_eq!(checkpoints_taken(&mut node, start, 50, &joins), vec![1, 21]);
    // Without checkpoints (0), neither.
    let mut region = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 4, npcs: 0, plants: 0, seed: 1, churn: 0 }).unwrap();
    let rewarm = Box::new(|region| new_region(region, RegionConfig::default()));
    let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, settings(start), rewarm, start);
    outputs(&mut node, start);
    assert_eq!(checkpoints_taken(&mut node, start, 50, &joins), Vec::<u64>::new());
}

#[test]
fn updates_say_an_input_is_durable_only_once_a_checkpoint_holding_it_is_stored() {
    let start = Instant::now();
    let mut region = new_region(REGION, RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 4, npcs: 0, plants: 0, seed: 1, churn: 0 }).unwrap();
    let rewarm = Box::new(|region| new_region(region, RegionConfig::default()));
    let every_other_tick = NodeSettings { checkpoint_every_ticks: 2, ..settings(start) };
    let mut node = RegionNode::new(region, Role::Owner { epoch: Epoch(1) }, every_other_tick, rewarm, start);
    outputs(&mut node, start);
    node.handle_gateway(start, GatewayRequest::Join { player: NEWCOMER, gateway: 1 });
    outputs(&mut node, start);
    let interval = RegionConfig::default().tick_interval();
    // Tick 1: inputs 1..=3 applied, nothing stored yet. A new region is in no store: its first
    // tick takes a checkpoint, although one is due only every other tick.
    let first = tick_with(&mut node, start, NEWCOMER, 1..=3);
    assert_eq!(acknowledged(&first, NEWCOMER), Some((3, 0)));
    let initial = first.iter().find_map(|output| match output {
        Output::StoreCheckpoint { info, .. } => Some(info.tick),
        _ => None,
    });
    assert_eq!(initial, Some(1), "a new region checkpoints at its first tick");
    // Tick 2: inputs 4..=5 applied, and a checkpoint taken after them; not durable before the
    // store says it has it.
    let second = tick_with(&mut node, start + interval, NEWCOMER, 4..=5);
    assert_eq!(acknowledged(&second, NEWCOMER), Some((5, 0)));
    let taken = second
        .iter()
        .find_map(|output| match output {
            Output::StoreCheckpoint { info, .. } => Some(info.tick),
            _ => None,
        })
        .expect("a checkpoint every other tick");
    let third = tick_with(&mut node, start + interval * 2, NEWCOMER, 6..=6);
    assert_eq!(acknowledged(&third, NEWCOMER), Some((6, 0)), "stored is not yet said");
    // A failed store makes nothing durable; a stored one makes its inputs durable.
    let ours = baton_sdk::handoff::Ownership { owner: "here".into(), epoch: Epoch(1) };
    node.handle_checkpoint_stored(start + interval * 2, taken, false, Some(&ours));
    let fourth = tick_with(&mut node, start + interval * 3, NEWCOMER, 7..=7);
    assert_eq!(acknowledged(&fourth, NEWCOMER), Some((7, 0)));
    let next_taken = fourth
        .iter()
        .find_map(|output| match output {
            Output::StoreCheckpoint { info, .. } => Some(info.tick),
            _ => None,
        })
        .unwrap();
    // Stored, but the authority did not answer: it may have been replaced meanwhile, so no.
    node.handle_checkpoint_stored(start + interval * 3, next_taken, true, None);
    let fifth = tick_with(&mut node, start + interval * 4, NEWCOMER, 8..=8);
    assert_eq!(acknowledged(&fifth, NEWCOMER), Some((8, 0)));
    let sixth = tick_with(&mut node, start + interval * 5, NEWCOMER, 9..=9);
    let last_taken = sixth
        .iter()
        .find_map(|output| match output {
            Output::StoreCheckpoint { info, .. } => Some(info.tick),
            _ => None,
        })
        .unwrap();
    node.handle_checkpoint_stored(start + interval * 5, last_taken, true, Some(&ours));
    let seventh = tick_with(&mut node, start + interval * 6, NEWCOMER, 10..=10);
    assert_eq!(acknowledged(&seventh, NEWCOMER), Some((10, 9)));
}

#[test]
fn without_checkpoints_what_is_applied_is_as_durable_as_it_gets() {
    let (mut node, start) = node(Role::Owner { epoch: Epoch(1) });
    outputs(&mut node, start);
    node.handle_gateway(start, GatewayRequest::Join { player: NEWCOMER, gateway: 1 });
    outputs(&mut node, start);
    let ticked = tick_with(&mut node, start, NEWCOMER, 1..=4);
    assert_eq!(acknowledged(&ticked, NEWCOMER), Some((4, 4)));
}

#[test]
fn an_owner_that_learns_a_failover_replaced_it_lets_the_region_go() {
    let (mut node, start) = node(Role::Owner { epoch: Epoch(3) });
    outputs(&mut node, start);
    // Its own epoch (or an older one) changes nothing.
    node.handle_ownership_seen(start, &baton_sdk::handoff::Ownership { owner: "here".into(), epoch: Epoch(3) });
    assert!(outputs(&mut node, start).is_empty());
    assert_eq!(node.owned_epoch(), Some(Epoch(3)));
    node.handle_input(start, PlayerInput { player: PlayerId(7), seq: 1, payload: vec![1] });
    node.handle_ownership_seen(start, &baton_sdk::handoff::Ownership { owner: "there".into(), epoch: Epoch(4) });
    let gone = outputs(&mut node, start);
    assert!(gone.iter().any(|output| matches!(output, Output::NotOwned)), "{gone:?}");
    assert!(
        gone.iter().any(|output| matches!(output, Output::Event(HostEvent::Aborted { owning: false, reason, .. }) if reason.contains("there@e4"))),
        "{gone:?}"
    );
    assert!(gone.iter().any(|output| matches!(output, Output::Bounce(..))), "its unapplied inputs go back: {gone:?}");
    assert!(node.is_finished() && node.owned_epoch().is_none());
    // It never ticks again.
    node.handle_timeout(start + Duration::from_secs(1), &AllPlayers);
    assert_eq!(ticked(&outputs(&mut node, start + Duration::from_secs(1))), 0);
}
