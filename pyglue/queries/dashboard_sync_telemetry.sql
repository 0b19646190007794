-- Pages and rows applied per worker, target and mapping (of one worker when %(worker)s is
-- not null), with the target's tenancy and name.
select s.worker, t.tenancy_id, t.name as target_name, s.mapping_name, s.pages_applied, s.rows_applied,
       s.last_page_at
from pyglue.sync_telemetry s
join pyglue.sync_targets t on t.id = s.target_id
where %(worker)s::text is null or s.worker = %(worker)s
order by t.tenancy_id, t.name, s.mapping_name, s.worker
