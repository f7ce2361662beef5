//! Records too large for one NATS message (the server's `max_payload`,
//! 1 MB by default) travel through a JetStream object store: the producer
//! puts the record's JSON into the deployment's bucket under its content
//! hash and publishes a small *pointer* in the record's place, on the
//! record's subject, signed like any message. A consumer fetches the object,
//! checks its size and SHA-256 against the pointer and applies the record
//! whole. The signature covers the pointer, the pointer names the digest:
//! an object is trusted exactly as far as the signed message naming it.
//!
//! Retention: objects are never deleted by syncdata (every local database
//! reads the same object, at its own pace); the bucket's `max_age`
//! (`nats.large_max_age_secs`) expires them and must be at least the change
//! stream's retention, so no pointer the stream can still deliver names an
//! expired object. See docs/production.md "Large records".

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::NatsConfig;

/// The first key of a pointer's JSON: how a pointer is told from a record
/// without parsing the payload.
pub const POINTER_KEY: &str = "syncdata_object";
const POINTER_PREFIX: &[u8] = b"{\"syncdata_object\":";

/// Room left in a message for headers (signature, message id) and, on a
/// consumer, for a dead letter's headers: a payload over
/// `max_payload - HEADROOM` goes through the object store.
pub const HEADROOM: usize = 16 * 1024;

/// Where a large record is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    pub bucket: String,
    /// The object's name: the record's SHA-256, lowercase hex.
    pub name: String,
    /// The record's size in bytes.
    pub size: u64,
    /// The record's SHA-256, lowercase hex.
    pub sha256: String,
}

/// A pointer message's payload: the pointer, plus the record's table and
/// version for people and tools that look at the stream.
#[derive(Debug, Serialize, Deserialize)]
struct PointerMessage {
    syncdata_object: Pointer,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    lsn: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl Pointer {
    /// The pointer of `record` (its JSON) in `bucket`.
    pub fn of(bucket: &str, record: &[u8]) -> Pointer {
        let hash = sha256_hex(record);
        Pointer {
            bucket: bucket.to_owned(),
            name: hash.clone(),
            size: record.len() as u64,
            sha256: hash,
        }
    }

    /// The message payload carrying this pointer in place of a record of
    /// `schema.table` at version (`lsn`, `seq`).
    pub fn to_payload(&self, schema: &str, table: &str, lsn: &str, seq: Option<u64>) -> Vec<u8> {
        let m = PointerMessage {
            syncdata_object: self.clone(),
            schema: Some(schema.to_owned()),
            table: Some(table.to_owned()),
            lsn: Some(lsn.to_owned()),
            seq,
        };
        serde_json::to_vec(&m).expect("a pointer always serializes")
    }

    /// Checks fetched bytes against the pointer.
    pub fn verify(&self, data: &[u8]) -> Result<(), String> {
        if data.len() as u64 != self.size {
            return Err(format!(
                "large record {} has {} bytes, its pointer says {}",
                self.name,
                data.len(),
                self.size
            ));
        }
        if sha256_hex(data) != self.sha256 {
            return Err(format!(
                "large record {} does not match its pointer's SHA-256",
                self.name
            ));
        }
        Ok(())
    }
}

/// None when `payload` is not a pointer (an ordinary record); else the
/// pointer or why it is malformed.
pub fn parse_pointer(payload: &[u8]) -> Option<Result<Pointer, String>> {
    if !payload.starts_with(POINTER_PREFIX) {
        return None;
    }
    Some(
        serde_json::from_slice::<PointerMessage>(payload)
            .map(|m| m.syncdata_object)
            .map_err(|e| format!("malformed large-record pointer: {e}"))
            .and_then(|p| {
                let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex(&p.sha256) || p.name != p.sha256 {
                    Err("malformed large-record pointer: bad name or sha256".to_owned())
                } else {
                    Ok(p)
                }
            }),
    )
}

/// The size a pointer says its record has (0 for anything else): what
/// resolving `payload` will add to memory.
pub fn resolved_size(payload: &[u8]) -> u64 {
    match parse_pointer(payload) {
        Some(Ok(p)) => p.size,
        _ => 0,
    }
}

/// The deployment's bucket: `nats.large_bucket`, else `<stream>_LARGE`.
pub fn bucket_name(cfg: &NatsConfig) -> String {
    cfg.large_bucket
        .clone()
        .unwrap_or_else(|| format!("{}_LARGE", cfg.stream))
}

/// The bucket's configuration: file storage, the stream's replicas, objects
/// expiring after `nats.large_max_age_secs` (0: never).
pub fn bucket_config(cfg: &NatsConfig) -> object_store::Config {
    object_store::Config {
        bucket: bucket_name(cfg),
        description: Some("syncdata records larger than max_payload".to_owned()),
        max_age: Duration::from_secs(cfg.large_max_age_secs),
        storage: jetstream::stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// The largest record payload sent as a message on a server with
/// `max_payload`; larger ones go through the object store.
pub fn inline_limit(max_payload: usize) -> usize {
    max_payload.saturating_sub(HEADROOM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointer_round_trips_and_checks_its_data() {
        let record = br#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1}"#;
        let p = Pointer::of("B", record);
        let payload = p.to_payload("public", "t", "0/1", Some(1));
        assert_eq!(parse_pointer(&payload), Some(Ok(p.clone())));
        assert_eq!(resolved_size(&payload), record.len() as u64);
        assert!(p.verify(record).is_ok());
        assert!(p.verify(b"other").is_err());
        let mut changed = record.to_vec();
        changed[5] = b'x';
        assert!(p.verify(&changed).unwrap_err().contains("SHA-256"));
    }

    #[test]
    fn records_are_not_pointers() {
        assert_eq!(parse_pointer(br#"{"table":"t"}"#), None);
        assert!(matches!(
            parse_pointer(br#"{"syncdata_object":{"bucket":"B"}}"#),
            Some(Err(_))
        ));
    }
}
