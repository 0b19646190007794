-- The tenancy's own Stripe secret key (billing.stripe_settings), if it has one. Never printed.
select s.api_key from billing.stripe_settings s where s.tenancy_id = %(tenancy_id)s
