//! A table's definition as it travels in the stream (SCHEMA records) and as
//! it is read from a local table: columns (type with modifiers, nullability,
//! default), primary key, unique constraints and foreign keys. The same
//! catalog query ([`DEFINITION_SQL`]) produces it on the source (inside the
//! DDL event trigger `syncdata-producer setup-source` installs) and on the
//! local database, so the two compare field by field. See `docs/schema.md`.

use serde::{Deserialize, Serialize};

use crate::record::{Columns, Op, Record, Value};
use crate::table::TableName;
use crate::version::Lsn;

/// The source's capture table: the DDL event trigger writes one row per
/// changed table into it, in the DDL's own transaction, so the archive
/// holds it at the exact commit LSN of the change.
pub const LOG_SCHEMA: &str = "syncdata";
pub const LOG_TABLE: &str = "schema_log";

/// The column of a SCHEMA record's `data` holding the definition.
pub const DEFINITION_FIELD: &str = "definition";

/// The subject suffix of the copy of each SCHEMA record kept for look-ups
/// (`<table subject>.schema`): its last message is the table's newest
/// definition, read without scanning the table's data.
pub const SCHEMA_SUBJECT_SUFFIX: &str = "schema";

pub fn log_table() -> TableName {
    TableName::new(LOG_SCHEMA, LOG_TABLE)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: `character varying(20)`,
    /// `numeric(12,2)`, `integer[]`, …
    #[serde(rename = "type")]
    pub type_name: String,
    pub not_null: bool,
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    #[serde(default)]
    pub name: String,
    pub columns: Vec<String>,
    pub ref_schema: String,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueDef {
    #[serde(default)]
    pub name: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    pub schema: String,
    pub table: String,
    pub columns: Vec<ColumnDef>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// The primary key constraint's name (local tables; migration SQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key_name: Option<String>,
    #[serde(default)]
    pub unique: Vec<UniqueDef>,
    #[serde(default)]
    pub foreign_keys: Vec<ForeignKey>,
    /// The DDL's command tag on the source (`ALTER TABLE`, …); `CAPTURE`
    /// for the definition recorded when capture starts (a baseline, not a
    /// change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl TableDef {
    pub fn name(&self) -> TableName {
        TableName::new(self.schema.clone(), self.table.clone())
    }

    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// This definition as a SCHEMA record at `(lsn, seq)`.
    pub fn to_record(&self, lsn: Lsn, seq: Option<u64>, ts: Option<String>) -> Record {
        let json = serde_json::value::to_raw_value(self).expect("a definition serializes");
        let mut data = Columns::new();
        data.insert(
            DEFINITION_FIELD.to_owned(),
            serde_json::from_str::<Value>(json.get()).expect("raw JSON is a value"),
        );
        Record {
            schema: self.schema.clone(),
            table: self.table.clone(),
            op: Op::Schema,
            data: Some(data),
            old_keys: None,
            lsn,
            seq,
            ts,
            snapshot: false,
        }
    }

    /// The definition a SCHEMA record carries.
    pub fn from_record(record: &Record) -> Result<TableDef, String> {
        let value = record
            .data
            .as_ref()
            .and_then(|d| d.get(DEFINITION_FIELD))
            .ok_or("SCHEMA record without a definition")?;
        TableDef::from_value(value)
    }

    /// A definition given as a JSON object, or as a string holding one (a
    /// jsonb column as wal2json and pgoutput decode it).
    pub fn from_value(value: &Value) -> Result<TableDef, String> {
        let raw = value.raw().trim();
        let parsed = if raw.starts_with('"') {
            let text: String = serde_json::from_str(raw).map_err(|e| e.to_string())?;
            serde_json::from_str::<TableDef>(&text)
        } else {
            serde_json::from_str::<TableDef>(raw)
        };
        let def = parsed.map_err(|e| format!("invalid table definition: {e}"))?;
        def.validate()?;
        Ok(def)
    }

    /// Types and defaults reach SQL as text: only what a catalog's
    /// `format_type` and `pg_get_expr` produce is accepted for types, and a
    /// default may not end a statement.
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.columns {
            let ok = !c.type_name.is_empty()
                && c.type_name.chars().all(|ch| {
                    ch.is_ascii_alphanumeric() || " _(),.[]\"".contains(ch) || !ch.is_ascii()
                });
            if !ok {
                return Err(format!(
                    "column {:?}: type {:?} is not a type name",
                    c.name, c.type_name
                ));
            }
            if c.default.as_deref().is_some_and(|d| d.contains(';')) {
                return Err(format!("column {:?}: default holds ';'", c.name));
            }
        }
        Ok(())
    }
}

