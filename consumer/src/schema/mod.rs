//! Schema changes on the consumer side (see `docs/schema.md`).
//!
//! A SCHEMA record carries a table's definition at its version. The worker
//! hands it here ([`take`]) in stream order, between the records before it
//! (applied first, under the old shape) and after it. Per the table's
//! policy, additive differences are applied to the local table at once;
//! destructive ones halt the table: the record and everything newer of the
//! table are held (nakked, never dead-lettered, never dropped) and the SQL
//! to run is kept in `syncdata.schema_state` (shown by `status`) and logged.
//! Each redelivery compares again; once the local table matches, the table
//! resumes by itself.

pub mod diff;
pub mod rebuild;

use anyhow::Context;
use async_nats::jetstream;
use sqlx::PgPool;
use syncdata_core::config::Config;
use syncdata_core::record::Record;
use syncdata_core::signature::SigningKey;
use syncdata_core::subject::table_subject;
use syncdata_core::table::TableName;
use syncdata_core::tabledef::{self, TableDef};
use syncdata_core::version::{Lsn, Version};

use diff::{Class, Difference};

/// A table's policy for schema changes (`consumer.schema_policy`,
/// `consumer.schema_policy_tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Auto,
    Halt,
    Ignore,
}

impl Policy {
    pub fn of(config: &Config, table: &TableName) -> Policy {
        let text = config
            .consumer
            .schema_policy_tables
            .iter()
            .find(|(name, _)| TableName::parse(name).is_ok_and(|n| &n == table))
            .map(|(_, p)| p.as_str())
            .unwrap_or(config.consumer.schema_policy.as_str());
        match text {
            "auto" => Policy::Auto,
            "ignore" => Policy::Ignore,
            // "halt", and anything unknown: the careful choice.
            _ => Policy::Halt,
        }
    }
}

/// The local table's definition (None: no such table).
pub async fn local_definition(
    pool: &PgPool,
    table: &TableName,
) -> anyhow::Result<Option<TableDef>> {
    local_definition_on(pool, table).await
}

/// [`local_definition`] through any connection (inside a transaction: as
/// its own statements left the table).
pub async fn local_definition_on<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    table: &TableName,
) -> anyhow::Result<Option<TableDef>> {
    let sql = tabledef::local_definition_sql();
    let row: Option<Option<serde_json::Value>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(table.quoted())
        .fetch_optional(db)
        .await
        .with_context(|| format!("reading the local definition of {table}"))?;
    match row.flatten() {
        Some(v) => Ok(Some(
            serde_json::from_value(v).context("reading a local definition")?,
        )),
        None => Ok(None),
    }
}

/// The newest definition of `table` the stream holds (the last message of
/// `<table subject>.schema`), its signature checked when a key is set.
pub async fn stream_definition(
    js: &jetstream::Context,
    config: &Config,
    signer: Option<&SigningKey>,
    table: &TableName,
) -> anyhow::Result<Option<(TableDef, Version)>> {
    let stream = js
        .get_stream(&config.nats.stream)
        .await
        .with_context(|| format!("opening stream {}", config.nats.stream))?;
    let subject = schema_subject(config, table);
    let msg = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(None)
        }
        Err(e) => return Err(e).context(format!("reading {subject}")),
    };
    definition_of(&msg, signer, table).map(Some)
}

/// The subject of the look-up copies of `table`'s SCHEMA records.
pub fn schema_subject(config: &Config, table: &TableName) -> String {
    format!(
        "{}.{}",
        table_subject(&config.nats.subject_prefix, &table.schema, &table.table),
        tabledef::SCHEMA_SUBJECT_SUFFIX
    )
}

/// The definition a look-up copy holds, its signature checked when a key
/// is set.
pub fn definition_of(
    msg: &jetstream::message::StreamMessage,
    signer: Option<&SigningKey>,
    table: &TableName,
) -> anyhow::Result<(TableDef, Version)> {
    if let Some(key) = signer {
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_owned());
        key.verify(
            msg.subject.as_str(),
            &header("Nats-Msg-Id").unwrap_or_default(),
            &msg.payload,
            header(syncdata_core::signature::HEADER).as_deref(),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "the definition of {table} in the stream is not signed by the producer: {e}"
            )
        })?;
    }
    let record = Record::parse(&msg.payload).map_err(|e| anyhow::anyhow!("{e}"))?;
    if record.schema != table.schema || record.table != table.table {
        anyhow::bail!(
            "{} holds a definition of {}",
            msg.subject,
            record.qualified_name()
        );
    }
    let def = TableDef::from_record(&record).map_err(|e| anyhow::anyhow!(e))?;
    let version = record.version(0);
    Ok((def, version))
}

