//! Rigid-body physics (rapier3d) whose state is world state, tracked per body.
//!
//! # What migrates
//! Each physical entity has a [`Body`] component: kind, shape, material, pose, velocities, whether
//! it sleeps, and rapier's per-body activation state (an opaque postcard blob, so that a body about
//! to fall asleep still falls asleep on time after a move). After every step the engine writes back
//! only the bodies that were awake (or just fell asleep), so a world of 10,000 resting boxes costs
//! nothing per tick and a delta carries only what moved — never a whole-engine blob (~1.8 KB per
//! body, far too much for a freeze budget).
//!
//! # What does not migrate, and what that costs
//! rapier's caches — island order, the broad-phase tree, contact manifolds and their warm-start
//! impulses — are rebuilt on the receiving side in entity order ([`PhysicsEngine::rebuild`]), or,
//! on a handoff target, built from the snapshot away from the region's thread and kept in step
//! with each delta round, so the freeze pays only for the last one
//! ([`PhysicsEngine::start_following`]).
//! Sleeping and free bodies continue bit-identically; bodies that are awake *and touching something*
//! at the moment of the move may drift from an unmoved twin by a small amount while the solver
//! re-converges. The bound is measured by the `physics_continuation` test and reported in
//! `docs/benchmarks.md`; objects at rest stay at rest.
//!
//! # Changes made by the game
//! The game edits `Body` components freely (a kinematic avatar's target pose, an impulse as a new
//! velocity, a spawned crate). Before each step the engine reads the changes since its last step and
//! applies them to rapier; its own write-backs are skipped, so they never echo.
//!
//! # Values the engine will not take
//! A body's numbers come from the game, its scripts and other processes (a handoff's snapshot, a
//! checkpoint file), and any of them may hold a NaN, an infinity, a quaternion that is not a unit or
//! a size no step can handle; rapier given those computes garbage or, built with debug assertions,
//! panics. Each number of the pose, velocities, shape and material is brought within [`limits`] on
//! its way into the engine: a value already within them goes in unchanged (so sane worlds step
//! bit-identically), a non-finite one becomes the default named there, and a rotation whose length
//! is off by more than [`limits::ROTATION_SLACK`] is normalized (the identity if it has no
//! direction). rapier's activation blob is taken only if its thresholds and timers are finite
//! (else the body keeps the activation it has: a new one rapier's default); the previous pose
//! inside it, which rapier keeps private, is taken as saved. The component keeps what it holds until the engine
//! writes a moving body's state back. The limits apply where values enter the engine, not to what
//! the engine makes of them: a body it moves past them keeps its course, and is brought back within
//! them the next time its values enter (a game edit, a rebuild, a handoff target's build).

use std::collections::{BTreeSet, HashMap};

use rapier3d::dynamics::RigidBodyActivation;
use rapier3d::math::{Pose, Rotation, Vector};
use rapier3d::prelude::{ColliderBuilder, PhysicsWorld, RigidBodyBuilder, RigidBodyHandle};

use crate::component::ComponentId;
use crate::world::{ChangeSet, EntityId, TrackerId, World};

/// What the engine takes from a [`Body`]; see the module documentation.
pub mod limits {
    /// Largest distance from the origin along each axis, in metres (f32 resolves about 8 mm here).
    pub const MAX_COORDINATE: f32 = 100_000.0;
    /// Smallest half extent or radius, in metres; also what a non-finite one becomes (a capsule's
    /// half height may be 0: a ball).
    pub const MIN_EXTENT: f32 = 0.001;
    /// Largest half extent, radius or half height, in metres.
    pub const MAX_EXTENT: f32 = 10_000.0;
    /// Largest speed along each axis, in m/s.
    pub const MAX_SPEED: f32 = 10_000.0;
    /// Largest spin about each axis, in rad/s.
    pub const MAX_SPIN: f32 = 10_000.0;
    /// Largest density, in kg/m³ (the smallest is 0); a non-finite one becomes 1.
    pub const MAX_DENSITY: f32 = 1_000_000.0;
    /// Largest friction or restitution coefficient (the smallest is 0); a non-finite one becomes 0.
    pub const MAX_COEFFICIENT: f32 = 100.0;
    /// How far a rotation's length may be from 1 before it is normalized. Rotations the engine
    /// wrote back are within a few ulps of it (renormalizing them would change their bits);
    /// glam's own test of a unit quaternion allows about ten times this.
    pub const ROTATION_SLACK: f32 = 1.0e-5;

    /// `value` within `min..=max`, or `otherwise` if it is not finite.
    pub(super) fn bounded(value: f32, otherwise: f32, min: f32, max: f32) -> f32 {
        if value.is_finite() { value.clamp(min, max) } else { otherwise }
    }

    /// Each of `values` within `-max..=max`, a non-finite one 0.
    pub(super) fn within(values: [f32; 3], max: f32) -> [f32; 3] {
        values.map(|value| bounded(value, 0.0, -max, max))
    }

    /// A unit quaternion (x, y, z, w): `rotation` itself if its length is within
    /// [`ROTATION_SLACK`] of 1, else normalized, the identity if it has no direction.
    pub(super) fn unit_rotation(rotation: [f32; 4]) -> [f32; 4] {
        let length = rotation.iter().map(|value| f64::from(*value) * f64::from(*value)).sum::<f64>().sqrt();
        if !length.is_finite() || length < 1.0e-6 {
            return [0.0, 0.0, 0.0, 1.0];
        }
        if (length - 1.0).abs() <= f64::from(ROTATION_SLACK) {
            return rotation;
        }
        #[expect(clippy::cast_possible_truncation, reason = "each part of a unit quaternion is within -1..=1")]
        rotation.map(|value| (f64::from(value) / length) as f32)
    }

    /// A half extent or radius within [`MIN_EXTENT`]`..=`[`MAX_EXTENT`].
    pub(super) fn extent(value: f32) -> f32 {
        bounded(value, MIN_EXTENT, MIN_EXTENT, MAX_EXTENT)
    }

    /// A capsule's half height within `0..=`[`MAX_EXTENT`] (0 if it is not finite).
    pub(super) fn half_height(value: f32) -> f32 {
        bounded(value, 0.0, 0.0, MAX_EXTENT)
    }
}

/// How a body moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum BodyKind {
    /// Moved by forces and contacts.
    Dynamic,
    /// Moved by the game (its pose is a target the engine reaches in one step); pushes dynamic bodies.
    Kinematic,
    /// Never moves.
    Fixed,
}

pub use shape::{ArchivedShape, Shape};

/// The shape type lives in its own module so that the items rkyv derives for its variants'
/// fields (which cannot carry doc comments) are exempt from the documentation lint.
mod shape {
    #![allow(missing_docs)]

