//! The world: entities, their components, change tracking and the world digest.
//!
//! # What it owns
//! Every piece of a region's state that must move in a handoff lives here as a component on an
//! entity. Engines (physics, scripts) keep caches outside the world, but their authoritative state
//! is written back into components, so a snapshot of the world is a snapshot of the region.
//!
//! # Change tracking
//! The world keeps a journal of changes. Each change is stamped with the world's current *change
//! stamp*, a process-local counter that every reader of changes advances (and so does receiving
//! values from an archive, so that a change made to one after has a record of its own). A reader (a
//! [`TrackerId`], or the digest) asks for "everything with a stamp above my boundary": the journal
//! is ordered by stamp, so finding the start is a binary search and the cost is proportional to the
//! changes, not to the world. A component value is journaled at most once per stamp, when it is
//! first borrowed mutably ([`Mut`]), inserted or removed; despawns are journaled as tombstones.
//! Entity ids are never reused, so a tombstone is never ambiguous.
//!
//! # Digest
//! [`World::digest`] is a 128-bit hash of the whole world that is the same for equal worlds,
//! whatever the insertion order or process: it is a sum (mod 2^128) of a hash per (entity,
//! component, archived value) plus a hash per live entity, finished with the tick, the entity
//! allocator and the registry's schema hash. The per-entry hashes are kept, so computing the digest
//! again costs only what changed since the last time: a value's hash is computed when the digest is
//! next asked for, or, for a value received from an archive, as it is inserted.
//!
//! # What it does not do
//! No scheduling, no queries across several component types (iterate one and look up the others),
//! no I/O. Iteration is always in entity-id order so that systems are deterministic in any process.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_128;

use crate::codec::CodecError;
use crate::codec::column::CapturedColumn;
use crate::component::{Component, ComponentId, Registry};

/// An entity: a stable id, unique within a region for the region's whole life (never reused).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct EntityId(pub u64);

impl fmt::Display for EntityId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "#{}", self.0)
    }
}

/// A 128-bit digest of a whole world (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorldDigest(pub u128);

impl fmt::Display for WorldDigest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:032x}", self.0)
    }
}

impl fmt::Debug for WorldDigest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "WorldDigest({self})")
    }
}

/// Errors from changing a world.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorldError {
    /// The component type was not registered when the world was created.
    #[error("component type {name} is not registered in this world")]
    Unregistered {
        /// The type's component name.
        name: &'static str,
    },
    /// The entity does not exist (never spawned, or despawned).
    #[error("entity {0} does not exist")]
    NoSuchEntity(EntityId),
}

/// A reader of changes, created by [`World::create_tracker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerId(usize);

/// What changed in a world between two reads of a tracker.
///
/// Each (entity, component) appears at most once; the values are read from the world when
/// encoding, so they are always the latest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Entities spawned in the range that are still alive.
    pub spawned: Vec<EntityId>,
    /// Components inserted or modified in the range, still present.
    pub set: Vec<(EntityId, ComponentId)>,
    /// Components removed in the range (and not re-inserted), from entities still alive.
    pub removed: Vec<(EntityId, ComponentId)>,
    /// Entities despawned in the range.
    pub despawned: Vec<EntityId>,
}

impl ChangeSet {
    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spawned.is_empty() && self.set.is_empty() && self.removed.is_empty() && self.despawned.is_empty()
    }

    /// Number of change records.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spawned.len() + self.set.len() + self.removed.len() + self.despawned.len()
    }
}

/// The region's world state.
pub struct World {
    registry: Arc<Registry>,
    /// Live entities and a bit per component type they hold.
    entities: Column<u128>,
    stores: Vec<Box<dyn ErasedStore>>,
    next_entity: u64,
    tick: u64,
    journal: Journal,
    trackers: Vec<Option<u64>>,
    digest: DigestState,
}

struct DigestState {
    /// Changes with a stamp above this are not folded into `component_sum` yet.
    boundary: u64,
    component_sum: u128,
    entity_sum: u128,
    scratch: AlignedVec,
}

impl World {
    /// An empty world holding the component types of `registry`.
    #[must_use]
    pub fn new(registry: Registry) -> World {
        let stores = registry.infos().map(|(_, info)| (info.new_store)()).collect();
        World {
            registry: Arc::new(registry),
            entities: Column::default(),
            stores,
            next_entity: 1,
            tick: 0,
            journal: Journal { records: VecDeque::new(), stamp: 1 },
            trackers: Vec::new(),
            digest: DigestState { boundary: 0, component_sum: 0, entity_sum: 0, scratch: AlignedVec::new() },
        }
    }

    /// The component types this world holds.
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The simulation tick the world is at (the number of completed ticks).
    #[must_use]
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Sets the simulation tick. The tick loop and the codec call this; games should not.
    pub fn set_tick(&mut self, tick: u64) {
        self.tick = tick;
    }

    /// The id the next spawned entity will get.
    #[must_use]
    pub fn next_entity_id(&self) -> u64 {
        self.next_entity
    }

    pub(crate) fn raise_next_entity_id(&mut self, at_least: u64) {
        self.next_entity = self.next_entity.max(at_least);
    }

    /// Spawns an entity with no components.
    pub fn spawn(&mut self) -> EntityId {
        // `spawn_with_id` moves `next_entity` past it; every live id is below `next_entity`.
        let entity = EntityId(self.next_entity);
        let spawned = self.spawn_with_id(entity);
        debug_assert!(spawned, "the next entity id is never alive");
        entity
    }

    /// Spawns `entity` if it is not alive; returns whether it was spawned. Used when applying
    /// archives, where ids come from the source world.
    pub(crate) fn spawn_with_id(&mut self, entity: EntityId) -> bool {
        if self.entities.contains(entity) {
            return false;
        }
        self.entities.insert(entity, 0);
        self.next_entity = self.next_entity.max(entity.0.saturating_add(1));
        self.digest.entity_sum = self.digest.entity_sum.wrapping_add(entity_hash(entity));
        self.journal.push(entity, ChangeKind::Spawned);
        true
    }

    /// Despawns `entity` and all its components; returns whether it was alive.
    pub fn despawn(&mut self, entity: EntityId) -> bool {
        let Some(mask) = self.entities.remove(entity) else {
            return false;
        };
        for index in MaskBits(mask) {
            if let Some(folded) = self.stores[index].remove(entity) {
                self.digest.component_sum = self.digest.component_sum.wrapping_sub(folded);
            }
        }
        self.digest.entity_sum = self.digest.entity_sum.wrapping_sub(entity_hash(entity));
        self.journal.push(entity, ChangeKind::Despawned);
        true
    }

    /// Whether `entity` is alive.
    #[must_use]
    pub fn is_alive(&self, entity: EntityId) -> bool {
        self.entities.contains(entity)
    }

