//! Dead letters: a record that failed permanently `max_attempts` times is
//! published to the DLQ stream with why it failed and where it came from,
//! recorded as FAILED in `data_sync_logs`, and only then acked, so it is
//! never lost and never blocks its table.
//!
//! Each destination database files under its own subjects
//! (`<dlq_prefix>.<instance>.<schema>.<table>`) and message ids, so two
//! databases dead-lettering the same record each keep their own entry. The
//! error text is the reduced one of [`crate::failure::describe`]: SQLSTATE,
//! table, column, constraint; never a value.

use crate::store;
use async_nats::jetstream;
use async_nats::HeaderMap;
use sqlx::PgPool;
use syncdata_core::subject::{dlq_message_id, dlq_subject};
use syncdata_core::table::TableName;

pub const H_ERROR: &str = "Syncdata-Error";
pub const H_SQLSTATE: &str = "Syncdata-Sqlstate";
pub const H_ATTEMPTS: &str = "Syncdata-Attempts";
pub const H_SUBJECT: &str = "Syncdata-Original-Subject";
pub const H_SEQUENCE: &str = "Syncdata-Original-Sequence";
pub const H_TABLE: &str = "Syncdata-Table";
/// The destination (instance id) whose dead letter this is.
pub const H_INSTANCE: &str = "Syncdata-Instance";
/// The original message's signature and message id, so that a replay can
/// verify the record again (a dead letter is never trusted more than the
/// message it came from).
pub const H_SIGNATURE: &str = "Syncdata-Original-Signature";
pub const H_MSG_ID: &str = "Syncdata-Original-Msg-Id";
/// Set when the dead letter carries no payload because the original one
/// and the headers would not fit in a message: the payload is the change
/// stream's message at the original sequence (`Syncdata-Original-Sequence`),
/// which `dlq replay` and `dlq show` read from there. Value: the stream.
pub const H_PAYLOAD_REF: &str = "Syncdata-Payload-Stream";
/// Set when the record came from a chunk (`crate::chunk`): its place in
/// the chunk. The payload is that record alone; the original signature and
/// message id are the chunk's, so a replay checks the record against the
/// signed chunk, read from the change stream at the original sequence.
pub const H_CHUNK_INDEX: &str = "Syncdata-Original-Chunk-Index";

pub struct DeadLetter<'a> {
    pub table: &'a TableName,
    pub payload: bytes::Bytes,
    pub error: String,
    pub sqlstate: Option<String>,
    pub attempts: u64,
    pub subject: String,
    pub sequence: u64,
    pub signature: Option<String>,
    pub msg_id: Option<String>,
    /// The record's place in its chunk (None: a message of one record).
    pub chunk_index: Option<u32>,
}

/// Header values must be one line, and short: all headers of a dead letter
/// stay within a few KB, well inside `syncdata_core::large::HEADROOM`.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

/// Whether a payload of `payload` bytes plus these headers fits in one
/// message on a server with `max_payload`.
fn fits(payload: usize, headers: &HeaderMap, max_payload: usize) -> bool {
    let head: usize = headers
        .iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| k.to_string().len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    payload + head + 64 <= max_payload
}

pub async fn publish(
    js: &jetstream::Context,
    pool: &PgPool,
    dlq_prefix: &str,
    change_stream: &str,
    dl: DeadLetter<'_>,
) -> anyhow::Result<()> {
    // Dead letters are rare: read the id rather than carry it everywhere.
    let instance = store::instance_id(pool).await?;
    let table = dl.table;
    let at = failure_at(dl.sequence, dl.chunk_index);
    let detail = publish_as(js, &instance, dlq_prefix, change_stream, dl).await?;
    store::log_failure(pool, table, &at, &detail).await?;
    Ok(())
}

/// Where a dead letter came from, for its FAILED row in `data_sync_logs`.
pub(crate) fn failure_at(sequence: u64, chunk_index: Option<u32>) -> String {
    match chunk_index {
        None => format!("seq {sequence}"),
        Some(i) => format!("seq {sequence} record {i}"),
    }
}

/// Publishes the dead letter of destination `instance`; returns the detail
/// for its FAILED row in `data_sync_logs` (written by the caller).
pub(crate) async fn publish_as(
    js: &jetstream::Context,
    instance: &str,
    dlq_prefix: &str,
    change_stream: &str,
    dl: DeadLetter<'_>,
) -> anyhow::Result<String> {
    let mut headers = HeaderMap::new();
    headers.insert(H_INSTANCE, instance);
    headers.insert(H_ERROR, header_safe(&dl.error).as_str());
    if let Some(code) = &dl.sqlstate {
        headers.insert(H_SQLSTATE, code.as_str());
    }
    headers.insert(H_ATTEMPTS, dl.attempts.to_string().as_str());
    headers.insert(H_SUBJECT, dl.subject.as_str());
    headers.insert(H_SEQUENCE, dl.sequence.to_string().as_str());
    headers.insert(H_TABLE, header_safe(&dl.table.to_string()).as_str());
    if let Some(sig) = &dl.signature {
        headers.insert(H_SIGNATURE, header_safe(sig).as_str());
    }
    if let Some(id) = &dl.msg_id {
        headers.insert(H_MSG_ID, header_safe(id).as_str());
    }
    // The original stream sequence (and place in the chunk) identifies the
    // dead letter: a crash between this publish and the ack cannot file it
    // twice.
    let mut id = dlq_message_id(instance, &dl.subject, dl.sequence);
    if let Some(i) = dl.chunk_index {
        headers.insert(H_CHUNK_INDEX, i.to_string().as_str());
        id.push_str(&format!(":{i}"));
    }
    headers.insert("Nats-Msg-Id", id.as_str());
    let subject = dlq_subject(dlq_prefix, instance, &dl.table.schema, &dl.table.table);
    // A dead letter always fits: a payload too large to go with its headers
    // stays where it is, in the change stream, and is filed by reference.
    let mut payload = dl.payload;
    if !fits(
        payload.len(),
        &headers,
        js.client().server_info().max_payload,
    ) {
        headers.insert(H_PAYLOAD_REF, change_stream);
        payload = bytes::Bytes::new();
    }
    js.publish_with_headers(subject, headers, payload)
        .await?
        .await?;
    let detail = match &dl.sqlstate {
        Some(code) => format!(
            "{} (SQLSTATE {code}; stream sequence {}; after {} attempts)",
            dl.error, dl.sequence, dl.attempts
        ),
        None => format!(
            "{} (stream sequence {}; after {} attempts)",
            dl.error, dl.sequence, dl.attempts
        ),
    };
    metrics::counter!("syncdata_dead_lettered_total", "table" => dl.table.to_string()).increment(1);
    Ok(detail)
}
