//! A resync's rebuild of a table through every version of its definition
//! (`docs/schema.md`, "Resync").
//!
//! A replay of a table's history holds records of every shape the table
//! had: rows carrying a column dropped since, rows from before a column
//! with a default existed (production gave them the default without a
//! change of theirs in the stream), values only a later, wider type takes.
//! None of that fits the newest table. So `resync` [`rewind`]s the emptied
//! local table to the first definition the stream holds, and the worker
//! takes each SCHEMA record again in stream order ([`take`]): each record
//! of data meets the shape it was written under, as it did the first time.
//!
//! The changes up to the newest definition taken before the resync had
//! been accepted (applied, or migrated by hand after a halt): the rebuild
//! applies them again, destructive ones included, without halting. At that
//! definition the table gets back what was its own (columns production
//! never had, local constraints and types, indexes) and the rebuild ends;
//! newer definitions meet the table's policy as usual. Only columns move:
//! names, types, NOT NULL, defaults; constraints stay as they are
//! throughout.

use std::collections::BTreeSet;

use anyhow::Context;
use async_nats::jetstream;
use sqlx::{PgConnection, PgPool};
use syncdata_core::config::Config;
use syncdata_core::signature::SigningKey;
use syncdata_core::table::TableName;
use syncdata_core::tabledef::TableDef;
use syncdata_core::version::Version;

use super::{diff, Policy, TakeError, Taken};

/// A table's definitions in the stream.
pub struct History {
    /// The oldest: the shape of the oldest records of the table.
    pub first: TableDef,
    pub first_version: Version,
    /// The versions of all of them, oldest first.
    pub versions: Vec<Version>,
    /// Every column any definition names (production's columns; the local
    /// table's other columns are its own).
    pub columns: BTreeSet<String>,
}

/// Reads every look-up copy of `table`'s definitions, oldest first (one
/// per DDL: few). None: the stream holds no definition of the table.
pub async fn history(
    stream: &jetstream::stream::Stream,
    config: &Config,
    signer: Option<&SigningKey>,
    table: &TableName,
) -> anyhow::Result<Option<History>> {
    let subject = super::schema_subject(config, table);
    let mut next = 1;
    let mut out: Option<History> = None;
    loop {
        let msg = match stream
            .get_first_raw_message_by_subject(&subject, next)
            .await
        {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                break
            }
            Err(e) => return Err(e).context(format!("reading {subject}")),
        };
        next = msg.sequence + 1;
        let (def, version) = super::definition_of(&msg, signer, table)?;
        let names = def.columns.iter().map(|c| c.name.clone());
        match &mut out {
            Some(h) => {
                h.columns.extend(names);
                h.versions.push(version);
            }
            None => {
                out = Some(History {
                    columns: names.collect(),
                    first: def,
                    first_version: version,
                    versions: vec![version],
                })
            }
        }
    }
    Ok(out)
}

/// The rebuild's bookkeeping, from `syncdata.schema_state`.
type RebuildRow = (
    i64,
    i64,
    Option<i64>,
    Option<Vec<String>>,
    Option<serde_json::Value>,
);

