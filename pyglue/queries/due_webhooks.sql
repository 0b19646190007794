-- A tenancy's webhook endpoints that may be delivered to now: enabled, not parked, not
-- backing off (or every unparked enabled one when ignore_backoff).
select w.id, w.name, w.url, w.tables, w.mappings, w.secret, w.allow_private, w.last_delivered_sequence_id, w.pending_batch_end,
       w.attempts
from pyglue.webhooks w
where w.tenancy_id = %(tenancy_id)s and w.enabled and w.parked_at is null
  and (w.retry_after is null or w.retry_after <= now() or %(ignore_backoff)s)
order by w.name
