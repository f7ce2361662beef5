-- `syncdata report`: what each applied batch's records did, by kind, so a
-- period's figures come from the log itself (exact, at once) rather than
-- from the periodic data_sync_metrics roll-up. Older rows read as zero.
alter table data_sync_logs
    add column if not exists inserted bigint not null default 0,
    add column if not exists updated bigint not null default 0,
    add column if not exists deleted bigint not null default 0,
    add column if not exists superseded bigint not null default 0,
    add column if not exists parked bigint not null default 0,
    add column if not exists deletes_of_missing bigint not null default 0;
create index if not exists data_sync_logs_time on data_sync_logs (sync_time);
