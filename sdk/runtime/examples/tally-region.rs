//! A whole Baton region server in one file: the smallest game that runs under the coordinator,
//! takes players through gateways and migrates between hosts like any other.
//!
//! Each player's avatar keeps a tally of the inputs it received (how many, and the sum of each
//! payload's first byte); lamps blink on their own. `baton-agent --host h1 ... -- tally-region
//! --coordinator ADDR --certs DIR --cert-name h1` runs it as a host's warm pool; the coordinator
//! creates regions with `POST /v1/regions {"region": 1, "host": "h1", "world": {"lamps": 20}}`.

use std::process::ExitCode;

use baton_runtime::serve::{Game, GameError, ServeSettings};
use baton_sdk::region::RegionLogic;
use baton_sdk::scripts::{PROPERTY_SLOTS, ScriptBindings, ScriptEngine, ScriptError};
use baton_sdk::sessions::ReadyInput;
use baton_sdk::wire::serve::GameObject;
use baton_sdk::wire::{PlayerId, PlayerInput, RegionId};
use baton_sdk::{Component, EntityId, EntryError, Region, RegionConfig, RegionError, Registry, RegistryError, World};

/// A lamp that switches every `period` ticks.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "tally.lamp")]
struct Lamp {
    period: u64,
    on: bool,
}

/// A player's avatar: the inputs it applied and the sum of their first bytes.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "tally.tally")]
struct Tally {
    inputs: u64,
    sum: u64,
}

/// The game's logic holds no state: everything is in the world, so it moves with the region.
struct TallyLogic;

impl RegionLogic for TallyLogic {
    fn register(&self, registry: &mut Registry) -> Result<(), RegistryError> {
        registry.register::<Lamp>()?;
        registry.register::<Tally>()?;
        Ok(())
    }

    fn load_assets(&mut self, _scripts: &mut ScriptEngine) -> Result<(), ScriptError> {
        Ok(())
    }

    fn apply_input(&mut self, world: &mut World, input: &ReadyInput) {
        if let Some(mut tally) = world.get_mut::<Tally>(input.avatar) {
            tally.inputs += 1;
            tally.sum += u64::from(input.payload.first().copied().unwrap_or(0));
        }
    }

    fn tick(&mut self, world: &mut World) {
        let tick = world.tick();
        let due: Vec<EntityId> = world
            .iter::<Lamp>()
            .filter(|(_, lamp)| tick.is_multiple_of(lamp.period))
            .map(|(entity, _)| entity)
            .collect();
        for entity in due {
            if let Some(mut lamp) = world.get_mut::<Lamp>(entity) {
                lamp.on = !lamp.on;
            }
        }
    }

    fn spawn_avatar(&mut self, world: &mut World, _player: PlayerId) -> Result<EntityId, EntryError> {
        let avatar = world.spawn();
        world.insert(avatar, Tally { inputs: 0, sum: 0 })?;
        Ok(avatar)
    }

    fn player_view(&self, world: &World, avatar: EntityId, out: &mut Vec<u8>) {
        if let Some(tally) = world.get::<Tally>(avatar) {
            out.extend_from_slice(&tally.inputs.to_le_bytes());
            out.extend_from_slice(&tally.sum.to_le_bytes());
        }
    }
}

/// The game has no scripts, so scripts see no entity properties.
impl ScriptBindings for TallyLogic {
    fn read(&self, _world: &World, _entity: EntityId, _slots: &mut [f32; PROPERTY_SLOTS]) {}
    fn write(&mut self, _world: &mut World, _entity: EntityId, _slot: usize, _value: f32) {}
}

/// What Baton needs to serve the game.
struct TallyGame {
    config: RegionConfig,
}

impl Game for TallyGame {
    type Logic = TallyLogic;

    fn new_region(&self, region: RegionId) -> Result<Region<TallyLogic>, RegionError> {
        Region::new(region, TallyLogic, self.config)
    }

    fn populate(&self, region: &mut Region<TallyLogic>, world: &GameObject) -> Result<(), GameError> {
        if let Some(key) = world.keys().find(|key| *key != "lamps") {
            return Err(format!("unknown world key {key:?} (this game knows \"lamps\")").into());
        }
        let lamps = world.get("lamps").map_or(Some(10), |lamps| lamps.as_u64()).ok_or("\"lamps\" must be a count")?;
        for index in 0..lamps {
            let lamp = region.world_mut().spawn();
            region.world_mut().insert(lamp, Lamp { period: 1 + index % 7, on: false })?;
        }
        Ok(())
    }

    fn join(&self, region: &mut Region<TallyLogic>, player: PlayerId, _spawn: &GameObject) -> Result<(), GameError> {
        let avatar = TallyLogic.spawn_avatar(region.world_mut(), player)?;
        region.join(player, avatar)?;
        Ok(())
    }

    fn scripted_input(&self, player: PlayerId, seq: u64) -> Option<PlayerInput> {
        Some(PlayerInput { player, seq, payload: vec![(seq % 251) as u8] })
    }

    fn player_report(&self, world: &World, avatar: EntityId) -> GameObject {
        let mut report = GameObject::new();
        if let Some(tally) = world.get::<Tally>(avatar) {
            report.insert("inputs".into(), tally.inputs.into());
            report.insert("sum".into(), tally.sum.into());
        }
        report
    }
}

/// Serve the tally game as a Baton region server (every option is a region server's).
#[derive(clap::Parser)]
#[command(version, about, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    server: ServeSettings,
}

fn main() -> ExitCode {
    baton_runtime::serve::main("tally-region", "BATON_TALLY", |cli: Cli| {
        let config = RegionConfig { tick_rate_hz: cli.server.tick_rate, ..RegionConfig::default() };
        baton_runtime::serve::run(TallyGame { config }, &cli.server)
    })
}
