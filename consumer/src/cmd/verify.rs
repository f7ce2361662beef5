//! `syncdata verify [T…] --source URL`: is the local copy right?
//!
//! Per table, both databases are read with the same session settings (UTC,
//! ISO dates, hex bytea, the same float digits) so that equal values print
//! equally. The key space is cut into chunks of `--chunk-rows` keys at
//! boundaries taken from the source (`row_number() OVER (ORDER BY key)`);
//! each chunk is summarised on both sides, concurrently, as a row count and
//! the sum of the first 64 bits of `md5(ROW(columns)::text)` of its rows
//! (order-free, so the two sides may scan differently; md5 rather than
//! PostgreSQL's internal hashes, which differ between architectures). Equal summaries: the chunk is equal.
//! A differing chunk small enough is fetched as (key, row hash) from both
//! sides and compared key by key; a larger one is cut again (at boundaries
//! of its larger side). The differing keys are listed, capped; memory stays
//! bounded by the chunk size, whatever the table size.
//!
//! Columns that sanitization changes are left out with `--exclude-columns`
//! (`col` for every table, `table.col` for one). Exit status 0 only when
//! every table is equal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Instant;

use crate::store;
use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use syncdata_core::catalog;
use syncdata_core::config::Config;
use syncdata_core::table::{quote_ident, TableName};
use syncdata_core::{out, outln};

/// Rows per summarised chunk (also the largest chunk compared row by row).
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct VerifyArgs {
    /// Empty: every whitelisted table.
    pub tables: Vec<String>,
    pub source: Option<String>,
    pub exclude_columns: Vec<String>,
    pub max_rows: usize,
    pub chunk_rows: u64,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// At the source, not locally.
    MissingLocally,
    /// Locally, not at the source.
    ExtraLocally,
    /// On both sides with different values.
    Different,
}

impl DiffKind {
    fn label(self) -> &'static str {
        match self {
            DiffKind::MissingLocally => "missing locally",
            DiffKind::ExtraLocally => "extra locally",
            DiffKind::Different => "different",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RowDiff {
    pub kind: DiffKind,
    /// Key column = value (text form).
    pub key: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub equal: bool,
    pub source_rows: i64,
    pub local_rows: i64,
    /// Rows that differ (all of them, not only those listed).
    pub differing_rows: u64,
    /// The first `--max-rows` of them.
    pub rows: Vec<RowDiff>,
    /// Schema problems and other notes.
    pub problems: Vec<String>,
    /// False when the table cannot be compared (missing on a side, no or
    /// different primary keys): `verify` then exits 2.
    pub comparable: bool,
    /// What may explain the differences.
    pub hints: Vec<String>,
    pub columns_compared: Vec<String>,
    pub elapsed_ms: u64,
}

pub async fn run(config: &Config, args: VerifyArgs) -> anyhow::Result<()> {
    let url = args
        .source
        .clone()
        .or_else(|| config.verify_source_url().map(str::to_owned))
        .context(
            "no source database: pass --source postgres://USER@HOST/DB (the production \
             database) or set verify.source_url",
        )?;
    let pool = store::connect(config).await?;
    let tables = super::named_or_whitelisted(&pool, &args.tables, "verify").await?;
    let exclude = Exclusions::parse(&args.exclude_columns)?;
    let mut local = pool.acquire().await?.detach();
    prepare(&mut local).await?;
    let mut source = connect_source(&url).await?;
    prepare(&mut source).await?;

    let mut reports = Vec::new();
    for table in &tables {
        let started = Instant::now();
        let mut report = verify_table(&mut source, &mut local, table, &exclude, &args).await?;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        if !args.json {
            out!("{}", render(&report, args.max_rows))?;
        }
        reports.push(report);
    }
    let _ = source.close().await;
    let differing = reports.iter().filter(|r| !r.equal).count();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?)?;
    } else if differing == 0 {
        outln!("verify: all {} table(s) equal", reports.len())?;
    }
    if let Some(r) = reports.iter().find(|r| !r.comparable) {
        bail!("{} cannot be compared: {}", r.table, r.problems.join("; "));
    }
    if differing > 0 {
        return Err(syncdata_core::cli::Exit {
            code: 1,
            message: format!(
                "{differing} of {} table(s) differ from the source",
                reports.len()
            ),
        }
        .into());
    }
    Ok(())
}

pub(crate) async fn connect_source(url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)
        .context("invalid --source URL")?
        .application_name("syncdata-verify")
        .log_statements(tracing::log::LevelFilter::Trace);
    options
        .connect()
        .await
        .context("cannot connect to the source database")
}

