//! What QUIC itself costs on this machine: many connections driven by `quinn-proto` from a plain
//! loop per thread, with no async runtime, no tasks and no Baton, carrying a gateway's traffic.
//!
//! The question it answers is how far a gateway's (and a load generator's) per-packet cost could
//! fall by driving `quinn-proto` directly instead of through quinn's tasks. A "gateway" thread
//! owns one socket and one `quinn_proto::Endpoint`; every tick it sends each connection one
//! datagram of `update_bytes` (a state update) and it takes in every datagram the players send.
//! A "players" thread owns `connections / PER_SOCKET` sockets, each with its endpoint and
//! connections (as the load generator shares a socket among 50 players); each connection sends
//! `inputs_per_second` datagrams of `input_bytes` (inputs), at its own phase of the period. Both
//! use the player transport settings (`baton_net::public`): TLS 1.3 with AES-GCM,
//! acknowledgement frequency, datagram buffers. Receives are batched (`recvmmsg` through
//! quinn-udp); each transmit is one `sendmsg`, as quinn sends them, or with `batch_sends` up to 64
//! in one `sendmmsg` (without the ECN marking and source address quinn asks for: an upper bound
//! on what batching saves).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event, ServerConfig,
};

/// Player connections sharing one socket (as the load generator shares one among 50 players).
pub const PER_SOCKET: usize = 50;

/// What one QUIC floor run asks for.
#[derive(Clone, Copy, Debug)]
pub struct QuicFloorPlan {
    /// Player connections.
    pub connections: usize,
    /// Updates per second the gateway sends each connection (one per tick).
    pub tick_hz: u32,
    /// Inputs per second each connection sends.
    pub inputs_per_second: u32,
    /// Bytes of an update.
    pub update_bytes: usize,
    /// Bytes of an input.
    pub input_bytes: usize,
    /// How long to run once every connection is up.
    pub seconds: f64,
    /// Whether each side sends what a pass of its loop produced with `sendmmsg` (up to 64
    /// datagrams per system call, across connections) instead of one `sendmsg` per datagram.
    pub batch_sends: bool,
}

/// What one QUIC floor run measured.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct QuicFloor {
    /// Player connections.
    pub connections: usize,
    /// Updates the gateway sent.
    pub updates_sent: u64,
    /// Updates the players received.
    pub updates_received: u64,
    /// Inputs the players sent.
    pub inputs_sent: u64,
    /// Inputs the gateway received.
    pub inputs_received: u64,
    /// UDP datagrams the gateway received and sent (acknowledgement-only packets and probes
    /// included), per update sent.
    pub gateway_udp_datagrams_per_update: f64,
    /// The gateway thread's CPU, in cores.
    pub gateway_cpu_cores: f64,
    /// The gateway thread's CPU per update sent (with its share of inputs received): the figure
    /// to hold against a gateway's CPU per update forwarded.
    pub gateway_us_per_update: f64,
    /// The players thread's CPU, in cores.
    pub players_cpu_cores: f64,
    /// The players thread's CPU per player-second.
    pub players_us_per_avatar_s: f64,
}

/// CPU time of the calling thread (user + system) in seconds, from /proc/thread-self/stat.
pub fn thread_cpu_seconds() -> anyhow::Result<f64> {
    crate::udp_floor::stat_cpu_seconds("/proc/thread-self/stat")
}

/// One socket, its endpoint and the connections on it, driven by the thread that owns it.
struct Node {
    socket: UdpSocket,
    state: UdpSocketState,
    endpoint: Endpoint,
    server_config: Option<Arc<ServerConfig>>,
    /// Indexed by `ConnectionHandle.0`.
    connections: Vec<Option<Connection>>,
    /// Each connection's next timeout, and a heap of them (entries are checked against it).
    timeouts: Vec<Option<Instant>>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    receive_buffer: Vec<u8>,
    transmit_buffer: Vec<u8>,
    /// Handles that received something in the batch being handled.
    touched: Vec<usize>,
    udp_datagrams: u64,
    /// Whether single-datagram transmits wait in `outbox` for one `sendmmsg` ([`Node::flush`]).
    batching: bool,
    outbox: Vec<u8>,
    /// (destination, start, end) in `outbox`.
    queued: Vec<(SocketAddr, usize, usize)>,
    headers: MultiHeaders<SockaddrStorage>,
}

