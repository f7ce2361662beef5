//! End-to-end freshness: the source commit time (wal2json's `timestamp`,
//! the record's `ts`) of the newest change applied per table, as the
//! `syncdata_source_commit_timestamp_seconds` gauge. `status` reads the same
//! from `data_sync_logs.source_commit_at`.

use std::collections::HashMap;
use std::sync::Mutex;

use syncdata_core::table::TableName;
use time::format_description::well_known::Rfc3339;

static NEWEST: Mutex<Option<HashMap<TableName, f64>>> = Mutex::new(None);

/// Raises the table's gauge to `ts` (RFC 3339) when newer than what this
/// process applied before (batches may commit out of order).
pub fn observe(table: &TableName, ts: Option<&str>) {
    let Some(t) = ts.and_then(|ts| time::OffsetDateTime::parse(ts, &Rfc3339).ok()) else {
        return;
    };
    let secs = t.unix_timestamp_nanos() as f64 / 1e9;
    let mut guard = NEWEST.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let entry = map.entry(table.clone()).or_insert(f64::MIN);
    if secs > *entry {
        *entry = secs;
        metrics::gauge!("syncdata_source_commit_timestamp_seconds", "table" => table.to_string())
            .set(secs);
    }
}

/// Describes the consumer's metrics (HELP text); gauges get their first
/// values per table at start (`daemon::update_gauges`).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "syncdata_pending_messages",
        "Messages of the table not yet applied (pending plus in flight)"
    );
    describe_gauge!(
        "syncdata_lag_seconds",
        "Age of the table's oldest message not yet applied; 0 when caught up"
    );
    describe_gauge!(
        "syncdata_dlq_messages",
        "Dead letters of the table in this database's dead-letter subjects"
    );
    describe_gauge!(
        "syncdata_source_commit_timestamp_seconds",
        "Source commit time (unix seconds) of the newest change applied to the table: end-to-end freshness is time() minus this"
    );
    describe_counter!(
        "syncdata_records_applied_total",
        "Records applied, by table and operation"
    );
    describe_counter!(
        "syncdata_errors_total",
        "Failed apply attempts, by stage and kind (transient: retried; permanent: dead-lettered)"
    );
    describe_counter!(
        "syncdata_dead_lettered_total",
        "Records dead-lettered, by table"
    );
    describe_counter!(
        "syncdata_messages_rejected_total",
        "Messages refused before applying (bad signature, not a record, ...), by reason"
    );
    describe_counter!(
        "syncdata_worker_restarts_total",
        "Table workers restarted after ending unexpectedly"
    );
    describe_histogram!(
        "syncdata_batch_apply_seconds",
        "Time to apply one batch in one transaction"
    );
}
