-- The identity of this local database as a destination: every process that
-- applies into this database shares the JetStream durables named after it;
-- another database (another laptop, staging) gets its own durables and so
-- its own full copy of the stream.
create table syncdata.instance (
    singleton boolean primary key default true check (singleton),
    id text not null default substr(replace(gen_random_uuid()::text, '-', ''), 1, 12)
);
insert into syncdata.instance default values on conflict do nothing;

-- Running and past `syncdata start` daemons, for `status` and `stop`.
create table syncdata.daemons (
    id uuid primary key,
    host text not null,
    pid int not null,
    started_at timestamptz not null default now(),
    last_seen timestamptz not null default now(),
    stopped_at timestamptz,
    records_applied bigint not null default 0,
    errors bigint not null default 0
);

create index if not exists data_sync_logs_table_time on data_sync_logs (table_name, sync_time desc);
