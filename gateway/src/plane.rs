//! The players' QUIC plane: every player connection of the gateway, driven by one task over
//! `quinn-proto` instead of a task per connection.
//!
//! quinn's own driver gives each connection a task: every packet in wakes the endpoint's task,
//! which wakes the connection's, which wakes the task reading its stream; every update out wakes
//! the connection's task to send one packet. At 1,000 players that bookkeeping was about a quarter
//! of the gateway's CPU (docs/benchmarks.md, "where each datagram's microseconds go"). Here one
//! task owns the players' socket, the `quinn_proto::Endpoint` and every connection: it reads
//! datagrams in batches, hands each to its connection, collects the frames players send and
//! passes them to their sessions, takes the gateway's updates and frames as commands, and sends
//! what a pass produced before waiting again.
//!
//! [`PlaneCore`] is the plane without sockets or a clock: datagrams, commands and time go in;
//! datagrams to send, new players and their frames come out (the frames of a welcomed player go
//! to its session's [`FrameHandler`], which the core calls). [`run`] is the driver: a socket
//! (batched receives through quinn-udp) and a timer around the core, on a thread of its own.
//! State updates are datagrams that drop the oldest queued when the connection's buffer is full
//! (latest state wins) and go on the reliable stream when the peer takes no datagrams; everything
//! else is on the player's one bidirectional stream, in order. A player's first frame (its Hello)
//! goes to its session's task; the plane holds the rest, reading no further (QUIC's flow control
//! holds the client back), until the welcomed session installs its [`FrameHandler`], which takes
//! them on the plane's thread. What changed from quinn's driver: a connection stops counting
//! towards the limit when it is closed, not when its task ends; the Hello timeout runs from the
//! handshake; a client that stops reading its stream while frames for it pile up
//! ([`MAX_UNSENT_RELIABLE`]) is closed; and the gateway's updates wait in one queue of commands
//! (unbounded: drop-oldest applies per connection once the plane takes them).

use std::collections::{BTreeSet, VecDeque};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use baton_wire::player::{ClientFrame, CloseCode, Datagram, FrameReader, ServerFrame, StateUpdate};
use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, UdpSocketState};
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint, EndpointConfig, Event, SendDatagramError,
    ServerConfig, StreamEvent, StreamId, VarInt, WriteError,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::service::Counters;

/// Bytes read from one player's stream at most in one read; a pass reads at most
/// [`READS_PER_PASS`] times per connection, so one client's flood of small frames is handled a
/// slice at a time between everyone else's packets.
pub(crate) const BYTES_PER_READ: usize = 16 * 1024;

/// Reads of one connection's stream in one pass, at most.
const READS_PER_PASS: usize = 4;

/// Bytes of reliable frames one player's stream may hold unsent (a client that stopped reading
/// its stream) before the plane closes the connection.
pub(crate) const MAX_UNSENT_RELIABLE: usize = 1 << 20;

/// One connection of the plane: its handle, and a serial that tells it from a later connection
/// given the same handle (`quinn-proto` reuses the handles of closed connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    handle: usize,
    serial: u64,
}

/// What the plane tells a player's session.
#[derive(Debug, PartialEq)]
pub(crate) enum PlayerEvent {
    /// A frame the player sent, in order: the first only, until the session gives the plane a
    /// [`FrameHandler`] for the rest (the plane holds them meanwhile).
    Frame(ClientFrame),
    /// The player's stream did not hold a valid frame; nothing more is read from it.
    Malformed(String),
    /// The session's [`FrameHandler`] refused a frame, with the code and reason to close the
    /// connection with; nothing more is read from it.
    Refused(CloseCode, String),
}

/// Takes a welcomed player's frames on the plane's thread as they come off the connection, in
/// order (no hop through the session's task); an error ends the session with that close code.
pub(crate) trait FrameHandler: Send {
    /// One frame of the player.
    fn handle(&mut self, frame: ClientFrame) -> Result<(), (CloseCode, String)>;
}

impl std::fmt::Debug for dyn FrameHandler {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FrameHandler")
    }
}

/// A player connection whose handshake completed: its session reads `events` (which ends when the
/// player's stream ends or the connection is lost) and answers through the plane.
#[derive(Debug)]
pub(crate) struct NewPlayer {
    /// The connection.
    pub(crate) id: ConnId,
    /// The player's address at the handshake.
    pub(crate) remote: SocketAddr,
    /// The player's first frame, then why its session ends if the plane knows (at most two
    /// events: the channel needs no bound).
    pub(crate) events: UnboundedReceiver<PlayerEvent>,
}

/// What the rest of the gateway asks of the plane.
#[derive(Debug)]
pub(crate) enum Command {
    /// A state update: a datagram, or a frame on the stream when too large for one.
    Update { to: ConnId, update: StateUpdate },
    /// A neighbour's border view (an encoded datagram), sent only if it fits in one.
    Neighbour { to: ConnId, datagram: Bytes },
    /// A frame on the player's stream.
    Reliable { to: ConnId, frame: ServerFrame },
    /// Closes the connection with `code` and `reason`.
    Close { to: ConnId, code: CloseCode, reason: String },
    /// The player's frames after its first go to `handler`, on the plane's thread.
    Serve { to: ConnId, handler: Box<dyn FrameHandler> },
    /// Closes every connection and refuses new ones.
    Shutdown,
}

/// How the gateway talks to the plane (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct PlaneHandle {
    commands: UnboundedSender<Command>,
    local: SocketAddr,
}

impl PlaneHandle {
    /// Queues `command` (dropped once the plane has stopped).
    pub(crate) fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Where players connect.
    pub(crate) fn local_address(&self) -> SocketAddr {
        self.local
    }
}

/// A datagram to send: `range` of [`Output::buffer`], to `destination`.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) destination: SocketAddr,
    pub(crate) ecn: Option<EcnCodepoint>,
    pub(crate) segment_size: Option<usize>,
    pub(crate) src_ip: Option<IpAddr>,
    pub(crate) range: std::ops::Range<usize>,
}

/// What a pass of the core produced.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Datagrams to send, in order.
    pub(crate) transmits: Vec<Outgoing>,
    /// Their bytes.
    pub(crate) buffer: Vec<u8>,
    /// Players whose handshake completed.
    pub(crate) new_players: Vec<NewPlayer>,
}

