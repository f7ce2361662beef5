//! `syncdata check [TABLE…] [--source URL] [--json]`: the integrity of the
//! local copy.
//!
//! The apply runs in replica mode where it may (foreign keys unchecked, so
//! rows arrive in any order), rows can be excluded by sanitization, a parent
//! table may not be synced at all, and a local table may lack constraints
//! production has. So a copy whose every row equals production's can still
//! break the application that reads it. This command finds, per table:
//!
//! - **orphans**: rows whose foreign key names a parent row that is missing
//!   locally (MATCH SIMPLE: a key with a NULL column names nothing);
//! - **duplicates** on a unique constraint that is not enforced locally (an
//!   invalid unique index left by a failed `CREATE UNIQUE INDEX
//!   CONCURRENTLY`, or a unique constraint only production has);
//! - **NOT NULL** violations of columns production declares NOT NULL and the
//!   local table does not;
//! - **CHECK** violations of constraints added `NOT VALID` locally, or
//!   declared only in production.
//!
//! On a SQLite target (docs/sqlite.md) the file's tables carry no
//! constraints (the rows come from production, which enforced them): the
//! rules are production's, evaluated with SQLite's SQL on the file. A
//! production CHECK whose expression SQLite cannot run is reported as not
//! evaluated.
//!
//! Local constraints are always read; production's too when a source URL is
//! known (`--source`, `verify.source_url`, `producer.source_url`), so a local
//! table created without constraints is still checked against them. Each
//! finding has a count, sample keys and the fix. Exit status: 0 clean,
//! 1 findings, anything else an error.

use std::collections::BTreeSet;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use syncdata_core::catalog::{self, TableDef};
use syncdata_core::config::Config;
use syncdata_core::table::{quote_ident, TableName};
use syncdata_core::{out, outln};

use crate::apply::sqlite;
use crate::local::LocalStore;

pub struct CheckArgs {
    pub tables: Vec<String>,
    pub source: Option<String>,
    /// Sample keys listed per finding.
    pub samples: usize,
    pub json: bool,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Orphan,
    Duplicate,
    NotNull,
    Check,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Orphan => "orphans",
            Kind::Duplicate => "duplicates",
            Kind::NotNull => "NOT NULL violations",
            Kind::Check => "CHECK violations",
        }
    }
}

/// Where the constraint is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Local,
    Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub origin: Origin,
    /// The constraint's name (or the column, for NOT NULL).
    pub constraint: String,
    /// What it requires, in words.
    pub rule: String,
    /// Rows that break it (for duplicates: rows sharing a value with
    /// another row).
    pub rows: i64,
    /// Primary keys of some of those rows, in key order.
    pub sample_keys: Vec<String>,
    pub fix: String,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub findings: Vec<Finding>,
    /// Constraints evaluated.
    pub constraints_checked: usize,
}

/// A constraint to evaluate against the local rows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    ForeignKey {
        name: String,
        columns: Vec<String>,
        parent: TableName,
        parent_columns: Vec<String>,
    },
    Unique {
        name: String,
        columns: Vec<String>,
    },
    NotNull {
        column: String,
    },
    Check {
        name: String,
        expr: String,
    },
}

/// Every constraint of a table as one catalog describes it.
#[derive(Debug, Default)]
struct Constraints {
    foreign_keys: Vec<Rule>,
    /// Unique constraints and unique indexes (plain columns, no predicate),
    /// with whether the index is valid (enforced).
    unique: Vec<(Rule, bool)>,
    /// CHECK constraints with whether they are validated.
    checks: Vec<(Rule, bool)>,
}

