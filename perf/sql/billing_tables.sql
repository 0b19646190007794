-- The tables the billing jobs read and write: all of schema billing, and the teams.
select schemaname as schema, relname as name
from pg_stat_user_tables
where schemaname = 'billing' or (schemaname, relname) in (('app', 'teams'), ('app', 'tenancies'))
order by schemaname, relname
