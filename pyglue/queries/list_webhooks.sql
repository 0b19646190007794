-- Webhook endpoints with their delivery state (pyglue.webhook_status: never the secret).
select * from pyglue.webhook_status(%(tenancy_id)s)
