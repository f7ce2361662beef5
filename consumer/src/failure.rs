//! The one place that decides whether a failure is transient (retry for as
//! long as it takes, never dead-letter: a database that is down is not a
//! poison record) or permanent (isolate the record, retry up to
//! `max_attempts`, then dead-letter it).

use crate::apply::shape::ShapeError;
use crate::apply::ApplyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transient,
    Permanent,
    /// A foreign-key violation without replica mode: the parent row may not
    /// have arrived yet. Isolated like a permanent failure, then retried
    /// alone for `consumer.fk_retry_secs` before it is dead-lettered.
    Dependent,
}

/// SQLSTATEs that say "try again": deadlock, serialization failure, lock
/// timeout, read-only transaction (a failover in progress), statement
/// timeout or cancel, admin/crash shutdown, cannot connect now, the whole
/// insufficient-resources class 53 (disk full, out of memory, too many
/// connections), system errors, and any connection exception (class 08).
fn transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40P01"
            | "40001"
            | "55P03"
            | "25006"
            | "57014"
            | "57P01"
            | "57P02"
            | "57P03"
            | "58000"
            | "58030"
    ) || code.starts_with("08")
        || code.starts_with("53")
        || crate::apply::sqlite::transient_code(code)
}

/// `fk_is_dependent`: true when applying without replica mode, where a
/// foreign-key violation means the parent row may not have arrived yet.
pub fn classify_sqlx(e: &sqlx::Error, fk_is_dependent: bool) -> Kind {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if transient_sqlstate(&code) => Kind::Transient,
            Some(code) if fk_is_dependent && code == "23503" => Kind::Dependent,
            _ => Kind::Permanent,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// Names of the SQLSTATEs a bad record meets most, for messages.
fn sqlstate_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "22P02" => "invalid_text_representation",
        "22021" => "character_not_in_repertoire",
        "22001" => "string_data_right_truncation",
        "22003" => "numeric_value_out_of_range",
        "22007" => "invalid_datetime_format",
        "22008" => "datetime_field_overflow",
        "22P05" => "untranslatable_character",
        "22023" => "invalid_parameter_value",
        "23502" => "not_null_violation",
        "23503" => "foreign_key_violation",
        "23505" => "unique_violation",
        "23514" => "check_violation",
        "23P01" => "exclusion_violation",
        "42703" => "undefined_column",
        "42P01" => "undefined_table",
        "42501" => "insufficient_privilege",
        "42804" => "datatype_mismatch",
        "40P01" => "deadlock_detected",
        "40001" => "serialization_failure",
        "55P03" => "lock_not_available",
        "57014" => "query_canceled",
        "25006" => "read_only_sql_transaction",
        _ => return None,
    })
}

/// A database error reduced to what may leave the local database: the
/// SQLSTATE (and its name), the table, column and constraint it names.
/// PostgreSQL's message text often quotes the offending value
/// (`invalid input syntax for type integer: "…"`), which may be personal
/// data: it stays in the local server's own log only. Other errors keep
/// their message when it cannot hold a value (connection and pool errors).
pub fn describe_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned());
            let mut out = String::from("database error");
            if let Some(code) = &code {
                out.push_str(&format!(" SQLSTATE {code}"));
                if let Some(name) = sqlstate_name(code) {
                    out.push_str(&format!(" ({name})"));
                }
            }
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(t) = pg.table() {
                    out.push_str(&format!(", table {}", header_safe(t)));
                }
                if let Some(c) = pg.column() {
                    out.push_str(&format!(", column {}", header_safe(c)));
                }
                if let Some(c) = pg.constraint() {
                    out.push_str(&format!(", constraint {}", header_safe(c)));
                }
            }
            out
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => e.to_string(),
        // Decoding and protocol errors may echo data: their kind only.
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Protocol(_) => "database protocol error".to_owned(),
        _ => "database error".to_owned(),
    }
}

/// Identifiers from the server, on one line.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// An apply error for logs, dead-letter headers and `data_sync_logs`:
/// which table, and the reduced database error (see [`describe_sqlx`]).
pub fn describe(e: &ApplyError) -> String {
    match e {
        ApplyError::Db { table, source } => {
            format!("applying to {table}: {}", describe_sqlx(source))
        }
        ApplyError::Shape(ShapeError::Db { table, source }) => {
            format!(
                "reading the catalog for table {table}: {}",
                describe_sqlx(source)
            )
        }
        ApplyError::Shape(shape) => shape.to_string(),
    }
}

pub fn classify_apply(e: &ApplyError, fk_is_transient: bool) -> Kind {
    match e {
        ApplyError::Db { source, .. } | ApplyError::Shape(ShapeError::Db { source, .. }) => {
            classify_sqlx(source, fk_is_transient)
        }
        ApplyError::Shape(_) => Kind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify_per_design() {
        for code in [
            "40P01", "40001", "55P03", "57P01", "53300", "53100", "53400", "08006", "25006",
            "57014",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [
            "42P01", "42703", "22P02", "23502", "22001", "22021", "23505", "23503",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }
}
