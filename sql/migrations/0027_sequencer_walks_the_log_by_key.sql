-- 0027: pyglue.sequence_changes runs with seq and bitmap scans off and with jit = off, so
-- its listing walks pyglue.changed_rows by the primary key however many dead entries the
-- log's heap holds (the entries stamped since the last vacuum), instead of a Seq Scan + Sort
-- of all of them. Measured on Debian PG 15, 600k dead entries, 500 rows a pass: 38-55 ms a
-- pass before, 21-30 ms after. sql/functions/pyglue.sequence_changes.sql carries the same
-- SET clauses (and says why), which is all that changes (the drift test compares the two).
-- depends: 0026_status_and_ledger_check_without_jit

alter function pyglue.sequence_changes(integer) set enable_seqscan = off;
alter function pyglue.sequence_changes(integer) set enable_bitmapscan = off;
alter function pyglue.sequence_changes(integer) set jit = off;
