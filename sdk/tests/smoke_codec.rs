//! Smoke test for snapshot + delta round trips.
use baton_sdk::codec::{self, ChunkConfig, DecodeLimits};
use baton_sdk::{Component, Registry, World};

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.pos")]
struct Pos {
    x: f32,
    y: f32,
    name: String,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.hp")]
struct Hp(u32);

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Pos>().unwrap();
    r.register::<Hp>().unwrap();
    r
}

#[test]
fn snapshot_then_delta() {
    let mut source = World::new(registry());
    for i in 0..1000u32 {
        let e = source.spawn();
        source.insert(e, Pos { x: i as f32, y: 0.0, name: format!("e{i}") }).unwrap();
        if i % 3 == 0 {
            source.insert(e, Hp(i)).unwrap();
        }
    }
    let tracker = source.create_tracker();
    let chunks =
        codec::encode_snapshot(&source, ChunkConfig { target_chunk_bytes: 4096, max_chunk_bytes: 16384 }).unwrap();
    assert!(chunks.len() > 3, "{}", chunks.len());
    let mut target = World::new(registry());
    for c in &chunks {
        codec::apply(&mut target, c, DecodeLimits::default()).unwrap();
    }
    assert_eq!(source.digest(), target.digest());
    assert_eq!(source.digest(), source.digest_full());
    // mutate
    for (n, e) in source.entities().collect::<Vec<_>>().into_iter().enumerate() {
        if n % 10 == 0 {
            source.get_mut::<Pos>(e).unwrap().x += 1.0;
        }
        if n % 17 == 0 {
            source.despawn(e);
        }
        if n % 23 == 0 {
            source.remove::<Hp>(e);
        }
    }
    let e = source.spawn();
    source.insert(e, Hp(5)).unwrap();
    source.set_tick(7);
    let changes = source.changes(tracker);
    let parts = codec::encode_delta(&source, &changes, 1, ChunkConfig::default()).unwrap();
    for p in &parts {
        codec::apply(&mut target, p, DecodeLimits::default()).unwrap();
    }
    assert_eq!(source.digest_full(), target.digest_full());
    assert_eq!(source.digest(), target.digest());
    assert_eq!(target.digest(), target.digest_full());
}
