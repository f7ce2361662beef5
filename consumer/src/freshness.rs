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
