//! A table's shape read from PostgreSQL's catalog, and the SQL fragments
//! the statements build on it. Every identifier in that SQL comes from the
//! catalog and is quoted; values are always bound, never spliced.

use std::collections::{HashMap, HashSet};

use syncdata_core::catalog;
use syncdata_core::table::{quote_ident, TableName};

use crate::apply::shape::{Column, ShapeError, TableShape};

impl TableShape {
    /// Reads the shape of local table `name` (through the one catalog
    /// reader, [`catalog::table`]).
    pub async fn load<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        name: &TableName,
    ) -> Result<TableShape, ShapeError> {
        let def = catalog::table(executor, name)
            .await
            .map_err(|source| ShapeError::Db {
                table: name.clone(),
                source,
            })?
            .ok_or_else(|| ShapeError::NotFound(name.clone()))?;
        let generated: HashSet<String> = def
            .columns
            .iter()
            .filter(|c| c.generated)
            .map(|c| c.name.clone())
            .collect();
        let columns: Vec<Column> = def
            .columns
            .into_iter()
            .filter(|c| !c.generated)
            .map(|c| Column {
                name: c.name,
                // Cast to the unlimited type: a cast to varchar(5) truncates
                // silently, the assignment rejects (22001), as INSERT would.
                sql_type: c.unlimited_type,
                is_bytea: c.is_bytea,
            })
            .collect();
        let by_name: HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        if def.primary_key.is_empty() {
            return Err(ShapeError::NoPrimaryKey(name.clone()));
        }
        let key = def
            .primary_key
            .iter()
            .map(|n| {
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

    /// SQL turning text expression `expr` into column `c`'s type. bytea
    /// arrives as bare hex from wal2json (and as `\x…` from PostgreSQL's own
    /// text output when a value is carried over).
    pub(in crate::apply::postgres) fn cast(&self, c: usize, expr: &str) -> String {
        let col = &self.columns[c];
        if col.is_bytea {
            format!("(case when left({expr}, 2) = '\\x' then {expr}::bytea else decode({expr}, 'hex') end)")
        } else {
            format!("({expr})::{}", col.sql_type)
        }
    }

    pub(in crate::apply::postgres) fn quoted_column(&self, c: usize) -> String {
        quote_ident(&self.columns[c].name)
    }

    /// `t."k1" = <cast of u.kN>` joined with AND, for the key columns, where
    /// the key values are text columns `u.k0, u.k1, …`.
    pub(in crate::apply::postgres) fn key_join(&self, target: &str, source: &str) -> String {
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
    pub(in crate::apply::postgres) fn key_params(&self, from: usize) -> (String, String) {
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
    /// [`crate::apply::prepare::key_text`]).
    pub(in crate::apply::postgres) fn key_from_text(&self, i: usize, expr: &str) -> String {
        if self.key.len() == 1 {
            self.cast(self.key[0], expr)
        } else {
            self.cast(self.key[i], &format!("(({expr})::jsonb ->> {i})"))
        }
    }
}