    /// A collision shape.
    #[derive(Clone, Copy, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum Shape {
        /// A box with these half extents.
        Cuboid {
            /// Half extents along x, y, z, in metres.
            half_extents: [f32; 3],
        },
        /// A sphere.
        Ball {
            /// Radius in metres.
            radius: f32,
        },
        /// A capsule along y.
        CapsuleY {
            /// Half the height of the cylinder part, in metres.
            half_height: f32,
            /// Radius in metres.
            radius: f32,
        },
    }

    impl Shape {
        /// The variant and the bits of its numbers (a NaN equals itself here).
        pub(super) fn bits(&self) -> (u8, [u32; 3]) {
            match *self {
                Shape::Cuboid { half_extents: [x, y, z] } => (0, [x.to_bits(), y.to_bits(), z.to_bits()]),
                Shape::Ball { radius } => (1, [radius.to_bits(), 0, 0]),
                Shape::CapsuleY { half_height, radius } => (2, [half_height.to_bits(), radius.to_bits(), 0]),
            }
        }
    }
}

/// A physical entity's complete physics state.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
#[component(name = "baton.body")]
pub struct Body {
    /// How it moves.
    pub kind: BodyKind,
    /// Its collider.
    pub shape: Shape,
    /// Density in kg/m³.
    pub density: f32,
    /// Friction coefficient.
    pub friction: f32,
    /// Restitution (bounciness).
    pub restitution: f32,
    /// Position in metres.
    pub translation: [f32; 3],
    /// Orientation as a unit quaternion (x, y, z, w).
    pub rotation: [f32; 4],
    /// Linear velocity in m/s.
    pub linvel: [f32; 3],
    /// Angular velocity in rad/s.
    pub angvel: [f32; 3],
    /// Whether the engine put it to sleep.
    pub sleeping: bool,
    /// rapier's per-body activation state (postcard); empty for a new body.
    pub engine_state: Vec<u8>,
}

impl Body {
    /// A new body at rest at `translation`.
    #[must_use]
    pub fn new(kind: BodyKind, shape: Shape, translation: [f32; 3]) -> Body {
        Body {
            kind,
            shape,
            density: 1.0,
            friction: 0.6,
            restitution: 0.1,
            translation,
            rotation: [0.0, 0.0, 0.0, 1.0],
            linvel: [0.0; 3],
            angvel: [0.0; 3],
            sleeping: false,
            engine_state: Vec::new(),
        }
    }

    /// Whether `other` needs the same engine collider (kind, shape and material).
    fn same_collider(&self, other: &Body) -> bool {
        self.kind == other.kind
            && self.shape.bits() == other.shape.bits()
            && self.density.to_bits() == other.density.to_bits()
            && self.friction.to_bits() == other.friction.to_bits()
            && self.restitution.to_bits() == other.restitution.to_bits()
    }
}

/// Physics settings of a region.
#[derive(Clone, Copy, Debug)]
pub struct PhysicsConfig {
    /// Gravity in m/s².
    pub gravity: [f32; 3],
    /// Step length in seconds (the tick interval).
    pub timestep: f32,
    /// Half extent of the fixed ground slab under the region (its top at y = 0), if any. The ground is
    /// an asset of the region, not world state.
    pub ground_half_extent: Option<f32>,
}

impl Default for PhysicsConfig {
    fn default() -> Self {
        PhysicsConfig { gravity: [0.0, -9.81, 0.0], timestep: 1.0 / 30.0, ground_half_extent: Some(128.0) }
    }
}

/// Counts from one physics step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysicsStepStats {
    /// Bodies awake after the step.
    pub awake: usize,
    /// Body components written back.
    pub written: usize,
    /// Game edits applied to the engine before the step.
    pub synced: usize,
}

struct Tracked {
    body: RigidBodyHandle,
    /// What the engine's collider was built from, to tell a moved body from a reshaped one.
    spec: Body,
    /// Whether its component said it sleeps when the engine last took its state from it.
    asleep: bool,
}

/// The rapier world and the bodies in it: what [`PhysicsEngine`] steps, and what a build on
/// another thread hands back.
struct Engine {
    rapier: PhysicsWorld,
    bodies: HashMap<EntityId, Tracked>,
    /// Entities that were awake after the previous step, so that falling asleep is written back too.
    awake: BTreeSet<EntityId>,
}

/// Whether the engine follows a world that is being received rather than stepping its own.
enum Following {
    /// The engine is the region's, stepped with its ticks.
    No,
    /// Waiting for build `generation` ([`EngineBuild`]); the engine's tracker holds what changed in
    /// the world since the copy it is built from.
    Building(u64),
    /// Built from the received world and kept in step with it; never stepped.
    InStep,
}

/// Engine builds started in this process (see [`PhysicsEngine::start_following`]).
static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The building of a handoff target's physics engine from a copy of the received world's bodies,
/// to run away from the region's thread ([`PhysicsEngine::start_following`]): the driver runs it
/// (on another thread, in production) and gives the result to [`PhysicsEngine::install`].
pub struct EngineBuild {
    generation: u64,
    config: PhysicsConfig,
    bodies: Vec<(EntityId, Body)>,
}

impl EngineBuild {
    /// Builds the engine (10,000 resting crates: about 45 ms).
    #[must_use]
    pub fn run(self) -> BuiltEngine {
        let engine = Engine::build(self.config, self.bodies.iter().map(|(entity, body)| (*entity, body)));
        BuiltEngine { generation: self.generation, engine }
    }

    /// Bodies it builds.
    #[must_use]
    pub fn bodies(&self) -> usize {
        self.bodies.len()
    }
}

impl std::fmt::Debug for EngineBuild {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EngineBuild")
            .field("generation", &self.generation)
            .field("bodies", &self.bodies.len())
            .finish()
    }
}

/// A physics engine an [`EngineBuild`] built, for [`PhysicsEngine::install`].
pub struct BuiltEngine {
    generation: u64,
    engine: Engine,
}

impl std::fmt::Debug for BuiltEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BuiltEngine")
            .field("generation", &self.generation)
            .field("bodies", &self.engine.bodies.len())
            .finish()
    }
}

/// The rapier engine of one region, a cache of the world's [`Body`] components.
pub struct PhysicsEngine {
    config: PhysicsConfig,
    engine: Engine,
    following: Following,
    tracker: Option<TrackerId>,
    body_component: Option<ComponentId>,
    /// Whole builds from the world (tests check that a followed engine is not built again).
    #[cfg(test)]
    rebuilds: usize,
}

impl PhysicsEngine {
    /// An empty engine; call [`PhysicsEngine::rebuild`] before stepping.
    #[must_use]
    pub fn new(config: PhysicsConfig) -> PhysicsEngine {
        let mut rapier = new_rapier(config);
        insert_ground(&mut rapier, config);
        PhysicsEngine {
            config,
            engine: Engine { rapier, bodies: HashMap::new(), awake: BTreeSet::new() },
            following: Following::No,
            tracker: None,
            body_component: None,
            #[cfg(test)]
            rebuilds: 0,
        }
    }

    /// Number of bodies in the engine.
    #[must_use]
    pub fn body_count(&self) -> usize {
        self.engine.bodies.len()
    }