/// Datagrams one `sendmmsg` carries at most.
const SEND_BATCH: usize = 64;

impl Node {
    fn bind(server_config: Option<Arc<ServerConfig>>, batching: bool) -> anyhow::Result<Node> {
        let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding a UDP socket")?;
        let buffers = socket2::SockRef::from(&socket);
        buffers.set_recv_buffer_size(baton_net::UDP_BUFFER_BYTES).context("sizing the receive buffer")?;
        buffers.set_send_buffer_size(baton_net::UDP_BUFFER_BYTES).context("sizing the send buffer")?;
        socket.set_nonblocking(true).context("making the socket non-blocking")?;
        let state = UdpSocketState::new((&socket).into()).context("setting up the socket's offloads")?;
        let endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), server_config.clone(), true, None);
        let batch = quinn::udp::BATCH_SIZE.min(32);
        Ok(Node {
            socket,
            state,
            endpoint,
            server_config,
            connections: Vec::new(),
            timeouts: Vec::new(),
            timers: BinaryHeap::new(),
            receive_buffer: vec![0; batch * 64 * 1024],
            transmit_buffer: Vec::with_capacity(64 * 1024),
            touched: Vec::new(),
            udp_datagrams: 0,
            batching,
            outbox: Vec::with_capacity(SEND_BATCH * 1500),
            queued: Vec::with_capacity(SEND_BATCH),
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
        })
    }

    fn address(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn insert(&mut self, handle: ConnectionHandle, connection: Connection) {
        if self.connections.len() <= handle.0 {
            self.connections.resize_with(handle.0 + 1, || None);
            self.timeouts.resize(handle.0 + 1, None);
        }
        self.connections[handle.0] = Some(connection);
    }

    fn connect(&mut self, config: ClientConfig, server: SocketAddr, now: Instant) -> anyhow::Result<usize> {
        let (handle, connection) = self
            .endpoint
            .connect(now, config, server, baton_net::public::DEV_GATEWAY_NAME)
            .map_err(|error| anyhow::anyhow!("connecting: {error}"))?;
        self.insert(handle, connection);
        Ok(handle.0)
    }

    /// Reads every datagram waiting on the socket (in batches) and hands each to its connection;
    /// the connections that got something are in `touched`. Returns whether anything was read.
    fn receive(&mut self, now: Instant) -> anyhow::Result<bool> {
        self.touched.clear();
        let batch = quinn::udp::BATCH_SIZE.min(32);
        let mut any = false;
        loop {
            let mut metas = [RecvMeta::default(); 32];
            let count = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    self.receive_buffer.chunks_mut(64 * 1024).take(batch).map(IoSliceMut::new).collect();
                match self.state.recv((&self.socket).into(), &mut slices, &mut metas[..batch]) {
                    Ok(count) => count,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(any),
                    Err(error) => return Err(error).context("receiving"),
                }
            };
            any = true;
            for (index, meta) in metas.iter().take(count).enumerate() {
                let start = index * 64 * 1024;
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let end = (offset + stride).min(meta.len);
                    let data = BytesMut::from(&self.receive_buffer[start + offset..start + end]);
                    offset = end;
                    self.udp_datagrams += 1;
                    let ecn = meta.ecn.and_then(|ecn| quinn_proto::EcnCodepoint::from_bits(ecn as u8));
                    let mut response = Vec::new();
                    match self.endpoint.handle(now, meta.addr, meta.dst_ip, ecn, data, &mut response) {
                        Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                            if let Some(Some(connection)) = self.connections.get_mut(handle.0) {
                                connection.handle_event(event);
                                self.touched.push(handle.0);
                            }
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            let config = self.server_config.clone();
                            match self.endpoint.accept(incoming, now, &mut response, config) {
                                Ok((handle, connection)) => {
                                    self.insert(handle, connection);
                                    self.touched.push(handle.0);
                                }
                                Err(error) => {
                                    if let Some(transmit) = error.response {
                                        self.send(&transmit, &response)?;
                                    }
                                }
                            }
                        }
                        Some(DatagramEvent::Response(transmit)) => self.send(&transmit, &response)?,
                        None => {}
                    }
                }
            }
        }
    }

    fn send(&mut self, transmit: &quinn_proto::Transmit, contents: &[u8]) -> anyhow::Result<()> {
        let segments = transmit.segment_size.map_or(1, |size| transmit.size.div_ceil(size.max(1)));
        self.udp_datagrams += segments as u64;
        if self.batching && segments == 1 {
            let start = self.outbox.len();
            self.outbox.extend_from_slice(&contents[..transmit.size]);
            self.queued.push((transmit.destination, start, self.outbox.len()));
            if self.queued.len() == SEND_BATCH {
                self.flush()?;
            }
            return Ok(());
        }
        let outgoing = Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn.and_then(|ecn| quinn::udp::EcnCodepoint::from_bits(ecn as u8)),
            contents: &contents[..transmit.size],
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        };
        loop {
            match self.state.send((&self.socket).into(), &outgoing) {
                Ok(()) => return Ok(()),
                // A full send buffer: the kernel drains it in microseconds on loopback.
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(error) => return Err(error).context("sending"),
            }
        }
    }

    /// Sends the queued datagrams, up to [`SEND_BATCH`] per system call.
    fn flush(&mut self) -> anyhow::Result<()> {
        let no_control: [ControlMessage<'_>; 0] = [];
        let mut from = 0;
        while from < self.queued.len() {
            let chunk = &self.queued[from..(from + SEND_BATCH).min(self.queued.len())];
            let slices: Vec<[IoSlice<'_>; 1]> =
                chunk.iter().map(|&(_, start, end)| [IoSlice::new(&self.outbox[start..end])]).collect();
            let addresses: Vec<Option<SockaddrStorage>> =
                chunk.iter().map(|&(address, _, _)| Some(SockaddrStorage::from(address))).collect();
            match sendmmsg(
                self.socket.as_raw_fd(),
                &mut self.headers,
                &slices,
                &addresses,
                no_control,
                MsgFlags::empty(),
            ) {
                Ok(sent) => from += sent.count().max(1),
                Err(Errno::EAGAIN) => std::thread::yield_now(),
                Err(error) => return Err(error).context("sending a batch"),
            }
        }
        self.queued.clear();
        self.outbox.clear();
        Ok(())
    }

    /// Lets connection `handle` talk to the endpoint, send what it has, and re-arms its timer.
    fn drive(&mut self, handle: usize, now: Instant) -> anyhow::Result<()> {
        let max_segments = self.state.max_gso_segments();
        let Some(mut connection) = self.connections.get_mut(handle).and_then(Option::take) else { return Ok(()) };
        while let Some(event) = connection.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(ConnectionHandle(handle), event) {
                connection.handle_event(reply);
            }
        }
        let mut buffer = std::mem::take(&mut self.transmit_buffer);
        loop {
            buffer.clear();
            let Some(transmit) = connection.poll_transmit(now, max_segments, &mut buffer) else { break };
            self.send(&transmit, &buffer)?;
        }
        self.transmit_buffer = buffer;
        let timeout = connection.poll_timeout();
        if timeout != self.timeouts[handle] {
            self.timeouts[handle] = timeout;
            if let Some(at) = timeout {
                self.timers.push(Reverse((at, handle)));
            }
        }
        if !connection.is_drained() {
            self.connections[handle] = Some(connection);
        }
        Ok(())
    }

    /// Fires the timers that are due.
    fn expire(&mut self, now: Instant) -> anyhow::Result<()> {
        while let Some(&Reverse((at, handle))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timeouts[handle] != Some(at) {
                continue;
            }
            self.timeouts[handle] = None;
            if let Some(Some(connection)) = self.connections.get_mut(handle) {
                connection.handle_timeout(now);
            }
            self.drive(handle, now)?;
        }
        Ok(())
    }
}

