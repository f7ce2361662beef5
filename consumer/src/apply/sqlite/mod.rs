//! The SQLite target: production data in a local file (docs/sqlite.md).
//!
//! The engine's steps run against one file that holds the data, the
//! bookkeeping (`syncdata_table_state`, `syncdata_row_state`) and the seed's
//! tables side by side. SQLite has one writer: every batch's transaction
//! begins with `BEGIN IMMEDIATE`, which takes the file's write lock at once
//! (waiting up to `busy_timeout` for another writer, in this process or
//! another), so everything the engine reads under "lock" is the newest
//! committed state and nothing interleaves until commit. That lock is at
//! least as strong as the row locks of the PostgreSQL target (see
//! [`super::target`]); batches of one file are serialized, which is what
//! lets several `syncdata start` processes share a file safely.
//!
//! Values are mapped by [`values`]; identifiers come from the file's own
//! catalog and are quoted; values are always bound.

pub mod ddl;
pub mod values;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqlitePool, Transaction, TypeInfo, ValueRef};
use syncdata_core::table::TableName;
use syncdata_core::version::Version;

use super::merge::{KeyId, KeyMap, KeySet};
use super::plan::{BookRow, Stored, WritePlan};
use super::prepare::Keys;
use super::shape::{Column, ShapeError, TableShape};
use super::target::{BatchLog, Target, TargetTx};
use values::{Bound, Kind};

/// The local store's migrations for a SQLite file (`_sqlx_migrations` in
/// the same file).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// How long a writer waits for the file's write lock before the batch is
/// retried (a transient failure).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows per statement when keys are looked up by a list.
const CHUNK: usize = 200;

/// SQLite result codes that mean "try again": busy, locked (and their
/// extended codes: recovery, snapshot, timeout, shared cache).
pub fn transient_code(code: &str) -> bool {
    matches!(code, "5" | "6" | "261" | "262" | "517" | "773")
}

/// Opens (creating it if missing) the SQLite file at `path`: WAL mode, the
/// given `synchronous` level (NORMAL by default: see docs/sqlite.md for the
/// trade-off), foreign keys off (rows arrive in any order, like replica
/// mode on PostgreSQL), and the local store's migrations run.
pub async fn connect(path: &Path, synchronous: &str) -> Result<SqlitePool, sqlx::Error> {
    let sync = SqliteSynchronous::from_str(synchronous)
        .map_err(|e| sqlx::Error::Configuration(format!("sqlite synchronous: {e}").into()))?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(false);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    // Two processes migrating one new file: the second waits for the
    // first's write lock, then finds the migrations applied.
    MIGRATOR.run(&pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => e,
        other => sqlx::Error::Configuration(other.to_string().into()),
    })?;
    Ok(pool)
}