    /// Builds the engine afresh from every [`Body`] in `world`, in entity order. Call once when a
    /// region starts or after it was restored from archives.
    pub fn rebuild(&mut self, world: &mut World) {
        #[cfg(test)]
        {
            self.rebuilds += 1;
        }
        self.track(world);
        self.following = Following::No;
        self.engine = Engine::build(self.config, world.iter::<Body>());
    }

    /// Starts following a world that is being received (a handoff target's, once the snapshot is
    /// in), so that taking the region over costs only the changes of the last round instead of a
    /// whole build (45 ms for 10,000 resting crates).
    ///
    /// Returns the build, from a copy of the world's bodies, for the driver to run away from the
    /// region's thread, which goes on receiving; [`PhysicsEngine::install`] takes the result and
    /// brings it up to the world, [`PhysicsEngine::follow`] keeps it in step after each round, and
    /// [`PhysicsEngine::finish_following`] ends following.
    ///
    /// A followed engine is not the same as one rebuilt from the final world: bodies that arrived
    /// or changed during the rounds sit elsewhere in rapier's sets and trees, so bodies awake and
    /// touching something at the cutover may drift from a rebuilt twin while the solver
    /// re-converges, as they may from the unmoved source (see the module documentation). Sleeping
    /// and free bodies continue identically.
    pub fn start_following(&mut self, world: &mut World) -> EngineBuild {
        self.track(world);
        // Numbered across the process: a build still running for an engine since replaced (an
        // aborted attempt's, whose region was re-warmed) is never taken for a later one's.
        let generation = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.following = Following::Building(generation);
        let bodies = world.iter::<Body>().map(|(entity, body)| (entity, body.clone())).collect();
        EngineBuild { generation, config: self.config, bodies }
    }

    /// Installs the engine the last [`PhysicsEngine::start_following`] asked for and applies what
    /// changed in `world` since its copy. Returns whether it was installed: a build started before
    /// a later one, or arriving after [`PhysicsEngine::finish_following`], is dropped.
    pub fn install(&mut self, world: &mut World, built: BuiltEngine) -> bool {
        if !matches!(self.following, Following::Building(generation) if generation == built.generation) {
            return false;
        }
        self.engine = built.engine;
        self.following = Following::InStep;
        self.sync_received(world);
        true
    }

    /// Brings a following, installed engine up to `world`. Does nothing to an engine that is not
    /// following or still waits for its build.
    pub fn follow(&mut self, world: &mut World) {
        if matches!(self.following, Following::InStep) {
            self.sync_received(world);
        }
    }

    /// Ends following: applies the last changes, and from here the engine steps with the region.
    /// An engine that was not following, or whose build has not been installed, is built from
    /// `world` here.
    pub fn finish_following(&mut self, world: &mut World) {
        if !matches!(self.following, Following::InStep) {
            self.rebuild(world);
            return;
        }
        self.sync_received(world);
        self.engine.mark_all_modified();
        self.following = Following::No;
    }

    /// Whether the engine follows a received world (see [`PhysicsEngine::start_following`]).
    #[must_use]
    pub fn is_following(&self) -> bool {
        !matches!(self.following, Following::No)
    }

    /// Whether the engine of a received world is built and in step with it, so a take-over costs
    /// only the changes since.
    #[must_use]
    pub fn is_in_step(&self) -> bool {
        matches!(self.following, Following::InStep)
    }

    /// Stops reading `world`'s changes, for a world that follows another's and never steps here
    /// (a hot standby's): the engine's change reader would otherwise keep every change of every
    /// round in the world's journal. The engine is stale from here; [`PhysicsEngine::rebuild`]
    /// (at a promotion) builds it again and reads changes again.
    pub fn stop_tracking(&mut self, world: &mut World) {
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.following = Following::No;
    }

    /// A new tracker for `world`, in place of the engine's old one.
    fn track(&mut self, world: &mut World) {
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.body_component = world.registry().id_of::<Body>();
        self.tracker = Some(world.create_tracker());
    }

    /// Applies to a following engine what changed in the received world since it last looked,
    /// taking each changed body's whole state from its component (unlike a game edit, which wakes
    /// the body): pose, velocities and sleep. Contacts of moved and new bodies are primed as a
    /// rebuild primes them, which is valid because the engine has not stepped.
    fn sync_received(&mut self, world: &mut World) {
        let (Some(tracker), Some(body_component)) = (self.tracker, self.body_component) else {
            return;
        };
        let changes = world.changes_of(tracker, body_component);
        let engine = &mut self.engine;
        let mut touched: BTreeSet<EntityId> = BTreeSet::new();
        let mut dirty = engine.apply_removals(&changes, body_component);
        // Only `Body` sets: the read was of that component alone.
        for (entity, _) in &changes.set {
            if let Some(body) = world.get::<Body>(*entity) {
                if engine.bodies.get(entity).is_some_and(|tracked| tracked.spec.same_collider(body)) {
                    engine.restore_motion(*entity, body);
                } else {
                    // Its place in the awake set is settled below with the others.
                    engine.reinsert(*entity, body);
                }
                touched.insert(*entity);
                dirty = true;
            }
        }
        if !dirty {
            return;
        }
        // Removing or moving a collider wakes what touched it; every body whose sleep differs from
        // its component, every awake one (a wake-up resets its activation) and every changed one
        // takes its activation from its component again.
        engine.find_contacts();
        let mut settle = touched;
        settle.extend(engine.awake.iter().copied());
        settle.extend(
            engine
                .bodies
                .iter()
                .filter(|(_, tracked)| {
                    engine.rapier.bodies.get(tracked.body).is_some_and(|body| body.is_sleeping() != tracked.asleep)
                })
                .map(|(entity, _)| *entity),
        );
        for entity in settle {
            if let Some(body) = world.get::<Body>(entity) {
                engine.settle(entity, body);
            }
        }
    }

