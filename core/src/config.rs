//! Configuration: one TOML format for both binaries. File first, then the
//! environment ([`CONFIG_ENV_VARS`]); each binary validates only its own part
//! ([`Role`]): `[nats]` is shared; the producer's part is `archive_dir`,
//! `[producer]` and `[source]`; the consumer's is the `pg_*` keys,
//! `data_sync_freq`, `metric_freq`, `[consumer]` and `[verify]`. So one file
//! may serve both sides, or each side its own. Errors name the field at
//! fault; the password is never printed; keys of old files that no longer
//! do anything are accepted with a warning ([`Config::warnings`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const CONFIG_ENV: &str = "DATA_SYNC_CONFIG";

/// Every environment variable the binaries take configuration from: the
/// file's path ([`CONFIG_ENV`]), the overrides [`Config::apply_env`] reads,
/// and `SYNCDATA_SANITIZE_KEY` (the producer's key when
/// `producer.sanitize_key_file` is unset). Whoever starts a binary with a
/// config file of its own (tests, demo, benchmarks) clears these first.
pub const CONFIG_ENV_VARS: &[&str] = &[
    CONFIG_ENV,
    "PG_PASSWORD",
    "PG_DB_NAME",
    "PG_USER_NAME",
    "PG_HOST",
    "PG_PORT",
    "DATA_SYNC_FREQ",
    "METRIC_FREQ",
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "SYNCDATA_SIGNING_KEY",
    "SYNCDATA_SANITIZE_KEY",
];
pub const MIN_DATA_SYNC_FREQ: u64 = 60;

/// Which binary reads the configuration: each validates only its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `syncdata-producer`: `[nats]`, `archive_dir`, `[producer]`, `[source]`.
    Producer,
    /// `syncdata`: `[nats]`, `pg_*`, `data_sync_freq`, `metric_freq`,
    /// `[consumer]`, `[verify]`.
    Consumer,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{CONFIG_ENV} is not set: point it at the TOML configuration file")]
    NoPath,
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("invalid configuration: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    // The first format's archive keys. The producer reads the archive from
    // the local `archive_dir`; host/user/port are accepted for old files,
    // unused, and warned about.
    pub archive_host: Option<String>,
    pub archive_user: Option<String>,
    pub archive_dir: Option<PathBuf>,
    pub archive_port: Option<u16>,

    #[serde(default = "default_pg_host")]
    pub pg_host: String,
    #[serde(default = "default_pg_port")]
    pub pg_port: u16,
    #[serde(default = "default_pg_user")]
    pub pg_user: String,
    #[serde(serialize_with = "serialize_redacted")]
    pub pg_password: Option<String>,
    pub pg_database: Option<String>,

    #[serde(default = "default_data_sync_freq")]
    pub data_sync_freq: u64,
    #[serde(default = "default_metric_freq")]
    pub metric_freq: u64,

    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub producer: ProducerConfig,
    #[serde(default)]
    pub consumer: ConsumerConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    /// Where changes are applied: PostgreSQL (default) or a SQLite file
    /// (`crate::target`, docs/sqlite.md).
    #[serde(default)]
    pub target: Option<crate::target::TargetConfig>,
}

/// `syncdata verify` (consumer side).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// The source (production) database `verify` compares with (`--source`
    /// overrides). Unset: `producer.source_url`, for a file shared by both
    /// sides. No password here: use PGPASSWORD or ~/.pgpass.
    pub source_url: Option<String>,
}

