-- This session's table counters reach the shared statistics when it goes idle after this
-- statement (before the server answers), not up to a second or more later.
select pg_stat_force_next_flush()