/// The SQLite table a source table is kept in: its name for schema
/// `public`, `schema.table` otherwise (SQLite has no schemas).
pub fn local_name(table: &TableName) -> String {
    if table.schema == "public" {
        table.table.clone()
    } else {
        format!("{}.{}", table.schema, table.table)
    }
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The SQLite file the consumer writes to. Cheap to share: one per process.
pub struct SqliteTarget {
    pool: SqlitePool,
}

impl SqliteTarget {
    pub fn new(pool: SqlitePool) -> SqliteTarget {
        SqliteTarget { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Reads the shape of `table` from the file's catalog and the PostgreSQL
/// types recorded when it was created (`syncdata_columns`).
pub async fn load_shape(pool: &SqlitePool, table: &TableName) -> Result<TableShape, ShapeError> {
    let name = local_name(table);
    let db = |source| ShapeError::Db {
        table: table.clone(),
        source,
    };
    // cid, name, type, notnull, dflt_value, pk, hidden
    let cols: Vec<(String, String, i64, i64)> =
        sqlx::query_as("select name, type, pk, hidden from pragma_table_xinfo(?) order by cid")
            .bind(&name)
            .fetch_all(pool)
            .await
            .map_err(db)?;
    if cols.is_empty() {
        return Err(ShapeError::NotFound(table.clone()));
    }
    let pg_types: HashMap<String, String> =
        sqlx::query_as("select column_name, pg_type from syncdata_columns where table_name = ?")
            .bind(&name)
            .fetch_all(pool)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
    let mut columns = Vec::new();
    let mut generated = HashSet::new();
    let mut pk: Vec<(i64, usize)> = Vec::new();
    for (col, decl, pk_pos, hidden) in cols {
        if hidden != 0 {
            generated.insert(col);
            continue;
        }
        let sql_type = pg_types.get(&col).cloned().unwrap_or(decl);
        if pk_pos > 0 {
            pk.push((pk_pos, columns.len()));
        }
        columns.push(Column {
            is_bytea: values::kind_of(&sql_type) == Kind::Bytea,
            name: col,
            sql_type,
        });
    }
    if pk.is_empty() {
        return Err(ShapeError::NoPrimaryKey(table.clone()));
    }
    pk.sort_unstable();
    let by_name = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    Ok(TableShape {
        name: table.clone(),
        columns,
        by_name,
        generated,
        key: pk.into_iter().map(|(_, c)| c).collect(),
    })
}

impl Target for SqliteTarget {
    type Tx = SqliteTx;

    async fn load_shape(&self, table: &TableName) -> Result<TableShape, ShapeError> {
        load_shape(&self.pool, table).await
    }

    async fn begin(&self, shape: Arc<TableShape>) -> Result<SqliteTx, sqlx::Error> {
        // The write lock now, not at the first write: what is read under
        // "lock" is then the newest committed state.
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let kinds = shape
            .columns
            .iter()
            .map(|c| values::kind_of(&c.sql_type))
            .collect();
        Ok(SqliteTx {
            tx,
            table: quote(&local_name(&shape.name)),
            shape,
            kinds,
            table_id: None,
        })
    }
}

/// One batch's transaction on the file (holding its write lock).
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    shape: Arc<TableShape>,
    /// The quoted local table name.
    table: String,
    kinds: Vec<Kind>,
    table_id: Option<i64>,
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind(q: Query<'_>, v: Bound) -> Query<'_> {
    match v {
        Bound::Null => q.bind(None::<String>),
        Bound::Int(i) => q.bind(i),
        Bound::Real(f) => q.bind(f),
        Bound::Text(t) => q.bind(t),
        Bound::Blob(b) => q.bind(b),
    }
}

/// A column of a row as the value it holds.
pub fn stored_value(row: &SqliteRow, i: usize) -> Result<values::Stored, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(values::Stored::Null);
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" => values::Stored::Int(row.try_get_unchecked(i)?),
        "REAL" => values::Stored::Real(row.try_get_unchecked(i)?),
        "BLOB" => values::Stored::Blob(row.try_get_unchecked(i)?),
        _ => values::Stored::Text(row.try_get_unchecked(i)?),
    })
}

impl SqliteTx {
    fn table_id(&self) -> i64 {
        self.table_id
            .expect("the engine locks the table before anything else")
    }

    fn col(&self, c: usize) -> String {
        quote(&self.shape.columns[c].name)
    }

    /// `"k1" = ? and "k2" = ?`
    fn key_where(&self) -> String {
        self.shape
            .key
            .iter()
            .map(|&c| format!("{} = ?", self.col(c)))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    fn bind_key<'q>(&self, mut q: Query<'q>, parts: &[String]) -> Query<'q> {
        for (i, &c) in self.shape.key.iter().enumerate() {
            q = bind(q, values::to_sqlite(self.kinds[c], Some(&parts[i])));
        }
        q
    }

    /// Selects `what` from the target rows of `ids` (by chunks), joined to
    /// their index in `ids` as the first column.
    async fn by_keys(
        &mut self,
        ids: &[KeyId],
        keys: &Keys,
        what: &str,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let nk = self.shape.key.len();
        let mut out = Vec::new();
        for (chunk_no, chunk) in ids.chunks(CHUNK).enumerate() {
            let tuple = format!("({})", vec!["?"; nk + 1].join(", "));
            let rows = vec![tuple; chunk.len()].join(", ");
            let aliases: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
            let join: Vec<String> = self
                .shape
                .key
                .iter()
                .enumerate()
                .map(|(i, &c)| format!("t.{} = u.k{i}", self.col(c)))
                .collect();
            let sql = format!(
                "with u(i, {}) as (values {rows}) select u.i{what} from u join {} t on {}",
                aliases.join(", "),
                self.table,
                join.join(" and ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (j, &id) in chunk.iter().enumerate() {
                q = q.bind((chunk_no * CHUNK + j) as i64);
                q = self.bind_key(q, keys.parts(id));
            }
            out.extend(q.fetch_all(&mut *self.tx).await?);
        }
        Ok(out)
    }

    async fn write_whole(
        &mut self,
        row: Vec<Option<String>>,
        update_first: bool,
    ) -> Result<(), sqlx::Error> {
        let n = self.shape.columns.len();
        let bound: Vec<Bound> = row
            .iter()
            .enumerate()
            .map(|(c, v)| values::to_sqlite(self.kinds[c], v.as_deref()))
            .collect();
        let non_key: Vec<usize> = (0..n).filter(|&c| !self.shape.is_key(c)).collect();
        if update_first && !non_key.is_empty() {
            let sets: Vec<String> = non_key
                .iter()
                .map(|&c| format!("{} = ?", self.col(c)))
                .collect();
            let sql = format!(
                "update {} set {} where {}",
                self.table,
                sets.join(", "),
                self.key_where()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for &c in &non_key {
                q = bind(q, bound[c].clone());
            }
            for &c in &self.shape.key {
                q = bind(q, bound[c].clone());
            }
            if q.execute(&mut *self.tx).await?.rows_affected() > 0 {
                return Ok(());
            }
        }
        let cols: Vec<String> = (0..n).map(|c| self.col(c)).collect();
        let keys: Vec<String> = self.shape.key.iter().map(|&c| self.col(c)).collect();
        let conflict = if non_key.is_empty() {
            "do nothing".to_owned()
        } else {
            let sets: Vec<String> = non_key
                .iter()
                .map(|&c| format!("{0} = excluded.{0}", self.col(c)))
                .collect();
            format!("do update set {}", sets.join(", "))
        };
        let sql = format!(
            "insert into {} ({}) values ({}) on conflict ({}) {conflict}",
            self.table,
            cols.join(", "),
            vec!["?"; n].join(", "),
            keys.join(", ")
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for v in bound {
            q = bind(q, v);
        }
        q.execute(&mut *self.tx).await?;
        Ok(())
    }
}

/// key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked
type StoredRow = (
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn json(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl TargetTx for SqliteTx {
    async fn lock_table(&mut self, _exclusive: bool) -> Result<Version, sqlx::Error> {
        // The file's write lock (BEGIN IMMEDIATE) is already exclusive.
        let name = local_name(&self.shape.name);
        sqlx::query("insert or ignore into syncdata_table_state (table_name) values (?)")
            .bind(&name)
            .execute(&mut *self.tx)
            .await?;
        let (id, lsn, seq): (i64, i64, i64) = sqlx::query_as(
            "select id, truncate_lsn, truncate_seq from syncdata_table_state where table_name = ?",
        )
        .bind(&name)
        .fetch_one(&mut *self.tx)
        .await?;
        self.table_id = Some(id);
        Ok(Version::from_db(lsn, seq))
    }

    async fn truncate(&mut self, at: Version) -> Result<Vec<String>, sqlx::Error> {
        let id = self.table_id();
        let (lsn, seq) = at.to_db();
        let kept: Vec<String> = sqlx::query_scalar(
            "select key from syncdata_row_state where table_id = ? and state = 'L' and (lsn, seq) > (?, ?)",
        )
        .bind(id)
        .bind(lsn)
        .bind(seq)
        .fetch_all(&mut *self.tx)
        .await?;
        if kept.is_empty() {
            sqlx::query(AssertSqlSafe(format!("delete from {}", self.table)))
                .execute(&mut *self.tx)
                .await?;
        } else {
            // The kept keys, mapped, in a temporary table; every other row goes.
            let nk = self.shape.key.len();
            let aliases: Vec<String> = (0..nk).map(|i| format!("k{i}")).collect();
            sqlx::query("drop table if exists temp.syncdata_keep")
                .execute(&mut *self.tx)
                .await?;
            sqlx::query(AssertSqlSafe(format!(
                "create temp table syncdata_keep ({})",
                aliases.join(", ")
            )))
            .execute(&mut *self.tx)
            .await?;
            let insert = format!(
                "insert into temp.syncdata_keep values ({})",
                vec!["?"; nk].join(", ")
            );
            for text in &kept {
                let parts = super::prepare::key_parts(text.clone(), nk);
                let q = sqlx::query(AssertSqlSafe(insert.clone()));
                self.bind_key(q, &parts).execute(&mut *self.tx).await?;
            }
            let key_cols: Vec<String> = self.shape.key.iter().map(|&c| self.col(c)).collect();
            sqlx::query(AssertSqlSafe(format!(
                "delete from {} where ({}) not in (select {} from temp.syncdata_keep)",
                self.table,
                key_cols.join(", "),
                aliases.join(", ")
            )))
            .execute(&mut *self.tx)
            .await?;
            sqlx::query("drop table temp.syncdata_keep")
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::query("delete from syncdata_row_state where table_id = ? and (lsn, seq) <= (?, ?)")
            .bind(id)
            .bind(lsn)
            .bind(seq)
            .execute(&mut *self.tx)
            .await?;
        let mixed: Vec<String> = sqlx::query_scalar(
            "select key from syncdata_row_state where table_id = ? and col_versions is not null",
        )
        .bind(id)
        .fetch_all(&mut *self.tx)
        .await?;
        sqlx::query(
            "update syncdata_table_state set truncate_lsn = ?, truncate_seq = ? where id = ?",
        )
        .bind(lsn)
        .bind(seq)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        Ok(mixed)
    }

    async fn lock_rows(
        &mut self,
        keys: &Keys,
        ids: &[KeyId],
    ) -> Result<Vec<(KeyId, Stored)>, sqlx::Error> {
        let id = self.table_id();
        let mut out = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "select key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked \
                 from syncdata_row_state where table_id = ? and key in ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query_as::<_, StoredRow>(AssertSqlSafe(sql)).bind(id);
            for &k in chunk {
                q = q.bind(keys.text(k));
            }
            for (key, state, lsn, seq, fl, fs, cv, parked) in q.fetch_all(&mut *self.tx).await? {
                if let Some(k) = keys.id_of(&key) {
                    out.push((
                        k,
                        Stored {
                            state,
                            version: Version::from_db(lsn, seq),
                            floor: fl.zip(fs).map(|(l, s)| Version::from_db(l, s)),
                            col_versions: json(cv),
                            parked: json(parked),
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn present(&mut self, keys: &Keys, ids: &[KeyId]) -> Result<KeySet, sqlx::Error> {
        let rows = self.by_keys(ids, keys, "").await?;
        rows.iter()
            .map(|r| Ok(ids[r.try_get::<i64, _>(0)? as usize]))
            .collect()
    }

    async fn read_rows(
        &mut self,
        keys: &Keys,
        ids: &KeySet,
    ) -> Result<KeyMap<Vec<Option<String>>>, sqlx::Error> {
        let ids: Vec<KeyId> = ids.iter().copied().collect();
        let cols: String = (0..self.shape.columns.len())
            .map(|c| format!(", t.{}", self.col(c)))
            .collect();
        let rows = self.by_keys(&ids, keys, &cols).await?;
        let mut out = KeyMap::default();
        for r in rows {
            let i: i64 = r.try_get(0)?;
            let mut vals = Vec::with_capacity(self.kinds.len());
            for (c, &kind) in self.kinds.iter().enumerate() {
                vals.push(values::from_sqlite(kind, stored_value(&r, c + 1)?));
            }
            out.insert(ids[i as usize], vals);
        }
        Ok(out)
    }

    async fn insert_bookkeeping(
        &mut self,
        keys: &Keys,
        rows: &[(KeyId, BookRow)],
    ) -> Result<KeySet, sqlx::Error> {
        let id = self.table_id();
        let mut sorted: Vec<&(KeyId, BookRow)> = rows.iter().collect();
        sorted.sort_by(|a, b| keys.text(a.0).cmp(keys.text(b.0)));
        let mut done = KeySet::default();
        for (k, row) in sorted {
            let r = sqlx::query(
                "insert into syncdata_row_state (table_id, key, state, lsn, seq, floor_lsn, floor_seq, col_versions, parked) \
                 values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing",
            )
            .bind(id)
            .bind(keys.text(*k))
            .bind(row.state)
            .bind(row.lsn)
            .bind(row.seq)
            .bind(row.floor.map(|f| f.0))
            .bind(row.floor.map(|f| f.1))
            .bind(row.col_versions.as_deref())
            .bind(row.parked.as_deref())
            .execute(&mut *self.tx)
            .await?;
            if r.rows_affected() == 1 {
                done.insert(*k);
            }
        }
        Ok(done)
    }

    async fn write(&mut self, keys: &Keys, plan: WritePlan) -> Result<(), sqlx::Error> {
        let id = self.table_id();
        let WritePlan {
            deletes,
            updates,
            upserts,
            partial,
            book,
            book_removals,
            parked: _,
        } = plan;
        let delete = format!("delete from {} where {}", self.table, self.key_where());
        for k in deletes {
            let q = sqlx::query(AssertSqlSafe(delete.clone()));
            self.bind_key(q, keys.parts(k))
                .execute(&mut *self.tx)
                .await?;
        }
        for (_, row) in updates {
            self.write_whole(row, true).await?;
        }
        for (_, row) in upserts {
            self.write_whole(row, false).await?;
        }
        for (k, cells) in partial {
            let written: Vec<(usize, Option<String>)> = cells
                .into_iter()
                .enumerate()
                .filter(|(c, cell)| cell.is_some() && !self.shape.is_key(*c))
                .map(|(c, cell)| (c, cell.flatten()))
                .collect();
            if written.is_empty() {
                continue;
            }
            let sets: Vec<String> = written
                .iter()
                .map(|(c, _)| format!("{} = ?", self.col(*c)))
                .collect();
            let sql = format!(
                "update {} set {} where {}",
                self.table,
                sets.join(", "),
                self.key_where()
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (c, v) in written {
                q = bind(q, values::to_sqlite(self.kinds[c], v.as_deref()));
            }
            self.bind_key(q, keys.parts(k))
                .execute(&mut *self.tx)
                .await?;
        }
        for (k, row) in book {
            sqlx::query(
                "update syncdata_row_state set state = ?, lsn = ?, seq = ?, floor_lsn = ?, floor_seq = ?, \
                 col_versions = ?, parked = ? where table_id = ? and key = ?",
            )
            .bind(row.state)
            .bind(row.lsn)
            .bind(row.seq)
            .bind(row.floor.map(|f| f.0))
            .bind(row.floor.map(|f| f.1))
            .bind(row.col_versions.as_deref())
            .bind(row.parked.as_deref())
            .bind(id)
            .bind(keys.text(k))
            .execute(&mut *self.tx)
            .await?;
        }
        for k in book_removals {
            sqlx::query("delete from syncdata_row_state where table_id = ? and key = ?")
                .bind(id)
                .bind(keys.text(k))
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn commit(mut self, log: BatchLog) -> Result<(), sqlx::Error> {
        sqlx::query(
            "insert into data_sync_logs (table_name, status, rows_synced, archive_ref, source_commit_at, \
                 inserted, updated, deleted, superseded, parked, deletes_of_missing) \
             values (?, 'SUCCESS', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(self.shape.name.to_string())
        .bind(log.rows_synced as i64)
        .bind(&log.archive_ref)
        .bind(&log.source_commit_at)
        .bind(log.counts.inserted as i64)
        .bind(log.counts.updated as i64)
        .bind(log.counts.deleted as i64)
        .bind(log.counts.superseded as i64)
        .bind(log.counts.parked as i64)
        .bind(log.counts.deletes_of_missing as i64)
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await
    }
}
