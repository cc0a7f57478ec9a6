//! A sample Baton region: a 256 m x 256 m meadow with physics crates and balls, NPCs that wander or
//! graze under WebAssembly scripts, plants that grow on script timers, and avatars walked by their
//! players' inputs.
//!
//! It is a real game built on the SDK, used by the tests, the benchmarks and the demo. All of its
//! state is in the world; [`SampleLogic`] holds only configuration. [`game::SampleGame`] makes it a
//! Baton region server (`sample-region-server --serve`).
//!
//! # Player input format (version 1, the sample's own; the SDK treats it as opaque bytes)
//! `u8 version = 1 | f32 LE walk x | f32 LE walk z | game data up to the payload limit`. The walk
//! vector is clamped to length 1. An input that does not parse is consumed without effect.

pub mod game;

use baton_sdk::physics::{Body, BodyKind, Shape};
use baton_sdk::region::RegionLogic;
use baton_sdk::scripts::{PROPERTY_SLOTS, ScriptBindings, ScriptEngine, ScriptError};
use baton_sdk::sessions::ReadyInput;
use baton_sdk::wire::{PlayerId, PlayerInput, RegionId};
use baton_sdk::{
    AvatarLocation, Component, EntityId, Region, RegionConfig, RegionError, Registry, RegistryError, World,
};

/// Half the side of the region, in metres.
pub const HALF_SIZE: f32 = 128.0;
/// Avatars walk at this speed, in m/s.
pub const AVATAR_SPEED: f32 = 4.0;

/// Where an NPC or plant stands (physics objects and avatars keep their pose in their [`Body`]).
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "sample.transform")]
pub struct Transform {
    /// Position in metres.
    pub position: [f32; 3],
}

/// A scripted non-player character.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "sample.npc")]
pub struct Npc {
    /// Walking velocity on the ground plane (x, z), in m/s, set by its script.
    pub velocity: [f32; 2],
}

/// A plant whose size its script grows.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "sample.plant")]
pub struct Plant {
    /// Size relative to a seedling.
    pub size: f32,
}

/// A player's avatar; its pose is its kinematic [`Body`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "sample.avatar")]
pub struct Avatar {
    /// Walk direction from the last input, as f32 bits (x, z).
    pub walk_bits: [u32; 2],
    /// Inputs applied to this avatar.
    pub inputs_applied: u64,
    /// A running hash of every applied input's sequence number and payload, in order: two worlds
    /// agree on it only if they applied the same inputs exactly once each, in the same order.
    pub input_chain: u64,
}

/// Filler state that changes at a configured rate (benchmarks: `--dirty`).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "sample.churn")]
pub struct Churn {
    /// Bumped whenever the entity churns.
    pub counter: u64,
    /// Payload that travels with it.
    pub payload: [u8; 40],
}

/// How many of each thing a freshly populated region holds.
#[derive(Clone, Copy, Debug)]
pub struct WorldSpec {
    /// Physics objects (crates and balls).
    pub objects: usize,
    /// Scripted NPCs.
    pub npcs: usize,
    /// Scripted plants.
    pub plants: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Entities that only carry [`Churn`] state.
    pub churn: usize,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec { objects: 2000, npcs: 500, plants: 1000, seed: 1, churn: 0 }
    }
}

/// The sample's game logic. Holds configuration and a view cache rebuilt every tick; no state.
#[derive(Clone, Debug)]
pub struct SampleLogic {
    /// Seconds per tick.
    pub dt: f32,
    /// Every tick, one in this many [`Churn`] entities changes (0: none).
    pub churn_period: u64,
    /// How regions tile the world (`None`: a lone region whose edges are walls).
    pub layout: Option<Layout>,
    /// The region this logic runs.
    pub region: RegionId,
    views: ViewIndex,
}

impl SampleLogic {
    /// Logic for `region` ticking every `dt` seconds.
    #[must_use]
    pub fn new(region: RegionId, dt: f32, churn_period: u64, layout: Option<Layout>) -> SampleLogic {
        SampleLogic { dt, churn_period, layout, region, views: ViewIndex::default() }
    }

