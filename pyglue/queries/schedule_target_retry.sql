-- After a sync in which some targets failed: queue the tenancy again for when the
-- earliest backoff ends (the targets that succeeded are done until new changes).
select pyglue.enqueue_sync(%(tenancy_id)s, greatest(min(retry_after) - now(), '0'))
from pyglue.sync_targets
where tenancy_id = %(tenancy_id)s and enabled and retry_after is not null
having count(*) > 0
