//! Snapshot and delta codec benchmarks: encode, validate+decode, apply; deltas at 1/5/20% churn
//! (and at 1% of a million entities).
//! Results and the command that produced them are in docs/benchmarks.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use baton_sdk::codec::{self, ChunkConfig, DecodeLimits};
use baton_sdk::{Component, Registry, World};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "bench.pose")]
struct Pose {
    translation: [f32; 3],
    rotation: [f32; 4],
}

#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "bench.velocity")]
struct Velocity([f32; 3]);

#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "bench.stats")]
struct Stats {
    health: u32,
    level: u16,
    name: String,
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<Pose>().unwrap();
    registry.register::<Velocity>().unwrap();
    registry.register::<Stats>().unwrap();
    registry
}

fn world(entities: usize) -> World {
    let mut world = World::new(registry());
    for index in 0..entities {
        let entity = world.spawn();
        let f = index as f32;
        world.insert(entity, Pose { translation: [f, 1.0, -f], rotation: [0.0, 0.0, 0.0, 1.0] }).unwrap();
        world.insert(entity, Velocity([0.1, 0.0, 0.2])).unwrap();
        world.insert(entity, Stats { health: 100, level: 3, name: format!("npc-{index:06}") }).unwrap();
    }
    world
}

fn churn(world: &mut World, fraction: f64, round: u32) {
    let step = (1.0 / fraction).round() as usize;
    let entities: Vec<_> = world.entities().skip(round as usize % step).step_by(step).collect();
    for entity in entities {
        let mut pose = world.get_mut::<Pose>(entity).unwrap();
        pose.translation[0] += 0.5;
        let mut velocity = world.get_mut::<Velocity>(entity).unwrap();
        velocity.0[1] -= 0.1;
    }
}

fn snapshot_bytes(world: &World) -> Vec<rkyv::util::AlignedVec> {
    codec::encode_snapshot(world, ChunkConfig::default()).unwrap()
}

fn bench_snapshots(criterion: &mut Criterion) {
    for entities in [10_000usize, 100_000] {
        let source = world(entities);
        let chunks = snapshot_bytes(&source);
        let total: usize = chunks.iter().map(|chunk| chunk.len()).sum();
        eprintln!("snapshot of {entities} entities: {total} bytes in {} chunks", chunks.len());
        let mut group = criterion.benchmark_group(format!("snapshot/{entities}"));
        group.throughput(Throughput::Bytes(total as u64));
        group.bench_function("encode", |bencher| bencher.iter(|| black_box(snapshot_bytes(&source))));
        group.bench_function("validate+decode", |bencher| {
            bencher.iter(|| {
                for chunk in &chunks {
                    black_box(codec::decode(source.registry(), chunk, DecodeLimits::default()).unwrap());
                }
            })
        });
        // As a handoff's target: it makes room for the world its `Begin` announces, then applies.
        let sizes = source.sizes();
        group.bench_function("validate+decode+apply", |bencher| {
            bencher.iter_batched(
                || World::new(registry()),
                |mut target| {
                    target.reserve(&sizes);
                    for chunk in &chunks {
                        codec::apply(&mut target, chunk, DecodeLimits::default()).unwrap();
                    }
                    target
                },
                BatchSize::LargeInput,
            )
        });
        // Without knowing the size ahead: each column grows (and is copied) as chunks arrive.
        group.bench_function("validate+decode+apply, no size given", |bencher| {
            bencher.iter_batched(
                || World::new(registry()),
                |mut target| {
                    for chunk in &chunks {
                        codec::apply(&mut target, chunk, DecodeLimits::default()).unwrap();
                    }
                    target
                },
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn bench_deltas(criterion: &mut Criterion) {
    for entities in [10_000usize, 100_000, 1_000_000] {
        let base = world(entities);
        let snapshot: usize = snapshot_bytes(&base).iter().map(|chunk| chunk.len()).sum();
        for fraction in [0.01, 0.05, 0.20] {
            // A region of the seeds' size (about 80 MB of state) at the rate its handoff is measured at.
            if entities == 1_000_000 && fraction > 0.01 {
                continue;
            }
            let mut source = world(entities);
            let tracker = source.create_tracker();
            churn(&mut source, fraction, 0);
            let changes = source.changes(tracker);
            let parts = codec::encode_delta(&source, &changes, 1, ChunkConfig::default()).unwrap();
            let bytes: usize = parts.iter().map(|part| part.len()).sum();
            let changed = (entities as f64 * fraction) as usize;
            eprintln!(
                "delta {entities} entities, {:.0}% changed ({changed} entities, {} component values): {bytes} bytes = {:.2}% of the {snapshot}-byte snapshot, {:.1} bytes per changed entity",
                fraction * 100.0,
                changes.set.len(),
                bytes as f64 * 100.0 / snapshot as f64,
                bytes as f64 / changed as f64
            );
            let mut group = criterion.benchmark_group(format!("delta/{entities}/{:.0}pct", fraction * 100.0));
            group.throughput(Throughput::Bytes(bytes as u64));
            // The encoding alone, of changes read once: what a source does with a final round.
            group.bench_function("encode", |bencher| {
                bencher.iter(|| black_box(codec::encode_delta(&source, &changes, 1, ChunkConfig::default()).unwrap()))
            });
            group.bench_function("capture", |bencher| {
                bencher.iter(|| black_box(codec::capture_delta(&source, changes.clone(), 1).unwrap()))
            });
            // What a source does at its freeze, after the game changed the world: read the
            // tracker, encode the final round, fold the digest (the churn itself not timed).
            let mut round = 1;
            group.bench_function("read+encode+digest", |bencher| {
                bencher.iter_custom(|iterations| {
                    let mut took = Duration::ZERO;
                    for _ in 0..iterations {
                        churn(&mut source, fraction, round);
                        round += 1;
                        let started = std::time::Instant::now();
                        let changes = source.changes(tracker);
                        black_box(codec::encode_delta(&source, &changes, round, ChunkConfig::default()).unwrap());
                        black_box(source.digest());
                        took += started.elapsed();
                    }
                    took
                })
            });
            group.bench_function("track+encode", |bencher| {
                bencher.iter(|| {
                    churn(&mut source, fraction, round);
                    round += 1;
                    let changes = source.changes(tracker);
                    black_box(codec::encode_delta(&source, &changes, round, ChunkConfig::default()).unwrap())
                })
            });
            let mut target = World::new(registry());
            for chunk in snapshot_bytes(&base) {
                codec::apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
            }
            group.bench_function("validate+decode+apply", |bencher| {
                bencher.iter(|| {
                    for part in &parts {
                        codec::apply(&mut target, part, DecodeLimits::default()).unwrap();
                    }
                })
            });
            // As a handoff's target: it folds the digest after each round, which also frees the
            // round's journal records (without it the journal grows every iteration and the bench
            // measures the kernel handing out fresh pages).
            group.bench_function("validate+decode+apply+digest", |bencher| {
                bencher.iter(|| {
                    for part in &parts {
                        codec::apply(&mut target, part, DecodeLimits::default()).unwrap();
                    }
                    black_box(target.digest())
                })
            });
            group.finish();
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench_snapshots, bench_deltas }
criterion_main!(benches);
