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
    if let Some((claim, payload)) = bytes.split_first_chunk::<4>() {
        // Any claimed size (over the limit too), any payload.
        let raw_bytes = u32::from_le_bytes(*claim);
        let _ = Message::Packed { handoff: 1, raw_bytes, bytes: payload.to_vec() }.unpack();
        // What a link packs unpacks to the same message.
        let delta = Message::Delta { handoff: 1, round: 1, part: 0, bytes: payload.to_vec() };
        let encoded = delta.encode().expect("a delta encodes");
        if let Some(packed) = delta.pack(&encoded) {
            assert_eq!(packed.unpack().expect("a packed delta unpacks"), delta);
        }
    }
});
