-- One call, every other argument its default (free product, keyset batches of 10,000 teams,
-- no limit): one statement, one transaction (the driver runs in autocommit).
select billing.backfill_free_plans(%(project_id)s) as n
