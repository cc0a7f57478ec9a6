//! Baton's client library: what a game client links to talk to a Baton gateway.
//!
//! ```no_run
//! # async fn run() -> Result<(), baton_client::ClientError> {
//! use baton_client::{Client, ClientOptions, Event};
//! let options = ClientOptions::new("127.0.0.1:7000".parse().unwrap(), "certs/gateway.pem");
//! let mut client = Client::connect(&options, "v1.<token from the login service>").await?;
//! client.send_input(vec![1, 0, 0, 128, 63, 0, 0, 0, 0]).await?;
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Update(update) => { /* draw update.payload for update.tick */ }
//!         Event::Closed { reason, .. } => { eprintln!("closed: {reason}"); break; }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What it guarantees
//! - Inputs are numbered 1, 2, 3... per player and kept until a state update acknowledges them
//!   (`last_applied`); after [`Client::resume`] (a lost connection, a dead gateway) every
//!   unacknowledged input is sent again, and the region applies each number once.
//! - State updates arrive as datagrams: some may be lost or reordered, so [`Event::Update`]s older
//!   than the newest seen are dropped here; the newest state always wins.
//! - A change of network address (Wi-Fi to mobile) keeps the connection (QUIC migration);
//!   [`Client::rebind`] simulates one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_net::public::PlayerTransport;
use baton_wire::player::{
    ALPN_PLAYER, ClientFrame, CloseCode, Datagram, FrameReader, PLAYER_PROTOCOL_VERSION, ServerFrame, StateUpdate,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

pub use baton_wire::player;

/// How to reach a gateway.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The gateway's address.
    pub gateway: SocketAddr,
    /// The name in the gateway's certificate.
    pub server_name: String,
    /// PEM file with the certificate(s) to trust for the gateway.
    pub trust: PathBuf,
    /// Transport settings.
    pub transport: PlayerTransport,
    /// Local address to bind.
    pub bind: SocketAddr,
    /// How long to wait for the gateway's welcome.
    pub welcome_timeout: Duration,
    /// An endpoint to share with other clients (a load generator runs many players over a few
    /// sockets); `None` gives the client a socket of its own.
    pub endpoint: Option<quinn::Endpoint>,
}

