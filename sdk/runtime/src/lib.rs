//! The runtime of a region-server process: hosts regions, ticks them, and moves them.
//!
//! Each region runs on its own OS thread ([`region_loop`]) so that a busy region, or one in a
//! handoff, never delays another's ticks. The thread owns the region and its handoff state
//! machine and serves one channel of [`Command`]s (inputs, peer messages, control), the one closed
//! set of things that can happen to it. Networking runs on tokio ([`link`]): each handoff has a
//! QUIC connection with mutual TLS, a control stream and a paced bulk stream.
//!
//! What it does not do: decide when to move a region (the coordinator, or a test), talk to players
//! (the gateway), or decode anything but handoff messages from peers.

pub mod checkpoint_store;
pub mod fault_point;
pub mod link;
mod reaper;
pub mod region_loop;
pub mod remote_authority;
pub mod serve;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use baton_net::{ClusterIdentity, LinkSettings};
use baton_sdk::handoff::{Ownership, OwnershipAuthority, SourceConfig};
use baton_sdk::node::{NodeSettings, RegionNode, Role};
use baton_sdk::wire::{Epoch, PlayerInput, RegionId};
use baton_sdk::{Region, RegionLogic};
use tokio::sync::mpsc::UnboundedSender;

pub use baton_sdk::node::{HostEvent, PlayerSettings};
pub use region_loop::{Command, RegionQuery};

/// Why a [`Host`] refused a request.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The region has a slot (owned, prepared or retiring) on this host already.
    #[error("region {0} already has a slot on this host")]
    AlreadyHosted(RegionId),
    /// The authority names another owner.
    #[error("region {region} is owned by {owner}@{epoch}")]
    OwnedElsewhere {
        /// The region.
        region: RegionId,
        /// Its owner.
        owner: String,
        /// The owner's epoch.
        epoch: Epoch,
    },
    /// This host owns and serves the region, so it cannot also receive it.
    #[error("region {region} is owned by this host ({epoch}); it cannot also receive it")]
    OwnedHere {
        /// The region.
        region: RegionId,
        /// This host's epoch.
        epoch: Epoch,
    },
    /// The region has no slot on this host.
    #[error("region {0} is not hosted here")]
    NotHosted(RegionId),
    /// The region's thread has stopped.
    #[error("region {0} stopped")]
    Stopped(RegionId),
    /// The ownership authority refused or could not be reached.
    #[error("authority: {0}")]
    Authority(#[from] baton_sdk::handoff::AuthorityError),
    /// The game could not build the region.
    #[error("the game could not build the region: {0}")]
    Region(#[from] baton_sdk::RegionError),
}

/// Makes a pre-warmed (assets loaded, empty world) region of the game.
pub type RegionFactory<L> = Arc<dyn Fn(RegionId) -> Result<Region<L>, baton_sdk::RegionError> + Send + Sync>;

/// Settings of a host.
#[derive(Clone)]
pub struct HostConfig {
    /// This instance's name at the authority (unique in the cluster).
    pub name: String,
    /// Where to accept handoff links.
    pub bind: SocketAddr,
    /// The cluster certificate and this node's.
    pub identity: ClusterIdentity,
    /// The ownership authority.
    pub authority: Arc<dyn OwnershipAuthority>,
    /// Bulk bytes per second a handoff may send (invariant 6; default 50 MB/s).
    pub bulk_bytes_per_second: u64,
    /// Bulk burst in bytes (default 256 KiB).
    pub bulk_burst_bytes: u64,
    /// Whether paced links compress bulk messages when that pays (`baton_net::Packer`).
    pub bulk_compression: bool,
    /// Settings of handoffs this host starts.
    pub source: SourceConfig,
    /// Link timeouts.
    pub link: LinkSettings,
    /// What players get from this host's regions.
    pub players: PlayerSettings,
    /// Periodic checkpoints of owned regions (none: never).
    pub checkpoints: Option<CheckpointSettings>,
    /// Where region threads stop for fault injection (the test bed's fault matrix; none in
    /// production).
    pub fault_point: Option<fault_point::FaultPoint>,
}

/// Where and how often owned regions are checkpointed.
#[derive(Clone, Debug)]
pub struct CheckpointSettings {
    /// The store.
    pub store: checkpoint_store::CheckpointStore,
    /// A checkpoint every this many ticks (at a tick boundary, never during a handoff).
    pub every_ticks: u64,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("HostConfig")
            .field("name", &self.name)
            .field("bind", &self.bind)
            .field("bulk_bytes_per_second", &self.bulk_bytes_per_second)
            .finish_non_exhaustive()
    }
}

