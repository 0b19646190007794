-- One sequencer pass, in its own transaction (the driver runs in autocommit).
select pyglue.sequence_changes(%(batch_size)s) as stamped
