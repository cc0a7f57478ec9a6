//! restore(snapshot) + deltas == source, by digest, after every round, for random operation
//! sequences — with the snapshot taken in chunks while the source keeps changing, as in a handoff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_sdk::codec::{self, ChunkConfig, DecodeLimits, SnapshotWriter};
use baton_sdk::{EntityId, World};
use common::{Health, Inventory, Position, registry};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Spawn { health: Option<u32>, items: u8 },
    Move { pick: usize, dx: f32 },
    Rename { pick: usize, len: u8 },
    Hurt { pick: usize },
    RemoveHealth { pick: usize },
    AddItem { pick: usize, item: u32 },
    Despawn { pick: usize },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::option::of(0u32..100), 0u8..4).prop_map(|(health, items)| Op::Spawn { health, items }),
        4 => (any::<usize>(), -5.0f32..5.0).prop_map(|(pick, dx)| Op::Move { pick, dx }),
        1 => (any::<usize>(), 0u8..40).prop_map(|(pick, len)| Op::Rename { pick, len }),
        2 => any::<usize>().prop_map(|pick| Op::Hurt { pick }),
        1 => any::<usize>().prop_map(|pick| Op::RemoveHealth { pick }),
        1 => (any::<usize>(), any::<u32>()).prop_map(|(pick, item)| Op::AddItem { pick, item }),
        1 => any::<usize>().prop_map(|pick| Op::Despawn { pick }),
        1 => Just(Op::Tick),
    ]
}

fn pick(world: &World, index: usize) -> Option<EntityId> {
    let count = world.entity_count();
    if count == 0 { None } else { world.entities().nth(index % count) }
}

fn apply_op(world: &mut World, op: &Op) {
    match op {
        Op::Spawn { health, items } => {
            let entity = world.spawn();
            world
                .insert(entity, Position { xyz: [entity.0 as f32, 0.0, 0.0], label: format!("n{}", entity.0) })
                .unwrap();
            if let Some(health) = health {
                world.insert(entity, Health(*health)).unwrap();
            }
            if *items > 0 {
                world.insert(entity, Inventory { items: (0..u32::from(*items)).map(|i| (i, 1)).collect() }).unwrap();
            }
        }
        Op::Move { pick: index, dx } => {
            if let Some(entity) = pick(world, *index)
                && let Some(mut position) = world.get_mut::<Position>(entity)
            {
                position.xyz[0] += dx;
            }
        }
        Op::Rename { pick: index, len } => {
            if let Some(entity) = pick(world, *index)
                && let Some(mut position) = world.get_mut::<Position>(entity)
            {
                position.label = "x".repeat(usize::from(*len));
            }
        }
        Op::Hurt { pick: index } => {
            if let Some(entity) = pick(world, *index) {
                match world.get_mut::<Health>(entity) {
                    Some(mut health) => health.0 = health.0.saturating_sub(1),
                    None => {
                        world.insert(entity, Health(10)).unwrap();
                    }
                }
            }
        }
        Op::RemoveHealth { pick: index } => {
            if let Some(entity) = pick(world, *index) {
                world.remove::<Health>(entity);
            }
        }
        Op::AddItem { pick: index, item } => {
            if let Some(entity) = pick(world, *index) {
                match world.get_mut::<Inventory>(entity) {
                    Some(mut inventory) => inventory.items.push((*item, 1)),
                    None => {
                        world.insert(entity, Inventory { items: vec![(*item, 1)] }).unwrap();
                    }
                }
            }
        }
        Op::Despawn { pick: index } => {
            if let Some(entity) = pick(world, *index) {
                world.despawn(entity);
            }
        }
        Op::Tick => world.set_tick(world.tick() + 1),
    }
}

const SMALL_CHUNKS: ChunkConfig = ChunkConfig { target_chunk_bytes: 2048, max_chunk_bytes: 8192 };

