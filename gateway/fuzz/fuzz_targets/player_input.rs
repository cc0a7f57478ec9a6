//! Bytes from a player (frames, tokens) give frames or errors, never a panic.
#![no_main]

use baton_wire::player::{ClientFrame, Datagram, FrameReader};
use baton_wire::token::TokenKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut reader = FrameReader::default();
    reader.feed(bytes);
    while let Ok(Some(_)) = reader.next_frame::<ClientFrame>() {}
    let _ = Datagram::decode(bytes);
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(key) = TokenKey::new(&[7; 32])
    {
        let _ = key.verify(text, 0);
    }
});
