//! The target seam: what the apply engine needs from the database it writes
//! to. The engine ([`super::engine`]) owns the order of the steps — lock,
//! probe, merge, plan, write — and the retry of the merge when another
//! process inserted a key's bookkeeping first; a target only runs each step
//! against its storage. Adding a target (`postgres/`, `sqlite/`) means implementing
//! [`Target`] and [`TargetTx`], not copying the engine.
//!
//! # Contract
//!
//! - **Atomic:** one batch of one table is one [`TargetTx`]: its data
//!   changes, its bookkeeping (row versions, the table's TRUNCATE floor) and
//!   its log entry commit together in [`TargetTx::commit`], or none of them
//!   does. Dropping a transaction without committing rolls it back. The
//!   version guard and the data it guards never commit apart.
//! - **Idempotent, order-free:** the engine only writes what the merge says
//!   is newer than what the bookkeeping holds, so applying a batch again,
//!   or batches in any order, yields the same rows. A target adds no
//!   guarantee of its own here, but must not break it: it must read the
//!   bookkeeping it is asked to read under the locks described below, and
//!   write exactly the plan it is given.
//! - **Concurrent:** any number of transactions, in this process and in
//!   others, may apply batches of the same table at once. What keeps them
//!   apart are the locks each method takes (or, on a target without row
//!   locks, a lock at least as strong, e.g. SQLite's one writer):
//!   - [`TargetTx::lock_table`]: the table's state, *shared* for ordinary
//!     batches (they run side by side) and *exclusive* for a batch that
//!     carries a TRUNCATE (it waits for those in flight and holds new ones
//!     off until it commits). Always first.
//!   - [`TargetTx::lock_rows`]: the bookkeeping rows that exist for the keys,
//!     in key order (so two batches never wait for each other in a cycle),
//!     read in the same statement that locks them, so what is read is the
//!     newest committed state.
//!   - [`TargetTx::insert_bookkeeping`]: inserts only keys that still have
//!     no bookkeeping row, in key order; a key another transaction inserted
//!     meanwhile is reported as not inserted. The engine then gives the
//!     transaction up (releasing every row lock it took) and applies the
//!     batch again, locking its keys again in one statement, in key order: a lock taken
//!     after others, out of key order, could wait in a cycle with a batch
//!     that holds it and waits for one of ours (SQLSTATE 40P01, seen with
//!     two consumers on one table). So each batch takes its bookkeeping
//!     row locks in one ordered statement, and its inserts in another, and
//!     waits for nothing else but its table's state.
//!   - Reads of the target table ([`TargetTx::present`],
//!     [`TargetTx::read_rows`]) run only while the rows' bookkeeping is
//!     locked, as statements of their own (under READ COMMITTED a statement
//!     that waited for a lock sees only the locked row afresh).
//! - **Transient or permanent** is decided from the error ([`sqlx::Error`],
//!   SQLSTATE) by `crate::failure`, not by the target.

use std::future::Future;
use std::sync::Arc;

use syncdata_core::table::TableName;
use syncdata_core::version::Version;

use super::merge::{KeyId, KeyMap, KeySet};
use super::plan::{BookRow, Stored, WritePlan};
use super::prepare::Keys;
use super::shape::{ShapeError, TableShape};

/// A database the engine applies batches to. Shared by every worker of the
/// process: methods take `&self` and may be called concurrently.
pub trait Target: Send + Sync + 'static {
    type Tx: TargetTx;

    /// Reads a table's shape (columns, types, key) from the target's
    /// catalog. The engine caches it and calls this again after
    /// [`super::Engine::forget_shape`]. Errors say when the table is missing
    /// or has no primary key.
    fn load_shape(
        &self,
        table: &TableName,
    ) -> impl Future<Output = Result<TableShape, ShapeError>> + Send;

    /// Begins the transaction of one batch of the table `shape` describes.
    fn begin(
        &self,
        shape: Arc<TableShape>,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send;
}

