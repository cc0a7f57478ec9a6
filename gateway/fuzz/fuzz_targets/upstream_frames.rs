//! Bytes on an upstream connection (gateway <-> region server) give messages or errors, never a
//! panic; every message that reads encodes back to a frame that reads as the same message.
#![no_main]

use baton_wire::upstream::{GatewayMessage, ServerMessage, UpstreamReader, encode_into};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let mut reader = UpstreamReader::default();
    reader.feed(bytes);
    while let Ok(Some(message)) = reader.next_message::<T>() {
        let mut frame = Vec::new();
        encode_into(&message, &mut frame).expect("a message that was read encodes");
        let mut again = UpstreamReader::default();
        again.feed(&frame);
        let read: T = again.next_message().expect("an encoded frame reads").expect("a whole frame");
        assert_eq!(read, message);
    }
}

fuzz_target!(|bytes: &[u8]| {
    round_trips::<GatewayMessage>(bytes);
    round_trips::<ServerMessage>(bytes);
});