/// A secret from the environment: never printed (Debug shows a placeholder).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A password kept in the file: shown as set, never shown.
fn serialize_redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated. Env: `NATS_URL`.
    pub url: String,
    /// Credentials file (`.creds`: user JWT plus nkey seed), for servers in
    /// operator/JWT mode. At most one way of authenticating is set.
    pub creds_file: Option<PathBuf>,
    /// User name for user/password authentication. Env: `NATS_USER`.
    pub user: Option<String>,
    /// File holding the password (never the password itself in this file).
    /// Env: `NATS_PASSWORD`.
    pub password_file: Option<PathBuf>,
    /// Password from `NATS_PASSWORD` (never read from the file's text).
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding an authentication token. Env: `NATS_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// Token from `NATS_TOKEN`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// File holding an nkey seed (`SU...`) for nkey authentication.
    pub nkey_seed_file: Option<PathBuf>,
    /// `syncdata start` refuses to run against a server that lets it publish
    /// changes (anyone with its credentials could then rewrite every local
    /// database) unless this is true. For throwaway setups only.
    pub allow_open: bool,
    /// File holding the message signing key (at least 32 bytes). The
    /// producer signs every message with it; a consumer verifies and
    /// dead-letters anything unsigned or forged. Env: `SYNCDATA_SIGNING_KEY`.
    pub signing_key_file: Option<PathBuf>,
    /// Require TLS (also implied by a `tls://` URL or any TLS file below).
    pub tls_required: bool,
    /// CA certificate(s) to trust for the server (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS; give both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub stream: String,
    pub subject_prefix: String,
    pub dlq_stream: String,
    pub dlq_subject_prefix: String,
    /// Stream replicas: 1 on one server, 3 on a cluster.
    pub replicas: usize,
    /// How long the server remembers message ids to drop re-published
    /// records. Duplicates older than this are still harmless (the version
    /// guard drops them); the window only saves work and stream space.
    pub duplicate_window_secs: u64,
    /// Change stream retention: messages older than this go (0: no age
    /// limit). See docs/operations.md "Retention".
    pub max_age_secs: u64,
    /// Change stream size limit in bytes (0: none). With discard New, a
    /// full stream refuses new messages: the producer waits and retries,
    /// nothing is dropped.
    pub max_bytes: u64,
    /// Dead-letter stream limits (discard Old: the oldest dead letters go).
    pub dlq_max_age_secs: u64,
    pub dlq_max_msgs: u64,
    /// Object store bucket for records larger than a message (the server's
    /// max_payload). Default: `<stream>_LARGE`.
    pub large_bucket: Option<String>,
    /// Large records expire from the bucket after this long (0: never).
    /// Keep it at least the change stream's retention.
    pub large_max_age_secs: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            creds_file: None,
            user: None,
            password_file: None,
            password: None,
            token_file: None,
            token: None,
            nkey_seed_file: None,
            allow_open: false,
            signing_key_file: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            stream: "SYNCDATA_CHANGES".to_owned(),
            subject_prefix: "syncdata.changes".to_owned(),
            dlq_stream: "SYNCDATA_DLQ".to_owned(),
            dlq_subject_prefix: "syncdata.dlq".to_owned(),
            replicas: 1,
            duplicate_window_secs: 120,
            max_age_secs: 14 * 86_400,
            max_bytes: 0,
            dlq_max_age_secs: 90 * 86_400,
            dlq_max_msgs: 1_000_000,
            large_bucket: None,
            large_max_age_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Checkpoint and quarantine live here. Default: `<archive_dir>/.syncdata`.
    pub state_dir: Option<PathBuf>,
    /// Publishes awaiting their PubAck at once (async-nats refuses past 5,000).
    pub max_in_flight: usize,
    /// Directory rescan interval, the backstop for missed file events.
    pub rescan_ms: u64,
    /// Lines longer than this are quarantined. Also capped by the server's
    /// max_payload.
    pub max_record_bytes: usize,
    /// Serve Prometheus metrics here (e.g. "127.0.0.1:9188"); off when unset.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Sanitization rules (TOML, see README "Sanitization"). Unset: `run`
    /// refuses to start unless `allow_unsanitized` is true.
    pub rules_file: Option<PathBuf>,
    /// Publish records unsanitized when no `rules_file` is set (only for
    /// archives without personal data). Default false: fail closed.
    pub allow_unsanitized: bool,
    /// How often the rules file is checked for changes (halted tables resume
    /// when their rules are complete).
    pub rules_reload_ms: u64,
    /// File holding the sanitization key. Unset: the `SYNCDATA_SANITIZE_KEY`
    /// environment variable. Never in the rules file.
    pub sanitize_key_file: Option<PathBuf>,
    /// Source PostgreSQL URL for `check-rules` (`--source` overrides). No
    /// password here: use PGPASSWORD or ~/.pgpass.
    pub source_url: Option<String>,
    /// `quarantine.jsonl` is rotated past this size...
    pub quarantine_max_bytes: u64,
    /// ...keeping this many rotated files (`quarantine.jsonl.1` newest).
    pub quarantine_keep_files: u32,
    /// Records of one table per message at most (1: one message per record).
    pub chunk_records: usize,
    /// Bytes per message at most (also capped by the server's max_payload).
    pub chunk_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            state_dir: None,
            max_in_flight: 1024,
            rescan_ms: 1000,
            max_record_bytes: 8 * 1024 * 1024,
            metrics_addr: None,
            rules_file: None,
            allow_unsanitized: false,
            rules_reload_ms: 1000,
            sanitize_key_file: None,
            source_url: None,
            quarantine_max_bytes: 64 * 1024 * 1024,
            quarantine_keep_files: 3,
            chunk_records: 1000,
            chunk_bytes: 512 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Messages fetched and applied per batch and table.
    pub batch_size: usize,
    /// Records (a chunk counts its records) one apply batch holds at most:
    /// bounds the records decoded at once and the statements built from
    /// them. A pull's messages are applied in as many batches as this asks.
    pub batch_max_records: usize,
    /// Bytes of records (large records resolved) one apply batch holds at
    /// most; a larger record is a batch of its own. With
    /// `batch_max_records`, what bounds the consumer's memory beyond the
    /// fetched bytes: the decoded records, their values and statements
    /// (measured: 1 MiB against 2 MiB took the peak RSS of a
    /// 1,000,000-record demo backlog from 96 to 80 MB). Larger batches
    /// spend fewer round trips per record: against a database 3.3 ms away,
    /// one consumer applied 15 % more with 2 MiB (docs/benchmarks.md).
    pub batch_max_bytes: u64,
    /// How long an idle table's pull waits for its next message. A table
    /// that just brought messages asks for what is there at once and never
    /// waits for a batch to fill (docs/operations.md, "Latency").
    pub fetch_wait_ms: u64,
    /// Unacknowledged messages a table's durable allows across all processes.
    pub max_ack_pending: i64,
    /// Redelivery after this long without an ack (a crashed process).
    pub ack_wait_secs: u64,
    /// Attempts of a record failing permanently before it is dead-lettered.
    pub max_attempts: u32,
    /// Database connections per process.
    pub pool_size: u32,
    /// Threads of the process's async runtime; see
    /// [`Config::worker_threads`] for the default.
    pub worker_threads: Option<usize>,
    /// Cap of the exponential backoff between retries of transient failures.
    pub max_backoff_ms: u64,
    /// Serve Prometheus metrics here (e.g. "127.0.0.1:9187"); off when unset.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Version sanity: a change whose LSN is more than this many bytes of
    /// WAL ahead of the highest version applied (to its table, else to any
    /// table) is held and dead-lettered, never applied. Default 1 TiB.
    pub max_version_jump: u64,
    /// Without replica mode, a record failing on a foreign key (its parent
    /// not here yet) is retried alone for this long before dead-lettering.
    pub fk_retry_secs: u64,
    /// `lock_timeout` and `statement_timeout` of the apply connections
    /// (0: off). Both failures are transient: the batch is retried.
    pub lock_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    /// TCP keepalive idle time of the database connections (seconds).
    pub tcp_keepalive_secs: u64,
    /// How often the housekeeping runs (tombstones, logs, daemons).
    pub gc_interval_secs: u64,
    /// A tombstone goes only below a replay horizon observed at least this
    /// long ago (docs/design.md "Tombstone collection"); 0 never collects.
    pub tombstone_grace_secs: u64,
    /// `data_sync_logs` rows older than this go (0: kept for ever).
    pub log_retention_days: u64,
    /// Stopped or silent daemons leave `syncdata.daemons` after this long.
    pub daemon_retention_days: u64,
    /// Bytes one pull of one table may bring at most (raised to the
    /// server's max_payload plus headers, so any one message fits).
    pub pull_max_bytes: usize,
    /// Bytes of fetched messages all the table workers of one process hold
    /// at once, at most (see docs/operations.md "Memory").
    pub memory_budget_bytes: usize,
    /// What a worker does with a table's schema change (docs/schema.md):
    /// `auto` applies additive changes and halts the table on destructive
    /// ones, `halt` halts on every change until the local table matches,
    /// `ignore` takes the change without touching the local table.
    pub schema_policy: String,
    /// Per-table overrides of `schema_policy`, e.g.
    /// `{ "public.users" = "halt" }` (names as `list-tables` shows them).
    pub schema_policy_tables: std::collections::BTreeMap<String, String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            batch_size: 1000,
            batch_max_records: 5000,
            batch_max_bytes: 1024 * 1024,
            fetch_wait_ms: 200,
            max_ack_pending: 20_000,
            ack_wait_secs: 60,
            max_attempts: 5,
            pool_size: 4,
            worker_threads: None,
            max_backoff_ms: 30_000,
            metrics_addr: None,
            max_version_jump: 1 << 40,
            fk_retry_secs: 600,
            lock_timeout_ms: 30_000,
            statement_timeout_ms: 600_000,
            tcp_keepalive_secs: 60,
            gc_interval_secs: 300,
            tombstone_grace_secs: 3600,
            log_retention_days: 30,
            daemon_retention_days: 7,
            pull_max_bytes: 4 * 1024 * 1024,
            memory_budget_bytes: 32 * 1024 * 1024,
            schema_policy: "auto".to_owned(),
            schema_policy_tables: std::collections::BTreeMap::new(),
        }
    }
}

