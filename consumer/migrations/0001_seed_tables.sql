-- The seed's three tables, with the names and columns seed 004 gives them,
-- so its troubleshooting queries work unchanged.
create table if not exists data_sync_logs (
    id uuid primary key default gen_random_uuid(),
    table_name text not null,
    status text not null,  -- 'SUCCESS' or 'FAILED'
    rows_synced int default 0,
    archive_ref text,      -- filename or LSN
    error_detail text,
    sync_time timestamptz default now()
);
create index if not exists data_sync_logs_status_time on data_sync_logs (status, sync_time desc);

create table if not exists data_sync_metrics (
    id serial primary key,
    table_name text not null,
    period_start timestamptz not null,
    period_end timestamptz not null,
    period_type text not null,  -- 'FREQ', 'WEEK', 'MONTH'
    records_added bigint default 0,
    records_updated bigint default 0,
    records_deleted bigint default 0,
    unique (table_name, period_start, period_type)
);

create table if not exists tables_to_sync (
    id serial primary key,
    table_name text not null,
    creator text default null,
    created_at timestamptz default now(),
    unique (table_name)
);