fn check(initial: Vec<Op>, during_snapshot: Vec<Op>, rounds: Vec<Vec<Op>>) {
    let mut source = World::new(registry());
    for op in &initial {
        apply_op(&mut source, op);
    }
    // The handoff creates its tracker before the first chunk, then chunks while the world changes.
    let tracker = source.create_tracker();
    let mut writer = SnapshotWriter::new(SMALL_CHUNKS);
    let mut target = World::new(registry());
    let mut during = during_snapshot.iter();
    while let Some(chunk) = writer.next_chunk(&source).unwrap() {
        assert!(chunk.len() <= SMALL_CHUNKS.max_chunk_bytes);
        codec::apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
        for op in during.by_ref().take(3) {
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
        let changes = source.changes(tracker);
        let parts = codec::encode_delta(&source, &changes, round as u32 + 1, SMALL_CHUNKS).unwrap();
        // A round captured to be encoded on another thread encodes to the same bytes.
        let captured =
            codec::capture_delta(&source, changes.clone(), round as u32 + 1).unwrap().encode(SMALL_CHUNKS).unwrap();
        assert_eq!(
            captured.iter().map(|part| part.as_slice()).collect::<Vec<_>>(),
            parts.iter().map(|part| part.as_slice()).collect::<Vec<_>>(),
            "round {round}: a captured round encodes as the world's"
        );
        for part in &parts {
            assert!(part.len() <= SMALL_CHUNKS.max_chunk_bytes);
            codec::apply(&mut target, part, DecodeLimits::default()).unwrap();
        }
        assert_eq!(source.digest(), target.digest(), "round {round}: target differs from source");
        assert_eq!(source.digest(), source.digest_full(), "round {round}: source's incremental digest drifted");
        assert_eq!(target.digest(), target.digest_full(), "round {round}: target's incremental digest drifted");
        // Applying the same delta again changes nothing.
        for part in &parts {
            codec::apply(&mut target, part, DecodeLimits::default()).unwrap();
        }
        assert_eq!(source.digest(), target.digest(), "round {round}: re-applied delta changed the target");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_deltas_equals_source(
        initial in proptest::collection::vec(op(), 0..200),
        during in proptest::collection::vec(op(), 0..60),
        rounds in proptest::collection::vec(proptest::collection::vec(op(), 0..40), 0..5),
    ) {
        check(initial, during, rounds);
    }
}

#[test]
fn digest_ignores_insertion_order() {
    let mut forward = World::new(registry());
    let mut backward = World::new(registry());
    let ids: Vec<EntityId> = (0..50).map(|_| forward.spawn()).collect();
    for entity in &ids {
        forward.insert(*entity, Health(entity.0 as u32)).unwrap();
        forward.insert(*entity, Position { xyz: [1.0, 2.0, entity.0 as f32], label: String::new() }).unwrap();
    }
    let _ = (0..50).map(|_| backward.spawn()).count();
    for entity in ids.iter().rev() {
        backward.insert(*entity, Position { xyz: [1.0, 2.0, entity.0 as f32], label: String::new() }).unwrap();
        backward.insert(*entity, Health(entity.0 as u32)).unwrap();
    }
    assert_eq!(forward.digest(), backward.digest());
    backward.get_mut::<Health>(ids[7]).unwrap().0 += 1;
    assert_ne!(forward.digest(), backward.digest(), "a one-field difference must change the digest");
}

#[test]
fn a_registry_registered_in_another_order_still_matches() {
    let mut reversed = baton_sdk::Registry::new();
    reversed.register::<Inventory>().unwrap();
    reversed.register::<Health>().unwrap();
    reversed.register::<Position>().unwrap();
    assert_eq!(reversed.schema_hash(), registry().schema_hash());
    let mut source = World::new(registry());
    for index in 0..20u32 {
        let entity = source.spawn();
        source.insert(entity, Health(index)).unwrap();
        source.insert(entity, Inventory { items: vec![(index, 2)] }).unwrap();
    }
    let mut target = World::new(reversed);
    for chunk in codec::encode_snapshot(&source, ChunkConfig::default()).unwrap() {
        codec::apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
    }
    assert_eq!(source.digest(), target.digest());
}

#[test]
fn delta_cost_follows_changes_not_world_size() {
    let mut world = World::new(registry());
    for index in 0..20_000u32 {
        let entity = world.spawn();
        world.insert(entity, Health(index)).unwrap();
    }
    let tracker = world.create_tracker();
    let some: Vec<EntityId> = world.entities().step_by(1000).collect();
    for entity in &some {
        world.get_mut::<Health>(*entity).unwrap().0 += 1;
    }
    // Reading without writing is not a change.
    let _ = world.get_mut::<Health>(EntityId(5)).unwrap().0;
    let changes = world.changes(tracker);
    assert_eq!(changes.set.len(), some.len());
    let delta = codec::encode_delta(&world, &changes, 1, ChunkConfig::default()).unwrap();
    let snapshot: usize = codec::encode_snapshot(&world, ChunkConfig::default()).unwrap().iter().map(|c| c.len()).sum();
    let delta_bytes: usize = delta.iter().map(|part| part.len()).sum();
    assert!(delta_bytes * 100 < snapshot, "delta {delta_bytes} B vs snapshot {snapshot} B");
    // The journal is trimmed once every reader has moved past it.
    world.drop_tracker(tracker);
    let _ = world.digest();
    assert_eq!(world.journal_len(), 0);
}
