//! The upstream protocol (version 6): what a gateway and a region server say to each other.
//!
//! A gateway keeps one QUIC connection (mutual TLS with cluster certificates, ALPN
//! [`ALPN_UPSTREAM`]) to each region server and multiplexes all its players routed there over
//! one bidirectional stream. Each frame is a little-endian `u32` length then postcard; a frame
//! carries one [`GatewayMessage`] (gateway to server) or [`ServerMessage`] (server to gateway).
//! Everything about a region is stamped with the sender's view of its ownership epoch; the
//! receiver refuses what is stale (invariant 1). Regions, players and epochs travel as their types
//! ([`RegionId`], [`PlayerId`], [`Epoch`]), each encoded as its `u64`. Player bytes (input payloads, views) are opaque
//! here and never reach rkyv; the avatar carried by a border crossing is an SDK archive that the
//! receiving region validates like any other.
//!
//! Version 2 adds `durable` to [`ServerMessage::Update`]: the player's last input held in state
//! that survives the loss of the server (the player protocol's durable acknowledgement). Version 3
//! adds [`GatewayMessage::Skip`] (the player protocol's `Skip`, relayed). Version 4 adds
//! [`ServerMessage::ResendInputs`]. Version 5 numbers each avatar's crossings
//! ([`Transfer::crossings`]) and lets a region answer for an avatar that left it
//! ([`ServerMessage::JoinMoved`], the `onward` of [`ServerMessage::ImmigrationRefused`]): a
//! crossing whose gateway died with the avatar on its way is found again when the player resumes;
//! [`GatewayMessage::Forget`] drops what regions kept of a player who left. Version 6 adds
//! `crossings` to [`ServerMessage::Arrived`]: which crossing of the avatar the arrival answers, so
//! an arrival repeated for an earlier crossing never ends a later one.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{Epoch, PlayerId, RegionId};

/// ALPN of the upstream protocol.
pub const ALPN_UPSTREAM: &[u8] = b"baton-upstream/1";
/// Version of the upstream message set.
pub const UPSTREAM_VERSION: u16 = 6;
/// Largest upstream frame, in bytes.
pub const MAX_UPSTREAM_FRAME: usize = crate::framing::MAX_FRAME_BYTES;

/// An avatar on its way from one region to a neighbour (a border crossing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The player.
    pub player: PlayerId,
    /// The region it leaves.
    pub from: RegionId,
    /// The region it enters.
    pub to: RegionId,
    /// The last input applied in `from`.
    pub last_applied: u64,
    /// Inputs received by `from` but not applied, in order: `(seq, payload)`.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// The avatar entity: an SDK bundle archive of its components (session excluded).
    #[serde(with = "serde_bytes")]
    pub avatar: Vec<u8>,
    /// How many borders this avatar has crossed, this one included: of two copies of one avatar
    /// (a crossing delivered twice, a region restored from state older than a departure) the one
    /// with more crossings is the live one.
    pub crossings: u64,
}

/// Gateway to region server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayMessage {
    /// First message: version and the gateway's name.
    Hello {
        /// [`UPSTREAM_VERSION`].
        version: u16,
        /// The gateway instance's name (unique among gateways).
        gateway: String,
    },
    /// Let `player` into `region` (spawning an avatar if it has no session there yet), and send
    /// its updates to this gateway. Answered by `Joined` or `JoinRefused`.
    Join {
        /// The region.
        region: RegionId,
        /// The gateway's epoch for it.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
    },
    /// `player` left for good: remove its session.
    Leave {
        /// The region.
        region: RegionId,
        /// The gateway's epoch for it.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
    },
    /// `player` left the game for good (its session ended; sent to every server after `Leave`):
    /// each region forgets the avatar it kept as it left, so a later session does not find it.
    Forget {
        /// The player.
        player: PlayerId,
    },
    /// One player input.
    Input {
        /// The region.
        region: RegionId,
        /// The gateway's epoch for it.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
        /// Sequence number.
        seq: u64,
        /// Game-defined bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// After a route flip: these players of `region` are served by this gateway.
    Attach {
        /// The region.
        region: RegionId,
        /// The new owner's epoch.
        epoch: Epoch,
        /// The players.
        players: Vec<PlayerId>,
    },
    /// Take in an avatar crossing the border into `transfer.to`.
    Immigrate {
        /// The gateway's epoch for `transfer.to`.
        epoch: Epoch,
        /// The avatar.
        transfer: Transfer,
    },
    /// `player`'s client no longer has its inputs up to `through` (acknowledged durable by state
    /// that was then lost): those the region has not applied are lost; it goes on after them.
    Skip {
        /// The region.
        region: RegionId,
        /// The gateway's epoch for it.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
        /// The last input the client dropped.
        through: u64,
    },
}

