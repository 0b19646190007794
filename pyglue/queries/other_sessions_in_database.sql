-- Client sessions connected to the current database other than the given backend pids
-- (ours). pid, datname and backend_type are visible to every role in pg_stat_activity.
select count(*) as others
from pg_catalog.pg_stat_activity
where datname = current_database() and backend_type = 'client backend' and pid <> all (%(ours)s::int[])
