//! Supervision of the table workers: a worker task that ends while the
//! daemon runs (a panic, an error, or a return) is noticed at once and
//! restarted with backoff; it is counted in the
//! `syncdata_worker_restarts_total` metric and in `syncdata.worker_restarts`
//! (shown by `status`). A worker that keeps failing quickly makes the daemon
//! stop with an error: never a silent dead table.

use std::time::Duration;

use syncdata_core::retry::RetryPolicy;
use syncdata_core::table::TableName;
use tokio::time::Instant;

/// Failures of one table's worker that follow each other without a calm
/// period in between; one more and the daemon gives up.
pub const MAX_QUICK_FAILURES: u32 = 8;

/// A worker that ran this long before it failed starts a fresh count.
const CALM: Duration = Duration::from_secs(60);

/// Backoff before a restart: from 1 s, doubling, below `cap` (the
/// consumer's `max_backoff_ms`, 30 s by default).
pub fn restart_policy(cap: Duration) -> RetryPolicy {
    RetryPolicy::new(Duration::from_secs(1).min(cap), cap)
}

/// The supervision state of one table's worker.
#[derive(Debug)]
pub struct Slot {
    pub table: TableName,
    /// Quick failures in a row.
    pub failures: u32,
    /// Restarts since the daemon started.
    pub restarts: u64,
    started: Instant,
}

/// What to do after a worker ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after this delay.
    Restart(Duration),
    /// It keeps failing: the daemon stops with an error.
    GiveUp,
}

impl Slot {
    pub fn new(table: TableName) -> Slot {
        Slot {
            table,
            failures: 0,
            restarts: 0,
            started: Instant::now(),
        }
    }

    /// The worker ended unexpectedly now.
    pub fn failed(&mut self, policy: &RetryPolicy) -> Decision {
        if self.started.elapsed() >= CALM {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > MAX_QUICK_FAILURES {
            return Decision::GiveUp;
        }
        self.restarts += 1;
        Decision::Restart(policy.delay_for(self.failures))
    }

    /// The worker was started (again) now.
    pub fn started(&mut self) {
        self.started = Instant::now();
    }
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Fault injection for tests, in debug builds only: with
/// `SYNCDATA_FAULT_WORKER_PANICS=schema.table=N` the first N starts of that
/// table's worker panic. Release builds ignore the variable.
#[derive(Debug, Default)]
pub struct FaultHook {
    target: Option<(String, std::sync::atomic::AtomicU32)>,
}

pub const FAULT_ENV: &str = "SYNCDATA_FAULT_WORKER_PANICS";

impl FaultHook {
    pub fn from_env() -> FaultHook {
        if !cfg!(debug_assertions) {
            return FaultHook::default();
        }
        let Ok(spec) = std::env::var(FAULT_ENV) else {
            return FaultHook::default();
        };
        let Some((table, n)) = spec.rsplit_once('=') else {
            return FaultHook::default();
        };
        let n = n.trim().parse().unwrap_or(0);
        tracing::warn!(
            table,
            n,
            "fault injection: worker panics at start ({FAULT_ENV})"
        );
        FaultHook {
            target: Some((table.to_owned(), std::sync::atomic::AtomicU32::new(n))),
        }
    }

    /// Panics when a fault is due for `table`.
    pub fn check(&self, table: &TableName) {
        let Some((name, left)) = &self.target else {
            return;
        };
        let qualified = format!("{}.{}", table.schema, table.table);
        if *name != qualified && *name != table.to_string() {
            return;
        }
        let due = left
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if due {
            panic!("injected worker failure for table {table} ({FAULT_ENV})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn restarts_with_backoff_then_gives_up_unless_calm_in_between() {
        let policy = restart_policy(Duration::from_secs(30));
        let mut slot = Slot::new(TableName::new("public", "t"));
        for _ in 0..MAX_QUICK_FAILURES {
            match slot.failed(&policy) {
                Decision::Restart(d) => {
                    assert!(d >= Duration::from_millis(500) && d < Duration::from_secs(30))
                }
                Decision::GiveUp => panic!("gave up after {} failures", slot.failures),
            }
            tokio::time::advance(Duration::from_secs(5)).await;
            slot.started();
        }
        assert_eq!(slot.failed(&policy), Decision::GiveUp);
        assert_eq!(slot.restarts, u64::from(MAX_QUICK_FAILURES));

        // A worker that fails only after running a while is always restarted.
        let mut slot = Slot::new(TableName::new("public", "t"));
        for _ in 0..3 * MAX_QUICK_FAILURES {
            tokio::time::advance(CALM).await;
            assert!(matches!(slot.failed(&policy), Decision::Restart(_)));
            slot.started();
        }
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let n = 7;
        let p = std::panic::catch_unwind(|| panic!("formatted {n}")).unwrap_err();
        assert_eq!(panic_message(&*p), "formatted 7");
    }
}