impl Output {
    /// Forgets what was sent.
    pub(crate) fn clear(&mut self) {
        self.transmits.clear();
        self.buffer.clear();
    }
}

struct Conn {
    quic: Connection,
    serial: u64,
    /// The player's stream (the first bidirectional stream it opens).
    stream: Option<StreamId>,
    reader: FrameReader,
    /// Encoded frames not yet taken by the stream.
    unsent: Vec<u8>,
    events: Option<UnboundedSender<PlayerEvent>>,
    /// Takes the frames once the session installed it.
    handler: Option<Box<dyn FrameHandler>>,
    /// The session has its first frame; later ones wait for `handler`.
    first_taken: bool,
    /// Frames read but not yet taken by a full `events`.
    waiting: VecDeque<PlayerEvent>,
    /// Nothing more is read from the stream (it ended, or held a malformed frame).
    read_done: bool,
    /// The stream may hold data not yet read (it said so, and no read since found it empty).
    readable: bool,
    /// Counted among the live connections (its handshake completed and it is not lost).
    live: bool,
    dirty: bool,
}

/// The plane without sockets or a clock (see the module's documentation).
pub(crate) struct PlaneCore {
    endpoint: Endpoint,
    /// Indexed by `ConnectionHandle.0`. Boxed: a `quinn_proto::Connection` is kilobytes, and a
    /// connection is taken out and put back on every pass.
    conns: Vec<Option<Box<Conn>>>,
    next_serial: u64,
    /// Each connection's armed timeout, and the same in time order. (A connection's timeout moves
    /// with nearly every packet; a heap with lazy deletion would hold one entry per move until its
    /// time came, hundreds of thousands with the idle timeout.)
    timeouts: Vec<Option<Instant>>,
    timers: BTreeSet<(Instant, usize)>,
    dirty: Vec<usize>,
    /// Connections with more to read than a pass reads, for the next pass.
    more: Vec<usize>,
    counters: Arc<Counters>,
    max_connections: usize,
    live: usize,
    shut_down: bool,
    max_segments: usize,
    scratch: Vec<u8>,
}

