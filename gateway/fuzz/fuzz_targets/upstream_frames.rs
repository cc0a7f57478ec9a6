//! Bytes on an upstream connection (gateway <-> region server) give messages or errors, never a panic.
#![no_main]

use baton_wire::upstream::{GatewayMessage, ServerMessage, UpstreamReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut reader = UpstreamReader::default();
    reader.feed(bytes);
    while let Ok(Some(_)) = reader.next_message::<GatewayMessage>() {}
    let mut reader = UpstreamReader::default();
    reader.feed(bytes);
    while let Ok(Some(_)) = reader.next_message::<ServerMessage>() {}
});
