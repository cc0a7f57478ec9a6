//! The ownership authority: defined in `baton-wire` (the coordinator implements it without
//! compiling the SDK); re-exported here where the handoff uses it.

pub use baton_wire::authority::*;
