//! Baton's player gateway: keeps every player's QUIC connection for the whole session and moves
//! only the route when the player's region moves (a handoff) or the player walks into another
//! region (a border crossing).
//!
//! - [`route`]: per-region routes with ownership epochs; holds inputs during a handoff's freeze and
//!   replays them in order at cutover (no I/O, property-tested).
//! - [`token`]: session and resume tokens (HMAC-SHA256), defined in `baton_wire::token`.
//! - [`control`]: the control lines of `--control` (commands in, events out).
//! - [`service`]: the running gateway: player sessions, upstream connections, limits.
//! - `plane`: every player's QUIC connection, driven by one task over `quinn-proto` (batched
//!   receives, no task per connection); its core has no I/O.
//! - `sessions`: every player's session, resume grace, the inputs waiting during a border crossing
//!   and the crossings' retries, with one deadline queue (no I/O, unit-tested).
//! - `crossing`: counts the failed deliveries of avatars crossing borders and decides when one
//!   goes back (no I/O).
//! - `feed`: follows the coordinator's route feed (`Gateway::follow_coordinator`).
//! - The player protocol's frames are in `baton_wire::player`, the upstream protocol's in
//!   `baton_wire::upstream`; docs/protocol.md §9-§10 describe both.

pub mod control;
mod crossing;
mod feed;
mod plane;
pub mod route;
pub mod service;
mod sessions;

/// Session and resume tokens (shared with the login service; defined in `baton-wire`).
pub use baton_wire::token;

pub use control::{GatewayCommand, GatewayEvent};
pub use service::{Gateway, GatewayConfig, GatewayStats, Limits};
