//! `syncdata report [TABLE…] [--since 24h] [--json | --html]`: what the
//! sync did over a period, per table, from the records it keeps itself.
//!
//! Every figure has one source, so it can be checked against it:
//! - `data_sync_logs` (one row per applied batch, one per failed record):
//!   batches, records applied by op, superseded deliveries (duplicates,
//!   replays, changes overtaken by newer ones), rows parked waiting for
//!   their image, DELETEs of rows not present, failures, and end-to-end lag
//!   (apply time minus source commit time) and freshness;
//! - `data_sync_metrics` (the periodic FREQ roll-up of seed 004): records
//!   added/updated/deleted of the periods that start inside the window;
//! - `syncdata.row_state` (`syncdata_row_state` in a SQLite target's file):
//!   rows parked now;
//! - `syncdata.schema_changes` (PostgreSQL targets): the schema changes
//!   taken in the window (applied, halted on, resumed, ignored, and a
//!   resync's rebuild), each with its statements (docs/schema.md);
//! - the dead-letter stream: dead letters waiting now (absent when NATS
//!   cannot be reached);
//! - with `--source`: row drift, the difference between the source's and the
//!   local row counts.
//!
//! The HTML form is one self-contained file (inline CSS, an SVG bar chart of
//! applied records over time per table; no script, no external resource).

use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;
use sqlx::{PgPool, SqlitePool};
use syncdata_core::config::Config;
use syncdata_core::outln;
use syncdata_core::table::TableName;

use crate::local::LocalStore;

/// Buckets of the chart (the window is cut into this many).
const BUCKETS: i64 = 24;

/// `report`'s command line.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    pub tables: Vec<String>,
    /// The window: `30m`, `24h`, `7d`, `90s`.
    pub since: String,
    pub json: bool,
    pub html: bool,
    /// The source database, for row drift.
    pub source: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// The window, RFC 3339 UTC.
    pub from: String,
    pub to: String,
    pub window_seconds: i64,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Serialize, Default)]
pub struct TableReport {
    pub table: String,
    /// Batches applied (SUCCESS rows of `data_sync_logs`).
    pub batches: i64,
    /// Records that changed local state.
    pub applied: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    /// Records older than what was applied (duplicate or replayed
    /// deliveries, changes a newer one overtook): nothing to do.
    pub superseded: i64,
    /// Rows parked by the window's batches (a partial UPDATE of a row not
    /// present waits for its image).
    pub parked: i64,
    /// DELETEs of rows that were not present (logged, skipped; the
    /// tombstone still stops a late INSERT).
    pub deletes_of_missing: i64,
    /// Records that failed permanently (FAILED rows: dead-lettered).
    pub failed: i64,
    /// `data_sync_metrics` FREQ periods starting in the window (the
    /// periodic roll-up; lags the log by up to `data_sync_freq`).
    pub metrics: MetricsSums,
    /// Rows parked now.
    pub parked_now: i64,
    /// Dead letters waiting now; None when NATS cannot be reached.
    pub dead_letters_waiting: Option<u64>,
    /// End-to-end lag (apply time minus source commit time) of the
    /// window's batches, seconds; None without commit times.
    pub lag_seconds: Option<LagFigures>,
    /// Source commit time of the newest change applied in the window.
    pub freshest_source_commit_at: Option<String>,
    /// Rows at the source minus rows here (with `--source`).
    pub row_drift: Option<i64>,
    /// Records applied per chart bucket, oldest first (`BUCKETS` of them).
    pub applied_over_time: Vec<i64>,
    /// Schema changes taken in the window (`syncdata.schema_changes`),
    /// oldest first.
    pub schema_changes: Vec<SchemaChange>,
}

