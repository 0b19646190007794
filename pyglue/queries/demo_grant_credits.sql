-- A manual grant of 50 credits to a team that expires in a week (billing.change_item_quantity),
-- once: a re-run of the demo finds it and grants nothing.
select billing.change_item_quantity(%(tenancy_id)s, 'team', %(team_id)s::text, 'credits', 50,
                                    now() + interval '7 days') as change_id
where not exists (select 1 from billing.item_quantity_changes c
                  where c.tenancy_id = %(tenancy_id)s and c.customer_type = 'team'
                    and c.customer_id = %(team_id)s::text and c.item_id = 'credits')