    /// Number of live entities.
    #[must_use]
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Live entities in id order.
    pub fn entities(&self) -> impl Iterator<Item = EntityId> + '_ {
        self.entities.iter().map(|(entity, _)| entity)
    }

    /// Live entities with ids in `from..`, in id order.
    pub(crate) fn entities_from(&self, from: EntityId) -> impl Iterator<Item = (EntityId, u128)> + '_ {
        self.entities.range_from(from).map(|(entity, mask)| (entity, *mask))
    }

    /// The component mask of a live entity.
    pub(crate) fn mask_of(&self, entity: EntityId) -> Option<u128> {
        self.entities.get(entity).copied()
    }

    /// Inserts or replaces component `T` on `entity`; returns the previous value.
    pub fn insert<T: Component>(&mut self, entity: EntityId, value: T) -> Result<Option<T>, WorldError> {
        let id = self.component_id::<T>()?;
        let Some(mask) = self.entities.get_mut(entity) else {
            return Err(WorldError::NoSuchEntity(entity));
        };
        *mask |= 1u128 << id.0;
        let stamp = self.journal.stamp;
        let store = typed_store_mut::<T>(&mut self.stores, id);
        let previous = store.insert(entity, Entry { value, stamp, folded: Folded::NONE });
        let previous = previous.map(|entry| {
            self.digest.component_sum = self.digest.component_sum.wrapping_sub(entry.folded.get());
            entry.value
        });
        self.journal.push(entity, ChangeKind::Set(id));
        Ok(previous)
    }

    /// Removes component `T` from `entity`; returns it.
    pub fn remove<T: Component>(&mut self, entity: EntityId) -> Option<T> {
        let id = self.registry.id_of::<T>()?;
        let entry = typed_store_mut::<T>(&mut self.stores, id).remove(entity)?;
        if let Some(mask) = self.entities.get_mut(entity) {
            *mask &= !(1u128 << id.0);
        }
        self.digest.component_sum = self.digest.component_sum.wrapping_sub(entry.folded.get());
        self.journal.push(entity, ChangeKind::Removed(id));
        Some(entry.value)
    }

    /// Removes component `id` from `entity` without knowing its type.
    pub(crate) fn remove_erased(&mut self, entity: EntityId, id: ComponentId) -> bool {
        let Some(store) = self.stores.get_mut(usize::from(id.0)) else {
            return false;
        };
        let Some(folded) = store.remove(entity) else {
            return false;
        };
        if let Some(mask) = self.entities.get_mut(entity) {
            *mask &= !(1u128 << id.0);
        }
        self.digest.component_sum = self.digest.component_sum.wrapping_sub(folded);
        self.journal.push(entity, ChangeKind::Removed(id));
        true
    }

    /// Component `T` of `entity`.
    #[must_use]
    pub fn get<T: Component>(&self, entity: EntityId) -> Option<&T> {
        let id = self.registry.id_of::<T>()?;
        typed_store::<T>(&self.stores, id).get(entity).map(|entry| &entry.value)
    }

    /// Whether `entity` has component `T`.
    #[must_use]
    pub fn has<T: Component>(&self, entity: EntityId) -> bool {
        self.get::<T>(entity).is_some()
    }

    /// Component `T` of `entity`, for change. The change is recorded only if the guard is
    /// dereferenced mutably, so read through it freely.
    pub fn get_mut<T: Component>(&mut self, entity: EntityId) -> Option<Mut<'_, T>> {
        let id = self.registry.id_of::<T>()?;
        let store = typed_store_mut::<T>(&mut self.stores, id);
        let entry = store.get_mut(entity)?;
        Some(Mut { entry, journal: &mut self.journal, entity, component: id })
    }

    /// Every entity with component `T` and its value, in entity-id order.
    pub fn iter<T: Component>(&self) -> impl Iterator<Item = (EntityId, &T)> + '_ {
        let entries =
            self.registry.id_of::<T>().map(|id| typed_store::<T>(&self.stores, id).iter()).into_iter().flatten();
        entries.map(|(entity, entry)| (entity, &entry.value))
    }

    /// Calls `visit` with every entity holding `T` and a change guard for its value, in entity-id
    /// order. Only values dereferenced mutably are recorded as changed.
    pub fn for_each_mut<T: Component>(&mut self, mut visit: impl FnMut(EntityId, Mut<'_, T>)) {
        let Some(id) = self.registry.id_of::<T>() else {
            return;
        };
        let store = typed_store_mut::<T>(&mut self.stores, id);
        for (entity, entry) in store.iter_mut() {
            visit(entity, Mut { entry, journal: &mut self.journal, entity, component: id });
        }
    }

    /// Number of entities holding `T`.
    #[must_use]
    pub fn count<T: Component>(&self) -> usize {
        self.registry.id_of::<T>().map_or(0, |id| self.stores[usize::from(id.0)].len())
    }

    fn component_id<T: Component>(&self) -> Result<ComponentId, WorldError> {
        self.registry.id_of::<T>().ok_or(WorldError::Unregistered { name: T::NAME })
    }

    pub(crate) fn store(&self, id: ComponentId) -> &dyn ErasedStore {
        self.stores[usize::from(id.0)].as_ref()
    }

    /// Inserts already-decoded values of one component type (from an archive).
    pub(crate) fn insert_decoded(
        &mut self,
        id: ComponentId,
        entities: &[EntityId],
        values: Box<dyn Any + Send>,
        hashes: Option<Vec<u128>>,
    ) {
        let stamp = self.journal.stamp;
        // Each value is hashed into the digest as it goes in, while it is at hand (folding it
        // later would look it up again: a cache miss per value in a large world), unless
        // `hashes` has them from `hash_column` already.
        let scratch = std::mem::take(&mut self.digest.scratch);
        let inserted = self.stores[usize::from(id.0)].insert_decoded(entities, values, hashes, stamp, scratch);
        self.digest.scratch = inserted.scratch;
        self.digest.component_sum = self.digest.component_sum.wrapping_add(inserted.change);
        // An entity that held the component is alive and marked with it (a store holds values of
        // live entities only); the others are marked, or spawned with it. So a delta's values,
        // which mostly replace others, cost no lookup in the entity table.
        let bit = 1u128 << id.0;
        let fresh: Box<dyn Iterator<Item = &EntityId>> = match &inserted.fresh {
            Fresh::All => Box::new(entities.iter()),
            Fresh::Only(positions) => Box::new(positions.iter().map(|position| &entities[*position])),
        };
        for entity in fresh {
            match self.entities.get_mut(*entity) {
                Some(mask) => *mask |= bit,
                None => {
                    self.entities.insert(*entity, bit);
                    self.next_entity = self.next_entity.max(entity.0.saturating_add(1));
                    self.digest.entity_sum = self.digest.entity_sum.wrapping_add(entity_hash(*entity));
                    self.journal.push(*entity, ChangeKind::Spawned);
                }
            }
        }
        for entity in entities {
            self.journal.push_folded(*entity, id);
        }
        // A change made to one of them from now on must have a record of its own, which the fold
        // hashes: a change guard records a value only once per stamp.
        self.journal.advance();
    }

    /// How much the world holds: its live entities, then the values of each component type in
    /// the order of their names (the same in every process whose registry passes the schema check,
    /// which does not depend on the order types were registered in). A world about to receive
    /// this one's snapshot makes room for it with [`World::reserve`] (the handoff's `Begin`
    /// carries it).
    #[must_use]
    pub fn sizes(&self) -> Vec<u64> {
        let stores = self.stores_by_name().into_iter().map(|index| self.stores[index].len() as u64);
        std::iter::once(self.entities.len() as u64).chain(stores).collect()
    }

    /// Makes room for a world of `sizes` (from [`World::sizes`] of a world of the same schema)
    /// before its snapshot arrives, so that applying it writes each column once instead of growing
    /// and copying it chunk by chunk. A hint only, which may come from a peer: a wrong or short
    /// `sizes` costs speed, not correctness, each column reserves at most 2^22 values and 256 MiB
    /// however large the number, and room the allocator cannot give is simply not reserved.
    pub fn reserve(&mut self, sizes: &[u64]) {
        let additional = |size: u64, len: usize| usize::try_from(size).unwrap_or(usize::MAX).saturating_sub(len);
        let Some((entities, values)) = sizes.split_first() else {
            return;
        };
        let mut records = additional(*entities, self.entities.len());
        self.entities.reserve(records);
        for (index, size) in self.stores_by_name().into_iter().zip(values) {
            let store = &mut self.stores[index];
            let more = additional(*size, store.len());
            store.reserve(more);
            records = records.saturating_add(more);
        }
        // Applying the snapshot journals a record per entity and per value.
        let _ = self.journal.records.try_reserve(records.min(MAX_RESERVE));
    }

    /// Indices of the stores in the order of their types' names.
    fn stores_by_name(&self) -> Vec<usize> {
        let mut order: Vec<(&str, usize)> =
            self.registry.infos().map(|(id, info)| (info.name, usize::from(id.0))).collect();
        order.sort_unstable();
        order.into_iter().map(|(_, index)| index).collect()
    }

    /// A new change reader that will see every change made from now on.
    pub fn create_tracker(&mut self) -> TrackerId {
        let boundary = self.journal.advance();
        if let Some(index) = self.trackers.iter().position(Option::is_none) {
            self.trackers[index] = Some(boundary);
            return TrackerId(index);
        }
        self.trackers.push(Some(boundary));
        TrackerId(self.trackers.len() - 1)
    }

    /// Stops tracking for `tracker`, so the journal no longer keeps changes for it.
    pub fn drop_tracker(&mut self, tracker: TrackerId) {
        if let Some(slot) = self.trackers.get_mut(tracker.0) {
            *slot = None;
        }
        self.trim_journal();
    }

    /// Everything that changed since the last read of `tracker` (or its creation), and moves the
    /// tracker to now. Cost is proportional to the number of changes.
    ///
    /// # Panics
    /// If `tracker` was dropped or belongs to another world (a programming error).
    pub fn changes(&mut self, tracker: TrackerId) -> ChangeSet {
        self.read_changes(tracker, None)
    }

    /// [`World::changes`] for a reader of one component: the sets and removals of `component`
    /// only, and every spawn and despawn. What it gives is what [`World::changes`] would, with the
    /// other components' sets and removals left out; their records are skipped before they are
    /// checked, at a few nanoseconds each instead of about 100 in a big world (the physics engine
    /// reads only its bodies' changes, while a busy region changes many other components a tick).
    ///
    /// # Panics
    /// If `tracker` was dropped or belongs to another world (a programming error).
    pub fn changes_of(&mut self, tracker: TrackerId, component: ComponentId) -> ChangeSet {
        self.read_changes(tracker, Some(component))
    }

    fn read_changes(&mut self, tracker: TrackerId, only: Option<ComponentId>) -> ChangeSet {
        #[allow(clippy::expect_used)]
        let boundary = self.trackers.get(tracker.0).copied().flatten().expect("tracker is live in this world");
        let changes = self.collect_changes(boundary, None, only);
        self.trackers[tracker.0] = Some(self.journal.advance());
        self.trim_journal();
        changes
    }

    /// [`World::changes`], but reading only the oldest of the records since the tracker's last
    /// read when there are more than `records`: those up to the end of the stamp the `records`-th
    /// is in, so about `records` when stamps are small, more when one stamp holds many (stamps
    /// close when a reader reads, when the digest folds and when an engine catches up). When that
    /// stamp is still open, or no record follows it, everything is read. The tracker moves past
    /// what was read; the rest is for the next read. Returns the changes and the number of records
    /// left to read (0: everything was read).
    ///
    /// Each record read is checked against the world now, as [`World::changes`] checks all of
    /// them: one superseded by a change not read yet is left out, and that change is in a later
    /// read. So what a run of reads gives, applied in order, is what one read would have given.
    /// A tracker read after a long while (a handoff's first round, after its snapshot) can hold
    /// millions of records, which cost about 100 ns each.
    ///
    /// # Panics
    /// If `tracker` was dropped or belongs to another world (a programming error).
    pub fn changes_at_most(&mut self, tracker: TrackerId, records: usize) -> (ChangeSet, usize) {
        #[allow(clippy::expect_used)]
        let boundary = self.trackers.get(tracker.0).copied().flatten().expect("tracker is live in this world");
        let from = self.journal.first_after(boundary);
        let nth = from.saturating_add(records.max(1) - 1);
        if let Some(last) = self.journal.records.get(nth).map(|record| record.stamp) {
            // Records follow `last`'s stamp only once it is closed.
            let left = self.journal.records.len() - self.journal.first_after(last);
            if left > 0 {
                let changes = self.collect_changes(boundary, Some(last), None);
                self.trackers[tracker.0] = Some(last);
                self.trim_journal();
                return (changes, left);
            }
        }
        (self.changes(tracker), 0)
    }

    /// Moves `tracker` to now without collecting: the changes made since its last read are skipped.
    /// An engine calls this right after writing its own results back, so they do not echo.
    pub fn catch_up(&mut self, tracker: TrackerId) {
        if let Some(slot) = self.trackers.get_mut(tracker.0)
            && slot.is_some()
        {
            *slot = Some(self.journal.advance());
        }
        self.trim_journal();
    }

    /// The changes recorded after stamp `boundary`, up to stamp `until` (`None`: all); with `only`,
    /// the sets and removals of that component alone (and every spawn and despawn).
    fn collect_changes(&self, boundary: u64, until: Option<u64>, only: Option<ComponentId>) -> ChangeSet {
        // Newest record first: the newest record of each entity and component decides, so every
        // older one costs a hash lookup rather than a store lookup (a tracker read after the
        // snapshot of a busy million-entity region holds millions of records: 3 s of store
        // lookups on the region thread). The kept records then go out oldest first.
        let mut seen = rustc_hash::FxHashSet::default();
        let mut kept: Vec<&ChangeRecord> = Vec::new();
        for record in self.journal.between(boundary, until).rev() {
            // A record is superseded only by a newer one of its own key, so leaving out other
            // components' records changes nothing for the rest.
            if let (Some(only), ChangeKind::Set(id) | ChangeKind::Removed(id)) = (only, record.kind)
                && id != only
            {
                continue;
            }
            let key = match record.kind {
                ChangeKind::Spawned => (record.entity, u16::MAX),
                ChangeKind::Despawned => (record.entity, u16::MAX - 1),
                ChangeKind::Set(id) | ChangeKind::Removed(id) => (record.entity, id.0),
            };
            if !seen.insert(key) {
                continue;
            }
            let current = match record.kind {
                ChangeKind::Spawned => self.is_alive(record.entity),
                ChangeKind::Despawned => !self.is_alive(record.entity),
                ChangeKind::Set(id) => self.stores[usize::from(id.0)].stamp_of(record.entity) == Some(record.stamp),
                ChangeKind::Removed(id) => {
                    self.is_alive(record.entity) && !self.stores[usize::from(id.0)].contains(record.entity)
                }
            };
            if current {
                kept.push(record);
            }
        }
        let mut changes = ChangeSet::default();
        for record in kept.into_iter().rev() {
            match record.kind {
                ChangeKind::Spawned => changes.spawned.push(record.entity),
                ChangeKind::Despawned => changes.despawned.push(record.entity),
                ChangeKind::Set(id) => changes.set.push((record.entity, id)),
                ChangeKind::Removed(id) => changes.removed.push((record.entity, id)),
            }
        }
        changes
    }

    /// The world digest, folding in only what changed since the last call.
    pub fn digest(&mut self) -> WorldDigest {
        self.fold_digest();
        self.finish_digest(self.digest.component_sum, self.digest.entity_sum)
    }

    /// The world digest recomputed from scratch, ignoring every cached hash. Slow; for checks.
    #[must_use]
    pub fn digest_full(&self) -> WorldDigest {
        let mut scratch = AlignedVec::new();
        let mut component_sum: u128 = 0;
        let mut entity_sum: u128 = 0;
        for (entity, mask) in self.entities.iter() {
            entity_sum = entity_sum.wrapping_add(entity_hash(entity));
            for index in MaskBits(*mask) {
                let (hash, returned) = self.stores[index].hash_entry(entity, scratch);
                scratch = returned;
                component_sum = component_sum.wrapping_add(hash.unwrap_or(0));
            }
        }
        self.finish_digest(component_sum, entity_sum)
    }

    fn finish_digest(&self, component_sum: u128, entity_sum: u128) -> WorldDigest {
        let mut bytes = Vec::with_capacity(72);
        bytes.extend_from_slice(&component_sum.to_le_bytes());
        bytes.extend_from_slice(&entity_sum.to_le_bytes());
        bytes.extend_from_slice(&(self.entities.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&self.tick.to_le_bytes());
        bytes.extend_from_slice(&self.next_entity.to_le_bytes());
        bytes.extend_from_slice(&self.registry.schema_hash().to_le_bytes());
        WorldDigest(xxh3_128(&bytes))
    }

    fn fold_digest(&mut self) {
        let boundary = self.digest.boundary;
        if self.journal.stamp <= boundary {
            return;
        }
        let mut scratch = std::mem::take(&mut self.digest.scratch);
        let start = self.journal.first_after(boundary);
        for position in start..self.journal.records.len() {
            let record = self.journal.records[position];
            let ChangeKind::Set(id) = record.kind else {
                continue;
            };
            if record.folded {
                continue;
            }
            let (refolded, returned) = self.stores[usize::from(id.0)].refold(record.entity, record.stamp, scratch);
            scratch = returned;
            if let Some((previous, next)) = refolded {
                self.digest.component_sum = self.digest.component_sum.wrapping_sub(previous).wrapping_add(next);
            }
        }
        self.digest.scratch = scratch;
        self.digest.boundary = self.journal.advance();
        self.trim_journal();
    }

    /// Number of change records kept (for observability and tests of journal trimming).
    #[must_use]
    pub fn journal_len(&self) -> usize {
        self.journal.records.len()
    }

    /// Drops journal records no reader needs. Folding the digest first when the journal is long
    /// keeps it from growing without bound when nobody reads changes.
    fn trim_journal(&mut self) {
        let oldest_needed = self.trackers.iter().flatten().copied().chain([self.digest.boundary]).min().unwrap_or(0);
        let keep_from = self.journal.first_after(oldest_needed);
        self.journal.records.drain(..keep_from);
    }

    /// Bounds the journal at the end of a tick: folds the digest when many records wait, which
    /// frees them unless a tracker still needs them.
    pub fn end_tick_housekeeping(&mut self) {
        // Records the digest has not folded yet (a tracker may keep older ones: those are its).
        if self.journal.since(self.digest.boundary).len() > 4096 {
            self.fold_digest();
        }
    }
}

impl fmt::Debug for World {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("World")
            .field("tick", &self.tick)
            .field("entities", &self.entities.len())
            .field("next_entity", &self.next_entity)
            .field("journal", &self.journal.records.len())
            .finish_non_exhaustive()
    }
}

