//! Baton's coordinator.
//!
//! - [`directory`]: the persistent region directory, the ownership authority of handoff commits.
//! - [`authority`]: the cluster endpoint: region servers ask the authority, agents connect.
//! - [`hosts`]: the hosts as their agents report them; claiming warm processes, running commands.
//! - [`migrations`]: moving regions between hosts, one state machine per migration (no I/O) and
//!   its driver; the history is persisted with the directory.
//! - [`balancer`]: automatic balancing as a policy with no I/O: load in, planned moves, hosts to
//!   free and hosts to take back out; [`balancing`] drives it.
//! - [`failover`]: regions whose owner is lost (process exited, host silent) are taken over by
//!   their hot standby, or restored from their newest checkpoint on another process, one state
//!   machine per failover (no I/O).
//! - [`idle`]: claimed processes that own, receive and follow nothing are given back to their
//!   hosts after a grace (no I/O; the failover watch drives it).
//! - [`standby`]: hot standbys: a process on another host follows each region tick by tick, and
//!   a failover promotes it (one state machine per standby, no I/O).
//! - [`routes`]: the route feed that tells every gateway which process owns each region.
//! - [`api`]: the admin HTTP API (JSON, bearer token, OpenAPI at `/openapi.json`).
//! - [`console`]: the `--control` console's JSON lines (typed).

pub mod api;
pub mod authority;
pub mod balancer;
pub mod balancing;
pub mod console;
pub mod directory;
pub mod failover;
pub mod hosts;
pub mod idle;
pub mod migrations;
pub mod routes;
pub mod standby;
