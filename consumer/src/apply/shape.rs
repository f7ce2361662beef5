//! A local table's shape as the catalog describes it: columns, types and
//! primary key, plus the SQL the applier runs against it. Every identifier in
//! that SQL comes from the catalog and is quoted; names in records are only
//! ever compared against it, so a hostile name in a record can at most be
//! rejected, never executed.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;

use syncdata_core::table::{quote_ident, TableName};

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// `format_type()` of the column: catalog text, safe to splice as a cast.
    pub sql_type: String,
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
    pub async fn load(pool: &PgPool, name: &TableName) -> Result<TableShape, ShapeError> {
        let db = |source| ShapeError::Db {
            table: name.clone(),
            source,
        };
        let oid: Option<(sqlx::postgres::types::Oid,)> = sqlx::query_as(
            "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
        )
        .bind(&name.schema)
        .bind(&name.table)
        .fetch_optional(pool)
        .await
        .map_err(db)?;
        let Some((oid,)) = oid else {
            return Err(ShapeError::NotFound(name.clone()));
        };
        let rows: Vec<(String, String, bool, bool)> = sqlx::query_as(
            // Explicit casts to a length-limited character or bit type
            // truncate silently ('toolong'::varchar(5) is 'toolo'); cast to
            // the unlimited type and let the assignment to the column
            // enforce the limit (22001 / 22026), as an INSERT would.
            "select a.attname::text, \
                    case a.atttypid \
                        when 'varchar'::regtype then 'character varying' \
                        when 'bpchar'::regtype then 'bpchar' \
                        when 'bit'::regtype then 'bit varying' \
                        when 'varbit'::regtype then 'bit varying' \
                        when 'varchar[]'::regtype then 'character varying[]' \
                        when 'bpchar[]'::regtype then 'bpchar[]' \
                        when 'bit[]'::regtype then 'bit varying[]' \
                        when 'varbit[]'::regtype then 'bit varying[]' \
                        else format_type(a.atttypid, a.atttypmod) end, \
                    a.attgenerated <> '', a.atttypid = 'bytea'::regtype \
             from pg_attribute a \
             where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped \
             order by a.attnum",
        )
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(db)?;
        let generated = rows.iter().filter(|r| r.2).map(|r| r.0.clone()).collect();
        let columns: Vec<Column> = rows
            .into_iter()
            .filter(|(_, _, generated, _)| !generated)
            .map(|(name, sql_type, _, is_bytea)| Column {
                name,
                sql_type,
                is_bytea,
            })
            .collect();
        let by_name: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let key_names: Vec<(String,)> = sqlx::query_as(
            "select a.attname::text from pg_index i \
             cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord) \
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum \
             where i.indrelid = $1 and i.indisprimary order by k.ord",
        )
        .bind(oid)
        .fetch_all(pool)
        .await
        .map_err(db)?;
        if key_names.is_empty() {
            return Err(ShapeError::NoPrimaryKey(name.clone()));
        }
        let key = key_names
            .iter()
            .map(|(n,)| {
                by_name
                    .get(n)
                    .copied()
                    .ok_or_else(|| ShapeError::NoPrimaryKey(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TableShape {
            name: name.clone(),
            columns,
            by_name,
            generated,
            key,
        })
    }

    pub fn is_key(&self, column: usize) -> bool {
        self.key.contains(&column)
    }

    /// SQL turning text expression `expr` into column `c`'s type. bytea
    /// arrives as bare hex from wal2json (and as `\x…` from PostgreSQL's own
    /// text output when a value is carried over).
    pub fn cast(&self, c: usize, expr: &str) -> String {
        let col = &self.columns[c];
        if col.is_bytea {
            format!("(case when left({expr}, 2) = '\\x' then {expr}::bytea else decode({expr}, 'hex') end)")
        } else {
            format!("({expr})::{}", col.sql_type)
        }
    }

    pub fn quoted_column(&self, c: usize) -> String {
        quote_ident(&self.columns[c].name)
    }

    /// `t."k1" = <cast of u.kN>` joined with AND, for the key columns, where
    /// the key values are text columns `u.k0, u.k1, …`.
    pub fn key_join(&self, target: &str, source: &str) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                format!(
                    "{target}.{} = {}",
                    self.quoted_column(c),
                    self.cast(c, &format!("{source}.k{i}"))
                )
            })
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// `$from::text[], $from+1::text[], …` for the key columns and the
    /// matching alias list `k0, k1, …`.
    pub fn key_params(&self, from: usize) -> (String, String) {
        let params = (0..self.key.len())
            .map(|i| format!("${}::text[]", from + i))
            .collect::<Vec<_>>()
            .join(", ");
        let aliases = (0..self.key.len())
            .map(|i| format!("k{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        (params, aliases)
    }

    /// SQL text of a key column from a stored key text `expr` (see
    /// [`crate::apply::key_text`]).
    pub fn key_from_text(&self, i: usize, expr: &str) -> String {
        if self.key.len() == 1 {
            self.cast(self.key[0], expr)
        } else {
            self.cast(self.key[i], &format!("(({expr})::jsonb ->> {i})"))
        }
    }
}