    /// Applies the game's edits, steps the simulation once and writes moved bodies back.
    pub fn step(&mut self, world: &mut World) -> PhysicsStepStats {
        if self.is_following() {
            self.finish_following(world);
        }
        let mut stats = PhysicsStepStats::default();
        let (Some(tracker), Some(body_component)) = (self.tracker, self.body_component) else {
            return stats;
        };
        let engine = &mut self.engine;
        let changes = world.changes_of(tracker, body_component);
        engine.apply_removals(&changes, body_component);
        // Only `Body` sets: the read was of that component alone.
        for (entity, _) in &changes.set {
            if let Some(body) = world.get::<Body>(*entity) {
                stats.synced += 1;
                if engine.bodies.get(entity).is_some_and(|tracked| tracked.spec.same_collider(body)) {
                    engine.apply_edit(*entity, body);
                } else {
                    // A body added while the region runs is woken by rapier in its first step, as
                    // any new object would be; only builds prime contacts (see `Engine::build`).
                    engine.reinsert(*entity, body);
                }
            }
        }

        engine.rapier.step();

        let mut to_write: BTreeSet<EntityId> = std::mem::take(&mut engine.awake);
        for handle in engine.rapier.islands.active_bodies() {
            if let Some(body) = engine.rapier.bodies.get(handle)
                && body.is_dynamic()
            {
                let entity = EntityId(body.user_data as u64);
                engine.awake.insert(entity);
                to_write.insert(entity);
            }
        }
        stats.awake = engine.awake.len();
        for entity in to_write {
            let Some(tracked) = engine.bodies.get(&entity) else {
                continue;
            };
            let Some(rigid_body) = engine.rapier.bodies.get(tracked.body) else {
                continue;
            };
            let Some(mut component) = world.get_mut::<Body>(entity) else {
                continue;
            };
            let pose = rigid_body.position();
            let translation = pose.translation.to_array();
            let rotation = pose.rotation.to_array();
            let linvel = rigid_body.linvel().to_array();
            let angvel = rigid_body.angvel().to_array();
            let sleeping = rigid_body.is_sleeping();
            let engine_state = postcard::to_allocvec(rigid_body.activation()).unwrap_or_default();
            let unchanged = bits_equal(&component.translation, &translation)
                && bits_equal(&component.rotation, &rotation)
                && bits_equal(&component.linvel, &linvel)
                && bits_equal(&component.angvel, &angvel)
                && component.sleeping == sleeping
                && component.engine_state == engine_state;
            if !unchanged {
                let component = &mut *component;
                component.translation = translation;
                component.rotation = rotation;
                component.linvel = linvel;
                component.angvel = angvel;
                component.sleeping = sleeping;
                component.engine_state = engine_state;
                stats.written += 1;
            }
        }
        // Our own write-backs are not edits to apply next step.
        world.catch_up(tracker);
        stats
    }
}

impl Engine {
    /// An engine holding `bodies` (in entity order), the ground inserted after them (see
    /// [`insert_ground`]), with their contacts primed.
    fn build<'a>(config: PhysicsConfig, bodies: impl Iterator<Item = (EntityId, &'a Body)>) -> Engine {
        let mut engine = Engine { rapier: new_rapier(config), bodies: HashMap::new(), awake: BTreeSet::new() };
        let mut inserted: Vec<(EntityId, &Body)> = Vec::new();
        for (entity, body) in bodies {
            let tracked = insert_body(&mut engine.rapier, entity, body);
            engine.bodies.insert(entity, tracked);
            inserted.push((entity, body));
        }
        insert_ground(&mut engine.rapier, config);
        if !inserted.is_empty() {
            engine.find_contacts();
            // In entity order: waking and putting to sleep rewires rapier's islands, so the order
            // of these calls decides the engine's state, and a hash map's order differs from map
            // to map.
            for (entity, body) in inserted {
                engine.settle(entity, body);
            }
        }
        engine
    }

    /// Finds the contacts of new and moved colliders with a collision-only pass.
    ///
    /// rapier wakes the parent of every new collider in the first step after insertion; a body
    /// that was asleep at the source (or placed at rest by the game) would wake and jitter while
    /// its contacts re-converge. After this pass the contacts exist and the colliders are no longer
    /// new, so once [`Engine::settle`] gave the bodies back their sleep they sleep on. Only valid
    /// on an engine that has not stepped: rapier links the contacts found here into its persistent
    /// islands when it bootstraps them in the first step, which it does only once per engine.
    fn find_contacts(&mut self) {
        let rapier = &mut self.rapier;
        rapier.collision_pipeline.step(
            rapier.integration_parameters.prediction_distance(),
            &mut rapier.islands,
            &mut rapier.broad_phase,
            &mut rapier.narrow_phase,
            &mut rapier.bodies,
            &mut rapier.colliders,
            &(),
            &(),
        );
    }

    /// Puts every body on rapier's list of modified bodies: those the last pass settled are on it
    /// already, the others follow in entity order.
    ///
    /// rapier enters a body in its islands when the body is on that list at a step. A build's
    /// bodies are (settling them touches each), but every collision-only pass of following empties
    /// the list without entering anything; a body left off would be unknown to the islands in the
    /// first step.
    fn mark_all_modified(&mut self) {
        let mut handles: Vec<(EntityId, RigidBodyHandle)> =
            self.bodies.iter().map(|(entity, tracked)| (*entity, tracked.body)).collect();
        handles.sort_unstable_by_key(|(entity, _)| *entity);
        for (_, handle) in handles {
            let _ = self.rapier.bodies.get_mut(handle);
        }
    }

    /// Gives `entity`'s engine body the activation (sleep) state of its component.
    fn settle(&mut self, entity: EntityId, body: &Body) {
        let Some(tracked) = self.bodies.get_mut(&entity) else {
            return;
        };
        let Some(rigid_body) = self.rapier.bodies.get_mut(tracked.body) else {
            return;
        };
        restore_activation(rigid_body, body);
        tracked.asleep = body.sleeping;
        if body.sleeping || body.kind != BodyKind::Dynamic {
            self.awake.remove(&entity);
        } else {
            self.awake.insert(entity);
        }
    }

    /// Removes the bodies of despawned entities and of entities whose `Body` (component
    /// `body_component`) was removed; whether any was.
    fn apply_removals(&mut self, changes: &ChangeSet, body_component: ComponentId) -> bool {
        let mut removed = false;
        for entity in &changes.despawned {
            removed |= self.remove(*entity);
        }
        for (entity, component) in &changes.removed {
            if *component == body_component {
                removed |= self.remove(*entity);
            }
        }
        removed
    }

    /// Whether `entity` had a body, now removed.
    fn remove(&mut self, entity: EntityId) -> bool {
        let Some(tracked) = self.bodies.remove(&entity) else {
            return false;
        };
        let rapier = &mut self.rapier;
        rapier.bodies.remove(
            tracked.body,
            &mut rapier.islands,
            &mut rapier.colliders,
            &mut rapier.impulse_joints,
            &mut rapier.multibody_joints,
            &mut rapier.soft_bodies,
            true,
        );
        self.awake.remove(&entity);
        true
    }

    /// Puts a new body, or one whose kind, shape or material changed, into the engine afresh.
    fn reinsert(&mut self, entity: EntityId, body: &Body) {
        self.remove(entity);
        let tracked = insert_body(&mut self.rapier, entity, body);
        self.bodies.insert(entity, tracked);
        if body.kind == BodyKind::Dynamic {
            self.awake.insert(entity);
        }
    }

    /// Gives an existing body the pose and velocities of its component without waking it (the
    /// received world's state, not a game edit; its sleep comes with [`Engine::settle`]).
    fn restore_motion(&mut self, entity: EntityId, body: &Body) {
        let Some(rigid_body) = self.bodies.get(&entity).and_then(|tracked| self.rapier.bodies.get_mut(tracked.body))
        else {
            return;
        };
        rigid_body.set_position(pose_of(body), false);
        rigid_body.set_linvel(linvel_of(body), false);
        rigid_body.set_angvel(angvel_of(body), false);
    }

    /// Applies a game edit of an existing body's pose or velocities to the engine.
    fn apply_edit(&mut self, entity: EntityId, body: &Body) {
        let Some(rigid_body) = self.bodies.get(&entity).and_then(|tracked| self.rapier.bodies.get_mut(tracked.body))
        else {
            return;
        };
        let pose = pose_of(body);
        match body.kind {
            BodyKind::Kinematic => rigid_body.set_next_kinematic_position(pose),
            BodyKind::Fixed => rigid_body.set_position(pose, false),
            BodyKind::Dynamic => {
                let (linvel, angvel) = (linvel_of(body), angvel_of(body));
                let differs = !bits_equal(&rigid_body.position().translation.to_array(), &pose.translation.to_array())
                    || !bits_equal(&rigid_body.position().rotation.to_array(), &pose.rotation.to_array())
                    || !bits_equal(&rigid_body.linvel().to_array(), &linvel.to_array())
                    || !bits_equal(&rigid_body.angvel().to_array(), &angvel.to_array());
                if differs {
                    rigid_body.set_position(pose, true);
                    rigid_body.set_linvel(linvel, true);
                    rigid_body.set_angvel(angvel, true);
                    self.awake.insert(entity);
                }
            }
        }
    }
}