impl PlaneCore {
    /// A plane accepting players with `server` (TLS, transport), at most `max_connections` at once;
    /// it counts what it does in `counters`. `max_segments`: datagrams one transmit may carry
    /// (the socket's GSO limit; 1 without it).
    pub(crate) fn new(
        server: Arc<ServerConfig>,
        max_connections: usize,
        counters: Arc<Counters>,
        max_segments: usize,
    ) -> PlaneCore {
        PlaneCore {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), Some(server), true, None),
            conns: Vec::new(),
            next_serial: 0,
            timeouts: Vec::new(),
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            more: Vec::new(),
            counters,
            max_connections,
            live: 0,
            shut_down: false,
            max_segments: max_segments.max(1),
            scratch: Vec::new(),
        }
    }

    /// Connections open (handshaking, live or closing).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.conns.iter().flatten().count()
    }

    /// A datagram that came in from `remote`.
    pub(crate) fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
        out: &mut Output,
    ) {
        let mut response = std::mem::take(&mut self.scratch);
        response.clear();
        match self.endpoint.handle(now, remote, local_ip, ecn, data, &mut response) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(Some(conn)) = self.conns.get_mut(handle.0) {
                    conn.quic.handle_event(event);
                    self.mark(handle.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.shut_down {
                    let transmit = self.endpoint.refuse(incoming, &mut response);
                    push_transmit(out, &transmit, &response);
                } else {
                    match self.endpoint.accept(incoming, now, &mut response, None) {
                        Ok((handle, quic)) => self.insert(handle, quic),
                        Err(error) => {
                            tracing::debug!(cause = %error.cause, "a player handshake failed");
                            if let Some(transmit) = error.response {
                                push_transmit(out, &transmit, &response);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => push_transmit(out, &transmit, &response),
            None => {}
        }
        self.scratch = response;
    }

    /// Carries out `command`.
    pub(crate) fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Update { to, update } => {
                let Some(conn) = conn_of(&mut self.conns, to) else { return };
                let datagram = Datagram::State(update);
                let Ok(bytes) = datagram.encode() else { return };
                match conn.quic.datagrams().send(bytes.into(), true) {
                    Ok(()) => {
                        self.counters.updates_datagram.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(
                        SendDatagramError::TooLarge
                        | SendDatagramError::UnsupportedByPeer
                        | SendDatagramError::Disabled,
                    ) => {
                        if let Datagram::State(update) = datagram {
                            self.counters.updates_reliable.fetch_add(1, Ordering::Relaxed);
                            queue_frame(conn, &mut self.live, &self.counters, now, &ServerFrame::State(update));
                        }
                    }
                    // Only sent without dropping the oldest, which the plane never does.
                    Err(SendDatagramError::Blocked(_)) => {}
                }
                self.mark(to.handle);
            }
            Command::Neighbour { to, datagram } => {
                let Some(conn) = conn_of(&mut self.conns, to) else { return };
                let fits = conn.quic.datagrams().max_size().is_some_and(|max| datagram.len() <= max);
                if fits && conn.quic.datagrams().send(datagram, true).is_ok() {
                    self.counters.neighbour_views.fetch_add(1, Ordering::Relaxed);
                }
                self.mark(to.handle);
            }
            Command::Serve { to, handler } => {
                let Some(conn) = conn_of(&mut self.conns, to) else { return };
                conn.handler = Some(handler);
                self.mark(to.handle);
            }
            Command::Reliable { to, frame } => {
                let Some(conn) = conn_of(&mut self.conns, to) else { return };
                queue_frame(conn, &mut self.live, &self.counters, now, &frame);
                self.mark(to.handle);
            }
            Command::Close { to, code, reason } => {
                let Some(conn) = conn_of(&mut self.conns, to) else { return };
                close(conn, &mut self.live, now, code, Bytes::from(reason.into_bytes()));
                self.mark(to.handle);
            }
            Command::Shutdown => {
                self.shut_down = true;
                for handle in 0..self.conns.len() {
                    if let Some(conn) = self.conns[handle].as_mut() {
                        let reason = Bytes::from_static(b"gateway shutting down");
                        close(conn, &mut self.live, now, CloseCode::Shutdown, reason);
                        self.mark(handle);
                    }
                }
            }
        }
    }

    /// When the plane has something to do next without input, if ever (now, when a connection
    /// has more to read).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if !self.more.is_empty() {
            return Some(Instant::now());
        }
        self.timers.first().map(|(at, _)| *at)
    }

    /// How many datagrams one transmit may carry (the socket's GSO limit, which quinn-udp lowers
    /// to 1 when the network card turns GSO down).
    pub(crate) fn set_max_segments(&mut self, segments: usize) {
        self.max_segments = segments.max(1);
    }

    /// Fires the connections' timers that are due, and lets the connections with more to read
    /// read on.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for handle in std::mem::take(&mut self.more) {
            self.mark(handle);
        }
        while let Some(&(at, handle)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.timeouts[handle] = None;
            if let Some(Some(conn)) = self.conns.get_mut(handle) {
                conn.quic.handle_timeout(now);
                self.mark(handle);
            }
        }
    }

    /// Lets every connection that had something happen talk to the endpoint, hand its frames to
    /// its session and send what it has; re-arms its timer.
    pub(crate) fn drive(&mut self, now: Instant, out: &mut Output) {
        while let Some(handle) = self.dirty.pop() {
            let Some(mut conn) = self.conns.get_mut(handle).and_then(Option::take) else { continue };
            conn.dirty = false;
            // A drained connection is forgotten (it stopped counting as live when it was lost
            // or closed, which comes first).
            if self.drive_one(handle, &mut conn, now, out) {
                self.set_timeout(handle, None);
                continue;
            }
            self.set_timeout(handle, conn.quic.poll_timeout());
            let unread = conn.readable && !conn.read_done && conn.handler.is_some() && conn.waiting.is_empty();
            self.conns[handle] = Some(conn);
            if unread {
                // This pass's reads were used up: the next pass reads on.
                self.more.push(handle);
            }
        }
    }

    /// One connection's pass; true once it is drained (forgotten by the endpoint).
    fn drive_one(&mut self, handle: usize, conn: &mut Conn, now: Instant, out: &mut Output) -> bool {
        let mut drained = false;
        let mut reads = READS_PER_PASS;
        loop {
            let mut again = false;
            while let Some(event) = conn.quic.poll_endpoint_events() {
                drained |= event.is_drained();
                if let Some(reply) = self.endpoint.handle_event(ConnectionHandle(handle), event) {
                    conn.quic.handle_event(reply);
                    again = true;
                }
            }
            while let Some(event) = conn.quic.poll() {
                again |= self.handle_app_event(handle, conn, now, event, out);
            }
            again |= Self::deliver(conn, &mut reads);
            flush_unsent(conn);
            // quinn-proto builds each transmit in an empty buffer.
            let mut buffer = std::mem::take(&mut self.scratch);
            loop {
                buffer.clear();
                let Some(transmit) = conn.quic.poll_transmit(now, self.max_segments, &mut buffer) else { break };
                push_transmit(out, &transmit, &buffer);
            }
            self.scratch = buffer;
            if drained || !again {
                return drained;
            }
        }
    }

    /// Handles one of the connection's events; true if it may have more to do.
    fn handle_app_event(
        &mut self,
        handle: usize,
        conn: &mut Conn,
        now: Instant,
        event: Event,
        out: &mut Output,
    ) -> bool {
        match event {
            Event::Connected => {
                self.live += 1;
                conn.live = true;
                if self.live > self.max_connections {
                    self.counters.refused_full.fetch_add(1, Ordering::Relaxed);
                    let reason = Bytes::from_static(b"the gateway is at its connection limit");
                    close(conn, &mut self.live, now, CloseCode::Full, reason);
                } else {
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let (sender, events) = tokio::sync::mpsc::unbounded_channel();
                    conn.events = Some(sender);
                    out.new_players.push(NewPlayer {
                        id: ConnId { handle, serial: conn.serial },
                        remote: conn.quic.remote_address(),
                        events,
                    });
                }
                true
            }
            Event::ConnectionLost { reason } => {
                tracing::debug!(%reason, "a player connection ended");
                if conn.live {
                    conn.live = false;
                    self.live -= 1;
                }
                // The session sees its events end.
                conn.events = None;
                conn.handler = None;
                conn.waiting.clear();
                false
            }
            Event::Stream(StreamEvent::Opened { dir }) => {
                while let Some(id) = conn.quic.streams().accept(dir) {
                    if dir == Dir::Bi && conn.stream.is_none() {
                        // A new stream may hold data already.
                        conn.stream = Some(id);
                        conn.readable = true;
                    } else {
                        // One stream per player: any other is refused.
                        let _ = conn.quic.recv_stream(id).stop(VarInt::from_u32(0));
                    }
                }
                true
            }
            Event::Stream(StreamEvent::Readable { id }) if Some(id) == conn.stream => {
                conn.readable = true;
                read_stream(conn)
            }
            Event::Stream(StreamEvent::Writable { id }) if Some(id) == conn.stream => true,
            Event::Stream(StreamEvent::Stopped { id, .. }) if Some(id) == conn.stream => {
                // The player will not read its stream any more: nothing more can go on it.
                conn.unsent.clear();
                false
            }
            Event::DatagramReceived => {
                // Players send no datagrams in this protocol: dropped.
                while conn.quic.datagrams().recv().is_some() {}
                false
            }
            Event::Stream(_) | Event::HandshakeDataReady | Event::DatagramsUnblocked => false,
        }
    }

    /// Hands the frames read to the session (the first) or its handler (the rest); true if it
    /// may read more.
    fn deliver(conn: &mut Conn, reads: &mut usize) -> bool {
        if conn.events.is_none() {
            return false;
        }
        // Frames of the stream's buffer, after those that waited.
        loop {
            if conn.waiting.is_empty() {
                match conn.reader.next_frame::<ClientFrame>() {
                    Ok(Some(frame)) => conn.waiting.push_back(PlayerEvent::Frame(frame)),
                    Ok(None) => break,
                    Err(error) => {
                        conn.waiting.push_back(PlayerEvent::Malformed(error.to_string()));
                        conn.read_done = true;
                        conn.reader = FrameReader::default();
                    }
                }
            }
            let Some(mut event) = conn.waiting.pop_front() else { break };
            if let Some(handler) = conn.handler.as_mut() {
                match event {
                    PlayerEvent::Frame(frame) => {
                        // A bug in one session's handling ends that session, not the plane.
                        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(frame)));
                        match handled {
                            Ok(Ok(())) => continue,
                            Ok(Err((code, reason))) => event = PlayerEvent::Refused(code, reason),
                            Err(_) => {
                                tracing::error!("the gateway failed on a player's frame; closing that connection");
                                event = PlayerEvent::Refused(
                                    CloseCode::Protocol,
                                    "the gateway failed on this frame".into(),
                                );
                            }
                        }
                    }
                    PlayerEvent::Malformed(_) | PlayerEvent::Refused(..) => {}
                }
                // The session ends: it hears why; nothing more is read.
                conn.handler = None;
                conn.read_done = true;
                conn.reader = FrameReader::default();
            } else if conn.first_taken && matches!(event, PlayerEvent::Frame(_)) {
                // Held until the session's handler comes (QUIC's flow control holds the rest).
                conn.waiting.push_front(event);
                return false;
            }
            let Some(events) = conn.events.as_ref() else { return false };
            if events.send(event).is_err() {
                // The session is over; the connection is closed by it.
                conn.waiting.clear();
                conn.events = None;
                return false;
            }
            conn.first_taken = true;
        }
        if conn.read_done && conn.waiting.is_empty() {
            // The stream ended (or went bad) and every frame before it was taken.
            conn.events = None;
            conn.handler = None;
            return false;
        }
        // Read what the stream holds now that its frames are handed out: if anything came,
        // there are more to hand out; past this pass's reads, the next pass reads on.
        if *reads == 0 {
            return false;
        }
        *reads -= 1;
        read_stream(conn)
    }

    fn set_timeout(&mut self, handle: usize, timeout: Option<Instant>) {
        let armed = &mut self.timeouts[handle];
        if *armed == timeout {
            return;
        }
        if let Some(at) = armed.take() {
            self.timers.remove(&(at, handle));
        }
        if let Some(at) = timeout {
            self.timers.insert((at, handle));
        }
        *armed = timeout;
    }

    fn mark(&mut self, handle: usize) {
        if let Some(Some(conn)) = self.conns.get_mut(handle)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(handle);
        }
    }

    fn insert(&mut self, handle: ConnectionHandle, quic: Connection) {
        if self.conns.len() <= handle.0 {
            self.conns.resize_with(handle.0 + 1, || None);
            self.timeouts.resize(handle.0 + 1, None);
        }
        self.next_serial += 1;
        self.conns[handle.0] = Some(Box::new(Conn {
            quic,
            serial: self.next_serial,
            stream: None,
            reader: FrameReader::default(),
            unsent: Vec::new(),
            events: None,
            handler: None,
            first_taken: false,
            waiting: VecDeque::new(),
            read_done: false,
            readable: false,
            live: false,
            dirty: false,
        }));
        self.mark(handle.0);
    }
}