/// A change guard for one component value; see [`World::get_mut`].
pub struct Mut<'w, T> {
    entry: &'w mut Entry<T>,
    journal: &'w mut Journal,
    entity: EntityId,
    component: ComponentId,
}

impl<T> Mut<'_, T> {
    /// Replaces the value only if it differs, so unchanged writes are not recorded as changes.
    pub fn set_if_changed(&mut self, value: T)
    where
        T: PartialEq,
    {
        if self.entry.value != value {
            **self = value;
        }
    }
}

impl<T> Deref for Mut<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.entry.value
    }
}

impl<T> DerefMut for Mut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        if self.entry.stamp != self.journal.stamp {
            self.entry.stamp = self.journal.stamp;
            self.journal.push(self.entity, ChangeKind::Set(self.component));
        }
        &mut self.entry.value
    }
}

#[derive(Clone, Copy, Debug)]
enum ChangeKind {
    Spawned,
    Despawned,
    Set(ComponentId),
    Removed(ComponentId),
}

#[derive(Clone, Copy, Debug)]
struct ChangeRecord {
    stamp: u64,
    entity: EntityId,
    kind: ChangeKind,
    /// The value it set was hashed into the digest's sum as it was set (a received one): the
    /// fold has nothing to do for it.
    folded: bool,
}

struct Journal {
    /// Ordered by stamp (non-decreasing), because stamps only grow.
    records: VecDeque<ChangeRecord>,
    /// The stamp given to changes made now.
    stamp: u64,
}

impl Journal {
    fn push(&mut self, entity: EntityId, kind: ChangeKind) {
        self.records.push_back(ChangeRecord { stamp: self.stamp, entity, kind, folded: false });
    }

    /// Records that `entity`'s component `id` was set to a value whose hash is already in the
    /// digest's sum.
    fn push_folded(&mut self, entity: EntityId, id: ComponentId) {
        self.records.push_back(ChangeRecord { stamp: self.stamp, entity, kind: ChangeKind::Set(id), folded: true });
    }

    /// Closes the current stamp and returns it: changes made from now on have a larger stamp.
    fn advance(&mut self) -> u64 {
        let closed = self.stamp;
        self.stamp += 1;
        closed
    }

    fn first_after(&self, boundary: u64) -> usize {
        self.records.partition_point(|record| record.stamp <= boundary)
    }

    fn since(&self, boundary: u64) -> std::collections::vec_deque::Iter<'_, ChangeRecord> {
        self.records.range(self.first_after(boundary)..)
    }

    /// The records after stamp `boundary` up to stamp `until` (`None`: all).
    fn between(&self, boundary: u64, until: Option<u64>) -> std::collections::vec_deque::Iter<'_, ChangeRecord> {
        let start = self.first_after(boundary);
        let end = until.map_or(self.records.len(), |until| self.first_after(until));
        self.records.range(start..end.max(start))
    }
}

pub(crate) struct Entry<T> {
    pub(crate) value: T,
    /// Stamp of the last change.
    stamp: u64,
    /// The hash of this entry currently included in the digest sum.
    folded: Folded,
}

/// A hash folded into the digest sum, kept in two halves so that an entry needs a `u64`'s
/// alignment rather than a `u128`'s (a 28-byte value's slot in a column is 64 bytes rather than 80:
/// a fifth less memory to fault in and copy when a snapshot is applied). 0 stands for "nothing
/// folded": a hash of 0 adds nothing to the sum, so the digest cannot tell the two apart.
#[derive(Clone, Copy)]
struct Folded([u64; 2]);

impl Folded {
    const NONE: Folded = Folded([0, 0]);

    fn of(hash: u128) -> Folded {
        Folded([hash as u64, (hash >> 64) as u64])
    }

    fn get(self) -> u128 {
        u128::from(self.0[0]) | (u128::from(self.0[1]) << 64)
    }
}

/// Values by entity: a dense column sorted by entity id, found by id through a paged index, so a
/// lookup costs a page lookup and two array reads however many entities there are (a B-tree of a
/// million entries cost a chain of cache misses per lookup: most of a busy million-entity region's
/// tick); a miss also looks in the side map when it holds anything.
/// Entity ids only grow, so a new entity's value goes at the column's end. A value given to an
/// older entity waits in a small ordered side map, a removed one leaves a tombstone; both are
/// folded into the column when they grow past a share of it ([`Column::compact`]), so a value
/// given to an older entity costs a binary search and a small map's insert, everything else a
/// constant amortised over the folds, and iteration stays in entity order. The world's
/// entity table and each component type's storage are columns.
pub(crate) struct Column<V> {
    /// Entity of each column position, ascending (tombstones keep theirs).
    ids: Vec<EntityId>,
    /// Value at each column position; `None` is a tombstone.
    values: Vec<Option<V>>,
    /// Column position of each live entity in the column.
    index: ColumnIndex,
    /// Values of entities below the column's last id, given since the last compaction.
    side: BTreeMap<EntityId, V>,
    tombstones: usize,
}

impl<V> Default for Column<V> {
    fn default() -> Self {
        Column {
            ids: Vec::new(),
            values: Vec::new(),
            index: ColumnIndex::default(),
            side: BTreeMap::new(),
            tombstones: 0,
        }
    }
}

/// The side map and tombstones are folded into the column once they exceed this many entries, or
/// an eighth (side map) or a sixteenth (tombstones) of the column, whichever is more. (Few in
/// tests, so that they fold often.) Each fold costs a pass over the column, a sixteenth of it
/// apart at least: 16 moves per removal. Folding tombstones only at half the column let a region
/// whose avatars come and go by crossings (each leaves a tombstone in several columns) grow for
/// tens of minutes before the first fold, which a 30-minute soak could not tell from a leak.
#[cfg(not(test))]
const COMPACT_AT_LEAST: usize = 256;
#[cfg(test)]
const COMPACT_AT_LEAST: usize = 8;

impl<V> Column<V> {
    pub(crate) fn len(&self) -> usize {
        self.ids.len() - self.tombstones + self.side.len()
    }

    pub(crate) fn get(&self, entity: EntityId) -> Option<&V> {
        match self.index.get(entity) {
            Some(position) => self.values[position].as_ref(),
            None if self.side.is_empty() => None,
            None => self.side.get(&entity),
        }
    }

    pub(crate) fn get_mut(&mut self, entity: EntityId) -> Option<&mut V> {
        match self.index.get(entity) {
            Some(position) => self.values[position].as_mut(),
            None if self.side.is_empty() => None,
            None => self.side.get_mut(&entity),
        }
    }

    pub(crate) fn contains(&self, entity: EntityId) -> bool {
        self.get(entity).is_some()
    }

