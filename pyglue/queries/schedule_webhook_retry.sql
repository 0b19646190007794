-- After a delivery round in which an endpoint failed and backs off: queue the tenancy
-- again for when the earliest backoff ends (parked and disabled endpoints wait for retry
-- or enable, which queue it themselves).
select pyglue.enqueue_sync(%(tenancy_id)s, greatest(min(w.retry_after) - now(), '0'))
from pyglue.webhooks w
where w.tenancy_id = %(tenancy_id)s and w.enabled and w.parked_at is null and w.retry_after is not null
having count(*) > 0
