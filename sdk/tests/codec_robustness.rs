//! The archive decoder never panics and never half-applies: random bytes, mutated and truncated
//! archives, foreign component types and wrong versions all give errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use baton_sdk::codec::{self, ChunkConfig, CodecError, DecodeLimits};
use baton_sdk::{Component, Registry, World};
use common::{Health, Inventory, Position, registry};
use proptest::prelude::*;

fn sample_archives() -> Vec<Vec<u8>> {
    let mut world = World::new(registry());
    for index in 0..40u32 {
        let entity = world.spawn();
        world.insert(entity, Position { xyz: [index as f32, 1.0, 2.0], label: format!("e{index}") }).unwrap();
        if index % 2 == 0 {
            world.insert(entity, Inventory { items: vec![(index, 3), (7, 1)] }).unwrap();
        }
    }
    let tracker = world.create_tracker();
    let mut archives: Vec<Vec<u8>> =
        codec::encode_snapshot(&world, ChunkConfig { target_chunk_bytes: 1024, max_chunk_bytes: 4096 })
            .unwrap()
            .iter()
            .map(|c| c.to_vec())
            .collect();
    let first = world.entities().next().unwrap();
    world.despawn(first);
    let second = world.entities().next().unwrap();
    world.insert(second, Health(3)).unwrap();
    world.remove::<Inventory>(second);
    let changes = world.changes(tracker);
    archives
        .extend(codec::encode_delta(&world, &changes, 1, ChunkConfig::default()).unwrap().iter().map(|c| c.to_vec()));
    archives
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let world = World::new(registry());
        prop_assert!(codec::decode(world.registry(), &bytes, DecodeLimits::default()).is_err());
    }

    #[test]
    fn mutated_archives_never_panic_or_half_apply(
        which in any::<usize>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let archives = sample_archives();
        let mut bytes = archives[which % archives.len()].clone();
        for (position, value) in flips {
            let index = position % bytes.len();
            bytes[index] ^= value.max(1);
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        let mut world = World::new(registry());
        let before = world.digest();
        match codec::decode(world.registry(), &bytes, DecodeLimits::default()) {
            // A flip inside a value can still be a valid archive; applying it must then work.
            Ok(decoded) => { decoded.apply(&mut world); }
            Err(_) => prop_assert_eq!(world.digest(), before),
        }
    }
}

#[test]
fn unaligned_input_is_accepted() {
    let archive = &sample_archives()[0];
    let mut shifted = vec![0u8; archive.len() + 1];
    shifted[1..].copy_from_slice(archive);
    let mut world = World::new(registry());
    codec::apply(&mut world, &shifted[1..], DecodeLimits::default()).unwrap();
    assert!(world.entity_count() > 0);
}

#[test]
fn clear_errors_for_bad_frames() {
    let archive = sample_archives()[0].clone();
    let world = World::new(registry());
    let decode = |bytes: &[u8]| codec::decode(world.registry(), bytes, DecodeLimits::default()).unwrap_err();

    assert_eq!(decode(&archive[..10]), CodecError::Truncated("shorter than the header"));
    let mut bad_magic = archive.clone();
    bad_magic[0] = b'X';
    assert_eq!(decode(&bad_magic), CodecError::BadMagic);
    let mut future = archive.clone();
    future[4] = 9;
    assert_eq!(decode(&future), CodecError::UnsupportedVersion { found: 9 });
    assert_eq!(decode(&archive[..archive.len() - 1]), CodecError::Truncated("shorter than its declared length"));
    let limits = DecodeLimits { max_archive_bytes: 64 };
    assert!(matches!(codec::decode(world.registry(), &archive, limits), Err(CodecError::TooLarge { .. })));
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.position")]
struct PositionV2 {
    xyz: [f64; 3],
    label: String,
}

#[test]
fn unknown_and_mismatching_component_types_are_refused() {
    let archive = sample_archives()[0].clone();
    let mut only_health = Registry::new();
    only_health.register::<Health>().unwrap();
    let error = codec::decode(&only_health, &archive, DecodeLimits::default()).unwrap_err();
    assert_eq!(error, CodecError::UnknownComponent { name: "test.position".to_owned() });

    let mut changed = Registry::new();
    changed.register::<PositionV2>().unwrap();
    changed.register::<Inventory>().unwrap();
    let error = codec::decode(&changed, &archive, DecodeLimits::default()).unwrap_err();
    assert!(matches!(error, CodecError::SchemaMismatch { ref name, .. } if name == "test.position"), "{error}");
    assert_ne!(changed.schema_hash(), registry().schema_hash());
}
