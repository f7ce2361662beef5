-- Schema changes from the stream (docs/schema.md): per table, the newest
-- definition taken and, while the table is halted on a change it may not
-- apply by itself, the version it halted at, why, and the SQL to run.
create table syncdata.schema_state (
    table_name text primary key,
    lsn bigint not null,
    seq bigint not null,
    definition jsonb not null,
    halted_lsn bigint,
    halted_seq bigint,
    halt_reason text,
    halt_sql text,
    updated_at timestamptz not null default now()
);

-- Every schema change taken, applied or halted on, for `status` and reports.
create table syncdata.schema_changes (
    id bigserial primary key,
    table_name text not null,
    lsn bigint not null,
    seq bigint not null,
    outcome text not null check (outcome in ('applied', 'unchanged', 'halted', 'resumed', 'ignored')),
    statements text,
    at timestamptz not null default now()
);
create index schema_changes_table_at on syncdata.schema_changes (table_name, at);