    /// Makes room for `additional` more values (at most [`MAX_RESERVE`] of them and
    /// [`MAX_RESERVE_BYTES`]: the number may come from a peer); room the allocator cannot give is
    /// not reserved.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let slot = size_of::<Option<V>>().max(size_of::<EntityId>());
        let additional = additional.min(MAX_RESERVE).min(MAX_RESERVE_BYTES / slot);
        if self.ids.try_reserve(additional).is_ok() {
            let _ = self.values.try_reserve(additional);
        }
    }

    /// Whether `entities` are strictly ascending and all above every id the column holds (a
    /// snapshot chunk arriving in order), so [`Column::append_ascending`] may take them.
    pub(crate) fn appends_at_end(&self, entities: &[EntityId]) -> bool {
        let Some(first) = entities.first() else {
            return true;
        };
        // Every id in the side map is below the column's last id (that is how it got there; a
        // fold, which may drop the last id's tombstone, empties the side map), so above the last
        // id is above everything.
        self.ids.last().is_none_or(|last| first > last) && entities.windows(2).all(|pair| pair[0] < pair[1])
    }

    /// Appends the values of `entities`, which [`Column::appends_at_end`] accepted: one pass, one
    /// index lookup per page rather than two per value.
    pub(crate) fn append_ascending(&mut self, entities: &[EntityId], values: impl Iterator<Item = V>) {
        debug_assert!(self.appends_at_end(entities), "appended entities lie above the column, ascending");
        let start = self.ids.len();
        self.ids.reserve(entities.len());
        self.values.reserve(entities.len());
        self.values.extend(values.take(entities.len()).map(Some));
        // One value per entity (the decoder checked the counts); never more ids than values.
        let appended = &entities[..self.values.len() - start];
        self.ids.extend_from_slice(appended);
        self.index.set_ascending(appended, start);
    }

    /// Inserts or replaces the values of `entities`, as [`Column::insert`] would one by one;
    /// `replaced` gets each one's position in `entities` and the value it replaced. A value
    /// replaced in place costs no lookup of the index's page when the entity before it was on the
    /// same page (ascending entities, as a decoded column's are, share their pages' lookups).
    pub(crate) fn insert_many(
        &mut self,
        entities: &[EntityId],
        values: impl Iterator<Item = V>,
        mut replaced: impl FnMut(usize, Option<V>),
    ) {
        let mut page: Option<(u64, &[u32; INDEX_PAGE])> = None;
        for (at, (entity, value)) in entities.iter().zip(values).enumerate() {
            let number = entity.0 / INDEX_PAGE as u64;
            let slots = match page {
                Some((current, slots)) if current == number => Some(slots),
                _ => self.index.pages.get(&number).map(|slots| &**slots),
            };
            page = slots.map(|slots| (number, slots));
            match slots.and_then(|slots| slots[(entity.0 % INDEX_PAGE as u64) as usize].checked_sub(1)) {
                Some(position) => replaced(at, self.values[position as usize].replace(value)),
                None => {
                    // Anything else may move the column's values (a compaction): look again after.
                    page = None;
                    replaced(at, self.insert(*entity, value));
                }
            }
        }
    }

    /// Inserts or replaces `entity`'s value; returns the replaced one.
    pub(crate) fn insert(&mut self, entity: EntityId, value: V) -> Option<V> {
        if let Some(position) = self.index.get(entity) {
            return self.values[position].replace(value);
        }
        if let Some(existing) = self.side.get_mut(&entity) {
            return Some(std::mem::replace(existing, value));
        }
        if self.ids.last().is_none_or(|last| entity > *last) {
            self.index.set(entity, self.ids.len());
            self.ids.push(entity);
            self.values.push(Some(value));
            return None;
        }
        // Below the column's end: the entity's own tombstone is revived in place, anything else
        // waits in the side map.
        if let Ok(position) = self.ids.binary_search(&entity) {
            self.values[position] = Some(value);
            self.index.set(entity, position);
            self.tombstones -= 1;
            return None;
        }
        self.side.insert(entity, value);
        if self.side.len() > COMPACT_AT_LEAST.max(self.ids.len() / 8) {
            self.compact();
        }
        None
    }

    pub(crate) fn remove(&mut self, entity: EntityId) -> Option<V> {
        let Some(position) = self.index.get(entity) else {
            return if self.side.is_empty() { None } else { self.side.remove(&entity) };
        };
        self.index.clear(entity);
        self.tombstones += 1;
        let removed = self.values[position].take();
        if self.tombstones > COMPACT_AT_LEAST.max(self.ids.len() / 16) {
            self.compact();
        }
        removed
    }

    /// Folds the side map into the column and drops the tombstones, in entity order.
    fn compact(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        let values = std::mem::take(&mut self.values);
        let side = std::mem::take(&mut self.side);
        let live = ids.len() - self.tombstones + side.len();
        self.ids.reserve(live);
        self.values.reserve(live);
        self.index = ColumnIndex::default();
        self.tombstones = 0;
        let dense = ids.into_iter().zip(values).filter_map(|(entity, value)| value.map(|value| (entity, value)));
        for (entity, value) in MergeById::new(dense, side.into_iter()) {
            self.index.set(entity, self.ids.len());
            self.ids.push(entity);
            self.values.push(Some(value));
        }
    }

    /// Every value, in entity order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (EntityId, &V)> + '_ {
        self.range_from(EntityId(0))
    }

    /// Every value of an entity at or after `from`, in entity order.
    pub(crate) fn range_from(&self, from: EntityId) -> impl Iterator<Item = (EntityId, &V)> + '_ {
        let start = self.ids.partition_point(|entity| *entity < from);
        let dense = self.ids[start..]
            .iter()
            .zip(&self.values[start..])
            .filter_map(|(entity, value)| value.as_ref().map(|value| (*entity, value)));
        MergeById::new(dense, self.side.range(from..).map(|(entity, value)| (*entity, value)))
    }

    /// Every value, in entity order, for change.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (EntityId, &mut V)> + '_ {
        let dense = self
            .ids
            .iter()
            .zip(&mut self.values)
            .filter_map(|(entity, value)| value.as_mut().map(|value| (*entity, value)));
        MergeById::new(dense, self.side.iter_mut().map(|(entity, value)| (*entity, value)))
    }

    /// Entities holding a value within `first..=last`, in order.
    pub(crate) fn entities_in(&self, first: EntityId, last: EntityId) -> Vec<EntityId> {
        if first > last {
            return Vec::new();
        }
        self.range_from(first).map(|(entity, _)| entity).take_while(|entity| *entity <= last).collect()
    }
}

/// Storage of one component type.
pub(crate) type Store<T> = Column<Entry<T>>;

impl<T: Component> Store<T> {
    /// The values of `entities`, in their order; each must be present.
    fn values_of(&self, entities: &[EntityId]) -> Result<Vec<&T>, CodecError> {
        entities
            .iter()
            .map(|entity| {
                self.get(*entity)
                    .map(|entry| &entry.value)
                    .ok_or_else(|| CodecError::Encode(format!("entity {entity} has no {}", T::NAME)))
            })
            .collect()
    }
}

/// Merges two iterators of distinct entities, each in entity order, into one in entity order.
struct MergeById<A: Iterator, B: Iterator> {
    left: std::iter::Peekable<A>,
    right: std::iter::Peekable<B>,
}

impl<X, A: Iterator<Item = (EntityId, X)>, B: Iterator<Item = (EntityId, X)>> MergeById<A, B> {
    fn new(left: A, right: B) -> Self {
        MergeById { left: left.peekable(), right: right.peekable() }
    }
}

impl<X, A: Iterator<Item = (EntityId, X)>, B: Iterator<Item = (EntityId, X)>> Iterator for MergeById<A, B> {
    type Item = (EntityId, X);
    fn next(&mut self) -> Option<(EntityId, X)> {
        match (self.left.peek(), self.right.peek()) {
            (Some((left, _)), Some((right, _))) if right < left => self.right.next(),
            (Some(_), _) => self.left.next(),
            (None, _) => self.right.next(),
        }
    }
}

/// Column positions by entity id, in pages of [`INDEX_PAGE`] ids allocated as ids are used, found
/// by page number in a hash map (ids never repeat and only grow, so a long-lived region's ids are
/// large; a hostile archive's may be anything: no id makes the table itself large).
#[derive(Default)]
struct ColumnIndex {
    /// Per page, the column position plus one of each id (0: not in the column).
    pages: rustc_hash::FxHashMap<u64, Box<[u32; INDEX_PAGE]>>,
}

const INDEX_PAGE: usize = 256;

/// The most values [`Column::reserve`] makes room for at once (the hint comes from a peer; room
/// that is reserved and never written costs address space, not memory).
const MAX_RESERVE: usize = 1 << 22;

/// The most bytes [`Column::reserve`] makes room for at once in one of a column's vectors.
const MAX_RESERVE_BYTES: usize = 256 << 20;

impl ColumnIndex {
    fn get(&self, entity: EntityId) -> Option<usize> {
        let slots = self.pages.get(&(entity.0 / INDEX_PAGE as u64))?;
        let slot = slots[(entity.0 % INDEX_PAGE as u64) as usize];
        slot.checked_sub(1).map(|position| position as usize)
    }

    fn set(&mut self, entity: EntityId, position: usize) {
        let slots = self.pages.entry(entity.0 / INDEX_PAGE as u64).or_insert_with(|| Box::new([0; INDEX_PAGE]));
        // Memory runs out long before a column holds four billion entries.
        #[allow(clippy::expect_used)]
        let slot = u32::try_from(position + 1).expect("a column holds fewer than 2^32 entries");
        slots[(entity.0 % INDEX_PAGE as u64) as usize] = slot;
    }

    /// Sets the positions of `entities` (ascending) to `first`, `first + 1`, ...: one map lookup
    /// per page rather than per entity.
    fn set_ascending(&mut self, entities: &[EntityId], first: usize) {
        let mut current: Option<(u64, &mut Box<[u32; INDEX_PAGE]>)> = None;
        for (offset, entity) in entities.iter().enumerate() {
            let page = entity.0 / INDEX_PAGE as u64;
            let slots = match current.take() {
                Some((number, slots)) if number == page => slots,
                _ => self.pages.entry(page).or_insert_with(|| Box::new([0; INDEX_PAGE])),
            };
            // Memory runs out long before a column holds four billion entries.
            #[allow(clippy::expect_used)]
            let slot = u32::try_from(first + offset + 1).expect("a column holds fewer than 2^32 entries");
            slots[(entity.0 % INDEX_PAGE as u64) as usize] = slot;
            current = Some((page, slots));
        }
    }

    fn clear(&mut self, entity: EntityId) {
        if let Some(slots) = self.pages.get_mut(&(entity.0 / INDEX_PAGE as u64)) {
            slots[(entity.0 % INDEX_PAGE as u64) as usize] = 0;
        }
    }
}

/// What [`ErasedStore::insert_decoded`] did.
pub(crate) struct Inserted {
    /// What the digest's sum changes by: the values' hashes, less those of the entries they
    /// replaced.
    change: u128,
    /// The entities (by position in the list given) that did not hold the component before.
    fresh: Fresh,
    scratch: AlignedVec,
}

/// Which of the entities given to [`ErasedStore::insert_decoded`] did not hold the component.
pub(crate) enum Fresh {
    /// All of them (appended at the column's end).
    All,
    /// Those at these positions in the list given.
    Only(Vec<usize>),
}