/// The connection `id` names, if it is still open (not a later one given the same handle).
fn conn_of(conns: &mut [Option<Box<Conn>>], id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.handle)?.as_deref_mut().filter(|conn| conn.serial == id.serial)
}

/// Reads what the player's stream holds into its frame reader, unless the session has frames
/// waiting (then QUIC's flow control holds the client back); true if it read anything or the
/// stream ended.
fn read_stream(conn: &mut Conn) -> bool {
    let Some(id) = conn.stream else { return false };
    if !conn.readable || conn.read_done || !conn.waiting.is_empty() || conn.events.is_none() {
        return false;
    }
    let mut stream = conn.quic.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        conn.read_done = true;
        return true;
    };
    let mut budget = BYTES_PER_READ;
    let mut progressed = false;
    loop {
        match chunks.next(budget) {
            Ok(Some(chunk)) => {
                budget = budget.saturating_sub(chunk.bytes.len());
                conn.reader.feed(&chunk.bytes);
                progressed = true;
                if budget == 0 {
                    break;
                }
            }
            Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => {
                conn.read_done = true;
                progressed = true;
                break;
            }
            Err(quinn_proto::ReadError::Blocked) => {
                // All read: the next `Readable` says when more came.
                conn.readable = false;
                break;
            }
        }
    }
    // Flow control credit for what was read goes out with the connection's next packet.
    let _ = chunks.finalize();
    progressed
}

/// Closes the connection: its session's frames end, it no longer counts among the live ones
/// (`live`), and it lingers only to say so to the peer until quinn-proto drains it.
fn close(conn: &mut Conn, live: &mut usize, now: Instant, code: CloseCode, reason: Bytes) {
    conn.events = None;
    conn.handler = None;
    conn.waiting.clear();
    conn.unsent.clear();
    if conn.live {
        conn.live = false;
        *live -= 1;
    }
    conn.quic.close(now, VarInt::from_u32(code as u32), reason);
}

/// Adds `frame` to the player's stream (closing a connection whose player stopped reading).
fn queue_frame(conn: &mut Conn, live: &mut usize, counters: &Counters, now: Instant, frame: &ServerFrame) {
    match baton_wire::player::encode(frame) {
        Ok(bytes) => conn.unsent.extend_from_slice(&bytes),
        Err(error) => {
            tracing::warn!(%error, "dropping a player frame that cannot be encoded");
            return;
        }
    }
    if conn.unsent.len() > MAX_UNSENT_RELIABLE {
        tracing::info!(peer = %conn.quic.remote_address(), "closing a player connection: the client does not read its stream");
        counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
        close(conn, live, now, CloseCode::Protocol, Bytes::from_static(b"the client does not read its stream"));
    }
}

