//! The one reader of PostgreSQL's catalog for "what are this table's columns,
//! types and primary key?" — asked by the producer (source tables, the rules
//! check), by the consumer (the apply engine's table shape, `verify`) and by
//! the test kit's reference applier.
//!
//! Invariant: one statement per call, so the answer is one consistent
//! snapshot of the catalog (and any executor — pool, connection or
//! transaction — will do). Names and types come back as the catalog spells
//! them; callers quote them before splicing them into SQL.

use sqlx::PgExecutor;

use crate::table::TableName;

/// A table (or partitioned table) as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub name: TableName,
    /// Every live column (dropped ones left out), generated ones included,
    /// in table order.
    pub columns: Vec<ColumnDef>,
    /// Primary-key column names in key order (an index's INCLUDE columns
    /// left out); empty when the table has no primary key.
    pub primary_key: Vec<String>,
    /// `pg_class.reltuples`, when the table was ever analyzed.
    pub estimated_rows: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type()` of the column, e.g. `character varying(10)`: catalog
    /// text, safe to splice as a cast.
    pub sql_type: String,
    /// `sql_type` without the length limit of a length-limited character or
    /// bit type (`character varying`, `bpchar`, `bit varying` and their
    /// arrays), else `sql_type`. An explicit cast to a limited type
    /// truncates silently ('toolong'::varchar(5) is 'toolo'); a cast to this
    /// type leaves the limit to the assignment, which rejects (22001 /
    /// 22026) as an INSERT would.
    pub unlimited_type: String,
    /// Name of the base type (a domain resolved to its base), e.g. `varchar`.
    pub base_type: String,
    /// `pg_type.typcategory` of the base type: `S` string, `N` numeric, `B`
    /// boolean, `D` date/time, `A` array, …
    pub category: char,
    /// The base type is `bytea`.
    pub is_bytea: bool,
    /// A generated column (computed on each side, never replicated).
    pub generated: bool,
    pub not_null: bool,
    pub has_default: bool,
    /// The type modifier (`atttypmod`, or the domain's), -1 when none.
    pub typmod: i32,
    /// The column's effective collation (the database's for `default`);
    /// None for a type that is not collatable.
    pub collation: Option<String>,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The schemas holding user tables: not the system catalogs, not TOAST or
/// temporary schemas.
const USER_SCHEMAS: &str = "n.nspname not in ('pg_catalog', 'information_schema') \
     and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'";

/// One row per column (one row with NULL columns for a table without any).
fn describe_sql(selection: &str) -> String {
    format!(
        "select n.nspname::text, c.relname::text, c.reltuples::float4, a.attname::text, \
                coalesce(format_type(a.atttypid, a.atttypmod), ''), \
                coalesce(case a.atttypid \
                    when 'varchar'::regtype then 'character varying' \
                    when 'bpchar'::regtype then 'bpchar' \
                    when 'bit'::regtype then 'bit varying' \
                    when 'varbit'::regtype then 'bit varying' \
                    when 'varchar[]'::regtype then 'character varying[]' \
                    when 'bpchar[]'::regtype then 'bpchar[]' \
                    when 'bit[]'::regtype then 'bit varying[]' \
                    when 'varbit[]'::regtype then 'bit varying[]' \
                    else format_type(a.atttypid, a.atttypmod) end, ''), \
                coalesce(bt.typname::text, ''), coalesce(bt.typcategory::text, 'X'), \
                coalesce(bt.oid = 'bytea'::regtype, false), \
                coalesce(a.attgenerated <> '', false), coalesce(a.attnotnull, false), \
                coalesce(a.atthasdef, false), \
                coalesce(case when a.atttypmod <> -1 then a.atttypmod else t.typtypmod end, -1), \
                case when co.collname = 'default' \
                     then (select datcollate::text from pg_database where datname = current_database()) \
                     else co.collname::text end, \
                (select k.ord from unnest(pk.indkey::int2[]) with ordinality as k(attnum, ord) \
                 where k.attnum = a.attnum and k.ord <= pk.indnkeyatts) \
         from pg_class c \
         join pg_namespace n on n.oid = c.relnamespace \
         left join pg_index pk on pk.indrelid = c.oid and pk.indisprimary \
         left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped \
         left join pg_type t on t.oid = a.atttypid \
         left join pg_type bt on bt.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end \
         left join pg_collation co on co.oid = a.attcollation \
         where c.relkind in ('r', 'p') and {selection} \
         order by n.nspname, c.relname, a.attnum"
    )
}

/// schema, table, reltuples, then the column (attname NULL: no column),
/// then its key position.
type Row = (
    String,
    String,
    f32,
    Option<String>,
    String,
    String,
    String,
    String,
    bool,
    bool,
    bool,
    bool,
    i32,
    Option<String>,
    Option<i64>,
);

fn collect(rows: Vec<Row>) -> Vec<TableDef> {
    let mut tables: Vec<(TableDef, Vec<(i64, String)>)> = Vec::new();
    for row in rows {
        let (schema, table, reltuples, column, sql_type, unlimited_type, base_type, category) =
            (row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7);
        let (is_bytea, generated, not_null, has_default, typmod, collation, key_ord) =
            (row.8, row.9, row.10, row.11, row.12, row.13, row.14);
        let name = TableName::new(schema, table);
        if tables.last().is_none_or(|(t, _)| t.name != name) {
            tables.push((
                TableDef {
                    name,
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                    estimated_rows: (reltuples >= 0.0).then_some(reltuples as i64),
                },
                Vec::new(),
            ));
        }
        let (def, key) = tables.last_mut().expect("pushed above");
        let Some(column) = column else { continue };
        if let Some(ord) = key_ord {
            key.push((ord, column.clone()));
        }
        def.columns.push(ColumnDef {
            name: column,
            sql_type,
            unlimited_type,
            base_type,
            category: category.chars().next().unwrap_or('X'),
            is_bytea,
            generated,
            not_null,
            has_default,
            typmod,
            collation,
        });
    }
    tables
        .into_iter()
        .map(|(mut def, mut key)| {
            key.sort();
            def.primary_key = key.into_iter().map(|(_, name)| name).collect();
            def
        })
        .collect()
}

/// Describes table `name`; None when there is no such table (views,
/// sequences and other relations count as none).
pub async fn table<'e>(
    executor: impl PgExecutor<'e>,
    name: &TableName,
) -> Result<Option<TableDef>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(describe_sql(
        "n.nspname = $1 and c.relname = $2",
    )))
    .bind(&name.schema)
    .bind(&name.table)
    .fetch_all(executor)
    .await?;
    Ok(collect(rows).pop())
}

/// Describes every user table of the database (partitions left out: their
/// parent describes them), ordered by schema and name.
pub async fn user_tables<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<TableDef>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(describe_sql(&format!(
        "not c.relispartition and {USER_SCHEMAS}"
    ))))
    .fetch_all(executor)
    .await?;
    Ok(collect(rows))
}
