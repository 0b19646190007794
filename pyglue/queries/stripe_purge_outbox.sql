-- Delete outbox rows delivered longer ago than %(keep_s)s seconds, so the outbox does not
-- grow with every Stripe move. A delivered row matters only to a Stripe sync whose read
-- began before the delivery (billing._stripe_subscription_rows), so a day is plenty.
with purged as (
    delete from billing.stripe_outbox o
    where o.delivered_at < now() - make_interval(secs => %(keep_s)s)
    returning 1
)
select count(*) as purged from purged
