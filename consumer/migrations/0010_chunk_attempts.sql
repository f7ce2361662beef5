-- Chunks (docs/design.md "Delivery"): one message holds many records of its
-- table, and each record's permanent failures are counted on their own. A
-- record is its message's stream sequence and its place in the chunk
-- (chunk_index; -1 for a message of one record, as before). Acking or
-- dead-lettering a message still clears all its rows by stream_seq.
alter table syncdata.failed_attempts add column chunk_index integer not null default -1;
alter table syncdata.failed_attempts drop constraint failed_attempts_pkey;
alter table syncdata.failed_attempts add primary key (stream_seq, chunk_index);