pub async fn run(config: &Config, args: CheckArgs) -> anyhow::Result<()> {
    let local = LocalStore::open(config).await?;
    let tables = local.named_or_whitelisted(&args.tables, "check").await?;
    let source_url = args
        .source
        .clone()
        .or_else(|| config.verify_source_url().map(str::to_owned));
    if source_url.is_none() && matches!(local, LocalStore::Sqlite(_)) {
        bail!(
            "a SQLite target's tables carry no constraints: check evaluates production's, \
             so it needs the source (--source URL, verify.source_url or producer.source_url)"
        );
    }
    let mut source = match &source_url {
        Some(url) => Some(connect_source(url).await?),
        None => None,
    };
    let whitelist: BTreeSet<TableName> = local.whitelist().await?.into_iter().collect();

    let mut reports = Vec::new();
    for table in &tables {
        let report = check_table(&local, source.as_mut(), table, &whitelist, args.samples).await?;
        if !args.json {
            out!("{}", render(&report))?;
        }
        reports.push(report);
    }
    if let Some(conn) = source {
        let _ = conn.close().await;
    }
    let with_findings = reports.iter().filter(|r| !r.findings.is_empty()).count();
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "source_checked": source_url.is_some(),
                "tables": reports,
            }))?
        )?;
    } else if with_findings == 0 {
        let of_source = if source_url.is_some() {
            " (local and source constraints)"
        } else {
            " (local constraints only: give --source to check production's too)"
        };
        outln!("check: all {} table(s) clean{of_source}", reports.len())?;
    }
    if with_findings > 0 {
        bail!(
            "{with_findings} of {} table(s) have integrity findings",
            reports.len()
        );
    }
    Ok(())
}

async fn connect_source(url: &str) -> anyhow::Result<PgConnection> {
    PgConnectOptions::from_str(url)
        .context("invalid source URL")?
        .application_name("syncdata-check")
        .log_statements(tracing::log::LevelFilter::Trace)
        .connect()
        .await
        .context("cannot connect to the source database")
}

async fn check_table(
    store: &LocalStore,
    source: Option<&mut PgConnection>,
    table: &TableName,
    whitelist: &BTreeSet<TableName>,
    samples: usize,
) -> anyhow::Result<TableReport> {
    let (def, local) = match store {
        LocalStore::Pg(pool) => (
            catalog::table(pool, table).await?,
            constraints(pool, table).await?,
        ),
        LocalStore::Sqlite(pool) => (sqlite_def(pool, table).await?, Constraints::default()),
    };
    let def = def.with_context(|| format!("{table} does not exist in the local database"))?;

    // What to evaluate, each with its origin: local constraints that the
    // database does not enforce (foreign keys under replica mode, invalid
    // unique indexes, NOT VALID checks), then production's that the local
    // table lacks.
    let mut rules: Vec<(Rule, Origin)> = Vec::new();
    rules.extend(
        local
            .foreign_keys
            .iter()
            .cloned()
            .map(|r| (r, Origin::Local)),
    );
    rules.extend(
        local
            .unique
            .iter()
            .filter(|(_, valid)| !valid)
            .map(|(r, _)| (r.clone(), Origin::Local)),
    );
    rules.extend(
        local
            .checks
            .iter()
            .filter(|(_, validated)| !validated)
            .map(|(r, _)| (r.clone(), Origin::Local)),
    );
    if let Some(source) = source {
        if let Some(src_def) = catalog::table(&mut *source, table).await? {
            let src = constraints(&mut *source, table).await?;
            for column in &src_def.columns {
                let local_nullable = def
                    .column(&column.name)
                    .is_some_and(|c| !c.not_null && !c.generated);
                if column.not_null && local_nullable {
                    rules.push((
                        Rule::NotNull {
                            column: column.name.clone(),
                        },
                        Origin::Source,
                    ));
                }
            }
            for fk in src.foreign_keys {
                if !local.foreign_keys.iter().any(|l| same_fk(l, &fk)) && names_local(&def, &fk) {
                    rules.push((fk, Origin::Source));
                }
            }
            for (u, _) in src.unique {
                let enforced = local
                    .unique
                    .iter()
                    .any(|(l, valid)| *valid && same_columns(l, &u));
                if !enforced && names_local(&def, &u) {
                    rules.push((u, Origin::Source));
                }
            }
            for (c, _) in src.checks {
                let enforced = local
                    .checks
                    .iter()
                    .any(|(l, validated)| *validated && same_expr(l, &c));
                if !enforced {
                    rules.push((c, Origin::Source));
                }
            }
        }
    }

    let mut findings = Vec::new();
    for (rule, origin) in &rules {
        if let Some(f) = evaluate(store, &def, rule, *origin, whitelist, samples).await? {
            findings.push(f);
        }
    }
    Ok(TableReport {
        table: table.to_string(),
        findings,
        constraints_checked: rules.len(),
    })
}

