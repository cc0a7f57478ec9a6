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
//! - Inputs are numbered 1, 2, 3... per player and kept until a state update says they are
//!   durable (`durable`: held in state that survives the loss of the region's host, at most
//!   [`MAX_KEPT`] applied ones); after [`Client::resume`] (a lost connection, a dead gateway)
//!   every input the region has not applied is sent again, and after a failover
//!   ([`Event::Recovered`]) every kept one is; the region applies each number once.
//! - If the region comes back from state older than what it acknowledged as durable (its hot
//!   standby died with it), the inputs the client no longer has are gone: the client says so
//!   (`Skip`), the region counts them lost and goes on with the next one (it never waits for them).
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

/// Most inputs kept that the region applied but did not make durable yet. A region that makes
/// nothing durable (no checkpoint store) says its applied inputs are durable, as no
/// failover could bring them back; this bounds the memory if one falls behind anyway.
pub const MAX_KEPT: usize = baton_wire::player::MAX_KEPT_INPUTS;

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
    /// `region` lost its host and another took it over from saved state; every kept input was
    /// sent again, and updates start again from the restored tick.
    Recovered {
        /// The region.
        region: u64,
    },
    /// `region` waited for one of this player's inputs that was lost on its way (at a server that
    /// died or was cut off): the kept inputs it had not acknowledged applied were sent again (every
    /// kept one from its third ask in a row with nothing acknowledged since). Nothing else changed.
    InputsAskedAgain {
        /// The region.
        region: u64,
    },
    /// `region` lost its host and none could take it over yet (the session stays open).
    RegionUnavailable {
        /// The region.
        region: u64,
        /// Why.
        reason: String,
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
    /// Frames encoded and not yet written to `send`, whole frames only ever added: every write
    /// goes through here and quinn's cancel-safe `write`, so a caller that drops `send_input` or
    /// `ping` mid-write never leaves half a frame on the stream; the rest goes out with the next
    /// write. [`Client::next_event`] writes only what the stream takes at once (it never waits
    /// for the stream while holding an event).
    outbox: Vec<u8>,
    events: UnboundedReceiver<Event>,
    /// Datagrams are read in [`Client::next_event`] itself (no task of their own: one wake-up less
    /// per update); false once the connection is gone.
    datagrams_open: bool,
    shared: Arc<Mutex<Shared>>,
    player: u64,
    next_seq: u64,
    /// The inputs kept until durable, and what the region acknowledged.
    inputs: InputLog,
    /// Which updates are news (newest per region, across region changes).
    updates: UpdateOrder,
    /// An update to hand out before reading more: one from a region entered that came before
    /// the word of the arrival (see [`UpdateOrder::handle_region_changed`]).
    next_update: Option<StateUpdate>,
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
            outbox: Vec::new(),
            events,
            datagrams_open: true,
            shared,
            player: welcome.player,
            next_seq: welcome.last_applied + 1,
            inputs: InputLog::new(welcome.last_applied),
            updates: UpdateOrder::new(welcome.region),
            next_update: None,
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
        self.inputs.unacked()
    }

    /// Inputs kept because they are not durable yet (applied or not).
    #[must_use]
    pub fn kept(&self) -> usize {
        self.inputs.kept.len()
    }

    /// The last input the region holds in state that survives the loss of its host.
    #[must_use]
    pub fn durable(&self) -> u64 {
        self.inputs.durable
    }

    /// The token that resumes this session ([`Client::resume`] presents it): from the welcome, a
    /// crossing, or the gateway's latest refresh (every third of its resume grace).
    #[must_use]
    pub fn resume_token(&self) -> String {
        self.shared.lock().map(|shared| shared.resume_token.clone()).unwrap_or_default()
    }

    /// The last input the region acknowledged.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.inputs.acked
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

    /// Sends one input (kept until durable); returns its sequence number.
    pub async fn send_input(&mut self, payload: Vec<u8>) -> Result<u64, ClientError> {
        self.queue_resend()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inputs.kept.push_back((seq, payload.clone()));
        self.queue(&ClientFrame::Input { seq, payload })?;
        self.drain().await?;
        Ok(seq)
    }

    /// Queues every kept input again if a failover asked for it, after saying which inputs the
    /// client no longer has if the region's updates show it lacks them.
    fn queue_resend(&mut self) -> Result<(), ClientError> {
        if let Some(through) = self.inputs.take_skip() {
            self.queue(&ClientFrame::Skip { through })?;
        }
        // One copy of the kept inputs at a time: while an earlier one still waits in the outbox
        // (the stream is full), it carries them, and every input sent since follows it; the
        // resend stays due and goes once the outbox is written. A region waiting at a gap asked
        // every half second, and a copy per ask piled up faster than the stream took them.
        if !self.outbox.is_empty() {
            return Ok(());
        }
        for (seq, payload) in self.inputs.take_resend() {
            self.queue(&ClientFrame::Input { seq, payload })?;
        }
        Ok(())
    }

    /// Sends raw bytes on the reliable stream (tests of the gateway's defences use it).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await.map_err(|error| ClientError::Connection(error.to_string()))
    }

    /// Sends a keep-alive; the answer is an [`Event::Pong`].
    pub async fn ping(&mut self, nonce: u64) -> Result<(), ClientError> {
        self.queue(&ClientFrame::Ping { nonce })?;
        self.drain().await
    }

    /// Adds `frame` to the outbox (whole, or not at all).
    fn queue(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = baton_wire::player::encode(frame).map_err(|error| ClientError::Protocol(error.to_string()))?;
        self.outbox.extend_from_slice(&bytes);
        Ok(())
    }

    /// Writes to the stream what it takes now, without waiting (the rest stays in the outbox).
    fn drain_now(&mut self) -> Result<(), ClientError> {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        while !self.outbox.is_empty() {
            let polled = {
                let write = std::pin::pin!(self.send.write(&self.outbox));
                std::future::Future::poll(write, &mut context)
            };
            match polled {
                std::task::Poll::Ready(Ok(written)) => {
                    self.outbox.drain(..written);
                }
                std::task::Poll::Ready(Err(error)) => return Err(ClientError::Connection(error.to_string())),
                std::task::Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Writes the outbox to the stream. Cancel-safe: what a dropped call did not write stays in
    /// the outbox, in order, for the next call.
    async fn drain(&mut self) -> Result<(), ClientError> {
        while !self.outbox.is_empty() {
            let written =
                self.send.write(&self.outbox).await.map_err(|error| ClientError::Connection(error.to_string()))?;
            self.outbox.drain(..written);
        }
        Ok(())
    }

    /// The next event; `None` once the session's connection is gone and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(update) = self.next_update.take() {
                return Some(Event::Update(update));
            }
            let event = if self.datagrams_open {
                // Reliable events first (`UpdateOrder` sorts out updates that overtake a region
                // change). Both branches are cancel-safe.
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
                self.resend_now();
                return Some(event);
            }
        }
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(update) = self.next_update.take() {
                return Some(Event::Update(update));
            }
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
                            continue;
                        }
                        std::task::Poll::Pending => return None,
                    }
                }
                Err(_) => return None,
            };
            if let Some(event) = self.observe(event) {
                self.resend_now();
                return Some(event);
            }
        }
    }

    /// Sends what an event asked for again (kept inputs after a failover or a lost input),
    /// without waiting: the event is taken already, and a caller may drop `next_event` at any
    /// await; what the stream does not take now goes with the next send.
    fn resend_now(&mut self) {
        let queued = self.queue_resend();
        if queued.is_err() || self.drain_now().is_err() {
            // The connection is gone; its closing comes as the next event, and a resume sends
            // what the region lacks.
            tracing::debug!("could not send kept inputs again");
        }
    }

    fn observe(&mut self, event: Event) -> Option<Event> {
        match event {
            Event::Update(update) => {
                let region = self.region();
                let update = self.updates.handle_update(update, region)?;
                self.inputs.acknowledge(update.last_applied, update.durable);
                Some(Event::Update(update))
            }
            Event::RegionChanged { region } => {
                // Handed out right after this event, as it is (it was checked here).
                if let Some(early) = self.updates.handle_region_changed(region) {
                    self.inputs.acknowledge(early.last_applied, early.durable);
                    self.next_update = Some(early);
                }
                Some(Event::RegionChanged { region })
            }
            Event::InputsAskedAgain { region } => {
                // An input was lost on its way; the region stands as it was.
                self.inputs.handle_resend_asked();
                Some(Event::InputsAskedAgain { region })
            }
            Event::Recovered { region } => {
                // Its ticks start again from the restored one.
                self.inputs.handle_recovered();
                self.updates.handle_recovered(region);
                Some(Event::Recovered { region })
            }
            other => Some(other),
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
        // The old stream's frames stay with it: the inputs among them are kept and sent again
        // below, a skip is worked out again from the welcome, a ping is not answered.
        self.outbox.clear();
        self.events = events;
        self.datagrams_open = true;
        self.shared = shared;
        self.options = options;
        self.updates = UpdateOrder::new(welcome.region);
        self.next_update = None;
        let resend = self.inputs.handle_welcome(welcome.last_applied);
        if let Some(through) = self.inputs.take_skip() {
            self.queue(&ClientFrame::Skip { through })?;
        }
        for (seq, payload) in resend {
            self.queue(&ClientFrame::Input { seq, payload })?;
        }
        self.drain().await
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

/// A player's inputs from sending until durable: which were applied, which survive the loss of
/// the region's host, and which to send again after a resume or a failover. No I/O.
#[derive(Debug)]
struct InputLog {
    /// Every input after `durable` (and at most [`MAX_KEPT`] applied ones), in order.
    kept: VecDeque<(u64, Vec<u8>)>,
    /// The last input the region applied, as far as its updates said.
    acked: u64,
    /// The last input held in state that survives the loss of the region's host.
    durable: u64,
    /// Kept inputs after this number are due to go again, before anything else is: every kept
    /// one after a failover (0), only those not acknowledged applied when a region waits at a
    /// gap (`acked`).
    resend_after: Option<u64>,
    /// What was acknowledged applied when a region last asked for inputs again, and how many
    /// asks in a row found it so.
    asked_at_acked: Option<(u64, u32)>,
    /// The resend waits for the restored region's first update: if it lacks inputs the client
    /// no longer keeps, the `Skip` must reach it first (inputs behind a gap are bounded there).
    resend_held: bool,
    /// The newest input no longer kept (dropped as durable, or applied beyond [`MAX_KEPT`]).
    forgotten: u64,
    /// Updates in a row whose region applied less than `forgotten` (restored from older state).
    gap_updates: u32,
    /// A `Skip` through `forgotten` is due.
    skip_pending: bool,
}

/// While a region's updates show it lacks inputs the client no longer has, a `Skip` goes once,
/// then again every this many updates (one that was lost, or reached an owner about to change).
const SKIP_EVERY_UPDATES: u32 = 30;

impl InputLog {
    fn new(last_applied: u64) -> InputLog {
        InputLog {
            kept: VecDeque::new(),
            acked: last_applied,
            durable: last_applied,
            resend_after: None,
            asked_at_acked: None,
            resend_held: false,
            forgotten: last_applied,
            gap_updates: 0,
            skip_pending: false,
        }
    }

    /// Inputs sent and not applied yet.
    fn unacked(&self) -> usize {
        self.kept.len() - self.kept.partition_point(|(seq, _)| *seq <= self.acked)
    }

    /// An update said what the region applied and what is durable.
    fn acknowledge(&mut self, last_applied: u64, durable: u64) {
        self.note_applied(last_applied);
        self.resend_held = false;
        self.acked = self.acked.max(last_applied);
        self.durable = self.durable.max(durable.min(last_applied));
        while let Some((seq, _)) = self.kept.front() {
            let applied_beyond_limit = self.kept.len() > MAX_KEPT && *seq <= self.acked;
            if *seq > self.durable && !applied_beyond_limit {
                break;
            }
            self.forgotten = self.forgotten.max(*seq);
            self.kept.pop_front();
        }
    }

    /// The region says it applied up to `last_applied`: below what the client no longer has, it
    /// will wait for those inputs for ever unless told they are gone.
    fn note_applied(&mut self, last_applied: u64) {
        if last_applied >= self.forgotten {
            self.gap_updates = 0;
            return;
        }
        if self.gap_updates.is_multiple_of(SKIP_EVERY_UPDATES) {
            self.skip_pending = true;
            // What is kept goes again after the skip: inputs that waited behind the gap may
            // have been refused there.
            self.resend_after = Some(0);
        }
        self.gap_updates = self.gap_updates.wrapping_add(1);
    }

    /// The `Skip` to send now, if one is due: through the newest input no longer kept.
    fn take_skip(&mut self) -> Option<u64> {
        std::mem::take(&mut self.skip_pending).then_some(self.forgotten)
    }

    /// The region waits for an input that was lost on its way: every kept input it has not
    /// acknowledged applied goes again (those it has queued are dropped there by number; nothing
    /// was restored, so what it applied stands). The applied ones it is not sent again: a client
    /// keeps inputs until they are durable, which can be hundreds, and a copy of them all per ask
    /// fed the storm the soak found.
    /// A second ask with nothing acknowledged since covers a resend lost or dropped on its way
    /// (the region waits at its gap, so what it acknowledges does not move) and sends the same;
    /// from the third on, every kept input goes, in case the gap is below what the client holds
    /// as applied (no known path leads there; the region's asks back off, protocol.md §9).
    fn handle_resend_asked(&mut self) {
        let asks = match self.asked_at_acked {
            Some((acked, asks)) if acked == self.acked => asks + 1,
            _ => 1,
        };
        self.asked_at_acked = Some((self.acked, asks));
        let after = if asks >= 3 { 0 } else { self.acked };
        self.resend_after = Some(self.resend_after.map_or(after, |pending| pending.min(after)));
    }

    /// A new owner restored the region from saved state holding `durable` or later: what was
    /// applied after that may have to be applied again, so every kept input is sent again.
    fn handle_recovered(&mut self) {
        self.acked = self.durable;
        self.resend_after = Some(0);
        self.resend_held = true;
    }

    /// The inputs to send again now (once per failover or ask).
    fn take_resend(&mut self) -> Vec<(u64, Vec<u8>)> {
        if self.resend_held {
            return Vec::new();
        }
        let Some(after) = self.resend_after.take() else { return Vec::new() };
        self.kept.iter().filter(|(seq, _)| *seq > after).cloned().collect()
    }

    /// A resumed session's welcome says what the region applied (after a failover that can be
    /// less than acknowledged before): everything kept after it is sent again.
    fn handle_welcome(&mut self, last_applied: u64) -> Vec<(u64, Vec<u8>)> {
        self.gap_updates = 0;
        self.note_applied(last_applied);
        self.acked = last_applied;
        self.resend_after = None;
        self.resend_held = false;
        self.kept.iter().filter(|(seq, _)| *seq > last_applied).cloned().collect()
    }
}

/// Which state updates are news to the player, as its avatar moves between regions.
///
/// Updates are datagrams and come in any order; the word that the avatar entered another region
/// comes on the reliable stream and can be overtaken by datagrams, or share a packet with them. So:
/// an update older than the newest one of its region is dropped; an update from the region being
/// entered that comes before the word is held and handed out right after it; the last view of the
/// region just left (sent in the tick the avatar left) is still handed out after the word, until
/// the new region's first update; anything else from a region the avatar is not in is dropped.
#[derive(Debug)]
struct UpdateOrder {
    /// The region the newest update handed out is from (or the one the avatar entered).
    region: u64,
    /// The tick of the newest update handed out from `region`; 0 before the first.
    tick: u64,
    /// The newest update from a region the avatar is not known to be in yet.
    early: Option<StateUpdate>,
    /// The region left last and the newest tick handed out from it.
    left: Option<(u64, u64)>,
}

impl UpdateOrder {
    fn new(region: u64) -> UpdateOrder {
        UpdateOrder { region, tick: 0, early: None, left: None }
    }

    /// An update arrived; `current` is the region the avatar is in as far as the reliable stream
    /// has said. Returns it if it is news.
    fn handle_update(&mut self, update: StateUpdate, current: u64) -> Option<StateUpdate> {
        if update.region != self.region {
            if self.tick == 0
                && let Some((left, left_tick)) = self.left.as_mut()
                && *left == update.region
                && update.tick > *left_tick
            {
                *left_tick = update.tick;
                return Some(update);
            }
            if update.region != current {
                if self.early.as_ref().is_none_or(|early| early.region != update.region || early.tick < update.tick) {
                    self.early = Some(update);
                }
                return None;
            }
            self.enter(update.region);
        }
        if update.tick <= self.tick {
            return None;
        }
        self.tick = update.tick;
        Some(update)
    }

    /// The avatar is now in `region`: returns an update from it that came before the word.
    fn handle_region_changed(&mut self, region: u64) -> Option<StateUpdate> {
        if region != self.region {
            self.enter(region);
        }
        let early = self.early.take().filter(|early| early.region == region && early.tick > self.tick)?;
        self.tick = early.tick;
        Some(early)
    }

    /// `region` was restored from saved state by a new owner: its ticks start again from an
    /// earlier one, which are news.
    fn handle_recovered(&mut self, region: u64) {
        if region == self.region {
            self.tick = 0;
        }
        if let Some((left, left_tick)) = self.left.as_mut()
            && *left == region
        {
            *left_tick = 0;
        }
    }

    fn enter(&mut self, region: u64) {
        self.left = Some((self.region, self.tick));
        self.region = region;
        self.tick = 0;
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
            Ok(Some(ServerFrame::ResumeToken { resume_token })) => {
                if let Ok(mut shared) = shared.lock() {
                    shared.resume_token = resume_token;
                }
            }
            Ok(Some(ServerFrame::Resend { region })) => {
                let _ = events.send(Event::Recovered { region });
            }
            Ok(Some(ServerFrame::ResendInputs { region })) => {
                let _ = events.send(Event::InputsAskedAgain { region });
            }
            Ok(Some(ServerFrame::RegionUnavailable { region, reason })) => {
                let _ = events.send(Event::RegionUnavailable { region, reason });
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

#[cfg(test)]
mod tests {
    use super::{InputLog, MAX_KEPT, SKIP_EVERY_UPDATES, StateUpdate, UpdateOrder};

    fn seqs(inputs: &[(u64, Vec<u8>)]) -> Vec<u64> {
        inputs.iter().map(|(seq, _)| *seq).collect()
    }

    fn sent(log: &mut InputLog, range: std::ops::RangeInclusive<u64>) {
        for seq in range {
            log.kept.push_back((seq, vec![seq as u8]));
        }
    }

    #[test]
    fn inputs_are_kept_until_durable_and_sent_again_after_a_failover() {
        let mut log = InputLog::new(0);
        sent(&mut log, 1..=10);
        assert_eq!(log.unacked(), 10);
        // Applied up to 8, durable up to 3: 4..=10 are kept, 9 and 10 not applied yet.
        log.acknowledge(8, 3);
        assert_eq!((log.acked, log.durable, log.unacked()), (8, 3, 2));
        assert_eq!(seqs(&log.kept.iter().cloned().collect::<Vec<_>>()), (4..=10).collect::<Vec<_>>());
        // Durable never passes applied, and neither goes back on a late update.
        log.acknowledge(5, 9);
        assert_eq!((log.acked, log.durable), (8, 5));
        assert!(log.take_resend().is_empty(), "nothing to send again without a failover");
        // A failover: the new owner holds state of input 5 or later; every kept one goes again,
        // once, after its first update (which could have shown a gap to skip first).
        log.handle_recovered();
        assert_eq!(log.acked, 5);
        assert!(log.take_resend().is_empty(), "held until the restored region's first update");
        log.acknowledge(6, 5);
        assert_eq!(log.take_skip(), None);
        assert_eq!(seqs(&log.take_resend()), (6..=10).collect::<Vec<_>>());
        assert!(log.take_resend().is_empty());
        // The new owner's updates move on from what it restored.
        log.acknowledge(10, 10);
        assert_eq!((log.acked, log.durable, log.kept.len(), log.unacked()), (10, 10, 0, 0));
    }

    #[test]
    fn a_resume_sends_again_what_the_region_has_not_applied() {
        let mut log = InputLog::new(0);
        sent(&mut log, 1..=6);
        log.acknowledge(6, 2);
        log.handle_recovered();
        // The connection is lost before the resend; the welcome of the resumed session says
        // the restored region applied up to 4.
        assert_eq!(seqs(&log.handle_welcome(4)), vec![5, 6]);
        assert!(log.take_resend().is_empty(), "the welcome's resend replaces the failover's");
        assert_eq!((log.acked, log.unacked()), (4, 2));
    }

    #[test]
    fn a_region_asking_for_inputs_again_gets_every_kept_one_it_has_not_applied_at_once_and_nothing_else_changes() {
        let mut log = InputLog::new(0);
        sent(&mut log, 1..=6);
        log.acknowledge(3, 2);
        assert_eq!(seqs(&log.kept.iter().cloned().collect::<Vec<_>>()), vec![3, 4, 5, 6]);
        log.handle_resend_asked();
        assert_eq!(seqs(&log.take_resend()), vec![4, 5, 6], "no wait for an update: the region was not restored");
        assert!(log.take_resend().is_empty(), "once per request");
        assert_eq!((log.acked, log.durable, log.unacked()), (3, 2, 3), "what was acknowledged stands");
        assert_eq!(log.take_skip(), None);
        // Asked again with nothing acknowledged since: the first resend was lost on its way, the
        // same goes again; a third time, the gap may be below what the client holds as applied,
        // so every kept input goes; once something is acknowledged, only the rest again.
        log.handle_resend_asked();
        assert_eq!(seqs(&log.take_resend()), vec![4, 5, 6]);
        log.handle_resend_asked();
        assert_eq!(seqs(&log.take_resend()), vec![3, 4, 5, 6]);
        log.acknowledge(4, 2);
        log.handle_resend_asked();
        assert_eq!(seqs(&log.take_resend()), vec![5, 6]);
        // An ask and then a failover before the resend went: the failover's whole resend wins.
        log.handle_resend_asked();
        log.handle_recovered();
        log.acknowledge(2, 2);
        assert_eq!(seqs(&log.take_resend()), vec![3, 4, 5, 6]);
        // A failover and then an ask before the restored region's first update: still everything.
        log.acknowledge(6, 2);
        log.handle_recovered();
        log.handle_resend_asked();
        log.acknowledge(2, 2);
        assert_eq!(seqs(&log.take_resend()), vec![3, 4, 5, 6]);
    }

    #[test]
    fn a_region_restored_from_before_what_was_durable_is_told_to_skip_what_the_client_dropped() {
        let mut log = InputLog::new(0);
        sent(&mut log, 1..=10);
        // The standby held up to 8; the owner applied 10.
        log.acknowledge(10, 8);
        assert_eq!(log.take_skip(), None, "nothing missing while the region is ahead");
        // Both lost; restored from a checkpoint at input 3: 4..=8 are gone. The restored region's
        // first update shows it: the skip goes first, then 9 and 10 again.
        log.handle_recovered();
        assert!(log.take_resend().is_empty());
        log.acknowledge(3, 3);
        assert_eq!(log.take_skip(), Some(8));
        assert_eq!(seqs(&log.take_resend()), vec![9, 10]);
        assert_eq!(log.take_skip(), None, "once");
        // Updates still showing the gap (sent before the skip arrived) ask again only every so
        // often, each time with what is kept behind it.
        for _ in 1..SKIP_EVERY_UPDATES {
            log.acknowledge(3, 3);
            assert_eq!(log.take_skip(), None);
            assert!(log.take_resend().is_empty());
        }
        log.acknowledge(3, 3);
        assert_eq!(log.take_skip(), Some(8), "the skip was lost: again");
        assert_eq!(seqs(&log.take_resend()), vec![9, 10]);
        // The region skipped and applied what was sent again.
        log.acknowledge(10, 10);
        assert_eq!(log.take_skip(), None);
        assert!(log.kept.is_empty());
        // A resumed session whose welcome shows the gap skips before sending again.
        let mut log = InputLog::new(0);
        sent(&mut log, 1..=6);
        log.acknowledge(6, 4);
        assert_eq!(seqs(&log.handle_welcome(2)), vec![5, 6]);
        assert_eq!(log.take_skip(), Some(4));
        // Applied inputs dropped past the limit count as no longer kept.
        let mut log = InputLog::new(0);
        let total = MAX_KEPT as u64 + 10;
        sent(&mut log, 1..=total);
        log.acknowledge(total - 5, 0);
        log.acknowledge(4, 0);
        assert_eq!(log.take_skip(), Some(10));
    }

    #[test]
    fn a_restored_region_s_earlier_ticks_are_news_after_the_failover() {
        let mut order = UpdateOrder::new(1);
        assert!(order.handle_update(update(1, 100), 1).is_some());
        assert!(order.handle_update(update(1, 80), 1).is_none(), "older than the newest: dropped");
        order.handle_recovered(2);
        assert!(order.handle_update(update(1, 81), 1).is_none(), "another region's failover changes nothing");
        order.handle_recovered(1);
        assert_eq!(order.handle_update(update(1, 80), 1).map(|update| update.tick), Some(80));
        assert!(order.handle_update(update(1, 79), 1).is_none());
    }

    #[test]
    fn applied_inputs_kept_past_the_limit_are_dropped_oldest_first() {
        let mut log = InputLog::new(0);
        let total = MAX_KEPT as u64 + 10;
        sent(&mut log, 1..=total);
        // Nothing durable (a region that fell behind): the applied ones beyond the limit go,
        // the unapplied ones stay whatever their number.
        log.acknowledge(total - 5, 0);
        assert_eq!(log.kept.len(), MAX_KEPT);
        assert_eq!(log.kept.front().map(|(seq, _)| *seq), Some(11));
        assert_eq!(log.unacked(), 5);
    }

    fn update(region: u64, tick: u64) -> StateUpdate {
        StateUpdate { region, tick, last_applied: tick, durable: tick, payload: Vec::new() }
    }

    enum Step {
        /// An update arrives while the reliable stream has said the avatar is in `current`.
        Update { region: u64, tick: u64, current: u64 },
        /// The word that the avatar entered `region`.
        Changed(u64),
        /// `region` came back from saved state after a failover.
        Recovered(u64),
    }

    /// Runs the steps from region 1 and returns what was handed out: `(region, tick)`.
    fn check(steps: &[Step], expected: &[(u64, u64)]) {
        let mut order = UpdateOrder::new(1);
        let mut out = Vec::new();
        for step in steps {
            let handed = match step {
                Step::Update { region, tick, current } => order.handle_update(update(*region, *tick), *current),
                Step::Changed(region) => order.handle_region_changed(*region),
                Step::Recovered(region) => {
                    order.handle_recovered(*region);
                    None
                }
            };
            out.extend(handed.map(|update| (update.region, update.tick)));
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn older_and_repeated_updates_of_a_region_are_dropped() {
        use Step::Update;
        check(
            &[
                Update { region: 1, tick: 5, current: 1 },
                Update { region: 1, tick: 4, current: 1 },
                Update { region: 1, tick: 5, current: 1 },
                Update { region: 1, tick: 6, current: 1 },
            ],
            &[(1, 5), (1, 6)],
        );
    }

    #[test]
    fn the_last_view_of_the_region_left_still_counts_after_the_word_of_the_arrival() {
        use Step::{Changed, Update};
        // Region 1's update of the tick the avatar left shares a packet with the word, and the
        // word is read first.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Changed(2),
                Update { region: 1, tick: 11, current: 2 },
                Update { region: 2, tick: 40, current: 2 },
                // Once region 2 has spoken, region 1 is history.
                Update { region: 1, tick: 12, current: 2 },
                Update { region: 2, tick: 41, current: 2 },
            ],
            &[(1, 10), (1, 11), (2, 40), (2, 41)],
        );
    }

    #[test]
    fn an_update_of_the_region_entered_that_overtakes_the_word_is_held_until_it() {
        use Step::{Changed, Update};
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 2, tick: 40, current: 1 },
                Update { region: 2, tick: 41, current: 1 },
                Changed(2),
                Update { region: 2, tick: 41, current: 2 },
                Update { region: 2, tick: 42, current: 2 },
            ],
            &[(1, 10), (2, 41), (2, 42)],
        );
    }

    #[test]
    fn an_update_of_a_region_entered_comes_through_once_the_stream_has_said_so() {
        use Step::{Changed, Update};
        // The reliable reader has already recorded the new region; its event comes later.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 2, tick: 40, current: 2 },
                Changed(2),
                Update { region: 1, tick: 11, current: 2 },
                Update { region: 2, tick: 41, current: 2 },
            ],
            &[(1, 10), (2, 40), (2, 41)],
        );
    }

    #[test]
    fn updates_of_a_region_the_avatar_is_not_entering_are_never_handed_out() {
        use Step::{Changed, Update};
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 3, tick: 70, current: 1 },
                Changed(2),
                Update { region: 3, tick: 71, current: 2 },
                Update { region: 2, tick: 40, current: 2 },
            ],
            &[(1, 10), (2, 40)],
        );
    }

    #[test]
    fn each_update_is_handed_out_once_whatever_order_it_comes_in() {
        use Step::{Changed, Recovered, Update};
        // The held update of the region entered is handed out at the word, and only there.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 2, tick: 41, current: 1 },
                Update { region: 2, tick: 40, current: 1 },
                Changed(2),
                Update { region: 2, tick: 42, current: 2 },
            ],
            &[(1, 10), (2, 41), (2, 42)],
        );
        // An update of the region entered held before the word, and the same or an older tick
        // of it handed out since (the stream said so first): the word hands out nothing again.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 2, tick: 40, current: 1 },
                Update { region: 2, tick: 40, current: 2 },
                Changed(2),
            ],
            &[(1, 10), (2, 40)],
        );
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Update { region: 2, tick: 39, current: 1 },
                Update { region: 2, tick: 40, current: 2 },
                Changed(2),
            ],
            &[(1, 10), (2, 40)],
        );
        // The last view of the region left comes once, however often it arrives; another
        // region's failover does not make the left region's old ticks news again.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Changed(2),
                Update { region: 1, tick: 11, current: 2 },
                Update { region: 1, tick: 11, current: 2 },
                Recovered(3),
                Update { region: 1, tick: 5, current: 2 },
            ],
            &[(1, 10), (1, 11)],
        );
        // The left region's own failover does.
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Changed(2),
                Update { region: 1, tick: 11, current: 2 },
                Recovered(1),
                Update { region: 1, tick: 5, current: 2 },
            ],
            &[(1, 10), (1, 11), (1, 5)],
        );
    }

    #[test]
    fn crossing_back_and_forth_keeps_each_region_in_order() {
        use Step::{Changed, Update};
        check(
            &[
                Update { region: 1, tick: 10, current: 1 },
                Changed(2),
                Update { region: 2, tick: 40, current: 2 },
                Changed(1),
                Update { region: 2, tick: 41, current: 1 },
                Update { region: 1, tick: 12, current: 1 },
                Update { region: 2, tick: 42, current: 1 },
            ],
            &[(1, 10), (2, 40), (2, 41), (1, 12)],
        );
    }
}