impl std::fmt::Debug for PhysicsEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PhysicsEngine")
            .field("bodies", &self.engine.bodies.len())
            .field("awake", &self.engine.awake.len())
            .field("following", &self.is_following())
            .finish_non_exhaustive()
    }
}

/// A rapier world with the region's settings and no colliders; see [`insert_ground`].
fn new_rapier(config: PhysicsConfig) -> PhysicsWorld {
    let mut rapier = PhysicsWorld::new();
    rapier.gravity = Vector::from_array(config.gravity);
    rapier.integration_parameters.dt = config.timestep;
    rapier
}

/// Adds the region's ground slab, if it has one.
///
/// Insert it after the bodies of a rebuild: rapier looks up a new contact pair by walking the
/// contacts of the pair's lower-numbered collider, and the ground touches every resting object.
/// Numbered first, it made building the contacts of n resting objects cost n² steps (a rebuild of
/// 10,000 crates took 250 ms, three quarters of it in those lookups; 45 ms since); numbered last,
/// each lookup walks one object's few contacts.
fn insert_ground(rapier: &mut PhysicsWorld, config: PhysicsConfig) {
    if let Some(half_extent) = config.ground_half_extent {
        let ground =
            ColliderBuilder::cuboid(half_extent, 0.5, half_extent).translation(Vector::new(0.0, -0.5, 0.0)).build();
        rapier.colliders.insert(ground);
    }
}

/// The body's pose within [`limits`].
fn pose_of(body: &Body) -> Pose {
    let rotation = Rotation::from_array(limits::unit_rotation(body.rotation));
    Pose::from_parts(Vector::from_array(limits::within(body.translation, limits::MAX_COORDINATE)), rotation)
}

/// The body's linear velocity within [`limits`].
fn linvel_of(body: &Body) -> Vector {
    Vector::from_array(limits::within(body.linvel, limits::MAX_SPEED))
}

/// The body's angular velocity within [`limits`].
fn angvel_of(body: &Body) -> Vector {
    Vector::from_array(limits::within(body.angvel, limits::MAX_SPIN))
}

/// The body's collider, its shape and material within [`limits`].
fn collider_builder(body: &Body) -> ColliderBuilder {
    use limits::{MAX_COEFFICIENT, MAX_DENSITY, bounded, extent};
    let builder = match body.shape {
        Shape::Cuboid { half_extents: [x, y, z] } => ColliderBuilder::cuboid(extent(x), extent(y), extent(z)),
        Shape::Ball { radius } => ColliderBuilder::ball(extent(radius)),
        Shape::CapsuleY { half_height, radius } => {
            ColliderBuilder::capsule_y(limits::half_height(half_height), extent(radius))
        }
    };
    builder
        .density(bounded(body.density, 1.0, 0.0, MAX_DENSITY))
        .friction(bounded(body.friction, 0.0, 0.0, MAX_COEFFICIENT))
        .restitution(bounded(body.restitution, 0.0, 0.0, MAX_COEFFICIENT))
}

fn insert_body(rapier: &mut PhysicsWorld, entity: EntityId, body: &Body) -> Tracked {
    let builder = match body.kind {
        BodyKind::Dynamic => RigidBodyBuilder::dynamic(),
        BodyKind::Kinematic => RigidBodyBuilder::kinematic_position_based(),
        BodyKind::Fixed => RigidBodyBuilder::fixed(),
    };
    let mut rigid_body = builder
        .pose(pose_of(body))
        .linvel(linvel_of(body))
        .angvel(angvel_of(body))
        .user_data(u128::from(entity.0))
        .build();
    restore_activation(&mut rigid_body, body);
    let handle = rapier.bodies.insert(rigid_body);
    let collider = collider_builder(body).user_data(u128::from(entity.0)).build();
    rapier.colliders.insert_with_parent(collider, handle, &mut rapier.bodies);
    let mut spec = body.clone();
    spec.engine_state = Vec::new();
    Tracked { body: handle, spec, asleep: body.sleeping }
}

/// Gives a rapier body the activation (sleep) state recorded in its component.
///
/// The sleeping flag itself is changed only through rapier's `sleep`/`wake_up`, never by assigning
/// the saved state, because rapier's island manager must see every change of it (assigning it
/// directly leaves an awake body in a sleeping island).
fn restore_activation(rigid_body: &mut rapier3d::prelude::RigidBody, body: &Body) {
    if !body.engine_state.is_empty()
        && let Ok(mut activation) = postcard::from_bytes::<RigidBodyActivation>(&body.engine_state)
        && [
            activation.normalized_linear_threshold,
            activation.angular_threshold,
            activation.time_until_sleep,
            activation.time_since_can_sleep,
        ]
        .iter()
        .all(|value| value.is_finite())
    {
        activation.sleeping = rigid_body.is_sleeping();
        *rigid_body.activation_mut() = activation;
    }
    if body.sleeping && !rigid_body.is_sleeping() {
        rigid_body.sleep();
    } else if !body.sleeping && rigid_body.is_sleeping() {
        rigid_body.wake_up(false);
    }
}

fn bits_equal<const N: usize>(left: &[f32; N], right: &[f32; N]) -> bool {
    left.iter().zip(right).all(|(left, right)| left.to_bits() == right.to_bits())
}

#[cfg(test)]
mod tests {
    //! A handoff target's engine, kept in step with a received world, against one rebuilt from it.

    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::codec::{self, ChunkConfig, DecodeLimits};
    use crate::component::Registry;

    /// Pose, velocities (as bits) and sleep of each body.
    type View = BTreeMap<EntityId, ([u32; 13], bool)>;

    fn bits(translation: [f32; 3], rotation: [f32; 4], linvel: [f32; 3], angvel: [f32; 3]) -> [u32; 13] {
        let mut all = [0u32; 13];
        for (slot, value) in all.iter_mut().zip(translation.iter().chain(&rotation).chain(&linvel).chain(&angvel)) {
            *slot = value.to_bits();
        }
        all
    }