/// What taking a SCHEMA record came to.
#[derive(Debug)]
pub enum Taken {
    /// The local table follows (changes applied, or none needed): ack.
    /// `reshaped`: the local table may have changed shape (the engine's
    /// cached shape is dropped).
    Applied {
        statements: Vec<String>,
        reshaped: bool,
    },
    /// The table halts at this record: hold it and everything newer.
    Halted { reason: String, newly: bool },
    /// A resync's rebuild has not reached this record yet: hold it and
    /// everything newer; the replay brings it again.
    Wait,
}

pub(crate) fn version_of(lsn: i64, seq: i64) -> Version {
    Version::new(Lsn(lsn as u64), seq as u64)
}

/// The version a table is halted at, if it is: data newer than it is
/// held. While a resync rebuilds the table, the rebuild's target: data
/// newer than the last accepted definition waits until the replay has
/// taken it (data fetched from before the resync never meets an older
/// shape; module rebuild).
pub async fn halted_at(pool: &PgPool, table: &TableName) -> Result<Option<Version>, sqlx::Error> {
    let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT coalesce(rebuild_lsn, halted_lsn), CASE WHEN rebuild_lsn IS NULL THEN halted_seq \
           ELSE rebuild_seq END FROM syncdata.schema_state WHERE table_name = $1",
    )
    .bind(table.to_string())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(l, s)| Some(version_of(l?, s?))))
}