/// The production side's logical decoding: `syncdata-producer setup-source`,
/// `archive` and `snapshot`. The source database's URL is
/// `producer.source_url` (or `--source`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Logical replication slot the archiver reads (`[a-z0-9_]`, as
    /// PostgreSQL requires).
    pub slot: String,
    /// Output plugin of the slot: `auto` (the default: an existing slot
    /// keeps the plugin it was created with; a new slot gets `pgoutput`
    /// when the tables are known, `wal2json` when every table of the
    /// database is archived), `pgoutput` (built into PostgreSQL, no
    /// extension; keeps NaN and ±Infinity exact) or `wal2json`
    /// (format-version 2; version 2.5 writes NaN and ±Infinity as null).
    /// See docs/archiver.md for moving a slot over.
    pub plugin: String,
    /// Publication `pgoutput` reads (`setup-source` creates it for the
    /// listed tables).
    pub publication: String,
    /// Tables archived when `archive` gets no `--tables` (empty: all tables
    /// of the database).
    pub tables: Vec<String>,
    /// Role `setup-source --create-user` creates.
    pub user: String,
    /// Unused since the archiver streams (the server sends changes as they
    /// are decoded); still accepted so older files stay valid.
    pub poll_ms: u64,
    /// A segment file is closed once it holds this many bytes...
    pub segment_max_bytes: u64,
    /// ...or once its first record is this old (latency under steady load).
    pub segment_max_age_ms: u64,
    /// Unused since the archiver streams; still accepted so older files
    /// stay valid.
    pub peek_max_changes: u32,
    /// Rows per file written by `snapshot`.
    pub snapshot_file_rows: u64,
    /// `syncdata-producer archive` serves Prometheus metrics here (slot
    /// lag, WAL retained, records/s); off when unset. Its own address: the
    /// archiver and `run` often share a host.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            slot: "syncdata_slot".to_owned(),
            plugin: "auto".to_owned(),
            publication: "syncdata_pub".to_owned(),
            tables: Vec::new(),
            user: "syncdata_user".to_owned(),
            poll_ms: 200,
            segment_max_bytes: 16 * 1024 * 1024,
            segment_max_age_ms: 500,
            peek_max_changes: 10_000,
            snapshot_file_rows: 100_000,
            metrics_addr: None,
        }
    }
}

impl SourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= crate::record::MAX_IDENTIFIER_BYTES
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(invalid(
                "source.slot",
                "1 to 63 lower-case letters, digits and '_' (PostgreSQL's rule for slot names)",
            ));
        }
        if self.plugin.is_empty()
            || !self
                .plugin
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "source.plugin",
                "letters, digits, '_' and '-' only",
            ));
        }
        if self.publication.is_empty()
            || self.publication.len() > crate::record::MAX_IDENTIFIER_BYTES
        {
            return Err(invalid("source.publication", "1 to 63 bytes"));
        }
        for t in &self.tables {
            crate::table::TableName::parse(t)
                .map_err(|e| invalid("source.tables", e.to_string()))?;
        }
        if self.user.is_empty() || self.user.len() > crate::record::MAX_IDENTIFIER_BYTES {
            return Err(invalid("source.user", "1 to 63 bytes"));
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return Err(invalid("source.poll_ms", "must be 10 to 60000"));
        }
        if self.segment_max_bytes < 4096 {
            return Err(invalid("source.segment_max_bytes", "must be at least 4096"));
        }
        if !(10..=3_600_000).contains(&self.segment_max_age_ms) {
            return Err(invalid(
                "source.segment_max_age_ms",
                "must be 10 to 3600000",
            ));
        }
        if !(1..=i32::MAX as u32).contains(&self.peek_max_changes) {
            return Err(invalid(
                "source.peek_max_changes",
                "must be 1 to 2147483647",
            ));
        }
        if self.snapshot_file_rows == 0 {
            return Err(invalid("source.snapshot_file_rows", "must be positive"));
        }
        Ok(())
    }
}

