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
//! impulses — are rebuilt on the receiving side in entity order ([`PhysicsEngine::rebuild`]).
//! Sleeping and free bodies continue bit-identically; bodies that are awake *and touching something*
//! at the moment of the move may drift from an unmoved twin by a small amount while the solver
//! re-converges. The bound is measured by the `physics_continuation` test and reported in
//! `docs/benchmarks.md`; objects at rest stay at rest.
//!
//! # Changes made by the game
//! The game edits `Body` components freely (a kinematic avatar's target pose, an impulse as a new
//! velocity, a spawned crate). Before each step the engine reads the changes since its last step and
//! applies them to rapier; its own write-backs are skipped, so they never echo.

use std::collections::{BTreeSet, HashMap};

use rapier3d::dynamics::RigidBodyActivation;
use rapier3d::math::{Pose, Rotation, Vector};
use rapier3d::prelude::{ColliderBuilder, PhysicsWorld, RigidBodyBuilder, RigidBodyHandle};

use crate::component::ComponentId;
use crate::world::{EntityId, TrackerId, World};

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
            && self.shape == other.shape
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
}

/// The rapier engine of one region, a cache of the world's [`Body`] components.
pub struct PhysicsEngine {
    config: PhysicsConfig,
    rapier: PhysicsWorld,
    bodies: HashMap<EntityId, Tracked>,
    /// Entities that were awake after the previous step, so that falling asleep is written back too.
    awake: BTreeSet<EntityId>,
    tracker: Option<TrackerId>,
    body_component: Option<ComponentId>,
}

impl PhysicsEngine {
    /// An empty engine; call [`PhysicsEngine::rebuild`] before stepping.
    #[must_use]
    pub fn new(config: PhysicsConfig) -> PhysicsEngine {
        PhysicsEngine {
            config,
            rapier: {
                let mut rapier = new_rapier(config);
                insert_ground(&mut rapier, config);
                rapier
            },
            bodies: HashMap::new(),
            awake: BTreeSet::new(),
            tracker: None,
            body_component: None,
        }
    }

    /// Number of bodies in the engine.
    #[must_use]
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// Builds the engine afresh from every [`Body`] in `world`, in entity order. Call once when a
    /// region starts or after it was restored from archives.
    pub fn rebuild(&mut self, world: &mut World) {
        if let Some(tracker) = self.tracker.take() {
            world.drop_tracker(tracker);
        }
        self.rapier = new_rapier(self.config);
        self.bodies.clear();
        self.awake.clear();
        self.body_component = world.registry().id_of::<Body>();
        for (entity, body) in world.iter::<Body>() {
            let tracked = insert_body(&mut self.rapier, entity, body);
            self.bodies.insert(entity, tracked);
            if !body.sleeping && body.kind == BodyKind::Dynamic {
                self.awake.insert(entity);
            }
        }
        insert_ground(&mut self.rapier, self.config);
        // In entity order: waking and putting to sleep rewires rapier's islands, so the order of
        // these calls decides the engine's state, and a hash map's order differs from map to map.
        let mut all: Vec<EntityId> = self.bodies.keys().copied().collect();
        all.sort_unstable();
        self.prime_contacts(world, &all);
        self.tracker = Some(world.create_tracker());
    }

    /// Finds the contacts of a freshly built engine with a collision-only pass, then gives every
    /// body back the sleep state of its component.
    ///
    /// rapier wakes the parent of every new collider in the first step after insertion; a body
    /// that was asleep at the source (or placed at rest by the game) would wake and jitter while
    /// its contacts re-converge. After this pass the contacts exist and the colliders are no longer
    /// new, so the bodies sleep on. Only valid on a fresh engine: rapier links the contacts found
    /// here into its persistent islands when it bootstraps them in the first step, which it does
    /// only once per engine.
    fn prime_contacts(&mut self, world: &World, inserted: &[EntityId]) {
        if inserted.is_empty() {
            return;
        }
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
        for entity in inserted {
            if let Some(tracked) = self.bodies.get(entity)
                && let Some(rigid_body) = rapier.bodies.get_mut(tracked.body)
                && let Some(body) = world.get::<Body>(*entity)
            {
                restore_activation(rigid_body, body);
                if body.sleeping {
                    self.awake.remove(entity);
                }
            }
        }
    }