/// The same text output on both sides.
async fn prepare(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET bytea_output = 'hex'; SET extra_float_digits = 1; SET statement_timeout = 0",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// `--exclude-columns`: names for every table, or `table.col` for one.
#[derive(Debug, Default)]
struct Exclusions {
    everywhere: Vec<String>,
    per_table: Vec<(TableName, String)>,
}

impl Exclusions {
    fn parse(entries: &[String]) -> anyhow::Result<Exclusions> {
        let mut out = Exclusions::default();
        for entry in entries.iter().flat_map(|e| e.split(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            match entry.rsplit_once('.') {
                Some((table, col)) if !col.is_empty() => out
                    .per_table
                    .push((TableName::parse(table)?, col.to_owned())),
                _ => out.everywhere.push(entry.to_owned()),
            }
        }
        Ok(out)
    }

    fn excludes(&self, table: &TableName, col: &str) -> bool {
        self.everywhere.iter().any(|c| c == col)
            || self.per_table.iter().any(|(t, c)| t == table && c == col)
    }
}

/// A table as one side sees it.
#[derive(Debug)]
struct Side {
    /// (name, type) in column order.
    columns: Vec<(String, String)>,
    key: Vec<String>,
    /// Effective collation per key column (None: not collatable).
    key_collations: Vec<Option<String>>,
}

async fn describe(conn: &mut PgConnection, table: &TableName) -> anyhow::Result<Option<Side>> {
    let Some(def) = catalog::table(&mut *conn, table).await? else {
        return Ok(None);
    };
    let key_collations = def
        .primary_key
        .iter()
        .map(|k| def.column(k).and_then(|c| c.collation.clone()))
        .collect();
    Ok(Some(Side {
        columns: def
            .columns
            .into_iter()
            .map(|c| (c.name, c.sql_type))
            .collect(),
        key: def.primary_key,
        key_collations,
    }))
}

/// How to read one table on one side.
#[derive(Debug, Clone)]
struct Reader {
    table: String,
    /// Key column expressions (with COLLATE "C" when the sides' collations differ).
    key_exprs: Vec<String>,
    /// Key column types, for casting bound text.
    key_types: Vec<String>,
    /// `md5(ROW(…)::text)`
    row_hash: String,
}

impl Reader {
    fn key_list(&self) -> String {
        self.key_exprs.join(", ")
    }

    fn key_text(&self) -> String {
        self.key_exprs
            .iter()
            .map(|k| format!("({k})::text"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `lhs op rhs` over the key, with rhs bound from `$first`.
    fn compare(&self, op: &str, first: usize) -> String {
        let params: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::text::{t}", first + i))
            .collect();
        if self.key_exprs.len() == 1 {
            format!("{} {op} {}", self.key_exprs[0], params[0])
        } else {
            format!("({}) {op} ({})", self.key_list(), params.join(", "))
        }
    }

    /// WHERE clause of a range and its parameters.
    fn range_sql(&self, range: &Range) -> (String, Vec<String>) {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        if let Some(lo) = &range.lo {
            conds.push(self.compare(">", params.len() + 1));
            params.extend(lo.iter().cloned());
        }
        if let Some(hi) = &range.hi {
            conds.push(self.compare("<=", params.len() + 1));
            params.extend(hi.iter().cloned());
        }
        let sql = if conds.is_empty() {
            "true".to_owned()
        } else {
            conds.join(" AND ")
        };
        (sql, params)
    }

    async fn summary(&self, conn: &mut PgConnection, range: &Range) -> anyhow::Result<Summary> {
        let (cond, params) = self.range_sql(range);
        let sql = format!(
            "SELECT count(*)::int8, coalesce(sum(('x' || left(h, 16))::bit(64)::int8), 0)::text \
             FROM (SELECT {} AS h FROM {} AS t WHERE {cond}) AS s",
            self.row_hash, self.table
        );
        let mut q = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sql));
        for p in params {
            q = q.bind(p);
        }
        let (count, hash) = q.fetch_one(&mut *conn).await?;
        Ok(Summary { count, hash })
    }

    /// Every `step`-th key of the range, in key order.
    async fn boundaries(
        &self,
        conn: &mut PgConnection,
        range: &Range,
        step: u64,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let (cond, params) = self.range_sql(range);
        let n = self.key_exprs.len();
        let cols: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let inner: Vec<String> = self
            .key_exprs
            .iter()
            .enumerate()
            .map(|(i, k)| format!("({k})::text AS k{i}"))
            .collect();
        let sql = format!(
            "SELECT ARRAY[{}] FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS rn \
             FROM {} AS t WHERE {cond}) AS s WHERE rn % {step} = 0 ORDER BY rn",
            cols.join(", "),
            inner.join(", "),
            self.key_list(),
            self.table
        );
        let mut q = sqlx::query_scalar::<_, Vec<String>>(sqlx::AssertSqlSafe(sql));
        for p in params {
            q = q.bind(p);
        }
        Ok(q.fetch_all(&mut *conn).await?)
    }

    /// (key, row hash) of every row of the range.
    async fn rows(
        &self,
        conn: &mut PgConnection,
        range: &Range,
    ) -> anyhow::Result<HashMap<Vec<String>, String>> {
        let (cond, params) = self.range_sql(range);
        let sql = format!(
            "SELECT ARRAY[{}], {} FROM {} AS t WHERE {cond}",
            self.key_text(),
            self.row_hash,
            self.table
        );
        let mut q = sqlx::query_as::<_, (Vec<String>, String)>(sqlx::AssertSqlSafe(sql));
        for p in params {
            q = q.bind(p);
        }
        Ok(q.fetch_all(&mut *conn).await?.into_iter().collect())
    }
}

/// Keys in (lo, hi]; None is unbounded.
#[derive(Debug, Clone, Default)]
struct Range {
    lo: Option<Vec<String>>,
    hi: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    count: i64,
    /// Sum of the first 64 bits of every row's md5.
    hash: String,
}

/// The ranges between consecutive boundaries, covering all of `outer`.
fn split(outer: &Range, bounds: Vec<Vec<String>>) -> Vec<Range> {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut lo = outer.lo.clone();
    for b in bounds {
        if outer.hi.as_ref() == Some(&b) {
            break;
        }
        out.push(Range {
            lo: lo.take(),
            hi: Some(b.clone()),
        });
        lo = Some(b);
    }
    out.push(Range {
        lo,
        hi: outer.hi.clone(),
    });
    out
}

struct Comparison<'a> {
    source: &'a mut PgConnection,
    local: &'a mut PgConnection,
    src: Reader,
    loc: Reader,
    key_names: Vec<String>,
    chunk: u64,
    max_rows: usize,
    differing: u64,
    rows: Vec<RowDiff>,
}

/// The two steps of comparing one range, apart so that what happens when
/// a table changes while it is compared can be tested on its own.
trait RangeCompare {
    async fn summaries(&mut self, range: &Range) -> anyhow::Result<(Summary, Summary)>;
    /// Narrows a range whose summaries differ; returns the differing rows
    /// found (and recorded).
    async fn narrow(&mut self, range: Range, s: Summary, l: Summary) -> anyhow::Result<u64>;
}

impl RangeCompare for Comparison<'_> {
    async fn summaries(&mut self, range: &Range) -> anyhow::Result<(Summary, Summary)> {
        let (s, l) = tokio::join!(
            self.src.summary(self.source, range),
            self.loc.summary(self.local, range)
        );
        Ok((s?, l?))
    }

    /// Narrows a differing range down to its keys; returns how many
    /// differing rows it found.
    async fn narrow(&mut self, range: Range, s: Summary, l: Summary) -> anyhow::Result<u64> {
        let before = self.differing;
        // Depth-first over a stack of ranges known to differ.
        let mut stack = vec![(range, s, l)];
        while let Some((range, s, l)) = stack.pop() {
            let larger = s.count.max(l.count) as u64;
            if larger <= 2 * self.chunk {
                let (src, loc) = tokio::join!(
                    self.src.rows(self.source, &range),
                    self.loc.rows(self.local, &range)
                );
                let (src, mut loc) = (src?, loc?);
                let mut diffs = Vec::new();
                for (key, hash) in src {
                    match loc.remove(&key) {
                        None => diffs.push((DiffKind::MissingLocally, key)),
                        Some(h) if h != hash => diffs.push((DiffKind::Different, key)),
                        Some(_) => {}
                    }
                }
                diffs.extend(loc.into_keys().map(|k| (DiffKind::ExtraLocally, k)));
                diffs.sort_by(|a, b| natural_key_order(&a.1, &b.1));
                for (kind, key) in diffs {
                    self.record(kind, key);
                }
                continue;
            }
            // Cut at boundaries of the larger side into ~16 parts.
            let step = larger.div_ceil(16).max(1);
            let bounds = if s.count >= l.count {
                self.src.boundaries(self.source, &range, step).await?
            } else {
                self.loc.boundaries(self.local, &range, step).await?
            };
            let mut parts = Vec::new();
            for part in split(&range, bounds) {
                let (ps, pl) = self.summaries(&part).await?;
                if ps != pl {
                    parts.push((part, ps, pl));
                }
            }
            stack.extend(parts.into_iter().rev());
        }
        Ok(self.differing - before)
    }
}

impl Comparison<'_> {
    fn record(&mut self, kind: DiffKind, key: Vec<String>) {
        self.differing += 1;
        if self.rows.len() < self.max_rows {
            self.rows.push(RowDiff {
                kind,
                key: self.key_names.iter().cloned().zip(key).collect(),
            });
        }
    }
}

