-- A resync rebuilds a table through every version of its definition
-- (docs/schema.md, "Resync"): while the replay runs, the newest definition
-- taken before the resync (the changes accepted up to then), the local
-- definition the table had, the columns only the local table has and its
-- indexes, so the rebuild can end with the table as it was.
alter table syncdata.schema_state
    add column rebuild_lsn bigint,
    add column rebuild_seq bigint,
    add column rebuild_definition jsonb,
    add column rebuild_local_only text[],
    add column rebuild_indexes text[];

alter table syncdata.schema_changes drop constraint schema_changes_outcome_check;
alter table syncdata.schema_changes add constraint schema_changes_outcome_check
    check (outcome in ('applied', 'unchanged', 'halted', 'resumed', 'ignored',
                       'rewound', 'replayed', 'restored'));
