//! Bytes on the player link (a player's frames and datagrams, the gateway's frames a client reads,
//! tokens) give values or errors, never a panic; every frame and datagram that parses encodes back
//! to bytes that parse to the same value; claims made from the bytes survive a token's round trip
//! (`verify(issue(claims)) == claims` before they expire) and verify with no other key.
#![no_main]

use baton_wire::player::{self, ClientFrame, Datagram, FrameReader, ServerFrame};
use baton_wire::token::{Claims, TokenError, TokenKey};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every frame of type `F` in `bytes` encodes back to one that reads the same.
fn frames_round_trip<F: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let mut reader = FrameReader::default();
    reader.feed(bytes);
    while let Ok(Some(frame)) = reader.next_frame::<F>() {
        let encoded = player::encode(&frame).expect("a frame that was read encodes");
        let mut again = FrameReader::default();
        again.feed(&encoded);
        let read: F = again.next_frame().expect("an encoded frame reads").expect("a whole frame");
        assert_eq!(read, frame);
    }
}

fuzz_target!(|bytes: &[u8]| {
    frames_round_trip::<ClientFrame>(bytes);
    frames_round_trip::<ServerFrame>(bytes);
    if let Ok(datagram) = Datagram::decode(bytes) {
        let encoded = datagram.encode().expect("a datagram that parsed encodes");
        assert_eq!(Datagram::decode(&encoded).expect("an encoded datagram parses"), datagram);
    }
    let (Ok(key), Ok(other)) = (TokenKey::new(&[7; 32]), TokenKey::new(&[8; 32])) else {
        panic!("32-byte keys are accepted");
    };
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = key.verify(text, 0);
    }
    if let Some(words) = bytes.get(..24) {
        let word = |at: usize| u64::from_le_bytes(words[at..at + 8].try_into().expect("8 bytes"));
        let claims = Claims { player: word(0), region: word(8), expires_at: word(16) };
        let token = key.issue(&claims);
        let now = claims.expires_at.saturating_sub(1);
        if claims.expires_at > 0 {
            assert_eq!(key.verify(&token, now), Ok(claims), "a token gives back its claims");
        }
        assert_eq!(key.verify(&token, claims.expires_at), Err(TokenError::Expired(claims.expires_at)));
        assert_eq!(other.verify(&token, now), Err(TokenError::BadSignature), "another key's token");
    }
});
