//! `syncdata schema diff|migrate` on a SQLite target (docs/sqlite.md): the
//! stream's newest definition of each table (schema capture,
//! docs/schema.md) against the table in the file, and the type mapping each
//! column is stored under: PostgreSQL type → SQLite type, and how values
//! are written. `migrate` runs the safe part (a missing table, missing
//! columns); dropping or retyping a column is left to the user.

use anyhow::Context;
use serde::Serialize;
use sqlx::SqlitePool;
use syncdata_core::config::Config;
use syncdata_core::outln;
use syncdata_core::table::TableName;
use syncdata_core::target::SqliteTarget as Settings;

use crate::apply::sqlite::{self, values};
use crate::local::LocalStore;
use crate::sqlite_cmd;

/// One column under the mapping.
#[derive(Debug, Serialize)]
pub struct Mapped {
    pub column: String,
    /// The PostgreSQL type (the stream's, else the one recorded when the
    /// table was created).
    pub pg_type: String,
    /// The declared SQLite type (its affinity).
    pub sqlite_type: &'static str,
    /// How values are written.
    pub stored_as: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Difference {
    /// create_table, add_column, drop_column, change_type.
    pub kind: &'static str,
    /// Whether `schema migrate` runs it without `--allow-destructive`.
    pub safe: bool,
    pub detail: String,
    pub sql: String,
}

#[derive(Debug, Serialize)]
pub struct TableDiff {
    pub table: String,
    /// The stream's definition version (`lsn/seq`); None: the stream holds
    /// no definition of the table.
    pub version: Option<String>,
    pub mapping: Vec<Mapped>,
    pub differences: Vec<Difference>,
}

fn mapped(column: &str, pg_type: &str) -> Mapped {
    let kind = values::kind_of(pg_type);
    Mapped {
        column: column.to_owned(),
        pg_type: pg_type.to_owned(),
        sqlite_type: values::sqlite_type(kind),
        stored_as: values::stored_as(kind),
    }
}

/// The file's columns of `table` with their PostgreSQL types (recorded
/// when created; a column added by hand has its declared SQLite type).
async fn file_columns(
    pool: &SqlitePool,
    table: &TableName,
) -> anyhow::Result<Option<Vec<(String, String)>>> {
    match sqlite::load_shape(pool, table).await {
        Ok(shape) => Ok(Some(
            shape
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.sql_type.clone()))
                .collect(),
        )),
        Err(crate::apply::shape::ShapeError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn table_diff(
    config: &Config,
    js: &async_nats::jetstream::Context,
    signer: Option<&syncdata_core::signature::SigningKey>,
    pool: &SqlitePool,
    table: &TableName,
) -> anyhow::Result<TableDiff> {
    let stream = crate::schema::stream_definition(js, config, signer, table).await?;
    let local = file_columns(pool, table).await?;
    let mut out = TableDiff {
        table: table.to_string(),
        version: stream.as_ref().map(|(_, v)| v.to_string()),
        mapping: Vec::new(),
        differences: Vec::new(),
    };
    let Some((def, _)) = stream else {
        out.mapping = local
            .unwrap_or_default()
            .iter()
            .map(|(c, t)| mapped(c, t))
            .collect();
        return Ok(out);
    };
    out.mapping = def
        .columns
        .iter()
        .map(|c| mapped(&c.name, &c.type_name))
        .collect();
    out.differences = differences(table, &def, local.as_deref());
    Ok(out)
}

/// What brings the file's table (`local`: its columns and their
/// PostgreSQL types; None: missing) in line with production's definition.
fn differences(
    table: &TableName,
    def: &syncdata_core::tabledef::TableDef,
    local: Option<&[(String, String)]>,
) -> Vec<Difference> {
    let quoted = sqlite::quote(&sqlite::local_name(table));
    let mut out = TableDiff {
        table: table.to_string(),
        version: None,
        mapping: Vec::new(),
        differences: Vec::new(),
    };
    let Some(local) = local else {
        let pg = sqlite_cmd::pg_table(def);
        out.differences.push(Difference {
            kind: "create_table",
            safe: true,
            detail: format!("{table} is missing in the file"),
            sql: pg.create_sql(&sqlite::local_name(table)),
        });
        return out.differences;
    };
    for c in &def.columns {
        match local.iter().find(|(n, _)| *n == c.name) {
            None => out.differences.push(Difference {
                kind: "add_column",
                safe: true,
                detail: format!("column {} ({}) is missing in the file", c.name, c.type_name),
                sql: format!(
                    "alter table {quoted} add column {} {}",
                    sqlite::quote(&c.name),
                    values::sqlite_type(values::kind_of(&c.type_name))
                ),
            }),
            Some((_, here)) if values::kind_of(here) != values::kind_of(&c.type_name) => {
                out.differences.push(Difference {
                    kind: "change_type",
                    safe: false,
                    detail: format!(
                        "column {} is {} in production, stored as {here} here",
                        c.name, c.type_name
                    ),
                    sql: format!(
                        "-- recreate {quoted} with {} {} and `syncdata resync {table} --yes`",
                        sqlite::quote(&c.name),
                        values::sqlite_type(values::kind_of(&c.type_name))
                    ),
                })
            }
            Some(_) => {}
        }
    }
    for (name, _) in local {
        if def.column(name).is_none() {
            out.differences.push(Difference {
                kind: "drop_column",
                safe: false,
                detail: format!("column {name} is not in production's definition"),
                sql: format!("alter table {quoted} drop column {}", sqlite::quote(name)),
            });
        }
    }
    out.differences
}

/// A SCHEMA record reaching the SQLite daemon (docs/sqlite.md): under
/// `schema_policy = "auto"` the columns production added are added to the
/// file's table (with their PostgreSQL types, for the mapping), in the
/// stream's order between the records before and after it; anything else
/// (a dropped or retyped column, a table missing in the file) is logged
/// and left to `schema diff` / `schema migrate`. Adding columns only makes
/// the take idempotent and order-free: an older definition adds nothing a
/// newer one took away. Returns the statements run.
pub async fn take(
    pool: &SqlitePool,
    config: &Config,
    table: &TableName,
    record: &syncdata_core::record::Record,
) -> Result<Vec<String>, crate::schema::TakeError> {
    use crate::schema::TakeError;
    let def = syncdata_core::tabledef::TableDef::from_record(record).map_err(TakeError::Invalid)?;
    if def.schema != table.schema || def.table != table.table {
        return Err(TakeError::Invalid(format!(
            "definition of {}.{} on the subject of {table}",
            def.schema, def.table
        )));
    }
    take_def(pool, config, table, &def)
        .await
        .map_err(|e| TakeError::Db(format!("{e:#}")))
}

async fn take_def(
    pool: &SqlitePool,
    config: &Config,
    table: &TableName,
    def: &syncdata_core::tabledef::TableDef,
) -> anyhow::Result<Vec<String>> {
    let policy = crate::schema::Policy::of(config, table);
    if policy != crate::schema::Policy::Auto {
        tracing::warn!(table = %table, ?policy, "schema change not applied: on a SQLite target only schema_policy = \"auto\" adds columns (docs/sqlite.md)");
        return Ok(Vec::new());
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let local = file_columns_in(&mut tx, table).await?;
    let diffs = differences(table, def, local.as_deref());
    let mut run = Vec::new();
    for d in &diffs {
        if d.kind != "add_column" {
            tracing::warn!(table = %table, kind = d.kind, detail = %d.detail,
                           "schema change not applied to the SQLite file: see `syncdata schema diff`");
            continue;
        }
        sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
            .execute(&mut *tx)
            .await?;
        run.push(d.sql.clone());
    }
    if !run.is_empty() {
        let local = sqlite::local_name(table);
        for c in &def.columns {
            sqlx::query(
                "insert or ignore into syncdata_columns (table_name, column_name, pg_type) values (?, ?, ?)",
            )
            .bind(&local)
            .bind(&c.name)
            .bind(&c.type_name)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(run)
}

/// [`file_columns`] inside a transaction (read under its lock).
async fn file_columns_in(
    tx: &mut sqlx::SqliteConnection,
    table: &TableName,
) -> anyhow::Result<Option<Vec<(String, String)>>> {
    let name = sqlite::local_name(table);
    let cols: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select i.name, i.type, c.pg_type from pragma_table_info(?1) i \
         left join syncdata_columns c on c.table_name = ?1 and c.column_name = i.name order by i.cid",
    )
    .bind(&name)
    .fetch_all(&mut *tx)
    .await?;
    if cols.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        cols.into_iter()
            .map(|(n, declared, pg)| (n, pg.unwrap_or(declared)))
            .collect(),
    ))
}

async fn diffs(
    config: &Config,
    settings: &Settings,
    tables: &[String],
) -> anyhow::Result<(SqlitePool, Vec<TableDiff>)> {
    let pool = sqlite_cmd::open(settings).await?;
    let names = LocalStore::Sqlite(pool.clone())
        .named_or_whitelisted(tables, "compare")
        .await?;
    let client = syncdata_core::nats::connect(&config.nats, "syncdata-schema").await?;
    let js = async_nats::jetstream::new(client);
    let signer =
        syncdata_core::signature::SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
            std::env::var(k).ok()
        })?;
    let mut out = Vec::new();
    for t in &names {
        out.push(table_diff(config, &js, signer.as_ref(), &pool, t).await?);
    }
    Ok((pool, out))
}

