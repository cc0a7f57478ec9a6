//! Baton's coordinator.
//!
//! Built so far: [`directory`], the persistent region directory that is the ownership authority of
//! handoff commits, and [`authority`], which serves it to region servers over mutual-TLS QUIC.
//! Not built yet (see the project's open issue): host agents and warm pools, migrations driven
//! through an admin HTTP API, checkpoints, route pushes to gateways, `batonctl`.

pub mod authority;
pub mod directory;
