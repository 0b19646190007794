-- One batch of a tenancy's Stripe subscriptions (rows built by pyglue.billing.stripe).
select billing.upsert_stripe_subscriptions(%(tenancy_id)s, %(rows)s, %(read_at)s) as written
