//! Framed postcard messages on one QUIC stream (`baton_wire::framing`: `u32` length + postcard,
//! at most 1 MiB): a writer task fed by a channel, and a reading loop. Used by the control
//! protocol's agents, coordinator and gateways (protocol.md §11).

use baton_wire::framing::{FramedReader, encode_into};
use baton_wire::player::FrameError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Why [`read_frames`] returned.
#[derive(Debug)]
pub enum ReadEnd {
    /// The stream ended or the connection closed.
    Closed,
    /// A frame did not decode; the connection should be closed.
    Malformed(FrameError),
    /// The handler asked to stop.
    Stopped,
}

/// Spawns a task that writes every message sent on the returned channel as one frame on `send`,
/// until the channel is dropped or the stream fails. Must be called within a tokio runtime.
pub fn spawn_writer<T: Serialize + Send + 'static>(mut send: quinn::SendStream) -> UnboundedSender<T> {
    let (sender, mut outbound) = unbounded_channel::<T>();
    tokio::spawn(async move {
        let mut buffer = Vec::new();
        while let Some(message) = outbound.recv().await {
            buffer.clear();
            if encode_into(&message, &mut buffer).is_err() || send.write_all(&buffer).await.is_err() {
                return;
            }
        }
    });
    sender
}

/// Reads frames from `recv` and hands each message to `handle` until the stream ends, a frame is
/// malformed, or `handle` returns `false`.
pub async fn read_frames<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    mut handle: impl FnMut(T) -> bool,
) -> ReadEnd {
    let mut reader = FramedReader::default();
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => reader.feed(&chunk.bytes),
            Ok(None) | Err(_) => return ReadEnd::Closed,
        }
        loop {
            match reader.next_message::<T>() {
                Ok(Some(message)) => {
                    if !handle(message) {
                        return ReadEnd::Stopped;
                    }
                }
                Ok(None) => break,
                Err(error) => return ReadEnd::Malformed(error),
            }
        }
    }
}
