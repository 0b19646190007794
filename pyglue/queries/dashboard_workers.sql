-- Sequencer telemetry per worker (of one worker when %(worker)s is not null), most
-- recently seen first.
select worker, started_at, last_seen_at, sequencer_passes, rows_stamped, pass_seconds,
       last_pass_at, last_pass_rows, last_pass_seconds
from pyglue.worker_telemetry
where %(worker)s::text is null or worker = %(worker)s
order by last_seen_at desc, worker
