//! Handoff links: one QUIC connection per handoff (or per hot-standby feed, which starts with
//! `Follow` instead of `Begin`), a control stream (bidirectional, unpaced) and a bulk stream
//! (source to target, paced by a token bucket so the migration does not starve other traffic on
//! the link; invariant 6).
//!
//! Frames are length-prefixed handoff messages, decoded with checked rkyv access; anything that
//! does not decode ends that link (and so that handoff attempt), nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use baton_net::{Packer, TokenBucket};
use baton_sdk::RegionLogic;
use baton_sdk::handoff::Message;
use baton_sdk::handoff::message::MAX_MESSAGE_BYTES;
use baton_sdk::rkyv::util::AlignedVec;
use baton_sdk::wire::RegionId;
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
    let sender = regions
        .lock()
        .ok()
        .and_then(|regions| regions.get(&region).map(|slot| slot.sender.clone()))
        .ok_or_else(|| format!("no slot is prepared for region {region}"))?;
    let (control_tx, control_rx) = unbounded_channel();
    // A target sends no bulk; the channel exists so the handle has one shape.
    let (bulk_tx, _bulk_rx) = unbounded_channel();
    tokio::spawn(write_loop(connection.clone(), control_send, control_rx, None, None));
    let link = next_link_id();
    let send = |command: Command<L>| sender.send(command).map_err(|_| "the region stopped".to_owned());
    send(Command::Attach(LinkHandle { id: link, control: control_tx, bulk: bulk_tx }))?;
    send(Command::Peer { link, message: begin })?;
    let bulk_sender = sender.clone();
    let bulk_connection = connection.clone();
    tokio::spawn(async move {
        if let Ok(recv) = bulk_connection.accept_uni().await
            && !read_loop(recv, bulk_sender, link, false).await
        {
            // An invalid bulk message closes the whole link: the control stream's reader then
            // reports it lost and the attempt ends.
            bulk_connection.close(1u32.into(), b"invalid bulk message");
        }
    });
    let _ = read_loop(control_recv, sender, link, true).await;
    Ok(())
}

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
        let _ = read_loop(control_recv, commands, link, true).await;
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
            bytes = pack_if_it_pays(&message, bytes, bucket, packer.as_mut(), Instant::now());
            let wait = bucket.delay(Instant::now(), bytes.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
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

/// What a paced writer sends for `message` (encoded as `bytes`): compressed into a `Packed`
/// when `packer` says that pays for a message held back (the pacer would make it wait at `now`,
/// or the link's congestion controller allows less than the cap; protocol.md §1) and the packed frame is smaller
/// and within the message limit, else `bytes`. The caller paces and consumes the bucket by the
/// bytes returned, so the cap counts what crosses the link.
fn pack_if_it_pays(
    message: &Message,
    bytes: AlignedVec,
    bucket: &mut TokenBucket,
    packer: Option<&mut Packer>,
    now: Instant,
) -> AlignedVec {
    let Some(packer) = packer else {
        return bytes;
    };
    if !(message.is_bulk() && packer.should_pack(bytes.len(), bucket.delay(now, bytes.len()))) {
        return bytes;
    }
    let started = Instant::now();
    let packed = message.pack(&bytes).map(|packed| packed.encode());
    let packed_bytes = match &packed {
        Some(Ok(encoded)) => encoded.len(),
        _ => bytes.len(),
    };
    packer.packed(bytes.len(), packed_bytes, started.elapsed());
    match packed {
        Some(Ok(encoded)) if encoded.len() < bytes.len() && encoded.len() <= MAX_MESSAGE_BYTES => encoded,
        Some(Err(error)) => {
            tracing::warn!(%error, "could not encode a packed message; sending it as it is");
            bytes
        }
        _ => bytes,
    }
}

/// Forwards decoded (and unpacked) messages to the region thread; reports the link lost when the
/// control stream ends or anything fails (`report_loss`). False when it ended on an invalid
/// message.
async fn read_loop<L: RegionLogic + 'static>(
    mut recv: quinn::RecvStream,
    commands: mpsc::Sender<Command<L>>,
    link: u64,
    report_loss: bool,
) -> bool {
    let mut valid = true;
    loop {
        match baton_net::read_frame(&mut recv, MAX_MESSAGE_BYTES).await {
            Ok(Some(frame)) => match Message::decode(&frame).and_then(Message::unpack) {
                Ok(message) => {
                    if commands.send(Command::Peer { link, message }).is_err() {
                        return true;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "dropping a handoff link that sent an invalid message");
                    valid = false;
                    break;
                }
            },
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "handoff stream ended");
                break;
            }
        }
    }
    if report_loss {
        let _ = commands.send(Command::LinkLost { link });
    }
    valid
}

#[cfg(test)]
mod tests {

    use super::*;

    fn delta(bytes: Vec<u8>) -> Message {
        Message::Delta { handoff: 4, round: 2, part: 0, bytes }
    }

    #[test]
    fn a_held_back_bulk_message_goes_compressed_and_its_compressed_bytes_are_paced() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(1_000_000, 64 * 1024, now);
        let mut packer = Packer::new(1_000_000);
        // The bucket holds its burst: a message within it goes at once, as it is.
        let small = delta(vec![7; 32 * 1024]);
        let encoded = small.encode().unwrap();
        let sent = pack_if_it_pays(&small, encoded.clone(), &mut bucket, Some(&mut packer), now);
        assert_eq!(sent.as_slice(), encoded.as_slice());
        bucket.consume(now, sent.len());
        // The next would wait for the bucket: it goes compressed, and waits only for its bytes.
        let big = delta((0..200_000u32).map(|i| (i % 13) as u8).collect());
        let encoded = big.encode().unwrap();
        let sent = pack_if_it_pays(&big, encoded.clone(), &mut bucket, Some(&mut packer), now);
        assert!(sent.len() < encoded.len() / 4, "{} of {}", sent.len(), encoded.len());
        assert!(bucket.delay(now, sent.len()) < bucket.delay(now, encoded.len()));
        assert_eq!(Message::decode(&sent).unwrap().unpack().unwrap(), big);
        assert!(packer.ratio().is_some_and(|ratio| ratio > 4.0));
        // Control messages, and any message of a link without a packer, go as they are.
        let abort = Message::Abort { handoff: 4, reason: "x".repeat(10_000) };
        let encoded = abort.encode().unwrap();
        let sent = pack_if_it_pays(&abort, encoded.clone(), &mut bucket, Some(&mut packer), now);
        assert_eq!(sent.as_slice(), encoded.as_slice());
        let encoded = big.encode().unwrap();
        assert_eq!(pack_if_it_pays(&big, encoded.clone(), &mut bucket, None, now).as_slice(), encoded.as_slice());
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
        let encoded = barely.encode().unwrap();
        assert!(!bucket.delay(now, encoded.len()).is_zero(), "the pacer holds it back");
        let mut fresh = Packer::new(1_000_000);
        let sent = pack_if_it_pays(&barely, encoded.clone(), &mut bucket, Some(&mut fresh), now);
        assert_eq!(sent.as_slice(), encoded.as_slice());
        // A message that does not compress goes as it is.
        let noise = delta((0..100_000).map(|_| fastrand::u8(..)).collect());
        let encoded = noise.encode().unwrap();
        let sent = pack_if_it_pays(&noise, encoded.clone(), &mut bucket, Some(&mut packer), now);
        assert_eq!(sent.as_slice(), encoded.as_slice());
    }
}
