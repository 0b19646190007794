-- Keep the sequence columns and indexes, drop the triggers.
select pyglue.untrack_table(%(table)s::regclass)
