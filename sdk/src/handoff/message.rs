//! Messages between a handoff's source and target, and their encoding.
//!
//! These travel only on the authenticated region-to-region link. Each encoded message is one rkyv
//! archive, validated with checked access on receipt; the transport frames them (length prefix).
//! Archives inside (`Chunk`, `Delta`) are validated again by the world codec when applied.

use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;

use super::HandoffId;

/// Version of the handoff message set; a peer with another version is refused at `Begin`.
pub const PROTOCOL_VERSION: u16 = 5;
/// Largest encoded message accepted (a world chunk is at most 1 MiB by default).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

pub use definition::{ArchivedMessage, Message};

/// The message type lives in its own module so that the items rkyv derives for its variants'
/// fields (which cannot carry doc comments) are exempt from the documentation lint.
mod definition {
    #![allow(missing_docs)]

    use baton_wire::PlayerInput;

    use super::HandoffId;

    /// One handoff message.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum Message {
        /// Source → target: start a handoff (protocol.md §2).
        Begin {
            /// This attempt.
            handoff: HandoffId,
            /// Message-set version.
            version: u16,
            /// The region.
            region: u64,
            /// The source's ownership epoch.
            epoch: u64,
            /// The source instance's name at the authority.
            source: String,
            /// The source's component registry schema hash.
            schema: u64,
            /// Tick interval in microseconds.
            tick_interval_us: u64,
            /// The source world's size ([`World::sizes`](crate::World::sizes)): the target makes
            /// room for the snapshot before it arrives.
            sizes: Vec<u64>,
        },
        /// Target → source: ready to receive (schemas match).
        Ready {
            /// This attempt.
            handoff: HandoffId,
            /// The target instance's name at the authority.
            target: String,
        },
        /// Source → target: one snapshot chunk (a world archive).
        Chunk {
            /// This attempt.
            handoff: HandoffId,
            /// Position in the snapshot.
            index: u32,
            /// The archive.
            bytes: Vec<u8>,
        },
        /// Source → target: one part of a delta round (a world archive).
        Delta {
            /// This attempt.
            handoff: HandoffId,
            /// The round, from 1.
            round: u32,
            /// The part within the round, from 0.
            part: u32,
            /// The archive.
            bytes: Vec<u8>,
        },
        /// Target → source: everything up to this many bulk bytes is applied.
        Progress {
            /// This attempt.
            handoff: HandoffId,
            /// Archive bytes applied so far.
            applied_bytes: u64,
        },
        /// Source → target: the source froze after tick `tick`; `round` with `parts` parts is final.
        Freeze {
            /// This attempt.
            handoff: HandoffId,
            /// The final round.
            round: u32,
            /// Its number of parts (possibly 0).
            parts: u32,
            /// The source's world digest at the freeze.
            digest: u128,
            /// The last tick the source ran.
            tick: u64,
            /// When the next tick is due, in microseconds after this message was made.
            next_tick_in_us: u64,
        },
        /// Target → source: the target owns the region now, at `epoch`.
        Committed {
            /// This attempt.
            handoff: HandoffId,
            /// The new epoch.
            epoch: u64,
        },
        /// Source → target: inputs that reached the source after the freeze.
        Stragglers {
            /// This attempt.
            handoff: HandoffId,
            /// The inputs, in arrival order.
            inputs: Vec<PlayerInput>,
        },
        /// Owner → standby: start following the region as its hot standby (protocol.md §14). The
        /// standby answers `Ready`, takes `Chunk`s, then a `Delta` round and a `Mark` per tick.
        Follow {
            /// This feed.
            handoff: HandoffId,
            /// Message-set version.
            version: u16,
            /// The region.
            region: u64,
            /// The owner's epoch.
            epoch: u64,
            /// The owner instance's name at the authority.
            source: String,
            /// The owner's component registry schema hash.
            schema: u64,
            /// Tick interval in microseconds.
            tick_interval_us: u64,
            /// The owner world's size ([`World::sizes`](crate::World::sizes)): the standby makes
            /// room for the snapshot before it arrives.
            sizes: Vec<u64>,
        },
        /// Owner → standby: delta round `round`, in `parts` parts, brings the world to the end of
        /// tick `tick`, where the owner's digest was `digest`.
        Mark {
            /// This feed.
            handoff: HandoffId,
            /// The round.
            round: u32,
            /// Its number of parts (possibly 0).
            parts: u32,
            /// The tick it ends at.
            tick: u64,
            /// The owner's world digest after that tick.
            digest: u128,
        },
        /// Standby → owner: the standby holds the world as it was after tick `tick`.
        Holds {
            /// This feed.
            handoff: HandoffId,
            /// The tick.
            tick: u64,
            /// Archive bytes applied so far.
            applied_bytes: u64,
        },
        /// Target → source: the target's engines are built from the received world and follow it,
        /// so a freeze costs it only the final round (protocol.md §4). Sent once per attempt.
        EnginesReady {
            /// This attempt.
            handoff: HandoffId,
        },
        /// Either side: this attempt is over without a commit (or the target refused it).
        Abort {
            /// This attempt.
            handoff: HandoffId,
            /// Why, lower-case.
            reason: String,
        },
        /// Link only, never seen by the state machines (the last variant, so that every other
        /// decodes as in version 4): a bulk message (`Chunk` or `Delta`)
        /// compressed by the link that sent it ([`Message::pack`]); the receiving link unpacks it
        /// ([`Message::unpack`]) before handing it on.
        Packed {
            /// The attempt of the message inside.
            handoff: HandoffId,
            /// Bytes of the encoded message inside (at most [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES)).
            raw_bytes: u32,
            /// Its encoding, LZ4-compressed (block format).
            bytes: Vec<u8>,
        },
    }
}