    /// Applies the game's edits, steps the simulation once and writes moved bodies back.
    pub fn step(&mut self, world: &mut World) -> PhysicsStepStats {
        let mut stats = PhysicsStepStats::default();
        let (Some(tracker), Some(body_component)) = (self.tracker, self.body_component) else {
            return stats;
        };
        let changes = world.changes(tracker);
        for entity in &changes.despawned {
            self.remove(*entity);
        }
        for (entity, component) in &changes.removed {
            if *component == body_component {
                self.remove(*entity);
            }
        }
        for (entity, component) in &changes.set {
            if *component == body_component
                && let Some(body) = world.get::<Body>(*entity)
            {
                stats.synced += 1;
                if self.bodies.get(entity).is_some_and(|tracked| tracked.spec.same_collider(body)) {
                    self.apply_edit(*entity, body);
                } else {
                    // A body added while the region runs is woken by rapier in its first step, as
                    // any new object would be; only `rebuild` primes contacts (see there).
                    self.reinsert(*entity, body);
                }
            }
        }

        self.rapier.step();

        let mut to_write: BTreeSet<EntityId> = std::mem::take(&mut self.awake);
        for handle in self.rapier.islands.active_bodies() {
            if let Some(body) = self.rapier.bodies.get(handle)
                && body.is_dynamic()
            {
                let entity = EntityId(body.user_data as u64);
                self.awake.insert(entity);
                to_write.insert(entity);
            }
        }
        stats.awake = self.awake.len();
        for entity in to_write {
            let Some(tracked) = self.bodies.get(&entity) else {
                continue;
            };
            let Some(rigid_body) = self.rapier.bodies.get(tracked.body) else {
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

    fn remove(&mut self, entity: EntityId) {
        if let Some(tracked) = self.bodies.remove(&entity) {
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
        }
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
                let differs = !bits_equal(&rigid_body.position().translation.to_array(), &body.translation)
                    || !bits_equal(&rigid_body.position().rotation.to_array(), &body.rotation)
                    || !bits_equal(&rigid_body.linvel().to_array(), &body.linvel)
                    || !bits_equal(&rigid_body.angvel().to_array(), &body.angvel);
                if differs {
                    rigid_body.set_position(pose, true);
                    rigid_body.set_linvel(Vector::from_array(body.linvel), true);
                    rigid_body.set_angvel(Vector::from_array(body.angvel), true);
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
            .field("bodies", &self.bodies.len())
            .field("awake", &self.awake.len())
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
/// Numbered first, it made building the contacts of n resting objects cost n² steps (10,000 crates:
/// 190 ms); numbered last, each lookup walks one object's few contacts.
fn insert_ground(rapier: &mut PhysicsWorld, config: PhysicsConfig) {
    if let Some(half_extent) = config.ground_half_extent {
        let ground =
            ColliderBuilder::cuboid(half_extent, 0.5, half_extent).translation(Vector::new(0.0, -0.5, 0.0)).build();
        rapier.colliders.insert(ground);
    }
}

fn pose_of(body: &Body) -> Pose {
    let rotation = Rotation::from_array(body.rotation);
    Pose::from_parts(Vector::from_array(body.translation), rotation)
}

fn collider_builder(body: &Body) -> ColliderBuilder {
    let builder = match body.shape {
        Shape::Cuboid { half_extents: [x, y, z] } => ColliderBuilder::cuboid(x, y, z),
        Shape::Ball { radius } => ColliderBuilder::ball(radius),
        Shape::CapsuleY { half_height, radius } => ColliderBuilder::capsule_y(half_height, radius),
    };
    builder.density(body.density).friction(body.friction).restitution(body.restitution)
}

fn insert_body(rapier: &mut PhysicsWorld, entity: EntityId, body: &Body) -> Tracked {
    let builder = match body.kind {
        BodyKind::Dynamic => RigidBodyBuilder::dynamic(),
        BodyKind::Kinematic => RigidBodyBuilder::kinematic_position_based(),
        BodyKind::Fixed => RigidBodyBuilder::fixed(),
    };
    let mut rigid_body = builder
        .pose(pose_of(body))
        .linvel(Vector::from_array(body.linvel))
        .angvel(Vector::from_array(body.angvel))
        .user_data(u128::from(entity.0))
        .build();
    restore_activation(&mut rigid_body, body);
    let handle = rapier.bodies.insert(rigid_body);
    let collider = collider_builder(body).user_data(u128::from(entity.0)).build();
    rapier.colliders.insert_with_parent(collider, handle, &mut rapier.bodies);
    let mut spec = body.clone();
    spec.engine_state = Vec::new();
    Tracked { body: handle, spec }
}

/// Gives a rapier body the activation (sleep) state recorded in its component.
///
/// The sleeping flag itself is changed only through rapier's `sleep`/`wake_up`, never by assigning
/// the saved state, because rapier's island manager must see every change of it (assigning it
/// directly leaves an awake body in a sleeping island).
fn restore_activation(rigid_body: &mut rapier3d::prelude::RigidBody, body: &Body) {
    if !body.engine_state.is_empty()
        && let Ok(mut activation) = postcard::from_bytes::<RigidBodyActivation>(&body.engine_state)
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
