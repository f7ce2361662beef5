//! The commands of a SQLite target (docs/sqlite.md): `add-tables`
//! (`--create-from FILE.sql` creates the tables from production's DDL),
//! `list-tables`, `remove-tables`, `start`, `stop`, `status`, `resync`,
//! `clear` and `verify`, against the one file that holds data and
//! bookkeeping. The daemon is the PostgreSQL one's core: the same workers
//! (`worker::run_table`) and the same engine, with the SQLite target.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures::StreamExt;
use sqlx::{Connection, SqlitePool};
use syncdata_core::config::Config;
use syncdata_core::signature::{self, SigningKey};
use syncdata_core::table::TableName;
use syncdata_core::target::SqliteTarget as Settings;
use syncdata_core::{errln, nats, outln};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::apply::sqlite::{self, ddl, values, SqliteTarget};
use crate::apply::Engine;
use crate::local::{self, LocalStore};
use crate::store::uuid_like::Id;
use crate::worker::{self, WorkerShared};
use crate::{daemon, supervise};

/// A daemon whose heartbeat is older than this is taken for dead.
const ALIVE_SECS: f64 = 20.0;
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Opens the target's file (created and migrated when new).
pub async fn open(settings: &Settings) -> anyhow::Result<SqlitePool> {
    if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory of {}", settings.path.display()))?;
    }
    sqlite::connect(&settings.path, &settings.synchronous)
        .await
        .with_context(|| format!("opening the SQLite target {}", settings.path.display()))
}

/// The whitelist, in the order tables were added.
pub async fn whitelist(pool: &SqlitePool) -> anyhow::Result<Vec<TableName>> {
    let rows: Vec<String> = sqlx::query_scalar("select table_name from tables_to_sync order by id")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|t| TableName::parse(t).map_err(|e| anyhow::anyhow!("whitelist entry {t:?}: {e}")))
        .collect()
}

/// Creates the tables of `file` (a PostgreSQL DDL file) that `names`
/// names, recording each column's PostgreSQL type for the mapping.
pub async fn create_from(
    pool: &SqlitePool,
    file: &Path,
    names: &[TableName],
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let tables = ddl::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for name in names {
        let def = tables
            .iter()
            .find(|t| t.schema == name.schema && t.name == name.table)
            .ok_or_else(|| anyhow::anyhow!("{} defines no table {name}", file.display()))?;
        create_table(&mut tx, def)
            .await
            .with_context(|| format!("table {name} in {}", file.display()))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Creates one table (if missing) under the type mapping and records its
/// columns' PostgreSQL types in `syncdata_columns`.
async fn create_table(tx: &mut sqlx::SqliteConnection, def: &ddl::PgTable) -> anyhow::Result<()> {
    if def.primary_key.is_empty() {
        bail!("no primary key: syncdata needs one");
    }
    let local = sqlite::local_name(&TableName::new(def.schema.clone(), def.name.clone()));
    sqlx::query(sqlx::AssertSqlSafe(def.create_sql(&local)))
        .execute(&mut *tx)
        .await?;
    for (column, pg_type) in &def.columns {
        sqlx::query(
            "insert or replace into syncdata_columns (table_name, column_name, pg_type) values (?, ?, ?)",
        )
        .bind(&local)
        .bind(column)
        .bind(pg_type)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// `add-tables --create`: creates `table` when the file lacks it, from the
/// newest definition the stream carries (schema capture, docs/schema.md),
/// under the type mapping. Returns whether it created it.
pub async fn create_from_stream(
    config: &Config,
    pool: &SqlitePool,
    table: &TableName,
) -> anyhow::Result<bool> {
    if sqlite::load_shape(pool, table).await.is_ok() {
        return Ok(false);
    }
    let def = stream_definition(config, table).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{table} does not exist in the file and the stream holds no definition of it \
             (install schema capture with `syncdata-producer setup-source` on the source, \
             or give --create-from FILE.sql)"
        )
    })?;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    create_table(&mut tx, &pg_table(&def))
        .await
        .with_context(|| format!("creating {table}"))?;
    tx.commit().await?;
    Ok(true)
}

/// The stream's newest definition of `table` (its signature checked when a
/// signing key is set).
async fn stream_definition(
    config: &Config,
    table: &TableName,
) -> anyhow::Result<Option<syncdata_core::tabledef::TableDef>> {
    let client = nats::connect(&config.nats, "syncdata-schema").await?;
    let js = jetstream::new(client);
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    Ok(
        crate::schema::stream_definition(&js, config, signer.as_ref(), table)
            .await?
            .map(|(def, _)| def),
    )
}

/// A definition from the stream as the DDL reader's table: column names
/// and PostgreSQL types (`format_type`'s), and the primary key.
pub fn pg_table(def: &syncdata_core::tabledef::TableDef) -> ddl::PgTable {
    ddl::PgTable {
        schema: def.schema.clone(),
        name: def.table.clone(),
        columns: def
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.type_name.clone()))
            .collect(),
        primary_key: def.primary_key.clone(),
    }
}

