//! Scripts keep their whole state across snapshot/restore, and a misbehaving script is stopped
//! without stopping anything else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_sdk::codec::{self, ChunkConfig, DecodeLimits};
use baton_sdk::scripts::{PROPERTY_SLOTS, Script, ScriptBindings, ScriptConfig, ScriptEngine, ScriptError};
use baton_sdk::{EntityId, Registry, World};

/// Writes nothing, reads the entity id into slot 0.
struct Bindings;

impl ScriptBindings for Bindings {
    fn read(&self, _world: &World, entity: EntityId, slots: &mut [f32; PROPERTY_SLOTS]) {
        slots[0] = entity.0 as f32;
    }
    fn write(&mut self, _world: &mut World, _entity: EntityId, _slot: usize, _value: f32) {}
}

/// Counts in a global and in memory (at address 1000), every tick.
const COUNTER: &str = r#"(module
  (import "baton" "set_timer" (func $set_timer (param i32 i32)))
  (import "baton" "random" (func $random (result i32)))
  (memory (export "memory") 1)
  (global $count (export "count") (mut i64) (i64.const 0))
  (global $noise (export "noise") (mut i32) (i32.const 0))
  (func (export "init") (call $set_timer (i32.const 1) (i32.const 1)))
  (func (export "on_timer") (param i32)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (global.set $noise (i32.xor (global.get $noise) (call $random)))
    (i32.store (i32.const 1000) (i32.add (i32.load (i32.const 1000)) (i32.const 3)))
    (call $set_timer (i32.const 1) (i32.const 1))))"#;

fn world() -> World {
    let mut registry = Registry::new();
    registry.register::<Script>().unwrap();
    World::new(registry)
}

fn engine(config: ScriptConfig) -> ScriptEngine {
    let mut engine = ScriptEngine::new(config);
    engine.register_module("counter", COUNTER.as_bytes()).unwrap();
    engine
}

fn run(engine: &mut ScriptEngine, world: &mut World, ticks: u64) {
    for _ in 0..ticks {
        engine.run_due(world, &mut Bindings);
        world.set_tick(world.tick() + 1);
    }
}

fn count_of(world: &World, entity: EntityId) -> (u64, u32) {
    let script = world.get::<Script>(entity).unwrap();
    // Memory is stored without trailing zero bytes, so read with zero padding.
    let byte = |index: usize| script.memory.get(index).copied().unwrap_or(0);
    let memory_word = u32::from_le_bytes([byte(1000), byte(1001), byte(1002), byte(1003)]);
    (script.globals[0], memory_word)
}

#[test]
fn a_counting_script_keeps_counting_after_restore() {
    let mut source = world();
    let mut source_engine = engine(ScriptConfig::default());
    let entity = source.spawn();
    source_engine.attach(&mut source, &mut Bindings, entity, "counter", 42).unwrap();
    run(&mut source_engine, &mut source, 25);
    assert_eq!(count_of(&source, entity), (24, 72));

    let mut target = world();
    for chunk in codec::encode_snapshot(&source, ChunkConfig::default()).unwrap() {
        codec::apply(&mut target, &chunk, DecodeLimits::default()).unwrap();
    }
    let mut target_engine = engine(ScriptConfig::default());
    target_engine.rebuild(&target);
    assert_eq!(source.digest(), target.digest());

    run(&mut source_engine, &mut source, 30);
    run(&mut target_engine, &mut target, 30);
    assert_eq!(count_of(&target, entity), (54, 162), "the restored script continues from 24, not from 0");
    assert_eq!(source.digest(), target.digest(), "globals, memory, timers and random state all continued");
}

#[test]
fn a_script_over_its_fuel_is_stopped_and_others_keep_running() {
    const SPIN: &str = r#"(module
      (import "baton" "set_timer" (func $set_timer (param i32 i32)))
      (func (export "init") (call $set_timer (i32.const 1) (i32.const 2)))
      (func (export "on_timer") (param i32) (loop $forever (br $forever))))"#;
    let mut world = world();
    let mut engine = engine(ScriptConfig { fuel_per_tick: 50_000, ..ScriptConfig::default() });
    engine.register_module("spin", SPIN.as_bytes()).unwrap();
    let spinner = world.spawn();
    engine.attach(&mut world, &mut Bindings, spinner, "spin", 1).unwrap();
    let counter = world.spawn();
    engine.attach(&mut world, &mut Bindings, counter, "counter", 2).unwrap();
    run(&mut engine, &mut world, 10);
    let fault = world.get::<Script>(spinner).unwrap().fault.clone().expect("the spinning script is stopped");
    assert!(fault.contains("fuel"), "{fault}");
    assert!(world.get::<Script>(spinner).unwrap().timers.is_empty());
    assert_eq!(count_of(&world, counter).0, 9, "the other script ran every tick");
}

#[test]
fn a_script_growing_past_its_memory_cap_is_stopped() {
    const GREEDY: &str = r#"(module
      (import "baton" "set_timer" (func $set_timer (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "init") (call $set_timer (i32.const 1) (i32.const 1)))
      (func (export "on_timer") (param i32) (drop (memory.grow (i32.const 1)))))"#;
    let mut world = world();
    let mut engine = engine(ScriptConfig::default());
    engine.register_module("greedy", GREEDY.as_bytes()).unwrap();
    let entity = world.spawn();
    engine.attach(&mut world, &mut Bindings, entity, "greedy", 1).unwrap();
    run(&mut engine, &mut world, 3);
    let script = world.get::<Script>(entity).unwrap();
    assert!(script.fault.is_some(), "growing past 64 KiB must stop the script");
    assert!(script.memory_pages <= 1);
}

#[test]
fn modules_whose_state_could_not_migrate_are_refused() {
    let cases = [
        (
            "hidden",
            r#"(module (global $g (mut i32) (i32.const 0)) (func (export "init") (global.set $g (i32.const 1))))"#,
            "not exported",
        ),
        ("imported memory", r#"(module (import "env" "memory" (memory 1)))"#, "only functions"),
        ("private memory", r#"(module (memory 1))"#, "exported as \"memory\""),
        (
            "table writer",
            r#"(module (table 1 funcref) (func (table.set 0 (i32.const 0) (ref.null func))))"#,
            "table.set",
        ),
        ("big memory", r#"(module (memory (export "memory") 2))"#, "exceeds the limit"),
        ("foreign import", r#"(module (import "wasi" "fd_write" (func (param i32))))"#, "only module `baton`"),
    ];
    for (name, source, expected) in cases {
        let mut engine = ScriptEngine::new(ScriptConfig::default());
        match engine.register_module(name, source.as_bytes()) {
            Err(ScriptError::Refused { reason, .. }) => assert!(reason.contains(expected), "{name}: {reason}"),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    let mut engine = ScriptEngine::new(ScriptConfig::default());
    assert!(matches!(engine.register_module("junk", b"(module"), Err(ScriptError::InvalidModule { .. })));
    let mut world = world();
    let entity = world.spawn();
    assert!(matches!(engine.attach(&mut world, &mut Bindings, entity, "nope", 0), Err(ScriptError::UnknownModule(_))));
}