/// How many times a range is summarized again when narrowing it found
/// every row equal (its rows changed between the summaries and the
/// narrowing: consumers were still applying, or the source was written).
const SETTLE_ROUNDS: usize = 3;

/// The row counts of one compared range, and whether its summaries still
/// differed, without a differing row found, after [`SETTLE_ROUNDS`].
#[derive(Debug, PartialEq, Eq)]
struct RangeCounts {
    source: i64,
    local: i64,
    unsettled: bool,
}

/// Compares one range. The counts reported are those of summaries that
/// agree with the verdict: equal summaries, or the ones narrowing found
/// differing rows under. Summaries that differ while every row read again
/// is equal are stale, and are taken again (they would print as "equal"
/// beside two different row counts).
async fn compare_range(c: &mut impl RangeCompare, range: &Range) -> anyhow::Result<RangeCounts> {
    let (mut s, mut l) = c.summaries(range).await?;
    for _ in 0..SETTLE_ROUNDS {
        if s == l || c.narrow(range.clone(), s.clone(), l.clone()).await? > 0 {
            return Ok(RangeCounts {
                source: s.count,
                local: l.count,
                unsettled: false,
            });
        }
        (s, l) = c.summaries(range).await?;
    }
    Ok(RangeCounts {
        source: s.count,
        local: l.count,
        unsettled: s != l,
    })
}

