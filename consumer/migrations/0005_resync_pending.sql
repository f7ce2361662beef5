-- A resync in progress: set before the table is emptied, cleared once its
-- durable has been recreated at the start of the stream. `syncdata start`
-- finishes any resync still marked here (the resync command may have died
-- between emptying the table and recreating the durable).
alter table syncdata.table_state add column if not exists resync_pending boolean not null default false;
