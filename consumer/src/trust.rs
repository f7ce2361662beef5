//! The worker's checks of a message before it reaches the apply engine:
//! its signature (first line: only the producer holds the key and the
//! permission to publish changes) and the sanity of its version (second
//! line: a change far beyond anything seen for its table is held, never
//! applied, so one message cannot set a floor that silently drops every
//! later production change). See docs/trust.md.

use async_nats::jetstream::message::Message;
use sqlx::PgPool;
use syncdata_core::signature::{self, SigningKey};
use syncdata_core::table::TableName;
use syncdata_core::version::Lsn;

/// A message refused before the apply engine: dead-lettered at once (a
/// retry cannot make it authentic) with `error`, counted under `reason` in
/// `syncdata_messages_rejected_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub error: String,
}

/// Verifies the message's signature with `key` (over its subject, its
/// `Nats-Msg-Id`, empty when absent, and its payload).
pub fn check_signature(key: &SigningKey, msg: &Message) -> Result<(), Rejection> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let msg_id = header("Nats-Msg-Id").unwrap_or_default();
    let sig = header(signature::HEADER);
    key.verify(msg.subject.as_str(), &msg_id, &msg.payload, sig.as_deref())
        .map_err(|e| Rejection {
            reason: e.reason(),
            error: format!(
                "rejected, not applied: {e} (only the producer's signed messages are applied)"
            ),
        })
}

/// The highest version applied to one table, as this worker knows it: read
/// once from the local database (the newest row version and the truncate
/// floor) and raised by every batch this worker applies. Other processes'
/// batches do not raise this copy: a lagging copy is at most a few seconds
/// of WAL behind, nothing next to the allowed jump. Nothing is written
/// back: the local bookkeeping stays the apply engine's alone.
pub struct VersionMark {
    loaded: bool,
    /// The table's own highest applied LSN.
    table_high: Option<u64>,
    /// Before the table has one: the highest of any table in this database
    /// (LSNs of one source are comparable across its tables).
    db_high: Option<u64>,
}

impl VersionMark {
    pub fn new() -> VersionMark {
        VersionMark {
            loaded: false,
            table_high: None,
            db_high: None,
        }
    }

    /// Reads the marks from the database once (again after a failure).
    pub async fn ensure_loaded(&mut self, pool: &PgPool, table: &TableName) -> sqlx::Result<()> {
        if self.loaded {
            return Ok(());
        }
        let table_high: Option<i64> = sqlx::query_scalar(
            "select greatest(nullif(ts.truncate_lsn, 0), \
                 (select max(rs.lsn) from syncdata.row_state rs where rs.table_id = ts.id)) \
             from syncdata.table_state ts where ts.table_name = $1",
        )
        .bind(table.to_string())
        .fetch_optional(pool)
        .await?
        .flatten();
        // Only for a table that has applied nothing yet (a new one): a read
        // of every table's versions, once.
        let db_high: Option<i64> = if table_high.is_none() {
            sqlx::query_scalar(
                "select greatest((select max(lsn) from syncdata.row_state), \
                     (select max(nullif(truncate_lsn, 0)) from syncdata.table_state))",
            )
            .fetch_one(pool)
            .await?
        } else {
            None
        };
        self.table_high = table_high.map(|v| v as u64);
        self.db_high = db_high.map(|v| v as u64);
        self.loaded = true;
        Ok(())
    }

    /// Sets the marks read from a SQLite target (`crate::local`).
    pub fn set_loaded(&mut self, table_high: Option<i64>, db_high: Option<i64>) {
        self.table_high = table_high.map(|v| v as u64);
        self.db_high = db_high.map(|v| v as u64);
        self.loaded = true;
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    fn baseline(&self) -> Option<u64> {
        self.table_high.or(self.db_high)
    }

    /// Holds a change more than `max_jump` bytes of WAL ahead of the baseline.
    pub fn check(&self, table: &TableName, lsn: Lsn, max_jump: u64) -> Result<(), Rejection> {
        let Some(base) = self.baseline() else {
            return Ok(());
        };
        if lsn.0 > base.saturating_add(max_jump) {
            let whose = if self.table_high.is_some() {
                format!("{table}")
            } else {
                "any table of this database".to_owned()
            };
            return Err(Rejection {
                reason: "version_jump",
                error: format!(
                    "held, not applied: version {lsn} is more than {max_jump} bytes of WAL ahead of \
                     the highest version applied to {whose} ({}); a genuine change is never that far \
                     ahead (consumer.max_version_jump, see docs/trust.md)",
                    Lsn(base)
                ),
            });
        }
        Ok(())
    }

    /// Raises the table's mark with an applied change's LSN.
    pub fn observe(&mut self, lsn: Lsn) {
        self.table_high = Some(self.table_high.map_or(lsn.0, |h| h.max(lsn.0)));
    }
}

impl Default for VersionMark {
    fn default() -> Self {
        VersionMark::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> TableName {
        TableName::parse("users").unwrap()
    }

    #[test]
    fn no_baseline_holds_nothing_then_far_jumps_are_held() {
        let mut m = VersionMark::new();
        let max = 1 << 40;
        m.check(&t(), Lsn(i64::MAX as u64), max).unwrap();
        m.db_high = Some(0x1_0000_0000);
        let err = m.check(&t(), Lsn(i64::MAX as u64), max).unwrap_err();
        assert_eq!(err.reason, "version_jump");
        assert!(err.error.contains("any table"), "{}", err.error);
        m.observe(Lsn(0x2_0000_0000));
        m.check(&t(), Lsn(0x2_0000_0000 + max), max).unwrap();
        let err = m
            .check(&t(), Lsn(0x2_0000_0000 + max + 1), max)
            .unwrap_err();
        assert!(
            err.error.contains("7FFF") || err.error.contains("users"),
            "{}",
            err.error
        );
        // Older versions are never held here (the version guard handles them).
        m.check(&t(), Lsn(1), max).unwrap();
    }
}
