//! SCRAM-SHA-256 password verifiers computed here, as psql's `\password`
//! does, so that `setup-source --create-user` sends
//! `PASSWORD 'SCRAM-SHA-256$…'` and the password itself never reaches the
//! server: not its log (`log_statement = all`), not `pg_stat_statements`.
//! RFC 5802/7677, PostgreSQL's stored form
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default (`scram_iterations`).
pub const ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes, SHA-256's size).
fn pbkdf2_one_block(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// The verifier for `password` with `salt`.
pub fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = pbkdf2_one_block(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// A verifier with a fresh random 16-byte salt. Only printable ASCII
/// passwords: PostgreSQL runs SASLprep on the password at login, which
/// leaves those unchanged but may rewrite others, and this crate does not
/// carry SASLprep's Unicode tables.
pub fn verifier(password: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    anyhow::ensure!(
        password.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "the password has characters outside printable ASCII: set it with psql's \\password instead"
    );
    let salt: [u8; 16] = rand::random();
    Ok(verifier_with(password, &salt, ITERATIONS))
}

/// The client side of a SCRAM-SHA-256 login (RFC 5802/7677, no channel
/// binding), for the archiver's replication connection.
pub struct Client {
    password: String,
    nonce: String,
    first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl Client {
    pub fn new(password: &str) -> Client {
        let raw: [u8; 18] = rand::random();
        let nonce = B64.encode(raw);
        Client {
            password: password.to_owned(),
            first_bare: format!("n=,r={nonce}"),
            nonce,
            server_signature: None,
        }
    }

    /// client-first-message (the user name comes from the startup packet).
    pub fn first_message(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// client-final-message for the server-first-message.
    pub fn final_message(&mut self, server_first: &str) -> anyhow::Result<String> {
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|p| p.strip_prefix(k))
                .ok_or_else(|| anyhow::anyhow!("SCRAM server-first-message lacks {k}"))
        };
        let nonce = field("r=")?;
        anyhow::ensure!(
            nonce.starts_with(&self.nonce),
            "SCRAM server nonce does not extend the client's"
        );
        let salt = B64
            .decode(field("s=")?)
            .map_err(|_| anyhow::anyhow!("SCRAM salt is not base64"))?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| anyhow::anyhow!("SCRAM iteration count is not a number"))?;
        anyhow::ensure!(
            (1..=10_000_000).contains(&iterations),
            "SCRAM iteration count out of range"
        );
        let salted = pbkdf2_one_block(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message.
    pub fn verify_server(&self, server_final: &str) -> anyhow::Result<()> {
        let v = server_final
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .ok_or_else(|| anyhow::anyhow!("SCRAM server-final-message lacks its signature"))?;
        let expected = self
            .server_signature
            .ok_or_else(|| anyhow::anyhow!("SCRAM final message out of order"))?;
        anyhow::ensure!(
            B64.decode(v).ok().as_deref() == Some(&expected[..]),
            "the source's SCRAM signature does not match: not the server that stores this password"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 section 11, PBKDF2-HMAC-SHA256, first 32 bytes.
        let out = pbkdf2_one_block(b"passwd", b"salt", 1);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn verifier_matches_rfc7677_example() {
        // RFC 7677 section 3: user "user", password "pencil", salt
        // W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations. The client proof there
        // is derived from ClientKey; the server signature from ServerKey.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = verifier_with("pencil", &salt, 4096);
        let (head, keys) = v.rsplit_once('$').unwrap();
        assert_eq!(head, "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==");
        let (stored, server) = keys.split_once(':').unwrap();
        // ServerSignature = HMAC(ServerKey, AuthMessage) from the RFC.
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
                    r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
                    c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = hmac(&B64.decode(server).unwrap(), auth.as_bytes());
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert_eq!(B64.decode(stored).unwrap().len(), 32);
        assert!(verifier("caf\u{e9}").is_err());
        assert!(verifier("pencil")
            .unwrap()
            .starts_with("SCRAM-SHA-256$4096:"));
    }
}
