-- Sync targets (of one tenancy, or all when tenancy_id is null) with their health.
select tenancy_id, name, connection_string, enabled, last_success_at, last_error, retry_after
from pyglue.sync_targets
where %(tenancy_id)s::uuid is null or tenancy_id = %(tenancy_id)s
order by tenancy_id, name