/// Runs the QUIC floor in this process (its own threads; run it when nothing else in the process
/// is busy).
pub fn measure(plan: QuicFloorPlan) -> anyhow::Result<QuicFloor> {
    if plan.connections == 0
        || plan.tick_hz == 0
        || plan.inputs_per_second == 0
        || !(1..=1100).contains(&plan.update_bytes)
        || !(1..=1100).contains(&plan.input_bytes)
        || plan.seconds <= 0.0
    {
        anyhow::bail!(
            "the QUIC floor needs connections, a tick rate and an input rate of 1 or more, 1 to 1100 bytes per datagram and a time above 0"
        );
    }
    let directory = std::env::temp_dir().join(format!("baton-quic-floor-{}", std::process::id()));
    let (cert, key) = baton_net::public::dev_gateway_certificate(&directory)?;
    let (chain, key) = baton_net::public::load_certificate(&cert, &key)?;
    let alpn = baton_wire::player::ALPN_PLAYER;
    let transport = baton_net::public::PlayerTransport::default();
    let server_config = Arc::new(baton_net::public::player_server_config(chain, key, alpn, transport)?);
    let client_config = baton_net::public::player_client_config(&cert, alpn, transport)?;
    let _ = std::fs::remove_dir_all(&directory);

    // A node stays on the thread that made it (its send headers hold raw pointers).
    let (address_sender, address_receiver) = std::sync::mpsc::channel::<SocketAddr>();
    let stop = Arc::new(AtomicBool::new(false));
    // When the players are all connected, the measured window starts.
    let (start_sender, start_receiver) = std::sync::mpsc::channel::<Instant>();
    let tick = Duration::from_secs_f64(1.0 / f64::from(plan.tick_hz));

    let gateway_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<(f64, u64, u64, u64)> {
            let mut gateway = Node::bind(Some(server_config), plan.batch_sends)?;
            address_sender.send(gateway.address()?).context("the QUIC floor ended early")?;
            let update = Bytes::from(vec![3u8; plan.update_bytes]);
            let mut window: Option<(f64, u64)> = None;
            let (mut updates, mut inputs) = (0u64, 0u64);
            let mut next_tick = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if window.is_none()
                    && let Ok(at) = start_receiver.try_recv()
                {
                    window = Some((thread_cpu_seconds()?, gateway.udp_datagrams));
                    next_tick = at;
                }
                let now = Instant::now();
                if gateway.receive(now)? {
                    let touched = std::mem::take(&mut gateway.touched);
                    for &handle in &touched {
                        if let Some(Some(connection)) = gateway.connections.get_mut(handle) {
                            while connection.poll().is_some() {}
                            while connection.datagrams().recv().is_some() {
                                inputs += u64::from(window.is_some());
                            }
                        }
                        gateway.drive(handle, now)?;
                    }
                    gateway.touched = touched;
                }
                gateway.expire(now)?;
                if window.is_some() && now >= next_tick {
                    next_tick += tick;
                    for handle in 0..gateway.connections.len() {
                        if let Some(Some(connection)) = gateway.connections.get_mut(handle)
                            && connection.datagrams().send(update.clone(), true).is_ok()
                        {
                            updates += 1;
                        }
                        gateway.drive(handle, now)?;
                    }
                }
                gateway.flush()?;
                std::thread::sleep(Duration::from_micros(200));
            }
            let (cpu_before, udp_before) = window.context("the players never all connected")?;
            Ok((thread_cpu_seconds()? - cpu_before, updates, inputs, gateway.udp_datagrams - udp_before))
        })
    };

    let gateway_address = match address_receiver.recv() {
        Ok(address) => address,
        Err(_) => {
            let failed =
                gateway_thread.join().map_err(|_| anyhow::anyhow!("the QUIC floor's gateway thread panicked"))?;
            return Err(failed.err().unwrap_or_else(|| anyhow::anyhow!("the gateway thread ended early")));
        }
    };
    let players_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<(f64, u64, u64, f64)> {
            let result = play(plan, &client_config, gateway_address, &start_sender);
            // The last inputs reach the gateway before it stops counting.
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, Ordering::Relaxed);
            result
        })
    };

    let players = players_thread.join().map_err(|_| anyhow::anyhow!("the QUIC floor's players thread panicked"));
    stop.store(true, Ordering::Relaxed);
    let gateway = gateway_thread.join().map_err(|_| anyhow::anyhow!("the QUIC floor's gateway thread panicked"))?;
    let (players_cpu, inputs_sent, updates_received, seconds) = players??;
    let (gateway_cpu, updates_sent, inputs_received, gateway_udp) = gateway?;
    Ok(QuicFloor {
        connections: plan.connections,
        updates_sent,
        updates_received,
        inputs_sent,
        inputs_received,
        gateway_udp_datagrams_per_update: gateway_udp as f64 / updates_sent.max(1) as f64,
        gateway_cpu_cores: gateway_cpu / seconds,
        gateway_us_per_update: gateway_cpu * 1e6 / updates_sent.max(1) as f64,
        players_cpu_cores: players_cpu / seconds,
        players_us_per_avatar_s: players_cpu * 1e6 / (plan.connections as f64 * seconds),
    })
}