    fn engine_view(engine: &PhysicsEngine) -> View {
        let engine = &engine.engine;
        engine
            .bodies
            .iter()
            .map(|(entity, tracked)| {
                let body = &engine.rapier.bodies[tracked.body];
                let pose = body.position();
                let motion = bits(
                    pose.translation.to_array(),
                    pose.rotation.to_array(),
                    body.linvel().to_array(),
                    body.angvel().to_array(),
                );
                (*entity, (motion, body.is_sleeping()))
            })
            .collect()
    }

    fn world_view(world: &World) -> View {
        world
            .iter::<Body>()
            .map(|(entity, body)| {
                (entity, (bits(body.translation, body.rotation, body.linvel, body.angvel), body.sleeping))
            })
            .collect()
    }

    fn empty_world() -> World {
        let mut registry = Registry::new();
        registry.register::<Body>().unwrap();
        World::new(registry)
    }

    fn crate_at(x: f32, z: f32) -> Body {
        let mut body = Body::new(BodyKind::Dynamic, Shape::Cuboid { half_extents: [0.5, 0.5, 0.5] }, [x, 0.5, z]);
        body.sleeping = true;
        body
    }

    /// A source region: a row of crates at rest, two balls falling onto them, a kinematic mover.
    fn source() -> (World, PhysicsEngine, Vec<EntityId>) {
        let mut world = empty_world();
        let mut entities = Vec::new();
        for index in 0..12 {
            let entity = world.spawn();
            world.insert(entity, crate_at(index as f32 * 1.2, 0.0)).unwrap();
            entities.push(entity);
        }
        for x in [1.2, 6.0] {
            let entity = world.spawn();
            world.insert(entity, Body::new(BodyKind::Dynamic, Shape::Ball { radius: 0.3 }, [x, 3.0, 0.0])).unwrap();
            entities.push(entity);
        }
        let mover = world.spawn();
        let shape = Shape::CapsuleY { half_height: 0.6, radius: 0.35 };
        world.insert(mover, Body::new(BodyKind::Kinematic, shape, [0.0, 0.95, 3.0])).unwrap();
        entities.push(mover);
        let mut engine = PhysicsEngine::new(PhysicsConfig::default());
        engine.rebuild(&mut world);
        (world, engine, entities)
    }

    /// What the game does in source tick `tick`: moves the mover, kicks a crate, adds, reshapes,
    /// strips and removes bodies.
    fn play(world: &mut World, entities: &[EntityId], tick: u32) {
        if let Some(mut mover) = world.get_mut::<Body>(entities[14]) {
            mover.translation[0] += 0.1;
        }
        match tick {
            2 => world.get_mut::<Body>(entities[3]).unwrap().linvel = [0.0, 2.0, 0.0],
            3 => {
                let entity = world.spawn();
                world.insert(entity, crate_at(-3.0, 0.0)).unwrap();
            }
            4 => world.get_mut::<Body>(entities[7]).unwrap().shape = Shape::Ball { radius: 0.5 },
            5 => {
                world.despawn(entities[9]);
            }
            6 => {
                world.remove::<Body>(entities[10]).unwrap();
            }
            _ => {}
        }
    }

    #[test]
    fn an_engine_that_followed_the_rounds_holds_the_received_bodies_as_a_rebuilt_one_does() {
        let (mut source, mut source_engine, entities) = source();
        for _ in 0..20 {
            source_engine.step(&mut source);
        }
        let tracker = source.create_tracker();
        let mut followed = empty_world();
        let mut rebuilt = empty_world();
        for chunk in codec::encode_snapshot(&source, ChunkConfig::default()).unwrap() {
            codec::apply(&mut followed, &chunk, DecodeLimits::default()).unwrap();
            codec::apply(&mut rebuilt, &chunk, DecodeLimits::default()).unwrap();
        }
        let mut engine = PhysicsEngine::new(PhysicsConfig::default());
        // A build started for an earlier attempt is not installed over a later one's, nor one
        // of another engine (an aborted attempt's, whose region was re-warmed).
        let stale = engine.start_following(&mut followed).run();
        let other = PhysicsEngine::new(PhysicsConfig::default()).start_following(&mut empty_world()).run();
        let build = engine.start_following(&mut followed);
        assert_eq!(build.bodies(), 15);
        assert!(!engine.install(&mut followed, stale));
        assert!(!engine.install(&mut followed, other));
        assert!(!engine.is_in_step());
        let mut build = Some(build);
        for tick in 1..=8 {
            play(&mut source, &entities, tick);
            source_engine.step(&mut source);
            let changes = source.changes(tracker);
            for part in codec::encode_delta(&source, &changes, tick, ChunkConfig::default()).unwrap() {
                codec::apply(&mut followed, &part, DecodeLimits::default()).unwrap();
                codec::apply(&mut rebuilt, &part, DecodeLimits::default()).unwrap();
                engine.follow(&mut followed);
            }
            // The build arrives after three rounds, which it catches up on when installed; from
            // then on each round is in the engine as soon as it is applied.
            if tick == 3 {
                assert!(engine.is_following() && !engine.is_in_step());
                assert!(engine.install(&mut followed, build.take().unwrap().run()));
                assert!(engine.is_in_step());
            }
            if tick >= 3 {
                assert_eq!(engine_view(&engine), world_view(&followed), "in step after round {tick}");
            }
        }
        assert_eq!(followed.digest(), source.digest());
        engine.finish_following(&mut followed);
        assert!(!engine.is_following());
        assert_eq!(engine.rebuilds, 0, "the followed engine is taken over, not built again");
        let mut rebuilt_engine = PhysicsEngine::new(PhysicsConfig::default());
        rebuilt_engine.rebuild(&mut rebuilt);

        // Every body of the world, as its component says, and nothing else.
        let expected = world_view(&followed);
        assert_eq!(expected.len(), 14, "12 crates + 1 new - 1 despawned - 1 stripped, 2 balls, the mover");
        assert_eq!(engine_view(&engine), expected);
        assert_eq!(engine_view(&rebuilt_engine), expected);
        assert!(expected.values().any(|(_, sleeping)| *sleeping) && expected.values().any(|(_, sleeping)| !*sleeping));

        // Both continue: what sleeps sleeps on, untouched, in both.
        engine.step(&mut followed);
        rebuilt_engine.step(&mut rebuilt);
        let (after_followed, after_rebuilt) = (world_view(&followed), world_view(&rebuilt));
        for (entity, (motion, sleeping)) in &expected {
            if *sleeping {
                assert_eq!(after_followed[entity], (*motion, true), "{entity} slept on after following");
                assert_eq!(after_rebuilt[entity], (*motion, true), "{entity} slept on after a rebuild");
            }
        }
        let awake =
            |view: &View| view.iter().filter(|(_, (_, sleeping))| !*sleeping).map(|(e, _)| *e).collect::<Vec<_>>();
        assert_eq!(awake(&after_followed), awake(&after_rebuilt));
    }