    /// How far avatars may walk from the centre: `[+x, -x, +z, -z]`; past an edge with a neighbour
    /// behind it they walk on (and cross after the tick), other edges are walls.
    fn avatar_bounds(&self) -> [f32; 4] {
        let mut bounds = [HALF_SIZE - 1.0; 4];
        if let Some(layout) = self.layout {
            for (index, (dx, dz)) in [(1, 0), (-1, 0), (0, 1), (0, -1)].into_iter().enumerate() {
                if layout.neighbour(self.region, dx, dz).is_some() {
                    bounds[index] = HALF_SIZE + 2.0;
                }
            }
        }
        bounds
    }
}

/// Regions tile the world in a grid, `columns` wide, numbered row by row from 1 to `count`; each
/// is [`HALF_SIZE`] * 2 metres square with its own coordinates centred on 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Regions per row.
    pub columns: u64,
    /// Regions in all.
    pub count: u64,
}

impl Layout {
    fn cell(&self, region: RegionId) -> Option<(i64, i64)> {
        let columns = self.columns.max(1);
        (region.0 >= 1 && region.0 <= self.count)
            .then(|| (((region.0 - 1) % columns) as i64, ((region.0 - 1) / columns) as i64))
    }

    fn at(&self, column: i64, row: i64) -> Option<RegionId> {
        let columns = self.columns.max(1) as i64;
        if column < 0 || row < 0 || column >= columns {
            return None;
        }
        let id = (row * columns + column + 1) as u64;
        (id <= self.count).then_some(RegionId(id))
    }

    /// The neighbour of `region` one step along `(dx, dz)`.
    #[must_use]
    pub fn neighbour(&self, region: RegionId, dx: i64, dz: i64) -> Option<RegionId> {
        let (column, row) = self.cell(region)?;
        self.at(column + dx, row + dz)
    }
}

/// Entities near each 16 m cell, rebuilt before the views of a tick.
#[derive(Clone, Debug, Default)]
struct ViewIndex {
    cells: std::collections::HashMap<(i32, i32), Vec<ViewItem>>,
}

#[derive(Clone, Copy, Debug)]
struct ViewItem {
    entity: u64,
    kind: u8,
    position: [f32; 2],
}

const VIEW_CELL: f32 = 16.0;
/// Most neighbours listed in one player view.
pub const VIEW_ITEMS: usize = 40;
/// Most objects listed in one border view.
pub const BORDER_ITEMS: usize = 100;

fn view_cell(position: [f32; 2]) -> (i32, i32) {
    ((position[0] / VIEW_CELL).floor() as i32, (position[1] / VIEW_CELL).floor() as i32)
}

fn push_item(out: &mut Vec<u8>, item: &ViewItem) {
    out.push(item.kind);
    out.extend_from_slice(&item.position[0].to_le_bytes());
    out.extend_from_slice(&item.position[1].to_le_bytes());
}

/// A decoded sample player view (version 1 of the sample's view format:
/// `u8 1 | u64 inputs_applied | u64 input_chain | f32 x | f32 z | u16 n | n * (u8 kind, f32 x, f32 z)`,
/// little-endian; kinds: 0 avatar, 1 NPC, 2 physics object, 3 plant).
#[derive(Clone, Debug, PartialEq)]
pub struct PlayerView {
    /// Inputs applied to the avatar so far.
    pub inputs_applied: u64,
    /// [`Avatar::input_chain`].
    pub input_chain: u64,
    /// The avatar's position.
    pub position: [f32; 2],
    /// What is near: `(kind, position)`.
    pub near: Vec<(u8, [f32; 2])>,
}

impl PlayerView {
    /// Parses a view; `None` if it is not one.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<PlayerView> {
        // 27 bytes of header; a view with nothing nearby is just the header.
        if bytes.len() < 27 || bytes[0] != 1 {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let f32_at = |at: usize| f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let count = usize::from(u16::from_le_bytes([bytes[25], bytes[26]]));
        if bytes.len() != 27 + count * 9 {
            return None;
        }
        let near =
            (0..count).map(|index| 27 + index * 9).map(|at| (bytes[at], [f32_at(at + 1), f32_at(at + 5)])).collect();
        Some(PlayerView { inputs_applied: u64_at(1), input_chain: u64_at(9), position: [f32_at(17), f32_at(21)], near })
    }
}

