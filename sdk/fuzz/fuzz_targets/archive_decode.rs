//! Any bytes given to the archive decoder (`codec::prepare`: decoded and its values hashed, as a
//! handoff's target does on its link) give an archive or an error, never a panic; an archive
//! that decodes also applies, with the digest the world's own hashes give and the world that
//! applying it raw (`codec::apply`) makes, and that world encodes to a snapshot that rebuilds the
//! same world (the same digest) in an empty one.
#![no_main]

use baton_sdk::codec::{self, ChunkConfig, DecodeLimits};
use baton_sdk::physics::Body;
use baton_sdk::scripts::Script;
use baton_sdk::sessions::PlayerSession;
use baton_sdk::{DepartedAvatar, Registry, World};
use libfuzzer_sys::fuzz_target;

fn registry() -> Registry {
    let mut registry = Registry::new();
    // The SDK's own types, in the order a region registers them (the seed corpus's registry).
    let _ = registry.register::<PlayerSession>();
    let _ = registry.register::<DepartedAvatar>();
    let _ = registry.register::<Script>();
    let _ = registry.register::<Body>();
    registry
}

fuzz_target!(|bytes: &[u8]| {
    let limits = DecodeLimits { max_archive_bytes: 1 << 20 };
    let mut world = World::new(registry());
    if let Ok(decoded) = codec::prepare(world.registry(), bytes, limits) {
        decoded.apply(&mut world);
        assert_eq!(world.digest(), world.digest_full(), "the values were hashed as the world hashes them");
        let mut raw = World::new(registry());
        codec::apply(&mut raw, bytes, limits).expect("what prepares also decodes");
        assert_eq!(raw.digest(), world.digest(), "prepared or not, an archive makes the same world");
        let chunks = codec::encode_snapshot(&world, ChunkConfig::default()).expect("a decoded world encodes");
        let mut rebuilt = World::new(registry());
        for chunk in &chunks {
            codec::apply(&mut rebuilt, chunk, DecodeLimits::default()).expect("an encoded snapshot applies");
        }
        assert_eq!(rebuilt.digest(), world.digest(), "the snapshot of a decoded world rebuilds another world");
    }
});
