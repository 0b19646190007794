-- Sync runs and errors per worker and target (of one worker when %(worker)s is not null).
select g.worker, t.tenancy_id, t.name as target_name, g.runs, g.errors, g.last_run_at, g.last_error_at
from pyglue.target_telemetry g
join pyglue.sync_targets t on t.id = g.target_id
where %(worker)s::text is null or g.worker = %(worker)s
order by t.tenancy_id, t.name, g.worker
