-- Row versions written into schema billing so far: inserted, updated, deleted (counts
-- since the database was created; a measurement takes the difference around a run).
select coalesce(sum(n_tup_ins), 0)::bigint as inserted,
       coalesce(sum(n_tup_upd), 0)::bigint as updated,
       coalesce(sum(n_tup_del), 0)::bigint as deleted
from pg_stat_user_tables
where schemaname = 'billing'
