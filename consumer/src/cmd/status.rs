//! `syncdata status [--json]`: the seed-004 summary plus, per table, what is
//! pending in the stream, the last applied LSN and time, lag, dead letters
//! and connected workers. The JSON form is documented in the README
//! ("status --json") and asserted by a test.

use crate::store;
use async_nats::jetstream;
use serde::Serialize;
use sqlx::PgPool;
use syncdata_core::config::Config;
use syncdata_core::{errln, outln};
use syncdata_core::{nats, table::TableName};

use crate::backlog::{self, TableBacklog};

#[derive(Debug, Serialize)]
pub struct Status {
    /// "active" when a daemon applying into this database sent a heartbeat
    /// within the last 20 s, else "inactive".
    pub status: &'static str,
    pub sync_frequency_seconds: u64,
    pub start_time: Option<String>,
    pub last_sync: Option<String>,
    pub records_synced: i64,
    pub errors: i64,
    pub daemons: i64,
    pub tables: Vec<TableStatus>,
    /// Retention limits and what the housekeeping did (docs/operations.md
    /// "Retention").
    pub retention: crate::gc::Retention,
}

#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub last_applied_lsn: Option<String>,
    pub last_applied_at: Option<String>,
    /// None when NATS could not be reached.
    pub stream: Option<TableBacklog>,
    /// Times the running daemons restarted the table's worker after it
    /// ended unexpectedly (a panic or an error).
    pub worker_restarts: i64,
    /// Why it ended, the last time.
    pub worker_error: Option<String>,
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

pub async fn gather(config: &Config) -> anyhow::Result<Status> {
    let pool = store::connect(config).await?;
    let alive = store::DAEMON_ALIVE_SECS;
    let (daemons, start_time): (i64, Option<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select count(*), to_char(min(started_at) at time zone 'UTC', {TS}) from syncdata.daemons \
         where stopped_at is null and last_seen > now() - interval '{alive} seconds'"
    )))
        .fetch_one(&pool)
        .await?;
    let start_time = match start_time {
        Some(t) => Some(t),
        None => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select to_char(max(started_at) at time zone 'UTC', {TS}) from syncdata.daemons"
            )))
            .fetch_one(&pool)
            .await?
        }
    };
    // Rows removed by retention still count (syncdata.log_totals).
    let (last_sync, records, errors): (Option<String>, Option<i64>, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select to_char(max(sync_time) filter (where status = 'SUCCESS') at time zone 'UTC', {TS}), \
                (coalesce(sum(rows_synced) filter (where status = 'SUCCESS'), 0) \
                 + (select coalesce(sum(records_synced), 0) from syncdata.log_totals))::bigint, \
                (count(*) filter (where status = 'FAILED') \
                 + (select coalesce(sum(errors), 0) from syncdata.log_totals))::bigint \
         from data_sync_logs"
    )))
    .fetch_one(&pool)
    .await?;
    let tables = store::whitelist(&pool).await?;
    let instance = store::instance_id(&pool).await?;
    let streams = streams(config).await;
    if let Err(e) = &streams {
        errln!("warning: NATS not reachable, stream figures left out: {e:#}");
    }
    let mut out = Vec::new();
    for t in &tables {
        let (lsn, at) = last_applied(&pool, t).await?;
        let stream = match &streams {
            Ok((changes, dlq)) => backlog::table_backlog(changes, dlq, config, &instance, t)
                .await
                .ok(),
            Err(_) => None,
        };
        let (worker_restarts, worker_error) = worker_restarts(&pool, t).await?;
        out.push(TableStatus {
            table: t.to_string(),
            last_applied_lsn: lsn,
            last_applied_at: at,
            stream,
            worker_restarts,
            worker_error,
        });
    }
    let retention =
        crate::gc::retention(&pool, config, streams.as_ref().ok().map(|(c, d)| (c, d))).await?;
    Ok(Status {
        retention,
        status: if daemons > 0 { "active" } else { "inactive" },
        sync_frequency_seconds: config.data_sync_freq,
        start_time,
        last_sync,
        records_synced: records.unwrap_or(0),
        errors,
        daemons,
        tables: out,
    })
}