/// The players' side: connects every player, says when all are up, then sends inputs at each
/// player's phase for the run's length. Returns (CPU seconds, inputs sent, updates received,
/// seconds measured).
fn play(
    plan: QuicFloorPlan,
    client_config: &ClientConfig,
    gateway: SocketAddr,
    started: &std::sync::mpsc::Sender<Instant>,
) -> anyhow::Result<(f64, u64, u64, f64)> {
    let mut nodes: Vec<Node> = (0..plan.connections.div_ceil(PER_SOCKET))
        .map(|_| Node::bind(None, plan.batch_sends))
        .collect::<anyhow::Result<_>>()?;
    let mut players: Vec<(usize, usize)> = Vec::with_capacity(plan.connections);
    let now = Instant::now();
    for index in 0..plan.connections {
        let node = index / PER_SOCKET;
        let handle = nodes[node].connect(client_config.clone(), gateway, now)?;
        nodes[node].drive(handle, now)?;
        players.push((node, handle));
    }
    for node in &mut nodes {
        node.flush()?;
    }
    let input = Bytes::from(vec![7u8; plan.input_bytes]);
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.inputs_per_second));
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    let mut connected = 0usize;
    let mut window: Option<(Instant, f64)> = None;
    let (mut inputs, mut updates) = (0u64, 0u64);
    // Each player's next input, in a heap by time.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        for node in &mut nodes {
            if node.receive(now)? {
                let touched = std::mem::take(&mut node.touched);
                for &handle in &touched {
                    if let Some(Some(connection)) = node.connections.get_mut(handle) {
                        while let Some(event) = connection.poll() {
                            if matches!(event, Event::Connected) {
                                connected += 1;
                            }
                        }
                        while connection.datagrams().recv().is_some() {
                            updates += u64::from(window.is_some());
                        }
                    }
                    node.drive(handle, now)?;
                }
                node.touched = touched;
            }
            node.expire(now)?;
        }
        let Some((from, cpu_from)) = window else {
            if connected == plan.connections {
                let at = Instant::now();
                window = Some((at, thread_cpu_seconds()?));
                started.send(at).context("the gateway thread ended")?;
                for index in 0..players.len() {
                    due.push(Reverse((at + period.mul_f64(index as f64 / players.len() as f64), index)));
                }
            } else {
                anyhow::ensure!(
                    now < setup_deadline,
                    "{connected} of {} QUIC connections up after 30 s",
                    plan.connections
                );
                for node in &mut nodes {
                    node.flush()?;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            continue;
        };
        let elapsed = from.elapsed();
        if elapsed >= Duration::from_secs_f64(plan.seconds) {
            for node in &mut nodes {
                node.flush()?;
            }
            return Ok((thread_cpu_seconds()? - cpu_from, inputs, updates, elapsed.as_secs_f64()));
        }
        while let Some(&Reverse((at, index))) = due.peek() {
            if at > now {
                break;
            }
            due.pop();
            due.push(Reverse((at + period, index)));
            let (node, handle) = players[index];
            if let Some(Some(connection)) = nodes[node].connections.get_mut(handle)
                && connection.datagrams().send(input.clone(), true).is_ok()
            {
                inputs += 1;
            }
            nodes[node].drive(handle, now)?;
        }
        for node in &mut nodes {
            node.flush()?;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
