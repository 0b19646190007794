-- The per-row loop's backfill, per team: does it have a live plan in the free product's line?
select exists (
    select 1 from billing.subscriptions s
    where s.tenancy_id = %(tenancy_id)s and s.customer_type = 'team' and s.customer_id = %(team_id)s
      and s.line_key = %(line_key)s and s.ended_at is null and not s.is_add_on and not s.stackable
) as has_plan
