//! Any bytes from a handoff peer decode to a message or an error, never a panic; a message that
//! decodes encodes back to bytes that decode to the same message. A packed message unpacks (the
//! link's decompression) to a message or an error, never a panic; and any bytes taken as a packed
//! message's compressed payload do too.
#![no_main]

use baton_sdk::handoff::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = Message::decode(bytes) {
        let encoded = message.encode().expect("a decoded message encodes");
        let again = Message::decode(&encoded).expect("an encoded message decodes");
        assert_eq!(again, message);
        let _ = message.unpack();
    }
    if let Some((claim, payload)) = bytes.split_first_chunk::<2>() {
        let raw_bytes = u32::from(u16::from_le_bytes(*claim)) * 16;
        let _ = Message::Packed { handoff: 1, raw_bytes, bytes: payload.to_vec() }.unpack();
    }
});