impl Message {
    /// The attempt this message belongs to.
    #[must_use]
    pub fn handoff(&self) -> HandoffId {
        match self {
            Message::Begin { handoff, .. }
            | Message::Ready { handoff, .. }
            | Message::Chunk { handoff, .. }
            | Message::Delta { handoff, .. }
            | Message::Progress { handoff, .. }
            | Message::Freeze { handoff, .. }
            | Message::Committed { handoff, .. }
            | Message::Stragglers { handoff, .. }
            | Message::Follow { handoff, .. }
            | Message::Mark { handoff, .. }
            | Message::Holds { handoff, .. }
            | Message::EnginesReady { handoff }
            | Message::Packed { handoff, .. }
            | Message::Abort { handoff, .. } => *handoff,
        }
    }

    /// Whether it carries bulk state (and goes on the paced bulk stream).
    #[must_use]
    pub fn is_bulk(&self) -> bool {
        matches!(self, Message::Chunk { .. } | Message::Delta { .. } | Message::Packed { .. })
    }

    /// Bytes of world archive it carries.
    #[must_use]
    pub fn archive_bytes(&self) -> usize {
        match self {
            Message::Chunk { bytes, .. } | Message::Delta { bytes, .. } => bytes.len(),
            _ => 0,
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Result<AlignedVec, MessageError> {
        rkyv::to_bytes::<BoxedError>(self).map_err(|error| MessageError::Encode(error.to_string()))
    }

    /// `encoded` (this message's [`Message::encode`]) compressed into a [`Message::Packed`], or
    /// `None` when that would not be smaller. Only bulk messages are worth it; the link decides
    /// when (`baton_net::Packer`).
    #[must_use]
    pub fn pack(&self, encoded: &[u8]) -> Option<Message> {
        if !matches!(self, Message::Chunk { .. } | Message::Delta { .. }) {
            return None;
        }
        let raw_bytes = u32::try_from(encoded.len()).ok()?;
        let bytes = lz4_flex::block::compress(encoded);
        (bytes.len() < encoded.len()).then(|| Message::Packed { handoff: self.handoff(), raw_bytes, bytes })
    }

    /// The message inside a [`Message::Packed`], decompressed, validated and decoded; any other
    /// message as it is. One that claims more than [`MAX_MESSAGE_BYTES`], does not decompress to
    /// exactly its claimed size, or holds anything but a `Chunk` or `Delta` of its own attempt is
    /// refused. Never panics on any input.
    pub fn unpack(self) -> Result<Message, MessageError> {
        let Message::Packed { handoff, raw_bytes, bytes } = self else {
            return Ok(self);
        };
        let raw_bytes = raw_bytes as usize;
        if raw_bytes > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge(raw_bytes));
        }
        let mut encoded = vec![0u8; raw_bytes];
        let written = lz4_flex::block::decompress_into(&bytes, &mut encoded)
            .map_err(|error| MessageError::Invalid(format!("a packed message does not decompress: {error}")))?;
        if written != raw_bytes {
            return Err(MessageError::Invalid(format!(
                "a packed message decompressed to {written} bytes, not the {raw_bytes} it claims"
            )));
        }
        match Message::decode(&encoded)? {
            message @ (Message::Chunk { .. } | Message::Delta { .. }) if message.handoff() == handoff => Ok(message),
            message @ (Message::Chunk { .. } | Message::Delta { .. }) => Err(MessageError::Invalid(format!(
                "a packed message of attempt {handoff} holds one of attempt {}",
                message.handoff()
            ))),
            _ => Err(MessageError::Invalid("a packed message holds neither a chunk nor a delta".to_owned())),
        }
    }

    /// Validates and decodes a message. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge(bytes.len()));
        }
        let aligned_copy;
        let bytes: &[u8] = if (bytes.as_ptr() as usize).is_multiple_of(16) {
            bytes
        } else {
            let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
            copy.extend_from_slice(bytes);
            aligned_copy = copy;
            &aligned_copy
        };
        let archived = rkyv::access::<ArchivedMessage, BoxedError>(bytes)
            .map_err(|error| MessageError::Invalid(error.to_string()))?;
        rkyv::deserialize::<Message, BoxedError>(archived).map_err(|error| MessageError::Invalid(error.to_string()))
    }
}

/// Errors from encoding or decoding handoff messages.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("handoff message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Failed validation.
    #[error("invalid handoff message: {0}")]
    Invalid(String),
    /// Encoding failed.
    #[error("encoding a handoff message failed: {0}")]
    Encode(String),
}

