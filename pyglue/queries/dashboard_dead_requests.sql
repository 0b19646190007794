-- Dead requests (newest first, at most %(limit)s) with their last error: the dashboard's
-- list with a retry button each.
select id, tenancy_id, attempts, created_at, dead_at, last_error
from pyglue.outgoing_requests
where status = 'dead'
order by dead_at desc nulls last, id desc
limit %(limit)s
