//! Bytes from a player (frames, datagrams, tokens) give frames or errors, never a panic; every
//! frame and datagram that parses encodes back to bytes that parse to the same value.
#![no_main]

use baton_wire::player::{self, ClientFrame, Datagram, FrameReader};
use baton_wire::token::TokenKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut reader = FrameReader::default();
    reader.feed(bytes);
    while let Ok(Some(frame)) = reader.next_frame::<ClientFrame>() {
        let encoded = player::encode(&frame).expect("a frame that was read encodes");
        let mut again = FrameReader::default();
        again.feed(&encoded);
        let read: ClientFrame = again.next_frame().expect("an encoded frame reads").expect("a whole frame");
        assert_eq!(read, frame);
    }
    if let Ok(datagram) = Datagram::decode(bytes) {
        let encoded = datagram.encode().expect("a datagram that parsed encodes");
        assert_eq!(Datagram::decode(&encoded).expect("an encoded datagram parses"), datagram);
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(key) = TokenKey::new(&[7; 32])
    {
        let _ = key.verify(text, 0);
    }
});