/// The SQL, one statement a line, of the differences that halt.
pub fn migration_sql(diffs: &[&Difference]) -> String {
    diffs
        .iter()
        .map(|d| format!("{};", d.sql))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Takes one SCHEMA record of `table` (see the module documentation).
pub async fn take(
    pool: &PgPool,
    config: &Config,
    table: &TableName,
    record: &Record,
    version: Version,
) -> Result<Taken, TakeError> {
    let def = TableDef::from_record(record).map_err(TakeError::Invalid)?;
    if def.schema != table.schema || def.table != table.table {
        return Err(TakeError::Invalid(format!(
            "definition of {}.{} on the subject of {table}",
            def.schema, def.table
        )));
    }
    let name = table.to_string();
    let lsn = version.lsn.0 as i64;
    let seq = version.seq as i64;
    let policy = Policy::of(config, table);
    let prior: Option<StateRow> = sqlx::query_as(
        "SELECT lsn, seq, halted_lsn, halted_seq, rebuild_lsn, rebuild_seq \
         FROM syncdata.schema_state WHERE table_name = $1",
    )
    .bind(&name)
    .fetch_optional(pool)
    .await?;
    let halted = prior.as_ref().and_then(|p| Some(version_of(p.2?, p.3?)));
    let def_json = serde_json::to_value(&def).expect("a definition serializes");
    if let Some(target) = prior.as_ref().and_then(|p| Some(version_of(p.4?, p.5?))) {
        // A resync's rebuild (module rebuild) decides.
        return rebuild::take(pool, table, &def, &def_json, version, target).await;
    }
    if let Some((l, s, ..)) = &prior {
        if version_of(*l, *s) >= version && halted.is_none() {
            // Taken before (a redelivery, or an older definition).
            return Ok(Taken::Applied {
                statements: vec![],
                reshaped: false,
            });
        }
    }
    if policy == Policy::Ignore {
        let mut tx = pool.begin().await?;
        record_taken(&mut tx, &name, lsn, seq, &def_json, "ignored", &[]).await?;
        tx.commit().await?;
        return Ok(Taken::Applied {
            statements: vec![],
            reshaped: false,
        });
    }
    let local = local_definition(pool, table)
        .await
        .map_err(|e| TakeError::Db(e.to_string()))?;
    let Some(local) = local else {
        // Not created locally (yet): nothing to follow; `add-tables
        // --create` or `schema migrate` creates it from this definition.
        let mut tx = pool.begin().await?;
        record_taken(&mut tx, &name, lsn, seq, &def_json, "unchanged", &[]).await?;
        tx.commit().await?;
        return Ok(Taken::Applied {
            statements: vec![],
            reshaped: false,
        });
    };
    let diffs = diff::diff(&def, Some(&local));
    // The definition recorded when capture started is a baseline, not a
    // change: differences it shows were there before; only safe ones are
    // applied, nothing halts (`schema diff` lists the rest).
    let baseline = def.command.as_deref() == Some("CAPTURE");
    let halting: Vec<&Difference> = diffs
        .iter()
        .filter(|_| !baseline)
        .filter(|d| match policy {
            Policy::Halt => d.class != Class::Manual,
            _ => d.class == Class::Destructive,
        })
        .collect();
    if !halting.is_empty() {
        let sql = migration_sql(&halting);
        let kinds: Vec<String> = halting
            .iter()
            .map(|d| match &d.column {
                Some(c) => format!("{} {c}", d.kind),
                None => d.kind.to_owned(),
            })
            .collect();
        let reason = format!(
            "schema change at {version} not applied by itself ({}): the table is halted, \
             nothing is dropped. Run on the local database:\n{sql}\nthen it resumes by itself",
            kinds.join(", ")
        );
        let newly = halted != Some(version);
        sqlx::query(
            "INSERT INTO syncdata.schema_state (table_name, lsn, seq, definition, halted_lsn, halted_seq, halt_reason, halt_sql) \
             VALUES ($1, 0, 0, $2, $3, $4, $5, $6) \
             ON CONFLICT (table_name) DO UPDATE SET halted_lsn = $3, halted_seq = $4, \
               halt_reason = $5, halt_sql = $6, updated_at = now()",
        )
        .bind(&name)
        .bind(&def_json)
        .bind(lsn)
        .bind(seq)
        .bind(&reason)
        .bind(&sql)
        .execute(pool)
        .await?;
        if newly {
            sqlx::query(
                "INSERT INTO syncdata.schema_changes (table_name, lsn, seq, outcome, statements) \
                 VALUES ($1, $2, $3, 'halted', $4)",
            )
            .bind(&name)
            .bind(lsn)
            .bind(seq)
            .bind(&sql)
            .execute(pool)
            .await?;
        }
        return Ok(Taken::Halted { reason, newly });
    }
    let statements: Vec<String> = diffs
        .iter()
        .filter(|d| d.class == Class::Safe)
        .map(|d| d.sql.clone())
        .collect();
    let mut tx = pool.begin().await?;
    for s in &statements {
        sqlx::query(sqlx::AssertSqlSafe(s.clone()))
            .execute(&mut *tx)
            .await
            .map_err(|e| TakeError::Statement {
                sql: s.clone(),
                error: e,
            })?;
    }
    let outcome = if halted.is_some() {
        "resumed"
    } else if statements.is_empty() {
        "unchanged"
    } else {
        "applied"
    };
    record_taken(&mut tx, &name, lsn, seq, &def_json, outcome, &statements).await?;
    tx.commit().await?;
    let reshaped = !statements.is_empty();
    Ok(Taken::Applied {
        statements,
        reshaped,
    })
}

/// A table's row of `syncdata.schema_state` as [`take`] reads it: the
/// version taken, the halt's version, the rebuild's target version.
type StateRow = (i64, i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

pub(crate) async fn record_taken(
    db: &mut sqlx::PgConnection,
    name: &str,
    lsn: i64,
    seq: i64,
    def: &serde_json::Value,
    outcome: &str,
    statements: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO syncdata.schema_state (table_name, lsn, seq, definition) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (table_name) DO UPDATE SET lsn = $2, seq = $3, definition = $4, \
           halted_lsn = NULL, halted_seq = NULL, halt_reason = NULL, halt_sql = NULL, updated_at = now()",
    )
    .bind(name)
    .bind(lsn)
    .bind(seq)
    .bind(def)
    .execute(&mut *db)
    .await?;
    sqlx::query(
        "INSERT INTO syncdata.schema_changes (table_name, lsn, seq, outcome, statements) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(name)
    .bind(lsn)
    .bind(seq)
    .bind(outcome)
    .bind((!statements.is_empty()).then(|| statements.join(";\n") + ";"))
    .execute(&mut *db)
    .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// The record is not a usable definition: dead-lettered like any
    /// malformed record.
    #[error("invalid SCHEMA record: {0}")]
    Invalid(String),
    /// A statement failed (the local table is not what the diff assumed):
    /// retried.
    #[error("applying a schema change failed: {sql}: {error}")]
    Statement { sql: String, error: sqlx::Error },
    #[error("schema change bookkeeping failed: {0}")]
    Db(String),
}

impl From<sqlx::Error> for TakeError {
    fn from(e: sqlx::Error) -> Self {
        TakeError::Db(e.to_string())
    }
}

/// A halt as stored: table, version (lsn, seq), reason, SQL.
type HaltRow = (String, i64, i64, Option<String>, Option<String>);

/// Halts to show in `status`: (table, version, reason, sql).
pub async fn halts(pool: &PgPool) -> Result<Vec<(String, String, String, String)>, sqlx::Error> {
    let rows: Vec<HaltRow> = sqlx::query_as(
        "SELECT table_name, halted_lsn, halted_seq, halt_reason, halt_sql FROM syncdata.schema_state \
         WHERE halted_lsn IS NOT NULL ORDER BY table_name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, l, s, r, q)| {
            (
                t,
                version_of(l, s).to_string(),
                r.unwrap_or_default(),
                q.unwrap_or_default(),
            )
        })
        .collect())
}