async fn streams(
    config: &Config,
) -> anyhow::Result<(jetstream::stream::Stream, jetstream::stream::Stream)> {
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        nats::connect(&config.nats, "syncdata-status"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))??;
    let js = jetstream::new(client);
    // Created when missing (as the DLQ just below, and as `start` and
    // `resync` do): before the first daemon or producer run the stream does
    // not exist yet, which is "nothing pending", not "NATS not reachable".
    let changes = nats::ensure_stream(&js, nats::change_stream_config(&config.nats)).await?;
    let dlq = nats::ensure_stream(&js, nats::dlq_stream_config(&config.nats)).await?;
    Ok((changes, dlq))
}

/// Restarts of the table's worker in the running daemons, and the last
/// reason (see migration 0006).
async fn worker_restarts(pool: &PgPool, t: &TableName) -> anyhow::Result<(i64, Option<String>)> {
    let alive = store::DAEMON_ALIVE_SECS;
    let row: (Option<i64>, Option<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select sum(r.restarts)::bigint, (array_agg(r.last_error order by r.last_at desc))[1] \
         from syncdata.worker_restarts r join syncdata.daemons d on d.id = r.daemon_id \
         where r.table_name = $1 and d.stopped_at is null \
           and d.last_seen > now() - interval '{alive} seconds'"
    )))
    .bind(t.to_string())
    .fetch_one(pool)
    .await?;
    Ok((row.0.unwrap_or(0), row.1))
}

/// The newest LSN of the table's latest applied batch (`archive_ref` holds
/// `first..last`).
async fn last_applied(
    pool: &PgPool,
    t: &TableName,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select archive_ref, to_char(sync_time at time zone 'UTC', {TS}) from data_sync_logs \
         where table_name = $1 and status = 'SUCCESS' order by sync_time desc limit 1"
        )))
        .bind(t.to_string())
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some((r, at)) => (
            r.map(|r| r.rsplit("..").next().unwrap_or(&r).to_owned()),
            at,
        ),
        None => (None, None),
    })
}

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let s = gather(config).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    let none = || "never".to_owned();
    outln!("status: {}", s.status)?;
    outln!("sync frequency: {} seconds", s.sync_frequency_seconds)?;
    outln!("start time: {}", s.start_time.clone().unwrap_or_else(none))?;
    outln!("last sync: {}", s.last_sync.clone().unwrap_or_else(none))?;
    outln!("records synced: {}", s.records_synced)?;
    outln!("errors: {}", s.errors)?;
    outln!()?;
    if s.tables.is_empty() {
        outln!("{}", crate::daemon::NO_TABLES)?;
        return Ok(());
    }
    outln!("synced tables ({}):", s.tables.len())?;
    for t in &s.tables {
        outln!("  - {}", t.table)?;
    }
    outln!()?;
    outln!(
        "{:<24} {:>9} {:>9} {:>8} {:>6} {:>8}  {:<14} last applied at",
        "table",
        "pending",
        "in-flight",
        "lag (s)",
        "dlq",
        "workers",
        "last lsn"
    )?;
    for t in &s.tables {
        let (p, a, l, d, w) = match &t.stream {
            Some(p) => (
                p.pending.to_string(),
                p.ack_pending.to_string(),
                format!("{:.1}", p.lag_seconds),
                p.dlq.to_string(),
                p.waiting_pulls.to_string(),
            ),
            None => Default::default(),
        };
        outln!(
            "{:<24} {:>9} {:>9} {:>8} {:>6} {:>8}  {:<14} {}",
            t.table,
            p,
            a,
            l,
            d,
            w,
            t.last_applied_lsn.clone().unwrap_or_default(),
            t.last_applied_at.clone().unwrap_or_default()
        )?;
    }
    for t in s.tables.iter().filter(|t| t.worker_restarts > 0) {
        println!();
        println!(
            "worker of {} restarted {} time(s); last failure: {}",
            t.table,
            t.worker_restarts,
            t.worker_error.as_deref().unwrap_or("unknown")
        );
    }
    outln!()?;
    outln!("{}", s.retention)?;
    Ok(())
}
