//! Handoff links: one QUIC connection per handoff (or per hot-standby feed, which starts with
//! `Follow` instead of `Begin`), a control stream (bidirectional, unpaced) and a bulk stream
//! (source to target, paced by a token bucket so the migration does not starve other traffic on
//! the link; invariant 6).
//!
//! Frames are length-prefixed handoff messages, decoded with checked rkyv access; anything that
//! does not decode ends that link (and so that handoff attempt), nothing else. A link's readers
//! hold at most [`LINK_IN_FLIGHT_BYTES`] of messages the region thread has not handled yet, the
//! archives prepared from them counted in.
//!
//! A handoff target's bulk reader prepares each `Chunk` and `Delta` of at least
//! [`PREPARE_AT_LEAST`] bytes (`codec::prepare`: validated, decoded and its values hashed for the
//! digest) on a blocking thread, with a clone of the region's registry, so that the region's
//! thread only inserts the values while the next archive is prepared.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use baton_net::{Packer, TokenBucket};
use baton_sdk::codec::{self, DecodeLimits, Prepared};
use baton_sdk::handoff::Message;
use baton_sdk::handoff::message::{MAX_MESSAGE_BYTES, MessageError};
use baton_sdk::rkyv::util::AlignedVec;
use baton_sdk::wire::RegionId;
use baton_sdk::{RegionLogic, Registry};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::Slot;

static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_link_id() -> u64 {
    NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
use crate::region_loop::{Command, LinkHandle};

/// Accepts handoff links from sources and attaches each to the pre-warmed slot of its region.
pub(crate) async fn accept_loop<L: RegionLogic + 'static>(
    endpoint: quinn::Endpoint,
    regions: Arc<Mutex<HashMap<RegionId, Slot<L>>>>,
    hub: Arc<crate::upstream::GatewayHub>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let regions = regions.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::info!(%error, "refused a cluster connection");
                    return;
                }
            };
            if baton_net::negotiated_alpn(&connection).as_deref() == Some(baton_sdk::wire::upstream::ALPN_UPSTREAM) {
                crate::upstream::serve_gateway(connection, hub, regions).await;
                return;
            }
            if let Err(reason) = serve_incoming(connection.clone(), regions).await {
                tracing::warn!(peer = %connection.remote_address(), reason, "closing a handoff link");
                connection.close(1u32.into(), reason.as_bytes());
            }
        });
    }
}

async fn serve_incoming<L: RegionLogic + 'static>(
    connection: quinn::Connection,
    regions: Arc<Mutex<HashMap<RegionId, Slot<L>>>>,
) -> Result<(), String> {
    let (control_send, mut control_recv) = connection.accept_bi().await.map_err(|error| error.to_string())?;
    let first = baton_net::read_frame(&mut control_recv, MAX_MESSAGE_BYTES)
        .await
        .map_err(|error| error.to_string())?
        .ok_or("link closed before Begin")?;
    let begin = Message::decode(&first).map_err(|error| error.to_string())?;
    let (Message::Begin { region, .. } | Message::Follow { region, .. }) = &begin else {
        return Err("the first message of a handoff link must be Begin or Follow".to_owned());
    };
    let region = RegionId(*region);
    let (sender, registry) = regions
        .lock()
        .ok()
        .and_then(|regions| regions.get(&region).map(|slot| (slot.sender.clone(), slot.registry.clone())))
        .ok_or_else(|| format!("no slot is prepared for region {region}"))?;
    // A handoff's target applies what it receives; a standby follows rounds as they come, raw.
    let archives = matches!(begin, Message::Begin { .. }).then_some(registry);
    let (control_tx, control_rx) = unbounded_channel();
    // A target sends no bulk; the channel exists so the handle has one shape.
    let (bulk_tx, _bulk_rx) = unbounded_channel();
    tokio::spawn(write_loop(connection.clone(), control_send, control_rx, None, None));
    let link = next_link_id();
    let send = |command: Command<L>| sender.send(command).map_err(|_| "the region stopped".to_owned());
    send(Command::Attach(LinkHandle { id: link, control: control_tx, bulk: bulk_tx }))?;
    send(Command::Peer { link, message: begin, held: None, prepared: None })?;
    let in_flight = Arc::new(Semaphore::new(LINK_IN_FLIGHT_BYTES));
    let bulk_sender = sender.clone();
    let bulk_connection = connection.clone();
    let bulk_in_flight = in_flight.clone();
    tokio::spawn(async move {
        if let Ok(recv) = bulk_connection.accept_uni().await
            && !read_loop(recv, bulk_sender, link, bulk_in_flight, false, archives).await
        {
            // An invalid bulk message closes the whole link: the control stream's reader then
            // reports it lost and the attempt ends.
            bulk_connection.close(1u32.into(), b"invalid bulk message");
        }
    });
    let _ = read_loop(control_recv, sender, link, in_flight, true, None).await;
    Ok(())
}

