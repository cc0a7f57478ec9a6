//! Any bytes from a handoff peer decode to a message or an error, never a panic; a message that
//! decodes encodes back to bytes that decode to the same message.
#![no_main]

use baton_sdk::handoff::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        let encoded = message.encode().expect("a decoded message encodes");
        let again = Message::decode(&encoded).expect("an encoded message decodes");
        assert_eq!(again, message);
    }
});
