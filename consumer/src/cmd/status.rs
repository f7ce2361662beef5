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
    /// Dead letters now waiting in this database's dead-letter subjects
    /// (drops when they are replayed or purged); when NATS is not
    /// reachable, FAILED rows of `data_sync_logs` of the last 24 hours.
    pub errors: i64,
    /// FAILED rows of `data_sync_logs`, all time (the audit log).
    pub errors_logged: i64,
    pub daemons: i64,
    /// Records applied per second over the last minute, all tables.
    pub applied_per_second: f64,
    /// What needs an operator's attention, one sentence each; empty when
    /// all is well (then `status --check` exits 0).
    pub attention: Vec<String>,
    pub tables: Vec<TableStatus>,
    /// Retention limits and what the housekeeping did (docs/operations.md
    /// "Retention").
    pub retention: crate::gc::Retention,
}

/// A table's state, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    /// The producer holds the table's records back (sanitization halted
    /// it: a column without a rule, no entry in the rules file); nothing of
    /// it arrives until its rules are complete (`syncdata-producer status`).
    HaltedAtProducer,
    /// Records of the table were dead-lettered here (`syncdata dlq`).
    DeadLetters,
    /// Changes are waiting and no daemon applies this database.
    Stopped,
    /// NATS could not be reached: no stream figures.
    Unknown,
    /// No change of the table ever reached this database and none is
    /// waiting: the producer does not send it (not captured, excluded,
    /// halted at the producer, or no writes at the source yet).
    WaitingForData,
    /// Changes are waiting and being applied.
    Syncing,
    /// Nothing waiting.
    CaughtUp,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::HaltedAtProducer => "halted at the producer",
            TableState::DeadLetters => "dead letters",
            TableState::Stopped => "stopped",
            TableState::Unknown => "unknown",
            TableState::WaitingForData => "waiting for data",
            TableState::Syncing => "syncing",
            TableState::CaughtUp => "caught up",
        }
    }

    fn needs_attention(self) -> bool {
        !matches!(self, TableState::Syncing | TableState::CaughtUp)
    }
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
    pub state: TableState,
    /// Messages not yet applied (pending + in flight); None without NATS.
    pub backlog: Option<u64>,
    /// Records applied per second over the last minute.
    pub applied_per_second: f64,
    /// Seconds until the backlog is applied at that rate: 0 when caught
    /// up, None when nothing is being applied.
    pub eta_seconds: Option<f64>,
    /// Source commit time of the newest change applied (end-to-end
    /// freshness); None until a change with a commit time was applied.
    pub source_commit_at: Option<String>,
    /// Seconds between that commit time and now.
    pub freshness_seconds: Option<f64>,
    /// Why the producer holds the table back, when it does (state
    /// `halted_at_producer`); None when not, or when NATS could not be read.
    pub producer_halt: Option<String>,
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
    let (last_sync, records, errors_logged, errors_recent): (Option<String>, Option<i64>, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select to_char(max(sync_time) filter (where status = 'SUCCESS') at time zone 'UTC', {TS}), \
                (coalesce(sum(rows_synced) filter (where status = 'SUCCESS'), 0) \
                 + (select coalesce(sum(records_synced), 0) from syncdata.log_totals))::bigint, \
                (count(*) filter (where status = 'FAILED') \
                 + (select coalesce(sum(errors), 0) from syncdata.log_totals))::bigint, \
                count(*) filter (where status = 'FAILED' and sync_time > now() - interval '1 day') \
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
    let producer_halts = match &streams {
        Ok((_, _, js)) => match syncdata_core::halts::read(js, &config.nats).await {
            Ok(h) => h.tables,
            Err(e) => {
                errln!("warning: the producer's halted tables are unknown: {e:#}");
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    };
    let mut out = Vec::new();
    for t in &tables {
        let (lsn, at) = last_applied(&pool, t).await?;
        let stream = match &streams {
            Ok((changes, dlq, _)) => backlog::table_backlog(changes, dlq, config, &instance, t)
                .await
                .ok(),
            Err(_) => None,
        };
        let (worker_restarts, worker_error) = worker_restarts(&pool, t).await?;
        let (rate, source_commit_at, freshness_seconds) = progress(&pool, t).await?;
        let backlog = stream.as_ref().map(|b| b.pending + b.ack_pending);
        let producer_halt = producer_halts
            .iter()
            .find(|h| h.is(t))
            .map(|h| h.reason.clone());
        let state = match &stream {
            None => TableState::Unknown,
            Some(_) if producer_halt.is_some() => TableState::HaltedAtProducer,
            Some(b) if b.dlq > 0 => TableState::DeadLetters,
            Some(b) if b.pending + b.ack_pending > 0 && daemons == 0 => TableState::Stopped,
            Some(b) if b.pending + b.ack_pending > 0 => TableState::Syncing,
            Some(_) if lsn.is_none() => TableState::WaitingForData,
            Some(_) => TableState::CaughtUp,
        };
        let eta_seconds = match backlog {
            Some(0) => Some(0.0),
            Some(n) if rate > 0.0 => Some(n as f64 / rate),
            _ => None,
        };
        out.push(TableStatus {
            table: t.to_string(),
            last_applied_lsn: lsn,
            last_applied_at: at,
            stream,
            worker_restarts,
            worker_error,
            state,
            backlog,
            applied_per_second: rate,
            eta_seconds,
            source_commit_at,
            freshness_seconds,
            producer_halt,
        });
    }
    let retention =
        crate::gc::retention(&pool, config, streams.as_ref().ok().map(|(c, d, _)| (c, d))).await?;
    let mut attention = Vec::new();
    if daemons == 0 {
        attention.push("no daemon applies this database (`syncdata start`)".to_owned());
    }
    if streams.is_err() {
        attention.push("NATS not reachable: stream figures unknown".to_owned());
    }
    for t in out.iter().filter(|t| t.state.needs_attention()) {
        match (&t.state, &t.producer_halt) {
            (TableState::Unknown, _) => {}
            (TableState::HaltedAtProducer, Some(why)) => {
                attention.push(format!("{}: halted at the producer: {why}", t.table))
            }
            _ => attention.push(format!("{}: {}", t.table, t.state.as_str())),
        }
    }
    let errors = match &streams {
        Ok(_) => out
            .iter()
            .filter_map(|t| t.stream.as_ref())
            .map(|b| b.dlq as i64)
            .sum(),
        Err(_) => errors_recent,
    };
    Ok(Status {
        retention,
        status: if daemons > 0 { "active" } else { "inactive" },
        sync_frequency_seconds: config.data_sync_freq,
        start_time,
        last_sync,
        records_synced: records.unwrap_or(0),
        errors,
        errors_logged,
        daemons,
        applied_per_second: out.iter().map(|t| t.applied_per_second).sum(),
        attention,
        tables: out,
    })
}

/// Over the last minute: records applied per second; and the newest source
/// commit time applied, with its age in seconds.
async fn progress(
    pool: &PgPool,
    t: &TableName,
) -> anyhow::Result<(f64, Option<String>, Option<f64>)> {
    let (applied, newest, age): (Option<i64>, Option<String>, Option<f64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select (select sum(rows_synced)::int8 from data_sync_logs \
                      where table_name = $1 and status = 'SUCCESS' \
                        and sync_time > now() - interval '{RATE_WINDOW} seconds'), \
                    to_char(f.at at time zone 'UTC', {TS}), \
                    extract(epoch from now() - f.at)::float8 \
             from (select max(source_commit_at) as at from \
                     (select source_commit_at from data_sync_logs \
                       where table_name = $1 and status = 'SUCCESS' \
                       order by sync_time desc limit 1000) r) f"
        )))
        .bind(t.to_string())
        .fetch_one(pool)
        .await?;
    let rate = applied.unwrap_or(0) as f64 / RATE_WINDOW as f64;
    Ok((rate, newest, age.map(|a| a.max(0.0))))
}

