//! The local store the workers keep their few records in besides the
//! engine's bookkeeping (dead-letter log rows, per-message failure counts,
//! the applied-version marks, the audit metrics): the local PostgreSQL
//! database, or the SQLite file of a SQLite target (docs/sqlite.md). Each
//! function runs the PostgreSQL code of `store`, `attempts`, `trust` and
//! `dead_letter` unchanged, or its SQLite counterpart here.

use async_nats::jetstream;
use sqlx::{PgPool, SqlitePool};
use syncdata_core::table::TableName;

use crate::attempts::{self, Failures};
use crate::dead_letter::{self, DeadLetter};
use crate::store::{self, Counts};
use crate::trust::VersionMark;

#[derive(Clone)]
pub enum LocalStore {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

impl LocalStore {
    /// The local PostgreSQL database; None on a SQLite target.
    pub fn pg(&self) -> Option<&PgPool> {
        match self {
            LocalStore::Pg(pool) => Some(pool),
            LocalStore::Sqlite(_) => None,
        }
    }
}

impl LocalStore {
    /// The configured local store: the SQLite target's file (created and
    /// migrated when new) or the local PostgreSQL database.
    pub async fn open(config: &syncdata_core::config::Config) -> anyhow::Result<LocalStore> {
        Ok(match config.sqlite_target() {
            Some(target) => LocalStore::Sqlite(crate::sqlite_cmd::open(&target).await?),
            None => LocalStore::Pg(store::connect(config).await?),
        })
    }

    /// This destination's id (names its durables and dead letters).
    pub async fn instance_id(&self) -> anyhow::Result<String> {
        Ok(match self {
            LocalStore::Pg(pool) => store::instance_id(pool).await?,
            LocalStore::Sqlite(pool) => sqlite_instance_id(pool).await?,
        })
    }

    /// The whitelist, in the order tables were added.
    pub async fn whitelist(&self) -> anyhow::Result<Vec<TableName>> {
        Ok(match self {
            LocalStore::Pg(pool) => store::whitelist(pool).await?,
            LocalStore::Sqlite(pool) => crate::sqlite_cmd::whitelist(pool).await?,
        })
    }

