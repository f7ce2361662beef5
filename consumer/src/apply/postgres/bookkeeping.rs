//! The bookkeeping SQL: `syncdata.table_state` (one row per table: its
//! TRUNCATE floor, and the lock that orders TRUNCATEs against batches),
//! `syncdata.row_state` (one row per key ever synced: its version, column
//! versions, floor, parked values), and the `data_sync_logs` entry of each
//! batch. Rows are locked in key order (`collate "C"`), so batches that
//! share keys never deadlock.

use sqlx::{AssertSqlSafe, Postgres, Transaction};
use syncdata_core::version::Version;

use crate::apply::merge::{KeyId, KeySet};
use crate::apply::plan::{BookRow, Stored};
use crate::apply::prepare::Keys;
use crate::apply::shape::TableShape;
use crate::apply::target::BatchLog;

use super::stage;

type Tx = Transaction<'static, Postgres>;

/// Locks the table's row in table_state — KEY SHARE for ordinary batches
/// (they run side by side), UPDATE for a TRUNCATE (it waits for them and
/// holds new ones off until it commits) — creating it on the table's first
/// batch. Returns its id and TRUNCATE floor.
pub(super) async fn lock_table(
    tx: &mut Tx,
    table_name: &str,
    exclusive: bool,
) -> Result<(i32, Version), sqlx::Error> {
    let lock = if exclusive {
        "for update"
    } else {
        "for key share"
    };
    let select_state = format!(
        "select id, truncate_lsn, truncate_seq from syncdata.table_state where table_name = $1 {lock}"
    );
    let mut row: Option<(i32, i64, i64)> = sqlx::query_as(AssertSqlSafe(select_state.clone()))
        .bind(table_name)
        .fetch_optional(&mut **tx)
        .await?;
    if row.is_none() {
        sqlx::query(
            "insert into syncdata.table_state (table_name) values ($1) on conflict (table_name) do nothing",
        )
        .bind(table_name)
        .execute(&mut **tx)
        .await?;
        row = Some(
            sqlx::query_as(AssertSqlSafe(select_state))
                .bind(table_name)
                .fetch_one(&mut **tx)
                .await?,
        );
    }
    let (table_id, t_lsn, t_seq) = row.expect("table_state row");
    Ok((table_id, Version::from_db(t_lsn, t_seq)))
}

/// A TRUNCATE at `vt`: every row loses what is at or below it, as if each
/// row were deleted at `vt`. Rows wholly older go at once; returns the keys
/// of rows with some newer columns (the engine deletes them at `vt`).
pub(super) async fn truncate(
    tx: &mut Tx,
    shape: &TableShape,
    table_id: i32,
    vt: Version,
) -> Result<Vec<String>, sqlx::Error> {
    let (lsn, seq) = vt.to_db();
    let key_match: String = shape
        .key
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            format!(
                "t.{} = {}",
                shape.quoted_column(c),
                shape.key_from_text(i, "s.key")
            )
        })
        .collect::<Vec<_>>()
        .join(" and ");
    sqlx::query(AssertSqlSafe(format!(
        "delete from {} t where not exists (select 1 from syncdata.row_state s \
         where s.table_id = $1 and s.state = 'L' and (s.lsn, s.seq) > ($2, $3) and {key_match})",
        shape.name.quoted()
    )))
    .bind(table_id)
    .bind(lsn)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    sqlx::query("delete from syncdata.row_state where table_id = $1 and (lsn, seq) <= ($2, $3)")
        .bind(table_id)
        .bind(lsn)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    let mixed: Vec<String> = sqlx::query_scalar(
        "select key from syncdata.row_state where table_id = $1 and col_versions is not null",
    )
    .bind(table_id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "update syncdata.table_state set truncate_lsn = $2, truncate_seq = $3 where id = $1",
    )
    .bind(table_id)
    .bind(lsn)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(mixed)
}