impl ClientOptions {
    /// Options for `gateway`, trusting the certificates in `trust` (the development gateway's
    /// `gateway.pem`), with defaults for the rest.
    pub fn new(gateway: SocketAddr, trust: impl Into<PathBuf>) -> ClientOptions {
        ClientOptions {
            gateway,
            server_name: baton_net::public::DEV_GATEWAY_NAME.to_owned(),
            trust: trust.into(),
            transport: PlayerTransport::default(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            welcome_timeout: Duration::from_secs(10),
            endpoint: None,
        }
    }

    /// An endpoint several clients can share (see [`ClientOptions::endpoint`]).
    pub fn shared_endpoint(&self) -> Result<quinn::Endpoint, ClientError> {
        let config = baton_net::public::player_client_config(&self.trust, ALPN_PLAYER, self.transport)
            .map_err(|error| ClientError::Setup(error.to_string()))?;
        // Many connections on one socket: large buffers, so a burst does not overflow it.
        let mut endpoint = baton_net::udp_endpoint(self.bind, quinn::EndpointConfig::default(), None)
            .map_err(|error| ClientError::Setup(error.to_string()))?;
        endpoint.set_default_client_config(config);
        Ok(endpoint)
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Setting up TLS or the socket failed.
    #[error("setup: {0}")]
    Setup(String),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(String),
    /// The gateway refused the session; `code` says why.
    #[error("refused ({code:?}): {reason}")]
    Refused {
        /// The close code, if the gateway sent a known one.
        code: Option<CloseCode>,
        /// The gateway's reason.
        reason: String,
    },
    /// The gateway said something that is not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Something that happened on the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The newest state of the player's region.
    Update(StateUpdate),
    /// Objects of a neighbouring region near the player's border.
    Neighbour {
        /// The neighbour.
        region: u64,
        /// Its tick.
        tick: u64,
        /// The game's view.
        payload: Vec<u8>,
    },
    /// The avatar is now in `region` (it crossed a border).
    RegionChanged {
        /// The new region.
        region: u64,
    },
    /// A ping was answered.
    Pong {
        /// Its nonce.
        nonce: u64,
    },
    /// The connection ended.
    Closed {
        /// The gateway's close code, if any.
        code: Option<CloseCode>,
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Shared {
    region: u64,
    resume_token: String,
}

/// A player's session through a gateway.
pub struct Client {
    options: ClientOptions,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    events: UnboundedReceiver<Event>,
    /// Datagrams are read in [`Client::next_event`] itself (no task of their own: one wake-up less
    /// per update); false once the connection is gone.
    datagrams_open: bool,
    shared: Arc<Mutex<Shared>>,
    player: u64,
    next_seq: u64,
    unacked: VecDeque<(u64, Vec<u8>)>,
    acked: u64,
    newest_tick: u64,
    newest_region: u64,
}

impl Client {
    /// Connects to the gateway with a session token and waits for the welcome.
    pub async fn connect(options: &ClientOptions, token: &str) -> Result<Client, ClientError> {
        let endpoint = match &options.endpoint {
            // A shared endpoint has this configuration as its default already; `open_session`
            // connects with it explicitly either way.
            Some(shared) => shared.clone(),
            None => {
                let config = baton_net::public::player_client_config(&options.trust, ALPN_PLAYER, options.transport)
                    .map_err(|error| ClientError::Setup(error.to_string()))?;
                let mut own =
                    quinn::Endpoint::client(options.bind).map_err(|error| ClientError::Setup(error.to_string()))?;
                own.set_default_client_config(config);
                own
            }
        };
        let (connection, send, events, shared, welcome) = open_session(&endpoint, options, token).await?;
        Ok(Client {
            options: options.clone(),
            endpoint,
            connection,
            send,
            events,
            datagrams_open: true,
            shared,
            player: welcome.player,
            next_seq: welcome.last_applied + 1,
            unacked: VecDeque::new(),
            acked: welcome.last_applied,
            newest_tick: 0,
            newest_region: welcome.region,
        })
    }

    /// The player.
    #[must_use]
    pub fn player(&self) -> u64 {
        self.player
    }

    /// The region the avatar is in.
    #[must_use]
    pub fn region(&self) -> u64 {
        self.shared.lock().map(|shared| shared.region).unwrap_or(0)
    }

    /// Inputs sent and not yet acknowledged by an update.
    #[must_use]
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The last input the region acknowledged.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The sequence number the next input will get.
    #[must_use]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The connection (for statistics such as its round-trip time).
    #[must_use]
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Sends one input (kept until acknowledged); returns its sequence number.
    pub async fn send_input(&mut self, payload: Vec<u8>) -> Result<u64, ClientError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, payload.clone()));
        self.write(&ClientFrame::Input { seq, payload }).await?;
        Ok(seq)
    }

    /// Sends raw bytes on the reliable stream (tests of the gateway's defences use it).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await.map_err(|error| ClientError::Connection(error.to_string()))
    }

    /// Sends a keep-alive; the answer is an [`Event::Pong`].
    pub async fn ping(&mut self, nonce: u64) -> Result<(), ClientError> {
        self.write(&ClientFrame::Ping { nonce }).await
    }

    async fn write(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = baton_wire::player::encode(frame).map_err(|error| ClientError::Protocol(error.to_string()))?;
        self.send.write_all(&bytes).await.map_err(|error| ClientError::Connection(error.to_string()))
    }

