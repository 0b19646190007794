-- The per-row loop's regen, per subscription: its product's current version.
select v.id, v.product_line, v.is_add_on, v.stackable
from billing.products p
join billing.product_versions v on v.id = p.current_version_id
where p.tenancy_id = %(tenancy_id)s and p.product_id = %(product_id)s
