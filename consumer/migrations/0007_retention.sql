-- Permanent failures per message, counted apart from deliveries: after a
-- long outage a message has been delivered many times without ever failing
-- for its own reasons. Keyed by the change stream's sequence (one stream
-- per database). A row goes when its message is acked or dead-lettered; the
-- housekeeping removes rows of messages the stream no longer holds.
create table syncdata.failed_attempts (
    stream_seq bigint primary key,
    table_name text not null,
    attempts int not null default 0,
    first_failed_at timestamptz not null default now(),
    last_failed_at timestamptz not null default now()
);

-- Tombstone collection (docs/design.md "Tombstone collection"): per table,
-- the replay horizon last observed (the version of the table's oldest
-- message the stream still holds) and when, and how many tombstones went.
create table syncdata.gc_horizon (
    table_name text primary key,
    lsn bigint not null,
    seq bigint not null,
    observed_at timestamptz not null default now(),
    tombstones_collected bigint not null default 0,
    last_run_at timestamptz
);

-- data_sync_logs rows removed by retention still count in `status`'s
-- all-time totals.
create table syncdata.log_totals (
    singleton boolean primary key default true check (singleton),
    records_synced bigint not null default 0,
    errors bigint not null default 0,
    rows_pruned bigint not null default 0
);
insert into syncdata.log_totals default values on conflict do nothing;
