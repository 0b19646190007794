-- How many live subscriptions of the project billing.regen_subscriptions_to_latest would
-- move now: those not on their product's current version (sizes a progress bar).
select count(*) as pending
from app.tenancies tn
join billing.subscriptions s on s.tenancy_id = tn.id
join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
where tn.project_id = %(project_id)s and s.ended_at is null and s.product_version_id <> p.current_version_id
