//! TLS for player-facing endpoints: the gateway's certificate (from files, or made for development)
//! and what a game client trusts. Players authenticate with session tokens, not certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::NetError;

/// The name the development gateway certificate carries (clients connect with it).
pub const DEV_GATEWAY_NAME: &str = "localhost";

/// Transport limits of player connections.
#[derive(Clone, Copy, Debug)]
pub struct PlayerTransport {
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Datagrams queued per connection before the oldest are dropped (latest state wins).
    pub datagram_send_buffer: usize,
}

impl Default for PlayerTransport {
    fn default() -> Self {
        PlayerTransport { idle_timeout: Duration::from_secs(15), datagram_send_buffer: 4 * 1200 }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(settings: PlayerTransport, keep_alive: Option<Duration>) -> Result<quinn::TransportConfig, NetError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(settings.idle_timeout).map_err(|error| NetError::Tls(error.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(keep_alive);
    transport.datagram_send_buffer_size(settings.datagram_send_buffer);
    transport.datagram_receive_buffer_size(Some(64 * 1024));
    // Each side sends 20-30 small packets a second to the other; asking the peer to acknowledge
    // every 8th ack-eliciting packet (or after 60 ms) roughly halves the packets on the wire.
    let mut ack_frequency = quinn::AckFrequencyConfig::default();
    ack_frequency.ack_eliciting_threshold(quinn::VarInt::from_u32(8)).max_ack_delay(Some(Duration::from_millis(60)));
    transport.ack_frequency_config(Some(ack_frequency));
    Ok(transport)
}

/// Reads a PEM certificate chain and private key.
pub fn load_certificate(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NetError> {
    let cert_pem = std::fs::read(cert).map_err(|error| NetError::Pki(format!("{}: {error}", cert.display())))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|error| NetError::Pki(format!("{}: {error}", cert.display())))?;
    if chain.is_empty() {
        return Err(NetError::Pki(format!("{} holds no certificate", cert.display())));
    }
    let key_pem = std::fs::read(key).map_err(|error| NetError::Pki(format!("{}: {error}", key.display())))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|error| NetError::Pki(format!("{}: {error}", key.display())))?
        .ok_or_else(|| NetError::Pki(format!("{} holds no private key", key.display())))?;
    Ok((chain, key))
}

/// Makes (or reuses) a self-signed development certificate for [`DEV_GATEWAY_NAME`] in
/// `directory`: `gateway.pem` (clients trust it) and `gateway.key`. Returns both paths.
pub fn dev_gateway_certificate(directory: &Path) -> Result<(PathBuf, PathBuf), NetError> {
    std::fs::create_dir_all(directory).map_err(|error| NetError::Pki(format!("{}: {error}", directory.display())))?;
    let cert = directory.join("gateway.pem");
    let key = directory.join("gateway.key");
    if !cert.exists() || !key.exists() {
        let pair = KeyPair::generate().map_err(|error| NetError::Pki(error.to_string()))?;
        let mut params = CertificateParams::new(vec![DEV_GATEWAY_NAME.to_owned(), "127.0.0.1".to_owned()])
            .map_err(|error| NetError::Pki(error.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, "Baton development gateway");
        let certificate = params.self_signed(&pair).map_err(|error| NetError::Pki(error.to_string()))?;
        crate::pki::write_private(&key, &pair.serialize_pem())?;
        std::fs::write(&cert, certificate.pem())
            .map_err(|error| NetError::Pki(format!("{}: {error}", cert.display())))?;
    }
    Ok((cert, key))
}

/// The server side of player connections (ALPN `alpn`).
pub fn player_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[u8],
    settings: PlayerTransport,
) -> Result<quinn::ServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| NetError::Tls(error.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport(settings, None)?;
    // A player opens one bidirectional stream (its frames) and nothing else: a client opening
    // more is held back by QUIC's stream limits rather than by the gateway.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    server.transport_config(Arc::new(transport));
    // Clients on mobile networks change address; QUIC connection migration keeps their session.
    server.migration(true);
    Ok(server)
}

/// The client side of player connections: trusts the certificates in `trust_pem`.
pub fn player_client_config(
    trust_pem: &Path,
    alpn: &[u8],
    settings: PlayerTransport,
) -> Result<quinn::ClientConfig, NetError> {
    let pem = std::fs::read(trust_pem).map_err(|error| NetError::Pki(format!("{}: {error}", trust_pem.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut &pem[..]) {
        let certificate = certificate.map_err(|error| NetError::Pki(format!("{}: {error}", trust_pem.display())))?;
        roots.add(certificate).map_err(|error| NetError::Pki(format!("{}: {error}", trust_pem.display())))?;
    }
    if roots.is_empty() {
        return Err(NetError::Pki(format!("{} holds no certificate", trust_pem.display())));
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| NetError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|error| NetError::Tls(error.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport(settings, Some(settings.idle_timeout / 4))?));
    Ok(client)
}
