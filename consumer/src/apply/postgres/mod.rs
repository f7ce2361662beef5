//! The PostgreSQL target: the local database the consumer writes to. Data
//! statements are set-based (one statement per kind of write, see
//! [`statements`]; the rows are bound as arrays for `unnest`, or, when
//! configured, copied into a staging table first, see [`stage`]); the bookkeeping lives in the `syncdata`
//! schema (see [`bookkeeping`]); both commit in the batch's one transaction.

mod bookkeeping;
mod load;
mod shape;
mod stage;
mod statements;

use std::sync::Arc;

use sqlx::{PgPool, Transaction};
use syncdata_core::table::TableName;
use syncdata_core::version::Version;

use super::merge::{KeyId, KeyMap, KeySet};
use super::plan::{BookRow, Stored, WritePlan};
use super::prepare::Keys;
use super::shape::{ShapeError, TableShape};
use super::target::{BatchLog, Target, TargetTx};

/// The local PostgreSQL database. Cheap to share: one per process.
pub struct PgTarget {
    pool: PgPool,
    replica_role: bool,
    /// Writes of at least this many rows go through `COPY` into a staging
    /// table (see [`stage`]); smaller ones bind arrays for `unnest`.
    /// [`COPY_FROM`] unless set.
    copy_from: usize,
    /// See [`PgTarget::with_index_joins_from`].
    index_joins_from: usize,
}

/// The default of [`PgTarget::with_copy_from`]: never. Measured against
/// `unnest` on batches of 1,000 and 10,000 records (docs/benchmarks.md,
/// "Apply path: COPY vs unnest"), the statements that merge from a staging
/// table cost the server what the `unnest` ones cost, so the `COPY` itself
/// is extra work; and over TCP, where the client leaves Nagle's algorithm
/// on, a `COPY` often waits ~40 ms for a delayed ACK before it completes.
pub const COPY_FROM: usize = usize::MAX;

impl PgTarget {
    /// `replica_role`: apply with `session_replication_role = replica` so
    /// triggers and FK checks do not fire on replicated rows (needs a
    /// superuser; see [`PgTarget::detect_replica_role`]).
    pub fn new(pool: PgPool, replica_role: bool) -> PgTarget {
        PgTarget {
            pool,
            replica_role,
            copy_from: COPY_FROM,
            index_joins_from: INDEX_JOINS_FROM,
        }
    }

    /// Batches of at least `keys` keys apply with hash and merge joins off
    /// (see [`INDEX_JOINS_FROM`]); `usize::MAX`: never.
    pub fn with_index_joins_from(mut self, keys: usize) -> PgTarget {
        self.index_joins_from = keys.max(1);
        self
    }

    /// Writes of at least `rows` rows go through `COPY` into a staging
    /// table; `usize::MAX` keeps every write on `unnest`.
    pub fn with_copy_from(mut self, rows: usize) -> PgTarget {
        self.copy_from = rows.max(1);
        self
    }

    /// Whether the connected role may use replica mode (is a superuser).
    pub async fn detect_replica_role(pool: &PgPool) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("select rolsuper from pg_roles where rolname = current_user")
            .fetch_one(pool)
            .await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// One batch's transaction on the local database.
pub struct PgTx {
    tx: Transaction<'static, sqlx::Postgres>,
    shape: Arc<TableShape>,
    /// The table's `syncdata.table_state` id, once locked.
    table_id: Option<i32>,
    /// Temporary tables made for bulk loads in this transaction.
    stages: u32,
    /// See [`PgTarget::with_copy_from`].
    copy_from: usize,
    /// See [`PgTarget::with_index_joins_from`].
    index_joins_from: usize,
    /// Hash and merge joins are off for the rest of the transaction (see
    /// [`INDEX_JOINS_FROM`]).
    index_joins: bool,
}

/// From this many keys on, a batch's transaction turns hash and merge
/// joins off: its statements join the batch's keys to the bookkeeping and
/// the target table, and with the true row count in view (an `unnest` of
/// a bound array, a staging table) the planner trades thousands of index
/// probes for a hash join over a sequential scan of the whole table — the
/// bookkeeping of every row ever synced. Measured on 1,000,000 bookkeeping
/// rows, 10,000 keys: 378 ms by hash join, 93 ms by index (docs/benchmarks.md,
/// "Apply path: COPY vs unnest").
pub const INDEX_JOINS_FROM: usize = 1000;

/// The statement failed on a unique constraint (SQLSTATE 23505): the one
/// named, or any with None.
fn unique_violation(e: &sqlx::Error, constraint: Option<&str>) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505")
                && constraint.is_none_or(|c| db.constraint() == Some(c))
        }
        _ => false,
    }
}

