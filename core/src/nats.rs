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
    #[error("cannot read NATS credential file {path}: {source}")]
    Credential {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn read_secret(path: &std::path::Path) -> Result<String, NatsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| NatsError::Credential {
            path: path.to_owned(),
            source,
        })
}

/// Connects with unlimited reconnects: a NATS restart is an outage to ride
/// out, never a reason to exit.
pub async fn connect(cfg: &NatsConfig, name: &str) -> Result<async_nats::Client, NatsError> {
    Ok(connect_with_errors(cfg, name).await?.0)
}

/// [`connect`], plus the server's error reports (`-ERR` lines such as
/// permission violations) as they arrive.
pub async fn connect_with_errors(
    cfg: &NatsConfig,
    name: &str,
) -> Result<(async_nats::Client, ServerErrors), NatsError> {
    let (errors_tx, errors) = tokio::sync::mpsc::unbounded_channel();
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::Connect {
        url: crate::redact::redact_url(&cfg.url),
        source,
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            if let async_nats::Event::ServerError(e) = &event {
                let _ = errors_tx.send(e.to_string());
            }
            async move {
                tracing::info!(event = %event, "nats connection event");
            }
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
    if let Some(user) = &cfg.user {
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => p.0.clone(),
            (None, Some(file)) => read_secret(file)?,
            (None, None) => String::new(),
        };
        opts = opts.user_and_password(user.clone(), password);
    }
    match (&cfg.token, &cfg.token_file) {
        (Some(t), _) => opts = opts.token(t.0.clone()),
        (None, Some(file)) => opts = opts.token(read_secret(file)?),
        (None, None) => {}
    }
    if let Some(file) = &cfg.nkey_seed_file {
        opts = opts.nkey(read_secret(file)?);
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
    let wait = crate::retry::STARTUP_WAIT;
    let deadline = tokio::time::Instant::now() + wait;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!(
                "not reachable within {} s (is nats-server running?)",
                wait.as_secs()
            )
            .into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((client, errors))
}

/// The server's error reports on one connection.
pub type ServerErrors = tokio::sync::mpsc::UnboundedReceiver<String>;

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

/// A subject under `subject_prefix` no table uses, for [`probe_publish`].
pub fn probe_subject(client: &async_nats::Client, subject_prefix: &str) -> String {
    let inbox = client.new_inbox();
    let token = inbox.rsplit('.').next().unwrap_or("x");
    format!("{subject_prefix}._syncdata_probe.{token}")
}

/// Whether this connection may publish on `subject` (a change subject),
/// without storing anything: a core request carrying
/// `Nats-Expected-Stream` with a name no stream has. When the server lets
/// the publish through, something answers at once (the change stream
/// refuses to store the message, "expected stream does not match", or the
/// server says no responders). When it denies the publish, nats-server
/// (2.9 and later) drops the message and reports `Permissions Violation for
/// Publish` to this connection only, and no answer ever comes. Err when
/// neither happens within `timeout`.
pub async fn probe_publish(
    client: &async_nats::Client,
    errors: &mut ServerErrors,
    subject: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let subject = subject.to_owned();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Stream", "syncdata-probe-no-such-stream");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(bytes::Bytes::new())
        .timeout(Some(timeout));
    let needle = format!("\"{subject}\"");
    let denied = async {
        while let Some(e) = errors.recv().await {
            if e.to_lowercase().contains("permissions violation") && e.contains(&needle) {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        answer = client.send_request(subject.clone(), request) => match answer {
            Ok(_) => Ok(true),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Ok(true),
                async_nats::RequestErrorKind::TimedOut => Err(format!(
                    "neither an answer nor a permissions violation for a publish to {subject} within {timeout:?}"
                )),
                _ => Err(e.to_string()),
            },
        },
        _ = denied => Ok(false),
    }
}