async fn verify_table(
    source: &mut PgConnection,
    local: &mut PgConnection,
    table: &TableName,
    exclude: &Exclusions,
    args: &VerifyArgs,
) -> anyhow::Result<TableReport> {
    let mut report = TableReport {
        table: table.to_string(),
        equal: false,
        source_rows: 0,
        local_rows: 0,
        differing_rows: 0,
        rows: Vec::new(),
        problems: Vec::new(),
        comparable: true,
        hints: Vec::new(),
        columns_compared: Vec::new(),
        elapsed_ms: 0,
    };
    let (src, loc) = (
        describe(source, table).await?,
        describe(local, table).await?,
    );
    let (src, loc) = match (src, loc) {
        (Some(s), Some(l)) => (s, l),
        (s, l) => {
            report.comparable = false;
            if s.is_none() {
                report
                    .problems
                    .push("table does not exist at the source".to_owned());
            }
            if l.is_none() {
                report
                    .problems
                    .push("table does not exist locally".to_owned());
            }
            return Ok(report);
        }
    };
    if src.key.is_empty() {
        report.comparable = false;
        report.problems.push(
            "no primary key at the source: verify compares by primary key (and syncdata \
             syncs only tables with one)"
                .to_owned(),
        );
        return Ok(report);
    }
    if src.key != loc.key {
        report.comparable = false;
        report.problems.push(format!(
            "primary keys differ: source ({}), local ({})",
            src.key.join(", "),
            loc.key.join(", ")
        ));
        return Ok(report);
    }
    if let Some(k) = src.key.iter().find(|k| exclude.excludes(table, k)) {
        bail!("--exclude-columns names key column {k} of {table}: keys cannot be left out");
    }
    let mut compared = Vec::new();
    for (name, _) in &src.columns {
        if exclude.excludes(table, name) {
            continue;
        }
        if loc.columns.iter().any(|(n, _)| n == name) {
            compared.push(name.clone());
        } else {
            report
                .problems
                .push(format!("column {name} is missing locally"));
        }
    }
    // Text keys compare in one order on both sides: the common collation,
    // or "C" when they differ (slower: the key index may not serve it).
    let same_order = src.key_collations == loc.key_collations;
    let key_exprs = |side: &Side| -> Vec<String> {
        side.key
            .iter()
            .zip(&side.key_collations)
            .map(|(k, coll)| match coll {
                Some(_) if !same_order => format!("t.{} COLLATE \"C\"", quote_ident(k)),
                _ => format!("t.{}", quote_ident(k)),
            })
            .collect()
    };
    let key_types = |side: &Side| -> Vec<String> {
        side.key
            .iter()
            .map(|k| {
                side.columns
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, t)| t.clone())
                    .unwrap_or_else(|| "text".to_owned())
            })
            .collect()
    };
    let row_hash = format!(
        "md5(ROW({})::text)",
        compared
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut cmp = Comparison {
        src: Reader {
            table: table.quoted(),
            key_exprs: key_exprs(&src),
            key_types: key_types(&src),
            row_hash: row_hash.clone(),
        },
        loc: Reader {
            table: table.quoted(),
            key_exprs: key_exprs(&loc),
            key_types: key_types(&loc),
            row_hash,
        },
        key_names: src.key.clone(),
        chunk: args.chunk_rows.max(1),
        max_rows: args.max_rows,
        differing: 0,
        rows: Vec::new(),
        source,
        local,
    };
    let all = Range::default();
    let bounds = cmp.src.boundaries(cmp.source, &all, cmp.chunk).await?;
    let mut unsettled = 0;
    for range in split(&all, bounds) {
        let counts = compare_range(&mut cmp, &range).await?;
        report.source_rows += counts.source;
        report.local_rows += counts.local;
        unsettled += usize::from(counts.unsettled);
    }
    if unsettled > 0 {
        report.problems.push(format!(
            "{unsettled} range(s) of keys kept changing while compared (their summaries \
             differed, yet every row read again was equal): the table is being written; \
             run verify again when it is quiet"
        ));
    }
    report.differing_rows = cmp.differing;
    report.rows = cmp.rows;
    if report.rows.iter().any(|d| d.kind == DiffKind::Different) {
        report.hints.push(format!(
            "rows differ in value: if the producer sanitizes columns of {table}, leave them out \
             of the comparison with --exclude-columns {table}.COLUMN,…"
        ));
    }
    report.columns_compared = compared;
    report.equal = report.problems.is_empty() && report.differing_rows == 0;
    Ok(report)
}

