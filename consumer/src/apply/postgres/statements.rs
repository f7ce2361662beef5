//! The statements on the target table: one set-based statement per kind of
//! read or write, the rows bound as one text array per column and turned
//! into rows by `unnest` (values cast to each column's type in SQL).

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::apply::merge::{KeyId, KeyMap, KeySet};
use crate::apply::prepare::Keys;
use crate::apply::shape::TableShape;

use super::stage;

type Tx = Transaction<'static, Postgres>;

/// The key values of `ids`, one vector per key column (for `unnest`).
fn key_columns<'a>(
    keys: &Keys,
    ids: impl Iterator<Item = &'a KeyId>,
    width: usize,
) -> Vec<Vec<String>> {
    let mut columns = vec![Vec::new(); width];
    for &id in ids {
        for (column, value) in columns.iter_mut().zip(keys.parts(id)) {
            column.push(value.clone());
        }
    }
    columns
}

/// Whole rows as one vector per column (for `unnest`), borrowed from
/// `rows`.
fn row_columns(rows: &[(KeyId, Vec<Option<String>>)], width: usize) -> Vec<Vec<Option<&str>>> {
    let mut columns = vec![Vec::with_capacity(rows.len()); width];
    for (_, row) in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value.as_deref());
        }
    }
    columns
}

/// `$1::text[], …, $n::text[]` and `c0, …, c{n-1}`: whole rows bound as one
/// text array per column, for `unnest`.
fn whole_row_params(n: usize) -> (String, String) {
    let params: Vec<String> = (0..n).map(|c| format!("${}::text[]", c + 1)).collect();
    let aliases: Vec<String> = (0..n).map(|c| format!("c{c}")).collect();
    (params.join(", "), aliases.join(", "))
}