fn same_fk(a: &Rule, b: &Rule) -> bool {
    matches!((a, b), (
        Rule::ForeignKey { columns: c1, parent: p1, parent_columns: pc1, .. },
        Rule::ForeignKey { columns: c2, parent: p2, parent_columns: pc2, .. },
    ) if c1 == c2 && p1 == p2 && pc1 == pc2)
}

fn same_columns(a: &Rule, b: &Rule) -> bool {
    match (a, b) {
        (Rule::Unique { columns: c1, .. }, Rule::Unique { columns: c2, .. }) => {
            c1.iter().collect::<BTreeSet<_>>() == c2.iter().collect::<BTreeSet<_>>()
        }
        _ => false,
    }
}

fn same_expr(a: &Rule, b: &Rule) -> bool {
    matches!((a, b), (Rule::Check { expr: e1, .. }, Rule::Check { expr: e2, .. }) if e1 == e2)
}

/// Whether every column the rule names exists locally (a constraint on a
/// column the local table lacks is schema drift, not an integrity finding).
fn names_local(def: &TableDef, rule: &Rule) -> bool {
    let columns = match rule {
        Rule::ForeignKey { columns, .. } | Rule::Unique { columns, .. } => columns,
        _ => return true,
    };
    columns.iter().all(|c| def.column(c).is_some())
}

/// A foreign key as read: name, columns, parent schema, parent table,
/// parent columns.
type FkRow = (String, Vec<String>, String, String, Vec<String>);

/// Reads the constraints of `table` (one statement each).
async fn constraints(
    conn: impl sqlx::Acquire<'_, Database = sqlx::Postgres>,
    table: &TableName,
) -> anyhow::Result<Constraints> {
    let mut conn = conn.acquire().await?;
    let qualified = table.quoted();
    let fks: Vec<FkRow> = sqlx::query_as(
        "select c.conname::text, \
            array(select a.attname::text from unnest(c.conkey) with ordinality k(n, i) \
                  join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i), \
            pn.nspname::text, pc.relname::text, \
            array(select a.attname::text from unnest(c.confkey) with ordinality k(n, i) \
                  join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.n order by k.i) \
         from pg_constraint c \
         join pg_class pc on pc.oid = c.confrelid join pg_namespace pn on pn.oid = pc.relnamespace \
         where c.contype = 'f' and c.conrelid = $1::regclass order by c.conname",
    )
    .bind(&qualified)
    .fetch_all(&mut *conn)
    .await?;
    let unique: Vec<(String, Vec<String>, bool)> = sqlx::query_as(
        "select ic.relname::text, \
            array(select a.attname::text from unnest(i.indkey::int2[]) with ordinality k(n, o) \
                  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n \
                  where o <= i.indnkeyatts order by o), \
            i.indisvalid \
         from pg_index i join pg_class ic on ic.oid = i.indexrelid \
         where i.indrelid = $1::regclass and i.indisunique and i.indpred is null \
           and i.indexprs is null order by ic.relname",
    )
    .bind(&qualified)
    .fetch_all(&mut *conn)
    .await?;
    let checks: Vec<(String, String, bool)> = sqlx::query_as(
        "select conname::text, pg_get_expr(conbin, conrelid), convalidated from pg_constraint \
         where contype = 'c' and conrelid = $1::regclass order by conname",
    )
    .bind(&qualified)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Constraints {
        foreign_keys: fks
            .into_iter()
            .map(
                |(name, columns, schema, parent, parent_columns)| Rule::ForeignKey {
                    name,
                    columns,
                    parent: TableName {
                        schema,
                        table: parent,
                    },
                    parent_columns,
                },
            )
            .collect(),
        unique: unique
            .into_iter()
            .map(|(name, columns, valid)| (Rule::Unique { name, columns }, valid))
            .collect(),
        checks: checks
            .into_iter()
            .map(|(name, expr, validated)| (Rule::Check { name, expr }, validated))
            .collect(),
    })
}

