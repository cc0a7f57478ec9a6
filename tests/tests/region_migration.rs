//! A whole sample region (physics, scripts, players) restored from a streamed snapshot and deltas
//! equals its source at every round, and then continues exactly as its source does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_harness::headless::SimulatedPlayers;
use baton_sdk::codec::{self, ChunkConfig, DecodeLimits, SnapshotWriter};
use baton_sdk::physics::{Body, BodyKind, Shape};
use baton_sdk::wire::{PlayerId, RegionId};
use baton_sdk::{EntityId, Region, RegionConfig};
use proptest::prelude::*;
use sample_region_server::{SampleLogic, WorldSpec, join_avatar, new_region, populate};

#[derive(Clone, Debug)]
enum Op {
    /// Run ticks with every simulated player sending inputs.
    Ticks(u8),
    /// Drop a new crate from the sky.
    Drop { x: f32, z: f32 },
    /// Remove an entity (object, NPC, plant or avatar).
    Despawn(usize),
    /// A new player joins.
    Join { x: f32, z: f32 },
    /// Kick a body.
    Kick { pick: usize, up: f32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u8..6).prop_map(Op::Ticks),
        1 => (-100.0f32..100.0, -100.0f32..100.0).prop_map(|(x, z)| Op::Drop { x, z }),
        1 => any::<usize>().prop_map(Op::Despawn),
        1 => (-100.0f32..100.0, -100.0f32..100.0).prop_map(|(x, z)| Op::Join { x, z }),
        1 => (any::<usize>(), 1.0f32..8.0).prop_map(|(pick, up)| Op::Kick { pick, up }),
    ]
}

struct Scene {
    region: Region<SampleLogic>,
    players: SimulatedPlayers,
    next_player: u64,
}

fn scene(seed: u64) -> Scene {
    let mut region = new_region(RegionId(1), RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 150, npcs: 30, plants: 30, seed, churn: 40 }).unwrap();
    let players = SimulatedPlayers::join(&mut region, 8, 1, 20, seed).unwrap();
    Scene { region, players, next_player: 1000 }
}

fn tick(region: &mut Region<SampleLogic>, players: &mut SimulatedPlayers) {
    for input in players.inputs_for_tick(region.world().tick()) {
        // A player whose avatar was removed keeps sending; the region refuses those inputs.
        match region.submit_input(input) {
            Ok(_) | Err(baton_sdk::sessions::SessionError::UnknownPlayer(_)) => {}
            Err(error) => panic!("input refused: {error}"),
        }
    }
    region.tick();
}

fn apply_op(scene: &mut Scene, op: &Op) {
    let Scene { region, players, next_player } = scene;
    match op {
        Op::Ticks(count) => {
            for _ in 0..*count {
                tick(region, players);
            }
        }
        Op::Drop { x, z } => {
            let world = region.world_mut();
            let entity = world.spawn();
            world
                .insert(entity, Body::new(BodyKind::Dynamic, Shape::Cuboid { half_extents: [0.4; 3] }, [*x, 6.0, *z]))
                .unwrap();
        }
        Op::Despawn(pick) => {
            let world = region.world_mut();
            let entities: Vec<EntityId> = world.entities().collect();
            let victim = entities[pick % entities.len()];
            // Avatars leave properly; other entities just vanish.
            let session = world.get::<baton_sdk::sessions::PlayerSession>(victim).map(|session| session.player);
            if let Some(player) = session {
                region.leave(PlayerId(player));
            }
            region.world_mut().despawn(victim);
        }
        Op::Join { x, z } => {
            join_avatar(region, PlayerId(*next_player), [*x, *z]).unwrap();
            *next_player += 1;
        }
        Op::Kick { pick, up } => {
            let world = region.world_mut();
            let bodies: Vec<EntityId> = world
                .iter::<Body>()
                .filter(|(_, body)| body.kind == BodyKind::Dynamic)
                .map(|(entity, _)| entity)
                .collect();
            if !bodies.is_empty()
                && let Some(mut body) = world.get_mut::<Body>(bodies[pick % bodies.len()])
            {
                body.linvel = [1.0, *up, -0.5];
            }
        }
    }
}