/// Writes what the stream takes of the frames not yet sent.
fn flush_unsent(conn: &mut Conn) {
    let Some(id) = conn.stream else { return };
    while !conn.unsent.is_empty() {
        match conn.quic.send_stream(id).write(&conn.unsent) {
            Ok(written) => {
                conn.unsent.drain(..written);
            }
            Err(WriteError::Blocked) => return,
            Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                conn.unsent.clear();
                return;
            }
        }
    }
    // A burst (a resume's or a resend's frames) can grow the buffer towards its limit; once it is
    // written, what a connection keeps goes back to what its steady traffic needs.
    if conn.unsent.capacity() > UNSENT_KEPT_CAPACITY {
        conn.unsent = Vec::new();
    }
}

/// The most an empty buffer of frames not yet sent keeps allocated (see `flush_unsent`).
const UNSENT_KEPT_CAPACITY: usize = 64 * 1024;

fn push_transmit(out: &mut Output, transmit: &quinn_proto::Transmit, contents: &[u8]) {
    let start = out.buffer.len();
    out.buffer.extend_from_slice(&contents[..transmit.size]);
    out.transmits.push(Outgoing {
        destination: transmit.destination,
        ecn: transmit.ecn,
        segment_size: transmit.segment_size,
        src_ip: transmit.src_ip,
        range: start..start + transmit.size,
    });
}

/// Binds the players' socket and starts the plane on a thread of its own; returns its handle and
/// the players whose handshake completes, as they do. The plane runs as long as the process (its
/// welcomed players' handlers hold the gateway, which holds a handle); if it fails, the process
/// exits.
pub(crate) fn start(
    listen: SocketAddr,
    server: Arc<ServerConfig>,
    max_connections: usize,
    counters: Arc<Counters>,
) -> Result<(PlaneHandle, UnboundedReceiver<NewPlayer>), baton_net::NetError> {
    let socket = std::net::UdpSocket::bind(listen)?;
    let buffers = socket2::SockRef::from(&socket);
    if let Err(error) = buffers.set_recv_buffer_size(baton_net::UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP receive buffer");
    }
    if let Err(error) = buffers.set_send_buffer_size(baton_net::UDP_BUFFER_BYTES) {
        tracing::debug!(%error, "could not enlarge the UDP send buffer");
    }
    let state = UdpSocketState::new((&socket).into())?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let core = PlaneCore::new(server, max_connections, counters, state.max_gso_segments());
    let (commands, command_receiver) = tokio::sync::mpsc::unbounded_channel();
    let (players, player_receiver) = tokio::sync::mpsc::unbounded_channel();
    // A thread of its own with a single-threaded runtime: the plane never waits behind the
    // sessions' tasks for a worker, and its socket, timer and commands wake only it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("players-plane".into()).spawn(move || {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async move {
                match tokio::net::UdpSocket::from_std(socket) {
                    Ok(socket) => run(socket, state, core, command_receiver, players).await,
                    Err(error) => tracing::error!(%error, "the players' socket could not be registered"),
                }
            });
        }));
        if served.is_err() {
            // Every player's connection is gone with the plane: a gateway that goes on without
            // it would only look alive. Its players resume at another gateway.
            tracing::error!("the players' plane failed; the gateway stops");
            std::process::exit(70);
        }
    })?;
    Ok((PlaneHandle { commands, local }, player_receiver))
}

/// Commands taken in one pass at most, so a flood of them never starves the socket.
const COMMANDS_PER_PASS: usize = 4096;

/// Receive batches read in one pass at most.
const RECEIVES_PER_PASS: usize = 16;

