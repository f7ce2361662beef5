-- The local store of a SQLite target, in the same file as the data (see
-- docs/sqlite.md). The seed's three tables keep their names and columns;
-- the apply engine's bookkeeping (PostgreSQL's `syncdata` schema) has the
-- prefix syncdata_. Times are ISO-8601 text in UTC.
create table if not exists data_sync_logs (
    id integer primary key,
    table_name text not null,
    status text not null,  -- 'SUCCESS' or 'FAILED'
    rows_synced integer default 0,
    archive_ref text,
    error_detail text,
    sync_time text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    source_commit_at text
);
create index if not exists data_sync_logs_table_time on data_sync_logs (table_name, sync_time);

create table if not exists data_sync_metrics (
    id integer primary key,
    table_name text not null,
    period_start text not null,
    period_end text not null,
    period_type text not null,
    records_added integer default 0,
    records_updated integer default 0,
    records_deleted integer default 0,
    unique (table_name, period_start, period_type)
);

create table if not exists tables_to_sync (
    id integer primary key,
    table_name text not null unique,
    creator text default null,
    created_at text default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- One row per synced table: its TRUNCATE floor.
create table syncdata_table_state (
    id integer primary key,
    table_name text not null unique,
    truncate_lsn integer not null default 0,
    truncate_seq integer not null default 0
);

-- One row per synced key (row, tombstone, or parked partial row); the
-- columns mean what they mean in PostgreSQL's syncdata.row_state.
create table syncdata_row_state (
    table_id integer not null,
    key text not null,
    state text not null,
    lsn integer not null,
    seq integer not null,
    floor_lsn integer,
    floor_seq integer,
    col_versions text,
    parked text,
    primary key (table_id, key)
) without rowid;

-- This file's identity as a destination (names its durables).
create table syncdata_instance (
    singleton integer primary key check (singleton = 1),
    id text not null
);
insert or ignore into syncdata_instance (singleton, id) values (1, lower(hex(randomblob(6))));

-- The PostgreSQL type of each column of tables created from production's
-- definitions (`add-tables --create-from`): how its values are mapped.
create table syncdata_columns (
    table_name text not null,
    column_name text not null,
    pg_type text not null,
    primary key (table_name, column_name)
) without rowid;

-- Running and past `syncdata start` processes on this file (status, stop).
-- Times are unix seconds.
create table syncdata_daemons (
    id text primary key,
    host text not null,
    pid integer not null,
    started_at real not null default (unixepoch('subsec')),
    last_seen real not null default (unixepoch('subsec')),
    stopped_at real,
    records_applied integer not null default 0,
    errors integer not null default 0
);

-- Permanent failures per record (see PostgreSQL's syncdata.failed_attempts):
-- a record is its message's stream sequence and its place in the chunk
-- (chunk_index; -1 for a message of one record).
create table syncdata_failed_attempts (
    stream_seq integer not null,
    chunk_index integer not null default -1,
    table_name text not null,
    attempts integer not null default 0,
    first_failed_at real not null default (unixepoch('subsec')),
    last_failed_at real not null default (unixepoch('subsec')),
    primary key (stream_seq, chunk_index)
);
