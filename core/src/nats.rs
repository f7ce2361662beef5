//! NATS connection and JetStream stream setup shared by both binaries. The
//! change stream and the dead-letter stream are created when missing, with
//! file storage and the configured replica count.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::NatsConfig;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create or read JetStream stream {name}: {message}")]
    Stream { name: String, message: String },
}

/// Connects with unlimited reconnects: a NATS restart is an outage to ride
/// out, never a reason to exit.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Connect {
        url: crate::redact::redact_url(&cfg.url),
        source,
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            tracing::info!(event = %event, "nats connection event");
        });
    if cfg.tls_required || cfg.tls_ca_file.is_some() || cfg.tls_cert_file.is_some() {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(creds) = &cfg.creds_file {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| err(Box::new(e)))?;
    }
    let client = opts
        .connect(cfg.url.as_str())
        .await
        .map_err(|e| err(Box::new(e)))?;
    // retry_on_initial_connect returns at once; make a dead URL fail loudly
    // rather than hang, but give a starting server a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(err("no connection within 15 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

pub fn change_stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![format!("{}.>", cfg.subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        ..Default::default()
    }
}

pub fn dlq_stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.dlq_stream.clone(),
        subjects: vec![format!("{}.>", cfg.dlq_subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// Creates the stream when missing; returns it either way.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    let name = config.name.clone();
    js.get_or_create_stream(config)
        .await
        .map_err(|e| NatsError::Stream {
            name,
            message: e.to_string(),
        })
}