/// Type-erased operations on a [`Store`], so the world and codec can handle any component type.
pub(crate) trait ErasedStore: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn len(&self) -> usize;
    fn contains(&self, entity: EntityId) -> bool;
    fn stamp_of(&self, entity: EntityId) -> Option<u64>;
    /// Removes the entry; `Some(its hash in the digest sum, or 0)` when it existed.
    fn remove(&mut self, entity: EntityId) -> Option<u128>;
    /// Recomputes the entry's hash if it was last changed at `stamp` (later changes have records
    /// of their own): `(previously folded or 0, new)`.
    fn refold(&mut self, entity: EntityId, stamp: u64, scratch: AlignedVec) -> (Option<(u128, u128)>, AlignedVec);
    /// The entry's hash, without caching it.
    fn hash_entry(&self, entity: EntityId, scratch: AlignedVec) -> (Option<u128>, AlignedVec);
    /// Makes room for `additional` more values.
    fn reserve(&mut self, additional: usize);
    /// Appends a column archive of the values of `entities` (each must be present) to `out`.
    fn encode_entities(&self, entities: &[EntityId], out: AlignedVec) -> Result<AlignedVec, CodecError>;
    /// Copies the values of `entities` (each must be present) out, to be encoded elsewhere.
    fn capture(&self, entities: &[EntityId]) -> Result<Box<dyn CapturedColumn>, CodecError>;
    /// Entities holding this component within `first..=last`, in order.
    fn entities_in(&self, first: EntityId, last: EntityId) -> Vec<EntityId>;
    /// Inserts decoded values, each hashed for the digest as it goes in, or taking its hash from
    /// `hashes` (one per value, from `hash_column`).
    fn insert_decoded(
        &mut self,
        entities: &[EntityId],
        values: Box<dyn Any + Send>,
        hashes: Option<Vec<u128>>,
        stamp: u64,
        scratch: AlignedVec,
    ) -> Inserted;
}

impl<T: Component> ErasedStore for Store<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn len(&self) -> usize {
        Store::len(self)
    }
    fn contains(&self, entity: EntityId) -> bool {
        Store::contains(self, entity)
    }
    fn stamp_of(&self, entity: EntityId) -> Option<u64> {
        self.get(entity).map(|entry| entry.stamp)
    }
    fn remove(&mut self, entity: EntityId) -> Option<u128> {
        Store::remove(self, entity).map(|entry| entry.folded.get())
    }
    fn refold(&mut self, entity: EntityId, stamp: u64, scratch: AlignedVec) -> (Option<(u128, u128)>, AlignedVec) {
        let Some(entry) = Store::get_mut(self, entity).filter(|entry| entry.stamp == stamp) else {
            return (None, scratch);
        };
        let (hash, scratch) = value_hash(&entry.value, entity, scratch);
        let previous = entry.folded.get();
        entry.folded = Folded::of(hash);
        (Some((previous, hash)), scratch)
    }
    fn hash_entry(&self, entity: EntityId, scratch: AlignedVec) -> (Option<u128>, AlignedVec) {
        match self.get(entity) {
            Some(entry) => {
                let (hash, scratch) = value_hash(&entry.value, entity, scratch);
                (Some(hash), scratch)
            }
            None => (None, scratch),
        }
    }
    fn reserve(&mut self, additional: usize) {
        Store::reserve(self, additional);
    }
    fn encode_entities(&self, entities: &[EntityId], out: AlignedVec) -> Result<AlignedVec, CodecError> {
        T::encode_column(&self.values_of(entities)?, out)
    }
    fn capture(&self, entities: &[EntityId]) -> Result<Box<dyn CapturedColumn>, CodecError> {
        Ok(T::capture_column(&self.values_of(entities)?))
    }
    fn entities_in(&self, first: EntityId, last: EntityId) -> Vec<EntityId> {
        Store::entities_in(self, first, last)
    }
    fn insert_decoded(
        &mut self,
        entities: &[EntityId],
        values: Box<dyn Any + Send>,
        hashes: Option<Vec<u128>>,
        stamp: u64,
        mut scratch: AlignedVec,
    ) -> Inserted {
        // The codec pairs each store with the values it decoded itself; another type here is a bug.
        let Ok(values) = values.downcast::<Vec<T>>() else {
            debug_assert!(false, "decoded column type does not match its store");
            return Inserted { change: 0, fresh: Fresh::Only(Vec::new()), scratch };
        };
        let mut hashes = hashes.filter(|hashes| hashes.len() == values.len()).map(Vec::into_iter);
        let mut change = 0u128;
        let entries = values.into_iter().zip(entities).map(|(value, entity)| {
            let hash = match hashes.as_mut().and_then(Iterator::next) {
                Some(hash) => hash,
                None => {
                    let (hash, returned) = value_hash(&value, *entity, std::mem::take(&mut scratch));
                    scratch = returned;
                    hash
                }
            };
            change = change.wrapping_add(hash);
            Entry { value, stamp, folded: Folded::of(hash) }
        });
        if self.appends_at_end(entities) {
            self.append_ascending(entities, entries);
            return Inserted { change, fresh: Fresh::All, scratch };
        }
        let mut replaced = 0u128;
        let mut fresh = Vec::new();
        // A decoded column's entities are strictly ascending (the decoder checks).
        self.insert_many(entities, entries, |position, previous| match previous {
            Some(previous) => replaced = replaced.wrapping_add(previous.folded.get()),
            None => fresh.push(position),
        });
        Inserted { change: change.wrapping_sub(replaced), fresh: Fresh::Only(fresh), scratch }
    }
}

fn typed_store<T: Component>(stores: &[Box<dyn ErasedStore>], id: ComponentId) -> &Store<T> {
    // The registry maps T to id and created this store as Store<T>, so the downcast holds.
    #[allow(clippy::expect_used)]
    stores[usize::from(id.0)].as_any().downcast_ref::<Store<T>>().expect("store type matches its registry id")
}

fn typed_store_mut<T: Component>(stores: &mut [Box<dyn ErasedStore>], id: ComponentId) -> &mut Store<T> {
    #[allow(clippy::expect_used)]
    stores[usize::from(id.0)].as_any_mut().downcast_mut::<Store<T>>().expect("store type matches its registry id")
}

/// The digest's hash of each value of a decoded column (a `Vec<T>`) with its entity, as
/// [`World::insert_decoded`] would take it: done away from the region's thread for an archive a
/// handoff's target received (`codec::DecodedArchive::hash_values`).
pub(crate) fn hash_column<T: Component>(values: &(dyn Any + Send), entities: &[EntityId]) -> Vec<u128> {
    let Some(values) = values.downcast_ref::<Vec<T>>() else {
        debug_assert!(false, "decoded column type does not match its registry entry");
        return Vec::new();
    };
    let mut scratch = AlignedVec::new();
    values
        .iter()
        .zip(entities)
        .map(|(value, entity)| {
            let (hash, returned) = value_hash(value, *entity, std::mem::take(&mut scratch));
            scratch = returned;
            hash
        })
        .collect()
}

/// The hash of one (entity, component value). The component is named, not numbered, because ids
/// follow registration order, which may differ between processes.
fn value_hash<T: Component>(value: &T, entity: EntityId, mut scratch: AlignedVec) -> (u128, AlignedVec) {
    let name = T::NAME.as_bytes();
    let prefix = 16 + name.len();
    // The hash of the entity, the name's length, the name and the value's bytes, end to end, in
    // one XXH3 call (the same hash as those pieces fed one after another, which checkpoints were
    // first made with, and quicker: a handoff's target hashes one per value it receives, inside
    // the freeze for the final round). The value is archived after room for the rest, at an
    // offset aligned as the buffer's start is: rkyv pads by position in the buffer and points
    // relatively, so its bytes there are those of an archive of its own.
    let at = prefix.next_multiple_of(SCRATCH_ALIGN);
    scratch.clear();
    scratch.resize(at, 0);
    let mut scratch = match value.encode_one(scratch) {
        Ok(bytes) => bytes,
        // Encoding into memory fails only on allocation failure or a broken Serialize impl; hash the
        // failure so the digest still differs from a correct world's.
        Err(_) => {
            let mut empty = AlignedVec::new();
            empty.resize(at, 0);
            empty
        }
    };
    let joined = &mut scratch[at - prefix..];
    joined[..8].copy_from_slice(&entity.0.to_le_bytes());
    joined[8..16].copy_from_slice(&(name.len() as u64).to_le_bytes());
    joined[16..prefix].copy_from_slice(name);
    (xxh3_128(joined), scratch)
}

/// The alignment of an [`AlignedVec`]'s start, and so of an archive's.
const SCRATCH_ALIGN: usize = AlignedVec::<16>::ALIGNMENT;

fn entity_hash(entity: EntityId) -> u128 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&entity.0.to_le_bytes());
    bytes[8..].copy_from_slice(b"entity\0\0");
    xxh3_128(&bytes)
}

/// Iterates the indices of set bits of a component mask.
pub(crate) struct MaskBits(pub(crate) u128);

impl Iterator for MaskBits {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let index = self.0.trailing_zeros() as usize;
        self.0 &= self.0 - 1;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    //! The world's own API: entities, components, change trackers and the journal. The codec's
    //! tests check the digest and archives against it; these check what games and trackers see.

    use super::*;
    use xxhash_rust::xxh3::Xxh3;

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.hp")]
    struct Hp(u32);

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.name")]
    struct Name(String);

    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.unregistered")]
    struct Unregistered(u8);

    fn world() -> World {
        let mut registry = Registry::new();
        registry.register::<Hp>().unwrap();
        registry.register::<Name>().unwrap();
        World::new(registry)
    }

    fn ids(world: &World) -> (ComponentId, ComponentId) {
        (world.registry().id_of::<Hp>().unwrap(), world.registry().id_of::<Name>().unwrap())
    }

    #[test]
    fn entities_live_from_spawn_to_despawn_and_ids_are_never_reused() {
        let mut world = world();
        let spawned: Vec<EntityId> = (0..3).map(|_| world.spawn()).collect();
        assert_eq!(spawned, [EntityId(1), EntityId(2), EntityId(3)]);
        assert_eq!(world.next_entity_id(), 4);
        assert!(world.despawn(EntityId(2)));
        assert!(!world.despawn(EntityId(2)), "already gone");
        assert!(!world.is_alive(EntityId(2)));
        assert_eq!(world.entity_count(), 2);
        assert_eq!(world.entities().collect::<Vec<_>>(), [EntityId(1), EntityId(3)]);
        assert_eq!(world.spawn(), EntityId(4), "an id is never given twice");
        assert_eq!(world.insert(EntityId(2), Hp(1)), Err(WorldError::NoSuchEntity(EntityId(2))));
        assert_eq!(EntityId(2).to_string(), "#2");
        world.set_tick(7);
        assert_eq!(world.tick(), 7);
        assert_eq!(format!("{world:?}"), "World { tick: 7, entities: 3, next_entity: 5, journal: 5, .. }");
    }

