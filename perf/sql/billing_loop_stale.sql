-- The per-row loop's regen, step 0: the tenancy's live subscriptions not on their
-- product's current version (one query).
select s.id, s.product_id, s.product_version_id
from billing.subscriptions s
join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
where s.tenancy_id = %(tenancy_id)s and s.ended_at is null and s.product_version_id <> p.current_version_id
order by s.id