/// Whitelists `tables`, creating them first from a DDL file
/// (`create_from_file`) or from the definitions the stream carries
/// (`create`, see [`create_from_stream`]). With `json`, prints the shape
/// `add-tables --json` prints on PostgreSQL: `{"added", "already_listed",
/// "failed": [{"table", "error"}]}`.
pub async fn add_tables(
    config: &Config,
    settings: &Settings,
    tables: &[String],
    create: bool,
    create_from_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let pool = open(settings).await?;
    let names = tables
        .iter()
        .map(|t| TableName::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = create_from_file {
        create_from(&pool, file, &names).await?;
    }
    let creator = std::env::var("USER").ok();
    let (mut added, mut listed, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for name in &names {
        let result = async {
            if let Some(reason) = name.denied() {
                bail!("cannot add {name}: {reason}");
            }
            if create && create_from_stream(config, &pool, name).await? {
                match json {
                    true => errln!("created {name} from production's definition"),
                    false => outln!("created {name} from production's definition")?,
                }
            }
            if let Err(e) = sqlite::load_shape(&pool, name).await {
                bail!(
                    "cannot add {name}: {e} (or create it with --create, or --create-from FILE.sql)"
                );
            }
            let added = sqlx::query(
                "insert or ignore into tables_to_sync (table_name, creator) values (?, ?)",
            )
            .bind(name.to_string())
            .bind(creator.as_deref())
            .execute(&pool)
            .await?
            .rows_affected()
                == 1;
            anyhow::Ok(added)
        }
        .await;
        match result {
            Ok(true) if json => added.push(name.to_string()),
            Ok(false) if json => listed.push(name.to_string()),
            Ok(true) => outln!("added {name}")?,
            Ok(false) => outln!("{name} is already listed")?,
            Err(e) => {
                failed += 1;
                match json {
                    true => failures.push(
                        serde_json::json!({"table": name.to_string(), "error": format!("{e:#}")}),
                    ),
                    false => errln!("error: {e:#}"),
                }
            }
        }
    }
    if json {
        let out = serde_json::json!({"added": added, "already_listed": listed, "failed": failures});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    }
    if failed > 0 {
        bail!("{failed} of {} tables could not be added", names.len());
    }
    Ok(())
}

pub async fn list_tables(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = open(settings).await?;
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("select table_name, creator, created_at from tables_to_sync order by id")
            .fetch_all(&pool)
            .await?;
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(t, c, at)| serde_json::json!({"table": t, "creator": c, "created_at": at}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?)?;
    } else if rows.is_empty() {
        outln!("{}", daemon::NO_TABLES)?;
    } else {
        outln!("synced tables ({}):", rows.len())?;
        for (t, _, _) in rows {
            outln!("  - {t}")?;
        }
    }
    Ok(())
}

/// With `json`, prints `{"removed": [..], "not_listed": [..]}` as on
/// PostgreSQL.
pub async fn remove_tables(
    settings: &Settings,
    tables: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let pool = open(settings).await?;
    let (mut removed, mut not_listed) = (Vec::new(), Vec::new());
    for t in tables {
        let name = TableName::parse(t)?;
        let was = sqlx::query("delete from tables_to_sync where table_name = ?")
            .bind(name.to_string())
            .execute(&pool)
            .await?
            .rows_affected()
            > 0;
        match (json, was) {
            (true, true) => removed.push(name.to_string()),
            (true, false) => not_listed.push(name.to_string()),
            (false, true) => outln!("removed {name}")?,
            (false, false) => outln!("{name} is not listed")?,
        }
    }
    if json {
        let out = serde_json::json!({"removed": removed, "not_listed": not_listed});
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// Empties `table` locally and forgets its bookkeeping (one transaction).
pub async fn reset_table(pool: &SqlitePool, table: &TableName) -> anyhow::Result<()> {
    let local = sqlite::local_name(table);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {}",
        sqlite::quote(&local)
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "delete from syncdata_row_state where table_id in \
         (select id from syncdata_table_state where table_name = ?)",
    )
    .bind(&local)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from syncdata_table_state where table_name = ?")
        .bind(&local)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// With `json`, prints `{"cleared": [..]}` as on PostgreSQL.
pub async fn clear(settings: &Settings, yes: bool, json: bool) -> anyhow::Result<()> {
    if !yes {
        bail!("clear empties every synced table: add --yes to confirm");
    }
    let pool = open(settings).await?;
    let tables = whitelist(&pool).await?;
    if tables.is_empty() {
        bail!(daemon::NO_TABLES);
    }
    for t in &tables {
        reset_table(&pool, t).await?;
        if !json {
            outln!("cleared {t}")?;
        }
    }
    if json {
        let cleared: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"cleared": cleared}))?
        )?;
        return Ok(());
    }
    outln!(
        "the tables stay empty until their rows change again at the source; \
         `syncdata resync TABLE --yes` refills one from the stream's history"
    )?;
    Ok(())
}

