//! Component types and their registry.
//!
//! A component is a plain Rust type that is part of a region's world state. Each type is registered
//! under a stable name with a schema fingerprint, so that an archive says what it holds and a
//! receiver refuses an archive whose types it does not know or knows differently.
//!
//! The registry is fixed when a [`World`](crate::World) is created: types cannot be added to a world
//! that already holds state, which keeps component ids (used in archives and change records) stable
//! for the world's whole life.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::Xxh3;

use crate::codec::CodecError;
use crate::codec::column::CapturedColumn;
use crate::world::{EntityId, ErasedStore, Store};

/// A type that is part of a region's world state.
///
/// Derive it with `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, baton_sdk::Component)]`;
/// the derive fills in every item. Values must serialise deterministically (no hash maps with random
/// order inside), because the world digest hashes their archived bytes.
pub trait Component: Sized + Send + Sync + 'static {
    /// The stable name archives use for this type, unique within a registry.
    const NAME: &'static str;
    /// A fingerprint of the type's shape; two processes stream state only if they agree on it.
    const SCHEMA: u64;
    /// Appends a validated-on-receipt rkyv archive of `values` (in order) to `out`.
    fn encode_column(values: &[&Self], out: AlignedVec) -> Result<AlignedVec, CodecError>;
    /// Validates `bytes` as a column archive of exactly `expected_len` values and decodes it.
    fn decode_column(bytes: &[u8], expected_len: usize) -> Result<Vec<Self>, CodecError>;
    /// Appends the archived bytes of one value to `out` (used for the world digest).
    fn encode_one(&self, out: AlignedVec) -> Result<AlignedVec, CodecError>;
    /// Copies `values` out of the world, to be encoded on another thread (a handoff's delta round:
    /// protocol.md §4). The derive clones them, so a component type must be `Clone`.
    fn capture_column(values: &[&Self]) -> Box<dyn CapturedColumn>;
}

/// Index of a component type within one registry (and so within archives made from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId(pub u16);

/// Most component types one registry can hold (entity component masks are 128 bits wide).
pub const MAX_COMPONENT_TYPES: usize = 128;

/// Validates and decodes a column archive of one component type into a `Box<Vec<T>>`.
pub(crate) type DecodeColumn = fn(&[u8], usize) -> Result<Box<dyn Any + Send>, CodecError>;

/// The digest's hash of each value of a decoded column (a `Vec<T>`) with its entity.
pub(crate) type HashColumn = fn(&(dyn Any + Send), &[EntityId]) -> Vec<u128>;

/// What a registry knows about one component type.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// The registered name.
    pub name: &'static str,
    /// The schema fingerprint.
    pub schema: u64,
    pub(crate) new_store: fn() -> Box<dyn ErasedStore>,
    /// A value's size in memory: what the codec reckons one takes in an archive before encoding
    /// it (about what a plain value takes, rkyv's layout differing a little; under for values
    /// holding strings or vectors, over for empty ones).
    pub(crate) value_bytes: usize,
    /// Validates and decodes a column archive into a `Box<Vec<T>>`.
    pub(crate) decode: DecodeColumn,
    /// Hashes a decoded column's values for the digest.
    pub(crate) hash: HashColumn,
    /// The Rust type, so that what was decoded against one registry can be checked against another.
    pub(crate) type_id: TypeId,
}

/// Errors from registering component types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Two different Rust types claim the same component name.
    #[error("component name {name:?} is registered twice by different types")]
    DuplicateName {
        /// The contested name.
        name: &'static str,
    },
    /// The registry is full.
    #[error("too many component types (at most {MAX_COMPONENT_TYPES})")]
    TooManyTypes,
}

/// The set of component types a world can hold, in registration order.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    infos: Vec<ComponentInfo>,
    by_name: HashMap<&'static str, ComponentId>,
    by_type: HashMap<TypeId, ComponentId>,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `T`. Registering the same type again returns its existing id.
    pub fn register<T: Component>(&mut self) -> Result<ComponentId, RegistryError> {
        let type_id = TypeId::of::<T>();
        if let Some(id) = self.by_type.get(&type_id) {
            return Ok(*id);
        }
        if self.by_name.contains_key(T::NAME) {
            return Err(RegistryError::DuplicateName { name: T::NAME });
        }
        if self.infos.len() >= MAX_COMPONENT_TYPES {
            return Err(RegistryError::TooManyTypes);
        }
        let id = ComponentId(self.infos.len() as u16);
        self.infos.push(ComponentInfo {
            name: T::NAME,
            schema: T::SCHEMA,
            new_store: || Box::new(Store::<T>::default()),
            value_bytes: std::mem::size_of::<T>(),
            decode: |bytes, expected_len| Ok(Box::new(T::decode_column(bytes, expected_len)?)),
            hash: crate::world::hash_column::<T>,
            type_id,
        });
        self.by_name.insert(T::NAME, id);
        self.by_type.insert(type_id, id);
        Ok(id)
    }

    /// The id of `T`, if registered.
    #[must_use]
    pub fn id_of<T: Component>(&self) -> Option<ComponentId> {
        self.by_type.get(&TypeId::of::<T>()).copied()
    }

    /// The id registered under `name`.
    #[must_use]
    pub fn id_by_name(&self, name: &str) -> Option<ComponentId> {
        self.by_name.get(name).copied()
    }

    /// What is known about component `id`.
    #[must_use]
    pub fn info(&self, id: ComponentId) -> Option<&ComponentInfo> {
        self.infos.get(usize::from(id.0))
    }

    /// All registered types, in id order.
    pub fn infos(&self) -> impl Iterator<Item = (ComponentId, &ComponentInfo)> {
        self.infos.iter().enumerate().map(|(index, info)| (ComponentId(index as u16), info))
    }

    /// Number of registered types.
    #[must_use]
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether no type is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// A hash of every registered (name, schema) pair, independent of registration order.
    ///
    /// Two region servers compare it before streaming state; a mismatch aborts the handoff.
    #[must_use]
    pub fn schema_hash(&self) -> u64 {
        let mut pairs: Vec<(&str, u64)> = self.infos.iter().map(|info| (info.name, info.schema)).collect();
        pairs.sort_unstable();
        let mut hasher = Xxh3::new();
        for (name, schema) in pairs {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&schema.to_le_bytes());
        }
        hasher.digest()
    }
}
