//! The sample as a Baton region server: what `baton_runtime::serve` needs to know of it.
//!
//! `sample-region-server --serve` is `baton_runtime::serve::run(SampleGame { .. }, settings)`:
//! everything a region server does (the serve protocol, handoffs, gateways, checkpoints) comes from
//! the runtime; this file only says how the sample builds and fills a region, places a player who
//! joins without a gateway, scripts inputs for tests, and what it reports about a player.

use baton_runtime::serve::{Game, GameError};
use baton_sdk::wire::serve::{GameObject, from_game_object, to_game_object};
use baton_sdk::wire::{PlayerId, PlayerInput, RegionId};
use baton_sdk::{EntityId, Region, RegionConfig, RegionError, World};
use serde::{Deserialize, Serialize};

use crate::{Avatar, Layout, SampleLogic, WorldSpec, join_avatar, new_region_in, populate, scripted_input};

/// The sample game's settings as a region server.
#[derive(Clone, Copy, Debug)]
pub struct SampleGame {
    /// Region settings (tick rate, script limits).
    pub config: RegionConfig,
    /// One in this many churn entities changes per tick (0: none).
    pub churn_period: u64,
    /// How the cluster's regions tile the world (border crossings need it).
    pub layout: Option<Layout>,
}

/// The `world` object of a `host` command: how many things the new region holds (each 0 unless
/// given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorldRequest {
    /// Physics objects.
    pub objects: usize,
    /// Scripted NPCs.
    pub npcs: usize,
    /// Scripted plants.
    pub plants: usize,
    /// Entities that only carry churn state.
    pub churn: usize,
    /// Seed of every random choice (default 1).
    pub seed: Option<u64>,
}

/// The `spawn` of a player joining without a gateway: where the avatar stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spawn {
    /// East-west, in metres from the region's centre.
    pub x: f32,
    /// North-south, in metres from the region's centre.
    pub z: f32,
}

/// The sample's part of a player's `report`: inputs applied and their hash chain, so a test can
/// check that every input was applied once, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvatarReport {
    /// Inputs applied to the avatar.
    pub applied: u64,
    /// The hash chain over them.
    pub chain: u64,
}

impl AvatarReport {
    /// Reads the sample's part of a player's report (missing: zeros).
    #[must_use]
    pub fn from_game(game: &GameObject) -> AvatarReport {
        from_game_object(game).unwrap_or_default()
    }
}

impl Game for SampleGame {
    type Logic = SampleLogic;

    fn new_region(&self, region: RegionId) -> Result<Region<SampleLogic>, RegionError> {
        new_region_in(region, self.config, self.churn_period, self.layout)
    }

    fn populate(&self, region: &mut Region<SampleLogic>, world: &GameObject) -> Result<(), GameError> {
        let request: WorldRequest = from_game_object(world)?;
        let spec = WorldSpec {
            objects: request.objects,
            npcs: request.npcs,
            plants: request.plants,
            seed: request.seed.unwrap_or(1),
            churn: request.churn,
        };
        populate(region, spec)?;
        Ok(())
    }

    fn join(&self, region: &mut Region<SampleLogic>, player: PlayerId, spawn: &GameObject) -> Result<(), GameError> {
        let spawn: Spawn = from_game_object(spawn)?;
        join_avatar(region, player, [spawn.x, spawn.z])?;
        Ok(())
    }

    fn scripted_input(&self, player: PlayerId, seq: u64) -> Option<PlayerInput> {
        Some(scripted_input(player.0, seq))
    }

    fn player_report(&self, world: &World, avatar: EntityId) -> GameObject {
        let report = world
            .get::<Avatar>(avatar)
            .map(|avatar| AvatarReport { applied: avatar.inputs_applied, chain: avatar.input_chain })
            .unwrap_or_default();
        to_game_object(&report)
    }
}
