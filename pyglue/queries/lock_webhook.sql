-- Lock one webhook endpoint for a delivery (held while the request is sent and until the
-- attempt is recorded); no row when another delivery holds it or it went away.
select w.last_delivered_sequence_id, w.enabled, w.parked_at is not null as parked
from pyglue.webhooks w
where w.id = %(id)s
for update skip locked
