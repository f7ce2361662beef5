//! syncdata-producer: tails the change archive and publishes every record to
//! JetStream, one subject per table. It owns the production side of delivery:
//! a record's checkpoint advances only after its PubAck, lines that cannot be
//! published are quarantined (never dropped silently), and any failure
//! rewinds to the last acknowledged line.

pub mod archive;
pub mod archiver;
pub mod checkpoint;
pub mod publisher;
pub mod quarantine;
pub mod sanitize;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;

use anyhow::Context;
use syncdata_core::config::Config;
use syncdata_core::nats;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::publisher::{Publisher, Settings};
use crate::sanitize::{Sanitizer, SecretKey};
use crate::sink::JetStreamSink;
use syncdata_core::signature::SigningKey;

pub use crate::status::{status, Status};

/// Runs the producer until `token` is cancelled: connects to NATS, makes sure
/// the change stream exists, then tails the archive. Returns Ok after a clean
/// shutdown (outstanding acknowledgements awaited, checkpoint written).
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let settings = Settings::from_config(&config)?;
    if let Some(addr) = config.producer.metrics_addr {
        syncdata_core::telemetry::init_metrics(addr).map_err(anyhow::Error::msg)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    anyhow::ensure!(
        settings.archive_dir.is_dir(),
        "archive directory {} does not exist or is not a directory",
        settings.archive_dir.display()
    );
    // Before any connection: bad rules or a missing key stop the start.
    let sanitizer = load_sanitizer(&config)?;
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    match &signer {
        Some(key) => {
            tracing::info!(fingerprint = %key.fingerprint(), "signing every message")
        }
        None => tracing::warn!(
            "no signing key (nats.signing_key_file or {}): messages are published unsigned, \
             and consumers that verify will dead-letter them",
            syncdata_core::signature::KEY_ENV
        ),
    }
    let span = tracing::info_span!("producer", archive = %settings.archive_dir.display());
    async move {
        let client = tokio::select! {
            _ = token.cancelled() => return Ok(()),
            client = nats::connect(&config.nats, "syncdata-producer") => client?,
        };
        let mut sink = JetStreamSink::new(client, nats::change_stream_config(&config.nats));
        if let Some(key) = signer {
            sink = sink.with_signer(key);
        }
        // Before the stream: a broken checkpoint should fail first and loudly.
        let mut publisher = Publisher::new(sink, settings)?;
        if let Some(sanitizer) = sanitizer {
            publisher = publisher.with_sanitizer(sanitizer);
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            ensured = publisher.ensure_stream() => ensured
                .with_context(|| format!("cannot create or read stream {}", config.nats.stream))?,
        }
        publisher.run(token).await?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// The sanitization rules of `producer.rules_file`, compiled with the key
/// (`producer.sanitize_key_file`, else `SYNCDATA_SANITIZE_KEY`). None, with a
/// warning, when no rules file is configured.
pub fn load_sanitizer(config: &Config) -> anyhow::Result<Option<Sanitizer>> {
    let Some(path) = &config.producer.rules_file else {
        tracing::warn!(
            "no producer.rules_file: records are published as they are, unsanitized; \
             set a rules file wherever the archive holds personal data"
        );
        return Ok(None);
    };
    let key = SecretKey::load(config.producer.sanitize_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    let sanitizer = Sanitizer::load(
        path,
        key,
        std::time::Duration::from_millis(config.producer.rules_reload_ms),
    )?;
    Ok(Some(sanitizer))
}