async fn running_daemons(pool: &SqlitePool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from syncdata_daemons where stopped_at is null \
         and last_seen > unixepoch('subsec') - ?",
    )
    .bind(ALIVE_SECS)
    .fetch_one(pool)
    .await?)
}

/// Empties the table and replays its history: the durable is deleted, so
/// the next `start` creates it at the start of the stream. Refused while a
/// daemon runs on the file (stop it first).
pub async fn resync(
    config: &Config,
    settings: &Settings,
    table: &str,
    yes: bool,
) -> anyhow::Result<()> {
    if !yes {
        bail!("resync empties {table} before its history is replayed: add --yes to confirm");
    }
    let pool = open(settings).await?;
    let name = TableName::parse(table)?;
    if !whitelist(&pool).await?.contains(&name) {
        bail!("{name} is not whitelisted: add it with add-tables first");
    }
    if running_daemons(&pool).await? > 0 {
        bail!("a daemon is running on this file: `syncdata stop`, then resync, then start again");
    }
    let instance = local::sqlite_instance_id(&pool).await?;
    let client = nats::connect(&config.nats, "syncdata-resync").await?;
    let js = jetstream::new(client);
    let durable = syncdata_core::subject::durable_name(
        &config.nats.stream,
        &instance,
        &name.schema,
        &name.table,
    );
    reset_table(&pool, &name).await?;
    let stream = js
        .get_stream(&config.nats.stream)
        .await
        .map_err(|e| anyhow::anyhow!("change stream {}: {e}", config.nats.stream))?;
    // Missing already: nothing to delete.
    let _ = stream.delete_consumer(&durable).await;
    outln!("emptied {name}; its history is replayed from the start of the stream on the next `syncdata start`")?;
    Ok(())
}

