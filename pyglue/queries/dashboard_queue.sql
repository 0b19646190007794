-- The request queue per tenancy (dashboard and Prometheus): requests pending, claimed and
-- dead, and the age of the oldest pending one.
select tenancy_id,
       count(*) filter (where status = 'pending') as pending,
       count(*) filter (where status = 'claimed') as claimed,
       count(*) filter (where status = 'dead') as dead,
       extract(epoch from now() - min(created_at) filter (where status = 'pending'))::float8 as oldest_pending_s
from pyglue.outgoing_requests
group by tenancy_id
order by tenancy_id