/// One row of `syncdata.schema_changes`.
#[derive(Debug, Serialize)]
pub struct SchemaChange {
    /// When it was taken, RFC 3339 UTC.
    pub at: String,
    /// The SCHEMA record's version in the stream.
    pub version: String,
    /// `applied`, `unchanged`, `halted`, `resumed`, `ignored`, or a
    /// resync's `rewound`, `replayed`, `restored`.
    pub outcome: String,
    /// The SQL run (applied), or to run (halted); one statement a line.
    pub statements: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct MetricsSums {
    pub records_added: i64,
    pub records_updated: i64,
    pub records_deleted: i64,
}

#[derive(Debug, Serialize)]
pub struct LagFigures {
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

/// `30m`, `24h`, `7d`, `90s`, `2w` → seconds.
pub fn parse_window(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = digits.parse().ok().filter(|&n| n > 0).with_context(|| {
        format!("--since {s:?}: expected a positive number and a unit, e.g. 24h")
    })?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => anyhow::bail!("--since {s:?}: the unit is one of s, m, h, d, w (e.g. 24h, 7d)"),
    };
    n.checked_mul(unit_secs)
        .filter(|&v| v <= 3650 * 86_400)
        .with_context(|| format!("--since {s:?}: at most ten years"))
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

pub async fn gather(config: &Config, args: &ReportArgs) -> anyhow::Result<Report> {
    let window = parse_window(&args.since)?;
    let local = LocalStore::open(config).await?;
    let tables = local
        .named_or_whitelisted(&args.tables, "report on")
        .await?;
    let (from, to, now_epoch): (String, String, f64) = match &local {
        LocalStore::Pg(pool) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select to_char((now() - make_interval(secs => $1)) at time zone 'UTC', {TS}), \
                    to_char(now() at time zone 'UTC', {TS}), extract(epoch from now())::float8"
            )))
            .bind(window as f64)
            .fetch_one(pool)
            .await?
        }
        LocalStore::Sqlite(pool) => {
            sqlx::query_as(
                "select strftime('%Y-%m-%dT%H:%M:%SZ', unixepoch() - ?, 'unixepoch'), \
                    strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), unixepoch('subsec')",
            )
            .bind(window)
            .fetch_one(pool)
            .await?
        }
    };
    let dlq = dead_letters(config, &local, &tables).await;
    let mut source = match &args.source {
        Some(url) => Some(
            crate::cmd::verify::connect_source(url)
                .await
                .context("--source: cannot connect for row drift")?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    for t in &tables {
        let mut r = match &local {
            LocalStore::Pg(pool) => {
                let mut r = from_log(pool, t, window, now_epoch).await?;
                r.metrics = metrics(pool, t, window).await?;
                r.parked_now = parked_now(pool, t).await?;
                r.schema_changes = schema_changes(pool, t, window).await?;
                r
            }
            LocalStore::Sqlite(pool) => sqlite::table_report(pool, t, window, now_epoch).await?,
        };
        r.dead_letters_waiting = dlq
            .as_ref()
            .map(|counts| counts.get(&t.to_string()).copied().unwrap_or(0));
        if let Some(src) = source.as_mut() {
            let here = match &local {
                LocalStore::Pg(pool) => count_rows(pool, t).await?,
                LocalStore::Sqlite(pool) => sqlite::count_rows(pool, t).await?,
            };
            let there = count_rows(&mut *src, t)
                .await
                .with_context(|| format!("--source: counting {t}"))?;
            r.row_drift = Some(there - here);
        }
        out.push(r);
    }
    Ok(Report {
        from,
        to,
        window_seconds: window,
        tables: out,
    })
}

/// Records applied per chart bucket, oldest first, from (bucket, records)
/// rows.
fn over_time(buckets: Vec<(i64, i64)>) -> Vec<i64> {
    let mut applied_over_time = vec![0i64; BUCKETS as usize];
    for (i, n) in buckets {
        if let Some(slot) = usize::try_from(i)
            .ok()
            .and_then(|i| applied_over_time.get_mut(i))
        {
            *slot += n;
        }
    }
    applied_over_time
}

/// The same figures from a SQLite target's file: the same tables
/// (`data_sync_logs`, `data_sync_metrics`), SQLite's SQL; the lag
/// percentiles are computed here (SQLite has no percentile function).
mod sqlite {
    use super::*;

    pub async fn table_report(
        pool: &SqlitePool,
        t: &TableName,
        window: i64,
        now_epoch: f64,
    ) -> anyhow::Result<TableReport> {
        let since = now_epoch - window as f64;
        type Row = (i64, i64, i64, i64, i64, i64, i64, i64, i64, Option<String>);
        let row: Row = sqlx::query_as(
            "select count(case when status = 'SUCCESS' then 1 end), \
                    coalesce(sum(case when status = 'SUCCESS' then rows_synced end), 0), \
                    coalesce(sum(inserted), 0), coalesce(sum(updated), 0), \
                    coalesce(sum(deleted), 0), coalesce(sum(superseded), 0), \
                    coalesce(sum(parked), 0), coalesce(sum(deletes_of_missing), 0), \
                    count(case when status = 'FAILED' then 1 end), \
                    strftime('%Y-%m-%dT%H:%M:%SZ', max(unixepoch(source_commit_at, 'subsec')), 'unixepoch') \
             from data_sync_logs where table_name = ? and unixepoch(sync_time, 'subsec') > ?",
        )
        .bind(t.to_string())
        .bind(since)
        .fetch_one(pool)
        .await?;
        let mut lags: Vec<f64> = sqlx::query_scalar(
            "select unixepoch(sync_time, 'subsec') - unixepoch(source_commit_at, 'subsec') \
             from data_sync_logs where table_name = ? and status = 'SUCCESS' \
               and source_commit_at is not null and unixepoch(sync_time, 'subsec') > ?",
        )
        .bind(t.to_string())
        .bind(since)
        .fetch_all(pool)
        .await?;
        lags.sort_by(f64::total_cmp);
        let bucket = (window as f64 / BUCKETS as f64).max(1.0);
        let buckets: Vec<(i64, i64)> = sqlx::query_as(
            "select min(cast((unixepoch(sync_time, 'subsec') - ?) / ? as integer), ? - 1), \
                    sum(rows_synced) \
             from data_sync_logs where table_name = ? and status = 'SUCCESS' \
               and unixepoch(sync_time, 'subsec') > ? group by 1",
        )
        .bind(since)
        .bind(bucket)
        .bind(BUCKETS)
        .bind(t.to_string())
        .bind(since)
        .fetch_all(pool)
        .await?;
        let (a, u, d): (i64, i64, i64) = sqlx::query_as(
            "select coalesce(sum(records_added), 0), coalesce(sum(records_updated), 0), \
                    coalesce(sum(records_deleted), 0) \
             from data_sync_metrics where table_name = ? and period_type = 'FREQ' \
               and unixepoch(period_start) > ?",
        )
        .bind(t.to_string())
        .bind(since)
        .fetch_one(pool)
        .await?;
        let parked_now: i64 = sqlx::query_scalar(
            "select count(*) from syncdata_row_state r join syncdata_table_state s on s.id = r.table_id \
             where s.table_name = ? and r.state = 'P'",
        )
        .bind(crate::apply::sqlite::local_name(t))
        .fetch_one(pool)
        .await?;
        Ok(TableReport {
            lag_seconds: percentiles(&lags),
            applied_over_time: over_time(buckets),
            metrics: MetricsSums {
                records_added: a,
                records_updated: u,
                records_deleted: d,
            },
            parked_now,
            ..from_log_counts(
                t,
                [
                    row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8,
                ],
                row.9,
            )
        })
    }

    /// Median, p99 (interpolated, as PostgreSQL's percentile_cont) and
    /// max of sorted lags; None when there are none.
    fn percentiles(sorted: &[f64]) -> Option<LagFigures> {
        let at = |p: f64| {
            let pos = p * (sorted.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        };
        (!sorted.is_empty()).then(|| LagFigures {
            median: at(0.5).max(0.0),
            p99: at(0.99).max(0.0),
            max: sorted[sorted.len() - 1].max(0.0),
        })
    }

    pub async fn count_rows(pool: &SqlitePool, t: &TableName) -> anyhow::Result<i64> {
        let local = crate::apply::sqlite::local_name(t);
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {}",
            crate::apply::sqlite::quote(&local)
        )))
        .fetch_one(pool)
        .await?)
    }
}

