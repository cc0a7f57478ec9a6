//! Any bytes from a handoff peer decode to a message or an error, never a panic.
#![no_main]

use baton_sdk::handoff::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        let _ = message.encode();
    }
});
