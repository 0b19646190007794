-- Demo traffic: delete the five oldest users (their channels and memberships cascade).
delete from app.users
where tenancy_id = %(tenancy_id)s
  and id in (select id from app.users where tenancy_id = %(tenancy_id)s order by signed_up_at limit 5)