/// Inside the transaction that empties `table` for a resync: brings the
/// local table back to the stream's first definition and marks the rebuild
/// (see the module documentation). Returns the statements run, or None
/// when the table is not rebuilt: the stream holds no definition of it, it
/// never took one (its shape is not known to follow the stream), or its
/// policy is `ignore`. Run again (a resync repeated, or finished after a
/// crash) it keeps what the first run saved.
pub async fn rewind(
    tx: &mut PgConnection,
    config: &Config,
    table: &TableName,
    history: Option<&History>,
) -> anyhow::Result<Option<Vec<String>>> {
    let Some(history) = history else {
        return Ok(None);
    };
    let name = table.to_string();
    let state: Option<RebuildRow> = sqlx::query_as(
        "SELECT lsn, seq, rebuild_lsn, rebuild_local_only, rebuild_definition \
         FROM syncdata.schema_state WHERE table_name = $1 FOR UPDATE",
    )
    .bind(&name)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((lsn, seq, rebuild_lsn, saved_local_only, _)) = state else {
        return Ok(None);
    };
    let in_progress = rebuild_lsn.is_some();
    // The rebuild's target: the newest definition taken before the resync
    // that the stream still holds, so the replay is sure to reach it.
    let taken = super::version_of(lsn, seq);
    let target = history.versions.iter().rev().find(|v| **v <= taken);
    if !in_progress
        && (Policy::of(config, table) == Policy::Ignore || (lsn, seq) == (0, 0) || target.is_none())
    {
        return Ok(None);
    }
    let local = super::local_definition_on(&mut *tx, table)
        .await?
        .with_context(|| format!("{table} does not exist locally"))?;
    let local_only = match saved_local_only {
        Some(saved) if in_progress => saved,
        _ => local
            .columns
            .iter()
            .filter(|c| !history.columns.contains(&c.name))
            .map(|c| c.name.clone())
            .collect(),
    };
    if !in_progress {
        // Indexes that are not constraints: a column the rewind drops
        // takes its indexes with it; they come back when the rebuild ends.
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
             WHERE i.indrelid = to_regclass($1) \
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid \
                                 AND c.conrelid = i.indrelid) \
             ORDER BY i.indexrelid",
        )
        .bind(table.quoted())
        .fetch_all(&mut *tx)
        .await?;
        let target = target.expect("checked above");
        sqlx::query(
            "UPDATE syncdata.schema_state SET rebuild_lsn = $5, rebuild_seq = $6, \
               rebuild_definition = $2, rebuild_local_only = $3, rebuild_indexes = $4 \
             WHERE table_name = $1",
        )
        .bind(&name)
        .bind(serde_json::to_value(&local).expect("a definition serializes"))
        .bind(&local_only)
        .bind(&indexes)
        .bind(target.lsn.0 as i64)
        .bind(target.seq as i64)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("SAVEPOINT rewind").execute(&mut *tx).await?;
    let statements = match follow_columns(tx, &history.first, table, &local_only).await {
        Ok(s) => s,
        Err(e) => {
            // A view on a dropped column, say. Failing here would fail
            // every `start` that finishes this resync: the replay goes
            // into the current shape instead, as without capture.
            sqlx::query("ROLLBACK TO SAVEPOINT rewind")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE syncdata.schema_state SET rebuild_lsn = NULL, rebuild_seq = NULL, \
                   rebuild_definition = NULL, rebuild_local_only = NULL, rebuild_indexes = NULL \
                 WHERE table_name = $1",
            )
            .bind(&name)
            .execute(&mut *tx)
            .await?;
            tracing::error!(table = %table, error = %e,
                            "cannot rewind the table to its first definition in the stream: \
                             the replay goes into its current shape, and records of older \
                             shapes may fail");
            return Ok(None);
        }
    };
    // Every definition is taken again, from the first.
    let first = serde_json::to_value(&history.first).expect("a definition serializes");
    sqlx::query(
        "UPDATE syncdata.schema_state SET lsn = 0, seq = 0, definition = $2, halted_lsn = NULL, \
           halted_seq = NULL, halt_reason = NULL, halt_sql = NULL, updated_at = now() \
         WHERE table_name = $1",
    )
    .bind(&name)
    .bind(first)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO syncdata.schema_changes (table_name, lsn, seq, outcome, statements) \
         VALUES ($1, $2, $3, 'rewound', $4)",
    )
    .bind(&name)
    .bind(history.first_version.lsn.0 as i64)
    .bind(history.first_version.seq as i64)
    .bind(joined(&statements))
    .execute(&mut *tx)
    .await?;
    Ok(Some(statements))
}

fn joined(statements: &[String]) -> Option<String> {
    (!statements.is_empty()).then(|| statements.join(";\n") + ";")
}

/// `def` with the constraints of `local` (columns only move) and `local`
/// without its own columns: the two sides a rebuild compares.
fn columns_only(def: &TableDef, local: &TableDef, local_only: &[String]) -> (TableDef, TableDef) {
    let mut local = local.clone();
    local.columns.retain(|c| !local_only.contains(&c.name));
    let target = TableDef {
        columns: def.columns.clone(),
        primary_key: local.primary_key.clone(),
        primary_key_name: local.primary_key_name.clone(),
        unique: local.unique.clone(),
        foreign_keys: local.foreign_keys.clone(),
        ..def.clone()
    };
    (target, local)
}

/// Makes the production columns of the local table those of `def`: every
/// column difference, destructive ones included. A second round catches
/// what one statement cannot say (NOT NULL on a column added without a
/// default).
async fn follow_columns(
    tx: &mut PgConnection,
    def: &TableDef,
    table: &TableName,
    local_only: &[String],
) -> Result<Vec<String>, TakeError> {
    let mut run = Vec::new();
    for _ in 0..3 {
        let local = super::local_definition_on(&mut *tx, table)
            .await
            .map_err(|e| TakeError::Db(format!("{e:#}")))?
            .ok_or_else(|| TakeError::Db(format!("{table} does not exist locally")))?;
        let (target, local) = columns_only(def, &local, local_only);
        let diffs = diff::diff(&target, Some(&local));
        if diffs.is_empty() {
            return Ok(run);
        }
        for d in diffs {
            sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|error| TakeError::Statement {
                    sql: d.sql.clone(),
                    error,
                })?;
            run.push(d.sql);
        }
    }
    Err(TakeError::Db(format!(
        "the columns of {table} still differ from the definition after {} statements",
        run.len()
    )))
}

