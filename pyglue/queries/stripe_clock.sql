-- When a Stripe read begins, on the database's clock (outbox deliveries are stamped by it too):
-- billing.upsert_stripe_subscriptions distrusts Stripe metadata older than a delivery.
select clock_timestamp() as read_at
