//! Writes valid snapshot and delta archives to a folder, as a seed corpus for the archive and
//! checkpoint fuzzers (the SDK's own component types, registered in the order a region does).
//! Usage: `cargo run -p baton-sdk --example fuzz_seeds -- <folder>`

use baton_sdk::codec::{self, ChunkConfig};
use baton_sdk::physics::{Body, BodyKind, Shape};
use baton_sdk::scripts::{Script, ScriptTimer};
use baton_sdk::sessions::{PendingInput, PlayerSession};
use baton_sdk::{DepartedAvatar, Registry, World};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder = std::env::args().nth(1).ok_or("usage: fuzz_seeds <folder>")?;
    std::fs::create_dir_all(&folder)?;
    let mut registry = Registry::new();
    registry.register::<PlayerSession>()?;
    registry.register::<DepartedAvatar>()?;
    registry.register::<Script>()?;
    registry.register::<Body>()?;
    let mut world = World::new(registry);
    for index in 0..12u64 {
        let entity = world.spawn();
        world.insert(entity, Body::new(BodyKind::Dynamic, Shape::Ball { radius: 0.5 }, [index as f32, 1.0, 0.0]))?;
        if index % 3 == 0 {
            world.insert(
                entity,
                PlayerSession {
                    player: index,
                    last_applied: 4,
                    pending: vec![PendingInput { seq: 5, payload: vec![1, 2, 3] }],
                    duplicates: 0,
                    early: 0,
                    crossings: 0,
                },
            )?;
        }
        if index % 4 == 0 {
            let script = Script {
                module: "wander".to_owned(),
                revision: 3,
                globals: vec![1, 2],
                memory_pages: 1,
                memory: vec![0, 1, 2, 3],
                timers: vec![ScriptTimer { id: 1, due_tick: 40 }],
                rng: 99,
                fault: None,
            };
            world.insert(entity, script)?;
        }
    }
    let tracker = world.create_tracker();
    let mut written = 0;
    for chunk in codec::encode_snapshot(&world, ChunkConfig { target_chunk_bytes: 512, max_chunk_bytes: 4096 })? {
        std::fs::write(format!("{folder}/snapshot-{written}"), &chunk[..])?;
        written += 1;
    }
    let first = world.entities().next().ok_or("empty world")?;
    world.despawn(first);
    let second = world.entities().next().ok_or("empty world")?;
    world.remove::<Body>(second);
    let changes = world.changes(tracker);
    for part in codec::encode_delta(&world, &changes, 1, ChunkConfig::default())? {
        std::fs::write(format!("{folder}/delta-{written}"), &part[..])?;
        written += 1;
    }
    println!("wrote {written} seed archives to {folder}");
    Ok(())
}
