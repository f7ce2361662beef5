//! The one place that decides whether a failure is transient (retry for as
//! long as it takes, never dead-letter: a database that is down is not a
//! poison record) or permanent (isolate the record, retry up to
//! `max_attempts`, then dead-letter it).

use std::time::Duration;

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

/// Capped exponential backoff with full jitter: attempt 1 waits up to
/// `base`, each further attempt doubles the ceiling, never above `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(cap);
    ceiling
        .mul_f64(jitter.clamp(0.0, 1.0))
        .max(base.min(ceiling) / 2)
}

/// [`backoff`] with a random jitter.
pub fn backoff_random(attempt: u32, base: Duration, cap: Duration) -> Duration {
    backoff(attempt, base, cap, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_stays_in_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        assert_eq!(backoff(1, base, cap, 1.0), base);
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(30, base, cap, 1.0), cap);
        for attempt in 1..40 {
            for j in [0.0, 0.3, 0.99] {
                let d = backoff(attempt, base, cap, j);
                assert!(d >= base / 2 && d <= cap, "{attempt} {j} {d:?}");
            }
        }
    }

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
