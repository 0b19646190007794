-- The per-row loop's backfill, step 0: the free product's current version and its period (as
-- text: a month is no fixed number of seconds), one query.
select v.id, v.product_line, v.line_key, billing._recurring_interval(v.content)::text as period
from billing.products p
join billing.product_versions v on v.id = p.current_version_id
where p.tenancy_id = %(tenancy_id)s and p.product_id = %(product_id)s