/// Counts the local rows that break `rule` and samples their keys.
async fn evaluate(
    store: &LocalStore,
    def: &TableDef,
    rule: &Rule,
    origin: Origin,
    whitelist: &BTreeSet<TableName>,
    samples: usize,
) -> anyhow::Result<Option<Finding>> {
    let t = table_sql(store, &def.name);
    let key_text = key_text_sql(store, def, "c");
    let order = key_order_sql(def, "c");
    let (kind, constraint, rule_text, filter, fix) = match rule {
        Rule::ForeignKey {
            name,
            columns,
            parent,
            parent_columns,
        } => {
            let parent_exists = match store {
                LocalStore::Pg(pool) => catalog::table(pool, parent).await?.is_some(),
                LocalStore::Sqlite(pool) => sqlite_def(pool, parent).await?.is_some(),
            };
            let not_null = columns
                .iter()
                .map(|c| format!("c.{} is not null", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" and ");
            let filter = if parent_exists {
                let join = columns
                    .iter()
                    .zip(parent_columns)
                    .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(" and ");
                format!(
                    "{not_null} and not exists (select 1 from {} p where {join})",
                    table_sql(store, parent)
                )
            } else {
                not_null
            };
            let fix = if !parent_exists {
                format!(
                    "{parent} does not exist locally: create it, `syncdata add-tables {parent}`, \
                     then `syncdata resync {parent} --yes`"
                )
            } else if !whitelist.contains(parent) {
                format!(
                    "{parent} is not synced: `syncdata add-tables {parent}` (and `syncdata resync \
                     {parent} --yes` if it already holds rows), or delete the orphans"
                )
            } else {
                format!(
                    "the parent rows are missing locally: `syncdata verify {parent}`, \
                     then `syncdata resync {parent} --yes` if it differs; rows excluded by \
                     sanitization rules leave their children orphaned by design"
                )
            };
            (
                Kind::Orphan,
                name.clone(),
                format!(
                    "({}) references {parent} ({})",
                    columns.join(", "),
                    parent_columns.join(", ")
                ),
                filter,
                fix,
            )
        }
        Rule::Unique { name, columns } => {
            let cols = columns
                .iter()
                .map(|c| format!("d.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let join = columns
                .iter()
                .map(|c| format!("d.{0} = c.{0}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" and ");
            let not_null = columns
                .iter()
                .map(|c| format!("d.{} is not null", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(" and ");
            let filter = format!(
                "exists (select 1 from (select {cols} from {t} d where {not_null} \
                 group by {cols} having count(*) > 1) d where {join})"
            );
            let fix = match origin {
                Origin::Local => format!(
                    "the unique index {name} is invalid (a failed CREATE UNIQUE INDEX \
                     CONCURRENTLY): remove the duplicates, then REINDEX INDEX {}",
                    quote_ident(name)
                ),
                Origin::Source => format!(
                    "production enforces {name}: remove the duplicates (compare with \
                     `syncdata verify {}`), then add the constraint locally",
                    def.name
                ),
            };
            (
                Kind::Duplicate,
                name.clone(),
                format!("unique ({})", columns.join(", ")),
                filter,
                fix,
            )
        }
        Rule::NotNull { column } => (
            Kind::NotNull,
            column.clone(),
            format!("{column} is NOT NULL in production"),
            format!("c.{} is null", quote_ident(column)),
            format!(
                "rows that are NULL locally but cannot be in production: compare with \
                 `syncdata verify {}` (a sanitization rule that nulls {column} causes this by design)",
                def.name
            ),
        ),
        Rule::Check { name, expr } => {
            let fix = match origin {
                Origin::Local => format!(
                    "{name} was added NOT VALID: fix or delete the rows, then ALTER TABLE {t} \
                     VALIDATE CONSTRAINT {}",
                    quote_ident(name)
                ),
                Origin::Source => format!(
                    "production enforces {name}: compare with `syncdata verify {}` (a \
                     sanitization rule can produce values production would refuse)",
                    def.name
                ),
            };
            (
                Kind::Check,
                name.clone(),
                format!("CHECK ({expr})"),
                // CHECK passes when the expression is NULL.
                format!("not coalesce(({expr}), true)"),
                fix,
            )
        }
    };
    // The expression of a production CHECK may name a function the local
    // database lacks: that is reported, not fatal.
    let count_sql = format!("select count(*) from {t} c where {filter}");
    let counted = match store {
        LocalStore::Pg(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql))
                .fetch_one(pool)
                .await
        }
        LocalStore::Sqlite(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql))
                .fetch_one(pool)
                .await
        }
    };
    let rows: i64 = match counted {
        Ok(n) => n,
        Err(e) if origin == Origin::Source => {
            return Ok(Some(Finding {
                kind,
                origin,
                constraint,
                rule: rule_text,
                rows: -1,
                sample_keys: Vec::new(),
                fix: format!(
                    "could not evaluate production's constraint locally ({}); check it by hand",
                    crate::failure::describe_sqlx(&e)
                ),
            }))
        }
        Err(e) => return Err(e.into()),
    };
    if rows == 0 {
        return Ok(None);
    }
    let sample_sql = format!(
        "select {key_text} from {t} c where {filter} order by {order} limit {}",
        samples.max(1)
    );
    let sample_keys: Vec<String> = match store {
        LocalStore::Pg(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sample_sql))
                .fetch_all(pool)
                .await?
        }
        LocalStore::Sqlite(pool) => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sample_sql))
                .fetch_all(pool)
                .await?
        }
    };
    Ok(Some(Finding {
        kind,
        origin,
        constraint,
        rule: rule_text,
        rows,
        sample_keys,
        fix,
    }))
}

