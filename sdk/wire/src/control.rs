//! The control protocol (version 5): host agents ↔ the coordinator.
//!
//! An agent connects to the coordinator (mutual TLS with the host's cluster certificate, ALPN
//! [`ALPN_CONTROL`]) and keeps one bidirectional stream of `u32`-framed postcard messages
//! ([`crate::framing`]). It says `Hello`, then reports its host's load and its processes every
//! interval and relays what its region-server processes report ([`ServerEvent`]). The coordinator
//! asks it to run serve-protocol commands on its processes (`Run` with a [`ServerCommand`]), e.g.
//! to host, prepare or hand off a region, and to claim a pre-warmed process (`Claim`).
//!
//! Version 2 carries the serve protocol as its types ([`crate::serve`]) instead of JSON text, and
//! reports a process's exit as its own message. Version 3 adds the host's declared CPU and memory
//! capacity to `Hello`, each region's full load report (tick time against its budget, entities),
//! and `Free` (the balancer emptied the host; it keeps no warm pool). Version 4 adds
//! [`RouteFeed::Unavailable`] (a region lost its host and none took it over within the grace).
//! Version 5 adds each process's live heap to the status reports ([`ProcessInfo::heap_bytes`]);
//! gateways say the same version in their hello, so a version-4 gateway is refused too.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::serve::{AsJson, ServerCommand, ServerEvent};
use crate::{Epoch, RegionId};

/// ALPN of the control protocol.
pub const ALPN_CONTROL: &[u8] = b"baton-control/1";
/// Version of the control message set.
pub const CONTROL_VERSION: u16 = 5;

/// What one region-server process of a host is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its instance name (unique in the cluster).
    pub name: String,
    /// Its cluster address (handoff links and gateways).
    pub address: SocketAddr,
    /// Idle and ready to receive a region (a warm-pool member) or claimed/serving.
    pub warm: bool,
    /// Regions it owns.
    pub regions: Vec<RegionId>,
    /// How many times the agent restarted it.
    pub restarts: u32,
    /// Its operating-system process id (0 while unknown).
    pub pid: u32,
    /// Its live heap in bytes, from its last `heap` event (`None` from a process that does not
    /// count it). Since version 5.
    pub heap_bytes: Option<u64>,
}

/// A host's load.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLoad {
    /// CPU used by the host's region-server processes, in cores.
    pub cpu_cores: f64,
    /// Resident memory of those processes, in bytes.
    pub memory_bytes: u64,
    /// What each region the host serves costs, from its owner's last `load` event.
    pub regions: Vec<RegionLoadReport>,
    /// Bytes sent by handoffs so far.
    pub migration_bytes: u64,
}

/// What one region costs its host over the last second of ticks (its owner's `load` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionLoadReport {
    /// The region.
    pub region: RegionId,
    /// Mean tick duration, in milliseconds.
    pub tick_ms: f64,
    /// Longest tick, in milliseconds.
    pub tick_ms_max: f64,
    /// The tick interval (the budget of one tick), in milliseconds.
    pub tick_budget_ms: f64,
    /// Players with a session.
    pub players: u64,
    /// Live entities.
    pub entities: u64,
}

/// Agent to coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message.
    Hello {
        /// [`CONTROL_VERSION`].
        version: u16,
        /// The host's name (unique in the cluster).
        host: String,
        /// Most region-server processes it runs.
        capacity: u32,
        /// CPU cores its region servers may use (`--capacity-cores`).
        capacity_cores: f64,
        /// Memory its region servers may use, in bytes (`--capacity-memory`).
        capacity_memory: u64,
    },
    /// Every interval: the host's processes and load.
    Status {
        /// The processes.
        processes: Vec<ProcessInfo>,
        /// The load.
        load: HostLoad,
    },
    /// A process reported an event (every serve-protocol event but `load`, which the status
    /// reports fold in).
    Event {
        /// The process.
        process: String,
        /// The event.
        event: AsJson<ServerEvent>,
    },
    /// A process exited without being asked to (the agent starts it again, empty and warm).
    ProcessExited {
        /// The process.
        process: String,
        /// The regions it owned: nobody serves them now.
        regions: Vec<RegionId>,
    },
    /// Answer to `Claim`: the process now reserved for the request, or why none is.
    Claimed {
        /// The request.
        request: u64,
        /// The process and its address, if one was free.
        process: Option<(String, SocketAddr)>,
        /// Why not, if none.
        reason: String,
    },
}

/// Coordinator to agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    /// Reserve a warm process (it leaves the pool; the agent starts a replacement).
    Claim {
        /// Identifies the request.
        request: u64,
    },
    /// Send one serve-protocol command to a process.
    Run {
        /// The process.
        process: String,
        /// The command.
        command: AsJson<ServerCommand>,
    },
    /// Stop a process (its regions are gone from it).
    Release {
        /// The process.
        process: String,
    },
    /// Whether the host is free (the balancer emptied it so it can be switched off): a free host
    /// keeps no warm processes; a host taken back into use refills its warm pool.
    Free {
        /// Free (true) or in use (false).
        free: bool,
    },
}

/// ALPN of the route feed: gateways ↔ the coordinator.
///
/// A gateway connects with its cluster certificate, opens one bidirectional stream and says
/// [`GatewayHello`]; the coordinator answers with the whole table ([`RouteFeed::Table`]) and then
/// every change ([`RouteFeed::Route`]) as the directory's owners and the hosts' addresses change.
/// Routes carry the directory's epoch, so a gateway refuses one older than what it already knows
/// (protocol.md §10); the feed may repeat a route.
pub const ALPN_ROUTES: &[u8] = b"baton-routes/1";

/// A gateway's first message on the route feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayHello {
    /// [`CONTROL_VERSION`].
    pub version: u16,
    /// The gateway's name.
    pub name: String,
}

/// One route: `region` is owned at `epoch` by the instance `owner`, reachable at `address`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The region.
    pub region: RegionId,
    /// The owning instance's name (as in the directory).
    pub owner: String,
    /// Its cluster address.
    pub address: SocketAddr,
    /// The ownership epoch.
    pub epoch: Epoch,
}

/// Coordinator to gateway on the route feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteFeed {
    /// Every route known now (the first message).
    Table {
        /// The routes.
        routes: Vec<RouteEntry>,
    },
    /// One route changed.
    Route(RouteEntry),
    /// `region` lost its host and no other host could take it over within the failover grace:
    /// tell its players (the coordinator keeps trying; a newer route follows when it is back).
    Unavailable {
        /// The region.
        region: RegionId,
        /// Why, for people.
        reason: String,
    },
}
