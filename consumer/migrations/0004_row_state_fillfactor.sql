-- Room on each page of the bookkeeping for a row's next version, so that
-- rewriting a row's version is a HOT update (no new index entry) where it
-- can be. Applies to pages written from now on.
alter table syncdata.row_state set (fillfactor = 80);
