//! Any bytes given to the archive decoder give an archive or an error, never a panic; an archive
//! that decodes also applies.
#![no_main]

use baton_sdk::codec::{self, DecodeLimits};
use baton_sdk::physics::Body;
use baton_sdk::scripts::Script;
use baton_sdk::sessions::PlayerSession;
use baton_sdk::{Registry, World};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut registry = Registry::new();
    let _ = registry.register::<PlayerSession>();
    let _ = registry.register::<Script>();
    let _ = registry.register::<Body>();
    let mut world = World::new(registry);
    if let Ok(decoded) = codec::decode(world.registry(), bytes, DecodeLimits { max_archive_bytes: 1 << 20 }) {
        decoded.apply(&mut world);
        let _ = world.digest();
    }
});
