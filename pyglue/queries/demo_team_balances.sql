-- A team's balances of the demo plan's items, now and in 40 days (the monthly credits renew,
-- the manual grant has expired).
select i.item, billing.item_quantity(%(tenancy_id)s, 'team', %(team_id)s::text, i.item) as now,
       billing.item_quantity(%(tenancy_id)s, 'team', %(team_id)s::text, i.item, now() + interval '40 days') as in_40_days
from unnest(array['seats', 'credits']) as i(item)
order by i.item
