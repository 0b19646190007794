-- the list_users cursor of the user at a position (offset) of the key order
select to_char(signed_up_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '/' || id as cursor
from app.users where tenancy_id = %(tenancy_id)s and not is_anonymous
order by signed_up_at, id offset %(offset)s limit 1
