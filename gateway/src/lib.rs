//! Baton's player gateway.
//!
//! Status: only the routing core exists so far ([`route`]): per-region routes with ownership
//! epochs, holding inputs during a handoff's freeze and replaying them in order at cutover. The
//! QUIC player endpoint, authentication, upstream connections, zone-boundary crossing and resume
//! are not built yet; nothing here listens on a socket.

pub mod route;