    /// The next event; `None` once the session's connection is gone and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            let event = if self.datagrams_open {
                // Reliable events first: a region change must be seen before the new region's
                // updates. Both branches are cancel-safe.
                tokio::select! {
                    biased;
                    event = self.events.recv() => event?,
                    datagram = self.connection.read_datagram() => match datagram {
                        Ok(bytes) => match datagram_event(&bytes) {
                            Some(event) => event,
                            None => continue,
                        },
                        Err(_) => {
                            self.datagrams_open = false;
                            continue;
                        }
                    },
                }
            } else {
                self.events.recv().await?
            };
            if let Some(event) = self.observe(event) {
                return Some(event);
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        loop {
            let event = match self.events.try_recv() {
                Ok(event) => event,
                Err(_) if self.datagrams_open => {
                    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
                    let read = std::pin::pin!(self.connection.read_datagram());
                    match std::future::Future::poll(read, &mut context) {
                        std::task::Poll::Ready(Ok(bytes)) => match datagram_event(&bytes) {
                            Some(event) => event,
                            None => continue,
                        },
                        std::task::Poll::Ready(Err(_)) => {
                            self.datagrams_open = false;
                            return None;
                        }
                        std::task::Poll::Pending => return None,
                    }
                }
                Err(_) => return None,
            };
            if let Some(event) = self.observe(event) {
                return Some(event);
            }
        }
    }

    fn observe(&mut self, event: Event) -> Option<Event> {
        match &event {
            Event::Update(update) => {
                if update.region != self.newest_region {
                    // An update from a region the avatar has left (or not reached yet).
                    if update.region != self.region() {
                        return None;
                    }
                    self.newest_region = update.region;
                    self.newest_tick = 0;
                }
                if update.tick <= self.newest_tick {
                    return None;
                }
                self.newest_tick = update.tick;
                self.acknowledge(update.last_applied);
            }
            Event::RegionChanged { region } => {
                self.newest_region = *region;
                self.newest_tick = 0;
            }
            _ => {}
        }
        Some(event)
    }

    fn acknowledge(&mut self, last_applied: u64) {
        if last_applied > self.acked {
            self.acked = last_applied;
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq <= self.acked) {
            self.unacked.pop_front();
        }
    }

    /// Resumes the session on the gateway at `gateway` (the same or another) after the connection
    /// was lost, with the resume token; every unacknowledged input is sent again.
    pub async fn resume(&mut self, gateway: SocketAddr) -> Result<(), ClientError> {
        let token = self.shared.lock().map(|shared| shared.resume_token.clone()).unwrap_or_default();
        let mut options = self.options.clone();
        options.gateway = gateway;
        self.connection.close((CloseCode::Normal as u32).into(), b"resuming");
        let (connection, send, events, shared, welcome) = open_session(&self.endpoint, &options, &token).await?;
        self.connection = connection;
        self.send = send;
        self.events = events;
        self.datagrams_open = true;
        self.shared = shared;
        self.options = options;
        self.newest_region = welcome.region;
        self.newest_tick = 0;
        self.acknowledge(welcome.last_applied);
        let resend: Vec<(u64, Vec<u8>)> = self.unacked.iter().cloned().collect();
        for (seq, payload) in resend {
            self.write(&ClientFrame::Input { seq, payload }).await?;
        }
        Ok(())
    }

    /// Moves the connection to a new local socket bound to `bind` (as when a phone changes network;
    /// with a shared endpoint, every client on it moves).
    pub fn rebind(&self, bind: SocketAddr) -> Result<(), ClientError> {
        let socket = std::net::UdpSocket::bind(bind).map_err(|error| ClientError::Setup(error.to_string()))?;
        self.endpoint.rebind(socket).map_err(|error| ClientError::Setup(error.to_string()))
    }

    /// The local address the client sends from.
    pub fn local_address(&self) -> Result<SocketAddr, ClientError> {
        self.endpoint.local_addr().map_err(|error| ClientError::Setup(error.to_string()))
    }

    /// Ends the session.
    pub fn close(&self) {
        self.connection.close((CloseCode::Normal as u32).into(), b"bye");
    }
}

struct Welcome {
    player: u64,
    region: u64,
    last_applied: u64,
}

type Session = (quinn::Connection, quinn::SendStream, UnboundedReceiver<Event>, Arc<Mutex<Shared>>, Welcome);

