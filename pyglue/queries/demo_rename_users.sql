-- Demo traffic: rename the 25 newest users of the tenancy.
update app.users set display_name = display_name || ' (renamed)'
where tenancy_id = %(tenancy_id)s
  and id in (select id from app.users where tenancy_id = %(tenancy_id)s order by signed_up_at desc limit 25)
