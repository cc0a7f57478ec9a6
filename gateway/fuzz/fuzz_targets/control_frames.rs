//! Bytes on a control connection (agent or gateway <-> coordinator) give messages or errors, never
//! a panic.
#![no_main]

use baton_wire::control::{AgentMessage, CoordinatorMessage, GatewayHello, RouteFeed};
use baton_wire::framing::FramedReader;
use libfuzzer_sys::fuzz_target;

fn drain<T: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) {
    let mut reader = FramedReader::default();
    reader.feed(bytes);
    while let Ok(Some(_)) = reader.next_message::<T>() {}
}

fuzz_target!(|bytes: &[u8]| {
    drain::<AgentMessage>(bytes);
    drain::<CoordinatorMessage>(bytes);
    drain::<GatewayHello>(bytes);
    drain::<RouteFeed>(bytes);
});