async fn open_session(
    endpoint: &quinn::Endpoint,
    options: &ClientOptions,
    token: &str,
) -> Result<Session, ClientError> {
    let connecting = endpoint
        .connect(options.gateway, &options.server_name)
        .map_err(|error| ClientError::Connection(error.to_string()))?;
    let connection = connecting.await.map_err(|error| ClientError::Connection(error.to_string()))?;
    // The gateway may close the connection at once (full, shutting down): report its reason.
    let closed = |error: String| match connection.close_reason() {
        Some(reason) => refusal_from(reason),
        None => ClientError::Connection(error),
    };
    let (mut send, mut recv) = connection.open_bi().await.map_err(|error| closed(error.to_string()))?;
    let hello =
        baton_wire::player::encode(&ClientFrame::Hello { version: PLAYER_PROTOCOL_VERSION, token: token.to_owned() })
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
    send.write_all(&hello).await.map_err(|error| closed(error.to_string()))?;
    let mut reader = FrameReader::default();
    let first = tokio::time::timeout(options.welcome_timeout, next_server_frame(&mut recv, &mut reader))
        .await
        .map_err(|_| ClientError::Connection("no welcome in time".into()))?;
    let welcome = match first {
        Ok(Some(ServerFrame::Welcome { player, region, last_applied, resume_token })) => {
            (Welcome { player, region, last_applied }, resume_token)
        }
        Ok(Some(other)) => return Err(ClientError::Protocol(format!("expected Welcome, got {other:?}"))),
        Ok(None) | Err(_) => return Err(refusal(&connection).await),
    };
    let shared = Arc::new(Mutex::new(Shared { region: welcome.0.region, resume_token: welcome.1 }));
    let (sender, events) = unbounded_channel();
    tokio::spawn(read_reliable(recv, reader, sender, shared.clone(), connection.clone()));
    Ok((connection, send, events, shared, welcome.0))
}

async fn refusal(connection: &quinn::Connection) -> ClientError {
    refusal_from(connection.closed().await)
}

fn refusal_from(error: quinn::ConnectionError) -> ClientError {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => ClientError::Refused {
            code: u32::try_from(close.error_code.into_inner()).ok().and_then(CloseCode::from_u32),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        other => ClientError::Connection(other.to_string()),
    }
}

async fn next_server_frame(
    recv: &mut quinn::RecvStream,
    reader: &mut FrameReader,
) -> Result<Option<ServerFrame>, ClientError> {
    loop {
        if let Some(frame) =
            reader.next_frame::<ServerFrame>().map_err(|error| ClientError::Protocol(error.to_string()))?
        {
            return Ok(Some(frame));
        }
        match recv.read_chunk(16 * 1024, true).await {
            Ok(Some(chunk)) => reader.feed(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(error) => return Err(ClientError::Connection(error.to_string())),
        }
    }
}

async fn read_reliable(
    mut recv: quinn::RecvStream,
    mut reader: FrameReader,
    events: UnboundedSender<Event>,
    shared: Arc<Mutex<Shared>>,
    connection: quinn::Connection,
) {
    loop {
        match next_server_frame(&mut recv, &mut reader).await {
            Ok(Some(ServerFrame::State(update))) => {
                let _ = events.send(Event::Update(update));
            }
            Ok(Some(ServerFrame::Pong { nonce })) => {
                let _ = events.send(Event::Pong { nonce });
            }
            Ok(Some(ServerFrame::RegionChanged { region, resume_token })) => {
                if let Ok(mut shared) = shared.lock() {
                    shared.region = region;
                    shared.resume_token = resume_token;
                }
                let _ = events.send(Event::RegionChanged { region });
            }
            Ok(Some(ServerFrame::Welcome { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let closed = match refusal(&connection).await {
        ClientError::Refused { code, reason } => Event::Closed { code, reason },
        other => Event::Closed { code: None, reason: other.to_string() },
    };
    let _ = events.send(closed);
}

/// The event a datagram from the gateway carries; a malformed one is ignored (and logged).
fn datagram_event(bytes: &[u8]) -> Option<Event> {
    match Datagram::decode(bytes) {
        Ok(Datagram::State(update)) => Some(Event::Update(update)),
        Ok(Datagram::Neighbour { region, tick, payload }) => Some(Event::Neighbour { region, tick, payload }),
        Err(error) => {
            tracing::debug!(%error, "ignoring a malformed datagram from the gateway");
            None
        }
    }
}