const SLOT_X: usize = 0;
const SLOT_Z: usize = 1;
const SLOT_VELOCITY_X: usize = 2;
const SLOT_VELOCITY_Z: usize = 3;
const SLOT_SIZE: usize = 4;

impl ScriptBindings for SampleLogic {
    fn read(&self, world: &World, entity: EntityId, slots: &mut [f32; PROPERTY_SLOTS]) {
        if let Some(transform) = world.get::<Transform>(entity) {
            slots[SLOT_X] = transform.position[0];
            slots[SLOT_Z] = transform.position[2];
        }
        if let Some(npc) = world.get::<Npc>(entity) {
            slots[SLOT_VELOCITY_X] = npc.velocity[0];
            slots[SLOT_VELOCITY_Z] = npc.velocity[1];
        }
        if let Some(plant) = world.get::<Plant>(entity) {
            slots[SLOT_SIZE] = plant.size;
        }
    }

    fn write(&mut self, world: &mut World, entity: EntityId, slot: usize, value: f32) {
        let value = if value.is_finite() { value.clamp(-10.0, 10.0) } else { 0.0 };
        match slot {
            SLOT_VELOCITY_X | SLOT_VELOCITY_Z => {
                if let Some(mut npc) = world.get_mut::<Npc>(entity) {
                    let index = slot - SLOT_VELOCITY_X;
                    if npc.velocity[index].to_bits() != value.to_bits() {
                        npc.velocity[index] = value;
                    }
                }
            }
            SLOT_SIZE => {
                if let Some(mut plant) = world.get_mut::<Plant>(entity) {
                    plant.size = value;
                }
            }
            _ => {}
        }
    }
}

impl RegionLogic for SampleLogic {
    fn register(&self, registry: &mut Registry) -> Result<(), RegistryError> {
        registry.register::<Transform>()?;
        registry.register::<Npc>()?;
        registry.register::<Plant>()?;
        registry.register::<Avatar>()?;
        registry.register::<Churn>()?;
        Ok(())
    }

    fn load_assets(&mut self, scripts: &mut ScriptEngine) -> Result<(), ScriptError> {
        scripts.register_module("wander", include_bytes!("../scripts/wander.wat"))?;
        scripts.register_module("graze", include_bytes!("../scripts/graze.wat"))?;
        scripts.register_module("grow", include_bytes!("../scripts/grow.wat"))?;
        Ok(())
    }

    fn apply_input(&mut self, world: &mut World, input: &ReadyInput) {
        let walk = parse_walk(&input.payload);
        if let Some(mut avatar) = world.get_mut::<Avatar>(input.avatar) {
            if let Some([x, z]) = walk {
                avatar.walk_bits = [x.to_bits(), z.to_bits()];
            }
            avatar.inputs_applied += 1;
            let mut chained = Vec::with_capacity(16 + input.payload.len());
            chained.extend_from_slice(&avatar.input_chain.to_le_bytes());
            chained.extend_from_slice(&input.seq.to_le_bytes());
            chained.extend_from_slice(&input.payload);
            avatar.input_chain = xxhash_rust::xxh3::xxh3_64(&chained);
        }
    }

    fn spawn_avatar(&mut self, world: &mut World, player: PlayerId) -> Result<EntityId, baton_sdk::EntryError> {
        // Avatars appear on a ring around the centre, spread by player id.
        let angle = (player.0 % 360) as f32 * std::f32::consts::PI / 180.0;
        let radius = 20.0 + (player.0 / 360 % 80) as f32;
        Ok(spawn_avatar_entity(world, [radius * angle.cos(), radius * angle.sin()])?)
    }