/// Everything `data_sync_logs` says about the table in the window.
async fn from_log(
    pool: &PgPool,
    t: &TableName,
    window: i64,
    now_epoch: f64,
) -> anyhow::Result<TableReport> {
    type Row = (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<String>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select count(*) filter (where status = 'SUCCESS'), \
                coalesce(sum(rows_synced) filter (where status = 'SUCCESS'), 0)::int8, \
                coalesce(sum(inserted), 0)::int8, coalesce(sum(updated), 0)::int8, \
                coalesce(sum(deleted), 0)::int8, coalesce(sum(superseded), 0)::int8, \
                coalesce(sum(parked), 0)::int8, coalesce(sum(deletes_of_missing), 0)::int8, \
                count(*) filter (where status = 'FAILED'), \
                to_char(max(source_commit_at) at time zone 'UTC', {TS}), \
                percentile_cont(0.5) within group (order by extract(epoch from sync_time - source_commit_at)), \
                percentile_cont(0.99) within group (order by extract(epoch from sync_time - source_commit_at)), \
                max(extract(epoch from sync_time - source_commit_at))::float8 \
         from data_sync_logs \
         where table_name = $1 and sync_time > now() - make_interval(secs => $2)"
    )))
    .bind(t.to_string())
    .bind(window as f64)
    .fetch_one(pool)
    .await?;
    let bucket = (window as f64 / BUCKETS as f64).max(1.0);
    let start = now_epoch - window as f64;
    let buckets: Vec<(i64, i64)> = sqlx::query_as(
        "select least(floor((extract(epoch from sync_time) - $2) / $3)::int8, $4 - 1), \
                sum(rows_synced)::int8 \
         from data_sync_logs \
         where table_name = $1 and status = 'SUCCESS' \
           and extract(epoch from sync_time) > $2 \
         group by 1",
    )
    .bind(t.to_string())
    .bind(start)
    .bind(bucket)
    .bind(BUCKETS)
    .fetch_all(pool)
    .await?;
    let applied_over_time = over_time(buckets);
    let lag_seconds = match (row.10, row.11, row.12) {
        (Some(median), Some(p99), Some(max)) => Some(LagFigures {
            median: median.max(0.0),
            p99: p99.max(0.0),
            max: max.max(0.0),
        }),
        _ => None,
    };
    Ok(TableReport {
        lag_seconds,
        applied_over_time,
        ..from_log_counts(
            t,
            [
                row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8,
            ],
            row.9,
        )
    })
}

