-- baseline of a list_users page: OFFSET pagination over the same order
select jsonb_agg(app._user_json(x.u) order by x.signed_up_at, x.id) as p
from (select u, u.signed_up_at, u.id from app.users u
      where u.tenancy_id = %(tenancy_id)s and not u.is_anonymous
      order by u.signed_up_at, u.id offset %(offset)s limit %(limit)s) x