/// One step of a fetched batch, in stream order (see [`steps`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Data records applied together (indexes into the batch).
    Data(Vec<usize>),
    /// A SCHEMA record, taken between the data before and after it.
    Schema(usize),
    /// Records newer than the version the table is halted at: held.
    Hold(usize),
}

/// Cuts a batch's good records (`good`, in stream order, with their
/// versions) at its SCHEMA records; with the table halted at `halted`,
/// data newer than it is held.
pub fn steps(good: &[(usize, Version, bool)], halted: Option<Version>) -> Vec<Step> {
    let mut out = Vec::new();
    let mut data = Vec::new();
    for &(i, version, is_schema) in good {
        if is_schema {
            if !data.is_empty() {
                out.push(Step::Data(std::mem::take(&mut data)));
            }
            out.push(Step::Schema(i));
        } else if halted.is_some_and(|h| version > h) {
            out.push(Step::Hold(i));
        } else {
            data.push(i);
        }
    }
    if !data.is_empty() {
        out.push(Step::Data(data));
    }
    out
}

/// The worker's side of [`take`]: the fate of the SCHEMA record, with the
/// engine's cached shape dropped after a change and the halt logged.
pub(crate) async fn worker_take<T: crate::apply::Target>(
    ctx: &crate::worker::WorkerShared<T>,
    table: &TableName,
    record: &Result<Record, String>,
    fallback_seq: u64,
) -> crate::worker::Fate {
    use crate::worker::Fate;
    let record = record.as_ref().expect("good records only");
    let version = record.version(fallback_seq);
    let pool = match &ctx.store {
        crate::local::LocalStore::Pg(pool) => pool,
        crate::local::LocalStore::Sqlite(pool) => {
            // docs/sqlite.md: added columns only.
            return match crate::sqlite_schema::take(pool, &ctx.config, table, record).await {
                Ok(statements) => {
                    if !statements.is_empty() {
                        ctx.engine.forget_shape(table).await;
                        tracing::info!(table = %table, version = %version, statements = %statements.join("; "),
                                       "schema change applied to the SQLite file");
                    }
                    Fate::Ack
                }
                Err(TakeError::Invalid(error)) => Fate::Poison {
                    error,
                    sqlstate: None,
                },
                Err(e) => {
                    tracing::warn!(table = %table, version = %version, error = %e,
                                   "schema change not taken; will retry");
                    Fate::Retry
                }
            };
        }
    };
    match take(pool, &ctx.config, table, record, version).await {
        Ok(Taken::Applied {
            statements,
            reshaped,
        }) => {
            if reshaped {
                ctx.engine.forget_shape(table).await;
            }
            if !statements.is_empty() {
                tracing::info!(table = %table, version = %version, statements = %statements.join("; "),
                               "schema change applied to the local table");
                metrics::counter!("syncdata_schema_changes_total", "outcome" => "applied")
                    .increment(1);
            }
            Fate::Ack
        }
        Ok(Taken::Halted { reason, newly }) => {
            if newly {
                tracing::error!(table = %table, version = %version, "{reason}");
                metrics::counter!("syncdata_schema_changes_total", "outcome" => "halted")
                    .increment(1);
            } else {
                tracing::debug!(table = %table, version = %version, "still halted on a schema change");
            }
            Fate::Retry
        }
        Ok(Taken::Wait) => {
            tracing::debug!(table = %table, version = %version,
                            "schema change ahead of the table's rebuild; held until the replay reaches it");
            Fate::Retry
        }
        Err(TakeError::Invalid(error)) => Fate::Poison {
            error,
            sqlstate: None,
        },
        Err(e) => {
            tracing::warn!(table = %table, error = %e, "schema change not taken; will retry");
            Fate::Retry
        }
    }
}
