-- app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[]): bring the search rows of
-- these users (app.user_search) up to date with app.users and app.contact_channels: the
-- lower-cased display name and channel values, one per line, beside the sign-up key and the
-- anonymous flag; users that no longer exist lose their row.
-- Concurrent writers of the same user: the rows are locked first (key order), then read again
-- by the next statements, which in READ COMMITTED see every change committed before the lock
-- was granted, so the last writer to commit never leaves a haystack that misses the
-- other's channel. STRICT: nothing to do for null arrays.
-- A batch of 1,000 users or more first has the statistics of the tables it reads refreshed
-- if they predate it (app._analyze_if_stale): a bulk load into tables analyzed while empty
-- would otherwise plan every lookup below as a walk of the whole tenancy.
create or replace function app._refresh_user_search(p_tenancy_ids uuid[], p_user_ids uuid[])
returns void
language plpgsql
strict
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform app._analyze_if_stale(cardinality(p_user_ids), '{app.users, app.contact_channels, app.user_search}');

    perform 1
    from app.user_search s
    where (s.tenancy_id, s.user_id) in (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u))
    order by s.tenancy_id, s.user_id
    for update of s;

    insert into app.user_search as s (tenancy_id, user_id, signed_up_at, is_anonymous, haystack)
    select u.tenancy_id, u.id, u.signed_up_at, u.is_anonymous,
           lower(coalesce(u.display_name, '')) || coalesce(ch.lines, '')
    from (select distinct k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u)) k
    join app.users u on u.tenancy_id = k.t and u.id = k.u
    left join lateral (
        select string_agg(chr(10) || lower(c.value), '' order by c.id) as lines
        from app.contact_channels c
        where c.tenancy_id = u.tenancy_id and c.user_id = u.id
    ) ch on true
    order by 1, 2
    on conflict (tenancy_id, user_id) do update
        set signed_up_at = excluded.signed_up_at, is_anonymous = excluded.is_anonymous, haystack = excluded.haystack
        where (s.signed_up_at, s.is_anonymous, s.haystack)
              is distinct from (excluded.signed_up_at, excluded.is_anonymous, excluded.haystack);

    -- the users gone: the keys less those found by a join (not NOT EXISTS: an anti join
    -- stops at a first match, and where a tenancy looks small to the planner it looked each
    -- key up through an index on tenancy_id alone, walking a big tenancy per key)
    delete from app.user_search s
    using (select k.t, k.u from unnest(p_tenancy_ids, p_user_ids) as k(t, u)
           except
           select u.tenancy_id, u.id
           from unnest(p_tenancy_ids, p_user_ids) as k(t, u)
           join app.users u on u.tenancy_id = k.t and u.id = k.u) as gone
    where s.tenancy_id = gone.t and s.user_id = gone.u;
end;
$$;

comment on function app._refresh_user_search(uuid[], uuid[]) is
    'Recompute the app.user_search rows (lower-cased name and channel values) of the given users.';
