//! Where published records go: the [`Sink`] contract and its JetStream
//! implementation. Invariant: a record counts as delivered only when its
//! acknowledgement future resolves to `Ok`; every failure is reported, none
//! is swallowed, so the publisher can rewind and send again.

use std::future::Future;

use async_nats::jetstream::{self, context::PublishErrorKind, object_store, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use syncdata_core::large::Pointer;
use syncdata_core::signature::{self, SigningKey};

/// The server's answer to one accepted publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The server already held a message with this id and dropped this one.
    pub duplicate: bool,
}

/// Resolves when the server has stored (or deduplicated) the message.
pub type AckFuture = BoxFuture<'static, Result<Acked, SinkError>>;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// This message can never be published as it is; retrying is pointless.
    #[error("message of {size} bytes exceeds the server's max_payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// No stream takes the subject; create it, then retry.
    #[error("no stream takes the subject: {0}")]
    StreamMissing(String),
    /// The stream is at its `nats.max_bytes` (discard New): the server
    /// refuses new messages until old ones age out. Wait and retry; nothing
    /// is dropped.
    #[error(
        "the stream is full ({0}): waiting for old messages to age out (nats.max_age_secs) \
         or for nats.max_bytes to be raised; nothing is dropped, publishing resumes by itself"
    )]
    StreamFull(String),
    /// Anything else (timeout, connection lost, server error): retry.
    #[error("publish failed: {0}")]
    Failed(String),
}

/// A message destination with acknowledgements.
///
/// Contract: at-least-once. `publish` hands one message to the server and
/// returns a future of its acknowledgement; the caller awaits those futures
/// in order and may drop unresolved ones (after a failure) and publish the
/// same messages again. The destination must deduplicate by `msg_id`, so a
/// re-published message is harmless. Many acknowledgements may be pending
/// at once; the caller bounds how many.
pub trait Sink: Send {
    /// The largest payload the server accepts.
    fn max_payload(&self) -> usize;

    /// Creates the destination stream when it is missing.
    fn ensure_stream(&self) -> impl Future<Output = Result<(), SinkError>> + Send;

    fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: Bytes,
    ) -> impl Future<Output = Result<AckFuture, SinkError>> + Send;

    /// Stores a record too large for a message where consumers can fetch
    /// it, and returns the pointer to publish in its place (see
    /// `syncdata_core::large`). None: this sink has no such place, the
    /// record is quarantined as too large.
    fn put_large(
        &self,
        _payload: &[u8],
    ) -> impl Future<Output = Result<Option<Pointer>, SinkError>> + Send {
        async { Ok(None) }
    }
}

/// Publishes to a JetStream stream, with `Nats-Msg-Id` set for server-side
/// deduplication and, with a signing key, the message signature
/// (`Syncdata-Signature`, see `syncdata_core::signature`).
pub struct JetStreamSink {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Config,
    signer: Option<SigningKey>,
    /// The object store bucket for records larger than a message.
    large: Option<object_store::Config>,
}

impl JetStreamSink {
    pub fn new(client: async_nats::Client, stream: stream::Config) -> Self {
        let js = jetstream::new(client.clone());
        JetStreamSink {
            client,
            js,
            stream,
            signer: None,
            large: None,
        }
    }

    /// Puts records larger than a message into this object store bucket
    /// (created when missing) and publishes pointers to them.
    pub fn with_large_records(mut self, bucket: object_store::Config) -> Self {
        self.large = Some(bucket);
        self
    }

    /// Signs every message with `key`.
    pub fn with_signer(mut self, key: SigningKey) -> Self {
        self.signer = Some(key);
        self
    }
}

/// Failures of a publish or of its acknowledgement. An oversized message is
/// told apart where its size is known (in `publish`).
fn classify(err: jetstream::context::PublishError) -> SinkError {
    match err.kind() {
        PublishErrorKind::StreamNotFound => SinkError::StreamMissing(err.to_string()),
        _ => {
            let text = err.to_string();
            let lower = text.to_lowercase();
            if lower.contains("maximum bytes exceeded")
                || lower.contains("maximum messages exceeded")
                || lower.contains("insufficient resources")
            {
                SinkError::StreamFull(text)
            } else {
                SinkError::Failed(text)
            }
        }
    }
}

impl Sink for JetStreamSink {
    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    async fn ensure_stream(&self) -> Result<(), SinkError> {
        syncdata_core::nats::reconcile_stream(&self.js, self.stream.clone(), true)
            .await
            .map(drop)
            .map_err(|e| SinkError::Failed(e.to_string()))
    }

    async fn publish(
        &self,
        subject: String,
        msg_id: String,
        payload: Bytes,
    ) -> Result<AckFuture, SinkError> {
        let size = payload.len();
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &self.signer {
            headers.insert(signature::HEADER, key.sign(&subject, &msg_id, &payload));
        }
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => SinkError::TooLarge {
                    size,
                    max: self.max_payload(),
                },
                _ => classify(e),
            })?;
        Ok(async move {
            ack.await
                .map(|a| Acked {
                    duplicate: a.duplicate,
                })
                .map_err(classify)
        }
        .boxed())
    }

    async fn put_large(&self, payload: &[u8]) -> Result<Option<Pointer>, SinkError> {
        let Some(config) = &self.large else {
            return Ok(None);
        };
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            SinkError::Failed(format!(
                "large record: cannot {what} object store bucket {}: {e}",
                config.bucket
            ))
        };
        let store = match self.js.get_object_store(&config.bucket).await {
            Ok(store) => store,
            Err(_) => self
                .js
                .create_object_store(config.clone())
                .await
                .map_err(|e| failed("create", &e))?,
        };
        let pointer = Pointer::of(&config.bucket, payload);
        // Named by content: an object already there is this record (a
        // re-read after a restart); put only what is missing.
        if let Ok(info) = store.info(&pointer.name).await {
            if !info.deleted && info.size == payload.len() {
                return Ok(Some(pointer));
            }
        }
        let mut reader = payload;
        store
            .put(pointer.name.as_str(), &mut reader)
            .await
            .map_err(|e| failed("put into", &e))?;
        metrics::counter!("syncdata_producer_large_records_total").increment(1);
        Ok(Some(pointer))
    }
}
