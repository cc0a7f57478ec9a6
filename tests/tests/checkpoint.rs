//! A whole sample region saved to a checkpoint and restored into a fresh process's region equals
//! its source and continues exactly as its source does; a damaged, foreign or mismatched
//! checkpoint is refused with a clear error and never half-restored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_harness::headless::SimulatedPlayers;
use baton_sdk::checkpoint::{self, CheckpointError};
use baton_sdk::wire::{Epoch, RegionId};
use baton_sdk::{Region, RegionConfig};
use sample_region_server::{SampleLogic, WorldSpec, new_region, populate};

fn busy_region(seed: u64) -> (Region<SampleLogic>, SimulatedPlayers) {
    let mut region = new_region(RegionId(4), RegionConfig::default()).unwrap();
    populate(&mut region, WorldSpec { objects: 300, npcs: 40, plants: 40, seed, churn: 20 }).unwrap();
    let players = SimulatedPlayers::join(&mut region, 10, 1, 20, seed).unwrap();
    (region, players)
}

fn run(region: &mut Region<SampleLogic>, players: &mut SimulatedPlayers, ticks: u32) {
    for _ in 0..ticks {
        for input in players.inputs_for_tick(region.world().tick()) {
            region.submit_input(input).unwrap();
        }
        region.tick();
    }
}

#[test]
fn a_restored_checkpoint_equals_its_source_and_continues_identically() {
    let (mut source, mut players) = busy_region(7);
    run(&mut source, &mut players, 45);
    let (info, bytes) = checkpoint::encode(&mut source, Epoch(3)).unwrap();
    assert_eq!((info.region, info.tick, info.epoch), (RegionId(4), source.world().tick(), Epoch(3)));
    assert_eq!(checkpoint::inspect(&bytes).unwrap(), info);

    let mut restored = new_region(RegionId(4), RegionConfig::default()).unwrap();
    let restored_info = checkpoint::restore(&mut restored, &bytes).unwrap();
    assert_eq!(restored_info, info);
    assert_eq!(restored.world_mut().digest(), source.world_mut().digest());

    // Both continue with the same inputs (players' sessions and pending inputs were saved).
    let mut twin_players = players.clone();
    source.rebuild_caches();
    for tick in 0..60 {
        run(&mut source, &mut players, 1);
        run(&mut restored, &mut twin_players, 1);
        assert_eq!(source.world_mut().digest(), restored.world_mut().digest(), "tick {tick} after the restore");
    }
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let (mut source, mut players) = busy_region(9);
    run(&mut source, &mut players, 10);
    let (_, bytes) = checkpoint::encode(&mut source, Epoch(1)).unwrap();
    let fresh = || new_region(RegionId(4), RegionConfig::default()).unwrap();

    // A flipped byte anywhere in the body: the checksum catches it before any decoding.
    for position in [checkpoint::HEADER_BYTES, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x40;
        let mut target = fresh();
        assert!(matches!(checkpoint::restore(&mut target, &damaged), Err(CheckpointError::Checksum)));
        assert_eq!(target.world().entity_count(), 0, "nothing half-restored");
    }
    // Truncated (a torn write) and garbage.
    for broken in [&bytes[..bytes.len() - 100], &bytes[..20], &b"definitely not a checkpoint"[..]] {
        assert!(matches!(checkpoint::restore(&mut fresh(), broken), Err(CheckpointError::Invalid(_))));
    }
    // Another region's checkpoint.
    let mut other = new_region(RegionId(5), RegionConfig::default()).unwrap();
    assert!(matches!(
        checkpoint::restore(&mut other, &bytes),
        Err(CheckpointError::WrongRegion { expected: RegionId(5), found: RegionId(4) })
    ));
    // Into a region that already holds a world.
    let (mut populated, _) = busy_region(1);
    assert!(matches!(checkpoint::restore(&mut populated, &bytes), Err(CheckpointError::NotEmpty)));
    // A different game schema (the schema hash in the header, with a valid checksum).
    let mut foreign = bytes.clone();
    let schema_at = 8 + 2 + 8 + 8 + 8 + 16;
    foreign[schema_at] ^= 1;
    assert!(matches!(checkpoint::restore(&mut fresh(), &foreign), Err(CheckpointError::Schema { .. })));
    // A recorded digest that the world does not have.
    let mut lying = bytes.clone();
    lying[8 + 2 + 8 + 8 + 8] ^= 1;
    let mut target = fresh();
    assert!(matches!(checkpoint::restore(&mut target, &lying), Err(CheckpointError::Digest { .. })));
    // A header tick that is not the world's (the checksum covers the body only).
    let mut late = bytes.clone();
    late[8 + 2 + 8] ^= 1;
    assert!(matches!(
        checkpoint::restore(&mut fresh(), &late),
        Err(CheckpointError::Invalid(reason)) if reason.contains("tick")
    ));
}
