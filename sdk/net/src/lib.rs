//! Baton's cluster networking: QUIC between Baton processes, authenticated both ways by a cluster
//! certificate authority; development certificates; message framing; pacing.
//!
//! Every process of a cluster holds the cluster CA certificate and a certificate of its own signed
//! by it. Connections are mutual TLS 1.3 over QUIC (quinn, rustls with ring): a peer without a
//! certificate from the cluster CA cannot connect, and we connect to no one else. This crate knows
//! nothing of regions or world state, so the gateway and coordinator use it without the SDK.
//!
//! With the feature `metrics-http`, the `metrics` module serves a process's Prometheus metrics over HTTP.
//! `heap` counts a process's live heap, for binaries that install its allocator.

pub mod framed;
pub mod heap;
pub mod ledbat;
#[cfg(feature = "metrics-http")]
pub mod metrics;
pub mod pace;
pub mod pack;
pub mod pki;
pub mod public;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use ledbat::{Ledbat, LedbatConfig};
pub use pace::TokenBucket;
pub use pack::Packer;
pub use pki::{ClusterIdentity, DevCa};

/// The name every cluster certificate carries and every client checks.
pub const CLUSTER_SERVER_NAME: &str = "baton.cluster";
/// ALPN of Baton's region-to-region protocol.
pub const ALPN_REGION: &[u8] = b"baton-region/1";

/// Errors from setting up networking or moving frames.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate or key could not be read, parsed or made.
    #[error("certificates: {0}")]
    Pki(String),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Binding or using the socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting failed.
    #[error("connecting to {peer}: {reason}")]
    Connect {
        /// The peer.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// A frame was larger than allowed.
    #[error("frame of {length} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Declared length.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream or connection failed.
    #[error("stream: {0}")]
    Stream(String),
}

/// Transport settings for cluster links.
#[derive(Clone, Copy, Debug)]
pub struct LinkSettings {
    /// A connection silent this long is closed (how fast a dead peer is noticed).
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be well under the idle timeout).
    pub keep_alive: Duration,
    /// The congestion controller of the connections this endpoint opens with its default client
    /// configuration. Connections it accepts keep quinn's default: a region server opens its
    /// handoff links this way (bulk state) and accepts the gateways' (players' updates); its
    /// standby feeds dial with a client configuration of their own, on quinn's default.
    pub dial_congestion: Congestion,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(500),
            dial_congestion: Congestion::Cubic,
        }
    }
}

/// A QUIC congestion controller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Congestion {
    /// quinn's default (CUBIC): takes its fair share of a link, and fills its queue to find it.
    Cubic,
    /// quinn's BBR (marked experimental by quinn).
    Bbr,
    /// [`Ledbat`]: backs off as soon as the round trip grows past its target, down to a floor, so
    /// it takes mostly what other traffic leaves.
    Ledbat(LedbatConfig),
}

impl Congestion {
    fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Congestion::Ledbat(config) => Arc::new(config),
        }
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn transport(settings: LinkSettings) -> Result<Arc<quinn::TransportConfig>, NetError> {
    transport_with(settings, Congestion::Cubic)
}

fn transport_with(settings: LinkSettings, congestion: Congestion) -> Result<Arc<quinn::TransportConfig>, NetError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout).map_err(|error| NetError::Tls(error.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(settings.keep_alive));
    // Bulk state moves on a few streams; allow a large window so pacing, not flow control, limits it.
    transport.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(32 * 1024 * 1024));
    transport.send_window(32 * 1024 * 1024);
    transport.congestion_controller_factory(congestion.factory());
    Ok(Arc::new(transport))
}

/// A QUIC endpoint bound to `bind` that accepts only cluster peers and connects only to them.
pub fn cluster_endpoint(
    bind: SocketAddr,
    identity: &ClusterIdentity,
    settings: LinkSettings,
) -> Result<quinn::Endpoint, NetError> {
    cluster_endpoint_with(bind, identity, settings, &[ALPN_REGION], ALPN_REGION)
}