    /// Bodies no engine can step: NaN and infinite numbers, rotations of every wrong length,
    /// sizes and distances past any world, overlapping so that their contacts are computed.
    fn hostile_bodies() -> Vec<Body> {
        let cube = Shape::Cuboid { half_extents: [0.5, 0.5, 0.5] };
        let mut bodies = Vec::new();
        let rotations = [
            [3.0, 0.0, 0.0, 0.0],
            [0.1, 0.2, 0.0, 0.1],
            [0.0; 4],
            [f32::NAN, 0.0, 0.0, 1.0],
            [1.0e20, 1.0e20, 0.0, 0.0],
        ];
        for (index, rotation) in rotations.into_iter().enumerate() {
            // Stacked cubes, each rotation stretching or shrinking them unless it is normalized.
            let mut body = Body::new(BodyKind::Dynamic, cube, [0.2 * index as f32, 0.5 + 0.8 * index as f32, 0.0]);
            body.rotation = rotation;
            bodies.push(body);
        }
        let shapes = [
            Shape::Cuboid { half_extents: [f32::NAN, -1.0, 1.0e30] },
            Shape::Cuboid { half_extents: [0.0, f32::INFINITY, 0.5] },
            Shape::Ball { radius: f32::NEG_INFINITY },
            Shape::Ball { radius: -3.0 },
            Shape::CapsuleY { half_height: 1.0e38, radius: f32::NAN },
        ];
        for shape in shapes {
            bodies.push(Body::new(BodyKind::Dynamic, shape, [0.0, 1.0, 0.0]));
        }
        for translation in [[f32::NAN, 0.0, 0.0], [f32::INFINITY, 1.0, f32::NEG_INFINITY], [1.0e38, 1.0e38, -1.0e38]] {
            bodies.push(Body::new(BodyKind::Dynamic, cube, translation));
        }
        let mut fast = Body::new(BodyKind::Dynamic, cube, [0.0, 2.0, 0.0]);
        fast.linvel = [f32::NAN, f32::INFINITY, 1.0e38];
        fast.angvel = [f32::NEG_INFINITY, 1.0e38, f32::NAN];
        bodies.push(fast);
        let mut material = Body::new(BodyKind::Dynamic, cube, [0.3, 1.5, 0.3]);
        (material.density, material.friction, material.restitution) = (f32::NAN, f32::INFINITY, -1.0e30);
        bodies.push(material);
        let mut heavy = Body::new(BodyKind::Dynamic, cube, [0.1, 2.5, 0.0]);
        heavy.density = -1.0;
        bodies.push(heavy);
        // Each of the activation state's numbers not finite, one body each.
        for field in 0..4 {
            let mut odd_activation = Body::new(BodyKind::Dynamic, cube, [0.6, 3.5 + field as f32, 0.0]);
            let mut activation = RigidBodyActivation::active();
            *[
                &mut activation.normalized_linear_threshold,
                &mut activation.angular_threshold,
                &mut activation.time_until_sleep,
                &mut activation.time_since_can_sleep,
            ][field] = f32::NAN;
            odd_activation.engine_state = postcard::to_allocvec(&activation).unwrap();
            bodies.push(odd_activation);
        }
        bodies.push(Body::new(BodyKind::Dynamic, Shape::CapsuleY { half_height: 0.0, radius: 0.4 }, [0.2, 2.0, 0.2]));
        for kind in [BodyKind::Kinematic, BodyKind::Fixed] {
            let mut body = Body::new(kind, cube, [0.4, 0.5, 0.0]);
            body.rotation = [2.0, 2.0, 0.0, 0.0];
            bodies.push(body);
        }
        bodies
    }

    /// What the engine wrote back: finite, a unit rotation, and within 100 m past the limits (the
    /// engine carries a body let in at a limit on past it: here two seconds of falling).
    fn within_limits(body: &Body) -> bool {
        let length = body.rotation.iter().map(|value| value * value).sum::<f32>().sqrt();
        body.translation.iter().all(|value| value.abs() <= limits::MAX_COORDINATE + 100.0)
            && body.linvel.iter().chain(&body.angvel).all(|value| value.is_finite())
            && (length - 1.0).abs() <= limits::ROTATION_SLACK
    }

    #[test]
    fn bodies_with_values_no_engine_can_step_are_brought_within_the_limits_and_stepped() {
        // Every way into the engine meets the limits: a rebuild (a checkpoint restored, a region
        // started), a handoff target's build, a received round moving bodies it holds
        // (`restore_motion`), a game edit of a body's pose and velocities (`apply_edit`) and a
        // new body (`reinsert`). Without them the overlapping cubes of the rotations that are
        // not units fail rapier's own checks of its contacts.
        let world_of = |bodies: Vec<Body>| {
            let mut world = empty_world();
            for body in bodies {
                let entity = world.spawn();
                world.insert(entity, body).unwrap();
            }
            world
        };
        // The same shapes and materials at rest where nothing is wrong with their poses: moving
        // one to its hostile pose is then an edit of a body the engine holds, not a new body.
        let tame = |body: &Body| Body {
            translation: [0.0, 1.0, 0.0],
            rotation: [0.0, 0.0, 0.0, 1.0],
            linvel: [0.0; 3],
            angvel: [0.0; 3],
            ..body.clone()
        };
        let count = hostile_bodies().len();
        let mut world = world_of(hostile_bodies());
        let mut rebuilt = PhysicsEngine::new(PhysicsConfig::default());
        rebuilt.rebuild(&mut world);

        // A target built from the snapshot, then a round moves every body to its hostile pose.
        let mut received = world_of(hostile_bodies().iter().map(tame).collect());
        let mut followed = PhysicsEngine::new(PhysicsConfig::default());
        let build = followed.start_following(&mut received);
        let entities: Vec<EntityId> = received.iter::<Body>().map(|(entity, _)| entity).collect();
        for (entity, body) in entities.iter().zip(hostile_bodies()) {
            *received.get_mut::<Body>(*entity).unwrap() = body;
        }
        assert!(followed.install(&mut received, build.run()));
        followed.finish_following(&mut received);
        assert_eq!((rebuilt.body_count(), followed.body_count()), (count, count));

        // The game moves tame bodies to hostile poses, and adds hostile ones.
        let mut edited = world_of(hostile_bodies().iter().map(tame).collect());
        let mut edited_engine = PhysicsEngine::new(PhysicsConfig::default());
        edited_engine.rebuild(&mut edited);
        edited_engine.step(&mut edited);
        let entities: Vec<EntityId> = edited.iter::<Body>().map(|(entity, _)| entity).collect();
        for (entity, body) in entities.iter().zip(hostile_bodies()) {
            *edited.get_mut::<Body>(*entity).unwrap() = body;
        }
        for body in hostile_bodies() {
            let entity = edited.spawn();
            edited.insert(entity, body).unwrap();
        }
        for _ in 0..60 {
            rebuilt.step(&mut world);
            followed.step(&mut received);
            edited_engine.step(&mut edited);
        }
        assert_eq!(edited_engine.body_count(), 2 * count);
        for (entity, body) in world.iter::<Body>().chain(received.iter::<Body>()).chain(edited.iter::<Body>()) {
            if body.kind == BodyKind::Dynamic {
                assert!(within_limits(body), "{entity} was written back outside the limits: {body:?}");
            }
        }
        for engine in [&rebuilt, &followed, &edited_engine] {
            for tracked in engine.engine.bodies.values() {
                let body = &engine.engine.rapier.bodies[tracked.body];
                let pose = body.position();
                assert!(pose.translation.is_finite() && pose.rotation.is_normalized(), "the engine holds {pose:?}");
                let activation = body.activation();
                assert!(
                    [
                        activation.normalized_linear_threshold,
                        activation.angular_threshold,
                        activation.time_until_sleep,
                        activation.time_since_can_sleep
                    ]
                    .iter()
                    .all(|value| value.is_finite()),
                    "{activation:?}"
                );
            }
        }
    }