/// One batch's transaction on one table. The engine calls
/// [`TargetTx::lock_table`] first, [`TargetTx::commit`] last, and the other
/// methods any number of times in between (the key table `keys` only grows
/// between calls: ids stay valid).
pub trait TargetTx: Send {
    /// Locks the table's state (shared, or exclusive for a TRUNCATE: see the
    /// module doc), creating it on the table's first batch. Returns the
    /// table's TRUNCATE floor: changes at or below it are dead.
    fn lock_table(
        &mut self,
        exclusive: bool,
    ) -> impl Future<Output = Result<Version, sqlx::Error>> + Send;

    /// A TRUNCATE at `at`, newer than the floor [`TargetTx::lock_table`]
    /// returned (the lock is exclusive): removes every target row and every
    /// bookkeeping row wholly at or below `at`, and raises the floor to
    /// `at`. Returns the key texts of the rows kept because some of their
    /// columns are newer: the engine deletes them at `at` in the merge.
    fn truncate(
        &mut self,
        at: Version,
    ) -> impl Future<Output = Result<Vec<String>, sqlx::Error>> + Send;

    /// Locks, in key order, and reads the bookkeeping rows that exist for
    /// the keys `ids`. Returns (key id, row) for each row found.
    fn lock_rows(
        &mut self,
        keys: &Keys,
        ids: &[KeyId],
    ) -> impl Future<Output = Result<Vec<(KeyId, Stored)>, sqlx::Error>> + Send;

    /// Which of the keys `ids` have a row in the target table.
    fn present(
        &mut self,
        keys: &Keys,
        ids: &[KeyId],
    ) -> impl Future<Output = Result<KeySet, sqlx::Error>> + Send;

    /// The text of every column (shape order, None for NULL) of the target
    /// rows of `ids` that exist.
    fn read_rows(
        &mut self,
        keys: &Keys,
        ids: &KeySet,
    ) -> impl Future<Output = Result<KeyMap<Vec<Option<String>>>, sqlx::Error>> + Send;

    /// Inserts the bookkeeping rows of keys that had none, in key order,
    /// skipping keys that have one by now. Returns the key ids inserted; a
    /// target may instead insert none of them when any has a row by now.
    /// Either way, when a key was not inserted the engine gives the
    /// transaction up (it may be failed) and applies the batch again.
    fn insert_bookkeeping(
        &mut self,
        keys: &Keys,
        rows: &[(KeyId, BookRow)],
    ) -> impl Future<Output = Result<KeySet, sqlx::Error>> + Send;

    /// Writes the plan: target rows first (deletes, whole rows, partial
    /// rows), then the bookkeeping.
    fn write(
        &mut self,
        keys: &Keys,
        plan: WritePlan,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Writes whole rows of keys that have no bookkeeping row and no row
    /// in the target table, or one with the same values (snapshot rows, see
    /// `super::bulk`), without bookkeeping: a row that is there already is
    /// kept. Called only under the exclusive lock of a snapshot's barrier.
    /// The default writes them as upserts through [`TargetTx::write`].
    fn load_rows(
        &mut self,
        keys: &Keys,
        rows: Vec<(KeyId, Vec<Option<String>>)>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async move {
            let plan = WritePlan {
                upserts: rows,
                ..WritePlan::default()
            };
            self.write(keys, plan).await
        }
    }

    /// Writes the batch's log entry and commits.
    fn commit(self, log: BatchLog) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// The log entry of a committed batch (`data_sync_logs` on PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLog {
    /// Records that changed local state.
    pub rows_synced: u64,
    /// Where the batch came from: given by the caller, or the batch's LSN
    /// range.
    pub archive_ref: String,
    /// The newest source commit time among the batch's records (RFC 3339,
    /// UTC), when they carry one: for end-to-end freshness in `status`.
    pub source_commit_at: Option<String>,
    /// What the batch's records did, by kind (`syncdata report`).
    pub counts: BatchCounts,
}

/// A batch's records by what they did: applied by op, superseded (older
/// than what was applied: duplicates, replays, overtaken changes), rows
/// parked waiting for their image, DELETEs of rows not present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub superseded: u64,
    pub parked: u64,
    pub deletes_of_missing: u64,
}