/// How late the runtime's timer may wake a paced writer: it keeps time in whole milliseconds,
/// so the pacer lets a message go up to this much of the cap early ([`TokenBucket::delay_with_slack`]).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// A paced writer's waits up to this long are slept on a blocking thread, which wakes within
/// tens of microseconds. The runtime's timer rounds a wait up to its next millisecond and then
/// wakes the writer when a worker is free: in the 80 MB handoff-bench case at 200 MB/s a paced
/// message went 0.95 ms after its wait at the median (1.7 ms at the 90th percentile), against
/// 0.28 ms (1.4 ms) on a blocking thread (docs/benchmarks.md). Longer waits (a cap under 20 MB/s
/// for a 1 MiB message) take the runtime's timer, whose millisecond is then a small part of them.
const PRECISE_WAIT_MAX: Duration = Duration::from_millis(50);

/// How the bulk stream of the links a host opens is paced and compressed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BulkSettings {
    /// The cap, bytes per second.
    pub(crate) bytes_per_second: u64,
    /// The pacer's burst, bytes.
    pub(crate) burst_bytes: u64,
    /// Whether bulk messages are compressed when that pays.
    pub(crate) compression: bool,
}

/// Connects to a target (with `client`, or the endpoint's default client configuration) and returns
/// where the region thread sends its messages.
pub(crate) fn connect<L: RegionLogic + 'static>(
    runtime: &tokio::runtime::Handle,
    endpoint: quinn::Endpoint,
    client: Option<quinn::ClientConfig>,
    peer: SocketAddr,
    commands: mpsc::Sender<Command<L>>,
    bulk: BulkSettings,
) -> LinkHandle {
    let (control_tx, control_rx) = unbounded_channel();
    let (bulk_tx, bulk_rx) = unbounded_channel();
    let link = next_link_id();
    runtime.spawn(async move {
        let connected = match client {
            Some(client) => baton_net::connect_with(&endpoint, client, peer).await,
            None => baton_net::connect(&endpoint, peer).await,
        };
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%peer, %error, "handoff link failed");
                let _ = commands.send(Command::LinkLost { link });
                return;
            }
        };
        let opened = async {
            let (control_send, control_recv) = connection.open_bi().await?;
            let bulk_send = connection.open_uni().await?;
            Ok::<_, quinn::ConnectionError>((control_send, control_recv, bulk_send))
        };
        let (control_send, control_recv, bulk_send) = match opened.await {
            Ok(streams) => streams,
            Err(error) => {
                tracing::warn!(%peer, %error, "opening handoff streams failed");
                let _ = commands.send(Command::LinkLost { link });
                return;
            }
        };
        tokio::spawn(write_loop(connection.clone(), control_send, control_rx, None, None));
        let bucket = TokenBucket::new(bulk.bytes_per_second, bulk.burst_bytes, Instant::now());
        let packer = bulk.compression.then(|| Packer::new(bulk.bytes_per_second));
        tokio::spawn(write_loop(connection.clone(), bulk_send, bulk_rx, Some(bucket), packer));
        let in_flight = Arc::new(Semaphore::new(LINK_IN_FLIGHT_BYTES));
        let _ = read_loop(control_recv, commands, link, in_flight, true, None).await;
    });
    LinkHandle { id: link, control: control_tx, bulk: bulk_tx }
}