/// Which of the keys `ids` have a row in the target table.
pub(super) async fn present(
    tx: &mut Tx,
    shape: &TableShape,
    keys: &Keys,
    ids: &[KeyId],
) -> Result<KeySet, sqlx::Error> {
    let (kparams, kaliases) = shape.key_params(1);
    let sql = format!(
        "select u.i from unnest({kparams}) with ordinality as u({kaliases}, i) join {} t on {}",
        shape.name.quoted(),
        shape.key_join("t", "u")
    );
    let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
    for column in key_columns(keys, ids.iter(), shape.key.len()) {
        q = q.bind(column);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    Ok(rows.into_iter().map(|i| ids[(i - 1) as usize]).collect())
}

/// Reads the current text of every column of the target rows of `ids`.
pub(super) async fn read_rows(
    tx: &mut Tx,
    shape: &TableShape,
    keys: &Keys,
    ids: &KeySet,
) -> Result<KeyMap<Vec<Option<String>>>, sqlx::Error> {
    let ids: Vec<KeyId> = ids.iter().copied().collect();
    let (kparams, kaliases) = shape.key_params(1);
    let cols: Vec<String> = (0..shape.columns.len())
        .map(|c| format!("t.{}::text", shape.quoted_column(c)))
        .collect();
    let sql = format!(
        "select u.i, array[{}] from unnest({kparams}) with ordinality as u({kaliases}, i) join {} t on {}",
        cols.join(", "),
        shape.name.quoted(),
        shape.key_join("t", "u")
    );
    let mut q = sqlx::query_as::<_, (i64, Vec<Option<String>>)>(AssertSqlSafe(sql));
    for column in key_columns(keys, ids.iter(), shape.key.len()) {
        q = q.bind(column);
    }
    let rows = q.fetch_all(&mut **tx).await?;
    Ok(rows
        .into_iter()
        .map(|(i, vals)| (ids[(i - 1) as usize], vals))
        .collect())
}

/// Deletes the target rows of `ids`.
pub(super) async fn delete(
    tx: &mut Tx,
    shape: &TableShape,
    keys: &Keys,
    ids: &[KeyId],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let (params, aliases) = shape.key_params(1);
    let sql = format!(
        "delete from {} t using unnest({params}) as u({aliases}) where {}",
        shape.name.quoted(),
        shape.key_join("t", "u")
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for col in key_columns(keys, ids.iter(), shape.key.len()) {
        q = q.bind(col);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Writes whole rows: `updates` by an UPDATE by key (those it finds absent
/// join the upserts), then `upserts` by INSERT … ON CONFLICT. Each through
/// a staging table when it has `copy_from` rows or more, else through
/// `unnest`.
pub(super) async fn update_or_upsert(
    tx: &mut Tx,
    copy_from: usize,
    shape: &TableShape,
    updates: Vec<(KeyId, Vec<Option<String>>)>,
    mut upserts: Vec<(KeyId, Vec<Option<String>>)>,
) -> Result<(), sqlx::Error> {
    let n = shape.columns.len();
    if !updates.is_empty() {
        let staged = updates.len() >= copy_from;
        let source = if staged {
            let (name, defs) = stage::rows_table(n);
            stage::load(tx, &name, &defs, copy_rows(&updates, n)).await?;
            format!("pg_temp.{name} u")
        } else {
            let (params, aliases) = whole_row_params(n);
            format!("unnest({params}) with ordinality as u({aliases}, i)")
        };
        let sets: Vec<String> = (0..n)
            .filter(|&c| !shape.is_key(c))
            .map(|c| {
                format!(
                    "{} = {}",
                    shape.quoted_column(c),
                    shape.cast(c, &format!("u.c{c}"))
                )
            })
            .collect();
        let join: Vec<String> = shape
            .key
            .iter()
            .map(|&c| {
                format!(
                    "t.{} = {}",
                    shape.quoted_column(c),
                    shape.cast(c, &format!("u.c{c}"))
                )
            })
            .collect();
        let sql = format!(
            "update {} t set {} from {source} where {} returning u.i",
            shape.name.quoted(),
            sets.join(", "),
            join.join(" and "),
        );
        let found: HashSet<i64> = if staged {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .fetch_all(&mut **tx)
                .await?
        } else {
            let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
            for col in row_columns(&updates, n) {
                q = q.bind(col);
            }
            q.fetch_all(&mut **tx).await?
        }
        .into_iter()
        .collect();
        upserts.extend(
            updates
                .into_iter()
                .enumerate()
                .filter(|(row, _)| !found.contains(&(*row as i64 + 1)))
                .map(|(_, r)| r),
        );
    }
    if upserts.is_empty() {
        return Ok(());
    }
    let staged = upserts.len() >= copy_from;
    let source = if staged {
        let (name, defs) = stage::rows_table(n);
        stage::load(tx, &name, &defs, copy_rows(&upserts, n)).await?;
        format!("pg_temp.{name} u")
    } else {
        let (params, aliases) = whole_row_params(n);
        format!("unnest({params}) as u({aliases})")
    };
    let cols: Vec<String> = (0..n).map(|c| shape.quoted_column(c)).collect();
    let casts: Vec<String> = (0..n).map(|c| shape.cast(c, &format!("u.c{c}"))).collect();
    let key_cols: Vec<String> = shape.key.iter().map(|&c| shape.quoted_column(c)).collect();
    let sets: Vec<String> = (0..n)
        .filter(|&c| !shape.is_key(c))
        .map(|c| format!("{0} = excluded.{0}", shape.quoted_column(c)))
        .collect();
    let conflict = if sets.is_empty() {
        "do nothing".to_owned()
    } else {
        format!("do update set {}", sets.join(", "))
    };
    let insert = format!(
        "insert into {} ({}) overriding system value select {} from {source}",
        shape.name.quoted(),
        cols.join(", "),
        casts.join(", "),
    );
    // The statement `sql` with the rows bound (from the staging table
    // when staged).
    let with_rows = |sql: &str| {
        let mut q = sqlx::query(AssertSqlSafe(sql));
        if !staged {
            for col in row_columns(&upserts, n) {
                q = q.bind(col);
            }
        }
        q
    };
    // These rows are most likely new (none was found, or none looked for):
    // a plain INSERT first, in a savepoint, and the upsert only when one
    // of them is there after all (its savepoint rolled back). The
    // speculative insertion behind `ON CONFLICT` costs every row about a
    // third more (measured: 3,000 pgbench_history rows in 20-31 ms as an
    // upsert, 13-17 ms as an INSERT). No other syncdata transaction can
    // insert these keys meanwhile: their bookkeeping rows are locked (or
    // were inserted) by this one.
    sqlx::query("savepoint syncdata_insert")
        .execute(&mut **tx)
        .await?;
    match with_rows(&insert).execute(&mut **tx).await {
        Ok(_) => return Ok(()),
        Err(e) if super::unique_violation(&e, None) => {
            sqlx::query("rollback to savepoint syncdata_insert")
                .execute(&mut **tx)
                .await?;
        }
        Err(e) => return Err(e),
    }
    let sql = format!("{insert} on conflict ({}) {conflict}", key_cols.join(", "));
    with_rows(&sql).execute(&mut **tx).await?;
    Ok(())
}

/// Whole rows as the binary COPY payload of [`stage::rows_table`].
fn copy_rows(rows: &[(KeyId, Vec<Option<String>>)], n: usize) -> stage::CopyRows {
    let bytes: usize = rows
        .iter()
        .map(|(_, r)| 14 + 4 * n + r.iter().flatten().map(String::len).sum::<usize>())
        .sum();
    let mut copy = stage::CopyRows::with_capacity(bytes);
    for (i, (_, row)) in rows.iter().enumerate() {
        copy.row(n + 1);
        copy.int8(Some(i as i64 + 1));
        for value in row {
            copy.text(value.as_deref());
        }
    }
    copy
}

/// Writes some columns of present rows: per row and column, `Some(text)`
/// to write, None to keep (a mask per column says which).
pub(super) async fn update_partial(
    tx: &mut Tx,
    shape: &TableShape,
    keys: &Keys,
    rows: Vec<(KeyId, Vec<Option<Option<String>>>)>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = shape.columns.len();
    let nk = shape.key.len();
    let partial_keys = key_columns(keys, rows.iter().map(|(id, _)| id), nk);
    let mut partial_vals: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); n];
    let mut partial_mask: Vec<Vec<bool>> = vec![Vec::with_capacity(rows.len()); n];
    for (_, cells) in rows {
        for (c, cell) in cells.into_iter().enumerate() {
            partial_mask[c].push(cell.is_some());
            partial_vals[c].push(cell.flatten());
        }
    }
    let written: Vec<usize> = (0..n)
        .filter(|&c| !shape.is_key(c) && partial_mask[c].iter().any(|&m| m))
        .collect();
    if written.is_empty() {
        return Ok(());
    }
    let (kparams, kaliases) = shape.key_params(1);
    let mut params = vec![kparams];
    let mut aliases = vec![kaliases];
    let mut sets = Vec::new();
    for (j, &c) in written.iter().enumerate() {
        params.push(format!(
            "${}::text[], ${}::bool[]",
            nk + 2 * j + 1,
            nk + 2 * j + 2
        ));
        aliases.push(format!("v{j}, m{j}"));
        let col = shape.quoted_column(c);
        sets.push(format!(
            "{col} = case when u.m{j} then {} else t.{col} end",
            shape.cast(c, &format!("u.v{j}"))
        ));
    }
    let sql = format!(
        "update {} t set {} from unnest({}) as u({}) where {}",
        shape.name.quoted(),
        sets.join(", "),
        params.join(", "),
        aliases.join(", "),
        shape.key_join("t", "u"),
    );
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for col in partial_keys {
        q = q.bind(col);
    }
    for &c in &written {
        q = q
            .bind(std::mem::take(&mut partial_vals[c]))
            .bind(std::mem::take(&mut partial_mask[c]));
    }
    q.execute(&mut **tx).await?;
    Ok(())
}