/// Like [`cluster_endpoint`], accepting the protocols `accept` (dispatch on [`negotiated_alpn`])
/// and connecting with `connect_as` by default.
pub fn cluster_endpoint_with(
    bind: SocketAddr,
    identity: &ClusterIdentity,
    settings: LinkSettings,
    accept: &[&[u8]],
    connect_as: &[u8],
) -> Result<quinn::Endpoint, NetError> {
    let roots = identity.roots()?;
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), crypto_provider())
            .build()
            .map_err(|error| NetError::Tls(error.to_string()))?;
    let mut server_tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(identity.chain(), identity.key())
        .map_err(|error| NetError::Tls(error.to_string()))?;
    server_tls.alpn_protocols = accept.iter().map(|alpn| alpn.to_vec()).collect();
    let server_crypto = QuicServerConfig::try_from(server_tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport(settings)?);

    let mut endpoint = udp_endpoint(bind, quinn::EndpointConfig::default(), Some(server))?;
    endpoint.set_default_client_config(cluster_client_config(identity, settings, connect_as)?);
    Ok(endpoint)
}

/// Socket buffer size asked for on every Baton UDP socket. One busy socket (a gateway's, a region
/// server's upstream) takes tens of thousands of datagrams a second; the kernel's default receive
/// buffer (~208 KiB) overflows in a scheduling hiccup and every datagram it drops is a
/// retransmission or a missed update. The kernel caps the size at `net.core.rmem_max` /
/// `wmem_max` (raise those on production hosts; `sysctl -w net.core.rmem_max=8388608`).
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A quinn endpoint on a UDP socket bound to `bind` with [`UDP_BUFFER_BYTES`] buffers (as much of
/// them as the kernel allows), accepting connections when `server` is given.
pub fn udp_endpoint(
    bind: SocketAddr,
    config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let buffers = socket2::SockRef::from(&socket);
    if let Err(error) = buffers.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP receive buffer");
    }
    if let Err(error) = buffers.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP send buffer");
    }
    let runtime =
        quinn::default_runtime().ok_or_else(|| NetError::Tls("a QUIC endpoint needs a tokio runtime".into()))?;
    Ok(quinn::Endpoint::new(config, server, socket, runtime)?)
}

/// A client configuration that presents this node's certificate, trusts only the cluster CA and
/// asks for protocol `alpn`.
pub fn cluster_client_config(
    identity: &ClusterIdentity,
    settings: LinkSettings,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, NetError> {
    let mut client_tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?
        .with_root_certificates(identity.roots()?)
        .with_client_auth_cert(identity.chain(), identity.key())
        .map_err(|error| NetError::Tls(error.to_string()))?;
    client_tls.alpn_protocols = vec![alpn.to_vec()];
    let client_crypto = QuicClientConfig::try_from(client_tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport_with(settings, settings.dial_congestion)?);
    Ok(client)
}

/// The application protocol a connection negotiated.
#[must_use]
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection.handshake_data()?.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

/// Connects to a cluster peer with a client configuration of one's own.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    peer: SocketAddr,
) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect_with(config, peer, CLUSTER_SERVER_NAME)
        .map_err(|error| NetError::Connect { peer, reason: error.to_string() })?;
    connecting.await.map_err(|error| NetError::Connect { peer, reason: error.to_string() })
}

/// Connects to a cluster peer.
pub async fn connect(endpoint: &quinn::Endpoint, peer: SocketAddr) -> Result<quinn::Connection, NetError> {
    let connecting = endpoint
        .connect(peer, CLUSTER_SERVER_NAME)
        .map_err(|error| NetError::Connect { peer, reason: error.to_string() })?;
    connecting.await.map_err(|error| NetError::Connect { peer, reason: error.to_string() })
}

