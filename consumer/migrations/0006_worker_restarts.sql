-- Table workers of a running daemon that ended unexpectedly (a panic or an
-- error) and were restarted, for `status` (never a silent dead table).
create table syncdata.worker_restarts (
    daemon_id uuid not null references syncdata.daemons (id) on delete cascade,
    table_name text not null,
    restarts bigint not null default 0,
    last_error text not null,
    last_at timestamptz not null default now(),
    primary key (daemon_id, table_name)
);
