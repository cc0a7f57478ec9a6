//! Component types shared by the SDK's integration tests.
#![allow(dead_code, missing_docs)]

use baton_sdk::{Component, Registry};

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.position")]
pub struct Position {
    pub xyz: [f32; 3],
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.health")]
pub struct Health(pub u32);

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Component)]
#[component(name = "test.inventory")]
pub struct Inventory {
    pub items: Vec<(u32, u16)>,
}

pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<Position>().unwrap();
    registry.register::<Health>().unwrap();
    registry.register::<Inventory>().unwrap();
    registry
}