/// `schema diff`: exit status 0 when every table matches, 1 otherwise.
pub async fn diff(
    config: &Config,
    settings: &Settings,
    tables: &[String],
    json: bool,
) -> anyhow::Result<u8> {
    let (_, all) = diffs(config, settings, tables).await?;
    let differing = all.iter().any(|t| !t.differences.is_empty());
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?)?;
        return Ok(u8::from(differing));
    }
    for t in &all {
        match &t.version {
            None => outln!(
                "{}: no definition in the stream (is schema capture installed on the source?)",
                t.table
            )?,
            Some(v) if t.differences.is_empty() => {
                outln!("{}: matches the stream's definition at {v}", t.table)?
            }
            Some(v) => outln!(
                "{}: {} difference(s) from the stream's definition at {v}",
                t.table,
                t.differences.len()
            )?,
        }
        for d in &t.differences {
            let class = if d.safe { "safe" } else { "destructive" };
            outln!("  {} [{class}] {}", d.kind, d.detail)?;
            outln!("    {};", d.sql)?;
        }
        if !t.mapping.is_empty() {
            outln!("  type mapping (PostgreSQL -> SQLite):")?;
        }
        for m in &t.mapping {
            outln!(
                "    {:<24} {:<28} -> {:<8} {}",
                m.column,
                m.pg_type,
                m.sqlite_type,
                m.stored_as
            )?;
        }
    }
    Ok(u8::from(differing))
}

