-- Rollback of 0027: pyglue.sequence_changes plans its statements with the server's scan and
-- jit settings (as of 0025).
alter function pyglue.sequence_changes(integer) reset enable_seqscan;
alter function pyglue.sequence_changes(integer) reset enable_bitmapscan;
alter function pyglue.sequence_changes(integer) reset jit;
