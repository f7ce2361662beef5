//! Message authenticity: the producer signs every change message with a
//! keyed MAC (HMAC-SHA256) over its subject, its `Nats-Msg-Id` and its
//! payload, carried in the [`HEADER`] header as `v1=<hex>`; a consumer holding
//! the same key verifies before anything reaches the apply engine.
//!
//! Invariants: the key never comes from a configuration file's text and is
//! never printed (Debug shows a short fingerprint); the three signed parts
//! are length-prefixed, so no two different (subject, id, payload) triples
//! give the same MAC input; verification compares in constant time.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};

use crate::private_fs;
use sha2::Sha256;

/// The header carrying the signature.
pub const HEADER: &str = "Syncdata-Signature";
/// The environment variable holding the key when no key file is configured.
pub const KEY_ENV: &str = "SYNCDATA_SIGNING_KEY";
/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// The scheme tag in the header value; bumped only with a documented change.
const SCHEME: &str = "v1";
/// Domain separation from every other use of HMAC in syncdata.
const LABEL: &[u8] = b"syncdata-message/v1";
/// How errors and warnings name this key.
const WHAT: &str = "signing";

type HmacSha256 = Hmac<Sha256>;

/// A signing key that could not be loaded.
pub use crate::private_fs::KeyFileError as KeyError;

/// Why a message is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned message: no {HEADER} header")]
    Missing,
    #[error("malformed {HEADER} header (expected {SCHEME}=<64 hex digits>)")]
    Malformed,
    #[error(
        "forged or altered message: {HEADER} does not match the subject, message id and payload"
    )]
    Mismatch,
}

impl SignatureError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing => "unsigned",
            SignatureError::Malformed | SignatureError::Mismatch => "bad_signature",
        }
    }
}

/// The shared signing key.
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(fingerprint {})", self.fingerprint())
    }
}

impl SigningKey {
    /// A key from its bytes (surrounding whitespace, such as a file's final
    /// newline, is not part of it).
    pub fn new(bytes: &[u8], origin: &str) -> Result<SigningKey, KeyError> {
        let bytes = private_fs::key_bytes(WHAT, bytes, origin, MIN_KEY_BYTES)?;
        Ok(SigningKey { bytes })
    }

    /// The key from `file` when given, else from [`KEY_ENV`] (read through
    /// `env`). None when neither is set.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<SigningKey>, KeyError> {
        let bytes = private_fs::load_key(WHAT, file, KEY_ENV, env, MIN_KEY_BYTES)?;
        Ok(bytes.map(|bytes| SigningKey { bytes }))
    }

    /// A short public fingerprint, to compare keys across machines without
    /// revealing them.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac();
        mac.update(b"fingerprint");
        hex(&mac.finalize().into_bytes()[..4])
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.bytes).expect("HMAC takes any key length")
    }

    fn message_mac(&self, subject: &str, msg_id: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(LABEL);
        for part in [subject.as_bytes(), msg_id.as_bytes(), payload] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The header value signing this message.
    pub fn sign(&self, subject: &str, msg_id: &str, payload: &[u8]) -> String {
        let tag = self
            .message_mac(subject, msg_id, payload)
            .finalize()
            .into_bytes();
        format!("{SCHEME}={}", hex(&tag))
    }

    /// Checks a message's header value (None: no header).
    pub fn verify(
        &self,
        subject: &str,
        msg_id: &str,
        payload: &[u8],
        header: Option<&str>,
    ) -> Result<(), SignatureError> {
        let value = header.ok_or(SignatureError::Missing)?;
        let tag = value
            .trim()
            .strip_prefix(SCHEME)
            .and_then(|v| v.strip_prefix('='))
            .and_then(unhex)
            .filter(|t| t.len() == 32)
            .ok_or(SignatureError::Malformed)?;
        self.message_mac(subject, msg_id, payload)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: u8) -> SigningKey {
        SigningKey::new(&[c; 32], "test").unwrap()
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_breaks_it() {
        let k = key(b'a');
        let sig = k.sign("syncdata.changes.public.users", "id-1", b"{\"x\":1}");
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64, "{sig}");
        k.verify(
            "syncdata.changes.public.users",
            "id-1",
            b"{\"x\":1}",
            Some(&sig),
        )
        .unwrap();
        for (subject, id, payload) in [
            ("syncdata.changes.public.orders", "id-1", &b"{\"x\":1}"[..]),
            ("syncdata.changes.public.users", "id-2", &b"{\"x\":1}"[..]),
            ("syncdata.changes.public.users", "id-1", &b"{\"x\":2}"[..]),
            // Moving bytes between the parts is a different message.
            ("syncdata.changes.public.users", "id-1{", &b"\"x\":1}"[..]),
        ] {
            assert_eq!(
                k.verify(subject, id, payload, Some(&sig)),
                Err(SignatureError::Mismatch)
            );
        }
        let other = key(b'b');
        assert_eq!(
            other.verify(
                "syncdata.changes.public.users",
                "id-1",
                b"{\"x\":1}",
                Some(&sig)
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_told_apart() {
        let k = key(b'a');
        assert_eq!(k.verify("s", "i", b"p", None), Err(SignatureError::Missing));
        for bad in ["", "v1=", "v2=00", "v1=zz", "deadbeef", "v1=00ff"] {
            assert_eq!(
                k.verify("s", "i", b"p", Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(SignatureError::Missing.reason(), "unsigned");
        assert_eq!(SignatureError::Mismatch.reason(), "bad_signature");
    }

    #[test]
    fn keys_load_from_file_or_env_and_never_print() {
        assert!(SigningKey::load(None, |_| None).unwrap().is_none());
        let secret = "0123456789abcdef0123456789abcdef-secret";
        let k = SigningKey::load(None, |v| (v == KEY_ENV).then(|| secret.to_owned()))
            .unwrap()
            .unwrap();
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("0123"),
            "{shown}"
        );
        let err = SigningKey::load(None, |_| Some("short".into())).unwrap_err();
        assert!(err.to_string().contains(KEY_ENV), "{err}");
        let dir = std::env::temp_dir().join(format!("sd-sigkey-{}", std::process::id()));
        std::fs::write(&dir, format!("{secret}\n")).unwrap();
        let from_file = SigningKey::load(Some(&dir), |_| None).unwrap().unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(from_file.fingerprint(), k.fingerprint());
    }
}
