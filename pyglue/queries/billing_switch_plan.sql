-- Switch a live test-mode or API-granted plan to another product of its line (billing.switch_plan).
select billing.switch_plan(%(tenancy_id)s, %(subscription_id)s, %(product_id)s) as subscription_id
