//! The local database's own tables: migrations (seed-004 tables plus the
//! `syncdata` bookkeeping schema) and the `tables_to_sync` whitelist.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::apply::shape::{ShapeError, TableShape};
use crate::config::Config;
use crate::table::TableName;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {host}:{port} database {database:?}: {source}")]
    Connect {
        host: String,
        port: u16,
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the syncdata tables: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("tables_to_sync holds {stored:?}, which is not a valid table name: {reason}")]
    BadWhitelistEntry { stored: String, reason: String },
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// Connects and runs the migrations (safe to do from many processes at once:
/// the migrator takes an advisory lock).
pub async fn connect(config: &Config) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.consumer.pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(config.pg_connect_options())
        .await
        .map_err(|source| StoreError::Connect {
            host: config.pg_host.clone(),
            port: config.pg_port,
            database: config.pg_database.clone().unwrap_or_default(),
            source,
        })?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// The whitelisted tables, in the order they were added.
pub async fn whitelist(pool: &PgPool) -> Result<Vec<TableName>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as("select table_name from tables_to_sync order by id")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|(stored,)| {
            TableName::parse(&stored).map_err(|e| StoreError::BadWhitelistEntry {
                stored,
                reason: e.reason.to_owned(),
            })
        })
        .collect()
}

/// Adds a table after checking it exists locally with a primary key.
/// Returns false when it was already listed.
pub async fn add_table(
    pool: &PgPool,
    name: &TableName,
    creator: Option<&str>,
) -> Result<bool, StoreError> {
    TableShape::load(pool, name).await?;
    let done = sqlx::query(
        "insert into tables_to_sync (table_name, creator) values ($1, $2) on conflict (table_name) do nothing",
    )
    .bind(name.to_string())
    .bind(creator)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a table from the whitelist. Returns false when it was not listed.
pub async fn remove_table(pool: &PgPool, name: &TableName) -> Result<bool, StoreError> {
    let done = sqlx::query("delete from tables_to_sync where table_name = $1")
        .bind(name.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Listed tables with who added them and when.
pub async fn list_tables(
    pool: &PgPool,
) -> Result<Vec<(String, Option<String>, Option<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "select table_name, creator, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         from tables_to_sync order by id",
    )
    .fetch_all(pool)
    .await?)
}

/// Writes a FAILED row to `data_sync_logs`.
pub async fn log_failure(
    pool: &PgPool,
    table: &TableName,
    archive_ref: &str,
    error_detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into data_sync_logs (table_name, status, rows_synced, archive_ref, error_detail) \
         values ($1, 'FAILED', 0, $2, $3)",
    )
    .bind(table.to_string())
    .bind(archive_ref)
    .bind(error_detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// This database's destination id (see migration 0003).
pub async fn instance_id(pool: &PgPool) -> Result<String, StoreError> {
    Ok(sqlx::query_scalar("select id from syncdata.instance")
        .fetch_one(pool)
        .await?)
}

/// Per-table counts of applied rows, for `data_sync_metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub added: u64,
    pub updated: u64,
    pub deleted: u64,
}

impl Counts {
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Adds counts to the FREQ row of the period starting at `period_start`
/// (unix seconds). Many daemons add to the same row.
pub async fn add_freq_metrics(
    pool: &PgPool,
    table: &str,
    period_start: i64,
    period_secs: i64,
    counts: Counts,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into data_sync_metrics (table_name, period_start, period_end, period_type, \
                                        records_added, records_updated, records_deleted) \
         values ($1, to_timestamp($2), to_timestamp($2 + $3), 'FREQ', $4, $5, $6) \
         on conflict (table_name, period_start, period_type) do update set \
            records_added = data_sync_metrics.records_added + excluded.records_added, \
            records_updated = data_sync_metrics.records_updated + excluded.records_updated, \
            records_deleted = data_sync_metrics.records_deleted + excluded.records_deleted",
    )
    .bind(table)
    .bind(period_start)
    .bind(period_secs)
    .bind(counts.added as i64)
    .bind(counts.updated as i64)
    .bind(counts.deleted as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Recomputes the WEEK and MONTH roll-ups from the FREQ rows (idempotent).
pub async fn roll_up_metrics(pool: &PgPool) -> Result<(), StoreError> {
    for (period, step) in [("WEEK", "1 week"), ("MONTH", "1 month")] {
        let unit = period.to_lowercase();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into data_sync_metrics (table_name, period_start, period_end, period_type, \
                                            records_added, records_updated, records_deleted) \
             select table_name, date_trunc('{unit}', period_start), \
                    date_trunc('{unit}', period_start) + interval '{step}', '{period}', \
                    sum(records_added), sum(records_updated), sum(records_deleted) \
             from data_sync_metrics where period_type = 'FREQ' group by 1, 2 \
             on conflict (table_name, period_start, period_type) do update set \
                records_added = excluded.records_added, \
                records_updated = excluded.records_updated, \
                records_deleted = excluded.records_deleted"
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Registers a running daemon.
pub async fn register_daemon(
    pool: &PgPool,
    id: &uuid_like::Id,
    host: &str,
) -> Result<(), StoreError> {
    sqlx::query("insert into syncdata.daemons (id, host, pid) values ($1::uuid, $2, $3)")
        .bind(&id.0)
        .bind(host)
        .bind(std::process::id() as i32)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn heartbeat(
    pool: &PgPool,
    id: &uuid_like::Id,
    applied: u64,
    errors: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "update syncdata.daemons set last_seen = now(), records_applied = $2, errors = $3 where id = $1::uuid",
    )
    .bind(&id.0)
    .bind(applied as i64)
    .bind(errors as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the worker of `table` in daemon `id` ended unexpectedly
/// with `error` and is being restarted (see migration 0005).
pub async fn worker_restarted(
    pool: &PgPool,
    id: &uuid_like::Id,
    table: &str,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into syncdata.worker_restarts (daemon_id, table_name, restarts, last_error) \
         values ($1::uuid, $2, 1, $3) \
         on conflict (daemon_id, table_name) do update set \
         restarts = worker_restarts.restarts + 1, last_error = excluded.last_error, last_at = now()",
    )
    .bind(&id.0)
    .bind(table)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn daemon_stopped(pool: &PgPool, id: &uuid_like::Id) -> Result<(), StoreError> {
    sqlx::query(
        "update syncdata.daemons set stopped_at = now(), last_seen = now() where id = $1::uuid",
    )
    .bind(&id.0)
    .execute(pool)
    .await?;
    Ok(())
}

/// Daemon ids as text (uuid without a uuid crate).
pub mod uuid_like {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Id(pub String);

    impl Id {
        pub fn random() -> Id {
            let b: [u8; 16] = rand::random();
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Id(format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            ))
        }
    }
}

/// Seconds a daemon may go without a heartbeat and still count as running.
pub const DAEMON_ALIVE_SECS: i64 = 20;
