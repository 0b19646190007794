-- The team the demo shows balances and history of: the first by id.
select id from app.teams where tenancy_id = %(tenancy_id)s order by id limit 1
