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
        // A world that already holds entities, so an archive applied half-way (some columns
        // written, others not; despawns done, values not) would show in the digest.
        let mut world = populated_world();
        let before = (world.digest(), world.digest_full());
        match codec::apply(&mut world, &bytes, DecodeLimits::default()) {
            // A flip inside a value can still be a valid archive, which then applies.
            Ok(_) => {}
            Err(_) => prop_assert_eq!((world.digest(), world.digest_full()), before),
        }
    }
}

/// A world unlike the one `sample_archives` came from: other entities, other values.
fn populated_world() -> World {
    let mut world = World::new(registry());
    for index in 0..50u32 {
        let entity = world.spawn();
        world.insert(entity, Position { xyz: [0.5, index as f32, 9.0], label: format!("other{index}") }).unwrap();
        world.insert(entity, Health(index)).unwrap();
    }
    world
}

/// Section `index` of an archive: (offset, length), read from its section table (a 32-byte
/// header with the section count at bytes 8..12, then one 16-byte entry per section).
fn section(bytes: &[u8], index: usize) -> (usize, usize) {
    let count = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert!(index < count, "section {index} of {count}");
    let entry = 32 + index * 16;
    let offset = u32::from_le_bytes(bytes[entry..entry + 4].try_into().unwrap()) as usize;
    let length = u32::from_le_bytes(bytes[entry + 4..entry + 8].try_into().unwrap()) as usize;
    (offset, length)
}

#[test]
fn an_archive_whose_last_column_is_bad_changes_nothing() {
    // Every earlier section (the manifest, the first columns) is valid, so a decoder that
    // applied section by section would have written them before finding the bad one.
    let mut tested = 0;
    for archive in sample_archives() {
        let count = u32::from_le_bytes(archive[8..12].try_into().unwrap()) as usize;
        if count < 3 {
            continue;
        }
        tested += 1;
        let mut bytes = archive.clone();
        let (offset, length) = section(&bytes, count - 1);
        // The column's root is its last 8 bytes: a relative pointer, then the element count.
        let at = offset + length - 4;
        let elements = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(elements + 1).to_le_bytes());

        let mut world = populated_world();
        let before = (world.digest(), world.digest_full());
        assert!(codec::apply(&mut world, &bytes, DecodeLimits::default()).is_err());
        assert_eq!((world.digest(), world.digest_full()), before, "a failed apply changed the world");
        // The intact archive does change it: the check above would see a half-applied one.
        codec::apply(&mut world, &archive, DecodeLimits::default()).unwrap();
        assert_ne!(world.digest(), before.0);
    }
    assert!(tested > 0, "no sample archive has a manifest and two columns");
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

#[test]
fn a_bundle_moves_one_entity_under_a_new_id_and_anything_else_is_refused() {
    let mut from = World::new(registry());
    let before = from.spawn();
    let avatar = from.spawn();
    from.insert(avatar, Position { xyz: [1.0, 2.0, 3.0], label: "avatar".into() }).unwrap();
    from.insert(avatar, Health(7)).unwrap();
    from.insert(avatar, Inventory { items: vec![(4, 2)] }).unwrap();
    from.insert(before, Health(1)).unwrap();
    let inventory = from.registry().id_of::<Inventory>().unwrap();
    let bundle = codec::encode_bundle(&from, avatar, &[inventory]).unwrap();

    let mut to = populated_world();
    let arrived = codec::apply_bundle(&mut to, &bundle, DecodeLimits::default()).unwrap();
    assert_eq!(arrived.0, 51, "a new id in the receiving world");
    assert_eq!(to.get::<Position>(arrived), from.get::<Position>(avatar));
    assert_eq!(to.get::<Health>(arrived), Some(&Health(7)));
    assert_eq!(to.get::<Inventory>(arrived), None, "left out");
    assert_eq!(to.entity_count(), 51);
    assert_eq!(to.digest(), to.digest_full());

    let gone = from.spawn();
    from.despawn(gone);
    assert!(matches!(codec::encode_bundle(&from, gone, &[]), Err(CodecError::Encode(_))));
    // Archives that are not bundles: a snapshot chunk, a delta round, garbage, a cut bundle.
    let tracker = from.create_tracker();
    from.insert(avatar, Health(8)).unwrap();
    let changes = from.changes(tracker);
    let delta = codec::encode_delta(&from, &changes, 1, ChunkConfig::default()).unwrap();
    let snapshot = codec::encode_snapshot(&from, ChunkConfig::default()).unwrap();
    let digest = to.digest();
    for (what, bytes) in [
        ("a snapshot", snapshot[0].to_vec()),
        ("a delta", delta[0].to_vec()),
        ("garbage", vec![7; 64]),
        ("a cut bundle", bundle[..bundle.len() - 8].to_vec()),
    ] {
        let refused = codec::apply_bundle(&mut to, &bytes, DecodeLimits::default());
        assert!(refused.is_err(), "{what} taken as a bundle");
        assert_eq!(to.digest(), digest, "{what} changed the world");
    }
    assert_eq!(
        codec::apply_bundle(&mut to, &snapshot[0], DecodeLimits::default()),
        Err(CodecError::Invalid("not an entity bundle".into()))
    );
}