/// key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked
type StoredRow = (
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

/// Locks, in key order, the bookkeeping rows that exist for the keys
/// `ids`, and reads them. Returns (key id, row) for each row found.
///
/// Lock and read are one statement: a row lock waited for re-reads the
/// locked row itself (its newest version), which is all this reads. The
/// target table is read by a statement of its own once the locks are held:
/// under READ COMMITTED a statement that waits for a row lock re-reads only
/// the locked row, not the rows joined to it, so a target row committed by
/// the transaction it waited for would look absent (and one it deleted,
/// present).
pub(super) async fn lock_rows(
    tx: &mut Tx,
    table_id: i32,
    keys: &Keys,
    ids: &[KeyId],
) -> Result<Vec<(KeyId, Stored)>, sqlx::Error> {
    let mut wanted: Vec<&str> = ids.iter().map(|&id| keys.text(id)).collect();
    wanted.sort_unstable();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "select key, state::text, lsn, seq, floor_lsn, floor_seq, col_versions, parked \
         from syncdata.row_state where table_id = $1 and key = any($2) \
         order by key collate \"C\" for update",
    )
    .bind(table_id)
    .bind(&wanted)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, state, lsn, seq, fl, fs, cv, parked)| {
            let id = keys.id_of(&key)?;
            Some((
                id,
                Stored {
                    state,
                    version: Version::from_db(lsn, seq),
                    floor: fl.zip(fs).map(|(l, s)| Version::from_db(l, s)),
                    col_versions: cv,
                    parked,
                },
            ))
        })
        .collect())
}

/// Bookkeeping rows as columns, for `unnest`.
#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    states: Vec<&'static str>,
    lsns: Vec<i64>,
    seqs: Vec<i64>,
    floor_lsns: Vec<Option<i64>>,
    floor_seqs: Vec<Option<i64>>,
    col_versions: Vec<Option<String>>,
    parked: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, key: String, row: BookRow) {
        self.keys.push(key);
        self.states.push(row.state);
        self.lsns.push(row.lsn);
        self.seqs.push(row.seq);
        self.floor_lsns.push(row.floor.map(|f| f.0));
        self.floor_seqs.push(row.floor.map(|f| f.1));
        self.col_versions.push(row.col_versions);
        self.parked.push(row.parked);
    }
}

/// The bookkeeping columns of `u`, the rows to write: bound as arrays for
/// `unnest` ($2 … $9, after the table id) below `copy_from` rows, else
/// copied into a staging table.
async fn book_source(
    tx: &mut Tx,
    copy_from: usize,
    keys: &Keys,
    rows: Vec<(KeyId, BookRow)>,
) -> Result<(&'static str, Option<Columns>), sqlx::Error> {
    if rows.len() < copy_from {
        let mut book = Columns::default();
        for (id, row) in rows {
            book.push(keys.text(id).to_owned(), row);
        }
        return Ok((
            "unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
             as u(key, state, lsn, seq, fl, fs, cv, pk)",
            Some(book),
        ));
    }
    let mut copy = stage::CopyRows::with_capacity(rows.len() * 96);
    for (id, row) in &rows {
        copy.row(8);
        copy.text(Some(keys.text(*id)));
        copy.text(Some(row.state));
        copy.int8(Some(row.lsn));
        copy.int8(Some(row.seq));
        copy.int8(row.floor.map(|f| f.0));
        copy.int8(row.floor.map(|f| f.1));
        copy.text(row.col_versions.as_deref());
        copy.text(row.parked.as_deref());
    }
    stage::load(
        tx,
        "syncdata_stage_book",
        "key text collate \"C\", state text, lsn int8, seq int8, fl int8, fs int8, cv text, pk text",
        copy,
    )
    .await?;
    Ok(("pg_temp.syncdata_stage_book u", None))
}

/// Binds the columns of [`book_source`]'s arrays, if any, to query `q`.
macro_rules! bind_book {
    ($q:expr, $book:expr) => {
        match $book {
            None => $q,
            Some(book) => $q
                .bind(book.keys)
                .bind(book.states)
                .bind(book.lsns)
                .bind(book.seqs)
                .bind(book.floor_lsns)
                .bind(book.floor_seqs)
                .bind(book.col_versions)
                .bind(book.parked),
        }
    };
}

