-- The application's insert: sequence columns (where present) take their defaults, so a
-- tracked row arrives flagged. No trigger fires on INSERT; the cost is the extra columns
-- and the two pyglue indexes.
insert into {table} (tenancy_id, id, display_name, signed_up_at, last_active_at)
select md5('perf-tenancy-' || mod(i, 100))::uuid,
       md5('bench-user-' || i)::uuid,
       'User ' || i,
       timestamptz '2026-01-01' + i * interval '1 second',
       timestamptz '2026-11-01' + i * interval '1 second'
from generate_series(0, %(rows)s - 1) as i