/// The window of the applied rate, in seconds.
const RATE_WINDOW: i64 = 60;

pub(crate) async fn streams(
    config: &Config,
) -> anyhow::Result<(
    jetstream::stream::Stream,
    jetstream::stream::Stream,
    jetstream::Context,
)> {
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
    Ok((changes, dlq, js))
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

/// `status --check`'s exit status when something needs attention.
pub const CHECK_ATTENTION: u8 = 2;

/// Prints the status; with `check`, returns [`CHECK_ATTENTION`] when
/// anything needs attention (the lines of `attention`), else 0.
pub async fn run(config: &Config, json: bool, check: bool) -> anyhow::Result<u8> {
    let s = gather(config).await?;
    let code = if check && !s.attention.is_empty() {
        CHECK_ATTENTION
    } else {
        0
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(code);
    }
    let none = || "never".to_owned();
    outln!("status: {}", s.status)?;
    outln!("sync frequency: {} seconds", s.sync_frequency_seconds)?;
    outln!("start time: {}", s.start_time.clone().unwrap_or_else(none))?;
    outln!("last sync: {}", s.last_sync.clone().unwrap_or_else(none))?;
    outln!("records synced: {}", s.records_synced)?;
    outln!("errors: {}", s.errors)?;
    outln!("daemons: {}", s.daemons)?;
    outln!(
        "applied: {:.1} records/s (last minute)",
        s.applied_per_second
    )?;
    outln!()?;
    if s.tables.is_empty() {
        outln!("{}", crate::daemon::NO_TABLES)?;
        return Ok(code);
    }
    outln!("synced tables ({}):", s.tables.len())?;
    outln!(
        "  - {:<22} {:<22} {:>9} {:>8} {:>8} {:>6} {:>10}  {:<14} last applied at",
        "table",
        "state",
        "backlog",
        "rate/s",
        "eta",
        "dlq",
        "fresh",
        "last lsn"
    )?;
    for t in &s.tables {
        let dlq = t
            .stream
            .as_ref()
            .map(|b| b.dlq.to_string())
            .unwrap_or_default();
        outln!(
            "  - {:<22} {:<22} {:>9} {:>8.1} {:>8} {:>6} {:>10}  {:<14} {}",
            t.table,
            t.state.as_str(),
            t.backlog
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into()),
            t.applied_per_second,
            t.eta_seconds.map(duration).unwrap_or_else(|| "-".into()),
            dlq,
            t.freshness_seconds
                .map(duration)
                .unwrap_or_else(|| "-".into()),
            t.last_applied_lsn.clone().unwrap_or_default(),
            t.last_applied_at.clone().unwrap_or_default()
        )?;
    }
    for t in s.tables.iter().filter(|t| t.worker_restarts > 0) {
        outln!()?;
        outln!(
            "worker of {} restarted {} time(s); last failure: {}",
            t.table,
            t.worker_restarts,
            t.worker_error.as_deref().unwrap_or("unknown")
        )?;
    }
    outln!()?;
    outln!("{}", s.retention)?;
    if !s.attention.is_empty() {
        outln!()?;
        outln!("needs attention:")?;
        for a in &s.attention {
            outln!("  - {a}")?;
        }
    }
    Ok(code)
}

/// `42s`, `3m05s`, `2h10m`, `3d4h`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(super::duration(0.2), "0s");
        assert_eq!(super::duration(185.0), "3m05s");
        assert_eq!(super::duration(7800.0), "2h10m");
        assert_eq!(super::duration(3.0 * 86400.0 + 7200.0), "3d2h");
    }
}
