-- After a sync in which some targets failed or were busy: queue the tenancy again for
-- when the earliest backoff ends, or after busy_retry_s seconds when a target was held by
-- another run (null when none was). The targets that succeeded are done until new changes.
select pyglue.enqueue_sync(%(tenancy_id)s, greatest(least(min(t.retry_after) - now(),
                                                          make_interval(secs => %(busy_retry_s)s::float8)), '0'))
from pyglue.sync_targets t
where t.tenancy_id = %(tenancy_id)s and t.enabled
  and (t.retry_after is not null or %(busy_retry_s)s::float8 is not null)
having count(*) > 0
