-- End-to-end freshness for `status`: the source commit time of the newest
-- change in each applied batch (wal2json's `timestamp`, carried as the
-- record's `ts`; NULL for records without one, e.g. snapshots). An index
-- per table for status's per-table figures (last batch, rate, freshness).
alter table data_sync_logs add column if not exists source_commit_at timestamptz;
create index if not exists data_sync_logs_table_success
    on data_sync_logs (table_name, sync_time desc) where status = 'SUCCESS';
