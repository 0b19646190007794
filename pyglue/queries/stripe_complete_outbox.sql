-- A claimed metadata write landed in Stripe; false when regen replaced its metadata meanwhile.
select billing.complete_stripe_outbox(%(tenancy_id)s, %(id)s, %(metadata)s) as delivered
