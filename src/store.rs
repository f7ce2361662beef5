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