    fn prepare_views(&mut self, world: &World) {
        // A cell nothing was in last tick is dropped (objects pushed off the ground fall and
        // drift into new cells for ever); the others keep their vectors for this tick.
        self.views.cells.retain(|_, items| {
            let keep = !items.is_empty();
            items.clear();
            keep
        });
        let mut add = |entity: EntityId, kind: u8, position: [f32; 2]| {
            self.views.cells.entry(view_cell(position)).or_default().push(ViewItem {
                entity: entity.0,
                kind,
                position,
            });
        };
        for (entity, body) in world.iter::<Body>() {
            let kind = if world.has::<Avatar>(entity) { 0 } else { 2 };
            add(entity, kind, [body.translation[0], body.translation[2]]);
        }
        for (entity, transform) in world.iter::<Transform>() {
            let kind = if world.has::<Npc>(entity) { 1 } else { 3 };
            add(entity, kind, [transform.position[0], transform.position[2]]);
        }
    }

    fn player_view(&self, world: &World, avatar: EntityId, out: &mut Vec<u8>) {
        let (Some(state), Some(body)) = (world.get::<Avatar>(avatar), world.get::<Body>(avatar)) else { return };
        let position = [body.translation[0], body.translation[2]];
        out.push(1);
        out.extend_from_slice(&state.inputs_applied.to_le_bytes());
        out.extend_from_slice(&state.input_chain.to_le_bytes());
        out.extend_from_slice(&position[0].to_le_bytes());
        out.extend_from_slice(&position[1].to_le_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let (column, row) = view_cell(position);
        let mut count = 0u16;
        'cells: for dz in -1..=1 {
            for dx in -1..=1 {
                for item in self.views.cells.get(&(column + dx, row + dz)).map(Vec::as_slice).unwrap_or_default() {
                    if item.entity == avatar.0 {
                        continue;
                    }
                    if usize::from(count) == VIEW_ITEMS {
                        break 'cells;
                    }
                    push_item(out, item);
                    count += 1;
                }
            }
        }
        out[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
    }

    fn avatar_location(&self, world: &World, region: RegionId, avatar: EntityId, view_distance: f32) -> AvatarLocation {
        let (Some(layout), Some(body)) = (self.layout, world.get::<Body>(avatar)) else {
            return AvatarLocation::default();
        };
        let [x, z] = [body.translation[0], body.translation[2]];
        let mut location = AvatarLocation::default();
        for (dx, dz, beyond) in
            [(1, 0, x - HALF_SIZE), (-1, 0, -HALF_SIZE - x), (0, 1, z - HALF_SIZE), (0, -1, -HALF_SIZE - z)]
        {
            let Some(neighbour) = layout.neighbour(region, dx, dz) else { continue };
            if beyond > 0.0 && location.crossed_into.is_none() {
                location.crossed_into = Some(neighbour);
            }
            if beyond > -view_distance {
                location.near.push(neighbour);
            }
        }
        location
    }

    fn arrived(&mut self, world: &mut World, region: RegionId, avatar: EntityId, from: RegionId) {
        let Some(layout) = self.layout else { return };
        let (Some(here), Some(there)) = (layout.cell(region), layout.cell(from)) else { return };
        if let Some(mut body) = world.get_mut::<Body>(avatar) {
            let side = 2.0 * HALF_SIZE;
            body.translation[0] += (there.0 - here.0) as f32 * side;
            body.translation[2] += (there.1 - here.1) as f32 * side;
            // Land just inside, whatever rounding did.
            body.translation[0] = body.translation[0].clamp(-HALF_SIZE + 0.5, HALF_SIZE - 0.5);
            body.translation[2] = body.translation[2].clamp(-HALF_SIZE + 0.5, HALF_SIZE - 0.5);
        }
    }

    fn neighbours(&self, region: RegionId) -> Vec<RegionId> {
        let Some(layout) = self.layout else { return Vec::new() };
        [(1, 0), (-1, 0), (0, 1), (0, -1)].into_iter().filter_map(|(dx, dz)| layout.neighbour(region, dx, dz)).collect()
    }

    fn border_view(&self, world: &World, region: RegionId, toward: RegionId, view_distance: f32, out: &mut Vec<u8>) {
        let _ = world;
        let Some(layout) = self.layout else { return };
        let (Some(here), Some(there)) = (layout.cell(region), layout.cell(toward)) else { return };
        let (dx, dz) = (there.0 - here.0, there.1 - here.1);
        let mut items: Vec<&ViewItem> = Vec::new();
        'cells: for cell_items in self.views.cells.values() {
            for item in cell_items {
                let beyond = match (dx, dz) {
                    (1, 0) => item.position[0] - HALF_SIZE,
                    (-1, 0) => -HALF_SIZE - item.position[0],
                    (0, 1) => item.position[1] - HALF_SIZE,
                    _ => -HALF_SIZE - item.position[1],
                };
                if beyond > -view_distance {
                    items.push(item);
                    if items.len() == BORDER_ITEMS {
                        break 'cells;
                    }
                }
            }
        }
        out.push(1);
        out.extend_from_slice(&(items.len() as u16).to_le_bytes());
        for item in items {
            push_item(out, item);
        }
    }

