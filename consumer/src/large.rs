//! The consumer's side of large records (`syncdata_core::large`): a message
//! carrying a pointer is resolved to the record it names, fetched from the
//! deployment's object store bucket and checked against the pointer's size
//! and SHA-256, before the record is parsed and applied whole.
//!
//! Memory: a pull's messages are applied in parts of at most
//! `consumer.batch_max_bytes` of resolved records (a record larger than
//! that is a part of its own), so an 8 MB record is held at most a few times over (the
//! fetched bytes, the parsed record, the statement's parameters), never a
//! whole pull of them. See docs/production.md "Large records".

use async_nats::jetstream::{self, message::Message, object_store};
use bytes::Bytes;
use syncdata_core::config::NatsConfig;
use syncdata_core::large::{self, Pointer};
use tokio::io::AsyncReadExt;

/// Why a pointer did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The object store did not answer (an outage, a leader election):
    /// retry, never dead-letter.
    Transient(String),
    /// The pointer is malformed, names another bucket, its object is gone
    /// (expired) or does not match: dead-letter (by reference: the dead
    /// letter carries the pointer).
    Permanent(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Transient(e) | ResolveError::Permanent(e) => f.write_str(e),
        }
    }
}

/// The record `payload` carries: itself, or the object its pointer names.
pub async fn resolve(
    js: &jetstream::Context,
    nats: &NatsConfig,
    payload: &Bytes,
) -> Result<Bytes, ResolveError> {
    let pointer = match large::parse_pointer(payload) {
        None => return Ok(payload.clone()),
        Some(p) => p.map_err(ResolveError::Permanent)?,
    };
    fetch(js, nats, &pointer).await
}

async fn fetch(
    js: &jetstream::Context,
    nats: &NatsConfig,
    pointer: &Pointer,
) -> Result<Bytes, ResolveError> {
    let bucket = large::bucket_name(nats);
    if pointer.bucket != bucket {
        return Err(ResolveError::Permanent(format!(
            "large-record pointer names bucket {:?}, this deployment's is {bucket:?}",
            pointer.bucket
        )));
    }
    let store = js.get_object_store(&bucket).await.map_err(|e| {
        ResolveError::Transient(format!("cannot open object store bucket {bucket}: {e}"))
    })?;
    let mut object = match store.get(&pointer.name).await {
        Ok(o) => o,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
            return Err(ResolveError::Permanent(format!(
                "large record {} is not in bucket {bucket} (expired? see nats.large_max_age_secs)",
                pointer.name
            )))
        }
        Err(e) => {
            return Err(ResolveError::Transient(format!(
                "cannot fetch large record {} from bucket {bucket}: {e}",
                pointer.name
            )))
        }
    };
    let mut data = Vec::with_capacity(usize::try_from(pointer.size).unwrap_or(0).min(64 << 20));
    object.read_to_end(&mut data).await.map_err(|e| {
        ResolveError::Transient(format!(
            "cannot read large record {} from bucket {bucket}: {e}",
            pointer.name
        ))
    })?;
    pointer.verify(&data).map_err(ResolveError::Permanent)?;
    metrics::counter!("syncdata_large_records_fetched_total").increment(1);
    Ok(Bytes::from(data))
}

/// Resolves the messages of a part, in order; a message whose `follow`
/// is false (refused before: unsigned, forged) keeps its payload unread.
pub async fn resolve_all(
    js: &jetstream::Context,
    nats: &NatsConfig,
    msgs: &[Message],
    follow: &[bool],
) -> Vec<Result<Bytes, ResolveError>> {
    let mut out = Vec::with_capacity(msgs.len());
    for (m, &follow) in msgs.iter().zip(follow) {
        out.push(if follow {
            resolve(js, nats, &m.payload).await
        } else {
            Ok(m.payload.clone())
        });
    }
    out
}

/// Splits a pull into parts of at most `budget` resolved bytes (a message
/// counts its payload, a pointer the record it names) and at most
/// `max_records` records (a chunk counts its records) each, keeping their
/// order: the unit the engine decodes and applies at once. A part always
/// holds at least one message.
pub fn parts(msgs: Vec<Message>, budget: u64, max_records: usize) -> Vec<Vec<Message>> {
    let sizes: Vec<u64> = msgs.iter().map(|m| size_of(&m.payload)).collect();
    let mut out = Vec::new();
    for part in split_by(msgs, &sizes, budget) {
        let records: Vec<u64> = part
            .iter()
            .map(|m| crate::chunk::record_count(&m.payload) as u64)
            .collect();
        out.extend(split_by(part, &records, max_records as u64));
    }
    out
}

fn size_of(payload: &[u8]) -> u64 {
    large::resolved_size(payload).max(payload.len() as u64)
}

fn split_by<T>(items: Vec<T>, sizes: &[u64], budget: u64) -> Vec<Vec<T>> {
    if sizes.iter().sum::<u64>() <= budget {
        return vec![items];
    }
    let mut out = Vec::new();
    let mut part = Vec::new();
    let mut used = 0u64;
    for (item, &size) in items.into_iter().zip(sizes) {
        if !part.is_empty() && used + size > budget {
            out.push(std::mem::take(&mut part));
            used = 0;
        }
        used += size;
        part.push(item);
    }
    if !part.is_empty() {
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_order_and_stay_within_the_budget() {
        let items: Vec<u32> = (0..6).collect();
        let sizes = [5, 5, 20, 1, 1, 9];
        let parts = split_by(items, &sizes, 10);
        assert_eq!(parts, vec![vec![0, 1], vec![2], vec![3, 4], vec![5]]);
        let one = split_by(vec![1, 2], &[1, 1], 10);
        assert_eq!(one, vec![vec![1, 2]]);
    }
}
