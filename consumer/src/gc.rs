//! Housekeeping that keeps a long-running destination bounded: tombstones
//! in `syncdata.row_state`, `data_sync_logs`, the daemon registry and the
//! failure counts. One daemon at a time does it (an advisory lock), every
//! `consumer.gc_interval_secs`.
//!
//! Tombstone rule (docs/design.md "Tombstone collection"): a tombstone
//! keeps a late, older INSERT from resurrecting its row, so it may go only
//! once no message at or below its version can be delivered again. The
//! stream holds a table's messages in publish order, which is archive (commit)
//! order, so the version of the table's oldest message still in the stream
//! is a horizon: nothing older can be delivered or replayed. The horizon is
//! used only after `consumer.tombstone_grace_secs` have passed since it was
//! observed, so batches already fetched (or held by a slow process) when it
//! was observed have settled.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use serde::Serialize;
use sqlx::PgPool;
use syncdata_core::config::Config;
use syncdata_core::record::Record;
use syncdata_core::subject;
use syncdata_core::table::TableName;
use syncdata_core::version::{Lsn, Version};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Rows removed per statement, so no statement holds many locks for long.
const CHUNK: i64 = 5000;

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub tombstones: u64,
    pub log_rows: u64,
    pub daemons: u64,
    pub failure_counts: u64,
}

/// Runs the housekeeping every `gc_interval_secs` until `token` is cancelled.
pub async fn run(
    pool: PgPool,
    stream: Stream,
    config: Config,
    tables: Vec<TableName>,
    token: CancellationToken,
) {
    let every = Duration::from_secs(config.consumer.gc_interval_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        log_round(round(&pool, &stream, &config, &tables).await);
    }
}

/// Logs what a round removed (nothing when it removed nothing or another
/// daemon ran it), or why it failed.
pub(crate) fn log_round(outcome: anyhow::Result<Option<Round>>) {
    match outcome {
        Ok(Some(r)) if r != Round::default() => info!(
            tombstones = r.tombstones,
            log_rows = r.log_rows,
            daemons = r.daemons,
            failure_counts = r.failure_counts,
            "housekeeping removed old bookkeeping"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "housekeeping failed; will retry next round"),
    }
}

/// One round; None when another daemon is doing it right now.
pub async fn round(
    pool: &PgPool,
    stream: &Stream,
    config: &Config,
    tables: &[TableName],
) -> anyhow::Result<Option<Round>> {
    // One daemon at a time: a session lock held on one connection.
    let mut lock = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("select pg_try_advisory_lock(hashtext('syncdata.gc'))")
        .fetch_one(&mut *lock)
        .await?;
    if !got {
        return Ok(None);
    }
    let result = round_locked(pool, stream, config, tables).await;
    let _ = sqlx::query("select pg_advisory_unlock(hashtext('syncdata.gc'))")
        .execute(&mut *lock)
        .await;
    result.map(Some)
}

