//! Baton's player gateway.
//!
//! Status: the protocol cores exist and are tested, the service does not yet. [`route`] holds
//! per-region routes with ownership epochs, holds inputs during a handoff's freeze and replays them
//! in order at cutover; [`token`] checks session tokens (HMAC-SHA256); [`frame`] is the player
//! stream's frame format (postcard, bounded). The QUIC player endpoint, upstream connections to
//! region servers, zone-boundary crossing, resume and the client library are not built yet:
//! nothing here listens on a socket.

pub mod frame;
pub mod route;
pub mod token;