    fn tick(&mut self, world: &mut World) {
        let dt = self.dt;
        if self.churn_period > 0 {
            // The entities whose id is `phase` modulo the period, by id: one id in `period` is
            // looked at (whatever it holds), not every churn entity, so a tick of a region of a
            // million churn entities costs about what changes in it.
            let phase = world.tick() % self.churn_period;
            let step = usize::try_from(self.churn_period).unwrap_or(usize::MAX);
            for id in (phase..world.next_entity_id()).step_by(step) {
                if let Some(mut churn) = world.get_mut::<Churn>(EntityId(id)) {
                    churn.counter += 1;
                    let counter = churn.counter;
                    churn.payload[..8].copy_from_slice(&counter.to_le_bytes());
                }
            }
        }
        // Avatars: move the kinematic body along the walk direction.
        let walkers: Vec<(EntityId, [f32; 2])> = world
            .iter::<Avatar>()
            .map(|(entity, avatar)| {
                (entity, [f32::from_bits(avatar.walk_bits[0]), f32::from_bits(avatar.walk_bits[1])])
            })
            .filter(|(_, walk)| walk[0] != 0.0 || walk[1] != 0.0)
            .collect();
        // Edges with a neighbour behind them let avatars through (they cross over after the tick).
        let bounds = self.avatar_bounds();
        for (entity, walk) in walkers {
            if let Some(mut body) = world.get_mut::<Body>(entity) {
                let x = (body.translation[0] + walk[0] * AVATAR_SPEED * dt).clamp(-bounds[1], bounds[0]);
                let z = (body.translation[2] + walk[1] * AVATAR_SPEED * dt).clamp(-bounds[3], bounds[2]);
                body.translation[0] = x;
                body.translation[2] = z;
            }
        }
        // NPCs: walk with the velocity their script chose, turning back at the region's edge.
        let movers: Vec<(EntityId, [f32; 2])> = world
            .iter::<Npc>()
            .filter(|(_, npc)| npc.velocity != [0.0, 0.0])
            .map(|(entity, npc)| (entity, npc.velocity))
            .collect();
        for (entity, velocity) in movers {
            let mut bounced = velocity;
            if let Some(mut transform) = world.get_mut::<Transform>(entity) {
                for (axis, index) in [(0usize, 0usize), (2, 1)] {
                    let next = transform.position[axis] + velocity[index] * dt;
                    if next.abs() > HALF_SIZE - 0.5 {
                        bounced[index] = -velocity[index];
                    } else {
                        transform.position[axis] = next;
                    }
                }
            }
            if bounced != velocity
                && let Some(mut npc) = world.get_mut::<Npc>(entity)
            {
                npc.velocity = bounced;
            }
        }
    }
}

/// Parses the sample's input payload; `None` if it is not version 1 or too short.
#[must_use]
pub fn parse_walk(payload: &[u8]) -> Option<[f32; 2]> {
    if payload.len() < 9 || payload[0] != 1 {
        return None;
    }
    let x = f32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let z = f32::from_le_bytes([payload[5], payload[6], payload[7], payload[8]]);
    if !x.is_finite() || !z.is_finite() {
        return None;
    }
    let length = (x * x + z * z).sqrt();
    Some(if length > 1.0 { [x / length, z / length] } else { [x, z] })
}