impl PgTx {
    fn table_id(&self) -> i32 {
        self.table_id
            .expect("the engine locks the table before anything else")
    }
}

impl Target for PgTarget {
    type Tx = PgTx;

    async fn load_shape(&self, table: &TableName) -> Result<TableShape, ShapeError> {
        TableShape::load(&self.pool, table).await
    }

    async fn begin(&self, shape: Arc<TableShape>) -> Result<PgTx, sqlx::Error> {
        // Replica mode is set by the BEGIN itself (one simple query of two
        // statements): one round trip less for every batch, which counts
        // when the database is a network hop away.
        let tx = if self.replica_role {
            self.pool
                .begin_with("BEGIN; SET LOCAL session_replication_role = replica")
                .await?
        } else {
            self.pool.begin().await?
        };
        Ok(PgTx {
            tx,
            shape,
            table_id: None,
            stages: 0,
            copy_from: self.copy_from,
            index_joins_from: self.index_joins_from,
            index_joins: false,
        })
    }
}

impl TargetTx for PgTx {
    async fn lock_table(&mut self, exclusive: bool) -> Result<Version, sqlx::Error> {
        let (id, floor) =
            bookkeeping::lock_table(&mut self.tx, &self.shape.name.to_string(), exclusive).await?;
        self.table_id = Some(id);
        Ok(floor)
    }

    async fn truncate(&mut self, at: Version) -> Result<Vec<String>, sqlx::Error> {
        let id = self.table_id();
        bookkeeping::truncate(&mut self.tx, &self.shape, id, at).await
    }

    async fn lock_rows(
        &mut self,
        keys: &Keys,
        ids: &[KeyId],
    ) -> Result<Vec<(KeyId, Stored)>, sqlx::Error> {
        let id = self.table_id();
        if ids.len() >= self.index_joins_from && !self.index_joins {
            sqlx::query(
                "select set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)",
            )
            .execute(&mut *self.tx)
            .await?;
            self.index_joins = true;
        }
        bookkeeping::lock_rows(&mut self.tx, id, keys, ids).await
    }

    async fn present(&mut self, keys: &Keys, ids: &[KeyId]) -> Result<KeySet, sqlx::Error> {
        statements::present(&mut self.tx, &self.shape, keys, ids).await
    }

    async fn read_rows(
        &mut self,
        keys: &Keys,
        ids: &KeySet,
    ) -> Result<KeyMap<Vec<Option<String>>>, sqlx::Error> {
        statements::read_rows(&mut self.tx, &self.shape, keys, ids).await
    }

    async fn insert_bookkeeping(
        &mut self,
        keys: &Keys,
        rows: &[(KeyId, BookRow)],
    ) -> Result<KeySet, sqlx::Error> {
        let id = self.table_id();
        bookkeeping::insert(&mut self.tx, self.copy_from, id, keys, rows).await
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
        statements::delete(&mut self.tx, &self.shape, keys, &deletes).await?;
        statements::update_or_upsert(&mut self.tx, self.copy_from, &self.shape, updates, upserts)
            .await?;
        statements::update_partial(&mut self.tx, &self.shape, keys, partial).await?;
        bookkeeping::update(&mut self.tx, self.copy_from, id, keys, book).await?;
        bookkeeping::remove(&mut self.tx, id, keys, &book_removals).await
    }

    async fn load_rows(
        &mut self,
        _keys: &Keys,
        rows: Vec<(KeyId, Vec<Option<String>>)>,
    ) -> Result<(), sqlx::Error> {
        self.stages += 1;
        let stage = format!("syncdata_load_{}", self.stages);
        load::load_rows(&mut self.tx, &self.shape, &stage, rows).await
    }

    async fn commit(mut self, log: BatchLog) -> Result<(), sqlx::Error> {
        bookkeeping::log_success(&mut self.tx, &self.shape.name.to_string(), &log).await?;
        self.tx.commit().await
    }
}