/// Writes messages until the region thread drops its sender; paces when given a bucket, and
/// then compresses bulk messages when that pays at the rate that holds them back ([`Packer`]).
async fn write_loop(
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    mut messages: UnboundedReceiver<Message>,
    mut bucket: Option<TokenBucket>,
    mut packer: Option<Packer>,
) {
    while let Some(message) = messages.recv().await {
        let mut bytes = match message.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "could not encode a handoff message");
                break;
            }
        };
        if let Some(packer) = packer.as_mut() {
            // What the congestion controller allows now: below the cap, the link holds back.
            let path = connection.stats().path;
            packer.link_rate(path.cwnd, path.rtt);
        }
        if let Some(bucket) = bucket.as_mut() {
            let Some(sent) = pack_if_it_pays(message, bytes, bucket, packer.as_mut(), Instant::now()).await else {
                break;
            };
            bytes = sent;
            let wait = bucket.delay_with_slack(Instant::now(), bytes.len(), TIMER_SLACK);
            pace(wait).await;
            bucket.consume(Instant::now(), bytes.len());
        }
        if let Err(error) = baton_net::write_frame(&mut send, &bytes).await {
            tracing::debug!(%error, "handoff stream closed");
            break;
        }
    }
    let _ = send.finish();
    // The control writer ending means the region thread is done with this link.
    if bucket.is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        connection.close(0u32.into(), b"done");
    }
}

/// Waits `wait` for the pacer: on a blocking thread when it is short (`PRECISE_WAIT_MAX`), else
/// on the runtime's timer (also when the runtime can no longer start a blocking thread).
async fn pace(wait: Duration) {
    if wait.is_zero() {
        return;
    }
    // The deadline is set now: a blocking thread that starts late (the pool is shared) sleeps less.
    let until = Instant::now() + wait;
    let sleep = move || std::thread::sleep(until.saturating_duration_since(Instant::now()));
    if wait <= PRECISE_WAIT_MAX && tokio::task::spawn_blocking(sleep).await.is_ok() {
        return;
    }
    tokio::time::sleep_until(until.into()).await;
}

/// What a paced writer sends for `message` (encoded as `bytes`): compressed into a `Packed`
/// when `packer` says that pays for a message held back (the pacer would make it wait at `now`,
/// or the link's congestion controller allows less than the cap; protocol.md §1) and the packed frame is smaller
/// and within the message limit, else `bytes`. The caller paces and consumes the bucket by the
/// bytes returned, so the cap counts what crosses the link. Compressing a message of up to
/// [`MAX_MESSAGE_BYTES`] takes milliseconds, so it runs on a blocking thread, not on the
/// runtime's workers, which carry the region's players too. `None` only when the runtime is
/// shutting down.
async fn pack_if_it_pays(
    message: Message,
    bytes: AlignedVec,
    bucket: &mut TokenBucket,
    packer: Option<&mut Packer>,
    now: Instant,
) -> Option<AlignedVec> {
    let Some(packer) = packer else {
        return Some(bytes);
    };
    if !(message.is_bulk() && packer.should_pack(bytes.len(), bucket.delay_with_slack(now, bytes.len(), TIMER_SLACK))) {
        return Some(bytes);
    }
    let (bytes, packed, took) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // Whatever happens to the compression, the message's bytes come back to be sent.
        let packed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            message.pack(&bytes).map(|packed| packed.encode())
        }))
        .unwrap_or_else(|_| Some(Err(MessageError::Encode("compressing it panicked".to_owned()))));
        (bytes, packed, started.elapsed())
    })
    .await
    .ok()?;
    let packed_bytes = match &packed {
        Some(Ok(encoded)) => encoded.len(),
        _ => bytes.len(),
    };
    packer.packed(bytes.len(), packed_bytes, took);
    Some(match packed {
        Some(Ok(encoded)) if encoded.len() < bytes.len() && encoded.len() <= MAX_MESSAGE_BYTES => {
            baton_sdk::events::bulk_packed(bytes.len(), encoded.len());
            encoded
        }
        Some(Err(error)) => {
            tracing::warn!(%error, "could not encode a packed message; sending it as it is");
            bytes
        }
        _ => bytes,
    })
}