/// With `json`, prints `{"daemons_asked": N, "stopped": true}` as on
/// PostgreSQL once they have stopped.
pub async fn stop(
    config: &Config,
    settings: &Settings,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let pool = open(settings).await?;
    let before = running_daemons(&pool).await?;
    let result = |asked: i64| {
        serde_json::to_string_pretty(&serde_json::json!({"daemons_asked": asked, "stopped": true}))
    };
    if before == 0 {
        match json {
            true => outln!("{}", result(0)?)?,
            false => outln!("no running daemons")?,
        }
        return Ok(());
    }
    let instance = local::sqlite_instance_id(&pool).await?;
    let client = nats::connect(&config.nats, "syncdata-stop").await?;
    client
        .publish(daemon::control_subject(&instance), "stop".into())
        .await?;
    client.flush().await?;
    if !json {
        outln!("asked {before} daemons to stop; waiting for in-flight batches")?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = running_daemons(&pool).await?;
        if left == 0 {
            match json {
                true => outln!("{}", result(before)?)?,
                false => outln!("stopped")?,
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{left} daemons still running after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Status: the daemons on the file, and per table its rows, last batch,
/// records synced, the stream's backlog and the dead letters waiting now
/// (as on PostgreSQL: `errors` are the dead letters waiting, or without
/// NATS the FAILED log rows of the last 24 hours; `errors_logged` all
/// FAILED rows ever). Returns 2 under `--check` when no daemon runs or a
/// table has dead letters waiting, else 0.
pub async fn status(
    config: &Config,
    settings: &Settings,
    json: bool,
    check: bool,
) -> anyhow::Result<i32> {
    let pool = open(settings).await?;
    let daemons = running_daemons(&pool).await?;
    let instance = local::sqlite_instance_id(&pool).await?;
    let streams = match crate::cmd::status::streams(config).await {
        Ok(s) => Some(s),
        Err(e) => {
            errln!("warning: NATS not reachable, no backlog or dead letters: {e:#}");
            None
        }
    };
    let mut tables = Vec::new();
    for t in whitelist(&pool).await? {
        let local = sqlite::local_name(&t);
        let rows: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from {}",
            sqlite::quote(&local)
        )))
        .fetch_one(&pool)
        .await
        .ok();
        let (last, synced, logged, recent): (Option<String>, i64, i64, i64) = sqlx::query_as(
            "select max(case when status = 'SUCCESS' then sync_time end), \
                    coalesce(sum(case when status = 'SUCCESS' then rows_synced end), 0) \
                      + coalesce((select records_synced from syncdata_log_totals where table_name = ?1), 0), \
                    count(case when status = 'FAILED' then 1 end) \
                      + coalesce((select errors from syncdata_log_totals where table_name = ?1), 0), \
                    count(case when status = 'FAILED' \
                               and unixepoch(sync_time, 'subsec') > unixepoch('subsec') - 86400 then 1 end) \
             from data_sync_logs where table_name = ?1",
        )
        .bind(t.to_string())
        .fetch_one(&pool)
        .await?;
        let backlog = match &streams {
            Some((changes, dlq, _)) => {
                crate::backlog::table_backlog(changes, dlq, config, &instance, &t)
                    .await
                    .ok()
            }
            None => None,
        };
        let errors = backlog.as_ref().map_or(recent, |b| b.dlq as i64);
        tables.push(serde_json::json!({
            "table": t.to_string(), "rows": rows, "last_batch_at": last,
            "records_synced": synced, "errors": errors, "errors_logged": logged,
            "backlog": backlog.as_ref().map(|b| b.pending + b.ack_pending),
            "stream": backlog,
        }));
    }
    let attention = daemons == 0 || tables.iter().any(|t| t["errors"].as_i64() > Some(0));
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "target": "sqlite", "file": settings.path.display().to_string(),
                "daemons_running": daemons, "tables": tables,
            }))?
        )?;
    } else {
        outln!("target: SQLite file {}", settings.path.display())?;
        outln!("daemons running: {daemons}")?;
        for t in &tables {
            outln!(
                "  {}: {} rows, {} records synced, last batch {}, {} dead letters waiting ({} failures logged), backlog {}",
                t["table"].as_str().unwrap_or(""),
                t["rows"]
                    .as_i64()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "missing".into()),
                t["records_synced"],
                t["last_batch_at"].as_str().unwrap_or("never"),
                t["errors"],
                t["errors_logged"],
                t["backlog"]
                    .as_u64()
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            )?;
        }
    }
    Ok(if check && attention { 2 } else { 0 })
}

/// What `verify` found for one table.
#[derive(Debug, Default, serde::Serialize)]
pub struct TableDiff {
    pub table: String,
    pub source_rows: usize,
    pub local_rows: usize,
    /// Keys (text) whose row differs or exists on one side only.
    pub differing: Vec<String>,
    /// The first `max_rows` of them as `verify` lists them on PostgreSQL.
    pub rows: Vec<crate::cmd::verify::RowDiff>,
    pub differing_count: usize,
    /// Columns that differ in rows present on both sides (names only,
    /// never values).
    pub differing_columns: Vec<String>,
    pub columns_compared: Vec<String>,
}