    #[test]
    fn components_are_read_changed_and_removed_through_the_world() {
        let mut world = world();
        let (hp, name) = ids(&world);
        let [a, b, c] = [world.spawn(), world.spawn(), world.spawn()];
        assert_eq!(world.insert(c, Hp(30)), Ok(None));
        assert_eq!(world.insert(a, Hp(10)), Ok(None));
        assert_eq!(world.insert(a, Hp(11)), Ok(Some(Hp(10))), "a replace returns the old value");
        world.insert(a, Name("a".into())).unwrap();
        assert_eq!(world.get::<Hp>(a), Some(&Hp(11)));
        assert!(world.has::<Name>(a) && !world.has::<Name>(c) && !world.has::<Hp>(b));
        assert_eq!((world.count::<Hp>(), world.count::<Name>()), (2, 1));
        assert_eq!(world.iter::<Hp>().collect::<Vec<_>>(), [(a, &Hp(11)), (c, &Hp(30))], "in entity order");
        assert_eq!(world.mask_of(a), Some(1 << hp.0 | 1 << name.0));
        world.for_each_mut::<Hp>(|_, mut value| value.0 += 1);
        assert_eq!(world.iter::<Hp>().map(|(_, value)| value.0).collect::<Vec<_>>(), [12, 31]);
        assert_eq!(world.remove::<Name>(a), Some(Name("a".into())));
        assert_eq!(world.remove::<Name>(a), None);
        assert_eq!(world.mask_of(a), Some(1 << hp.0));
        world.insert(a, Name("b".into())).unwrap();
        assert!(world.remove_erased(a, name));
        assert!(!world.remove_erased(a, name));
        assert_eq!(world.mask_of(a), Some(1 << hp.0));
        assert!(world.remove_erased(a, hp));
        assert_eq!(world.mask_of(a), Some(0));
        assert!(world.despawn(c));
        assert_eq!((world.count::<Hp>(), world.get::<Hp>(c), world.mask_of(c)), (0, None, None));
        // A type the world was not made with.
        assert_eq!(world.insert(b, Unregistered(1)), Err(WorldError::Unregistered { name: "test.unregistered" }));
        assert_eq!(world.get::<Unregistered>(b), None);
        assert_eq!(world.count::<Unregistered>(), 0);
        assert_eq!(world.iter::<Unregistered>().count(), 0);
        assert_eq!(world.remove::<Unregistered>(b), None);
    }

    #[test]
    fn a_tracker_sees_each_change_once_at_its_latest() {
        let mut world = world();
        let (hp, name) = ids(&world);
        let [kept, dropped] = [world.spawn(), world.spawn()];
        world.insert(kept, Name("kept".into())).unwrap();
        world.insert(dropped, Hp(1)).unwrap();
        let tracker = world.create_tracker();
        assert!(world.changes(tracker).is_empty());
        let born = world.spawn();
        world.insert(born, Hp(5)).unwrap();
        world.insert(kept, Hp(1)).unwrap();
        world.digest(); // a new stamp: the next change of the same value is a record of its own
        world.insert(kept, Hp(2)).unwrap();
        world.remove::<Name>(kept);
        assert!(world.despawn(dropped));
        let changes = world.changes(tracker);
        assert_eq!(changes.spawned, [born]);
        assert_eq!(changes.set, [(born, hp), (kept, hp)], "one record per value changed twice");
        assert_eq!(changes.removed, [(kept, name)]);
        assert_eq!(changes.despawned, [dropped]);
        assert_eq!(changes.len(), 5);
        assert!(world.changes(tracker).is_empty(), "read once");
        // A component removed and put back is set, not removed; an entity despawned and applied
        // again (as an archive does) is spawned, not despawned.
        world.remove::<Hp>(kept);
        world.insert(kept, Hp(3)).unwrap();
        assert!(world.despawn(born));
        assert!(world.spawn_with_id(born));
        let changes = world.changes(tracker);
        assert_eq!((changes.set, changes.removed), (vec![(kept, hp)], vec![]));
        assert_eq!((changes.spawned, changes.despawned), (vec![born], vec![]));
        // A component removed from an entity despawned since is no removal: the despawn says it.
        let short = world.spawn();
        world.insert(short, Hp(1)).unwrap();
        world.changes(tracker);
        world.remove::<Hp>(short);
        assert!(world.despawn(short));
        let changes = world.changes(tracker);
        assert_eq!((changes.removed, changes.despawned), (vec![], vec![short]));
    }

