-- The latency poller's look-up in the target: the current display names of the users
-- whose markers it still waits for (primary-key probes, not a scan of the table).
select id, display_name from {table} where id = any(%(ids)s::uuid[])