async fn round_locked(
    pool: &PgPool,
    stream: &Stream,
    config: &Config,
    tables: &[TableName],
) -> anyhow::Result<Round> {
    let c = &config.consumer;
    let mut r = Round::default();
    if c.tombstone_grace_secs > 0 {
        for table in tables {
            let observed = horizon(stream, config, table).await;
            match observed {
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
            "delete from syncdata.daemons where coalesce(stopped_at, last_seen) < now() - make_interval(days => $1) \
             and last_seen < now() - make_interval(days => $1)",
        )
        .bind(c.daemon_retention_days as i32)
        .execute(pool)
        .await?
        .rows_affected();
    }
    // Failure counts of messages the stream no longer holds.
    let first_seq = stream.get_info().await.map(|i| i.state.first_sequence);
    if let Ok(first) = first_seq {
        r.failure_counts =
            sqlx::query("delete from syncdata.failed_attempts where stream_seq < $1")
                .bind(first as i64)
                .execute(pool)
                .await?
                .rows_affected();
    }
    Ok(r)
}

/// The version below which nothing of `table` can be delivered or replayed
/// any more: the version of its oldest message in the stream, or, when the
/// stream holds none of its messages, above everything (Lsn::MAX). None
/// when the oldest message cannot be read as a record.
pub async fn horizon(
    stream: &Stream,
    config: &Config,
    table: &TableName,
) -> anyhow::Result<Option<Version>> {
    let subject = subject::table_subject(&config.nats.subject_prefix, &table.schema, &table.table);
    match stream.get_first_raw_message_by_subject(&subject, 1).await {
        Ok(msg) => match oldest_version(&msg.payload, msg.sequence) {
            Ok(version) => Ok(Some(version)),
            Err(e) => {
                debug!(table = %table, error = %e, "oldest message is not a record");
                Ok(None)
            }
        },
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(Some(Version::new(Lsn(i64::MAX as u64), i64::MAX as u64)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The lowest version a message carries: its record's, or the lowest of a
/// chunk's records (`crate::chunk`).
fn oldest_version(payload: &bytes::Bytes, sequence: u64) -> Result<Version, String> {
    match crate::chunk::expand(payload) {
        None => Record::parse(payload)
            .map(|r| r.version(sequence))
            .map_err(|e| e.to_string()),
        Some(records) => {
            let mut oldest: Option<Version> = None;
            for r in records? {
                let v = Record::parse(&r)
                    .map_err(|e| e.to_string())?
                    .version(sequence);
                oldest = Some(oldest.map_or(v, |o| o.min(v)));
            }
            oldest.ok_or_else(|| "empty chunk".to_owned())
        }
    }
}

/// Records the horizon observed now, and removes the tombstones below the
/// horizon observed at least `grace_secs` ago (which then gives way to the
/// new one). Returns how many went.
async fn collect(
    pool: &PgPool,
    table: &TableName,
    observed: Version,
    grace_secs: u64,
) -> anyhow::Result<u64> {
    let name = table.to_string();
    let (lsn, seq) = observed.to_db();
    let aged: Option<(i64, i64)> = sqlx::query_as(
        "select lsn, seq from syncdata.gc_horizon where table_name = $1 \
         and observed_at <= now() - make_interval(secs => $2)",
    )
    .bind(&name)
    .bind(grace_secs as f64)
    .fetch_optional(pool)
    .await?;
    let mut removed = 0u64;
    if let Some((h_lsn, h_seq)) = aged {
        let table_id: Option<i32> =
            sqlx::query_scalar("select id from syncdata.table_state where table_name = $1")
                .bind(&name)
                .fetch_optional(pool)
                .await?;
        if let Some(table_id) = table_id {
            loop {
                // Pure tombstones only (nothing parked on them), below the
                // horizon; rows a batch holds are left for the next round.
                // The horizon's count grows in the same statement, so a
                // crash never loses the count of a chunk deleted.
                let n: i64 = sqlx::query_scalar(
                    "with d as ( \
                       delete from syncdata.row_state r using ( \
                         select key from syncdata.row_state where table_id = $1 and state = 'D' \
                         and parked is null and (lsn, seq) < ($2, $3) limit $4 for update skip locked) k \
                       where r.table_id = $1 and r.key = k.key returning 1), \
                     n as (select count(*)::bigint as n from d), \
                     counted as ( \
                       update syncdata.gc_horizon h set tombstones_collected = h.tombstones_collected + n.n \
                       from n where h.table_name = $5) \
                     select n from n",
                )
                .bind(table_id)
                .bind(h_lsn)
                .bind(h_seq)
                .bind(CHUNK)
                .bind(&name)
                .fetch_one(pool)
                .await?;
                removed += n as u64;
                if n < CHUNK {
                    break;
                }
            }
        }
    }
    // A new observation replaces one that was used (or inserts the first);
    // a younger one is kept until it has aged.
    sqlx::query(
        "insert into syncdata.gc_horizon (table_name, lsn, seq, observed_at, tombstones_collected, last_run_at) \
         values ($1, $2, $3, now(), 0, now()) \
         on conflict (table_name) do update set \
           lsn = case when $4 then excluded.lsn else gc_horizon.lsn end, \
           seq = case when $4 then excluded.seq else gc_horizon.seq end, \
           observed_at = case when $4 then now() else gc_horizon.observed_at end, \
           last_run_at = now()",
    )
    .bind(&name)
    .bind(lsn)
    .bind(seq)
    .bind(aged.is_some())
    .execute(pool)
    .await?;
    if removed > 0 {
        metrics::counter!("syncdata_tombstones_collected_total", "table" => name)
            .increment(removed);
    }
    Ok(removed)
}

/// Removes `data_sync_logs` rows older than `days`, adding them to
/// `syncdata.log_totals` first so `status`'s all-time totals stay whole.
async fn prune_logs(pool: &PgPool, days: u64) -> anyhow::Result<u64> {
    let mut removed = 0u64;
    loop {
        let n: i64 = sqlx::query_scalar(
            "with gone as ( \
               delete from data_sync_logs where ctid = any(array( \
                 select ctid from data_sync_logs l where sync_time < now() - make_interval(days => $1) \
                 and (status <> 'SUCCESS' or exists (select 1 from data_sync_logs n \
                      where n.table_name = l.table_name and n.status = 'SUCCESS' and n.sync_time > l.sync_time)) \
                 limit $2)) \
               returning status, rows_synced), \
             totals as ( \
               update syncdata.log_totals set \
                 records_synced = records_synced + coalesce((select sum(rows_synced) from gone where status = 'SUCCESS'), 0), \
                 errors = errors + (select count(*) from gone where status = 'FAILED'), \
                 rows_pruned = rows_pruned + (select count(*) from gone) \
               returning 1) \
             select count(*) from gone",
        )
        .bind(days as i32)
        .bind(CHUNK)
        .fetch_one(pool)
        .await?;
        removed += n as u64;
        if n < CHUNK {
            return Ok(removed);
        }
    }
}

/// Retention as `status` shows it: the limits in force and what they hold.
#[derive(Debug, Serialize)]
pub struct Retention {
    /// The change stream's live limits (null when NATS is not reachable).
    pub stream: Option<StreamRetention>,
    pub dlq: Option<StreamRetention>,
    /// `consumer.tombstone_grace_secs`, `log_retention_days`,
    /// `daemon_retention_days` in force.
    pub tombstone_grace_secs: u64,
    pub log_retention_days: u64,
    pub daemon_retention_days: u64,
    /// Tombstones (deleted keys' bookkeeping rows) kept now, and removed by
    /// the housekeeping so far.
    pub tombstones: i64,
    pub tombstones_collected: i64,
    /// `data_sync_logs` rows now, and removed by retention so far.
    pub log_rows: i64,
    pub log_rows_pruned: i64,
    /// Last housekeeping round (UTC), null before the first.
    pub last_housekeeping: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StreamRetention {
    /// 0: no limit.
    pub max_age_secs: u64,
    /// -1: no limit.
    pub max_bytes: i64,
    pub max_msgs: i64,
    /// "new" (a full stream refuses publishes) or "old".
    pub discard: &'static str,
    pub bytes: u64,
    pub messages: u64,
    pub first_seq: u64,
}

async fn stream_retention(s: &Stream) -> Option<StreamRetention> {
    let info = s.get_info().await.ok()?;
    Some(StreamRetention {
        max_age_secs: info.config.max_age.as_secs(),
        max_bytes: info.config.max_bytes,
        max_msgs: info.config.max_messages,
        discard: match info.config.discard {
            async_nats::jetstream::stream::DiscardPolicy::New => "new",
            _ => "old",
        },
        bytes: info.state.bytes,
        messages: info.state.messages,
        first_seq: info.state.first_sequence,
    })
}

/// What `status` reports of retention.
pub async fn retention(
    pool: &PgPool,
    config: &Config,
    streams: Option<(&Stream, &Stream)>,
) -> anyhow::Result<Retention> {
    let (stream, dlq) = match streams {
        Some((c, d)) => (stream_retention(c).await, stream_retention(d).await),
        None => (None, None),
    };
    let (tombstones, collected, last): (i64, i64, Option<String>) = sqlx::query_as(
        "select (select count(*) from syncdata.row_state where state = 'D'), \
                (select coalesce(sum(tombstones_collected), 0)::bigint from syncdata.gc_horizon), \
                (select to_char(max(last_run_at) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') from syncdata.gc_horizon)",
    )
    .fetch_one(pool)
    .await?;
    let (log_rows, pruned): (i64, i64) = sqlx::query_as(
        "select (select count(*) from data_sync_logs), \
                (select coalesce(sum(rows_pruned), 0)::bigint from syncdata.log_totals)",
    )
    .fetch_one(pool)
    .await?;
    let c = &config.consumer;
    Ok(Retention {
        stream,
        dlq,
        tombstone_grace_secs: c.tombstone_grace_secs,
        log_retention_days: c.log_retention_days,
        daemon_retention_days: c.daemon_retention_days,
        tombstones,
        tombstones_collected: collected,
        log_rows,
        log_rows_pruned: pruned,
        last_housekeeping: last,
    })
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limit = |n: i64| {
            if n < 0 {
                "none".to_owned()
            } else {
                n.to_string()
            }
        };
        for (name, s) in [("stream", &self.stream), ("dlq", &self.dlq)] {
            match s {
                Some(s) => writeln!(
                    f,
                    "retention {name}: {} messages, {} bytes (max_age {}s, max_bytes {}, max_msgs {}, discard {})",
                    s.messages,
                    s.bytes,
                    s.max_age_secs,
                    limit(s.max_bytes),
                    limit(s.max_msgs),
                    s.discard
                )?,
                None => writeln!(f, "retention {name}: unknown (NATS not reachable)")?,
            }
        }
        writeln!(
            f,
            "retention tombstones: {} kept, {} collected (grace {}s)",
            self.tombstones, self.tombstones_collected, self.tombstone_grace_secs
        )?;
        write!(
            f,
            "retention logs: {} rows, {} pruned (kept {} days); daemons kept {} days",
            self.log_rows,
            self.log_rows_pruned,
            self.log_retention_days,
            self.daemon_retention_days
        )
    }
}