/// Keys in natural order: parts that are both integers compare as
/// numbers (`1, 2, 10`, not `1, 10, 2`), others as text.
fn natural_key_order(a: &[String], b: &[String]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x.parse::<i128>(), y.parse::<i128>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

pub(crate) fn render(r: &TableReport, max_rows: usize) -> String {
    let mut out = String::new();
    if !r.comparable {
        let _ = writeln!(out, "{}: CANNOT COMPARE", r.table);
        for p in &r.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        return out;
    }
    let verdict = if r.equal { "equal" } else { "NOT EQUAL" };
    let _ = writeln!(
        out,
        "{}: {verdict} (source {} rows, local {} rows, {} column(s) compared, {} ms)",
        r.table,
        r.source_rows,
        r.local_rows,
        r.columns_compared.len(),
        r.elapsed_ms
    );
    for p in &r.problems {
        let _ = writeln!(out, "  problem: {p}");
    }
    for h in &r.hints {
        let _ = writeln!(out, "  hint: {h}");
    }
    if r.differing_rows > 0 {
        let _ = writeln!(
            out,
            "  {} row(s) differ{}",
            r.differing_rows,
            if r.differing_rows as usize > r.rows.len() {
                format!(" (first {max_rows} listed)")
            } else {
                String::new()
            }
        );
    }
    for d in &r.rows {
        let key: Vec<String> = d.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "  {:<16} {}",
            format!("{}:", d.kind.label()),
            key.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> Vec<String> {
        vec![v.to_owned()]
    }

    /// Summaries taken in turn from a script; narrowing finds the number
    /// of differing rows the script says.
    struct Scripted {
        summaries: Vec<(i64, i64)>,
        found: Vec<u64>,
        narrowed: usize,
    }

    fn summary(count: i64) -> Summary {
        Summary {
            count,
            hash: format!("h{count}"),
        }
    }

    impl RangeCompare for Scripted {
        async fn summaries(&mut self, _: &Range) -> anyhow::Result<(Summary, Summary)> {
            let (s, l) = self.summaries.remove(0);
            Ok((summary(s), summary(l)))
        }
        async fn narrow(&mut self, _: Range, _: Summary, _: Summary) -> anyhow::Result<u64> {
            self.narrowed += 1;
            Ok(self.found.remove(0))
        }
    }

    async fn compare(summaries: &[(i64, i64)], found: &[u64]) -> (RangeCounts, usize) {
        let mut c = Scripted {
            summaries: summaries.to_vec(),
            found: found.to_vec(),
            narrowed: 0,
        };
        let counts = compare_range(&mut c, &Range::default()).await.unwrap();
        assert!(
            c.summaries.is_empty() && c.found.is_empty(),
            "script not used up"
        );
        (counts, c.narrowed)
    }

    fn counts(source: i64, local: i64, unsettled: bool) -> RangeCounts {
        RangeCounts {
            source,
            local,
            unsettled,
        }
    }

    #[tokio::test]
    async fn equal_summaries_are_not_narrowed() {
        assert_eq!(compare(&[(7, 7)], &[]).await, (counts(7, 7, false), 0));
    }

    #[tokio::test]
    async fn differing_rows_found_keep_the_counts_they_were_found_under() {
        assert_eq!(compare(&[(7, 5)], &[2]).await, (counts(7, 5, false), 1));
    }

    #[tokio::test]
    async fn stale_summaries_are_taken_again_so_equal_never_prints_beside_two_counts() {
        // The local side was still applying deletes when first summarized:
        // narrowing reads every row again and finds them equal.
        assert_eq!(
            compare(&[(4286, 5000), (4286, 4286)], &[0]).await,
            (counts(4286, 4286, false), 1)
        );
    }

    #[tokio::test]
    async fn a_range_that_keeps_changing_is_reported_unsettled() {
        assert_eq!(
            compare(&[(9, 8), (10, 9), (11, 10), (12, 11)], &[0, 0, 0]).await,
            (counts(12, 11, true), 3)
        );
    }

    #[test]
    fn numeric_keys_sort_as_numbers() {
        let mut keys = [k("10"), k("2"), k("1"), k("b"), k("100"), k("a")];
        keys.sort_by(|a, b| natural_key_order(a, b));
        let flat: Vec<&str> = keys.iter().map(|k| k[0].as_str()).collect();
        assert_eq!(flat, ["1", "2", "10", "100", "a", "b"]);
    }

    #[test]
    fn ranges_cover_the_key_space_without_overlap() {
        let parts = split(&Range::default(), vec![k("10"), k("20")]);
        let shown: Vec<_> = parts.iter().map(|r| (r.lo.clone(), r.hi.clone())).collect();
        assert_eq!(
            shown,
            vec![
                (None, Some(k("10"))),
                (Some(k("10")), Some(k("20"))),
                (Some(k("20")), None)
            ]
        );
        // Inside a bounded range, a boundary equal to its upper end adds nothing.
        let outer = Range {
            lo: Some(k("0")),
            hi: Some(k("20")),
        };
        let parts = split(&outer, vec![k("10"), k("20")]);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].hi, Some(k("20")));
    }

    #[test]
    fn range_sql_binds_every_key_part() {
        let r = Reader {
            table: "\"public\".\"t\"".into(),
            key_exprs: vec!["t.\"a\"".into(), "t.\"b\" COLLATE \"C\"".into()],
            key_types: vec!["integer".into(), "text".into()],
            row_hash: "md5(ROW(t.\"a\")::text)".into(),
        };
        let (sql, params) = r.range_sql(&Range {
            lo: Some(vec!["1".into(), "x".into()]),
            hi: Some(vec!["2".into(), "y".into()]),
        });
        assert_eq!(
            sql,
            "(t.\"a\", t.\"b\" COLLATE \"C\") > ($1::text::integer, $2::text::text) AND \
             (t.\"a\", t.\"b\" COLLATE \"C\") <= ($3::text::integer, $4::text::text)"
        );
        assert_eq!(params, ["1", "x", "2", "y"]);
        assert_eq!(r.range_sql(&Range::default()).0, "true");
    }

    #[test]
    fn exclusions_apply_everywhere_or_to_one_table() {
        let e =
            Exclusions::parse(&["email, users.phone".into(), "sales.orders.note".into()]).unwrap();
        let users = TableName::new("public", "users");
        let orders = TableName::new("sales", "orders");
        assert!(e.excludes(&users, "email") && e.excludes(&orders, "email"));
        assert!(e.excludes(&users, "phone") && !e.excludes(&orders, "phone"));
        assert!(e.excludes(&orders, "note") && !e.excludes(&users, "note"));
    }
}