/// Streams `source` into a fresh region while `during` runs on the source, then runs delta rounds
/// (one per entry of `rounds`), checking digests each round; then both continue for
/// `continue_ticks` and must stay equal.
fn check(seed: u64, before: Vec<Op>, during: Vec<Op>, rounds: Vec<Vec<Op>>, continue_ticks: u32) {
    let mut source = scene(seed);
    for op in &before {
        apply_op(&mut source, op);
    }
    let chunks = ChunkConfig { target_chunk_bytes: 8 * 1024, max_chunk_bytes: 64 * 1024 };
    let tracker = source.region.world_mut().create_tracker();
    let mut writer = SnapshotWriter::new(chunks);
    let mut target = new_region(RegionId(1), RegionConfig::default()).unwrap();
    let mut during = during.iter();
    while let Some(chunk) = writer.next_chunk(source.region.world()).unwrap() {
        codec::apply(target.world_mut(), &chunk, DecodeLimits::default()).unwrap();
        // The source keeps ticking between chunks.
        if let Some(op) = during.next() {
            apply_op(&mut source, op);
        }
    }
    for op in during {
        apply_op(&mut source, op);
    }
    for (round, ops) in std::iter::once(Vec::new()).chain(rounds).enumerate() {
        for op in &ops {
            apply_op(&mut source, op);
        }
        let changes = source.region.world_mut().changes(tracker);
        for part in codec::encode_delta(source.region.world(), &changes, round as u32 + 1, chunks).unwrap() {
            codec::apply(target.world_mut(), &part, DecodeLimits::default()).unwrap();
        }
        assert_eq!(source.region.world_mut().digest(), target.world_mut().digest(), "round {round}");
    }
    source.region.world_mut().drop_tracker(tracker);

    // Cutover. The target builds its engine caches from the world; so does the source here, so that
    // both continue from exactly the world state (what remains is the physics engine's internal
    // caches, measured separately in `physics_continuation`).
    target.rebuild_caches();
    source.region.rebuild_caches();
    // The same players keep sending the same inputs to both.
    let mut target_players = source.players.clone();
    for index in 0..continue_ticks {
        tick(&mut source.region, &mut source.players);
        tick(&mut target, &mut target_players);
        assert_eq!(source.region.world_mut().digest(), target.world_mut().digest(), "tick {index} after cutover");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_moved_sample_region_equals_and_continues_as_its_source(
        seed in 1u64..1000,
        before in proptest::collection::vec(op(), 0..12),
        during in proptest::collection::vec(op(), 0..10),
        rounds in proptest::collection::vec(proptest::collection::vec(op(), 0..4), 0..4),
    ) {
        check(seed, before, during, rounds, 45);
    }
}

/// A case the property test found once in six whole-suite runs: bodies kicked while asleep, a
/// region moved a few ticks later. Rebuilding the physics engine put bodies back to sleep in hash
/// map order, which differs per map, so source and target woke different islands (about 1 check
/// in 20 diverged at the first tick after the cutover). Each check builds fresh maps.
#[test]
fn a_region_continues_identically_however_its_engine_orders_its_bodies() {
    use Op::{Drop, Join, Kick, Ticks};
    let before = vec![
        Join { x: -9.291936, z: 77.94943 },
        Ticks(3),
        Ticks(5),
        Ticks(5),
        Ticks(3),
        Drop { x: 65.66584, z: -45.5892 },
        Kick { pick: 10304049296983933224, up: 5.363289 },
        Kick { pick: 7865259015440092371, up: 4.8830714 },
    ];
    let during = vec![Join { x: -18.817854, z: 26.487614 }, Ticks(3), Ticks(1), Ticks(1)];
    let rounds = vec![vec![Drop { x: 31.048769, z: -43.961315 }], vec![Ticks(1), Ticks(1)], vec![]];
    for _ in 0..100 {
        check(833, before.clone(), during.clone(), rounds.clone(), 3);
    }
}