/// A source database URL: postgres:// or postgresql://, without a password.
fn validate_source_url(field: &'static str, url: Option<&str>) -> Result<(), ConfigError> {
    let Some(url) = url else {
        return Ok(());
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(field, "must be a postgres:// or postgresql:// URL"));
    }
    // user:password@host: the file must not hold the password.
    let authority = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or("");
    if authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || url.split_once('?').is_some_and(|(_, q)| {
            q.split('&')
                .any(|kv| kv.to_ascii_lowercase().starts_with("password="))
        })
    {
        return Err(invalid(
            field,
            "must not hold a password (use PGPASSWORD or ~/.pgpass)",
        ));
    }
    Ok(())
}

fn default_pg_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_pg_user() -> String {
    "admin".to_owned()
}
fn default_data_sync_freq() -> u64 {
    600
}
fn default_metric_freq() -> u64 {
    24
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("archive_dir", &self.archive_dir)
            .field("pg_host", &self.pg_host)
            .field("pg_port", &self.pg_port)
            .field("pg_user", &self.pg_user)
            .field(
                "pg_password",
                &self.pg_password.as_ref().map(|_| "<redacted>"),
            )
            .field("pg_database", &self.pg_database)
            .field("data_sync_freq", &self.data_sync_freq)
            .field("metric_freq", &self.metric_freq)
            .field("nats", &self.nats)
            .field("producer", &self.producer)
            .field("consumer", &self.consumer)
            .field("source", &self.source)
            .field("verify", &self.verify)
            .field("target", &self.target)
            .finish()
    }
}

impl Config {
    /// Loads the file named by `DATA_SYNC_CONFIG`, applies the environment
    /// overrides and validates.
    pub fn load() -> Result<Config, ConfigError> {
        let path = std::env::var_os(CONFIG_ENV).ok_or(ConfigError::NoPath)?;
        Self::load_from(Path::new(&path), |k| std::env::var(k).ok())
    }