/// Region server to gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// First message: who this is and what it owns.
    Welcome {
        /// The server instance's name.
        server: String,
        /// Regions owned here, with their epochs.
        regions: Vec<(RegionId, Epoch)>,
    },
    /// This server owns `region` at `epoch` (a region created here, or taken over).
    Owning {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// The owner at `epoch` started handing `region` to the server at `target`.
    HandoffStarted {
        /// The region.
        region: RegionId,
        /// The source's epoch.
        epoch: Epoch,
        /// The target's cluster address.
        target: SocketAddr,
    },
    /// The owner at `epoch` froze `region`: hold its inputs.
    Frozen {
        /// The region.
        region: RegionId,
        /// The source's epoch.
        epoch: Epoch,
    },
    /// The handoff committed: the server at `owner` owns `region` at `epoch`.
    Committed {
        /// The region.
        region: RegionId,
        /// The new epoch.
        epoch: Epoch,
        /// The new owner's cluster address.
        owner: SocketAddr,
    },
    /// The handoff failed; this server owns `region` at `epoch`.
    Aborted {
        /// The region.
        region: RegionId,
        /// The epoch now.
        epoch: Epoch,
    },
    /// `player` is in `region`.
    Joined {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
        /// Its last applied input.
        last_applied: u64,
    },
    /// `player` is not in `region` but left it across a border (`transfer`, kept by `region` for
    /// a while after the avatar left): deliver it to `transfer.to` as an `Immigrate`. The answer
    /// to a `Join` of a player whose last crossing was lost with the gateway that carried it, or
    /// whose resume token names a region it has left since.
    JoinMoved {
        /// The region asked.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// The avatar as it left `region`.
        transfer: Transfer,
    },
    /// `player` could not join `region`.
    JoinRefused {
        /// The region.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// Why.
        reason: String,
    },
    /// Another gateway serves `player` now (it resumed there): drop the session here.
    Detached {
        /// The player.
        player: PlayerId,
    },
    /// A state update for one player.
    Update {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
        /// The tick.
        tick: u64,
        /// The player's last applied input.
        last_applied: u64,
        /// The player's last input held in state that survives the loss of this server.
        durable: u64,
        /// The game's view for the player.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The view of `region`'s objects near its border with `toward`, for players close to it.
    Border {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
        /// The neighbour the strip faces.
        toward: RegionId,
        /// The tick.
        tick: u64,
        /// Players of `toward` (or of `region`, crossing soon) near that border.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// `players` of `region` are within the neighbour-view distance of its border with `toward`.
    NearBorder {
        /// The region.
        region: RegionId,
        /// The neighbour.
        toward: RegionId,
        /// The players near that border now (replaces the previous list).
        players: Vec<PlayerId>,
    },
    /// An input this server did not take (it does not own the region, or the player is not in
    /// it): route it again.
    Bounced {
        /// The region it was sent to.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// Sequence number.
        seq: u64,
        /// Game-defined bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// An avatar left `transfer.from` across a border: deliver it to `transfer.to`.
    Emigrated {
        /// The epoch of `transfer.from`.
        epoch: Epoch,
        /// The avatar.
        transfer: Transfer,
    },
    /// The avatar arrived in `region`.
    Arrived {
        /// The region.
        region: RegionId,
        /// Its epoch.
        epoch: Epoch,
        /// The player.
        player: PlayerId,
        /// Its last applied input.
        last_applied: u64,
        /// The crossing this answers: the [`Transfer::crossings`] of the avatar delivered (the
        /// region may hold a copy with more, when the delivery was repeated).
        crossings: u64,
    },
    /// `transfer.to` could not take the avatar; deliver it back to `transfer.from`, or, with
    /// `onward`, deliver `onward` instead.
    ImmigrationRefused {
        /// The avatar.
        transfer: Transfer,
        /// Why.
        reason: String,
        /// The avatar came here and left again after `transfer` (it has more crossings): `transfer`
        /// is a stale copy, and `onward` is the avatar as it left `transfer.to` (a crossing lost
        /// with its gateway).
        onward: Option<Transfer>,
    },
    /// The owner at `epoch` stopped `region` (saved it and let it go, the way regions were
    /// restarted before handoffs): its players' sessions end; they reconnect once it runs again.
    Stopped {
        /// The region.
        region: RegionId,
        /// The epoch it had.
        epoch: Epoch,
    },
    /// `region` has waited a while for `player`'s input `from` while later ones are queued (it was
    /// lost on its way, e.g. at a server that died): ask the player's client to send every input
    /// it keeps again (the player frame `ResendInputs`, protocol.md §9).
    ResendInputs {
        /// The region.
        region: RegionId,
        /// The player.
        player: PlayerId,
        /// The input the region waits for.
        from: u64,
    },
}

pub use crate::framing::{UpstreamReader, encode_batch, encode_into};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::player::FrameError;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_in_pieces() {
        let messages = vec![
            ServerMessage::Welcome { server: "a".into(), regions: vec![(RegionId(1), Epoch(4))] },
            ServerMessage::Update {
                region: RegionId(1),
                epoch: Epoch(4),
                player: PlayerId(9),
                tick: 77,
                last_applied: 3,
                durable: 2,
                payload: vec![1; 300],
            },
            ServerMessage::Emigrated {
                epoch: Epoch(4),
                transfer: Transfer {
                    player: PlayerId(9),
                    from: RegionId(1),
                    to: RegionId(2),
                    last_applied: 3,
                    pending: vec![(4, vec![1, 2])],
                    avatar: vec![0; 100],
                    crossings: 3,
                },
            },
        ];
        let mut bytes = Vec::new();
        for message in &messages {
            encode_into(message, &mut bytes).unwrap();
        }
        let mut reader = UpstreamReader::default();
        let mut received = Vec::new();
        for piece in bytes.chunks(7) {
            reader.feed(piece);
            while let Some(message) = reader.next_message::<ServerMessage>().unwrap() {
                received.push(message);
            }
        }
        assert_eq!(received, messages);
        // The typed ids are encoded exactly as the bare numbers were (version 1 is unchanged).
        let typed =
            postcard::to_allocvec(&GatewayMessage::Join { region: RegionId(3), epoch: Epoch(7), player: PlayerId(9) })
                .unwrap();
        assert_eq!(typed, [1, 3, 7, 9], "Join is variant 1 followed by three varints");
        let mut reader = UpstreamReader::default();
        reader.feed(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(reader.next_message::<ServerMessage>(), Err(FrameError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn garbage_gives_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut reader = UpstreamReader::default();
            reader.feed(&bytes);
            for _ in 0..8 {
                match reader.next_message::<GatewayMessage>() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
