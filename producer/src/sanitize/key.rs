//! The sanitization key and the keyed hashes derived from it.
//!
//! Invariants: the key never comes from the rules file and is never printed
//! (Debug shows only a short fingerprint); every keyed transform hashes under
//! a subkey bound to its purpose and its domain, so the same input gives the
//! same output in the same domain, and unrelated outputs anywhere else.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use syncdata_core::private_fs::{self, KeyFileError};

/// The environment variable holding the key when no key file is configured.
pub const KEY_ENV: &str = "SYNCDATA_SANITIZE_KEY";

/// Shortest key accepted, in bytes: an empty or short "salt" is the gap that
/// makes pseudonyms reversible by brute force.
pub const MIN_KEY_BYTES: usize = 32;

/// Bumped only with a deliberate, documented change of every output.
const DERIVATION_LABEL: &[u8] = b"syncdata-sanitize/v1";
/// How errors and warnings name this key.
const WHAT: &str = "sanitization";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the rules use keyed transforms (hmac, fake, date_shift) but no key is set: \
         set {KEY_ENV} or producer.sanitize_key_file (at least {MIN_KEY_BYTES} bytes, \
         e.g. `openssl rand -hex 32`)"
    )]
    Missing,
    /// The key file cannot be read, or the key is too short.
    #[error(transparent)]
    File(#[from] KeyFileError),
}

/// The secret key. Cloning is cheap enough (the rules are compiled rarely).
#[derive(Clone)]
pub struct SecretKey {
    bytes: Vec<u8>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(fingerprint {})", self.fingerprint())
    }
}

impl SecretKey {
    /// A key from its bytes (surrounding whitespace, such as the newline at
    /// the end of a file, is not part of it).
    pub fn new(bytes: &[u8], origin: &str) -> Result<SecretKey, KeyError> {
        let bytes = private_fs::key_bytes(WHAT, bytes, origin, MIN_KEY_BYTES)?;
        Ok(SecretKey { bytes })
    }

    /// The key from `file` when given, else from [`KEY_ENV`] (read through
    /// `env`). None when neither is set.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretKey>, KeyError> {
        let bytes = private_fs::load_key(WHAT, file, KEY_ENV, env, MIN_KEY_BYTES)?;
        Ok(bytes.map(|bytes| SecretKey { bytes }))
    }

    /// A short public fingerprint, to compare keys across machines and runs
    /// without revealing them.
    pub fn fingerprint(&self) -> String {
        let digest = self.subkey("fingerprint", "").digest(b"");
        hex(&digest[..4])
    }

    /// The keyed hash for one purpose (a transform name) in one domain.
    pub fn subkey(&self, purpose: &str, domain: &str) -> Keyed {
        let mut mac = HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes any key length");
        mac.update(DERIVATION_LABEL);
        for part in [purpose, domain] {
            mac.update(&[0]);
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let derived = mac.finalize().into_bytes();
        Keyed {
            mac: HmacSha256::new_from_slice(&derived).expect("HMAC takes any key length"),
        }
    }
}

/// HMAC-SHA256 under one derived subkey, keyed once and cloned per use.
#[derive(Clone)]
pub struct Keyed {
    mac: HmacSha256,
}

impl fmt::Debug for Keyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyed(..)")
    }
}

impl Keyed {
    pub fn digest(&self, input: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(input);
        mac.finalize().into_bytes().into()
    }

    /// The digest of several parts, each length-prefixed so that no two
    /// different part lists hash alike.
    pub fn digest_parts<'a>(&self, parts: impl IntoIterator<Item = Option<&'a str>>) -> [u8; 32] {
        let mut mac = self.mac.clone();
        for part in parts {
            match part {
                None => mac.update(&[0]),
                Some(p) => {
                    mac.update(&[1]);
                    mac.update(&(p.len() as u64).to_be_bytes());
                    mac.update(p.as_bytes());
                }
            }
        }
        mac.finalize().into_bytes().into()
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretKey {
        SecretKey::new(s.as_bytes(), "test").unwrap()
    }

    #[test]
    fn short_or_missing_keys_are_refused() {
        let err = SecretKey::new(b"short", "x").unwrap_err().to_string();
        assert!(err.contains("at least 32"), "{err}");
        assert!(SecretKey::load(None, |_| None).unwrap().is_none());
        let err = SecretKey::load(None, |_| Some("  ".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(KEY_ENV), "{err}");
        let k = SecretKey::load(None, |_| Some("k".repeat(40) + "\n"))
            .unwrap()
            .unwrap();
        // Trailing whitespace is not part of the key.
        assert_eq!(k.fingerprint(), key(&"k".repeat(40)).fingerprint());
    }

    #[test]
    fn key_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let secret = "0123456789abcdef0123456789abcdef-secret";
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        let k = SecretKey::load(Some(&path), |_| None).unwrap().unwrap();
        assert!(!format!("{k:?}").contains("secret"));
        let err = SecretKey::load(Some(&dir.path().join("nope")), |_| None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn subkeys_separate_purposes_domains_and_keys() {
        let a = key(&"a".repeat(32));
        let b = key(&"b".repeat(32));
        let x = a.subkey("hmac", "public.users.id").digest(b"42");
        assert_eq!(x, a.subkey("hmac", "public.users.id").digest(b"42"));
        assert_ne!(x, a.subkey("hmac", "public.orders.id").digest(b"42"));
        assert_ne!(x, a.subkey("fake", "public.users.id").digest(b"42"));
        assert_ne!(x, b.subkey("hmac", "public.users.id").digest(b"42"));
        // Boundaries between purpose and domain cannot be shifted.
        assert_ne!(
            a.subkey("ab", "c").digest(b""),
            a.subkey("a", "bc").digest(b"")
        );
        let k = a.subkey("date_shift", "t");
        assert_ne!(
            k.digest_parts([Some("1"), Some("23")]),
            k.digest_parts([Some("12"), Some("3")])
        );
        assert_ne!(k.digest_parts([None]), k.digest_parts([Some("")]));
    }
}