    /// Loads `path`, applies the environment overrides and validates what
    /// either binary needs (tools and tests that serve both sides).
    pub fn load_from(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let config = Self::read(path, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path`, applies the environment overrides and validates the
    /// part `role` reads.
    pub fn load_for(
        role: Role,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let config = Self::read(path, env)?;
        config.validate_for(role)?;
        Ok(config)
    }

    fn read(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.apply_env(env)?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The seed's environment overrides (and `NATS_URL`).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(var: &'static str, v: String) -> Result<T, ConfigError> {
            v.trim().parse().map_err(|_| ConfigError::Env {
                var,
                message: "not a valid number".to_owned(),
            })
        }
        if let Some(v) = env("PG_PASSWORD") {
            self.pg_password = Some(v);
        }
        if let Some(v) = env("PG_DB_NAME") {
            self.pg_database = Some(v);
        }
        if let Some(v) = env("PG_USER_NAME") {
            self.pg_user = v;
        }
        if let Some(v) = env("PG_HOST") {
            self.pg_host = v;
        }
        if let Some(v) = env("PG_PORT") {
            self.pg_port = num("PG_PORT", v)?;
        }
        if let Some(v) = env("DATA_SYNC_FREQ") {
            self.data_sync_freq = num("DATA_SYNC_FREQ", v)?;
        }
        if let Some(v) = env("METRIC_FREQ") {
            self.metric_freq = num("METRIC_FREQ", v)?;
        }
        if let Some(v) = env("NATS_URL") {
            self.nats.url = v;
        }
        if let Some(v) = env("NATS_USER") {
            self.nats.user = Some(v);
        }
        if let Some(v) = env("NATS_PASSWORD") {
            self.nats.password = Some(Secret(v));
        }
        if let Some(v) = env("NATS_TOKEN") {
            self.nats.token = Some(Secret(v));
        }
        Ok(())
    }

    /// Validates both parts (a file serving both binaries).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_for(Role::Consumer)?;
        self.validate_for(Role::Producer)
    }

    /// Validates the shared part and the part `role` reads.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        self.validate_nats()?;
        match role {
            Role::Producer => self.validate_producer(),
            Role::Consumer => self.validate_consumer(),
        }
    }

    /// The keys `role` reads, with their effective values (file, then
    /// environment, then defaults), as TOML, secrets shown as `<redacted>`
    /// and credentials in URLs removed: what `config check` prints. The
    /// other role's sections are left out.
    pub fn effective_toml(&self, role: Role) -> String {
        let keys: &[&str] = match role {
            Role::Producer => &["archive_dir", "nats", "producer", "source"],
            Role::Consumer => &[
                "target",
                "pg_host",
                "pg_port",
                "pg_user",
                "pg_password",
                "pg_database",
                "data_sync_freq",
                "metric_freq",
                "nats",
                "consumer",
                "verify",
            ],
        };
        let mut all = match toml::Table::try_from(self) {
            Ok(t) => t,
            // Every field is a plain value: serialising cannot fail.
            Err(e) => return format!("# cannot show the configuration: {e}\n"),
        };
        let mut shown = toml::Table::new();
        for key in keys {
            if let Some(v) = all.remove(*key) {
                shown.insert((*key).to_owned(), v);
            }
        }
        let text = toml::to_string(&shown)
            .unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"));
        crate::redact::redact(&text)
    }

    /// Keys that are accepted but do nothing, each with what to do.
    pub fn warnings(&self) -> Vec<String> {
        let dead: Vec<&str> = [
            ("archive_host", self.archive_host.is_some()),
            ("archive_user", self.archive_user.is_some()),
            ("archive_port", self.archive_port.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        if dead.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "configuration: {} no longer used (the producer reads the archive from \
             archive_dir on its own machine); remove {}",
            dead.join(", "),
            if dead.len() == 1 { "it" } else { "them" }
        )]
    }

    /// The database `syncdata verify` compares with when `--source` is not
    /// given: `verify.source_url`, else `producer.source_url`.
    pub fn verify_source_url(&self) -> Option<&str> {
        self.verify
            .source_url
            .as_deref()
            .or(self.producer.source_url.as_deref())
    }

    /// Threads of the consumer's async runtime (`consumer.worker_threads`).
    /// Unset: one for a PostgreSQL target. A consumer's own CPU is rarely
    /// its limit (the database is), and on glibc every thread that
    /// allocates keeps a malloc arena at its own high-water mark (measured
    /// on a 1,000,000-record backlog: 96 MB of peak RSS with two threads,
    /// 78 MB with one, 64 MB with one and 1 MiB `batch_max_bytes`, at about
    /// the same rate). Two for a SQLite target: its
    /// driver runs each connection on a thread of its own and hands every
    /// statement across, and with one runtime thread the pgbench catch-up
    /// into SQLite took 34 s against 9 s.
    pub fn worker_threads(&self) -> usize {
        self.consumer
            .worker_threads
            .unwrap_or(if self.sqlite_target().is_some() { 2 } else { 1 })
    }

    /// The SQLite target, when `target` names one (None: PostgreSQL).
    pub fn sqlite_target(&self) -> Option<crate::target::SqliteTarget> {
        self.target.as_ref().and_then(|t| t.sqlite().ok().flatten())
    }

    fn validate_consumer(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.target {
            t.sqlite().map_err(|e| invalid("target", e))?;
        }
        if self.sqlite_target().is_none() && self.pg_database.as_deref().unwrap_or("").is_empty() {
            return Err(invalid(
                "pg_database",
                "required (set it in the file or with PG_DB_NAME)",
            ));
        }
        if self.pg_host.is_empty() {
            return Err(invalid("pg_host", "must not be empty"));
        }
        if self.pg_port == 0 {
            return Err(invalid("pg_port", "must be 1 to 65535"));
        }
        if self.data_sync_freq < MIN_DATA_SYNC_FREQ {
            return Err(invalid(
                "data_sync_freq",
                format!(
                    "{} is below the minimum of {MIN_DATA_SYNC_FREQ} seconds",
                    self.data_sync_freq
                ),
            ));
        }
        if self.metric_freq == 0 {
            return Err(invalid("metric_freq", "must be at least 1 hour"));
        }
        let c = &self.consumer;
        if !(1..=100_000).contains(&c.batch_size) {
            return Err(invalid("consumer.batch_size", "must be 1 to 100000"));
        }
        if c.batch_max_records == 0 {
            return Err(invalid("consumer.batch_max_records", "must be positive"));
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&c.batch_max_bytes) {
            return Err(invalid(
                "consumer.batch_max_bytes",
                "must be 65536 (64 KiB) to 268435456 (256 MiB)",
            ));
        }
        if c.max_ack_pending < c.batch_size as i64 {
            return Err(invalid(
                "consumer.max_ack_pending",
                "must be at least consumer.batch_size",
            ));
        }
        if c.pull_max_bytes < 64 * 1024 {
            return Err(invalid("consumer.pull_max_bytes", "must be at least 65536"));
        }
        if c.memory_budget_bytes < c.pull_max_bytes {
            return Err(invalid(
                "consumer.memory_budget_bytes",
                "must be at least consumer.pull_max_bytes",
            ));
        }
        if c.ack_wait_secs == 0 {
            return Err(invalid("consumer.ack_wait_secs", "must be positive"));
        }
        if c.max_attempts == 0 {
            return Err(invalid("consumer.max_attempts", "must be at least 1"));
        }
        if c.worker_threads.is_some_and(|t| !(1..=256).contains(&t)) {
            return Err(invalid("consumer.worker_threads", "must be 1 to 256"));
        }
        if c.pool_size == 0 {
            return Err(invalid("consumer.pool_size", "must be at least 1"));
        }
        if c.gc_interval_secs == 0 {
            return Err(invalid("consumer.gc_interval_secs", "must be positive"));
        }
        if c.tcp_keepalive_secs == 0 {
            return Err(invalid("consumer.tcp_keepalive_secs", "must be positive"));
        }
        if c.max_version_jump < 1 << 24 {
            return Err(invalid(
                "consumer.max_version_jump",
                "must be at least 16777216 (16 MiB of WAL)",
            ));
        }
        if self.verify.source_url.is_some() {
            validate_source_url("verify.source_url", self.verify_source_url())
        } else {
            validate_source_url("producer.source_url", self.verify_source_url())
        }
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if n.url.trim().is_empty() {
            return Err(invalid("nats.url", "must not be empty"));
        }
        for (field, name) in [
            ("nats.stream", &n.stream),
            ("nats.dlq_stream", &n.dlq_stream),
        ] {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(field, "use letters, digits, '_' and '-' only"));
            }
        }
        if n.stream == n.dlq_stream {
            return Err(invalid("nats.dlq_stream", "must differ from nats.stream"));
        }
        for (field, prefix) in [
            ("nats.subject_prefix", &n.subject_prefix),
            ("nats.dlq_subject_prefix", &n.dlq_subject_prefix),
        ] {
            let ok = !prefix.is_empty()
                && prefix.split('.').all(|t| {
                    !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace)
                });
            if !ok {
                return Err(invalid(
                    field,
                    "dot-separated tokens without wildcards or spaces",
                ));
            }
        }
        let overlap = |a: &str, b: &str| {
            a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
        };
        if overlap(&n.subject_prefix, &n.dlq_subject_prefix) {
            return Err(invalid(
                "nats.dlq_subject_prefix",
                "must not overlap nats.subject_prefix",
            ));
        }
        if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
            return Err(invalid(
                "nats.tls_cert_file",
                "give nats.tls_cert_file and nats.tls_key_file together",
            ));
        }
        let has_password = n.password.is_some() || n.password_file.is_some();
        if n.user.is_some() != has_password {
            return Err(invalid(
                "nats.user",
                "give nats.user and a password (nats.password_file or NATS_PASSWORD) together",
            ));
        }
        let methods = [
            n.user.is_some(),
            n.token.is_some() || n.token_file.is_some(),
            n.nkey_seed_file.is_some(),
            n.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "nats.creds_file",
                "set one way of authenticating: user and password, token, nkey seed or creds file",
            ));
        }
        for (field, file) in [
            ("nats.password_file", &n.password_file),
            ("nats.token_file", &n.token_file),
            ("nats.nkey_seed_file", &n.nkey_seed_file),
            ("nats.signing_key_file", &n.signing_key_file),
        ] {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if !(1..=5).contains(&n.replicas) {
            return Err(invalid("nats.replicas", "must be 1 to 5"));
        }
        if n.duplicate_window_secs == 0 {
            return Err(invalid("nats.duplicate_window_secs", "must be positive"));
        }
        if let Some(b) = &n.large_bucket {
            let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
            if b.is_empty() || !b.chars().all(ok) {
                return Err(invalid(
                    "nats.large_bucket",
                    "must be letters, digits, _ or -",
                ));
            }
        }
        Ok(())
    }

    fn validate_producer(&self) -> Result<(), ConfigError> {
        let p = &self.producer;
        if !(1..=5000).contains(&p.max_in_flight) {
            return Err(invalid("producer.max_in_flight", "must be 1 to 5000"));
        }
        if p.rescan_ms == 0 {
            return Err(invalid("producer.rescan_ms", "must be positive"));
        }
        if !(1..=100_000).contains(&p.chunk_records) {
            return Err(invalid("producer.chunk_records", "must be 1 to 100000"));
        }
        if p.chunk_bytes < 1024 {
            return Err(invalid("producer.chunk_bytes", "must be at least 1024"));
        }
        if p.max_record_bytes < 1024 {
            return Err(invalid(
                "producer.max_record_bytes",
                "must be at least 1024",
            ));
        }
        if p.rules_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid("producer.rules_file", "must not be empty"));
        }
        if p.quarantine_max_bytes < 4096 {
            return Err(invalid(
                "producer.quarantine_max_bytes",
                "must be at least 4096",
            ));
        }
        if p.rules_reload_ms == 0 {
            return Err(invalid("producer.rules_reload_ms", "must be positive"));
        }
        if p.sanitize_key_file
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(invalid("producer.sanitize_key_file", "must not be empty"));
        }
        validate_source_url("producer.source_url", p.source_url.as_deref())?;
        self.source.validate()?;
        Ok(())
    }

    pub fn pg_connect_options(&self) -> sqlx::postgres::PgConnectOptions {
        let mut o = sqlx::postgres::PgConnectOptions::new()
            .host(&self.pg_host)
            .port(self.pg_port)
            .username(&self.pg_user)
            .application_name("syncdata");
        if let Some(db) = &self.pg_database {
            o = o.database(db);
        }
        if let Some(pw) = &self.pg_password {
            o = o.password(pw);
        }
        o
    }

    /// The producer's archive directory (required by the producer only).
    pub fn archive_dir(&self) -> Result<&Path, ConfigError> {
        self.archive_dir
            .as_deref()
            .ok_or_else(|| invalid("archive_dir", "required by syncdata-producer"))
    }

    pub fn producer_state_dir(&self) -> Result<PathBuf, ConfigError> {
        match &self.producer.state_dir {
            Some(d) => Ok(d.clone()),
            None => Ok(self.archive_dir()?.join(".syncdata")),
        }
    }

    pub fn data_sync_period(&self) -> Duration {
        Duration::from_secs(self.data_sync_freq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn seed_file_with_defaults_and_env_overrides() {
        let mut c = Config::from_toml(
            r#"
archive_host = "backup.example.com"
archive_user = "backupuser"
archive_dir = "/backups/postgresql/changes"
archive_port = 22
pg_host = "127.0.0.1"
pg_port = 5432
pg_user = "admin"
data_sync_freq = 600
metric_freq = 24
"#,
        )
        .unwrap();
        assert!(c.validate().is_err(), "pg_database is required");
        c.apply_env(env(&[
            ("PG_PASSWORD", "secret"),
            ("PG_DB_NAME", "app"),
            ("PG_USER_NAME", "me"),
            ("PG_HOST", "db"),
            ("PG_PORT", "6543"),
            ("DATA_SYNC_FREQ", "120"),
            ("METRIC_FREQ", "6"),
            ("NATS_URL", "nats://n:4222"),
        ]))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.pg_database.as_deref(), Some("app"));
        assert_eq!(
            (c.pg_user.as_str(), c.pg_host.as_str(), c.pg_port),
            ("me", "db", 6543)
        );
        assert_eq!((c.data_sync_freq, c.metric_freq), (120, 6));
        assert_eq!(c.nats.url, "nats://n:4222");
        assert_eq!(c.consumer.batch_size, 1000);
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn source_settings_default_parse_and_validate() {
        let c = Config::from_toml("pg_database = \"app\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.source.slot, "syncdata_slot");
        assert_eq!(c.source.plugin, "auto");
        assert_eq!(c.source.segment_max_age_ms, 500);
        let c = Config::from_toml(
            "pg_database = \"app\"\n[source]\nslot = \"s1\"\ntables = [\"users\", \"sales.orders\"]\n\
             segment_max_bytes = 65536\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.source.tables.len(), 2);
        for (extra, field) in [
            ("slot = \"Bad-Slot\"", "source.slot"),
            ("plugin = \"a b\"", "source.plugin"),
            ("tables = [\"a.b.c\"]", "source.tables"),
            ("poll_ms = 0", "source.poll_ms"),
            ("segment_max_bytes = 10", "source.segment_max_bytes"),
            ("segment_max_age_ms = 0", "source.segment_max_age_ms"),
            ("peek_max_changes = 0", "source.peek_max_changes"),
            ("snapshot_file_rows = 0", "source.snapshot_file_rows"),
        ] {
            let c =
                Config::from_toml(&format!("pg_database = \"app\"\n[source]\n{extra}\n")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn sanitization_settings_default_and_parse() {
        let c = Config::from_toml("pg_database = \"app\"\n").unwrap();
        assert_eq!(c.producer.rules_file, None);
        assert_eq!(c.producer.rules_reload_ms, 1000);
        assert_eq!(c.producer.sanitize_key_file, None);
        assert_eq!(c.producer.source_url, None);
        let c = Config::from_toml(
            "pg_database = \"app\"\n[producer]\nrules_file = \"/etc/syncdata/rules.toml\"\n\
             rules_reload_ms = 250\nsanitize_key_file = \"/etc/syncdata/key\"\n\
             source_url = \"postgres://reader@db:5432/app?sslmode=require\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.producer.rules_file.as_deref(),
            Some(Path::new("/etc/syncdata/rules.toml"))
        );
        assert_eq!(c.producer.rules_reload_ms, 250);
        assert_eq!(
            c.producer.source_url.as_deref(),
            Some("postgres://reader@db:5432/app?sslmode=require")
        );
    }

    #[test]
    fn effective_toml_shows_the_roles_keys_redacted_and_reads_back() {
        let mut c = Config::from_toml(
            "pg_database = \"app\"\npg_password = \"pw-file-secret\"\narchive_dir = \"/a\"\n\
             [producer]\nmax_in_flight = 7\n\
             source_url = \"postgres://reader:pw-url-secret@db/app\"\n\
             [consumer]\nbatch_size = 321\n[source]\nslot = \"s1\"\n",
        )
        .unwrap();
        c.nats.token = Some(Secret("tok-env-secret".into()));

        let consumer = Config::effective_toml(&c, Role::Consumer);
        let shown: toml::Table = toml::from_str(&consumer).unwrap();
        assert_eq!(shown["pg_database"].as_str(), Some("app"));
        assert_eq!(shown["pg_password"].as_str(), Some("<redacted>"));
        assert_eq!(shown["consumer"]["batch_size"].as_integer(), Some(321));
        assert_eq!(shown["nats"]["token"].as_str(), Some("<redacted>"));
        for other in ["producer", "source", "archive_dir"] {
            assert!(!shown.contains_key(other), "{other} shown: {consumer}");
        }

        let producer = Config::effective_toml(&c, Role::Producer);
        let shown: toml::Table = toml::from_str(&producer).unwrap();
        assert_eq!(shown["producer"]["max_in_flight"].as_integer(), Some(7));
        assert_eq!(shown["source"]["slot"].as_str(), Some("s1"));
        for other in ["consumer", "pg_password", "pg_database", "verify"] {
            assert!(!shown.contains_key(other), "{other} shown: {producer}");
        }
        for text in [&consumer, &producer] {
            assert!(!text.contains("secret"), "a secret shown: {text}");
        }
    }

    #[test]
    fn each_role_validates_only_its_part() {
        // The producer needs no local database; the consumer no [producer].
        let producer_only = "archive_dir = \"/a\"\n[producer]\nmax_in_flight = 10\n";
        let c = Config::from_toml(producer_only).unwrap();
        c.validate_for(Role::Producer).unwrap();
        let err = c.validate_for(Role::Consumer).unwrap_err().to_string();
        assert!(err.contains("pg_database"), "{err}");
        let c =
            Config::from_toml("pg_database = \"app\"\n[producer]\nmax_in_flight = 0\n").unwrap();
        c.validate_for(Role::Consumer).unwrap();
        let err = c.validate_for(Role::Producer).unwrap_err().to_string();
        assert!(err.contains("producer.max_in_flight"), "{err}");
        let c = Config::from_toml("[consumer]\nbatch_size = 0\n").unwrap();
        c.validate_for(Role::Producer).unwrap();
        // [nats] is shared: both refuse a bad stream name.
        let c = Config::from_toml("pg_database = \"app\"\n[nats]\nstream = \"a.b\"\n").unwrap();
        for role in [Role::Producer, Role::Consumer] {
            let err = c.validate_for(role).unwrap_err().to_string();
            assert!(err.contains("nats.stream"), "{err}");
        }
    }

    #[test]
    fn verify_reads_its_own_source_url_else_the_producers() {
        let c = Config::from_toml(
            "pg_database = \"app\"\n[producer]\nsource_url = \"postgres://p@h/db\"\n",
        )
        .unwrap();
        assert_eq!(c.verify_source_url(), Some("postgres://p@h/db"));
        let c = Config::from_toml(
            "pg_database = \"app\"\n[producer]\nsource_url = \"postgres://p@h/db\"\n\
             [verify]\nsource_url = \"postgres://v@h/db\"\n",
        )
        .unwrap();
        c.validate_for(Role::Consumer).unwrap();
        assert_eq!(c.verify_source_url(), Some("postgres://v@h/db"));
        let c = Config::from_toml(
            "pg_database = \"app\"\n[verify]\nsource_url = \"postgres://v:pw@h/db\"\n",
        )
        .unwrap();
        let err = c.validate_for(Role::Consumer).unwrap_err().to_string();
        assert!(err.contains("verify.source_url"), "{err}");
    }

    #[test]
    fn dead_seed_keys_are_accepted_with_one_warning() {
        let c = Config::from_toml("pg_database = \"app\"\n").unwrap();
        assert!(c.warnings().is_empty());
        let c =
            Config::from_toml("pg_database = \"app\"\narchive_host = \"h\"\narchive_port = 22\n")
                .unwrap();
        c.validate().unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("archive_host, archive_port") && w[0].contains("remove them"),
            "{w:?}"
        );
    }

    #[test]
    fn nats_credentials_from_files_or_environment_never_printed() {
        let mut c = Config::from_toml(
            "pg_database = \"app\"\n[nats]\nuser = \"consumer\"\n\
             password_file = \"/etc/syncdata/nats.password\"\nallow_open = false\n\
             signing_key_file = \"/etc/syncdata/signing.key\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.consumer.max_version_jump, 1 << 40);
        c.apply_env(env(&[
            ("NATS_USER", "producer"),
            ("NATS_PASSWORD", "pw-secret"),
        ]))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.nats.user.as_deref(), Some("producer"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw-secret"), "{shown}");
        let mut t = Config::from_toml("pg_database = \"app\"\n").unwrap();
        t.apply_env(env(&[("NATS_TOKEN", "tok-secret")])).unwrap();
        t.validate().unwrap();
        assert!(!format!("{t:?}").contains("tok-secret"));
        // A password in the file's text is not a setting.
        assert!(Config::from_toml("pg_database = \"app\"\n[nats]\npassword = \"x\"\n").is_err());
    }

    #[test]
    fn invalid_values_name_their_field() {
        let base = "pg_database = \"app\"\n";
        let cases = [
            ("data_sync_freq = 30", "data_sync_freq"),
            ("[nats]\nstream = \"a.b\"", "nats.stream"),
            ("[nats]\nsubject_prefix = \"a.*\"", "nats.subject_prefix"),
            (
                "[nats]\ndlq_subject_prefix = \"syncdata.changes.x\"",
                "nats.dlq_subject_prefix",
            ),
            ("[consumer]\nbatch_size = 0", "consumer.batch_size"),
            ("[consumer]\nworker_threads = 0", "consumer.worker_threads"),
            (
                "[consumer]\nbatch_max_bytes = 1000",
                "consumer.batch_max_bytes",
            ),
            ("[nats]\ntls_cert_file = \"/x.pem\"", "nats.tls_cert_file"),
            ("[producer]\nmax_in_flight = 9000", "producer.max_in_flight"),
            ("[producer]\nrules_file = \"\"", "producer.rules_file"),
            (
                "[producer]\nrules_reload_ms = 0",
                "producer.rules_reload_ms",
            ),
            (
                "[producer]\nsanitize_key_file = \"\"",
                "producer.sanitize_key_file",
            ),
            (
                "[producer]\nsource_url = \"mysql://h/db\"",
                "producer.source_url",
            ),
            (
                "[producer]\nsource_url = \"postgres://u:secret@h/db\"",
                "producer.source_url",
            ),
            (
                "[producer]\nsource_url = \"postgres://u@h/db?password=secret\"",
                "producer.source_url",
            ),
            ("[nats]\nuser = \"consumer\"", "nats.user"),
            ("[nats]\npassword_file = \"/p\"", "nats.user"),
            (
                "[nats]\ntoken_file = \"/t\"\ncreds_file = \"/c\"",
                "nats.creds_file",
            ),
            ("[nats]\nsigning_key_file = \"\"", "nats.signing_key_file"),
            (
                "[consumer]\nmax_version_jump = 5",
                "consumer.max_version_jump",
            ),
        ];
        for (extra, field) in cases {
            let c = Config::from_toml(&format!("{base}{extra}")).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
        let err = Config::from_toml("pg_databse = \"x\"").err().unwrap();
        assert!(err.contains("pg_databse"), "{err}");
        let mut c = Config::from_toml(base).unwrap();
        let err = c
            .apply_env(env(&[("PG_PORT", "abc")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PG_PORT"), "{err}");
    }

    #[test]
    fn every_variable_apply_env_reads_is_listed() {
        let asked = std::cell::RefCell::new(Vec::new());
        let mut c = Config::from_toml("pg_database = \"x\"").unwrap();
        c.apply_env(|k| {
            asked.borrow_mut().push(k.to_owned());
            None
        })
        .unwrap();
        let asked = asked.into_inner();
        assert!(!asked.is_empty());
        for var in &asked {
            assert!(
                CONFIG_ENV_VARS.contains(&var.as_str()),
                "{var} is not in CONFIG_ENV_VARS"
            );
        }
    }
}