/// The most bytes of one link's messages read but not yet handled by the region thread, with
/// what the archives prepared from them hold ([`DecodedArchive::held_bytes`], an estimate that
/// leaves out what values hold on the heap). A reader at the limit stops reading, and QUIC's flow
/// control then holds the sender back, so what a region thread slower than its link (or a peer
/// whose packed messages unpack to many times their size) leaves queued is bounded per link: this,
/// plus the one message each of its two readers holds while it waits for room.
pub(crate) const LINK_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Forwards decoded (and unpacked) messages to the region thread; reports the link lost when the
/// control stream ends or anything fails (`report_loss`). Each message holds its share of the
/// link's `in_flight` budget until the region thread has handled it, and a prepared archive its
/// own share besides ([`DecodedArchive::held_bytes`]). A packed message is unpacked, and with
/// `archives` (the region's registry) a `Chunk` or `Delta` of at least [`PREPARE_AT_LEAST`] bytes
/// prepared, on a blocking thread; `in_flight` then holds [`LINK_IN_FLIGHT_BYTES`] permits, as every
/// link's does. False when it ended on an invalid message.
async fn read_loop<L: RegionLogic + 'static>(
    mut recv: quinn::RecvStream,
    commands: mpsc::Sender<Command<L>>,
    link: u64,
    in_flight: Arc<Semaphore>,
    report_loss: bool,
    archives: Option<Arc<Registry>>,
) -> bool {
    let mut valid = true;
    loop {
        let frame = match baton_net::read_frame(&mut recv, MAX_MESSAGE_BYTES).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "handoff stream ended");
                break;
            }
        };
        let message = match Message::decode(&frame) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "dropping a handoff link that sent an invalid message");
                valid = false;
                break;
            }
        };
        let share = message_share(&message, frame.len());
        drop(frame);
        let Ok(mut held) = in_flight.clone().acquire_many_owned(share).await else {
            break;
        };
        let blocking = matches!(message, Message::Packed { .. }) || (archives.is_some() && worth_preparing(&message));
        let registry = archives.clone();
        let work = move || -> Result<_, MessageError> {
            let message = message.unpack()?;
            let prepared = registry.and_then(|registry| prepare(&registry, &message));
            Ok((message, prepared))
        };
        let handled = if blocking {
            match tokio::task::spawn_blocking(work).await {
                Ok(handled) => handled,
                Err(error) => {
                    // Unpacking or preparing panicked (or the runtime is stopping): the link is no
                    // good.
                    tracing::warn!(%error, "dropping a handoff link whose message could not be unpacked or prepared");
                    valid = false;
                    break;
                }
            }
        } else {
            work()
        };
        match handled {
            Ok((message, prepared)) => {
                if let Some(Ok(archive)) = &prepared {
                    let more = extra_share(archive.held_bytes(), share, LINK_IN_FLIGHT_BYTES);
                    let Ok(more) = in_flight.clone().acquire_many_owned(more).await else {
                        break;
                    };
                    held.merge(more);
                }
                if commands.send(Command::Peer { link, message, held: Some(held), prepared }).is_err() {
                    return true;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "dropping a handoff link that sent an invalid message");
                valid = false;
                break;
            }
        }
    }
    if report_loss {
        let _ = commands.send(Command::LinkLost { link });
    }
    valid
}

/// What a prepared archive holding `held` bytes takes of a link's `budget` besides its message's
/// `share`: all of it, as long as the two together stay within the budget, so that one message
/// never waits for more than the budget has.
fn extra_share(held: usize, share: u32, budget: usize) -> u32 {
    u32::try_from(held.min(budget.saturating_sub(share as usize))).unwrap_or(u32::MAX)
}

/// The archive of a `Chunk` or `Delta`, prepared against `registry` (`None` for other messages).
/// The target checks its own decode limits again; these are the runtime's.
fn prepare(registry: &Registry, message: &Message) -> Option<Prepared> {
    match message {
        Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } if worth_preparing(message) => {
            Some(codec::prepare(registry, bytes, DecodeLimits::default()))
        }
        _ => None,
    }
}

/// Archives smaller than this go to the region's thread raw: preparing one takes little off that
/// thread, and the hop to a blocking thread can wait for a core on a busy host (a sample-world
/// round is about 25 kB; an 80 MB region's parts are about 220 kB).
const PREPARE_AT_LEAST: usize = 64 * 1024;

/// Whether `message` holds an archive big enough to prepare away from the region's thread.
fn worth_preparing(message: &Message) -> bool {
    matches!(message, Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } if bytes.len() >= PREPARE_AT_LEAST)
}

