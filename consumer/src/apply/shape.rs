//! A target table's shape: its writable columns and primary key, as the
//! target's catalog describes them (see `Target::load_shape`). The engine
//! maps records onto it; names in records are only ever compared against
//! it, so a hostile name in a record can at most be rejected, never reach
//! SQL.

use std::collections::{HashMap, HashSet};

use syncdata_core::table::TableName;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// The column's type as the target's catalog spells it: catalog text,
    /// safe to splice as a cast.
    pub sql_type: String,
    /// Values arrive hex-encoded (wal2json's bytea).
    pub is_bytea: bool,
}

#[derive(Debug, Clone)]
pub struct TableShape {
    pub name: TableName,
    /// Writable columns (generated columns left out), in table order.
    pub columns: Vec<Column>,
    pub by_name: HashMap<String, usize>,
    /// Generated columns: computed locally, so values for them are ignored.
    pub generated: HashSet<String>,
    /// Positions (in `columns`) of the primary-key columns, in key order.
    pub key: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("table {0} not found locally: create it with the same schema as production")]
    NotFound(TableName),
    #[error("table {0} has no primary key: syncdata needs one to apply UPDATE and DELETE")]
    NoPrimaryKey(TableName),
    #[error("reading the catalog for table {table}: {source}")]
    Db {
        table: TableName,
        #[source]
        source: sqlx::Error,
    },
}

impl TableShape {
    pub fn is_key(&self, column: usize) -> bool {
        self.key.contains(&column)
    }
}