/// Builds an input payload of `length` bytes (at least 9) walking towards `walk`.
#[must_use]
pub fn walk_payload(walk: [f32; 2], length: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut payload = Vec::with_capacity(length.max(9));
    payload.push(1);
    payload.extend_from_slice(&walk[0].to_le_bytes());
    payload.extend_from_slice(&walk[1].to_le_bytes());
    // Filler, eight random bytes at a time (a load generator makes tens of thousands a second).
    while payload.len() < length {
        let word = rng.u64(..).to_le_bytes();
        let take = (length - payload.len()).min(word.len());
        payload.extend_from_slice(&word[..take]);
    }
    payload
}

/// A sample region with an empty world.
pub fn new_region(id: RegionId, config: RegionConfig) -> Result<Region<SampleLogic>, RegionError> {
    new_region_with_churn(id, config, 0)
}

/// A sample region with an empty world whose [`Churn`] entities change one in `churn_period` per
/// tick (the same setting must be used on every instance of the region).
pub fn new_region_with_churn(
    id: RegionId,
    config: RegionConfig,
    churn_period: u64,
) -> Result<Region<SampleLogic>, RegionError> {
    new_region_in(id, config, churn_period, None)
}

/// A sample region that is part of a world of regions laid out as `layout`.
pub fn new_region_in(
    id: RegionId,
    config: RegionConfig,
    churn_period: u64,
    layout: Option<Layout>,
) -> Result<Region<SampleLogic>, RegionError> {
    Region::new(id, SampleLogic::new(id, config.tick_interval().as_secs_f32(), churn_period, layout), config)
}

/// The input player `player` sends as number `seq` in cluster tests and benchmarks: a random walk
/// with a 256-512 byte payload, derived from the pair alone so that every process can rebuild it.
#[must_use]
pub fn scripted_input(player: u64, seq: u64) -> PlayerInput {
    let mut rng = fastrand::Rng::with_seed(player.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq);
    let heading = rng.f32() * std::f32::consts::TAU;
    let walk = if rng.u8(..10) == 0 { [0.0, 0.0] } else { [heading.cos(), heading.sin()] };
    let length = 256 + rng.usize(..=256);
    PlayerInput { player: PlayerId(player), seq, payload: walk_payload(walk, length, &mut rng) }
}

/// The [`Avatar::input_chain`] a region holds after applying `first..=last` of `scripted_input`
/// for `player`, starting from `chain`.
#[must_use]
pub fn expected_chain(player: u64, mut chain: u64, first: u64, last: u64) -> u64 {
    for seq in first..=last {
        let input = scripted_input(player, seq);
        let mut chained = Vec::with_capacity(16 + input.payload.len());
        chained.extend_from_slice(&chain.to_le_bytes());
        chained.extend_from_slice(&seq.to_le_bytes());
        chained.extend_from_slice(&input.payload);
        chain = xxhash_rust::xxh3::xxh3_64(&chained);
    }
    chain
}

/// Fills a region with objects, NPCs and plants.
pub fn populate(region: &mut Region<SampleLogic>, spec: WorldSpec) -> Result<(), anyhow::Error> {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let place = |rng: &mut fastrand::Rng| (rng.f32() * 2.0 - 1.0) * (HALF_SIZE - 2.0);
    for _ in 0..spec.objects {
        let (x, z) = (place(&mut rng), place(&mut rng));
        let body = if rng.u8(..4) == 0 {
            let radius = 0.25 + rng.f32() * 0.5;
            Body::new(BodyKind::Dynamic, Shape::Ball { radius }, [x, radius, z])
        } else {
            let half = [0.2 + rng.f32() * 0.6, 0.2 + rng.f32() * 0.6, 0.2 + rng.f32() * 0.6];
            Body::new(BodyKind::Dynamic, Shape::Cuboid { half_extents: half }, [x, half[1], z])
        };
        // Objects are placed resting on the ground, as a loaded level is: asleep until disturbed.
        let mut body = body;
        body.sleeping = true;
        let world = region.world_mut();
        let entity = world.spawn();
        world.insert(entity, body)?;
    }
    for index in 0..spec.npcs {
        let (x, z) = (place(&mut rng), place(&mut rng));
        let world = region.world_mut();
        let entity = world.spawn();
        world.insert(entity, Transform { position: [x, 0.0, z] })?;
        world.insert(entity, Npc { velocity: [0.0, 0.0] })?;
        let module = if index % 2 == 0 { "wander" } else { "graze" };
        region.attach_script(entity, module, rng.u64(..))?;
    }
    for _ in 0..spec.plants {
        let (x, z) = (place(&mut rng), place(&mut rng));
        let world = region.world_mut();
        let entity = world.spawn();
        world.insert(entity, Transform { position: [x, 0.0, z] })?;
        world.insert(entity, Plant { size: 1.0 })?;
        region.attach_script(entity, "grow", rng.u64(..))?;
    }
    for _ in 0..spec.churn {
        let world = region.world_mut();
        let entity = world.spawn();
        let mut payload = [0u8; 40];
        rng.fill(&mut payload);
        world.insert(entity, Churn { counter: 0, payload })?;
    }
    // Level load: build the engines from the finished world once, so the crates placed at rest
    // start asleep instead of all settling in the first ticks.
    region.rebuild_caches();
    Ok(())
}

