//! Table names: parsed from what a user types (`users`, `sales.orders`,
//! `"Odd.Name"`), shown in one canonical form (the form stored in
//! `tables_to_sync`), and quoted for SQL. Every identifier that reaches SQL
//! goes through [`quote_ident`].

use std::fmt;

use crate::record::MAX_IDENTIFIER_BYTES;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid table name {input:?}: {reason}")]
pub struct TableNameError {
    pub input: String,
    pub reason: &'static str,
}

/// Schemas no table may be synced into: syncdata's own bookkeeping and
/// PostgreSQL's catalogs (every `pg_*` schema is reserved to the system).
pub const DENIED_SCHEMAS: &[&str] = &["syncdata", "information_schema"];

/// Tables no table may be synced into, in any schema: the seed's own
/// tables and the migration table of the local store.
pub const DENIED_TABLES: &[&str] = &[
    "data_sync_logs",
    "data_sync_metrics",
    "tables_to_sync",
    "_sqlx_migrations",
];

/// `"name"` with inner quotes doubled: always safe as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn needs_quotes(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    !(first_ok && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

fn show_ident(name: &str) -> String {
    if needs_quotes(name) {
        quote_ident(name)
    } else {
        name.to_owned()
    }
}

impl TableName {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            table: table.into(),
        }
    }

    /// Parses `table` or `schema.table`; unquoted parts fold to lower case
    /// as in SQL, double-quoted parts keep their case and may hold anything
    /// but NUL.
    pub fn parse(input: &str) -> Result<TableName, TableNameError> {
        let err = |reason| TableNameError {
            input: input.chars().take(100).collect(),
            reason,
        };
        let mut parts = Vec::new();
        let mut chars = input.trim().chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(err("unterminated quote")),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if c == '"' || c.is_whitespace() {
                        return Err(err("quote names with spaces or quotes: \"My Table\""));
                    }
                    part.extend(c.to_lowercase());
                    chars.next();
                }
            }
            if part.is_empty() {
                return Err(err("empty name"));
            }
            if part.len() > MAX_IDENTIFIER_BYTES {
                return Err(err("longer than PostgreSQL's 63-byte identifier limit"));
            }
            if part.contains('\0') {
                return Err(err("NUL byte"));
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(_) => return Err(err("unexpected text after a quoted name")),
            }
        }
        match parts.len() {
            1 => Ok(TableName::new("public", parts.pop().unwrap())),
            2 => {
                let table = parts.pop().unwrap();
                Ok(TableName::new(parts.pop().unwrap(), table))
            }
            _ => Err(err("expected table or schema.table")),
        }
    }

    /// Why this table must never be whitelisted or applied to, if it must
    /// not: a change stream that could write syncdata's bookkeeping, its
    /// whitelist or a system catalog could corrupt or take over the local
    /// database. One rule for `add-tables` and the worker.
    pub fn denied(&self) -> Option<String> {
        let schema = self.schema.as_str();
        if schema.starts_with("pg_") || DENIED_SCHEMAS.contains(&schema) {
            return Some(format!(
                "{self} is in schema {}, which holds syncdata's bookkeeping or PostgreSQL's \
                 catalog: syncdata never writes there",
                show_ident(schema)
            ));
        }
        if DENIED_TABLES.contains(&self.table.as_str()) {
            return Some(format!(
                "{self} is one of syncdata's own tables (data_sync_logs, data_sync_metrics, \
                 tables_to_sync, _sqlx_migrations): it cannot be synced"
            ));
        }
        None
    }

    /// `"schema"."table"` for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Canonical form: `users` for public tables, `sales.orders` otherwise,
/// quoting parts that need it. `parse(display(x)) == x`.
/// Reads a source table's replica identity: (`pg_class.relreplident`,
/// whether its identity index is the primary key). Binds: schema, table.
pub const REPLICA_IDENTITY_SQL: &str = "SELECT c.relreplident::text, \
     (SELECT i.indisprimary FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2";

/// Why a source table's replica identity loses changes, if it does, with
/// the fix: NOTHING, or an index other than the primary key, leaves DELETEs
/// and key-changing UPDATEs without the old primary key in wal2json's
/// output. DEFAULT and FULL carry it.
pub fn replica_identity_problem(
    name: &TableName,
    relreplident: &str,
    identity_is_pk: Option<bool>,
) -> Option<String> {
    let what = match (relreplident, identity_is_pk) {
        ("n", _) => "replica identity NOTHING",
        ("i", Some(false)) => "a replica identity index that is not its primary key",
        _ => return None,
    };
    Some(format!(
        "table {name} has {what}: its DELETEs and key-changing UPDATEs reach wal2json without \
         the old primary key and could not be synced. Fix: `ALTER TABLE {} REPLICA IDENTITY \
         DEFAULT`",
        name.quoted()
    ))
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schema == "public" {
            f.write_str(&show_ident(&self.table))
        } else {
            write!(
                f,
                "{}.{}",
                show_ident(&self.schema),
                show_ident(&self.table)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_user_forms() {
        assert_eq!(
            TableName::parse("users").unwrap(),
            TableName::new("public", "users")
        );
        assert_eq!(
            TableName::parse("Users").unwrap(),
            TableName::new("public", "users")
        );
        assert_eq!(
            TableName::parse("sales.Orders").unwrap(),
            TableName::new("sales", "orders")
        );
        assert_eq!(
            TableName::parse(r#""My ""Odd"".T""#).unwrap(),
            TableName::new("public", r#"My "Odd".T"#)
        );
        assert_eq!(
            TableName::parse(r#""a.b"."c""#).unwrap(),
            TableName::new("a.b", "c")
        );
        for bad in ["", "a.b.c", "a b", "\"open", "a.", &"x".repeat(64)] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quoting_neutralises_hostile_names() {
        let t = TableName::new("public", "users\"; drop table x; --");
        assert_eq!(t.quoted(), r#""public"."users""; drop table x; --""#);
        assert_eq!(t.to_string(), r#""users""; drop table x; --""#);
    }

    #[test]
    fn bookkeeping_catalogs_and_seed_tables_are_denied() {
        for name in [
            "syncdata.row_state",
            "syncdata.instance",
            "pg_catalog.pg_authid",
            "information_schema.tables",
            "pg_toast.pg_toast_1259",
            "pg_temp_3.t",
            "data_sync_logs",
            "data_sync_metrics",
            "tables_to_sync",
            "_sqlx_migrations",
            "other.tables_to_sync",
        ] {
            let t = TableName::parse(name).unwrap();
            assert!(t.denied().is_some(), "{name}");
        }
        for name in ["users", "sales.orders", "\"Syncdata\".t", "public.pg_like"] {
            assert_eq!(TableName::parse(name).unwrap().denied(), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(schema in "[^\u{0}]{1,20}", table in "[^\u{0}]{1,20}") {
            prop_assume!(schema.len() <= 63 && table.len() <= 63);
            let t = TableName::new(schema, table);
            prop_assert_eq!(TableName::parse(&t.to_string()).unwrap(), t);
        }
    }
}
