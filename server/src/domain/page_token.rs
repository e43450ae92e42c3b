//! Opaque, tamper-evident page tokens. A token is `base64url(position ‖ mac)`, where the MAC
//! (HMAC-SHA256, truncated to 16 bytes) covers a scope such as the chat id. So a client cannot
//! forge a position, and a token from one chat or user is refused by another.

use crate::{Error, Result};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const MAC_LEN: usize = 16;

#[derive(Clone)]
pub struct PageTokens {
    key: [u8; 32],
}

impl PageTokens {
    /// Derives the token key from the node's root secret, so every node of a cluster agrees.
    pub fn new(root_secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"chatd page tokens v1\0");
        h.update(root_secret);
        PageTokens {
            key: h.finalize().into(),
        }
    }

    fn mac(&self, scope: &str, position: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(position);
        mac
    }

    pub fn seal(&self, scope: &str, position: &[u8]) -> String {
        let tag = self.mac(scope, position).finalize().into_bytes();
        let mut raw = Vec::with_capacity(position.len() + MAC_LEN);
        raw.extend_from_slice(position);
        raw.extend_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The position inside `token`, if it was sealed by this key for this scope.
    pub fn open(&self, scope: &str, token: &str) -> Result<Vec<u8>> {
        let bad = || Error::invalid("page_token", "is not a page token issued for this request");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if raw.len() < MAC_LEN {
            return Err(bad());
        }
        let (position, tag) = raw.split_at(raw.len() - MAC_LEN);
        self.mac(scope, position)
            .verify_truncated_left(tag)
            .map_err(|_| bad())?;
        Ok(position.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_scope_binding() {
        let t = PageTokens::new(b"secret");
        let token = t.seal("history:a", &[1, 2, 3]);
        assert_eq!(t.open("history:a", &token).unwrap(), vec![1, 2, 3]);
        assert!(t.open("history:b", &token).is_err());
        assert!(PageTokens::new(b"other").open("history:a", &token).is_err());
    }

    #[test]
    fn tampering_is_detected() {
        let t = PageTokens::new(b"secret");
        let token = t.seal("s", &42u64.to_be_bytes());
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[7] ^= 1;
        assert!(t.open("s", &URL_SAFE_NO_PAD.encode(&raw)).is_err());
        for junk in ["", "!!!", "abc", &token[1..]] {
            assert!(
                matches!(
                    t.open("s", junk),
                    Err(Error::InvalidArgument {
                        field: "page_token",
                        ..
                    })
                ),
                "{junk}"
            );
        }
    }
}