/// A running host.
pub struct Host<L: RegionLogic + 'static> {
    config: HostConfig,
    local_address: SocketAddr,
    regions: Arc<Mutex<HashMap<RegionId, Slot<L>>>>,
    factory: RegionFactory<L>,
    events: UnboundedSender<HostEvent>,
    endpoint: quinn::Endpoint,
    /// The client configuration of standby feeds: quinn's default congestion control, not the
    /// bulk links' (a feed lives as long as its region and carries every tick; a scavenger would
    /// let other traffic delay the standby's copy and its acknowledgements).
    feed_client: quinn::ClientConfig,
    runtime: tokio::runtime::Handle,
    hub: Arc<upstream::GatewayHub>,
    /// Frees what finished region threads leave behind.
    reaper: reaper::Reaper,
}

impl<L: RegionLogic + 'static> Host<L> {
    /// Binds the endpoint and starts accepting handoff links. Events arrive on the returned channel.
    pub fn start(
        config: HostConfig,
        factory: RegionFactory<L>,
        runtime: tokio::runtime::Handle,
    ) -> Result<(Host<L>, tokio::sync::mpsc::UnboundedReceiver<HostEvent>), baton_net::NetError> {
        let endpoint = {
            let _guard = runtime.enter();
            baton_net::cluster_endpoint_with(
                config.bind,
                &config.identity,
                config.link,
                &[baton_net::ALPN_REGION, baton_sdk::wire::upstream::ALPN_UPSTREAM],
                baton_net::ALPN_REGION,
            )?
        };
        let feed_client = baton_net::cluster_client_config(
            &config.identity,
            LinkSettings { dial_congestion: baton_net::Congestion::Cubic, ..config.link },
            baton_net::ALPN_REGION,
        )?;
        let local_address = endpoint.local_addr()?;
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        let regions: Arc<Mutex<HashMap<RegionId, Slot<L>>>> = Arc::default();
        let hub = Arc::new(upstream::GatewayHub::new(&config.name));
        runtime.spawn(link::accept_loop(endpoint.clone(), regions.clone(), hub.clone()));
        let reaper = reaper::Reaper::start();
        let host =
            Host { config, local_address, regions, factory, events, endpoint, feed_client, runtime, hub, reaper };
        Ok((host, receiver))
    }

    /// The address peers connect to.
    #[must_use]
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// This instance's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Hosts a populated region owned by this instance (registering it with the authority).
    pub fn host_region(&self, region: Region<L>) -> Result<(), HostError> {
        let id = region.id();
        if self.regions.lock().map(|regions| regions.contains_key(&id)).unwrap_or(true) {
            return Err(HostError::AlreadyHosted(id));
        }
        let ownership = self.config.authority.register(id, &self.config.name)?;
        if ownership.owner != self.config.name {
            return Err(HostError::OwnedElsewhere { region: id, owner: ownership.owner, epoch: ownership.epoch });
        }
        self.spawn_loop(region, Role::Owner { epoch: ownership.epoch });
        Ok(())
    }

    /// Hosts a region restored from a checkpoint, taking ownership from whoever the authority
    /// names now (epoch + 1, so anything the previous owner stamps is refused from then on), or
    /// registering it if the authority has never heard of it. The caller makes sure the previous
    /// owner is gone (the coordinator refuses a restore while any host serves the region); with
    /// `take_over`, only an owner at that epoch is replaced.
    pub fn restore_region(&self, region: Region<L>, take_over: Option<Epoch>) -> Result<Epoch, HostError> {
        let epoch = self.take_ownership(region.id(), take_over)?;
        self.host_owned(region, epoch)?;
        Ok(epoch)
    }

    /// Takes ownership of `id` at the authority for a restore (see [`Host::restore_region`]),
    /// before the region is built: a failover reads the checkpoint only after its swap won, so no
    /// checkpoint the old owner stores after that can be newer than the one it restores.
    pub fn take_ownership(&self, id: RegionId, take_over: Option<Epoch>) -> Result<Epoch, HostError> {
        if self.regions.lock().map(|regions| regions.contains_key(&id)).unwrap_or(true) {
            return Err(HostError::AlreadyHosted(id));
        }
        let epoch = match self.config.authority.current(id) {
            // A failover takes over only the owner it declared lost; one that moved on meanwhile
            // (a handoff committed, another failover won) is left alone.
            Ok(current) if take_over.is_some_and(|expected| expected != current.epoch) => {
                return Err(HostError::OwnedElsewhere { region: id, owner: current.owner, epoch: current.epoch });
            }
            Ok(current) => {
                let next = Ownership { owner: self.config.name.clone(), epoch: current.epoch.next() };
                self.config.authority.compare_and_swap(id, &current, &next)?;
                next.epoch
            }
            Err(baton_sdk::handoff::AuthorityError::UnknownRegion(_)) => {
                let ownership = self.config.authority.register(id, &self.config.name)?;
                if ownership.owner != self.config.name {
                    return Err(HostError::OwnedElsewhere {
                        region: id,
                        owner: ownership.owner,
                        epoch: ownership.epoch,
                    });
                }
                ownership.epoch
            }
            Err(error) => return Err(error.into()),
        };
        Ok(epoch)
    }

    /// Hosts `region`, owned here at `epoch` ([`Host::take_ownership`]).
    pub fn host_owned(&self, region: Region<L>, epoch: Epoch) -> Result<(), HostError> {
        let id = region.id();
        if self.regions.lock().map(|regions| regions.contains_key(&id)).unwrap_or(true) {
            return Err(HostError::AlreadyHosted(id));
        }
        self.spawn_loop(region, Role::Owner { epoch });
        Ok(())
    }

    /// Pre-warms an empty slot for `region` so this host can receive it.
    pub fn prepare(&self, region: RegionId) -> Result<(), HostError> {
        // Replacing the slot of a region this host owns would orphan its ticking owner.
        if let Ok(ownership) = self.config.authority.current(region)
            && ownership.owner == self.config.name
            && self.regions.lock().map(|regions| regions.contains_key(&region)).unwrap_or(false)
        {
            return Err(HostError::OwnedHere { region, epoch: ownership.epoch });
        }
        let empty = (self.factory)(region)?;
        self.spawn_loop(empty, Role::Target);
        let _ = self.events.send(HostEvent::Prepared { region });
        Ok(())
    }

    /// Starts moving `region` to the host at `peer`.
    pub fn start_handoff(&self, region: RegionId, peer: SocketAddr) -> Result<(), HostError> {
        self.send(region, Command::StartHandoff { peer })
    }

    /// Starts feeding a hot standby of `region` (owned here) at `peer`.
    pub fn feed_standby(&self, region: RegionId, peer: SocketAddr) -> Result<(), HostError> {
        self.send(region, Command::FeedStandby { peer })
    }

    /// Promotes this host's standby of `region`: the owner at `epoch` is lost.
    pub fn promote(&self, region: RegionId, epoch: Epoch) -> Result<(), HostError> {
        self.send(region, Command::Promote { epoch })
    }

    /// Offers a player input to `region`.
    pub fn submit_input(&self, region: RegionId, input: PlayerInput) {
        if let Err(error) = self.send(region, Command::Input(input.clone())) {
            tracing::debug!(%region, %error, "input for a region not hosted here");
            let _ = self.events.send(HostEvent::InputRefused { region, input });
        }
    }

    /// Saves `region` to the checkpoint store and stops hosting it (between ticks; refused
    /// during a handoff). [`HostEvent::Stopped`] or [`HostEvent::StopRefused`] tells how it went.
    pub fn stop_region(&self, region: RegionId) -> Result<(), HostError> {
        self.send(region, Command::Stop)
    }

    /// Runs `query` on the region's thread, between ticks.
    pub fn query(&self, region: RegionId, query: RegionQuery<L>) -> Result<(), HostError> {
        self.send(region, Command::Query(query))
    }

    /// Stops every region thread and closes the endpoint.
    pub fn shutdown(&self) {
        let senders: Vec<_> = self
            .regions
            .lock()
            .map(|regions| regions.values().map(|slot| slot.sender.clone()).collect())
            .unwrap_or_default();
        for sender in senders {
            let _ = sender.send(Command::Shutdown);
        }
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    fn send(&self, region: RegionId, command: Command<L>) -> Result<(), HostError> {
        let sender = self
            .regions
            .lock()
            .ok()
            .and_then(|regions| regions.get(&region).map(|slot| slot.sender.clone()))
            .ok_or(HostError::NotHosted(region))?;
        sender.send(command).map_err(|_| HostError::Stopped(region))
    }

    fn spawn_loop(&self, region: Region<L>, role: Role) {
        let (sender, receiver) = mpsc::channel();
        let id = region.id();
        let generation = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut regions) = self.regions.lock() {
            regions
                .insert(id, Slot { generation, sender: sender.clone(), registry: region.world().registry().clone() });
        }
        let settings = NodeSettings {
            name: self.config.name.clone(),
            address: self.local_address,
            source: self.config.source,
            players: self.config.players,
            checkpoint_every_ticks: self.config.checkpoints.as_ref().map_or(0, |settings| settings.every_ticks),
            wall_clock: (Instant::now(), unix_micros()),
        };
        let factory = self.factory.clone();
        let context = region_loop::LoopContext {
            authority: self.config.authority.clone(),
            bulk: link::BulkSettings {
                bytes_per_second: self.config.bulk_bytes_per_second,
                burst_bytes: self.config.bulk_burst_bytes,
                compression: self.config.bulk_compression,
            },
            endpoint: self.endpoint.clone(),
            feed_client: self.feed_client.clone(),
            runtime: self.runtime.clone(),
            events: self.events.clone(),
            commands: sender,
            regions: self.regions.clone(),
            generation,
            hub: self.hub.clone(),
            checkpoints: self.config.checkpoints.clone(),
            fault_point: self.config.fault_point.clone(),
            reaper: self.reaper.clone(),
        };
        let spawned = std::thread::Builder::new().name(format!("region-{}", id.0)).spawn(move || {
            // Built on its own thread: the node (and the game's region in it) stays there until
            // the node is done, when the region goes to the reaper to be freed (reaper.rs).
            let rewarm = Box::new(move |region| factory(region));
            let node = RegionNode::new(region, role, settings, rewarm, Instant::now());
            region_loop::run(node, receiver, context);
        });
        if let Err(error) = spawned {
            tracing::error!(region = %id, %error, "could not start the region's thread");
        }
    }
}

