-- The enabled sync targets of a tenancy, their lock keys, and whether each is backing off after errors.
select id, name, connection_string, lock_key, retry_after > now() as backing_off
from pyglue.sync_targets
where tenancy_id = %(tenancy_id)s and enabled
order by name