/// `schema migrate`: runs (or with `dry_run` prints) the safe differences
/// (a missing table, missing columns), recording the columns' PostgreSQL
/// types; with `allow_destructive` also drops columns production no longer
/// has. A changed type is never run: it needs the table recreated and
/// resynced.
pub async fn migrate(
    config: &Config,
    settings: &Settings,
    tables: &[String],
    dry_run: bool,
    allow_destructive: bool,
) -> anyhow::Result<()> {
    let (pool, all) = diffs(config, settings, tables).await?;
    for t in &all {
        if t.differences.is_empty() {
            continue;
        }
        outln!("-- {}", t.table)?;
        let name = TableName::parse(&t.table)?;
        let local = sqlite::local_name(&name);
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for d in &t.differences {
            let run = (d.safe || (allow_destructive && d.kind == "drop_column"))
                && !d.sql.starts_with("--");
            if !run {
                outln!("-- not run ({} [destructive]): {};", d.kind, d.sql)?;
                continue;
            }
            outln!("{};", d.sql)?;
            if dry_run {
                continue;
            }
            sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
                .execute(&mut *tx)
                .await
                .with_context(|| format!("{}: {}", t.table, d.sql))?;
        }
        if !dry_run {
            // A retyped column keeps the type its values are stored under.
            let retyped: Vec<&str> = t
                .differences
                .iter()
                .filter(|d| d.kind == "change_type")
                .filter_map(|d| d.detail.strip_prefix("column ")?.split(' ').next())
                .collect();
            for m in t
                .mapping
                .iter()
                .filter(|m| !retyped.contains(&m.column.as_str()))
            {
                sqlx::query(
                    "insert or replace into syncdata_columns (table_name, column_name, pg_type) values (?, ?, ?)",
                )
                .bind(&local)
                .bind(&m.column)
                .bind(&m.pg_type)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
    if dry_run {
        outln!("-- dry run: nothing was changed")?;
    }
    Ok(())
}