/// A table's name in the local store's SQL.
fn table_sql(store: &LocalStore, table: &TableName) -> String {
    match store {
        LocalStore::Pg(_) => table.quoted(),
        LocalStore::Sqlite(_) => sqlite::quote(&sqlite::local_name(table)),
    }
}

/// A table of a SQLite target's file as the catalog describes a
/// PostgreSQL one (None: no such table): its columns, NOT NULL, primary
/// key. The types are those recorded when it was created, else declared.
async fn sqlite_def(
    pool: &sqlx::SqlitePool,
    table: &TableName,
) -> anyhow::Result<Option<TableDef>> {
    let local = sqlite::local_name(table);
    let cols: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "select i.name, coalesce(c.pg_type, i.type), i.\"notnull\", i.pk \
         from pragma_table_info(?1) i \
         left join syncdata_columns c on c.table_name = ?1 and c.column_name = i.name \
         order by i.cid",
    )
    .bind(&local)
    .fetch_all(pool)
    .await?;
    if cols.is_empty() {
        return Ok(None);
    }
    let mut pk: Vec<(i64, String)> = cols
        .iter()
        .filter(|c| c.3 > 0)
        .map(|c| (c.3, c.0.clone()))
        .collect();
    pk.sort();
    Ok(Some(TableDef {
        name: table.clone(),
        primary_key: pk.into_iter().map(|(_, n)| n).collect(),
        estimated_rows: None,
        columns: cols
            .into_iter()
            .map(|(name, sql_type, not_null, _)| catalog::ColumnDef {
                name,
                unlimited_type: sql_type.clone(),
                base_type: sql_type.clone(),
                sql_type,
                category: 'X',
                is_bytea: false,
                generated: false,
                not_null: not_null != 0,
                has_default: false,
                typmod: -1,
                collation: None,
            })
            .collect(),
    }))
}

