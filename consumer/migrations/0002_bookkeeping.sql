-- Internal bookkeeping of the apply engine, kept out of the user's schema.
create schema if not exists syncdata;

-- One row per synced table. table_name is the canonical name used in
-- tables_to_sync. The truncate version is the table's floor: changes at or
-- below it are dead.
create table syncdata.table_state (
    id serial primary key,
    table_name text not null unique,
    truncate_lsn bigint not null default 0,
    truncate_seq bigint not null default 0,
    last_lsn bigint,
    last_applied_at timestamptz,
    records_applied bigint not null default 0
);

-- One row per synced row (or tombstone, or parked partial row).
--   state: 'L' live (the row is in the target table), 'P' parked (only some
--          columns known; waits for its image), 'D' deleted (tombstone),
--          'N' placeholder inside an applying transaction, never committed.
--   lsn/seq: the newest version the row has seen.
--   floor_*: changes at or below this version are dead (the newest delete).
--   col_versions: {"column": [lsn, seq]} for columns whose version differs
--          from lsn/seq (per-column last-writer-wins).
--   parked: {"column": text-or-null} values of a parked row.
create table syncdata.row_state (
    table_id int not null references syncdata.table_state (id) on delete cascade,
    key text collate "C" not null,
    state "char" not null,
    lsn bigint not null,
    seq bigint not null,
    floor_lsn bigint,
    floor_seq bigint,
    col_versions jsonb,
    parked jsonb,
    primary key (table_id, key)
);