#[cfg(test)]
mod tests {
    use baton_wire::PlayerInput;

    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let messages = [
            Message::Begin {
                handoff: 9,
                version: PROTOCOL_VERSION,
                region: 3,
                epoch: 4,
                source: "a".into(),
                schema: 5,
                tick_interval_us: 33_333,
                sizes: vec![10, 4, 0],
            },
            Message::Chunk { handoff: 9, index: 2, bytes: vec![1, 2, 3] },
            Message::Freeze {
                handoff: 9,
                round: 4,
                parts: 1,
                digest: u128::MAX - 7,
                tick: 100,
                next_tick_in_us: 30_000,
            },
            Message::Stragglers {
                handoff: 9,
                inputs: vec![PlayerInput { player: baton_wire::PlayerId(1), seq: 2, payload: vec![0; 300] }],
            },
            Message::Follow {
                handoff: 9,
                version: PROTOCOL_VERSION,
                region: 3,
                epoch: 4,
                source: "a".into(),
                schema: 5,
                tick_interval_us: 50_000,
                sizes: Vec::new(),
            },
            Message::Mark { handoff: 9, round: 7, parts: 2, tick: 1_000, digest: 77 },
            Message::Holds { handoff: 9, tick: 1_000, applied_bytes: 12_345 },
            Message::EnginesReady { handoff: 9 },
        ];
        for message in messages {
            let bytes = message.encode().unwrap();
            assert_eq!(Message::decode(&bytes).unwrap(), message);
            let mut shifted = vec![0u8; bytes.len() + 1];
            shifted[1..].copy_from_slice(&bytes);
            assert_eq!(Message::decode(&shifted[1..]).unwrap(), message, "unaligned input is copied, not refused");
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                let _ = Message::decode(&bytes[..cut]);
            }
        }
        assert!(Message::decode(&[0xff; 64]).is_err());
    }

    #[test]
    fn packed_messages_unpack_to_what_was_packed_and_bad_ones_are_refused() {
        // A delta of repetitive state compresses; what comes out is what went in.
        let delta =
            Message::Delta { handoff: 9, round: 3, part: 1, bytes: (0..20_000u32).map(|i| (i % 7) as u8).collect() };
        let encoded = delta.encode().unwrap();
        let packed = delta.pack(&encoded).expect("it compresses");
        assert!(packed.is_bulk() && packed.handoff() == 9);
        let Message::Packed { raw_bytes, ref bytes, .. } = packed else { unreachable!() };
        assert_eq!(raw_bytes as usize, encoded.len());
        assert!(bytes.len() < encoded.len() / 4, "{} of {}", bytes.len(), encoded.len());
        let on_the_wire = packed.encode().unwrap();
        assert_eq!(Message::decode(&on_the_wire).unwrap().unpack().unwrap(), delta);
        // Anything else passes through, and is never packed.
        let abort = Message::Abort { handoff: 9, reason: "x".repeat(20_000) };
        assert_eq!(abort.clone().unpack().unwrap(), abort);
        let encoded_abort = abort.encode().unwrap();
        assert!(abort.pack(&encoded_abort).is_none());
        // A packed control message, or another attempt's delta, is refused.
        let wrap = |handoff, encoded: &[u8]| Message::Packed {
            handoff,
            raw_bytes: encoded.len() as u32,
            bytes: lz4_flex::block::compress(encoded),
        };
        assert!(
            matches!(wrap(9, &encoded_abort).unpack(), Err(MessageError::Invalid(reason)) if reason.contains("neither"))
        );
        assert!(
            matches!(wrap(8, &encoded).unpack(), Err(MessageError::Invalid(reason)) if reason.contains("attempt 8"))
        );
        // Bytes that do not compress are not packed.
        let noise: Vec<u8> = (0..4096).map(|_| fastrand::u8(..)).collect();
        assert!(delta.pack(&noise).is_none());
        // A claimed size over the limit, a wrong claimed size either way, garbage, and a packed
        // message inside another: refused, never a panic.
        let claim =
            |raw_bytes: u32, bytes: &[u8]| Message::Packed { handoff: 9, raw_bytes, bytes: bytes.to_vec() }.unpack();
        assert!(matches!(claim(MAX_MESSAGE_BYTES as u32 + 1, bytes), Err(MessageError::TooLarge(_))));
        assert!(claim(raw_bytes - 1, bytes).is_err(), "claims less than it holds");
        assert!(claim(raw_bytes + 1, bytes).is_err(), "claims more than it holds");
        for length in [0, 1, 7, 100, 5000] {
            let garbage: Vec<u8> = (0..length).map(|_| fastrand::u8(..)).collect();
            assert!(claim(raw_bytes, &garbage).is_err());
            assert!(claim(fastrand::u32(..1 << 16), &garbage).is_err());
        }
        assert!(
            matches!(wrap(9, &on_the_wire).unpack(), Err(MessageError::Invalid(reason)) if reason.contains("neither"))
        );
        assert!(packed.pack(&on_the_wire).is_none(), "a packed message is not packed again");
    }
}
