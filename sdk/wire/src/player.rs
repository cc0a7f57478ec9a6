//! The player protocol (version 4): what a game client and a gateway say to each other.
//!
//! A client opens one QUIC connection (ALPN [`ALPN_PLAYER`]) and one bidirectional stream on it, the
//! *reliable stream*. On it each frame is a little-endian `u16` length followed by that many bytes
//! of postcard: [`ClientFrame`]s up, [`ServerFrame`]s down. State updates travel as QUIC datagrams
//! ([`Datagram`], a version byte then postcard), so a stalled player gets the newest state rather
//! than a backlog; an update too large for a datagram goes on the reliable stream as
//! [`ServerFrame::State`]. Frames over [`MAX_FRAME`] bytes, or that do not decode, are protocol
//! errors: the gateway closes that player's connection with [`CloseCode::Protocol`] and touches
//! nothing else. Player bytes never reach rkyv. docs/protocol.md §9 has the layouts.
//!
//! Version 2 adds durable acknowledgements: a state update also says up to which input the
//! player's inputs are held in state that survives the loss of the region's host
//! ([`StateUpdate::durable`]); a client keeps every input until then. After a failover the gateway
//! says [`ServerFrame::Resend`], and the client sends every input it keeps again (the region applies
//! each sequence number once). [`ServerFrame::RegionUnavailable`] says a region lost its host and no
//! other could take it yet.
//!
//! Version 3 adds [`ClientFrame::Skip`]: when a region was restored from state older than what it
//! had acknowledged as durable (its standby was lost with it), the client no longer has those
//! inputs; it says so, and the region counts them lost and goes on from the next one instead of
//! waiting for them for ever.

use serde::{Deserialize, Serialize};

/// Version of the player message set.
pub const PLAYER_PROTOCOL_VERSION: u16 = 4;
/// ALPN of the player protocol.
pub const ALPN_PLAYER: &[u8] = b"baton-player/1";
/// Largest frame body, in bytes (an input payload is at most 1024).
pub const MAX_FRAME: usize = 1200;
/// Most inputs a client keeps that were applied but are not durable yet (older ones are dropped);
/// a gateway lets a client send this many again at once.
pub const MAX_KEPT_INPUTS: usize = 8192;
/// First byte of every datagram: the message-set version.
pub const DATAGRAM_VERSION: u8 = 2;

/// What a client sends on its reliable stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame: the message-set version and a session token (or a resume token).
    Hello {
        /// [`PLAYER_PROTOCOL_VERSION`].
        version: u16,
        /// A session token from the login service, or the resume token of a [`ServerFrame::Welcome`].
        token: String,
    },
    /// One input, numbered from 1 per player without gaps. Inputs may be sent again (after a
    /// resume); the region applies each sequence number once.
    Input {
        /// Sequence number.
        seq: u64,
        /// Game-defined bytes.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Keep-alive with an echo.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// The client no longer has its inputs up to `through` (an update acknowledged them as
    /// durable, or they were applied and dropped past [`MAX_KEPT_INPUTS`]), yet the region's
    /// updates now say it applied fewer (it was restored from older state). The region counts the ones it lacks as lost and takes the next input after
    /// `through`. Sent again while the region's updates still show the gap.
    Skip {
        /// The newest input the client no longer keeps (below 2⁶³).
        through: u64,
    },
}

/// What the gateway sends on a client's reliable stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The session is open (or resumed).
    Welcome {
        /// The player.
        player: u64,
        /// The region the avatar is in.
        region: u64,
        /// The last input the region applied: send again every input after it.
        last_applied: u64,
        /// Presents as a token in `Hello` to resume this session after losing the connection, on
        /// this or another gateway, until it expires.
        resume_token: String,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// The avatar crossed into another region (its inputs keep their numbering).
    RegionChanged {
        /// The new region.
        region: u64,
        /// A fresh resume token naming it.
        resume_token: String,
    },
    /// A state update that does not fit a datagram.
    State(StateUpdate),
    /// The region lost its host and another took it over from saved state: send every input not
    /// yet durable again, in order (inputs it applied already are dropped by sequence number).
    Resend {
        /// The region.
        region: u64,
    },
    /// The region lost its host and none could take it over yet; the session stays open and a
    /// [`ServerFrame::Resend`] follows when the region is back.
    RegionUnavailable {
        /// The region.
        region: u64,
        /// Why, for people.
        reason: String,
    },
    /// A fresh resume token for the session (version 4), sent every third of the resume grace: a
    /// resume token expires a grace after it was issued, and a session that lasts longer must
    /// still be able to resume when its gateway dies.
    ResumeToken {
        /// Replaces the one the client holds.
        resume_token: String,
    },
    /// The region waits for an input of this player that was lost on its way (version 4): send
    /// again, in order, every kept input after the last one acknowledged applied (sending every
    /// kept one is also correct: the region drops what it has by number). Nothing else changed
    /// (unlike [`ServerFrame::Resend`], the region was not restored: its ticks and what it
    /// acknowledged stand).
    ResendInputs {
        /// The region.
        region: u64,
    },
}

