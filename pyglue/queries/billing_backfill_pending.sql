-- About how many teams billing.backfill_free_plans still has to grant: the teams of the
-- project's tenancies that have the free product, less the live plans of its product line
-- there (exact while every plan belongs to an existing team). Two counts and no join of
-- teams with subscriptions, so it stays cheap however stale the statistics are; it only
-- sizes a progress bar.
with free as (
    select p.tenancy_id, v.line_key
    from app.tenancies tn
    join billing.products p on p.tenancy_id = tn.id and p.product_id = %(product_id)s
    join billing.product_versions v on v.id = p.current_version_id
    where tn.project_id = %(project_id)s
)
select greatest(0,
    (select count(*) from app.teams t join free f on f.tenancy_id = t.tenancy_id)
    - (select count(*) from billing.subscriptions s join free f on f.tenancy_id = s.tenancy_id
       where s.customer_type = 'team' and s.line_key = f.line_key
         and s.ended_at is null and not s.is_add_on and not s.stackable)) as pending