/// `id=1, region=eu` of a row (`ctid` for a table without a primary key).
fn key_text_sql(store: &LocalStore, def: &TableDef, alias: &str) -> String {
    if let LocalStore::Sqlite(_) = store {
        // Every table of the file has a primary key (add-tables requires one).
        return def
            .primary_key
            .iter()
            .map(|k| {
                format!(
                    "{} || '=' || coalesce(cast({alias}.{} as text), 'NULL')",
                    sql_literal(k),
                    quote_ident(k)
                )
            })
            .collect::<Vec<_>>()
            .join(" || ', ' || ");
    }
    if def.primary_key.is_empty() {
        return format!("'ctid=' || {alias}.ctid::text");
    }
    let parts: Vec<String> = def
        .primary_key
        .iter()
        .map(|k| {
            format!(
                "{} || '=' || coalesce({alias}.{}::text, 'NULL')",
                sql_literal(k),
                quote_ident(k)
            )
        })
        .collect();
    parts.join(" || ', ' || ")
}

fn key_order_sql(def: &TableDef, alias: &str) -> String {
    if def.primary_key.is_empty() {
        return format!("{alias}.ctid");
    }
    def.primary_key
        .iter()
        .map(|k| format!("{alias}.{}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn render(report: &TableReport) -> String {
    let mut out = String::new();
    if report.findings.is_empty() {
        out.push_str(&format!(
            "{}: clean ({} constraint(s) checked)\n",
            report.table, report.constraints_checked
        ));
        return out;
    }
    out.push_str(&format!("{}:\n", report.table));
    for f in &report.findings {
        let origin = match f.origin {
            Origin::Local => "local",
            Origin::Source => "production's",
        };
        let rows = if f.rows < 0 {
            "not evaluated".to_string()
        } else {
            format!("{} row(s)", f.rows)
        };
        out.push_str(&format!(
            "  {} of {origin} {} {}: {rows}\n",
            f.kind.label(),
            f.constraint,
            f.rule
        ));
        if !f.sample_keys.is_empty() {
            out.push_str(&format!("    e.g. {}\n", f.sample_keys.join("; ")));
        }
        out.push_str(&format!("    fix: {}\n", f.fix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(cols: &[&str], parent: &str, pcols: &[&str]) -> Rule {
        Rule::ForeignKey {
            name: "x".into(),
            columns: cols.iter().map(|s| s.to_string()).collect(),
            parent: TableName::parse(parent).unwrap(),
            parent_columns: pcols.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn foreign_keys_match_by_columns_and_parent_not_name() {
        assert!(same_fk(
            &fk(&["a"], "public.p", &["id"]),
            &fk(&["a"], "public.p", &["id"])
        ));
        assert!(!same_fk(
            &fk(&["a"], "public.p", &["id"]),
            &fk(&["a"], "public.q", &["id"])
        ));
        assert!(!same_fk(
            &fk(&["a", "b"], "public.p", &["x", "y"]),
            &fk(&["b", "a"], "public.p", &["x", "y"])
        ));
    }

    #[test]
    fn unique_constraints_match_as_column_sets() {
        let u = |c: &[&str]| Rule::Unique {
            name: "u".into(),
            columns: c.iter().map(|s| s.to_string()).collect(),
        };
        assert!(same_columns(&u(&["a", "b"]), &u(&["b", "a"])));
        assert!(!same_columns(&u(&["a"]), &u(&["a", "b"])));
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
