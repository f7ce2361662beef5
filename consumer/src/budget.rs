//! The process-wide memory budget of fetched messages: every table worker
//! reserves bytes before a pull (the pull asks the server for at most that
//! many) and holds what the pull brought until its batch is settled, so the
//! messages all workers of one process hold never exceed
//! `consumer.memory_budget_bytes` together. See docs/operations.md "Memory".

use std::sync::Arc;

use async_nats::jetstream::message::Message;
use tokio::sync::Semaphore;

/// Room for a message's subject and headers next to its payload.
const HEADER_ROOM: usize = 16 * 1024;

pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
    /// A pull of a busy table.
    full: usize,
    /// A pull of an idle table: one message of the largest size.
    small: usize,
}

impl Budget {
    /// `total` bytes shared; a busy table pulls up to `pull_max` bytes, an
    /// idle one room for one largest message (`max_payload` and headers),
    /// and `total` is raised to hold one such pull. A busy pull may be
    /// smaller than a message: the server then ends it without that message
    /// (409 "Message Size Exceeds MaxBytes", or nothing), the table counts
    /// as idle, and its next pull, sized for any message, brings it. So
    /// what a busy table holds follows `pull_max_bytes`, not the largest
    /// message the server allows (8 MB in this project's servers).
    pub fn new(total: usize, pull_max: usize, max_payload: usize) -> Budget {
        let small = max_payload.saturating_add(HEADER_ROOM);
        let total = total.max(small).max(pull_max).min(u32::MAX as usize);
        let full = pull_max.min(total);
        let small = small.min(total);
        if total > 0 {
            metrics::gauge!("syncdata_memory_budget_bytes").set(total as f64);
        }
        Budget {
            sem: Arc::new(Semaphore::new(total)),
            total,
            full,
            small,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Waits until the bytes of one pull are free and reserves them.
    pub async fn reserve(&self, busy: bool) -> Reservation {
        let want = if busy { self.full } else { self.small };
        let permit = self
            .sem
            .clone()
            .acquire_many_owned(want as u32)
            .await
            .expect("the budget's semaphore is never closed");
        permit.forget();
        Reservation {
            sem: self.sem.clone(),
            held: want,
        }
    }
}

/// Bytes held by one worker; given back when dropped.
pub struct Reservation {
    sem: Arc<Semaphore>,
    held: usize,
}

impl Reservation {
    /// The bytes a pull may bring.
    pub fn bytes(&self) -> usize {
        self.held
    }

    /// Keeps only what the fetched messages take.
    pub fn keep(&mut self, messages: &[Message]) {
        let used: usize = messages.iter().map(size).sum();
        let used = used.min(self.held);
        self.sem.add_permits(self.held - used);
        self.held = used;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.sem.add_permits(self.held);
    }
}

/// A message's bytes as held in memory (payload, subject, headers).
fn size(m: &Message) -> usize {
    let headers = m.headers.as_ref().map_or(0, |h| {
        h.iter()
            .map(|(k, vs)| {
                k.to_string().len() + vs.iter().map(|v| v.as_str().len() + 4).sum::<usize>()
            })
            .sum()
    });
    m.payload.len() + m.subject.len() + headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_never_exceed_the_total_and_come_back() {
        let b = Budget::new(4 * 1024 * 1024, 2 * 1024 * 1024, 1024 * 1024);
        assert_eq!(b.total(), 4 * 1024 * 1024);
        let r1 = b.reserve(true).await;
        assert_eq!(r1.bytes(), 2 * 1024 * 1024);
        // Only one idle-sized pull fits next to it.
        let r2 = b.reserve(false).await;
        assert_eq!(r2.bytes(), 1024 * 1024 + HEADER_ROOM);
        let third = tokio::time::timeout(std::time::Duration::from_millis(50), b.reserve(false));
        assert!(third.await.is_err(), "over budget");
        drop(r1);
        let r3 = b.reserve(false).await;
        drop((r2, r3));
        assert_eq!(b.sem.available_permits(), b.total());
        // An idle pull always holds one largest message, whatever the
        // settings; a busy one follows pull_max.
        let small = Budget::new(1000, 1000, 1024 * 1024);
        assert!(small.total() >= 1024 * 1024 && small.small >= 1024 * 1024);
        assert_eq!(small.full, 1000);
    }
}