/// Inserts the bookkeeping rows of keys that had none, in key order: all
/// of them (returns every key id), or, when another transaction inserted
/// one of the keys meanwhile, none (returns the empty set; the transaction
/// is failed, and the engine gives it up, as for any key not inserted).
///
/// A plain INSERT, not `ON CONFLICT DO NOTHING`: the speculative insertion
/// behind `ON CONFLICT` doubles the cost of every row (measured: 3,000
/// rows in 30 ms instead of 16), for a conflict that needs two consumers
/// inserting the same new key at once; and such a conflict sends the batch
/// back to its start either way.
pub(super) async fn insert(
    tx: &mut Tx,
    copy_from: usize,
    table_id: i32,
    keys: &Keys,
    rows: &[(KeyId, BookRow)],
) -> Result<KeySet, sqlx::Error> {
    let (source, book) = book_source(tx, copy_from, keys, rows.to_vec()).await?;
    let sql = format!(
        "insert into syncdata.row_state (table_id, key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked) \
         select $1, u.key, u.state::\"char\", u.lsn, u.seq, u.fl, u.fs, u.cv::jsonb, u.pk::jsonb \
         from {source} \
         order by u.key collate \"C\""
    );
    let q = sqlx::query(AssertSqlSafe(sql)).bind(table_id);
    match bind_book!(q, book).execute(&mut **tx).await {
        Ok(_) => Ok(rows.iter().map(|(id, _)| *id).collect()),
        Err(e) if super::unique_violation(&e, Some("row_state_pkey")) => Ok(KeySet::default()),
        Err(e) => Err(e),
    }
}

/// Overwrites existing bookkeeping rows (locked by [`lock_rows`] or
/// inserted by [`insert`] in this transaction).
pub(super) async fn update(
    tx: &mut Tx,
    copy_from: usize,
    table_id: i32,
    keys: &Keys,
    rows: Vec<(KeyId, BookRow)>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let (source, book) = book_source(tx, copy_from, keys, rows).await?;
    let sql = format!(
        "update syncdata.row_state s set state = u.state::\"char\", lsn = u.lsn, seq = u.seq, \
                floor_lsn = u.fl, floor_seq = u.fs, col_versions = u.cv::jsonb, parked = u.pk::jsonb \
         from {source} \
         where s.table_id = $1 and s.key = u.key"
    );
    let q = sqlx::query(AssertSqlSafe(sql)).bind(table_id);
    bind_book!(q, book).execute(&mut **tx).await?;
    Ok(())
}

/// Removes the bookkeeping rows of `ids` (nothing is known of them any more).
pub(super) async fn remove(
    tx: &mut Tx,
    table_id: i32,
    keys: &Keys,
    ids: &[KeyId],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let texts: Vec<&str> = ids.iter().map(|&id| keys.text(id)).collect();
    sqlx::query("delete from syncdata.row_state where table_id = $1 and key = any($2)")
        .bind(table_id)
        .bind(&texts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The batch's SUCCESS row in `data_sync_logs`.
pub(super) async fn log_success(
    tx: &mut Tx,
    table_name: &str,
    log: &BatchLog,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into data_sync_logs (table_name, status, rows_synced, archive_ref, source_commit_at, \
                                     inserted, updated, deleted, superseded, parked, deletes_of_missing) \
         values ($1, 'SUCCESS', $2, $3, $4::timestamptz, $5, $6, $7, $8, $9, $10)",
    )
    .bind(table_name)
    .bind(log.rows_synced as i32)
    .bind(&log.archive_ref)
    // Validated and formatted by newest_commit_time: always castable.
    .bind(&log.source_commit_at)
    .bind(log.counts.inserted as i64)
    .bind(log.counts.updated as i64)
    .bind(log.counts.deleted as i64)
    .bind(log.counts.superseded as i64)
    .bind(log.counts.parked as i64)
    .bind(log.counts.deletes_of_missing as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
