-- baseline of a list_users search page: the plain query (ILIKE on the name or any channel,
-- first page by the key), as a planner sees it without the function's two strategies
select jsonb_agg(app._user_json(x.u) order by x.signed_up_at, x.id) as p
from (select u, u.signed_up_at, u.id from app.users u
      where u.tenancy_id = %(tenancy_id)s and not u.is_anonymous
        and (u.display_name ilike %(pattern)s or exists (
             select 1 from app.contact_channels c where c.tenancy_id = u.tenancy_id and c.user_id = u.id
               and c.value ilike %(pattern)s))
      order by u.signed_up_at, u.id limit %(limit)s) x
