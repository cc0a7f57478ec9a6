//! What plain UDP costs on this machine, without QUIC, crypto or Baton: the floor under
//! `gateway-bench` (which measures it in the same run as the gateway) and `udp-floor`.
//!
//! One "gateway" socket echoes every datagram back to its sender; "client" sockets send `rate`
//! datagrams per second of `bytes` bytes to it, paced every millisecond, one system call per
//! datagram each way (as a QUIC stack does for connections to different peers). The figure is the
//! CPU the whole process used per datagram moved (each datagram counted once, sent and received).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What one floor run asks for.
#[derive(Clone, Copy, Debug)]
pub struct FloorPlan {
    /// Datagrams per second the clients send (the echo doubles what the machine moves).
    pub rate: u64,
    /// Bytes per datagram (1 to 1,400).
    pub bytes: usize,
    /// Client sockets (each with a thread reading its echoes).
    pub sockets: usize,
    /// How long to send.
    pub seconds: f64,
}

/// What one floor run measured.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Floor {
    /// Datagrams per second asked for.
    pub rate_asked: u64,
    /// Datagrams per second the clients sent.
    pub sent_per_second: f64,
    /// Datagrams the "gateway" echoed.
    pub echoed: u64,
    /// Echoes the clients received.
    pub received: u64,
    /// Sent plus echoed, per second.
    pub datagrams_moved_per_second: f64,
    /// CPU of this process over the run, in cores.
    pub cpu_cores: f64,
    /// CPU per datagram moved.
    pub cpu_us_per_datagram: f64,
}

/// CPU time of this process (user + system) in seconds, from /proc/self/stat.
pub fn process_cpu_seconds() -> anyhow::Result<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

/// User + system CPU time in seconds from a `stat` file of /proc (a process's or a thread's).
pub fn stat_cpu_seconds(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields.get(index).with_context(|| format!("short {path}"))?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name, in clock
    // ticks of USER_HZ, which is 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn bound() -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).context("binding a UDP socket")?;
    let buffers = socket2::SockRef::from(&socket);
    buffers.set_recv_buffer_size(4 << 20).context("sizing the receive buffer")?;
    buffers.set_send_buffer_size(4 << 20).context("sizing the send buffer")?;
    socket.set_read_timeout(Some(Duration::from_millis(100))).context("setting a read timeout")?;
    Ok(socket)
}

/// Runs the floor in this process (its threads only: run it when nothing else in the process is
/// busy, as its figure is the whole process's CPU).
pub fn measure(plan: FloorPlan) -> anyhow::Result<Floor> {
    if plan.rate < 1000 || plan.sockets == 0 || plan.bytes == 0 || plan.bytes > 1400 || plan.seconds <= 0.0 {
        anyhow::bail!("the floor needs a rate of at least 1000, 1 socket or more, 1 to 1400 bytes and a time above 0");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));

    let gateway = bound()?;
    let gateway_address = gateway.local_addr()?;
    let echo = {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((length, from)) = gateway.recv_from(&mut buffer)
                    && gateway.send_to(&buffer[..length], from).is_ok()
                {
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let clients: Vec<UdpSocket> = (0..plan.sockets).map(|_| bound()).collect::<anyhow::Result<_>>()?;
    let readers: Vec<_> = clients
        .iter()
        .map(|socket| {
            let socket = socket.try_clone()?;
            let (stop, received) = (stop.clone(), received.clone());
            Ok(std::thread::spawn(move || {
                let mut buffer = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buffer).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }))
        })
        .collect::<std::io::Result<_>>()?;

    let payload = vec![7u8; plan.bytes];
    let per_millisecond = plan.rate.div_ceil(1000);
    let cpu_before = process_cpu_seconds()?;
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(plan.seconds);
    let mut sent = 0u64;
    while started.elapsed() < run_for {
        for _ in 0..per_millisecond {
            let socket = &clients[(sent % clients.len() as u64) as usize];
            if socket.send_to(&payload, gateway_address).is_ok() {
                sent += 1;
            }
        }
        let due = started + Duration::from_secs_f64(sent as f64 / (per_millisecond * 1000) as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()? - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    for reader in readers {
        let _ = reader.join();
    }
    let echoed = echoed.load(Ordering::Relaxed);
    let moved = sent + echoed;
    Ok(Floor {
        rate_asked: plan.rate,
        sent_per_second: sent as f64 / elapsed,
        echoed,
        received: received.load(Ordering::Relaxed),
        datagrams_moved_per_second: moved as f64 / elapsed,
        cpu_cores: cpu / elapsed,
        cpu_us_per_datagram: cpu * 1e6 / moved.max(1) as f64,
    })
}
