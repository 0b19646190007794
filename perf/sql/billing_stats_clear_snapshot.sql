-- Forget any cached statistics snapshot, so the next read sees what was flushed.
select pg_stat_clear_snapshot()
