-- Queue a sync of a demo tenancy (at most one pending request per tenancy: a no-op if queued).
select pyglue.enqueue_sync(%(tenancy_id)s) as request_id
