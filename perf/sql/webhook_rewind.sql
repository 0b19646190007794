-- The throughput run delivers the whole seeded backlog: move the endpoint's cursor to the start.
update pyglue.webhooks set last_delivered_sequence_id = 0, pending_batch_end = null where name = %(name)s
