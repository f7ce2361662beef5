-- What each batch's records did (`syncdata report`), as in PostgreSQL's
-- data_sync_logs: applied by op, superseded deliveries, rows parked,
-- DELETEs of rows not present.
alter table data_sync_logs add column inserted integer not null default 0;
alter table data_sync_logs add column updated integer not null default 0;
alter table data_sync_logs add column deleted integer not null default 0;
alter table data_sync_logs add column superseded integer not null default 0;
alter table data_sync_logs add column parked integer not null default 0;
alter table data_sync_logs add column deletes_of_missing integer not null default 0;

-- Tombstone collection (see PostgreSQL's syncdata.gc_horizon): per table,
-- the replay horizon observed at observed_at (unix seconds); tombstones
-- below it go once it has aged consumer.tombstone_grace_secs.
create table syncdata_gc_horizon (
    table_name text primary key,
    lsn integer not null,
    seq integer not null,
    observed_at real not null,
    tombstones_collected integer not null default 0,
    last_run_at real not null
);

-- The all-time totals of data_sync_logs rows removed by retention
-- (consumer.log_retention_days), so `status` stays whole.
create table syncdata_log_totals (
    table_name text primary key,
    records_synced integer not null default 0,
    errors integer not null default 0,
    rows_pruned integer not null default 0
);
