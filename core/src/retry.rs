//! Retrying transient failures: capped exponential backoff with jitter
//! (`backon`), and sleeps that wake on cancellation so a stopping process
//! never waits out a backoff.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Delays start near `base`, double per attempt, and never reach `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn new(base: Duration, cap: Duration) -> RetryPolicy {
        RetryPolicy {
            base,
            cap: cap.max(base),
        }
    }

    /// The endless sequence of delays. backon's jitter adds up to 100% of
    /// the delay, so it is fed half the bounds: every delay lies in
    /// `[base / 2, cap)`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        let cap = self.cap;
        ExponentialBuilder::default()
            .with_min_delay(self.base / 2)
            .with_max_delay(self.cap / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .map(move |d| d.min(cap))
    }

    /// The delay before retry number `attempt` (1-based).
    pub fn delay_for(&self, attempt: u32) -> Duration {
        self.delays()
            .nth(attempt.saturating_sub(1).min(64) as usize)
            .unwrap_or(self.cap)
    }
}

/// Sleeps for `d` unless cancelled first; false when cancelled.
pub async fn sleep(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = token.cancelled() => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// The token was cancelled while waiting to retry.
    Cancelled,
    /// The operation failed with an error that is not worth retrying.
    Permanent(E),
}

/// How long a daemon waits at start for a server that is not reachable
/// (PostgreSQL or NATS) before it exits with an error: long enough for a
/// server that is starting, short enough that a supervisor (systemd
/// `Restart=on-failure`) or the operator sees the failure. Both servers get
/// the same treatment.
pub const STARTUP_WAIT: Duration = Duration::from_secs(15);

/// Runs `op` until it succeeds, retrying for as long as it takes while
/// `is_transient` says so. `on_retry(err, attempt, delay)` is told of each
/// retry (for logs and metrics).
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    token: &CancellationToken,
    is_transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(&E, u32, Duration),
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = policy.delays();
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) => {
                attempt += 1;
                let d = delays.next().unwrap_or(policy.cap);
                on_retry(&e, attempt, d);
                if !sleep(d, token).await {
                    return Err(RetryError::Cancelled);
                }
            }
            Err(e) => return Err(RetryError::Permanent(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(3);

    #[test]
    fn delays_grow_stay_below_the_cap_and_jitter() {
        let p = RetryPolicy::new(BASE, CAP);
        for _ in 0..50 {
            let ds: Vec<Duration> = p.delays().take(30).collect();
            for (i, d) in ds.iter().enumerate() {
                let unjittered = (BASE / 2).saturating_mul(1 << i.min(20)).min(CAP / 2);
                assert!(
                    *d >= unjittered && *d < unjittered * 2 && *d <= CAP,
                    "{i}: {d:?}"
                );
            }
        }
        // Jitter: 20 draws of the same attempt are not all equal.
        let draws: std::collections::HashSet<Duration> = (0..20).map(|_| p.delay_for(4)).collect();
        assert!(draws.len() > 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_with_backoff_then_succeeds() {
        let p = RetryPolicy::new(BASE, CAP);
        let token = CancellationToken::new();
        let calls = Arc::new(AtomicU32::new(0));
        let mut waited = Vec::new();
        let start = tokio::time::Instant::now();
        let c = calls.clone();
        let result: Result<u32, RetryError<&str>> = retry(
            p,
            &token,
            |e| *e == "transient",
            |_, _, d| waited.push(d),
            || {
                let c = c.clone();
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    if n < 5 {
                        Err("transient")
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(result, Ok(5));
        assert_eq!(waited.len(), 4);
        // The paused clock advanced by the delays slept (tokio's timer
        // rounds each sleep up to the millisecond).
        let total: Duration = waited.iter().sum();
        let elapsed = start.elapsed();
        assert!(
            elapsed >= total && elapsed <= total + Duration::from_millis(waited.len() as u64),
            "{elapsed:?} vs {total:?}"
        );
        assert!(
            waited.windows(2).all(|w| w[1] >= w[0] / 2 + w[0] / 4),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let token = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let result: Result<(), RetryError<&str>> = retry(
            RetryPolicy::new(BASE, CAP),
            &token,
            |e| *e == "transient",
            |_, _, _| {},
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("bad input") }
            },
        )
        .await;
        assert_eq!(result, Err(RetryError::Permanent("bad input")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_wakes_a_waiting_retry() {
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            t2.cancel();
        });
        let start = tokio::time::Instant::now();
        let result: Result<(), RetryError<&str>> = retry(
            RetryPolicy::new(Duration::from_secs(60), Duration::from_secs(600)),
            &token,
            |_| true,
            |_, _, _| {},
            || async { Err("down") },
        )
        .await;
        assert_eq!(result, Err(RetryError::Cancelled));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }
}
