-- What Stripe knows of a purchase: its Stripe subscription or payment intent (null when the
-- purchase is not Stripe-backed), and its quantity now.
select s.stripe_subscription_id, null::text as stripe_payment_intent_id, s.quantity, s.cancel_at_period_end
from billing.subscriptions s
where %(purchase_kind)s = 'subscription' and s.tenancy_id = %(tenancy_id)s and s.id = %(purchase_id)s
union all
select null, o.stripe_payment_intent_id, o.quantity, false
from billing.one_time_purchases o
where %(purchase_kind)s = 'one_time_purchase' and o.tenancy_id = %(tenancy_id)s and o.id = %(purchase_id)s
