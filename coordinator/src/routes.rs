//! The route feed: the coordinator tells every gateway which process owns each region.
//!
//! A route is the directory's owner and epoch joined with the owner's address as its host agent
//! reports it. Each gateway connection gets the whole table first (so a gateway that connects late
//! knows every route), then every change. Changes are found by comparing the table with what this
//! connection was last sent, whenever a process reports an event and at least every
//! [`REFRESH`]: the directory is the truth, the events only make the push prompt.
//!
//! The feed never decides anything: a gateway applies a route only if its epoch is newer than the
//! one it routes by (protocol.md §10), so a late or repeated push cannot move a region back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_wire::RegionId;
use baton_wire::control::{CONTROL_VERSION, GatewayHello, RouteEntry, RouteFeed};
use baton_wire::framing::{FramedReader, encode_into};

use crate::directory::Directory;
use crate::hosts::Hosts;

/// Longest time between two comparisons of a connection's table with the directory.
pub const REFRESH: Duration = Duration::from_millis(250);

/// What the gateways are to tell players about regions that have no route: a region lost its
/// host and no failover brought it back within the grace. Cleared when its failover ends (a new
/// route follows if it recovered).
#[derive(Debug, Default)]
pub struct RouteNotices {
    unavailable: std::sync::Mutex<BTreeMap<RegionId, String>>,
}

impl RouteNotices {
    /// `region` is unavailable, for `reason`.
    pub fn unavailable(&self, region: RegionId, reason: String) {
        if let Ok(mut notices) = self.unavailable.lock() {
            notices.insert(region, reason);
        }
    }

    /// `region` is no longer announced unavailable.
    pub fn clear(&self, region: RegionId) {
        if let Ok(mut notices) = self.unavailable.lock() {
            notices.remove(&region);
        }
    }

    /// Every region announced unavailable, with why.
    #[must_use]
    pub fn current(&self) -> BTreeMap<RegionId, String> {
        self.unavailable.lock().map(|notices| notices.clone()).unwrap_or_default()
    }
}

/// The current table: every region of the directory whose owner reports serving it.
///
/// The directory changes the instant a handoff's commit lands, a moment before the new owner
/// hears its swap won and starts taking players; a route pushed in that moment would send the
/// gateway's players to a server that turns them away. So a route appears only once the owner
/// itself has reported owning the region (`owning`/`authoritative`, relayed by its agent).
#[must_use]
pub fn table(directory: &Directory, hosts: &Hosts) -> BTreeMap<u64, RouteEntry> {
    let Ok(regions) = directory.list() else { return BTreeMap::new() };
    regions
        .into_iter()
        .filter_map(|(region, ownership)| {
            let address = hosts.serving_address(&ownership.owner, region)?;
            Some((region.0, RouteEntry { region, owner: ownership.owner, address, epoch: ownership.epoch }))
        })
        .collect()
}

/// Serves one gateway's route feed until it closes or misbehaves.
pub(crate) async fn serve_gateway(
    connection: quinn::Connection,
    directory: Arc<Directory>,
    hosts: Arc<Hosts>,
    notices: Arc<RouteNotices>,
) {
    let peer = connection.remote_address();
    let Ok((mut send, mut recv)) = connection.accept_bi().await else { return };
    let mut reader = FramedReader::default();
    // The hello comes first; a gateway that sends anything else is closed.
    let hello = loop {
        match reader.next_message::<GatewayHello>() {
            Ok(Some(hello)) => break hello,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%peer, %error, "malformed hello on the route feed");
                connection.close(1u32.into(), b"malformed hello");
                return;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), recv.read_chunk(4096, true)).await {
            Ok(Ok(Some(chunk))) => reader.feed(&chunk.bytes),
            _ => return,
        }
    };
    if hello.version != CONTROL_VERSION {
        connection.close(1u32.into(), b"unsupported control version");
        return;
    }
    tracing::info!(%peer, gateway = hello.name, "gateway follows the route feed");
    let mut events = hosts.subscribe();
    let mut sent: BTreeMap<u64, RouteEntry> = table(&directory, &hosts);
    let mut buffer = Vec::new();
    if encode_into(&RouteFeed::Table { routes: sent.values().cloned().collect() }, &mut buffer).is_err()
        || send.write_all(&buffer).await.is_err()
    {
        return;
    }
    let mut told: BTreeMap<RegionId, String> = BTreeMap::new();
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => {}
            event = events.recv() => {
                if matches!(event, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            // The gateway says nothing after its hello; its stream ending means it is gone.
            read = recv.read_chunk(4096, true) => {
                if !matches!(read, Ok(Some(_))) {
                    return;
                }
            }
        }
        buffer.clear();
        for (region, entry) in table(&directory, &hosts) {
            if sent.get(&region) != Some(&entry) {
                if encode_into(&RouteFeed::Route(entry.clone()), &mut buffer).is_err() {
                    continue;
                }
                sent.insert(region, entry);
            }
        }
        let unavailable = notices.current();
        for (region, reason) in &unavailable {
            if told.get(region) != Some(reason)
                && encode_into(&RouteFeed::Unavailable { region: *region, reason: reason.clone() }, &mut buffer).is_ok()
            {
                told.insert(*region, reason.clone());
            }
        }
        told.retain(|region, _| unavailable.contains_key(region));
        if !buffer.is_empty() && send.write_all(&buffer).await.is_err() {
            return;
        }
    }
}
