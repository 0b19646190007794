-- The baseline: one batch of the sequencer's work on one table, done the plainest way.
-- Same batch selection by ctid as pyglue.sequence_changes, but no row locks (FOR UPDATE
-- SKIP LOCKED), no RETURNING, no tenancy aggregation, no advisory lock, no enqueue.
update {table} t
set sequence_id = nextval('pyglue.change_sequence'), should_update_sequence_id = false
where t.ctid = any (array(
    select f.ctid from {table} f where f.should_update_sequence_id limit %(batch_size)s))
