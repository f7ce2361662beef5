//! `syncdata schema diff [T…] [--json]` and `syncdata schema migrate [T…]
//! [--dry-run] [--allow-destructive]`: the stream's newest definition of
//! each table (the last message of its `.schema` subject) against the local
//! table, and the SQL that brings the local table in line. Works before the
//! first row: a table missing locally is one difference, `CREATE TABLE`.
//! See docs/schema.md.

use anyhow::{bail, Context};
use async_nats::jetstream;
use serde::Serialize;
use sqlx::PgPool;
use syncdata_core::config::Config;
use syncdata_core::signature::SigningKey;
use syncdata_core::table::TableName;
use syncdata_core::{nats, outln};

use crate::schema::diff::{self, Class, Difference};
use crate::store;

#[derive(Debug, Serialize)]
pub struct TableDiff {
    pub table: String,
    /// The stream's definition version (`lsn/seq`); None: the stream holds
    /// no definition of the table.
    pub version: Option<String>,
    pub differences: Vec<Difference>,
}

struct Sources {
    pool: PgPool,
    js: jetstream::Context,
    signer: Option<SigningKey>,
}

async fn open(config: &Config) -> anyhow::Result<Sources> {
    let pool = store::connect_and_migrate(config).await?;
    let client = nats::connect(&config.nats, "syncdata-schema").await?;
    let js = jetstream::new(client);
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    Ok(Sources { pool, js, signer })
}

async fn table_diff(
    src: &Sources,
    config: &Config,
    table: &TableName,
) -> anyhow::Result<TableDiff> {
    let stream =
        crate::schema::stream_definition(&src.js, config, src.signer.as_ref(), table).await?;
    let Some((def, version)) = stream else {
        return Ok(TableDiff {
            table: table.to_string(),
            version: None,
            differences: vec![],
        });
    };
    let local = crate::schema::local_definition(&src.pool, table).await?;
    Ok(TableDiff {
        table: table.to_string(),
        version: Some(version.to_string()),
        differences: diff::diff(&def, local.as_ref()),
    })
}

async fn diffs(
    config: &Config,
    src: &Sources,
    tables: &[String],
) -> anyhow::Result<Vec<TableDiff>> {
    let names = crate::cmd::named_or_whitelisted(&src.pool, tables, "compare").await?;
    let mut out = Vec::new();
    for t in &names {
        out.push(table_diff(src, config, t).await?);
    }
    Ok(out)
}

fn class_label(c: Class) -> &'static str {
    match c {
        Class::Safe => "safe",
        Class::Destructive => "destructive",
        Class::Manual => "manual",
    }
}

/// `schema diff`: exit status 0 when every table matches, 1 otherwise.
pub async fn diff(config: &Config, tables: &[String], json: bool) -> anyhow::Result<u8> {
    let src = open(config).await?;
    let all = diffs(config, &src, tables).await?;
    let differing = all.iter().any(|t| !t.differences.is_empty());
    if json {
        outln!("{}", serde_json::to_string_pretty(&all)?)?;
    } else {
        for t in &all {
            match &t.version {
                None => outln!(
                    "{}: no definition in the stream (is schema capture installed on the source?)",
                    t.table
                )?,
                Some(v) if t.differences.is_empty() => {
                    outln!("{}: matches the stream's definition at {v}", t.table)?
                }
                Some(v) => {
                    outln!(
                        "{}: {} difference(s) from the stream's definition at {v}",
                        t.table,
                        t.differences.len()
                    )?;
                    for d in &t.differences {
                        outln!("  {} [{}] {}", d.kind, class_label(d.class), d.detail)?;
                        outln!("    {};", d.sql)?;
                    }
                }
            }
        }
    }
    Ok(u8::from(differing))
}

/// `schema migrate`: runs (or with `dry_run` prints) the SQL of the safe
/// differences, and with `allow_destructive` of every difference.
pub async fn migrate(
    config: &Config,
    tables: &[String],
    dry_run: bool,
    allow_destructive: bool,
) -> anyhow::Result<()> {
    let src = open(config).await?;
    let all = diffs(config, &src, tables).await?;
    for t in &all {
        let (run, rest): (Vec<&Difference>, Vec<&Difference>) = t
            .differences
            .iter()
            .partition(|d| allow_destructive || d.class == Class::Safe);
        if run.is_empty() && rest.is_empty() {
            continue;
        }
        outln!("-- {}", t.table)?;
        for d in &run {
            outln!("{};", d.sql)?;
        }
        for d in &rest {
            outln!(
                "-- not run without --allow-destructive ({} [{}]): {};",
                d.kind,
                class_label(d.class),
                d.sql
            )?;
        }
        if !dry_run && !run.is_empty() {
            let mut tx = src.pool.begin().await?;
            for d in &run {
                sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("{}: {}", t.table, d.sql))?;
            }
            tx.commit().await?;
        }
    }
    if dry_run {
        outln!("-- dry run: nothing was changed")?;
    }
    Ok(())
}

/// `add-tables --create`: creates each table missing locally from the
/// stream's definition (with its foreign keys whose parent exists locally).
pub async fn create_missing(config: &Config, table: &TableName) -> anyhow::Result<bool> {
    let src = open(config).await?;
    if crate::schema::local_definition(&src.pool, table)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let Some((def, _)) =
        crate::schema::stream_definition(&src.js, config, src.signer.as_ref(), table).await?
    else {
        bail!(
            "{table} does not exist locally and the stream holds no definition of it \
             (install schema capture with `syncdata-producer setup-source` on the source)"
        );
    };
    let mut tx = src.pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        syncdata_core::table::quote_ident(&table.schema)
    )))
    .execute(&mut *tx)
    .await?;
    for d in diff::diff(&def, None) {
        if d.kind == "add_foreign_key" {
            let parent = def.foreign_keys.iter().find(|fk| {
                d.detail
                    .contains(&format!("{}.{}", fk.ref_schema, fk.ref_table))
            });
            let exists = match parent {
                Some(fk) => {
                    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                        .bind(TableName::new(fk.ref_schema.clone(), fk.ref_table.clone()).quoted())
                        .fetch_one(&mut *tx)
                        .await?
                }
                None => false,
            };
            if !exists
                && parent
                    .is_some_and(|fk| !(fk.ref_schema == def.schema && fk.ref_table == def.table))
            {
                continue;
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("creating {table}: {}", d.sql))?;
    }
    tx.commit().await?;
    Ok(true)
}
