//! Serves the region directory to region servers as their ownership authority.
//!
//! Mutual-TLS QUIC (cluster certificates, ALPN `baton-authority/1`); each request is one
//! bidirectional stream carrying one `u32`-framed postcard `AuthorityRequest` and its
//! `AuthorityReply`. A request that does not decode ends that stream with an error reply's absence
//! and nothing else; the store is only touched by well-formed requests.

use std::net::SocketAddr;
use std::sync::Arc;

use baton_net::{ClusterIdentity, LinkSettings};
use baton_wire::authority::{ALPN_AUTHORITY, AuthorityRequest, MAX_AUTHORITY_FRAME, OwnershipAuthority};
use baton_wire::control::{ALPN_CONTROL, ALPN_ROUTES};

/// Binds the coordinator's cluster endpoint: region servers ask the authority (`authority`), host
/// agents keep their control connections (`hosts`) and gateways follow the route feed
/// (`crate::routes`) on it, until the endpoint is closed.
pub fn serve(
    bind: SocketAddr,
    identity: &ClusterIdentity,
    authority: Arc<dyn OwnershipAuthority>,
    hosts: Arc<crate::hosts::Hosts>,
    directory: Arc<crate::directory::Directory>,
    notices: Arc<crate::routes::RouteNotices>,
) -> Result<quinn::Endpoint, baton_net::NetError> {
    let endpoint = baton_net::cluster_endpoint_with(
        bind,
        identity,
        LinkSettings::default(),
        &[ALPN_AUTHORITY, ALPN_CONTROL, ALPN_ROUTES],
        ALPN_AUTHORITY,
    )?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            let authority = authority.clone();
            let hosts = hosts.clone();
            let directory = directory.clone();
            let notices = notices.clone();
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                if baton_net::negotiated_alpn(&connection).as_deref() == Some(ALPN_CONTROL) {
                    crate::hosts::serve_agent(connection, hosts).await;
                    return;
                }
                if baton_net::negotiated_alpn(&connection).as_deref() == Some(ALPN_ROUTES) {
                    crate::routes::serve_gateway(connection, directory, hosts, notices).await;
                    return;
                }
                let peer = connection.remote_address();
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let authority = authority.clone();
                    tokio::spawn(async move {
                        if let Err(error) = answer(send, recv, authority).await {
                            tracing::warn!(%peer, %error, "an authority request failed");
                        }
                    });
                }
            });
        }
    });
    Ok(endpoint)
}

async fn answer(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    authority: Arc<dyn OwnershipAuthority>,
) -> Result<(), String> {
    let bytes = baton_net::read_frame(&mut recv, MAX_AUTHORITY_FRAME)
        .await
        .map_err(|error| error.to_string())?
        .ok_or("the stream ended before a request")?;
    let request: AuthorityRequest =
        postcard::from_bytes(&bytes).map_err(|error| format!("malformed request: {error}"))?;
    // redb commits are synchronous and durable (an fsync): keep them off the async workers.
    let reply = tokio::task::spawn_blocking(move || request.answer(authority.as_ref()))
        .await
        .map_err(|error| error.to_string())?;
    let bytes = postcard::to_allocvec(&reply).map_err(|error| error.to_string())?;
    baton_net::write_frame(&mut send, &bytes).await.map_err(|error| error.to_string())?;
    send.finish().map_err(|error| error.to_string())?;
    Ok(())
}
