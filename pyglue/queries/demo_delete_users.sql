-- Demo traffic: delete the newest mock user (its channels and memberships go by cascade).
delete from app.users
where tenancy_id = %(tenancy_id)s
  and id in (select id from app.users where tenancy_id = %(tenancy_id)s and server_metadata ? 'mock_n'
             order by (server_metadata ->> 'mock_n')::bigint desc limit 1)
returning id
