//! The `u32`-length-prefixed postcard framing shared by Baton's internal streams (gateway ↔ region
//! server, agent ↔ coordinator): encode one frame or a batch, split a byte stream into messages.

use serde::{Deserialize, Serialize};

use crate::player::FrameError;

/// Largest frame, in bytes.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Appends one frame (`u32` length + postcard) to `out`.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(error) = postcard::to_io(message, &mut *out) {
        out.truncate(start);
        return Err(FrameError::Malformed(error.to_string()));
    }
    let length = out.len() - start - 4;
    if length > MAX_FRAME_BYTES {
        out.truncate(start);
        return Err(FrameError::TooLarge(length));
    }
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(())
}

/// Encodes `first`, then whatever `more` yields, into `out` until `more` runs dry or `out` holds
/// `limit` bytes: one stream write for everything queued. Messages that cannot be encoded are
/// skipped; their errors are returned.
pub fn encode_batch<T: Serialize>(
    first: T,
    mut more: impl FnMut() -> Option<T>,
    out: &mut Vec<u8>,
    limit: usize,
) -> Vec<FrameError> {
    let mut errors = Vec::new();
    let mut next = Some(first);
    while let Some(message) = next.take() {
        if let Err(error) = encode_into(&message, out) {
            errors.push(error);
        }
        if out.len() < limit {
            next = more();
        }
    }
    errors
}

/// Splits the upstream byte stream into messages.
#[derive(Debug, Default)]
pub struct UpstreamReader {
    buffer: Vec<u8>,
    start: usize,
}

impl UpstreamReader {
    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, if one has arrived. After an error the connection must be closed.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        let available = &self.buffer[self.start..];
        if available.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_le_bytes([available[0], available[1], available[2], available[3]]) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge(length));
        }
        if available.len() < 4 + length {
            return Ok(None);
        }
        let message =
            postcard::from_bytes(&available[4..4 + length]).map_err(|error| FrameError::Malformed(error.to_string()));
        self.start += 4 + length;
        message.map(Some)
    }
}

/// A reader of framed messages (the name says where it was first used; any framed stream fits).
pub type FramedReader = UpstreamReader;
