select count(*) as n from billing.subscription_moves where tenancy_id = %(tenancy_id)s
