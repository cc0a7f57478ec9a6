//! Following the coordinator's route feed (`baton_wire::control::ALPN_ROUTES`).
//!
//! The gateway keeps one connection to the coordinator, reconnecting while it is away, and applies
//! every route it is sent through [`Gateway::assign`]: that connects to the owner if needed and
//! takes the route only if its epoch is newer than the one in use, so pushes never undo a handoff
//! the gateway already saw from the region servers. While the coordinator is unreachable the
//! gateway keeps routing by what the region servers tell it; players notice nothing.

use std::net::SocketAddr;
use std::time::Duration;

use baton_net::framed::{ReadEnd, read_frames};
use baton_wire::control::{CONTROL_VERSION, GatewayHello, RouteFeed};
use baton_wire::framing::encode_into;

use crate::Gateway;

/// Pause before reconnecting to a coordinator that is away.
const RETRY: Duration = Duration::from_millis(500);

/// Follows the feed of the coordinator at `coordinator` until the gateway's endpoint closes.
pub(crate) async fn follow(
    gateway: Gateway,
    client: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    coordinator: SocketAddr,
) {
    loop {
        match follow_once(&gateway, &client, &endpoint, coordinator).await {
            Ok(()) => tracing::warn!(%coordinator, "the coordinator closed the route feed; reconnecting"),
            Err(error) => tracing::debug!(%coordinator, %error, "route feed unavailable; retrying"),
        }
        if gateway.is_shut_down() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn follow_once(
    gateway: &Gateway,
    client: &quinn::ClientConfig,
    endpoint: &quinn::Endpoint,
    coordinator: SocketAddr,
) -> anyhow::Result<()> {
    let connection = baton_net::connect_with(endpoint, client.clone(), coordinator).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut buffer = Vec::new();
    encode_into(&GatewayHello { version: CONTROL_VERSION, name: gateway.name().to_owned() }, &mut buffer)?;
    send.write_all(&buffer).await?;
    tracing::info!(%coordinator, "following the coordinator's route feed");
    let apply = |message: RouteFeed| {
        let routes = match message {
            RouteFeed::Table { routes } => routes,
            RouteFeed::Route(route) => vec![route],
            RouteFeed::Unavailable { region, reason } => {
                gateway.region_unavailable(region, &reason);
                Vec::new()
            }
        };
        for route in routes {
            // protocol.md §10: a route no newer than the one in use is refused, which is fine.
            match gateway.assign(route.region, route.address, route.epoch) {
                Ok(()) => {
                    tracing::debug!(region = %route.region, owner = route.owner, epoch = %route.epoch, "route pushed")
                }
                Err(error) => tracing::trace!(%error, "pushed route not applied"),
            }
        }
        true
    };
    if let ReadEnd::Malformed(error) = read_frames(&mut recv, apply).await {
        connection.close(1u32.into(), b"malformed frame");
        return Err(error.into());
    }
    Ok(())
}