/// The plane's driver: waits for datagrams, commands or the next timeout, lets the core handle
/// them, then sends what the core produced. Ends when every handle is dropped, or the socket
/// fails.
pub(crate) async fn run(
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    mut core: PlaneCore,
    mut commands: UnboundedReceiver<Command>,
    players: UnboundedSender<NewPlayer>,
) {
    let slots = quinn::udp::BATCH_SIZE;
    let slot_bytes = 64 * 1024;
    let mut receive_buffer = vec![0u8; slots * slot_bytes];
    let mut metas = vec![RecvMeta::default(); slots];
    let mut out = Output::default();
    loop {
        let timeout = core.poll_timeout();
        let sleep = async {
            match timeout {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            command = commands.recv() => {
                let Some(command) = command else { return };
                let now = Instant::now();
                core.handle_command(now, command);
                for _ in 1..COMMANDS_PER_PASS {
                    match commands.try_recv() {
                        Ok(command) => core.handle_command(now, command),
                        Err(_) => break,
                    }
                }
            }
            readable = socket.readable() => {
                if let Err(error) = readable {
                    tracing::error!(%error, "the players' socket failed; the gateway stops serving players");
                    return;
                }
                let now = Instant::now();
                for _ in 0..RECEIVES_PER_PASS {
                    let received = socket.try_io(tokio::io::Interest::READABLE, || {
                        let mut slices: Vec<IoSliceMut<'_>> =
                            receive_buffer.chunks_mut(slot_bytes).map(IoSliceMut::new).collect();
                        state.recv((&socket).into(), &mut slices, &mut metas)
                    });
                    let count = match received {
                        Ok(count) => count,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(error) => {
                            // ICMP errors of one peer and the like: that datagram is lost, the rest go on.
                            tracing::debug!(%error, "receiving from players");
                            continue;
                        }
                    };
                    for (slot, meta) in metas.iter().take(count).enumerate() {
                        let base = slot * slot_bytes;
                        let stride = meta.stride.max(1);
                        let mut offset = 0;
                        while offset < meta.len {
                            let end = (offset + stride).min(meta.len);
                            let data = BytesMut::from(&receive_buffer[base + offset..base + end]);
                            offset = end;
                            let ecn = meta.ecn.and_then(|ecn| EcnCodepoint::from_bits(ecn as u8));
                            core.handle_datagram(now, meta.addr, meta.dst_ip, ecn, data, &mut out);
                        }
                    }
                }
            }
            () = sleep => {}
        }
        // Timers every pass: under load a command or a datagram is always ready first.
        let now = Instant::now();
        core.handle_timeout(now);
        core.set_max_segments(state.max_gso_segments());
        core.drive(now, &mut out);
        for player in out.new_players.drain(..) {
            let _ = players.send(player);
        }
        send_all(&socket, &state, &out).await;
        out.clear();
    }
}

/// Sends every datagram of `out`, waiting for the socket when its buffer is full.
async fn send_all(socket: &tokio::net::UdpSocket, state: &UdpSocketState, out: &Output) {
    for outgoing in &out.transmits {
        let transmit = quinn::udp::Transmit {
            destination: outgoing.destination,
            ecn: outgoing.ecn.and_then(|ecn| quinn::udp::EcnCodepoint::from_bits(ecn as u8)),
            contents: &out.buffer[outgoing.range.clone()],
            segment_size: outgoing.segment_size,
            src_ip: outgoing.src_ip,
        };
        loop {
            match socket.try_io(tokio::io::Interest::WRITABLE, || state.send(socket.into(), &transmit)) {
                Ok(()) => break,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // One unreachable peer must not stop the others' datagrams: QUIC recovers.
                    tracing::debug!(%error, destination = %outgoing.destination, "sending to a player");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core against a real `quinn-proto` client, datagrams carried in memory.
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use baton_wire::player::{ClientFrame, CloseCode, Datagram, FrameReader, ServerFrame, StateUpdate};
    use bytes::BytesMut;
    use quinn_proto::{ClientConfig, Connection, ConnectionError, Dir, Endpoint, EndpointConfig, Event, StreamId};

    use super::{Command, ConnId, FrameHandler, NewPlayer, Output, PlaneCore, PlayerEvent};
    use crate::service::Counters;

    const GATEWAY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7000);

    /// Clients and the plane, with a clock that moves only when told.
    struct Bench {
        plane: PlaneCore,
        counters: Arc<Counters>,
        client_config: ClientConfig,
        clients: Vec<Client>,
        now: Instant,
        new_players: Vec<NewPlayer>,
        _certs: tempfile::TempDir,
    }

    struct Client {
        address: SocketAddr,
        endpoint: Endpoint,
        connection: Connection,
        handle: quinn_proto::ConnectionHandle,
        stream: Option<StreamId>,
        reader: FrameReader,
        datagrams: Vec<Datagram>,
        frames: Vec<ServerFrame>,
        lost: Option<ConnectionError>,
    }

    impl Bench {
        fn new(max_connections: usize) -> Bench {
            let certs = tempfile::tempdir().unwrap();
            let (cert, key) = baton_net::public::dev_gateway_certificate(certs.path()).unwrap();
            let (chain, key) = baton_net::public::load_certificate(&cert, &key).unwrap();
            let alpn = baton_wire::player::ALPN_PLAYER;
            let transport = baton_net::public::PlayerTransport::default();
            let server = baton_net::public::player_server_config(chain, key, alpn, transport).unwrap();
            let client_config = baton_net::public::player_client_config(&cert, alpn, transport).unwrap();
            let counters = Arc::new(Counters::default());
            Bench {
                plane: PlaneCore::new(Arc::new(server), max_connections, counters.clone(), 1),
                counters,
                client_config,
                clients: Vec::new(),
                now: Instant::now(),
                new_players: Vec::new(),
                _certs: certs,
            }
        }

        /// A client connecting; its index.
        fn connect(&mut self) -> usize {
            let index = self.clients.len();
            let address = SocketAddr::from(([127, 0, 0, 1], 5000 + index as u16));
            let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
            let (handle, connection) = endpoint
                .connect(self.now, self.client_config.clone(), GATEWAY, baton_net::public::DEV_GATEWAY_NAME)
                .unwrap();
            self.clients.push(Client {
                address,
                endpoint,
                connection,
                handle,
                stream: None,
                reader: FrameReader::default(),
                datagrams: Vec::new(),
                frames: Vec::new(),
                lost: None,
            });
            index
        }

        /// Carries datagrams both ways until nothing moves, firing due timers on the way.
        fn pump(&mut self) {
            for _ in 0..200 {
                let mut moved = false;
                let mut out = Output::default();
                for client in &mut self.clients {
                    let mut buffer = Vec::new();
                    while let Some(transmit) = client.connection.poll_transmit(self.now, 1, &mut buffer) {
                        let data = BytesMut::from(&buffer[..transmit.size]);
                        self.plane.handle_datagram(self.now, client.address, None, None, data, &mut out);
                        buffer.clear();
                        moved = true;
                    }
                }
                self.plane.handle_timeout(self.now);
                self.plane.drive(self.now, &mut out);
                self.new_players.append(&mut out.new_players);
                for transmit in &out.transmits {
                    moved = true;
                    let Some(client) = self.clients.iter_mut().find(|client| client.address == transmit.destination)
                    else {
                        continue;
                    };
                    let data = BytesMut::from(&out.buffer[transmit.range.clone()]);
                    let mut response = Vec::new();
                    if let Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) =
                        client.endpoint.handle(self.now, GATEWAY, None, None, data, &mut response)
                    {
                        client.connection.handle_event(event);
                    }
                }
                for client in &mut self.clients {
                    client.take_events(self.now);
                }
                if !moved {
                    return;
                }
            }
            panic!("the datagrams never settled");
        }

        /// Moves the clock on and lets timers fire.
        fn advance(&mut self, by: Duration) {
            self.now += by;
            for client in &mut self.clients {
                if client.connection.poll_timeout().is_some_and(|at| at <= self.now) {
                    client.connection.handle_timeout(self.now);
                }
            }
            self.pump();
        }

        /// A plane with one player, connected and introduced (its Hello taken by its session).
        fn with_player() -> (Bench, NewPlayer) {
            let mut bench = Bench::new(10);
            bench.connect();
            let mut player = bench.player(0);
            frames(&mut player.events);
            (bench, player)
        }

        /// The player of client `index`: connected and introduced with a Hello.
        fn player(&mut self, index: usize) -> NewPlayer {
            self.pump();
            let player = self.new_players.pop().expect("the handshake completed");
            self.clients[index].send(&ClientFrame::Hello { version: 1, token: "t".into() });
            self.pump();
            player
        }
    }

    impl Client {
        fn send(&mut self, frame: &ClientFrame) {
            self.send_raw(&baton_wire::player::encode(frame).unwrap());
        }

        fn send_raw(&mut self, bytes: &[u8]) {
            let stream = *self.stream.get_or_insert_with(|| self.connection.streams().open(Dir::Bi).unwrap());
            assert_eq!(self.connection.send_stream(stream).write(bytes).unwrap(), bytes.len());
        }

        fn take_events(&mut self, now: Instant) {
            while let Some(event) = self.connection.poll_endpoint_events() {
                if let Some(reply) = self.endpoint.handle_event(self.handle, event) {
                    self.connection.handle_event(reply);
                }
            }
            while let Some(event) = self.connection.poll() {
                if let Event::ConnectionLost { reason } = event {
                    self.lost = Some(reason);
                }
            }
            while let Some(bytes) = self.connection.datagrams().recv() {
                self.datagrams.push(Datagram::decode(&bytes).unwrap());
            }
            if let Some(stream) = self.stream
                && let Ok(mut chunks) = self.connection.recv_stream(stream).read(true)
            {
                while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                    self.reader.feed(&chunk.bytes);
                }
                let _ = chunks.finalize();
                while let Some(frame) = self.reader.next_frame::<ServerFrame>().unwrap() {
                    self.frames.push(frame);
                }
            }
            let _ = now;
        }

        fn closed_with(&self) -> Option<(u64, String)> {
            match &self.lost {
                Some(ConnectionError::ApplicationClosed(close)) => {
                    Some((close.error_code.into_inner(), String::from_utf8_lossy(&close.reason).into_owned()))
                }
                _ => None,
            }
        }
    }

    /// A session's handler that records the frames it gets; it refuses input `refuse` (as a flood).
    struct Recorder {
        seen: Arc<std::sync::Mutex<Vec<ClientFrame>>>,
        refuse: Option<u64>,
    }

    impl Recorder {
        fn install(bench: &mut Bench, to: ConnId, refuse: Option<u64>) -> Recorded {
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let handler = Box::new(Recorder { seen: seen.clone(), refuse });
            bench.plane.handle_command(bench.now, Command::Serve { to, handler });
            bench.pump();
            Recorded(seen)
        }
    }

    impl FrameHandler for Recorder {
        fn handle(&mut self, frame: ClientFrame) -> Result<(), (CloseCode, String)> {
            let refused = matches!(frame, ClientFrame::Input { seq, .. } if Some(seq) == self.refuse);
            self.seen.lock().unwrap().push(frame);
            if refused { Err((CloseCode::Flood, format!("input {}", self.refuse.unwrap_or(0)))) } else { Ok(()) }
        }
    }

    struct Recorded(Arc<std::sync::Mutex<Vec<ClientFrame>>>);

    impl Recorded {
        fn seqs(&self) -> Vec<u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|frame| match frame {
                    ClientFrame::Input { seq, .. } => *seq,
                    other => panic!("{other:?}"),
                })
                .collect()
        }
    }

    fn update(tick: u64, bytes: usize) -> StateUpdate {
        StateUpdate { region: 1, tick, last_applied: tick, durable: 0, payload: vec![7; bytes] }
    }

    fn frames(events: &mut tokio::sync::mpsc::UnboundedReceiver<PlayerEvent>) -> Vec<PlayerEvent> {
        let mut taken = Vec::new();
        while let Ok(event) = events.try_recv() {
            taken.push(event);
        }
        taken
    }

    #[test]
    fn a_player_s_frames_reach_its_session_in_order_and_updates_reach_the_player() {
        let mut bench = Bench::new(10);
        bench.connect();
        let mut player = bench.player(0);
        assert_eq!(bench.counters.connections.load(Ordering::Relaxed), 1);
        assert_eq!(
            frames(&mut player.events),
            vec![PlayerEvent::Frame(ClientFrame::Hello { version: 1, token: "t".into() })]
        );
        // Frames after the first wait for the session's handler, then go to it in order.
        for seq in 1..=3 {
            bench.clients[0].send(&ClientFrame::Input { seq, payload: vec![1; 300] });
        }
        bench.pump();
        assert!(frames(&mut player.events).is_empty(), "held for the handler");
        let seen = Recorder::install(&mut bench, player.id, None);
        bench.clients[0].send(&ClientFrame::Input { seq: 4, payload: vec![1; 300] });
        bench.pump();
        assert_eq!(seen.seqs(), vec![1, 2, 3, 4]);
        assert!(frames(&mut player.events).is_empty(), "nothing reaches the session's task");

        // An update goes as a datagram; a frame on the stream.
        bench.plane.handle_command(bench.now, Command::Update { to: player.id, update: update(1, 300) });
        bench
            .plane
            .handle_command(bench.now, Command::Reliable { to: player.id, frame: ServerFrame::Pong { nonce: 9 } });
        bench.pump();
        assert_eq!(bench.clients[0].datagrams, vec![Datagram::State(update(1, 300))]);
        assert_eq!(bench.clients[0].frames, vec![ServerFrame::Pong { nonce: 9 }]);
        assert_eq!(bench.counters.updates_datagram.load(Ordering::Relaxed), 1);

        // A neighbour's view goes only where it fits in a datagram.
        let view =
            bytes::Bytes::from(Datagram::Neighbour { region: 2, tick: 5, payload: vec![1; 100] }.encode().unwrap());
        bench.plane.handle_command(bench.now, Command::Neighbour { to: player.id, datagram: view });
        bench.plane.handle_command(bench.now, Command::Neighbour { to: player.id, datagram: vec![0; 5000].into() });
        bench.pump();
        assert_eq!(bench.clients[0].datagrams.len(), 2);
        assert_eq!(bench.counters.neighbour_views.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_player_whose_client_takes_no_datagrams_gets_its_updates_on_its_stream() {
        let mut bench = Bench::new(10);
        let mut transport = quinn_proto::TransportConfig::default();
        transport.datagram_receive_buffer_size(None);
        bench.client_config.transport_config(Arc::new(transport));
        bench.connect();
        let player = bench.player(0);
        bench.plane.handle_command(bench.now, Command::Update { to: player.id, update: update(1, 300) });
        bench.plane.handle_command(bench.now, Command::Update { to: player.id, update: update(2, 300) });
        bench.pump();
        assert!(bench.clients[0].datagrams.is_empty());
        assert_eq!(
            bench.clients[0].frames,
            vec![ServerFrame::State(update(1, 300)), ServerFrame::State(update(2, 300))]
        );
        assert_eq!(bench.counters.updates_reliable.load(Ordering::Relaxed), 2);
        assert_eq!(bench.counters.updates_datagram.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_closed_connection_tells_the_player_why_and_ends_its_session_s_frames() {
        let (mut bench, player) = Bench::with_player();
        bench.plane.handle_command(
            bench.now,
            Command::Close { to: player.id, code: CloseCode::Flood, reason: "too many".into() },
        );
        bench.pump();
        assert_eq!(bench.clients[0].closed_with(), Some((CloseCode::Flood as u64, "too many".into())));
        bench.advance(Duration::from_secs(1));
        assert!(player.events.is_closed(), "the session's frames end");
        assert_eq!(bench.plane.connections(), 0, "the connection is forgotten once drained");
    }

    #[test]
    fn a_player_opens_one_stream_and_no_other() {
        let (mut bench, mut player) = Bench::with_player();
        let seen = Recorder::install(&mut bench, player.id, None);
        let client = &mut bench.clients[0];
        assert_eq!(client.connection.streams().open(Dir::Bi), None, "the gateway allows one");
        assert_eq!(client.connection.streams().open(Dir::Uni), None, "and no one-way stream");
        bench.clients[0].send(&ClientFrame::Input { seq: 1, payload: vec![1; 10] });
        bench.pump();
        assert_eq!(seen.seqs(), vec![1], "the player's stream goes on");
        assert!(frames(&mut player.events).is_empty());
        assert_eq!(bench.clients[0].lost, None);
    }

    #[test]
    fn a_malformed_frame_is_reported_once_and_nothing_after_it_is_read() {
        let (mut bench, mut player) = Bench::with_player();
        bench.clients[0].send_raw(&[0xff, 0xff, 1, 2, 3]);
        bench.clients[0].send(&ClientFrame::Ping { nonce: 1 });
        bench.pump();
        let events = frames(&mut player.events);
        assert!(matches!(&events[..], [PlayerEvent::Malformed(_)]), "{events:?}");
        assert!(player.events.is_closed());
    }

    #[test]
    fn commands_for_a_connection_that_is_gone_reach_no_other() {
        let mut bench = Bench::new(10);
        bench.connect();
        let first = bench.player(0);
        let stale = ConnId { handle: first.id.handle, serial: first.id.serial + 1 };
        bench.plane.handle_command(bench.now, Command::Update { to: stale, update: update(1, 100) });
        bench
            .plane
            .handle_command(bench.now, Command::Close { to: stale, code: CloseCode::Normal, reason: String::new() });
        bench.pump();
        assert!(bench.clients[0].datagrams.is_empty());
        assert_eq!(bench.clients[0].lost, None);
    }

    #[test]
    fn frames_held_for_a_session_still_joining_hold_its_player_back_and_none_is_lost() {
        let (mut bench, mut player) = Bench::with_player();
        // Far more than the stream's window while the session joins its region.
        // About 150 kB: more than the stream's window and than a pass reads.
        let sent = 768;
        for seq in 1..=sent {
            bench.clients[0].send(&ClientFrame::Input { seq, payload: vec![2; 200] });
        }
        bench.pump();
        bench.advance(Duration::from_millis(50));
        assert!(frames(&mut player.events).is_empty());
        let seen = Recorder::install(&mut bench, player.id, None);
        for _ in 0..100 {
            if seen.seqs().len() as u64 == sent {
                break;
            }
            bench.advance(Duration::from_millis(5));
        }
        assert!(seen.seqs().into_iter().eq(1..=sent), "every input, once, in order");
    }

    #[test]
    fn a_frame_the_handler_refuses_ends_the_session_with_its_code_and_nothing_after_it_is_handled() {
        let (mut bench, mut player) = Bench::with_player();
        let seen = Recorder::install(&mut bench, player.id, Some(2));
        for seq in 1..=4 {
            bench.clients[0].send(&ClientFrame::Input { seq, payload: vec![3; 100] });
        }
        bench.pump();
        assert_eq!(seen.seqs(), vec![1, 2]);
        assert_eq!(frames(&mut player.events), vec![PlayerEvent::Refused(CloseCode::Flood, "input 2".into())]);
        assert!(player.events.is_closed(), "nothing more reaches the session");
    }

    #[test]
    fn players_over_the_connection_limit_are_refused_as_full() {
        let mut bench = Bench::new(1);
        bench.connect();
        bench.connect();
        bench.pump();
        assert_eq!(bench.new_players.len(), 1, "one session");
        assert_eq!(bench.counters.refused_full.load(Ordering::Relaxed), 1);
        let refused = bench.clients.iter().filter(|client| client.closed_with().is_some()).count();
        assert_eq!(refused, 1);
        let (code, reason) = bench.clients.iter().find_map(Client::closed_with).unwrap();
        assert_eq!(code, CloseCode::Full as u64, "{reason}");
        // The refused connection does not count; the live one does, until it is closed.
        bench.advance(Duration::from_secs(1));
        bench.connect();
        bench.pump();
        assert_eq!(bench.new_players.len(), 1, "still full");
        let first = bench.new_players[0].id;
        bench
            .plane
            .handle_command(bench.now, Command::Close { to: first, code: CloseCode::Normal, reason: String::new() });
        // Its place is free at once, while it still says goodbye to its peer.
        bench.connect();
        bench.pump();
        assert_eq!(bench.new_players.len(), 2, "a place came free");
        assert_eq!(bench.counters.refused_full.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_shut_down_plane_closes_every_connection_and_refuses_new_ones() {
        let mut bench = Bench::new(10);
        bench.connect();
        let player = bench.player(0);
        bench.plane.handle_command(bench.now, Command::Shutdown);
        bench.pump();
        assert_eq!(bench.clients[0].closed_with(), Some((CloseCode::Shutdown as u64, "gateway shutting down".into())));
        let _ = player;
        bench.connect();
        bench.pump();
        assert!(bench.new_players.is_empty(), "no new session");
        assert!(bench.clients[1].lost.is_some(), "the new connection was refused");
    }
}
