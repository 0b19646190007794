-- Demo traffic: rename the two first mock users (a new name each run); their new names.
update app.users set display_name = 'Renamed at ' || %(stamp)s || ' #' || (server_metadata ->> 'mock_n')
where tenancy_id = %(tenancy_id)s
  and id in (select id from app.users where tenancy_id = %(tenancy_id)s and server_metadata ? 'mock_n'
             order by (server_metadata ->> 'mock_n')::bigint limit 2)
returning display_name
