select (select count(*) from app.users where tenancy_id = %(tenancy_id)s) as users,
       (select count(*) from app.events where tenancy_id = %(tenancy_id)s) as events