/// A table's figures from its `data_sync_logs` sums, which both targets
/// select in this order: batches, applied, inserted, updated, deleted,
/// superseded, parked, deletes of missing rows, failed.
fn from_log_counts(
    t: &TableName,
    n: [i64; 9],
    freshest_source_commit_at: Option<String>,
) -> TableReport {
    let [batches, applied, inserted, updated, deleted, superseded, parked, deletes_of_missing, failed] =
        n;
    TableReport {
        table: t.to_string(),
        batches,
        applied,
        inserted,
        updated,
        deleted,
        superseded,
        parked,
        deletes_of_missing,
        failed,
        freshest_source_commit_at,
        ..TableReport::default()
    }
}

async fn metrics(pool: &PgPool, t: &TableName, window: i64) -> anyhow::Result<MetricsSums> {
    let (a, u, d): (i64, i64, i64) = sqlx::query_as(
        "select coalesce(sum(records_added), 0)::int8, coalesce(sum(records_updated), 0)::int8, \
                coalesce(sum(records_deleted), 0)::int8 \
         from data_sync_metrics \
         where table_name = $1 and period_type = 'FREQ' \
           and period_start > now() - make_interval(secs => $2)",
    )
    .bind(t.to_string())
    .bind(window as f64)
    .fetch_one(pool)
    .await?;
    Ok(MetricsSums {
        records_added: a,
        records_updated: u,
        records_deleted: d,
    })
}

/// The table's rows of `syncdata.schema_changes` in the window.
async fn schema_changes(
    pool: &PgPool,
    t: &TableName,
    window: i64,
) -> anyhow::Result<Vec<SchemaChange>> {
    let rows: Vec<(String, i64, i64, String, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select to_char(at at time zone 'UTC', {TS}), lsn, seq, outcome, statements \
             from syncdata.schema_changes \
             where table_name = $1 and at > now() - make_interval(secs => $2) order by id"
        )))
        .bind(t.to_string())
        .bind(window as f64)
        .fetch_all(pool)
        .await
        .with_context(|| format!("reading the schema changes of {t}"))?;
    Ok(rows
        .into_iter()
        .map(|(at, lsn, seq, outcome, statements)| SchemaChange {
            at,
            version: crate::schema::version_of(lsn, seq).to_string(),
            outcome,
            statements,
        })
        .collect())
}

