-- Claim due Stripe metadata writes (SKIP LOCKED; each claim is an attempt under a lease).
select o.tenancy_id, o.id, o.subscription_id, o.stripe_subscription_id, o.metadata, o.attempts
from billing.claim_stripe_outbox(%(limit)s, %(tenancy_id)s, make_interval(secs => %(lease_s)s::float8)) o
