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
        // A full stream refuses new messages (the producer waits) rather
        // than dropping old ones a table not yet consumed still needs.
        discard: stream::DiscardPolicy::New,
        max_age: Duration::from_secs(cfg.max_age_secs),
        max_bytes: limit(cfg.max_bytes),
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(cfg.duplicate_window_secs),
        ..Default::default()
    }
}

/// A configured limit as JetStream wants it: -1 for none.
fn limit(n: u64) -> i64 {
    if n == 0 {
        -1
    } else {
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

pub fn dlq_stream_config(cfg: &NatsConfig) -> stream::Config {
    stream::Config {
        name: cfg.dlq_stream.clone(),
        subjects: vec![format!("{}.>", cfg.dlq_subject_prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        // Bounded: past its limits the oldest dead letters go.
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(cfg.dlq_max_age_secs),
        max_messages: limit(cfg.dlq_max_msgs),
        num_replicas: cfg.replicas,
        ..Default::default()
    }
}

/// Creates the stream when missing; when it exists, compares what syncdata
/// relies on with the live configuration. Refused, naming the setting: a
/// retention policy other than Limits, another storage type, subjects that
/// do not cover syncdata's. Repaired in place when `may_update` (the
/// producer, which owns the change stream) and the server lets this user
/// (`$JS.API.STREAM.UPDATE.<stream>`): limits, discard policy, duplicate
/// window, replicas. When it cannot repair them it warns, naming each
/// setting, and goes on, except for a discard-Old stream with a size limit,
/// which silently drops records a table not yet consumed still needs: that
/// is refused.
pub async fn reconcile_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
    may_update: bool,
) -> Result<stream::Stream, NatsError> {
    let name = wanted.name.clone();
    let fail = |message: String| NatsError::Stream {
        name: name.clone(),
        message,
    };
    let mut live = ensure_stream(js, wanted.clone()).await?;
    let info = live.info().await.map_err(|e| fail(e.to_string()))?;
    let current = info.config.clone();
    let (repaired, refused) = differences(&current, &wanted);
    if let Some(setting) = refused.first() {
        return Err(fail(format!(
            "{setting}; syncdata cannot change it in place: recreate the stream \
             (after its consumers caught up) or point the configuration elsewhere"
        )));
    }
    if repaired.is_empty() {
        return Ok(live);
    }
    let drops_records = wanted.discard == stream::DiscardPolicy::New
        && current.discard == stream::DiscardPolicy::Old
        && (unlimited(current.max_bytes).is_some() || unlimited(current.max_messages).is_some());
    let why_not = if may_update {
        let mut fixed = current.clone();
        fixed.discard = wanted.discard;
        fixed.max_age = wanted.max_age;
        fixed.max_bytes = wanted.max_bytes;
        fixed.max_messages = wanted.max_messages;
        fixed.duplicate_window = wanted.duplicate_window;
        fixed.num_replicas = wanted.num_replicas;
        // A denied request gets no answer from nats-server 2.9: bounded.
        match tokio::time::timeout(Duration::from_secs(3), js.update_stream(fixed)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(
                "no answer within 3 s (is $JS.API.STREAM.UPDATE allowed for this user?)".to_owned(),
            ),
        }
    } else {
        Some("only the producer repairs the stream's settings".to_owned())
    };
    match why_not {
        None => {
            for r in &repaired {
                tracing::warn!(stream = %name, "stream setting repaired: {r}");
            }
            live = js
                .get_stream(&name)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        Some(reason) if drops_records => {
            return Err(fail(format!(
                "it has discard Old with a size limit, so a full stream silently drops records a table \
                 not yet consumed still needs, and it could not be repaired ({reason}); set discard New on it \
                 (`nats stream edit {name} --discard new`) or let the producer's user update it \
                 ($JS.API.STREAM.UPDATE.{name}); differences: {}",
                repaired.join("; ")
            )));
        }
        Some(reason) => {
            for r in &repaired {
                tracing::warn!(
                    stream = %name,
                    "stream setting differs from the configuration and was not repaired ({reason}): {r}; \
                     edit the stream (`nats stream edit {name}`) or let the producer's user update it"
                );
            }
        }
    }
    Ok(live)
}

/// A JetStream limit: Some(n) when set, None for "no limit" (0 or -1).
fn unlimited(n: i64) -> Option<i64> {
    (n > 0).then_some(n)
}

/// What differs between a live stream and the wanted one: (repairable in
/// place, not repairable), each naming the setting.
pub fn differences(live: &stream::Config, wanted: &stream::Config) -> (Vec<String>, Vec<String>) {
    let mut repair = Vec::new();
    let mut refuse = Vec::new();
    if live.retention != wanted.retention {
        refuse.push(format!(
            "retention is {:?}, syncdata needs {:?} (other policies drop records a table not yet consumed still needs)",
            live.retention, wanted.retention
        ));
    }
    if live.storage != wanted.storage {
        refuse.push(format!(
            "storage is {:?}, syncdata needs {:?}",
            live.storage, wanted.storage
        ));
    }
    if live.discard != wanted.discard {
        repair.push(format!(
            "discard {:?} -> {:?}",
            live.discard, wanted.discard
        ));
    }
    if live.max_age != wanted.max_age {
        repair.push(format!(
            "max_age {}s -> {}s",
            live.max_age.as_secs(),
            wanted.max_age.as_secs()
        ));
    }
    if unlimited(live.max_bytes) != unlimited(wanted.max_bytes) {
        repair.push(format!(
            "max_bytes {} -> {}",
            live.max_bytes, wanted.max_bytes
        ));
    }
    if unlimited(live.max_messages) != unlimited(wanted.max_messages) {
        repair.push(format!(
            "max_msgs {} -> {}",
            live.max_messages, wanted.max_messages
        ));
    }
    // Zero asks for the server's default (the DLQ's).
    if !wanted.duplicate_window.is_zero() && live.duplicate_window != wanted.duplicate_window {
        repair.push(format!(
            "duplicate_window {}s -> {}s",
            live.duplicate_window.as_secs(),
            wanted.duplicate_window.as_secs()
        ));
    }
    if live.num_replicas != wanted.num_replicas {
        repair.push(format!(
            "replicas {} -> {}",
            live.num_replicas, wanted.num_replicas
        ));
    }
    for s in &wanted.subjects {
        if !live.subjects.contains(s) {
            refuse.push(format!("subjects {:?} lack {s:?}", live.subjects));
        }
    }
    (repair, refuse)
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
