//! Session tokens: the operator's login service signs them; the gateway checks them.
//!
//! Format (version 1): `v1.<payload>.<mac>`, both parts unpadded base64url. The payload is the
//! postcard encoding of [`Claims`]; the mac is HMAC-SHA256 over `v1.<payload>` with the key shared by
//! the login service and the gateways. A token is refused when malformed, when its mac does not
//! verify (compared in constant time), or when it has expired.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Longest token accepted, in bytes (checked before any decoding).
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player.
    pub player: u64,
    /// The region to join first.
    pub region: u64,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

/// Why a token was refused (the close reason a client sees).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a version-1 token, or not decodable.
    #[error("malformed session token")]
    Malformed,
    /// The signature does not verify with the gateway's key.
    #[error("session token signature is invalid")]
    BadSignature,
    /// Expired.
    #[error("session token expired at {0}")]
    Expired(u64),
}

/// Signs and checks tokens with one key.
#[derive(Clone)]
pub struct TokenKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key; at least 32 bytes.
    pub fn new(key: &[u8]) -> Result<TokenKey, String> {
        if key.len() < 32 {
            return Err(format!("a token key needs at least 32 bytes, got {}", key.len()));
        }
        Ok(TokenKey { key: key.to_vec() })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; the length was checked in `new`.
        #[allow(clippy::expect_used)]
        HmacSha256::new_from_slice(&self.key).expect("hmac takes any key length")
    }

    /// Issues a token (the login service's side; also used by tests and the load generator).
    #[must_use]
    pub fn issue(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(postcard::to_allocvec(claims).unwrap_or_default());
        let signed = format!("v1.{payload}");
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Checks `token` at `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, mac_text) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let payload_text = signed.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let mac_bytes = URL_SAFE_NO_PAD.decode(mac_text).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&mac_bytes).map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD.decode(payload_text).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = postcard::from_bytes(&payload).map_err(|_| TokenError::Malformed)?;
        if now_unix >= claims.expires_at {
            return Err(TokenError::Expired(claims.expires_at));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> TokenKey {
        TokenKey::new(&[byte; 32]).unwrap()
    }

    #[test]
    fn good_tokens_pass_and_bad_ones_say_why() {
        let claims = Claims { player: 42, region: 7, expires_at: 1_000 };
        let token = key(1).issue(&claims);
        assert_eq!(key(1).verify(&token, 999), Ok(claims));
        assert_eq!(key(1).verify(&token, 1_000), Err(TokenError::Expired(1_000)));
        assert_eq!(key(2).verify(&token, 999), Err(TokenError::BadSignature));
        // Another player's claims under the same mac do not verify.
        let other = key(1).issue(&Claims { player: 43, ..claims });
        let forged = format!("{}.{}", other.rsplit_once('.').unwrap().0, token.rsplit_once('.').unwrap().1);
        assert_eq!(key(1).verify(&forged, 999), Err(TokenError::BadSignature));
        assert_eq!(key(1).verify("v2.abc.def", 0), Err(TokenError::Malformed));
        assert_eq!(key(1).verify(&"a".repeat(MAX_TOKEN_LEN + 1), 0), Err(TokenError::Malformed));
        assert!(TokenKey::new(b"short").is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_verifies(text in ".{0,600}") {
            prop_assert!(key(3).verify(&text, 0).is_err());
        }
    }
}