/// A state update for one player.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateUpdate {
    /// The region it comes from.
    pub region: u64,
    /// The region's tick it describes.
    pub tick: u64,
    /// The last of this player's inputs applied at that tick (inputs up to it are acknowledged).
    pub last_applied: u64,
    /// The last of this player's inputs held in state that survives the loss of the region's
    /// host (the newest checkpoint of it the store confirmed); at most `last_applied`. Keep every
    /// input after it.
    pub durable: u64,
    /// Game-defined view of the world.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// What the gateway sends as QUIC datagrams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Datagram {
    /// The player's own region.
    State(StateUpdate),
    /// Objects of a neighbouring region near the player's border.
    Neighbour {
        /// The neighbouring region.
        region: u64,
        /// Its tick.
        tick: u64,
        /// Game-defined view of its objects near the border.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
}

impl Datagram {
    /// The datagram's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = vec![DATAGRAM_VERSION];
        postcard::to_io(self, &mut out).map_err(|error| FrameError::Malformed(error.to_string()))?;
        Ok(out)
    }

    /// Parses a datagram.
    pub fn decode(bytes: &[u8]) -> Result<Datagram, FrameError> {
        match bytes.split_first() {
            Some((&DATAGRAM_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|error| FrameError::Malformed(error.to_string()))
            }
            Some((version, _)) => Err(FrameError::Malformed(format!("datagram version {version}"))),
            None => Err(FrameError::Malformed("empty datagram".into())),
        }
    }
}

/// Application close codes of player connections; the reason text says more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal end of a session.
    Normal = 0,
    /// A frame was malformed or too large, or came out of order.
    Protocol = 1,
    /// The token was refused (malformed, bad signature, expired).
    Unauthorized = 2,
    /// The client speaks another protocol version.
    Version = 3,
    /// Another connection took this session over.
    Replaced = 4,
    /// The client sent far more inputs than allowed.
    Flood = 5,
    /// The gateway is at its connection limit.
    Full = 6,
    /// The client said nothing for too long.
    Idle = 7,
    /// The player's region could not take the player.
    Unavailable = 8,
    /// The gateway is shutting down.
    Shutdown = 9,
}

impl CloseCode {
    /// The code for a number received from the peer.
    #[must_use]
    pub fn from_u32(code: u32) -> Option<CloseCode> {
        use CloseCode::*;
        [Normal, Protocol, Unauthorized, Version, Replaced, Flood, Full, Idle, Unavailable, Shutdown]
            .into_iter()
            .find(|candidate| *candidate as u32 == code)
    }
}

/// Errors from reading frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds {MAX_FRAME}")]
    TooLarge(usize),
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes one frame (length prefix included).
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_allocvec(frame).map_err(|error| FrameError::Malformed(error.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits a byte stream into frames; feed it what arrives, take whole frames out. Taking a frame
/// costs its own length whatever is buffered behind it (a read position, the buffer compacted
/// when fed).
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Where the next frame starts in `buffer`.
    start: usize,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. After an error the connection must be closed.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        let rest = &self.buffer[self.start..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let length = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        if length > MAX_FRAME {
            return Err(FrameError::TooLarge(length));
        }
        if rest.len() < 2 + length {
            return Ok(None);
        }
        let frame =
            postcard::from_bytes(&rest[2..2 + length]).map_err(|error| FrameError::Malformed(error.to_string()));
        self.start += 2 + length;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        frame.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let frames = vec![
            ClientFrame::Hello { version: PLAYER_PROTOCOL_VERSION, token: "v1.a.b".into() },
            ClientFrame::Input { seq: 7, payload: vec![1; 512] },
            ClientFrame::Ping { nonce: 3 },
            ClientFrame::Skip { through: 41 },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|frame| encode(frame).unwrap()).collect();
        let mut reader = FrameReader::default();
        let mut received = Vec::new();
        for piece in bytes.chunks(5) {
            reader.feed(piece);
            while let Some(frame) = reader.next_frame::<ClientFrame>().unwrap() {
                received.push(frame);
            }
        }
        assert_eq!(received, frames);
        assert!(matches!(
            encode(&ClientFrame::Input { seq: 1, payload: vec![0; MAX_FRAME] }),
            Err(FrameError::TooLarge(_))
        ));
        let mut reader = FrameReader::default();
        reader.feed(&[0xff, 0xff, 0]);
        assert_eq!(reader.next_frame::<ClientFrame>(), Err(FrameError::TooLarge(65_535)));
    }

    #[test]
    fn datagrams_round_trip_and_garbage_is_refused() {
        let datagram =
            Datagram::State(StateUpdate { region: 3, tick: 99, last_applied: 12, durable: 10, payload: vec![5; 400] });
        let bytes = datagram.encode().unwrap();
        assert!(bytes.len() < 430, "a 400-byte update costs {} bytes", bytes.len());
        assert_eq!(Datagram::decode(&bytes).unwrap(), datagram);
        assert!(Datagram::decode(&[]).is_err());
        assert!(Datagram::decode(&[9, 0]).is_err());
        assert!(Datagram::decode(&[DATAGRAM_VERSION, 0xff, 0xff]).is_err());
        assert_eq!(CloseCode::from_u32(5), Some(CloseCode::Flood));
        assert_eq!(CloseCode::from_u32(99), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn garbage_gives_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut reader = FrameReader::default();
            reader.feed(&bytes);
            for _ in 0..8 {
                match reader.next_frame::<ClientFrame>() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = Datagram::decode(&bytes);
        }
    }
}