    #[test]
    fn a_reader_of_one_component_sees_what_a_whole_read_gives_of_it() {
        let mut world = world();
        let (hp, name) = ids(&world);
        let mut entities: Vec<EntityId> = (0..12).map(|_| world.spawn()).collect();
        let whole = world.create_tracker();
        let of_hp = world.create_tracker();
        let of_name = world.create_tracker();
        // Sets, removals, spawns and despawns of both components, several to a key within a
        // stamp and across stamps, read every few steps.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut draw = |bound: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % bound
        };
        let mut seen_sets = [0usize; 2];
        for step in 0..400u32 {
            let entity = entities[draw(entities.len() as u64) as usize];
            match draw(8) {
                0 | 1 => {
                    let _ = world.insert(entity, Hp(step));
                }
                2 | 3 => {
                    let _ = world.insert(entity, Name(format!("{step}")));
                }
                4 => {
                    world.remove::<Hp>(entity);
                }
                5 => {
                    world.remove::<Name>(entity);
                }
                6 => {
                    if draw(2) == 0 {
                        world.despawn(entity);
                    } else {
                        entities.push(world.spawn());
                    }
                }
                _ => {
                    world.digest();
                }
            }
            if step % 9 == 8 {
                let all = world.changes(whole);
                for (index, tracker, component) in [(0, of_hp, hp), (1, of_name, name)] {
                    let only = world.changes_of(tracker, component);
                    let of = |records: &[(EntityId, ComponentId)]| -> Vec<(EntityId, ComponentId)> {
                        records.iter().copied().filter(|(_, id)| *id == component).collect()
                    };
                    assert_eq!(only.set, of(&all.set), "step {step}");
                    assert_eq!(only.removed, of(&all.removed), "step {step}");
                    assert_eq!((&only.spawned, &only.despawned), (&all.spawned, &all.despawned), "step {step}");
                    seen_sets[index] += only.set.len();
                }
            }
        }
        assert!(seen_sets.iter().all(|sets| *sets > 20), "both components were read: {seen_sets:?}");
    }

    #[test]
    fn a_read_of_at_most_a_few_records_ends_after_a_whole_closed_stamp() {
        let mut world = world();
        let entities: Vec<EntityId> = (0..15).map(|_| world.spawn()).collect();
        let tracker = world.create_tracker();
        for (value, entity) in (0..).zip(&entities[..10]) {
            world.insert(*entity, Hp(value)).unwrap();
        }
        world.digest(); // closes the stamp of the first ten
        for entity in &entities[10..] {
            world.insert(*entity, Hp(1)).unwrap();
        }
        let (changes, left) = world.changes_at_most(tracker, 3);
        assert_eq!((changes.set.len(), left), (10, 5), "the whole stamp the third is in");
        // The rest are in the open stamp: read whole, however many.
        let (changes, left) = world.changes_at_most(tracker, 3);
        assert_eq!((changes.set.len(), left), (5, 0));
        // That read closed the stamp: a change made right after it is read next.
        world.insert(entities[10], Hp(9)).unwrap();
        assert_eq!(world.changes_at_most(tracker, 3).0.set.len(), 1);
        assert!(world.changes_at_most(tracker, 3).0.is_empty());
        // Fewer than the bound: everything, as `changes` reads; no bound at all, the same.
        world.insert(entities[0], Hp(7)).unwrap();
        world.digest();
        world.insert(entities[1], Hp(7)).unwrap();
        world.digest();
        let (changes, left) = world.changes_at_most(tracker, usize::MAX);
        assert_eq!((changes.set.len(), left), (2, 0));
    }

    #[test]
    fn reads_of_a_few_records_at_a_time_bring_a_copy_where_one_read_would() {
        use crate::codec::{self, ChunkConfig, DecodeLimits};
        let mut world = world();
        let entities: Vec<EntityId> = (0..20)
            .map(|value| {
                let entity = world.spawn();
                world.insert(entity, Hp(value)).unwrap();
                entity
            })
            .collect();
        let mut copy = super::tests::world();
        for chunk in codec::encode_snapshot(&world, ChunkConfig::default()).unwrap() {
            codec::apply(&mut copy, &chunk, DecodeLimits::default()).unwrap();
        }
        let tracker = world.create_tracker();
        // Over many stamps: values set again, components removed and put back, entities spawned
        // and despawned, within a stamp and across stamps; and more of them between the reads.
        let change = |world: &mut World, step: u32| {
            let entity = entities[(step * 7 % 20) as usize];
            match step % 6 {
                0 | 4 => {
                    let _ = world.insert(entity, Hp(100 + step));
                }
                1 => {
                    world.remove::<Hp>(entity);
                }
                2 => {
                    let born = world.spawn();
                    world.insert(born, Name(format!("born at {step}"))).unwrap();
                }
                3 => {
                    world.despawn(entities[(step * 3 % 20) as usize]);
                }
                _ => {
                    let _ = world.insert(entity, Name(format!("named at {step}")));
                }
            }
            if step.is_multiple_of(4) {
                world.digest();
            }
        };
        for step in 0..60 {
            change(&mut world, step);
        }
        let mut reads = 0;
        loop {
            let (changes, left) = world.changes_at_most(tracker, 5);
            reads += 1;
            for part in codec::encode_delta(&world, &changes, reads, ChunkConfig::default()).unwrap() {
                codec::apply(&mut copy, &part, DecodeLimits::default()).unwrap();
            }
            if left == 0 {
                break;
            }
            if reads < 10 {
                for step in 60 + reads * 3..63 + reads * 3 {
                    change(&mut world, step);
                }
            }
        }
        assert!(reads > 5, "read in {reads}");
        assert_eq!(copy.digest(), world.digest());
        assert_eq!(copy.digest_full(), world.digest_full());
    }

    #[test]
    fn a_change_set_counts_every_kind_of_record() {
        let entity = EntityId(1);
        let id = ComponentId(0);
        let changes = ChangeSet {
            spawned: vec![entity],
            set: vec![(entity, id); 2],
            removed: vec![(entity, id); 3],
            despawned: vec![entity; 4],
        };
        assert_eq!(changes.len(), 10);
        assert!(!changes.is_empty());
        assert!(ChangeSet::default().is_empty());
        for only in [
            ChangeSet { spawned: vec![entity], ..ChangeSet::default() },
            ChangeSet { set: vec![(entity, id)], ..ChangeSet::default() },
            ChangeSet { removed: vec![(entity, id)], ..ChangeSet::default() },
            ChangeSet { despawned: vec![entity], ..ChangeSet::default() },
        ] {
            assert!(!only.is_empty(), "{only:?}");
            assert_eq!(only.len(), 1);
        }
    }

    #[test]
    fn only_real_writes_through_a_guard_are_changes() {
        let mut world = world();
        let entity = world.spawn();
        world.insert(entity, Hp(1)).unwrap();
        let tracker = world.create_tracker();
        assert_eq!(world.get_mut::<Hp>(entity).map(|guard| guard.0), Some(1), "read through the guard");
        world.get_mut::<Hp>(entity).unwrap().set_if_changed(Hp(1));
        assert!(world.changes(tracker).is_empty(), "reads and equal writes are not changes");
        world.get_mut::<Hp>(entity).unwrap().set_if_changed(Hp(2));
        assert_eq!(world.get::<Hp>(entity), Some(&Hp(2)));
        assert_eq!(world.changes(tracker).set.len(), 1);
        world.for_each_mut::<Hp>(|_, guard| assert_eq!(guard.0, 2));
        assert!(world.changes(tracker).is_empty());
    }

    #[test]
    fn catching_up_skips_changes_and_a_dropped_tracker_frees_the_journal() {
        let mut world = world();
        let entity = world.spawn();
        let tracker = world.create_tracker();
        world.insert(entity, Hp(1)).unwrap();
        world.catch_up(tracker);
        assert!(world.changes(tracker).is_empty());
        for value in 0..10 {
            world.insert(entity, Hp(value)).unwrap();
        }
        world.digest();
        assert_eq!(world.journal_len(), 10, "kept for the tracker");
        world.drop_tracker(tracker);
        assert_eq!(world.journal_len(), 0);
    }

    #[test]
    fn the_journal_of_a_world_nobody_reads_is_bounded_at_the_end_of_each_tick() {
        let mut world = world();
        let entity = world.spawn();
        world.digest();
        for value in 0..4096 {
            world.insert(entity, Hp(value)).unwrap();
        }
        world.end_tick_housekeeping();
        assert_eq!(world.journal_len(), 4096, "up to 4096 records wait");
        world.insert(entity, Hp(0)).unwrap();
        let digest = world.digest_full();
        world.end_tick_housekeeping();
        assert_eq!(world.journal_len(), 0, "more are folded into the digest and dropped");
        assert_eq!(world.digest(), digest);
    }

    #[test]
    fn values_hashed_as_they_are_received_leave_the_digest_of_the_values_the_world_holds() {
        let hp = |world: &World| world.registry().id_of::<Hp>().unwrap();
        let receive = |world: &mut World, entities: &[EntityId], values: Vec<Hp>| {
            let id = hp(world);
            world.insert_decoded(id, entities, Box::new(values), None);
        };
        // What the world should hold, made by plain inserts.
        let expected = |values: &[(u64, u32)]| {
            let mut world = world();
            for (entity, value) in values {
                world.spawn_with_id(EntityId(*entity));
                world.insert(EntityId(*entity), Hp(*value)).unwrap();
            }
            world.digest()
        };
        let [a, b, c] = [EntityId(0), EntityId(1), EntityId(2)];
        let mut world = world();
        // Received at the end of the columns (as a snapshot arrives), then in place (a delta).
        receive(&mut world, &[a, b, c], vec![Hp(1), Hp(2), Hp(3)]);
        assert_eq!(world.digest(), expected(&[(0, 1), (1, 2), (2, 3)]));
        receive(&mut world, &[a, c], vec![Hp(10), Hp(30)]);
        assert_eq!(world.digest(), expected(&[(0, 10), (1, 2), (2, 30)]));
        // Received twice with no digest between, then changed by the game before the fold.
        receive(&mut world, &[b], vec![Hp(20)]);
        receive(&mut world, &[b], vec![Hp(21)]);
        world.get_mut::<Hp>(b).unwrap().0 = 22;
        assert_eq!(world.digest(), expected(&[(0, 10), (1, 22), (2, 30)]));
        assert_eq!(world.digest(), world.digest_full());
        // Changed by the game, then received over it before the fold; then removed unfolded.
        world.get_mut::<Hp>(a).unwrap().0 = 11;
        receive(&mut world, &[a], vec![Hp(12)]);
        receive(&mut world, &[c], vec![Hp(31)]);
        assert!(world.remove::<Hp>(c).is_some());
        assert!(world.despawn(c));
        assert_eq!(world.digest(), world.digest_full());
    }

    #[test]
    fn the_digest_tells_which_entities_live() {
        let mut worlds = [world(), world()];
        for (despawned, world) in [2, 3].into_iter().zip(&mut worlds) {
            for _ in 0..3 {
                world.spawn();
            }
            world.despawn(EntityId(despawned));
        }
        let [first, second] = &mut worlds;
        assert_ne!(first.digest(), second.digest(), "as many entities, not the same ones");
        assert_eq!(first.digest(), first.digest_full());
    }

    #[test]
    fn a_column_appends_an_ascending_run_past_its_end_in_one_pass_and_finds_every_value() {
        let mut column: Column<u64> = Column::default();
        column.insert(EntityId(3), 3);
        column.insert(EntityId(700), 700);
        column.remove(EntityId(700));
        assert!(!column.appends_at_end(&[EntityId(5), EntityId(800)]), "below the last id, tombstone or not");
        assert!(!column.appends_at_end(&[EntityId(900), EntityId(800)]), "not ascending");
        assert!(!column.appends_at_end(&[EntityId(900), EntityId(900)]), "a repeat");
        assert!(column.appends_at_end(&[]));
        // Across index pages (256 ids each), with gaps.
        let run: Vec<EntityId> = [701, 755, 767, 768, 1_000, 5_000, 5_001].into_iter().map(EntityId).collect();
        assert!(column.appends_at_end(&run));
        column.append_ascending(&run, run.iter().map(|entity| entity.0 * 10));
        for entity in &run {
            assert_eq!(column.get(*entity), Some(&(entity.0 * 10)), "{entity}");
        }
        assert_eq!(
            (column.get(EntityId(3)), column.get(EntityId(700)), column.get(EntityId(769))),
            (Some(&3), None, None)
        );
        assert_eq!(column.len(), 8);
        let order: Vec<u64> = column.iter().map(|(entity, _)| entity.0).collect();
        assert_eq!(order, [3, 701, 755, 767, 768, 1_000, 5_000, 5_001]);
        // Fewer values than entities (never from the decoder): only those with a value go in.
        column.append_ascending(&[EntityId(6_000), EntityId(6_001)], [60].into_iter());
        assert_eq!((column.get(EntityId(6_000)), column.get(EntityId(6_001)), column.len()), (Some(&60), None, 9));
        assert_eq!(column.ids.len(), column.values.len());
    }

    #[test]
    fn an_entry_keeps_its_digest_hash_in_8_byte_halves() {
        // A 28-byte value (a pose: 7 x f32) takes 64 bytes a slot, not the 80 an `Option<u128>`'s
        // 16-byte alignment made it.
        assert_eq!(size_of::<Option<Entry<[f32; 7]>>>(), 64);
        let hash = (7u128 << 64) | 9;
        assert_eq!(Folded::of(hash).get(), hash);
        assert_eq!(Folded::NONE.get(), 0);
    }

    #[test]
    fn a_world_makes_room_for_the_sizes_of_another_and_no_more_than_its_cap() {
        let mut source = world();
        let (hp, _) = ids(&source);
        for index in 0..40 {
            let entity = source.spawn();
            source.insert(entity, Hp(index)).unwrap();
            if index % 4 == 0 {
                source.insert(entity, Name(format!("n{index}"))).unwrap();
            }
        }
        assert_eq!(source.sizes(), [40, 40, 10], "entities, then each type by name: test.hp, test.name");
        // Registered the other way round: the same sizes, by name.
        let mut reversed = Registry::new();
        reversed.register::<Name>().unwrap();
        reversed.register::<Hp>().unwrap();
        let mut other = World::new(reversed);
        other.reserve(&source.sizes());
        let other_hp = other.registry().id_of::<Hp>().unwrap();
        let other_name = other.registry().id_of::<Name>().unwrap();
        assert!(typed_store::<Hp>(&other.stores, other_hp).values.capacity() >= 40);
        assert!(typed_store::<Name>(&other.stores, other_name).values.capacity() < 40);
        let mut target = world();
        target.reserve(&source.sizes());
        assert!(target.entities.ids.capacity() >= 40 && target.store(hp).len() == 0);
        assert!(typed_store::<Hp>(&target.stores, hp).values.capacity() >= 40);
        assert!(target.journal.records.capacity() >= 90, "a record per entity and per value");
        // A peer's number is a hint: an absurd one reserves at most the cap, a short list is fine.
        let mut hinted = world();
        hinted.reserve(&[u64::MAX, u64::MAX]);
        assert!(hinted.entities.ids.capacity() <= 2 * MAX_RESERVE);
        assert!(typed_store::<Hp>(&hinted.stores, hp).ids.capacity() <= 2 * MAX_RESERVE);
        // Big values: the byte cap binds before the count.
        let mut big: Column<[u64; 1024]> = Column::default();
        big.reserve(usize::MAX);
        assert!(big.values.capacity() * size_of::<Option<[u64; 1024]>>() <= 2 * MAX_RESERVE_BYTES);
        assert!(big.values.capacity() > 0);
        assert!(hinted.journal.records.capacity() <= 2 * MAX_RESERVE);
        hinted.reserve(&[]);
        assert_eq!(hinted.entity_count(), 0);
    }

    #[test]
    fn a_column_appends_new_entities_revives_tombstones_in_place_and_folds_at_its_thresholds() {
        let mut column: Column<u32> = Column::default();
        for id in 1..=64 {
            assert_eq!(column.insert(EntityId(id), 0), None);
        }
        assert_eq!((column.ids.len(), column.side.len()), (64, 0), "ascending ids go at the end");
        // The last entity's tombstone is revived where it was, not pushed again.
        assert_eq!(column.remove(EntityId(64)), Some(0));
        assert_eq!(column.insert(EntityId(64), 1), None);
        assert_eq!((column.ids.len(), column.tombstones, column.get(EntityId(64))), (64, 0, Some(&1)));
        // Components given to older entities wait until more than max(8, 64 / 8) do.
        for id in 1..=8 {
            column.remove(EntityId(id));
        }
        for id in 1..=8 {
            column.insert(EntityId(id), 2);
        }
        assert_eq!((column.side.len(), column.tombstones), (0, 0), "revived in place");
        let older: Column<u32> = {
            let mut older = Column::default();
            older.insert(EntityId(1000), 0);
            for id in 1..=8 {
                older.insert(EntityId(id), 0);
            }
            assert_eq!(older.side.len(), 8, "eight wait");
            older.insert(EntityId(9), 0);
            older
        };
        assert_eq!((older.side.len(), older.ids.len()), (0, 10), "the ninth folds them in");
        // Beside a column of 80, an eighth of it (10) wait, and the eleventh folds them in.
        let mut long: Column<u32> = Column::default();
        for id in 1000..1080 {
            long.insert(EntityId(id), 0);
        }
        for id in 1..=10 {
            long.insert(EntityId(id), 0);
        }
        assert_eq!(long.side.len(), 10, "an eighth of 80 wait");
        long.insert(EntityId(11), 0);
        assert_eq!((long.side.len(), long.ids.len()), (0, 91));
        // Tombstones are folded out once more than max(8, a sixteenth of the column) are left.
        let mut shrinking: Column<u32> = Column::default();
        for id in 1..=200 {
            shrinking.insert(EntityId(id), 0);
        }
        for id in 1..=12 {
            shrinking.remove(EntityId(id));
        }
        assert_eq!((shrinking.tombstones, shrinking.ids.len()), (12, 200), "twelve wait: 200 / 16");
        shrinking.remove(EntityId(13));
        assert_eq!((shrinking.tombstones, shrinking.ids.len(), shrinking.len()), (0, 187, 187));
        assert_eq!(shrinking.get(EntityId(14)), Some(&0));
        assert_eq!(shrinking.get(EntityId(13)), None);
    }

    #[test]
    fn a_column_folds_its_side_map_and_tombstones_in_and_still_finds_everything() {
        let mut column: Column<u32> = Column::default();
        for id in (2..=100).rev().step_by(2) {
            // Even ids first, from the top: all but the first wait in the side map, which is
            // folded in once it holds more than 8 (and an eighth of the column).
            column.insert(EntityId(id), id as u32);
        }
        for id in (1..=99).step_by(2) {
            column.insert(EntityId(id), id as u32);
        }
        assert_eq!(column.len(), 100);
        assert!(column.side.len() <= 12, "folded in: {} waiting", column.side.len());
        let in_order: Vec<(EntityId, u32)> = column.iter().map(|(entity, value)| (entity, *value)).collect();
        assert_eq!(in_order, (1..=100).map(|id| (EntityId(id), id as u32)).collect::<Vec<_>>());
        // Removing many leaves tombstones until they are folded out.
        for id in 1..=60 {
            assert!(column.remove(EntityId(id)).is_some());
        }
        assert!(column.tombstones < 60, "tombstones folded out: {} left", column.tombstones);
        assert_eq!(column.len(), 40);
        for id in 61..=100 {
            assert_eq!(column.get(EntityId(id)), Some(&(id as u32)), "{id} found after the fold");
        }
        assert_eq!(column.get(EntityId(5)), None);
        // A tombstone is revived in place; an entity below the column's start waits in the side map.
        let tombstones = column.tombstones;
        let tombstone = *column.ids.iter().find(|entity| column.get(**entity).is_none()).expect("a tombstone is left");
        assert_eq!(column.insert(tombstone, 7), None);
        assert_eq!((column.get(tombstone), column.tombstones, column.side.len()), (Some(&7), tombstones - 1, 0));
        assert_eq!(column.insert(EntityId(1), 1), None);
        assert_eq!(column.entities_in(EntityId(1), EntityId(62)).first(), Some(&EntityId(1)));
        assert_eq!(column.insert(EntityId(1), 2), Some(1), "replaced where it waits");
    }

    #[test]
    fn received_values_replace_their_own_entries_whatever_pages_their_ids_fall_on() {
        let mut column: Column<u32> = Column::default();
        // Entity 1 is on index page 0 and entity 65,537 on page 256, at the same slot: a page
        // number computed wrongly for the one finds the other.
        for id in [1, 2, 65_537, 65_538] {
            column.insert(EntityId(id), id as u32);
        }
        let mut replaced = Vec::new();
        let entities = [EntityId(1), EntityId(2), EntityId(65_537), EntityId(70_000)];
        column.insert_many(&entities, [10, 20, 30, 40].into_iter(), |at, previous| replaced.push((at, previous)));
        assert_eq!(replaced, vec![(0, Some(1)), (1, Some(2)), (2, Some(65_537)), (3, None)]);
        for (id, value) in [(1, 10), (2, 20), (65_537, 30), (65_538, 65_538), (70_000, 40)] {
            assert_eq!(column.get(EntityId(id)), Some(&value), "entity {id}");
        }
    }

    /// One step of the model test, on the `Hp` of an entity.
    #[derive(Clone, Debug)]
    enum StoreOp {
        Insert(u64, u32),
        Remove(u64),
        Change(u64, u32),
        Despawn(u64),
        /// Values received from an archive (ascending), spawning the entities not alive.
        Receive(BTreeMap<u64, u32>),
        /// The digest asked for (folding the changes since the last time).
        Fold,
    }

    fn store_op() -> impl proptest::strategy::Strategy<Value = StoreOp> {
        use proptest::prelude::*;
        // Entities in any order, and a few with ids far apart (each on an index page of its own).
        let entity = prop_oneof![20 => 1u64..3000, 1 => (1u64 << 40) - 2..(1u64 << 40) + 3];
        prop_oneof![
            4 => (entity.clone(), any::<u32>()).prop_map(|(entity, value)| StoreOp::Insert(entity, value)),
            2 => entity.clone().prop_map(StoreOp::Remove),
            2 => (entity.clone(), any::<u32>()).prop_map(|(entity, value)| StoreOp::Change(entity, value)),
            1 => entity.clone().prop_map(StoreOp::Despawn),
            1 => proptest::collection::btree_map(entity, any::<u32>(), 1..200).prop_map(StoreOp::Receive),
            1 => Just(StoreOp::Fold),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..proptest::test_runner::Config::default() })]

        /// The column store against an ordered map: whatever the order components come and go in,
        /// each is found, iteration and ranges are in entity order, and the digest is the same as
        /// one computed from scratch.
        #[test]
        fn components_are_found_and_iterated_in_entity_order_however_they_came(
            ops in proptest::collection::vec(store_op(), 1..5000),
        ) {
            let mut world = world();
            let (hp, _) = ids(&world);
            let mut model: BTreeMap<EntityId, u32> = BTreeMap::new();
            let mut alive: std::collections::BTreeSet<EntityId> = std::collections::BTreeSet::new();
            for op in ops {
                match op {
                    StoreOp::Insert(id, value) => {
                        let entity = EntityId(id);
                        proptest::prop_assert_eq!(world.spawn_with_id(entity), alive.insert(entity));
                        let previous = world.insert(entity, Hp(value)).unwrap().map(|hp| hp.0);
                        proptest::prop_assert_eq!(previous, model.insert(entity, value));
                    }
                    StoreOp::Remove(id) => {
                        let entity = EntityId(id);
                        proptest::prop_assert_eq!(world.remove::<Hp>(entity).map(|hp| hp.0), model.remove(&entity));
                    }
                    StoreOp::Change(id, value) => {
                        let entity = EntityId(id);
                        match world.get_mut::<Hp>(entity) {
                            Some(mut guard) => {
                                guard.0 = value;
                                proptest::prop_assert!(model.insert(entity, value).is_some());
                            }
                            None => proptest::prop_assert!(!model.contains_key(&entity)),
                        }
                    }
                    StoreOp::Despawn(id) => {
                        let entity = EntityId(id);
                        proptest::prop_assert_eq!(world.despawn(entity), alive.remove(&entity));
                        model.remove(&entity);
                    }
                    StoreOp::Receive(values) => {
                        let entities: Vec<EntityId> = values.keys().map(|id| EntityId(*id)).collect();
                        let received: Vec<Hp> = values.values().map(|value| Hp(*value)).collect();
                        world.insert_decoded(hp, &entities, Box::new(received), None);
                        for (id, value) in values {
                            alive.insert(EntityId(id));
                            model.insert(EntityId(id), value);
                        }
                    }
                    StoreOp::Fold => {
                        world.digest();
                    }
                }
            }
            // The entity table is a column too.
            proptest::prop_assert_eq!(world.entities().collect::<Vec<_>>(), alive.iter().copied().collect::<Vec<_>>());
            proptest::prop_assert_eq!(world.entity_count(), alive.len());
            let from: Vec<EntityId> = world.entities_from(EntityId(1500)).map(|(entity, _)| entity).collect();
            proptest::prop_assert_eq!(from, alive.range(EntityId(1500)..).copied().collect::<Vec<_>>());
            let held: Vec<(EntityId, u32)> = world.iter::<Hp>().map(|(entity, hp)| (entity, hp.0)).collect();
            let expected: Vec<(EntityId, u32)> = model.iter().map(|(entity, value)| (*entity, *value)).collect();
            proptest::prop_assert_eq!(&held, &expected);
            proptest::prop_assert_eq!(world.count::<Hp>(), model.len());
            for (entity, value) in &model {
                proptest::prop_assert_eq!(world.get::<Hp>(*entity), Some(&Hp(*value)));
            }
            for (first, last) in [(1, 2999), (500, 1500), (2999, (1 << 40) + 5), (40, 39)] {
                let range = world.store(hp).entities_in(EntityId(first), EntityId(last));
                let expected: Vec<EntityId> = if first > last {
                    Vec::new()
                } else {
                    model.range(EntityId(first)..=EntityId(last)).map(|(entity, _)| *entity).collect()
                };
                proptest::prop_assert_eq!(range, expected);
            }
            let mut visited = Vec::new();
            world.for_each_mut::<Hp>(|entity, guard| visited.push((entity, guard.0)));
            proptest::prop_assert_eq!(visited, expected);
            proptest::prop_assert_eq!(world.digest(), world.digest_full());
        }
    }

    #[test]
    fn digests_print_as_hex() {
        assert_eq!(WorldDigest(0xab).to_string(), format!("{:032x}", 0xab));
        assert_eq!(format!("{:?}", WorldDigest(0xab)), format!("WorldDigest({:032x})", 0xab));
    }

    /// The hash of one value, as it was first defined (pieces fed to XXH3 one after another):
    /// checkpoints hold digests made from it, so a faster computation must give the same hashes.
    fn value_hash_in_pieces<T: Component>(value: &T, entity: EntityId) -> u128 {
        let bytes = value.encode_one(AlignedVec::new()).expect("encodes");
        let mut hasher = Xxh3::new();
        hasher.update(&entity.0.to_le_bytes());
        hasher.update(&(T::NAME.len() as u64).to_le_bytes());
        hasher.update(T::NAME.as_bytes());
        hasher.update(&bytes);
        hasher.digest128()
    }

    /// A value of the widest alignment an archive has, with out-of-line bytes after it.
    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, crate::Component)]
    #[component(name = "test.wide.value.x")]
    struct Wide(u8, u128, Vec<u64>, String);

    #[test]
    fn a_value_s_hash_is_the_one_checkpoints_were_made_with_whatever_its_size() {
        let hashes = |value: &dyn Fn(EntityId, AlignedVec) -> (u128, AlignedVec), entity| {
            // Twice over one scratch buffer, as a fold reuses it: what the first left is no matter.
            let (first, scratch) = value(entity, AlignedVec::new());
            let (second, scratch) = value(entity, scratch);
            assert_eq!(first, second);
            (first, scratch)
        };
        for entity in [EntityId(0), EntityId(7), EntityId(u64::MAX)] {
            let (hash, _) = hashes(&|entity, scratch| value_hash(&Hp(41), entity, scratch), entity);
            assert_eq!(hash, value_hash_in_pieces(&Hp(41), entity));
            // Values short and long, inline and out of line (a name of up to 8 bytes is archived
            // inline).
            for len in [0, 1, 8, 9, 200, 240, 5000] {
                let name = Name("n".repeat(len));
                let (hash, scratch) = hashes(&|entity, scratch| value_hash(&name, entity, scratch), entity);
                let archived = scratch.len();
                assert_eq!(hash, value_hash_in_pieces(&name, entity), "a name of {len} bytes ({archived} archived)");
                // A 16-byte-aligned value after a name ("test.wide.value.x": 33 bytes before it).
                let wide = Wide(3, u128::MAX - len as u128, vec![len as u64; len % 7], name.0.clone());
                let (hash, _) = hashes(&|entity, scratch| value_hash(&wide, entity, scratch), entity);
                assert_eq!(hash, value_hash_in_pieces(&wide, entity), "a wide value with {len} bytes of name");
            }
        }
    }
}