/// "2 applied, 1 halted" (in the order first seen); "none".
fn outcomes(changes: &[SchemaChange]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for c in changes {
        match counts.iter_mut().find(|(o, _)| *o == c.outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((&c.outcome, 1)),
        }
    }
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(o, n)| format!("{n} {o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn parked_now(pool: &PgPool, t: &TableName) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from syncdata.row_state r join syncdata.table_state s on s.id = r.table_id \
         where s.table_name = $1 and r.state = 'P'",
    )
    .bind(t.to_string())
    .fetch_one(pool)
    .await?)
}

async fn count_rows<'c, E>(db: E, t: &TableName) -> anyhow::Result<i64>
where
    E: sqlx::PgExecutor<'c>,
{
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from {}",
        t.quoted()
    )))
    .fetch_one(db)
    .await?)
}

/// Dead letters waiting per table, or None when NATS cannot be reached.
async fn dead_letters(
    config: &Config,
    local: &LocalStore,
    tables: &[TableName],
) -> Option<std::collections::HashMap<String, u64>> {
    let counts = async {
        let (_, dlq, _) = crate::cmd::status::streams(config).await?;
        let instance = local.instance_id().await?;
        let mut counts = std::collections::HashMap::new();
        for t in tables {
            let n = crate::backlog::dlq_count(&dlq, config, &instance, t).await?;
            counts.insert(t.to_string(), n);
        }
        anyhow::Ok(counts)
    };
    match counts.await {
        Ok(m) => Some(m),
        Err(e) => {
            syncdata_core::errln!("warning: NATS not reachable, dead letters left out: {e:#}");
            None
        }
    }
}