/// A region thread registered on the host; the generation tells a replaced slot from its successor.
pub(crate) struct Slot<L: RegionLogic> {
    pub(crate) generation: u64,
    pub(crate) sender: mpsc::Sender<Command<L>>,
    /// The region's component types, to prepare received archives with away from its thread.
    pub(crate) registry: Arc<baton_sdk::Registry>,
}

static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Microseconds since the Unix epoch, for events compared between processes on one host.
#[must_use]
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Default pause between polls of an idle region thread.
pub const IDLE_POLL: Duration = Duration::from_millis(50);

/// A stand-in game for the crate's tests whose region logic is never reached.
#[cfg(test)]
pub(crate) mod test_game {
    use baton_sdk::RegionLogic;

    /// A stand-in game: the dispatch never reaches the region's logic.
    pub(crate) struct NoGame;

    impl baton_sdk::scripts::ScriptBindings for NoGame {
        fn read(
            &self,
            _world: &baton_sdk::World,
            _entity: baton_sdk::EntityId,
            _slots: &mut [f32; baton_sdk::scripts::PROPERTY_SLOTS],
        ) {
        }
        fn write(&mut self, _world: &mut baton_sdk::World, _entity: baton_sdk::EntityId, _slot: usize, _value: f32) {}
    }

    impl RegionLogic for NoGame {
        fn register(&self, _registry: &mut baton_sdk::Registry) -> Result<(), baton_sdk::RegistryError> {
            Ok(())
        }
        fn load_assets(
            &mut self,
            _scripts: &mut baton_sdk::scripts::ScriptEngine,
        ) -> Result<(), baton_sdk::scripts::ScriptError> {
            Ok(())
        }
        fn apply_input(&mut self, _world: &mut baton_sdk::World, _input: &baton_sdk::sessions::ReadyInput) {}
        fn tick(&mut self, _world: &mut baton_sdk::World) {}
    }
}
