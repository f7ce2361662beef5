//! Housekeeping of a SQLite target's file, as `crate::gc` does for
//! PostgreSQL: tombstones below each table's replay horizon (observed at
//! least `consumer.tombstone_grace_secs` ago; see `gc::horizon` for why
//! that is safe), `data_sync_logs` rows older than
//! `consumer.log_retention_days` (their totals kept in
//! `syncdata_log_totals` for `status`), the daemon registry after
//! `consumer.daemon_retention_days`, and the failure counts of messages the
//! stream no longer holds. Every statement runs under the file's write lock
//! (BEGIN IMMEDIATE), so it never interleaves with a batch; several
//! processes on one file may each run it (what one removed, the next finds
//! gone).

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use sqlx::SqlitePool;
use syncdata_core::config::Config;
use syncdata_core::table::TableName;
use syncdata_core::version::Version;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::apply::sqlite;
use crate::gc::{horizon, log_round, Round};

/// Rows removed per transaction, so a batch never waits long for the lock.
const CHUNK: i64 = 5000;

/// Runs a round every `gc_interval_secs` until `token` is cancelled.
pub async fn run(pool: SqlitePool, stream: Stream, config: Config, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.consumer.gc_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The whitelist as it is now (add-tables while running).
        let tables = match crate::sqlite_cmd::whitelist(&pool).await {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "housekeeping cannot read the whitelist; will retry next round");
                continue;
            }
        };
        log_round(round(&pool, &stream, &config, &tables).await.map(Some));
    }
}

pub async fn round(
    pool: &SqlitePool,
    stream: &Stream,
    config: &Config,
    tables: &[TableName],
) -> anyhow::Result<Round> {
    let c = &config.consumer;
    let mut r = Round::default();
    if c.tombstone_grace_secs > 0 {
        for table in tables {
            match horizon(stream, config, table).await {
                Ok(Some(h)) => {
                    r.tombstones += collect(pool, table, h, c.tombstone_grace_secs).await?
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(table = %table, error = %e, "cannot read the table's replay horizon; its tombstones stay")
                }
            }
        }
    }
    if c.log_retention_days > 0 {
        r.log_rows = prune_logs(pool, c.log_retention_days).await?;
    }
    if c.daemon_retention_days > 0 {
        r.daemons = sqlx::query(
            "delete from syncdata_daemons where coalesce(stopped_at, last_seen) < unixepoch('subsec') - ? \
             and last_seen < unixepoch('subsec') - ?",
        )
        .bind((c.daemon_retention_days * 86_400) as f64)
        .bind((c.daemon_retention_days * 86_400) as f64)
        .execute(pool)
        .await?
        .rows_affected();
    }
    if let Ok(info) = stream.get_info().await {
        r.failure_counts = sqlx::query("delete from syncdata_failed_attempts where stream_seq < ?")
            .bind(info.state.first_sequence as i64)
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(r)
}

/// Records the horizon observed now, and removes the tombstones below the
/// horizon observed at least `grace_secs` ago (which then gives way to the
/// new one). Returns how many went.
async fn collect(
    pool: &SqlitePool,
    table: &TableName,
    observed: Version,
    grace_secs: u64,
) -> anyhow::Result<u64> {
    let name = sqlite::local_name(table);
    let (lsn, seq) = observed.to_db();
    let aged: Option<(i64, i64)> = sqlx::query_as(
        "select lsn, seq from syncdata_gc_horizon where table_name = ? \
         and observed_at <= unixepoch('subsec') - ?",
    )
    .bind(&name)
    .bind(grace_secs as f64)
    .fetch_optional(pool)
    .await?;
    let mut removed = 0u64;
    if let Some((h_lsn, h_seq)) = aged {
        let table_id: Option<i64> =
            sqlx::query_scalar("select id from syncdata_table_state where table_name = ?")
                .bind(&name)
                .fetch_optional(pool)
                .await?;
        if let Some(table_id) = table_id {
            loop {
                // Pure tombstones only (nothing parked on them). The
                // horizon's count grows in the same transaction, so a crash
                // never loses the count of a chunk deleted.
                let mut tx = pool.begin().await?;
                let n = sqlx::query(
                    "delete from syncdata_row_state where table_id = ?1 and key in ( \
                       select key from syncdata_row_state where table_id = ?1 and state = 'D' \
                       and parked is null and (lsn, seq) < (?2, ?3) limit ?4)",
                )
                .bind(table_id)
                .bind(h_lsn)
                .bind(h_seq)
                .bind(CHUNK)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                sqlx::query(
                    "update syncdata_gc_horizon set tombstones_collected = tombstones_collected + ?1 \
                     where table_name = ?2",
                )
                .bind(n as i64)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                removed += n;
                if n < CHUNK as u64 {
                    break;
                }
            }
        }
    }
    sqlx::query(
        "insert into syncdata_gc_horizon (table_name, lsn, seq, observed_at, tombstones_collected, last_run_at) \
         values (?1, ?2, ?3, unixepoch('subsec'), 0, unixepoch('subsec')) \
         on conflict (table_name) do update set \
           lsn = case when ?4 then excluded.lsn else lsn end, \
           seq = case when ?4 then excluded.seq else seq end, \
           observed_at = case when ?4 then excluded.observed_at else observed_at end, \
           last_run_at = excluded.last_run_at",
    )
    .bind(&name)
    .bind(lsn)
    .bind(seq)
    .bind(aged.is_some())
    .execute(pool)
    .await?;
    if removed > 0 {
        metrics::counter!("syncdata_tombstones_collected_total", "table" => table.to_string())
            .increment(removed);
    }
    Ok(removed)
}

/// Removes `data_sync_logs` rows older than `days` (but each table's newest
/// SUCCESS row, which `status` shows as the last batch), adding them to
/// `syncdata_log_totals` first, in one transaction per chunk.
async fn prune_logs(pool: &SqlitePool, days: u64) -> anyhow::Result<u64> {
    let mut removed = 0u64;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "create temp table if not exists gone_logs (id integer primary key, table_name text, \
                 status text, rows_synced integer)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("delete from gone_logs")
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "insert into gone_logs select id, table_name, status, rows_synced from data_sync_logs l \
             where unixepoch(sync_time, 'subsec') < unixepoch('subsec') - ? \
               and (status <> 'SUCCESS' or exists (select 1 from data_sync_logs n \
                    where n.table_name = l.table_name and n.status = 'SUCCESS' and n.id > l.id)) \
             limit ?",
        )
        .bind((days * 86_400) as f64)
        .bind(CHUNK)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "insert into syncdata_log_totals (table_name, records_synced, errors, rows_pruned) \
             select table_name, coalesce(sum(case when status = 'SUCCESS' then rows_synced end), 0), \
                    count(case when status = 'FAILED' then 1 end), count(*) \
             from gone_logs where true group by table_name \
             on conflict (table_name) do update set \
               records_synced = records_synced + excluded.records_synced, \
               errors = errors + excluded.errors, rows_pruned = rows_pruned + excluded.rows_pruned",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("delete from data_sync_logs where id in (select id from gone_logs)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        removed += n;
        if n < CHUNK as u64 {
            return Ok(removed);
        }
    }
}
