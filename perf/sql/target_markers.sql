-- The latency poller's look-up in the target: the marker column of the users whose markers
-- it still waits for (primary-key probes, not a scan of the table), and when each row was
-- read (the server's clock after the statement's snapshot: never before the change's commit).
select id, {column}, extract(epoch from clock_timestamp())::float8 as at
from {table}
where id = any(%(ids)s::uuid[])
