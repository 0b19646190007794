-- The users the latency writer may change (it picks from them at random, each at most once).
select id from app.users where tenancy_id = %(tenancy_id)s order by id