pub async fn run(config: &Config, args: ReportArgs) -> anyhow::Result<()> {
    if args.json && args.html {
        anyhow::bail!("--json and --html exclude each other: pick one");
    }
    let report = gather(config, &args).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else if args.html {
        outln!("{}", html(&report))?;
    } else {
        text(&report)?;
    }
    Ok(())
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn text(r: &Report) -> anyhow::Result<()> {
    outln!("sync report {} .. {}", r.from, r.to)?;
    for t in &r.tables {
        outln!()?;
        outln!("{}", t.table)?;
        outln!(
            "  applied       {} in {} batches (inserted {}, updated {}, deleted {})",
            t.applied,
            t.batches,
            t.inserted,
            t.updated,
            t.deleted
        )?;
        outln!(
            "  superseded    {} (duplicate or replayed deliveries, overtaken changes)",
            t.superseded
        )?;
        outln!(
            "  parked        {} by these batches, {} waiting now",
            t.parked,
            t.parked_now
        )?;
        outln!("  deletes of missing rows {}", t.deletes_of_missing)?;
        outln!(
            "  failed        {} (dead letters waiting now: {})",
            t.failed,
            opt(&t.dead_letters_waiting)
        )?;
        match &t.lag_seconds {
            Some(l) => outln!(
                "  lag           median {:.1} s, p99 {:.1} s, max {:.1} s",
                l.median,
                l.p99,
                l.max
            )?,
            None => outln!("  lag           - (no source commit times in the window)")?,
        }
        outln!("  freshest      {}", opt(&t.freshest_source_commit_at))?;
        if let Some(d) = t.row_drift {
            outln!("  row drift     {d} (source rows minus local rows)")?;
        }
        outln!("  schema        {}", outcomes(&t.schema_changes))?;
        for c in &t.schema_changes {
            outln!("    {} {} {}", c.at, c.version, c.outcome)?;
            for line in c.statements.iter().flat_map(|s| s.lines()) {
                outln!("      {line}")?;
            }
        }
    }
    Ok(())
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One bar per bucket, heights proportional to the bucket's applied
/// records (the tallest bar fills the chart); each bar's `<title>` holds
/// its figure.
fn chart(values: &[i64]) -> String {
    const W: i64 = 480;
    const H: i64 = 80;
    let n = values.len().max(1) as i64;
    let bar = W / n;
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"records applied over time\">"
    );
    for (i, &v) in values.iter().enumerate() {
        let h = v * H / max;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" data-value=\"{v}\"><title>{v}</title></rect>",
            i as i64 * bar,
            H - h,
            (bar - 1).max(1),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn html(r: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>syncdata report {from} .. {to}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right}}\
         th:first-child,td:first-child{{text-align:left}}section{{margin-top:2em}}\
         rect{{fill:#3b7dd8}}table.schema td{{text-align:left;vertical-align:top}}\
         pre{{margin:0}}</style></head><body>\
         <h1>syncdata report</h1><p>{from} .. {to}</p>",
        from = esc(&r.from),
        to = esc(&r.to),
    );
    for t in &r.tables {
        let lag = t.lag_seconds.as_ref().map_or_else(
            || "-".to_owned(),
            |l| format!("{:.1} / {:.1} / {:.1}", l.median, l.p99, l.max),
        );
        let rows: [(&str, String); 13] = [
            ("batches", t.batches.to_string()),
            ("applied", t.applied.to_string()),
            ("inserted", t.inserted.to_string()),
            ("updated", t.updated.to_string()),
            ("deleted", t.deleted.to_string()),
            ("superseded", t.superseded.to_string()),
            ("parked (now)", format!("{} ({})", t.parked, t.parked_now)),
            ("deletes of missing rows", t.deletes_of_missing.to_string()),
            ("failed", t.failed.to_string()),
            ("dead letters waiting", opt(&t.dead_letters_waiting)),
            ("lag median / p99 / max (s)", lag),
            ("row drift", opt(&t.row_drift)),
            ("schema changes", outcomes(&t.schema_changes)),
        ];
        let _ = write!(h, "<section><h2>{}</h2><table>", esc(&t.table));
        for (k, v) in rows {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        let _ = write!(h, "</table>");
        if !t.schema_changes.is_empty() {
            let _ = write!(
                h,
                "<table class=\"schema\"><tr><th>schema change taken</th><th>version</th>\
                 <th>outcome</th><th>statements</th></tr>"
            );
            for c in &t.schema_changes {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
                    esc(&c.at),
                    esc(&c.version),
                    esc(&c.outcome),
                    esc(c.statements.as_deref().unwrap_or(""))
                );
            }
            h.push_str("</table>");
        }
        let _ = write!(
            h,
            "<p>records applied over the window</p>{}</section>",
            chart(&t.applied_over_time)
        );
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_outcomes_count_in_the_order_first_seen() {
        let change = |outcome: &str| SchemaChange {
            at: "2026-12-04T09:00:00Z".into(),
            version: "0/1#0".into(),
            outcome: outcome.into(),
            statements: None,
        };
        assert_eq!(outcomes(&[]), "none");
        let changes = ["applied", "halted", "applied", "resumed"].map(change);
        assert_eq!(outcomes(&changes), "2 applied, 1 halted, 1 resumed");
    }

    #[test]
    fn windows_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_window("24h").unwrap(), 86_400);
        assert_eq!(parse_window("30m").unwrap(), 1800);
        assert_eq!(parse_window("7d").unwrap(), 604_800);
        assert_eq!(parse_window("90s").unwrap(), 90);
        assert_eq!(parse_window("2").unwrap(), 7200);
        for bad in [
            "",
            "h",
            "0h",
            "-1h",
            "3y",
            "99999999999999999999d",
            "100000d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_chart_scales_to_the_tallest_bar_and_escapes_nothing_it_should_not() {
        let svg = chart(&[0, 5, 10]);
        assert_eq!(svg.matches("<rect ").count(), 3);
        assert!(svg.contains("height=\"80\" data-value=\"10\""), "{svg}");
        assert!(svg.contains("height=\"40\" data-value=\"5\""), "{svg}");
        assert!(svg.contains("height=\"0\" data-value=\"0\""), "{svg}");
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