/// How much of a link's in-flight budget `message` (a frame of `frame_bytes`) holds: what it
/// unpacks to (as it claims, at most the message limit) or its frame, never more than the budget.
fn message_share(message: &Message, frame_bytes: usize) -> u32 {
    let bytes = match message {
        Message::Packed { raw_bytes, .. } => (*raw_bytes as usize).min(MAX_MESSAGE_BYTES),
        _ => frame_bytes,
    };
    u32::try_from(bytes.clamp(1, LINK_IN_FLIGHT_BYTES)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::test_game::NoGame;

    fn delta(bytes: Vec<u8>) -> Message {
        Message::Delta { handoff: 4, round: 2, part: 0, bytes }
    }

    /// What `pack_if_it_pays` sends, the message's own encoding beside it.
    async fn sent(
        message: &Message,
        bucket: &mut TokenBucket,
        packer: Option<&mut Packer>,
        now: Instant,
    ) -> (AlignedVec, AlignedVec) {
        let encoded = message.encode().unwrap();
        let sent = pack_if_it_pays(message.clone(), encoded.clone(), bucket, packer, now).await.unwrap();
        (sent, encoded)
    }

    #[tokio::test]
    async fn a_held_back_bulk_message_goes_compressed_and_its_compressed_bytes_are_paced() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(1_000_000, 64 * 1024, now);
        let mut packer = Packer::new(1_000_000);
        // The bucket holds its burst: a message within it goes at once, as it is.
        let (sent_small, encoded) = sent(&delta(vec![7; 32 * 1024]), &mut bucket, Some(&mut packer), now).await;
        assert_eq!(sent_small.as_slice(), encoded.as_slice());
        bucket.consume(now, sent_small.len());
        // The next would wait for the bucket: it goes compressed, and waits only for its bytes.
        let big = delta((0..200_000u32).map(|i| (i % 13) as u8).collect());
        let (sent_big, encoded) = sent(&big, &mut bucket, Some(&mut packer), now).await;
        assert!(sent_big.len() < encoded.len() / 4, "{} of {}", sent_big.len(), encoded.len());
        assert!(bucket.delay(now, sent_big.len()) < bucket.delay(now, encoded.len()));
        assert_eq!(Message::decode(&sent_big).unwrap().unpack().unwrap(), big);
        assert!(packer.ratio().is_some_and(|ratio| ratio > 4.0));
        // Control messages, and any message of a link without a packer, go as they are.
        let abort = Message::Abort { handoff: 4, reason: "x".repeat(10_000) };
        let (sent_abort, encoded) = sent(&abort, &mut bucket, Some(&mut packer), now).await;
        assert_eq!(sent_abort.as_slice(), encoded.as_slice());
        let (unpacked, encoded) = sent(&big, &mut bucket, None, now).await;
        assert_eq!(unpacked.as_slice(), encoded.as_slice());
        // A message whose compressed payload is smaller but whose packed frame is not (its
        // header) goes as it is: noise, with a run of zeros that LZ4 saves a few bytes on.
        let mut rng = fastrand::Rng::with_seed(7);
        let noise: Vec<u8> = (0..60_000).map(|_| rng.u8(..)).collect();
        let barely = (0..400)
            .map(|zeros| delta([noise.clone(), vec![0; zeros]].concat()))
            .find(|message| {
                let encoded = message.encode().unwrap();
                message.pack(&encoded).is_some_and(|packed| packed.encode().unwrap().len() >= encoded.len())
            })
            .expect("some run of zeros compresses by less than the frame's header");
        let mut fresh = Packer::new(1_000_000);
        let (sent_barely, encoded) = sent(&barely, &mut bucket, Some(&mut fresh), now).await;
        assert!(!bucket.delay(now, encoded.len()).is_zero(), "the pacer holds it back");
        assert_eq!(sent_barely.as_slice(), encoded.as_slice());
        // A message that does not compress goes as it is.
        let noise = delta((0..100_000).map(|_| fastrand::u8(..)).collect());
        let (sent_noise, encoded) = sent(&noise, &mut bucket, Some(&mut packer), now).await;
        assert_eq!(sent_noise.as_slice(), encoded.as_slice());
    }

    #[test]
    fn a_message_holds_what_it_unpacks_to_of_the_link_s_budget() {
        let big = delta((0..200_000u32).map(|i| (i % 13) as u8).collect());
        let encoded = big.encode().unwrap();
        let packed = big.pack(&encoded).unwrap();
        let frame = packed.encode().unwrap().len();
        assert!(frame < encoded.len() / 4);
        assert_eq!(message_share(&packed, frame), u32::try_from(encoded.len()).unwrap());
        assert_eq!(message_share(&big, 1234), 1234);
        // Never nothing, never more than the budget or the message limit.
        assert_eq!(message_share(&big, 0), 1);
        let claims_too_much = Message::Packed { handoff: 4, raw_bytes: u32::MAX, bytes: vec![0; 8] };
        assert_eq!(message_share(&claims_too_much, 100), u32::try_from(MAX_MESSAGE_BYTES).unwrap());
        assert_eq!(message_share(&big, usize::MAX), u32::try_from(LINK_IN_FLIGHT_BYTES).unwrap());
    }

    /// A bulk stream over a real QUIC link on loopback that carries `frames` and ends, read from
    /// the receiving side; the sending side's connection (to keep until the stream is read) and
    /// the directory holding the test's certificates (to remove).
    async fn stream_of(
        name: &str,
        frames: &[AlignedVec],
    ) -> (quinn::RecvStream, quinn::Connection, std::path::PathBuf) {
        let directory = std::env::temp_dir().join(format!("baton-link-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let ca = baton_net::DevCa::open_or_create(&directory).unwrap();
        let identities: Vec<_> = ["source", "target"]
            .iter()
            .map(|name| {
                ca.issue(name).unwrap();
                baton_net::ClusterIdentity::load(&directory, name).unwrap()
            })
            .collect();
        let loopback = "127.0.0.1:0".parse().unwrap();
        let settings = baton_net::LinkSettings::default();
        let source = baton_net::cluster_endpoint(loopback, &identities[0], settings).unwrap();
        let target = baton_net::cluster_endpoint(loopback, &identities[1], settings).unwrap();
        let target_address = target.local_addr().unwrap();
        let accepted = tokio::spawn(async move { target.accept().await.unwrap().await.unwrap() });
        let connection = baton_net::connect(&source, target_address).await.unwrap();
        let mut send = connection.open_uni().await.unwrap();
        for frame in frames {
            baton_net::write_frame(&mut send, frame).await.unwrap();
        }
        send.finish().unwrap();
        let incoming = accepted.await.unwrap();
        (incoming.accept_uni().await.unwrap(), connection, directory)
    }

    /// The region thread's next command, waited for on a blocking thread.
    async fn next(region: mpsc::Receiver<Command<NoGame>>) -> (Command<NoGame>, mpsc::Receiver<Command<NoGame>>) {
        tokio::task::spawn_blocking(move || {
            let command = region.recv().unwrap();
            (command, region)
        })
        .await
        .unwrap()
    }

    #[test]
    fn a_prepared_archive_takes_what_it_holds_of_the_budget_and_never_more_than_is_left() {
        assert_eq!(extra_share(300, 100, 1000), 300);
        assert_eq!(extra_share(950, 100, 1000), 900, "with its message, the whole budget");
        assert_eq!(extra_share(10, 1000, 1000), 0);
        assert_eq!(extra_share(usize::MAX, 0, LINK_IN_FLIGHT_BYTES), u32::try_from(LINK_IN_FLIGHT_BYTES).unwrap());
    }

    #[tokio::test]
    async fn a_target_s_reader_prepares_each_received_archive_and_nothing_else() {
        let mut registry = baton_sdk::Registry::new();
        registry.register::<baton_sdk::physics::Body>().unwrap();
        let mut world = baton_sdk::World::new(registry);
        let tracker = world.create_tracker();
        let round = |world: &mut baton_sdk::World, bodies: u16| {
            for at in 0..bodies {
                let entity = world.spawn();
                let body = baton_sdk::physics::Body::new(
                    baton_sdk::physics::BodyKind::Dynamic,
                    baton_sdk::physics::Shape::Ball { radius: 0.5 },
                    [f32::from(at), 2.0, 3.0],
                );
                world.insert(entity, body).unwrap();
            }
            let changes = world.changes(tracker);
            let mut parts = codec::encode_delta(world, &changes, 2, codec::ChunkConfig::default()).unwrap();
            assert_eq!(parts.len(), 1);
            parts.remove(0).to_vec()
        };
        let big = round(&mut world, 2000);
        assert!(big.len() >= PREPARE_AT_LEAST);
        let small = round(&mut world, 1);
        let messages = [
            delta(big),
            delta(vec![7; PREPARE_AT_LEAST]),
            delta(small),
            Message::Freeze { handoff: 4, round: 2, parts: 2, digest: 0, tick: 1, next_tick_in_us: 0 },
        ];
        let frames: Vec<AlignedVec> = messages.iter().map(|message| message.encode().unwrap()).collect();
        let (recv, _connection, directory) = stream_of("prepare", &frames).await;
        let (commands, region) = mpsc::channel::<Command<NoGame>>();
        let in_flight = Arc::new(Semaphore::new(LINK_IN_FLIGHT_BYTES));
        let reader = tokio::spawn(read_loop(recv, commands, 7, in_flight, false, Some(world.registry().clone())));
        let (good, region) = next(region).await;
        let Command::Peer { message, prepared: Some(Ok(prepared)), held: Some(permit), .. } = good else {
            panic!("a valid archive arrives prepared");
        };
        assert_eq!(message, messages[0], "with its message as sent");
        assert_eq!(permit.num_permits(), frames[0].len() + prepared.held_bytes(), "it holds the budget for both");
        let mut copy = baton_sdk::World::new(world.registry().as_ref().clone());
        prepared.apply(&mut copy);
        assert_eq!(copy.entity_count(), 2000);
        assert_eq!(copy.digest(), copy.digest_full(), "its values were hashed as the world hashes them");
        let (bad, region) = next(region).await;
        assert!(matches!(bad, Command::Peer { prepared: Some(Err(_)), .. }), "an invalid archive's error is handed on");
        let (small, region) = next(region).await;
        assert!(
            matches!(&small, Command::Peer { message, prepared: None, .. } if *message == messages[2]),
            "a small archive goes raw"
        );
        let (control, _region) = next(region).await;
        assert!(
            matches!(control, Command::Peer { prepared: None, .. }),
            "a message without an archive has nothing prepared"
        );
        assert!(reader.await.unwrap(), "every message was a valid message");
        let _ = std::fs::remove_dir_all(&directory);
    }

    /// A reader in front of a region thread that has not handled anything: what it forwards holds
    /// the link's budget until handled, packed messages arrive unpacked, and once the budget is
    /// held the reader forwards nothing more until a message is handled.
    #[tokio::test]
    async fn a_link_s_reader_forwards_no_more_than_its_budget_until_the_region_handles_it() {
        // Three messages of 200 kB against a budget of 500 kB: two fit, the third waits. The
        // second goes packed.
        let messages: Vec<Message> =
            (0..3u8).map(|round| delta((0..200_000u32).map(|i| (i % 13) as u8 ^ round).collect())).collect();
        let encoded = messages[1].encode().unwrap();
        let frames = [
            messages[0].encode().unwrap(),
            messages[1].pack(&encoded).unwrap().encode().unwrap(),
            messages[2].encode().unwrap(),
        ];
        let (recv, _connection, directory) = stream_of("budget", &frames).await;
        let budget = 500_000;
        let in_flight = Arc::new(Semaphore::new(budget));
        let (commands, region) = mpsc::channel::<Command<NoGame>>();
        let reader = tokio::spawn(read_loop(recv, commands, 7, in_flight.clone(), false, None));
        let (first, region) = next(region).await;
        let (second, region) = next(region).await;
        let mut held = 0;
        for (command, sent) in [(&first, &messages[0]), (&second, &messages[1])] {
            let Command::Peer { link: 7, message, held: Some(permit), prepared: None } = command else {
                panic!("expected a message of link 7 holding its share");
            };
            assert_eq!(message, sent, "arrives as sent, unpacked");
            assert_eq!(permit.num_permits(), sent.encode().unwrap().len());
            held += permit.num_permits();
        }
        // What is left of the budget (or, once the reader waits for the third message, the part
        // of it set aside for that wait) is less than the third message needs.
        assert!(in_flight.available_permits() <= budget - held);
        assert!(budget - held < frames[2].len(), "the third does not fit");
        // The reader is now waiting for budget: the stream's end is not reached.
        assert!(!reader.is_finished());
        drop(first);
        let (third, region) = next(region).await;
        assert!(matches!(&third, Command::Peer { message, held: Some(_), .. } if *message == messages[2]));
        assert!(reader.await.unwrap(), "every message was valid");
        drop((second, third, region));
        assert_eq!(in_flight.available_permits(), budget);
        let _ = std::fs::remove_dir_all(&directory);
    }
}
