//! Any bytes read as a checkpoint give its header or an error, never a panic. The same bytes are
//! then made the one chunk of a checkpoint with a correct header (its checksum, schema hash, and
//! the digest and tick the restore found: a fuzzer alone would almost never match them), so they
//! reach the restore's checked decoder; a checkpoint that restores encodes again to one with the
//! same tick and digest, which restores to a world that encodes to the same bytes. The seed corpus is the archive fuzzer's
//! (`fuzz_seeds`: chunks of the SDK's own component types).
#![no_main]

use baton_sdk::checkpoint::{self, CheckpointError, HEADER_BYTES, MAGIC, VERSION};
use baton_sdk::scripts::{PROPERTY_SLOTS, ScriptBindings, ScriptEngine, ScriptError};
use baton_sdk::sessions::ReadyInput;
use baton_sdk::wire::RegionId;
use baton_sdk::{EntityId, Region, RegionConfig, RegionLogic, Registry, RegistryError, World};
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

/// A game with the SDK's own component types and no behaviour.
struct Game;

impl ScriptBindings for Game {
    fn read(&self, _world: &World, _entity: EntityId, _slots: &mut [f32; PROPERTY_SLOTS]) {}
    fn write(&mut self, _world: &mut World, _entity: EntityId, _slot: usize, _value: f32) {}
}

impl RegionLogic for Game {
    fn register(&self, _registry: &mut Registry) -> Result<(), RegistryError> {
        // The SDK's own types (sessions, departed avatars, scripts, bodies) are registered already.
        Ok(())
    }
    fn load_assets(&mut self, _scripts: &mut ScriptEngine) -> Result<(), ScriptError> {
        Ok(())
    }
    fn apply_input(&mut self, _world: &mut World, _input: &ReadyInput) {}
    fn tick(&mut self, _world: &mut World) {}
}

const REGION: RegionId = RegionId(1);

fn region() -> Region<Game> {
    Region::new(REGION, Game, RegionConfig::default()).expect("the fuzz game's region")
}

/// A checkpoint of `REGION` whose body is the one chunk `chunk`, claiming `tick` and `digest`.
fn checkpoint_of(chunk: &[u8], schema_hash: u64, tick: u64, digest: u128) -> Vec<u8> {
    let mut body = (chunk.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(chunk);
    let mut file = Vec::with_capacity(HEADER_BYTES + body.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&VERSION.to_le_bytes());
    file.extend_from_slice(&REGION.0.to_le_bytes());
    file.extend_from_slice(&tick.to_le_bytes());
    file.extend_from_slice(&1u64.to_le_bytes());
    file.extend_from_slice(&digest.to_le_bytes());
    file.extend_from_slice(&schema_hash.to_le_bytes());
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&xxh3_64(&body).to_le_bytes());
    file.extend_from_slice(&body);
    file
}

fuzz_target!(|bytes: &[u8]| {
    let _ = checkpoint::inspect(bytes);
    let _ = checkpoint::restore(&mut region(), bytes);

    let schema_hash = region().world().registry().schema_hash();
    let mut first = region();
    let file = match checkpoint::restore(&mut first, &checkpoint_of(bytes, schema_hash, 0, 0)) {
        Ok(_) => checkpoint_of(bytes, schema_hash, 0, 0),
        // The world the chunk makes, claimed by the header: it must restore now.
        Err(CheckpointError::Digest { found, .. }) => checkpoint_of(bytes, schema_hash, first.world().tick(), found),
        Err(_) => return,
    };
    let mut restored = region();
    let info = checkpoint::restore(&mut restored, &file).expect("a checkpoint with the digest it makes restores");
    let (again, encoded) = checkpoint::encode(&mut restored, info.epoch).expect("a restored region encodes");
    assert_eq!(
        (again.tick, again.digest),
        (info.tick, info.digest),
        "the checkpoint of a restored region says what the restored one said"
    );
    assert_eq!(checkpoint::inspect(&encoded).expect("an encoded checkpoint reads"), again);
    let mut second = region();
    assert_eq!(checkpoint::restore(&mut second, &encoded).expect("an encoded checkpoint restores"), again);
    // Encoding is a function of the world: the restored copy encodes to the same bytes.
    let (_, encoded_again) = checkpoint::encode(&mut second, info.epoch).expect("a restored region encodes");
    assert!(encoded_again == encoded, "a restored checkpoint encodes to other bytes");
});