    #[test]
    fn a_moved_body_keeps_its_engine_body_and_a_reshaped_one_is_built_again() {
        let mut world = empty_world();
        let mut odd = crate_at(0.0, 0.0);
        odd.shape = Shape::Cuboid { half_extents: [f32::NAN, 0.5, 0.5] };
        let (plain, odd_one) = (world.spawn(), world.spawn());
        world.insert(plain, crate_at(5.0, 0.0)).unwrap();
        world.insert(odd_one, odd).unwrap();
        let mut engine = PhysicsEngine::new(PhysicsConfig::default());
        engine.rebuild(&mut world);
        let handle = |engine: &PhysicsEngine, entity: EntityId| engine.engine.bodies[&entity].body;
        let before = (handle(&engine, plain), handle(&engine, odd_one));
        // Moved (a NaN in its shape too: the same bits are the same shape): the same engine bodies.
        world.get_mut::<Body>(plain).unwrap().translation[2] = 3.0;
        world.get_mut::<Body>(odd_one).unwrap().translation[2] = 3.0;
        engine.step(&mut world);
        assert_eq!((handle(&engine, plain), handle(&engine, odd_one)), before);
        // Each change of kind, shape or material builds the body again.
        let changes: [fn(&mut Body); 5] = [
            |body| body.kind = BodyKind::Fixed,
            |body| body.shape = Shape::Ball { radius: 0.5 },
            |body| body.density = 2.0,
            |body| body.friction = 0.1,
            |body| body.restitution = 0.9,
        ];
        for change in changes {
            let before = handle(&engine, plain);
            change(&mut world.get_mut::<Body>(plain).unwrap());
            engine.step(&mut world);
            assert_ne!(handle(&engine, plain), before);
        }
        let collider = engine.engine.rapier.bodies[handle(&engine, plain)].colliders()[0];
        let collider = &engine.engine.rapier.colliders[collider];
        assert_eq!((collider.friction(), collider.restitution()), (0.1, 0.9));
        assert!(collider.shape().as_ball().is_some());
    }

    #[test]
    fn a_body_that_is_awake_stays_awake_and_one_asleep_sleeps_through_a_rebuild() {
        let mut world = empty_world();
        let (falling, resting) = (world.spawn(), world.spawn());
        let mut ball = Body::new(BodyKind::Dynamic, Shape::Ball { radius: 0.3 }, [0.0, 5.0, 0.0]);
        ball.sleeping = false;
        world.insert(falling, ball).unwrap();
        world.insert(resting, crate_at(4.0, 0.0)).unwrap();
        let mut engine = PhysicsEngine::new(PhysicsConfig::default());
        engine.rebuild(&mut world);
        let asleep = |engine: &PhysicsEngine, entity: EntityId| {
            engine.engine.rapier.bodies[engine.engine.bodies[&entity].body].is_sleeping()
        };
        assert!(!asleep(&engine, falling) && asleep(&engine, resting));
        engine.step(&mut world);
        assert!(world.get::<Body>(falling).unwrap().translation[1] < 5.0, "it fell");
        assert!(asleep(&engine, resting));

        // A target following the world: a round moves the sleeping crate, which sleeps on.
        let mut followed = PhysicsEngine::new(PhysicsConfig::default());
        let build = followed.start_following(&mut world);
        assert!(followed.install(&mut world, build.run()));
        assert!(asleep(&followed, resting));
        world.get_mut::<Body>(resting).unwrap().translation[0] = 4.5;
        followed.follow(&mut world);
        assert!(asleep(&followed, resting), "a received move of a sleeping body does not wake it");

        // The activation state saved with a body is the one its engine body gets.
        let mut activation = RigidBodyActivation::active();
        activation.normalized_linear_threshold = 0.123;
        let mut saved = crate_at(8.0, 0.0);
        saved.engine_state = postcard::to_allocvec(&activation).unwrap();
        let entity = world.spawn();
        world.insert(entity, saved).unwrap();
        engine.rebuild(&mut world);
        let body = &engine.engine.rapier.bodies[engine.engine.bodies[&entity].body];
        assert_eq!(body.activation().normalized_linear_threshold, 0.123);
    }

    #[test]
    fn values_within_the_limits_reach_the_engine_unchanged() {
        let rotation = [0.0, 0.382_683_43, 0.0, 0.923_879_5];
        assert_eq!(limits::unit_rotation(rotation), rotation);
        let nearly = [0.0, 0.0, 0.0, 1.0 - limits::ROTATION_SLACK / 2.0];
        assert_eq!(limits::unit_rotation(nearly), nearly, "within the slack: the engine's own write-backs");
        assert_eq!(limits::unit_rotation([2.0, 0.0, 0.0, 0.0]), [1.0, 0.0, 0.0, 0.0]);
        assert_eq!(limits::unit_rotation([0.0, 0.0, 0.0, 1.0 + 2.0 * limits::ROTATION_SLACK]), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(limits::unit_rotation([0.0; 4]), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(limits::unit_rotation([f32::INFINITY, 0.0, 0.0, 0.0]), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(limits::within([-3.5, 0.0, 7.25], 10.0), [-3.5, 0.0, 7.25]);
        assert_eq!(limits::within([-30.0, f32::NAN, 70.0], 10.0), [-10.0, 0.0, 10.0]);
        assert_eq!(limits::extent(0.25), 0.25);
        assert_eq!(limits::extent(-1.0), limits::MIN_EXTENT);
        assert_eq!(limits::extent(f32::NAN), limits::MIN_EXTENT);
        assert_eq!(limits::extent(1.0e9), limits::MAX_EXTENT);
        assert_eq!(limits::half_height(0.0), 0.0, "a capsule of no height is a ball");
        assert_eq!(limits::half_height(2.5), 2.5);
        assert_eq!(limits::half_height(1.0e9), limits::MAX_EXTENT);
        assert_eq!(limits::half_height(f32::NAN), 0.0);
        assert_eq!(limits::bounded(f32::NEG_INFINITY, 1.0, 0.0, 5.0), 1.0);
    }
}
