//! Permanent failures counted per message, apart from its deliveries
//! (`syncdata.failed_attempts`, migration 0007). A message redelivered many
//! times during an outage (transient failures, a consumer killed mid-batch)
//! has used none of its `max_attempts`; only failures of the record itself
//! count, and a foreign-key wait is measured from its first failure.

use sqlx::PgPool;
use syncdata_core::table::TableName;

/// What is known of a message's own failures, this one included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failures {
    pub attempts: i64,
    /// Seconds since its first permanent (or foreign-key) failure.
    pub since_first_secs: f64,
}

/// Counts one more failure of the record at `stream_seq` (at `index` of
/// its chunk, `crate::chunk`; None for a message of one record).
pub async fn record(
    pool: &PgPool,
    table: &TableName,
    stream_seq: u64,
    index: Option<u32>,
) -> Result<Failures, sqlx::Error> {
    let (attempts, since): (i32, f64) = sqlx::query_as(
        "insert into syncdata.failed_attempts (stream_seq, table_name, attempts, chunk_index) \
         values ($1, $2, 1, $3) \
         on conflict (stream_seq, chunk_index) do update set attempts = failed_attempts.attempts + 1, \
             last_failed_at = now() \
         returning attempts, extract(epoch from now() - first_failed_at)::float8",
    )
    .bind(stream_seq as i64)
    .bind(table.to_string())
    .bind(index.map_or(-1, |i| i64::from(i).min(i64::from(i32::MAX)) as i32))
    .fetch_one(pool)
    .await?;
    Ok(Failures {
        attempts: i64::from(attempts),
        since_first_secs: since,
    })
}

/// Forgets the failures of messages that were settled (applied or
/// dead-lettered).
pub async fn clear(pool: &PgPool, stream_seqs: &[i64]) -> Result<(), sqlx::Error> {
    if stream_seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("delete from syncdata.failed_attempts where stream_seq = any($1)")
        .bind(stream_seqs)
        .execute(pool)
        .await?;
    Ok(())
}
