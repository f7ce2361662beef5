//! `syncdata-producer run`: tail the archive, sanitize, publish to
//! JetStream and checkpoint, until the token is cancelled.

use anyhow::Context;
use syncdata_core::config::Config;
use syncdata_core::nats;
use syncdata_core::signature::SigningKey;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::publisher::{Publisher, Settings};
use crate::sanitize::{Sanitizer, SecretKey};
use crate::sink::{JetStreamSink, Sink};

/// Runs the producer until `token` is cancelled: connects to NATS, makes sure
/// the change stream exists, then tails the archive. Returns Ok after a clean
/// shutdown (outstanding acknowledgements awaited, checkpoint written).
pub async fn run(config: Config, token: CancellationToken) -> anyhow::Result<()> {
    let settings = Settings::from_config(&config)?;
    if let Some(addr) = config.producer.metrics_addr {
        syncdata_core::telemetry::init_metrics(addr).map_err(anyhow::Error::msg)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        crate::backlog::describe_metrics();
    }
    anyhow::ensure!(
        settings.archive_dir.is_dir(),
        "archive directory {} does not exist or is not a directory",
        settings.archive_dir.display()
    );
    // Before any connection: bad rules, a missing key or no rules without
    // the explicit opt-out stop the start.
    let sanitizer = load_sanitizer(&config)?;
    metrics::gauge!("syncdata_producer_sanitization_enabled").set(if sanitizer.is_some() {
        1.0
    } else {
        0.0
    });
    syncdata_core::private_fs::warn_if_exposed(&settings.archive_dir, "archive");
    // One producer per state directory, held until `run` returns.
    let _lock = crate::state_lock::lock(&settings.state_dir)?;
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
        let status_js = async_nats::jetstream::new(client.clone());
        let mut sink = JetStreamSink::new(client, nats::change_stream_config(&config.nats));
        if let Some(key) = signer {
            sink = sink.with_signer(key);
        }
        sink = sink.with_large_records(syncdata_core::large::bucket_config(&config.nats));
        let max_payload = sink.max_payload();
        if config.producer.max_record_bytes > syncdata_core::large::inline_limit(max_payload) {
            tracing::info!(
                max_payload,
                max_record_bytes = config.producer.max_record_bytes,
                bucket = %syncdata_core::large::bucket_name(&config.nats),
                "records larger than a message go through the object store bucket"
            );
        }
        // Before the stream: a broken checkpoint should fail first and loudly.
        let mut publisher = Publisher::new(sink, settings)?.with_quarantine_limits(
            config.producer.quarantine_max_bytes,
            config.producer.quarantine_keep_files,
        );
        if let Some(sanitizer) = sanitizer {
            publisher = publisher.with_sanitizer(sanitizer);
        }
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            ensured = publisher.ensure_stream() => ensured
                .with_context(|| format!("cannot create or read stream {}", config.nats.stream))?,
        }
        let watch = tokio::spawn(watch_backlog(config.clone(), token.child_token()));
        let halts = tokio::spawn(crate::halt_status::run(
            status_js,
            config.nats.clone(),
            config.producer_state_dir()?,
            token.child_token(),
        ));
        let result = publisher.run(token).await;
        watch.abort();
        halts.abort();
        result?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// The message `run` fails with when no rules file is configured and the
/// opt-out is not set.
pub const NO_RULES: &str = "no producer.rules_file: refusing to publish unsanitized records. \
     Set producer.rules_file to a sanitization rules file (see docs/sanitization.md; \
     `syncdata-producer check-rules` checks it), or set producer.allow_unsanitized = true \
     if this archive holds no personal data";

/// The sanitization rules of `producer.rules_file`, compiled with the key
/// (`producer.sanitize_key_file`, else `SYNCDATA_SANITIZE_KEY`). Fails
/// closed: without a rules file it is an error unless
/// `producer.allow_unsanitized = true` (then None, with a warning).
pub fn load_sanitizer(config: &Config) -> anyhow::Result<Option<Sanitizer>> {
    let Some(path) = &config.producer.rules_file else {
        anyhow::ensure!(config.producer.allow_unsanitized, NO_RULES);
        tracing::warn!(
            "sanitization OFF (producer.allow_unsanitized = true, no producer.rules_file): \
             records are published as they are"
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

/// How often the backlog gauges are measured, and how often the one-line
/// summary is logged.
const BACKLOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Measures the backlog past the checkpoint (files, bytes, records) for the
/// gauges, and logs a summary line every minute.
async fn watch_backlog(config: Config, token: CancellationToken) {
    let (Ok(dir), Ok(state)) = (
        config.archive_dir().map(|d| d.to_owned()),
        config.producer_state_dir(),
    ) else {
        return;
    };
    let mut tick = tokio::time::interval(BACKLOG_EVERY);
    let mut last: Option<(std::time::Instant, crate::backlog::Backlog)> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (dir, state) = (dir.clone(), state.clone());
        let measured = tokio::task::spawn_blocking(move || {
            let cp = crate::checkpoint::CheckpointStore::new(&state)
                .load()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            crate::backlog::measure(&dir, cp.as_ref())
        })
        .await;
        let b = match measured {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "measuring the backlog failed");
                continue;
            }
            Err(_) => continue,
        };
        metrics::gauge!("syncdata_producer_backlog_bytes").set(b.bytes as f64);
        metrics::gauge!("syncdata_producer_backlog_records").set(b.records as f64);
        metrics::gauge!("syncdata_producer_backlog_files").set(b.files as f64);
        match last {
            Some((at, before)) if at.elapsed() >= SUMMARY_EVERY => {
                let secs = at.elapsed().as_secs_f64();
                let drained = before.records as f64 - b.records as f64;
                tracing::info!(
                    "backlog {} records ({} bytes) in {} file(s); {:+.0} records/s over the last {:.0} s",
                    b.records,
                    b.bytes,
                    b.files,
                    -drained / secs,
                    secs
                );
                last = Some((std::time::Instant::now(), b));
            }
            None => last = Some((std::time::Instant::now(), b)),
            _ => {}
        }
    }
}
