//! The player protocol's frames on the reliable stream: a small explicit format, never rkyv.
//!
//! Each frame is a little-endian `u16` length followed by that many bytes of postcard (version 1
//! of the message set, negotiated in `Hello`). Frames over [`MAX_FRAME`] bytes, or that do not
//! decode, are protocol errors: the gateway closes that player's connection with an error code
//! and touches nothing else.

use serde::{Deserialize, Serialize};

/// Version of the player message set.
pub const PLAYER_PROTOCOL_VERSION: u16 = 1;
/// Largest frame body, in bytes (an input payload is at most 1024).
pub const MAX_FRAME: usize = 1200;

/// What a client sends on its reliable stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First frame: the message-set version and a session token (or a resume token).
    Hello {
        /// [`PLAYER_PROTOCOL_VERSION`].
        version: u16,
        /// A session token from the login service.
        token: String,
    },
    /// One input, numbered from 1 per player without gaps.
    Input {
        /// Sequence number.
        seq: u64,
        /// Game-defined bytes.
        payload: Vec<u8>,
    },
    /// Keep-alive with an echo.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
}

/// What the gateway sends on a client's reliable stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The session is open.
    Welcome {
        /// The player.
        player: u64,
        /// The region the avatar is in.
        region: u64,
        /// The last input the region applied (resend anything after it).
        last_applied: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
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

/// Splits a byte stream into frames; feed it what arrives, take whole frames out.
#[derive(Debug, Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. After an error the connection must be closed.
    pub fn next_frame<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buffer.len() < 2 {
            return Ok(None);
        }
        let length = usize::from(u16::from_le_bytes([self.buffer[0], self.buffer[1]]));
        if length > MAX_FRAME {
            return Err(FrameError::TooLarge(length));
        }
        if self.buffer.len() < 2 + length {
            return Ok(None);
        }
        let frame =
            postcard::from_bytes(&self.buffer[2..2 + length]).map_err(|error| FrameError::Malformed(error.to_string()));
        self.buffer.drain(..2 + length);
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
        }
    }
}
