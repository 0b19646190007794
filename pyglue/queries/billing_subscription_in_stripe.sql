-- A subscription's Stripe id (null when not Stripe-backed) and the current version of a product.
select s.stripe_subscription_id, p.current_version_id
from billing.subscriptions s
left join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = %(product_id)s
where s.tenancy_id = %(tenancy_id)s and s.id = %(subscription_id)s