/// Compares `table` in the SQLite file with the source, value by value
/// under the type mapping (docs/sqlite.md): each source value's text is
/// mapped as the target maps it and compared with what the file holds
/// (timestamps with an offset as instants, floats as numbers).
pub async fn diff_table(
    source: &mut sqlx::PgConnection,
    pool: &SqlitePool,
    table: &TableName,
    exclude: &[String],
    max_rows: usize,
) -> anyhow::Result<TableDiff> {
    let shape = sqlite::load_shape(pool, table).await?;
    let cols: Vec<usize> = (0..shape.columns.len())
        .filter(|&c| {
            let n = &shape.columns[c].name;
            shape.is_key(c)
                || !exclude.iter().any(|e| {
                    e == n || *e == format!("{}.{n}", table.table) || *e == format!("{table}.{n}")
                })
        })
        .collect();
    let kinds: Vec<values::Kind> = shape
        .columns
        .iter()
        .map(|c| values::kind_of(&c.sql_type))
        .collect();
    let key_of = |row: &[String]| -> String {
        shape
            .key
            .iter()
            .map(|&k| {
                row[cols
                    .iter()
                    .position(|&c| c == k)
                    .expect("key column selected")]
                .clone()
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    // Source: text of every value, mapped and canonicalized.
    let select: Vec<String> = cols
        .iter()
        .map(|&c| {
            format!(
                "{}::text",
                syncdata_core::table::quote_ident(&shape.columns[c].name)
            )
        })
        .collect();
    let sql = format!("select {} from {}", select.join(", "), table.quoted());
    let mut src: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *source);
        while let Some(row) = rows.next().await {
            let row = row?;
            let mut vals = Vec::with_capacity(cols.len());
            for (i, &c) in cols.iter().enumerate() {
                let text: Option<String> = sqlx::Row::try_get(&row, i)?;
                vals.push(canon(
                    kinds[c],
                    bound_to_stored(values::to_sqlite(kinds[c], text.as_deref())),
                ));
            }
            src.insert(key_of(&vals), vals);
        }
    }
    let select: Vec<String> = cols
        .iter()
        .map(|&c| sqlite::quote(&shape.columns[c].name))
        .collect();
    let sql = format!(
        "select {} from {}",
        select.join(", "),
        sqlite::quote(&sqlite::local_name(table))
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?;
    let mut diff = TableDiff {
        table: table.to_string(),
        source_rows: src.len(),
        local_rows: rows.len(),
        ..Default::default()
    };
    use crate::cmd::verify::DiffKind;
    let mut bad: Vec<(String, DiffKind, Vec<String>)> = Vec::new();
    let key_parts = |vals: &[String]| -> Vec<String> {
        shape
            .key
            .iter()
            .map(|&k| {
                let v = &vals[cols
                    .iter()
                    .position(|&c| c == k)
                    .expect("key column selected")];
                // The canonical form without its kind letter.
                if v == "null" {
                    "NULL".to_owned()
                } else {
                    v[1..].to_owned()
                }
            })
            .collect()
    };
    for row in &rows {
        let mut vals = Vec::with_capacity(cols.len());
        for (i, &c) in cols.iter().enumerate() {
            vals.push(canon(kinds[c], sqlite::stored_value(row, i)?));
        }
        let key = key_of(&vals);
        match src.remove(&key) {
            Some(s) if s == vals => {}
            Some(s) => {
                for (i, &c) in cols.iter().enumerate() {
                    let name = &shape.columns[c].name;
                    if s[i] != vals[i] && !diff.differing_columns.contains(name) {
                        diff.differing_columns.push(name.clone());
                    }
                }
                bad.push((key, DiffKind::Different, key_parts(&vals)))
            }
            None => bad.push((key, DiffKind::ExtraLocally, key_parts(&vals))),
        }
    }
    bad.extend(
        src.into_iter()
            .map(|(key, vals)| (key, DiffKind::MissingLocally, key_parts(&vals))),
    );
    bad.sort_by(|a, b| a.0.cmp(&b.0));
    diff.differing_count = bad.len();
    bad.truncate(max_rows);
    let key_names: Vec<String> = shape
        .key
        .iter()
        .map(|&k| shape.columns[k].name.clone())
        .collect();
    diff.rows = bad
        .iter()
        .map(|(_, kind, parts)| crate::cmd::verify::RowDiff {
            kind: *kind,
            key: key_names
                .iter()
                .cloned()
                .zip(parts.iter().cloned())
                .collect(),
        })
        .collect();
    diff.differing = bad.into_iter().map(|(key, _, _)| key).collect();
    diff.columns_compared = cols
        .iter()
        .map(|&c| shape.columns[c].name.clone())
        .collect();
    Ok(diff)
}

fn bound_to_stored(b: values::Bound) -> values::Stored {
    match b {
        values::Bound::Null => values::Stored::Null,
        values::Bound::Int(i) => values::Stored::Int(i),
        values::Bound::Real(f) => values::Stored::Real(f),
        values::Bound::Text(t) => values::Stored::Text(t),
        values::Bound::Blob(b) => values::Stored::Blob(b),
    }
}

/// A value's comparable form under the mapping.
fn canon(kind: values::Kind, v: values::Stored) -> String {
    use time::format_description::well_known::Rfc3339;
    use values::{Kind, Stored};
    match (kind, v) {
        (_, Stored::Null) => "null".to_owned(),
        (Kind::Real, Stored::Text(t)) => match t.parse::<f64>() {
            Ok(f) => format!("r{f:?}"),
            Err(_) => format!("s{t}"),
        },
        (_, Stored::Real(f)) => format!("r{f:?}"),
        (_, Stored::Int(i)) => format!("i{i}"),
        (Kind::TimestampTz, Stored::Text(t)) => match time::OffsetDateTime::parse(&t, &Rfc3339) {
            Ok(at) => format!("t{}", at.unix_timestamp_nanos()),
            Err(_) => format!("s{t}"),
        },
        (Kind::Json, Stored::Text(t)) => match serde_json::from_str::<serde_json::Value>(&t) {
            // Key order and spacing of json: the same document.
            Ok(v) => format!("j{v}"),
            Err(_) => format!("s{t}"),
        },
        (Kind::Numeric, Stored::Text(t)) if t.contains('.') && !t.contains(['e', 'E']) => {
            // Trailing zeros of the scale: the same number.
            format!("n{}", t.trim_end_matches('0').trim_end_matches('.'))
        }
        (Kind::Numeric, Stored::Text(t)) => format!("n{t}"),
        (_, Stored::Text(t)) => format!("s{t}"),
        (_, Stored::Blob(b)) => format!("b{}", values::hex(&b)),
    }
}

pub async fn verify(
    config: &Config,
    settings: &Settings,
    tables: &[String],
    source: Option<String>,
    exclude: &[String],
    max_rows: usize,
    json: bool,
) -> anyhow::Result<()> {
    let pool = open(settings).await?;
    let url = source
        .or_else(|| config.verify_source_url().map(str::to_owned))
        .ok_or_else(|| anyhow::anyhow!("no source: give --source URL or set verify.source_url"))?;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .context("cannot connect to the source database")?;
    // The source's text forms as the stream carries them.
    sqlx::raw_sql(
        "set extra_float_digits = 3; set bytea_output = 'hex'; set intervalstyle = 'postgres'",
    )
    .execute(&mut conn)
    .await?;
    let names: Vec<TableName> = if tables.is_empty() {
        whitelist(&pool).await?
    } else {
        tables
            .iter()
            .map(|t| TableName::parse(t))
            .collect::<Result<_, _>>()?
    };
    if names.is_empty() {
        bail!("no tables to compare: name them, or whitelist them with add-tables");
    }
    // The reports of `verify` on PostgreSQL: the same text and JSON.
    let mut reports = Vec::new();
    for t in &names {
        let started = std::time::Instant::now();
        let d = diff_table(&mut conn, &pool, t, exclude, max_rows).await?;
        let mut hints = Vec::new();
        if !d.differing_columns.is_empty() {
            hints.push(format!(
                "columns that differ: {}",
                d.differing_columns.join(", ")
            ));
        }
        let report = crate::cmd::verify::TableReport {
            table: d.table,
            equal: d.differing_count == 0,
            source_rows: d.source_rows as i64,
            local_rows: d.local_rows as i64,
            differing_rows: d.differing_count as u64,
            rows: d.rows,
            problems: Vec::new(),
            comparable: true,
            hints,
            columns_compared: d.columns_compared,
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        if !json {
            syncdata_core::out!("{}", crate::cmd::verify::render(&report, max_rows))?;
        }
        reports.push(report);
    }
    let differ = reports.iter().filter(|r| !r.equal).count();
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?)?;
    } else if differ == 0 {
        outln!("verify: all {} table(s) equal", reports.len())?;
    }
    if differ > 0 {
        return Err(syncdata_core::cli::Exit {
            code: 1,
            message: format!(
                "{differ} of {} table(s) differ from the source",
                reports.len()
            ),
        }
        .into());
    }
    Ok(())
}

/// The whitelist less the entries put into `tables_to_sync` by hand that
/// add-tables would refuse (logged).
async fn accepted_whitelist(pool: &SqlitePool) -> anyhow::Result<Vec<TableName>> {
    let mut tables = whitelist(pool).await?;
    tables.retain(|t| match t.denied() {
        Some(reason) => {
            tracing::error!(table = %t, "whitelisted table refused: {reason}");
            false
        }
        None => true,
    });
    Ok(tables)
}

/// `syncdata start` on a SQLite target: the same workers and engine as on
/// PostgreSQL; the daemon registers in the file, heartbeats, obeys `stop`,
/// and applies until stopped. Any number of processes may share the file
/// (each batch holds the file's write lock, BEGIN IMMEDIATE; they wait for
/// each other up to `busy_timeout`) and the table durables.
pub async fn start(
    config: Config,
    settings: Settings,
    token: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = config.consumer.metrics_addr {
        syncdata_core::telemetry::init_metrics(addr).map_err(anyhow::Error::msg)?;
    }
    let pool = open(&settings).await?;
    let mut tables = accepted_whitelist(&pool).await?;
    if tables.is_empty() {
        bail!(daemon::NO_TABLES);
    }
    let instance = local::sqlite_instance_id(&pool).await?;
    let engine = Engine::with_target(SqliteTarget::new(pool.clone()));
    for t in &tables {
        if let Err(e) = engine.shape(t).await {
            warn!(table = %t, error = %e, "whitelisted table cannot be applied to; its records will be dead-lettered");
        }
    }
    let signer = SigningKey::load(config.nats.signing_key_file.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    if signer.is_none() {
        warn!(
            "no signing key (nats.signing_key_file or {}): messages are applied without checking \
             that the producer sent them",
            signature::KEY_ENV
        );
    }
    let (client, mut server_errors) = nats::connect_with_errors(&config.nats, "syncdata").await?;
    daemon::refuse_open_server(&client, &mut server_errors, &config, &tables).await?;
    let js = jetstream::new(client.clone());
    let stream =
        nats::reconcile_stream(&js, nats::change_stream_config(&config.nats), false).await?;
    nats::reconcile_stream(&js, nats::dlq_stream_config(&config.nats), false).await?;
    let id = Id::random();
    sqlx::query("insert into syncdata_daemons (id, host, pid) values (?, ?, ?)")
        .bind(&id.0)
        .bind(daemon::hostname())
        .bind(std::process::id() as i64)
        .execute(&pool)
        .await?;
    let mut stop_requests = client.subscribe(daemon::control_subject(&instance)).await?;
    let ctx = Arc::new(
        WorkerShared::new(
            config.clone(),
            engine,
            LocalStore::Sqlite(pool.clone()),
            js,
            false,
            signer,
        )
        .with_max_payload(client.server_info().max_payload),
    );
    let workers_token = token.child_token();
    // Supervision as on PostgreSQL (crate::supervise): a worker that ends
    // while the daemon runs is restarted with backoff; one that keeps
    // failing quickly stops the daemon with an error.
    let fault = Arc::new(supervise::FaultHook::from_env());
    let restart_policy =
        supervise::restart_policy(Duration::from_millis(config.consumer.max_backoff_ms));
    let spawn = |workers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
                 table: TableName,
                 delay: Duration,
                 token: CancellationToken| {
        let (ctx, stream, config, instance, fault) = (
            ctx.clone(),
            stream.clone(),
            config.clone(),
            instance.clone(),
            fault.clone(),
        );
        workers
            .spawn(async move {
                if !delay.is_zero() && !syncdata_core::retry::sleep(delay, &token).await {
                    return Ok(());
                }
                let consumer = daemon::ensure_consumer(&stream, &config, &instance, &table).await?;
                fault.check(&table);
                worker::run_table(ctx, table, consumer, token).await;
                Ok(())
            })
            .id()
    };
    let mut workers = tokio::task::JoinSet::new();
    let mut slots: HashMap<tokio::task::Id, supervise::Slot> = HashMap::new();
    // Each table's own stop, for when it leaves the whitelist.
    let mut table_tokens: HashMap<TableName, CancellationToken> = HashMap::new();
    for t in &tables {
        // Fails early on a durable that cannot be made.
        daemon::ensure_consumer(&stream, &config, &instance, t).await?;
        let token = workers_token.child_token();
        table_tokens.insert(t.clone(), token.clone());
        let id = spawn(&mut workers, t.clone(), Duration::ZERO, token);
        slots.insert(id, supervise::Slot::new(t.clone()));
    }
    // Retention of the file's bookkeeping (tombstones, logs, daemons).
    tokio::spawn(crate::sqlite_gc::run(
        pool.clone(),
        stream.clone(),
        config.clone(),
        workers_token.clone(),
    ));
    // add-tables and remove-tables are picked up while running, as on
    // PostgreSQL.
    let mut whitelist_tick = tokio::time::interval(daemon::WHITELIST_POLL);
    whitelist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(tables = tables.len(), instance = %instance, file = %settings.path.display(), "syncdata started (SQLite target)");
    let period = config.data_sync_freq as i64;
    let mut metrics_tick = tokio::time::interval_at(
        daemon::next_boundary(period),
        Duration::from_secs(config.data_sync_freq),
    );
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut gave_up = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            Some(_) = stop_requests.next() => {
                info!("stop requested through NATS");
                break;
            }
            Some(joined) = workers.join_next_with_id() => {
                if workers_token.is_cancelled() {
                    break;
                }
                let (id, why) = match joined {
                    Ok((id, Ok(()))) => (id, "the worker returned while the daemon runs".to_owned()),
                    Ok((id, Err(e))) => (id, format!("{e:#}")),
                    Err(e) => {
                        let id = e.id();
                        let why = if e.is_panic() {
                            format!("panicked: {}", supervise::panic_message(&*e.into_panic()))
                        } else {
                            e.to_string()
                        };
                        (id, why)
                    }
                };
                let Some(mut slot) = slots.remove(&id) else { continue };
                let Some(token) = table_tokens.get(&slot.table).cloned() else {
                    info!(table = %slot.table, "worker of the removed table stopped");
                    continue;
                };
                let name = slot.table.to_string();
                match slot.failed(&restart_policy) {
                    supervise::Decision::GiveUp => {
                        tracing::error!(table = %name, error = %why, failures = slot.failures, "table worker keeps failing; stopping the daemon");
                        gave_up = Some(anyhow::anyhow!(
                            "the worker of table {name} failed {} times in a row (last: {why}); the daemon stops rather than leave the table unsynced",
                            slot.failures
                        ));
                        break;
                    }
                    supervise::Decision::Restart(delay) => {
                        tracing::error!(table = %name, error = %why, restarts = slot.restarts, ?delay, "table worker ended unexpectedly; restarting it");
                        metrics::counter!("syncdata_worker_restarts_total", "table" => name).increment(1);
                        slot.started();
                        let id = spawn(&mut workers, slot.table.clone(), delay, token);
                        slots.insert(id, slot);
                    }
                }
            }
            _ = metrics_tick.tick() => {
                daemon::flush_metrics(&ctx, period, daemon::now_secs() - period).await;
            }
            _ = whitelist_tick.tick() => {
                let now = match accepted_whitelist(&pool).await {
                    Ok(now) => now,
                    Err(e) => {
                        warn!(error = %e, "reading the whitelist failed; will retry");
                        continue;
                    }
                };
                for gone in tables.iter().filter(|t| !now.contains(t)) {
                    if let Some(t) = table_tokens.remove(gone) {
                        info!(table = %gone, "table removed from the whitelist: stopping its worker");
                        t.cancel();
                    }
                }
                for added in now.iter().filter(|t| !tables.contains(t)) {
                    ctx.engine.forget_shape(added).await;
                    if let Err(e) = ctx.engine.shape(added).await {
                        warn!(table = %added, error = %e, "whitelisted table cannot be applied to; its records will be dead-lettered");
                    }
                    match daemon::ensure_consumer(&stream, &config, &instance, added).await {
                        Ok(_) => {
                            info!(table = %added, "table added to the whitelist: syncing it");
                            let token = workers_token.child_token();
                            table_tokens.insert(added.clone(), token.clone());
                            let id = spawn(&mut workers, added.clone(), Duration::ZERO, token);
                            slots.insert(id, supervise::Slot::new(added.clone()));
                        }
                        // Not taken into `tables`: tried again next poll.
                        Err(e) => tracing::error!(table = %added, error = %format!("{e:#}"), "cannot start syncing the added table"),
                    }
                }
                tables = now.into_iter().filter(|t| table_tokens.contains_key(t)).collect();
            }
            _ = heartbeat.tick() => {
                let errors = ctx.errors.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = sqlx::query("update syncdata_daemons set last_seen = unixepoch('subsec'), records_applied = ?, errors = ? where id = ?")
                    .bind(ctx.applied_total() as i64)
                    .bind(errors as i64)
                    .bind(&id.0)
                    .execute(&pool)
                    .await
                {
                    warn!(error = %e, "heartbeat failed");
                }
            }
        }
    }
    info!("stopping: finishing in-flight batches");
    workers_token.cancel();
    while workers.join_next().await.is_some() {}
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        _ => warn!("flushing acks failed or timed out; they will be redelivered"),
    }
    daemon::flush_metrics(&ctx, period, daemon::now_secs()).await;
    sqlx::query("update syncdata_daemons set stopped_at = unixepoch('subsec'), last_seen = unixepoch('subsec') where id = ?")
        .bind(&id.0)
        .execute(&pool)
        .await?;
    info!("syncdata stopped");
    match gave_up {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
