//! Tokens the API hands out and takes back unchanged (page cursors), sealed so that a
//! client can neither read nor forge them: ChaCha20-Poly1305 under a key made at each
//! start of the hub, a random nonce per token. A page cursor names the last row of a page,
//! which may be a row the reader is not allowed to see; sealed, it tells nothing.

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};

pub(crate) struct Sealer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl Sealer {
    /// A sealer with a fresh random key: tokens of an earlier start no longer open.
    pub(crate) fn new() -> Sealer {
        let random = SystemRandom::new();
        let mut key = [0u8; 32];
        random
            .fill(&mut key)
            .expect("the operating system's random number generator");
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 256-bit key");
        Sealer {
            key: LessSafeKey::new(key),
            random,
        }
    }

    /// `plain` sealed, as URL-safe base64.
    pub(crate) fn seal(&self, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the operating system's random number generator");
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .expect("a token far below the cipher's limit");
        let mut token = nonce.to_vec();
        token.append(&mut sealed);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    }

    /// What `token` was sealed from; `None` if this sealer did not seal it as it is.
    pub(crate) fn open(&self, token: &str) -> Option<Vec<u8>> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut sealed)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_token_opens_only_unchanged_and_only_here() {
        let sealer = Sealer::new();
        let token = sealer.seal(br#"{"c":"citizen-042"}"#);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .expect("base64");
        assert!(!String::from_utf8_lossy(&raw).contains("citizen-042"));
        assert_eq!(
            sealer.open(&token).as_deref(),
            Some(&br#"{"c":"citizen-042"}"#[..])
        );
        let mut forged = raw.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(sealer.open(&forged), None);
        assert_eq!(Sealer::new().open(&token), None, "another start's key");
        assert_eq!(sealer.open("short"), None);
        assert_ne!(sealer.seal(b"x"), sealer.seal(b"x"), "a nonce per token");
    }
}
