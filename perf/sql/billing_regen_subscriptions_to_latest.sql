-- One call, no limit: one statement, one transaction (the driver runs in autocommit).
select billing.regen_subscriptions_to_latest(%(project_id)s) as n
