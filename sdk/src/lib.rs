//! Baton SDK: what a region server links to make its region movable.
//!
//! A region's whole state lives in a [`World`] as typed components on entities, with change
//! tracking and a deterministic digest. The [`codec`] turns it into validated snapshot chunks and
//! deltas; [`sessions`] holds players and their ordered inputs; [`scripts`] and [`physics`] are real
//! engines (wasmi, rapier3d) whose state is world state; [`region`] runs it all at a fixed tick rate.
//!
//! What the SDK deliberately does not do: own sockets or an async runtime in its protocol core,
//! decode player bytes with rkyv, or share mutable state between regions.

extern crate self as baton_sdk;

pub mod checkpoint;
pub mod codec;
pub mod component;
pub mod events;
pub mod handoff;
pub mod node;
pub mod physics;
pub mod region;
pub mod scripts;
pub mod sessions;
pub mod world;

pub use baton_sdk_derive::Component;
pub use baton_wire as wire;
pub use component::{Component, ComponentId, Registry, RegistryError};
pub use region::{
    AvatarLocation, DEPARTED_KEEP, DepartedAvatar, Emigrant, EntryError, Immigration, PlayerUpdate, Region,
    RegionConfig, RegionError, RegionLogic, TickReport, TickSchedule,
};
pub use rkyv;
pub use world::{ChangeSet, EntityId, Mut, TrackerId, World, WorldDigest, WorldError};
