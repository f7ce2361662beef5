//! `syncdata-producer check-rules`: the rules file against the source
//! schema (pg_catalog: columns, types, NOT NULL, defaults, primary keys,
//! unique indexes, foreign keys). Read-only on the source.
//!
//! Errors (exit non-zero): columns of replicated tables without a rule,
//! unknown transforms or parameters, `null` (or `drop` without a default)
//! on NOT NULL columns, non-injective transforms on primary-key or unique
//! columns, transforms whose output the column's type cannot hold, constants
//! the type rejects, foreign keys whose column is not transformed like the
//! referenced column (joins would break), replicated tables missing from
//! the source. Warnings: tables without an entry (they would halt), rules for
//! columns the source does not have (fine ahead of an ALTER TABLE), keys
//! that differ from the primary key.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use syncdata_core::catalog;
use syncdata_core::table::TableName;

use super::rules::{
    self, HmacOutput, Mode, Problem, Problems, Rules, Severity, Transform, Unlisted,
};

/// Outputs with fewer bits than this are treated as non-injective on key
/// columns: 2^60 values make a collision among a billion rows unlikely
/// (about 4 in 10,000).
pub const KEY_SAFE_BITS: f64 = 60.0;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub not_null: bool,
    pub has_default: bool,
    /// `format_type` output, e.g. `character varying(10)`.
    pub sql_type: String,
    /// Name of the base type (domains resolved), e.g. `varchar`.
    pub base: String,
    /// pg_type.typcategory: S string, N numeric, D date/time, A array, …
    pub category: String,
    /// Character length limit of varchar(n) / char(n).
    pub max_chars: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct UniqueIndex {
    pub name: String,
    pub primary: bool,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub name: String,
    pub columns: Vec<String>,
    pub references: TableName,
    pub ref_columns: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<Column>,
    pub unique: Vec<UniqueIndex>,
    pub foreign_keys: Vec<ForeignKey>,
}

impl Table {
    fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    fn primary_key(&self) -> Option<&UniqueIndex> {
        self.unique.iter().find(|u| u.primary)
    }
}

pub type Schema = BTreeMap<TableName, Table>;

/// Reads the user tables of the source database.
pub async fn read_schema(conn: &mut PgConnection) -> Result<Schema, sqlx::Error> {
    const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'";
    let mut schema = Schema::new();
    /// (schema, table, constraint, referenced schema and table, columns,
    /// referenced columns)
    type ForeignKeyRow = (
        String,
        String,
        String,
        String,
        String,
        Vec<String>,
        Vec<String>,
    );
    // Columns and types through the one catalog reader; unique indexes and
    // foreign keys below are only this check's concern.
    for def in catalog::user_tables(&mut *conn).await? {
        let columns = def
            .columns
            .into_iter()
            .map(|c| {
                let max_chars = (matches!(c.base_type.as_str(), "varchar" | "bpchar")
                    && c.typmod > 4)
                    .then_some(c.typmod - 4);
                Column {
                    name: c.name,
                    not_null: c.not_null,
                    has_default: c.has_default,
                    sql_type: c.sql_type,
                    base: c.base_type,
                    category: c.category.to_string(),
                    max_chars,
                }
            })
            .collect();
        schema.insert(
            def.name,
            Table {
                columns,
                ..Table::default()
            },
        );
    }
    let unique: Vec<(String, String, String, bool, Vec<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT n.nspname::text, c.relname::text, ic.relname::text, i.indisprimary,
                    array(SELECT a.attname::text
                          FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                          WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_class ic ON ic.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE i.indisunique AND {USER_SCHEMAS}
             ORDER BY 1, 2, 3"
        )))
        .fetch_all(&mut *conn)
        .await?;
    for (nsp, rel, name, primary, columns) in unique {
        if let Some(t) = schema.get_mut(&TableName::new(nsp, rel)) {
            t.unique.push(UniqueIndex {
                name,
                primary,
                columns,
            });
        }
    }
    let fks: Vec<ForeignKeyRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT n.nspname::text, c.relname::text, con.conname::text,
                    rn.nspname::text, rc.relname::text,
                    array(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                          ORDER BY k.ord),
                    array(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum
                          ORDER BY k.ord)
             FROM pg_constraint con
             JOIN pg_class c ON c.oid = con.conrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_class rc ON rc.oid = con.confrelid
             JOIN pg_namespace rn ON rn.oid = rc.relnamespace
             WHERE con.contype = 'f' AND {USER_SCHEMAS}
             ORDER BY 1, 2, 3"
        )))
        .fetch_all(&mut *conn)
        .await?;
    for (nsp, rel, name, rnsp, rrel, columns, ref_columns) in fks {
        if let Some(t) = schema.get_mut(&TableName::new(nsp, rel)) {
            t.foreign_keys.push(ForeignKey {
                name,
                columns,
                references: TableName::new(rnsp, rrel),
                ref_columns,
            });
        }
    }
    Ok(schema)
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        let (e, w) = (self.errors(), self.warnings());
        if e == 0 {
            writeln!(f, "rules OK ({w} warning{})", if w == 1 { "" } else { "s" })
        } else {
            writeln!(
                f,
                "{e} error{}, {w} warning{}",
                if e == 1 { "" } else { "s" },
                if w == 1 { "" } else { "s" }
            )
        }
    }
}

