//! Bytes on a control connection (agent or gateway <-> coordinator) give messages or errors, never
//! a panic; every message that reads encodes back to a frame that reads as the same message
//! (compared by its bytes: agent reports carry floats, and NaN is not equal to itself).
#![no_main]

use baton_wire::control::{AgentMessage, CoordinatorMessage, GatewayHello, RouteFeed};
use baton_wire::framing::{FramedReader, encode_into};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trips<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let mut reader = FramedReader::default();
    reader.feed(bytes);
    while let Ok(Some(message)) = reader.next_message::<T>() {
        let mut frame = Vec::new();
        encode_into(&message, &mut frame).expect("a message that was read encodes");
        let mut again = FramedReader::default();
        again.feed(&frame);
        let read: T = again.next_message().expect("an encoded frame reads").expect("a whole frame");
        let mut frame_again = Vec::new();
        encode_into(&read, &mut frame_again).expect("encodes again");
        assert_eq!(frame_again, frame);
    }
}

fuzz_target!(|bytes: &[u8]| {
    round_trips::<AgentMessage>(bytes);
    round_trips::<CoordinatorMessage>(bytes);
    round_trips::<GatewayHello>(bytes);
    round_trips::<RouteFeed>(bytes);
});