/// Takes a SCHEMA record of a table being rebuilt towards `target` (the
/// newest definition taken before the resync that the stream holds). Up to
/// it, the record's column changes are applied whatever their class; at
/// it, the table gets back what was its own and the rebuild ends. A newer
/// record waits for the end ([`Taken::Wait`]): the replay has not reached
/// it, so it is a delivery from before the resync (the old durable's
/// batch in flight), or another process's, ahead of the replay.
pub(super) async fn take(
    pool: &PgPool,
    table: &TableName,
    def: &TableDef,
    def_json: &serde_json::Value,
    version: Version,
    target: Version,
) -> Result<Taken, TakeError> {
    if version > target {
        return Ok(Taken::Wait);
    }
    let name = table.to_string();
    let mut tx = pool.begin().await?;
    let local_only: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT rebuild_local_only FROM syncdata.schema_state WHERE table_name = $1 FOR UPDATE",
    )
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    let mut statements =
        follow_columns(&mut tx, def, table, &local_only.unwrap_or_default()).await?;
    super::record_taken(
        &mut tx,
        &name,
        version.lsn.0 as i64,
        version.seq as i64,
        def_json,
        "replayed",
        &statements,
    )
    .await?;
    if version == target {
        statements.extend(restore(&mut tx, table).await?);
    }
    tx.commit().await?;
    Ok(Taken::Applied {
        statements,
        reshaped: true,
    })
}

/// Ends a rebuild: the local table gets back the definition it had before
/// the resync (its own columns, types and constraints) and its indexes.
async fn restore(tx: &mut PgConnection, table: &TableName) -> Result<Vec<String>, TakeError> {
    let name = table.to_string();
    let (before, indexes): (Option<serde_json::Value>, Option<Vec<String>>) = sqlx::query_as(
        "SELECT rebuild_definition, rebuild_indexes FROM syncdata.schema_state \
         WHERE table_name = $1 FOR UPDATE",
    )
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    let mut run = Vec::new();
    if let Some(before) = before {
        let before: TableDef = serde_json::from_value(before)
            .map_err(|e| TakeError::Db(format!("reading the definition saved by resync: {e}")))?;
        let local = super::local_definition_on(&mut *tx, table)
            .await
            .map_err(|e| TakeError::Db(format!("{e:#}")))?
            .ok_or_else(|| TakeError::Db(format!("{table} does not exist locally")))?;
        for d in diff::diff(&before, Some(&local)) {
            sqlx::query(sqlx::AssertSqlSafe(d.sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|error| TakeError::Statement {
                    sql: d.sql.clone(),
                    error,
                })?;
            run.push(d.sql);
        }
    }
    for index in indexes.unwrap_or_default() {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE pg_get_indexdef(indexrelid) = $1)",
        )
        .bind(&index)
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            continue;
        }
        // From the local catalog (pg_get_indexdef), not from the stream.
        // One that no longer fits the table is reported, not retried
        // forever.
        sqlx::query("SAVEPOINT restore_index")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(sqlx::AssertSqlSafe(index.clone()))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => run.push(index),
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT restore_index")
                    .execute(&mut *tx)
                    .await?;
                tracing::warn!(table = %table, index = %index, error = %e,
                               "an index of the table before its resync could not be created again");
            }
        }
    }
    sqlx::query(
        "UPDATE syncdata.schema_state SET rebuild_lsn = NULL, rebuild_seq = NULL, \
           rebuild_definition = NULL, rebuild_local_only = NULL, rebuild_indexes = NULL \
         WHERE table_name = $1",
    )
    .bind(&name)
    .execute(&mut *tx)
    .await?;
    if !run.is_empty() {
        sqlx::query(
            "INSERT INTO syncdata.schema_changes (table_name, lsn, seq, outcome, statements) \
             SELECT $1, lsn, seq, 'restored', $2 FROM syncdata.schema_state WHERE table_name = $1",
        )
        .bind(&name)
        .bind(joined(&run))
        .execute(&mut *tx)
        .await?;
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncdata_core::tabledef::{ColumnDef, UniqueDef};

    fn col(name: &str, type_name: &str) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: type_name.into(),
            not_null: false,
            default: None,
        }
    }

    fn def(columns: Vec<ColumnDef>, unique: Vec<&str>) -> TableDef {
        TableDef {
            schema: "public".into(),
            table: "t".into(),
            columns,
            primary_key: vec!["id".into()],
            primary_key_name: Some("t_pkey".into()),
            unique: unique
                .into_iter()
                .map(|c| UniqueDef {
                    name: format!("t_{c}_key"),
                    columns: vec![c.into()],
                })
                .collect(),
            foreign_keys: vec![],
            command: None,
        }
    }

    #[test]
    fn only_production_columns_move_and_constraints_stay() {
        // The first definition: id, gone (a later DROP), name varchar(20).
        let first = def(
            vec![
                col("id", "integer"),
                col("gone", "text"),
                col("name", "character varying(20)"),
            ],
            vec![],
        );
        // The local table: `b` came later in production, `mine` is local
        // only, `name` was widened, and a local unique constraint.
        let local = def(
            vec![
                col("id", "integer"),
                col("name", "character varying(60)"),
                col("b", "integer"),
                col("mine", "text"),
            ],
            vec!["name"],
        );
        let (target, local) = columns_only(&first, &local, &["mine".to_owned()]);
        let diffs = diff::diff(&target, Some(&local));
        let kinds: Vec<String> = diffs
            .iter()
            .map(|d| format!("{} {}", d.kind, d.column.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            kinds,
            ["add_column gone", "drop_column b", "narrow_type name"],
            "{diffs:?}"
        );
    }
}
