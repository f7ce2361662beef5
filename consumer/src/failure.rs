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
}

/// SQLSTATEs that say "try again": deadlock, serialization failure, lock
/// timeout, admin/crash shutdown, cannot connect now, too many connections,
/// out of memory/disk, and any connection exception (class 08).
fn transient_sqlstate(code: &str, fk_is_transient: bool) -> bool {
    matches!(
        code,
        "40P01"
            | "40001"
            | "55P03"
            | "57P01"
            | "57P02"
            | "57P03"
            | "53300"
            | "53200"
            | "53100"
            | "58000"
            | "58030"
    ) || code.starts_with("08")
        || (fk_is_transient && code == "23503")
}

/// `fk_is_transient`: true when applying without replica mode, where a
/// foreign-key violation means the parent row has not arrived yet.
pub fn classify_sqlx(e: &sqlx::Error, fk_is_transient: bool) -> Kind {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if transient_sqlstate(&code, fk_is_transient) => Kind::Transient,
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
        for code in ["40P01", "40001", "55P03", "57P01", "53300", "08006"] {
            assert!(transient_sqlstate(code, false), "{code}");
        }
        for code in [
            "42P01", "42703", "22P02", "23502", "22001", "22021", "23505",
        ] {
            assert!(!transient_sqlstate(code, true), "{code}");
        }
        assert!(transient_sqlstate("23503", true));
        assert!(!transient_sqlstate("23503", false));
    }
}