/// Writes one frame: a little-endian u32 length, then the bytes.
pub async fn write_frame(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), NetError> {
    let length = u32::try_from(bytes.len())
        .map_err(|_| NetError::FrameTooLarge { length: bytes.len(), limit: u32::MAX as usize })?;
    send.write_all(&length.to_le_bytes()).await.map_err(|error| NetError::Stream(error.to_string()))?;
    send.write_all(bytes).await.map_err(|error| NetError::Stream(error.to_string()))
}

/// Reads one frame of at most `limit` bytes; `None` when the stream ended cleanly between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Option<Vec<u8>>, NetError> {
    let mut length = [0u8; 4];
    match recv.read_exact(&mut length).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(NetError::Stream(error.to_string())),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > limit {
        return Err(NetError::FrameTooLarge { length, limit });
    }
    let mut bytes = vec![0u8; length];
    recv.read_exact(&mut bytes).await.map_err(|error| NetError::Stream(error.to_string()))?;
    Ok(Some(bytes))
}

/// Certificate chain and key types, re-exported for callers that build their own TLS configs.
pub type Chain = Vec<CertificateDer<'static>>;
/// A private key.
pub type Key = PrivateKeyDer<'static>;

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(names: &[&str]) -> (std::path::PathBuf, Vec<ClusterIdentity>) {
        let directory = std::env::temp_dir().join(format!("baton-net-{}-{}", std::process::id(), names.join("-")));
        let _ = std::fs::remove_dir_all(&directory);
        let ca = DevCa::open_or_create(&directory).unwrap();
        let identities = names
            .iter()
            .map(|name| {
                ca.issue(name).unwrap();
                ClusterIdentity::load(&directory, name).unwrap()
            })
            .collect();
        (directory, identities)
    }

    #[tokio::test]
    async fn cluster_peers_talk_and_strangers_are_refused() {
        let (directory, nodes) = identities(&["node-a", "node-b"]);
        let a = cluster_endpoint("127.0.0.1:0".parse().unwrap(), &nodes[0], LinkSettings::default()).unwrap();
        let b = cluster_endpoint("127.0.0.1:0".parse().unwrap(), &nodes[1], LinkSettings::default()).unwrap();
        let b_address = b.local_addr().unwrap();
        let (checked, refusal_checked) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let connection = b.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            let frame = read_frame(&mut recv, 1024).await.unwrap().unwrap();
            write_frame(&mut send, &frame).await.unwrap();
            send.finish().unwrap();
            // A frame over the limit is refused without reading it.
            let (_, mut recv) = connection.accept_bi().await.unwrap();
            let refused = read_frame(&mut recv, 16).await;
            assert!(matches!(refused, Err(NetError::FrameTooLarge { length: 17, limit: 16 })));
            let _ = checked.send(());
            connection.closed().await;
        });
        let connection = connect(&a, b_address).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        write_frame(&mut send, b"hello").await.unwrap();
        assert_eq!(read_frame(&mut recv, 1024).await.unwrap().unwrap(), b"hello");
        let (mut send, _) = connection.open_bi().await.unwrap();
        write_frame(&mut send, &[0u8; 17]).await.unwrap();
        // Closed only once the server has read (and refused) the frame's length.
        refusal_checked.await.unwrap();
        connection.close(0u32.into(), b"done");
        server.await.unwrap();

        // A node from another cluster (another CA) cannot connect.
        let (other_directory, strangers) = identities(&["stranger"]);
        let stranger =
            cluster_endpoint("127.0.0.1:0".parse().unwrap(), &strangers[0], LinkSettings::default()).unwrap();
        let c = cluster_endpoint("127.0.0.1:0".parse().unwrap(), &nodes[1], LinkSettings::default()).unwrap();
        let c_address = c.local_addr().unwrap();
        tokio::spawn(async move {
            if let Some(incoming) = c.accept().await {
                let _ = incoming.await;
            }
        });
        assert!(connect(&stranger, c_address).await.is_err(), "a certificate from another CA must be refused");
        let _ = std::fs::remove_dir_all(directory);
        let _ = std::fs::remove_dir_all(other_directory);
    }
}
