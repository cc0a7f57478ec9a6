//! An ownership authority reached over the network: the coordinator's region directory.
//!
//! Calls block the calling thread (a region thread, or a control thread), never an async worker:
//! the request runs on the runtime and the caller waits for it, at most [`REQUEST_TIMEOUT`]. Any
//! failure (no connection, timeout, malformed reply) is `Unavailable`: the caller does not know
//! whether a swap happened and must ask again before acting (protocol.md §5).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use baton_net::{ClusterIdentity, LinkSettings};
use baton_sdk::handoff::{AuthorityError, Ownership, OwnershipAuthority};
use baton_sdk::wire::RegionId;
use baton_sdk::wire::authority::{ALPN_AUTHORITY, AuthorityReply, AuthorityRequest, MAX_AUTHORITY_FRAME};

/// Longest wait for one answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The coordinator as an [`OwnershipAuthority`].
pub struct RemoteAuthority {
    address: SocketAddr,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    runtime: tokio::runtime::Handle,
    connection: Mutex<Option<quinn::Connection>>,
}

impl std::fmt::Debug for RemoteAuthority {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("RemoteAuthority").field("address", &self.address).finish_non_exhaustive()
    }
}

impl RemoteAuthority {
    /// An authority at `address`, reached with this node's cluster identity over `runtime`.
    pub fn new(
        address: SocketAddr,
        identity: &ClusterIdentity,
        runtime: tokio::runtime::Handle,
    ) -> Result<RemoteAuthority, baton_net::NetError> {
        let config = baton_net::cluster_client_config(identity, LinkSettings::default(), ALPN_AUTHORITY)?;
        let endpoint = {
            let _guard = runtime.enter();
            quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?
        };
        Ok(RemoteAuthority { address, endpoint, config, runtime, connection: Mutex::new(None) })
    }

    fn ask(&self, request: &AuthorityRequest) -> Result<AuthorityReply, AuthorityError> {
        let unavailable =
            |error: String| AuthorityError::Unavailable(format!("coordinator at {}: {error}", self.address));
        let bytes = postcard::to_allocvec(request).map_err(|error| unavailable(error.to_string()))?;
        let cached = self.connection.lock().ok().and_then(|connection| connection.clone());
        let (endpoint, config, address) = (self.endpoint.clone(), self.config.clone(), self.address);
        let exchange = async move {
            let connection = match cached.filter(|connection| connection.close_reason().is_none()) {
                Some(connection) => connection,
                None => baton_net::connect_with(&endpoint, config, address).await.map_err(|error| error.to_string())?,
            };
            let (mut send, mut recv) = connection.open_bi().await.map_err(|error| error.to_string())?;
            baton_net::write_frame(&mut send, &bytes).await.map_err(|error| error.to_string())?;
            send.finish().map_err(|error| error.to_string())?;
            let reply = baton_net::read_frame(&mut recv, MAX_AUTHORITY_FRAME)
                .await
                .map_err(|error| error.to_string())?
                .ok_or("no reply")?;
            Ok::<_, String>((connection, reply))
        };
        // The exchange runs as a task of the runtime and this thread waits on a plain channel:
        // a request still waiting when the process stops then finds the task dropped with the
        // runtime (an unavailable authority), where a timer awaited from this thread would panic
        // ("a Tokio context ... is being shutdown").
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = sender.send(tokio::time::timeout(REQUEST_TIMEOUT, exchange).await);
        });
        // The task's own timeout answers first; the wait's is a backstop for a runtime with no
        // worker free to run the task.
        let (connection, reply) = match receiver.recv_timeout(REQUEST_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(result)) => result.map_err(unavailable)?,
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(unavailable("timed out".into()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(unavailable("the process is shutting down".into()));
            }
        };
        if let Ok(mut cached) = self.connection.lock() {
            *cached = Some(connection);
        }
        postcard::from_bytes(&reply).map_err(|error| unavailable(format!("malformed reply: {error}")))
    }
}

fn unexpected(reply: AuthorityReply) -> AuthorityError {
    match reply {
        AuthorityReply::Error(error) => error,
        other => AuthorityError::Unavailable(format!("unexpected reply {other:?}")),
    }
}

impl OwnershipAuthority for RemoteAuthority {
    fn current(&self, region: RegionId) -> Result<Ownership, AuthorityError> {
        match self.ask(&AuthorityRequest::Current { region })? {
            AuthorityReply::Ownership(ownership) => Ok(ownership),
            other => Err(unexpected(other)),
        }
    }

    fn compare_and_swap(&self, region: RegionId, expected: &Ownership, next: &Ownership) -> Result<(), AuthorityError> {
        match self.ask(&AuthorityRequest::CompareAndSwap { region, expected: expected.clone(), next: next.clone() })? {
            AuthorityReply::Swapped => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    fn register(&self, region: RegionId, owner: &str) -> Result<Ownership, AuthorityError> {
        match self.ask(&AuthorityRequest::Register { region, owner: owner.to_owned() })? {
            AuthorityReply::Ownership(ownership) => Ok(ownership),
            other => Err(unexpected(other)),
        }
    }
}