/// Checks the rules file at `path` against the source at `source`.
pub async fn check_rules(path: &Path, source: &str) -> anyhow::Result<Report> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rules file {}", path.display()))?;
    let options: PgConnectOptions = source
        .parse()
        .context("--source is not a valid PostgreSQL URL")?;
    let mut conn = options
        .application_name("syncdata-producer check-rules")
        .connect()
        .await
        .context("cannot connect to the source database")?;
    let schema = read_schema(&mut conn)
        .await
        .context("cannot read the source schema")?;
    let (rules, problems) = rules::parse_all(&text);
    let mut p = Problems(problems);
    if let Some(rules) = &rules {
        check(rules, &schema, &mut p);
        check_constants(rules, &schema, &mut conn, &mut p).await;
    }
    let _ = conn.close().await;
    let mut problems = p.0;
    problems.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.at.cmp(&b.at)));
    Ok(Report { problems })
}

fn at(t: &TableName, col: &str) -> String {
    format!("{}.{}.{col}", t.schema, t.table)
}

fn qualified(t: &TableName) -> String {
    format!("{}.{}", t.schema, t.table)
}

fn is_text(c: &Column) -> bool {
    c.category == "S"
}

fn integer_bounds(base: &str) -> Option<(i64, i64)> {
    match base {
        "int2" => Some((i16::MIN.into(), i16::MAX.into())),
        "int4" => Some((i32::MIN.into(), i32::MAX.into())),
        "int8" | "numeric" => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

fn too_short(c: &Column, len: usize) -> Option<i32> {
    c.max_chars.filter(|n| (*n as usize) < len)
}

/// Can the column hold what the transform produces?
fn type_problem(t: &Transform, c: &Column) -> Option<String> {
    let ty = &c.sql_type;
    match t {
        Transform::Keep | Transform::Drop | Transform::Null | Transform::Const { .. } => None,
        Transform::Hmac { output, .. } => match output {
            HmacOutput::Hex { length } => {
                if !is_text(c) {
                    Some(format!(
                        "hmac hex output is text; a {ty} column cannot hold it"
                    ))
                } else {
                    too_short(c, *length)
                        .map(|n| format!("hmac hex output has {length} characters; {ty} holds {n}"))
                }
            }
            HmacOutput::Uuid => {
                if c.base == "uuid" {
                    None
                } else if !is_text(c) {
                    Some(format!("hmac uuid output cannot go into a {ty} column"))
                } else {
                    too_short(c, 36).map(|n| format!("a uuid has 36 characters; {ty} holds {n}"))
                }
            }
            HmacOutput::Integer { min, max } => {
                if is_text(c) {
                    let digits = min.to_string().len().max(max.to_string().len());
                    too_short(c, digits)
                        .map(|n| format!("integers up to {digits} characters; {ty} holds {n}"))
                } else if let Some((lo, hi)) = integer_bounds(&c.base) {
                    (*min < lo || *max > hi).then(|| {
                        format!("hmac integer range {min}..={max} does not fit {ty} ({lo}..={hi}); set min and max")
                    })
                } else {
                    Some(format!(
                        "hmac integer output cannot go into a {ty} column (use output = \"{}\")",
                        if c.base == "uuid" { "uuid" } else { "hex" }
                    ))
                }
            }
        },
        Transform::Fake {
            kind,
            max_length,
            unique,
            ..
        } => {
            if !is_text(c) {
                return Some(format!(
                    "fake {kind:?} is text; a {ty} column cannot hold it"
                ));
            }
            // `unique` adds a dot and 16 hex digits to an email.
            let full = kind.max_len() + if *unique { 17 } else { 0 };
            let longest = max_length.map_or(full, |m| m.min(full));
            too_short(c, longest).map(|n| {
                format!("fake {kind:?} values reach {longest} characters; {ty} holds {n} (set max_length = {n})")
            })
        }
        Transform::Mask { .. } | Transform::RegexReplace { .. } => (!is_text(c)).then(|| {
            format!(
                "{} works on text; a {ty} column cannot hold its output",
                t.name()
            )
        }),
        Transform::Json { .. } => (!matches!(c.base.as_str(), "json" | "jsonb"))
            .then(|| format!("json applies to json and jsonb columns, not {ty}")),
        Transform::DateShift { .. } => {
            (!matches!(c.base.as_str(), "date" | "timestamp" | "timestamptz")).then(|| {
                format!("date_shift applies to date, timestamp and timestamptz columns, not {ty}")
            })
        }
    }
}

/// The checks that need only the rules and the schema.
pub(crate) fn check(rules: &Rules, schema: &Schema, p: &mut Problems) {
    for (name, tr) in &rules.tables {
        let Some(table) = schema.get(name) else {
            match tr.mode {
                Mode::Replicate => p.error(
                    qualified(name),
                    "replicated table does not exist in the source",
                ),
                Mode::Exclude => p.warning(
                    qualified(name),
                    "excluded table does not exist in the source (a typo?)",
                ),
            }
            continue;
        };
        if tr.mode == Mode::Exclude {
            continue;
        }
        for c in &table.columns {
            if !tr.columns.contains_key(&c.name) && !tr.invalid_columns.contains(&c.name) {
                p.error(
                    at(name, &c.name),
                    format!(
                        "column ({}) has no rule: its records would halt the table (fail closed); add a rule, `keep` included",
                        c.sql_type
                    ),
                );
            }
        }
        for col in tr.columns.keys() {
            if table.column(col).is_none() {
                p.warning(
                    at(name, col),
                    "rule for a column the source does not have (fine ahead of an ALTER TABLE ADD COLUMN; a typo otherwise)",
                );
            }
        }
        let pk = table.primary_key();
        match (pk, &tr.key) {
            (None, _) => p.warning(
                qualified(name),
                "no primary key in the source: the consumer cannot sync this table",
            ),
            (Some(pk), Some(key)) if *key != pk.columns => p.warning(
                format!("{}.key", qualified(name)),
                format!("key {key:?} differs from the primary key {:?}", pk.columns),
            ),
            _ => {}
        }
        for (col, rule) in &tr.columns {
            let Some(c) = table.column(col) else { continue };
            let t = &rule.transform;
            let here = at(name, col);
            if let Some(why) = type_problem(t, c) {
                p.error(&here, format!("type mismatch: {why}"));
            }
            if c.not_null {
                match t {
                    Transform::Null => p.error(
                        &here,
                        "null rule on a NOT NULL column: every insert on the target would fail",
                    ),
                    Transform::Drop if !c.has_default => p.error(
                        &here,
                        "drop on a NOT NULL column without a default: inserts on the target would fail",
                    ),
                    _ => {}
                }
            }
            for u in table.unique.iter().filter(|u| u.columns.contains(col)) {
                let what = if u.primary { "primary-key" } else { "unique" };
                if matches!(t, Transform::Drop) && u.primary {
                    p.error(
                        &here,
                        "drop on a primary-key column: the consumer needs the key to apply changes",
                    );
                    continue;
                }
                if let Some(bits) = t.output_bits() {
                    if bits < KEY_SAFE_BITS {
                        let detail = if bits > 0.0 {
                            format!(" (only {bits:.0} bits of output)")
                        } else {
                            String::new()
                        };
                        p.error(
                            &here,
                            format!(
                                "non-injective transform {}{detail} on a {what} column ({}): distinct rows would collide",
                                t.name(),
                                u.name
                            ),
                        );
                    }
                }
            }
            if let Transform::DateShift { key, .. } = t {
                for k in key {
                    if table.column(k).is_none() {
                        p.error(
                            &here,
                            format!("date_shift key column {k:?} does not exist in the source"),
                        );
                    }
                }
            }
        }
        check_foreign_keys(rules, name, table, p);
    }
    if rules.unlisted == Unlisted::Halt {
        for name in schema.keys().filter(|n| !rules.tables.contains_key(*n)) {
            p.warning(
                qualified(name),
                "no entry in the rules file: records of this table would halt it (add mode = \"replicate\" with rules, or mode = \"exclude\")",
            );
        }
    }
}

fn check_foreign_keys(rules: &Rules, name: &TableName, table: &Table, p: &mut Problems) {
    let tr = &rules.tables[name];
    for fk in &table.foreign_keys {
        let Some(rt) = rules.tables.get(&fk.references) else {
            continue;
        };
        if rt.mode == Mode::Exclude {
            p.warning(
                qualified(name),
                format!(
                    "foreign key {} references the excluded table {}: the target will hold references to rows it never gets",
                    fk.name,
                    qualified(&fk.references)
                ),
            );
            continue;
        }
        for (col, rcol) in fk.columns.iter().zip(&fk.ref_columns) {
            let (Some(mine), Some(theirs)) = (tr.columns.get(col), rt.columns.get(rcol)) else {
                continue;
            };
            let (a, b) = (&mine.transform, &theirs.transform);
            if a.same_outputs_as(b) {
                continue;
            }
            let target = at(&fk.references, rcol);
            let advice = match (a, b) {
                (Transform::Hmac { output: x, domain: d }, Transform::Hmac { output: y, domain: e })
                    if x == y && d != e =>
                {
                    format!("it hashes in domain {d:?}, the referenced column in {e:?}: add domain = {e:?} (or use same_as)")
                }
                (Transform::Fake { domain: d, .. }, Transform::Fake { domain: e, .. }) if d != e => {
                    format!("it fakes in domain {d:?}, the referenced column in {e:?}: add domain = {e:?} (or use same_as)")
                }
                _ => format!(
                    "it uses {} while the referenced column uses {}: write {{ transform = \"same_as\", column = \"{target}\" }}",
                    a.describe(),
                    b.describe()
                ),
            };
            p.error(
                at(name, col),
                format!(
                    "foreign key {} to {target} would no longer join: {advice}",
                    fk.name
                ),
            );
        }
    }
}

/// Constants must be valid values of their column's type: PostgreSQL
/// itself says (a cast on the source, which changes nothing).
async fn check_constants(
    rules: &Rules,
    schema: &Schema,
    conn: &mut PgConnection,
    p: &mut Problems,
) {
    for (name, tr) in &rules.tables {
        let Some(table) = schema.get(name) else {
            continue;
        };
        if tr.mode == Mode::Exclude {
            continue;
        }
        for (col, rule) in &tr.columns {
            let (Transform::Const { value }, Some(c)) = (&rule.transform, table.column(col)) else {
                continue;
            };
            let text = serde_json::from_str::<syncdata_core::record::Value>(value)
                .ok()
                .and_then(|v| v.to_pg_text())
                .unwrap_or_default();
            // An explicit cast would cut a long string silently.
            let chars = text.chars().count();
            if let Some(n) = too_short(c, chars) {
                p.error(
                    at(name, col),
                    format!(
                        "type mismatch: const value has {chars} characters; {} holds {n}",
                        c.sql_type
                    ),
                );
                continue;
            }
            // The type text comes from format_type() on the catalog.
            let sql = format!("SELECT CAST($1::text AS {})::text", c.sql_type);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&text)
                .execute(&mut *conn)
                .await
            {
                let why = match &e {
                    sqlx::Error::Database(d) => d.message().to_owned(),
                    other => other.to_string(),
                };
                p.error(
                    at(name, col),
                    format!(
                        "type mismatch: const value is not a valid {}: {why}",
                        c.sql_type
                    ),
                );
            }
        }
    }
}

/// Reports as text or JSON.
pub fn render(report: &Report, json: bool) -> String {
    if json {
        let v = serde_json::json!({
            "errors": report.errors(),
            "warnings": report.warnings(),
            "problems": report.problems,
        });
        serde_json::to_string_pretty(&v).expect("a report serializes") + "\n"
    } else {
        report.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, base: &str, cat: &str) -> Column {
        Column {
            name: name.into(),
            not_null: false,
            has_default: false,
            sql_type: ty.into(),
            base: base.into(),
            category: cat.into(),
            max_chars: None,
        }
    }

    #[test]
    fn type_matrix() {
        let parse = |s: &str| {
            let (r, p) = rules::parse(&format!("[tables.t.columns]\nc = {s}\n"));
            let r = r.unwrap_or_else(|| panic!("{p:?}"));
            r.tables[&TableName::new("public", "t")].columns["c"]
                .transform
                .clone()
        };
        let text = col("c", "text", "text", "S");
        let uuid = col("c", "uuid", "uuid", "U");
        let int4 = col("c", "integer", "int4", "N");
        let mut vc = col("c", "character varying(10)", "varchar", "S");
        vc.max_chars = Some(10);
        let int_out = parse("{ transform = \"hmac\", output = \"integer\" }");
        assert_eq!(type_problem(&int_out, &text), None, "digits are text");
        assert!(type_problem(&int_out, &uuid)
            .unwrap()
            .contains("output = \"uuid\""));
        assert!(type_problem(&int_out, &int4)
            .unwrap()
            .contains("does not fit"));
        let small = parse("{ transform = \"hmac\", output = \"integer\", min = 1, max = 1000000 }");
        assert_eq!(type_problem(&small, &int4), None);
        assert!(
            type_problem(&int_out, &vc).is_some(),
            "19 digits in varchar(10)"
        );
        let hex = parse("{ transform = \"hmac\" }");
        assert!(type_problem(&hex, &vc).unwrap().contains("32 characters"));
        assert!(type_problem(&hex, &int4).is_some());
        assert_eq!(
            type_problem(&parse("{ transform = \"hmac\", output = \"uuid\" }"), &uuid),
            None
        );
        let fake = parse("{ transform = \"fake\", kind = \"name\" }");
        assert!(type_problem(&fake, &vc)
            .unwrap()
            .contains("max_length = 10"));
        assert_eq!(
            type_problem(
                &parse("{ transform = \"fake\", kind = \"name\", max_length = 10 }"),
                &vc
            ),
            None
        );
        assert!(type_problem(&parse("{ transform = \"mask\" }"), &int4).is_some());
        assert!(type_problem(
            &parse("{ transform = \"json\", paths = [{ path = \"$.a\", transform = \"null\" }] }"),
            &text
        )
        .is_some());
        let ds =
            "[tables.t]\nkey = [\"c\"]\n[tables.t.columns]\nc = { transform = \"date_shift\" }\n";
        let (r, _) = rules::parse(ds);
        let t = r.unwrap().tables[&TableName::new("public", "t")].columns["c"]
            .transform
            .clone();
        assert!(type_problem(&t, &text).is_some());
        assert_eq!(type_problem(&t, &col("c", "date", "date", "D")), None);
    }
}
