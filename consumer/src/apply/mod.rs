//! The apply engine: writes one table's batch of change records to the local
//! database in one transaction, with a few set-based statements.
//!
//! The data flow (docs/design.md, "Apply engine"): [`prepare`] maps records
//! onto the table's shape; the [`engine`] locks, probes and runs the pure
//! [`merge`]; [`plan`] (pure) turns merged states into writes; a [`target`]
//! runs them — [`postgres`] (the default) or [`sqlite`] (a local file). Invariants: the version
//! guard and the data change commit together; a change is applied only where
//! it is newer (per column); deletes leave tombstones; a TRUNCATE is a floor
//! for the whole table. So apply is idempotent and order-free, and any
//! number of processes may apply batches of one table at once.

mod bulk;
pub mod engine;
pub mod merge;
pub mod plan;
pub mod postgres;
pub mod prepare;
pub mod shape;
pub mod sqlite;
pub mod target;

use syncdata_core::record::Record;
use syncdata_core::table::TableName;
use syncdata_core::version::Version;

pub use engine::Engine;
pub use postgres::PgTarget;
pub use prepare::key_text;
use shape::ShapeError;
pub use target::{Target, TargetTx};

/// One record of a batch, with the ordinal to use when it carries no `seq`.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub record: &'a Record,
    pub fallback_seq: u64,
}

/// A batch of `records` without fallback ordinals (the unit tests' batches).
#[cfg(test)]
pub(crate) fn incoming(records: &[Record]) -> Vec<Incoming<'_>> {
    records
        .iter()
        .map(|record| Incoming {
            record,
            fallback_seq: 0,
        })
        .collect()
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// It changed the local state.
    Applied,
    /// Older than what was already applied (a duplicate, a replay, or a change
    /// that a later one overtook): nothing to do.
    Superseded,
    /// It cannot apply to this table as it is (unknown column, no key, …).
    /// The message says which record field is at fault; no values.
    Rejected(String),
}

#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    /// One per record of the batch, in batch order.
    pub dispositions: Vec<Disposition>,
    /// Records that changed local state (TRUNCATEs included).
    pub applied: u64,
    /// Applied records by op (seed 004's records_added/updated/deleted).
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Rows waiting for their image (partial UPDATE of a row not present).
    pub parked: u64,
    /// DELETEs of rows that were not present (seed 004: logged, skipped;
    /// the tombstone still stops a late INSERT).
    pub deletes_of_missing: u64,
    pub max_version: Option<Version>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Shape(#[from] ShapeError),
    #[error("applying to {table}: {source}")]
    Db {
        table: TableName,
        #[source]
        source: sqlx::Error,
    },
}

impl ApplyError {
    /// The SQLSTATE of a database error, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            ApplyError::Db {
                source: sqlx::Error::Database(e),
                ..
            } => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// The engine over the local PostgreSQL database: what the daemon, `resync`
/// and the tests use.
pub type Applier = Engine<PgTarget>;

impl Engine<PgTarget> {
    /// See [`PgTarget::new`].
    pub fn new(pool: sqlx::PgPool, replica_role: bool) -> Applier {
        Engine::with_target(PgTarget::new(pool, replica_role))
    }

    pub async fn detect_replica_role(pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
        PgTarget::detect_replica_role(pool).await
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.target().pool()
    }
}