/// Spawns an avatar for `player` and adds the player to the region.
pub fn join_avatar(
    region: &mut Region<SampleLogic>,
    player: PlayerId,
    position: [f32; 2],
) -> Result<EntityId, anyhow::Error> {
    let entity = spawn_avatar_entity(region.world_mut(), position)?;
    region.join(player, entity)?;
    Ok(entity)
}

/// Spawns an avatar entity (no session) standing at `position`.
pub fn spawn_avatar_entity(world: &mut World, position: [f32; 2]) -> Result<EntityId, baton_sdk::WorldError> {
    let entity = world.spawn();
    let body = Body::new(
        BodyKind::Kinematic,
        Shape::CapsuleY { half_height: 0.6, radius: 0.35 },
        [position[0], 0.95, position[1]],
    );
    world.insert(entity, body)?;
    world.insert(entity, Avatar { walk_bits: [0, 0], inputs_applied: 0, input_chain: 0 })?;
    Ok(entity)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn churn_changes_the_entities_of_the_tick_s_phase_and_only_those() {
        let mut region = new_region_with_churn(RegionId(1), RegionConfig::default(), 4).unwrap();
        populate(&mut region, WorldSpec { objects: 3, npcs: 0, plants: 0, seed: 1, churn: 20 }).unwrap();
        let churn = region.world().registry().id_of::<Churn>().unwrap();
        let tracker = region.world_mut().create_tracker();
        for _ in 0..8 {
            let phase = region.world().tick() % 4;
            region.tick();
            let mut changed: Vec<EntityId> = region
                .world_mut()
                .changes(tracker)
                .set
                .into_iter()
                .filter(|(_, component)| *component == churn)
                .map(|(entity, _)| entity)
                .collect();
            changed.sort_unstable();
            let expected: Vec<EntityId> = region
                .world()
                .iter::<Churn>()
                .map(|(entity, _)| entity)
                .filter(|entity| entity.0 % 4 == phase)
                .collect();
            assert_eq!(changed, expected);
            assert_eq!(expected.len(), 5, "20 churn entities, one in four a tick");
        }
    }

    #[test]
    fn views_parse_with_and_without_nearby_things() {
        let mut region = new_region(RegionId(1), RegionConfig::default()).unwrap();
        join_avatar(&mut region, PlayerId(3), [0.0, 0.0]).unwrap();
        // Alone in an empty region: the view is the 27-byte header with nothing nearby.
        let alone = region.player_updates().remove(0).payload;
        assert_eq!(alone.len(), 27);
        assert!(PlayerView::parse(&alone).unwrap().near.is_empty());
        populate(&mut region, WorldSpec { objects: 2000, npcs: 50, plants: 50, seed: 1, churn: 0 }).unwrap();
        let busy = region.player_updates().remove(0).payload;
        let view = PlayerView::parse(&busy).unwrap();
        assert!(!view.near.is_empty());
        assert_eq!(busy.len(), 27 + view.near.len() * 9);
        assert!(PlayerView::parse(&busy[..busy.len() - 1]).is_none(), "a truncated view is not a view");
        assert!(PlayerView::parse(&[]).is_none());
    }
}