    /// The tables a command names, else every whitelisted table; an error
    /// when that is none (`verb` says what the command would do with them).
    pub async fn named_or_whitelisted(
        &self,
        named: &[String],
        verb: &str,
    ) -> anyhow::Result<Vec<TableName>> {
        let tables = if named.is_empty() {
            self.whitelist().await?
        } else {
            named
                .iter()
                .map(|t| TableName::parse(t))
                .collect::<Result<_, _>>()?
        };
        if tables.is_empty() {
            anyhow::bail!("no tables to {verb}: name them, or whitelist them with add-tables");
        }
        Ok(tables)
    }
}

impl From<PgPool> for LocalStore {
    fn from(pool: PgPool) -> Self {
        LocalStore::Pg(pool)
    }
}

/// Reads the table's applied-version marks once (see `trust::VersionMark`).
pub async fn ensure_mark(
    store: &LocalStore,
    mark: &mut VersionMark,
    table: &TableName,
) -> sqlx::Result<()> {
    match store {
        LocalStore::Pg(pool) => mark.ensure_loaded(pool, table).await,
        LocalStore::Sqlite(pool) => {
            if mark.is_loaded() {
                return Ok(());
            }
            let name = crate::apply::sqlite::local_name(table);
            let table_high: Option<i64> = sqlx::query_scalar(
                "select max(nullif(ts.truncate_lsn, 0), \
                     coalesce((select max(rs.lsn) from syncdata_row_state rs where rs.table_id = ts.id), 0)) \
                 from syncdata_table_state ts where ts.table_name = ?",
            )
            .bind(&name)
            .fetch_optional(pool)
            .await?
            .flatten();
            let table_high = table_high.filter(|&v| v > 0);
            let db_high: Option<i64> = if table_high.is_none() {
                sqlx::query_scalar(
                    "select nullif(max(coalesce((select max(lsn) from syncdata_row_state), 0), \
                         coalesce((select max(truncate_lsn) from syncdata_table_state), 0)), 0)",
                )
                .fetch_one(pool)
                .await?
            } else {
                None
            };
            mark.set_loaded(table_high, db_high);
            Ok(())
        }
    }
}

/// Counts one more failure of the record at `stream_seq` (at `index` of
/// its chunk; None for a message of one record).
pub async fn record_attempt(
    store: &LocalStore,
    table: &TableName,
    stream_seq: u64,
    index: Option<u32>,
) -> Result<Failures, sqlx::Error> {
    match store {
        LocalStore::Pg(pool) => attempts::record(pool, table, stream_seq, index).await,
        LocalStore::Sqlite(pool) => {
            let (attempts, since): (i64, f64) = sqlx::query_as(
                "insert into syncdata_failed_attempts (stream_seq, table_name, attempts, chunk_index) \
                 values (?, ?, 1, ?) \
                 on conflict (stream_seq, chunk_index) do update set attempts = attempts + 1, \
                     last_failed_at = unixepoch('subsec') \
                 returning attempts, unixepoch('subsec') - first_failed_at",
            )
            .bind(stream_seq as i64)
            .bind(table.to_string())
            .bind(index.map_or(-1, i64::from))
            .fetch_one(pool)
            .await?;
            Ok(Failures {
                attempts,
                since_first_secs: since,
            })
        }
    }
}

/// Forgets the failures of settled messages.
pub async fn clear_attempts(store: &LocalStore, stream_seqs: &[i64]) -> Result<(), sqlx::Error> {
    match store {
        LocalStore::Pg(pool) => attempts::clear(pool, stream_seqs).await,
        LocalStore::Sqlite(pool) => {
            for seq in stream_seqs {
                sqlx::query("delete from syncdata_failed_attempts where stream_seq = ?")
                    .bind(seq)
                    .execute(pool)
                    .await?;
            }
            Ok(())
        }
    }
}

/// Files a dead letter and its FAILED row in `data_sync_logs`.
pub async fn dead_letter(
    js: &jetstream::Context,
    store: &LocalStore,
    dlq_prefix: &str,
    change_stream: &str,
    dl: DeadLetter<'_>,
) -> anyhow::Result<()> {
    match store {
        LocalStore::Pg(pool) => dead_letter::publish(js, pool, dlq_prefix, change_stream, dl).await,
        LocalStore::Sqlite(pool) => {
            let instance = sqlite_instance_id(pool).await?;
            let table = dl.table;
            let at = dead_letter::failure_at(dl.sequence, dl.chunk_index);
            let detail =
                dead_letter::publish_as(js, &instance, dlq_prefix, change_stream, dl).await?;
            sqlx::query(
                "insert into data_sync_logs (table_name, status, rows_synced, archive_ref, error_detail) \
                 values (?, 'FAILED', 0, ?, ?)",
            )
            .bind(table.to_string())
            .bind(at)
            .bind(detail)
            .execute(pool)
            .await?;
            Ok(())
        }
    }
}

/// Adds counts to the FREQ row of `data_sync_metrics` for the period
/// starting at `period_start` (unix seconds).
pub async fn add_freq_metrics(
    store: &LocalStore,
    table: &str,
    period_start: i64,
    period_secs: i64,
    counts: Counts,
) -> anyhow::Result<()> {
    match store {
        LocalStore::Pg(pool) => {
            store::add_freq_metrics(pool, table, period_start, period_secs, counts).await?
        }
        LocalStore::Sqlite(pool) => {
            sqlx::query(
                "insert into data_sync_metrics (table_name, period_start, period_end, period_type, \
                                                records_added, records_updated, records_deleted) \
                 values (?, datetime(?, 'unixepoch'), datetime(? + ?, 'unixepoch'), 'FREQ', ?, ?, ?) \
                 on conflict (table_name, period_start, period_type) do update set \
                    records_added = records_added + excluded.records_added, \
                    records_updated = records_updated + excluded.records_updated, \
                    records_deleted = records_deleted + excluded.records_deleted",
            )
            .bind(table)
            .bind(period_start)
            .bind(period_start)
            .bind(period_secs)
            .bind(counts.added as i64)
            .bind(counts.updated as i64)
            .bind(counts.deleted as i64)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// This SQLite file's destination id (names its durables and dead letters).
pub async fn sqlite_instance_id(pool: &SqlitePool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("select id from syncdata_instance")
        .fetch_one(pool)
        .await
}