/// The catalog query behind every definition: `$1` is the table's oid.
/// Generated columns are left out (neither plugin sends them); defaults are
/// as `pg_get_expr` prints them; unique constraints and foreign keys by name.
pub const DEFINITION_SQL: &str = r#"
SELECT jsonb_build_object(
  'schema', n.nspname::text,
  'table', c.relname::text,
  'columns', coalesce((
     SELECT jsonb_agg(jsonb_build_object(
              'name', a.attname::text,
              'type', format_type(a.atttypid, a.atttypmod),
              'not_null', a.attnotnull,
              'default', pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum)
       FROM pg_attribute a
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        AND a.attgenerated = ''), '[]'::jsonb),
  'primary_key', coalesce((
     SELECT jsonb_agg(a.attname::text ORDER BY k.ord)
       FROM pg_constraint p
       CROSS JOIN LATERAL unnest(p.conkey) WITH ORDINALITY k(attnum, ord)
       JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = k.attnum
      WHERE p.conrelid = c.oid AND p.contype = 'p'), '[]'::jsonb),
  'primary_key_name', (SELECT p.conname::text FROM pg_constraint p
                        WHERE p.conrelid = c.oid AND p.contype = 'p'),
  'unique', coalesce((
     SELECT jsonb_agg(jsonb_build_object('name', p.conname::text, 'columns', (
              SELECT jsonb_agg(a.attname::text ORDER BY k.ord)
                FROM unnest(p.conkey) WITH ORDINALITY k(attnum, ord)
                JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = k.attnum))
            ORDER BY p.conname)
       FROM pg_constraint p WHERE p.conrelid = c.oid AND p.contype = 'u'), '[]'::jsonb),
  'foreign_keys', coalesce((
     SELECT jsonb_agg(jsonb_build_object(
              'name', p.conname::text,
              'columns', (SELECT jsonb_agg(a.attname::text ORDER BY k.ord)
                            FROM unnest(p.conkey) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_attribute a ON a.attrelid = p.conrelid AND a.attnum = k.attnum),
              'ref_schema', rn.nspname::text,
              'ref_table', rc.relname::text,
              'ref_columns', (SELECT jsonb_agg(a.attname::text ORDER BY k.ord)
                                FROM unnest(p.confkey) WITH ORDINALITY k(attnum, ord)
                                JOIN pg_attribute a ON a.attrelid = p.confrelid AND a.attnum = k.attnum))
            ORDER BY p.conname)
       FROM pg_constraint p
       JOIN pg_class rc ON rc.oid = p.confrelid
       JOIN pg_namespace rn ON rn.oid = rc.relnamespace
      WHERE p.conrelid = c.oid AND p.contype = 'f'), '[]'::jsonb))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1 AND c.relkind IN ('r', 'p')
"#;

/// The source side of schema capture, installed by `setup-source`: the
/// capture table, the definition function and the DDL event trigger.
/// Idempotent (every statement may run again).
pub fn capture_ddl() -> Vec<String> {
    let function_body = DEFINITION_SQL.replace("$1", "rel");
    vec![
        format!("CREATE SCHEMA IF NOT EXISTS {LOG_SCHEMA}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {LOG_SCHEMA}.{LOG_TABLE} (\
               id bigserial PRIMARY KEY, \
               table_schema text NOT NULL, \
               table_name text NOT NULL, \
               command text, \
               definition jsonb NOT NULL, \
               logged_at timestamptz NOT NULL DEFAULT now())"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {LOG_SCHEMA}.table_definition(rel oid) RETURNS jsonb \
             LANGUAGE sql STABLE AS $body${function_body}$body$"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {LOG_SCHEMA}.log_table(rel oid, tag text) RETURNS void \
             LANGUAGE plpgsql AS $body$ \
             DECLARE def jsonb; \
             BEGIN \
               def := {LOG_SCHEMA}.table_definition(rel); \
               IF def IS NULL OR def->>'schema' = '{LOG_SCHEMA}' THEN RETURN; END IF; \
               def := def || jsonb_build_object('command', tag); \
               INSERT INTO {LOG_SCHEMA}.{LOG_TABLE} (table_schema, table_name, command, definition) \
               VALUES (def->>'schema', def->>'table', tag, def); \
             END $body$"
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {LOG_SCHEMA}.log_ddl() RETURNS event_trigger \
             LANGUAGE plpgsql AS $body$ \
             DECLARE r record; \
             BEGIN \
               FOR r IN SELECT DISTINCT objid, command_tag FROM pg_event_trigger_ddl_commands() \
                         WHERE classid = 'pg_class'::regclass \
                           AND object_type IN ('table', 'table column') LOOP \
                 PERFORM {LOG_SCHEMA}.log_table(r.objid, r.command_tag); \
               END LOOP; \
             END $body$"
        ),
        format!("DROP EVENT TRIGGER IF EXISTS {LOG_SCHEMA}_schema_capture"),
        format!(
            "CREATE EVENT TRIGGER {LOG_SCHEMA}_schema_capture ON ddl_command_end \
             WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'CREATE TABLE AS', 'SELECT INTO') \
             EXECUTE FUNCTION {LOG_SCHEMA}.log_ddl()"
        ),
    ]
}

/// [`DEFINITION_SQL`] with `$1` the table's quoted name (text).
pub fn local_definition_sql() -> String {
    DEFINITION_SQL.replace("c.oid = $1", "c.oid = to_regclass($1)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_round_trips_through_a_schema_record() {
        let def = TableDef {
            schema: "public".into(),
            table: "t".into(),
            columns: vec![ColumnDef {
                name: "id".into(),
                type_name: "integer".into(),
                not_null: true,
                default: None,
            }],
            primary_key: vec!["id".into()],
            primary_key_name: None,
            unique: vec![],
            foreign_keys: vec![],
            command: None,
        };
        let record = def.to_record("0/10".parse().unwrap(), Some(1), None);
        let line = record.to_json();
        let parsed = Record::parse(&line).unwrap();
        assert_eq!(parsed.op, Op::Schema);
        assert_eq!(TableDef::from_record(&parsed).unwrap(), def);
        // As a jsonb column decodes: a string holding the object.
        let text = serde_json::to_string(&serde_json::to_string(&def).unwrap()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(TableDef::from_value(&v).unwrap(), def);
    }

    #[test]
    fn types_that_are_not_type_names_are_refused() {
        let mut def: TableDef = serde_json::from_str(
            r#"{"schema":"s","table":"t","columns":[{"name":"a","type":"int; drop table x","not_null":false}]}"#,
        )
        .unwrap();
        assert!(def.validate().is_err());
        def.columns[0].type_name = "character varying(20)[]".into();
        assert!(def.validate().is_ok());
    }
}
