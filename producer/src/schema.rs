//! Schema capture on the production side (see `docs/schema.md`).
//!
//! `setup-source` installs a DDL event trigger that writes each changed
//! table's definition into `syncdata.schema_log` inside the DDL's own
//! transaction, so the archive holds it at the exact commit LSN, between the
//! table's last change under the old shape and its first under the new one.
//! The publisher turns such a row into a SCHEMA record on the table's own
//! subject (and a copy on `<subject>.schema` for look-ups), after checking
//! the new column set against the sanitization rules.

use anyhow::Context;
use sqlx::PgConnection;
use syncdata_core::record::{Op, Record, Value};
use syncdata_core::table::TableName;
use syncdata_core::tabledef::{self, TableDef};

use crate::sanitize::{HaltReason, Sanitizer, Verdict};

/// Installs the capture table, functions and event trigger. An event
/// trigger needs a superuser: without one, capture is reported as not
/// installed and setup goes on (DDL then does not travel).
pub async fn install_capture(
    conn: &mut PgConnection,
    report: &mut Vec<String>,
) -> anyhow::Result<bool> {
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut *conn)
            .await?;
    if !superuser {
        report.push(
            "warning: schema capture not installed (an event trigger needs a superuser): DDL on \
             the source will not travel; run setup-source once as a superuser"
                .to_owned(),
        );
        return Ok(false);
    }
    for statement in tabledef::capture_ddl() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("installing schema capture: {}", first_words(&statement)))?;
    }
    report.push(format!(
        "ok: schema capture ({}.{} and event trigger {}_schema_capture)",
        tabledef::LOG_SCHEMA,
        tabledef::LOG_TABLE,
        tabledef::LOG_SCHEMA
    ));
    Ok(true)
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

/// Writes the current definition of each table into the capture table, so
/// the definition a table had when it was first captured travels too.
pub async fn log_current(
    conn: &mut PgConnection,
    tables: &[TableName],
    report: &mut Vec<String>,
) -> anyhow::Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    for t in tables {
        sqlx::query(
            "SELECT syncdata.log_table(to_regclass($1)::oid, 'CAPTURE') \
             WHERE to_regclass($1) IS NOT NULL",
        )
        .bind(t.quoted())
        .execute(&mut *conn)
        .await
        .with_context(|| format!("recording the definition of {t}"))?;
    }
    report.push(format!(
        "ok: definitions of {} table(s) recorded for the stream",
        tables.len()
    ));
    Ok(())
}

/// Whether `record` is a row of the capture table.
pub fn is_log_record(record: &Record) -> bool {
    record.schema == tabledef::LOG_SCHEMA && record.table == tabledef::LOG_TABLE
}

/// [`parse_line`], and whether the line itself may be published in the
/// record's place (`Record::parse_forwardable`; never for a capture-table
/// row, which becomes another record). Without `images` (no sanitization,
/// nothing reads the columns) a line that may be published as it is only
/// checked: the record comes back without `data` and `old_keys`
/// (`Record::parse_forwardable_header`, which saves the allocations of
/// every column name and value).
pub fn parse_line_forwardable(
    bytes: &[u8],
    images: bool,
) -> Result<Option<(Record, bool)>, String> {
    if !images {
        if let Some(header) = Record::parse_forwardable_header(bytes) {
            if !is_log_record(&header) {
                return Ok(Some((header, true)));
            }
        }
    }
    let (record, forward) = Record::parse_forwardable(bytes).map_err(|e| e.to_string())?;
    if !is_log_record(&record) {
        return Ok(Some((record, forward)));
    }
    Ok(parse_line(bytes)?.map(|r| (r, false)))
}

/// Parses one archive line; a capture-table row becomes the SCHEMA record
/// of its table (its full definition; [`sanitize`] trims it at publish
/// time). `Ok(None)`: a capture-table row that is not a definition to
/// publish (its UPDATE or DELETE).
pub fn parse_line(bytes: &[u8]) -> Result<Option<Record>, String> {
    let record = Record::parse(bytes).map_err(|e| e.to_string())?;
    if !is_log_record(&record) {
        return Ok(Some(record));
    }
    if record.op != Op::Insert {
        return Ok(None);
    }
    let value = record
        .data
        .as_ref()
        .and_then(|d| d.get(tabledef::DEFINITION_FIELD))
        .ok_or("schema_log row without a definition")?;
    let def = TableDef::from_value(value)?;
    Ok(Some(def.to_record(
        record.lsn,
        record.seq,
        record.ts.clone(),
    )))
}

/// Checks a SCHEMA record's columns against the rules: each column must
/// have a rule (a new column without one halts the table, as for data);
/// columns the rules leave out are left out of the definition. Unlisted or
/// excluded tables publish no definition.
pub fn sanitize(record: &mut Record, sanitizer: &Sanitizer) -> Result<Verdict, HaltReason> {
    let mut def = TableDef::from_record(record).map_err(|reason| HaltReason {
        reason,
        quarantine: true,
    })?;
    // A probe image: every column, NULL; the rules say which pass.
    let mut probe = Record {
        schema: def.schema.clone(),
        table: def.table.clone(),
        op: Op::Insert,
        data: Some(
            def.columns
                .iter()
                .map(|c| (c.name.clone(), Value::from_text(None)))
                .collect(),
        ),
        old_keys: None,
        lsn: record.lsn,
        seq: record.seq,
        ts: None,
        snapshot: false,
    };
    match sanitizer.apply(&mut probe) {
        Ok(Verdict::Publish) => {
            let kept = probe.data.unwrap_or_default();
            def.columns.retain(|c| kept.contains_key(&c.name));
            let seq = record.seq;
            *record = def.to_record(record.lsn, seq, record.ts.take());
            Ok(Verdict::Publish)
        }
        Ok(Verdict::Exclude) => Ok(Verdict::Exclude),
        // A table without an entry: its data is not published either.
        Err(halt) if halt.reason.contains("has no entry in the rules file") => Ok(Verdict::Exclude),
        Err(halt) => Err(halt),
    }
}
